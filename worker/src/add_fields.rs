//! `milvus-backfill add-fields`: adds every new-field column of the source to the collection
//! as a nullable field (AddCollectionField), the step before a snapshot and a backfill that
//! Milvus commits. Columns whose field exists already with the same type are left alone.

use crate::config::{BackfillDoc, MilvusToken};
use crate::error::{BackfillError, Result};
use crate::milvus::{FieldInfo, MilvusClient, NewFieldSchema};
use crate::source;
use crate::stores::{place_key, RunLocations, RunStores, StoreCredentials};
use crate::types::{self, DataType};

/// What happened to one source column.
#[derive(Clone, Debug, PartialEq)]
pub enum Added {
    New(NewFieldSchema),
    Existing(String),
}

/// The fields to add for the source `columns`, or every column that cannot become one.
pub fn fields_to_add(
    columns: &[(String, arrow_schema::DataType)],
    existing: &[FieldInfo],
    max_length: u32,
) -> Result<Vec<Added>> {
    let mut problems = Vec::new();
    let mut out = Vec::new();
    for (name, arrow) in columns {
        let Some(dt) = DataType::for_arrow(arrow) else {
            problems.push(format!(
                "source column `{name}` is {arrow}, which no scalar Milvus field holds"
            ));
            continue;
        };
        match existing.iter().find(|f| &f.name == name) {
            Some(f) if f.data_type == dt as i32 => out.push(Added::Existing(name.clone())),
            Some(f) => problems.push(format!(
                "field `{name}` exists as {} but the source column is {arrow} ({})",
                types::describe(f.data_type),
                dt.name()
            )),
            None => out.push(Added::New(NewFieldSchema {
                name: name.clone(),
                data_type: dt as i32,
                max_length: (dt == DataType::VarChar).then_some(max_length),
            })),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(BackfillError::schema(problems.join("; ")))
    }
}

pub async fn add_fields(doc: &BackfillDoc, token: &MilvusToken, max_length: u32) -> Result<Vec<Added>> {
    let spec = &doc.spec;
    if spec.milvus.uri.is_empty() || spec.milvus.collection.is_empty() {
        return Err(BackfillError::config(
            "add-fields needs spec.milvus.uri and spec.milvus.collection (it calls AddCollectionField)",
        ));
    }
    let at = RunLocations::of_spec(spec);
    let stores = RunStores::open(&at, &StoreCredentials::from_env()?).await;
    let mut milvus = MilvusClient::connect(&spec.milvus.uri, spec.milvus.database(), token).await?;
    let info = milvus.describe_collection(&spec.milvus.collection).await?;
    let pk = crate::planner::join_field(&info, spec.primary_key_field_id, spec.join_key.as_deref())?;
    let files = source::list_files(&stores.source, &place_key(&at.source_place)).await?;
    let schema = source::inspect(
        &stores.source,
        &files,
        &source::Join {
            pk: &pk,
            mapping: spec.column_mapping.as_ref(),
        },
        &[],
    )
    .await?;
    let columns: Vec<(String, arrow_schema::DataType)> = schema
        .new_fields
        .iter()
        .map(|f| {
            let t = schema
                .schema
                .field_with_name(f.column())
                .expect("from the schema")
                .data_type()
                .clone();
            (f.name.clone(), t)
        })
        .collect();
    let plan = fields_to_add(&columns, &info.fields, max_length)?;
    for a in &plan {
        if let Added::New(f) = a {
            milvus.add_collection_field(&spec.milvus.collection, f).await?;
        }
    }
    Ok(plan)
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
        let plan = fields_to_add(&cols, &existing, 512).unwrap();
        assert_eq!(plan[0], Added::Existing("score".into()));
        assert_eq!(
            plan[1],
            Added::New(NewFieldSchema {
                name: "label".into(),
                data_type: DataType::VarChar as i32,
                max_length: Some(512)
            })
        );
        let bad = vec![("score".to_owned(), A::Int64), ("blob".to_owned(), A::Binary)];
        let e = fields_to_add(&bad, &existing, 512).unwrap_err();
        assert!(
            e.message
                .contains("`score` exists as Double but the source column is Int64"),
            "{}",
            e.message
        );
        assert!(e.message.contains("`blob` is Binary"), "{}", e.message);
    }
}
