//! The snapshot's segment manifests (`manifest-list`): one raw Avro `ManifestEntry` record per
//! StorageV1/V2 segment, in the layout of the snapshot's format version (milvus-io/milvus
//! `internal/datacoord/snapshotio`: versions 0-1 lack `index_store_path_version`, 3 adds
//! `commit_timestamp`, 4 adds `child_fields` and `format` to each field binlog). Pure.

use apache_avro::types::Value;

use crate::avro_value::{array, field, long, string};
use apache_avro::Schema;

/// The newest snapshot format this build reads.
pub const NEWEST_FORMAT_VERSION: i64 = 4;

#[derive(Clone, Debug, PartialEq)]
pub struct SegmentEntry {
    pub segment_id: i64,
    pub partition_id: i64,
    pub segment_level: i64,
    pub num_rows: i64,
    pub storage_version: i64,
    pub binlogs: Vec<FieldBinlog>,
}

/// One `FieldBinlog`: for StorageV2 the column group (`field_id` is the group slot, the fields
/// are `child_fields`, which only format 4 records).
#[derive(Clone, Debug, PartialEq)]
pub struct FieldBinlog {
    pub field_id: i64,
    pub child_fields: Vec<i64>,
    pub binlogs: Vec<BinlogEntry>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BinlogEntry {
    pub log_id: i64,
    pub entries_num: i64,
    pub log_path: String,
    pub log_size: i64,
}

pub fn decode(bytes: &[u8], format_version: i64) -> Result<SegmentEntry, String> {
    if !(0..=NEWEST_FORMAT_VERSION).contains(&format_version) {
        return Err(format!(
            "snapshot format version {format_version} is newer than this build reads (up to {NEWEST_FORMAT_VERSION})"
        ));
    }
    let schema = Schema::parse_str(&schema_json(format_version)).map_err(|e| format!("manifest schema: {e}"))?;
    let mut rd = bytes;
    let record = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
        .build()
        .and_then(|r| r.read_value(&mut rd))
        .map_err(|e| format!("not a format-{format_version} segment manifest: {e}"))?;
    if !rd.is_empty() {
        return Err(format!(
            "{} bytes follow the format-{format_version} segment manifest record: wrong format version?",
            rd.len()
        ));
    }
    let binlogs = array(field(&record, "binlog_files")?)?
        .iter()
        .map(field_binlog)
        .collect::<Result<_, _>>()?;
    Ok(SegmentEntry {
        segment_id: long(field(&record, "segment_id")?)?,
        partition_id: long(field(&record, "partition_id")?)?,
        segment_level: long(field(&record, "segment_level")?)?,
        num_rows: long(field(&record, "num_of_rows")?)?,
        storage_version: long(field(&record, "storage_version")?)?,
        binlogs,
    })
}

fn field_binlog(v: &Value) -> Result<FieldBinlog, String> {
    let child_fields = match field(v, "child_fields") {
        Ok(a) => array(a)?.iter().map(long).collect::<Result<_, _>>()?,
        Err(_) => vec![],
    };
    let binlogs = array(field(v, "binlogs")?)?
        .iter()
        .map(|b| {
            Ok(BinlogEntry {
                log_id: long(field(b, "log_id")?)?,
                entries_num: long(field(b, "entries_num")?)?,
                log_path: string(field(b, "log_path")?)?,
                log_size: long(field(b, "log_size")?)?,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(FieldBinlog {
        field_id: long(field(v, "field_id")?)?,
        child_fields,
        binlogs,
    })
}

/// The `ManifestEntry` record of format `version`, field for field as Milvus writes it.
pub fn schema_json(version: i64) -> String {
    let store_path = if version >= 2 {
        r#",{"name":"index_store_path_version","type":"int","default":0}"#
    } else {
        ""
    };
    let commit_ts = if version >= 3 {
        r#"{"name":"commit_timestamp","type":"long","default":0},"#
    } else {
        ""
    };
    let child = if version >= 4 {
        r#"{"name":"child_fields","type":{"type":"array","items":"long"},"default":[]},{"name":"format","type":"string","default":""},"#
    } else {
        ""
    };
    format!(
        r#"{{"type":"record","name":"ManifestEntry","fields":[
  {{"name":"segment_id","type":"long"}},{{"name":"partition_id","type":"long"}},{{"name":"segment_level","type":"long"}},
  {{"name":"channel_name","type":"string"}},{{"name":"num_of_rows","type":"long"}},
  {{"name":"start_position","type":{{"type":"record","name":"AvroMsgPosition","fields":[{{"name":"channel_name","type":"string"}},
    {{"name":"msg_id","type":"bytes"}},{{"name":"msg_group","type":"string"}},{{"name":"timestamp","type":"long"}}]}}}},
  {{"name":"dml_position","type":"AvroMsgPosition"}},{{"name":"storage_version","type":"long"}},{{"name":"is_sorted","type":"boolean"}},
  {commit_ts}
  {{"name":"binlog_files","type":{{"type":"array","items":{{"type":"record","name":"AvroFieldBinlog","fields":[
    {{"name":"field_id","type":"long"}},{child}
    {{"name":"binlogs","type":{{"type":"array","items":{{"type":"record","name":"AvroBinlog","fields":[
      {{"name":"entries_num","type":"long"}},{{"name":"timestamp_from","type":"long"}},{{"name":"timestamp_to","type":"long"}},
      {{"name":"log_path","type":"string"}},{{"name":"log_size","type":"long"}},{{"name":"log_id","type":"long"}},
      {{"name":"memory_size","type":"long"}}]}}}}}}]}}}}}},
  {{"name":"deltalog_files","type":{{"type":"array","items":"AvroFieldBinlog"}}}},
  {{"name":"statslog_files","type":{{"type":"array","items":"AvroFieldBinlog"}}}},
  {{"name":"bm25_statslog_files","type":{{"type":"array","items":"AvroFieldBinlog"}}}},
  {{"name":"index_files","type":{{"type":"array","items":{{"type":"record","name":"AvroIndexFilePathInfo","fields":[
    {{"name":"segment_id","type":"long"}},{{"name":"field_id","type":"long"}},{{"name":"index_id","type":"long"}},
    {{"name":"build_id","type":"long"}},{{"name":"index_name","type":"string"}},
    {{"name":"index_params","type":{{"type":"array","items":{{"type":"record","name":"AvroKeyValuePair","fields":[
      {{"name":"key","type":"string"}},{{"name":"value","type":"string"}}]}}}}}},
    {{"name":"index_file_paths","type":{{"type":"array","items":"string"}}}},{{"name":"serialized_size","type":"long"}},
    {{"name":"index_version","type":"long"}},{{"name":"num_rows","type":"long"}},{{"name":"current_index_version","type":"int"}},
    {{"name":"mem_size","type":"long"}},{{"name":"current_scalar_index_version","type":"int","default":0}}{store_path}]}}}}}},
  {{"name":"text_index_files","type":{{"type":"array","items":{{"type":"record","name":"AvroTextIndexEntry","fields":[
    {{"name":"field_id","type":"long"}},{{"name":"stats","type":{{"type":"record","name":"AvroTextIndexStats","fields":[
      {{"name":"field_id","type":"long"}},{{"name":"version","type":"long"}},{{"name":"files","type":{{"type":"array","items":"string"}}}},
      {{"name":"log_size","type":"long"}},{{"name":"memory_size","type":"long"}},{{"name":"build_id","type":"long"}}]}}}}]}}}}}},
  {{"name":"json_key_index_files","type":{{"type":"array","items":{{"type":"record","name":"AvroJSONKeyIndexEntry","fields":[
    {{"name":"field_id","type":"long"}},{{"name":"stats","type":{{"type":"record","name":"AvroJSONKeyStats","fields":[
      {{"name":"field_id","type":"long"}},{{"name":"version","type":"long"}},{{"name":"files","type":{{"type":"array","items":"string"}}}},
      {{"name":"log_size","type":"long"}},{{"name":"memory_size","type":"long"}},{{"name":"build_id","type":"long"}},
      {{"name":"json_key_stats_data_format","type":"long"}}]}}}}]}}}}}}
]}}"#
    )
}

/// Encodes `entry` as Milvus writes a segment manifest of `format_version` (other fields
/// empty). For tests and tools that make snapshots; planning only decodes.
pub fn encode(entry: &SegmentEntry, format_version: i64) -> Result<Vec<u8>, String> {
    let schema = Schema::parse_str(&schema_json(format_version)).map_err(|e| e.to_string())?;
    let position = || {
        Value::Record(vec![
            ("channel_name".into(), Value::String(String::new())),
            ("msg_id".into(), Value::Bytes(vec![])),
            ("msg_group".into(), Value::String(String::new())),
            ("timestamp".into(), Value::Long(0)),
        ])
    };
    let binlog = |b: &BinlogEntry| {
        Value::Record(vec![
            ("entries_num".into(), Value::Long(b.entries_num)),
            ("timestamp_from".into(), Value::Long(0)),
            ("timestamp_to".into(), Value::Long(0)),
            ("log_path".into(), Value::String(b.log_path.clone())),
            ("log_size".into(), Value::Long(b.log_size)),
            ("log_id".into(), Value::Long(b.log_id)),
            ("memory_size".into(), Value::Long(0)),
        ])
    };
    let group = |g: &FieldBinlog| {
        let mut f = vec![("field_id".to_owned(), Value::Long(g.field_id))];
        if format_version >= 4 {
            f.push((
                "child_fields".into(),
                Value::Array(g.child_fields.iter().map(|c| Value::Long(*c)).collect()),
            ));
            f.push(("format".into(), Value::String(String::new())));
        }
        f.push(("binlogs".into(), Value::Array(g.binlogs.iter().map(binlog).collect())));
        Value::Record(f)
    };
    let mut fields = vec![
        ("segment_id".to_owned(), Value::Long(entry.segment_id)),
        ("partition_id".into(), Value::Long(entry.partition_id)),
        ("segment_level".into(), Value::Long(entry.segment_level)),
        ("channel_name".into(), Value::String("dml_0".into())),
        ("num_of_rows".into(), Value::Long(entry.num_rows)),
        ("start_position".into(), position()),
        ("dml_position".into(), position()),
        ("storage_version".into(), Value::Long(entry.storage_version)),
        ("is_sorted".into(), Value::Boolean(false)),
    ];
    if format_version >= 3 {
        fields.push(("commit_timestamp".into(), Value::Long(0)));
    }
    fields.push((
        "binlog_files".into(),
        Value::Array(entry.binlogs.iter().map(group).collect()),
    ));
    for empty in [
        "deltalog_files",
        "statslog_files",
        "bm25_statslog_files",
        "index_files",
        "text_index_files",
        "json_key_index_files",
    ] {
        fields.push((empty.into(), Value::Array(vec![])));
    }
    apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
        .build()
        .and_then(|w| w.write_value_to_vec(Value::Record(fields)))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
#[path = "snapshot_manifest_tests.rs"]
mod tests;
