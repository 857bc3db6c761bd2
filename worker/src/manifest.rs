//! StorageV3 (loon) manifests, read in both encodings milvus-storage reads: an Avro Object
//! Container File (`Obj\x01`, manifest schema versions 5 and 6), and the legacy raw record
//! after a zigzag `int` magic `0x4D494C56` ("MILV") and a format version (1..=6), whose
//! layout depends on that version (milvus-storage `cpp/src/manifest.cpp`, `deserializeLegacy`).
//! Pure: bytes in, typed manifest out.

use std::collections::BTreeMap;

use apache_avro::types::Value;

use crate::avro_value::{array, field, long, string};
use apache_avro::Schema;

use milvus_backfill_api::plan::V3File;

/// The legacy magic, "MILV" read as a little-endian int.
pub const LEGACY_MAGIC: i32 = 0x4D49_4C56;
/// The newest legacy format version milvus-storage writes or reads.
pub const NEWEST_LEGACY_VERSION: i32 = 6;

#[derive(Clone, Debug, PartialEq)]
pub enum Encoding {
    /// Raw Avro after the "MILV" magic and this format version.
    Legacy { version: i32 },
    /// An Avro Object Container File; its schema travels with it.
    Container,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    pub encoding: Encoding,
    pub column_groups: Vec<ColumnGroup>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ColumnGroup {
    /// Field IDs as decimal strings.
    pub columns: Vec<String>,
    pub files: Vec<GroupFile>,
    pub format: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct GroupFile {
    /// As stored: the bare name relative to `{base}/_data/` (or an external absolute path).
    pub path: String,
    pub start_index: i64,
    pub end_index: i64,
    pub properties: BTreeMap<String, String>,
}

impl ColumnGroup {
    pub fn rows(&self) -> u64 {
        self.files
            .iter()
            .map(|f| (f.end_index - f.start_index).max(0) as u64)
            .sum()
    }
}

/// A decoded manifest with what writing it back needs: its schema and the whole record, so
/// that a rewrite keeps every field it held (indexes, stats, LOB files, fields this build does
/// not know).
#[derive(Clone, Debug)]
pub struct RawManifest {
    pub manifest: Manifest,
    schema: Schema,
    record: Value,
}

/// A column group to add: its columns, files `(name, start, end, properties)` and format.
#[derive(Clone, Debug, PartialEq)]
pub struct NewGroup {
    pub columns: Vec<String>,
    pub files: Vec<GroupFile>,
    pub format: String,
}

impl RawManifest {
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.starts_with(b"Obj\x01") {
            decode_container(bytes)
        } else {
            decode_legacy(bytes)
        }
    }

    /// The next version's bytes, in this manifest's encoding: the columns of `groups` dropped
    /// from every group (a group left empty goes), then `groups` added, as the loon
    /// transaction's `replace` does. Each new group must hold the segment's rows.
    pub fn replace_columns(&self, groups: &[NewGroup]) -> Result<Vec<u8>, String> {
        let rows = self.manifest.rows();
        let dropped: Vec<&String> = groups.iter().flat_map(|g| &g.columns).collect();
        let mut record = self.record.clone();
        let Value::Record(fields) = &mut record else {
            return Err("the manifest is not a record".into());
        };
        let (_, Value::Array(cgs)) = fields
            .iter_mut()
            .find(|(n, _)| n == "column_groups")
            .ok_or("the manifest has no column_groups")?
        else {
            return Err("column_groups is not an array".into());
        };
        for g in cgs.iter_mut() {
            if let Value::Record(gf) = g {
                if let Some((_, Value::Array(cols))) = gf.iter_mut().find(|(n, _)| n == "columns") {
                    cols.retain(|c| !matches!(c, Value::String(s) if dropped.contains(&s)));
                }
            }
        }
        cgs.retain(|g| !matches!(field(g, "columns"), Ok(Value::Array(c)) if c.is_empty()));
        for g in groups {
            let got: u64 = g
                .files
                .iter()
                .map(|f| (f.end_index - f.start_index).max(0) as u64)
                .sum();
            if got != rows && !self.manifest.column_groups.is_empty() {
                return Err(format!(
                    "the new group of {:?} holds {got} rows, the segment {rows}",
                    g.columns
                ));
            }
            cgs.push(self.group_value(g));
        }
        self.encode(record)
    }

    fn group_value(&self, g: &NewGroup) -> Value {
        let file = |f: &GroupFile| {
            let extra = match self.manifest.encoding {
                Encoding::Container => (
                    "properties".to_owned(),
                    Value::Map(
                        f.properties
                            .iter()
                            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                            .collect(),
                    ),
                ),
                Encoding::Legacy { .. } => ("metadata".to_owned(), Value::Bytes(vec![])),
            };
            Value::Record(vec![
                ("path".into(), Value::String(f.path.clone())),
                ("start_index".into(), Value::Long(f.start_index)),
                ("end_index".into(), Value::Long(f.end_index)),
                extra,
            ])
        };
        Value::Record(vec![
            (
                "columns".into(),
                Value::Array(g.columns.iter().map(|c| Value::String(c.clone())).collect()),
            ),
            ("files".into(), Value::Array(g.files.iter().map(file).collect())),
            ("format".into(), Value::String(g.format.clone())),
        ])
    }

    fn encode(&self, record: Value) -> Result<Vec<u8>, String> {
        let err = |e: apache_avro::Error| format!("cannot encode the manifest: {e}");
        match self.manifest.encoding {
            Encoding::Container => {
                let mut w = apache_avro::Writer::new(&self.schema, Vec::new()).map_err(err)?;
                w.append_value(record).map_err(err)?;
                w.into_inner().map_err(err)
            }
            Encoding::Legacy { version } => {
                let mut out = write_datum(&Schema::Int, Value::Int(LEGACY_MAGIC)).map_err(err)?;
                out.extend(write_datum(&Schema::Int, Value::Int(version)).map_err(err)?);
                out.extend(write_datum(&self.schema, record).map_err(err)?);
                Ok(out)
            }
        }
    }
}

fn write_datum(schema: &Schema, v: Value) -> Result<Vec<u8>, apache_avro::Error> {
    apache_avro::writer::datum::GenericDatumWriter::builder(schema)
        .build()?
        .write_value_to_vec(v)
}

impl Manifest {
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        RawManifest::decode(bytes).map(|r| r.manifest)
    }

