//! The Backfill document and its secrets, as the local CLI and the worker see them.
//!
//! Secrets never come from the document: locally and in Jobs they come from the
//! environment (`MILVUS_TOKEN`, `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, and
//! `SOURCE_AWS_ACCESS_KEY_ID`/`SOURCE_AWS_SECRET_ACCESS_KEY` for a separate source
//! bucket) or from the default AWS credential chain.

use std::fmt;
use std::path::Path;

use milvus_backfill_api::cluster::BackfillSpec;
use milvus_backfill_api::invocation::env;
use milvus_backfill_api::spec::EngineSpec;
use milvus_backfill_api::{API_VERSION, KIND};

pub use milvus_backfill_api::place::{Place, S3Endpoint};
use serde::Deserialize;

use crate::error::{BackfillError, Result};

/// A `Backfill` read from YAML: either the full resource or its bare `spec`.
#[derive(Clone, Debug)]
pub struct BackfillDoc {
    pub name: String,
    pub spec: EngineSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Resource {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    metadata: Metadata,
    spec: serde_yaml::Value,
}

#[derive(Deserialize, Default)]
struct Metadata {
    name: Option<String>,
}

impl BackfillDoc {
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_noting(path).map(|(doc, _notes)| doc)
    }

    /// The document at `path` (`-`: standard input), with notes on what was left aside: other
    /// documents of the file and the operator's fields of a cluster manifest.
    pub fn load_noting(path: &Path) -> Result<(Self, Vec<String>)> {
        let text = if path == Path::new("-") {
            std::io::read_to_string(std::io::stdin())
                .map_err(|e| BackfillError::config(format!("cannot read the Backfill from standard input: {e}")))?
        } else {
            std::fs::read_to_string(path)
                .map_err(|e| BackfillError::config(format!("cannot read {}: {e}", path.display())))?
        };
        Self::parse_noting(&text).map_err(|e| BackfillError::config(format!("{}: {}", path.display(), e.message)))
    }

    pub fn parse(text: &str) -> Result<Self> {
        Self::parse_noting(text).map(|(doc, _notes)| doc)
    }

