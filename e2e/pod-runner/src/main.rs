//! mb-pod-runner: a test stand-in for kubelet + container runtime + kube-scheduler.
//!
//! It registers one Node, binds unscheduled Pods to it, runs each container's
//! command as a local process (images are ignored), and reports Pod status the way a
//! kubelet does, so that the real Job / ReplicaSet controllers drive real workloads.
//! See README.md next to this crate for what it does and does not cover.

use anyhow::{anyhow, Context as _, Result};
use clap::Parser;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Node, Pod, Probe, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, Instant};
use tracing::{debug, error, info, warn};

const FIELD_MANAGER: &str = "mb-pod-runner";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "mb-pod-runner",
    version,
    about = "Runs Kubernetes Pods as local processes (test stand-in for kubelet + runtime + scheduler)"
)]
struct Args {
    /// Kubeconfig of the runner itself (admin in tests).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Name of the Node to register and bind Pods to.
    #[arg(long, default_value = "mb-pod-runner")]
    node_name: String,
    /// Map a command path from the Pod spec to a host path: FROM=TO (repeatable).
    /// FROM ending in '/' maps a directory prefix.
    #[arg(long = "map", value_name = "FROM=TO")]
    maps: Vec<String>,
    /// Container logs go to LOG_DIR/<namespace>/<pod>/<container>.log
    #[arg(long)]
    log_dir: PathBuf,
    /// Per-pod working directories go to WORK_DIR/<namespace>/<pod>-<uid8>/
    #[arg(long)]
    work_dir: PathBuf,
    /// Lifetime asked for the Pods' ServiceAccount tokens (TokenRequest).
    #[arg(long, default_value_t = 86400)]
    token_expiration_seconds: i64,
    /// Node status / Lease heartbeat period.
    #[arg(long, default_value_t = 10)]
    heartbeat_seconds: u64,
    /// Maximum restart back-off (kubelet: 300 s; tests want less).
    #[arg(long, default_value_t = 30)]
    max_backoff_seconds: u64,
    /// IP reported as the node's, the Pods' hostIP and podIP.
    #[arg(long, default_value = "127.0.0.1")]
    node_ip: String,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum StopKind {
    /// metadata.deletionTimestamp is set: kill with this grace, report, delete with grace 0.
    Deleted { grace: i64 },
    /// The Pod object is gone: kill, report nothing.
    Gone,
    /// The runner stops: kill, leave the Pod's status as it is.
    Shutdown,
    /// spec.activeDeadlineSeconds passed.
    Deadline { grace: i64 },
}

struct Ctx {
    client: Client,
    args: Args,
    maps: Vec<(String, String)>,
    server: String,
    ca_data: Option<String>,
    ca_file: Option<String>,
    insecure: bool,
    host_path: String,
    cpus: usize,
    mem_bytes: u64,
}

struct Runner {
    ctx: Ctx,
    pods: Mutex<HashMap<String, watch::Sender<Option<StopKind>>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    done: Mutex<HashSet<String>>,
    force_deleting: Mutex<HashSet<String>>,
    binding: Mutex<HashSet<String>>,
}

fn now() -> String {
    let t = k8s_openapi::jiff::Timestamp::now();
    k8s_openapi::jiff::Timestamp::from_second(t.as_second())
        .unwrap()
        .to_string()
}

fn now_micro() -> String {
    let t = k8s_openapi::jiff::Timestamp::now();
    format!("{}.{:06}Z", t.strftime("%Y-%m-%dT%H:%M:%S"), t.subsec_microsecond())
}

#[tokio::main]
async fn main() -> Result<()> {
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
    let args = Args::parse();
    let kc = Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading kubeconfig {}", args.kubeconfig.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc.clone(), &KubeConfigOptions::default()).await?;
    let client = Client::try_from(cfg.clone())?;
    // The cluster entry (server + CA) to hand to Pods.
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
    let server = cluster.server.clone().unwrap_or_else(|| cfg.cluster_url.to_string());
    let ca_file = cluster.certificate_authority.clone().map(|p| {
        let p = PathBuf::from(p);
        if p.is_relative() {
            args.kubeconfig
                .parent()
                .unwrap_or(Path::new("."))
                .join(p)
                .display()
                .to_string()
        } else {
            p.display().to_string()
        }
    });
    let mut maps = Vec::new();
    for m in &args.maps {
        let (a, b) = m
            .split_once('=')
            .ok_or_else(|| anyhow!("--map {m}: expected FROM=TO"))?;
        maps.push((a.to_string(), b.to_string()));
    }
    std::fs::create_dir_all(&args.log_dir)?;
    std::fs::create_dir_all(&args.work_dir)?;
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mem_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        })
        .unwrap_or(4 << 20)
        * 1024;
    let rt = Arc::new(Runner {
        ctx: Ctx {
            client,
            maps,
            server,
            ca_data: cluster.certificate_authority_data.clone(),
            ca_file,
            insecure: cluster.insecure_skip_tls_verify.unwrap_or(false),
            host_path: std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
            cpus,
            mem_bytes,
            args: args.clone(),
        },
        pods: Mutex::new(HashMap::new()),
        tasks: Mutex::new(Vec::new()),
        done: Mutex::new(HashSet::new()),
        force_deleting: Mutex::new(HashSet::new()),
        binding: Mutex::new(HashSet::new()),
    });
    info!(
        node = %args.node_name, server = %rt.ctx.server, log_dir = %args.log_dir.display(), work_dir = %args.work_dir.display(),
        maps = ?rt.ctx.maps, "mb-pod-runner starting; container logs: {}/<namespace>/<pod>/<container>.log", args.log_dir.display()
    );
    register_node(&rt, true).await.context("registering the Node")?;
    let hb = {
        let rt = rt.clone();
        tokio::spawn(async move {
            loop {
                sleep(Duration::from_secs(rt.ctx.args.heartbeat_seconds)).await;
                if let Err(e) = register_node(&rt, true).await {
                    warn!("node heartbeat failed: {e:#}");
                }
            }
        })
    };

    let pods: Api<Pod> = Api::all(rt.ctx.client.clone());
    let mut stream = watcher(pods, watcher::Config::default()).default_backoff().boxed();
    let mut init_seen: HashSet<String> = HashSet::new();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            ev = stream.next() => match ev {
                Some(Ok(watcher::Event::Apply(p))) => handle_pod(&rt, p),
                Some(Ok(watcher::Event::InitApply(p))) => {
                    if let Some(u) = p.metadata.uid.clone() { init_seen.insert(u); }
                    handle_pod(&rt, p)
                }
                Some(Ok(watcher::Event::Delete(p))) => {
                    if let Some(u) = p.metadata.uid.as_deref() { stop_pod(&rt, u, StopKind::Gone); }
                }
                Some(Ok(watcher::Event::Init)) => init_seen.clear(),
                Some(Ok(watcher::Event::InitDone)) => {
                    let gone: Vec<String> = rt.pods.lock().unwrap().keys().filter(|u| !init_seen.contains(*u)).cloned().collect();
                    for u in gone { stop_pod(&rt, &u, StopKind::Gone); }
                }
                Some(Err(e)) => warn!("pod watch error: {e}"),
                None => { error!("pod watch ended"); break; }
            },
            _ = tokio::signal::ctrl_c() => { info!("SIGINT"); break; }
            _ = sigterm.recv() => { info!("SIGTERM"); break; }
        }
    }
    // Shutdown: kill every process we run, mark the Node NotReady.
    hb.abort();
    let uids: Vec<String> = rt.pods.lock().unwrap().keys().cloned().collect();
    for u in &uids {
        stop_pod(&rt, u, StopKind::Shutdown);
    }
    let tasks: Vec<_> = std::mem::take(&mut *rt.tasks.lock().unwrap());
    let _ = tokio::time::timeout(Duration::from_secs(15), futures_util::future::join_all(tasks)).await;
    if let Err(e) = register_node(&rt, false).await {
        warn!("marking node NotReady: {e:#}");
    }
    info!("mb-pod-runner stopped ({} pods were running)", uids.len());
    Ok(())
}

