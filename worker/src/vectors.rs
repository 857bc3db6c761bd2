//! Vector targets: the source forms the reference backfill accepts for a vector field, normalized
//! to the per-row bytes Milvus stores, with Milvus' checks. Pure.
//!
//! | kind | source column | checks |
//! |---|---|---|
//! | FloatVector | list of numbers (dim), JSON array string, binary of dim × 4 bytes | finite float32 |
//! | BinaryVector | list of integers (dim / 8), binary of dim / 8 bytes | each in −128..=255 |
//! | Float16 / BFloat16 | list of floats (dim, converted), list of bytes (dim × 2) or 16-bit integers (dim, the bits), binary of dim × 2 bytes | no NaN or infinity |
//! | Int8Vector | list of integers (dim), JSON array string, binary of dim bytes | each in −128..=127 |
//! | SparseFloatVector | map of index → value, struct {indices, values}, JSON object string, binary of (u32, f32) pairs | index in 0..=2³²−2, no duplicate, value finite and ≥ 0 |
//!
//! A null row stays null (targets are nullable). A null element inside a row is refused. Sparse
//! rows are written sorted by index, as `(u32 index LE, f32 value LE)` pairs.

use std::sync::Arc;

use arrow_array::builder::BinaryBuilder;
use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, ArrayRef, GenericListArray, OffsetSizeTrait, PrimitiveArray, StructArray};
use arrow_schema::DataType as Arrow;

pub use crate::plan::{VectorKind, VectorTarget};

/// The Arrow type a normalized vector column has: Binary, the type the reference writes nullable
/// vectors with (and every target is nullable).
pub const STORAGE_TYPE: Arrow = Arrow::Binary;

/// The type a new field's column is written with: [`STORAGE_TYPE`] for a vector target.
pub fn written_type(vector: Option<VectorTarget>, source: &Arrow) -> Arrow {
    if vector.is_some() {
        STORAGE_TYPE
    } else {
        source.clone()
    }
}

/// A new field's column as it is written: a vector target's rows normalized, any other column
/// as it is. `what` (the source file) and `name` place a refused row in the message.
pub fn written_column(
    vector: Option<VectorTarget>,
    column: ArrayRef,
    what: &str,
    name: &str,
) -> crate::error::Result<ArrayRef> {
    let Some(target) = vector else {
        return Ok(column);
    };
    normalize(target, column.as_ref()).map_err(|e| {
        crate::error::BackfillError::schema(format!(
            "{what}: vector field `{name}` ({:?}, dim {}): row {} of a batch: {}; was the source changed after planning?",
            target.kind, target.dim, e.row, e.why
        ))
    })
}

/// A row that cannot be normalized: its index in the array, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct RowError {
    pub row: usize,
    pub why: String,
}

/// Whether a source column of type `arrow` is one of the forms `kind` accepts.
pub fn accepts(kind: VectorKind, arrow: &Arrow) -> bool {
    use VectorKind::*;
    if is_bytes(arrow) {
        return true;
    }
    if matches!(arrow, Arrow::Utf8 | Arrow::LargeUtf8) {
        return matches!(kind, FloatVector | Int8Vector | SparseFloatVector);
    }
    if kind == SparseFloatVector {
        return sparse_shape(arrow);
    }
    let Some(child) = list_child(arrow) else {
        return false;
    };
    match kind {
        FloatVector => is_integer(child) || is_float(child),
        BinaryVector | Int8Vector => is_integer(child),
        Float16Vector | BFloat16Vector => {
            is_float(child) || matches!(child, Arrow::Int8 | Arrow::UInt8 | Arrow::Int16 | Arrow::UInt16)
        }
        SparseFloatVector => false,
    }
}

/// The forms `kind` accepts, for messages.
pub fn accepted_forms(kind: VectorKind) -> &'static str {
    use VectorKind::*;
    match kind {
        FloatVector => "a list of numbers, a JSON array string, or binary of dim × 4 bytes (little-endian float32)",
        BinaryVector => "a list of integers (dim / 8 of them, each −128..=255) or binary of dim / 8 bytes",
        Float16Vector | BFloat16Vector => {
            "a list of floats, a list of bytes (dim × 2) or 16-bit integers (dim), or binary of dim × 2 bytes"
        }
        Int8Vector => "a list of integers (each −128..=127), a JSON array string, or binary of dim bytes",
        SparseFloatVector => {
            "a map of index to value, a struct {indices, values} of lists, a JSON object string, or binary of (u32, f32) pairs"
        }
    }
}

