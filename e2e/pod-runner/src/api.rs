//! Step "talk to the API server": Node registration and heartbeat (Node, its status, its
//! Lease), Pod binding, Pod status patches and the final grace-0 delete. IO (network); the
//! Node's JSON is built by the pure functions below. The Pod watch is in dispatch.rs,
//! TokenRequest in serviceaccount.rs, Secret/ConfigMap reads in env.rs.

use crate::clock::{now, now_micro};
use crate::runner::{Ctx, NodeFacts};
use anyhow::Result;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::Client;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::time::sleep;
use tracing::{debug, info, warn};

pub const FIELD_MANAGER: &str = "mb-pod-runner";

/// Registers (or refreshes) the Node; `ready = false` marks it NotReady when the runner stops.
pub async fn register_node(ctx: &Ctx, ready: bool) -> Result<()> {
    let name = &ctx.args.node_name;
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let arch = node_arch(std::env::consts::ARCH);
    let node = nodes
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&node_manifest(name, arch)),
        )
        .await?;
    let old = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or(&[]);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let host = HostInfo {
        arch,
        kernel: kernel.trim(),
        facts: &ctx.node,
    };
    let status = node_status(name, &host, node_conditions(ready, &now(), old));
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    if ready {
        renew_lease(ctx, name, node.metadata.uid.clone().unwrap_or_default()).await?;
    }
    Ok(())
}

/// The Lease in kube-node-lease, owned by the Node (as the kubelet does), so that the
/// node-lifecycle view of the cluster sees a live node.
async fn renew_lease(ctx: &Ctx, name: &str, node_uid: String) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), "kube-node-lease");
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name,
                      "uid": node_uid}]},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now_micro()}
    });
    leases
        .patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&lease))
        .await?;
    Ok(())
}

/// Kubernetes' name of the CPU architecture.
pub fn node_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    }
}

fn node_manifest(name: &str, arch: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": arch,
            "milvusbackfill.io/pod-runner": "true"}},
        "spec": {}
    })
}

/// The Node's conditions at time `t`; a condition whose status did not change keeps its
/// `lastTransitionTime` from `old`.
fn node_conditions(ready: bool, t: &str, old: &[NodeCondition]) -> Vec<Value> {
    let cond = |typ: &str, status: &str, reason: &str, msg: &str| {
        json!({"type": typ, "status": status, "reason": reason, "message": msg,
               "lastHeartbeatTime": t, "lastTransitionTime": t})
    };
    let (rs, rr, rm) = if ready {
        ("True", "KubeletReady", "mb-pod-runner is posting ready status")
    } else {
        ("False", "PodRunnerStopped", "mb-pod-runner stopped")
    };
    let mut conds = vec![
        cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "not checked"),
        cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "not checked"),
        cond("PIDPressure", "False", "KubeletHasSufficientPID", "not checked"),
        cond("Ready", rs, rr, rm),
    ];
    for c in conds.iter_mut() {
        let Some(o) = old.iter().find(|o| Some(o.type_.as_str()) == c["type"].as_str()) else {
            continue;
        };
        if Some(o.status.as_str()) == c["status"].as_str() {
            if let Some(lt) = &o.last_transition_time {
                c["lastTransitionTime"] = json!(lt.0.to_string());
            }
        }
    }
    conds
}

struct HostInfo<'a> {
    arch: &'a str,
    kernel: &'a str,
    facts: &'a NodeFacts,
}

/// The Node status patch: conditions, addresses, capacity and nodeInfo.
fn node_status(name: &str, host: &HostInfo, conditions: Vec<Value>) -> Value {
    let f = host.facts;
    let cap = json!({"cpu": f.cpus.to_string(), "memory": format!("{}Ki", f.mem_bytes / 1024),
                     "pods": "110", "ephemeral-storage": "100Gi"});
    json!({"status": {
        "conditions": conditions,
        "addresses": [{"type": "InternalIP", "address": f.ip}, {"type": "Hostname", "address": name}],
        "capacity": cap, "allocatable": cap,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {
            "machineID": "mb-pod-runner", "systemUUID": "mb-pod-runner", "bootID": "mb-pod-runner",
            "kernelVersion": host.kernel,
            "osImage": "host (mb-pod-runner)", "containerRuntimeVersion": concat!("mb-pod-runner://", env!("CARGO_PKG_VERSION")),
            "kubeletVersion": "v1.37.2", "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": host.arch
        }
    }})
}