// ---------------------------------------------------------------- node

async fn register_node(rt: &Runner, ready: bool) -> Result<()> {
    let c = &rt.ctx;
    let name = &c.args.node_name;
    let nodes: Api<Node> = Api::all(c.client.clone());
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": arch,
            "milvusbackfill.io/pod-runner": "true"}},
        "spec": {}
    });
    let n = nodes
        .patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&node))
        .await?;
    let t = now();
    let cond = |typ: &str, status: &str, reason: &str, msg: &str| {
        json!({"type": typ, "status": status, "reason": reason, "message": msg,
               "lastHeartbeatTime": t, "lastTransitionTime": t})
    };
    let (rs, rr, rm) = if ready {
        ("True", "KubeletReady", "mb-pod-runner is posting ready status")
    } else {
        ("False", "PodRunnerStopped", "mb-pod-runner stopped")
    };
    // Keep lastTransitionTime stable when the status does not change.
    let mut conds = vec![
        cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "not checked"),
        cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "not checked"),
        cond("PIDPressure", "False", "KubeletHasSufficientPID", "not checked"),
        cond("Ready", rs, rr, rm),
    ];
    if let Some(old) = n.status.as_ref().and_then(|s| s.conditions.as_ref()) {
        for c in conds.iter_mut() {
            if let Some(o) = old.iter().find(|o| Some(o.type_.as_str()) == c["type"].as_str()) {
                if Some(o.status.as_str()) == c["status"].as_str() {
                    if let Some(lt) = &o.last_transition_time {
                        c["lastTransitionTime"] = json!(lt.0.to_string());
                    }
                }
            }
        }
    }
    let cap = json!({"cpu": c.cpus.to_string(), "memory": format!("{}Ki", c.mem_bytes / 1024),
                     "pods": "110", "ephemeral-storage": "100Gi"});
    let status = json!({"status": {
        "conditions": conds,
        "addresses": [{"type": "InternalIP", "address": c.args.node_ip}, {"type": "Hostname", "address": name}],
        "capacity": cap, "allocatable": cap,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {
            "machineID": "mb-pod-runner", "systemUUID": "mb-pod-runner", "bootID": "mb-pod-runner",
            "kernelVersion": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
            "osImage": "host (mb-pod-runner)", "containerRuntimeVersion": concat!("mb-pod-runner://", env!("CARGO_PKG_VERSION")),
            "kubeletVersion": "v1.37.2", "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": arch
        }
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    // Lease in kube-node-lease, owned by the Node (as the kubelet does).
    if ready {
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(c.client.clone(), "kube-node-lease");
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name,
                          "uid": n.metadata.uid.clone().unwrap_or_default()}]},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now_micro()}
        });
        leases
            .patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&lease))
            .await?;
    }
    Ok(())
}

// ---------------------------------------------------------------- pod dispatch

fn is_terminal(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

fn handle_pod(rt: &Arc<Runner>, pod: Pod) {
    let Some(uid) = pod.metadata.uid.clone() else { return };
    let Some(spec) = pod.spec.as_ref() else { return };
    let deleting = pod.metadata.deletion_timestamp.is_some();
    let node = spec.node_name.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    if node.is_empty() {
        let sched = spec.scheduler_name.as_deref().unwrap_or("default-scheduler");
        let gated = spec.scheduling_gates.as_ref().is_some_and(|g| !g.is_empty());
        if deleting || gated || is_terminal(&pod) || sched != "default-scheduler" {
            return;
        }
        if !rt.binding.lock().unwrap().insert(uid.clone()) {
            return;
        }
        let rt = rt.clone();
        tokio::spawn(async move {
            let api: Api<Pod> = Api::namespaced(rt.ctx.client.clone(), &ns);
            let body = json!({"apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": name, "uid": uid},
                "target": {"apiVersion": "v1", "kind": "Node", "name": rt.ctx.args.node_name}});
            match api
                .create_subresource::<_, Value>("binding", &name, &PostParams::default(), &body)
                .await
            {
                Ok(_) => info!("bound {ns}/{name} to {}", rt.ctx.args.node_name),
                Err(e) => {
                    warn!("binding {ns}/{name}: {e}");
                    rt.binding.lock().unwrap().remove(&uid);
                }
            }
        });
        return;
    }
    if node != rt.ctx.args.node_name {
        return;
    }
    let tracked = rt.pods.lock().unwrap().contains_key(&uid);
    if deleting {
        if tracked {
            let grace = pod
                .metadata
                .deletion_grace_period_seconds
                .or(spec.termination_grace_period_seconds)
                .unwrap_or(30);
            stop_pod(rt, &uid, StopKind::Deleted { grace });
        } else if rt.force_deleting.lock().unwrap().insert(uid.clone()) {
            // Nothing runs for it (finished, or never started): remove it at once.
            let rt = rt.clone();
            tokio::spawn(async move {
                force_delete(&rt, &ns, &name, &uid).await;
            });
        }
        return;
    }
    if tracked || rt.done.lock().unwrap().contains(&uid) {
        return;
    }
    if is_terminal(&pod) {
        rt.done.lock().unwrap().insert(uid);
        return;
    }
    let (tx, rx) = watch::channel(None);
    rt.pods.lock().unwrap().insert(uid.clone(), tx);
    let rt2 = rt.clone();
    let h = tokio::spawn(async move {
        let key = format!("{ns}/{name}");
        if let Err(e) = run_pod(&rt2, pod, rx).await {
            error!("pod {key}: {e:#}");
        }
        rt2.pods.lock().unwrap().remove(&uid);
        rt2.done.lock().unwrap().insert(uid);
    });
    let mut tasks = rt.tasks.lock().unwrap();
    tasks.retain(|t| !t.is_finished());
    tasks.push(h);
}

