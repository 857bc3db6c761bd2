use std::sync::Arc;

use arrow_array::builder::{
    FixedSizeListBuilder, Float32Builder, Int64Builder, ListBuilder, MapBuilder, StringBuilder,
};
use arrow_array::{BinaryArray, FixedSizeBinaryArray, Float64Array, Int16Array, ListArray, StringArray};
use arrow_schema::{Field, Fields};

use super::*;
use VectorKind::*;

fn t(kind: VectorKind, dim: u32) -> VectorTarget {
    VectorTarget { kind, dim }
}

fn rows(a: &ArrayRef) -> Vec<Option<Vec<u8>>> {
    let b = a.as_binary::<i32>();
    (0..b.len())
        .map(|i| b.is_valid(i).then(|| b.value(i).to_vec()))
        .collect()
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|f| f.to_le_bytes()).collect()
}

fn f64_lists(rows: &[Option<Vec<Option<f64>>>]) -> ListArray {
    ListArray::from_iter_primitive::<Float64Type, _, _>(rows.iter().cloned())
}

fn int_lists(rows: &[Option<Vec<Option<i64>>>]) -> ListArray {
    ListArray::from_iter_primitive::<Int64Type, _, _>(rows.iter().cloned())
}

fn err(target: VectorTarget, a: &dyn Array) -> RowError {
    normalize(target, a).expect_err("refused")
}

#[test]
fn float_vectors_from_lists_json_and_bytes_give_the_same_little_endian_rows() {
    let want = f32s(&[1.0, -2.5, 3.0]);
    let list = f64_lists(&[Some(vec![Some(1.0), Some(-2.5), Some(3.0)]), None]);
    assert_eq!(
        rows(&normalize(t(FloatVector, 3), &list).unwrap()),
        vec![Some(want.clone()), None]
    );
    let json = StringArray::from(vec![Some("[1, -2.5, 3.0]"), None]);
    assert_eq!(
        rows(&normalize(t(FloatVector, 3), &json).unwrap()),
        vec![Some(want.clone()), None]
    );
    let bin = BinaryArray::from_opt_vec(vec![Some(&want[..]), None]);
    assert_eq!(
        rows(&normalize(t(FloatVector, 3), &bin).unwrap()),
        vec![Some(want.clone()), None]
    );
    let fixed = FixedSizeBinaryArray::try_from_iter([want.clone()].into_iter()).unwrap();
    assert_eq!(
        rows(&normalize(t(FloatVector, 3), &fixed).unwrap()),
        vec![Some(want.clone())]
    );
    let mut fsl = FixedSizeListBuilder::new(Float32Builder::new(), 3);
    fsl.values().append_slice(&[1.0, -2.5, 3.0]);
    fsl.append(true);
    assert_eq!(
        rows(&normalize(t(FloatVector, 3), &fsl.finish()).unwrap()),
        vec![Some(want)]
    );
    let ints = int_lists(&[Some(vec![Some(1), Some(2)])]);
    assert_eq!(
        rows(&normalize(t(FloatVector, 2), &ints).unwrap()),
        vec![Some(f32s(&[1.0, 2.0]))]
    );
}

#[test]
fn float_vectors_refuse_a_wrong_dimension_a_null_element_and_non_finite_values() {
    let short = f64_lists(&[Some(vec![Some(1.0), Some(2.0)]), Some(vec![Some(1.0)])]);
    assert_eq!(
        err(t(FloatVector, 2), &short),
        RowError {
            row: 1,
            why: "has 1 elements, the field needs 2".into()
        }
    );
    let null_element = f64_lists(&[Some(vec![Some(1.0), None])]);
    assert!(err(t(FloatVector, 2), &null_element).why.contains("element 1 is null"));
    let too_big = f64_lists(&[Some(vec![Some(1e39), Some(0.0)])]);
    assert!(err(t(FloatVector, 2), &too_big).why.contains("not a finite float32"));
    let nan = BinaryArray::from_vec(vec![&f32s(&[f32::NAN])[..]]);
    assert!(err(t(FloatVector, 1), &nan).why.contains("not a finite float32"));
    let wrong_bytes = BinaryArray::from_vec(vec![&[0u8; 7][..]]);
    assert_eq!(
        err(t(FloatVector, 2), &wrong_bytes).why,
        "has 7 bytes, the field needs 8"
    );
    let not_json = StringArray::from(vec!["[1, 2"]);
    assert!(err(t(FloatVector, 2), &not_json).why.starts_with("is not JSON"));
    let object = StringArray::from(vec!["{\"1\": 2}"]);
    assert_eq!(err(t(FloatVector, 2), &object).why, "is not a JSON array");
}

