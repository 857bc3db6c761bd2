//! The stores of one run: the Milvus storage bucket, the store the source is read from and the
//! store outputs go to, opened once from the endpoints, the credentials and the places, and
//! shared by the planner, the runner and every segment.

use std::path::{Path, PathBuf};

use milvus_backfill_api::spec::EngineSpec;

use crate::config::{Place, S3Credentials, S3Endpoint};
use crate::error::Result;
use crate::plan::TaskPlan;
use crate::store::Store;

/// Where a run's data is. A plan records all of it, so that every task opens the stores the
/// planner checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunLocations {
    pub storage: S3Endpoint,
    pub storage_bucket: String,
    /// The endpoint of every place outside the storage bucket (source and custom output).
    pub source: S3Endpoint,
    pub source_place: Place,
    pub output_place: Place,
}

impl RunLocations {
    /// The locations a spec names; the source endpoint defaults to the storage one, and
    /// outputs go to Milvus' `insert_log` tree unless `spec.output.path` says otherwise.
    pub fn of_spec(spec: &EngineSpec) -> Self {
        let storage = S3Endpoint {
            endpoint: spec.storage.endpoint.clone(),
            region: spec.storage.region().to_owned(),
            use_ssl: spec.storage.use_ssl(),
        };
        let source = S3Endpoint {
            endpoint: spec
                .source
                .endpoint
                .clone()
                .unwrap_or_else(|| spec.storage.endpoint.clone()),
            region: spec
                .source
                .region
                .clone()
                .unwrap_or_else(|| spec.storage.region().to_owned()),
            use_ssl: spec.source.use_ssl.unwrap_or(spec.storage.use_ssl()),
        };
        let output_place = match spec.output_path() {
            Some(p) => Place::parse_output(p, &spec.storage.bucket),
            None => Place::Storage { prefix: String::new() },
        };
        Self {
            storage,
            storage_bucket: spec.storage.bucket.clone(),
            source,
            source_place: Place::parse_source(&spec.source.path),
            output_place,
        }
    }

    /// The locations a task was planned with.
    pub fn of_task(plan: &TaskPlan) -> Self {
        Self {
            storage: plan.storage.clone(),
            storage_bucket: plan.storage_bucket.clone(),
            source: plan.source.clone(),
            source_place: plan.source_place.clone(),
            output_place: plan.output_place.clone(),
        }
    }
}

/// The S3 keys a run's stores are opened with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreCredentials {
    /// `None`: the default AWS credential chain.
    pub storage: Option<S3Credentials>,
    /// `None`: the storage credentials.
    pub source: Option<S3Credentials>,
}

impl StoreCredentials {
    /// From `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` and their `SOURCE_` variants.
    pub fn from_env() -> Result<Self> {
        Ok(Self {
            storage: S3Credentials::storage_from_env()?,
            source: S3Credentials::source_from_env()?,
        })
    }

    fn source(&self) -> Option<&S3Credentials> {
        self.source.as_ref().or(self.storage.as_ref())
    }
}

/// The stores a run reads and writes. Keys in them are the plan's keys as they are: binlog
/// keys in `storage`, source file keys in `source`, segment output directories in `output`.
#[derive(Clone, Debug)]
pub struct RunStores {
    pub storage: Store,
    pub source: Store,
    pub output: Store,
}

impl RunStores {
    pub async fn open(at: &RunLocations, creds: &StoreCredentials) -> Self {
        let storage = Store::open_bucket(&at.storage, &at.storage_bucket, creds.storage.as_ref()).await;
        let source = open_place(&at.source_place, &storage, &at.source, creds).await;
        let output = open_place(&at.output_place, &storage, &at.source, creds).await;
        Self {
            storage,
            source,
            output,
        }
    }

    /// The stores of a task, with credentials from the environment (what a Job has).
    pub async fn for_task(plan: &TaskPlan) -> Result<Self> {
        let creds = StoreCredentials::from_env()?;
        Ok(Self::open(&RunLocations::of_task(plan), &creds).await)
    }
}

async fn open_place(place: &Place, storage: &Store, endpoint: &S3Endpoint, creds: &StoreCredentials) -> Store {
    match place {
        Place::Storage { .. } => storage.clone(),
        Place::Bucket { bucket, .. } => {
            // The storage bucket named by an `s3://` path, on the same endpoint URL with the
            // same keys, reuses the storage client.
            if let Store::S3 {
                bucket: b, endpoint: e, ..
            } = storage
            {
                if b == bucket && endpoint.url() == *e && creds.source() == creds.storage.as_ref() {
                    return storage.clone();
                }
            }
            Store::s3(endpoint, bucket, creds.source()).await
        }
        // Rooted at `/`, so that keys stay relative like S3 keys (see `place_key`).
        Place::Local { .. } => Store::Local {
            root: PathBuf::from("/"),
        },
    }
}

/// The key (or key prefix) of a place inside the store [`RunStores`] opens for it.
pub fn place_key(place: &Place) -> String {
    match place {
        Place::Storage { prefix } | Place::Bucket { prefix, .. } => prefix.clone(),
        Place::Local { path } => local_key(path),
    }
}

fn local_key(path: &Path) -> String {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    };
    abs.strip_prefix("/").unwrap_or(&abs).to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(output: Option<&str>) -> EngineSpec {
        let text = format!(
            "milvus: {{uri: 'http://h:1', collection: c}}\nstorage: {{endpoint: 'file:///data', bucket: mb}}\n\
             source: {{path: /src/new.parquet}}\n{}",
            output.map(|o| format!("output: {{path: '{o}'}}\n")).unwrap_or_default()
        );
        crate::config::BackfillDoc::parse(&text).unwrap().spec
    }

    #[tokio::test]
    async fn places_open_as_stores_and_keys() {
        let at = RunLocations::of_spec(&spec(None));
        assert_eq!(at.source, at.storage, "the source endpoint defaults to storage");
        assert_eq!(at.output_place, Place::Storage { prefix: String::new() });
        let stores = RunStores::open(&at, &StoreCredentials::default()).await;
        assert!(matches!(&stores.storage, Store::Local { root } if root == Path::new("/data/mb")));
        assert!(matches!(&stores.source, Store::Local { root } if root == Path::new("/")));
        assert!(matches!(&stores.output, Store::Local { root } if root == Path::new("/data/mb")));
        assert_eq!(place_key(&at.source_place), "src/new.parquet");
        let out = RunLocations::of_spec(&spec(Some("s3://mb/out/x")));
        assert_eq!(place_key(&out.output_place), "out/x");
    }

    #[test]
    fn source_credentials_default_to_storage() {
        let k = |a: &str| S3Credentials {
            access_key: a.into(),
            secret_key: "s".into(),
        };
        let both = StoreCredentials {
            storage: Some(k("st")),
            source: None,
        };
        assert_eq!(both.source(), Some(&k("st")));
        let own = StoreCredentials {
            source: Some(k("src")),
            ..both
        };
        assert_eq!(own.source(), Some(&k("src")));
    }
}
