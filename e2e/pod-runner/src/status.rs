//! Step "report status": turns a [`PodState`] into the `status` a kubelet would post
//! (phase, conditions, container statuses). Building the JSON is pure; only [`report`]
//! does IO, by handing the result to api.rs.

use crate::api;
use crate::clock::now;
use crate::lifecycle::{ContainerState, ContainerStatus, PhaseInfo, PodState, Terminated};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use serde_json::{json, Value};

/// Patches the Pod's status; `fin` = this is the last report (the phase must be terminal).
pub async fn report(api: &Api<Pod>, pod: &Pod, st: &mut PodState, fin: bool) {
    let status = build_status(st, fin, &now());
    api::patch_pod_status(api, pod, status).await;
}

/// The `status` object. Mutates only `st.cond_times`, so that a condition's
/// lastTransitionTime changes when its status does and not at every report.
pub fn build_status(st: &mut PodState, fin: bool, now: &str) -> Value {
    let info = st.phase(fin);
    let conditions = conditions(st, info, now);
    let mut status = json!({
        "phase": info.phase.as_str(),
        "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
        "startTime": st.start_time,
        "conditions": conditions,
        "containerStatuses": st.main.iter().map(container_status_json).collect::<Vec<_>>(),
    });
    if !st.init.is_empty() {
        status["initContainerStatuses"] = json!(st.init.iter().map(container_status_json).collect::<Vec<_>>());
    }
    if let Some(r) = st.reason {
        status["reason"] = json!(r.as_str());
        status["message"] = json!(r.message());
    }
    status
}

fn conditions(st: &mut PodState, info: PhaseInfo, now: &str) -> Vec<Value> {
    let terminal = info.phase.is_terminal();
    let all_ready = !terminal && !st.main.is_empty() && st.main.iter().all(|c| c.ready);
    let not_ready_reason = if terminal {
        Some("PodCompleted")
    } else if all_ready {
        None
    } else {
        Some("ContainersNotReady")
    };
    let initialized_reason = (!info.initialized).then_some("ContainersNotInitialized");
    let wanted = [
        ("PodReadyToStartContainers", st.prepared && !terminal, None),
        ("Initialized", info.initialized, initialized_reason),
        ("Ready", all_ready, not_ready_reason),
        ("ContainersReady", all_ready, not_ready_reason),
        ("PodScheduled", true, None),
    ];
    wanted
        .into_iter()
        .map(|(typ, ok, reason)| {
            let e = st.cond_times.entry(typ).or_insert_with(|| (ok, now.to_string()));
            if e.0 != ok {
                *e = (ok, now.to_string());
            }
            let mut c = json!({"type": typ, "status": if ok { "True" } else { "False" },
                "lastProbeTime": null, "lastTransitionTime": e.1});
            if let Some(r) = reason {
                c["reason"] = json!(r);
            }
            c
        })
        .collect()
}

pub fn container_status_json(c: &ContainerStatus) -> Value {
    let last_state = match &c.last_terminated {
        Some(t) => json!({"terminated": terminated_json(t)}),
        None => json!({}),
    };
    let mut v = json!({"name": c.name, "image": c.image, "imageID": "", "state": state_json(&c.state),
        "lastState": last_state, "ready": c.ready, "restartCount": c.restart_count, "started": c.started});
    if let Some(id) = &c.container_id {
        v["containerID"] = json!(id);
    }
    v
}

fn state_json(s: &ContainerState) -> Value {
    match s {
        ContainerState::Waiting { reason, message } => {
            let mut w = json!({"reason": reason.as_str()});
            if let Some(m) = message {
                w["message"] = json!(m);
            }
            json!({ "waiting": w })
        }
        ContainerState::Running { started_at } => json!({"running": {"startedAt": started_at}}),
        ContainerState::Terminated(t) => json!({ "terminated": terminated_json(t) }),
    }
}

