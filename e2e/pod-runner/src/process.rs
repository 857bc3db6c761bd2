//! Step "supervise a container": runs one container's command as a host process in its own
//! process group (clean environment, stdin /dev/null, output appended to the container log,
//! cwd = pod dir), restarts it per restartPolicy with back-off, runs its probes, and kills
//! its whole group when it exits or is stopped. Reports through [`ContainerEvent`]s.
//! IO: processes, signals, the log file. Pure: command mapping, exit decoding, back-off.

use crate::clock::now;
use crate::env::expand;
use crate::lifecycle::{ContainerEvent, ExitReason, RestartPolicy, Slot, WaitingReason};
use crate::probes::{self, Liveness, Readiness};
use crate::runner::{Runner, StopKind};
use k8s_openapi::api::core::v1::Container;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::process::Child;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, Instant};
use tracing::{info, warn};

/// What every container of a Pod shares.
pub struct PodContext {
    pub ns: String,
    pub name: String,
    pub restart_policy: RestartPolicy,
    /// terminationGracePeriodSeconds.
    pub grace: i64,
    pub dir: PathBuf,
    pub log_dir: PathBuf,
}

/// One container to supervise.
pub struct ContainerTask {
    pub rt: Arc<Runner>,
    pub pod: Arc<PodContext>,
    pub slot: Slot,
    pub spec: Container,
    pub env: Vec<(String, String)>,
    pub events: mpsc::UnboundedSender<ContainerEvent>,
}

/// How one run of the process ended.
struct Exit {
    code: i32,
    reason: ExitReason,
    message: String,
    started: String,
    finished: String,
    /// Ended by a stop request: never restarted.
    stopped: bool,
}

impl Exit {
    fn start_error(started: String, message: String) -> Self {
        Exit {
            code: 128,
            reason: ExitReason::StartError,
            message,
            started,
            finished: now(),
            stopped: false,
        }
    }

    fn of(r: std::io::Result<std::process::ExitStatus>, started: String, message: &str, stopped: bool) -> Self {
        let (code, reason) = exit_info(r);
        Exit {
            code,
            reason,
            message: message.into(),
            started,
            finished: now(),
            stopped,
        }
    }
}

/// Restart back-off: 1 s, doubling up to `--max-backoff-seconds`.
#[derive(Debug)]
pub struct Backoff {
    current: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(max_seconds: u64) -> Self {
        Backoff {
            current: Duration::from_secs(1),
            max: Duration::from_secs(max_seconds.max(1)),
        }
    }

    pub fn current(&self) -> Duration {
        self.current
    }

    pub fn reset(&mut self) {
        self.current = Duration::from_secs(1);
    }

    pub fn grow(&mut self) {
        self.current = (self.current * 2).min(self.max);
    }
}

/// A run that lasted this long resets the back-off (the kubelet's rule, at its scale).
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(600);

/// Runs the container until it will not run again; the last event is Terminated or Final.
pub async fn run_container(task: ContainerTask, mut stop: watch::Receiver<Option<StopKind>>) {
    let slot = task.slot;
    let mut backoff = Backoff::new(task.rt.ctx.args.max_backoff_seconds);
    loop {
        if stop.borrow().is_some() {
            let _ = task.events.send(ContainerEvent::Final { slot });
            return;
        }
        let began = Instant::now();
        let x = task.run_once(&mut stop).await;
        let restart = !x.stopped && task.pod.restart_policy.restarts(slot.init, x.code);
        info!(
            "pod {}/{} container {}: exit {} ({}){}",
            task.pod.ns,
            task.pod.name,
            task.spec.name,
            x.code,
            x.reason,
            if restart { ", restarting" } else { "" }
        );
        let _ = task.events.send(ContainerEvent::Terminated {
            slot,
            code: x.code,
            reason: x.reason,
            message: x.message,
            started: x.started,
            finished: x.finished,
            done: !restart,
        });
        if !restart {
            return;
        }
        if began.elapsed() > BACKOFF_RESET_AFTER {
            backoff.reset();
        }
        let _ = task.events.send(ContainerEvent::Waiting {
            slot,
            reason: WaitingReason::CrashLoopBackOff,
            message: format!(
                "back-off {}s restarting failed container={}",
                backoff.current().as_secs(),
                task.spec.name
            ),
        });
        tokio::select! {
            _ = sleep(backoff.current()) => {}
            _ = stop.changed() => {}
        }
        backoff.grow();
    }
}

