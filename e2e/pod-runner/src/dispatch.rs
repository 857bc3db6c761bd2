//! Step "dispatch": turns the cluster-wide Pod watch into actions. Unscheduled Pods are
//! bound to our Node (the scheduler's part), each new Pod on it gets a worker
//! (pod_worker.rs), and deletions become stop requests for running workers. IO: the watch,
//! signals and spawned tasks; which action a Pod needs is decided by the pure [`classify`].

use crate::api;
use crate::lifecycle::PodPhase;
use crate::pod_worker::run_pod;
use crate::runner::{Runner, StopKind};
use anyhow::Result;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::watch;
use tracing::{error, info, warn};

/// Watches all Pods until SIGINT/SIGTERM or the end of the watch.
pub async fn watch_pods(rt: &Arc<Runner>) -> Result<()> {
    let pods: Api<Pod> = Api::all(rt.ctx.client.clone());
    let mut stream = watcher(pods, watcher::Config::default()).default_backoff().boxed();
    // Pods listed by the current (re-)list; a worker whose Pod is not among them lost its Pod
    // while the watch was down.
    let mut init_seen: HashSet<String> = HashSet::new();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            ev = stream.next() => match ev {
                Some(ev) => on_watch_event(rt, ev, &mut init_seen),
                None => { error!("pod watch ended"); break; }
            },
            _ = tokio::signal::ctrl_c() => { info!("SIGINT"); break; }
            _ = sigterm.recv() => { info!("SIGTERM"); break; }
        }
    }
    Ok(())
}

fn on_watch_event(rt: &Arc<Runner>, ev: Result<watcher::Event<Pod>, watcher::Error>, init_seen: &mut HashSet<String>) {
    match ev {
        Ok(watcher::Event::Apply(p)) => handle_pod(rt, p),
        Ok(watcher::Event::InitApply(p)) => {
            if let Some(u) = p.metadata.uid.clone() {
                init_seen.insert(u);
            }
            handle_pod(rt, p)
        }
        Ok(watcher::Event::Delete(p)) => {
            if let Some(u) = p.metadata.uid.as_deref() {
                stop_pod(rt, u, StopKind::Gone);
            }
        }
        Ok(watcher::Event::Init) => init_seen.clear(),
        Ok(watcher::Event::InitDone) => {
            let gone: Vec<String> = rt
                .pods
                .lock()
                .unwrap()
                .keys()
                .filter(|u| !init_seen.contains(*u))
                .cloned()
                .collect();
            for u in gone {
                stop_pod(rt, &u, StopKind::Gone);
            }
        }
        Err(e) => warn!("pod watch error: {e}"),
    }
}

/// What a Pod from the watch needs from this runner.
#[derive(Debug, PartialEq)]
enum Placement {
    /// Nothing: another node's, another scheduler's, gated, finished or being deleted
    /// before it was scheduled.
    Ignore,
    /// Unscheduled: bind it to our Node.
    Bind,
    /// On our Node and being deleted; its processes get `grace` seconds.
    Deleting { grace: i64 },
    /// On our Node; `terminal` when its phase is Succeeded or Failed.
    OnNode { terminal: bool },
}

fn is_terminal(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .and_then(PodPhase::parse)
        .is_some_and(PodPhase::is_terminal)
}

fn classify(pod: &Pod, node_name: &str) -> Placement {
    let Some(spec) = pod.spec.as_ref() else {
        return Placement::Ignore;
    };
    let deleting = pod.metadata.deletion_timestamp.is_some();
    let node = spec.node_name.as_deref().unwrap_or_default();
    if node.is_empty() {
        let sched = spec.scheduler_name.as_deref().unwrap_or("default-scheduler");
        let gated = spec.scheduling_gates.as_ref().is_some_and(|g| !g.is_empty());
        if deleting || gated || is_terminal(pod) || sched != "default-scheduler" {
            return Placement::Ignore;
        }
        return Placement::Bind;
    }
    if node != node_name {
        return Placement::Ignore;
    }
    if deleting {
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .or(spec.termination_grace_period_seconds)
            .unwrap_or(30);
        return Placement::Deleting { grace };
    }
    Placement::OnNode {
        terminal: is_terminal(pod),
    }
}

fn handle_pod(rt: &Arc<Runner>, pod: Pod) {
    let Some(uid) = pod.metadata.uid.clone() else { return };
    match classify(&pod, &rt.ctx.args.node_name) {
        Placement::Ignore => {}
        Placement::Bind => start_binding(rt, &pod, uid),
        Placement::Deleting { grace } => on_deleting(rt, &pod, uid, grace),
        Placement::OnNode { terminal } => start_pod(rt, pod, uid, terminal),
    }
}