/// The column's rows as Milvus stores them: one Binary value per row, null where the row is null.
pub fn normalize(target: VectorTarget, array: &dyn Array) -> Result<ArrayRef, RowError> {
    let rows = Rows::of(target.kind, array).ok_or_else(|| RowError {
        row: 0,
        why: format!("{} is not {}", array.data_type(), accepted_forms(target.kind)),
    })?;
    let width = target.row_bytes().unwrap_or(64);
    let mut out = BinaryBuilder::with_capacity(array.len(), array.len() * width);
    let mut buf = Vec::with_capacity(width);
    for row in 0..array.len() {
        if array.is_null(row) {
            out.append_null();
            continue;
        }
        buf.clear();
        rows.encode(target, row, &mut buf)
            .map_err(|why| RowError { row, why })?;
        out.append_value(&buf);
    }
    Ok(Arc::new(out.finish()))
}

/// A source column, by the form its rows come in.
enum Rows<'a> {
    List(Spans<'a>, Numbers<'a>),
    Bytes(&'a dyn Array),
    Json(&'a dyn Array),
    /// Sparse rows as `(indices, values)` spans of two number arrays.
    Pairs(Spans<'a>, Numbers<'a>, Spans<'a>, Numbers<'a>),
    /// Sparse rows from a map whose keys are strings.
    StringKeyed(Spans<'a>, &'a dyn Array, Numbers<'a>),
}

impl<'a> Rows<'a> {
    fn of(kind: VectorKind, array: &'a dyn Array) -> Option<Self> {
        if !accepts(kind, array.data_type()) {
            return None;
        }
        if is_bytes(array.data_type()) {
            return Some(Rows::Bytes(array));
        }
        if matches!(array.data_type(), Arrow::Utf8 | Arrow::LargeUtf8) {
            return Some(Rows::Json(array));
        }
        match array.data_type() {
            Arrow::Map(..) => {
                let map = array.as_map();
                let spans = Spans::Offsets32(map.value_offsets());
                let values = Numbers::of(map.values().as_ref())?;
                if matches!(map.keys().data_type(), Arrow::Utf8 | Arrow::LargeUtf8) {
                    Some(Rows::StringKeyed(spans, map.keys().as_ref(), values))
                } else {
                    Some(Rows::Pairs(spans, Numbers::of(map.keys().as_ref())?, spans, values))
                }
            }
            Arrow::Struct(_) => {
                let s: &StructArray = array.as_struct();
                let (ia, va) = (s.column_by_name("indices")?, s.column_by_name("values")?);
                let (is, iv) = list_parts(ia.as_ref())?;
                let (vs, vv) = list_parts(va.as_ref())?;
                Some(Rows::Pairs(is, iv, vs, vv))
            }
            _ => {
                let (spans, numbers) = list_parts(array)?;
                Some(Rows::List(spans, numbers))
            }
        }
    }

    fn encode(&self, target: VectorTarget, row: usize, out: &mut Vec<u8>) -> Result<(), String> {
        match self {
            Rows::List(spans, numbers) => {
                let (start, end) = spans.span(row);
                dense_from_numbers(target, numbers, start, end, out)
            }
            Rows::Bytes(a) => from_bytes(target, bytes_at(*a, row), out),
            Rows::Json(a) => from_json(target, str_at(*a, row), out),
            Rows::Pairs(is, iv, vs, vv) => {
                let (i0, i1) = is.span(row);
                let (v0, v1) = vs.span(row);
                if i1 - i0 != v1 - v0 {
                    return Err(format!("{} indices but {} values", i1 - i0, v1 - v0));
                }
                let mut pairs = Vec::with_capacity(i1 - i0);
                for (i, v) in (i0..i1).zip(v0..v1) {
                    let index = iv
                        .get(i)
                        .ok_or("a null index")?
                        .as_int()
                        .ok_or("an index that is not an integer")?;
                    pairs.push((index, vv.get(v).ok_or("a null value")?.as_f64()));
                }
                sparse(pairs, out)
            }
            Rows::StringKeyed(spans, keys, values) => {
                let (start, end) = spans.span(row);
                let mut pairs = Vec::with_capacity(end - start);
                for i in start..end {
                    let key = str_at(*keys, i);
                    let index: i64 = key
                        .trim()
                        .parse()
                        .map_err(|_| format!("index {key:?} is not an integer"))?;
                    pairs.push((index, values.get(i).ok_or("a null value")?.as_f64()));
                }
                sparse(pairs, out)
            }
        }
    }
}

/// Where each row's elements are in a list's child array.
#[derive(Clone, Copy)]
enum Spans<'a> {
    Offsets32(&'a [i32]),
    Offsets64(&'a [i64]),
    Fixed(usize),
}

impl Spans<'_> {
    fn span(&self, row: usize) -> (usize, usize) {
        match self {
            Spans::Offsets32(o) => (o[row] as usize, o[row + 1] as usize),
            Spans::Offsets64(o) => (o[row] as usize, o[row + 1] as usize),
            Spans::Fixed(n) => (row * n, (row + 1) * n),
        }
    }
}

fn list_parts(array: &dyn Array) -> Option<(Spans<'_>, Numbers<'_>)> {
    fn of<O: OffsetSizeTrait>(l: &GenericListArray<O>) -> (&[O], &dyn Array) {
        (l.value_offsets(), l.values().as_ref())
    }
    match array.data_type() {
        Arrow::List(_) => {
            let (o, v) = of(array.as_list::<i32>());
            Some((Spans::Offsets32(o), Numbers::of(v)?))
        }
        Arrow::LargeList(_) => {
            let (o, v) = of(array.as_list::<i64>());
            Some((Spans::Offsets64(o), Numbers::of(v)?))
        }
        Arrow::FixedSizeList(_, n) => {
            let l = array.as_fixed_size_list();
            Some((Spans::Fixed(*n as usize), Numbers::of(l.values().as_ref())?))
        }
        _ => None,
    }
}

/// One element of a list: integers keep their exact value.
#[derive(Clone, Copy)]
enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }
    fn as_int(self) -> Option<i64> {
        match self {
            Num::Int(i) => Some(i),
            Num::Float(_) => None,
        }
    }
}

