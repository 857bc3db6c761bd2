//! mb-pod-runner: a test stand-in for kubelet + container runtime + kube-scheduler.
//!
//! It registers one Node, binds unscheduled Pods to it, runs each container's
//! command as a local process (images are ignored), and reports Pod status the way a
//! kubelet does, so that the real Job / ReplicaSet controllers drive real workloads.
//! See README.md next to this crate for what it does and does not cover.
//!
//! This file is the startup step: arguments, the runner's context (kubeconfig, host
//! facts), the Node heartbeat, and the shutdown. IO: reads the kubeconfig and /proc,
//! creates the log and work dirs. The steps after it, in order of a Pod's life:
//! dispatch (watch, bind) -> pod_worker (prepare, run) -> env / serviceaccount (prepare) ->
//! process + probes (containers) -> lifecycle (state machine) -> status + api (report).

mod api;
mod clock;
mod dispatch;
mod env;
mod lifecycle;
mod pod_worker;
mod probes;
mod process;
mod runner;
mod serviceaccount;
mod status;

use anyhow::{anyhow, Context as _, Result};
use clap::Parser;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use runner::{ClusterEndpoint, Ctx, NodeFacts, Runner, StopKind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::sleep;
use tracing::{info, warn};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "mb-pod-runner",
    version,
    about = "Runs Kubernetes Pods as local processes (test stand-in for kubelet + runtime + scheduler)"
)]
pub struct Args {
    /// Kubeconfig of the runner itself (admin in tests).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: PathBuf,
    /// Name of the Node to register and bind Pods to.
    #[arg(long, default_value = "mb-pod-runner")]
    pub node_name: String,
    /// Map a command path from the Pod spec to a host path: FROM=TO (repeatable).
    /// FROM ending in '/' maps a directory prefix.
    #[arg(long = "map", value_name = "FROM=TO")]
    pub maps: Vec<String>,
    /// Container logs go to LOG_DIR/<namespace>/<pod>/<container>.log
    #[arg(long)]
    pub log_dir: PathBuf,
    /// Per-pod working directories go to WORK_DIR/<namespace>/<pod>-<uid8>/
    #[arg(long)]
    pub work_dir: PathBuf,
    /// Lifetime asked for the Pods' ServiceAccount tokens (TokenRequest).
    #[arg(long, default_value_t = 86400)]
    pub token_expiration_seconds: i64,
    /// Node status / Lease heartbeat period.
    #[arg(long, default_value_t = 10)]
    pub heartbeat_seconds: u64,
    /// Maximum restart back-off (kubelet: 300 s; tests want less).
    #[arg(long, default_value_t = 30)]
    pub max_backoff_seconds: u64,
    /// IP reported as the node's, the Pods' hostIP and podIP.
    #[arg(long, default_value = "127.0.0.1")]
    pub node_ip: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    init_tracing();
    let args = Args::parse();
    let rt = Arc::new(Runner::new(build_ctx(args).await?));
    let args = &rt.ctx.args;
    info!(
        node = %args.node_name, server = %rt.ctx.cluster.server, log_dir = %args.log_dir.display(), work_dir = %args.work_dir.display(),
        maps = ?rt.ctx.maps, "mb-pod-runner starting; container logs: {}/<namespace>/<pod>/<container>.log", args.log_dir.display()
    );
    api::register_node(&rt.ctx, true)
        .await
        .context("registering the Node")?;
    let heartbeat = spawn_heartbeat(rt.clone());
    dispatch::watch_pods(&rt).await?;
    heartbeat.abort();
    shutdown(&rt).await;
    Ok(())
}

/// `MB_POD_RUNNER_DEBUG` adds every container event to the log.
fn init_tracing() {
    let level = if std::env::var_os("MB_POD_RUNNER_DEBUG").is_some() {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_ansi(false)
        .init();
}

async fn build_ctx(args: Args) -> Result<Ctx> {
    let kc = Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading kubeconfig {}", args.kubeconfig.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc.clone(), &KubeConfigOptions::default()).await?;
    let client = Client::try_from(cfg.clone())?;
    let cluster = cluster_endpoint(&kc, &args.kubeconfig, &cfg.cluster_url.to_string())?;
    let maps = parse_maps(&args.maps)?;
    std::fs::create_dir_all(&args.log_dir)?;
    std::fs::create_dir_all(&args.work_dir)?;
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| mem_total_kib(&s))
        .unwrap_or(4 << 20);
    let node = NodeFacts {
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        mem_bytes: mem_kib * 1024,
        ip: args.node_ip.clone(),
    };
    Ok(Ctx {
        client,
        maps,
        cluster,
        host_path: std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        node,
        args,
    })
}

/// The server and CA of the current context, to hand to Pods. A relative CA path is
/// relative to the kubeconfig, as kubectl reads it.
fn cluster_endpoint(kc: &Kubeconfig, kubeconfig: &Path, fallback_server: &str) -> Result<ClusterEndpoint> {
    let ctx_name = kc
        .current_context
        .clone()
        .ok_or_else(|| anyhow!("kubeconfig has no current-context"))?;
    let cluster_name = kc
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .ok_or_else(|| anyhow!("context {ctx_name} not found"))?;
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| anyhow!("cluster {cluster_name} not found"))?;
    let ca_file = cluster.certificate_authority.clone().map(|p| {
        let p = PathBuf::from(p);
        if p.is_relative() {
            kubeconfig
                .parent()
                .unwrap_or(Path::new("."))
                .join(p)
                .display()
                .to_string()
        } else {
            p.display().to_string()
        }
    });
    Ok(ClusterEndpoint {
        server: cluster.server.clone().unwrap_or_else(|| fallback_server.to_string()),
        ca_data: cluster.certificate_authority_data.clone(),
        ca_file,
        insecure: cluster.insecure_skip_tls_verify.unwrap_or(false),
    })
}