impl ContainerTask {
    /// One run of the process: start it, then watch it until it exits or is stopped.
    async fn run_once(&self, stop: &mut watch::Receiver<Option<StopKind>>) -> Exit {
        let started = now();
        let argv = match command_line(&self.spec, &self.env) {
            Ok(a) => a,
            Err(msg) => return Exit::start_error(started, msg),
        };
        let prog = match self.program(&argv[0]) {
            Ok(p) => p,
            Err(msg) => return Exit::start_error(started, msg),
        };
        let (child, log_path) = match self.spawn(&prog, &argv[1..]) {
            Ok(x) => x,
            Err(msg) => return Exit::start_error(started, msg),
        };
        let pid = child.id().unwrap_or(0);
        info!(
            "pod {}/{} container {}: started pid {pid}: {:?} (log {})",
            self.pod.ns,
            self.pod.name,
            self.spec.name,
            std::iter::once(prog.clone())
                .chain(argv[1..].iter().cloned())
                .collect::<Vec<_>>(),
            log_path.display()
        );
        let _ = self.events.send(ContainerEvent::Running {
            slot: self.slot,
            started: started.clone(),
            pid,
        });
        self.watch(child, pid, started, stop).await
    }

    fn warn_start(&self, msg: &str) {
        warn!(
            "pod {}/{} container {}: {msg}",
            self.pod.ns, self.pod.name, self.spec.name
        );
    }

    /// The host program for `argv0`; an absolute path must exist (there is no image to
    /// provide it), a bare name is left to the host PATH.
    fn program(&self, argv0: &str) -> Result<String, String> {
        let prog = map_command(&self.rt.ctx.maps, argv0);
        if prog.contains('/') && !Path::new(&prog).exists() {
            let msg = if prog == argv0 {
                format!(
                    "exec: {prog}: no such file on this host (images are ignored; map it with --map {prog}=HOST_PATH)"
                )
            } else {
                format!("exec: {argv0} is mapped to {prog}, which does not exist (build it?)")
            };
            self.warn_start(&msg);
            return Err(msg);
        }
        Ok(prog)
    }

    /// Starts the process in its own process group, so that it and everything it forks can
    /// be signalled together, as the end of a container's PID namespace would.
    fn spawn(&self, prog: &str, args: &[String]) -> Result<(Child, PathBuf), String> {
        let log_path = self.pod.log_dir.join(format!("{}.log", self.spec.name));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("opening log {}: {e}", log_path.display()))?;
        let err = out.try_clone().unwrap();
        let mut cmd = tokio::process::Command::new(prog);
        cmd.args(args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(&self.pod.dir)
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(true);
        match cmd.spawn() {
            Ok(child) => Ok((child, log_path)),
            Err(e) => {
                let msg = if e.kind() == std::io::ErrorKind::NotFound && !prog.contains('/') {
                    format!("exec: {prog}: not found in the maps (as /usr/local/bin/{prog} etc.) nor in the host PATH (map it with --map /usr/local/bin/{prog}=HOST_PATH)")
                } else {
                    format!("exec {prog}: {e}")
                };
                self.warn_start(&msg);
                Err(msg)
            }
        }
    }

    /// Waits for the process while running its probes; handles stop requests and liveness kills.
    async fn watch(
        &self,
        mut child: Child,
        pid: u32,
        started: String,
        stop: &mut watch::Receiver<Option<StopKind>>,
    ) -> Exit {
        let (ns, name, cname) = (&self.pod.ns, &self.pod.name, &self.spec.name);
        // Probes of init containers are not run (sidecars count as ordinary init containers).
        let readiness = self.spec.readiness_probe.as_ref().filter(|_| !self.slot.init);
        let liveness = self.spec.liveness_probe.as_ref().filter(|_| !self.slot.init);
        if !self.slot.init && readiness.is_none() {
            self.send_ready(true);
        }
        let mut rtick = probes::ticker(readiness);
        let mut ltick = probes::ticker(liveness);
        let mut ready = Readiness::default();
        let mut live = Liveness::default();
        loop {
            tokio::select! {
                r = child.wait() => {
                    kill_group(pid, libc::SIGKILL); // the rest of the "container"
                    return Exit::of(r, started, "", false);
                }
                _ = stop.changed() => {
                    let grace = stop_grace(*stop.borrow(), self.pod.grace);
                    info!("pod {ns}/{name} container {cname}: SIGTERM to process group {pid} (grace {grace}s)");
                    let r = terminate(pid, &mut child, grace).await;
                    return Exit::of(r, started, "", true);
                }
                _ = probes::tick(&mut rtick) => {
                    let p = readiness.unwrap();
                    let ok = probes::run_probe(p, &self.spec, &self.env, &self.pod.dir).await;
                    if let Some(r) = ready.observe(p, ok) {
                        self.send_ready(r);
                    }
                }
                _ = probes::tick(&mut ltick) => {
                    let p = liveness.unwrap();
                    let ok = probes::run_probe(p, &self.spec, &self.env, &self.pod.dir).await;
                    if live.observe(p, ok) {
                        let n = live.failures;
                        info!("pod {ns}/{name} container {cname}: liveness probe failed {n} times, killing");
                        let grace = p.termination_grace_period_seconds.unwrap_or(self.pod.grace);
                        let r = terminate(pid, &mut child, grace).await;
                        return Exit::of(r, started, "liveness probe failed", false);
                    }
                }
            }
        }
    }