fn names(pod: &Pod) -> (String, String) {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

fn start_binding(rt: &Arc<Runner>, pod: &Pod, uid: String) {
    if !rt.binding.lock().unwrap().insert(uid.clone()) {
        return;
    }
    let (ns, name) = names(pod);
    let rt = rt.clone();
    tokio::spawn(async move {
        let node = &rt.ctx.args.node_name;
        match api::bind_pod(&rt.ctx.client, &ns, &name, &uid, node).await {
            Ok(_) => info!("bound {ns}/{name} to {node}"),
            Err(e) => {
                warn!("binding {ns}/{name}: {e}");
                // Allows a retry at the Pod's next event.
                rt.binding.lock().unwrap().remove(&uid);
            }
        }
    });
}

fn on_deleting(rt: &Arc<Runner>, pod: &Pod, uid: String, grace: i64) {
    let tracked = rt.pods.lock().unwrap().contains_key(&uid);
    if tracked {
        stop_pod(rt, &uid, StopKind::Deleted { grace });
    } else if rt.force_deleting.lock().unwrap().insert(uid.clone()) {
        // Nothing runs for it (finished, or never started): remove it at once.
        let (ns, name) = names(pod);
        let rt = rt.clone();
        tokio::spawn(async move {
            api::force_delete(&rt.ctx.client, &ns, &name, &uid).await;
        });
    }
}

fn start_pod(rt: &Arc<Runner>, pod: Pod, uid: String, terminal: bool) {
    let tracked = rt.pods.lock().unwrap().contains_key(&uid);
    if tracked || rt.done.lock().unwrap().contains(&uid) {
        return;
    }
    if terminal {
        rt.done.lock().unwrap().insert(uid);
        return;
    }
    let (tx, rx) = watch::channel(None);
    rt.pods.lock().unwrap().insert(uid.clone(), tx);
    let (ns, name) = names(&pod);
    let rt2 = rt.clone();
    let h = tokio::spawn(async move {
        if let Err(e) = run_pod(&rt2, pod, rx).await {
            error!("pod {ns}/{name}: {e:#}");
        }
        rt2.pods.lock().unwrap().remove(&uid);
        rt2.done.lock().unwrap().insert(uid);
    });
    let mut tasks = rt.tasks.lock().unwrap();
    tasks.retain(|t| !t.is_finished());
    tasks.push(h);
}

/// Asks a running worker to stop. Only the first reason is delivered (its grace period is
/// already running), except Gone and Shutdown, which always are: after them nothing is
/// reported any more.
pub fn stop_pod(rt: &Runner, uid: &str, kind: StopKind) {
    if let Some(tx) = rt.pods.lock().unwrap().get(uid) {
        let first = tx.borrow().is_none();
        if first || matches!(kind, StopKind::Gone | StopKind::Shutdown) {
            let _ = tx.send(Some(kind));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn pod(spec: Value, extra_meta: Value, phase: Option<&str>) -> Pod {
        let mut meta = json!({"name": "p", "namespace": "ns", "uid": "u1"});
        for (k, v) in extra_meta.as_object().unwrap() {
            meta[k] = v.clone();
        }
        let mut p = json!({"metadata": meta, "spec": spec});
        if let Some(ph) = phase {
            p["status"] = json!({"phase": ph});
        }
        serde_json::from_value(p).unwrap()
    }

    fn spec(extra: Value) -> Value {
        let mut s = json!({"containers": [{"name": "main"}]});
        for (k, v) in extra.as_object().unwrap() {
            s[k] = v.clone();
        }
        s
    }

    const NODE: &str = "mb-pod-runner";
    const DELETING: &str = "2025-01-01T00:00:00Z";

    #[test]
    fn unscheduled_pods_are_bound_unless_not_ours_to_schedule() {
        assert_eq!(classify(&pod(spec(json!({})), json!({}), None), NODE), Placement::Bind);
        let explicit = spec(json!({"schedulerName": "default-scheduler"}));
        assert_eq!(classify(&pod(explicit, json!({}), None), NODE), Placement::Bind);
        let other = spec(json!({"schedulerName": "volcano"}));
        assert_eq!(classify(&pod(other, json!({}), None), NODE), Placement::Ignore);
        let gated = spec(json!({"schedulingGates": [{"name": "wait"}]}));
        assert_eq!(classify(&pod(gated, json!({}), None), NODE), Placement::Ignore);
        let no_gates = spec(json!({"schedulingGates": []}));
        assert_eq!(classify(&pod(no_gates, json!({}), None), NODE), Placement::Bind);
        let deleting = json!({"deletionTimestamp": DELETING});
        assert_eq!(classify(&pod(spec(json!({})), deleting, None), NODE), Placement::Ignore);
        assert_eq!(
            classify(&pod(spec(json!({})), json!({}), Some("Failed")), NODE),
            Placement::Ignore
        );
    }

    #[test]
    fn pods_of_other_nodes_are_ignored() {
        let other = spec(json!({"nodeName": "kind-worker"}));
        assert_eq!(classify(&pod(other, json!({}), None), NODE), Placement::Ignore);
    }

    #[test]
    fn pods_on_our_node() {
        let ours = || spec(json!({"nodeName": NODE}));
        assert_eq!(
            classify(&pod(ours(), json!({}), Some("Running")), NODE),
            Placement::OnNode { terminal: false }
        );
        assert_eq!(
            classify(&pod(ours(), json!({}), None), NODE),
            Placement::OnNode { terminal: false }
        );
        assert_eq!(
            classify(&pod(ours(), json!({}), Some("Succeeded")), NODE),
            Placement::OnNode { terminal: true }
        );
        assert_eq!(
            classify(&pod(ours(), json!({}), Some("Unknown")), NODE),
            Placement::OnNode { terminal: false }
        );
    }

    #[test]
    fn deletion_grace_comes_from_the_pod() {
        let meta = json!({"deletionTimestamp": DELETING, "deletionGracePeriodSeconds": 3});
        let s = spec(json!({"nodeName": NODE, "terminationGracePeriodSeconds": 10}));
        assert_eq!(
            classify(&pod(s.clone(), meta, None), NODE),
            Placement::Deleting { grace: 3 }
        );
        let meta = json!({"deletionTimestamp": DELETING});
        assert_eq!(
            classify(&pod(s, meta.clone(), None), NODE),
            Placement::Deleting { grace: 10 }
        );
        let bare = spec(json!({"nodeName": NODE}));
        assert_eq!(
            classify(&pod(bare, meta, None), NODE),
            Placement::Deleting { grace: 30 }
        );
    }

    #[test]
    fn pod_without_spec_is_ignored() {
        let p: Pod = serde_json::from_value(json!({"metadata": {"name": "p", "uid": "u"}})).unwrap();
        assert_eq!(classify(&p, NODE), Placement::Ignore);
    }
}
