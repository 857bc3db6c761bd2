//! One segment, end to end: its primary keys in storage order ([`read`]: V1 binlogs, V2 packed
//! files, V3 loon files) → key index → matched source rows → row-aligned new columns → the
//! outputs of its storage version ([`write`]: V1 export layout, V2 column groups, V3 data files
//! and ops or a published manifest).

mod exchanged;
mod read;
mod staged;
mod write;

pub use staged::StageDone;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use arrow_array::ArrayRef;
use futures_util::StreamExt;

use milvus_backfill_api::outcome::{SegmentOutcome, SourceReads};

use crate::error::{BackfillError, Result};
use crate::groups::{split_matches, GroupRows};
use crate::join::{concat_values, Joined};
use crate::keys::KeyIndex;
use crate::plan::{SegmentPlan, TaskPlan};
use crate::source::{self, Matches};
use crate::store::Store;
use crate::stores::RunStores;

/// One segment alone: a group of one.
pub async fn process_segment(
    stores: &RunStores,
    plan: &TaskPlan,
    seg: &SegmentPlan,
    task_id: &str,
    attempt: u32,
) -> Result<SegmentOutcome> {
    let group = Group {
        stores,
        plan,
        task_id,
        attempt,
        parallelism: 1,
    };
    group
        .process(std::slice::from_ref(seg))
        .await
        .outcomes
        .pop()
        .expect("one segment, one outcome")
}

/// The outcome of each segment of a group, in order, and what the pass read.
pub struct GroupDone {
    pub outcomes: Vec<Result<SegmentOutcome>>,
    pub reads: SourceReads,
}

impl GroupDone {
    fn failed(segs: &[SegmentPlan], e: &BackfillError) -> Self {
        Self {
            outcomes: segs.iter().map(|s| Err(e.clone().with_segment(s.segment_id))).collect(),
            reads: SourceReads::default(),
        }
    }
}

/// Segments that share one pass over the source ([`crate::groups`]), and where they write.
pub struct Group<'a> {
    pub stores: &'a RunStores,
    pub plan: &'a TaskPlan,
    pub task_id: &'a str,
    pub attempt: u32,
    /// Segments written at once after the pass.
    pub parallelism: usize,
}

/// How a group of segments meets the source.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Every key in one index, one scan of the source.
    OnePass,
    /// Keys and source split by key hash into partitions through the exchange.
    Exchange { partitions: u32 },
}

/// A segment's keys in the group index, or why it has none.
type Indexed = std::result::Result<u32, BackfillError>;

