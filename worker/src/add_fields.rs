//! `milvus-backfill add-fields`: adds every new-field column of the source to the collection
//! as a nullable field (AddCollectionField), the step before a snapshot and a backfill that
//! Milvus commits. Columns whose field exists already with the same type are left alone.

use milvus_backfill_api::lifecycle::AddFieldsSpec;
use milvus_backfill_api::spec::EngineSpec;

use crate::config::{BackfillDoc, MilvusToken};
use crate::error::{BackfillError, Result};
use crate::milvus::{CollectionInfo, FieldInfo, MilvusClient, NewFieldSchema};
use crate::source;
use crate::stores::{place_key, RunLocations, RunStores, StoreCredentials};
use crate::types::{self, DataType};

/// What happened to one source column.
#[derive(Clone, Debug, PartialEq)]
pub enum Added {
    New(NewFieldSchema),
    Existing(String),
}

/// The field type a column adds: `addFields.types` when it names one, else the Arrow type's.
fn field_type(
    name: &str,
    arrow: &arrow_schema::DataType,
    how: &AddFieldsSpec,
) -> std::result::Result<NewFieldSchema, String> {
    let given = how.types.as_ref().and_then(|t| t.get(name));
    let dt = match given {
        Some(t) => DataType::from_name(t.data_type.trim()).ok_or_else(|| {
            format!(
                "spec.lifecycle.addFields.types.{name}.dataType {:?} is not a Milvus type (Bool, Int8..Int64, Float, Double, VarChar, JSON, FloatVector, BinaryVector, Float16Vector, BFloat16Vector, Int8Vector, SparseFloatVector)",
                t.data_type
            )
        })?,
        None => DataType::for_arrow(arrow).ok_or_else(|| {
            format!(
                "source column `{name}` is {arrow}, whose Milvus type is not implied: give it in spec.lifecycle.addFields.types.{name} (dataType, and dim for a vector)"
            )
        })?,
    };
    let dense = dt.vector_kind().is_some() && dt != DataType::SparseFloatVector;
    let dim = given.and_then(|t| t.dim);
    if dense && dim.is_none_or(|d| d == 0) {
        return Err(format!(
            "field `{name}` is a {}: give its dimension in spec.lifecycle.addFields.types.{name}.dim",
            dt.name()
        ));
    }
    Ok(NewFieldSchema {
        name: name.to_owned(),
        data_type: dt as i32,
        max_length: (dt == DataType::VarChar).then(|| given.and_then(|t| t.max_length).unwrap_or(how.max_length())),
        dim: if dense { dim } else { None },
    })
}