#[test]
fn binary_vectors_take_dim_over_eight_bytes_in_minus_128_to_255() {
    let ok = int_lists(&[Some(vec![Some(-1), Some(255)])]);
    assert_eq!(
        rows(&normalize(t(BinaryVector, 16), &ok).unwrap()),
        vec![Some(vec![0xff, 0xff])]
    );
    let out_of_range = int_lists(&[Some(vec![Some(256), Some(0)])]);
    assert_eq!(
        err(t(BinaryVector, 16), &out_of_range).why,
        "element 0 (256) is outside -128..=255"
    );
    let wrong_len = int_lists(&[Some(vec![Some(1)])]);
    assert_eq!(
        err(t(BinaryVector, 16), &wrong_len).why,
        "has 1 elements, the field needs 2"
    );
    assert!(!accepts(BinaryVector, &Arrow::Utf8), "no JSON form, as the reference");
    assert!(
        !accepts(BinaryVector, &f64_lists(&[]).data_type().clone()),
        "floats are not bits"
    );
}

#[test]
fn int8_vectors_take_integers_in_range_as_lists_or_json() {
    let ok = int_lists(&[Some(vec![Some(-128), Some(127)])]);
    assert_eq!(
        rows(&normalize(t(Int8Vector, 2), &ok).unwrap()),
        vec![Some(vec![0x80, 0x7f])]
    );
    let json = StringArray::from(vec!["[-128, 127]"]);
    assert_eq!(
        rows(&normalize(t(Int8Vector, 2), &json).unwrap()),
        vec![Some(vec![0x80, 0x7f])]
    );
    let high = int_lists(&[Some(vec![Some(0), Some(128)])]);
    assert_eq!(
        err(t(Int8Vector, 2), &high).why,
        "element 1 (128) is outside -128..=127"
    );
    let fraction = StringArray::from(vec!["[0.5, 1]"]);
    assert_eq!(
        err(t(Int8Vector, 2), &fraction).why,
        "element 0 (0.5) is not an integer"
    );
}

#[test]
fn half_vectors_convert_floats_and_take_bits_or_bytes_as_they_are() {
    let floats = f64_lists(&[Some(vec![Some(1.0), Some(-2.0)])]);
    // float16 1.0 = 0x3c00, -2.0 = 0xc000; bfloat16 1.0 = 0x3f80, -2.0 = 0xc000.
    assert_eq!(
        rows(&normalize(t(Float16Vector, 2), &floats).unwrap()),
        vec![Some(vec![0x00, 0x3c, 0x00, 0xc0])]
    );
    assert_eq!(
        rows(&normalize(t(BFloat16Vector, 2), &floats).unwrap()),
        vec![Some(vec![0x80, 0x3f, 0x00, 0xc0])]
    );
    let bits = ListArray::new(
        Arc::new(Field::new("item", Arrow::Int16, true)),
        arrow_buffer::OffsetBuffer::from_lengths([2]),
        Arc::new(Int16Array::from(vec![0x3c00, -16384])),
        None,
    );
    assert_eq!(
        rows(&normalize(t(Float16Vector, 2), &bits).unwrap()),
        vec![Some(vec![0x00, 0x3c, 0x00, 0xc0])]
    );
    let too_big = f64_lists(&[Some(vec![Some(70000.0), Some(0.0)])]);
    assert!(err(t(Float16Vector, 2), &too_big)
        .why
        .contains("outside the float16 range"));
    let inf_bits = BinaryArray::from_vec(vec![&[0x00, 0x7c][..]]);
    assert!(err(t(Float16Vector, 1), &inf_bits)
        .why
        .contains("NaN or an infinity in float16"));
    let bf16_nan = BinaryArray::from_vec(vec![&[0xc0, 0x7f][..]]);
    assert!(err(t(BFloat16Vector, 1), &bf16_nan).why.contains("in bfloat16"));
}

