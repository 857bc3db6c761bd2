use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Float64Type;
use arrow_array::{Array, Float64Array, Int64Array, LargeStringArray};
use parquet::file::reader::{FileReader, SerializedFileReader};

use super::*;
use crate::keys::KeyIndex;
use crate::plan::PkType;

fn joined(rows: usize) -> Joined {
    let mut idx = KeyIndex::new(PkType::Int64, rows);
    idx.push(&Int64Array::from_iter_values(0..rows as i64)).unwrap();
    idx.seal();
    // Every third row has a source row: score = offset / 2, label = "l<offset>".
    let offsets: Vec<u32> = (0..rows as u32).step_by(3).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("score", arrow_schema::DataType::Float64, true),
        Field::new("label", arrow_schema::DataType::LargeUtf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Float64Array::from_iter_values(offsets.iter().map(|&o| o as f64 / 2.0))),
            Arc::new(LargeStringArray::from_iter_values(
                offsets.iter().map(|o| format!("l{o}")),
            )),
        ],
    )
    .unwrap();
    let fields = vec![
        ("score".to_owned(), arrow_schema::DataType::Float64),
        ("label".to_owned(), arrow_schema::DataType::LargeUtf8),
    ];
    Joined::build(rows as u32, &idx, &offsets, &[batch], &fields).unwrap()
}

fn new_fields() -> Vec<NewField> {
    let nf = |name: &str, t: &str, id| NewField {
        vector: None,
        source_column: None,
        name: name.into(),
        arrow_type: t.into(),
        field_id: Some(id),
    };
    vec![nf("score", "Float64", 103), nf("label", "LargeUtf8", 104)]
}

#[test]
fn a_data_file_is_what_milvus_storage_writes() {
    let j = joined(250_000);
    let cols = columns(&new_fields(), &j.schema()).unwrap();
    let file = encode(&j, &cols[0], 0, 250_000, 100_000).unwrap();
    let bytes = Bytes::from(file.bytes.clone());
    let reader = SerializedFileReader::new(bytes.clone()).unwrap();
    let md = reader.metadata();
    let kv: Vec<(String, Option<String>)> = md
        .file_metadata()
        .key_value_metadata()
        .unwrap()
        .iter()
        .map(|k| (k.key.clone(), k.value.clone()))
        .collect();
    let get = |k: &str| {
        kv.iter()
            .find(|(key, _)| key == k)
            .and_then(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(get("storage_version"), "1.0.0");
    // One `memSize|rows|offset` entry per row group, offsets within the file.
    let groups: Vec<Vec<String>> = get("row_group_metadata")
        .split(';')
        .map(|g| g.split('|').map(str::to_owned).collect())
        .collect();
    assert_eq!(md.num_row_groups(), 3);
    assert_eq!(groups.len(), 3);
    let rows_offsets: Vec<(&str, &str)> = groups.iter().map(|g| (g[1].as_str(), g[2].as_str())).collect();
    assert_eq!(
        rows_offsets,
        vec![("100000", "0"), ("100000", "100000"), ("50000", "200000")]
    );
    assert!(groups.iter().all(|g| g[0].parse::<u64>().unwrap() > 0));
    for rg in md.row_groups() {
        assert!(matches!(rg.column(0).compression(), Compression::ZSTD(_)));
    }
    // The column is named by the field ID, tagged with it, nullable.
    let arrow = ParquetRecordBatchReaderBuilderExt::read(bytes);
    let f = arrow.schema().field(0).clone();
    assert_eq!((f.name().as_str(), f.is_nullable()), ("103", true));
    assert_eq!(f.metadata().get("PARQUET:field_id").map(String::as_str), Some("103"));
    let score = arrow.column(0).as_primitive::<Float64Type>();
    assert_eq!((score.value(3), score.is_null(4)), (1.5, true));
    assert_eq!(score.len(), 250_000);
    // footer_size is the Thrift footer plus 8 bytes, as the library records it.
    let props = file.properties();
    assert_eq!(props["file_size"], file.bytes.len().to_string());
    let footer: usize = props["footer_size"].parse().unwrap();
    assert_eq!(&file.bytes[file.bytes.len() - 4..], b"PAR1");
    assert!(footer > 8 && footer < file.bytes.len());
}

#[test]
fn large_strings_are_written_as_the_varchar_storage_type() {
    let j = joined(10);
    let cols = columns(&new_fields(), &j.schema()).unwrap();
    let file = encode(&j, &cols[1], 3, 10, 4).unwrap();
    assert_eq!(file.rows, 7);
    let batch = ParquetRecordBatchReaderBuilderExt::read(Bytes::from(file.bytes));
    assert_eq!(batch.schema().field(0).name(), "104");
    let labels = batch.column(0).as_string::<i32>();
    // Rows 3..10 of the segment: offsets 3, 6, 9 have values.
    assert_eq!(labels.value(0), "l3");
    assert!(labels.is_null(1));
    assert_eq!(labels.value(6), "l9");
}

#[test]
fn a_field_without_an_id_or_a_joined_column_is_an_internal_error() {
    let j = joined(3);
    let mut fields = new_fields();
    fields[0].field_id = None;
    assert!(columns(&fields, &j.schema()).is_err());
    let mut fields = new_fields();
    fields[1].name = "other".into();
    assert!(columns(&fields, &j.schema()).is_err());
}

/// Reads a whole Parquet file into one batch.
struct ParquetRecordBatchReaderBuilderExt;

impl ParquetRecordBatchReaderBuilderExt {
    fn read(bytes: Bytes) -> RecordBatch {
        let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .with_batch_size(1 << 20)
            .build()
            .unwrap();
        let batches: Vec<RecordBatch> = r.map(|b| b.unwrap()).collect();
        arrow_select::concat::concat_batches(&batches[0].schema(), &batches).unwrap()
    }
}
