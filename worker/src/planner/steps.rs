//! The lifecycle's steps before planning that call Milvus over the planner's connection:
//! `flush`, then `addFields` (the snapshot step is [`super::by_name`]'s). Each is idempotent,
//! so a planning retry runs them again safely.

use std::time::Duration;

use milvus_backfill_api::lifecycle::{Step, StepRecord, StepState};
use milvus_backfill_api::spec::EngineSpec;

use crate::add_fields::{self, Added};
use crate::error::{BackfillError, Result};
use crate::milvus::MilvusClient;
use crate::stores::StoreCredentials;

/// Runs the declared steps in order and records what each did; the first failure stops
/// planning before anything is written.
pub(super) async fn before_planning(
    spec: &EngineSpec,
    milvus: &mut MilvusClient,
    creds: &StoreCredentials,
) -> Result<Vec<StepRecord>> {
    let name = &spec.milvus.collection;
    let mut done = Vec::new();
    if spec.flush() {
        tracing::info!(collection = %name, "lifecycle: flushing");
        milvus
            .flush(name, Duration::from_secs(300))
            .await
            .map_err(|e| in_step(Step::Flush, e))?;
        done.push(StepRecord::new(
            Step::Flush,
            StepState::Done,
            format!("flushed collection {name:?}: recent inserts are in sealed segments"),
        ));
    }
    if let Some(how) = spec.add_fields() {
        let added = add_fields::add_fields(spec, milvus, how, creds)
            .await
            .map_err(|e| in_step(Step::AddFields, e))?;
        let state = if added.iter().any(|a| matches!(a, Added::New(_))) {
            StepState::Done
        } else {
            StepState::AlreadyDone
        };
        let message = add_fields::describe_added(&added);
        tracing::info!(collection = %name, "lifecycle: {message}");
        done.push(StepRecord::new(Step::AddFields, state, message));
    }
    Ok(done)
}

/// An error of a step names the step and the field that declared it.
pub(super) fn in_step(step: Step, mut e: BackfillError) -> BackfillError {
    e.message = format!("step {step} ({}): {}; no later step ran", step.field(), e.message);
    e
}
