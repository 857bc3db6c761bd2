//! Contract tests of the commit step: the executor (and decide → execute passes) against the
//! mock API server and a local HTTP server implementing Milvus' documented commit endpoint
//! (`GET /management/datacoord/backfill/commit?result_path=`, milvus-storage.md §11.3, §15.3).
//! No Milvus 3.0 runs here; the fake reads the result object from the bucket, checks the
//! result decoder's rules on it and answers per segment.

use std::path::Path;
use std::sync::Mutex;

use k8s_openapi::jiff::Timestamp;
use milvus_backfill_api::spec::CommitSpec;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::crd::{CommitState, CommitStatus, RowCounts, SegmentCounts};
use crate::state::{reason, Observed, RunInput};
use crate::testutil::{ok_outcome, v3};
use crate::validate::ValidSpec;

/// How the fake endpoint answers.
#[derive(Clone, Debug, Default)]
struct Script {
    /// Segments whose first commit fails ("not Flushed" yet).
    fail_first: Vec<String>,
    /// Segments whose every commit fails.
    fail_always: Vec<String>,
    /// Answer every call with this HTTP status instead (404: a Milvus before 3.0; 500: the
    /// result refused as a whole).
    status: Option<u16>,
}

/// One call the fake endpoint got: the result key, its segments, the decoder rules it broke.
#[derive(Clone, Debug)]
struct MilvusCall {
    key: String,
    segments: Vec<String>,
    problems: Vec<String>,
}

struct FakeMilvus {
    endpoint: String,
    calls: Arc<Mutex<Vec<MilvusCall>>>,
}

