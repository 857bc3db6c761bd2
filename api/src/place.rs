//! Where things are: S3 endpoints, `s3://` URIs and the places a run reads and writes.
//! Parsed once at the edge; the rest of the code handles these types, not strings.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How to reach one S3 endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct S3Endpoint {
    pub endpoint: String,
    pub region: String,
    #[serde(rename = "useSSL")]
    pub use_ssl: bool,
}

impl S3Endpoint {
    /// `http(s)://host:port`; an endpoint that already has a scheme keeps it.
    pub fn url(&self) -> String {
        if self.endpoint.contains("://") {
            self.endpoint.clone()
        } else {
            format!("{}://{}", if self.use_ssl { "https" } else { "http" }, self.endpoint)
        }
    }

    /// `file:///dir` serves a copy of a bucket from disk (`/dir/<bucket>/...`): offline runs,
    /// benchmarks and debugging on a downloaded segment.
    pub fn local_dir(&self) -> Option<PathBuf> {
        self.endpoint.strip_prefix("file://").map(PathBuf::from)
    }
}

/// `s3://bucket/key` (also `s3a://`), with a non-empty bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Uri {
    pub bucket: String,
    pub key: String,
}

impl S3Uri {
    /// `None` when `s` is not an `s3://` or `s3a://` URI with a bucket.
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix("s3://").or_else(|| s.strip_prefix("s3a://"))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        (!bucket.is_empty()).then(|| Self {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        })
    }
}

impl fmt::Display for S3Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// Where something lives: a store plus a key (or key prefix) inside it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Place {
    /// In the Milvus storage bucket.
    Storage { prefix: String },
    /// In another bucket on the source's (or storage's) endpoint.
    Bucket { bucket: String, prefix: String },
    /// On the local file system.
    Local { path: PathBuf },
}

impl Place {
    /// `s3://bucket/key` → another bucket; anything else → a local path.
    pub fn parse_source(path: &str) -> Self {
        match path.strip_prefix("s3://").or_else(|| path.strip_prefix("s3a://")) {
            Some(rest) => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                Place::Bucket {
                    bucket: bucket.into(),
                    prefix: prefix.into(),
                }
            }
            None => Place::Local {
                path: PathBuf::from(path.strip_prefix("file://").unwrap_or(path)),
            },
        }
    }

    /// `s3://bucket/prefix`, an absolute local directory, or a key prefix in the storage bucket.
    pub fn parse_output(path: &str, storage_bucket: &str) -> Self {
        let p = path.trim_end_matches('/');
        if Self::is_local_output(p) {
            return Place::Local {
                path: PathBuf::from(p.strip_prefix("file://").unwrap_or(p)),
            };
        }
        match Self::parse_source(p) {
            Place::Bucket { bucket, prefix } if bucket == storage_bucket => Place::Storage { prefix },
            Place::Local { path } => Place::Storage {
                prefix: path.to_string_lossy().trim_matches('/').to_owned(),
            },
            other => other,
        }
    }

    /// Whether an `output.path` names a local directory (which Jobs in a cluster cannot see).
    pub fn is_local_output(path: &str) -> bool {
        path.starts_with('/') || path.starts_with("file://") || path.starts_with("./")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places() {
        assert_eq!(
            Place::parse_source("s3://data/a/b.parquet"),
            Place::Bucket {
                bucket: "data".into(),
                prefix: "a/b.parquet".into()
            }
        );
        assert_eq!(Place::parse_source("/tmp/x"), Place::Local { path: "/tmp/x".into() });
        assert_eq!(
            Place::parse_output("s3://mb/out/", "mb"),
            Place::Storage { prefix: "out".into() }
        );
        assert_eq!(
            Place::parse_output("backfills/run", "mb"),
            Place::Storage {
                prefix: "backfills/run".into()
            }
        );
        assert_eq!(
            Place::parse_output("/data/out", "mb"),
            Place::Local {
                path: "/data/out".into()
            }
        );
    }

    #[test]
    fn s3_uris_need_a_bucket() {
        let u = S3Uri::parse("s3://b/k/x.json").unwrap();
        assert_eq!((u.bucket.as_str(), u.key.as_str()), ("b", "k/x.json"));
        assert_eq!(u.to_string(), "s3://b/k/x.json");
        assert_eq!(S3Uri::parse("s3a://b").unwrap().key, "");
        for bad in ["s3:///k", "/tmp/x", "http://b/k", "s3://"] {
            assert_eq!(S3Uri::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn endpoints() {
        let ep = |e: &str, ssl| S3Endpoint {
            endpoint: e.into(),
            region: "r".into(),
            use_ssl: ssl,
        };
        assert_eq!(ep("h:9000", false).url(), "http://h:9000");
        assert_eq!(ep("h:9000", true).url(), "https://h:9000");
        assert_eq!(ep("file:///d", false).local_dir(), Some(PathBuf::from("/d")));
        assert_eq!(ep("h:1", false).local_dir(), None);
    }
}
