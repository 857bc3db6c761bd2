use super::*;

use apache_avro::types::Record;

use crate::testdata::{shared_fixture, V3Expected};

fn datum(schema: &Schema, v: Value) -> Vec<u8> {
    apache_avro::writer::datum::GenericDatumWriter::builder(schema)
        .build()
        .unwrap()
        .write_value_to_vec(v)
        .unwrap()
}

#[test]
fn the_official_libraries_manifests_decode_with_their_row_ranges() {
    let expected = V3Expected::load();
    for seg in &expected.segments {
        let path = format!(
            "milvus-storage-v3/{}/_metadata/manifest-{}.avro",
            seg.base_path, seg.manifest_version
        );
        let m = Manifest::decode(&std::fs::read(shared_fixture(&path)).unwrap()).unwrap();
        assert_eq!(m.encoding, Encoding::Legacy { version: 1 }, "{path}");
        assert_eq!(m.rows(), seg.num_rows, "{path}");
        assert!(m.uneven_groups().is_empty());
        assert_eq!(m.column_groups.len(), seg.manifest.column_groups.len());
        for (got, want) in m.column_groups.iter().zip(&seg.manifest.column_groups) {
            assert_eq!(got.columns, want.columns);
            assert_eq!(got.format, "parquet");
            let keys: Vec<(String, i64, i64)> = got
                .files
                .iter()
                .map(|f| (data_file_key(&seg.base_path, &f.path), f.start_index, f.end_index))
                .collect();
            let want: Vec<(String, i64, i64)> = want
                .files
                .iter()
                .map(|f| (f.path.clone(), f.start_index, f.end_index))
                .collect();
            assert_eq!(keys, want, "{path}");
        }
        let pk = m.files_of(seg.pk_field_id, &seg.base_path).unwrap();
        assert_eq!(
            pk.iter().map(|f| f.end_index - f.start_index).sum::<u64>(),
            seg.num_rows
        );
    }
}

