//! Planning: asks Milvus for the collection and its segments, lists the binlogs,
//! checks the source, and produces a [`Plan`]. Writes nothing.

use std::collections::btree_map::BTreeMap;

use futures_util::{StreamExt, TryStreamExt};

use milvus_backfill_api::layout::{self, segment_output_dir};
use milvus_backfill_api::plan::PkType;
use milvus_backfill_api::spec::EngineSpec;

use crate::binlog;
use crate::config::{BackfillDoc, MilvusToken, Place};
use crate::error::{BackfillError, Result};
use crate::milvus::{CollectionInfo, MilvusClient};
use crate::plan::{self, Binlog, PkField, Plan, SegmentInfo, SegmentPlan, SkippedSegment, Triage};
use crate::precheck::Checks;
use crate::source::{self, SourceSchema};
use crate::store::{ObjectMeta, Store};
use crate::stores::{place_key, RunLocations, RunStores, StoreCredentials};
use milvus_backfill_api::precheck::{Check, PrecheckReport};

mod by_name;
mod live_v2;
mod live_v3;
mod steps;

/// Picks the join key: `spec.joinKey` (by name), `spec.primaryKeyFieldId`, else the schema's
/// primary key. A physical field other than the primary key must be a non-nullable
/// Int8/16/32/64 or VarChar user field (the reference's rules).
pub fn join_field(info: &CollectionInfo, requested: Option<i64>, join_key: Option<&str>) -> Result<PkField> {
    let listed = || {
        info.fields
            .iter()
            .filter(|f| f.field_id >= 100)
            .map(|f| format!("{} ({})", f.name, f.field_id))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let field = match (join_key, requested) {
        (Some(name), _) => info.fields.iter().find(|f| f.name == name).ok_or_else(|| {
            BackfillError::config(format!(
                "spec.joinKey {name:?} is not a field of the collection (names are case-sensitive); fields: {}",
                listed()
            ))
        })?,
        (None, Some(id)) => info.fields.iter().find(|f| f.field_id == id).ok_or_else(|| {
            BackfillError::config(format!(
                "spec.primaryKeyFieldId {id} is not a field of the collection; fields: {}",
                listed()
            ))
        })?,
        (None, None) => info
            .fields
            .iter()
            .find(|f| f.is_primary_key)
            .ok_or_else(|| BackfillError::schema("the collection schema has no primary key field"))?,
    };
    let what = || format!("join key field `{}` ({})", field.name, field.field_id);
    if !field.is_primary_key && field.field_id < 100 {
        return Err(BackfillError::schema(format!(
            "{} is a system field; join on a user field",
            what()
        )));
    }
    if !field.is_primary_key && field.nullable {
        return Err(BackfillError::schema(format!(
            "{} is nullable; a join key must be the primary key or a non-nullable field",
            what()
        )));
    }
    let (pk_type, int_width) = match crate::types::DataType::from_i32(field.data_type) {
        Some(crate::types::DataType::Int8) => (PkType::Int64, Some(8)),
        Some(crate::types::DataType::Int16) => (PkType::Int64, Some(16)),
        Some(crate::types::DataType::Int32) => (PkType::Int64, Some(32)),
        _ => match PkType::from_milvus(field.data_type) {
            Some(t) => (t, None),
            None => {
                return Err(BackfillError::schema(format!(
                    "{} is {}; the join key must be Int8, Int16, Int32, Int64 or VarChar",
                    what(),
                    crate::types::describe(field.data_type)
                )))
            }
        },
    };
    Ok(PkField {
        field_id: field.field_id,
        name: field.name.clone(),
        pk_type,
        int_width,
        physical: !field.is_primary_key,
    })
}

/// A plan and the stores it was made with, which its run reuses.
pub struct Planned {
    pub plan: Plan,
    pub stores: RunStores,
}

/// Plans with storage credentials from the environment (the CLI).
pub async fn plan(doc: &BackfillDoc, token: &MilvusToken) -> Result<Planned> {
    plan_with(doc, token, &StoreCredentials::from_env()?).await
}

/// Plans with the given credentials (a controller reads them from the Backfill's Secrets).
pub async fn plan_with(doc: &BackfillDoc, token: &MilvusToken, creds: &StoreCredentials) -> Result<Planned> {
    plan_checked(doc, token, creds, &mut Checks::default()).await
}

/// The precheck: plans, then reads a sample of source rows as they will be written. The report
/// says what each check found; the plan is `Err` whenever the report did not pass (the sample
/// can fail after a plan), so that nothing runs on a failed precheck.
pub async fn precheck(
    doc: &BackfillDoc,
    token: &MilvusToken,
    creds: &StoreCredentials,
) -> (PrecheckReport, Result<Planned>) {
    let mut checks = Checks::default();
    let planned = plan_checked(doc, token, creds, &mut checks).await;
    let (sample, collection) = match &planned {
        Ok(p) => (
            crate::precheck::sample(&p.stores.source, &p.plan, &mut checks).await,
            p.plan.collection_name.clone(),
        ),
        Err(_) => (None, doc.spec.milvus.collection.clone()),
    };
    let report = checks.report(&doc.name, &collection, planned.as_ref().err(), sample);
    let planned = match (planned, report.failed().next()) {
        (Ok(_), Some(c)) => Err(BackfillError::new(
            c.kind.unwrap_or(crate::error::ErrorKind::UnexpectedError),
            format!("precheck {}: {}", c.check, c.detail),
        )),
        (planned, _) => planned,
    };
    (report, planned)
}

async fn plan_checked(
    doc: &BackfillDoc,
    token: &MilvusToken,
    creds: &StoreCredentials,
    checks: &mut Checks,
) -> Result<Planned> {
    let planned = plan_spec(doc, token, creds, checks).await?;
    checks.within(Check::Lifecycle, check_index_fields(&doc.spec, &planned.plan))?;
    checks.pass(Check::Lifecycle, lifecycle_detail(&doc.spec, &planned.plan));
    let run_id = &planned.plan.run_id;
    if doc.spec.run_id.is_some() {
        checks.within(Check::RunId, check_run_id_unused(&planned).await)?;
        checks.pass(Check::RunId, format!("spec.runId {run_id:?} names no earlier run"));
    } else {
        checks.pass(Check::RunId, format!("a fresh run ID, {run_id:?}"));
    }
    crate::precheck::record_plan(&planned.plan, checks);
    Ok(planned)
}

/// What the lifecycle did before planning and what it does after the backfill.
fn lifecycle_detail(spec: &EngineSpec, plan: &Plan) -> String {
    use milvus_backfill_api::lifecycle::Step;
    let done: Vec<String> = plan
        .lifecycle
        .iter()
        .map(|r| format!("{}: {}", r.step, r.message))
        .collect();
    let after: Vec<String> = milvus_backfill_api::lifecycle::steps(spec)
        .into_iter()
        .filter(|s| matches!(s, Step::Commit | Step::CreateIndex | Step::Verify))
        .map(|s| s.to_string())
        .collect();
    match (done.is_empty(), after.is_empty()) {
        (true, true) => "no lifecycle step declared".to_owned(),
        (false, true) => done.join("; "),
        (true, false) => format!("after the backfill: {}", after.join(" → ")),
        (false, false) => format!("{}; after the backfill: {}", done.join("; "), after.join(" → ")),
    }
}

/// `lifecycle.createIndex` builds indexes on the run's new fields only: an index on another
/// field is not this run's business, and a typo must not wait until after the commit.
fn check_index_fields(spec: &EngineSpec, plan: &Plan) -> Result<()> {
    let indexes = spec.lifecycle.as_ref().and_then(|l| l.create_index.as_ref());
    let unknown: Vec<&str> = indexes
        .into_iter()
        .flatten()
        .map(|ix| ix.field.as_str())
        .filter(|f| !plan.new_fields.iter().any(|nf| nf.name == *f))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    let new: Vec<&str> = plan.new_fields.iter().map(|f| f.name.as_str()).collect();
    Err(BackfillError::config(format!(
        "spec.lifecycle.createIndex names {unknown:?}, which this run does not backfill; its new fields are {new:?}"
    )))
}

/// A run ID the user chose names one run only (the reference's job-ID check): nothing but its
/// plan may be under its prefix yet. Generated IDs are fresh.
async fn check_run_id_unused(planned: &Planned) -> Result<()> {
    let layout = milvus_backfill_api::layout::RunLayout::of_plan(&planned.plan);
    let prefix = format!("{}/", layout.prefix());
    let storage = &planned.stores.storage;
    let mut found = storage
        .list(&prefix)
        .await
        .map_err(|e| BackfillError::new(e.kind(), format!("cannot list {}: {e}", storage.display(&prefix))))?;
    // A plan alone means nothing ran (the operator stored it, then could not record it): the
    // run may be planned again under its ID.
    found.retain(|o| o.key != layout.plan_key());
    let Some(first) = found.first() else {
        return Ok(());
    };
    let done = found.iter().any(|o| o.key == layout.result_key());
    Err(BackfillError::config(format!(
        "spec.runId {:?} was used before: {} holds {} object(s) of that run ({}{}); a run ID names one run, so choose another spec.runId or leave it out",
        planned.plan.run_id,
        storage.display(&prefix),
        found.len(),
        storage.display(&first.key),
        if done { ", and its result.json" } else { "" }
    )))
}

async fn plan_spec(
    doc: &BackfillDoc,
    token: &MilvusToken,
    creds: &StoreCredentials,
    checks: &mut Checks,
) -> Result<Planned> {
    let spec = &doc.spec;
    if let Some(path) = spec.snapshot_path() {
        return crate::snapshot_planner::plan(doc, path, creds, checks).await;
    }
    if let Some(snapshot) = spec.snapshot().filter(|s| s.name.is_some()) {
        return by_name::plan(doc, &snapshot, token, creds, checks).await;
    }
    let at = RunLocations::of_spec(spec);
    let stores = RunStores::open(&at, creds).await;
    let mut coll = read_collection(spec, token, creds, checks).await?;
    let steps = std::mem::take(&mut coll.steps);
    // StorageV3 segments take the new fields from the schema; StorageV1 exports must not.
    let rules = checks.within(Check::Collection, live_v3::rules(&coll.segments))?;
    checks.pass(Check::Collection, coll.describe(rules == live_v3::Rules::V3));
    let mut planned = if rules == live_v3::Rules::V3 {
        live_v3::plan(spec, at, stores, coll, checks).await?
    } else {
        plan_export(spec, at, stores, coll, checks).await?
    };
    planned.plan.lifecycle.splice(0..0, steps);
    Ok(planned)
}

/// The plan of StorageV1 segments: export outputs beside the binlogs or at `spec.output.path`.
async fn plan_export(
    spec: &EngineSpec,
    at: RunLocations,
    stores: RunStores,
    coll: Collection,
    checks: &mut Checks,
) -> Result<Planned> {
    let exempt = added_field_names(spec, &coll.info.fields);
    let schema = check_source(
        &stores.source,
        &at.source_place,
        (&coll, &exempt),
        spec.column_mapping.as_ref(),
        checks,
    )
    .await?;
    checks.not_run(
        Check::Vectors,
        "StorageV1 export: the new fields are not in the schema, so no column fills a vector field",
    );
    // Without `spec.output.path` outputs sit beside the binlogs, in `insert_log/`.
    let custom_output = spec.output_path().map(|_| place_key(&at.output_place));
    let mut segments = plan_segments(spec, &stores.storage, &coll, custom_output.as_deref()).await?;
    segments.add_run_warnings(&coll.name, custom_output.is_some());
    let in_schema: Vec<&str> = schema
        .new_fields
        .iter()
        .filter(|f| exempt.contains(&f.name))
        .map(|f| f.name.as_str())
        .collect();
    if !in_schema.is_empty() {
        segments.warnings.push(format!(
            "new field(s) {in_schema:?} are in the schema (spec.lifecycle.addFields) but the segments are StorageV1: \
             they get export files, which Milvus does not read; flush and compact into StorageV2/V3 segments for a commit"
        ));
    }
    let plan = assemble(
        spec,
        at,
        Learned {
            collection_name: coll.name,
            collection_id: coll.info.collection_id,
            partition_id: coll.only_partition,
            schema_version: coll.info.schema_version,
            pk_field: coll.pk,
            source_key_column: schema.key_column,
            new_fields: schema.new_fields,
            source_files: schema.files,
            source_rows: schema.rows,
            segments,
        },
    )?;
    Ok(Planned { plan, stores })
}

/// What planning learns from Milvus.
struct Collection {
    name: String,
    info: CollectionInfo,
    pk: PkField,
    /// `spec.milvus.partition`'s ID.
    only_partition: Option<i64>,
    partition_names: BTreeMap<i64, String>,
    /// Of the one partition, if the spec names one.
    segments: Vec<SegmentInfo>,
    /// What the lifecycle's steps before planning did.
    steps: Vec<milvus_backfill_api::lifecycle::StepRecord>,
}

impl Collection {
    /// What the collection check found.
    fn describe(&self, v3: bool) -> String {
        let partition = match self.only_partition.and_then(|id| self.partition_names.get(&id)) {
            Some(p) => format!(" in partition {p:?}"),
            None => String::new(),
        };
        format!(
            "collection {:?} (ID {}, schema version {}): {} segment(s){partition}; {}",
            self.name,
            self.info.collection_id,
            self.info.schema_version,
            self.segments.len(),
            if v3 {
                "StorageV3: the outputs are committed into the segments"
            } else {
                "StorageV1: the outputs are the export layout, which Milvus does not commit"
            }
        )
    }
}

async fn read_collection(
    spec: &EngineSpec,
    token: &MilvusToken,
    creds: &StoreCredentials,
    checks: &mut Checks,
) -> Result<Collection> {
    let connected = MilvusClient::connect(&spec.milvus.uri, spec.milvus.database(), token).await;
    let mut milvus = checks.within(Check::Collection, connected)?;
    let name = &spec.milvus.collection;
    let steps = checks.within(Check::Lifecycle, steps::before_planning(spec, &mut milvus, creds).await)?;
    let info = checks.within(Check::Collection, milvus.describe_collection(name).await)?;
    let pk = checks.within(
        Check::Mapping,
        join_field(&info, spec.primary_key_field_id, spec.join_key.as_deref()),
    )?;
    let partitions = checks.within(Check::Collection, milvus.show_partitions(name).await)?;
    let only_partition = match &spec.milvus.partition {
        Some(p) => Some(checks.within(Check::Collection, partition_id(&partitions, p))?),
        None => None,
    };
    let segments = checks
        .within(Check::Collection, milvus.segments(name).await)?
        .into_iter()
        .filter(|s| only_partition.is_none_or(|p| s.partition_id == p))
        .collect();
    Ok(Collection {
        name: name.clone(),
        info,
        pk,
        only_partition,
        partition_names: partitions.into_iter().map(|(n, id)| (id, n)).collect(),
        segments,
        steps,
    })
}

fn partition_id(partitions: &[(String, i64)], name: &str) -> Result<i64> {
    partitions
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, id)| *id)
        .ok_or_else(|| {
            let names: Vec<&str> = partitions.iter().map(|(n, _)| n.as_str()).collect();
            BackfillError::config(format!(
                "spec.milvus.partition {name:?} does not exist; partitions: {names:?}"
            ))
        })
}

