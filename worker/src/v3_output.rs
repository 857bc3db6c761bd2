//! A StorageV3 segment's new columns as loon data files: per new field, files
//! `{base}/_data/0_<uuid>.parquet` holding one column named by the field ID (tagged
//! `PARQUET:field_id`), ZSTD (the official reader has no Snappy), with the footer key-values
//! milvus-storage writes (`row_group_metadata`, `storage_version`), and the `replace` op that
//! tells DataCoord which rows each file holds. Files are new on every attempt (a fresh UUID):
//! a retry never overwrites a file a commit may already point to.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{Field, Schema, SchemaRef};
use bytes::Bytes;
use parquet::arrow::arrow_writer::ArrowWriterOptions;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use milvus_backfill_api::outcome::{ManifestOp, OpFile};

use crate::error::{BackfillError, Result};
use crate::join::Joined;
use crate::output::{part_spans, row_group_rows};
use crate::plan::{NewField, SegmentPlan};
use crate::store::Store;

pub const STORAGE_FORMAT_VERSION: &str = "1.0.0";

/// One new field of the output: which joined column, its field ID and its storage type.
#[derive(Clone, Debug)]
pub struct Column {
    pub index: usize,
    pub field_id: i64,
    pub schema: SchemaRef,
}

/// The written columns' schemas: named by field ID, nullable, in the storage type of the
/// joined column (the source's type, which planning matched exactly to the field's; a
/// LargeUtf8 source fills a VarChar field, stored as Utf8).
pub fn columns(fields: &[NewField], joined: &SchemaRef) -> Result<Vec<Column>> {
    named_columns(fields, joined, Naming::FieldId)
}

/// How a layout names its columns: V3 by field ID, V2 by field name (both tag the field ID).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    FieldId,
    FieldName,
}

pub fn named_columns(fields: &[NewField], joined: &SchemaRef, naming: Naming) -> Result<Vec<Column>> {
    fields
        .iter()
        .enumerate()
        .map(|(index, f)| {
            let field_id = f.field_id.ok_or_else(|| {
                BackfillError::unexpected(format!("new field {} has no field ID in the plan", f.name))
            })?;
            let arrow = match joined.field_with_name(&f.name).map(|c| c.data_type().clone()) {
                Ok(arrow_schema::DataType::LargeUtf8) => arrow_schema::DataType::Utf8,
                Ok(t) => t,
                Err(_) => {
                    return Err(BackfillError::unexpected(format!(
                        "new field {} is not among the joined columns",
                        f.name
                    )))
                }
            };
            let meta: std::collections::HashMap<String, String> =
                [("PARQUET:field_id".to_owned(), field_id.to_string())].into();
            let name = match naming {
                Naming::FieldId => field_id.to_string(),
                Naming::FieldName => f.name.clone(),
            };
            let schema = Arc::new(Schema::new(vec![Field::new(name, arrow, true).with_metadata(meta)]));
            let index = joined.index_of(&f.name).unwrap_or(index);
            Ok(Column {
                index,
                field_id,
                schema,
            })
        })
        .collect()
}

/// An encoded data file and what the manifest records of it.
pub struct EncodedFile {
    pub bytes: Vec<u8>,
    pub rows: u64,
}

impl EncodedFile {
    /// `file_size` and `footer_size` (the Thrift footer plus its 4-byte length and magic).
    pub fn properties(&self) -> BTreeMap<String, String> {
        let n = self.bytes.len();
        let footer = u32::from_le_bytes(self.bytes[n - 8..n - 4].try_into().expect("4 bytes")) as usize + 8;
        [
            ("file_size".to_owned(), n.to_string()),
            ("footer_size".to_owned(), footer.to_string()),
        ]
        .into()
    }
}

/// Encodes rows `[start, end)` of one joined column as a loon data file.
pub fn encode(
    joined: &Joined,
    col: &Column,
    start: usize,
    end: usize,
    batch_size: usize,
) -> Result<EncodedFile, String> {
    encode_with(joined, col, start, end, batch_size, &[])
}