    /// Parses a Backfill resource (what `kubectl apply` takes, cluster-only fields included) or
    /// its bare `spec`, from a file of one or more YAML documents.
    pub fn parse_noting(text: &str) -> Result<(Self, Vec<String>)> {
        let (value, mut notes) = pick_document(text)?;
        let is_resource = value.get("spec").is_some();
        let (name, spec_value) = if is_resource {
            let r: Resource = serde_yaml::from_value(value)
                .map_err(|e| BackfillError::config(format!("not a Backfill resource: {e}")))?;
            if let Some(v) = r.api_version.as_deref().filter(|v| *v != API_VERSION) {
                return Err(BackfillError::config(format!(
                    "apiVersion is {v}, expected {API_VERSION}"
                )));
            }
            if let Some(k) = r.kind.as_deref().filter(|k| *k != KIND) {
                return Err(BackfillError::config(format!("kind is {k}, expected {KIND}")));
            }
            (r.metadata.name.unwrap_or_else(|| "backfill".into()), r.spec)
        } else {
            ("backfill".to_owned(), value)
        };
        // A cluster manifest also holds the operator's fields: they are type-checked, then set
        // aside with a note; the engine's spec is read strictly (a typo is refused).
        let (engine_value, operator_only) = split_operator_fields(spec_value.clone());
        let spec: EngineSpec =
            serde_yaml::from_value(engine_value).map_err(|e| BackfillError::config(format!("spec: {e}")))?;
        if !operator_only.is_empty() {
            serde_yaml::from_value::<BackfillSpec>(spec_value)
                .map_err(|e| BackfillError::config(format!("spec: {e}")))?;
            notes.push(format!(
                "{} only the operator uses: a local run ignores them",
                operator_only
                    .iter()
                    .map(|f| format!("spec.{f}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        validate(&spec)?;
        Ok((Self { name, spec }, notes))
    }
}

/// The one Backfill of a (multi-document) YAML file: the document of `kind: Backfill`, or the
/// only document; notes name the documents skipped.
fn pick_document(text: &str) -> Result<(serde_yaml::Value, Vec<String>)> {
    let mut docs = Vec::new();
    for d in serde_yaml::Deserializer::from_str(text) {
        let v = serde_yaml::Value::deserialize(d).map_err(|e| BackfillError::config(format!("not valid YAML: {e}")))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    let kind_of = |v: &serde_yaml::Value| v.get("kind").and_then(|k| k.as_str()).map(str::to_owned);
    let backfills: Vec<usize> = (0..docs.len())
        .filter(|&i| kind_of(&docs[i]).as_deref() == Some(KIND))
        .collect();
    let chosen = match (backfills.as_slice(), docs.len()) {
        ([one], _) => *one,
        ([], 1) => 0,
        ([], 0) => return Err(BackfillError::config("the file holds no YAML document")),
        ([], n) => {
            return Err(BackfillError::config(format!(
                "the file holds {n} documents and none of kind {KIND}"
            )))
        }
        (many, _) => {
            return Err(BackfillError::config(format!(
                "the file holds {} Backfill documents (documents {}): keep one per file",
                many.len(),
                many.iter().map(|i| (i + 1).to_string()).collect::<Vec<_>>().join(", ")
            )))
        }
    };
    let notes = (0..docs.len())
        .filter(|&i| i != chosen)
        .map(|i| {
            format!(
                "document {} (kind {}) skipped: only the Backfill is read",
                i + 1,
                kind_of(&docs[i]).unwrap_or_else(|| "unknown".into())
            )
        })
        .collect();
    Ok((docs.swap_remove(chosen), notes))
}

/// The spec without the operator's fields, and the names of those it had.
fn split_operator_fields(mut spec: serde_yaml::Value) -> (serde_yaml::Value, Vec<String>) {
    let mut found = Vec::new();
    if let Some(map) = spec.as_mapping_mut() {
        for f in BackfillSpec::operator_only_fields() {
            if map.remove(f.as_str()).is_some() {
                found.push(f);
            }
        }
    }
    (spec, found)
}

/// Checks that need no network ([`milvus_backfill_api::spec::validate`]), as one config error.
pub fn validate(spec: &EngineSpec) -> Result<()> {
    milvus_backfill_api::spec::validate(spec).map_err(|problems| BackfillError::config(problems.join("; ")))
}

/// S3 access keys. `Debug` and `Display` never show the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key: String,
    pub secret_key: String,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key", &self.access_key)
            .field("secret_key", &"***")
            .finish()
    }
}

impl S3Credentials {
    fn from_env_pair(ak: &str, sk: &str) -> Result<Option<Self>> {
        let a = std::env::var(ak).ok().filter(|v| !v.is_empty());
        let s = std::env::var(sk).ok().filter(|v| !v.is_empty());
        match (a, s) {
            (Some(access_key), Some(secret_key)) => Ok(Some(Self { access_key, secret_key })),
            (None, None) => Ok(None),
            _ => Err(BackfillError::config(format!("set both {ak} and {sk}, or neither"))),
        }
    }
    /// Storage credentials; `None` means "use the default AWS credential chain".
    pub fn storage_from_env() -> Result<Option<Self>> {
        Self::from_env_pair(env::AWS_ACCESS_KEY_ID, env::AWS_SECRET_ACCESS_KEY)
    }
    /// Source credentials; `None` means "same as storage".
    pub fn source_from_env() -> Result<Option<Self>> {
        Self::from_env_pair(env::SOURCE_AWS_ACCESS_KEY_ID, env::SOURCE_AWS_SECRET_ACCESS_KEY)
    }
}

/// The Milvus token (`user:password` or an API key), from `MILVUS_TOKEN`.
#[derive(Clone, Default)]
pub struct MilvusToken(pub Option<String>);

impl fmt::Debug for MilvusToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "MilvusToken(***)"
        } else {
            "MilvusToken(none)"
        })
    }
}