/// The fields a StorageV1 export may target although they are in the schema: with
/// `spec.lifecycle.addFields` declared, the nullable fields other than the primary key (what
/// AddCollectionField adds, or finds from an earlier run). V1 segments hold no data for them.
fn added_field_names(spec: &EngineSpec, fields: &[crate::milvus::FieldInfo]) -> Vec<String> {
    if spec.add_fields().is_none() {
        return Vec::new();
    }
    fields
        .iter()
        .filter(|f| f.nullable && !f.is_primary_key)
        .map(|f| f.name.clone())
        .collect()
}

/// The source's schema and keys, checked before anything is written. A new field may not be a
/// field of the collection, unless it is in `exempt`.
async fn check_source(
    source: &Store,
    place: &Place,
    (coll, exempt): (&Collection, &[String]),
    mapping: Option<&BTreeMap<String, String>>,
    checks: &mut Checks,
) -> Result<SourceSchema> {
    let files = checks.within(Check::Source, source::list_files(source, &place_key(place)).await)?;
    let existing: Vec<String> = coll
        .info
        .fields
        .iter()
        .filter(|f| !exempt.contains(&f.name))
        .map(|f| f.name.clone())
        .collect();
    let join = source::Join { pk: &coll.pk, mapping };
    let inspected = source::inspect(source, &files, &join, &existing).await;
    let schema = checks.within_source(Check::Mapping, inspected)?;
    crate::precheck::record_source(&schema, &schema.new_fields, &source.display(&place_key(place)), checks);
    crate::precheck::check_keys(source, &schema, coll.pk.pk_type, checks).await?;
    Ok(schema)
}

