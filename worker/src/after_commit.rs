//! The lifecycle's steps once Milvus has committed the backfill: `createIndex`, then
//! `verify`. Each is idempotent (an index that exists is kept; verify only reads), so a re-run
//! repeats nothing. Milvus is reached through [`PostCommitMilvus`], which the gRPC client
//! implements (`milvus_post.rs`) and the unit tests fake.

use std::time::Duration;

use milvus_backfill_api::lifecycle::{IndexSpec, Step, StepRecord, StepState};
use milvus_backfill_api::spec::EngineSpec;

use crate::error::Result;
use crate::milvus::MilvusClient;
use crate::milvus_post::{IndexInfo, QueriedRows, Value, INDEX_FAILED, INDEX_FINISHED};
use crate::plan::{PkType, Plan};

/// Keys per Query call of `verify`.
const QUERY_BATCH: usize = 1000;

/// The calls the steps make.
#[allow(async_fn_in_trait)]
pub trait PostCommitMilvus {
    async fn describe_index(&mut self, collection: &str, field: &str) -> Result<Option<IndexInfo>>;
    async fn create_index(&mut self, collection: &str, spec: &IndexSpec) -> Result<()>;
    async fn query_keys(
        &mut self,
        collection: &str,
        pk: (&str, PkType),
        keys: &[Value],
        fields: &[String],
    ) -> Result<QueriedRows>;
}

/// How long `createIndex` waits for Milvus to finish building.
#[derive(Clone, Copy, Debug)]
pub struct IndexWait {
    pub poll: Duration,
    pub timeout: Duration,
}

impl Default for IndexWait {
    fn default() -> Self {
        Self {
            poll: Duration::from_secs(2),
            timeout: Duration::from_secs(600),
        }
    }
}

/// Runs `createIndex` and `verify` as the spec declares them, in that order; a failed step
/// leaves the next one not run. `sample` is the source sample `verify` compares (read by the
/// caller, which has the source store).
pub async fn run<M: PostCommitMilvus>(
    spec: &EngineSpec,
    plan: &Plan,
    milvus: &mut M,
    sample: Option<&QueriedRows>,
    wait: IndexWait,
) -> Vec<StepRecord> {
    let lifecycle = spec.lifecycle.clone().unwrap_or_default();
    let mut records = Vec::new();
    let mut failed = false;
    if let Some(indexes) = lifecycle.create_index.as_ref().filter(|v| !v.is_empty()) {
        let r = create_indexes(&plan.collection_name, indexes, milvus, wait).await;
        failed = r.state == StepState::Failed;
        records.push(r);
    }
    if lifecycle.verify.is_some() {
        records.push(match (failed, sample) {
            (true, _) => StepRecord::new(Step::Verify, StepState::NotRun, "not run: createIndex failed"),
            (false, None) => StepRecord::new(
                Step::Verify,
                StepState::NotRun,
                "not run: the source sample was not read",
            ),
            (false, Some(sample)) => verify(plan, milvus, sample).await,
        });
    }
    records
}

/// The steps after the commit for the local `run`: connects to Milvus, reads the source sample
/// when `verify` is declared, then [`run`]. Nothing when neither step is declared.
pub async fn run_declared(
    spec: &EngineSpec,
    plan: &Plan,
    source: &crate::store::Store,
    token: &crate::config::MilvusToken,
) -> Vec<StepRecord> {
    let declared = milvus_backfill_api::lifecycle::steps_after_commit(spec);
    let Some(first) = declared.first().copied() else {
        return Vec::new();
    };
    let mut milvus = match MilvusClient::connect(&spec.milvus.uri, spec.milvus.database(), token).await {
        Ok(m) => m,
        Err(e) => {
            let mut out = vec![StepRecord::new(first, StepState::Failed, e.message)];
            out.extend(
                declared[1..]
                    .iter()
                    .map(|s| StepRecord::new(*s, StepState::NotRun, format!("not run: {first} failed"))),
            );
            return out;
        }
    };
    let sample = match spec.lifecycle.as_ref().and_then(|l| l.verify.as_ref()) {
        Some(v) => Some(crate::verify::read_sample(source, plan, v.sample_rows()).await),
        None => None,
    };
    let read = sample.as_ref().and_then(|s| s.as_ref().ok());
    let mut records = run(spec, plan, &mut milvus, read, IndexWait::default()).await;
    if let Some(Err(e)) = &sample {
        for r in records
            .iter_mut()
            .filter(|r| r.step == Step::Verify && r.state == StepState::NotRun)
        {
            *r = StepRecord::new(
                Step::Verify,
                StepState::Failed,
                format!("cannot read the source sample: {}", e.message),
            );
        }
    }
    records
}

/// Not run, because the commit (or the backfill) did not succeed: one record per step.
pub fn not_run(spec: &EngineSpec, why: &str) -> Vec<StepRecord> {
    milvus_backfill_api::lifecycle::steps_after_commit(spec)
        .into_iter()
        .map(|s| StepRecord::new(s, StepState::NotRun, format!("not run: {why}")))
        .collect()
}

