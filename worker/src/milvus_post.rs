//! The Milvus calls of the lifecycle's steps after the commit: CreateIndex and DescribeIndex
//! (`createIndex`), Query (`verify`). Query results are decoded into [`Value`]s, the form
//! `verify` compares with the source.

use milvus_backfill_api::lifecycle::IndexSpec;
use milvus_proto::common::KeyValuePair;
use milvus_proto::milvus as pb;
use milvus_proto::schema::{field_data, scalar_field, vector_field, FieldData};

use crate::after_commit::PostCommitMilvus;
use crate::error::{BackfillError, Result};
use crate::milvus::MilvusClient;
use crate::plan::PkType;

/// An index as DescribeIndex reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexInfo {
    pub index_name: String,
    pub index_type: String,
    /// `common.IndexState`: 3 Finished, 4 Failed.
    pub state: i32,
    pub indexed_rows: i64,
    pub total_rows: i64,
    pub fail_reason: String,
}

pub const INDEX_FINISHED: i32 = 3;
pub const INDEX_FAILED: i32 = 4;

/// One value of one row, as Milvus returns it and as the source gives it: integers widened to
/// i64, floats to f64, vectors as Milvus' per-row bytes, JSON as its bytes.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
}

/// The rows a Query returned: the primary keys, and for each output field its values in the
/// same order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueriedRows {
    pub keys: Vec<Value>,
    pub fields: Vec<(String, Vec<Value>)>,
}

/// The extra parameters CreateIndex takes, as pymilvus sends them: `index_type`,
/// `metric_type`, and the index's own parameters as one JSON object under `params`.
pub fn index_params(spec: &IndexSpec) -> Vec<KeyValuePair> {
    let kv = |key: &str, value: String| KeyValuePair {
        key: key.to_owned(),
        value,
    };
    let mut out = vec![kv("index_type", spec.index_type().to_owned())];
    if let Some(m) = &spec.metric_type {
        out.push(kv("metric_type", m.clone()));
    }
    if let Some(p) = spec.params.as_ref().filter(|p| !p.is_empty()) {
        out.push(kv(
            "params",
            serde_json::to_string(p).expect("a map of strings serializes"),
        ));
    }
    out
}

/// The Query expression that selects `keys` of the primary key `pk`.
pub fn keys_expr(pk: &str, pk_type: PkType, keys: &[Value]) -> String {
    let items: Vec<String> = keys
        .iter()
        .map(|k| match (pk_type, k) {
            (PkType::Int64, Value::Int(v)) => v.to_string(),
            (_, Value::Str(s)) => serde_json::to_string(s).expect("a string serializes"),
            (_, other) => format!("{other:?}"),
        })
        .collect();
    format!("{pk} in [{}]", items.join(", "))
}

impl PostCommitMilvus for MilvusClient {
    /// The index on `field`, or `None` when it has none.
    #[allow(deprecated)]
    async fn describe_index(&mut self, collection: &str, field: &str) -> Result<Option<IndexInfo>> {
        let req = pb::DescribeIndexRequest {
            db_name: self.database.clone(),
            collection_name: collection.to_owned(),
            field_name: field.to_owned(),
            ..Default::default()
        };
        let r = self
            .call(
                "describe_index",
                req,
                |mut c, r| async move { c.describe_index(r).await },
            )
            .await
            .map_err(|s| self.rpc_err("DescribeIndex", s))?
            .into_inner();
        if let Some(s) = &r.status {
            // IndexNotExist: error_code 25 on 2.3, code 700 with a reason on newer servers.
            let missing = s.error_code == 25 || s.code == 700 || s.reason.contains("index not found");
            if missing {
                return Ok(None);
            }
        }
        self.check("DescribeIndex", &format!("field {field:?} of {collection:?}"), r.status)?;
        Ok(r.index_descriptions
            .into_iter()
            .find(|d| d.field_name == field)
            .map(|d| IndexInfo {
                index_type: d
                    .params
                    .iter()
                    .find(|p| p.key == "index_type")
                    .map(|p| p.value.clone())
                    .unwrap_or_default(),
                index_name: d.index_name,
                state: d.state,
                indexed_rows: d.indexed_rows,
                total_rows: d.total_rows,
                fail_reason: d.index_state_fail_reason,
            }))
    }

    async fn create_index(&mut self, collection: &str, spec: &IndexSpec) -> Result<()> {
        let req = pb::CreateIndexRequest {
            db_name: self.database.clone(),
            collection_name: collection.to_owned(),
            field_name: spec.field.clone(),
            extra_params: index_params(spec),
            index_name: spec.index_name.clone().unwrap_or_default(),
            ..Default::default()
        };
        let status = self
            .call("create_index", req, |mut c, r| async move { c.create_index(r).await })
            .await
            .map_err(|s| self.rpc_err("CreateIndex", s))?
            .into_inner();
        self.check(
            "CreateIndex",
            &format!("field {:?} of {collection:?} ({})", spec.field, spec.index_type()),
            Some(status),
        )
    }

