//! Primary keys of one segment, in storage order, indexed for the join.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use arrow_array::{Array, ArrayRef, Int64Array, LargeStringArray, StringArray};
use arrow_schema::DataType;

pub use milvus_backfill_api::plan::PkType;

/// Whether a source `pk` column of this Arrow type joins with this key type.
pub fn pk_accepts(pk: PkType, arrow: &DataType) -> bool {
    match pk {
        PkType::Int64 => arrow == &DataType::Int64,
        PkType::VarChar => matches!(arrow, DataType::Utf8 | DataType::LargeUtf8),
    }
}

/// Whether a key column of this Arrow type joins on `pk`: a physical Int8/16/32 join key needs
/// exactly its width, other keys as [`pk_accepts`].
pub fn key_accepts(pk: &milvus_backfill_api::plan::PkField, arrow: &DataType) -> bool {
    match pk.int_width {
        Some(8) => arrow == &DataType::Int8,
        Some(16) => arrow == &DataType::Int16,
        Some(32) => arrow == &DataType::Int32,
        Some(_) => false,
        None => pk_accepts(pk.pk_type, arrow),
    }
}

/// The Arrow type a key column of `pk` must have, for messages.
pub fn key_type_name(pk: &milvus_backfill_api::plan::PkField) -> String {
    match pk.int_width {
        Some(bits) => format!("Int{bits}"),
        None => pk.pk_type.expected_arrow().to_string(),
    }
}

/// Keys as the index, the exchange and the key checks take them: Int8/16/32 widened to Int64
/// (a physical join key), every other array as it is.
pub fn widen(keys: ArrayRef) -> ArrayRef {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int16Type, Int32Type, Int8Type};
    fn to_i64<T: arrow_array::ArrowPrimitiveType>(a: &arrow_array::PrimitiveArray<T>) -> ArrayRef
    where
        T::Native: Into<i64>,
    {
        std::sync::Arc::new(a.iter().map(|v| v.map(Into::into)).collect::<Int64Array>())
    }
    match keys.data_type() {
        DataType::Int8 => to_i64(keys.as_primitive::<Int8Type>()),
        DataType::Int16 => to_i64(keys.as_primitive::<Int16Type>()),
        DataType::Int32 => to_i64(keys.as_primitive::<Int32Type>()),
        _ => keys,
    }
}

/// A multiply-xorshift hasher. Keys are not attacker-chosen per request, and
/// SipHash would make the 10M-lookup probe loop several times slower.
#[derive(Default, Clone, Copy)]
pub struct FastHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        let h = self.0.wrapping_mul(SEED);
        h ^ (h >> 29)
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let v = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(SEED);
        }
        let mut tail = [0u8; 8];
        let rest = chunks.remainder();
        tail[..rest.len()].copy_from_slice(rest);
        self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(tail) ^ rest.len() as u64).wrapping_mul(SEED);
    }
    fn write_i64(&mut self, v: i64) {
        self.0 = (self.0 ^ v as u64).wrapping_mul(SEED);
    }
    fn write_u8(&mut self, v: u8) {
        self.0 = (self.0 ^ v as u64).wrapping_mul(SEED);
    }
    fn write_usize(&mut self, v: usize) {
        self.0 = (self.0 ^ v as u64).wrapping_mul(SEED);
    }
}

pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// Maps each primary key of a segment to its row offsets. Milvus 2.3 does not
/// deduplicate inserts, so one key may sit at several offsets; those rare extra
/// offsets live in `extra`, keyed by the key's first offset.
#[derive(Debug)]
pub struct KeyIndex {
    keys: Keys,
    extra: FastMap<u32, Vec<u32>>,
    rows: u32,
    filter: Option<BlockedBloom>,
}

/// A cache-resident prefilter in front of the hash map. Most source keys are in
/// no given segment, and a miss in a multi-megabyte map costs a cache miss; one
/// 64-bit word per probe (two bits set per key) rejects ~98% of them first.
#[derive(Debug)]
struct BlockedBloom {
    words: Vec<u64>,
    shift: u32,
}

