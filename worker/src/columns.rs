//! Which source columns are read, and as what: the join key and the new fields, from
//! `spec.columnMapping` (a complete projection, as in the reference) or, without it, the
//! legacy contract (a `pk` column; every other column is a new field of the same name).

use std::collections::BTreeMap;

use arrow_schema::Schema;

use crate::error::{BackfillError, Result};
use crate::plan::{PkField, DEFAULT_KEY_COLUMN};

/// The source columns a run reads.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceColumns {
    /// The join key's column.
    pub key: String,
    /// `(source column, field name)` of each new field, in the source's column order.
    pub fields: Vec<(String, String)>,
}

impl SourceColumns {
    /// The key column as the plan records it: `None` for the default `pk`.
    pub fn plan_key_column(&self) -> Option<String> {
        (self.key != DEFAULT_KEY_COLUMN).then(|| self.key.clone())
    }
}

/// Resolves the mapping against the source schema. `pk` is the join key field, the target the
/// join key column must map to; without a mapping, the key column is `pk`, or the field's own
/// name for a physical join key (as the reference). Every error names the columns at fault.
pub fn resolve(schema: &Schema, pk: &PkField, mapping: Option<&BTreeMap<String, String>>) -> Result<SourceColumns> {
    let pk_name = pk.name.as_str();
    let Some(mapping) = mapping else {
        return legacy(schema, if pk.physical { pk_name } else { DEFAULT_KEY_COLUMN });
    };
    let missing: Vec<&str> = mapping
        .keys()
        .filter(|c| schema.field_with_name(c).is_err())
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(BackfillError::schema(format!(
            "spec.columnMapping names source column(s) {missing:?} that the source does not have (columns: {})",
            crate::source::describe(schema)
        )));
    }
    let Some((key, _)) = mapping.iter().find(|(_, to)| to.as_str() == pk_name) else {
        return Err(BackfillError::schema(format!(
            "spec.columnMapping maps no column to the primary key {pk_name:?}: add the join key column, e.g. `<column>: {pk_name}`"
        )));
    };
    // In the source's order, so that outputs list the fields as the user's file does.
    let fields: Vec<(String, String)> = schema
        .fields()
        .iter()
        .filter(|f| f.name() != key)
        .filter_map(|f| mapping.get(f.name()).map(|to| (f.name().clone(), to.clone())))
        .collect();
    if fields.is_empty() {
        return Err(BackfillError::schema(format!(
            "spec.columnMapping maps only the join key {key:?}: map at least one column to a new field"
        )));
    }
    Ok(SourceColumns {
        key: key.clone(),
        fields,
    })
}

fn legacy(schema: &Schema, key: &str) -> Result<SourceColumns> {
    if schema.field_with_name(key).is_err() {
        return Err(BackfillError::schema(format!(
            "the source has no `{key}` column (columns: {}); add the join key as `{key}`, \
             or name it in spec.columnMapping",
            crate::source::describe(schema)
        )));
    }
    let fields: Vec<(String, String)> = schema
        .fields()
        .iter()
        .filter(|f| f.name() != key)
        .map(|f| (f.name().clone(), f.name().clone()))
        .collect();
    if fields.is_empty() {
        return Err(BackfillError::schema(format!(
            "the source has only the `{key}` column: add at least one new field column"
        )));
    }
    Ok(SourceColumns {
        key: key.to_owned(),
        fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::{DataType, Field};

    fn schema(cols: &[&str]) -> Schema {
        Schema::new(
            cols.iter()
                .map(|c| Field::new(*c, DataType::Int64, true))
                .collect::<Vec<_>>(),
        )
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    fn pk(name: &str) -> PkField {
        PkField {
            field_id: 100,
            name: name.into(),
            pk_type: crate::plan::PkType::Int64,
            int_width: None,
            physical: false,
        }
    }

    #[test]
    fn a_physical_join_key_without_a_mapping_is_the_column_named_like_its_field() {
        let tag = PkField {
            physical: true,
            ..pk("tag")
        };
        let c = resolve(&schema(&["pk", "tag", "score"]), &tag, None).unwrap();
        assert_eq!((c.key.as_str(), c.plan_key_column()), ("tag", Some("tag".to_owned())));
        assert_eq!(
            c.fields,
            vec![("pk".into(), "pk".into()), ("score".into(), "score".into())]
        );
        assert!(err(resolve(&schema(&["pk", "score"]), &tag, None)).contains("no `tag` column"));
    }

    fn err(r: Result<SourceColumns>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn without_a_mapping_pk_is_the_key_and_every_other_column_a_field() {
        let c = resolve(&schema(&["a", "pk", "b"]), &pk("id"), None).unwrap();
        assert_eq!(c.key, "pk");
        assert_eq!(c.plan_key_column(), None);
        assert_eq!(c.fields, vec![("a".into(), "a".into()), ("b".into(), "b".into())]);
        assert!(err(resolve(&schema(&["id", "a"]), &pk("id"), None))
            .contains("no `pk` column (columns: [id: Int64, a: Int64])"));
        assert!(err(resolve(&schema(&["pk"]), &pk("id"), None)).contains("only the `pk` column"));
    }

    #[test]
    fn a_mapping_is_a_complete_projection_in_source_order() {
        let m = map(&[("user", "id"), ("s", "score"), ("t", "tag")]);
        let c = resolve(&schema(&["t", "dropped", "user", "s"]), &pk("id"), Some(&m)).unwrap();
        assert_eq!(c.key, "user");
        assert_eq!(c.plan_key_column(), Some("user".into()));
        assert_eq!(c.fields, vec![("t".into(), "tag".into()), ("s".into(), "score".into())]);
    }

    #[test]
    fn a_mapping_may_swap_names() {
        let m = map(&[("pk", "id"), ("a", "b"), ("b", "a")]);
        let c = resolve(&schema(&["pk", "a", "b"]), &pk("id"), Some(&m)).unwrap();
        assert_eq!(c.fields, vec![("a".into(), "b".into()), ("b".into(), "a".into())]);
    }

    #[test]
    fn mapping_errors_name_the_columns() {
        let s = schema(&["user", "s"]);
        let e = err(resolve(
            &s,
            &pk("id"),
            Some(&map(&[("user", "id"), ("x", "score"), ("y", "z")])),
        ));
        assert!(
            e.contains(r#"["x", "y"]"#) && e.contains("columns: [user: Int64, s: Int64]"),
            "{e}"
        );
        let e = err(resolve(&s, &pk("id"), Some(&map(&[("user", "uid"), ("s", "score")]))));
        assert!(e.contains(r#"no column to the primary key "id""#), "{e}");
        let e = err(resolve(&s, &pk("id"), Some(&map(&[("user", "id")]))));
        assert!(e.contains(r#"only the join key "user""#), "{e}");
    }
}