/// A list's child array of numbers, typed once so that reading an element is one branch.
enum Numbers<'a> {
    I8(&'a PrimitiveArray<Int8Type>),
    I16(&'a PrimitiveArray<Int16Type>),
    I32(&'a PrimitiveArray<Int32Type>),
    I64(&'a PrimitiveArray<Int64Type>),
    U8(&'a PrimitiveArray<UInt8Type>),
    U16(&'a PrimitiveArray<UInt16Type>),
    U32(&'a PrimitiveArray<UInt32Type>),
    U64(&'a PrimitiveArray<UInt64Type>),
    F32(&'a PrimitiveArray<Float32Type>),
    F64(&'a PrimitiveArray<Float64Type>),
}

impl<'a> Numbers<'a> {
    fn of(a: &'a dyn Array) -> Option<Self> {
        Some(match a.data_type() {
            Arrow::Int8 => Numbers::I8(a.as_primitive()),
            Arrow::Int16 => Numbers::I16(a.as_primitive()),
            Arrow::Int32 => Numbers::I32(a.as_primitive()),
            Arrow::Int64 => Numbers::I64(a.as_primitive()),
            Arrow::UInt8 => Numbers::U8(a.as_primitive()),
            Arrow::UInt16 => Numbers::U16(a.as_primitive()),
            Arrow::UInt32 => Numbers::U32(a.as_primitive()),
            Arrow::UInt64 => Numbers::U64(a.as_primitive()),
            Arrow::Float32 => Numbers::F32(a.as_primitive()),
            Arrow::Float64 => Numbers::F64(a.as_primitive()),
            _ => return None,
        })
    }

    /// The element at `i`; `None` when it is null.
    fn get(&self, i: usize) -> Option<Num> {
        macro_rules! at {
            ($a:expr, $conv:expr) => {
                if $a.is_null(i) {
                    None
                } else {
                    Some($conv($a.value(i)))
                }
            };
        }
        match self {
            Numbers::I8(a) => at!(a, |v| Num::Int(v as i64)),
            Numbers::I16(a) => at!(a, |v| Num::Int(v as i64)),
            Numbers::I32(a) => at!(a, |v| Num::Int(v as i64)),
            Numbers::I64(a) => at!(a, Num::Int),
            Numbers::U8(a) => at!(a, |v| Num::Int(v as i64)),
            Numbers::U16(a) => at!(a, |v| Num::Int(v as i64)),
            Numbers::U32(a) => at!(a, |v| Num::Int(v as i64)),
            Numbers::U64(a) => at!(a, |v: u64| i64::try_from(v).map_or(Num::Float(v as f64), Num::Int)),
            Numbers::F32(a) => at!(a, |v| Num::Float(v as f64)),
            Numbers::F64(a) => at!(a, Num::Float),
        }
    }

    /// Whether the elements are 16-bit patterns (a Float16/BFloat16 row given as its bits).
    fn is_16_bit(&self) -> bool {
        matches!(self, Numbers::I16(_) | Numbers::U16(_))
    }

    fn is_byte(&self) -> bool {
        matches!(self, Numbers::I8(_) | Numbers::U8(_))
    }
}

fn dense_from_numbers(
    target: VectorTarget,
    numbers: &Numbers<'_>,
    start: usize,
    end: usize,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    use VectorKind::*;
    let dim = target.dim as usize;
    let half = matches!(target.kind, Float16Vector | BFloat16Vector);
    let want = match target.kind {
        BinaryVector => dim / 8,
        _ if half && numbers.is_byte() => dim * 2,
        _ => dim,
    };
    if end - start != want {
        return Err(format!("has {} elements, the field needs {want}", end - start));
    }
    for (k, i) in (start..end).enumerate() {
        let v = numbers
            .get(i)
            .ok_or_else(|| format!("element {k} is null (a row may be null, not its elements)"))?;
        match target.kind {
            FloatVector => push_f32(v.as_f64(), k, out)?,
            BinaryVector => out.push(int_in(v, -128, 255, k)? as u8),
            Int8Vector => out.push(int_in(v, -128, 127, k)? as i8 as u8),
            Float16Vector | BFloat16Vector if numbers.is_byte() => out.push(int_in(v, -128, 255, k)? as u8),
            Float16Vector | BFloat16Vector if numbers.is_16_bit() => {
                out.extend_from_slice(&(int_in(v, -32768, 65535, k)? as u16).to_le_bytes())
            }
            Float16Vector => {
                let h = half::f16::from_f64(v.as_f64());
                if h.is_infinite() && v.as_f64().is_finite() {
                    return Err(format!("element {k} ({}) is outside the float16 range", v.as_f64()));
                }
                out.extend_from_slice(&h.to_bits().to_le_bytes())
            }
            // The top 16 bits of the float32, as the reference converts.
            BFloat16Vector => out.extend_from_slice(&(((v.as_f64() as f32).to_bits() >> 16) as u16).to_le_bytes()),
            SparseFloatVector => unreachable!("sparse rows are pairs"),
        }
    }
    check_dense(target.kind, out)
}

fn push_f32(v: f64, k: usize, out: &mut Vec<u8>) -> Result<(), String> {
    let f = v as f32;
    if !f.is_finite() {
        return Err(format!("element {k} ({v}) is not a finite float32"));
    }
    out.extend_from_slice(&f.to_le_bytes());
    Ok(())
}

fn int_in(v: Num, lo: i64, hi: i64, k: usize) -> Result<i64, String> {
    match v {
        Num::Int(i) if (lo..=hi).contains(&i) => Ok(i),
        Num::Int(i) => Err(format!("element {k} ({i}) is outside {lo}..={hi}")),
        Num::Float(f) => Err(format!("element {k} ({f}) is not an integer")),
    }
}

/// The checks on a dense row's bytes, whatever form it came in.
fn check_dense(kind: VectorKind, bytes: &[u8]) -> Result<(), String> {
    use VectorKind::*;
    match kind {
        FloatVector => {
            for (k, c) in bytes.chunks_exact(4).enumerate() {
                let f = f32::from_le_bytes(c.try_into().expect("4 bytes"));
                if !f.is_finite() {
                    return Err(format!("element {k} ({f}) is not a finite float32"));
                }
            }
        }
        Float16Vector | BFloat16Vector => {
            let (mask, name) = if kind == Float16Vector {
                (0x7c00u16, "float16")
            } else {
                (0x7f80u16, "bfloat16")
            };
            for (k, c) in bytes.chunks_exact(2).enumerate() {
                let bits = u16::from_le_bytes([c[0], c[1]]);
                if bits & mask == mask {
                    return Err(format!(
                        "element {k} (bits {bits:#06x}) is a NaN or an infinity in {name}"
                    ));
                }
            }
        }
        BinaryVector | Int8Vector | SparseFloatVector => {}
    }
    Ok(())
}

fn from_bytes(target: VectorTarget, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let Some(want) = target.row_bytes() else {
        if !bytes.len().is_multiple_of(8) {
            return Err(format!(
                "{} bytes is not a whole number of (u32 index, f32 value) pairs",
                bytes.len()
            ));
        }
        let pairs = bytes
            .chunks_exact(8)
            .map(|c| {
                let index = u32::from_le_bytes(c[..4].try_into().expect("4 bytes")) as i64;
                (index, f32::from_le_bytes(c[4..].try_into().expect("4 bytes")) as f64)
            })
            .collect();
        return sparse(pairs, out);
    };
    if bytes.len() != want {
        return Err(format!("has {} bytes, the field needs {want}", bytes.len()));
    }
    out.extend_from_slice(bytes);
    check_dense(target.kind, out)
}

fn from_json(target: VectorTarget, text: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("is not JSON: {e}"))?;
    if target.kind == VectorKind::SparseFloatVector {
        let object = value.as_object().ok_or("is not a JSON object of index to value")?;
        let mut pairs = Vec::with_capacity(object.len());
        for (key, v) in object {
            let index: i64 = key
                .trim()
                .parse()
                .map_err(|_| format!("index {key:?} is not an integer"))?;
            let v = v
                .as_f64()
                .ok_or_else(|| format!("the value of index {key} is not a number"))?;
            pairs.push((index, v));
        }
        return sparse(pairs, out);
    }
    let items = value.as_array().ok_or("is not a JSON array")?;
    if items.len() != target.dim as usize {
        return Err(format!("has {} elements, the field needs {}", items.len(), target.dim));
    }
    for (k, item) in items.iter().enumerate() {
        match target.kind {
            VectorKind::Int8Vector => {
                let n = item
                    .as_i64()
                    .map_or(Num::Float(item.as_f64().unwrap_or(f64::NAN)), Num::Int);
                out.push(int_in(n, -128, 127, k)? as i8 as u8);
            }
            _ => push_f32(
                item.as_f64().ok_or_else(|| format!("element {k} is not a number"))?,
                k,
                out,
            )?,
        }
    }
    Ok(())
}

/// The largest sparse index Milvus takes (2³² − 1 is reserved).
const MAX_SPARSE_INDEX: i64 = u32::MAX as i64 - 1;

fn sparse(mut pairs: Vec<(i64, f64)>, out: &mut Vec<u8>) -> Result<(), String> {
    pairs.sort_by_key(|p| p.0);
    for (k, w) in pairs.windows(2).enumerate() {
        if w[0].0 == w[1].0 {
            return Err(format!("index {} appears twice (pair {k} and the next)", w[0].0));
        }
    }
    for &(index, value) in &pairs {
        if !(0..=MAX_SPARSE_INDEX).contains(&index) {
            return Err(format!("index {index} is outside 0..={MAX_SPARSE_INDEX}"));
        }
        let v = value as f32;
        if !v.is_finite() || v < 0.0 {
            return Err(format!(
                "the value of index {index} ({value}) is not a finite number ≥ 0"
            ));
        }
        out.extend_from_slice(&(index as u32).to_le_bytes());
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(())
}

fn is_bytes(t: &Arrow) -> bool {
    matches!(t, Arrow::Binary | Arrow::LargeBinary | Arrow::FixedSizeBinary(_))
}

fn is_integer(t: &Arrow) -> bool {
    t.is_integer()
}

fn is_float(t: &Arrow) -> bool {
    matches!(t, Arrow::Float32 | Arrow::Float64)
}

fn list_child(t: &Arrow) -> Option<&Arrow> {
    match t {
        Arrow::List(f) | Arrow::LargeList(f) | Arrow::FixedSizeList(f, _) => Some(f.data_type()),
        _ => None,
    }
}

/// A map of integer or string index to number, or a struct of `indices` and `values` lists.
fn sparse_shape(t: &Arrow) -> bool {
    let numeric = |t: &Arrow| is_integer(t) || is_float(t);
    match t {
        Arrow::Map(entries, _) => match entries.data_type() {
            Arrow::Struct(kv) if kv.len() == 2 => {
                let key = kv[0].data_type();
                (is_integer(key) || matches!(key, Arrow::Utf8 | Arrow::LargeUtf8)) && numeric(kv[1].data_type())
            }
            _ => false,
        },
        Arrow::Struct(fields) => {
            let list_of = |name: &str, ok: &dyn Fn(&Arrow) -> bool| {
                fields
                    .iter()
                    .find(|f| f.name() == name)
                    .and_then(|f| list_child(f.data_type()))
                    .is_some_and(ok)
            };
            list_of("indices", &is_integer) && list_of("values", &numeric)
        }
        _ => false,
    }
}

fn bytes_at(a: &dyn Array, row: usize) -> &[u8] {
    match a.data_type() {
        Arrow::Binary => a.as_binary::<i32>().value(row),
        Arrow::LargeBinary => a.as_binary::<i64>().value(row),
        _ => a.as_fixed_size_binary().value(row),
    }
}

fn str_at(a: &dyn Array, row: usize) -> &str {
    match a.data_type() {
        Arrow::LargeUtf8 => a.as_string::<i64>().value(row),
        _ => a.as_string::<i32>().value(row),
    }
}

#[cfg(test)]
#[path = "vectors_tests.rs"]
mod tests;