fn stop_pod(rt: &Runner, uid: &str, kind: StopKind) {
    if let Some(tx) = rt.pods.lock().unwrap().get(uid) {
        let first = tx.borrow().is_none();
        // A real deletion always wins over an earlier deadline / a later "gone".
        if first || matches!(kind, StopKind::Gone | StopKind::Shutdown) {
            let _ = tx.send(Some(kind));
        }
    }
}

async fn force_delete(rt: &Runner, ns: &str, name: &str, uid: &str) {
    let api: Api<Pod> = Api::namespaced(rt.ctx.client.clone(), ns);
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

// ---------------------------------------------------------------- pod lifecycle

#[derive(Clone)]
struct CStat {
    name: String,
    image: String,
    state: Value,
    last_state: Value,
    ready: bool,
    restarts: i32,
    started: bool,
    fin: bool,
    code: Option<i32>,
    cid: Option<String>,
}

impl CStat {
    fn new(c: &Container, waiting: &str) -> Self {
        CStat {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            state: json!({"waiting": {"reason": waiting}}),
            last_state: json!({}),
            ready: false,
            restarts: 0,
            started: false,
            fin: false,
            code: None,
            cid: None,
        }
    }
    fn to_json(&self) -> Value {
        let mut v = json!({"name": self.name, "image": self.image, "imageID": "", "state": self.state,
            "lastState": self.last_state, "ready": self.ready, "restartCount": self.restarts, "started": self.started});
        if let Some(c) = &self.cid {
            v["containerID"] = json!(c);
        }
        v
    }
}

#[derive(Debug)]
enum CEv {
    Waiting {
        init: bool,
        idx: usize,
        reason: String,
        message: String,
    },
    Running {
        init: bool,
        idx: usize,
        started: String,
        pid: u32,
    },
    Ready {
        idx: usize,
        ready: bool,
    },
    Terminated {
        init: bool,
        idx: usize,
        code: i32,
        reason: String,
        message: String,
        started: String,
        finished: String,
        fin: bool,
    },
    Final {
        init: bool,
        idx: usize,
    },
}

struct PodCtx {
    ns: String,
    name: String,
    restart_policy: String,
    grace: i64,
    dir: PathBuf,
    log_dir: PathBuf,
}

struct PodStatus {
    init: Vec<CStat>,
    main: Vec<CStat>,
    start_time: String,
    cond_times: HashMap<String, (String, String)>,
    prepared: bool,
    reason: Option<(String, String)>,
    config_error: Option<String>,
}

async fn run_pod(rt: &Arc<Runner>, pod: Pod, mut stop: watch::Receiver<Option<StopKind>>) -> Result<()> {
    let spec = pod.spec.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let dir = rt
        .ctx
        .args
        .work_dir
        .join(&ns)
        .join(format!("{name}-{}", &uid[..8.min(uid.len())]));
    let log_dir = rt.ctx.args.log_dir.join(&ns).join(&name);
    std::fs::create_dir_all(&dir)?;
    std::fs::create_dir_all(&log_dir)?;
    let init_specs = spec.init_containers.clone().unwrap_or_default();
    let main_specs = spec.containers.clone();
    let mut st = PodStatus {
        init: init_specs.iter().map(|c| CStat::new(c, "PodInitializing")).collect(),
        main: main_specs
            .iter()
            .map(|c| {
                CStat::new(
                    c,
                    if init_specs.is_empty() {
                        "ContainerCreating"
                    } else {
                        "PodInitializing"
                    },
                )
            })
            .collect(),
        start_time: pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0.to_string())
            .unwrap_or_else(now),
        cond_times: HashMap::new(),
        prepared: false,
        reason: None,
        config_error: None,
    };
    info!(
        "starting pod {ns}/{name} ({uid}); dir {} logs {}",
        dir.display(),
        log_dir.display()
    );
    let api: Api<Pod> = Api::namespaced(rt.ctx.client.clone(), &ns);
    let policy = spec.restart_policy.clone().unwrap_or_else(|| "Always".into());
    let grace = spec.termination_grace_period_seconds.unwrap_or(30);
    patch_status(&api, &pod, &mut st, &policy, false).await;

    // Volumes: only emptyDir, as plain directories (mount paths are NOT remapped).
    if let Some(vols) = &spec.volumes {
        for v in vols {
            if v.empty_dir.is_some() {
                let _ = std::fs::create_dir_all(dir.join("volumes").join(&v.name));
            }
        }
    }

    // Prepare: ServiceAccount token + kubeconfig, environment of every container.
    let mut base_env: Vec<(String, String)> = vec![
        ("PATH".into(), rt.ctx.host_path.clone()),
        ("HOME".into(), dir.display().to_string()),
        ("HOSTNAME".into(), name.clone()),
        ("MB_POD_DIR".into(), dir.display().to_string()),
    ];
    let mut envs: Vec<Vec<(String, String)>> = Vec::new();
    let mut init_envs: Vec<Vec<(String, String)>> = Vec::new();
    let mut attempt = 0u32;
    loop {
        let k0 = *stop.borrow();
        if let Some(k) = k0 {
            return finish_stopped(rt, &api, &pod, &mut st, &policy, k).await;
        }
        let r: Result<(), String> = async {
            if spec.automount_service_account_token != Some(false) {
                let kcfg = write_sa_kubeconfig(rt, &pod, &dir)
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                base_env.retain(|(k, _)| k != "KUBECONFIG");
                base_env.push(("KUBECONFIG".into(), kcfg));
            }
            let mut cache = HashMap::new();
            envs.clear();
            init_envs.clear();
            for c in &init_specs {
                init_envs.push(build_env(rt, &pod, c, &base_env, &mut cache).await?);
            }
            for c in &main_specs {
                envs.push(build_env(rt, &pod, c, &base_env, &mut cache).await?);
            }
            Ok(())
        }
        .await;
        match r {
            Ok(()) => break,
            Err(msg) => {
                attempt += 1;
                if attempt == 1 || attempt.is_multiple_of(10) {
                    warn!("pod {ns}/{name}: {msg} (retrying)");
                }
                st.config_error = Some(msg.clone());
                for c in st.init.iter_mut().chain(st.main.iter_mut()) {
                    c.state = json!({"waiting": {"reason": "CreateContainerConfigError", "message": msg}});
                }
                patch_status(&api, &pod, &mut st, &policy, false).await;
                tokio::select! {
                    _ = sleep(Duration::from_secs(2)) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
    st.config_error = None;
    st.prepared = true;
    let pc = Arc::new(PodCtx {
        ns: ns.clone(),
        name: name.clone(),
        restart_policy: policy.clone(),
        grace,
        dir: dir.clone(),
        log_dir,
    });

    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<CEv>();
    let (cstop_tx, cstop_rx) = watch::channel::<Option<StopKind>>(None);
    let spawn_ctr = |init: bool, idx: usize| {
        let c = if init {
            init_specs[idx].clone()
        } else {
            main_specs[idx].clone()
        };
        let env = if init {
            init_envs[idx].clone()
        } else {
            envs[idx].clone()
        };
        tokio::spawn(run_container(
            rt.clone(),
            pc.clone(),
            init,
            idx,
            c,
            env,
            ev_tx.clone(),
            cstop_rx.clone(),
        ))
    };
    let mut handles = Vec::new();
    if init_specs.is_empty() {
        for c in st.main.iter_mut() {
            c.state = json!({"waiting": {"reason": "ContainerCreating"}});
        }
        for i in 0..main_specs.len() {
            handles.push(spawn_ctr(false, i));
        }
    } else {
        handles.push(spawn_ctr(true, 0));
    }
    patch_status(&api, &pod, &mut st, &policy, false).await;
    let deadline = spec.active_deadline_seconds.map(|s| {
        let started = k8s_openapi::jiff::Timestamp::from_str_opt(&st.start_time);
        let elapsed = started
            .map(|t| (k8s_openapi::jiff::Timestamp::now().as_second() - t.as_second()).max(0))
            .unwrap_or(0);
        Instant::now() + Duration::from_secs((s - elapsed).max(0) as u64)
    });
    let mut stopped: Option<StopKind> = None;
    let mut init_failed = false;
    loop {
        tokio::select! {
            Some(ev) = ev_rx.recv() => {
                debug!("pod {ns}/{name}: {ev:?}");
                let mut start_next = None;
                apply_event(&mut st, ev, &mut start_next);
                if let Some((ok, idx)) = start_next {
                    if !ok {
                        init_failed = true;
                    } else if stopped.is_none() {
                        if idx + 1 < init_specs.len() {
                            handles.push(spawn_ctr(true, idx + 1));
                        } else {
                            for c in st.main.iter_mut() {
                                c.state = json!({"waiting": {"reason": "ContainerCreating"}});
                            }
                            for i in 0..main_specs.len() { handles.push(spawn_ctr(false, i)); }
                        }
                    }
                }
                let init_done = st.init.iter().all(|c| c.fin && c.code == Some(0));
                let all_fin = if init_failed || (stopped.is_some() && !init_done) {
                    // Whatever init container ran has finished; mains never started.
                    st.init.iter().all(|c| c.fin || !c.started)
                        && st.main.iter().all(|c| c.fin || !c.started)
                } else {
                    init_done && st.main.iter().all(|c| c.fin)
                };
                if all_fin {
                    if matches!(stopped, Some(StopKind::Gone) | Some(StopKind::Shutdown)) {
                        info!("pod {ns}/{name}: processes stopped ({stopped:?})");
                        return Ok(());
                    }
                    patch_status(&api, &pod, &mut st, &policy, true).await;
                    info!("pod {ns}/{name} finished: {}", pod_phase(&st, &policy, true).0);
                    if matches!(stopped, Some(StopKind::Deleted { .. })) {
                        force_delete(rt, &ns, &name, &uid).await;
                    }
                    return Ok(());
                }
                patch_status(&api, &pod, &mut st, &policy, false).await;
            }
            r = stop.changed(), if stopped.is_none() || matches!(stopped, Some(StopKind::Deadline{..})) => {
                let k = if r.is_err() { Some(StopKind::Gone) } else { *stop.borrow() };
                if let Some(k) = k {
                    info!("pod {ns}/{name}: stopping ({k:?})");
                    stopped = Some(k);
                    let _ = cstop_tx.send(Some(k));
                    if handles.iter().all(|h| h.is_finished()) || !st.prepared {
                        return finish_stopped(rt, &api, &pod, &mut st, &policy, k).await;
                    }
                }
            }
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } }, if stopped.is_none() => {
                info!("pod {ns}/{name}: activeDeadlineSeconds exceeded");
                st.reason = Some(("DeadlineExceeded".into(), "Pod was active on the node longer than the specified deadline".to_string()));
                let k = StopKind::Deadline { grace };
                stopped = Some(k);
                let _ = cstop_tx.send(Some(k));
            }
        }
    }
}

/// The pod stops before any container finished reporting (or none ran).
async fn finish_stopped(
    rt: &Runner,
    api: &Api<Pod>,
    pod: &Pod,
    st: &mut PodStatus,
    policy: &str,
    k: StopKind,
) -> Result<()> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    match k {
        StopKind::Deleted { .. } => {
            force_delete(rt, &ns, &name, &uid).await;
        }
        StopKind::Deadline { .. } => {
            for c in st.init.iter_mut().chain(st.main.iter_mut()) {
                c.fin = true;
            }
            patch_status(api, pod, st, policy, true).await;
        }
        _ => {}
    }
    Ok(())
}

/// Applies a container event; `start_next` = Some((success, idx)) when an init container finished for good.
fn apply_event(st: &mut PodStatus, ev: CEv, start_next: &mut Option<(bool, usize)>) {
    match ev {
        CEv::Waiting {
            init,
            idx,
            reason,
            message,
        } => {
            let c = if init { &mut st.init[idx] } else { &mut st.main[idx] };
            if c.state.get("terminated").is_some() {
                c.last_state = c.state.clone();
            }
            c.state = json!({"waiting": {"reason": reason, "message": message}});
            c.ready = false;
        }
        CEv::Running {
            init,
            idx,
            started,
            pid,
        } => {
            let c = if init { &mut st.init[idx] } else { &mut st.main[idx] };
            if c.state.get("terminated").is_some() {
                c.last_state = c.state.clone();
            }
            if c.started || c.last_state.get("terminated").is_some() && c.code.is_some() {
                c.restarts += 1;
            }
            c.state = json!({"running": {"startedAt": started}});
            c.started = true;
            c.code = None;
            c.cid = Some(format!("mb-pod-runner://{pid}"));
        }
        CEv::Ready { idx, ready } => {
            st.main[idx].ready = ready;
        }
        CEv::Terminated {
            init,
            idx,
            code,
            reason,
            message,
            started,
            finished,
            fin,
        } => {
            let c = if init { &mut st.init[idx] } else { &mut st.main[idx] };
            let mut t = json!({"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": finished});
            if !message.is_empty() {
                t["message"] = json!(message);
            }
            if let Some(cid) = &c.cid {
                t["containerID"] = json!(cid);
            }
            c.state = json!({"terminated": t});
            c.ready = false;
            c.code = Some(code);
            c.started = true;
            c.fin = fin;
            // started=false once it is not running (kubelet semantics of "started").
            if fin && init {
                *start_next = Some((code == 0, idx));
            }
        }
        CEv::Final { init, idx } => {
            let c = if init { &mut st.init[idx] } else { &mut st.main[idx] };
            c.fin = true;
            if init && c.code != Some(0) {
                *start_next = Some((false, idx));
            }
        }
    }
}

fn pod_phase(st: &PodStatus, _policy: &str, fin: bool) -> (&'static str, bool) {
    if st.reason.as_ref().is_some_and(|r| r.0 == "DeadlineExceeded") && fin {
        return ("Failed", false);
    }
    let init_failed = st.init.iter().any(|c| c.fin && c.code.is_some_and(|x| x != 0));
    if init_failed {
        return ("Failed", false);
    }
    let init_done = st.init.iter().all(|c| c.fin && c.code == Some(0));
    if !init_done {
        if fin {
            return ("Failed", false);
        }
        return ("Pending", false);
    }
    if fin || st.main.iter().all(|c| c.fin) {
        if st.main.iter().all(|c| c.code == Some(0)) {
            return ("Succeeded", true);
        }
        return ("Failed", true);
    }
    if st.main.iter().any(|c| c.started) {
        return ("Running", true);
    }
    ("Pending", init_done)
}

async fn patch_status(api: &Api<Pod>, pod: &Pod, st: &mut PodStatus, policy: &str, fin: bool) {
    let (phase, initialized) = pod_phase(st, policy, fin);
    let terminal = phase == "Succeeded" || phase == "Failed";
    let all_ready = !terminal && !st.main.is_empty() && st.main.iter().all(|c| c.ready);
    let t = now();
    let mut conds = Vec::new();
    let mut cond = |typ: &str, ok: bool, reason: Option<&str>| {
        let s = if ok { "True" } else { "False" };
        let e = st
            .cond_times
            .entry(typ.to_string())
            .or_insert_with(|| (s.to_string(), t.clone()));
        if e.0 != s {
            *e = (s.to_string(), t.clone());
        }
        let mut c = json!({"type": typ, "status": s, "lastProbeTime": null, "lastTransitionTime": e.1});
        if let Some(r) = reason {
            c["reason"] = json!(r);
        }
        conds.push(c);
    };
    let not_ready_reason = if terminal {
        Some("PodCompleted")
    } else if all_ready {
        None
    } else {
        Some("ContainersNotReady")
    };
    cond("PodReadyToStartContainers", st.prepared && !terminal, None);
    cond(
        "Initialized",
        initialized,
        if initialized {
            None
        } else {
            Some("ContainersNotInitialized")
        },
    );
    cond("Ready", all_ready, not_ready_reason);
    cond("ContainersReady", all_ready, not_ready_reason);
    cond("PodScheduled", true, None);
    let mut status = json!({
        "phase": phase,
        "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
        "startTime": st.start_time,
        "conditions": conds,
        "containerStatuses": st.main.iter().map(|c| c.to_json()).collect::<Vec<_>>(),
    });
    if !st.init.is_empty() {
        status["initContainerStatuses"] = json!(st.init.iter().map(|c| c.to_json()).collect::<Vec<_>>());
    }
    if let Some((r, m)) = &st.reason {
        status["reason"] = json!(r);
        status["message"] = json!(m);
    }
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

// ---------------------------------------------------------------- service account

async fn write_sa_kubeconfig(rt: &Runner, pod: &Pod, dir: &Path) -> Result<String> {
    let c = &rt.ctx;
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let spec = pod.spec.as_ref().unwrap();
    let sa = spec
        .service_account_name
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into());
    let api: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(c.client.clone(), &ns);
    let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": [], "expirationSeconds": c.args.token_expiration_seconds,
                 "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.metadata.name, "uid": pod.metadata.uid}}});
    let out: Value = api
        .create_subresource("token", &sa, &PostParams::default(), &body)
        .await
        .with_context(|| format!("TokenRequest for serviceaccount {ns}/{sa}"))?;
    let token = out["status"]["token"]
        .as_str()
        .ok_or_else(|| anyhow!("TokenRequest returned no token"))?;
    let mut cluster = json!({"server": c.server});
    if let Some(d) = &c.ca_data {
        cluster["certificate-authority-data"] = json!(d);
    } else if let Some(f) = &c.ca_file {
        cluster["certificate-authority"] = json!(f);
    }
    if c.insecure {
        cluster["insecure-skip-tls-verify"] = json!(true);
    }
    let kc = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "mb-pod-runner", "cluster": cluster}],
        "users": [{"name": format!("system:serviceaccount:{ns}:{sa}"), "user": {"token": token}}],
        "contexts": [{"name": "pod", "context": {"cluster": "mb-pod-runner", "namespace": ns,
                      "user": format!("system:serviceaccount:{ns}:{sa}")}}],
        "current-context": "pod",
    });
    let sadir = dir.join("serviceaccount");
    std::fs::create_dir_all(&sadir)?;
    write_private(&sadir.join("token"), token.as_bytes())?;
    std::fs::write(sadir.join("namespace"), ns.as_bytes())?;
    if let Some(f) = &c.ca_file {
        let _ = std::fs::copy(f, sadir.join("ca.crt"));
    }
    let p = dir.join("kubeconfig");
    write_private(&p, serde_json::to_string_pretty(&kc)?.as_bytes())?;
    Ok(p.display().to_string())
}

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