async fn create_indexes<M: PostCommitMilvus>(
    collection: &str,
    indexes: &[IndexSpec],
    milvus: &mut M,
    wait: IndexWait,
) -> StepRecord {
    let mut said = Vec::new();
    let (mut created, mut failed) = (false, false);
    for ix in indexes {
        match one_index(collection, ix, milvus, wait).await {
            Ok((state, message)) => {
                created |= state == StepState::Done;
                said.push(message);
            }
            Err(e) => {
                failed = true;
                said.push(format!("field {}: {}", ix.field, e.message));
                break;
            }
        }
    }
    let state = match (failed, created) {
        (true, _) => StepState::Failed,
        (false, true) => StepState::Done,
        (false, false) => StepState::AlreadyDone,
    };
    StepRecord::new(Step::CreateIndex, state, said.join("; "))
}

async fn one_index<M: PostCommitMilvus>(
    collection: &str,
    ix: &IndexSpec,
    milvus: &mut M,
    wait: IndexWait,
) -> Result<(StepState, String)> {
    if let Some(found) = milvus.describe_index(collection, &ix.field).await? {
        return Ok((
            StepState::AlreadyDone,
            format!(
                "field {} has index {:?} ({}) already; kept",
                ix.field, found.index_name, found.index_type
            ),
        ));
    }
    milvus.create_index(collection, ix).await?;
    let deadline = std::time::Instant::now() + wait.timeout;
    loop {
        let now = milvus.describe_index(collection, &ix.field).await?;
        match now {
            Some(i) if i.state == INDEX_FINISHED => {
                return Ok((
                    StepState::Done,
                    format!(
                        "field {}: {} index built ({} rows)",
                        ix.field,
                        ix.index_type(),
                        i.total_rows
                    ),
                ))
            }
            Some(i) if i.state == INDEX_FAILED => {
                return Err(crate::error::BackfillError::connection(format!(
                    "Milvus failed to build the {} index: {}",
                    ix.index_type(),
                    i.fail_reason
                )))
            }
            _ if std::time::Instant::now() >= deadline => {
                let rows = now.map(|i| format!(" ({} of {} rows indexed)", i.indexed_rows, i.total_rows));
                return Ok((
                    StepState::Done,
                    format!(
                        "field {}: {} index created, still building{}",
                        ix.field,
                        ix.index_type(),
                        rows.unwrap_or_default()
                    ),
                ));
            }
            _ => tokio::time::sleep(wait.poll).await,
        }
    }
}