impl MilvusToken {
    pub fn from_env() -> Self {
        Self(std::env::var(env::MILVUS_TOKEN).ok().filter(|t| !t.is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"
apiVersion: milvusbackfill.io/v1alpha1
kind: Backfill
metadata: {name: add-title, namespace: default}
spec:
  milvus: {uri: "http://127.0.0.1:19530", collection: c}
  storage: {endpoint: "127.0.0.1:9000", bucket: milvus-bucket}
  source: {path: "s3://data/new/"}
  batchSize: 10
"#;

    #[test]
    fn reads_the_resource_and_the_bare_spec() {
        let d = BackfillDoc::parse(DOC).unwrap();
        assert_eq!(d.name, "add-title");
        assert_eq!(d.spec.batch_size().map(|b| b.rows()), Some(10));
        let bare =
            "milvus: {uri: 'http://h:1', collection: c}\nstorage: {endpoint: e, bucket: b}\nsource: {path: /x}\n";
        assert_eq!(BackfillDoc::parse(bare).unwrap().spec.source.path, "/x");
    }

    #[test]
    fn every_problem_is_named() {
        let bad = DOC
            .replace("batchSize: 10", "batchSize: 0\n  parallelism: 0")
            .replace("collection: c", "collection: ''");
        let e = BackfillDoc::parse(&bad).unwrap_err();
        assert_eq!(e.kind, crate::error::ErrorKind::ConfigError);
        for part in ["spec.batchSize", "spec.parallelism", "spec.milvus.collection"] {
            assert!(e.message.contains(part), "{part} missing in {}", e.message);
        }
        let wrong_kind = DOC.replace("kind: Backfill", "kind: Job");
        assert!(BackfillDoc::parse(&wrong_kind)
            .unwrap_err()
            .message
            .contains("kind is Job"));
        let typo = DOC.replace("batchSize", "batchsize");
        assert!(BackfillDoc::parse(&typo).unwrap_err().message.contains("batchsize"));
    }

    #[test]
    fn the_cluster_manifest_is_read_and_its_operator_fields_noted() {
        let cluster = DOC.replace(
            "batchSize: 10",
            "batchSize: 10\n  retry: {maxAttempts: 3}\n  worker: {image: x}\n  suspend: false",
        );
        let (d, notes) = BackfillDoc::parse_noting(&cluster).unwrap();
        assert_eq!(d.spec.batch_size().map(|b| b.rows()), Some(10));
        assert_eq!(
            notes,
            vec!["spec.retry, spec.suspend, spec.worker only the operator uses: a local run ignores them"]
        );
        // An operator field of the wrong shape, or a typo, is still refused.
        let e = BackfillDoc::parse(&DOC.replace("batchSize: 10", "retry: 3")).unwrap_err();
        assert!(e.message.contains("spec:"), "{}", e.message);
        assert!(BackfillDoc::parse(&DOC.replace("batchSize: 10", "retyr: {}")).is_err());
    }

    #[test]
    fn a_multi_document_file_gives_its_backfill() {
        let secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {accesskey: a}\n";
        let (d, notes) = BackfillDoc::parse_noting(&format!("{secret}---\n{DOC}\n---\n")).unwrap();
        assert_eq!(d.name, "add-title");
        assert_eq!(
            notes,
            vec!["document 1 (kind Secret) skipped: only the Backfill is read"]
        );
        let two = format!("{DOC}\n---\n{DOC}");
        assert!(BackfillDoc::parse(&two)
            .unwrap_err()
            .message
            .contains("2 Backfill documents (documents 1, 2): keep one per file"));
        assert!(BackfillDoc::parse(&format!("{secret}---\n{secret}"))
            .unwrap_err()
            .message
            .contains("none of kind Backfill"));
        assert!(BackfillDoc::parse("").unwrap_err().message.contains("no YAML document"));
    }

    #[test]
    fn secrets_are_redacted() {
        let c = S3Credentials {
            access_key: "AK".into(),
            secret_key: "supersecret".into(),
        };
        assert!(!format!("{c:?}").contains("supersecret"));
        assert!(!format!("{:?}", MilvusToken(Some("root:Milvus".into()))).contains("Milvus\""));
    }
}
