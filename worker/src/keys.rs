//! Primary keys of one segment, in storage order, indexed for the join.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use arrow_array::{Array, ArrayRef, Int64Array, LargeStringArray, StringArray};
use arrow_schema::DataType;
use serde::{Deserialize, Serialize};

/// The two primary key types Milvus supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PkType {
    Int64,
    VarChar,
}

impl PkType {
    /// From `schemapb.DataType`.
    pub fn from_milvus(data_type: i32) -> Option<Self> {
        match data_type {
            5 => Some(Self::Int64),
            21 => Some(Self::VarChar),
            _ => None,
        }
    }

    /// Whether a source `pk` column of this Arrow type joins with this key type.
    pub fn accepts(self, arrow: &DataType) -> bool {
        match self {
            Self::Int64 => arrow == &DataType::Int64,
            Self::VarChar => matches!(arrow, DataType::Utf8 | DataType::LargeUtf8),
        }
    }

    pub fn expected_arrow(self) -> &'static str {
        match self {
            Self::Int64 => "Int64 (parquet INT64)",
            Self::VarChar => "Utf8 or LargeUtf8 (parquet BYTE_ARRAY/UTF8)",
        }
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
        }
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
        match &self.keys {
            Keys::Int64 { map, .. } => map.get(&key).copied(),
            Keys::VarChar { .. } => None,
        }
    }

    #[inline]
    pub fn first_offset_str(&self, key: &str) -> Option<u32> {
        match &self.keys {
            Keys::VarChar { map, .. } => map.get(key).copied(),
            Keys::Int64 { .. } => None,
        }
    }

    /// Offsets after the first one for a key whose first offset is `first`.
    pub fn more_offsets(&self, first: u32) -> &[u32] {
        self.extra.get(&first).map(Vec::as_slice).unwrap_or(&[])
    }

    /// First offsets of the keys of `keys`, `None` where the key is not in the segment.
    pub fn lookup(&self, keys: &ArrayRef) -> Vec<Option<u32>> {
        let n = keys.len();
        let mut out = Vec::with_capacity(n);
        if let Some(a) = keys.as_any().downcast_ref::<Int64Array>() {
            for i in 0..n {
                out.push(if a.is_null(i) {
                    None
                } else {
                    self.first_offset_i64(a.value(i))
                });
            }
        } else if let Some(a) = keys.as_any().downcast_ref::<StringArray>() {
            for i in 0..n {
                out.push(if a.is_null(i) {
                    None
                } else {
                    self.first_offset_str(a.value(i))
                });
            }
        } else if let Some(a) = keys.as_any().downcast_ref::<LargeStringArray>() {
            for i in 0..n {
                out.push(if a.is_null(i) {
                    None
                } else {
                    self.first_offset_str(a.value(i))
                });
            }
        } else {
            out.resize(n, None);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
    fn varchar_keys_and_lookup() {
        let mut idx = KeyIndex::new(PkType::VarChar, 4);
        idx.push(&StringArray::from(vec!["b", "a", "c"])).unwrap();
        let probe: ArrayRef = Arc::new(StringArray::from(vec![Some("c"), None, Some("z"), Some("a")]));
        assert_eq!(idx.lookup(&probe), vec![Some(2), None, None, Some(1)]);
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
        assert!(PkType::Int64.accepts(&DataType::Int64));
        assert!(!PkType::Int64.accepts(&DataType::Int32));
        assert!(PkType::VarChar.accepts(&DataType::LargeUtf8));
        assert!(!PkType::VarChar.accepts(&DataType::Binary));
        assert_eq!(PkType::from_milvus(21), Some(PkType::VarChar));
        assert_eq!(PkType::from_milvus(101), None);
    }
}
