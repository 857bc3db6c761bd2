//! Planning: asks Milvus for the collection and its segments, lists the binlogs,
//! checks the source, and produces a [`Plan`]. Writes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};

use crate::binlog;
use crate::config::{BackfillDoc, MilvusToken, Place, Stores};
use crate::error::{BackfillError, Result};
use milvus_backfill_api::layout::segment_output_dir;
use milvus_backfill_api::plan::PkType;

use crate::milvus::{CollectionInfo, MilvusClient};
use crate::plan::{self, Binlog, PkField, Plan, SegmentInfo, SegmentPlan, SkippedSegment, Triage};
use crate::source;
use crate::store::Store;

/// Picks the join key: `spec.primaryKeyFieldId`, else the schema's primary key.
pub fn pk_field(info: &CollectionInfo, requested: Option<i64>) -> Result<PkField> {
    let field = match requested {
        Some(id) => info.fields.iter().find(|f| f.field_id == id).ok_or_else(|| {
            let ids: Vec<String> = info
                .fields
                .iter()
                .map(|f| format!("{} ({})", f.field_id, f.name))
                .collect();
            BackfillError::config(format!(
                "spec.primaryKeyFieldId {id} is not a field of the collection; fields: {}",
                ids.join(", ")
            ))
        })?,
        None => info
            .fields
            .iter()
            .find(|f| f.is_primary_key)
            .ok_or_else(|| BackfillError::schema("the collection schema has no primary key field"))?,
    };
    let pk_type = PkType::from_milvus(field.data_type).ok_or_else(|| {
        BackfillError::schema(format!(
            "field {} ({}) has data type {}; the join key must be Int64 or VarChar",
            field.field_id, field.name, field.data_type
        ))
    })?;
    Ok(PkField {
        field_id: field.field_id,
        name: field.name.clone(),
        pk_type,
    })
}

pub struct Planned {
    pub plan: Plan,
    pub stores: Stores,
}

/// Plans with storage credentials from the environment (the CLI).
pub async fn plan(doc: &BackfillDoc, token: &MilvusToken) -> Result<Planned> {
    let spec = &doc.spec;
    let stores = Stores::from_env(
        &Stores::storage_endpoint(spec),
        &spec.storage.bucket,
        &Stores::source_endpoint(spec),
    )
    .await?;
    plan_with(doc, token, stores).await
}

