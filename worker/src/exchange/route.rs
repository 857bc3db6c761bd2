//! Routing into partitions by key hash: the segments' keys (with where each sits) and the
//! source rows (key and new-field values), each written as part files per partition.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Int64Array, LargeStringArray, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use futures_util::StreamExt;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use parquet::arrow::ProjectionMask;

use milvus_backfill_api::stage::SourceSlice;

use super::{partition_of, Exchange, PartitionBuffers};
use crate::error::{BackfillError, Result};
use crate::keys::{hash_i64, hash_str};
use crate::plan::{NewField, SourceFile};
use crate::source::{self, ObjectReader, KEY_COLUMN};
use crate::store::Store;

/// Column names of a key part: the key, the segment's position in the task, its row offset.
pub const SEGMENT: &str = "segment";
pub const OFFSET: &str = "offset";

/// For each key of `keys`, its partition.
pub fn partitions_of(keys: &dyn Array, partitions: u32) -> Vec<u32> {
    if let Some(a) = keys.as_any().downcast_ref::<Int64Array>() {
        return a
            .values()
            .iter()
            .map(|&k| partition_of(hash_i64(k), partitions))
            .collect();
    }
    if let Some(a) = keys.as_any().downcast_ref::<StringArray>() {
        return (0..a.len())
            .map(|i| partition_of(hash_str(a.value(i)), partitions))
            .collect();
    }
    if let Some(a) = keys.as_any().downcast_ref::<LargeStringArray>() {
        return (0..a.len())
            .map(|i| partition_of(hash_str(a.value(i)), partitions))
            .collect();
    }
    // Types are checked before routing (segment keys and the planned source schema).
    vec![0; keys.len()]
}

/// Row indices of each partition, in row order.
fn split(parts: &[u32], partitions: u32) -> Vec<Vec<u32>> {
    let mut out = vec![Vec::new(); partitions as usize];
    for (i, &p) in parts.iter().enumerate() {
        out[p as usize].push(i as u32);
    }
    out
}

/// Takes the rows `idx` of every column of `batch`.
fn take(batch: &RecordBatch, idx: &[u32]) -> Result<RecordBatch> {
    let idx = UInt32Array::from(idx.to_vec());
    arrow_select::take::take_record_batch(batch, &idx).map_err(|e| BackfillError::unexpected(format!("routing: {e}")))
}

/// Routes the segments' keys: `(key, segment, offset)` rows into each key's partition.
pub struct KeyRouter {
    buffers: PartitionBuffers,
    partitions: u32,
    schema: Option<SchemaRef>,
}

impl KeyRouter {
    pub fn new(exchange: Arc<Exchange>) -> Self {
        let partitions = exchange.partitions;
        Self {
            buffers: PartitionBuffers::new(exchange, "keys", "k".into()),
            partitions,
            schema: None,
        }
    }

    /// One segment's keys in storage order; `segment` is its position in the task.
    pub async fn push(&mut self, segment: u32, arrays: &[ArrayRef]) -> Result<()> {
        let mut offset = 0u32;
        for keys in arrays {
            let n = keys.len() as u32;
            let schema = self
                .schema
                .get_or_insert_with(|| {
                    Arc::new(Schema::new(vec![
                        Field::new(KEY_COLUMN, keys.data_type().clone(), false),
                        Field::new(SEGMENT, DataType::UInt32, false),
                        Field::new(OFFSET, DataType::UInt32, false),
                    ]))
                })
                .clone();
            let batch = RecordBatch::try_new(
                schema,
                vec![
                    keys.clone(),
                    Arc::new(UInt32Array::from(vec![segment; n as usize])),
                    Arc::new(UInt32Array::from_iter_values(offset..offset + n)),
                ],
            )
            .map_err(|e| BackfillError::unexpected(format!("routing keys: {e}")))?;
            offset += n;
            let parts = partitions_of(keys.as_ref(), self.partitions);
            for (p, idx) in split(&parts, self.partitions).into_iter().enumerate() {
                if !idx.is_empty() {
                    self.buffers.push(p as u32, take(&batch, &idx)?).await?;
                }
            }
        }
        Ok(())
    }

    pub async fn finish(self) -> Result<Vec<Vec<SourceFile>>> {
        self.buffers.finish().await
    }
}

/// Each partition's part files, the new fields' names and types, and the bytes read.
pub type RoutedSource = (Vec<Vec<SourceFile>>, Vec<(String, DataType)>, u64);

