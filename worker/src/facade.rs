//! The engine as the operator uses it: plan a spec, open a run's bucket, run a task. The
//! operator reaches the worker crate only through this module (and `logging`); everything
//! else it exchanges with the engine is a contract type of `milvus_backfill_api`.

use milvus_backfill_api::error::Result;
use milvus_backfill_api::outcome::TaskOutcome;
use milvus_backfill_api::plan::{Plan, Task};
use milvus_backfill_api::spec::EngineSpec;

use crate::config::BackfillDoc;
use crate::stores::{RunLocations, RunStores, StoreCredentials};

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
    let creds = StoreCredentials {
        storage: secrets.storage,
        source: secrets.source,
    };
    Ok(crate::planner::plan_with(&doc, &secrets.milvus_token, &creds)
        .await?
        .plan)
}

/// The Milvus storage bucket of `spec`, where the run layout lives.
pub async fn open_storage(spec: &EngineSpec, creds: Option<&S3Credentials>) -> Store {
    let at = RunLocations::of_spec(spec);
    Store::open_bucket(&at.storage, &at.storage_bucket, creds).await
}

/// Runs one task with credentials from the environment, as `milvus-backfill segment` does.
pub async fn run_task(task: &Task) -> Result<TaskOutcome> {
    let stores = RunStores::for_task(&task.plan).await?;
    Ok(crate::runner::run_task(task, &stores).await)
}