    /// The rows whose primary key is among `keys` (at most a few thousand), with `fields`,
    /// read at Strong consistency so that a commit just made is seen.
    async fn query_keys(
        &mut self,
        collection: &str,
        pk: (&str, PkType),
        keys: &[Value],
        fields: &[String],
    ) -> Result<QueriedRows> {
        let req = pb::QueryRequest {
            db_name: self.database.clone(),
            collection_name: collection.to_owned(),
            expr: keys_expr(pk.0, pk.1, keys),
            output_fields: fields.to_vec(),
            consistency_level: milvus_proto::common::ConsistencyLevel::Strong as i32,
            ..Default::default()
        };
        let r = self
            .call("query", req, |mut c, r| async move { c.query(r).await })
            .await
            .map_err(|s| self.rpc_err("Query", s))?
            .into_inner();
        self.check("Query", &format!("collection {collection:?}"), r.status)?;
        rows_of(r.fields_data, pk.0, fields)
            .map_err(|e| BackfillError::connection(format!("Query on {}: {e}", self.uri)))
    }
}

/// The key column and the `fields` of a Query's results, each decoded to values.
pub fn rows_of(data: Vec<FieldData>, pk: &str, fields: &[String]) -> std::result::Result<QueriedRows, String> {
    let mut by_name: std::collections::HashMap<String, FieldData> =
        data.into_iter().map(|f| (f.field_name.clone(), f)).collect();
    let mut take = |name: &str| {
        by_name
            .remove(name)
            .ok_or_else(|| format!("the results have no field {name:?}"))
            .and_then(decode)
    };
    let keys = take(pk)?;
    let mut out = QueriedRows {
        keys,
        fields: Vec::new(),
    };
    for f in fields {
        let values = take(f)?;
        if values.len() != out.keys.len() {
            return Err(format!(
                "field {f:?} has {} values for {} keys",
                values.len(),
                out.keys.len()
            ));
        }
        out.fields.push((f.clone(), values));
    }
    Ok(out)
}

/// One field's values; null where its validity says so (the field's own, else the legacy
/// top-level one).
pub fn decode(f: FieldData) -> std::result::Result<Vec<Value>, String> {
    let name = f.field_name.clone();
    let (mut values, valid) = match f.field {
        Some(field_data::Field::Scalars(s)) => (scalars(s.data, &name)?, s.valid_data),
        Some(field_data::Field::Vectors(v)) => (vectors(v.data, v.dim, &name)?, v.valid_data),
        None => (Vec::new(), Vec::new()),
    };
    let valid = if valid.is_empty() { f.valid_data } else { valid };
    if !valid.is_empty() {
        let n = values.len();
        values = expand_nulls(values, &valid)
            .ok_or_else(|| format!("field {name:?}: validity of {} rows for {n} values", valid.len()))?;
    }
    Ok(values)
}

/// Values of the valid rows only (how newer servers send nullable fields) or of every row.
fn expand_nulls(values: Vec<Value>, valid: &[bool]) -> Option<Vec<Value>> {
    if values.len() == valid.len() {
        return Some(
            values
                .into_iter()
                .zip(valid)
                .map(|(v, ok)| if *ok { v } else { Value::Null })
                .collect(),
        );
    }
    if values.len() != valid.iter().filter(|v| **v).count() {
        return None;
    }
    let mut it = values.into_iter();
    Some(
        valid
            .iter()
            .map(|ok| if *ok { it.next().expect("counted") } else { Value::Null })
            .collect(),
    )
}

fn scalars(data: Option<scalar_field::Data>, name: &str) -> std::result::Result<Vec<Value>, String> {
    use scalar_field::Data as D;
    Ok(match data {
        Some(D::BoolData(a)) => a.data.into_iter().map(Value::Bool).collect(),
        Some(D::IntData(a)) => a.data.into_iter().map(|v| Value::Int(v.into())).collect(),
        Some(D::LongData(a)) => a.data.into_iter().map(Value::Int).collect(),
        Some(D::FloatData(a)) => a.data.into_iter().map(|v| Value::Float(v.into())).collect(),
        Some(D::DoubleData(a)) => a.data.into_iter().map(Value::Float).collect(),
        Some(D::StringData(a)) => a.data.into_iter().map(Value::Str).collect(),
        Some(D::BytesData(a)) => a.data.into_iter().map(Value::Bytes).collect(),
        Some(D::JsonData(a)) => a.data.into_iter().map(Value::Bytes).collect(),
        Some(D::ArrayData(_)) => return Err(format!("field {name:?} is an Array, which verify does not compare")),
        None => Vec::new(),
    })
}