impl Group<'_> {
    pub async fn process_in(&self, segs: &[SegmentPlan], mode: Mode) -> GroupDone {
        match mode {
            Mode::OnePass => self.process(segs).await,
            Mode::Exchange { partitions } => self.process_exchanged(segs, partitions).await,
        }
    }

    /// Reads every segment's keys into one index, scans the source once, then joins and writes
    /// each segment. Returns one outcome per segment, in order; a segment that fails does not
    /// stop the others (a failed source scan fails them all: none of them has its rows).
    pub async fn process(&self, segs: &[SegmentPlan]) -> GroupDone {
        let started = Instant::now();
        let (index, indexed) = self.index_keys(segs).await;
        let index = Arc::new(index);
        let rows = GroupRows::new(&indexed.iter().map(|r| *r.as_ref().unwrap_or(&0)).collect::<Vec<_>>());
        if indexed.iter().all(|r| r.is_err()) {
            return GroupDone {
                outcomes: indexed.into_iter().map(|r| Err(r.expect_err("all failed"))).collect(),
                reads: SourceReads::default(),
            };
        }
        let matches = match scan_source(&self.stores.source, self.plan, segs, index.clone()).await {
            Ok(m) => m,
            Err(e) => return GroupDone::failed(segs, &e),
        };
        let reads = SourceReads {
            source_passes: 1,
            source_bytes_read: matches.bytes_read,
            exchange_bytes_written: 0,
        };
        if matches.fields.is_empty() {
            // `read_matches` takes the fields from the first source file whether or not any of its
            // row groups match, so they are missing only for a plan without source files or new
            // fields, which planning never makes.
            let e = BackfillError::unexpected("the source files could not be opened to learn the new fields' types");
            return GroupDone::failed(segs, &e);
        }
        let split = split_matches(&rows, &index, &matches.offsets);
        drop(index);
        let shared = Arc::new(Shared {
            values: concat_values(&matches.batches, &matches.fields),
            fields: matches.fields,
            source_rows: matches.source_rows,
        });
        let work = segs.iter().zip(indexed).zip(split).map(|((seg, indexed), pairs)| {
            let shared = shared.clone();
            async move {
                let num_rows = indexed?;
                self.write_segment(seg, num_rows, &pairs, &shared, started).await
            }
        });
        let outcomes = futures_util::stream::iter(work)
            .buffered(self.parallelism.max(1))
            .collect()
            .await;
        GroupDone { outcomes, reads }
    }

    /// Pushes each segment's keys, in order, into one index; a segment whose keys cannot be
    /// read is left out of it (zero rows) and fails alone.
    async fn index_keys(&self, segs: &[SegmentPlan]) -> (KeyIndex, Vec<Indexed>) {
        let expected: u64 = segs.iter().map(|s| s.num_rows).sum();
        let mut index = KeyIndex::new(self.plan.pk_field.pk_type, expected.min(u64::from(u32::MAX)) as usize);
        let mut indexed = Vec::with_capacity(segs.len());
        // Two segments fetched ahead: the next segment's files arrive while this one's keys
        // are pushed.
        let mut reads = futures_util::stream::iter(
            segs.iter()
                .map(|seg| async move { read::segment_keys(&self.stores.storage, self.plan, seg).await }),
        )
        .buffered(2);
        let mut at = 0;
        while let Some(keys) = reads.next().await {
            let seg = &segs[at];
            at += 1;
            indexed.push(keys.and_then(|arrays| push_keys(&mut index, seg, &arrays)));
        }
        index.seal();
        tracing::debug!(segments = segs.len(), rows = index.rows(), range = ?index.range(), "primary keys indexed");
        (index, indexed)
    }

    async fn write_segment(
        &self,
        seg: &SegmentPlan,
        num_rows: u32,
        pairs: &[(u32, u32)],
        shared: &Shared,
        started: Instant,
    ) -> Result<SegmentOutcome> {
        let joined = Joined::from_pairs(num_rows, pairs, shared.values.clone(), &shared.fields).map_err(|d| {
            BackfillError::schema(format!(
                "segment {}: {} source row(s) hit a row that another source row already set (at segment offsets {:?}); the source has duplicate `pk` values",
                seg.segment_id, d.count, d.example_offsets
            ))
            .with_segment(seg.segment_id)
        })?;
        let used_source_rows = pairs.iter().map(|&(_, k)| shared.source_rows[k as usize]).collect();
        let (stores, plan) = (self.stores, self.plan);
        let existing = if plan.mode.reads_existing() && !seg.existing.is_empty() {
            read::existing_values(&stores.storage, plan, seg, &shared.fields).await?
        } else {
            vec![None; shared.fields.len()]
        };
        let joined = joined.with_existing(plan.mode, existing);
        let (used_source_by_field, used_data_file_by_field) = by_field(plan, &joined.provenance());
        let joined = Arc::new(joined);
        let written = match (&seg.v3, seg.storage_version) {
            (Some(_), _) => write::v3(stores, plan, seg, &joined).await?,
            (None, 2) => write::v2(stores, plan, seg, &joined).await?,
            (None, _) => write::export(stores, plan, seg, &joined, self.task_id, self.attempt).await?,
        };
        Ok(SegmentOutcome {
            segment_id: seg.segment_id,
            partition_id: seg.partition_id,
            row_count: joined.num_rows() as u64,
            matched_row_count: joined.matched_rows(),
            output_path: written.output_path,
            manifest_paths: written.paths,
            execution_time_ms: started.elapsed().as_millis() as u64,
            ops: written.ops,
            storage_version: written.storage_version,
            version: written.version,
            source_version: written.source_version,
            column_groups: written.column_groups,
            used_source_by_field,
            used_data_file_by_field,
            used_source_rows,
        })
    }
}

/// What the segments of a group share after the pass: the matched rows' values, their types,
/// and their global source row numbers.
struct Shared {
    values: Vec<ArrayRef>,
    fields: Vec<(String, arrow_schema::DataType)>,
    source_rows: Vec<u64>,
}

/// The join's provenance counts keyed by field name (both empty in `replace`).
fn by_field(plan: &TaskPlan, counts: &[(u64, u64)]) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    plan.new_fields
        .iter()
        .zip(counts)
        .map(|(f, &(kept, filled))| ((f.name.clone(), kept), (f.name.clone(), filled)))
        .unzip()
}

fn push_keys(index: &mut KeyIndex, seg: &SegmentPlan, arrays: &[ArrayRef]) -> Indexed {
    let before = index.rows();
    for a in arrays {
        // `segment_keys` checked the type and the nulls, so a refusal here is a bug.
        index
            .push(a.as_ref())
            .map_err(|e| BackfillError::unexpected(e).with_segment(seg.segment_id))?;
    }
    Ok(index.rows() - before)
}

/// The segment's row count, if this version can backfill the segment at all.
fn supported_rows(seg: &SegmentPlan) -> Result<u32> {
    let supported = match seg.storage_version {
        0 | 2 => seg.v3.is_none(),
        3 => seg.v3.is_some(),
        _ => false,
    };
    if !supported {
        return Err(BackfillError::segment(
            seg.segment_id,
            format!(
                "storage version {} is not supported (V1 segments in the export layout, V2 and V3 segments from a snapshot)",
                seg.storage_version
            ),
        ));
    }
    u32::try_from(seg.num_rows).map_err(|_| {
        BackfillError::segment(
            seg.segment_id,
            format!("{} rows exceed the 2^32 rows a segment can hold", seg.num_rows),
        )
    })
}

async fn scan_source(source: &Store, plan: &TaskPlan, segs: &[SegmentPlan], index: Arc<KeyIndex>) -> Result<Matches> {
    let matches = source::read_matches(
        source,
        &plan.source_files,
        index,
        plan.key_column(),
        &plan.new_fields,
        plan.batch_size.rows(),
    )
    .await?;
    tracing::debug!(
        segments = segs.len(),
        first_segment = segs.first().map(|s| s.segment_id),
        matched = matches.offsets.len(),
        row_groups_read = matches.row_groups_read,
        row_groups_skipped = matches.row_groups_skipped,
        "source scanned"
    );
    Ok(matches)
}
