//! Milvus 3.0 snapshot metadata (`DescribeSnapshot.s3_location`): the collection's schema and
//! its segments as of the snapshot. The file is protobuf-JSON: zero values are left out, and
//! 64-bit integers and enums may come as numbers or strings. Pure: bytes in, typed value out.

use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::milvus::{CollectionInfo, FieldInfo};

/// What planning needs from a snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub name: String,
    pub collection_name: String,
    pub collection: CollectionInfo,
    pub partition_ids: Vec<i64>,
    /// The StorageV3 segments (`storagev2-manifest-list`, despite its name).
    pub v3_segments: Vec<V3Entry>,
    /// Avro files listing the V1/V2 segments (`manifest-list`).
    pub manifest_list: Vec<String>,
    /// The layout of those files (`format-version`; 0 when the snapshot predates it).
    pub format_version: i64,
}

/// One `storagev2-manifest-list` entry, its manifest pointer decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct V3Entry {
    pub segment_id: i64,
    /// The manifest version the snapshot holds; rows are read at it, never at a newer one.
    pub version: i64,
    /// As the snapshot gives it; may start with the bucket name.
    pub base_path: String,
}

impl V3Entry {
    /// The base path as a key in `bucket` (a snapshot may prefix it with the bucket name).
    pub fn base_key(&self, bucket: &str) -> String {
        let p = self.base_path.trim_matches('/');
        p.strip_prefix(bucket)
            .and_then(|rest| rest.strip_prefix('/'))
            .unwrap_or(p)
            .to_owned()
    }

    /// `{root}/insert_log/{coll}/{part}/{seg}` → `(coll, part)`.
    pub fn collection_and_partition(&self) -> Option<(i64, i64)> {
        let parts: Vec<&str> = self.base_path.trim_matches('/').rsplit('/').take(3).collect();
        match parts[..] {
            [seg, part, coll] if seg.parse::<i64>().ok() == Some(self.segment_id) => {
                Some((coll.parse().ok()?, part.parse().ok()?))
            }
            _ => None,
        }
    }
}

impl Snapshot {
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let doc: Doc =
            serde_json::from_slice(bytes).map_err(|e| format!("not a Milvus snapshot metadata JSON: {e}"))?;
        let schema = doc.collection.schema;
        if schema.fields.is_empty() {
            return Err("the snapshot's collection.schema has no fields".into());
        }
        let v3_segments = doc
            .v3
            .into_iter()
            .map(|e| {
                let ptr: ManifestPointer = serde_json::from_str(&e.manifest).map_err(|err| {
                    format!(
                        "segment {}: manifest {:?} is not {{\"ver\": N, \"base_path\": ...}}: {err}",
                        e.segment_id, e.manifest
                    )
                })?;
                Ok(V3Entry {
                    segment_id: e.segment_id,
                    version: ptr.ver,
                    base_path: ptr.base_path,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            name: doc.info.name,
            collection_name: schema.name,
            collection: CollectionInfo {
                collection_id: doc.info.collection_id,
                schema_version: schema.version,
                fields: schema.fields.into_iter().map(FieldInfo::from).collect(),
            },
            partition_ids: doc.info.partition_ids,
            v3_segments,
            manifest_list: doc.manifest_list,
            format_version: doc.format_version,
        })
    }
}

#[derive(Deserialize)]
struct Doc {
    #[serde(rename = "snapshot-info")]
    info: Info,
    collection: Collection,
    #[serde(rename = "manifest-list", default)]
    manifest_list: Vec<String>,
    #[serde(rename = "storagev2-manifest-list", default)]
    v3: Vec<RawV3Entry>,
    #[serde(
        rename = "format-version",
        alias = "format_version",
        alias = "formatVersion",
        default,
        deserialize_with = "int"
    )]
    format_version: i64,
}

#[derive(Deserialize)]
struct Info {
    #[serde(default)]
    name: String,
    #[serde(default, deserialize_with = "int")]
    collection_id: i64,
    #[serde(default, deserialize_with = "ints")]
    partition_ids: Vec<i64>,
}

#[derive(Deserialize)]
struct Collection {
    schema: Schema,
}

#[derive(Deserialize)]
struct Schema {
    #[serde(default)]
    name: String,
    #[serde(default)]
    fields: Vec<Field>,
    #[serde(default, deserialize_with = "int")]
    version: i32,
}

#[derive(Deserialize)]
struct Field {
    #[serde(rename = "fieldID", default, deserialize_with = "int")]
    field_id: i64,
    #[serde(default)]
    name: String,
    #[serde(default)]
    is_primary_key: bool,
    #[serde(default, deserialize_with = "data_type")]
    data_type: i32,
    #[serde(default)]
    nullable: bool,
    #[serde(default)]
    type_params: Vec<TypeParam>,
}

#[derive(Deserialize)]
struct TypeParam {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
}