/// The segments sorted into planned, skipped and failed, with the warnings on the way.
#[derive(Default)]
pub(crate) struct SegmentPlans {
    pub planned: Vec<SegmentPlan>,
    pub skipped: Vec<SkippedSegment>,
    pub failed: Vec<SkippedSegment>,
    pub warnings: Vec<String>,
}

/// What a planner learned of the collection and the source, for [`assemble`].
pub(crate) struct Learned {
    pub collection_name: String,
    pub collection_id: i64,
    pub partition_id: Option<i64>,
    pub schema_version: i32,
    pub pk_field: PkField,
    pub source_key_column: Option<String>,
    pub new_fields: Vec<crate::plan::NewField>,
    pub source_files: Vec<crate::plan::SourceFile>,
    pub source_rows: u64,
    pub segments: SegmentPlans,
}

/// The plan of what a planner learned, with the spec's settings and a fresh run ID: the one
/// place every planner (live V1, live V2/V3, snapshot) builds a [`Plan`].
pub(crate) fn assemble(spec: &EngineSpec, at: RunLocations, l: Learned) -> Result<Plan> {
    Ok(Plan {
        run_id: spec.run_id.clone().unwrap_or_else(plan::new_run_id),
        database: spec.milvus.database().to_owned(),
        collection_name: l.collection_name,
        collection_id: l.collection_id,
        partition_id: l.partition_id,
        schema_version: l.schema_version,
        pk_field: l.pk_field,
        source_key_column: l.source_key_column,
        new_fields: l.new_fields,
        mode: spec.mode(),
        storage: at.storage,
        storage_bucket: at.storage_bucket,
        root_path: spec.storage.root_path().to_owned(),
        source: at.source,
        source_place: at.source_place,
        source_rows: l.source_rows,
        source_files: l.source_files,
        output_place: at.output_place,
        batch_size: spec
            .batch_size()
            .ok_or_else(|| BackfillError::config("spec.batchSize must be > 0"))?,
        parallelism: spec.parallelism(),
        memory_mib: spec.memory_mib(),
        v3_commit: spec.v3_commit(),
        segments: l.segments.planned,
        skipped: l.segments.skipped,
        failed: l.segments.failed,
        warnings: l.segments.warnings,
        lifecycle: Vec::new(),
    })
}