impl BlockedBloom {
    fn new(keys: usize) -> Self {
        // ~16 bits per key, a power of two words, at least one word.
        let words = (keys * 16 / 64).max(1).next_power_of_two();
        Self {
            words: vec![0; words],
            shift: 64 - words.trailing_zeros(),
        }
    }
    #[inline]
    fn slot(&self, h: u64) -> (usize, u64) {
        let w = if self.shift == 64 {
            0
        } else {
            (h >> self.shift) as usize
        };
        (w, (1u64 << (h & 63)) | (1u64 << ((h >> 6) & 63)))
    }
    #[inline]
    fn insert(&mut self, h: u64) {
        let (w, bits) = self.slot(h);
        self.words[w] |= bits;
    }
    #[inline]
    fn may_contain(&self, h: u64) -> bool {
        let (w, bits) = self.slot(h);
        self.words[w] & bits == bits
    }
}

#[inline]
pub(crate) fn hash_i64(k: i64) -> u64 {
    let mut h = FastHasher::default();
    h.write_i64(k);
    h.finish()
}

#[inline]
pub(crate) fn hash_str(k: &str) -> u64 {
    let mut h = FastHasher::default();
    h.write(k.as_bytes());
    h.finish()
}

#[derive(Debug)]
enum Keys {
    Int64 {
        map: FastMap<i64, u32>,
        min: i64,
        max: i64,
    },
    VarChar {
        map: FastMap<Box<str>, u32>,
        min: Option<String>,
        max: Option<String>,
    },
}

/// Key bounds of a segment, used to skip source row groups that cannot match.
#[derive(Clone, Debug, PartialEq)]
pub enum KeyRange {
    Int64(i64, i64),
    VarChar(String, String),
    Empty,
}

impl KeyIndex {
    pub fn new(pk_type: PkType, expected_rows: usize) -> Self {
        let keys = match pk_type {
            PkType::Int64 => Keys::Int64 {
                map: FastMap::with_capacity_and_hasher(expected_rows, Default::default()),
                min: i64::MAX,
                max: i64::MIN,
            },
            PkType::VarChar => Keys::VarChar {
                map: FastMap::with_capacity_and_hasher(expected_rows, Default::default()),
                min: None,
                max: None,
            },
        };
        Self {
            keys,
            extra: FastMap::default(),
            rows: 0,
            filter: None,
        }
    }

    /// Builds the prefilter; call once all binlogs are pushed.
    pub fn seal(&mut self) {
        let mut f = BlockedBloom::new(self.rows as usize);
        match &self.keys {
            Keys::Int64 { map, .. } => map.keys().for_each(|&k| f.insert(hash_i64(k))),
            Keys::VarChar { map, .. } => map.keys().for_each(|k| f.insert(hash_str(k))),
        }
        self.filter = Some(f);
    }

    pub fn pk_type(&self) -> PkType {
        match self.keys {
            Keys::Int64 { .. } => PkType::Int64,
            Keys::VarChar { .. } => PkType::VarChar,
        }
    }

    /// Number of physical rows seen, which is the next row offset.
    pub fn rows(&self) -> u32 {
        self.rows
    }

    /// Keys that occur at more than one offset.
    pub fn repeated_keys(&self) -> usize {
        self.extra.len()
    }