fn vectors(data: Option<vector_field::Data>, dim: i64, name: &str) -> std::result::Result<Vec<Value>, String> {
    use vector_field::Data as D;
    let dim = usize::try_from(dim).map_err(|_| format!("field {name:?}: dim {dim}"))?;
    let chunks = |bytes: Vec<u8>, width: usize| -> std::result::Result<Vec<Value>, String> {
        if width == 0 || !bytes.len().is_multiple_of(width) {
            return Err(format!("field {name:?}: {} bytes are not rows of {width}", bytes.len()));
        }
        Ok(bytes.chunks(width).map(|c| Value::Bytes(c.to_vec())).collect())
    };
    match data {
        Some(D::FloatVector(a)) => chunks(a.data.iter().flat_map(|v| v.to_le_bytes()).collect(), dim * 4),
        Some(D::BinaryVector(b)) => chunks(b, dim.div_ceil(8)),
        Some(D::Float16Vector(b)) | Some(D::Bfloat16Vector(b)) => chunks(b, dim * 2),
        Some(D::Int8Vector(b)) => chunks(b, dim),
        Some(D::SparseFloatVector(s)) => Ok(s.contents.into_iter().map(Value::Bytes).collect()),
        None => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use milvus_proto::schema::{DoubleArray, FloatArray, LongArray, ScalarField, StringArray, VectorField};

    fn scalar(name: &str, data: scalar_field::Data, valid: Vec<bool>) -> FieldData {
        FieldData {
            field_name: name.into(),
            field: Some(field_data::Field::Scalars(ScalarField {
                data: Some(data),
                valid_data: valid,
            })),
            ..Default::default()
        }
    }

    #[test]
    fn query_results_decode_with_nulls_in_either_form() {
        let ids = scalar(
            "id",
            scalar_field::Data::LongData(LongArray { data: vec![1, 2, 3] }),
            vec![],
        );
        // Newer servers send only the valid values; older ones every row with a placeholder.
        let compact = scalar(
            "score",
            scalar_field::Data::DoubleData(DoubleArray { data: vec![0.5, 2.5] }),
            vec![true, false, true],
        );
        let full = scalar(
            "label",
            scalar_field::Data::StringData(StringArray {
                data: vec!["a".into(), "".into(), "c".into()],
            }),
            vec![true, false, true],
        );
        let rows = rows_of(vec![full, ids, compact], "id", &["score".into(), "label".into()]).unwrap();
        assert_eq!(rows.keys, vec![Value::Int(1), Value::Int(2), Value::Int(3)]);
        assert_eq!(
            rows.fields[0].1,
            vec![Value::Float(0.5), Value::Null, Value::Float(2.5)]
        );
        assert_eq!(
            rows.fields[1].1,
            vec![Value::Str("a".into()), Value::Null, Value::Str("c".into())]
        );
        let e = rows_of(vec![], "id", &[]).unwrap_err();
        assert!(e.contains("no field \"id\""), "{e}");
    }

    #[test]
    fn vectors_decode_to_milvus_row_bytes() {
        let v = FieldData {
            field_name: "emb".into(),
            field: Some(field_data::Field::Vectors(VectorField {
                dim: 2,
                data: Some(vector_field::Data::FloatVector(FloatArray {
                    data: vec![1.0, 2.0, 3.0, 4.0],
                })),
                valid_data: vec![],
            })),
            ..Default::default()
        };
        let rows = decode(v).unwrap();
        let row0: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|f| f.to_le_bytes()).collect();
        assert_eq!(
            rows,
            vec![
                Value::Bytes(row0),
                Value::Bytes([3.0f32, 4.0].iter().flat_map(|f| f.to_le_bytes()).collect())
            ]
        );
        let bits = vectors(Some(vector_field::Data::BinaryVector(vec![1, 2, 3])), 16, "b").unwrap_err();
        assert!(bits.contains("rows of 2"), "{bits}");
    }

    #[test]
    fn index_parameters_and_key_expressions_are_what_milvus_parses() {
        let spec = IndexSpec {
            field: "emb".into(),
            index_type: Some("HNSW".into()),
            metric_type: Some("L2".into()),
            index_name: None,
            params: Some([("M".to_owned(), "16".to_owned())].into()),
        };
        let kv: Vec<(String, String)> = index_params(&spec).into_iter().map(|p| (p.key, p.value)).collect();
        assert_eq!(
            kv,
            vec![
                ("index_type".into(), "HNSW".into()),
                ("metric_type".into(), "L2".into()),
                ("params".into(), r#"{"M":"16"}"#.into())
            ]
        );
        let plain = IndexSpec {
            field: "score".into(),
            ..Default::default()
        };
        assert_eq!(index_params(&plain).len(), 1);
        assert_eq!(index_params(&plain)[0].value, "AUTOINDEX");
        assert_eq!(
            keys_expr("id", PkType::Int64, &[Value::Int(1), Value::Int(-2)]),
            "id in [1, -2]"
        );
        assert_eq!(
            keys_expr("k", PkType::VarChar, &[Value::Str("a\"b".into())]),
            r#"k in ["a\"b"]"#
        );
    }
}
