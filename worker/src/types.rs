//! Milvus field types (`schemapb.DataType`) and the Arrow types a source column must have to
//! fill one: the exact-match table of the reference backfill (no widening, no casts).

use arrow_schema::DataType as Arrow;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum DataType {
    Bool = 1,
    Int8 = 2,
    Int16 = 3,
    Int32 = 4,
    Int64 = 5,
    Float = 10,
    Double = 11,
    String = 20,
    VarChar = 21,
    Array = 22,
    Json = 23,
    Geometry = 24,
    Text = 25,
    Timestamptz = 26,
    BinaryVector = 100,
    FloatVector = 101,
    Float16Vector = 102,
    BFloat16Vector = 103,
    SparseFloatVector = 104,
    Int8Vector = 105,
}

const ALL: [DataType; 20] = [
    DataType::Bool,
    DataType::Int8,
    DataType::Int16,
    DataType::Int32,
    DataType::Int64,
    DataType::Float,
    DataType::Double,
    DataType::String,
    DataType::VarChar,
    DataType::Array,
    DataType::Json,
    DataType::Geometry,
    DataType::Text,
    DataType::Timestamptz,
    DataType::BinaryVector,
    DataType::FloatVector,
    DataType::Float16Vector,
    DataType::BFloat16Vector,
    DataType::SparseFloatVector,
    DataType::Int8Vector,
];

impl DataType {
    pub fn from_i32(v: i32) -> Option<Self> {
        ALL.into_iter().find(|t| *t as i32 == v)
    }

    /// The protobuf enum name (`JSON`, not `Json`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Json => "JSON",
            other => other.debug_name(),
        }
    }

    fn debug_name(self) -> &'static str {
        match self {
            Self::Bool => "Bool",
            Self::Int8 => "Int8",
            Self::Int16 => "Int16",
            Self::Int32 => "Int32",
            Self::Int64 => "Int64",
            Self::Float => "Float",
            Self::Double => "Double",
            Self::String => "String",
            Self::VarChar => "VarChar",
            Self::Array => "Array",
            Self::Json => "Json",
            Self::Geometry => "Geometry",
            Self::Text => "Text",
            Self::Timestamptz => "Timestamptz",
            Self::BinaryVector => "BinaryVector",
            Self::FloatVector => "FloatVector",
            Self::Float16Vector => "Float16Vector",
            Self::BFloat16Vector => "BFloat16Vector",
            Self::SparseFloatVector => "SparseFloatVector",
            Self::Int8Vector => "Int8Vector",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(s))
    }

    /// The Arrow type a StorageV2/V3 column of this field has; `None` for the types this
    /// version cannot write yet (JSON, arrays, geometry, vectors).
    pub fn storage_arrow(self) -> Option<Arrow> {
        Some(match self {
            Self::Bool => Arrow::Boolean,
            Self::Int8 => Arrow::Int8,
            Self::Int16 => Arrow::Int16,
            Self::Int32 => Arrow::Int32,
            Self::Int64 | Self::Timestamptz => Arrow::Int64,
            Self::Float => Arrow::Float32,
            Self::Double => Arrow::Float64,
            Self::String | Self::VarChar | Self::Text => Arrow::Utf8,
            _ => return None,
        })
    }

    /// Whether a source column of type `arrow` fills this field exactly (strings may be large).
    pub fn accepts(self, arrow: &Arrow) -> bool {
        match self.storage_arrow() {
            Some(Arrow::Utf8) => matches!(arrow, Arrow::Utf8 | Arrow::LargeUtf8),
            Some(t) => &t == arrow,
            None => false,
        }
    }
}

impl DataType {
    /// The vector kind of a vector type.
    pub fn vector_kind(self) -> Option<crate::plan::VectorKind> {
        use crate::plan::VectorKind as V;
        Some(match self {
            Self::BinaryVector => V::BinaryVector,
            Self::FloatVector => V::FloatVector,
            Self::Float16Vector => V::Float16Vector,
            Self::BFloat16Vector => V::BFloat16Vector,
            Self::SparseFloatVector => V::SparseFloatVector,
            Self::Int8Vector => V::Int8Vector,
            _ => return None,
        })
    }

    /// The field type a source column of type `arrow` adds (AddCollectionField), if any.
    pub fn for_arrow(arrow: &Arrow) -> Option<Self> {
        Some(match arrow {
            Arrow::Boolean => Self::Bool,
            Arrow::Int8 => Self::Int8,
            Arrow::Int16 => Self::Int16,
            Arrow::Int32 => Self::Int32,
            Arrow::Int64 => Self::Int64,
            Arrow::Float32 => Self::Float,
            Arrow::Float64 => Self::Double,
            Arrow::Utf8 | Arrow::LargeUtf8 => Self::VarChar,
            _ => return None,
        })
    }
}

/// A field type for messages: the name, or the number if it is unknown here.
pub fn describe(data_type: i32) -> String {
    DataType::from_i32(data_type).map_or_else(|| format!("data type {data_type}"), |t| t.name().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_numbers_match_schemapb() {
        for t in ALL {
            assert_eq!(DataType::from_i32(t as i32), Some(t));
            assert_eq!(DataType::from_name(t.name()), Some(t));
        }
        assert_eq!(DataType::from_name("JSON"), Some(DataType::Json));
        assert_eq!((DataType::VarChar as i32, DataType::FloatVector as i32), (21, 101));
        assert_eq!(describe(999), "data type 999");
    }

    #[test]
    fn source_types_must_match_exactly() {
        assert!(DataType::Double.accepts(&Arrow::Float64));
        assert!(!DataType::Double.accepts(&Arrow::Float32), "no widening");
        assert!(!DataType::Int64.accepts(&Arrow::Int32), "no widening");
        assert!(DataType::VarChar.accepts(&Arrow::LargeUtf8));
        assert!(DataType::Timestamptz.accepts(&Arrow::Int64));
        assert!(!DataType::FloatVector.accepts(&Arrow::Binary));
        assert_eq!(DataType::Json.storage_arrow(), None);
        // What add-fields creates is what binding then accepts.
        for a in [
            Arrow::Boolean,
            Arrow::Int16,
            Arrow::Float32,
            Arrow::Float64,
            Arrow::LargeUtf8,
        ] {
            assert!(DataType::for_arrow(&a).unwrap().accepts(&a), "{a}");
        }
        assert_eq!(DataType::for_arrow(&Arrow::Binary), None);
    }
}