/// Routes every source row of `slices` (its key and planned new fields) into its key's
/// partition, the slices on all cores.
pub async fn source(
    exchange: Arc<Exchange>,
    store: &Store,
    slices: &[SourceSlice],
    key_column: &str,
    new_fields: &[NewField],
) -> Result<RoutedSource> {
    let workers = super::routing_workers();
    let fetched = Arc::new(AtomicU64::new(0));
    let mut runs = Vec::with_capacity(slices.len());
    let mut fields = Vec::new();
    for (si, slice) in slices.iter().enumerate() {
        let f = &slice.file;
        let mut r = ObjectReader::new(store.clone(), f.key.clone(), f.size).counting(fetched.clone());
        let what = store.display(&f.key);
        let meta = ArrowReaderMetadata::try_new(r.metadata().await?, ArrowReaderOptions::default())
            .map_err(|e| BackfillError::data_read(&what, e))?;
        if meta.metadata().file_metadata().num_rows() as u64 != f.rows {
            return Err(BackfillError::data_read(
                &what,
                format!(
                    "does not hold the {} rows the plan expects; the source changed after planning, plan again",
                    f.rows
                ),
            ));
        }
        if fields.is_empty() {
            fields = source::field_types(&what, meta.schema(), new_fields)?;
        }
        let groups: Vec<usize> = slice.row_groups(meta.metadata().num_row_groups()).collect();
        if groups.is_empty() {
            continue;
        }
        runs.push(Slice {
            store: store.clone(),
            file: f.clone(),
            meta,
            groups,
            key_column: key_column.to_owned(),
            new_fields: new_fields.to_vec(),
            fetched: fetched.clone(),
            exchange: exchange.clone(),
            name: format!("s{si}c{}", slice.chunk),
        });
    }
    let mut parts: Vec<Vec<SourceFile>> = vec![Vec::new(); exchange.partitions as usize];
    let mut running = futures_util::stream::iter(runs.into_iter().map(|s| tokio::spawn(s.run()))).buffered(workers);
    while let Some(done) = running.next().await {
        let slice_parts = done.map_err(|e| BackfillError::unexpected(format!("routing the source: {e}")))??;
        for (p, files) in slice_parts.into_iter().enumerate() {
            parts[p].extend(files);
        }
    }
    Ok((parts, fields, fetched.load(Ordering::Relaxed)))
}

/// A run of row groups of one source file, routed by one task.
struct Slice {
    store: Store,
    file: SourceFile,
    meta: ArrowReaderMetadata,
    groups: Vec<usize>,
    key_column: String,
    new_fields: Vec<NewField>,
    fetched: Arc<AtomicU64>,
    exchange: Arc<Exchange>,
    name: String,
}

impl Slice {
    async fn run(self) -> Result<Vec<Vec<SourceFile>>> {
        let what = self.store.display(&self.file.key);
        let schema = self.meta.schema().clone();
        let key_idx = schema
            .index_of(&self.key_column)
            .map_err(|e| BackfillError::data_read(&what, e))?;
        let value_idx = source::planned_columns(&what, &schema, &self.new_fields)?;
        let mut columns = vec![key_idx];
        columns.extend(&value_idx);
        let reader =
            ObjectReader::new(self.store.clone(), self.file.key.clone(), self.file.size).counting(self.fetched.clone());
        let builder = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, self.meta.clone());
        let mask = ProjectionMask::roots(builder.parquet_schema(), columns.iter().copied());
        let mut stream = builder
            .with_row_groups(self.groups.clone())
            .with_projection(mask)
            .with_batch_size(64 * 1024)
            .build()
            .map_err(|e| BackfillError::data_read(&what, e))?;
        let partitions = self.exchange.partitions;
        let mut buffers = PartitionBuffers::new(self.exchange.clone(), "source", self.name.clone());
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| BackfillError::data_read(&what, e))?;
            let batch = in_plan_order(&batch, &self.key_column, &self.new_fields, &what)?;
            let keys = batch.column(0);
            if keys.null_count() > 0 {
                return Err(BackfillError::schema(format!(
                    "{what} has {} null `{}` value(s); the source changed after planning, plan again",
                    keys.null_count(),
                    self.key_column
                )));
            }
            let parts = partitions_of(keys.as_ref(), partitions);
            for (p, idx) in split(&parts, partitions).into_iter().enumerate() {
                if !idx.is_empty() {
                    buffers.push(p as u32, take(&batch, &idx)?).await?;
                }
            }
        }
        buffers.finish().await
    }
}

/// The batch as `(pk, new fields in plan order)`, each column named as the exchange names it:
/// `pk`, then the fields' names, whatever the source calls them.
fn in_plan_order(batch: &RecordBatch, key_column: &str, new_fields: &[NewField], what: &str) -> Result<RecordBatch> {
    let mut names = vec![(key_column, KEY_COLUMN, None)];
    names.extend(new_fields.iter().map(|f| (f.column(), f.name.as_str(), f.vector)));
    let schema = batch.schema();
    let mut fields = Vec::with_capacity(names.len());
    let mut cols = Vec::with_capacity(names.len());
    for (column, name, vector) in names {
        let i = schema.index_of(column).map_err(|e| BackfillError::data_read(what, e))?;
        // Vectors are normalized here, once, before the exchange: the join and the writers see
        // Milvus' bytes. A physical Int8/16/32 join key travels as Int64, as the segment's keys do.
        let col = if name == KEY_COLUMN {
            crate::keys::widen(batch.column(i).clone())
        } else {
            crate::vectors::written_column(vector, batch.column(i).clone(), what, name)?
        };
        fields.push(
            schema
                .field(i)
                .as_ref()
                .clone()
                .with_name(name)
                .with_data_type(col.data_type().clone()),
        );
        cols.push(col);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).map_err(|e| BackfillError::data_read(what, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_split_by_partition_in_row_order() {
        assert_eq!(split(&[1, 0, 1, 2, 1], 3), vec![vec![1], vec![0, 2, 4], vec![3]]);
        let keys = Int64Array::from(vec![5, 6, 5]);
        let p = partitions_of(&keys, 16);
        assert_eq!(p[0], p[2], "equal keys, one partition");
        let s = StringArray::from(vec!["a", "b", "a"]);
        let p = partitions_of(&s, 16);
        assert_eq!(p[0], p[2]);
        assert!(p.iter().all(|&x| x < 16));
    }
}
