//! The bucket side of a run (IO): the plan, task JSONs, outcomes and the result, through the
//! engine's [`Store`]. Credentials come from the Backfill's Secret, read by the controller.

use std::path::PathBuf;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use milvus_backfill::config::{S3Credentials, S3Endpoint};
use milvus_backfill::store::{Store, StoreError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::crd::EngineSpec;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{key}: not valid JSON: {error}")]
    Decode { key: String, error: String },
}

/// The Milvus storage bucket of one Backfill.
#[derive(Clone, Debug)]
pub struct RunStorage {
    pub store: Store,
}

impl RunStorage {
    pub async fn connect(spec: &EngineSpec, creds: Option<&S3Credentials>) -> Self {
        let s = &spec.storage;
        let store = match s.endpoint.strip_prefix("file://") {
            // Local copies of a bucket, as the engine reads them (tests, debugging).
            Some(dir) => Store::Local {
                root: PathBuf::from(dir).join(&s.bucket),
            },
            None => {
                let ep = S3Endpoint {
                    endpoint: s.endpoint.clone(),
                    region: s.region().to_owned(),
                    use_ssl: s.use_ssl(),
                };
                Store::S3 {
                    client: ep.client(creds).await,
                    bucket: s.bucket.clone(),
                    endpoint: ep.url(),
                }
            }
        };
        Self { store }
    }

    /// `s3://bucket/key`.
    pub fn uri(&self, key: &str) -> String {
        self.store.display(key)
    }

    /// The object at `key`, or `None` when there is none.
    pub async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        match self.store.get(key).await {
            Ok(body) => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| StorageError::Decode {
                    key: self.uri(key),
                    error: e.to_string(),
                }),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn put_json<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StorageError> {
        let body = serde_json::to_vec_pretty(value).map_err(|e| StorageError::Decode {
            key: self.uri(key),
            error: e.to_string(),
        })?;
        self.store.put(key, Bytes::from(body)).await?;
        Ok(())
    }

    /// Keys under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        Ok(self.store.list(prefix).await?.into_iter().map(|o| o.key).collect())
    }

    /// Reads many JSON objects, 16 at a time; absent ones are skipped.
    pub async fn get_many<T: DeserializeOwned>(&self, keys: Vec<String>) -> Result<Vec<(String, T)>, StorageError> {
        futures_util::stream::iter(keys.into_iter().map(|k| async move {
            let v: Option<T> = self.get_json(&k).await?;
            Ok::<_, StorageError>(v.map(|v| (k, v)))
        }))
        .buffered(16)
        .try_filter_map(|x| async move { Ok(x) })
        .try_collect()
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::spec;

    #[tokio::test]
    async fn json_objects_roundtrip_on_a_local_bucket() {
        let dir = std::env::temp_dir().join(format!("mbo-storage-{}", std::process::id()));
        let mut s = spec();
        s.engine.storage.endpoint = format!("file://{}", dir.display());
        let st = RunStorage::connect(&s.engine, None).await;
        assert_eq!(st.get_json::<serde_json::Value>("a/x.json").await.unwrap(), None);
        st.put_json("a/x.json", &serde_json::json!({"k": 1})).await.unwrap();
        st.put_json("a/y.json", &serde_json::json!({"k": 2})).await.unwrap();
        assert_eq!(
            st.get_json::<serde_json::Value>("a/x.json").await.unwrap(),
            Some(serde_json::json!({"k": 1}))
        );
        assert_eq!(st.list("a/").await.unwrap(), vec!["a/x.json", "a/y.json"]);
        let many: Vec<(String, serde_json::Value)> = st
            .get_many(vec!["a/x.json".into(), "a/none.json".into(), "a/y.json".into()])
            .await
            .unwrap();
        assert_eq!(many.len(), 2);
        st.store.put("a/bad.json", Bytes::from_static(b"{")).await.unwrap();
        assert!(matches!(
            st.get_json::<serde_json::Value>("a/bad.json").await,
            Err(StorageError::Decode { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
