//! A segment's primary keys in storage order, by storage version, checked against its row count.
//! Files are fetched a few ahead and decoded off the IO threads; the arrays come back in row
//! order, ready to be pushed into a (group's) key index.

use arrow_array::{Array, ArrayRef};
use futures_util::{StreamExt, TryStreamExt};

use crate::binlog;
use crate::error::{BackfillError, Result};
use crate::keys::key_accepts;
use crate::plan::{ExistingColumn, SegmentPlan, TaskPlan, V3File, V3Segment};
use crate::store::{Store, StoreError};
use crate::v3_keys;

/// The segment's primary keys in storage order, by its storage version.
pub(super) async fn segment_keys(storage: &Store, plan: &TaskPlan, seg: &SegmentPlan) -> Result<Vec<ArrayRef>> {
    let num_rows = super::supported_rows(seg)?;
    let keys = match (&seg.v3, seg.storage_version) {
        (Some(v3), _) => v3_keys(storage, plan, seg, v3, num_rows).await,
        (None, 2) => v2_keys(storage, plan, seg, num_rows).await,
        (None, _) => v1_keys(storage, plan, seg, num_rows).await,
    }?;
    // A physical Int8/16/32 join key is indexed and routed as Int64.
    Ok(keys.into_iter().map(crate::keys::widen).collect())
}

/// Reads the PK binlogs in row order and checks that they hold exactly the rows Milvus reports.
async fn v1_keys(storage: &Store, plan: &TaskPlan, seg: &SegmentPlan, num_rows: u32) -> Result<Vec<ArrayRef>> {
    let mut files = futures_util::stream::iter(seg.pk_binlogs.iter().map(|b| async move {
        let data = fetch(storage, seg, &b.key, |file| {
            format!("binlog {file} is gone (compacted or garbage-collected since planning?); plan again")
        })
        .await?;
        // Decoding is CPU work; keep it off the IO threads.
        let key = b.key.clone();
        tokio::task::spawn_blocking(move || binlog::read_values(data).map(|v| (key, v)))
            .await
            .map_err(|e| BackfillError::unexpected(e.to_string()))?
            .map_err(|e| BackfillError::data_read(storage.display(&b.key), e).with_segment(seg.segment_id))
    }))
    .buffered(4);
    let mut out = Vec::new();
    while let Some((key, (desc, arrays))) = files.try_next().await? {
        if desc.field_id != plan.pk_field.field_id || desc.segment_id != seg.segment_id {
            return Err(BackfillError::segment(
                seg.segment_id,
                format!(
                    "{} describes field {} of segment {}, expected field {} of segment {}",
                    storage.display(&key),
                    desc.field_id,
                    desc.segment_id,
                    plan.pk_field.field_id,
                    seg.segment_id
                ),
            ));
        }
        for a in &arrays {
            check_array(plan, a.as_ref())
                .map_err(|e| BackfillError::data_read(storage.display(&key), e).with_segment(seg.segment_id))?;
        }
        out.extend(arrays);
    }
    check_rows(seg, &out, num_rows, |found| {
        format!("its primary key binlogs hold {found} rows but Milvus reports {num_rows}; the files are stale or incomplete, plan again")
    })?;
    Ok(out)
}

/// Reads a V3 segment's primary keys from its PK column group.
async fn v3_keys(
    storage: &Store,
    plan: &TaskPlan,
    seg: &SegmentPlan,
    v3: &V3Segment,
    num_rows: u32,
) -> Result<Vec<ArrayRef>> {
    let field_id = plan.pk_field.field_id;
    let mut files = futures_util::stream::iter(v3.pk_files.iter().map(|f| async move {
        let data = fetch(storage, seg, &f.key, |file| {
            format!(
                "data file {file} of manifest version {} is gone (compacted or garbage-collected since the snapshot?)",
                v3.manifest_version
            )
        })
        .await?;
        let (start, end) = (f.start_index, f.end_index);
        // Decoding is CPU work; keep it off the IO threads.
        tokio::task::spawn_blocking(move || v3_keys::read_range(data, field_id, start, end))
            .await
            .map_err(|e| BackfillError::unexpected(e.to_string()))?
            .map_err(|e| BackfillError::data_read(storage.display(&f.key), e).with_segment(seg.segment_id))
            .map(|a| (f, a))
    }))
    .buffered(4);
    let mut out = Vec::new();
    while let Some((f, arrays)) = files.try_next().await? {
        for a in &arrays {
            check_array(plan, a.as_ref())
                .map_err(|e| BackfillError::data_read(storage.display(&f.key), e).with_segment(seg.segment_id))?;
        }
        out.extend(arrays);
    }
    check_rows(seg, &out, num_rows, |found| {
        format!(
            "the primary key files of manifest version {} hold {found} rows but the manifest says {num_rows}",
            v3.manifest_version
        )
    })?;
    Ok(out)
}