/// `--map FROM=TO` values, in order.
fn parse_maps(maps: &[String]) -> Result<Vec<(String, String)>> {
    maps.iter()
        .map(|m| {
            let (a, b) = m
                .split_once('=')
                .ok_or_else(|| anyhow!("--map {m}: expected FROM=TO"))?;
            Ok((a.to_string(), b.to_string()))
        })
        .collect()
}

/// `MemTotal` of /proc/meminfo, in KiB.
fn mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
}

/// Node status and Lease every `--heartbeat-seconds`, so the Node stays Ready.
fn spawn_heartbeat(rt: Arc<Runner>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            sleep(Duration::from_secs(rt.ctx.args.heartbeat_seconds)).await;
            if let Err(e) = api::register_node(&rt.ctx, true).await {
                warn!("node heartbeat failed: {e:#}");
            }
        }
    })
}

/// Kills every process the runner runs (their Pods' status stays as it was) and marks the
/// Node NotReady, so nothing is scheduled to a runner that is gone.
async fn shutdown(rt: &Runner) {
    let uids: Vec<String> = rt.pods.lock().unwrap().keys().cloned().collect();
    for u in &uids {
        dispatch::stop_pod(rt, u, StopKind::Shutdown);
    }
    let tasks: Vec<_> = std::mem::take(&mut *rt.tasks.lock().unwrap());
    let _ = tokio::time::timeout(Duration::from_secs(15), futures_util::future::join_all(tasks)).await;
    if let Err(e) = api::register_node(&rt.ctx, false).await {
        warn!("marking node NotReady: {e:#}");
    }
    info!("mb-pod-runner stopped ({} pods were running)", uids.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECONFIG: &str = r#"
apiVersion: v1
kind: Config
current-context: admin
contexts:
- name: admin
  context: {cluster: local, user: admin}
- name: other
  context: {cluster: remote, user: admin}
clusters:
- name: local
  cluster: {server: "https://127.0.0.1:6443", certificate-authority: pki/ca.crt}
- name: remote
  cluster: {server: "https://remote", certificate-authority-data: Q0E=, insecure-skip-tls-verify: true}
users:
- name: admin
  user: {token: t}
"#;

    #[test]
    fn cluster_of_current_context_with_relative_ca() {
        let kc = Kubeconfig::from_yaml(KUBECONFIG).unwrap();
        let ep = cluster_endpoint(&kc, Path::new("/state/admin.kubeconfig"), "https://fallback").unwrap();
        assert_eq!(
            ep,
            ClusterEndpoint {
                server: "https://127.0.0.1:6443".into(),
                ca_data: None,
                ca_file: Some("/state/pki/ca.crt".into()),
                insecure: false,
            }
        );
        let mut kc = kc;
        kc.current_context = Some("other".into());
        let ep = cluster_endpoint(&kc, Path::new("/state/admin.kubeconfig"), "https://fallback").unwrap();
        assert_eq!(
            (ep.server.as_str(), ep.ca_data.as_deref(), ep.insecure),
            ("https://remote", Some("Q0E="), true)
        );
        kc.current_context = Some("missing".into());
        let err = cluster_endpoint(&kc, Path::new("k"), "x").unwrap_err();
        assert_eq!(err.to_string(), "context missing not found");
        kc.current_context = None;
        let err = cluster_endpoint(&kc, Path::new("k"), "x").unwrap_err();
        assert_eq!(err.to_string(), "kubeconfig has no current-context");
    }

    #[test]
    fn maps_parse_in_order() {
        let m = parse_maps(&["/a=/b".into(), "/usr/local/bin/=/x=y".into()]).unwrap();
        assert_eq!(
            m,
            [
                ("/a".to_string(), "/b".to_string()),
                ("/usr/local/bin/".to_string(), "/x=y".to_string())
            ]
        );
        let err = parse_maps(&["nope".into()]).unwrap_err();
        assert_eq!(err.to_string(), "--map nope: expected FROM=TO");
    }

    #[test]
    fn meminfo_total() {
        let s = "MemFree:  100 kB\nMemTotal:       16318480 kB\n";
        assert_eq!(mem_total_kib(s), Some(16318480));
        assert_eq!(mem_total_kib("nothing"), None);
    }

    #[test]
    fn cli_defaults() {
        let a = Args::try_parse_from([
            "mb-pod-runner",
            "--kubeconfig",
            "/k",
            "--log-dir",
            "/l",
            "--work-dir",
            "/w",
            "--map",
            "/a=/b",
            "--map",
            "/c=/d",
        ])
        .unwrap();
        assert_eq!(a.node_name, "mb-pod-runner");
        assert_eq!(a.maps, ["/a=/b", "/c=/d"]);
        assert_eq!(
            (a.token_expiration_seconds, a.heartbeat_seconds, a.max_backoff_seconds),
            (86400, 10, 30)
        );
        assert_eq!(a.node_ip, "127.0.0.1");
    }
}