// ---------------------------------------------------------------- environment

enum Src {
    Secret(Option<Secret>),
    Cm(Option<ConfigMap>),
}

async fn get_src(
    rt: &Runner,
    ns: &str,
    secret: bool,
    name: &str,
    cache: &mut HashMap<String, Src>,
) -> Result<(), String> {
    let key = format!("{}/{name}", if secret { "s" } else { "c" });
    if cache.contains_key(&key) {
        return Ok(());
    }
    let v = if secret {
        Src::Secret(
            Api::<Secret>::namespaced(rt.ctx.client.clone(), ns)
                .get_opt(name)
                .await
                .map_err(|e| format!("getting secret {ns}/{name}: {e}"))?,
        )
    } else {
        Src::Cm(
            Api::<ConfigMap>::namespaced(rt.ctx.client.clone(), ns)
                .get_opt(name)
                .await
                .map_err(|e| format!("getting configmap {ns}/{name}: {e}"))?,
        )
    };
    cache.insert(key, v);
    Ok(())
}

/// All key/value pairs of a Secret or ConfigMap; None when it does not exist.
fn src_data(cache: &HashMap<String, Src>, secret: bool, name: &str) -> Option<Vec<(String, String)>> {
    let key = format!("{}/{name}", if secret { "s" } else { "c" });
    match cache.get(&key)? {
        Src::Secret(Some(s)) => {
            let mut out: Vec<(String, String)> = Vec::new();
            for (k, v) in s.data.clone().unwrap_or_default() {
                out.push((k, String::from_utf8_lossy(&v.0).into_owned()));
            }
            for (k, v) in s.string_data.clone().unwrap_or_default() {
                out.push((k, v));
            }
            Some(out)
        }
        Src::Cm(Some(c)) => {
            let mut out: Vec<(String, String)> = c.data.clone().unwrap_or_default().into_iter().collect();
            for (k, v) in c.binary_data.clone().unwrap_or_default() {
                out.push((k, String::from_utf8_lossy(&v.0).into_owned()));
            }
            Some(out)
        }
        _ => None,
    }
}

