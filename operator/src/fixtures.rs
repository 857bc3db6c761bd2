//! A mock API server for the tests of the IO edge, after kube-rs controller-rs `src/fixtures.rs`:
//! a [`Client`] on a [`tower_test`] mock service, and an [`ApiServerVerifier`] that expects a
//! list of [`Call`]s, in order, checks each request (method, path, query, body) and answers
//! it. A request that is not the next expected call fails the test; an expected call that
//! never comes fails it after [`WAIT`]. Once the list is done the mock closes: any further
//! request fails in the client.

use std::path::PathBuf;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::Secret;
use kube::client::Body;
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tower_test::mock::{Handle, SendResponse};

use crate::crd::{Backfill, BackfillStatus, Phase};
use crate::jobs::MANAGER;

/// How long a test waits for an expected request (or for the code under test): above the
/// worker's bounded retries of an unreachable Milvus (`retry::MILVUS`, up to about 12 s).
pub const WAIT: Duration = Duration::from_secs(30);

/// One expected request and how it is answered.
#[derive(Clone, Debug)]
pub enum Call {
    /// Server-side apply of the Backfill's status with this phase; answered with the Backfill
    /// carrying the applied status.
    ApplyStatus { phase: Phase },
    /// Server-side apply of Job `name`; the task object `task_file` (a path in the local
    /// bucket) must exist when it arrives. Answered `answer`: 200 echoes the Job, else a Status.
    ApplyJob {
        name: String,
        task_file: PathBuf,
        answer: u16,
    },
    /// GET of Job `name`: 200 with the Job, else a Status with that code.
    GetJob { name: String, answer: u16 },
    /// GET of Secret `name`: the Secret, or 404 for `None`.
    GetSecret { name: String, answer: Option<Box<Secret>> },
    /// An Event repeated within the recorder's cache time (same type, reason and action): it
    /// patches the first one's `series` (its note stays the first's).
    RepeatEvent { reason: String, count: i32 },
    /// GET of the Backfill's status: answered with the Backfill carrying `status`, or (`None`)
    /// the status last applied through this verifier (else the Backfill's own).
    GetStatus { status: Option<Box<BackfillStatus>> },
    /// An Event created about the Backfill with `reason`; its note contains each of
    /// `mentions`; the whole request contains none of `hides`.
    CreateEvent {
        reason: String,
        warning: bool,
        mentions: Vec<String>,
        hides: Vec<String>,
    },
}

/// A request as the verifier saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub content_type: String,
    /// The body as sent (JSON for everything the operator sends).
    pub text: String,
    pub body: Value,
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}?{} {}", self.method, self.path, self.query, self.text)
    }
}

/// Checks the method and path of the request for `call`.
fn assert_request(seen: &Seen, call: &Call, method: Method, path: &str) {
    assert!(
        seen.method == method && seen.path == path,
        "expected {call:?} ({method} {path}), got {} {}?{}",
        seen.method,
        seen.path,
        seen.query
    );
}

type MockHandle = Handle<Request<Body>, Response<Body>>;

/// Answers the requests of one [`Client`] for the Backfill `bf`.
pub struct ApiServerVerifier {
    handle: MockHandle,
    bf: Backfill,
    /// The status of the last server-side apply, as the API server now stores it.
    applied: Option<Value>,
}

/// A client on a mock service, and the verifier that serves it (for requests about `bf`).
pub fn mock_client(bf: &Backfill) -> (Client, ApiServerVerifier) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let verifier = ApiServerVerifier {
        handle,
        bf: bf.clone(),
        applied: None,
    };
    (Client::new(service, "default"), verifier)
}

/// Waits for a verifier started with [`ApiServerVerifier::run`], re-raising its failure.
pub async fn verified(v: JoinHandle<Vec<Seen>>) -> Vec<Seen> {
    match tokio::time::timeout(WAIT * 2, v).await {
        Ok(Ok(seen)) => seen,
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(e)) => panic!("verifier: {e}"),
        Err(_) => panic!("the verifier did not finish"),
    }
}