impl FakeMilvus {
    /// Serves the commit endpoint over the bucket directory `bucket`.
    async fn start(bucket: PathBuf, script: Script) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a local port");
        let endpoint = format!("http://{}", listener.local_addr().expect("an address"));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = calls.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = vec![0u8; 16384];
                let mut n = 0;
                while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(m) => n += m,
                    }
                }
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let target = head.split_whitespace().nth(1).unwrap_or_default().to_owned();
                let (code, body) = answer(&bucket, &script, &seen, &target);
                let resp = format!(
                    "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            }
        });
        Self { endpoint, calls }
    }

    fn calls(&self) -> Vec<MilvusCall> {
        self.calls.lock().expect("not poisoned").clone()
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1..i + 3)) {
            (b'%', Some(hex)) => {
                let hex = std::str::from_utf8(hex).unwrap_or("zz");
                out.push(u8::from_str_radix(hex, 16).expect("a percent escape"));
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("UTF-8")
}

/// The HTTP status and body for a request target, as DataCoord's handler would answer.
fn answer(bucket: &Path, script: &Script, seen: &Mutex<Vec<MilvusCall>>, target: &str) -> (u16, String) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/management/datacoord/backfill/commit" || script.status == Some(404) {
        return (404, "404 page not found".into());
    }
    if let Some(code) = script.status {
        return (
            code,
            r#"{"reason": "no backfill segments passed pre-validation"}"#.into(),
        );
    }
    let key = percent_decode(query.strip_prefix("result_path=").unwrap_or_default());
    let Ok(bytes) = std::fs::read(bucket.join(&key)) else {
        return (500, format!(r#"{{"reason": "read result {key}: no such key"}}"#));
    };
    let result: Value = serde_json::from_slice(&bytes).expect("the result is JSON");
    let problems = decoder_problems(&result);
    let segments: Vec<String> = result["segments"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let mut calls = seen.lock().expect("not poisoned");
    let earlier = |s: &String| calls.iter().any(|c| c.segments.contains(s));
    let statuses: Vec<Value> = segments
        .iter()
        .map(|s| {
            let fails = script.fail_always.contains(s) || (script.fail_first.contains(s) && !earlier(s));
            let ok = problems.is_empty() && !fails;
            json!({"segment_id": s.parse::<i64>().expect("a decimal ID"), "ok": ok, "kind": "v3",
                   "reason": if ok { "" } else { "segment is not Flushed" }})
        })
        .collect();
    calls.push(MilvusCall {
        key,
        segments: segments.clone(),
        problems,
    });
    let failed = statuses.iter().filter(|s| s["ok"] == false).count();
    let body = json!({"total_segments": segments.len(), "committed_segments": segments.len() - failed,
                      "failed_segments": failed, "segment_statuses": statuses});
    (200, body.to_string())
}

/// The newest decoder's rules for a V3 delta result (§11.2, §15.3) it breaks, as sentences.
fn decoder_problems(r: &Value) -> Vec<String> {
    let mut p = Vec::new();
    let mut need = |ok: bool, what: String| {
        if !ok {
            p.push(what);
        }
    };
    need(r["success"] == true, "success must be true".into());
    need(
        r["collectionId"].as_i64().is_some_and(|c| c > 0),
        "collectionId must be > 0".into(),
    );
    need(
        r["partitionId"].as_i64().is_some_and(|p| p >= 0),
        "partitionId must be >= 0".into(),
    );
    let segments = r["segments"].as_object().cloned().unwrap_or_default();
    need(!segments.is_empty(), "no segments".into());
    for (id, s) in &segments {
        let rows = s["rowCount"].as_u64().unwrap_or(0);
        need(rows > 0, format!("segment {id}: rowCount must be > 0"));
        let ops = s["ops"].as_array().cloned().unwrap_or_default();
        need(!ops.is_empty(), format!("segment {id}: no ops"));
        for op in &ops {
            need(
                op["type"] == "replace",
                format!("segment {id}: op type must be replace"),
            );
            let covered: u64 = op["files"]
                .as_array()
                .map(|fs| {
                    fs.iter()
                        .map(|f| f["endIndex"].as_u64().unwrap_or(0) - f["startIndex"].as_u64().unwrap_or(0))
                        .sum()
                })
                .unwrap_or(0);
            need(
                covered == rows,
                format!("segment {id}: files cover {covered} of {rows} rows"),
            );
        }
    }
    p
}

fn retries(n: u32) -> Config {
    Config {
        commit_segment_retries: Some(n),
        ..Default::default()
    }
}

/// The result of the harness' three-segment run, its segments StorageV3 (with ops).
fn v3_result(h: &Harness) -> BackfillResult {
    let segs = (0..3)
        .flat_map(|t| v3(ok_outcome(&h.plan, SPJ, t, 0, 100)).segments)
        .collect();
    BackfillResult::build(&h.plan, segs, vec![], 300, 1234)
}

/// The status of the run once the commit started (what the decider records before it).
fn committing(h: &Harness) -> BackfillStatus {
    let mut st = h.status();
    st.segments = Some(SegmentCounts {
        total: 3,
        succeeded: 3,
        ..Default::default()
    });
    st.rows = Some(RowCounts {
        total: 300,
        written: 300,
        matched: 300,
    });
    st.commit = Some(CommitStatus {
        observed_generation: Some(1),
        ..Default::default()
    });
    st
}

fn commit_action(endpoint: &str, result: &BackfillResult) -> Action {
    Action::Commit {
        endpoint: endpoint.to_owned(),
        result: Box::new(result.clone()),
    }
}

fn event_call(reason: &str, warning: bool, mentions: &[&str]) -> Call {
    Call::CreateEvent {
        reason: reason.into(),
        warning,
        mentions: mentions.iter().map(|m| m.to_string()).collect(),
        hides: vec![],
    }
}

/// Executes `actions` on `status` as one decision, within [`WAIT`].
async fn execute_on(h: &Harness, status: &BackfillStatus, actions: Vec<Action>) -> Result<Requeue, Error> {
    let decision = Decision {
        phase: Phase::Running,
        actions,
        requeue_after: None,
    };
    tokio::time::timeout(WAIT, execute(&h.bf, &h.ctx, status, decision))
        .await
        .expect("the executor finished in time")
}

/// The status in a server-side apply the verifier saw.
fn applied(seen: &Seen) -> BackfillStatus {
    serde_json::from_value(seen.body["status"].clone()).expect("a status")
}

fn commit_of(st: &BackfillStatus) -> &CommitStatus {
    st.commit.as_ref().expect("a commit record")
}

#[tokio::test]
async fn contract_the_stored_result_is_committed_and_the_run_finishes() {
    let mut h = Harness::with_config(retries(0)).await;
    let milvus = FakeMilvus::start(h.root.clone(), Script::default()).await;
    let result = v3_result(&h);
    let v = h.serve(vec![
        Call::ApplyStatus { phase: Phase::Running },
        Call::GetStatus { status: None },
        Call::ApplyStatus {
            phase: Phase::Succeeded,
        },
        event_call(reason::COMMITTED, false, &["Milvus committed 3 segment(s)"]),
        event_call(reason::SUCCEEDED, false, &["Milvus committed 3 segment(s)"]),
    ]);
    let actions = vec![
        Action::WriteResult(Box::new(result.clone())),
        Action::UpdateStatus(Box::new(committing(&h))),
        commit_action(&milvus.endpoint, &result),
    ];
    let r = execute_on(&h, &h.status(), actions).await;
    let seen = fixtures::verified(v).await;
    assert_eq!(r.expect("committed"), Requeue::await_change());
    let calls = milvus.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    // The endpoint read the stored result (so it was stored before the call) and found it valid.
    assert_eq!(calls[0].key, h.layout.result_key());
    assert!(
        calls[0].problems.is_empty(),
        "decoder rules broken: {:?}",
        calls[0].problems
    );
    assert_eq!(calls[0].segments, vec!["1000", "1001", "1002"]);
    let fin = applied(&seen[2]);
    let c = commit_of(&fin);
    assert_eq!(
        (c.state, c.attempts, c.committed_segments),
        (CommitState::Committed, 1, 3)
    );
    assert_eq!(
        c.result_paths,
        vec![h.root.join(h.layout.result_key()).display().to_string()]
    );
    assert!(fin.completion_time.is_some());
    assert!(h
        .ctx
        .metrics
        .render()
        .contains("commit_attempts_total{result=\"committed\"} 1"));
}

#[tokio::test]
async fn contract_segments_left_uncommitted_are_committed_again_alone() {
    let mut h = Harness::with_config(retries(1)).await;
    let script = Script {
        fail_first: vec!["1001".into()],
        ..Default::default()
    };
    let milvus = FakeMilvus::start(h.root.clone(), script).await;
    let result = v3_result(&h);
    h.ctx.runs.lock().await["uid-1"]
        .storage
        .put_json(&h.layout.result_key(), &result)
        .await
        .expect("stored");
    let v = h.serve(vec![
        Call::GetStatus {
            status: Some(Box::new(committing(&h))),
        },
        Call::ApplyStatus {
            phase: Phase::Succeeded,
        },
        event_call(reason::COMMITTED, false, &["result-retry-1.json"]),
        event_call(reason::SUCCEEDED, false, &[]),
    ]);
    let r = execute_on(&h, &committing(&h), vec![commit_action(&milvus.endpoint, &result)]).await;
    let seen = fixtures::verified(v).await;
    r.expect("committed");
    let calls = milvus.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls[1].key.ends_with("/result-retry-1.json"), "{}", calls[1].key);
    assert_eq!(calls[1].segments, vec!["1001"], "only the failed segment, alone");
    assert!(calls[1].problems.is_empty(), "{:?}", calls[1].problems);
    let c = commit_of(&applied(&seen[1])).clone();
    assert_eq!(
        (c.state, c.committed_segments, c.rejections),
        (CommitState::Committed, 3, 0)
    );
    assert_eq!(c.result_paths.len(), 2);
}

#[tokio::test]
async fn contract_segments_still_uncommitted_are_retried_later_then_the_commit_fails() {
    let mut h = Harness::with_config(retries(0)).await;
    let script = Script {
        fail_always: vec!["1002".into()],
        ..Default::default()
    };
    let milvus = FakeMilvus::start(h.root.clone(), script).await;
    let result = v3_result(&h);
    let mut calls = vec![Call::ApplyStatus { phase: Phase::Running }];
    for round in 1..=3 {
        calls.push(Call::GetStatus { status: None });
        calls.push(Call::ApplyStatus {
            phase: if round < 3 { Phase::Running } else { Phase::Failed },
        });
        // The recorder makes a repeat of the same reason a series of the first Event.
        calls.push(match round {
            1 => event_call(
                reason::COMMIT_REJECTED,
                true,
                &["segment 1002: v3: segment is not Flushed"],
            ),
            2 => Call::RepeatEvent {
                reason: reason::COMMIT_REJECTED.into(),
                count: 2,
            },
            _ => event_call(
                reason::COMMIT_FAILED,
                true,
                &["segment 1002: v3: segment is not Flushed"],
            ),
        });
        calls.push(Call::GetStatus { status: None });
    }
    let v = h.serve(calls);
    let mut actions = vec![
        Action::WriteResult(Box::new(result.clone())),
        Action::UpdateStatus(Box::new(committing(&h))),
        commit_action(&milvus.endpoint, &result),
    ];
    let api: Api<Backfill> = Api::namespaced(h.ctx.client.clone(), "ns");
    let mut status = h.status();
    let mut requeues = vec![];
    for _ in 1..=3 {
        let r = execute_on(&h, &status, std::mem::take(&mut actions)).await;
        requeues.push(r.expect("an answer is not a reconcile error"));
        // The next pass sees what the API server stores.
        status = api.get_status("b").await.expect("the status").status.expect("set");
        actions = vec![commit_action(&milvus.endpoint, &result)];
    }
    let seen = fixtures::verified(v).await;
    assert_eq!(
        requeues,
        vec![
            Requeue::requeue(Duration::from_secs(10)),
            Requeue::requeue(Duration::from_secs(20)),
            Requeue::await_change()
        ]
    );
    assert_eq!(milvus.calls().len(), 3, "each attempt commits the whole result again");
    let failed = applied(&seen[seen.len() - 3]);
    let c = commit_of(&failed);
    assert_eq!((c.state, c.attempts, c.rejections), (CommitState::Failed, 3, 3));
    assert_eq!(c.committed_segments, 2);
    assert_eq!(c.failed_segments.len(), 1);
    let url = format!(
        "{}/management/datacoord/backfill/commit?result_path={}",
        milvus.endpoint,
        h.layout.result_key()
    );
    assert!(c.message.contains(&format!("curl -fsS '{url}'")), "{}", c.message);
    assert!(failed.completion_time.is_none());
    let stalled = crate::conditions::get_condition(&failed.conditions, crate::crd::condition::STALLED).unwrap();
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", reason::COMMIT_FAILED)
    );
}

