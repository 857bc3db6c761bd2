//! One segment's matches gathered from every joined partition: the `(offset, matched row)`
//! pairs, the values, and the source rows used.

use arrow_array::{ArrayRef, RecordBatch, UInt32Array, UInt64Array};
use arrow_schema::DataType;
use futures_util::StreamExt;
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;

use super::join::JoinedPartition;
use super::Exchange;
use crate::error::{BackfillError, Result};
use crate::join::concat_values;
use crate::source::ObjectReader;

/// A segment's matches across the partitions.
pub struct Gathered {
    /// `(segment offset, row of values)`.
    pub pairs: Vec<(u32, u32)>,
    pub values: Vec<ArrayRef>,
    /// The source row of each row of values.
    pub source_rows: Vec<u64>,
}

/// Reads segment `segment`'s row group of every partition that holds one.
pub async fn segment(
    ex: &Exchange,
    joined: &[JoinedPartition],
    segment: u32,
    fields: &[(String, DataType)],
) -> Result<Gathered> {
    let mut offsets: Vec<u32> = Vec::new();
    let mut source_rows: Vec<u64> = Vec::new();
    let mut value_batches: Vec<RecordBatch> = Vec::new();
    for part in joined {
        let (Some((file, meta)), Some(rg)) = (&part.file, part.row_group_of(segment)) else {
            continue;
        };
        let what = ex.store().display(&file.key);
        let reader =
            ObjectReader::new(ex.store().clone(), file.key.clone(), file.size).with_metadata(meta.metadata().clone());
        let mut stream = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, meta.clone())
            .with_row_groups(vec![rg])
            .with_batch_size(64 * 1024)
            .build()
            .map_err(|e| BackfillError::data_read(&what, e))?;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| BackfillError::data_read(&what, e))?;
            let off = batch.column(0).as_any().downcast_ref::<UInt32Array>();
            let row = batch.column(1).as_any().downcast_ref::<UInt64Array>();
            let (Some(off), Some(row)) = (off, row) else {
                return Err(BackfillError::data_read(&what, "not an exchange partition of this run"));
            };
            offsets.extend(off.values().iter());
            source_rows.extend(row.values().iter());
            value_batches.push(
                batch
                    .project(&(2..batch.num_columns()).collect::<Vec<_>>())
                    .map_err(|e| BackfillError::data_read(&what, e))?,
            );
        }
    }
    let pairs = offsets.iter().enumerate().map(|(k, &o)| (o, k as u32)).collect();
    Ok(Gathered {
        pairs,
        values: concat_values(&value_batches, fields),
        source_rows,
    })
}