/// Encodes rows `[start, end)` of one joined column as a milvus-storage Parquet file: `leading`
/// key-values first, then `row_group_metadata` and `storage_version`. No `ARROW:schema` key,
/// as milvus-storage's writer; the field ID travels in the Parquet schema.
pub fn encode_with(
    joined: &Joined,
    col: &Column,
    start: usize,
    end: usize,
    batch_size: usize,
    leading: &[(&str, String)],
) -> Result<EncodedFile, String> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("level 3")))
        .set_max_row_group_row_count(None)
        .set_created_by(format!("milvus-backfill {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut buf = Vec::new();
    let options = ArrowWriterOptions::new()
        .with_properties(props)
        .with_skip_arrow_metadata(true);
    let mut w = ArrowWriter::try_new_with_options(&mut buf, col.schema.clone(), options).map_err(|e| e.to_string())?;
    let group_rows = row_group_rows(batch_size);
    let mut groups = Vec::new();
    let mut at = start;
    while at < end {
        let group_end = (at + group_rows).min(end);
        let mut mem = 0usize;
        let mut b = at;
        while b < group_end {
            let to = (b + batch_size.max(1)).min(group_end);
            let batch = column_batch(joined, col, b, to)?;
            mem += batch.get_array_memory_size();
            w.write(&batch).map_err(|e| e.to_string())?;
            b = to;
        }
        w.flush().map_err(|e| e.to_string())?;
        groups.push(format!("{mem}|{}|{}", group_end - at, at - start));
        at = group_end;
    }
    for (k, v) in leading {
        w.append_key_value_metadata(KeyValue::new((*k).to_owned(), v.clone()));
    }
    w.append_key_value_metadata(KeyValue::new("row_group_metadata".into(), groups.join(";")));
    w.append_key_value_metadata(KeyValue::new(
        "storage_version".into(),
        STORAGE_FORMAT_VERSION.to_owned(),
    ));
    w.close().map_err(|e| e.to_string())?;
    Ok(EncodedFile {
        bytes: buf,
        rows: (end - start) as u64,
    })
}

fn column_batch(joined: &Joined, col: &Column, start: usize, end: usize) -> Result<RecordBatch, String> {
    let chunk = joined.chunk(start, end);
    let target = col.schema.field(0).data_type();
    let values: ArrayRef = chunk.column(col.index).clone();
    // LargeUtf8 sources fill VarChar fields, which Milvus stores as Utf8.
    let values = match (values.data_type(), target) {
        (a, b) if a == b => values,
        (arrow_schema::DataType::LargeUtf8, arrow_schema::DataType::Utf8) => {
            use arrow_array::cast::AsArray;
            Arc::new(arrow_array::StringArray::from_iter(values.as_string::<i64>().iter())) as ArrayRef
        }
        (a, b) => return Err(format!("cannot write a {a} column as {b}")),
    };
    RecordBatch::try_new(col.schema.clone(), vec![values]).map_err(|e| e.to_string())
}

/// Writes every new column of a V3 segment and returns one `replace` op per field.
pub async fn write_segment(
    store: &Store,
    seg: &SegmentPlan,
    joined: &Arc<Joined>,
    cols: &[Column],
    batch_size: usize,
) -> Result<Vec<ManifestOp>> {
    let n = joined.num_rows();
    let spans = part_spans(n, batch_size, 1);
    let mut ops = Vec::with_capacity(cols.len());
    for col in cols {
        let mut files = Vec::with_capacity(spans.len());
        for &(start, end) in &spans {
            let uuid = uuid::Uuid::new_v4().to_string();
            let key = seg.v3_data_key(&uuid).expect("a V3 segment");
            let werr = |e: &dyn std::fmt::Display| BackfillError::write(Some(seg.segment_id), store.display(&key), e);
            let (j, c) = (joined.clone(), col.clone());
            let file = tokio::task::spawn_blocking(move || encode(&j, &c, start, end, batch_size))
                .await
                .map_err(|e| werr(&e))?
                .map_err(|e| werr(&e))?;
            let properties = file.properties();
            let rows = file.rows;
            store.put(&key, Bytes::from(file.bytes)).await.map_err(|e| werr(&e))?;
            files.push(OpFile {
                path: key.rsplit('/').next().expect("a file name").to_owned(),
                start_index: 0,
                end_index: rows,
                properties,
            });
        }
        ops.push(ManifestOp {
            op_type: ManifestOp::REPLACE.to_owned(),
            columns: vec![col.field_id.to_string()],
            format: ManifestOp::PARQUET.to_owned(),
            files,
            row_count: n as u64,
        });
    }
    Ok(ops)
}

#[cfg(test)]
#[path = "v3_output_tests.rs"]
mod tests;