#[tokio::test]
async fn contract_an_unreachable_endpoint_is_retried_with_backoff() {
    let mut h = Harness::with_config(retries(0)).await;
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        format!("http://{}", l.local_addr().expect("an address"))
    };
    let v = h.serve(vec![
        Call::GetStatus {
            status: Some(Box::new(committing(&h))),
        },
        Call::ApplyStatus { phase: Phase::Running },
        event_call(
            reason::COMMIT_ERROR,
            true,
            &["ConnectionError", &closed, "attempt 2 in 10 s"],
        ),
    ]);
    let r = execute_on(&h, &committing(&h), vec![commit_action(&closed, &v3_result(&h))]).await;
    let seen = fixtures::verified(v).await;
    assert_eq!(
        r.expect("retried, not an error"),
        Requeue::requeue(Duration::from_secs(10))
    );
    let st = applied(&seen[1]);
    let c = commit_of(&st);
    assert_eq!((c.state, c.attempts, c.rejections), (CommitState::Pending, 1, 0));
    assert!(
        c.message
            .contains("is spec.commit.endpoint the Proxy's management port"),
        "{}",
        c.message
    );
    assert!(st.completion_time.is_none());
}

#[tokio::test]
async fn contract_a_milvus_without_the_endpoint_fails_the_commit_at_once() {
    let mut h = Harness::with_config(retries(2)).await;
    let script = Script {
        status: Some(404),
        ..Default::default()
    };
    let milvus = FakeMilvus::start(h.root.clone(), script).await;
    let v = h.serve(vec![
        Call::GetStatus {
            status: Some(Box::new(committing(&h))),
        },
        Call::ApplyStatus { phase: Phase::Failed },
        event_call(reason::COMMIT_FAILED, true, &["Milvus 3.0", "curl -fsS"]),
    ]);
    let r = execute_on(
        &h,
        &committing(&h),
        vec![commit_action(&milvus.endpoint, &v3_result(&h))],
    )
    .await;
    let seen = fixtures::verified(v).await;
    assert_eq!(r.expect("recorded"), Requeue::await_change());
    let c = commit_of(&applied(&seen[1])).clone();
    assert_eq!((c.state, c.attempts), (CommitState::Failed, 1));
    assert!(c.message.starts_with("ConfigError:"), "{}", c.message);
}