/// Plans with the given stores (a controller builds them from the Backfill's Secrets).
pub async fn plan_with(doc: &BackfillDoc, token: &MilvusToken, stores: Stores) -> Result<Planned> {
    let spec = &doc.spec;
    let storage_ep = Stores::storage_endpoint(spec);
    let source_ep = Stores::source_endpoint(spec);
    let root = spec.storage.root_path().to_owned();

    let mut milvus = MilvusClient::connect(&spec.milvus.uri, spec.milvus.database(), token).await?;
    let coll = &spec.milvus.collection;
    if spec.flush() {
        tracing::info!(collection = %coll, "flushing before planning");
        milvus.flush(coll, Duration::from_secs(300)).await?;
    }
    let info = milvus.describe_collection(coll).await?;
    let pk = pk_field(&info, spec.primary_key_field_id)?;
    let partitions = milvus.show_partitions(coll).await?;
    let only_partition = match &spec.milvus.partition {
        Some(name) => Some(
            partitions
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, id)| *id)
                .ok_or_else(|| {
                    let names: Vec<&str> = partitions.iter().map(|(n, _)| n.as_str()).collect();
                    BackfillError::config(format!(
                        "spec.milvus.partition {name:?} does not exist; partitions: {names:?}"
                    ))
                })?,
        ),
        None => None,
    };
    let part_names: BTreeMap<i64, String> = partitions.iter().map(|(n, id)| (*id, n.clone())).collect();
    let segments: Vec<SegmentInfo> = milvus
        .segments(coll)
        .await?
        .into_iter()
        .filter(|s| only_partition.is_none_or(|p| s.partition_id == p))
        .collect();

    // The source: schema and keys are checked before anything is written.
    let source_place = Place::parse_source(&spec.source.path);
    let (source_store, source_key) = stores.open(&source_place).await;
    let files = source::list_files(&source_store, &source_key).await?;
    let existing: Vec<String> = info.fields.iter().map(|f| f.name.clone()).collect();
    let schema = source::inspect(&source_store, &files, pk.pk_type, &existing).await?;
    source::check_keys(&source_store, &schema.files, pk.pk_type)
        .await?
        .into_result()?;

    let output_place = match spec.output_path() {
        Some(p) => Place::parse_output(p, &spec.storage.bucket),
        None => Place::Storage { prefix: String::new() },
    };
    let (output_store, output_prefix) = stores.open(&output_place).await;
    let custom = spec.output_path().map(|_| output_prefix.as_str());

    let mut warnings = Vec::new();
    let mut skipped = Vec::new();
    let mut failed = Vec::new();
    let mut planned = Vec::new();
    let mut listings: BTreeMap<i64, Vec<crate::store::ObjectMeta>> = BTreeMap::new();
    for s in &segments {
        let skip = |reason: String| SkippedSegment {
            segment_id: s.segment_id,
            partition_id: s.partition_id,
            num_rows: s.num_rows,
            reason,
        };
        match plan::triage(s) {
            Triage::Skip(r) => {
                skipped.push(skip(r));
                continue;
            }
            Triage::Warn(w) => {
                warnings.push(w.clone());
                skipped.push(skip(w));
                continue;
            }
            Triage::Fail(r) => {
                failed.push(skip(r));
                continue;
            }
            Triage::Backfill => {}
        }
        if let std::collections::btree_map::Entry::Vacant(slot) = listings.entry(s.partition_id) {
            let prefix = format!("{root}/insert_log/{}/{}/", info.collection_id, s.partition_id);
            let l = stores
                .storage
                .list(&prefix)
                .await
                .map_err(|e| BackfillError::connection(e.to_string()))?;
            slot.insert(l);
        }
        let seg_prefix = format!(
            "{root}/insert_log/{}/{}/{}/",
            info.collection_id, s.partition_id, s.segment_id
        );
        let binlogs = plan::pk_binlogs(&listings[&s.partition_id], &seg_prefix, pk.field_id);
        if binlogs.is_empty() {
            failed.push(skip(format!(
                "no primary key binlogs under {}; is spec.storage (bucket {}, rootPath {root}) the storage this Milvus uses?",
                stores.storage.display(&format!("{seg_prefix}{}/", pk.field_id)),
                spec.storage.bucket
            )));
            continue;
        }
        match count_binlog_rows(&stores.storage, binlogs).await {
            Ok(binlogs) => {
                let total: u64 = binlogs.iter().map(|b| b.rows).sum();
                if total != s.num_rows as u64 {
                    failed.push(skip(format!(
                        "its {} primary key binlogs hold {total} rows but Milvus reports num_rows {}; the files are stale or incomplete (a compaction or flush in progress?): plan again later",
                        binlogs.len(),
                        s.num_rows
                    )));
                    continue;
                }
                planned.push(SegmentPlan {
                    segment_id: s.segment_id,
                    partition_id: s.partition_id,
                    partition_name: part_names.get(&s.partition_id).cloned().unwrap_or_default(),
                    num_rows: s.num_rows as u64,
                    storage_version: s.storage_version,
                    pk_binlogs: binlogs,
                    output_dir: segment_output_dir(custom, &root, info.collection_id, s.partition_id, s.segment_id),
                });
            }
            Err(e) => failed.push(skip(e.message)),
        }
    }
    if planned.is_empty() && failed.is_empty() {
        // Milvus 2.3 does not list Growing segments in GetPersistentSegmentInfo at all.
        warnings.push(format!(
            "collection {coll:?} has no Flushed segment to backfill; rows inserted since the last flush sit in Growing \
             segments that are not backfilled: flush first (spec.flush: true)"
        ));
    }
    if custom.is_none() && !planned.is_empty() {
        warnings.push(crate::gc::DEFAULT_OUTPUT_WARNING.to_owned());
    }
    let _ = output_store;
    let plan = Plan {
        run_id: plan::new_run_id(),
        database: spec.milvus.database().to_owned(),
        collection_name: coll.clone(),
        collection_id: info.collection_id,
        partition_id: only_partition,
        schema_version: info.schema_version,
        pk_field: pk,
        new_fields: schema.new_fields,
        storage: storage_ep,
        storage_bucket: spec.storage.bucket.clone(),
        root_path: root,
        source: source_ep,
        source_place,
        source_rows: schema.rows,
        source_files: schema.files,
        output_place,
        batch_size: spec
            .batch_size()
            .ok_or_else(|| BackfillError::config("spec.batchSize must be > 0"))?,
        parallelism: spec.parallelism(),
        segments: planned,
        skipped,
        failed,
        warnings,
    };
    Ok(Planned { plan, stores })
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
            field_id: id,
            name: name.into(),
            data_type: dt,
            is_primary_key: pk,
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
    fn pk_defaults_to_the_schema_and_can_be_overridden() {
        assert_eq!(pk_field(&info(), None).unwrap().name, "id");
        let t = pk_field(&info(), Some(102)).unwrap();
        assert_eq!((t.name.as_str(), t.pk_type), ("title", PkType::VarChar));
        assert!(pk_field(&info(), Some(101))
            .unwrap_err()
            .message
            .contains("Int64 or VarChar"));
        assert!(pk_field(&info(), Some(7)).unwrap_err().message.contains("100 (id)"));
    }
}
