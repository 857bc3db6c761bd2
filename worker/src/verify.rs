//! The lifecycle's `verify` step: a sample of source rows, spread evenly over the source, is
//! read with their keys; Milvus is queried for those keys after the commit; every new field of
//! every row found must hold what the mode says. Reading the sample touches only the row
//! groups that hold it.

use std::collections::HashMap;

use arrow_array::cast::AsArray;
use arrow_array::ArrayRef;
use arrow_schema::DataType;
use futures_util::StreamExt;
use parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use parquet::arrow::ProjectionMask;

use crate::error::{BackfillError, Result};
use crate::milvus_post::{QueriedRows, Value};
use crate::plan::{Mode, NewField, Plan, SourceFile};
use crate::source::ObjectReader;
use crate::store::Store;

/// Global row numbers of `n` rows spread evenly over `total` (all of them when fewer).
pub fn sample_rows(total: u64, n: u32) -> Vec<u64> {
    let n = u64::from(n).min(total);
    (0..n).map(|i| i * total / n).collect()
}

/// How the sampled rows compared.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Verdict {
    pub sampled: usize,
    /// Sampled keys Milvus holds (a source row whose key is in no segment is not backfilled).
    pub found: usize,
    /// Values compared (found rows × new fields).
    pub compared: usize,
    /// `coalesce` values that differ from the source on a field that held data before: the
    /// existing value may rightly have won, so they are not counted as mismatches.
    pub lenient: usize,
    pub mismatches: usize,
    /// The first few mismatches, each naming the key, the field and both values.
    pub examples: Vec<String>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.mismatches == 0
    }

    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} sampled source rows, {} found in Milvus, {} values compared, {} mismatches",
            self.sampled, self.found, self.compared, self.mismatches
        );
        if self.lenient > 0 {
            s += &format!(
                " ({} coalesce values kept an existing value and were not counted)",
                self.lenient
            );
        }
        if !self.examples.is_empty() {
            s += &format!(": {}", self.examples.join("; "));
        }
        s
    }
}

/// Whether two values are the same field value (JSON compared as parsed documents).
fn same(a: &Value, b: &Value) -> bool {
    let json = |bytes: &[u8]| serde_json::from_slice::<serde_json::Value>(bytes).ok();
    match (a, b) {
        (Value::Str(s), Value::Bytes(b)) | (Value::Bytes(b), Value::Str(s)) => {
            s.as_bytes() == b.as_slice() || json(s.as_bytes()).is_some_and(|j| Some(j) == json(b))
        }
        (Value::Float(x), Value::Float(y)) => x == y || (x.is_nan() && y.is_nan()),
        _ => a == b,
    }
}

/// Compares the sample with what Milvus returned. A key Milvus returns for several rows (a join
/// key that is not the primary key) is checked on each of them.
pub fn compare(plan: &Plan, source: &QueriedRows, milvus: &QueriedRows) -> Verdict {
    const EXAMPLES: usize = 5;
    let mut by_key: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, k) in milvus.keys.iter().enumerate() {
        by_key.entry(format!("{k:?}")).or_default().push(i);
    }
    let mut v = Verdict {
        sampled: source.keys.len(),
        ..Default::default()
    };
    for (row, key) in source.keys.iter().enumerate() {
        let Some(hits) = by_key.get(&format!("{key:?}")) else {
            continue;
        };
        v.found += 1;
        for (nf, (name, expected)) in plan.new_fields.iter().zip(&source.fields) {
            let Some((_, got)) = milvus.fields.iter().find(|(n, _)| n == name) else {
                continue;
            };
            let lenient = plan.mode == Mode::Coalesce && held_data(plan, nf);
            for &hit in hits {
                v.compared += 1;
                let (want, have) = (&expected[row], &got[hit]);
                if same(want, have) {
                    continue;
                }
                if lenient && *have != Value::Null {
                    v.lenient += 1;
                    continue;
                }
                v.mismatches += 1;
                if v.examples.len() < EXAMPLES {
                    v.examples.push(format!(
                        "key {} field {name}: source {} but Milvus {}",
                        show(key),
                        show(want),
                        show(have)
                    ));
                }
            }
        }
    }
    v
}

fn held_data(plan: &Plan, nf: &NewField) -> bool {
    nf.field_id.is_some_and(|id| {
        plan.segments
            .iter()
            .any(|s| s.existing.iter().any(|e| e.field_id == id))
    })
}