/// Reads a V2 segment's primary keys: the PK's column group files in ascending log ID, whole.
async fn v2_keys(storage: &Store, plan: &TaskPlan, seg: &SegmentPlan, num_rows: u32) -> Result<Vec<ArrayRef>> {
    let files: Vec<V3File> = seg
        .pk_binlogs
        .iter()
        .map(|b| V3File {
            key: b.key.clone(),
            start_index: 0,
            end_index: b.rows,
        })
        .collect();
    let as_v3 = V3Segment {
        base_path: seg.output_dir.clone(),
        manifest_version: 0,
        pk_files: files,
    };
    v3_keys(storage, plan, seg, &as_v3, num_rows).await
}

/// A planned file's bytes; a file gone since planning fails the segment with `gone(file)`.
async fn fetch(
    storage: &Store,
    seg: &SegmentPlan,
    key: &str,
    gone: impl FnOnce(String) -> String,
) -> Result<bytes::Bytes> {
    storage.get(key).await.map_err(|e| match e {
        StoreError::NotFound(_) => BackfillError::segment(seg.segment_id, gone(storage.display(key))),
        e => BackfillError::connection(e.to_string()).with_segment(seg.segment_id),
    })
}

/// Keys must be non-null and of the collection's primary key type before any index takes them.
fn check_array(plan: &TaskPlan, keys: &dyn Array) -> std::result::Result<(), String> {
    if keys.null_count() > 0 {
        return Err(format!("{} null primary keys", keys.null_count()));
    }
    if !key_accepts(&plan.pk_field, keys.data_type()) {
        return Err(format!(
            "expected {} keys in join key field `{}`, found {}",
            crate::keys::key_type_name(&plan.pk_field),
            plan.pk_field.name,
            keys.data_type()
        ));
    }
    Ok(())
}

/// The files must hold exactly the rows the plan expects; `message` says so for the rows found.
fn check_rows(seg: &SegmentPlan, arrays: &[ArrayRef], expected: u32, message: impl Fn(u64) -> String) -> Result<()> {
    let found: u64 = arrays.iter().map(|a| a.len() as u64).sum();
    if found != u64::from(expected) {
        return Err(BackfillError::segment(seg.segment_id, message(found)));
    }
    Ok(())
}

/// The segment's existing values of each new field (`fields`: the joined names and types, in
/// plan order), row-aligned; `None` for a field the segment holds no data for. Only the modes
/// that read existing values plan any.
pub(super) async fn existing_values(
    storage: &Store,
    plan: &TaskPlan,
    seg: &SegmentPlan,
    fields: &[(String, arrow_schema::DataType)],
) -> Result<Vec<Option<ArrayRef>>> {
    let mut out = Vec::with_capacity(fields.len());
    for (nf, (name, want)) in plan.new_fields.iter().zip(fields) {
        let Some(col) = seg.existing.iter().find(|c| Some(c.field_id) == nf.field_id) else {
            out.push(None);
            continue;
        };
        let arrays = existing_column(storage, seg, col).await?;
        let values = concat(&arrays).map_err(|e| BackfillError::unexpected(e).with_segment(seg.segment_id))?;
        if values.len() as u64 != seg.num_rows {
            return Err(BackfillError::segment(
                seg.segment_id,
                format!(
                    "the files holding field `{name}`'s existing values hold {} rows but the segment has {}; plan again",
                    values.len(),
                    seg.num_rows
                ),
            ));
        }
        let values = conform(values, want).map_err(|e| {
            BackfillError::schema(format!("field `{name}`: its existing values are {e}")).with_segment(seg.segment_id)
        })?;
        out.push(Some(values));
    }
    Ok(out)
}