#[tokio::test]
async fn contract_a_commit_the_stored_status_already_records_is_not_made_again() {
    let mut h = Harness::with_config(retries(0)).await;
    let milvus = FakeMilvus::start(h.root.clone(), Script::default()).await;
    // The watch cache lags: this pass saw Pending, the API server has it Committed.
    let mut stored = committing(&h);
    stored.commit.as_mut().unwrap().state = CommitState::Committed;
    stored.commit.as_mut().unwrap().attempts = 1;
    stored.completion_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()));
    let v = h.serve(vec![Call::GetStatus {
        status: Some(Box::new(stored)),
    }]);
    let r = execute_on(
        &h,
        &committing(&h),
        vec![commit_action(&milvus.endpoint, &v3_result(&h))],
    )
    .await;
    fixtures::verified(v).await;
    assert_eq!(r.expect("skipped"), Requeue::requeue(Duration::from_secs(1)));
    assert!(milvus.calls().is_empty(), "Milvus was not called");
}

/// One reconcile pass without the observe step: decide on the cached run and `status`
/// (outcomes all succeeded, StorageV3), then execute.
async fn pass(h: &Harness, status: &BackfillStatus) -> (state::Decision, Result<Requeue, Error>) {
    let decision = {
        let runs = h.ctx.runs.lock().await;
        let run = &runs["uid-1"];
        state::decide(&Observed {
            generation: 1,
            spec: Ok(ValidSpec {
                spec: &h.bf.spec,
                image: "img",
            }),
            status,
            run: Some(RunInput {
                plan: &run.plan,
                outcomes: &run.outcomes,
                jobs: &[],
            }),
            now: crate::controller::now(),
        })
    };
    let r = tokio::time::timeout(WAIT, execute(&h.bf, &h.ctx, status, decision.clone()))
        .await
        .expect("in time");
    (decision, r)
}

