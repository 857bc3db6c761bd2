//! The left join of one segment's rows with the matched source rows: every
//! physical row offset gets the index of its source row, or none (null values).

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, UInt32Array};
use arrow_schema::{Field, Schema, SchemaRef};

#[cfg(test)]
use crate::keys::KeyIndex;

const NO_MATCH: u32 = u32::MAX;

/// Row-aligned positions into the matched values; built once, then read in chunks.
pub struct Joined {
    positions: Vec<u32>,
    values: Vec<ArrayRef>,
    schema: SchemaRef,
    matched_rows: u64,
}

/// A source key that matched the segment more than once (it is duplicated in the source).
#[derive(Debug, PartialEq)]
pub struct DuplicateKeys {
    pub count: u64,
    pub example_offsets: Vec<u32>,
}

impl Joined {
    /// `offsets[k]` is the first segment offset of matched source row `k`, and row
    /// `k` of the concatenated `batches` holds its values. Tests build joins this way; the
    /// engine splits a group's matches itself and calls [`Joined::from_pairs`].
    #[cfg(test)]
    pub fn build(
        num_rows: u32,
        index: &KeyIndex,
        offsets: &[u32],
        batches: &[RecordBatch],
        fields: &[(String, arrow_schema::DataType)],
    ) -> Result<Self, DuplicateKeys> {
        let pairs: Vec<(u32, u32)> = offsets
            .iter()
            .enumerate()
            .flat_map(|(k, first)| {
                std::iter::once(first)
                    .chain(index.more_offsets(*first))
                    .map(move |&o| (o, k as u32))
            })
            .collect();
        Self::from_pairs(num_rows, &pairs, concat_values(batches, fields), fields)
    }

    /// `pairs` are `(segment offset, row of values)`; `values` are the matched rows' columns,
    /// which a whole group of segments may share (arrays are reference-counted).
    pub fn from_pairs(
        num_rows: u32,
        pairs: &[(u32, u32)],
        values: Vec<ArrayRef>,
        fields: &[(String, arrow_schema::DataType)],
    ) -> Result<Self, DuplicateKeys> {
        let mut positions = vec![NO_MATCH; num_rows as usize];
        let mut dup = DuplicateKeys {
            count: 0,
            example_offsets: Vec::new(),
        };
        for &(off, k) in pairs {
            let slot = &mut positions[off as usize];
            if *slot != NO_MATCH {
                dup.count += 1;
                if dup.example_offsets.len() < 5 {
                    dup.example_offsets.push(off);
                }
            }
            *slot = k;
        }
        if dup.count > 0 {
            return Err(dup);
        }
        let matched_rows = positions.iter().filter(|&&p| p != NO_MATCH).count() as u64;
        // Output columns are nullable: unmatched rows get null.
        let schema: SchemaRef = Arc::new(Schema::new(
            fields
                .iter()
                .map(|(n, t)| Field::new(n, t.clone(), true))
                .collect::<Vec<_>>(),
        ));
        Ok(Self {
            positions,
            values,
            schema,
            matched_rows,
        })
    }

    pub fn num_rows(&self) -> usize {
        self.positions.len()
    }

    pub fn matched_rows(&self) -> u64 {
        self.matched_rows
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Output rows `[start, end)` in row offset order. Each call builds fresh arrays:
    /// no buffer is shared between chunks.
    pub fn chunk(&self, start: usize, end: usize) -> RecordBatch {
        let idx = UInt32Array::from_iter(self.positions[start..end].iter().map(|&p| (p != NO_MATCH).then_some(p)));
        let cols = self
            .values
            .iter()
            .map(|v| arrow_select::take::take(v.as_ref(), &idx, None).expect("indices are in range"))
            .collect();
        RecordBatch::try_new(self.schema.clone(), cols).expect("columns match the schema")
    }
}

/// The matched rows' columns, each concatenated into one array.
pub fn concat_values(batches: &[RecordBatch], fields: &[(String, arrow_schema::DataType)]) -> Vec<ArrayRef> {
    (0..fields.len())
        .map(|c| {
            let cols: Vec<&dyn arrow_array::Array> = batches.iter().map(|b| b.column(c).as_ref()).collect();
            if cols.is_empty() {
                Ok(arrow_array::new_empty_array(&fields[c].1))
            } else {
                arrow_select::concat::concat(&cols)
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .expect("matched batches share the planned schema")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PkType;
    use arrow_array::{Array, Float64Array, Int64Array, StringArray};
    use arrow_schema::DataType;

    fn index(keys: Vec<i64>) -> KeyIndex {
        let mut i = KeyIndex::new(PkType::Int64, keys.len());
        i.push(&Int64Array::from(keys)).unwrap();
        i
    }

    fn values(v: Vec<Option<f64>>, s: Vec<&str>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("score", DataType::Float64, true),
            Field::new("label", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(Float64Array::from(v)), Arc::new(StringArray::from(s))],
        )
        .unwrap()
    }

    fn fields() -> Vec<(String, DataType)> {
        vec![("score".into(), DataType::Float64), ("label".into(), DataType::Utf8)]
    }

    #[test]
    fn left_join_aligns_values_to_offsets() {
        // Segment keys in storage order: 40, 10, 30, 20.
        let idx = index(vec![40, 10, 30, 20]);
        // Matched source rows (in source order): key 30 -> offset 2, key 40 -> offset 0.
        let b = values(vec![Some(3.0), None], vec!["thirty", "forty"]);
        let j = Joined::build(4, &idx, &[2, 0], &[b], &fields()).unwrap();
        assert_eq!(j.matched_rows(), 2);
        let out = j.chunk(0, 4);
        let score = out.column(0).as_any().downcast_ref::<Float64Array>().unwrap();
        let label = out.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        // Offset 0 (key 40): the source row had a null score but a label.
        assert!(score.is_null(0));
        assert_eq!(label.value(0), "forty");
        assert!(score.is_null(1) && label.is_null(1));
        assert_eq!(score.value(2), 3.0);
        assert_eq!(label.value(2), "thirty");
        assert!(label.is_null(3));
        let tail = j.chunk(2, 4);
        assert_eq!(tail.num_rows(), 2);
        assert_eq!(
            tail.column(1).as_any().downcast_ref::<StringArray>().unwrap().value(0),
            "thirty"
        );
    }

    #[test]
    fn a_key_stored_twice_gets_the_value_at_both_offsets() {
        let idx = index(vec![7, 8, 7]);
        let b = values(vec![Some(1.5)], vec!["seven"]);
        let j = Joined::build(3, &idx, &[0], &[b], &fields()).unwrap();
        assert_eq!(j.matched_rows(), 2);
        let out = j.chunk(0, 3);
        let label = out.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(
            (label.value(0), label.is_null(1), label.value(2)),
            ("seven", true, "seven")
        );
    }

    #[test]
    fn a_duplicated_source_key_is_refused() {
        let idx = index(vec![1, 2]);
        let b = values(vec![Some(1.0), Some(2.0)], vec!["a", "b"]);
        let err = Joined::build(2, &idx, &[1, 1], &[b], &fields()).err().unwrap();
        assert_eq!(
            err,
            DuplicateKeys {
                count: 1,
                example_offsets: vec![1]
            }
        );
    }

    #[test]
    fn no_matches_gives_all_nulls() {
        let idx = index(vec![1, 2, 3]);
        let j = Joined::build(3, &idx, &[], &[], &fields()).unwrap();
        let out = j.chunk(0, 3);
        assert_eq!(out.column(0).null_count(), 3);
        assert_eq!(j.matched_rows(), 0);
    }
}
