//! Object storage: S3-compatible buckets and the local file system behind one type,
//! so that the engine is the same in a cluster, on a laptop and in tests. The one storage
//! layer of both binaries: raw objects, JSON records, and create-if-absent writes. A run's
//! stores are opened together, once, by [`crate::stores::RunStores`].

use std::ops::Range;
use std::path::{Path, PathBuf};

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::{S3Credentials, S3Endpoint};

/// An object, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
}

#[derive(Clone, Debug)]
pub enum Store {
    S3 {
        client: aws_sdk_s3::Client,
        bucket: String,
        endpoint: String,
    },
    Local {
        root: PathBuf,
    },
}

/// Why a storage call failed. `NotFound` is separate so callers can treat
/// "absent" as a normal answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} does not exist")]
    NotFound(String),
    /// A create-if-absent write found the object there already.
    #[error("{0} exists already")]
    AlreadyExists(String),
    #[error("{key}: not valid JSON: {error}")]
    Decode { key: String, error: String },
    /// An answer that no retry changes and the spec or the credentials must: the bucket does
    /// not exist, access is denied.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Other(String),
}

impl StoreError {
    /// The kind of a failed call that is otherwise a connection problem: a refusal is the
    /// user's to fix (exit 3), anything else may pass on another attempt.
    pub fn kind(&self) -> crate::error::ErrorKind {
        match self {
            StoreError::Refused(_) => crate::error::ErrorKind::ConfigError,
            _ => crate::error::ErrorKind::ConnectionError,
        }
    }
}

impl Store {
    /// A bucket on an endpoint; a `file:///dir` endpoint serves `/dir/<bucket>/` from disk
    /// ([`S3Endpoint::local_dir`]).
    pub async fn open_bucket(ep: &S3Endpoint, bucket: &str, creds: Option<&S3Credentials>) -> Store {
        match ep.local_dir() {
            Some(dir) => Store::Local { root: dir.join(bucket) },
            None => Store::s3(ep, bucket, creds).await,
        }
    }

    /// A bucket on an S3 endpoint; `None` credentials mean the default AWS credential chain.
    pub async fn s3(ep: &S3Endpoint, bucket: &str, creds: Option<&S3Credentials>) -> Store {
        Store::S3 {
            client: s3_client(ep, creds).await,
            bucket: bucket.to_owned(),
            endpoint: ep.url(),
        }
    }