    /// Appends the next binlog's keys (storage order). Errors name the type seen.
    pub fn push(&mut self, keys: &dyn Array) -> Result<(), String> {
        if keys.null_count() > 0 {
            return Err(format!("{} null primary keys in a binlog", keys.null_count()));
        }
        match &mut self.keys {
            Keys::Int64 { map, min, max } => {
                let arr = keys
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .ok_or_else(|| format!("expected Int64 primary keys, found {}", keys.data_type()))?;
                for &k in arr.values() {
                    let offset = self.rows;
                    self.rows += 1;
                    *min = (*min).min(k);
                    *max = (*max).max(k);
                    if let Some(&first) = map.get(&k) {
                        self.extra.entry(first).or_default().push(offset);
                    } else {
                        map.insert(k, offset);
                    }
                }
            }
            Keys::VarChar { map, min, max } => {
                let mut add = |k: &str| {
                    let offset = self.rows;
                    self.rows += 1;
                    if min.as_deref().is_none_or(|m| k < m) {
                        *min = Some(k.to_owned());
                    }
                    if max.as_deref().is_none_or(|m| k > m) {
                        *max = Some(k.to_owned());
                    }
                    if let Some(&first) = map.get(k) {
                        self.extra.entry(first).or_default().push(offset);
                    } else {
                        map.insert(k.into(), offset);
                    }
                };
                if let Some(arr) = keys.as_any().downcast_ref::<StringArray>() {
                    arr.iter().flatten().for_each(&mut add);
                } else if let Some(arr) = keys.as_any().downcast_ref::<LargeStringArray>() {
                    arr.iter().flatten().for_each(&mut add);
                } else {
                    return Err(format!("expected VarChar primary keys, found {}", keys.data_type()));
                }
            }
        }
        Ok(())
    }

    pub fn range(&self) -> KeyRange {
        match &self.keys {
            _ if self.rows == 0 => KeyRange::Empty,
            Keys::Int64 { min, max, .. } => KeyRange::Int64(*min, *max),
            Keys::VarChar { min, max, .. } => {
                KeyRange::VarChar(min.clone().unwrap_or_default(), max.clone().unwrap_or_default())
            }
        }
    }

    #[inline]
    pub fn first_offset_i64(&self, key: i64) -> Option<u32> {
        if let Some(f) = &self.filter {
            if !f.may_contain(hash_i64(key)) {
                return None;
            }
        }
        match &self.keys {
            Keys::Int64 { map, .. } => map.get(&key).copied(),
            Keys::VarChar { .. } => None,
        }
    }

    #[inline]
    pub fn first_offset_str(&self, key: &str) -> Option<u32> {
        if let Some(f) = &self.filter {
            if !f.may_contain(hash_str(key)) {
                return None;
            }
        }
        match &self.keys {
            Keys::VarChar { map, .. } => map.get(key).copied(),
            Keys::Int64 { .. } => None,
        }
    }

