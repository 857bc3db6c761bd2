//! Binding the source's new-field columns to fields of the collection schema, for outputs
//! Milvus commits (StorageV2/V3): each column must name an existing, nullable field whose type
//! it matches exactly. Pure.

use arrow_schema::SchemaRef;

use crate::error::{BackfillError, Result};
use crate::milvus::FieldInfo;
use crate::plan::NewField;
use crate::types::{self, DataType};

/// The source of a run Milvus commits, checked before anything is written: its new-field
/// columns bound to schema fields ([`bind`]), and its keys free of nulls and duplicates.
/// What the snapshot and the live V2/V3 planners share.
pub async fn checked_source(
    store: &crate::store::Store,
    place: &crate::config::Place,
    join: &crate::source::Join<'_>,
    fields: &[FieldInfo],
    collection: &str,
) -> Result<(crate::source::SourceSchema, Vec<NewField>)> {
    let files = crate::source::list_files(store, &crate::stores::place_key(place)).await?;
    let mut schema = crate::source::inspect(store, &files, join, &[]).await?;
    let new_fields = bind(
        &schema.schema,
        std::mem::take(&mut schema.new_fields),
        fields,
        collection,
    )?;
    crate::source::check_keys(store, &schema.files, schema.key_column(), join.pk.pk_type)
        .await?
        .into_result()?;
    Ok((schema, new_fields))
}

/// The new fields with their schema field IDs, or one error naming every column at fault.
pub fn bind(
    source: &SchemaRef,
    new_fields: Vec<NewField>,
    fields: &[FieldInfo],
    collection: &str,
) -> Result<Vec<NewField>> {
    let mut problems = Vec::new();
    let mut bound = Vec::with_capacity(new_fields.len());
    for mut nf in new_fields {
        let arrow = source
            .field_with_name(nf.column())
            .map(|f| f.data_type().clone())
            .expect("new fields come from the source schema");
        let Some(field) = fields.iter().find(|f| f.name == nf.name) else {
            problems.push(format!(
                "source column `{}` ({arrow}) has no field {:?} in collection {collection:?}: add it first with AddCollectionField \
                 (nullable; pymilvus: client.add_collection_field({collection:?}, field_name={:?}, data_type=..., nullable=True)), \
                 then plan again (from a new snapshot when planning from one)",
                nf.column(), nf.name, nf.name
            ));
            continue;
        };
        if let Some(p) = field_problem(field, nf.column(), &arrow) {
            problems.push(p);
            continue;
        }
        nf.field_id = Some(field.field_id);
        bound.push(nf);
    }
    if problems.is_empty() {
        Ok(bound)
    } else {
        Err(BackfillError::schema(problems.join("; ")))
    }
}

fn field_problem(field: &FieldInfo, column: &str, arrow: &arrow_schema::DataType) -> Option<String> {
    let name = &field.name;
    if field.is_primary_key || field.field_id < 100 {
        return Some(format!(
            "source column `{column}` names the primary key or a system field `{name}`; it cannot be backfilled"
        ));
    }
    let Some(dt) = DataType::from_i32(field.data_type).filter(|t| t.storage_arrow().is_some()) else {
        return Some(format!(
            "field `{name}` is {}; this version backfills scalar fields only (Bool, Int8-64, Float, Double, VarChar, Text, Timestamptz)",
            types::describe(field.data_type)
        ));
    };
    if !dt.accepts(arrow) {
        let want = dt.storage_arrow().expect("filtered above");
        return Some(format!(
            "source column `{column}` is {arrow} but field `{name}` is {}: write the column as {want} (types must match exactly; cast it in the ETL)",
            dt.name()
        ));
    }
    if !field.nullable {
        return Some(format!(
            "field `{name}` is not nullable, but rows without a source value are written as null: backfill only nullable fields (AddCollectionField adds them nullable)"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_schema::{DataType as A, Field, Schema};

    use super::*;

    fn field(id: i64, name: &str, dt: DataType, nullable: bool) -> FieldInfo {
        FieldInfo {
            field_id: id,
            name: name.into(),
            data_type: dt as i32,
            is_primary_key: id == 100,
            nullable,
        }
    }

    fn nf(name: &str, t: &A) -> NewField {
        NewField {
            source_column: None,
            name: name.into(),
            arrow_type: t.to_string(),
            field_id: None,
        }
    }

    fn bind_cols(cols: &[(&str, A)], fields: &[FieldInfo]) -> Result<Vec<NewField>> {
        let schema = Arc::new(Schema::new(
            cols.iter()
                .map(|(n, t)| Field::new(*n, t.clone(), true))
                .collect::<Vec<_>>(),
        ));
        bind(&schema, cols.iter().map(|(n, t)| nf(n, t)).collect(), fields, "docs")
    }

    fn schema() -> Vec<FieldInfo> {
        vec![
            field(100, "id", DataType::Int64, false),
            field(103, "score", DataType::Double, true),
            field(104, "label", DataType::VarChar, true),
            field(105, "strict", DataType::Int32, false),
            field(106, "emb", DataType::FloatVector, true),
        ]
    }

    #[test]
    fn columns_get_their_field_ids() {
        let b = bind_cols(&[("score", A::Float64), ("label", A::LargeUtf8)], &schema()).unwrap();
        assert_eq!(
            b.iter().map(|f| f.field_id).collect::<Vec<_>>(),
            vec![Some(103), Some(104)]
        );
    }

    #[test]
    fn every_bad_column_is_named_with_the_fix() {
        let e = bind_cols(
            &[
                ("missing", A::Int64),
                ("score", A::Float32),
                ("strict", A::Int32),
                ("emb", A::Binary),
                ("id", A::Int64),
            ],
            &schema(),
        )
        .unwrap_err();
        assert_eq!(e.kind, crate::error::ErrorKind::SchemaValidationError);
        for phrase in [
            "`missing` (Int64) has no field \"missing\" in collection \"docs\": add it first with AddCollectionField",
            "`score` is Float32 but field `score` is Double: write the column as Float64",
            "field `strict` is not nullable",
            "field `emb` is FloatVector",
            "`id` names the primary key",
        ] {
            assert!(e.message.contains(phrase), "{phrase} not in {}", e.message);
        }
    }
}
