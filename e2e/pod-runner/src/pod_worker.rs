//! Step "run one Pod", the async side of the lifecycle: prepare the Pod (pod dir, emptyDir
//! volumes, ServiceAccount kubeconfig, every container's environment, retried while a
//! Secret/ConfigMap is missing), start init containers one by one and then the main
//! containers, feed their events into the state machine of lifecycle.rs, report status,
//! and carry out stop requests and activeDeadlineSeconds. IO: the pod dir, the API (through
//! api.rs, status.rs, env.rs, serviceaccount.rs) and spawning container supervisors.

use crate::api;
use crate::clock::{now, now_seconds};
use crate::env::{build_env, ApiSources, Env};
use crate::lifecycle::{deadline_remaining, ContainerEvent, InitFinished, PodReason, PodState, RestartPolicy, Slot};
use crate::process::{self, ContainerTask, PodContext};
use crate::runner::{Runner, StopKind};
use crate::serviceaccount::write_sa_kubeconfig;
use crate::status;
use anyhow::Result;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use kube::Api;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant};
use tracing::{debug, info, warn};

/// Runs the Pod until nothing of it runs any more. `stop` carries the reason to stop early.
pub async fn run_pod(rt: &Arc<Runner>, pod: Pod, mut stop: watch::Receiver<Option<StopKind>>) -> Result<()> {
    let mut w = PodWorker::new(rt, pod)?;
    w.report(false).await;
    w.create_volumes();
    match w.prepare(&mut stop).await {
        Prepared::Ready(envs) => supervise(w, envs, stop).await,
        Prepared::Stopped(k) => w.finish_stopped(k).await,
    }
}

/// The environment of each init and main container, by index.
#[derive(Default)]
struct Envs {
    init: Vec<Env>,
    main: Vec<Env>,
}

enum Prepared {
    Ready(Envs),
    Stopped(StopKind),
}

struct PodWorker {
    rt: Arc<Runner>,
    api: Api<Pod>,
    pod: Pod,
    spec: PodSpec,
    ns: String,
    name: String,
    uid: String,
    dir: PathBuf,
    log_dir: PathBuf,
    policy: RestartPolicy,
    grace: i64,
    st: PodState,
}

