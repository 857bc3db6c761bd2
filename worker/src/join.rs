//! The left join of one segment's rows with the matched source rows: every
//! physical row offset gets the index of its source row, or none (null values).

use std::sync::Arc;

use arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch, UInt32Array};
use arrow_schema::{Field, Schema, SchemaRef};

#[cfg(test)]
use crate::keys::KeyIndex;
use crate::plan::Mode;

const NO_MATCH: u32 = u32::MAX;

/// Row-aligned positions into the matched values; built once, then read in chunks.
pub struct Joined {
    positions: Vec<u32>,
    values: Vec<ArrayRef>,
    schema: SchemaRef,
    matched_rows: u64,
    mode: Mode,
    /// Per column, the values the segment already holds (row-aligned), when the mode reads them.
    existing: Vec<Option<ArrayRef>>,
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
            existing: vec![None; values.len()],
            values,
            schema,
            matched_rows,
            mode: Mode::Replace,
        })
    }

    /// The join under `mode`, with the segment's existing values per column (`None`: the field
    /// has no data in the segment, which reads as all null). `replace` ignores them.
    pub fn with_existing(mut self, mode: Mode, existing: Vec<Option<ArrayRef>>) -> Self {
        assert_eq!(existing.len(), self.values.len(), "one entry per joined column");
        debug_assert!(existing.iter().flatten().all(|e| e.len() == self.positions.len()));
        self.mode = mode;
        self.existing = if mode.reads_existing() {
            existing
        } else {
            vec![None; self.values.len()]
        };
        self
    }

    /// Per column, `(rows that kept the segment's value, rows that took the source's)`, as the
    /// reference counts them: coalesce counts existing non-null values and source non-null values
    /// that filled a null; overwrite counts unmatched and matched rows. Empty in `replace`.
    pub fn provenance(&self) -> Vec<(u64, u64)> {
        if !self.mode.reads_existing() {
            return Vec::new();
        }
        let matched = self.matched_rows;
        let unmatched = self.positions.len() as u64 - matched;
        (0..self.values.len())
            .map(|c| match self.mode {
                Mode::Replace => (0, 0),
                Mode::Overwrite => (unmatched, matched),
                Mode::Coalesce => {
                    let existing = self.existing[c].as_ref();
                    let kept = existing.map_or(0, |e| (e.len() - e.null_count()) as u64);
                    let filled = self
                        .positions
                        .iter()
                        .enumerate()
                        .filter(|&(row, &p)| {
                            p != NO_MATCH
                                && existing.is_none_or(|e| e.is_null(row))
                                && self.values[c].is_valid(p as usize)
                        })
                        .count() as u64;
                    (kept, filled)
                }
            })
            .collect()
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

    /// Output rows `[start, end)` in row offset order, each column merged with the segment's
    /// existing values as the mode says. Each call builds fresh arrays: no buffer is shared
    /// between chunks.
    pub fn chunk(&self, start: usize, end: usize) -> RecordBatch {
        let idx = UInt32Array::from_iter(self.positions[start..end].iter().map(|&p| (p != NO_MATCH).then_some(p)));
        let cols = self
            .values
            .iter()
            .zip(&self.existing)
            .map(|(v, existing)| {
                let joined = arrow_select::take::take(v.as_ref(), &idx, None).expect("indices are in range");
                match existing {
                    Some(e) => merge(self.mode, &idx, joined, e.slice(start, end - start)),
                    None => joined,
                }
            })
            .collect();
        RecordBatch::try_new(self.schema.clone(), cols).expect("columns match the schema")
    }
}

/// One chunk of a column under `mode`: `joined` (the source's value, null when unmatched) and
/// `existing` (the segment's), row-aligned; `idx` is null for the unmatched rows.
fn merge(mode: Mode, idx: &UInt32Array, joined: ArrayRef, existing: ArrayRef) -> ArrayRef {
    let (mask, when_true, when_false) = match mode {
        Mode::Replace => return joined,
        // An existing non-null value wins.
        Mode::Coalesce => {
            if existing.null_count() == 0 {
                return existing;
            }
            let valid = BooleanArray::from_iter((0..existing.len()).map(|i| Some(existing.is_valid(i))));
            (valid, existing, joined)
        }
        // A matched row takes the source's value, null included.
        Mode::Overwrite => {
            let matched = BooleanArray::from_iter((0..idx.len()).map(|i| Some(idx.is_valid(i))));
            (matched, joined, existing)
        }
    };
    arrow_select::zip::zip(&mask, &when_true, &when_false).expect("both sides share the column's type and length")
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

    /// Segment keys 1..=5; the source matches 1 (value 10), 2 (null) and 4 (40); the segment
    /// already holds [100, null, null, 400, 500]. Rows: matched+existing, matched-null+null,
    /// unmatched+null, matched+existing, unmatched+existing.
    fn merged(mode: Mode) -> (Vec<Option<f64>>, Vec<(u64, u64)>) {
        let idx = index(vec![1, 2, 3, 4, 5]);
        let b = values(vec![Some(10.0), None, Some(40.0)], vec!["a", "b", "d"]);
        let existing: ArrayRef = Arc::new(Float64Array::from(vec![
            Some(100.0),
            None,
            None,
            Some(400.0),
            Some(500.0),
        ]));
        let j = Joined::build(5, &idx, &[0, 1, 3], &[b], &fields())
            .unwrap()
            .with_existing(mode, vec![Some(existing), None]);
        let mut out = Vec::new();
        // Two chunks: the merge must slice the existing column at the chunk's rows.
        for (start, end) in [(0, 2), (2, 5)] {
            let c = j.chunk(start, end);
            let score = c.column(0).as_any().downcast_ref::<Float64Array>().unwrap();
            out.extend((0..score.len()).map(|i| score.is_valid(i).then(|| score.value(i))));
        }
        (out, j.provenance())
    }

    #[test]
    fn each_mode_merges_as_the_reference() {
        let (replace, none) = merged(Mode::Replace);
        assert_eq!(replace, vec![Some(10.0), None, None, Some(40.0), None]);
        assert!(none.is_empty());
        let (coalesce, used) = merged(Mode::Coalesce);
        assert_eq!(coalesce, vec![Some(100.0), None, None, Some(400.0), Some(500.0)]);
        // score: 3 existing values kept, none filled (row 2's source value is null); label has no
        // existing column, so its 3 non-null matched values fill.
        assert_eq!(used, vec![(3, 0), (0, 3)]);
        let (overwrite, used) = merged(Mode::Overwrite);
        assert_eq!(overwrite, vec![Some(10.0), None, None, Some(40.0), Some(500.0)]);
        assert_eq!(used, vec![(2, 3), (2, 3)]);
    }

    #[test]
    fn coalesce_fills_only_the_nulls() {
        let idx = index(vec![1, 2]);
        let b = values(vec![Some(1.0), Some(2.0)], vec!["a", "b"]);
        let existing: ArrayRef = Arc::new(Float64Array::from(vec![None, Some(9.0)]));
        let j = Joined::build(2, &idx, &[0, 1], &[b], &fields())
            .unwrap()
            .with_existing(Mode::Coalesce, vec![Some(existing), None]);
        let c = j.chunk(0, 2);
        let score = c.column(0).as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!((score.value(0), score.value(1)), (1.0, 9.0));
        assert_eq!(j.provenance()[0], (1, 1));
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
