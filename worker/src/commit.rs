//! Handing a result to Milvus: `GET {endpoint}/management/datacoord/backfill/commit?result_path=<key>`
//! on the Proxy's management port (Milvus 3.0+, milvus-io/milvus#49265). HTTP 200 can still carry
//! failed segments, so success is `failed_segments == 0`; segments that failed are committed
//! again alone, from a result object that holds only them.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use serde::{Deserialize, Serialize};

use milvus_backfill_api::layout::RunLayout;
use milvus_backfill_api::outcome::BackfillResult;

use crate::error::{BackfillError, ErrorKind, Result};
use crate::retry;
use crate::store::Store;

pub const COMMIT_PATH: &str = "/management/datacoord/backfill/commit";
/// DataCoord refuses result objects above this size.
pub const MAX_RESULT_BYTES: usize = 64 << 20;
const TIMEOUT: Duration = Duration::from_secs(600);

/// What the commit endpoint answers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CommitReport {
    #[serde(default)]
    pub total_segments: u64,
    #[serde(default)]
    pub committed_segments: u64,
    #[serde(default)]
    pub failed_segments: u64,
    #[serde(default)]
    pub segment_statuses: Vec<SegmentStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SegmentStatus {
    #[serde(deserialize_with = "crate::commit::id")]
    pub segment_id: i64,
    pub ok: bool,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub reason: String,
}

fn id<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        N(i64),
        S(String),
    }
    match Id::deserialize(d)? {
        Id::N(n) => Ok(n),
        Id::S(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

impl CommitReport {
    pub fn failed(&self) -> impl Iterator<Item = &SegmentStatus> {
        self.segment_statuses.iter().filter(|s| !s.ok)
    }
}

/// The commit URL for a result at `result_key` in DataCoord's bucket.
pub fn commit_url(endpoint: &str, result_key: &str) -> String {
    format!(
        "{}{COMMIT_PATH}?result_path={}",
        endpoint.trim_end_matches('/'),
        percent_encode(result_key)
    )
}

/// The command a user runs to commit by hand (no `spec.commit.endpoint`).
pub fn commit_command(result_key: &str) -> String {
    format!("curl -fsS '{}'", commit_url("http://<milvus-proxy>:9091", result_key))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A call of the endpoint, sent again while Milvus is unreachable or answers 502/503/504
/// ([`retry::COMMIT`]): the commit is idempotent, so a call whose answer was lost is safe to
/// repeat.
pub async fn call(endpoint: &str, result_key: &str) -> Result<CommitReport> {
    retry::COMMIT
        .run("backfill commit", transient, || call_once(endpoint, result_key))
        .await
}

/// The failures of a commit call worth another: no connection, or a gateway's error.
fn transient(e: &BackfillError) -> bool {
    e.kind == ErrorKind::ConnectionError
        || ["HTTP 502", "HTTP 503", "HTTP 504"]
            .iter()
            .any(|s| e.message.contains(s))
}

async fn call_once(endpoint: &str, result_key: &str) -> Result<CommitReport> {
    let url = commit_url(endpoint, result_key);
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| BackfillError::config(format!("spec.commit.endpoint {endpoint:?} is not a URL: {e}")))?;
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let unreachable = |e: &dyn std::fmt::Display| {
        BackfillError::connection(format!(
            "commit endpoint {endpoint}: {e} (is spec.commit.endpoint the Proxy's management port, 9091?)"
        ))
    };
    let resp = tokio::time::timeout(TIMEOUT, client.get(uri))
        .await
        .map_err(|_| unreachable(&"no answer within 10 minutes"))?
        .map_err(|e| unreachable(&e))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| unreachable(&e))?
        .to_bytes();
    if status == hyper::StatusCode::NOT_FOUND {
        return Err(BackfillError::config(format!(
            "commit endpoint {endpoint} answered 404: this Milvus has no backfill commit (it needs Milvus 3.0 or later)"
        )));
    }
    match serde_json::from_slice::<CommitReport>(&body) {
        Ok(r) if status.is_success() || !r.segment_statuses.is_empty() => Ok(r),
        _ => {
            let text = String::from_utf8_lossy(&body[..body.len().min(2000)]);
            Err(BackfillError::new(
                ErrorKind::SegmentProcessingError,
                format!(
                    "commit endpoint {endpoint} answered HTTP {status}: {text}{}",
                    schema_hint(&text)
                ),
            ))
        }
    }
}

/// The outcome of committing a run: the last report and every attempt's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Committed {
    pub result_paths: Vec<String>,
    /// Segment ID → `committed` or the reason of its last failure.
    pub segments: std::collections::BTreeMap<String, String>,
    pub success: bool,
}