impl PodWorker {
    fn new(rt: &Arc<Runner>, pod: Pod) -> Result<Self> {
        let spec = pod.spec.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let args = &rt.ctx.args;
        // The uid prefix keeps a re-created Pod of the same name out of the old one's files.
        let dir = args
            .work_dir
            .join(&ns)
            .join(format!("{name}-{}", &uid[..8.min(uid.len())]));
        let log_dir = args.log_dir.join(&ns).join(&name);
        std::fs::create_dir_all(&dir)?;
        std::fs::create_dir_all(&log_dir)?;
        // A Pod that ran before a runner restart keeps its startTime (and deadline).
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0.to_string())
            .unwrap_or_else(now);
        let st = PodState::new(
            spec.init_containers.as_deref().unwrap_or(&[]),
            &spec.containers,
            start_time,
        );
        info!(
            "starting pod {ns}/{name} ({uid}); dir {} logs {}",
            dir.display(),
            log_dir.display()
        );
        Ok(PodWorker {
            rt: rt.clone(),
            api: Api::namespaced(rt.ctx.client.clone(), &ns),
            policy: RestartPolicy::from_spec(spec.restart_policy.as_deref()),
            grace: spec.termination_grace_period_seconds.unwrap_or(30),
            pod,
            spec,
            ns,
            name,
            uid,
            dir,
            log_dir,
            st,
        })
    }

    fn init_specs(&self) -> &[Container] {
        self.spec.init_containers.as_deref().unwrap_or(&[])
    }

    async fn report(&mut self, fin: bool) {
        status::report(&self.api, &self.pod, &mut self.st, fin).await;
    }

    /// Only emptyDir, as plain directories: mount paths are NOT remapped.
    fn create_volumes(&self) {
        for v in self.spec.volumes.iter().flatten() {
            if v.empty_dir.is_some() {
                let _ = std::fs::create_dir_all(self.dir.join("volumes").join(&v.name));
            }
        }
    }

    /// Prepares until it works (like the kubelet's CreateContainerConfigError retries, every
    /// 2 s) or a stop request arrives.
    async fn prepare(&mut self, stop: &mut watch::Receiver<Option<StopKind>>) -> Prepared {
        let mut base_env = self.base_env();
        let mut attempt = 0u32;
        loop {
            let requested = *stop.borrow();
            if let Some(k) = requested {
                return Prepared::Stopped(k);
            }
            match self.try_prepare(&mut base_env).await {
                Ok(envs) => {
                    self.st.prepared = true;
                    return Prepared::Ready(envs);
                }
                Err(msg) => {
                    attempt += 1;
                    // The first failure and then every 10th: a missing Secret may take long.
                    if attempt == 1 || attempt.is_multiple_of(10) {
                        warn!("pod {}/{}: {msg} (retrying)", self.ns, self.name);
                    }
                    self.st.set_config_error(&msg);
                    self.report(false).await;
                    tokio::select! {
                        _ = sleep(Duration::from_secs(2)) => {}
                        _ = stop.changed() => {}
                    }
                }
            }
        }
    }

    /// Variables every container gets. KUBERNETES_SERVICE_HOST/PORT are deliberately absent:
    /// in-cluster config cannot work here, so clients fall back to KUBECONFIG.
    fn base_env(&self) -> Env {
        vec![
            ("PATH".into(), self.rt.ctx.host_path.clone()),
            ("HOME".into(), self.dir.display().to_string()),
            ("HOSTNAME".into(), self.name.clone()),
            ("MB_POD_DIR".into(), self.dir.display().to_string()),
        ]
    }

    async fn try_prepare(&self, base_env: &mut Env) -> Result<Envs, String> {
        if self.spec.automount_service_account_token != Some(false) {
            let kcfg = write_sa_kubeconfig(&self.rt.ctx, &self.pod, &self.dir)
                .await
                .map_err(|e| format!("{e:#}"))?;
            base_env.retain(|(k, _)| k != "KUBECONFIG");
            base_env.push(("KUBECONFIG".into(), kcfg));
        }
        let node = &self.rt.ctx.node;
        let mut sources = ApiSources::new(self.rt.ctx.client.clone(), &self.ns);
        let mut envs = Envs::default();
        for c in self.init_specs() {
            envs.init
                .push(build_env(&mut sources, node, &self.pod, c, base_env).await?);
        }
        for c in &self.spec.containers {
            envs.main
                .push(build_env(&mut sources, node, &self.pod, c, base_env).await?);
        }
        Ok(envs)
    }

    /// The Pod stops before any container finished reporting (or none ran).
    async fn finish_stopped(&mut self, k: StopKind) -> Result<()> {
        match k {
            StopKind::Deleted { .. } => self.force_delete().await,
            StopKind::Deadline { .. } => {
                self.st.mark_all_done();
                self.report(true).await;
            }
            StopKind::Gone | StopKind::Shutdown => {}
        }
        Ok(())
    }

    async fn force_delete(&self) {
        api::force_delete(&self.rt.ctx.client, &self.ns, &self.name, &self.uid).await;
    }

    /// When activeDeadlineSeconds runs out, counted from startTime.
    fn deadline(&self) -> Option<Instant> {
        self.spec
            .active_deadline_seconds
            .map(|s| Instant::now() + deadline_remaining(s, &self.st.start_time, now_seconds()))
    }
}

/// The running phase of a Pod: its container supervisors and what has happened to them.
struct Supervisor {
    w: PodWorker,
    envs: Envs,
    pc: Arc<PodContext>,
    events: mpsc::UnboundedSender<ContainerEvent>,
    /// The containers' own stop channel: they are stopped by dispatch's requests and also by
    /// the deadline, which only this worker knows about.
    stop_containers: watch::Sender<Option<StopKind>>,
    containers_stop: watch::Receiver<Option<StopKind>>,
    handles: Vec<JoinHandle<()>>,
    stopped: Option<StopKind>,
    init_failed: bool,
}