/// A harness whose Backfill commits at a fake Milvus and whose run finished (V3 outcomes
/// cached).
async fn finished() -> (Harness, FakeMilvus) {
    let mut h = Harness::with_config(retries(0)).await;
    let milvus = FakeMilvus::start(h.root.clone(), Script::default()).await;
    h.bf.spec.engine.commit = Some(CommitSpec {
        endpoint: milvus.endpoint.clone(),
    });
    let mut runs = h.ctx.runs.lock().await;
    let run = runs.get_mut("uid-1").expect("cached");
    for t in 0..3 {
        run.outcomes.insert((t, 0), v3(ok_outcome(&h.plan, SPJ, t, 0, 100)));
    }
    drop(runs);
    (h, milvus)
}

fn started_at_now(h: &Harness) -> BackfillStatus {
    let mut status = h.status();
    status.start_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()));
    status
}

#[tokio::test]
async fn contract_a_pass_commits_a_finished_run_and_later_passes_never_commit_again() {
    let (mut h, milvus) = finished().await;
    let v = h.serve(vec![
        Call::ApplyStatus { phase: Phase::Running },
        event_call(reason::COMMITTING, false, &[&milvus.endpoint]),
        Call::GetStatus { status: None },
        Call::ApplyStatus {
            phase: Phase::Succeeded,
        },
        event_call(reason::COMMITTED, false, &[]),
        event_call(reason::SUCCEEDED, false, &[]),
    ]);
    let (d1, r1) = pass(&h, &started_at_now(&h)).await;
    assert_eq!(r1.expect("pass 1"), Requeue::await_change());
    let pending = d1.new_status().expect("the commit is recorded before it is made");
    assert_eq!(commit_of(pending).state, CommitState::Pending);
    let seen = fixtures::verified(v).await;
    let fin = applied(&seen[3]);
    assert_eq!(commit_of(&fin).state, CommitState::Committed);
    // Any later pass, on the final status: nothing, and no request (the mock is closed).
    for _ in 0..2 {
        let (d, r) = pass(&h, &fin).await;
        assert_eq!(r.expect("a later pass"), Requeue::await_change());
        assert!(d.actions.is_empty(), "{:?}", d.actions);
    }
    let calls = milvus.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(calls[0].problems.is_empty(), "{:?}", calls[0].problems);
}

