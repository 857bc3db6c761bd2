//! Segments that share one pass over the source. The keys of every segment of a group go into
//! one index, so each source row is read once per group and sent to the segment that holds its
//! key, instead of once per segment. A group is as large as the memory budget allows: its key
//! index and its matched source values must fit. Pure logic; the pass itself is in `engine`.

use std::ops::Range;

use crate::keys::{KeyIndex, PkType};

/// The default memory a pass may hold for its keys and matched values (`spec.memoryMiB`).
pub const DEFAULT_MEMORY_MIB: u32 = 256;

/// What one segment row costs a pass, in bytes: its entry in the key index (hash map slot
/// and prefilter bits, sized for the worst load factor), its position in the join, and the
/// source values it may match (at most one source row per segment row).
pub fn bytes_per_row(pk: PkType, avg_key_bytes: u64, value_bytes_per_source_row: u64) -> u64 {
    let index = match pk {
        // (i64, u32) buckets of 16 bytes and a control byte, at a load factor down to 0.44.
        PkType::Int64 => 40,
        // A boxed str (16 bytes) and its heap block, a u32, a control byte.
        PkType::VarChar => 64 + avg_key_bytes,
    };
    index + 4 + value_bytes_per_source_row
}

/// The most segment rows one pass may hold within `memory_mib`.
pub fn rows_per_pass(memory_mib: u32, bytes_per_row: u64) -> u64 {
    (u64::from(memory_mib.max(1)) << 20) / bytes_per_row.max(1)
}

/// Consecutive runs of segments whose rows together stay within `max_rows` (and within the
/// 2^32 rows a group index can address). A segment larger than that is a group alone: it
/// needs its own keys in memory whatever the budget, as before groups existed.
pub fn plan_groups(rows: &[u64], max_rows: u64) -> Vec<Range<usize>> {
    let limit = max_rows.clamp(1, u64::from(u32::MAX));
    let mut groups = Vec::new();
    let (mut start, mut total) = (0usize, 0u64);
    for (i, &r) in rows.iter().enumerate() {
        if i > start && total + r > limit {
            groups.push(start..i);
            (start, total) = (i, 0);
        }
        total += r;
    }
    if start < rows.len() {
        groups.push(start..rows.len());
    }
    groups
}

/// Where each segment's rows start in the group index (segments are pushed in order).
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRows {
    starts: Vec<u32>,
    total: u32,
}

impl GroupRows {
    pub fn new(rows: &[u32]) -> Self {
        let mut starts = Vec::with_capacity(rows.len());
        let mut total = 0u32;
        for &r in rows {
            starts.push(total);
            total += r;
        }
        Self { starts, total }
    }

    pub fn segments(&self) -> usize {
        self.starts.len()
    }

    /// The segment (position in the group) and its own row offset of group row `row`.
    pub fn locate(&self, row: u32) -> (usize, u32) {
        debug_assert!(row < self.total, "row {row} beyond the group's {} rows", self.total);
        let seg = self.starts.partition_point(|&s| s <= row) - 1;
        (seg, row - self.starts[seg])
    }
}

/// For each segment of the group, the `(segment row offset, matched source row index)` pairs
/// of the pass's matches. `first_offsets[k]` is the first group row of matched row `k`; a key
/// at several rows (Milvus does not deduplicate inserts, within or across segments) gives a
/// pair for each of them.
pub fn split_matches(rows: &GroupRows, index: &KeyIndex, first_offsets: &[u32]) -> Vec<Vec<(u32, u32)>> {
    let mut per_segment: Vec<Vec<(u32, u32)>> = vec![Vec::new(); rows.segments()];
    for (k, &first) in first_offsets.iter().enumerate() {
        for &row in std::iter::once(&first).chain(index.more_offsets(first)) {
            let (seg, offset) = rows.locate(row);
            per_segment[seg].push((offset, k as u32));
        }
    }
    per_segment
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Int64Array;

    #[test]
    fn groups_fill_up_to_the_budget_and_keep_the_segment_order() {
        assert_eq!(plan_groups(&[10, 10, 10, 10, 10], 25), vec![0..2, 2..4, 4..5]);
        assert_eq!(plan_groups(&[10, 10, 10], 30), vec![0..3]);
        assert_eq!(plan_groups(&[], 30), Vec::<Range<usize>>::new());
    }

    #[test]
    fn a_segment_over_the_budget_is_a_group_alone() {
        assert_eq!(plan_groups(&[5, 100, 5, 5], 20), vec![0..1, 1..2, 2..4]);
        assert_eq!(plan_groups(&[100], 0), vec![0..1]);
    }

    #[test]
    fn groups_never_exceed_what_a_u32_offset_addresses() {
        let big = u64::from(u32::MAX) / 2 + 1;
        assert_eq!(plan_groups(&[big, big], u64::MAX), vec![0..1, 1..2]);
    }

    #[test]
    fn the_budget_sets_the_rows_per_pass() {
        let per_row = bytes_per_row(PkType::Int64, 8, 20);
        assert_eq!(per_row, 64);
        assert_eq!(rows_per_pass(256, per_row), 256 * 1024 * 1024 / 64);
        assert!(bytes_per_row(PkType::VarChar, 36, 0) > bytes_per_row(PkType::Int64, 8, 0));
        assert_eq!(
            rows_per_pass(0, 0),
            1 << 20,
            "a zero budget or cost is clamped, never a division by zero"
        );
    }

    #[test]
    fn group_rows_locate_each_segment_offset() {
        let g = GroupRows::new(&[3, 0, 2]);
        assert_eq!(g.locate(0), (0, 0));
        assert_eq!(g.locate(2), (0, 2));
        assert_eq!(g.locate(3), (2, 0), "an empty segment holds no row");
        assert_eq!(g.locate(4), (2, 1));
    }

    /// Two segments in one index: keys 7 and 9 repeat across them; each match lands on every
    /// row that holds its key, in the segment that holds it.
    #[test]
    fn matches_split_to_every_row_of_their_key() {
        let mut index = KeyIndex::new(PkType::Int64, 5);
        index.push(&Int64Array::from(vec![7, 8, 9])).unwrap();
        index.push(&Int64Array::from(vec![9, 7])).unwrap();
        index.seal();
        let rows = GroupRows::new(&[3, 2]);
        // Matched source rows: k=0 has key 9 (first group row 2), k=1 has key 8 (row 1).
        let split = split_matches(&rows, &index, &[2, 1]);
        assert_eq!(split[0], vec![(2, 0), (1, 1)]);
        assert_eq!(split[1], vec![(0, 0)]);
        let split = split_matches(&rows, &index, &[0]);
        assert_eq!(split, vec![vec![(0, 0)], vec![(1, 0)]]);
    }
}