/// One existing column's arrays in row order, its files fetched a few ahead.
async fn existing_column(storage: &Store, seg: &SegmentPlan, col: &ExistingColumn) -> Result<Vec<ArrayRef>> {
    let field_id = col.field_id;
    let mut files = futures_util::stream::iter(col.files.iter().map(|f| async move {
        let data = fetch(storage, seg, &f.key, |file| {
            format!("data file {file} of field {field_id} is gone (compacted since planning?); plan again")
        })
        .await?;
        let (start, end) = (f.start_index, f.end_index);
        tokio::task::spawn_blocking(move || v3_keys::read_column(data, field_id, start, end))
            .await
            .map_err(|e| BackfillError::unexpected(e.to_string()))?
            .map_err(|e| BackfillError::data_read(storage.display(&f.key), e).with_segment(seg.segment_id))
    }))
    .buffered(4);
    let mut out = Vec::new();
    while let Some(arrays) = files.try_next().await? {
        out.extend(arrays);
    }
    Ok(out)
}

fn concat(arrays: &[ArrayRef]) -> std::result::Result<ArrayRef, String> {
    match arrays {
        [one] => Ok(one.clone()),
        _ => {
            let refs: Vec<&dyn Array> = arrays.iter().map(|a| a.as_ref()).collect();
            arrow_select::concat::concat(&refs).map_err(|e| e.to_string())
        }
    }
}

/// Existing values in the joined column's type: the same type, or the other string width
/// (Milvus stores VarChar as Utf8; a source may hold LargeUtf8).
fn conform(values: ArrayRef, want: &arrow_schema::DataType) -> std::result::Result<ArrayRef, String> {
    use arrow_array::{LargeStringArray, StringArray};
    use arrow_schema::DataType as A;
    let have = values.data_type().clone();
    match (&have, want) {
        _ if &have == want => Ok(values),
        (A::Utf8, A::LargeUtf8) => {
            let s = values.as_any().downcast_ref::<StringArray>().expect("Utf8");
            Ok(std::sync::Arc::new(s.iter().collect::<LargeStringArray>()))
        }
        (A::LargeUtf8, A::Utf8) => {
            let s = values.as_any().downcast_ref::<LargeStringArray>().expect("LargeUtf8");
            Ok(std::sync::Arc::new(s.iter().collect::<StringArray>()))
        }
        // A dense vector column written non-nullable (FixedSizeBinary) merged with normalized
        // vectors (Binary): the same per-row bytes.
        (A::FixedSizeBinary(_), A::Binary) => {
            use arrow_array::cast::AsArray;
            let s = values.as_fixed_size_binary();
            Ok(std::sync::Arc::new(s.iter().collect::<arrow_array::BinaryArray>()))
        }
        _ => Err(format!(
            "{have} in the segment but {want} in the source: they must be the same type"
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Array, ArrayRef, Float64Array, LargeStringArray, StringArray};
    use arrow_schema::DataType;

    use super::conform;

    #[test]
    fn existing_fixed_size_vectors_become_binary_like_normalized_ones() {
        let fixed = arrow_array::FixedSizeBinaryArray::try_from_sparse_iter_with_size(
            [Some(vec![1u8, 2]), None].into_iter(),
            2,
        )
        .unwrap();
        let got = conform(Arc::new(fixed), &DataType::Binary).unwrap();
        let b = got.as_any().downcast_ref::<arrow_array::BinaryArray>().unwrap();
        assert_eq!((b.value(0), b.is_null(1)), (&[1u8, 2][..], true));
    }

    #[test]
    fn existing_values_take_the_joined_type_or_say_why_not() {
        let utf8: ArrayRef = Arc::new(StringArray::from(vec![Some("a"), None]));
        let large = conform(utf8.clone(), &DataType::LargeUtf8).unwrap();
        let large = large.as_any().downcast_ref::<LargeStringArray>().unwrap();
        assert_eq!((large.value(0), large.is_null(1)), ("a", true));
        assert!(Arc::ptr_eq(&conform(utf8.clone(), &DataType::Utf8).unwrap(), &utf8));
        let doubles: ArrayRef = Arc::new(Float64Array::from(vec![1.0]));
        let e = conform(doubles, &DataType::Float32).unwrap_err();
        assert_eq!(
            e,
            "Float64 in the segment but Float32 in the source: they must be the same type"
        );
    }
}