fn set_env(env: &mut Vec<(String, String)>, k: String, v: String) {
    if let Some(e) = env.iter_mut().find(|(n, _)| *n == k) {
        e.1 = v;
    } else {
        env.push((k, v));
    }
}

/// Kubernetes `$(VAR)` expansion: `$$` is a literal `$`, unknown `$(X)` stays as is.
fn expand(s: &str, env: &[(String, String)]) -> String {
    let b = s.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'(' {
                if let Some(end) = s[i + 2..].find(')') {
                    let name = &s[i + 2..i + 2 + end];
                    if let Some((_, v)) = env.iter().find(|(k, _)| k == name) {
                        out.push_str(v);
                    } else {
                        out.push_str(&s[i..i + 3 + end]);
                    }
                    i += 3 + end;
                    continue;
                }
            }
        }
        let ch = s[i..].chars().next().unwrap();
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let suffixes: [(&str, f64); 13] = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    for (s, m) in suffixes {
        if let Some(n) = q.strip_suffix(s) {
            return n.parse::<f64>().ok().map(|v| v * m);
        }
    }
    q.parse::<f64>().ok()
}

fn resource_value(rt: &Runner, c: &Container, resource: &str, divisor: Option<&str>) -> Result<String, String> {
    let (kind, res) = resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported resource {resource}"))?;
    let r = c.resources.as_ref();
    let get = |m: Option<
        &std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >| { m.and_then(|m| m.get(res)).map(|q| q.0.clone()) };
    let node_val = match res {
        "cpu" => rt.ctx.cpus.to_string(),
        "memory" => rt.ctx.mem_bytes.to_string(),
        _ => "0".into(),
    };
    let raw = match kind {
        "limits" => get(r.and_then(|r| r.limits.as_ref())).unwrap_or(node_val),
        "requests" => get(r.and_then(|r| r.requests.as_ref()))
            .or_else(|| get(r.and_then(|r| r.limits.as_ref())))
            .unwrap_or_else(|| "0".into()),
        _ => return Err(format!("unsupported resource {resource}")),
    };
    let v = parse_quantity(&raw).ok_or_else(|| format!("bad quantity {raw}"))?;
    let d = divisor.and_then(parse_quantity).filter(|d| *d > 0.0).unwrap_or(1.0);
    Ok(format!("{}", (v / d).ceil() as i64))
}