async fn supervise(w: PodWorker, envs: Envs, mut stop: watch::Receiver<Option<StopKind>>) -> Result<()> {
    let (events, mut event_rx) = mpsc::unbounded_channel::<ContainerEvent>();
    let (stop_containers, containers_stop) = watch::channel::<Option<StopKind>>(None);
    let pc = Arc::new(PodContext {
        ns: w.ns.clone(),
        name: w.name.clone(),
        restart_policy: w.policy,
        grace: w.grace,
        dir: w.dir.clone(),
        log_dir: w.log_dir.clone(),
    });
    let mut s = Supervisor {
        w,
        envs,
        pc,
        events,
        stop_containers,
        containers_stop,
        handles: Vec::new(),
        stopped: None,
        init_failed: false,
    };
    s.start_first();
    s.w.report(false).await;
    let deadline = s.w.deadline();
    loop {
        tokio::select! {
            Some(ev) = event_rx.recv() => {
                if let Some(done) = s.on_event(ev).await {
                    return done;
                }
            }
            // After a deadline, a deletion or the Pod's disappearance may still follow.
            r = stop.changed(), if s.stopped.is_none() || matches!(s.stopped, Some(StopKind::Deadline { .. })) => {
                let k = if r.is_err() { Some(StopKind::Gone) } else { *stop.borrow() };
                if let Some(done) = s.on_stop(k).await {
                    return done;
                }
            }
            _ = sleep_until(deadline), if s.stopped.is_none() => s.on_deadline(),
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl Supervisor {
    fn spawn(&mut self, slot: Slot) {
        let (specs, envs) = if slot.init {
            (self.w.init_specs(), &self.envs.init)
        } else {
            (&self.w.spec.containers[..], &self.envs.main)
        };
        let task = ContainerTask {
            rt: self.w.rt.clone(),
            pod: self.pc.clone(),
            slot,
            spec: specs[slot.idx].clone(),
            env: envs[slot.idx].clone(),
            events: self.events.clone(),
        };
        let h = tokio::spawn(process::run_container(task, self.containers_stop.clone()));
        self.handles.push(h);
    }

    fn start_first(&mut self) {
        if self.w.init_specs().is_empty() {
            self.start_main();
        } else {
            self.spawn(Slot { init: true, idx: 0 });
        }
    }

    fn start_main(&mut self) {
        self.w.st.set_main_creating();
        for idx in 0..self.w.spec.containers.len() {
            self.spawn(Slot { init: false, idx });
        }
    }

    /// Some(result) when the Pod is finished.
    async fn on_event(&mut self, ev: ContainerEvent) -> Option<Result<()>> {
        debug!("pod {}/{}: {ev:?}", self.w.ns, self.w.name);
        if let Some(f) = self.w.st.apply(ev) {
            self.on_init_finished(f);
        }
        if self.w.st.all_finished(self.init_failed, self.stopped.is_some()) {
            return Some(self.finish().await);
        }
        self.w.report(false).await;
        None
    }

    fn on_init_finished(&mut self, f: InitFinished) {
        if !f.ok {
            self.init_failed = true;
        } else if self.stopped.is_none() {
            if f.idx + 1 < self.w.init_specs().len() {
                self.spawn(Slot {
                    init: true,
                    idx: f.idx + 1,
                });
            } else {
                self.start_main();
            }
        }
    }

    /// Everything ran: the final report, unless nobody is there to read it.
    async fn finish(&mut self) -> Result<()> {
        let (ns, name) = (&self.w.ns, &self.w.name);
        if matches!(self.stopped, Some(StopKind::Gone) | Some(StopKind::Shutdown)) {
            info!("pod {ns}/{name}: processes stopped ({:?})", self.stopped);
            return Ok(());
        }
        self.w.report(true).await;
        info!(
            "pod {}/{} finished: {}",
            self.w.ns,
            self.w.name,
            self.w.st.phase(true).phase.as_str()
        );
        if matches!(self.stopped, Some(StopKind::Deleted { .. })) {
            self.w.force_delete().await;
        }
        Ok(())
    }

    /// Some(result) when nothing runs any more, so no container event will end the Pod.
    async fn on_stop(&mut self, k: Option<StopKind>) -> Option<Result<()>> {
        let k = k?;
        info!("pod {}/{}: stopping ({k:?})", self.w.ns, self.w.name);
        self.stopped = Some(k);
        let _ = self.stop_containers.send(Some(k));
        if self.handles.iter().all(|h| h.is_finished()) {
            return Some(self.w.finish_stopped(k).await);
        }
        None
    }

    fn on_deadline(&mut self) {
        info!("pod {}/{}: activeDeadlineSeconds exceeded", self.w.ns, self.w.name);
        self.w.st.reason = Some(PodReason::DeadlineExceeded);
        let k = StopKind::Deadline { grace: self.w.grace };
        self.stopped = Some(k);
        let _ = self.stop_containers.send(Some(k));
    }
}