fn terminated_json(t: &Terminated) -> Value {
    let mut v = json!({"exitCode": t.exit_code, "reason": t.reason.as_str(),
        "startedAt": t.started_at, "finishedAt": t.finished_at});
    if !t.message.is_empty() {
        v["message"] = json!(t.message);
    }
    if let Some(id) = &t.container_id {
        v["containerID"] = json!(id);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::{ContainerEvent, ExitReason, PodReason, Slot, WaitingReason};
    use k8s_openapi::api::core::v1::Container;

    fn pod(init: &[&str], main: &[&str]) -> PodState {
        let mk = |n: &&str| Container {
            name: n.to_string(),
            image: Some("img".into()),
            ..Default::default()
        };
        let i: Vec<_> = init.iter().map(mk).collect();
        let m: Vec<_> = main.iter().map(mk).collect();
        PodState::new(&i, &m, "2025-01-01T00:00:00Z".into())
    }

    fn cond<'a>(status: &'a Value, typ: &str) -> &'a Value {
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == typ)
            .unwrap_or_else(|| panic!("no condition {typ}: {status}"))
    }

    fn main_slot() -> Slot {
        Slot { init: false, idx: 0 }
    }

    #[test]
    fn pending_pod_status() {
        let mut st = pod(&[], &["main"]);
        let s = build_status(&mut st, false, "T0");
        assert_eq!(s["phase"], "Pending");
        assert_eq!(s["startTime"], "2025-01-01T00:00:00Z");
        assert_eq!(s["hostIP"], "127.0.0.1");
        assert_eq!(s["podIPs"], json!([{"ip": "127.0.0.1"}]));
        assert!(s.get("initContainerStatuses").is_none());
        assert!(s.get("reason").is_none());
        assert_eq!(
            s["containerStatuses"],
            json!([{"name": "main", "image": "img", "imageID": "", "state": {"waiting": {"reason": "ContainerCreating"}},
                "lastState": {}, "ready": false, "restartCount": 0, "started": false}])
        );
        let types: Vec<_> = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                "PodReadyToStartContainers",
                "Initialized",
                "Ready",
                "ContainersReady",
                "PodScheduled"
            ]
        );
        assert_eq!(
            cond(&s, "PodReadyToStartContainers"),
            &json!({"type": "PodReadyToStartContainers", "status": "False", "lastProbeTime": null, "lastTransitionTime": "T0"})
        );
        assert_eq!(cond(&s, "Initialized")["status"], "True");
        assert!(cond(&s, "Initialized").get("reason").is_none());
        assert_eq!(cond(&s, "Ready")["reason"], "ContainersNotReady");
        assert_eq!(cond(&s, "PodScheduled")["status"], "True");
    }

    #[test]
    fn running_and_ready_then_completed() {
        let mut st = pod(&[], &["main"]);
        st.prepared = true;
        build_status(&mut st, false, "T0");
        st.apply(ContainerEvent::Running {
            slot: main_slot(),
            started: "T1".into(),
            pid: 7,
        });
        st.apply(ContainerEvent::Ready { idx: 0, ready: true });
        let s = build_status(&mut st, false, "T1");
        assert_eq!(s["phase"], "Running");
        let c = &s["containerStatuses"][0];
        assert_eq!(c["state"], json!({"running": {"startedAt": "T1"}}));
        assert_eq!(c["containerID"], "mb-pod-runner://7");
        assert_eq!((c["ready"].clone(), c["started"].clone()), (json!(true), json!(true)));
        let ready = cond(&s, "Ready");
        assert_eq!(
            (ready["status"].clone(), ready["lastTransitionTime"].clone()),
            (json!("True"), json!("T1"))
        );
        assert!(ready.get("reason").is_none());
        // Unchanged conditions keep their first transition time.
        assert_eq!(cond(&s, "PodScheduled")["lastTransitionTime"], "T0");
        assert_eq!(cond(&s, "PodReadyToStartContainers")["status"], "True");

        st.apply(ContainerEvent::Terminated {
            slot: main_slot(),
            code: 0,
            reason: ExitReason::Completed,
            message: String::new(),
            started: "T1".into(),
            finished: "T2".into(),
            done: true,
        });
        let s = build_status(&mut st, true, "T2");
        assert_eq!(s["phase"], "Succeeded");
        assert_eq!(
            s["containerStatuses"][0]["state"],
            json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": "T1", "finishedAt": "T2",
                "containerID": "mb-pod-runner://7"}})
        );
        assert_eq!(cond(&s, "Ready")["reason"], "PodCompleted");
        assert_eq!(cond(&s, "ContainersReady")["status"], "False");
        assert_eq!(cond(&s, "PodReadyToStartContainers")["status"], "False");
    }

    #[test]
    fn restarted_container_has_last_state_and_message() {
        let mut st = pod(&[], &["main"]);
        st.apply(ContainerEvent::Running {
            slot: main_slot(),
            started: "T1".into(),
            pid: 7,
        });
        st.apply(ContainerEvent::Terminated {
            slot: main_slot(),
            code: 137,
            reason: ExitReason::Error,
            message: "liveness probe failed".into(),
            started: "T1".into(),
            finished: "T2".into(),
            done: false,
        });
        st.apply(ContainerEvent::Waiting {
            slot: main_slot(),
            reason: WaitingReason::CrashLoopBackOff,
            message: "back-off 1s restarting failed container=main".into(),
        });
        let s = build_status(&mut st, false, "T2");
        let c = &s["containerStatuses"][0];
        assert_eq!(
            c["state"],
            json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 1s restarting failed container=main"}})
        );
        assert_eq!(
            c["lastState"],
            json!({"terminated": {"exitCode": 137, "reason": "Error", "message": "liveness probe failed",
                "startedAt": "T1", "finishedAt": "T2", "containerID": "mb-pod-runner://7"}})
        );
    }

    #[test]
    fn init_statuses_and_not_initialized() {
        let mut st = pod(&["prep"], &["main"]);
        let s = build_status(&mut st, false, "T0");
        assert_eq!(s["initContainerStatuses"][0]["name"], "prep");
        assert_eq!(
            s["initContainerStatuses"][0]["state"],
            json!({"waiting": {"reason": "PodInitializing"}})
        );
        assert_eq!(
            s["containerStatuses"][0]["state"],
            json!({"waiting": {"reason": "PodInitializing"}})
        );
        let init = cond(&s, "Initialized");
        assert_eq!(
            (init["status"].clone(), init["reason"].clone()),
            (json!("False"), json!("ContainersNotInitialized"))
        );
    }

    #[test]
    fn condition_time_changes_with_status_only() {
        let mut st = pod(&[], &["main"]);
        build_status(&mut st, false, "T0");
        build_status(&mut st, false, "T1");
        assert_eq!(st.cond_times["PodReadyToStartContainers"], (false, "T0".to_string()));
        st.prepared = true;
        let s = build_status(&mut st, false, "T2");
        assert_eq!(cond(&s, "PodReadyToStartContainers")["lastTransitionTime"], "T2");
        assert_eq!(cond(&s, "Initialized")["lastTransitionTime"], "T0");
    }

    #[test]
    fn deadline_reason_and_message() {
        let mut st = pod(&[], &["main"]);
        st.reason = Some(PodReason::DeadlineExceeded);
        st.mark_all_done();
        let s = build_status(&mut st, true, "T0");
        assert_eq!(s["phase"], "Failed");
        assert_eq!(s["reason"], "DeadlineExceeded");
        assert_eq!(
            s["message"],
            "Pod was active on the node longer than the specified deadline"
        );
    }

    #[test]
    fn config_error_is_reported_with_its_message() {
        let mut st = pod(&[], &["main"]);
        st.set_config_error("secret \"late\" not found");
        let s = build_status(&mut st, false, "T0");
        assert_eq!(
            s["containerStatuses"][0]["state"],
            json!({"waiting": {"reason": "CreateContainerConfigError", "message": "secret \"late\" not found"}})
        );
    }
}
