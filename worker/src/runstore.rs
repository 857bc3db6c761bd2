//! A run's durable record in the storage bucket, under `{rootPath}/backfill/{coll}/{runId}/`:
//! `plan.json`, `tasks/{taskId}.json` (what Jobs read) and `outcomes/{taskId}-{attempt}.json`
//! (what workers write). A controller keeps per-segment detail here rather than in the
//! custom resource, so it survives Job deletion and operator restarts.

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

use crate::error::{BackfillError, Result};
use crate::plan::{run_prefix, Plan, Task};
use crate::runner::TaskOutcome;
use crate::store::{Store, StoreError};

pub fn plan_key(plan: &Plan) -> String {
    format!(
        "{}/plan.json",
        run_prefix(&plan.root_path, plan.collection_id, &plan.run_id)
    )
}

async fn put_json<T: serde::Serialize>(store: &Store, key: &str, value: &T) -> Result<()> {
    let body = serde_json::to_vec(value).map_err(|e| BackfillError::unexpected(e.to_string()))?;
    store
        .put(key, Bytes::from(body))
        .await
        .map_err(|e| BackfillError::write(None, store.display(key), e))
}

/// Stores the tasks first and the plan last: a stored plan means its tasks are there.
pub async fn store_plan(store: &Store, plan: &Plan, segments_per_task: usize) -> Result<Vec<Task>> {
    let tasks = plan.tasks(segments_per_task);
    futures_util::stream::iter(
        tasks
            .iter()
            .map(|t| async move { put_json(store, &t.task_key(), t).await }),
    )
    .buffer_unordered(16)
    .try_collect::<Vec<()>>()
    .await?;
    put_json(store, &plan_key(plan), plan).await?;
    Ok(tasks)
}

/// The plan stored at `key`, `None` if there is none yet.
pub async fn load_plan(store: &Store, key: &str) -> Result<Option<Plan>> {
    match store.get(key).await {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| BackfillError::data_read(store.display(key), format!("not a stored plan: {e}"))),
        Err(StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(BackfillError::connection(e.to_string())),
    }
}

/// Every outcome workers recorded for the run, in key order.
pub async fn load_outcomes(store: &Store, plan: &Plan) -> Result<Vec<TaskOutcome>> {
    let prefix = format!(
        "{}/outcomes/",
        run_prefix(&plan.root_path, plan.collection_id, &plan.run_id)
    );
    let listed = store
        .list(&prefix)
        .await
        .map_err(|e| BackfillError::connection(e.to_string()))?;
    let mut out = Vec::with_capacity(listed.len());
    for o in listed.iter().filter(|o| o.key.ends_with(".json")) {
        let b = store
            .get(&o.key)
            .await
            .map_err(|e| BackfillError::connection(e.to_string()))?;
        out.push(
            serde_json::from_slice(&b)
                .map_err(|e| BackfillError::data_read(store.display(&o.key), format!("not a task outcome: {e}")))?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::SegmentPlan;

    fn plan() -> Plan {
        let seg = |id| SegmentPlan {
            segment_id: id,
            partition_id: 1,
            partition_name: "_default".into(),
            num_rows: 10,
            storage_version: 0,
            pk_binlogs: vec![],
            output_dir: format!("o/{id}"),
        };
        Plan {
            run_id: "run1".into(),
            collection_id: 7,
            segments: vec![seg(1), seg(2), seg(3)],
            ..crate::plan::sample_plan()
        }
    }

    #[tokio::test]
    async fn plan_tasks_and_outcomes_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Local {
            root: dir.path().to_path_buf(),
        };
        let p = plan();
        assert_eq!(load_plan(&store, &plan_key(&p)).await.unwrap(), None);
        let tasks = store_plan(&store, &p, 2).await.unwrap();
        assert_eq!(tasks.len(), 2);
        assert_eq!(load_plan(&store, &plan_key(&p)).await.unwrap().unwrap(), p);
        let t: Task = serde_json::from_slice(&store.get(&tasks[1].task_key()).await.unwrap()).unwrap();
        assert_eq!(t.segments[0].segment_id, 3);
        assert_eq!(tasks[0].task_key(), "files/backfill/7/run1/tasks/run1-0.json");

        let outcome = TaskOutcome {
            task_id: tasks[0].task_id.clone(),
            attempt: 1,
            success: true,
            segments: vec![],
            failed_segments: vec![],
            used_source_rows: 4,
            execution_time_ms: 3,
        };
        put_json(
            &store,
            &Task {
                attempt: 1,
                ..tasks[0].clone()
            }
            .outcome_key(),
            &outcome,
        )
        .await
        .unwrap();
        assert_eq!(load_outcomes(&store, &p).await.unwrap(), vec![outcome]);
    }
}