#[tokio::test]
async fn contract_a_restart_mid_commit_commits_the_stored_result_again() {
    let (mut h, milvus) = finished().await;
    // Before the restart the operator stored the result and the Pending status, then died
    // during the call: carry out the first pass' actions up to the commit by hand.
    let first = {
        let runs = h.ctx.runs.lock().await;
        let run = &runs["uid-1"];
        state::decide(&Observed {
            generation: 1,
            spec: Ok(ValidSpec {
                spec: &h.bf.spec,
                image: "img",
            }),
            status: &started_at_now(&h),
            run: Some(RunInput {
                plan: &run.plan,
                outcomes: &run.outcomes,
                jobs: &[],
            }),
            now: crate::controller::now(),
        })
    };
    let pending = first.new_status().expect("recorded").clone();
    let stored = first
        .actions
        .iter()
        .find_map(|a| match a {
            Action::WriteResult(r) => Some(r.as_ref().clone()),
            _ => None,
        })
        .expect("the result is stored first");
    let storage = h.ctx.runs.lock().await["uid-1"].storage.clone();
    storage.put_json(&h.layout.result_key(), &stored).await.expect("stored");
    let v = h.serve(vec![
        Call::GetStatus {
            status: Some(Box::new(pending.clone())),
        },
        Call::ApplyStatus {
            phase: Phase::Succeeded,
        },
        event_call(reason::COMMITTED, false, &[]),
        event_call(reason::SUCCEEDED, false, &[]),
    ]);
    let (d, r) = pass(&h, &pending).await;
    assert_eq!(r.expect("the restarted pass"), Requeue::await_change());
    assert_eq!(d.new_status(), None, "nothing to record before the answer");
    assert!(
        !d.actions.iter().any(|a| matches!(a, Action::WriteResult(_))),
        "the stored result is committed as it is"
    );
    let seen = fixtures::verified(v).await;
    assert_eq!(commit_of(&applied(&seen[1])).state, CommitState::Committed);
    let calls = milvus.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].key, h.layout.result_key());
    let again: BackfillResult = h.read_json(&h.layout.result_key());
    assert_eq!(again, stored);
}