fn field_value(rt: &Runner, pod: &Pod, path: &str) -> Result<String, String> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref().unwrap();
    let map_get = |m: &Option<std::collections::BTreeMap<String, String>>, key: &str| {
        m.as_ref().and_then(|m| m.get(key)).cloned().unwrap_or_default()
    };
    let ip = rt.ctx.args.node_ip.clone();
    Ok(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.node_name.clone().unwrap_or_default(),
        "spec.serviceAccountName" => spec.service_account_name.clone().unwrap_or_else(|| "default".into()),
        "status.podIP" | "status.hostIP" | "status.podIPs" | "status.hostIPs" => ip,
        p if p.starts_with("metadata.labels['") && p.ends_with("']") => map_get(&m.labels, &p[17..p.len() - 2]),
        p if p.starts_with("metadata.annotations['") && p.ends_with("']") => {
            map_get(&m.annotations, &p[22..p.len() - 2])
        }
        p => return Err(format!("unsupported fieldRef fieldPath {p}")),
    })
}

async fn build_env(
    rt: &Runner,
    pod: &Pod,
    c: &Container,
    base: &[(String, String)],
    cache: &mut HashMap<String, Src>,
) -> Result<Vec<(String, String)>, String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut env: Vec<(String, String)> = base.to_vec();
    for ef in c.env_from.clone().unwrap_or_default() {
        let prefix = ef.prefix.clone().unwrap_or_default();
        let (secret, name, optional) = if let Some(s) = &ef.secret_ref {
            (true, s.name.clone(), s.optional.unwrap_or(false))
        } else if let Some(cm) = &ef.config_map_ref {
            (false, cm.name.clone(), cm.optional.unwrap_or(false))
        } else {
            continue;
        };
        get_src(rt, &ns, secret, &name, cache).await?;
        match src_data(cache, secret, &name) {
            Some(kv) => {
                for (k, v) in kv {
                    set_env(&mut env, format!("{prefix}{k}"), v);
                }
            }
            None if optional => {}
            None => {
                return Err(format!(
                    "{} \"{name}\" not found",
                    if secret { "secret" } else { "configmap" }
                ))
            }
        }
    }
    for e in c.env.clone().unwrap_or_default() {
        let val = if let Some(vf) = &e.value_from {
            if let Some(s) = &vf.secret_key_ref {
                get_src(rt, &ns, true, &s.name, cache).await?;
                let opt = s.optional.unwrap_or(false);
                match src_data(cache, true, &s.name) {
                    None if opt => continue,
                    None => return Err(format!("secret \"{}\" not found", s.name)),
                    Some(kv) => match kv.into_iter().find(|(k, _)| *k == s.key) {
                        Some((_, v)) => v,
                        None if opt => continue,
                        None => return Err(format!("couldn't find key {} in Secret {ns}/{}", s.key, s.name)),
                    },
                }
            } else if let Some(s) = &vf.config_map_key_ref {
                get_src(rt, &ns, false, &s.name, cache).await?;
                let opt = s.optional.unwrap_or(false);
                match src_data(cache, false, &s.name) {
                    None if opt => continue,
                    None => return Err(format!("configmap \"{}\" not found", s.name)),
                    Some(kv) => match kv.into_iter().find(|(k, _)| *k == s.key) {
                        Some((_, v)) => v,
                        None if opt => continue,
                        None => return Err(format!("couldn't find key {} in ConfigMap {ns}/{}", s.key, s.name)),
                    },
                }
            } else if let Some(f) = &vf.field_ref {
                field_value(rt, pod, &f.field_path)?
            } else if let Some(r) = &vf.resource_field_ref {
                resource_value(rt, c, &r.resource, r.divisor.as_ref().map(|d| d.0.as_str()))?
            } else {
                String::new()
            }
        } else {
            expand(e.value.as_deref().unwrap_or(""), &env)
        };
        set_env(&mut env, e.name.clone(), val);
    }
    Ok(env)
}