    /// The segment's physical row count: group 0's rows (every group has as many).
    pub fn rows(&self) -> u64 {
        self.column_groups.first().map_or(0, ColumnGroup::rows)
    }

    pub fn group_of(&self, field_id: i64) -> Option<&ColumnGroup> {
        let name = field_id.to_string();
        self.column_groups.iter().find(|g| g.columns.contains(&name))
    }

    /// Groups whose row totals differ from group 0's, as `(index, rows)`; a valid manifest has none.
    pub fn uneven_groups(&self) -> Vec<(usize, u64)> {
        let rows = self.rows();
        self.column_groups
            .iter()
            .enumerate()
            .filter(|(_, g)| g.rows() != rows)
            .map(|(i, g)| (i, g.rows()))
            .collect()
    }

    /// The existing columns of `fields` (field IDs) this manifest holds, with their files.
    pub fn existing_columns(&self, fields: &[i64], base: &str) -> Vec<crate::plan::ExistingColumn> {
        fields
            .iter()
            .filter_map(|&field_id| {
                self.files_of(field_id, base)
                    .map(|files| crate::plan::ExistingColumn { field_id, files })
            })
            .collect()
    }

    /// The files holding `field_id`, as bucket keys in row order, for a segment at `base`.
    pub fn files_of(&self, field_id: i64, base: &str) -> Option<Vec<V3File>> {
        let group = self.group_of(field_id)?;
        Some(
            group
                .files
                .iter()
                .map(|f| V3File {
                    key: data_file_key(base, &f.path),
                    start_index: f.start_index.max(0) as u64,
                    end_index: f.end_index.max(0) as u64,
                })
                .collect(),
        )
    }
}