/// Binds the Pod to `node` through `pods/binding`, the scheduler's way.
pub async fn bind_pod(client: &Client, ns: &str, name: &str, uid: &str, node: &str) -> kube::Result<Value> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let body = json!({"apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": name, "uid": uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
    api.create_subresource::<_, Value>("binding", name, &PostParams::default(), &body)
        .await
}

/// Merge-patches `pods/status`. The uid in the patch is a precondition, so a status never
/// lands on a new Pod of the same name; 404/409 mean the Pod is gone and are not retried.
pub async fn patch_pod_status(api: &Api<Pod>, pod: &Pod, status: Value) {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let patch = json!({"metadata": {"uid": pod.metadata.uid}, "status": status});
    for i in 0..5 {
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return,
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
                debug!("status of {name}: {}", e.message);
                return;
            }
            Err(e) => {
                warn!("status of {name} (attempt {}): {e}", i + 1);
                sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Deletes the Pod with grace 0 (uid precondition), as the kubelet does once the processes
/// are gone, so the object disappears instead of waiting for a kubelet that never comes.
pub async fn force_delete(client: &Client, ns: &str, name: &str, uid: &str) {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => info!("deleted {ns}/{name} (grace 0)"),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(e) => warn!("deleting {ns}/{name}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn arch_names() {
        assert_eq!(node_arch("x86_64"), "amd64");
        assert_eq!(node_arch("aarch64"), "arm64");
        assert_eq!(node_arch("riscv64"), "riscv64");
    }

    #[test]
    fn node_conditions_keep_transition_time_while_unchanged() {
        let old_t: k8s_openapi::jiff::Timestamp = "2025-01-01T00:00:00Z".parse().unwrap();
        let old = vec![
            NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                last_transition_time: Some(Time(old_t)),
                ..Default::default()
            },
            NodeCondition {
                type_: "DiskPressure".into(),
                status: "True".into(),
                last_transition_time: Some(Time(old_t)),
                ..Default::default()
            },
        ];
        let conds = node_conditions(true, "2025-06-01T00:00:00Z", &old);
        let by_type = |t: &str| conds.iter().find(|c| c["type"] == t).unwrap().clone();
        let ready = by_type("Ready");
        assert_eq!(ready["status"], "True");
        assert_eq!(ready["reason"], "KubeletReady");
        assert_eq!(ready["lastTransitionTime"], "2025-01-01T00:00:00Z");
        assert_eq!(ready["lastHeartbeatTime"], "2025-06-01T00:00:00Z");
        // DiskPressure flips True -> False: a new transition time.
        assert_eq!(by_type("DiskPressure")["lastTransitionTime"], "2025-06-01T00:00:00Z");
        assert_eq!(by_type("MemoryPressure")["status"], "False");

        let stopped = node_conditions(false, "2025-06-02T00:00:00Z", &old);
        let ready = stopped.iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!(
            (ready["status"].as_str(), ready["reason"].as_str()),
            (Some("False"), Some("PodRunnerStopped"))
        );
        assert_eq!(ready["lastTransitionTime"], "2025-06-02T00:00:00Z");
    }

    #[test]
    fn node_status_reports_host_capacity() {
        let facts = NodeFacts {
            cpus: 4,
            mem_bytes: 8 << 30,
            ip: "127.0.0.1".into(),
        };
        let host = HostInfo {
            arch: "amd64",
            kernel: "6.1.0",
            facts: &facts,
        };
        let s = node_status("n1", &host, vec![]);
        let st = &s["status"];
        assert_eq!(st["capacity"]["cpu"], "4");
        assert_eq!(st["capacity"]["memory"], "8388608Ki");
        assert_eq!(st["allocatable"], st["capacity"]);
        assert_eq!(
            st["addresses"][0],
            json!({"type": "InternalIP", "address": "127.0.0.1"})
        );
        assert_eq!(st["nodeInfo"]["kubeletVersion"], "v1.37.2");
        assert_eq!(
            st["nodeInfo"]["containerRuntimeVersion"],
            concat!("mb-pod-runner://", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(st["nodeInfo"]["kernelVersion"], "6.1.0");
        let m = node_manifest("n1", "amd64");
        assert_eq!(m["metadata"]["labels"]["kubernetes.io/arch"], "amd64");
        assert_eq!(m["metadata"]["labels"]["kubernetes.io/hostname"], "n1");
    }
}