// ---------------------------------------------------------------- containers

struct Exit {
    code: i32,
    reason: String,
    message: String,
    started: String,
    finished: String,
    stopped: bool,
}

#[allow(clippy::too_many_arguments)]
async fn run_container(
    rt: Arc<Runner>,
    pc: Arc<PodCtx>,
    init: bool,
    idx: usize,
    c: Container,
    env: Vec<(String, String)>,
    ev: mpsc::UnboundedSender<CEv>,
    mut stop: watch::Receiver<Option<StopKind>>,
) {
    let mut backoff = Duration::from_secs(1);
    let max = Duration::from_secs(rt.ctx.args.max_backoff_seconds.max(1));
    loop {
        if stop.borrow().is_some() {
            let _ = ev.send(CEv::Final { init, idx });
            return;
        }
        let began = Instant::now();
        let x = run_once(&rt, &pc, init, idx, &c, &env, &ev, &mut stop).await;
        let restart = !x.stopped
            && match pc.restart_policy.as_str() {
                "Never" => false,
                "OnFailure" => x.code != 0,
                _ => !init || x.code != 0,
            };
        info!(
            "pod {}/{} container {}: exit {} ({}){}",
            pc.ns,
            pc.name,
            c.name,
            x.code,
            x.reason,
            if restart { ", restarting" } else { "" }
        );
        let _ = ev.send(CEv::Terminated {
            init,
            idx,
            code: x.code,
            reason: x.reason,
            message: x.message,
            started: x.started,
            finished: x.finished,
            fin: !restart,
        });
        if !restart {
            return;
        }
        if began.elapsed() > Duration::from_secs(600) {
            backoff = Duration::from_secs(1);
        }
        let _ = ev.send(CEv::Waiting {
            init,
            idx,
            reason: "CrashLoopBackOff".into(),
            message: format!("back-off {}s restarting failed container={}", backoff.as_secs(), c.name),
        });
        tokio::select! {
            _ = sleep(backoff) => {}
            _ = stop.changed() => {}
        }
        backoff = (backoff * 2).min(max);
    }
}

/// The PATH of a typical container image: a bare command name is looked up in the maps
/// under each of these directories first (as the image would resolve it), then on the host.
const IMAGE_PATH: [&str; 6] = [
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

fn map_one(rt: &Runner, argv0: &str) -> Option<String> {
    for (from, to) in &rt.ctx.maps {
        if argv0 == from {
            return Some(to.clone());
        }
        if from.ends_with('/') {
            if let Some(rest) = argv0.strip_prefix(from.as_str()) {
                return Some(format!("{}/{}", to.trim_end_matches('/'), rest));
            }
        }
    }
    None
}

fn map_command(rt: &Runner, argv0: &str) -> String {
    if let Some(m) = map_one(rt, argv0) {
        return m;
    }
    if !argv0.contains('/') {
        for d in IMAGE_PATH {
            if let Some(m) = map_one(rt, &format!("{d}/{argv0}")) {
                return m;
            }
        }
    }
    argv0.to_string()
}

fn kill_group(pid: u32, sig: i32) {
    unsafe {
        libc::kill(-(pid as i32), sig);
    }
}

async fn terminate(
    pid: u32,
    child: &mut tokio::process::Child,
    grace: i64,
) -> std::io::Result<std::process::ExitStatus> {
    kill_group(pid, libc::SIGTERM);
    let g = Duration::from_secs(grace.max(0) as u64);
    match tokio::time::timeout(g, child.wait()).await {
        Ok(r) => {
            kill_group(pid, libc::SIGKILL);
            r
        }
        Err(_) => {
            kill_group(pid, libc::SIGKILL);
            child.wait().await
        }
    }
}

fn exit_info(st: std::io::Result<std::process::ExitStatus>) -> (i32, String) {
    use std::os::unix::process::ExitStatusExt;
    match st {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(0), _) => (0, "Completed".into()),
            (Some(c), _) => (c, "Error".into()),
            (None, Some(sig)) => (128 + sig, "Error".into()),
            _ => (255, "Error".into()),
        },
        Err(e) => (255, format!("Error: {e}")),
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_once(
    rt: &Runner,
    pc: &PodCtx,
    init: bool,
    idx: usize,
    c: &Container,
    env: &[(String, String)],
    ev: &mpsc::UnboundedSender<CEv>,
    stop: &mut watch::Receiver<Option<StopKind>>,
) -> Exit {
    let started = now();
    let fail = |code: i32, reason: &str, message: String| Exit {
        code,
        reason: reason.into(),
        message,
        started: started.clone(),
        finished: now(),
        stopped: false,
    };
    let mut argv: Vec<String> = c.command.clone().unwrap_or_default();
    if argv.is_empty() {
        return fail(
            128,
            "StartError",
            format!(
                "container {} has no command: mb-pod-runner ignores images (image {:?}) and cannot run an image ENTRYPOINT; set command",
                c.name,
                c.image.clone().unwrap_or_default()
            ),
        );
    }
    argv.extend(c.args.clone().unwrap_or_default());
    let argv: Vec<String> = argv.iter().map(|a| expand(a, env)).collect();
    let prog = map_command(rt, &argv[0]);
    if prog.contains('/') && !Path::new(&prog).exists() {
        let msg = if prog == argv[0] {
            format!("exec: {prog}: no such file on this host (images are ignored; map it with --map {prog}=HOST_PATH)")
        } else {
            format!(
                "exec: {} is mapped to {prog}, which does not exist (build it?)",
                argv[0]
            )
        };
        warn!("pod {}/{} container {}: {msg}", pc.ns, pc.name, c.name);
        return fail(128, "StartError", msg);
    }
    let log_path = pc.log_dir.join(format!("{}.log", c.name));
    let out = match std::fs::OpenOptions::new().create(true).append(true).open(&log_path) {
        Ok(f) => f,
        Err(e) => return fail(128, "StartError", format!("opening log {}: {e}", log_path.display())),
    };
    let err = out.try_clone().unwrap();
    let mut cmd = tokio::process::Command::new(&prog);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(&pc.dir)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(ch) => ch,
        Err(e) => {
            let msg = if e.kind() == std::io::ErrorKind::NotFound && !prog.contains('/') {
                format!("exec: {prog}: not found in the maps (as /usr/local/bin/{prog} etc.) nor in the host PATH (map it with --map /usr/local/bin/{prog}=HOST_PATH)")
            } else {
                format!("exec {prog}: {e}")
            };
            warn!("pod {}/{} container {}: {msg}", pc.ns, pc.name, c.name);
            return fail(128, "StartError", msg);
        }
    };
    let pid = child.id().unwrap_or(0);
    info!(
        "pod {}/{} container {}: started pid {pid}: {:?} (log {})",
        pc.ns,
        pc.name,
        c.name,
        std::iter::once(prog.clone())
            .chain(argv[1..].iter().cloned())
            .collect::<Vec<_>>(),
        log_path.display()
    );
    let _ = ev.send(CEv::Running {
        init,
        idx,
        started: started.clone(),
        pid,
    });
    let readiness = if init { None } else { c.readiness_probe.clone() };
    let liveness = if init { None } else { c.liveness_probe.clone() };
    if !init && readiness.is_none() {
        let _ = ev.send(CEv::Ready { idx, ready: true });
    }
    let mk = |p: &Option<Probe>| {
        p.as_ref().map(|p| {
            let d = Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64);
            let period = Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64);
            tokio::time::interval_at(Instant::now() + d, period)
        })
    };
    let mut rtick = mk(&readiness);
    let mut ltick = mk(&liveness);
    let (mut r_ok, mut r_fail, mut ready) = (0i32, 0i32, false);
    let mut l_fail = 0i32;
    async fn tick(t: &mut Option<tokio::time::Interval>) {
        match t {
            Some(t) => {
                t.tick().await;
            }
            None => std::future::pending::<()>().await,
        }
    }
    loop {
        tokio::select! {
            r = child.wait() => {
                kill_group(pid, libc::SIGKILL); // the rest of the "container"
                let (code, reason) = exit_info(r);
                return Exit { code, reason, message: String::new(), started, finished: now(), stopped: false };
            }
            _ = stop.changed() => {
                let k = *stop.borrow();
                let grace = match k {
                    Some(StopKind::Deleted { grace }) | Some(StopKind::Deadline { grace }) => grace,
                    Some(StopKind::Shutdown) => pc.grace.min(5),
                    _ => 2,
                };
                info!("pod {}/{} container {}: SIGTERM to process group {pid} (grace {grace}s)", pc.ns, pc.name, c.name);
                let r = terminate(pid, &mut child, grace).await;
                let (code, reason) = exit_info(r);
                return Exit { code, reason, message: String::new(), started, finished: now(), stopped: true };
            }
            _ = tick(&mut rtick) => {
                let p = readiness.as_ref().unwrap();
                let ok = run_probe(p, c, env, &pc.dir).await;
                if ok { r_ok += 1; r_fail = 0; } else { r_fail += 1; r_ok = 0; }
                if !ready && r_ok >= p.success_threshold.unwrap_or(1) {
                    ready = true;
                    let _ = ev.send(CEv::Ready { idx, ready });
                } else if ready && r_fail >= p.failure_threshold.unwrap_or(3) {
                    ready = false;
                    let _ = ev.send(CEv::Ready { idx, ready });
                }
            }
            _ = tick(&mut ltick) => {
                let p = liveness.as_ref().unwrap();
                if run_probe(p, c, env, &pc.dir).await { l_fail = 0; } else { l_fail += 1; }
                if l_fail >= p.failure_threshold.unwrap_or(3) {
                    info!("pod {}/{} container {}: liveness probe failed {l_fail} times, killing", pc.ns, pc.name, c.name);
                    let grace = p.termination_grace_period_seconds.unwrap_or(pc.grace);
                    let r = terminate(pid, &mut child, grace).await;
                    let (code, reason) = exit_info(r);
                    return Exit { code, reason, message: "liveness probe failed".into(), started, finished: now(), stopped: false };
                }
            }
        }
    }
}