    fn send_ready(&self, ready: bool) {
        let _ = self.events.send(ContainerEvent::Ready {
            idx: self.slot.idx,
            ready,
        });
    }
}

/// `command` + `args` with `$(VAR)` expanded. Without `command` nothing can run: the
/// image's ENTRYPOINT is unknown here.
fn command_line(c: &Container, env: &[(String, String)]) -> Result<Vec<String>, String> {
    let mut argv: Vec<String> = c.command.clone().unwrap_or_default();
    if argv.is_empty() {
        return Err(format!(
            "container {} has no command: mb-pod-runner ignores images (image {:?}) and cannot run an image ENTRYPOINT; set command",
            c.name,
            c.image.clone().unwrap_or_default()
        ));
    }
    argv.extend(c.args.clone().unwrap_or_default());
    Ok(argv.iter().map(|a| expand(a, env)).collect())
}

/// Grace period for a stop request. Shutdown is capped so the runner stops quickly; a Pod
/// that vanished gets 2 s, as nobody waits for its status.
fn stop_grace(k: Option<StopKind>, pod_grace: i64) -> i64 {
    match k {
        Some(StopKind::Deleted { grace }) | Some(StopKind::Deadline { grace }) => grace,
        Some(StopKind::Shutdown) => pod_grace.min(5),
        _ => 2,
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

/// The first `--map` matching `argv0` exactly or, for a FROM ending in `/`, as a prefix.
fn map_one(maps: &[(String, String)], argv0: &str) -> Option<String> {
    for (from, to) in maps {
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

/// Where the command of the Pod spec runs on this host; unmapped commands are unchanged.
pub fn map_command(maps: &[(String, String)], argv0: &str) -> String {
    if let Some(m) = map_one(maps, argv0) {
        return m;
    }
    if !argv0.contains('/') {
        for d in IMAGE_PATH {
            if let Some(m) = map_one(maps, &format!("{d}/{argv0}")) {
                return m;
            }
        }
    }
    argv0.to_string()
}

fn kill_group(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid addresses the
    // process group, which the child leads (process_group(0)).
    unsafe {
        libc::kill(-(pid as i32), sig);
    }
}

/// SIGTERM to the group, SIGKILL after `grace` seconds; the group is SIGKILLed even when the
/// leader exits in time, so nothing it forked outlives the "container".
async fn terminate(pid: u32, child: &mut Child, grace: i64) -> std::io::Result<std::process::ExitStatus> {
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

/// Exit code and reason as the kubelet reports them: 128+N for signal N.
fn exit_info(st: std::io::Result<std::process::ExitStatus>) -> (i32, ExitReason) {
    use std::os::unix::process::ExitStatusExt;
    match st {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(0), _) => (0, ExitReason::Completed),
            (Some(c), _) => (c, ExitReason::Error),
            (None, Some(sig)) => (128 + sig, ExitReason::Error),
            _ => (255, ExitReason::Error),
        },
        Err(e) => (255, ExitReason::WaitFailed(format!("Error: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    fn maps(m: &[(&str, &str)]) -> Vec<(String, String)> {
        m.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn command_mapping() {
        let m = maps(&[
            ("/usr/local/bin/milvus-backfill", "/repo/target/release/milvus-backfill"),
            ("/opt/tools/", "/host/tools/"),
            ("/usr/bin/", "/elsewhere"),
        ]);
        assert_eq!(
            map_command(&m, "/usr/local/bin/milvus-backfill"),
            "/repo/target/release/milvus-backfill"
        );
        // A bare name resolves through the image PATH into the maps.
        assert_eq!(
            map_command(&m, "milvus-backfill"),
            "/repo/target/release/milvus-backfill"
        );
        assert_eq!(map_command(&m, "/opt/tools/sub/x"), "/host/tools/sub/x");
        // /usr/local/bin comes before /usr/bin in the image PATH; only /usr/bin/ matches "env".
        assert_eq!(map_command(&m, "env"), "/elsewhere/env");
        // Unmapped: unchanged (absolute paths and bare names alike).
        assert_eq!(map_command(&m, "/bin/sh"), "/bin/sh");
        assert_eq!(map_command(&[], "sleep"), "sleep");
        // A relative path with a slash is not looked up in the image PATH.
        assert_eq!(map_command(&m, "bin/milvus-backfill"), "bin/milvus-backfill");
    }

    #[test]
    fn first_matching_map_wins() {
        let m = maps(&[("/usr/local/bin/", "/a"), ("/usr/local/bin/x", "/b")]);
        assert_eq!(map_command(&m, "/usr/local/bin/x"), "/a/x");
        let m = maps(&[("/usr/local/bin/x", "/b"), ("/usr/local/bin/", "/a")]);
        assert_eq!(map_command(&m, "/usr/local/bin/x"), "/b");
    }

    #[test]
    fn command_line_appends_args_and_expands() {
        let c: Container = serde_json::from_value(json!({"name": "m", "image": "busybox",
            "command": ["/bin/echo", "$(A)"], "args": ["$$(A)", "$(B)"]}))
        .unwrap();
        let env = vec![("A".to_string(), "1".to_string())];
        assert_eq!(command_line(&c, &env).unwrap(), ["/bin/echo", "1", "$(A)", "$(B)"]);
        let no_cmd: Container =
            serde_json::from_value(json!({"name": "m", "image": "busybox", "args": ["x"]})).unwrap();
        assert_eq!(
            command_line(&no_cmd, &env).unwrap_err(),
            "container m has no command: mb-pod-runner ignores images (image \"busybox\") and cannot run an image ENTRYPOINT; set command"
        );
    }

    #[test]
    fn exit_codes_and_signals() {
        assert_eq!(exit_info(Ok(ExitStatus::from_raw(0))), (0, ExitReason::Completed));
        assert_eq!(exit_info(Ok(ExitStatus::from_raw(3 << 8))), (3, ExitReason::Error));
        assert_eq!(
            exit_info(Ok(ExitStatus::from_raw(libc::SIGKILL))),
            (137, ExitReason::Error)
        );
        assert_eq!(
            exit_info(Ok(ExitStatus::from_raw(libc::SIGTERM))),
            (143, ExitReason::Error)
        );
        let (code, reason) = exit_info(Err(std::io::Error::other("boom")));
        assert_eq!((code, reason.as_str()), (255, "Error: boom"));
    }

    #[test]
    fn grace_per_stop_kind() {
        assert_eq!(stop_grace(Some(StopKind::Deleted { grace: 7 }), 30), 7);
        assert_eq!(stop_grace(Some(StopKind::Deadline { grace: 9 }), 30), 9);
        assert_eq!(stop_grace(Some(StopKind::Shutdown), 30), 5);
        assert_eq!(stop_grace(Some(StopKind::Shutdown), 3), 3);
        assert_eq!(stop_grace(Some(StopKind::Gone), 30), 2);
        assert_eq!(stop_grace(None, 30), 2);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Backoff::new(30);
        let mut seen = Vec::new();
        for _ in 0..7 {
            seen.push(b.current().as_secs());
            b.grow();
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 30, 30]);
        b.reset();
        assert_eq!(b.current(), Duration::from_secs(1));
        let mut zero = Backoff::new(0);
        zero.grow();
        assert_eq!(zero.current(), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn terminate_kills_the_whole_group() {
        let mut child = tokio::process::Command::new("/bin/sh")
            .args(["-c", "sleep 100 & sleep 100; wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (code, reason) = exit_info(terminate(pid, &mut child, 5).await);
        assert_eq!((code, reason), (143, ExitReason::Error));
        // No process of the group is left (the orphaned sleep is reaped by init).
        let group_alive = || unsafe { libc::kill(-(pid as i32), 0) } == 0;
        for _ in 0..50 {
            if !group_alive() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!group_alive());
    }
}