#[test]
fn an_older_manifest_version_has_fewer_files() {
    // Segment 1003 was written in three commits: version 1 holds the first file only.
    let m = Manifest::decode(
        &std::fs::read(shared_fixture(
            "milvus-storage-v3/files/insert_log/1001/1002/1003/_metadata/manifest-1.avro",
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!((m.column_groups.len(), m.rows()), (1, 1000));
}

/// The container schema of milvus-storage main (version 6: 16-field indexes).
const CONTAINER_SCHEMA: &str = r#"{"type":"record","name":"Manifest","namespace":"milvus_storage","fields":[
 {"name":"column_groups","type":{"type":"array","items":{"type":"record","name":"ColumnGroup","fields":[
   {"name":"columns","type":{"type":"array","items":"string"}},
   {"name":"files","type":{"type":"array","items":{"type":"record","name":"ColumnGroupFile","fields":[
     {"name":"path","type":"string"},{"name":"start_index","type":"long","default":0},
     {"name":"end_index","type":"long","default":0},
     {"name":"properties","type":{"type":"map","values":"string"},"default":{}}]}}},
   {"name":"format","type":"string"}]}}},
 {"name":"delta_logs","type":{"type":"array","items":{"type":"record","name":"DeltaLog","fields":[
   {"name":"path","type":"string"},{"name":"type","type":"int"},{"name":"num_entries","type":"long"}]}}},
 {"name":"stats","type":{"type":"map","values":{"type":"record","name":"Statistics","fields":[
   {"name":"paths","type":{"type":"array","items":"string"}},
   {"name":"metadata","type":{"type":"map","values":"string"},"default":{}}]}},"default":{}}
]}"#;

fn container_manifest() -> Vec<u8> {
    let schema = Schema::parse_str(CONTAINER_SCHEMA).unwrap();
    let file = |path: &str, start: i64, end: i64| {
        Value::Record(vec![
            ("path".into(), Value::String(path.into())),
            ("start_index".into(), Value::Long(start)),
            ("end_index".into(), Value::Long(end)),
            (
                "properties".into(),
                Value::Map([("file_size".to_owned(), Value::String("77".into()))].into()),
            ),
        ])
    };
    let group = |cols: &[&str], files: Vec<Value>| {
        Value::Record(vec![
            (
                "columns".into(),
                Value::Array(cols.iter().map(|c| Value::String((*c).into())).collect()),
            ),
            ("files".into(), Value::Array(files)),
            ("format".into(), Value::String("parquet".into())),
        ])
    };
    let mut rec = Record::new(&schema).unwrap();
    rec.put(
        "column_groups",
        Value::Array(vec![
            group(
                &["0", "1", "100"],
                vec![file("a.parquet", 0, 10), file("b.parquet", 5, 9)],
            ),
            group(&["105"], vec![file("s3://bkt/files/x/_data/c.parquet", 0, 14)]),
        ]),
    );
    rec.put("delta_logs", Value::Array(vec![]));
    rec.put("stats", Value::Map(Default::default()));
    let mut w = apache_avro::Writer::new(&schema, Vec::new()).unwrap();
    w.append_value(rec).unwrap();
    w.into_inner().unwrap()
}

#[test]
fn a_container_manifest_decodes_by_field_name() {
    let m = Manifest::decode(&container_manifest()).unwrap();
    assert_eq!(m.encoding, Encoding::Container);
    assert_eq!(m.rows(), 14);
    assert_eq!(m.column_groups[0].files[0].properties["file_size"], "77");
    let pk = m.files_of(100, "files/x").unwrap();
    assert_eq!(pk[1].key, "files/x/_data/b.parquet");
    assert_eq!((pk[1].start_index, pk[1].end_index), (5, 9));
    // A URI keeps its key, without the scheme and the bucket.
    assert_eq!(m.files_of(105, "files/x").unwrap()[0].key, "files/x/_data/c.parquet");
    assert!(m.files_of(101, "files/x").is_none());
}

#[test]
fn every_legacy_version_decodes() {
    for version in 1..=NEWEST_LEGACY_VERSION {
        let schema = Schema::parse_str(&legacy_schema(version)).unwrap();
        let mut rec = Record::new(&schema).unwrap();
        let file = Value::Record(vec![
            ("path".into(), Value::String("f.parquet".into())),
            ("start_index".into(), Value::Long(0)),
            ("end_index".into(), Value::Long(3)),
            ("metadata".into(), Value::Bytes(vec![])),
        ]);
        rec.put(
            "column_groups",
            Value::Array(vec![Value::Record(vec![
                ("columns".into(), Value::Array(vec![Value::String("100".into())])),
                ("files".into(), Value::Array(vec![file])),
                ("format".into(), Value::String("parquet".into())),
            ])]),
        );
        rec.put("delta_logs", Value::Array(vec![]));
        rec.put("stats", Value::Map(Default::default()));
        rec.put("indexes", Value::Array(vec![]));
        rec.put("lob_files", Value::Array(vec![]));
        let mut bytes = datum(&Schema::Int, Value::Int(LEGACY_MAGIC));
        bytes.extend(datum(&Schema::Int, Value::Int(version)));
        bytes.extend(datum(&schema, rec.into()));
        let m = Manifest::decode(&bytes).unwrap_or_else(|e| panic!("version {version}: {e}"));
        assert_eq!((m.rows(), m.encoding), (3, Encoding::Legacy { version }));
    }
}

#[test]
fn corrupt_manifests_say_what_is_wrong() {
    let good = std::fs::read(shared_fixture(
        "milvus-storage-v3/files/insert_log/1001/1002/1004/_metadata/manifest-2.avro",
    ))
    .unwrap();
    let truncated = Manifest::decode(&good[..good.len() / 2]).unwrap_err();
    assert!(truncated.contains("corrupt \"MILV\" v1 manifest"), "{truncated}");
    assert!(Manifest::decode(b"PAR1....")
        .unwrap_err()
        .contains("neither an Avro container"));
    assert!(Manifest::decode(b"").unwrap_err().contains("neither an Avro container"));
    let mut future = datum(&Schema::Int, Value::Int(LEGACY_MAGIC));
    future.extend(datum(&Schema::Int, Value::Int(9)));
    assert!(Manifest::decode(&future).unwrap_err().contains("version 9 is unknown"));
    let mut container = container_manifest();
    container.truncate(container.len() - 20);
    assert!(Manifest::decode(&container).is_err());
}

fn new_group(column: &str, file: &str, rows: i64) -> NewGroup {
    NewGroup {
        columns: vec![column.into()],
        files: vec![GroupFile {
            path: file.into(),
            start_index: 0,
            end_index: rows,
            properties: [("file_size".to_owned(), "9".to_owned())].into(),
        }],
        format: "parquet".into(),
    }
}

#[test]
fn a_replace_keeps_the_encoding_and_every_other_group() {
    let bytes = std::fs::read(shared_fixture(
        "milvus-storage-v3/files/insert_log/1001/1002/1003/_metadata/manifest-4.avro",
    ))
    .unwrap();
    let raw = RawManifest::decode(&bytes).unwrap();
    let once = raw.replace_columns(&[new_group("103", "0_a.parquet", 2500)]).unwrap();
    assert!(
        once.starts_with(&[0xac, 0xb1, 0xca, 0xd4, 0x09]),
        "still the legacy MILV encoding"
    );
    let m = Manifest::decode(&once).unwrap();
    assert_eq!(m.encoding, Encoding::Legacy { version: 1 });
    assert_eq!(m.column_groups.len(), 3);
    assert_eq!(m.column_groups[..2], raw.manifest.column_groups[..]);
    assert_eq!(m.group_of(103).unwrap().files[0].path, "0_a.parquet");
    // Replacing again drops the earlier group of that column: a retried commit is idempotent.
    let twice = RawManifest::decode(&once)
        .unwrap()
        .replace_columns(&[new_group("103", "0_b.parquet", 2500)])
        .unwrap();
    let m = Manifest::decode(&twice).unwrap();
    assert_eq!(m.column_groups.len(), 3);
    assert_eq!(m.group_of(103).unwrap().files[0].path, "0_b.parquet");
    // A group of another row count is refused.
    let e = raw
        .replace_columns(&[new_group("103", "0_c.parquet", 2499)])
        .unwrap_err();
    assert!(e.contains("holds 2499 rows, the segment 2500"), "{e}");
}

#[test]
fn a_container_rewrite_keeps_fields_this_build_does_not_read() {
    let raw = RawManifest::decode(&container_manifest()).unwrap();
    // Replace the vector group's column: the group it leaves empty goes, properties stay.
    let out = raw.replace_columns(&[new_group("105", "0_n.parquet", 14)]).unwrap();
    let m = Manifest::decode(&out).unwrap();
    assert_eq!(m.encoding, Encoding::Container);
    assert_eq!(
        m.column_groups.iter().map(|g| g.columns.clone()).collect::<Vec<_>>(),
        vec![vec!["0".to_owned(), "1".into(), "100".into()], vec!["105".into()]]
    );
    assert_eq!(m.column_groups[1].files[0].properties["file_size"], "9");
    // Every record field survives, with the writer's own schema.
    let reader = apache_avro::Reader::new(&out[..]).unwrap();
    assert_eq!(reader.writer_schema(), &Schema::parse_str(CONTAINER_SCHEMA).unwrap());
    let rec = reader.into_iter().next().unwrap().unwrap();
    let names: Vec<String> = match rec {
        Value::Record(f) => f.into_iter().map(|(n, _)| n).collect(),
        _ => panic!("not a record"),
    };
    assert_eq!(names, vec!["column_groups", "delta_logs", "stats"]);
}

/// The container schema of milvus-storage main (manifest version 6), with an index and a LOB file.
fn v6_container() -> (Schema, Vec<u8>) {
    let text = CONTAINER_SCHEMA.trim_end().strip_suffix("]}").unwrap().to_owned()
        + &format!(
            r#",{{"name":"indexes","type":{{"type":"array","items":{INDEX_RECORD}}},"default":[]}},
               {{"name":"lob_files","type":{{"type":"array","items":{LOB_RECORD}}},"default":[]}}]}}"#
        );
    let schema = Schema::parse_str(&text).unwrap();
    let Value::Record(mut fields) = apache_avro::Reader::new(&container_manifest()[..])
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
    else {
        panic!("a record")
    };
    let long = |v: i64| Value::Long(v);
    let s = |v: &str| Value::String(v.into());
    let index = Value::Record(vec![
        ("column_name".into(), s("102")),
        ("index_name".into(), s("vec_idx")),
        ("index_type".into(), s("HNSW")),
        ("path".into(), s("_index/1")),
        ("field_id".into(), long(102)),
        ("index_id".into(), long(7)),
        ("build_id".into(), long(8)),
        ("index_version".into(), long(1)),
        ("num_rows".into(), long(14)),
        ("serialized_size".into(), long(10)),
        ("mem_size".into(), long(20)),
        ("current_index_version".into(), Value::Int(6)),
        ("current_scalar_index_version".into(), Value::Int(2)),
        ("index_store_path_version".into(), Value::Int(1)),
        ("index_file_keys".into(), Value::Array(vec![s("k1")])),
        ("properties".into(), Value::Map([("a".to_owned(), s("b"))].into())),
    ]);
    let lob = Value::Record(vec![
        ("path".into(), s("lobs/1")),
        ("field_id".into(), long(104)),
        ("total_rows".into(), long(14)),
        ("valid_rows".into(), long(12)),
        ("file_size_bytes".into(), long(999)),
    ]);
    fields.push(("indexes".into(), Value::Array(vec![index])));
    fields.push(("lob_files".into(), Value::Array(vec![lob])));
    let bytes = {
        let mut w = apache_avro::Writer::new(&schema, Vec::new()).unwrap();
        w.append_value(Value::Record(fields)).unwrap();
        w.into_inner().unwrap()
    };
    (schema, bytes)
}

#[test]
fn a_rewrite_of_a_version_6_manifest_keeps_its_indexes_and_lob_files() {
    let (schema, bytes) = v6_container();
    let out = RawManifest::decode(&bytes)
        .unwrap()
        .replace_columns(&[new_group("103", "0_n.parquet", 14)])
        .unwrap();
    let reader = apache_avro::Reader::new(&out[..]).unwrap();
    assert_eq!(reader.writer_schema(), &schema);
    let Value::Record(fields) = reader.into_iter().next().unwrap().unwrap() else {
        panic!("a record")
    };
    let get = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()).unwrap();
    let (_, original) = v6_container();
    let Value::Record(before) = apache_avro::Reader::new(&original[..])
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
    else {
        panic!("a record")
    };
    let was = |n: &str| before.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()).unwrap();
    for kept in ["indexes", "lob_files", "delta_logs", "stats"] {
        assert_eq!(get(kept), was(kept), "{kept} survives the rewrite");
    }
    assert_eq!(
        Manifest::decode(&out).unwrap().group_of(103).unwrap().files[0].path,
        "0_n.parquet"
    );
}
