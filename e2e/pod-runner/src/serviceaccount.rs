//! Step "ServiceAccount identity": asks the TokenRequest API for a token of the Pod's
//! ServiceAccount, bound to the Pod, and writes `<pod dir>/kubeconfig` and
//! `<pod dir>/serviceaccount/{token,namespace,ca.crt}`, so that the process is held to RBAC
//! as that ServiceAccount. IO: the API (TokenRequest) and the pod dir; the kubeconfig itself
//! is built by a pure function.

use crate::runner::{ClusterEndpoint, Ctx};
use anyhow::{anyhow, Context as _, Result};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use serde_json::{json, Value};
use std::path::Path;

/// Writes the Pod's identity files and returns the path of its kubeconfig.
pub async fn write_sa_kubeconfig(ctx: &Ctx, pod: &Pod, dir: &Path) -> Result<String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let sa = service_account_name(pod);
    let token = request_token(ctx, pod, &ns, &sa).await?;
    let kc = pod_kubeconfig(&ctx.cluster, &ns, &sa, &token);
    let sadir = dir.join("serviceaccount");
    std::fs::create_dir_all(&sadir)?;
    write_private(&sadir.join("token"), token.as_bytes())?;
    std::fs::write(sadir.join("namespace"), ns.as_bytes())?;
    if let Some(f) = &ctx.cluster.ca_file {
        let _ = std::fs::copy(f, sadir.join("ca.crt"));
    }
    let p = dir.join("kubeconfig");
    write_private(&p, serde_json::to_string_pretty(&kc)?.as_bytes())?;
    Ok(p.display().to_string())
}

/// `spec.serviceAccountName`, where unset and empty both mean `default`.
fn service_account_name(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// A token bound to the Pod (`boundObjectRef`), so the API server invalidates it with the Pod.
async fn request_token(ctx: &Ctx, pod: &Pod, ns: &str, sa: &str) -> Result<String> {
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), ns);
    let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": [], "expirationSeconds": ctx.args.token_expiration_seconds,
                 "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.metadata.name, "uid": pod.metadata.uid}}});
    let out: Value = api
        .create_subresource("token", sa, &PostParams::default(), &body)
        .await
        .with_context(|| format!("TokenRequest for serviceaccount {ns}/{sa}"))?;
    let token = out["status"]["token"]
        .as_str()
        .ok_or_else(|| anyhow!("TokenRequest returned no token"))?;
    Ok(token.to_string())
}

/// A kubeconfig with the runner's server and CA and the ServiceAccount's token, defaulting to
/// the Pod's namespace as in-cluster config would.
fn pod_kubeconfig(cluster: &ClusterEndpoint, ns: &str, sa: &str, token: &str) -> Value {
    let mut c = json!({"server": cluster.server});
    if let Some(d) = &cluster.ca_data {
        c["certificate-authority-data"] = json!(d);
    } else if let Some(f) = &cluster.ca_file {
        c["certificate-authority"] = json!(f);
    }
    if cluster.insecure {
        c["insecure-skip-tls-verify"] = json!(true);
    }
    let user = format!("system:serviceaccount:{ns}:{sa}");
    json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "mb-pod-runner", "cluster": c}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "pod", "context": {"cluster": "mb-pod-runner", "namespace": ns, "user": user}}],
        "current-context": "pod",
    })
}

/// Writes with mode 0600 through a temporary file and a rename, so a reader never sees a
/// half-written token.
fn write_private(p: &Path, data: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = p.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        std::io::Write::write_all(&mut f, data)?;
    }
    std::fs::rename(&tmp, p)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn pod_with_sa(sa: Option<&str>) -> Pod {
        let mut spec = json!({"containers": [{"name": "main"}]});
        if let Some(sa) = sa {
            spec["serviceAccountName"] = json!(sa);
        }
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": spec})).unwrap()
    }

    #[test]
    fn service_account_defaults() {
        assert_eq!(service_account_name(&pod_with_sa(None)), "default");
        assert_eq!(service_account_name(&pod_with_sa(Some(""))), "default");
        assert_eq!(service_account_name(&pod_with_sa(Some("reader"))), "reader");
    }

    #[test]
    fn kubeconfig_prefers_embedded_ca() {
        let cluster = ClusterEndpoint {
            server: "https://127.0.0.1:6443".into(),
            ca_data: Some("Q0E=".into()),
            ca_file: Some("/pki/ca.crt".into()),
            insecure: false,
        };
        let kc = pod_kubeconfig(&cluster, "ns", "reader", "tok");
        assert_eq!(
            kc["clusters"][0]["cluster"],
            json!({"server": "https://127.0.0.1:6443", "certificate-authority-data": "Q0E="})
        );
        assert_eq!(
            kc["users"][0],
            json!({"name": "system:serviceaccount:ns:reader", "user": {"token": "tok"}})
        );
        assert_eq!(
            kc["contexts"][0]["context"],
            json!({"cluster": "mb-pod-runner", "namespace": "ns", "user": "system:serviceaccount:ns:reader"})
        );
        assert_eq!(kc["current-context"], "pod");
    }

    #[test]
    fn kubeconfig_with_ca_file_or_insecure() {
        let cluster = ClusterEndpoint {
            server: "https://s".into(),
            ca_data: None,
            ca_file: Some("/pki/ca.crt".into()),
            insecure: true,
        };
        let kc = pod_kubeconfig(&cluster, "ns", "default", "t");
        assert_eq!(
            kc["clusters"][0]["cluster"],
            json!({"server": "https://s", "certificate-authority": "/pki/ca.crt", "insecure-skip-tls-verify": true})
        );
    }

    #[test]
    fn private_files_are_0600_and_replaced() {
        let dir = std::env::temp_dir().join(format!("mb-pod-runner-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("token");
        write_private(&p, b"one").unwrap();
        write_private(&p, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!p.with_extension("tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
