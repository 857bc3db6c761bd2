//! The planning-time check of vector targets: every source row of every vector column is
//! normalized once (and dropped), so that a bad vector is refused, with its file and row, before
//! anything is written. Reads only the vector columns.

use futures_util::StreamExt;
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use parquet::arrow::ProjectionMask;

use crate::error::{BackfillError, Result};
use crate::plan::{NewField, SourceFile};
use crate::source::ObjectReader;
use crate::store::Store;

/// Checks every row of the vector targets among `new_fields`; nothing when there are none.
pub async fn check_vectors(store: &Store, files: &[SourceFile], new_fields: &[NewField]) -> Result<()> {
    let vectors: Vec<&NewField> = new_fields.iter().filter(|f| f.vector.is_some()).collect();
    if vectors.is_empty() {
        return Ok(());
    }
    for f in files {
        check_file(store, f, &vectors).await?;
    }
    Ok(())
}

async fn check_file(store: &Store, f: &SourceFile, vectors: &[&NewField]) -> Result<()> {
    let what = store.display(&f.key);
    let b = ParquetRecordBatchStreamBuilder::new(ObjectReader::new(store.clone(), f.key.clone(), f.size))
        .await
        .map_err(|e| BackfillError::data_read(&what, e))?;
    let idx = vectors
        .iter()
        .map(|nf| {
            b.schema()
                .index_of(nf.column())
                .map_err(|e| BackfillError::data_read(&what, e))
        })
        .collect::<Result<Vec<_>>>()?;
    let mask = ProjectionMask::roots(b.parquet_schema(), idx.iter().copied());
    let mut stream = b
        .with_projection(mask)
        .with_batch_size(16 * 1024)
        .build()
        .map_err(|e| BackfillError::data_read(&what, e))?;
    let mut first_row = 0usize;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| BackfillError::data_read(&what, e))?;
        for nf in vectors {
            let target = nf.vector.expect("vectors only");
            let col = batch.column_by_name(nf.column()).expect("projected");
            if let Err(e) = crate::vectors::normalize(target, col.as_ref()) {
                return Err(BackfillError::schema(format!(
                    "{what}: row {} (0-based) of column `{}` cannot fill vector field `{}` ({:?}, dim {}): {}",
                    first_row + e.row,
                    nf.column(),
                    nf.name,
                    target.kind,
                    target.dim,
                    e.why
                ))
                .with_path(what.clone()));
            }
        }
        first_row += batch.num_rows();
    }
    Ok(())
}
