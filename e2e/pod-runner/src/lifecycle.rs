//! Step "pod lifecycle", the state machine: what each container of a Pod is doing, how a
//! container event changes that, and which Pod phase follows. Pure: no IO, no clock (times
//! arrive inside the events). The async driver is pod_worker.rs; the wire format is status.rs.

use k8s_openapi::api::core::v1::Container;
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

/// `status.phase` of a Pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl PodPhase {
    const ALL: [PodPhase; 4] = [
        PodPhase::Pending,
        PodPhase::Running,
        PodPhase::Succeeded,
        PodPhase::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PodPhase::Pending => "Pending",
            PodPhase::Running => "Running",
            PodPhase::Succeeded => "Succeeded",
            PodPhase::Failed => "Failed",
        }
    }

    /// None for anything else the API may hold (`Unknown`, empty).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, PodPhase::Succeeded | PodPhase::Failed)
    }
}

/// `spec.restartPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    const ALL: [RestartPolicy; 3] = [RestartPolicy::Always, RestartPolicy::OnFailure, RestartPolicy::Never];

    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Always => "Always",
            RestartPolicy::OnFailure => "OnFailure",
            RestartPolicy::Never => "Never",
        }
    }

    /// Unset means Always (the API default); an unknown value is treated the same way.
    pub fn from_spec(p: Option<&str>) -> Self {
        Self::ALL
            .into_iter()
            .find(|r| Some(r.as_str()) == p)
            .unwrap_or(RestartPolicy::Always)
    }

    /// Whether a container that exited on its own (not stopped) runs again. Init containers
    /// must succeed once, so under Always they are re-run only after a failure.
    pub fn restarts(self, init: bool, exit_code: i32) -> bool {
        match self {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => exit_code != 0,
            RestartPolicy::Always => !init || exit_code != 0,
        }
    }
}

/// `state.waiting.reason` values the runner reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitingReason {
    ContainerCreating,
    PodInitializing,
    CreateContainerConfigError,
    CrashLoopBackOff,
}

impl WaitingReason {
    pub fn as_str(self) -> &'static str {
        match self {
            WaitingReason::ContainerCreating => "ContainerCreating",
            WaitingReason::PodInitializing => "PodInitializing",
            WaitingReason::CreateContainerConfigError => "CreateContainerConfigError",
            WaitingReason::CrashLoopBackOff => "CrashLoopBackOff",
        }
    }
}

/// `state.terminated.reason`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    Completed,
    Error,
    /// The process could not be started (no command, missing binary, exec failure).
    StartError,
    /// Waiting for the process failed; holds the whole reason text, `Error: <io error>`.
    WaitFailed(String),
}

impl ExitReason {
    pub fn as_str(&self) -> &str {
        match self {
            ExitReason::Completed => "Completed",
            ExitReason::Error => "Error",
            ExitReason::StartError => "StartError",
            ExitReason::WaitFailed(s) => s,
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `state.terminated` of a container.
#[derive(Clone, Debug, PartialEq)]
pub struct Terminated {
    pub exit_code: i32,
    pub reason: ExitReason,
    /// Empty: no `message` field.
    pub message: String,
    pub started_at: String,
    pub finished_at: String,
    pub container_id: Option<String>,
}

/// `state` of a container.
#[derive(Clone, Debug, PartialEq)]
pub enum ContainerState {
    Waiting {
        reason: WaitingReason,
        message: Option<String>,
    },
    Running {
        started_at: String,
    },
    Terminated(Terminated),
}

impl ContainerState {
    pub fn waiting(reason: WaitingReason) -> Self {
        ContainerState::Waiting { reason, message: None }
    }
}

/// One entry of `containerStatuses` / `initContainerStatuses`, plus what the state machine
/// needs to decide the phase.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerStatus {
    pub name: String,
    pub image: String,
    pub state: ContainerState,
    /// The previous termination (`lastState`), once the container was restarted.
    pub last_terminated: Option<Terminated>,
    pub ready: bool,
    pub restart_count: i32,
    pub started: bool,
    /// Will not run again: finished for good or stopped.
    pub done: bool,
    /// Exit code of the last run; None before the first and while running.
    pub exit_code: Option<i32>,
    pub container_id: Option<String>,
}

impl ContainerStatus {
    pub fn new(c: &Container, waiting: WaitingReason) -> Self {
        ContainerStatus {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            state: ContainerState::waiting(waiting),
            last_terminated: None,
            ready: false,
            restart_count: 0,
            started: false,
            done: false,
            exit_code: None,
            container_id: None,
        }
    }

    fn succeeded(&self) -> bool {
        self.done && self.exit_code == Some(0)
    }
}

/// Which container an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub init: bool,
    pub idx: usize,
}

/// What a container's supervisor (process.rs) tells the Pod's worker.
#[derive(Debug)]
pub enum ContainerEvent {
    Waiting {
        slot: Slot,
        reason: WaitingReason,
        message: String,
    },
    Running {
        slot: Slot,
        started: String,
        pid: u32,
    },
    /// Readiness of a main container changed.
    Ready {
        idx: usize,
        ready: bool,
    },
    Terminated {
        slot: Slot,
        code: i32,
        reason: ExitReason,
        message: String,
        started: String,
        finished: String,
        /// No restart follows.
        done: bool,
    },
    /// The supervisor ended without running the process again (stopped during back-off).
    Final {
        slot: Slot,
    },
}

/// An init container will not run again: start the next one (`ok`) or fail the Pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitFinished {
    pub ok: bool,
    pub idx: usize,
}