    /// Human-readable location of a key, for messages and results (no secrets).
    pub fn display(&self, key: &str) -> String {
        match self {
            Store::S3 { bucket, .. } => format!("s3://{bucket}/{key}"),
            Store::Local { root } => root.join(key).display().to_string(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Store::S3 { bucket, endpoint, .. } => format!("bucket {bucket} at {endpoint}"),
            Store::Local { root } => format!("local directory {}", root.display()),
        }
    }

    /// All objects under `prefix`, sorted by key.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        match self {
            Store::S3 { client, bucket, .. } => {
                let mut out = Vec::new();
                let mut token = None;
                loop {
                    let resp = client
                        .list_objects_v2()
                        .bucket(bucket)
                        .prefix(prefix)
                        .set_continuation_token(token)
                        .send()
                        .await
                        .map_err(|e| s3_err(self, prefix, e))?;
                    for o in resp.contents() {
                        if let Some(k) = o.key() {
                            out.push(ObjectMeta {
                                key: k.to_owned(),
                                size: o.size().unwrap_or(0).max(0) as u64,
                            });
                        }
                    }
                    match resp.next_continuation_token() {
                        Some(t) if resp.is_truncated().unwrap_or(false) => token = Some(t.to_owned()),
                        _ => break,
                    }
                }
                out.sort_by(|a, b| a.key.cmp(&b.key));
                Ok(out)
            }
            Store::Local { root } => {
                let root = root.clone();
                let prefix = prefix.to_owned();
                tokio::task::spawn_blocking(move || list_local(&root, &prefix))
                    .await
                    .map_err(|e| StoreError::Other(e.to_string()))?
            }
        }
    }

    pub async fn head(&self, key: &str) -> Result<u64, StoreError> {
        match self {
            Store::S3 { client, bucket, .. } => {
                let r = client
                    .head_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| s3_err(self, key, e))?;
                Ok(r.content_length().unwrap_or(0).max(0) as u64)
            }
            Store::Local { root } => {
                let p = root.join(key);
                match tokio::fs::metadata(&p).await {
                    Ok(m) if m.is_file() => Ok(m.len()),
                    Ok(_) => Err(StoreError::NotFound(p.display().to_string())),
                    Err(e) => Err(io_err(&p, e)),
                }
            }
        }
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        match self {
            Store::S3 { .. } => self.s3_get(key, None).await,
            Store::Local { root } => {
                let p = root.join(key);
                tokio::fs::read(&p).await.map(Bytes::from).map_err(|e| io_err(&p, e))
            }
        }
    }

    /// A GET of the whole object or of an HTTP byte range. The SDK retries a request that
    /// fails before its response starts; a body that breaks after the headers (a reset, a cut
    /// connection) is fetched again here, [`BODY_ATTEMPTS`] times in all, with backoff.
    async fn s3_get(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes, StoreError> {
        let mut attempt = 1;
        loop {
            match self.s3_get_once(key, range.clone()).await {
                Ok(body) => return Ok(body),
                Err(GetFailure::Request(e)) => return Err(e),
                Err(GetFailure::Body(e)) if attempt < BODY_ATTEMPTS => {
                    tracing::warn!(key = %self.display(key), attempt, error = %e, "response body broke; fetching again");
                    tokio::time::sleep(body_backoff(attempt)).await;
                    attempt += 1;
                }
                Err(GetFailure::Body(e)) => {
                    return Err(StoreError::Other(format!(
                        "{}: the response body broke off {attempt} times: {e}",
                        self.display(key)
                    )))
                }
            }
        }
    }

    async fn s3_get_once(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes, GetFailure> {
        let Store::S3 { client, bucket, .. } = self else {
            unreachable!("s3_get on a local store")
        };
        let r = client
            .get_object()
            .bucket(bucket)
            .key(key)
            .set_range(range.map(|r| format!("bytes={}-{}", r.start, r.end - 1)))
            .send()
            .await
            .map_err(|e| GetFailure::Request(s3_err(self, key, e)))?;
        let body = r.body.collect().await.map_err(|e| GetFailure::Body(e.to_string()))?;
        Ok(body.into_bytes())
    }

    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        if range.start >= range.end {
            return Ok(Bytes::new());
        }
        match self {
            Store::S3 { .. } => self.s3_get(key, Some(range)).await,
            Store::Local { root } => {
                let p = root.join(key);
                tokio::task::spawn_blocking(move || {
                    use std::os::unix::fs::FileExt;
                    let f = std::fs::File::open(&p).map_err(|e| io_err(&p, e))?;
                    let mut buf = vec![0u8; (range.end - range.start) as usize];
                    f.read_exact_at(&mut buf, range.start).map_err(|e| io_err(&p, e))?;
                    Ok(Bytes::from(buf))
                })
                .await
                .map_err(|e| StoreError::Other(e.to_string()))?
            }
        }
    }

    /// Writes an object. Local writes go through a temporary file and a rename,
    /// so a reader never sees half an object (S3 PUTs are atomic already).
    pub async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        match self {
            Store::S3 { client, bucket, .. } => {
                client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .body(ByteStream::from(data))
                    .send()
                    .await
                    .map_err(|e| s3_err(self, key, e))?;
                Ok(())
            }
            Store::Local { root } => {
                let p = root.join(key);
                if let Some(dir) = p.parent() {
                    tokio::fs::create_dir_all(dir).await.map_err(|e| io_err(dir, e))?;
                }
                let tmp = p.with_extension(format!("tmp-{}", std::process::id()));
                tokio::fs::write(&tmp, &data).await.map_err(|e| io_err(&tmp, e))?;
                tokio::fs::rename(&tmp, &p).await.map_err(|e| io_err(&p, e))
            }
        }
    }

    /// Writes an object only if there is none at `key` (S3 `If-None-Match: *`; locally an
    /// exclusive create). Of two writers racing for one key, exactly one wins; the other gets
    /// [`StoreError::AlreadyExists`].
    pub async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        match self {
            Store::S3 { client, bucket, .. } => {
                let sent = client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .if_none_match("*")
                    .body(ByteStream::from(data))
                    .send()
                    .await;
                match sent {
                    Ok(_) => Ok(()),
                    Err(e) if is_precondition_failed(&e) => Err(StoreError::AlreadyExists(self.display(key))),
                    Err(e) => Err(s3_err(self, key, e)),
                }
            }
            Store::Local { root } => put_local_if_absent(&root.join(key), &data).await,
        }
    }

    /// The JSON object at `key`, or `None` when there is none.
    pub async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        match self.get(key).await {
            Ok(body) => serde_json::from_slice(&body).map(Some).map_err(|e| StoreError::Decode {
                key: self.display(key),
                error: e.to_string(),
            }),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn put_json<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        self.put(key, json_body(self, key, value)?).await
    }

    /// [`Store::put_if_absent`] of a JSON record.
    pub async fn put_json_if_absent<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        self.put_if_absent(key, json_body(self, key, value)?).await
    }

    /// Keys under `prefix`, sorted.
    pub async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(self.list(prefix).await?.into_iter().map(|o| o.key).collect())
    }

    /// Reads many JSON objects, 16 at a time, in order; absent ones are skipped.
    pub async fn get_json_many<T: DeserializeOwned>(&self, keys: Vec<String>) -> Result<Vec<(String, T)>, StoreError> {
        futures_util::stream::iter(keys.into_iter().map(|k| async move {
            let v: Option<T> = self.get_json(&k).await?;
            Ok::<_, StoreError>(v.map(|v| (k, v)))
        }))
        .buffered(16)
        .try_filter_map(|x| async move { Ok(x) })
        .try_collect()
        .await
    }

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self {
            Store::S3 { client, bucket, .. } => {
                client
                    .delete_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| s3_err(self, key, e))?;
                Ok(())
            }
            Store::Local { root } => {
                let p = root.join(key);
                match tokio::fs::remove_file(&p).await {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(io_err(&p, e)),
                }
            }
        }
    }
}

