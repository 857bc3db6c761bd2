//! Segments that share one pass over the source. The keys of every segment of a run or task go
//! into one index, so each source row is read once and sent to the segment that holds its key,
//! instead of once per segment. They must fit the memory budget (their key index and matched
//! source values); otherwise they go through the exchange. Pure logic; the pass itself is in
//! `engine`.

use crate::keys::{KeyIndex, PkType};

/// What a pass holds for `rows` segment rows, in bytes: the key index (hash map buckets
/// and the prefilter, sized exactly as [`KeyIndex::new`] and [`KeyIndex::seal`] size them),
/// the join's positions, and the source values those rows may match (at most one source row
/// per segment row). An upper bound: the match rate is not known before the pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PassCost {
    pub pk: PkType,
    /// Average key bytes (VarChar keys live on the heap, one allocation each).
    pub key_bytes: u64,
    pub value_bytes_per_source_row: u64,
}

impl PassCost {
    pub fn bytes(&self, rows: u64) -> u64 {
        // hashbrown: a power of two of buckets at most 7/8 full, each an entry and a control byte.
        let buckets = (rows.saturating_mul(8).div_ceil(7)).max(1).next_power_of_two();
        let entry = match self.pk {
            PkType::Int64 => 16 + 1,
            // A boxed str and its heap block (rounded to 16 bytes), a u32, a control byte.
            PkType::VarChar => 24 + 1,
        };
        let heap_keys = match self.pk {
            PkType::Int64 => 0,
            PkType::VarChar => rows * self.key_bytes.div_ceil(16) * 16,
        };
        // The prefilter: ~16 bits per key, a power of two of 64-bit words.
        let filter = (rows * 16 / 64).max(1).next_power_of_two() * 8;
        buckets * entry + heap_keys + filter + rows * (4 + self.value_bytes_per_source_row)
    }
}

/// Whether `total_rows` segment rows fit one pass: within `budget_bytes`, and addressable by a
/// u32 group offset. Otherwise the segments go through the exchange.
pub fn fits_one_pass(total_rows: u64, budget_bytes: u64, cost: &PassCost) -> bool {
    total_rows <= u64::from(u32::MAX) && cost.bytes(total_rows) <= budget_bytes
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
    fn rows_fit_one_pass_up_to_the_budget() {
        let cost = PassCost {
            pk: PkType::Int64,
            key_bytes: 8,
            value_bytes_per_source_row: 20,
        };
        assert!(fits_one_pass(3000, cost.bytes(3000), &cost));
        assert!(!fits_one_pass(3000, cost.bytes(3000) - 1, &cost));
        assert!(fits_one_pass(0, cost.bytes(0), &cost));
    }

    #[test]
    fn one_pass_never_exceeds_what_a_u32_offset_addresses() {
        let cost = PassCost {
            pk: PkType::Int64,
            key_bytes: 8,
            value_bytes_per_source_row: 0,
        };
        assert!(fits_one_pass(u64::from(u32::MAX), u64::MAX, &cost));
        assert!(!fits_one_pass(u64::from(u32::MAX) + 1, u64::MAX, &cost));
    }

    /// The estimate follows the index's real layout: a power of two of buckets, so one more
    /// row past a power-of-two boundary doubles the map; VarChar keys add their heap blocks.
    #[test]
    fn the_cost_follows_the_index_layout() {
        let int = PassCost {
            pk: PkType::Int64,
            key_bytes: 8,
            value_bytes_per_source_row: 0,
        };
        // 7 rows fit 8 buckets; 8 rows need 16.
        assert_eq!(int.bytes(7) - 7 * 4, 8 * 17 + 8);
        assert_eq!(int.bytes(8) - 8 * 4, 16 * 17 + 16);
        let s = PassCost {
            pk: PkType::VarChar,
            key_bytes: 36,
            value_bytes_per_source_row: 0,
        };
        assert_eq!(s.bytes(7) - int.bytes(7), 8 * 8 + 7 * 48);
        let with_values = PassCost {
            value_bytes_per_source_row: 100,
            ..int
        };
        assert_eq!(with_values.bytes(1000) - int.bytes(1000), 100 * 1000);
        // 5M Int64 rows with 26 value bytes each: the benchmark's one pass fits 384 MiB.
        let bench = PassCost {
            value_bytes_per_source_row: 26,
            ..int
        };
        assert!(bench.bytes(5_000_000) < 384 << 20);
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