impl SegmentPlans {
    fn add_run_warnings(&mut self, collection: &str, custom_output: bool) {
        if self.planned.is_empty() && self.failed.is_empty() {
            // Milvus 2.3 does not list Growing segments in GetPersistentSegmentInfo at all.
            self.warnings.push(format!(
                "collection {collection:?} has no Flushed segment to backfill; rows inserted since the last flush sit in Growing \
                 segments that are not backfilled: flush first (spec.flush: true)"
            ));
        }
        if !custom_output && !self.planned.is_empty() {
            self.warnings.push(crate::gc::DEFAULT_OUTPUT_WARNING.to_owned());
        }
    }
}

/// Segments planned at once: each is one small listing and a few ranged reads, so latency,
/// not bandwidth, bounds planning; 10,000 segments take seconds, not minutes.
const PLAN_CONCURRENCY: usize = 32;

/// Triages every segment and plans the ones to backfill. A segment that cannot be planned
/// fails alone; only a storage that cannot be listed fails planning.
async fn plan_segments(
    spec: &EngineSpec,
    storage: &Store,
    coll: &Collection,
    custom_output: Option<&str>,
) -> Result<SegmentPlans> {
    let mut out = SegmentPlans::default();
    let skip = |s: &SegmentInfo, reason: String| SkippedSegment {
        segment_id: s.segment_id,
        partition_id: s.partition_id,
        num_rows: s.num_rows,
        reason,
    };
    let mut to_plan = Vec::new();
    for s in &coll.segments {
        match plan::triage(s) {
            Triage::Skip(r) => out.skipped.push(skip(s, r)),
            Triage::Warn(w) => {
                out.warnings.push(w.clone());
                out.skipped.push(skip(s, w));
            }
            Triage::Fail(r) => out.failed.push(skip(s, r)),
            Triage::Backfill => to_plan.push(s),
        }
    }
    // Each segment lists only its own primary key directory (never the whole partition, whose
    // listing grows with every field and segment), in parallel, results in segment order.
    // The futures are built by a named async fn, not a closure: the operator's reconcile future
    // must be Send, which a closure borrowing the segments defeats (rust-lang/rust#102211).
    let futures: Vec<_> = to_plan
        .into_iter()
        .map(|s| list_and_plan(spec, storage, coll, s, custom_output))
        .collect();
    let mut planned = futures_util::stream::iter(futures).buffered(PLAN_CONCURRENCY);
    while let Some(next) = planned.next().await {
        match next? {
            (_, Ok(p)) => out.planned.push(p),
            (s, Err(reason)) => out.failed.push(skip(s, reason)),
        }
    }
    Ok(out)
}

