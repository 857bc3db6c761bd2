//! The engine as the operator uses it: plan a spec, open a run's bucket, run a task. The
//! operator reaches the worker crate only through this module (and `logging`); everything
//! else it exchanges with the engine is a contract type of `milvus_backfill_api`.


use milvus_backfill_api::error::Result;
use milvus_backfill_api::outcome::TaskOutcome;
use milvus_backfill_api::plan::{Plan, Task};
use milvus_backfill_api::spec::EngineSpec;

use crate::config::{s3_client, BackfillDoc, Stores};

pub use crate::config::{MilvusToken, S3Credentials};
pub use crate::store::{Store, StoreError};

/// The credentials a planner needs, read by the caller (the operator: from Secrets).
#[derive(Clone, Debug, Default)]
pub struct PlanSecrets {
    pub milvus_token: MilvusToken,
    /// `None`: the default AWS credential chain.
    pub storage: Option<S3Credentials>,
    /// `None`: the storage credentials.
    pub source: Option<S3Credentials>,
}

/// Plans `spec` (named `name` in messages): asks Milvus, lists binlogs, checks the source.
/// Writes nothing.
pub async fn plan(name: &str, spec: &EngineSpec, secrets: PlanSecrets) -> Result<Plan> {
    let doc = BackfillDoc {
        name: name.to_owned(),
        spec: spec.clone(),
    };
    let stores = Stores::new(
        &Stores::storage_endpoint(spec),
        &spec.storage.bucket,
        &Stores::source_endpoint(spec),
        secrets.storage,
        secrets.source,
    )
    .await;
    Ok(crate::planner::plan_with(&doc, &secrets.milvus_token, stores)
        .await?
        .plan)
}

/// The Milvus storage bucket of `spec`, where the run layout lives.
pub async fn open_storage(spec: &EngineSpec, creds: Option<&S3Credentials>) -> Store {
    let ep = Stores::storage_endpoint(spec);
    match ep.local_dir() {
        // A local copy of a bucket, as the engine reads it (tests, debugging).
        Some(dir) => Store::Local {
            root: dir.join(&spec.storage.bucket),
        },
        None => Store::S3 {
            client: s3_client(&ep, creds).await,
            bucket: spec.storage.bucket.clone(),
            endpoint: ep.url(),
        },
    }
}

/// Runs one task with credentials from the environment, as `milvus-backfill segment` does.
pub async fn run_task(task: &Task) -> Result<TaskOutcome> {
    let p = &task.plan;
    let stores = Stores::from_env(&p.storage, &p.storage_bucket, &p.source).await?;
    Ok(crate::runner::run_task(task, &stores).await)
}