/// Pod-level reason/message of a failure the runner itself decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodReason {
    DeadlineExceeded,
}

impl PodReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PodReason::DeadlineExceeded => "DeadlineExceeded",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            PodReason::DeadlineExceeded => "Pod was active on the node longer than the specified deadline",
        }
    }
}

/// The phase and whether the `Initialized` condition holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhaseInfo {
    pub phase: PodPhase,
    pub initialized: bool,
}

/// Everything reported about one Pod.
#[derive(Clone, Debug)]
pub struct PodState {
    pub init: Vec<ContainerStatus>,
    pub main: Vec<ContainerStatus>,
    pub start_time: String,
    /// Condition type -> (status, lastTransitionTime): the time changes only with the status.
    pub cond_times: HashMap<&'static str, (bool, String)>,
    /// Token, kubeconfig and environments are ready (`PodReadyToStartContainers`).
    pub prepared: bool,
    pub reason: Option<PodReason>,
}

impl PodState {
    pub fn new(init: &[Container], main: &[Container], start_time: String) -> Self {
        let main_waiting = if init.is_empty() {
            WaitingReason::ContainerCreating
        } else {
            WaitingReason::PodInitializing
        };
        PodState {
            init: init
                .iter()
                .map(|c| ContainerStatus::new(c, WaitingReason::PodInitializing))
                .collect(),
            main: main.iter().map(|c| ContainerStatus::new(c, main_waiting)).collect(),
            start_time,
            cond_times: HashMap::new(),
            prepared: false,
            reason: None,
        }
    }

    fn container_mut(&mut self, slot: Slot) -> &mut ContainerStatus {
        if slot.init {
            &mut self.init[slot.idx]
        } else {
            &mut self.main[slot.idx]
        }
    }

    fn all_mut(&mut self) -> impl Iterator<Item = &mut ContainerStatus> {
        self.init.iter_mut().chain(self.main.iter_mut())
    }

    /// A Secret/ConfigMap/key or the token is missing: every container waits with the message.
    pub fn set_config_error(&mut self, message: &str) {
        for c in self.all_mut() {
            c.state = ContainerState::Waiting {
                reason: WaitingReason::CreateContainerConfigError,
                message: Some(message.to_string()),
            };
        }
    }

    /// The main containers are about to be started.
    pub fn set_main_creating(&mut self) {
        for c in self.main.iter_mut() {
            c.state = ContainerState::waiting(WaitingReason::ContainerCreating);
        }
    }

    /// Stopped before containers reported: none of them will run (again).
    pub fn mark_all_done(&mut self) {
        for c in self.all_mut() {
            c.done = true;
        }
    }

    pub fn init_done(&self) -> bool {
        self.init.iter().all(ContainerStatus::succeeded)
    }