/// An S3 client for an endpoint, with explicit keys or the default AWS credential chain.
/// Attempts of a GET whose response body breaks after the headers.
pub const BODY_ATTEMPTS: u32 = 4;

/// Attempts of each S3 request the SDK retries (throttling, 5xx, resets, timeouts), with
/// exponential backoff and jitter from 200 ms up to 20 s: about a minute of an S3 server's
/// trouble before a call fails (the SDK's default is 3 attempts).
pub const S3_ATTEMPTS: u32 = 8;

/// How a GET failed: before the response (the SDK's retries are spent), or in its body.
enum GetFailure {
    Request(StoreError),
    Body(String),
}

/// 250 ms, 500 ms, 1 s, ... with up to 50% jitter.
fn body_backoff(attempt: u32) -> std::time::Duration {
    let base = 250u64 << attempt.saturating_sub(1).min(6);
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()))
        % (base / 2 + 1);
    std::time::Duration::from_millis(base + jitter)
}

/// A stalled server must not stall a run: a connection that does not open within 10 s, or a
/// request with no first response byte within 120 s (an upload of a large part included), is an
/// attempt that failed, and the SDK retries it.
fn s3_timeouts() -> aws_sdk_s3::config::timeout::TimeoutConfig {
    aws_sdk_s3::config::timeout::TimeoutConfig::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .read_timeout(std::time::Duration::from_secs(120))
        .build()
}

async fn s3_client(ep: &S3Endpoint, creds: Option<&S3Credentials>) -> aws_sdk_s3::Client {
    use aws_config::BehaviorVersion;
    use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .region(aws_config::Region::new(ep.region.clone()));
    if let Some(c) = creds {
        loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
            c.access_key.clone(),
            c.secret_key.clone(),
            None,
            None,
            "milvus-backfill",
        ));
    }
    let shared = loader.load().await;
    // Path-style addressing as Milvus uses; checksums only where the API requires
    // them, since several S3-compatible servers reject the newer default.
    let conf = aws_sdk_s3::config::Builder::from(&shared)
        .endpoint_url(ep.url())
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .timeout_config(s3_timeouts())
        .retry_config(
            aws_sdk_s3::config::retry::RetryConfig::standard()
                .with_max_attempts(S3_ATTEMPTS)
                .with_initial_backoff(std::time::Duration::from_millis(200))
                .with_max_backoff(std::time::Duration::from_secs(20)),
        )
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

fn json_body<T: Serialize>(store: &Store, key: &str, value: &T) -> Result<Bytes, StoreError> {
    serde_json::to_vec_pretty(value)
        .map(Bytes::from)
        .map_err(|e| StoreError::Decode {
            key: store.display(key),
            error: e.to_string(),
        })
}

/// Written to a temporary file, then hard-linked into place: the link fails if the name is
/// taken, and a reader never sees half an object.
async fn put_local_if_absent(p: &Path, data: &[u8]) -> Result<(), StoreError> {
    if let Some(dir) = p.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(|e| io_err(dir, e))?;
    }
    let tmp = p.with_extension(format!("tmp-{}", std::process::id()));
    tokio::fs::write(&tmp, data).await.map_err(|e| io_err(&tmp, e))?;
    let linked = tokio::fs::hard_link(&tmp, p).await;
    let _ = tokio::fs::remove_file(&tmp).await;
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(StoreError::AlreadyExists(p.display().to_string()))
        }
        Err(e) => Err(io_err(p, e)),
    }
}

fn is_precondition_failed<E, R>(e: &aws_sdk_s3::error::SdkError<E, R>) -> bool
where
    E: aws_sdk_s3::error::ProvideErrorMetadata,
{
    match e {
        aws_sdk_s3::error::SdkError::ServiceError(se) => {
            matches!(
                se.err().code(),
                Some("PreconditionFailed" | "ConditionalRequestConflict")
            )
        }
        _ => false,
    }
}

