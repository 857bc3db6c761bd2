//! One partition joined alone: its keys (of every segment) in one index, its source rows probed
//! against it, and the matches written sorted by segment, one row group per segment, as
//! `(offset, row, new fields...)`: the row offset in the segment, the source row (for the
//! unmatched count), the values.

use std::sync::Arc;

use arrow_array::{Array, ArrayRef, RecordBatch, UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use bytes::Bytes;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::file::metadata::ParquetMetaDataReader;

use milvus_backfill_api::stage::JoinedFile;

use super::route::{OFFSET, SEGMENT};
use super::{encode, Exchange};
use crate::error::{BackfillError, Result};
use crate::join::concat_values;
use crate::keys::{KeyIndex, PkType};
use crate::plan::{NewField, SourceFile};
use crate::source::{self, ObjectReader, KEY_COLUMN};
use crate::store::Store;

/// Column names of a joined part beside the new fields.
pub const ROW: &str = "row";

/// A joined partition: where each segment's matches are, and the file's footer.
pub struct JoinedPartition {
    pub file: Option<(SourceFile, ArrowReaderMetadata)>,
    /// `(segment position, row group)`, in segment order.
    pub row_groups: Vec<(u32, usize)>,
    pub matched: u64,
}

impl JoinedPartition {
    /// A partition another task joined, with its footer read.
    pub async fn open(store: &Store, f: &JoinedFile) -> Result<Self> {
        let md = ObjectReader::new(store.clone(), f.file.key.clone(), f.file.size)
            .metadata()
            .await?;
        let meta = ArrowReaderMetadata::try_new(md, ArrowReaderOptions::default())
            .map_err(|e| BackfillError::data_read(store.display(&f.file.key), e))?;
        Ok(Self {
            file: Some((f.file.clone(), meta)),
            row_groups: f.row_groups.iter().map(|&(s, g)| (s, g as usize)).collect(),
            matched: f.file.rows,
        })
    }

    pub fn row_group_of(&self, segment: u32) -> Option<usize> {
        self.row_groups
            .binary_search_by_key(&segment, |&(s, _)| s)
            .ok()
            .map(|i| self.row_groups[i].1)
    }
}

/// The keys of one partition: the index and, for each of its rows, where that key sits.
struct PartitionKeys {
    index: KeyIndex,
    segment: Vec<u32>,
    offset: Vec<u32>,
}

async fn load_keys(ex: &Exchange, pk: PkType, parts: &[SourceFile]) -> Result<PartitionKeys> {
    let rows: u64 = parts.iter().map(|p| p.rows).sum();
    let mut keys = PartitionKeys {
        index: KeyIndex::new(pk, rows as usize),
        segment: Vec::with_capacity(rows as usize),
        offset: Vec::with_capacity(rows as usize),
    };
    for part in parts {
        let what = ex.store().display(&part.key);
        let data = ex
            .store()
            .get(&part.key)
            .await
            .map_err(|e| BackfillError::data_read(&what, e))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(data)
            .and_then(|b| b.build())
            .map_err(|e| BackfillError::data_read(&what, e))?;
        for batch in reader {
            let batch = batch.map_err(|e| BackfillError::data_read(&what, e))?;
            let col = |name: &str| {
                batch
                    .column_by_name(name)
                    .cloned()
                    .ok_or_else(|| BackfillError::data_read(&what, format!("no column {name}")))
            };
            keys.index
                .push(col(KEY_COLUMN)?.as_ref())
                .map_err(|e| BackfillError::data_read(&what, e))?;
            keys.segment.extend(
                u32s(&col(SEGMENT)?).ok_or_else(|| BackfillError::data_read(&what, "not a key part of this run"))?,
            );
            keys.offset.extend(
                u32s(&col(OFFSET)?).ok_or_else(|| BackfillError::data_read(&what, "not a key part of this run"))?,
            );
        }
    }
    keys.index.seal();
    Ok(keys)
}

/// The values of a UInt32 column, or `None` for another type.
fn u32s(a: &ArrayRef) -> Option<Vec<u32>> {
    a.as_any().downcast_ref::<UInt32Array>().map(|a| a.values().to_vec())
}

/// What every partition's join shares.
pub struct JoinSpec<'a> {
    pub pk: PkType,
    pub new_fields: &'a [NewField],
    pub batch_size: usize,
}

/// One partition's parts. Its source parts are numbered from `first_row`, so that every source
/// row has one number across the partitions (they hold each row once).
pub struct PartitionParts<'a> {
    pub partition: u32,
    pub keys: &'a [SourceFile],
    pub source: &'a [SourceFile],
    pub first_row: u64,
}