    /// Applies a container event. Returns Some when an init container will not run again.
    pub fn apply(&mut self, ev: ContainerEvent) -> Option<InitFinished> {
        match ev {
            ContainerEvent::Waiting { slot, reason, message } => {
                let c = self.container_mut(slot);
                keep_last_termination(c);
                c.state = ContainerState::Waiting {
                    reason,
                    message: Some(message),
                };
                c.ready = false;
                None
            }
            ContainerEvent::Running { slot, started, pid } => {
                let c = self.container_mut(slot);
                keep_last_termination(c);
                if c.started || c.last_terminated.is_some() && c.exit_code.is_some() {
                    c.restart_count += 1;
                }
                c.state = ContainerState::Running { started_at: started };
                c.started = true;
                c.exit_code = None;
                c.container_id = Some(format!("mb-pod-runner://{pid}"));
                None
            }
            ContainerEvent::Ready { idx, ready } => {
                self.main[idx].ready = ready;
                None
            }
            ContainerEvent::Terminated {
                slot,
                code,
                reason,
                message,
                started,
                finished,
                done,
            } => {
                let c = self.container_mut(slot);
                c.state = ContainerState::Terminated(Terminated {
                    exit_code: code,
                    reason,
                    message,
                    started_at: started,
                    finished_at: finished,
                    container_id: c.container_id.clone(),
                });
                c.ready = false;
                c.exit_code = Some(code);
                // "started" stays true: the kubelet reports it for a container that has run.
                c.started = true;
                c.done = done;
                (done && slot.init).then_some(InitFinished {
                    ok: code == 0,
                    idx: slot.idx,
                })
            }
            ContainerEvent::Final { slot } => {
                let c = self.container_mut(slot);
                c.done = true;
                (slot.init && c.exit_code != Some(0)).then_some(InitFinished {
                    ok: false,
                    idx: slot.idx,
                })
            }
        }
    }

    /// The phase; `fin` = the worker is about to stop reporting (nothing will run any more).
    pub fn phase(&self, fin: bool) -> PhaseInfo {
        let failed = PhaseInfo {
            phase: PodPhase::Failed,
            initialized: false,
        };
        if self.reason == Some(PodReason::DeadlineExceeded) && fin {
            return failed;
        }
        if self.init.iter().any(|c| c.done && c.exit_code.is_some_and(|x| x != 0)) {
            return failed;
        }
        if !self.init_done() {
            let phase = if fin { PodPhase::Failed } else { PodPhase::Pending };
            return PhaseInfo {
                phase,
                initialized: false,
            };
        }
        let initialized = true;
        if fin || self.main.iter().all(|c| c.done) {
            let phase = if self.main.iter().all(|c| c.exit_code == Some(0)) {
                PodPhase::Succeeded
            } else {
                PodPhase::Failed
            };
            return PhaseInfo { phase, initialized };
        }
        if self.main.iter().any(|c| c.started) {
            return PhaseInfo {
                phase: PodPhase::Running,
                initialized,
            };
        }
        PhaseInfo {
            phase: PodPhase::Pending,
            initialized,
        }
    }

    /// Whether every container that will ever run has finished, so the worker can report the
    /// final status. `init_failed`: an init container failed for good; `stopping`: a stop
    /// request arrived (then containers that never started do not count).
    pub fn all_finished(&self, init_failed: bool, stopping: bool) -> bool {
        let init_done = self.init_done();
        if init_failed || (stopping && !init_done) {
            // Whatever init container ran has finished; mains never started.
            self.init.iter().all(|c| c.done || !c.started) && self.main.iter().all(|c| c.done || !c.started)
        } else {
            init_done && self.main.iter().all(|c| c.done)
        }
    }
}

/// A terminated state becomes `lastState` when the container leaves it.
fn keep_last_termination(c: &mut ContainerStatus) {
    if let ContainerState::Terminated(t) = &c.state {
        c.last_terminated = Some(t.clone());
    }
}

