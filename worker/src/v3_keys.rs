//! A StorageV3 segment's primary keys in storage order: the PK column group's files in
//! manifest order, rows `[start_index, end_index)` of each. The column is the one named by the
//! field ID (the loon layout), else the one tagged `PARQUET:field_id` with it.

use arrow_array::{Array, ArrayRef, RecordBatch};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

use crate::keys::KeyIndex;

/// The index of the column holding `field_id` in an Arrow schema.
pub fn column_of(schema: &arrow_schema::Schema, field_id: i64) -> Option<usize> {
    let name = field_id.to_string();
    schema.index_of(&name).ok().or_else(|| {
        schema
            .fields()
            .iter()
            .position(|f| f.metadata().get("PARQUET:field_id") == Some(&name))
    })
}

/// Pushes rows `[start, end)` of `field_id`'s column in one data file into `index`.
pub fn push_range(index: &mut KeyIndex, data: Bytes, field_id: i64, start: u64, end: u64) -> Result<(), String> {
    for keys in read_range(data, field_id, start, end)? {
        index.push(keys.as_ref())?;
    }
    Ok(())
}

/// Rows `[start, end)` of `field_id`'s column in one data file, as non-null arrays.
pub fn read_range(data: Bytes, field_id: i64, start: u64, end: u64) -> Result<Vec<ArrayRef>, String> {
    let out = read_column(data, field_id, start, end)?;
    if out.iter().any(|keys| keys.null_count() > 0) {
        return Err("the primary key column holds nulls".into());
    }
    Ok(out)
}

/// Rows `[start, end)` of `field_id`'s column in one data file (nulls included).
pub fn read_column(data: Bytes, field_id: i64, start: u64, end: u64) -> Result<Vec<ArrayRef>, String> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(data).map_err(|e| e.to_string())?;
    let col = column_of(builder.schema(), field_id).ok_or_else(|| {
        format!(
            "has no column \"{field_id}\" (columns: {:?})",
            builder.schema().fields().iter().map(|f| f.name()).collect::<Vec<_>>()
        )
    })?;
    let file_rows = builder.metadata().file_metadata().num_rows() as u64;
    if end > file_rows || start > end {
        return Err(format!(
            "the manifest reads rows [{start}, {end}) but the file holds {file_rows}"
        ));
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), [col]);
    let reader = builder
        .with_projection(mask)
        .with_offset(start as usize)
        .with_limit((end - start) as usize)
        .build()
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for batch in reader {
        let batch: RecordBatch = batch.map_err(|e| e.to_string())?;
        out.push(batch.column(0).clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PkType;
    use crate::testdata::{shared_fixture, V3Expected};

    /// The official writer's segments come back in the row order `expected.json` recorded.
    #[test]
    fn golden_segments_give_their_keys_in_row_order() {
        let expected = V3Expected::load();
        for seg in &expected.segments {
            let pk_type = if seg.pk_type == "int64" {
                PkType::Int64
            } else {
                PkType::VarChar
            };
            let mut index = KeyIndex::new(pk_type, seg.num_rows as usize);
            let group = seg
                .manifest
                .column_groups
                .iter()
                .find(|g| g.columns.contains(&seg.pk_field_id.to_string()))
                .unwrap();
            for f in &group.files {
                let data =
                    Bytes::from(std::fs::read(shared_fixture(&format!("milvus-storage-v3/{}", f.path))).unwrap());
                push_range(
                    &mut index,
                    data,
                    seg.pk_field_id,
                    f.start_index as u64,
                    f.end_index as u64,
                )
                .unwrap();
            }
            index.seal();
            assert_eq!(index.rows() as u64, seg.num_rows);
            for (offset, pk) in seg.pks.iter().enumerate() {
                let found = match pk {
                    serde_json::Value::Number(n) => index.first_offset_i64(n.as_i64().unwrap()),
                    serde_json::Value::String(s) => index.first_offset_str(s),
                    other => panic!("unexpected pk {other}"),
                };
                assert_eq!(found, Some(offset as u32), "segment {} pk {pk}", seg.segment_id);
            }
        }
    }

    #[test]
    fn a_range_past_the_file_is_refused() {
        let expected = V3Expected::load();
        let seg = &expected.segments[1];
        let f = &seg.manifest.column_groups[0].files[0];
        let data = Bytes::from(std::fs::read(shared_fixture(&format!("milvus-storage-v3/{}", f.path))).unwrap());
        let mut index = KeyIndex::new(PkType::VarChar, 10);
        let e = push_range(&mut index, data.clone(), seg.pk_field_id, 0, f.end_index as u64 + 1).unwrap_err();
        assert!(e.contains("but the file holds"), "{e}");
        assert!(push_range(&mut index, data, 555, 0, 1)
            .unwrap_err()
            .contains("no column \"555\""));
    }
}