/// A value as messages and the precheck's sample show it.
pub(crate) fn show(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Str(s) => format!("{s:?}"),
        Value::Bytes(b) if b.len() > 16 => format!("{} bytes", b.len()),
        Value::Bytes(b) => format!("{b:02x?}"),
    }
}

/// The sampled rows of the source: the join key and every new field, values as Milvus stores
/// them (vectors normalized to their row bytes).
pub async fn read_sample(store: &Store, plan: &Plan, n: u32) -> Result<QueriedRows> {
    let rows = sample_rows(plan.source_rows, n);
    let mut out = QueriedRows {
        keys: Vec::new(),
        fields: plan.new_fields.iter().map(|f| (f.name.clone(), Vec::new())).collect(),
    };
    for f in &plan.source_files {
        let end = f.first_row + f.rows;
        let mine: Vec<u64> = rows
            .iter()
            .filter(|r| (f.first_row..end).contains(r))
            .map(|r| r - f.first_row)
            .collect();
        if !mine.is_empty() {
            read_file_rows(store, plan, f, &mine, &mut out).await?;
        }
    }
    Ok(out)
}

/// Selects `rows` (ascending, within the file) and skips the rest.
fn selection(rows: &[u64], total: u64) -> RowSelection {
    let mut sel = Vec::new();
    let mut at = 0u64;
    for &r in rows {
        if r > at {
            sel.push(RowSelector::skip((r - at) as usize));
        }
        sel.push(RowSelector::select(1));
        at = r + 1;
    }
    if total > at {
        sel.push(RowSelector::skip((total - at) as usize));
    }
    sel.into()
}

async fn read_file_rows(store: &Store, plan: &Plan, f: &SourceFile, rows: &[u64], out: &mut QueriedRows) -> Result<()> {
    let what = store.display(&f.key);
    let err = |e: parquet::errors::ParquetError| BackfillError::data_read(&what, e);
    let b = ParquetRecordBatchStreamBuilder::new(ObjectReader::new(store.clone(), f.key.clone(), f.size))
        .await
        .map_err(err)?;
    let key_column = plan
        .source_key_column
        .as_deref()
        .unwrap_or(crate::plan::DEFAULT_KEY_COLUMN);
    let mut names = vec![key_column];
    names.extend(plan.new_fields.iter().map(|nf| nf.column()));
    let idx = names
        .iter()
        .map(|n| b.schema().index_of(n).map_err(|e| BackfillError::data_read(&what, e)))
        .collect::<Result<Vec<_>>>()?;
    let mask = ProjectionMask::roots(b.parquet_schema(), idx);
    let mut stream = b
        .with_projection(mask)
        .with_row_selection(selection(rows, f.rows))
        .build()
        .map_err(err)?;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(err)?;
        let col = |name: &str| batch.column_by_name(name).expect("projected").clone();
        out.keys
            .extend(values(&col(key_column)).map_err(|e| BackfillError::data_read(&what, e))?);
        for (nf, (_, vals)) in plan.new_fields.iter().zip(out.fields.iter_mut()) {
            let mut array = col(nf.column());
            if let Some(target) = nf.vector {
                array = crate::vectors::normalize(target, array.as_ref()).map_err(|e| {
                    BackfillError::schema(format!("{what}: column `{}` row {}: {}", nf.column(), e.row, e.why))
                })?;
            }
            vals.extend(values(&array).map_err(|e| BackfillError::data_read(&what, e))?);
        }
    }
    Ok(())
}