/// A manifest path as a bucket key: relative paths are under `{base}/_data/` (as
/// milvus-storage's `ToAbsolute` resolves them); URIs lose their scheme and bucket.
pub fn data_file_key(base: &str, path: &str) -> String {
    if path.contains("://") || path.starts_with('/') {
        return bucket_key(path);
    }
    format!("{}/_data/{path}", base.trim_end_matches('/'))
}

/// An absolute path or URI as a bucket key: `s3://bucket/k` and `/k` → `k`.
pub fn bucket_key(path: &str) -> String {
    match path.split_once("://") {
        Some((_, rest)) => rest.split_once('/').map_or(rest, |(_, k)| k).to_owned(),
        None => path.trim_start_matches('/').to_owned(),
    }
}

fn decode_container(bytes: &[u8]) -> Result<RawManifest, String> {
    let mut reader = apache_avro::Reader::new(bytes).map_err(|e| format!("not a readable Avro container: {e}"))?;
    let schema = reader.writer_schema().clone();
    let record = reader
        .next()
        .ok_or("the Avro container holds no manifest record")?
        .map_err(|e| format!("corrupt manifest record: {e}"))?;
    Ok(RawManifest {
        manifest: from_record(&record, Encoding::Container)?,
        schema,
        record,
    })
}

fn decode_legacy(bytes: &[u8]) -> Result<RawManifest, String> {
    let mut rd = bytes;
    let int = |rd: &mut &[u8]| match read_datum(&Schema::Int, rd) {
        Ok(Value::Int(i)) => Ok(i),
        _ => Err("truncated manifest header".to_owned()),
    };
    let magic = int(&mut rd).map_err(|_| "neither an Avro container nor a \"MILV\" manifest".to_owned())?;
    if magic != LEGACY_MAGIC {
        return Err(format!(
            "neither an Avro container (\"Obj\\x01\") nor a \"MILV\" manifest (first int {magic:#x})"
        ));
    }
    let version = int(&mut rd)?;
    if !(1..=NEWEST_LEGACY_VERSION).contains(&version) {
        return Err(format!(
            "\"MILV\" manifest format version {version} is unknown (this build reads 1 to {NEWEST_LEGACY_VERSION})"
        ));
    }
    let schema = Schema::parse_str(&legacy_schema(version)).map_err(|e| format!("legacy schema: {e}"))?;
    let record = read_datum(&schema, &mut rd).map_err(|e| format!("corrupt \"MILV\" v{version} manifest: {e}"))?;
    Ok(RawManifest {
        manifest: from_record(&record, Encoding::Legacy { version })?,
        schema,
        record,
    })
}

fn read_datum(schema: &Schema, rd: &mut &[u8]) -> Result<Value, String> {
    apache_avro::reader::datum::GenericDatumReader::builder(schema)
        .build()
        .and_then(|r| r.read_value(rd))
        .map_err(|e| e.to_string())
}

