//! Binding the source's new-field columns to fields of the collection schema, for outputs
//! Milvus commits (StorageV2/V3): each column must name an existing, nullable field whose type
//! it matches exactly. Pure.

use arrow_schema::SchemaRef;

use milvus_backfill_api::precheck::Check;

use crate::error::{BackfillError, Result};
use crate::milvus::FieldInfo;
use crate::plan::{NewField, VectorKind, VectorTarget};
use crate::precheck::Checks;
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
    checks: &mut Checks,
) -> Result<(crate::source::SourceSchema, Vec<NewField>)> {
    let at = crate::stores::place_key(place);
    let files = checks.within(Check::Source, crate::source::list_files(store, &at).await)?;
    let inspected = crate::source::inspect(store, &files, join, &[]).await;
    let mut schema = checks.within_source(Check::Mapping, inspected)?;
    let bound = bind(
        &schema.schema,
        std::mem::take(&mut schema.new_fields),
        fields,
        collection,
    );
    let new_fields = checks.within(Check::Mapping, bound)?;
    crate::precheck::record_source(&schema, &new_fields, &store.display(&at), checks);
    crate::precheck::check_keys(store, &schema, join.pk.pk_type, checks).await?;
    let vectors = crate::vector_check::check_vectors(store, &schema.files, &new_fields).await;
    checks.within_source(Check::Vectors, vectors)?;
    let n = new_fields.iter().filter(|f| f.vector.is_some()).count();
    if n == 0 {
        checks.not_run(Check::Vectors, "no new field is a vector field");
    } else {
        checks.pass(
            Check::Vectors,
            format!("{n} vector field(s): every row normalized to Milvus' row bytes"),
        );
    }
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
        match field_problem(field, nf.column(), &arrow) {
            Err(p) => problems.push(p),
            Ok(vector) => {
                nf.field_id = Some(field.field_id);
                nf.vector = vector;
                bound.push(nf);
            }
        }
    }
    if problems.is_empty() {
        Ok(bound)
    } else {
        Err(BackfillError::schema(problems.join("; ")))
    }
}

/// What keeps `column` from filling `field`, or the vector target it fills (if a vector field).
fn field_problem(
    field: &FieldInfo,
    column: &str,
    arrow: &arrow_schema::DataType,
) -> Result<Option<VectorTarget>, String> {
    let name = &field.name;
    if field.is_primary_key || field.field_id < 100 {
        return Err(format!(
            "source column `{column}` names the primary key or a system field `{name}`; it cannot be backfilled"
        ));
    }
    let Some(dt) = DataType::from_i32(field.data_type) else {
        return Err(format!(
            "field `{name}` is {}, which this version does not know",
            types::describe(field.data_type)
        ));
    };
    let vector = match dt.vector_kind() {
        Some(kind) => Some(vector_target(field, kind, column, arrow)?),
        None if dt.storage_arrow().is_none() => {
            return Err(format!(
            "field `{name}` is {}; this version backfills scalar fields (Bool, Int8-64, Float, Double, VarChar, Text, \
                 Timestamptz) and vector fields, not JSON, Array or Geometry",
            types::describe(field.data_type)
        ))
        }
        None if !dt.accepts(arrow) => {
            let want = dt.storage_arrow().expect("matched above");
            return Err(format!(
                "source column `{column}` is {arrow} but field `{name}` is {}: write the column as {want} (types must match exactly; cast it in the ETL)",
                dt.name()
            ));
        }
        None => None,
    };
    if !field.nullable {
        return Err(format!(
            "field `{name}` is not nullable, but rows without a source value are written as null: backfill only nullable fields (AddCollectionField adds them nullable)"
        ));
    }
    Ok(vector)
}

/// The vector target `column` fills: the field's kind and `dim`, when the column is a form the
/// kind accepts ([`crate::vectors`]).
fn vector_target(
    field: &FieldInfo,
    kind: VectorKind,
    column: &str,
    arrow: &arrow_schema::DataType,
) -> Result<VectorTarget, String> {
    let name = &field.name;
    let dim = match (kind, field.dim) {
        (VectorKind::SparseFloatVector, _) => 0,
        (_, Some(d)) if d > 0 => d,
        _ => {
            return Err(format!(
                "vector field `{name}` ({kind:?}) has no `dim` type parameter in the schema"
            ))
        }
    };
    if kind == VectorKind::BinaryVector && !dim.is_multiple_of(8) {
        return Err(format!(
            "BinaryVector field `{name}` has dim {dim}, not a multiple of 8"
        ));
    }
    if !crate::vectors::accepts(kind, arrow) {
        return Err(format!(
            "source column `{column}` is {arrow}, but field `{name}` ({kind:?}, dim {dim}) takes {}",
            crate::vectors::accepted_forms(kind)
        ));
    }
    Ok(VectorTarget { kind, dim })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_schema::{DataType as A, Field, Schema};

    use super::*;

    fn field(id: i64, name: &str, dt: DataType, nullable: bool) -> FieldInfo {
        FieldInfo {
            dim: None,
            field_id: id,
            name: name.into(),
            data_type: dt as i32,
            is_primary_key: id == 100,
            nullable,
        }
    }

    fn nf(name: &str, t: &A) -> NewField {
        NewField {
            vector: None,
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
            "vector field `emb` (FloatVector) has no `dim` type parameter",
            "`id` names the primary key",
        ] {
            assert!(e.message.contains(phrase), "{phrase} not in {}", e.message);
        }
    }

    fn vector_field(id: i64, name: &str, dt: DataType, dim: Option<u32>) -> FieldInfo {
        FieldInfo {
            dim,
            ..field(id, name, dt, true)
        }
    }

    #[test]
    fn vector_columns_bind_with_the_fields_kind_and_dim() {
        let list = A::List(Arc::new(Field::new("item", A::Float32, true)));
        let fields = vec![
            vector_field(106, "emb", DataType::FloatVector, Some(4)),
            vector_field(107, "sparse", DataType::SparseFloatVector, None),
        ];
        let b = bind_cols(&[("emb", list), ("sparse", A::Utf8)], &fields).unwrap();
        assert_eq!(
            b.iter().map(|f| f.vector).collect::<Vec<_>>(),
            vec![
                Some(VectorTarget {
                    kind: VectorKind::FloatVector,
                    dim: 4
                }),
                Some(VectorTarget {
                    kind: VectorKind::SparseFloatVector,
                    dim: 0
                })
            ]
        );
    }

    #[test]
    fn a_vector_column_of_a_form_its_kind_does_not_take_names_the_forms() {
        let fields = vec![
            vector_field(106, "emb", DataType::FloatVector, Some(4)),
            vector_field(107, "bits", DataType::BinaryVector, Some(12)),
        ];
        let e = bind_cols(&[("emb", A::Float64), ("bits", A::Binary)], &fields).unwrap_err();
        for phrase in [
            "source column `emb` is Float64, but field `emb` (FloatVector, dim 4) takes a list of numbers",
            "BinaryVector field `bits` has dim 12, not a multiple of 8",
        ] {
            assert!(e.message.contains(phrase), "{phrase} not in {}", e.message);
        }
    }
}