async fn verify<M: PostCommitMilvus>(plan: &Plan, milvus: &mut M, sample: &QueriedRows) -> StepRecord {
    let fields: Vec<String> = plan.new_fields.iter().map(|f| f.name.clone()).collect();
    let pk = (plan.pk_field.name.as_str(), plan.pk_field.pk_type);
    let mut got = QueriedRows {
        keys: Vec::new(),
        fields: fields.iter().map(|f| (f.clone(), Vec::new())).collect(),
    };
    let keys: Vec<Value> = sample.keys.iter().filter(|k| **k != Value::Null).cloned().collect();
    for chunk in keys.chunks(QUERY_BATCH) {
        match milvus.query_keys(&plan.collection_name, pk, chunk, &fields).await {
            Ok(r) => {
                got.keys.extend(r.keys);
                for ((_, all), (_, part)) in got.fields.iter_mut().zip(r.fields) {
                    all.extend(part);
                }
            }
            Err(e) => return StepRecord::new(Step::Verify, StepState::Failed, e.message),
        }
    }
    let verdict = crate::verify::compare(plan, sample, &got);
    let state = if verdict.passed() {
        StepState::Done
    } else {
        StepState::Failed
    };
    StepRecord::new(Step::Verify, state, verdict.describe())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::sample_plan;

    /// Milvus in memory: the indexes it has, the rows a Query returns, and every call made.
    #[derive(Default)]
    struct FakeMilvus {
        indexes: Vec<(String, IndexInfo)>,
        /// DescribeIndex calls after a create before the index reads Finished.
        building_for: u32,
        rows: QueriedRows,
        calls: Vec<String>,
        fail_create: bool,
    }

    impl PostCommitMilvus for FakeMilvus {
        async fn describe_index(&mut self, _c: &str, field: &str) -> Result<Option<IndexInfo>> {
            self.calls.push(format!("DescribeIndex {field}"));
            let building = self.building_for > 0;
            self.building_for = self.building_for.saturating_sub(1);
            Ok(self.indexes.iter().find(|(f, _)| f == field).map(|(_, i)| IndexInfo {
                state: if building { 2 } else { i.state },
                ..i.clone()
            }))
        }
        async fn create_index(&mut self, _c: &str, spec: &IndexSpec) -> Result<()> {
            self.calls
                .push(format!("CreateIndex {} {}", spec.field, spec.index_type()));
            if self.fail_create {
                return Err(crate::error::BackfillError::connection("CreateIndex: field not found"));
            }
            self.indexes.push((spec.field.clone(), info(spec.index_type())));
            Ok(())
        }
        async fn query_keys(
            &mut self,
            _c: &str,
            _pk: (&str, PkType),
            keys: &[Value],
            _f: &[String],
        ) -> Result<QueriedRows> {
            self.calls.push(format!("Query {} keys", keys.len()));
            Ok(self.rows.clone())
        }
    }

    fn info(index_type: &str) -> IndexInfo {
        IndexInfo {
            index_name: "score".into(),
            index_type: index_type.into(),
            state: INDEX_FINISHED,
            indexed_rows: 10,
            total_rows: 10,
            fail_reason: String::new(),
        }
    }

    fn spec() -> EngineSpec {
        serde_json::from_value(serde_json::json!({
            "milvus": {"uri": "http://m:19530", "collection": "c"},
            "storage": {"endpoint": "s:9000", "bucket": "b"},
            "source": {"path": "s3://d/x.parquet"},
            "lifecycle": {
                "commit": {"endpoint": "http://m:9091"},
                "createIndex": [{"field": "score", "indexType": "STL_SORT"}],
                "verify": {"sampleRows": 10}
            }
        }))
        .unwrap()
    }

    fn rows() -> QueriedRows {
        QueriedRows {
            keys: vec![Value::Int(1), Value::Int(2)],
            fields: vec![("score".into(), vec![Value::Float(0.5), Value::Null])],
        }
    }

    fn plan() -> Plan {
        let mut p = sample_plan();
        p.new_fields.truncate(1);
        p.new_fields[0].name = "score".into();
        p
    }

    const NOW: IndexWait = IndexWait {
        poll: Duration::ZERO,
        timeout: Duration::from_secs(5),
    };

    #[tokio::test]
    async fn create_index_waits_for_the_build_then_verify_compares() {
        let mut m = FakeMilvus {
            building_for: 0,
            rows: rows(),
            ..Default::default()
        };
        let r = run(&spec(), &plan(), &mut m, Some(&rows()), NOW).await;
        assert_eq!(
            r.iter().map(|r| (r.step, r.state)).collect::<Vec<_>>(),
            vec![(Step::CreateIndex, StepState::Done), (Step::Verify, StepState::Done)]
        );
        assert!(r[0].message.contains("STL_SORT index built"), "{}", r[0].message);
        assert!(
            r[1].message
                .contains("2 found in Milvus, 2 values compared, 0 mismatches"),
            "{}",
            r[1].message
        );
        assert_eq!(
            m.calls,
            vec![
                "DescribeIndex score",
                "CreateIndex score STL_SORT",
                "DescribeIndex score",
                "Query 2 keys"
            ]
        );
        // Run again: the index is there, nothing is created.
        m.calls.clear();
        let again = run(&spec(), &plan(), &mut m, Some(&rows()), NOW).await;
        assert_eq!(again[0].state, StepState::AlreadyDone);
        assert!(!m.calls.iter().any(|c| c.starts_with("CreateIndex")), "{:?}", m.calls);
    }

    #[tokio::test]
    async fn a_slow_build_is_reported_and_a_failed_step_stops_the_next() {
        let mut m = FakeMilvus {
            building_for: u32::MAX,
            rows: rows(),
            ..Default::default()
        };
        let wait = IndexWait {
            poll: Duration::from_millis(1),
            timeout: Duration::from_millis(20),
        };
        let r = run(&spec(), &plan(), &mut m, Some(&rows()), wait).await;
        assert!(
            r[0].message.contains("still building (10 of 10 rows indexed)"),
            "{}",
            r[0].message
        );
        let mut m = FakeMilvus {
            fail_create: true,
            ..Default::default()
        };
        let r = run(&spec(), &plan(), &mut m, Some(&rows()), NOW).await;
        assert_eq!((r[0].state, r[1].state), (StepState::Failed, StepState::NotRun));
        assert!(
            r[0].message.contains("field score: CreateIndex: field not found"),
            "{}",
            r[0].message
        );
        assert!(!m.calls.iter().any(|c| c.starts_with("Query")));
    }

    #[tokio::test]
    async fn verify_fails_on_a_wrong_value_and_says_where() {
        let mut wrong = rows();
        wrong.fields[0].1[0] = Value::Float(9.0);
        let mut m = FakeMilvus {
            rows: wrong,
            indexes: vec![("score".into(), info("STL_SORT"))],
            ..Default::default()
        };
        let r = run(&spec(), &plan(), &mut m, Some(&rows()), NOW).await;
        assert_eq!(r[1].state, StepState::Failed);
        assert!(
            r[1].message.contains("key 1 field score: source 0.5 but Milvus 9"),
            "{}",
            r[1].message
        );
        let skipped = not_run(&spec(), "the commit failed");
        assert_eq!(
            skipped.iter().map(|r| r.step).collect::<Vec<_>>(),
            vec![Step::CreateIndex, Step::Verify]
        );
    }
}