/// Joins one partition.
pub async fn partition(ex: &Exchange, spec: &JoinSpec<'_>, parts: PartitionParts<'_>) -> Result<JoinedPartition> {
    let PartitionParts {
        partition: p,
        keys: key_parts,
        source: source_parts,
        first_row,
    } = parts;
    let empty = JoinedPartition {
        file: None,
        row_groups: Vec::new(),
        matched: 0,
    };
    if key_parts.is_empty() || source_parts.is_empty() {
        return Ok(empty);
    }
    let keys = load_keys(ex, spec.pk, key_parts).await?;
    let mut numbered = source_parts.to_vec();
    let mut next = first_row;
    for f in &mut numbered {
        f.first_row = next;
        next += f.rows;
    }
    let index = Arc::new(keys.index);
    // Source parts name their columns by field ([`super::route`]), whatever the source's names.
    let fields: Vec<NewField> = spec
        .new_fields
        .iter()
        .map(|f| NewField {
            vector: None,
            source_column: None,
            ..f.clone()
        })
        .collect();
    let m = source::read_matches(
        ex.store(),
        &numbered,
        index.clone(),
        KEY_COLUMN,
        &fields,
        spec.batch_size,
    )
    .await?;
    // (segment, offset, matched row): every row holding a matched key.
    let mut hits: Vec<(u32, u32, u32)> = Vec::with_capacity(m.offsets.len());
    for (k, &first) in m.offsets.iter().enumerate() {
        for &r in std::iter::once(&first).chain(index.more_offsets(first)) {
            hits.push((keys.segment[r as usize], keys.offset[r as usize], k as u32));
        }
    }
    drop(index);
    if hits.is_empty() {
        return Ok(empty);
    }
    hits.sort_by_key(|h| h.0);
    let values = concat_values(&m.batches, &m.fields);
    let batches = per_segment_batches(&hits, &m.source_rows, &values, &m.fields)?;
    let row_groups: Vec<(u32, usize)> = batches.iter().enumerate().map(|(i, (s, _))| (*s, i)).collect();
    let batches: Vec<RecordBatch> = batches.into_iter().map(|(_, b)| b).collect();
    let body = encode(&batches, true).map_err(|e| BackfillError::unexpected(format!("exchange partition {p}: {e}")))?;
    let meta = footer(&body)?;
    let file = ex
        .put_encoded(ex.key("joined", &format!("{p:05}")), body, hits.len() as u64)
        .await?;
    tracing::debug!(partition = p, matched = hits.len(), segments = row_groups.len(), key = %file.key, "partition joined");
    Ok(JoinedPartition {
        file: Some((file, meta)),
        row_groups,
        matched: hits.len() as u64,
    })
}

/// One batch per segment: `(offset, row, values...)` of its hits.
fn per_segment_batches(
    hits: &[(u32, u32, u32)],
    source_rows: &[u64],
    values: &[ArrayRef],
    fields: &[(String, DataType)],
) -> Result<Vec<(u32, RecordBatch)>> {
    let mut schema_fields = vec![
        Field::new(OFFSET, DataType::UInt32, false),
        Field::new(ROW, DataType::UInt64, false),
    ];
    schema_fields.extend(fields.iter().map(|(n, t)| Field::new(n, t.clone(), true)));
    let schema = Arc::new(Schema::new(schema_fields));
    let mut out = Vec::new();
    let mut start = 0;
    while start < hits.len() {
        let seg = hits[start].0;
        let end = start + hits[start..].partition_point(|h| h.0 == seg);
        let run = &hits[start..end];
        let take = UInt32Array::from_iter_values(run.iter().map(|h| h.2));
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from_iter_values(run.iter().map(|h| h.1))),
            Arc::new(UInt64Array::from_iter_values(
                run.iter().map(|h| source_rows[h.2 as usize]),
            )),
        ];
        for v in values {
            cols.push(
                arrow_select::take::take(v.as_ref(), &take, None)
                    .map_err(|e| BackfillError::unexpected(format!("exchange join: {e}")))?,
            );
        }
        let batch = RecordBatch::try_new(schema.clone(), cols)
            .map_err(|e| BackfillError::unexpected(format!("exchange join: {e}")))?;
        out.push((seg, batch));
        start = end;
    }
    Ok(out)
}

/// The footer of a joined part just encoded, kept so that each segment's read needs no more.
fn footer(body: &[u8]) -> Result<ArrowReaderMetadata> {
    let md = ParquetMetaDataReader::new()
        .parse_and_finish(&Bytes::copy_from_slice(body))
        .map_err(|e| BackfillError::unexpected(format!("exchange footer: {e}")))?;
    ArrowReaderMetadata::try_new(Arc::new(md), ArrowReaderOptions::default())
        .map_err(|e| BackfillError::unexpected(format!("exchange footer: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Int64Array;

    #[test]
    fn hits_become_one_batch_per_segment_in_segment_order() {
        let values: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(vec![10, 11, 12]))];
        let fields = vec![("v".to_owned(), DataType::Int64)];
        let hits = [(0u32, 5u32, 2u32), (0, 1, 0), (3, 0, 1), (3, 7, 2)];
        let b = per_segment_batches(&hits, &[100, 101, 102], &values, &fields).unwrap();
        assert_eq!(
            b.iter().map(|(s, b)| (*s, b.num_rows())).collect::<Vec<_>>(),
            vec![(0, 2), (3, 2)]
        );
        let seg3 = &b[1].1;
        assert_eq!(u32s(seg3.column(0)), Some(vec![0, 7]));
        let rows = seg3.column(1).as_any().downcast_ref::<UInt64Array>().unwrap();
        assert_eq!(rows.values().to_vec(), vec![101, 102]);
        let v = seg3.column(2).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(v.values().to_vec(), vec![11, 12]);
    }
}