/// The fields to add for the source `columns`, or every column that cannot become one.
pub fn fields_to_add(
    columns: &[(String, arrow_schema::DataType)],
    existing: &[FieldInfo],
    how: &AddFieldsSpec,
) -> Result<Vec<Added>> {
    let mut problems = Vec::new();
    let mut out = Vec::new();
    for (name, arrow) in columns {
        let wanted = match field_type(name, arrow, how) {
            Ok(f) => f,
            Err(p) => {
                problems.push(p);
                continue;
            }
        };
        match existing.iter().find(|f| &f.name == name) {
            Some(f) if f.data_type == wanted.data_type => out.push(Added::Existing(name.clone())),
            Some(f) => problems.push(format!(
                "field `{name}` exists as {} but the source column is {arrow} ({})",
                types::describe(f.data_type),
                types::describe(wanted.data_type)
            )),
            None => out.push(Added::New(wanted)),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(BackfillError::schema(problems.join("; ")))
    }
}

/// The source's new-field columns with their Arrow types (the join key and unmapped columns
/// left out).
async fn new_columns(
    spec: &EngineSpec,
    info: &CollectionInfo,
    creds: &StoreCredentials,
) -> Result<Vec<(String, arrow_schema::DataType)>> {
    let at = RunLocations::of_spec(spec);
    let stores = RunStores::open(&at, creds).await;
    let pk = crate::planner::join_field(info, spec.primary_key_field_id, spec.join_key.as_deref())?;
    let files = source::list_files(&stores.source, &place_key(&at.source_place)).await?;
    let join = source::Join {
        pk: &pk,
        mapping: spec.column_mapping.as_ref(),
    };
    let schema = source::inspect(&stores.source, &files, &join, &[]).await?;
    Ok(schema
        .new_fields
        .iter()
        .map(|f| {
            let t = schema
                .schema
                .field_with_name(f.column())
                .expect("from the schema")
                .data_type();
            (f.name.clone(), t.clone())
        })
        .collect())
}

/// Adds every new field the collection lacks, over an open connection; fields that exist with
/// the same type are left alone, so a retry changes nothing. The source is read with `creds`
/// (the planner's: from the environment, or from the Backfill's Secrets in the operator).
pub async fn add_fields(
    spec: &EngineSpec,
    milvus: &mut MilvusClient,
    how: &AddFieldsSpec,
    creds: &StoreCredentials,
) -> Result<Vec<Added>> {
    if spec.milvus.collection.is_empty() {
        return Err(BackfillError::config(
            "adding fields needs spec.milvus.collection (it calls AddCollectionField)",
        ));
    }
    let info = milvus.describe_collection(&spec.milvus.collection).await?;
    let columns = new_columns(spec, &info, creds).await?;
    let plan = fields_to_add(&columns, &info.fields, how)?;
    for a in &plan {
        if let Added::New(f) = a {
            milvus.add_collection_field(&spec.milvus.collection, f).await?;
        }
    }
    Ok(plan)
}

/// `milvus-backfill add-fields`: connects, then [`add_fields`].
pub async fn add_fields_of(doc: &BackfillDoc, token: &MilvusToken, how: &AddFieldsSpec) -> Result<Vec<Added>> {
    let spec = &doc.spec;
    if spec.milvus.uri.is_empty() {
        return Err(BackfillError::config(
            "add-fields needs spec.milvus.uri and spec.milvus.collection (it calls AddCollectionField)",
        ));
    }
    let mut milvus = MilvusClient::connect(&spec.milvus.uri, spec.milvus.database(), token).await?;
    add_fields(spec, &mut milvus, how, &StoreCredentials::from_env()?).await
}

/// A sentence for the step's record: what was added and what existed.
pub fn describe_added(added: &[Added]) -> String {
    let new: Vec<String> = added
        .iter()
        .filter_map(|a| match a {
            Added::New(f) => Some(format!("{} ({}, nullable)", f.name, types::describe(f.data_type))),
            Added::Existing(_) => None,
        })
        .collect();
    let existing: Vec<&str> = added
        .iter()
        .filter_map(|a| match a {
            Added::Existing(n) => Some(n.as_str()),
            Added::New(_) => None,
        })
        .collect();
    match (new.is_empty(), existing.is_empty()) {
        (true, _) => format!("every new field exists already: {}", existing.join(", ")),
        (false, true) => format!("added {}", new.join(", ")),
        (false, false) => format!("added {}; existed already: {}", new.join(", "), existing.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::DataType as A;

    #[test]
    fn columns_become_nullable_fields_unless_they_exist() {
        let existing = vec![FieldInfo {
            dim: None,
            field_id: 103,
            name: "score".into(),
            data_type: DataType::Double as i32,
            is_primary_key: false,
            nullable: true,
        }];
        let cols = vec![("score".to_owned(), A::Float64), ("label".to_owned(), A::Utf8)];
        let how = AddFieldsSpec {
            max_length: Some(512),
            types: None,
        };
        let plan = fields_to_add(&cols, &existing, &how).unwrap();
        assert_eq!(plan[0], Added::Existing("score".into()));
        assert_eq!(
            plan[1],
            Added::New(NewFieldSchema {
                name: "label".into(),
                data_type: DataType::VarChar as i32,
                max_length: Some(512),
                dim: None,
            })
        );
        let bad = vec![("score".to_owned(), A::Int64), ("blob".to_owned(), A::Binary)];
        let e = fields_to_add(&bad, &existing, &how).unwrap_err();
        assert!(
            e.message
                .contains("`score` exists as Double but the source column is Int64"),
            "{}",
            e.message
        );
        assert!(e.message.contains("`blob` is Binary"), "{}", e.message);
        assert!(e.message.contains("addFields.types.blob"), "{}", e.message);
    }

    #[test]
    fn a_vector_column_takes_its_type_and_dim_from_the_spec() {
        use milvus_backfill_api::lifecycle::FieldType;
        let list = A::List(std::sync::Arc::new(arrow_schema::Field::new("item", A::Float32, true)));
        let cols = vec![("emb".to_owned(), list.clone()), ("note".to_owned(), A::Utf8)];
        let typed = |t: &str, dim: Option<u32>| AddFieldsSpec {
            max_length: None,
            types: Some(
                [
                    (
                        "emb".to_owned(),
                        FieldType {
                            data_type: t.into(),
                            dim,
                            max_length: None,
                        },
                    ),
                    (
                        "note".to_owned(),
                        FieldType {
                            data_type: "VarChar".into(),
                            dim: None,
                            max_length: Some(80),
                        },
                    ),
                ]
                .into(),
            ),
        };
        let plan = fields_to_add(&cols, &[], &typed("FloatVector", Some(8))).unwrap();
        assert_eq!(
            plan,
            vec![
                Added::New(NewFieldSchema {
                    name: "emb".into(),
                    data_type: DataType::FloatVector as i32,
                    max_length: None,
                    dim: Some(8)
                }),
                Added::New(NewFieldSchema {
                    name: "note".into(),
                    data_type: DataType::VarChar as i32,
                    max_length: Some(80),
                    dim: None
                })
            ]
        );
        let e = fields_to_add(&cols, &[], &typed("FloatVector", None)).unwrap_err();
        assert!(e.message.contains("addFields.types.emb.dim"), "{}", e.message);
        let e = fields_to_add(&cols, &[], &typed("Vector", Some(8))).unwrap_err();
        assert!(e.message.contains("\"Vector\" is not a Milvus type"), "{}", e.message);
        let sparse = fields_to_add(&cols, &[], &typed("SparseFloatVector", None)).unwrap();
        assert!(matches!(&sparse[0], Added::New(f) if f.dim.is_none()));
        assert_eq!(
            describe_added(&plan),
            "added emb (FloatVector, nullable), note (VarChar, nullable)"
        );
        assert_eq!(
            describe_added(&[Added::Existing("emb".into())]),
            "every new field exists already: emb"
        );
    }
}