    /// Offsets after the first one for a key whose first offset is `first`.
    pub fn more_offsets(&self, first: u32) -> &[u32] {
        self.extra.get(&first).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Appends `(index in keys, first offset)` for every key of `keys` that is in
    /// the segment, in ascending index order. Two passes: the prefilter over the
    /// whole batch first (independent loads the CPU overlaps), then the map for the
    /// few candidates.
    pub fn probe(&self, keys: &dyn Array, hits: &mut Vec<(u32, u32)>) {
        let mut candidates: Vec<u32> = Vec::with_capacity(keys.len() / 8 + 16);
        let nulls = keys.logical_nulls();
        let valid = |i: usize| nulls.as_ref().is_none_or(|n| n.is_valid(i));
        if let (Some(a), Keys::Int64 { map, .. }) = (keys.as_any().downcast_ref::<Int64Array>(), &self.keys) {
            let vals = a.values();
            match &self.filter {
                Some(f) => {
                    for (i, &k) in vals.iter().enumerate() {
                        if f.may_contain(hash_i64(k)) {
                            candidates.push(i as u32);
                        }
                    }
                }
                None => candidates.extend(0..vals.len() as u32),
            }
            for i in candidates {
                if valid(i as usize) {
                    if let Some(&off) = map.get(&vals[i as usize]) {
                        hits.push((i, off));
                    }
                }
            }
        } else if let Some(a) = keys.as_any().downcast_ref::<StringArray>() {
            for i in 0..a.len() {
                if valid(i) {
                    if let Some(off) = self.first_offset_str(a.value(i)) {
                        hits.push((i as u32, off));
                    }
                }
            }
        } else if let Some(a) = keys.as_any().downcast_ref::<LargeStringArray>() {
            for i in 0..a.len() {
                if valid(i) {
                    if let Some(off) = self.first_offset_str(a.value(i)) {
                        hits.push((i as u32, off));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::ArrayRef;
    use std::sync::Arc;

    #[test]
    fn offsets_follow_push_order_across_binlogs() {
        let mut idx = KeyIndex::new(PkType::Int64, 8);
        idx.push(&Int64Array::from(vec![30, 10])).unwrap();
        idx.push(&Int64Array::from(vec![20, 10])).unwrap();
        assert_eq!(idx.rows(), 4);
        assert_eq!(idx.first_offset_i64(30), Some(0));
        assert_eq!(idx.first_offset_i64(20), Some(2));
        assert_eq!(idx.first_offset_i64(10), Some(1));
        assert_eq!(idx.more_offsets(1), &[3]);
        assert_eq!(idx.first_offset_i64(99), None);
        assert_eq!(idx.range(), KeyRange::Int64(10, 30));
        assert_eq!(idx.repeated_keys(), 1);
    }

    #[test]
    fn the_prefilter_never_hides_a_key() {
        let mut idx = KeyIndex::new(PkType::Int64, 10_000);
        idx.push(&Int64Array::from_iter_values((0..10_000).map(|i| i * 7)))
            .unwrap();
        idx.seal();
        for i in 0..10_000 {
            assert_eq!(idx.first_offset_i64(i * 7), Some(i as u32));
        }
        let false_hits = (0..100_000)
            .filter(|i| i % 7 != 0 && idx.filter.as_ref().unwrap().may_contain(hash_i64(*i)))
            .count();
        assert!(false_hits < 5_000, "{false_hits} false positives in 100000");
        let mut s = KeyIndex::new(PkType::VarChar, 2);
        s.push(&StringArray::from(vec!["a", "bb"])).unwrap();
        s.seal();
        assert_eq!((s.first_offset_str("bb"), s.first_offset_str("c")), (Some(1), None));
    }

    #[test]
    fn varchar_keys_and_lookup() {
        let mut idx = KeyIndex::new(PkType::VarChar, 4);
        idx.push(&StringArray::from(vec!["b", "a", "c"])).unwrap();
        let probe: ArrayRef = Arc::new(StringArray::from(vec![Some("c"), None, Some("z"), Some("a")]));
        let mut hits = Vec::new();
        idx.probe(probe.as_ref(), &mut hits);
        assert_eq!(hits, vec![(0, 2), (3, 1)]);
        idx.seal();
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), None]));
        hits.clear();
        idx.probe(ints.as_ref(), &mut hits);
        assert!(hits.is_empty(), "wrong key type matches nothing");
        assert_eq!(idx.range(), KeyRange::VarChar("a".into(), "c".into()));
    }

    #[test]
    fn wrong_key_type_is_reported() {
        let mut idx = KeyIndex::new(PkType::Int64, 1);
        let err = idx.push(&StringArray::from(vec!["x"])).unwrap_err();
        assert!(err.contains("expected Int64"), "{err}");
    }

    #[test]
    fn pk_type_compatibility() {
        assert!(pk_accepts(PkType::Int64, &DataType::Int64));
        let tag = milvus_backfill_api::plan::PkField {
            field_id: 103,
            name: "tag".into(),
            pk_type: PkType::Int64,
            int_width: Some(32),
            physical: true,
        };
        assert!(key_accepts(&tag, &DataType::Int32) && !key_accepts(&tag, &DataType::Int64));
        let wide = widen(std::sync::Arc::new(arrow_array::Int32Array::from(vec![
            Some(-3),
            None,
            Some(i32::MAX),
        ])));
        let wide = wide.as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(
            wide.iter().collect::<Vec<_>>(),
            vec![Some(-3), None, Some(i32::MAX as i64)]
        );
        assert!(!pk_accepts(PkType::Int64, &DataType::Int32));
        assert!(pk_accepts(PkType::VarChar, &DataType::LargeUtf8));
        assert!(!pk_accepts(PkType::VarChar, &DataType::Binary));
        assert_eq!(PkType::from_milvus(21), Some(PkType::VarChar));
        assert_eq!(PkType::from_milvus(101), None);
    }
}