/// Time left of `spec.activeDeadlineSeconds`, counted from the Pod's `startTime` (which
/// survives a runner restart); an unparsable start time counts as "just started".
pub fn deadline_remaining(deadline_seconds: i64, start_time: &str, now_seconds: i64) -> Duration {
    let elapsed = start_time
        .parse::<k8s_openapi::jiff::Timestamp>()
        .map(|t| (now_seconds - t.as_second()).max(0))
        .unwrap_or(0);
    Duration::from_secs((deadline_seconds - elapsed).max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(name: &str) -> Container {
        Container {
            name: name.into(),
            image: Some("busybox".into()),
            ..Default::default()
        }
    }

    fn pod(init: &[&str], main: &[&str]) -> PodState {
        let i: Vec<_> = init.iter().map(|n| container(n)).collect();
        let m: Vec<_> = main.iter().map(|n| container(n)).collect();
        PodState::new(&i, &m, "2025-01-01T00:00:00Z".into())
    }

    fn slot(init: bool, idx: usize) -> Slot {
        Slot { init, idx }
    }

    fn running(init: bool, idx: usize, pid: u32) -> ContainerEvent {
        ContainerEvent::Running {
            slot: slot(init, idx),
            started: "t1".into(),
            pid,
        }
    }

    fn terminated(init: bool, idx: usize, code: i32, done: bool) -> ContainerEvent {
        ContainerEvent::Terminated {
            slot: slot(init, idx),
            code,
            reason: if code == 0 {
                ExitReason::Completed
            } else {
                ExitReason::Error
            },
            message: String::new(),
            started: "t1".into(),
            finished: "t2".into(),
            done,
        }
    }

    fn phase(st: &PodState, fin: bool) -> (PodPhase, bool) {
        let p = st.phase(fin);
        (p.phase, p.initialized)
    }

    #[test]
    fn phase_wire_values_round_trip() {
        for p in PodPhase::ALL {
            assert_eq!(PodPhase::parse(p.as_str()), Some(p));
        }
        assert_eq!(PodPhase::parse("Unknown"), None);
        assert!(PodPhase::Succeeded.is_terminal() && PodPhase::Failed.is_terminal());
        assert!(!PodPhase::Pending.is_terminal() && !PodPhase::Running.is_terminal());
    }

    #[test]
    fn restart_policy_from_spec_defaults_to_always() {
        assert_eq!(RestartPolicy::from_spec(None), RestartPolicy::Always);
        assert_eq!(RestartPolicy::from_spec(Some("Never")), RestartPolicy::Never);
        assert_eq!(RestartPolicy::from_spec(Some("OnFailure")), RestartPolicy::OnFailure);
        assert_eq!(RestartPolicy::from_spec(Some("Always")), RestartPolicy::Always);
        assert_eq!(RestartPolicy::from_spec(Some("bogus")), RestartPolicy::Always);
    }

    #[test]
    fn restart_policy_decides_restarts() {
        use RestartPolicy::*;
        assert!(!Never.restarts(false, 1) && !Never.restarts(false, 0) && !Never.restarts(true, 1));
        assert!(OnFailure.restarts(false, 1) && !OnFailure.restarts(false, 0));
        assert!(OnFailure.restarts(true, 2) && !OnFailure.restarts(true, 0));
        assert!(Always.restarts(false, 0) && Always.restarts(false, 137));
        // An init container under Always must succeed once, then stays done.
        assert!(!Always.restarts(true, 0) && Always.restarts(true, 1));
    }

    #[test]
    fn new_pod_waits_creating_or_initializing() {
        let st = pod(&[], &["a", "b"]);
        assert!(st
            .main
            .iter()
            .all(|c| c.state == ContainerState::waiting(WaitingReason::ContainerCreating)));
        let st = pod(&["i"], &["a"]);
        assert_eq!(
            st.init[0].state,
            ContainerState::waiting(WaitingReason::PodInitializing)
        );
        assert_eq!(
            st.main[0].state,
            ContainerState::waiting(WaitingReason::PodInitializing)
        );
        assert_eq!(st.main[0].image, "busybox");
        assert_eq!(phase(&st, false), (PodPhase::Pending, false));
    }

    #[test]
    fn single_container_success_runs_then_succeeds() {
        let mut st = pod(&[], &["a"]);
        assert_eq!(phase(&st, false), (PodPhase::Pending, true));
        assert_eq!(st.apply(running(false, 0, 42)), None);
        assert_eq!(st.main[0].container_id.as_deref(), Some("mb-pod-runner://42"));
        assert_eq!(st.main[0].restart_count, 0);
        assert_eq!(phase(&st, false), (PodPhase::Running, true));
        assert!(!st.all_finished(false, false));
        assert_eq!(st.apply(terminated(false, 0, 0, true)), None);
        assert_eq!(phase(&st, false), (PodPhase::Succeeded, true));
        assert!(st.all_finished(false, false));
        let ContainerState::Terminated(t) = &st.main[0].state else {
            panic!("{:?}", st.main[0].state)
        };
        assert_eq!(t.container_id.as_deref(), Some("mb-pod-runner://42"));
        assert_eq!((t.exit_code, &t.reason), (0, &ExitReason::Completed));
        assert!(st.main[0].started && !st.main[0].ready);
    }

    #[test]
    fn one_failing_container_fails_the_pod() {
        let mut st = pod(&[], &["a", "b"]);
        st.apply(running(false, 0, 1));
        st.apply(running(false, 1, 2));
        st.apply(terminated(false, 0, 0, true));
        assert_eq!(phase(&st, false), (PodPhase::Running, true));
        st.apply(terminated(false, 1, 3, true));
        assert_eq!(phase(&st, false), (PodPhase::Failed, true));
    }

    #[test]
    fn restart_keeps_last_state_and_counts() {
        let mut st = pod(&[], &["a"]);
        st.apply(running(false, 0, 1));
        st.apply(terminated(false, 0, 1, false));
        // Not done: a restart follows, the Pod keeps running.
        assert_eq!(phase(&st, false), (PodPhase::Running, true));
        st.apply(ContainerEvent::Waiting {
            slot: slot(false, 0),
            reason: WaitingReason::CrashLoopBackOff,
            message: "back-off 1s".into(),
        });
        let c = &st.main[0];
        assert_eq!(c.last_terminated.as_ref().map(|t| t.exit_code), Some(1));
        assert_eq!(
            c.state,
            ContainerState::Waiting {
                reason: WaitingReason::CrashLoopBackOff,
                message: Some("back-off 1s".into())
            }
        );
        st.apply(running(false, 0, 2));
        let c = &st.main[0];
        assert_eq!(c.restart_count, 1);
        assert_eq!(c.exit_code, None);
        assert_eq!(c.container_id.as_deref(), Some("mb-pod-runner://2"));
        assert_eq!(c.last_terminated.as_ref().map(|t| t.exit_code), Some(1));
        st.apply(terminated(false, 0, 0, true));
        assert_eq!(phase(&st, false), (PodPhase::Succeeded, true));
        assert_eq!(st.main[0].last_terminated.as_ref().map(|t| t.exit_code), Some(1));
    }

    #[test]
    fn running_straight_after_terminated_moves_it_to_last_state() {
        let mut st = pod(&[], &["a"]);
        st.apply(running(false, 0, 1));
        st.apply(terminated(false, 0, 137, false));
        st.apply(running(false, 0, 2));
        assert_eq!(st.main[0].restart_count, 1);
        assert_eq!(st.main[0].last_terminated.as_ref().map(|t| t.exit_code), Some(137));
    }

    #[test]
    fn ready_follows_events_and_resets_on_exit() {
        let mut st = pod(&[], &["a"]);
        st.apply(running(false, 0, 1));
        st.apply(ContainerEvent::Ready { idx: 0, ready: true });
        assert!(st.main[0].ready);
        st.apply(ContainerEvent::Ready { idx: 0, ready: false });
        assert!(!st.main[0].ready);
        st.apply(ContainerEvent::Ready { idx: 0, ready: true });
        st.apply(terminated(false, 0, 1, false));
        assert!(!st.main[0].ready);
    }

    #[test]
    fn init_containers_gate_the_mains() {
        let mut st = pod(&["i1", "i2"], &["a"]);
        st.apply(running(true, 0, 1));
        assert_eq!(phase(&st, false), (PodPhase::Pending, false));
        assert_eq!(
            st.apply(terminated(true, 0, 0, true)),
            Some(InitFinished { ok: true, idx: 0 })
        );
        assert_eq!(phase(&st, false), (PodPhase::Pending, false));
        st.apply(running(true, 1, 2));
        assert_eq!(
            st.apply(terminated(true, 1, 0, true)),
            Some(InitFinished { ok: true, idx: 1 })
        );
        assert!(st.init_done());
        assert_eq!(phase(&st, false), (PodPhase::Pending, true));
        st.set_main_creating();
        assert_eq!(
            st.main[0].state,
            ContainerState::waiting(WaitingReason::ContainerCreating)
        );
        st.apply(running(false, 0, 3));
        assert_eq!(phase(&st, false), (PodPhase::Running, true));
    }

    #[test]
    fn init_retry_does_not_finish_it_and_failure_fails_the_pod() {
        let mut st = pod(&["i"], &["a"]);
        st.apply(running(true, 0, 1));
        // Retried (OnFailure): not done, no InitFinished yet.
        assert_eq!(st.apply(terminated(true, 0, 1, false)), None);
        assert_eq!(phase(&st, false), (PodPhase::Pending, false));
        st.apply(running(true, 0, 2));
        assert_eq!(
            st.apply(terminated(true, 0, 1, true)),
            Some(InitFinished { ok: false, idx: 0 })
        );
        assert_eq!(phase(&st, false), (PodPhase::Failed, false));
        // Mains never started: that is the end of the Pod.
        assert!(st.all_finished(true, false));
    }

    #[test]
    fn final_event_of_init_container_reports_failure_unless_it_succeeded() {
        let mut st = pod(&["i"], &["a"]);
        st.apply(running(true, 0, 1));
        st.apply(terminated(true, 0, 1, false));
        assert_eq!(
            st.apply(ContainerEvent::Final { slot: slot(true, 0) }),
            Some(InitFinished { ok: false, idx: 0 })
        );
        assert!(st.init[0].done);
        let mut st = pod(&[], &["a"]);
        assert_eq!(st.apply(ContainerEvent::Final { slot: slot(false, 0) }), None);
        assert!(st.main[0].done);
    }

    #[test]
    fn fin_forces_a_terminal_phase() {
        // Stopped while initializing: Failed.
        let st = pod(&["i"], &["a"]);
        assert_eq!(phase(&st, true), (PodPhase::Failed, false));
        // Stopped while running: Failed unless every main exited 0.
        let mut st = pod(&[], &["a"]);
        st.apply(running(false, 0, 1));
        assert_eq!(phase(&st, true), (PodPhase::Failed, true));
        st.apply(terminated(false, 0, 0, false));
        assert_eq!(phase(&st, true), (PodPhase::Succeeded, true));
    }

    #[test]
    fn deadline_exceeded_fails_only_when_final() {
        let mut st = pod(&[], &["a"]);
        st.apply(running(false, 0, 1));
        st.reason = Some(PodReason::DeadlineExceeded);
        assert_eq!(phase(&st, false), (PodPhase::Running, true));
        st.apply(terminated(false, 0, 0, true));
        assert_eq!(phase(&st, true), (PodPhase::Failed, false));
        assert_eq!(PodReason::DeadlineExceeded.as_str(), "DeadlineExceeded");
    }

    #[test]
    fn all_finished_while_stopping_ignores_containers_that_never_started() {
        let mut st = pod(&["i1", "i2"], &["a"]);
        st.apply(running(true, 0, 1));
        assert!(!st.all_finished(false, true));
        st.apply(terminated(true, 0, 143, true));
        assert!(st.all_finished(false, true));
        // Without a stop, the Pod is not finished: it waits for the next init container.
        let mut st = pod(&["i1", "i2"], &["a"]);
        st.apply(running(true, 0, 1));
        st.apply(terminated(true, 0, 0, true));
        assert!(!st.all_finished(false, false));
    }

    #[test]
    fn config_error_and_mark_all_done() {
        let mut st = pod(&["i"], &["a"]);
        st.set_config_error("secret \"s\" not found");
        for c in st.init.iter().chain(&st.main) {
            assert_eq!(
                c.state,
                ContainerState::Waiting {
                    reason: WaitingReason::CreateContainerConfigError,
                    message: Some("secret \"s\" not found".into())
                }
            );
        }
        st.mark_all_done();
        assert!(st.init.iter().chain(&st.main).all(|c| c.done));
    }

    #[test]
    fn deadline_counts_from_start_time() {
        let start = "2025-01-01T00:00:00Z";
        let t0 = start.parse::<k8s_openapi::jiff::Timestamp>().unwrap().as_second();
        assert_eq!(deadline_remaining(10, start, t0 + 3), Duration::from_secs(7));
        assert_eq!(deadline_remaining(10, start, t0 + 30), Duration::ZERO);
        // A clock behind the start time does not extend the deadline.
        assert_eq!(deadline_remaining(10, start, t0 - 5), Duration::from_secs(10));
        assert_eq!(deadline_remaining(10, "garbage", t0), Duration::from_secs(10));
    }

    #[test]
    fn exit_reason_wire_values() {
        assert_eq!(ExitReason::Completed.as_str(), "Completed");
        assert_eq!(ExitReason::Error.to_string(), "Error");
        assert_eq!(ExitReason::StartError.as_str(), "StartError");
        assert_eq!(ExitReason::WaitFailed("Error: boom".into()).as_str(), "Error: boom");
        assert_eq!(WaitingReason::CrashLoopBackOff.as_str(), "CrashLoopBackOff");
    }
}