/// The raw record layout of legacy format `version`: files carry a `metadata` bytes field,
/// statistics are plain path lists before version 3, indexes exist from 6, LOB files from 5.
fn legacy_schema(version: i32) -> String {
    let file = r#"{"type":"record","name":"ColumnGroupFile","fields":[{"name":"path","type":"string"},
        {"name":"start_index","type":"long"},{"name":"end_index","type":"long"},{"name":"metadata","type":"bytes"}]}"#;
    let group = format!(
        r#"{{"type":"record","name":"ColumnGroup","fields":[{{"name":"columns","type":{{"type":"array","items":"string"}}}},
        {{"name":"files","type":{{"type":"array","items":{file}}}}},{{"name":"format","type":"string"}}]}}"#
    );
    let delta = r#"{"type":"record","name":"DeltaLog","fields":[{"name":"path","type":"string"},
        {"name":"type","type":"int"},{"name":"num_entries","type":"long"}]}"#;
    let stats = if version >= 3 {
        r#"{"type":"map","values":{"type":"record","name":"Statistics","fields":[
            {"name":"paths","type":{"type":"array","items":"string"}},{"name":"metadata","type":{"type":"map","values":"string"}}]}}"#
    } else {
        r#"{"type":"map","values":{"type":"array","items":"string"}}"#
    };
    let mut fields = vec![
        format!(r#"{{"name":"column_groups","type":{{"type":"array","items":{group}}}}}"#),
        format!(r#"{{"name":"delta_logs","type":{{"type":"array","items":{delta}}}}}"#),
        format!(r#"{{"name":"stats","type":{stats}}}"#),
    ];
    if version >= 6 {
        fields.push(format!(
            r#"{{"name":"indexes","type":{{"type":"array","items":{INDEX_RECORD}}}}}"#
        ));
    }
    if version >= 5 {
        fields.push(format!(
            r#"{{"name":"lob_files","type":{{"type":"array","items":{LOB_RECORD}}}}}"#
        ));
    }
    format!(
        r#"{{"type":"record","name":"Manifest","namespace":"milvus_storage","fields":[{}]}}"#,
        fields.join(",")
    )
}

const INDEX_RECORD: &str = r#"{"type":"record","name":"Index","fields":[
    {"name":"column_name","type":"string"},{"name":"index_name","type":"string"},{"name":"index_type","type":"string"},
    {"name":"path","type":"string"},{"name":"field_id","type":"long"},{"name":"index_id","type":"long"},
    {"name":"build_id","type":"long"},{"name":"index_version","type":"long"},{"name":"num_rows","type":"long"},
    {"name":"serialized_size","type":"long"},{"name":"mem_size","type":"long"},{"name":"current_index_version","type":"int"},
    {"name":"current_scalar_index_version","type":"int"},{"name":"index_store_path_version","type":"int"},
    {"name":"index_file_keys","type":{"type":"array","items":"string"}},{"name":"properties","type":{"type":"map","values":"string"}}]}"#;

const LOB_RECORD: &str = r#"{"type":"record","name":"LobFileInfo","fields":[
    {"name":"path","type":"string"},{"name":"field_id","type":"long"},{"name":"total_rows","type":"long"},
    {"name":"valid_rows","type":"long"},{"name":"file_size_bytes","type":"long"}]}"#;

fn from_record(record: &Value, encoding: Encoding) -> Result<Manifest, String> {
    let groups = array(field(record, "column_groups")?)?;
    let column_groups = groups
        .iter()
        .map(|g| {
            Ok(ColumnGroup {
                columns: array(field(g, "columns")?)?
                    .iter()
                    .map(string)
                    .collect::<Result<_, _>>()?,
                files: array(field(g, "files")?)?
                    .iter()
                    .map(group_file)
                    .collect::<Result<_, _>>()?,
                format: string(field(g, "format")?)?,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(Manifest {
        encoding,
        column_groups,
    })
}

fn group_file(v: &Value) -> Result<GroupFile, String> {
    let properties = match field(v, "properties") {
        Ok(Value::Map(m)) => m
            .iter()
            .map(|(k, v)| Ok((k.clone(), string(v)?)))
            .collect::<Result<_, String>>()?,
        _ => BTreeMap::new(),
    };
    Ok(GroupFile {
        path: string(field(v, "path")?)?,
        start_index: long(field(v, "start_index")?)?,
        end_index: long(field(v, "end_index")?)?,
        properties,
    })
}

#[cfg(test)]
#[path = "manifest_tests.rs"]
mod tests;