/// Commits `result` (stored at `result_key`), then commits the failed segments again alone
/// (`retries` times at most), each from its own result object beside the first.
pub async fn commit_run(
    storage: &Store,
    endpoint: &str,
    result: &BackfillResult,
    result_key: &str,
    retries: u32,
) -> Result<Committed> {
    let mut done = Committed::default();
    let mut pending = result.clone();
    let mut key = result_key.to_owned();
    for attempt in 0..=retries {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(2u64 << attempt.min(5))).await;
            key = retry_key(result_key, attempt);
            let body = serde_json::to_vec_pretty(&pending).map_err(|e| BackfillError::unexpected(e.to_string()))?;
            storage
                .put(&key, Bytes::from(body))
                .await
                .map_err(|e| BackfillError::write(None, storage.display(&key), e))?;
        }
        done.result_paths.push(key.clone());
        let report = call(endpoint, &key).await?;
        for s in &report.segment_statuses {
            let v = if s.ok {
                "committed".to_owned()
            } else {
                format!("{}: {}{}", s.kind, s.reason, schema_hint(&s.reason))
            };
            done.segments.insert(s.segment_id.to_string(), v);
        }
        let failed: Vec<String> = report.failed().map(|s| s.segment_id.to_string()).collect();
        if report.failed_segments == 0 && failed.is_empty() {
            done.success = true;
            return Ok(done);
        }
        pending.segments.retain(|id, _| failed.contains(id));
        if pending.segments.is_empty() {
            break;
        }
        tracing::warn!(attempt, failed = ?failed, "commit left segments uncommitted; committing them again alone");
    }
    Ok(done)
}

/// Commits a whole result: split below [`MAX_RESULT_BYTES`] exactly as it was stored
/// ([`store_parts`]), each part committed in turn with [`commit_run`]; the outcomes merged.
pub async fn commit_result(
    storage: &Store,
    endpoint: &str,
    result: &BackfillResult,
    layout: &RunLayout,
    retries: u32,
) -> Result<Committed> {
    let mut all = Committed {
        success: true,
        ..Committed::default()
    };
    for (i, part) in result.split(MAX_RESULT_BYTES).iter().enumerate() {
        let done = commit_run(storage, endpoint, part, &layout.result_part_key(i + 1), retries).await?;
        all.result_paths.extend(done.result_paths);
        all.segments.extend(done.segments);
        all.success &= done.success;
    }
    Ok(all)
}

/// Stores a result in the run's directory, split into parts below [`MAX_RESULT_BYTES`] when it
/// is larger (`result.json`, `result-part-2.json`, ...); returns their keys.
pub async fn store_parts(storage: &Store, layout: &RunLayout, result: &BackfillResult) -> Result<Vec<String>> {
    let parts = result.split(MAX_RESULT_BYTES);
    let mut keys = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let key = layout.result_part_key(i + 1);
        let body = serde_json::to_vec_pretty(part).map_err(|e| BackfillError::unexpected(e.to_string()))?;
        storage
            .put(&key, Bytes::from(body))
            .await
            .map_err(|e| BackfillError::write(None, storage.display(&key), e))?;
        keys.push(key);
    }
    Ok(keys)
}

/// What a schema-version refusal means for the user: the fence of `schemaVersion` tripped.
fn schema_hint(reason: &str) -> &'static str {
    if reason.to_ascii_lowercase().contains("schema version") {
        " (the collection's schema changed after this backfill was planned, e.g. another AddCollectionField: plan again \
         from a new snapshot)"
    } else {
        ""
    }
}

fn retry_key(result_key: &str, attempt: u32) -> String {
    match result_key.strip_suffix(".json") {
        Some(stem) => format!("{stem}-retry-{attempt}.json"),
        None => format!("{result_key}-retry-{attempt}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_and_the_hand_command_quote_the_key() {
        assert_eq!(
            commit_url("http://p:9091/", "files/backfill/1/r 1/result.json"),
            "http://p:9091/management/datacoord/backfill/commit?result_path=files/backfill/1/r%201/result.json"
        );
        assert!(commit_command("k/result.json").starts_with("curl -fsS 'http://<milvus-proxy>:9091/management/"));
        assert_eq!(retry_key("a/result.json", 2), "a/result-retry-2.json");
    }

    #[test]
    fn a_report_with_failures_lists_them() {
        let r: CommitReport = serde_json::from_str(
            r#"{"total_segments": 2, "committed_segments": 1, "failed_segments": 1,
                "segment_statuses": [{"segment_id": 5, "ok": true, "kind": "v3"},
                                     {"segment_id": "6", "ok": false, "kind": "v3", "reason": "segment is not Flushed"}]}"#,
        )
        .unwrap();
        assert_eq!(r.failed().map(|s| s.segment_id).collect::<Vec<_>>(), vec![6]);
        assert!(schema_hint("schema version mismatch: 3 != 4").contains("schema changed"));
        assert_eq!(schema_hint("segment is not Flushed"), "");
    }
}