fn probe_port(p: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString, c: &Container) -> Option<u16> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match p {
        IntOrString::Int(i) => u16::try_from(*i).ok(),
        IntOrString::String(s) => s.parse().ok().or_else(|| {
            c.ports
                .as_ref()?
                .iter()
                .find(|cp| cp.name.as_deref() == Some(s.as_str()))
                .and_then(|cp| u16::try_from(cp.container_port).ok())
        }),
    }
}

async fn run_probe(p: &Probe, c: &Container, env: &[(String, String)], dir: &Path) -> bool {
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
    let fut = async {
        if let Some(h) = &p.http_get {
            let Some(port) = probe_port(&h.port, c) else {
                return false;
            };
            let host = h
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "127.0.0.1".into());
            let Ok(mut s) = tokio::net::TcpStream::connect((host.as_str(), port)).await else {
                return false;
            };
            if h.scheme.as_deref() == Some("HTTPS") {
                return true; // TLS not implemented: a TCP connect counts.
            }
            let path = h.path.clone().unwrap_or_else(|| "/".into());
            let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.37\r\nAccept: */*\r\nConnection: close\r\n");
            for hh in h.http_headers.clone().unwrap_or_default() {
                req.push_str(&format!("{}: {}\r\n", hh.name, hh.value));
            }
            req.push_str("\r\n");
            if s.write_all(req.as_bytes()).await.is_err() {
                return false;
            }
            let mut buf = [0u8; 64];
            let mut n = 0;
            while n < 12 {
                match s.read(&mut buf[n..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
            }
            let line = String::from_utf8_lossy(&buf[..n]);
            let code: u16 = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
            (200..400).contains(&code)
        } else if let Some(t) = &p.tcp_socket {
            let Some(port) = probe_port(&t.port, c) else {
                return false;
            };
            let host = t
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "127.0.0.1".into());
            tokio::net::TcpStream::connect((host.as_str(), port)).await.is_ok()
        } else if let Some(e) = &p.exec {
            let argv = e.command.clone().unwrap_or_default();
            if argv.is_empty() {
                return false;
            }
            tokio::process::Command::new(&argv[0])
                .args(&argv[1..])
                .env_clear()
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .current_dir(dir)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .map(|s| s.success())
                .unwrap_or(false)
        } else {
            true // grpc probes: not implemented, counted as success
        }
    };
    tokio::time::timeout(timeout, fut).await.unwrap_or(false)
}

trait TsExt {
    fn from_str_opt(s: &str) -> Option<k8s_openapi::jiff::Timestamp>;
}
impl TsExt for k8s_openapi::jiff::Timestamp {
    fn from_str_opt(s: &str) -> Option<k8s_openapi::jiff::Timestamp> {
        s.parse().ok()
    }
}
