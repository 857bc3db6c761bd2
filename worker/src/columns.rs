//! Which source columns are read, and as what: the join key and the new fields, from
//! `spec.columnMapping` (a complete projection, as in the reference) or, without it, the
//! legacy contract (a `pk` column; every other column is a new field of the same name).

use std::collections::BTreeMap;

use arrow_schema::Schema;

use crate::error::{BackfillError, Result};
use crate::plan::DEFAULT_KEY_COLUMN;

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

/// Resolves the mapping against the source schema. `pk_name` is the primary key's field name,
/// the target the join key column must map to. Every error names the columns at fault.
pub fn resolve(schema: &Schema, pk_name: &str, mapping: Option<&BTreeMap<String, String>>) -> Result<SourceColumns> {
    let Some(mapping) = mapping else {
        return legacy(schema);
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

fn legacy(schema: &Schema) -> Result<SourceColumns> {
    if schema.field_with_name(DEFAULT_KEY_COLUMN).is_err() {
        return Err(BackfillError::schema(format!(
            "the source has no `{DEFAULT_KEY_COLUMN}` column (columns: {}); add the join key as `{DEFAULT_KEY_COLUMN}`, \
             or name it in spec.columnMapping",
            crate::source::describe(schema)
        )));
    }
    let fields: Vec<(String, String)> = schema
        .fields()
        .iter()
        .filter(|f| f.name() != DEFAULT_KEY_COLUMN)
        .map(|f| (f.name().clone(), f.name().clone()))
        .collect();
    if fields.is_empty() {
        return Err(BackfillError::schema(format!(
            "the source has only the `{DEFAULT_KEY_COLUMN}` column: add at least one new field column"
        )));
    }
    Ok(SourceColumns {
        key: DEFAULT_KEY_COLUMN.to_owned(),
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

    fn err(r: Result<SourceColumns>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn without_a_mapping_pk_is_the_key_and_every_other_column_a_field() {
        let c = resolve(&schema(&["a", "pk", "b"]), "id", None).unwrap();
        assert_eq!(c.key, "pk");
        assert_eq!(c.plan_key_column(), None);
        assert_eq!(c.fields, vec![("a".into(), "a".into()), ("b".into(), "b".into())]);
        assert!(
            err(resolve(&schema(&["id", "a"]), "id", None)).contains("no `pk` column (columns: [id: Int64, a: Int64])")
        );
        assert!(err(resolve(&schema(&["pk"]), "id", None)).contains("only the `pk` column"));
    }

    #[test]
    fn a_mapping_is_a_complete_projection_in_source_order() {
        let m = map(&[("user", "id"), ("s", "score"), ("t", "tag")]);
        let c = resolve(&schema(&["t", "dropped", "user", "s"]), "id", Some(&m)).unwrap();
        assert_eq!(c.key, "user");
        assert_eq!(c.plan_key_column(), Some("user".into()));
        assert_eq!(c.fields, vec![("t".into(), "tag".into()), ("s".into(), "score".into())]);
    }

    #[test]
    fn a_mapping_may_swap_names() {
        let m = map(&[("pk", "id"), ("a", "b"), ("b", "a")]);
        let c = resolve(&schema(&["pk", "a", "b"]), "id", Some(&m)).unwrap();
        assert_eq!(c.fields, vec![("a".into(), "b".into()), ("b".into(), "a".into())]);
    }

    #[test]
    fn mapping_errors_name_the_columns() {
        let s = schema(&["user", "s"]);
        let e = err(resolve(
            &s,
            "id",
            Some(&map(&[("user", "id"), ("x", "score"), ("y", "z")])),
        ));
        assert!(
            e.contains(r#"["x", "y"]"#) && e.contains("columns: [user: Int64, s: Int64]"),
            "{e}"
        );
        let e = err(resolve(&s, "id", Some(&map(&[("user", "uid"), ("s", "score")]))));
        assert!(e.contains(r#"no column to the primary key "id""#), "{e}");
        let e = err(resolve(&s, "id", Some(&map(&[("user", "id")]))));
        assert!(e.contains(r#"only the join key "user""#), "{e}");
    }
}