async fn list_and_plan<'a>(
    spec: &EngineSpec,
    storage: &Store,
    coll: &Collection,
    s: &'a SegmentInfo,
    custom_output: Option<&str>,
) -> Result<(&'a SegmentInfo, Result<SegmentPlan, String>)> {
    let listing = list_pk_binlogs(spec, storage, coll, s).await?;
    Ok((s, plan_segment(spec, storage, coll, s, &listing, custom_output).await))
}

/// The objects under a segment's primary key directory, `{root}/insert_log/{coll}/{part}/{seg}/{pk}/`.
async fn list_pk_binlogs(
    spec: &EngineSpec,
    storage: &Store,
    coll: &Collection,
    s: &SegmentInfo,
) -> Result<Vec<ObjectMeta>> {
    let seg_prefix = layout::segment_insert_log_prefix(
        spec.storage.root_path(),
        coll.info.collection_id,
        s.partition_id,
        s.segment_id,
    );
    let prefix = format!("{}/{}/", seg_prefix.trim_end_matches('/'), coll.pk.field_id);
    storage
        .list(&prefix)
        .await
        .map_err(|e| BackfillError::new(e.kind(), e.to_string()))
}

/// One segment's plan from the listing of its primary key directory, or why it cannot be backfilled.
async fn plan_segment(
    spec: &EngineSpec,
    storage: &Store,
    coll: &Collection,
    s: &SegmentInfo,
    listing: &[ObjectMeta],
    custom_output: Option<&str>,
) -> Result<SegmentPlan, String> {
    let root = spec.storage.root_path();
    let collection_id = coll.info.collection_id;
    let seg_prefix = layout::segment_insert_log_prefix(root, collection_id, s.partition_id, s.segment_id);
    let binlogs = plan::pk_binlogs(listing, &seg_prefix, coll.pk.field_id);
    if binlogs.is_empty() {
        return Err(format!(
            "no primary key binlogs under {}; is spec.storage (bucket {}, rootPath {root}) the storage this Milvus uses?",
            storage.display(&format!("{seg_prefix}{}/", coll.pk.field_id)),
            spec.storage.bucket
        ));
    }
    let binlogs = count_binlog_rows(storage, binlogs).await.map_err(|e| e.message)?;
    let total: u64 = binlogs.iter().map(|b| b.rows).sum();
    if total != s.num_rows as u64 {
        return Err(format!(
            "its {} primary key binlogs hold {total} rows but Milvus reports num_rows {}; the files are stale or incomplete (a compaction or flush in progress?): plan again later",
            binlogs.len(),
            s.num_rows
        ));
    }
    Ok(SegmentPlan {
        segment_id: s.segment_id,
        partition_id: s.partition_id,
        partition_name: coll.partition_names.get(&s.partition_id).cloned().unwrap_or_default(),
        num_rows: s.num_rows as u64,
        storage_version: s.storage_version,
        pk_binlogs: binlogs,
        output_dir: segment_output_dir(custom_output, root, collection_id, s.partition_id, s.segment_id),
        v3: None,
        existing: vec![],
    })
}