impl From<Field> for FieldInfo {
    fn from(f: Field) -> Self {
        FieldInfo {
            dim: crate::milvus::dim_param(f.type_params.iter().map(|p| (p.key.as_str(), p.value.as_str()))),
            field_id: f.field_id,
            name: f.name,
            data_type: f.data_type,
            is_primary_key: f.is_primary_key,
            nullable: f.nullable,
        }
    }
}

#[derive(Deserialize)]
struct RawV3Entry {
    #[serde(rename = "segmentID", deserialize_with = "int")]
    segment_id: i64,
    manifest: String,
}

#[derive(Deserialize)]
struct ManifestPointer {
    ver: i64,
    base_path: String,
}

/// A protobuf-JSON integer: a number, or a decimal string (how protojson writes 64-bit ones).
fn int<'de, D: Deserializer<'de>, T: TryFrom<i64>>(d: D) -> Result<T, D::Error> {
    let v = IntOrString::deserialize(d)?.value().map_err(de::Error::custom)?;
    T::try_from(v).map_err(|_| de::Error::custom(format!("{v} is out of range")))
}

fn ints<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
    Vec::<IntOrString>::deserialize(d)?
        .into_iter()
        .map(|v| v.value().map_err(de::Error::custom))
        .collect()
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrString {
    Int(i64),
    Str(String),
}

impl IntOrString {
    fn value(&self) -> Result<i64, String> {
        match self {
            Self::Int(i) => Ok(*i),
            Self::Str(s) => s.parse().map_err(|_| format!("{s:?} is not an integer")),
        }
    }
}

/// `schemapb.DataType` as a number or its protobuf name.
fn data_type<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    match IntOrString::deserialize(d)? {
        IntOrString::Int(i) => i32::try_from(i).map_err(de::Error::custom),
        IntOrString::Str(s) => crate::types::DataType::from_name(&s)
            .map(|t| t as i32)
            .or_else(|| s.parse().ok())
            .ok_or_else(|| de::Error::custom(format!("unknown data_type {s:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped like the snapshot in spark-milvus' tests: numbers for enums, zero values left out.
    const SAMPLE: &str = r#"{
      "snapshot-info": {"name": "bf", "id": 46, "collection_id": 4623, "partition_ids": [4624], "create_ts": 1},
      "collection": {"schema": {"name": "docs", "fields": [
          {"fieldID": 100, "name": "id", "is_primary_key": true, "data_type": 5},
          {"fieldID": 103, "name": "title", "data_type": 21, "type_params": [{"key": "max_length", "value": "64"}]},
          {"fieldID": 105, "name": "score", "data_type": "Double", "nullable": true},
          {"name": "RowID", "data_type": 5},
          {"fieldID": 1, "name": "Timestamp", "data_type": 5}],
        "version": 3}, "num_partitions": 1},
      "indexes": [],
      "manifest-list": ["snapshots/4623/manifests/data-file-manifest-1.avro"],
      "storagev2-manifest-list": [
        {"segmentID": 4625, "manifest": "{\"ver\":2,\"base_path\":\"a-bucket/files/insert_log/4623/4624/4625\"}"},
        {"segmentID": "4626", "manifest": "{\"ver\":7,\"base_path\":\"files/insert_log/4623/4624/4626\"}"}]
    }"#;

    #[test]
    fn a_snapshot_gives_schema_and_segments() {
        let s = Snapshot::parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!((s.collection_name.as_str(), s.collection.collection_id), ("docs", 4623));
        assert_eq!(s.collection.schema_version, 3);
        let score = s.collection.fields.iter().find(|f| f.name == "score").unwrap();
        assert_eq!((score.field_id, score.data_type, score.nullable), (105, 11, true));
        // RowID's fieldID 0 is left out, as protobuf-JSON does with zero values.
        assert_eq!(s.collection.fields[3].field_id, 0);
        assert_eq!(s.v3_segments.len(), 2);
        let a = &s.v3_segments[0];
        assert_eq!((a.segment_id, a.version), (4625, 2));
        assert_eq!(a.base_key("a-bucket"), "files/insert_log/4623/4624/4625");
        assert_eq!(a.collection_and_partition(), Some((4623, 4624)));
        assert_eq!(s.v3_segments[1].base_key("a-bucket"), "files/insert_log/4623/4624/4626");
        assert_eq!(s.manifest_list.len(), 1);
    }

    #[test]
    fn a_bad_snapshot_says_why() {
        assert!(Snapshot::parse(b"not json")
            .unwrap_err()
            .contains("not a Milvus snapshot"));
        assert!(Snapshot::parse(br#"{"snapshot-info": {}}"#)
            .unwrap_err()
            .contains("collection"));
        let bad_ptr = SAMPLE.replace(r#"{\"ver\":7,"#, r#"{\"version\":7,"#);
        assert!(Snapshot::parse(bad_ptr.as_bytes())
            .unwrap_err()
            .contains("segment 4626"));
        let no_fields = r#"{"snapshot-info": {}, "collection": {"schema": {"name": "x"}}}"#;
        assert!(Snapshot::parse(no_fields.as_bytes()).unwrap_err().contains("no fields"));
    }
}