#[test]
fn sparse_vectors_from_every_form_are_sorted_index_value_pairs() {
    let want: Vec<u8> = [(3u32, 0.5f32), (7, 1.0)]
        .iter()
        .flat_map(|(i, v)| i.to_le_bytes().into_iter().chain(v.to_le_bytes()))
        .collect();
    let json = StringArray::from(vec![Some("{\"7\": 1.0, \"3\": 0.5}"), None]);
    assert_eq!(
        rows(&normalize(t(SparseFloatVector, 0), &json).unwrap()),
        vec![Some(want.clone()), None]
    );

    let mut map = MapBuilder::new(None, Int64Builder::new(), Float32Builder::new());
    map.keys().append_slice(&[7, 3]);
    map.values().append_slice(&[1.0, 0.5]);
    map.append(true).unwrap();
    assert_eq!(
        rows(&normalize(t(SparseFloatVector, 0), &map.finish()).unwrap()),
        vec![Some(want.clone())]
    );

    let mut keyed = MapBuilder::new(None, StringBuilder::new(), Float32Builder::new());
    keyed.keys().append_value("3");
    keyed.keys().append_value("7");
    keyed.values().append_slice(&[0.5, 1.0]);
    keyed.append(true).unwrap();
    assert_eq!(
        rows(&normalize(t(SparseFloatVector, 0), &keyed.finish()).unwrap()),
        vec![Some(want.clone())]
    );

    let indices = int_lists(&[Some(vec![Some(7), Some(3)])]);
    let values = f64_lists(&[Some(vec![Some(1.0), Some(0.5)])]);
    let fields = Fields::from(vec![
        Field::new("indices", indices.data_type().clone(), true),
        Field::new("values", values.data_type().clone(), true),
    ]);
    let s = StructArray::new(fields, vec![Arc::new(indices) as ArrayRef, Arc::new(values)], None);
    assert_eq!(
        rows(&normalize(t(SparseFloatVector, 0), &s).unwrap()),
        vec![Some(want.clone())]
    );

    let bin = BinaryArray::from_vec(vec![&want[..]]);
    assert_eq!(
        rows(&normalize(t(SparseFloatVector, 0), &bin).unwrap()),
        vec![Some(want)]
    );
}

#[test]
fn sparse_vectors_refuse_duplicates_negative_values_and_reserved_indices() {
    let dup = StringArray::from(vec!["{\"1\": 1, \"01\": 2}"]);
    assert_eq!(
        err(t(SparseFloatVector, 0), &dup).why,
        "index 1 appears twice (pair 0 and the next)"
    );
    let negative = StringArray::from(vec!["{\"1\": -1}"]);
    assert!(err(t(SparseFloatVector, 0), &negative)
        .why
        .contains("not a finite number ≥ 0"));
    let reserved = StringArray::from(vec!["{\"4294967295\": 1}"]);
    assert!(err(t(SparseFloatVector, 0), &reserved)
        .why
        .contains("outside 0..=4294967294"));
    let ragged = BinaryArray::from_vec(vec![&[0u8; 12][..]]);
    assert!(err(t(SparseFloatVector, 0), &ragged).why.contains("not a whole number"));
    assert!(
        !accepts(SparseFloatVector, f64_lists(&[]).data_type()),
        "a dense list is not sparse"
    );
}

#[test]
fn a_column_of_a_form_the_kind_does_not_take_is_refused_with_the_forms() {
    let col = Float64Array::from(vec![1.0]);
    let e = err(t(FloatVector, 1), &col);
    assert!(e.why.contains("Float64 is not a list of numbers"), "{}", e.why);
    let lists = ListBuilder::new(StringBuilder::new()).finish();
    assert!(!accepts(FloatVector, lists.data_type()));
}