/// Fills in each binlog's row count from its framing and Parquet footer (ranged reads).
async fn count_binlog_rows(store: &Store, binlogs: Vec<Binlog>) -> Result<Vec<Binlog>> {
    futures_util::stream::iter(binlogs.into_iter().map(|mut b| async move {
        let key = b.key.clone();
        b.rows = binlog::count_rows(b.size, |r| {
            let key = key.clone();
            async move { store.get_range(&key, r).await.map_err(|e| e.to_string()) }
        })
        .await
        .map_err(|e| BackfillError::data_read(store.display(&b.key), e))?;
        Ok::<_, BackfillError>(b)
    }))
    .buffered(16)
    .try_collect()
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::milvus::FieldInfo;

    fn info() -> CollectionInfo {
        let f = |id, name: &str, dt, pk| FieldInfo {
            dim: None,
            field_id: id,
            name: name.into(),
            data_type: dt,
            is_primary_key: pk,
            nullable: false,
        };
        CollectionInfo {
            collection_id: 1,
            schema_version: 0,
            fields: vec![
                f(100, "id", 5, true),
                f(101, "vec", 101, false),
                f(102, "title", 21, false),
            ],
        }
    }

    #[test]
    fn with_add_fields_a_v1_export_may_target_the_nullable_fields_it_added() {
        let mut info = info();
        info.fields.push(FieldInfo {
            dim: None,
            field_id: 103,
            name: "score".into(),
            data_type: 11,
            is_primary_key: false,
            nullable: true,
        });
        let mut spec: EngineSpec = serde_yaml::from_str(
            "milvus: {uri: 'http://m:19530', collection: c}\nstorage: {endpoint: 'file:///tmp', bucket: b}\nsource: {path: /tmp/s.parquet}\n",
        )
        .unwrap();
        assert!(
            added_field_names(&spec, &info.fields).is_empty(),
            "no addFields: every field clashes"
        );
        spec.lifecycle = Some(milvus_backfill_api::lifecycle::LifecycleSpec {
            add_fields: Some(Default::default()),
            ..Default::default()
        });
        // Not `title`: a field that is not nullable holds data of its own.
        assert_eq!(added_field_names(&spec, &info.fields), ["score"]);
    }

    #[test]
    fn pk_defaults_to_the_schema_and_can_be_overridden() {
        assert_eq!(join_field(&info(), None, None).unwrap().name, "id");
        let t = join_field(&info(), Some(102), None).unwrap();
        assert_eq!((t.name.as_str(), t.pk_type), ("title", PkType::VarChar));
        assert!(join_field(&info(), Some(101), None)
            .unwrap_err()
            .message
            .contains("Int64 or VarChar"));
        assert!(join_field(&info(), Some(7), None)
            .unwrap_err()
            .message
            .contains("id (100)"));
    }

    #[test]
    fn a_physical_join_key_follows_the_references_rules() {
        let mut info = info();
        let extra = |id, name: &str, dt, nullable| FieldInfo {
            dim: None,
            field_id: id,
            name: name.into(),
            data_type: dt,
            is_primary_key: false,
            nullable,
        };
        info.fields.extend([
            extra(103, "tag", 4, false),
            extra(104, "small", 2, false),
            extra(105, "maybe", 5, true),
            extra(106, "ratio", 11, false),
            extra(1, "Timestamp", 5, false),
        ]);
        let tag = join_field(&info, None, Some("tag")).unwrap();
        assert_eq!(
            (tag.field_id, tag.pk_type, tag.int_width, tag.physical),
            (103, PkType::Int64, Some(32), true)
        );
        assert!(
            !join_field(&info, None, Some("id")).unwrap().physical,
            "the primary key by name"
        );
        assert_eq!(join_field(&info, None, Some("small")).unwrap().int_width, Some(8));
        let title = join_field(&info, None, Some("title")).unwrap();
        assert_eq!((title.pk_type, title.int_width), (PkType::VarChar, None));
        for (name, phrase) in [
            (
                "Tag",
                "spec.joinKey \"Tag\" is not a field of the collection (names are case-sensitive)",
            ),
            ("maybe", "join key field `maybe` (105) is nullable"),
            (
                "ratio",
                "join key field `ratio` (106) is Double; the join key must be Int8, Int16, Int32, Int64 or VarChar",
            ),
            ("Timestamp", "join key field `Timestamp` (1) is a system field"),
        ] {
            let e = join_field(&info, None, Some(name)).unwrap_err();
            assert!(e.message.contains(phrase), "{phrase} not in {}", e.message);
        }
    }
}