/// A `Status` error body, as the API server sends it.
pub fn status_body(code: u16, message: &str) -> Value {
    let reason = match code {
        404 => "NotFound",
        409 => "Conflict",
        422 => "Invalid",
        _ => "InternalError",
    };
    json!({
        "apiVersion": "v1", "kind": "Status", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

fn respond(send: SendResponse<Response<Body>>, code: u16, body: &Value) {
    let bytes = serde_json::to_vec(body).expect("JSON");
    let response = Response::builder()
        .status(StatusCode::from_u16(code).expect("an HTTP status"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(bytes))
        .expect("a response");
    send.send_response(response);
}

/// Checks a server-side apply by this operator (forced, its field manager).
fn assert_apply(seen: &Seen) {
    assert_eq!(seen.content_type, "application/apply-patch+yaml", "{seen}");
    assert!(seen.query.contains(&format!("fieldManager={MANAGER}")), "{seen}");
    assert!(seen.query.contains("force=true"), "{seen}");
}

impl ApiServerVerifier {
    /// Serves `calls` in order in a task; it yields what it saw.
    pub fn run(mut self, calls: Vec<Call>) -> JoinHandle<Vec<Seen>> {
        tokio::spawn(async move {
            let mut seen = Vec::with_capacity(calls.len());
            for call in calls {
                seen.push(self.serve(call).await);
            }
            seen
        })
    }

    fn ns(&self) -> String {
        self.bf.namespace().unwrap_or_default()
    }

    /// The next request, read whole.
    async fn next(&mut self, call: &Call) -> (Seen, SendResponse<Response<Body>>) {
        let (request, send) = tokio::time::timeout(WAIT, self.handle.next_request())
            .await
            .unwrap_or_else(|_| panic!("expected {call:?}; no request came within {WAIT:?}"))
            .unwrap_or_else(|| panic!("expected {call:?}; the client is gone"));
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.expect("the request body");
        let text = String::from_utf8(bytes.to_vec()).expect("a UTF-8 body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("a JSON body")
        };
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let seen = Seen {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            content_type,
            text,
            body,
        };
        (seen, send)
    }

    /// The method and path `call` is made with.
    fn route(&self, call: &Call) -> (Method, String) {
        let ns = self.ns();
        match call {
            Call::ApplyStatus { .. } => (
                Method::PATCH,
                format!(
                    "/apis/milvusbackfill.io/v1alpha1/namespaces/{ns}/backfills/{}/status",
                    self.bf.name_any()
                ),
            ),
            Call::ApplyJob { name, .. } => (Method::PATCH, format!("/apis/batch/v1/namespaces/{ns}/jobs/{name}")),
            Call::GetJob { name, .. } => (Method::GET, format!("/apis/batch/v1/namespaces/{ns}/jobs/{name}")),
            Call::GetSecret { name, .. } => (Method::GET, format!("/api/v1/namespaces/{ns}/secrets/{name}")),
            Call::GetStatus { .. } => (
                Method::GET,
                format!(
                    "/apis/milvusbackfill.io/v1alpha1/namespaces/{ns}/backfills/{}/status",
                    self.bf.name_any()
                ),
            ),
            Call::CreateEvent { .. } => (Method::POST, format!("/apis/events.k8s.io/v1/namespaces/{ns}/events")),
            Call::RepeatEvent { .. } => (Method::PATCH, format!("/apis/events.k8s.io/v1/namespaces/{ns}/events/")),
        }
    }

    async fn serve(&mut self, call: Call) -> Seen {
        let (seen, send) = self.next(&call).await;
        let (method, path) = self.route(&call);
        match &call {
            // The name of the Event repeated is the recorder's.
            Call::RepeatEvent { .. } => assert!(
                seen.method == method && seen.path.starts_with(&path),
                "expected {call:?} (PATCH {path}...), got {seen}"
            ),
            _ => assert_request(&seen, &call, method, &path),
        }
        let ns = self.ns();
        match call {
            Call::ApplyStatus { phase } => self.apply_status(&seen, send, phase),
            Call::ApplyJob { task_file, answer, .. } => {
                assert_apply(&seen);
                assert!(
                    task_file.is_file(),
                    "the task object {} must be in the bucket before its Job is applied",
                    task_file.display()
                );
                match answer {
                    200 => respond(send, 200, &seen.body),
                    code => respond(send, code, &status_body(code, "spec.template: field is immutable")),
                }
            }
            Call::GetJob { name, answer } => match answer {
                200 => respond(send, 200, &job_body(&ns, &name)),
                code => respond(
                    send,
                    code,
                    &status_body(code, &format!("jobs.batch \"{name}\" not found")),
                ),
            },
            Call::GetSecret { name, answer } => match answer {
                Some(s) => respond(send, 200, &serde_json::to_value(&s).expect("JSON")),
                None => respond(send, 404, &status_body(404, &format!("secrets \"{name}\" not found"))),
            },
            Call::GetStatus { status } => {
                let mut bf = serde_json::to_value(&self.bf).expect("JSON");
                match (status, &self.applied) {
                    (Some(s), _) => bf["status"] = serde_json::to_value(&s).expect("JSON"),
                    (None, Some(applied)) => bf["status"] = applied.clone(),
                    (None, None) => {}
                }
                respond(send, 200, &bf);
            }
            Call::CreateEvent {
                reason,
                warning,
                mentions,
                hides,
            } => self.create_event(&seen, send, &reason, warning, (&mentions, &hides)),
            Call::RepeatEvent { reason, count } => {
                assert_eq!(seen.body["reason"], reason.as_str(), "{seen}");
                assert_eq!(seen.body["series"]["count"], count, "{seen}");
                respond(send, 200, &seen.body);
            }
        }
        seen
    }

    fn apply_status(&mut self, seen: &Seen, send: SendResponse<Response<Body>>, phase: Phase) {
        assert_apply(seen);
        assert_eq!(seen.body["apiVersion"], milvus_backfill_api::API_VERSION, "{seen}");
        assert_eq!(seen.body["kind"], milvus_backfill_api::KIND, "{seen}");
        assert_eq!(seen.body["status"]["phase"], json!(phase), "{seen}");
        let mut bf = serde_json::to_value(&self.bf).expect("JSON");
        bf["status"] = seen.body["status"].clone();
        self.applied = Some(seen.body["status"].clone());
        respond(send, 200, &bf);
    }

    fn create_event(
        &self,
        seen: &Seen,
        send: SendResponse<Response<Body>>,
        reason: &str,
        warning: bool,
        (mentions, hides): (&[String], &[String]),
    ) {
        let ev = &seen.body;
        assert_eq!(ev["reason"], reason, "{seen}");
        assert_eq!(ev["type"], if warning { "Warning" } else { "Normal" }, "{seen}");
        assert_eq!(ev["regarding"]["kind"], milvus_backfill_api::KIND, "{seen}");
        assert_eq!(ev["regarding"]["name"], self.bf.name_any().as_str(), "{seen}");
        let note = ev["note"].as_str().unwrap_or_default();
        for m in mentions {
            assert!(
                note.contains(m.as_str()),
                "the Event note {note:?} should mention {m:?}"
            );
        }
        for h in hides {
            assert!(
                !seen.text.contains(h.as_str()),
                "the Event must not contain {h:?}: {}",
                seen.text
            );
        }
        respond(send, 201, ev);
    }
}

/// A Job as a GET returns it (only what the client needs).
fn job_body(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}")},
    })
}