/// An Arrow column's values in the form Milvus' Query returns them.
fn values(a: &ArrayRef) -> std::result::Result<Vec<Value>, String> {
    use arrow_array::types::*;
    let a = a.as_ref();
    let each = |f: &dyn Fn(usize) -> Value| -> Vec<Value> {
        (0..a.len())
            .map(|i| if a.is_null(i) { Value::Null } else { f(i) })
            .collect()
    };
    Ok(match a.data_type() {
        DataType::Boolean => each(&|i| Value::Bool(a.as_boolean().value(i))),
        DataType::Int8 => each(&|i| Value::Int(a.as_primitive::<Int8Type>().value(i).into())),
        DataType::Int16 => each(&|i| Value::Int(a.as_primitive::<Int16Type>().value(i).into())),
        DataType::Int32 => each(&|i| Value::Int(a.as_primitive::<Int32Type>().value(i).into())),
        DataType::Int64 => each(&|i| Value::Int(a.as_primitive::<Int64Type>().value(i))),
        DataType::Float32 => each(&|i| Value::Float(a.as_primitive::<Float32Type>().value(i).into())),
        DataType::Float64 => each(&|i| Value::Float(a.as_primitive::<Float64Type>().value(i))),
        DataType::Utf8 => each(&|i| Value::Str(a.as_string::<i32>().value(i).to_owned())),
        DataType::LargeUtf8 => each(&|i| Value::Str(a.as_string::<i64>().value(i).to_owned())),
        DataType::Binary => each(&|i| Value::Bytes(a.as_binary::<i32>().value(i).to_vec())),
        DataType::LargeBinary => each(&|i| Value::Bytes(a.as_binary::<i64>().value(i).to_vec())),
        other => return Err(format!("verify does not compare {other} columns")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::sample_plan;

    #[test]
    fn the_sample_is_spread_over_the_whole_source() {
        assert_eq!(sample_rows(10, 5), vec![0, 2, 4, 6, 8]);
        assert_eq!(sample_rows(3, 100), vec![0, 1, 2]);
        assert!(sample_rows(0, 10).is_empty());
        let rows = sample_rows(1_000_000, 100);
        assert_eq!((rows.len(), rows[99]), (100, 990_000));
        let sel: Vec<RowSelector> = selection(&[0, 3, 4], 7).into();
        assert_eq!(
            sel,
            vec![
                RowSelector::select(1),
                RowSelector::skip(2),
                RowSelector::select(2),
                RowSelector::skip(2)
            ]
        );
    }

    fn rows(keys: Vec<i64>, score: Vec<Value>) -> QueriedRows {
        QueriedRows {
            keys: keys.into_iter().map(Value::Int).collect(),
            fields: vec![("score".into(), score)],
        }
    }

    fn plan(mode: Mode, held: bool) -> Plan {
        let mut p = sample_plan();
        p.mode = mode;
        p.new_fields.truncate(1);
        p.new_fields[0].name = "score".into();
        p.new_fields[0].field_id = Some(103);
        if held {
            p.segments.push(crate::plan::SegmentPlan {
                segment_id: 1,
                partition_id: 1,
                partition_name: "_default".into(),
                num_rows: 3,
                storage_version: 3,
                pk_binlogs: vec![],
                output_dir: "o/1".into(),
                v3: None,
                existing: vec![crate::plan::ExistingColumn {
                    field_id: 103,
                    files: vec![],
                }],
            });
        }
        p
    }

    #[test]
    fn every_found_row_must_hold_the_source_value() {
        let source = rows(vec![1, 2, 3], vec![Value::Float(0.5), Value::Null, Value::Float(1.5)]);
        // Key 3 is in no segment: not backfilled, not compared.
        let good = rows(vec![2, 1], vec![Value::Null, Value::Float(0.5)]);
        let v = compare(&plan(Mode::Replace, false), &source, &good);
        assert_eq!((v.sampled, v.found, v.compared, v.mismatches), (3, 2, 2, 0));
        assert!(v.passed());
        let bad = rows(vec![1, 2], vec![Value::Float(0.25), Value::Null]);
        let v = compare(&plan(Mode::Overwrite, false), &source, &bad);
        assert_eq!(v.mismatches, 1);
        assert!(
            v.describe().contains("key 1 field score: source 0.5 but Milvus 0.25"),
            "{}",
            v.describe()
        );
        // In coalesce an existing value may win, but only on a field that held data before.
        let v = compare(&plan(Mode::Coalesce, true), &source, &bad);
        assert_eq!((v.mismatches, v.lenient), (0, 1));
        let v = compare(&plan(Mode::Coalesce, false), &source, &bad);
        assert_eq!(v.mismatches, 1);
        // A null where the source has a value is wrong in every mode.
        let lost = rows(vec![1], vec![Value::Null]);
        assert_eq!(compare(&plan(Mode::Coalesce, true), &source, &lost).mismatches, 1);
    }

    #[test]
    fn json_compares_as_documents_and_a_repeated_key_is_checked_on_every_row() {
        assert!(same(
            &Value::Str(r#"{"a": 1}"#.into()),
            &Value::Bytes(br#"{"a":1}"#.to_vec())
        ));
        assert!(!same(
            &Value::Str(r#"{"a": 2}"#.into()),
            &Value::Bytes(br#"{"a":1}"#.to_vec())
        ));
        let source = rows(vec![7], vec![Value::Float(1.0)]);
        let milvus = rows(vec![7, 7], vec![Value::Float(1.0), Value::Float(2.0)]);
        let v = compare(&plan(Mode::Replace, false), &source, &milvus);
        assert_eq!((v.found, v.compared, v.mismatches), (1, 2, 1));
    }
}