fn list_local(root: &Path, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
    // Walk from the deepest directory the prefix names, then filter by the full prefix.
    let dir_part = match prefix.rfind('/') {
        Some(i) => &prefix[..i],
        None => "",
    };
    let start = root.join(dir_part);
    let mut out = Vec::new();
    let mut stack = vec![start];
    while let Some(dir) = stack.pop() {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&dir, e)),
        };
        for entry in rd {
            let entry = entry.map_err(|e| io_err(&dir, e))?;
            let path = entry.path();
            let ft = entry.file_type().map_err(|e| io_err(&path, e))?;
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned();
                if rel.starts_with(prefix) && !rel.contains(".tmp-") {
                    let size = entry.metadata().map_err(|e| io_err(&path, e))?.len();
                    out.push(ObjectMeta { key: rel, size });
                }
            }
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

fn io_err(path: &Path, e: std::io::Error) -> StoreError {
    if e.kind() == std::io::ErrorKind::NotFound {
        StoreError::NotFound(path.display().to_string())
    } else {
        StoreError::Other(format!("{}: {e}", path.display()))
    }
}

fn s3_err<E, R>(store: &Store, key: &str, e: aws_sdk_s3::error::SdkError<E, R>) -> StoreError
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_s3::error::SdkError;
    let what = store.display(key);
    match &e {
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("");
            let msg = se.err().message().unwrap_or("");
            if matches!(code, "NoSuchKey" | "NotFound")
                || (code.is_empty() && format!("{:?}", se.raw()).contains("404"))
            {
                StoreError::NotFound(what)
            } else if code == "NoSuchBucket" {
                StoreError::Refused(format!(
                    "{what}: the bucket does not exist ({}); check the bucket in the spec",
                    store.describe()
                ))
            } else if matches!(
                code,
                "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken"
            ) {
                // Permanent: the SDK does not retry these, and neither should the user.
                StoreError::Refused(format!(
                    "{what}: {code} {msg}; check the S3 access key and secret (AWS_ACCESS_KEY_ID / \
                     AWS_SECRET_ACCESS_KEY, or the Secret the spec names) and the bucket's policy"
                ))
            } else {
                StoreError::Other(format!("{what}: {code} {msg}").trim_end().to_owned())
            }
        }
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => StoreError::Other(format!(
            "{what}: cannot reach {} ({})",
            store.describe(),
            aws_smithy_types::error::display::DisplayErrorContext(&e)
        )),
        _ => StoreError::Other(format!(
            "{what}: {}",
            aws_smithy_types::error::display::DisplayErrorContext(&e)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_store_roundtrip_and_prefix_listing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::Local {
            root: dir.path().to_path_buf(),
        };
        s.put("a/b/1", Bytes::from_static(b"hello")).await.unwrap();
        s.put("a/b/22", Bytes::from_static(b"x")).await.unwrap();
        s.put("a/c", Bytes::from_static(b"y")).await.unwrap();
        let keys: Vec<_> = s.list("a/b/").await.unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(keys, vec!["a/b/1", "a/b/22"]);
        assert_eq!(s.list("a/").await.unwrap().len(), 3);
        assert_eq!(s.list("zz/").await.unwrap(), vec![]);
        assert_eq!(s.get_range("a/b/1", 1..4).await.unwrap(), Bytes::from_static(b"ell"));
        assert_eq!(s.head("a/b/1").await.unwrap(), 5);
        assert!(matches!(s.get("nope").await, Err(StoreError::NotFound(_))));
        s.delete("a/b/1").await.unwrap();
        s.delete("a/b/1").await.unwrap();
        assert_eq!(s.list("a/b/").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn json_records_and_create_if_absent() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::Local {
            root: dir.path().to_path_buf(),
        };
        assert_eq!(s.get_json::<serde_json::Value>("r/x.json").await.unwrap(), None);
        s.put_json("r/x.json", &serde_json::json!({"k": 1})).await.unwrap();
        s.put_json_if_absent("r/y.json", &serde_json::json!({"k": 2}))
            .await
            .unwrap();
        let again = s.put_json_if_absent("r/y.json", &serde_json::json!({"k": 3})).await;
        assert!(matches!(again, Err(StoreError::AlreadyExists(_))), "{again:?}");
        assert_eq!(s.get_json("r/y.json").await.unwrap(), Some(serde_json::json!({"k": 2})));
        assert_eq!(s.list_keys("r/").await.unwrap(), vec!["r/x.json", "r/y.json"]);
        let many: Vec<(String, serde_json::Value)> = s
            .get_json_many(vec!["r/x.json".into(), "r/none.json".into(), "r/y.json".into()])
            .await
            .unwrap();
        assert_eq!(
            many.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["r/x.json", "r/y.json"]
        );
        s.put("r/bad.json", Bytes::from_static(b"{")).await.unwrap();
        assert!(matches!(
            s.get_json::<serde_json::Value>("r/bad.json").await,
            Err(StoreError::Decode { .. })
        ));
    }
}
