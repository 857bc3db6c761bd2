//! The user's new-field Parquet: listing, schema checks, key checks, and the
//! streaming read that keeps only the rows whose key is in one segment.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow_array::{Array, BooleanArray, Int64Array, LargeStringArray, RecordBatch, StringArray};
use arrow_schema::{DataType, SchemaRef};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use parquet::arrow::arrow_reader::{ArrowPredicateFn, ArrowReaderMetadata, ArrowReaderOptions, RowFilter};
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::arrow::ProjectionMask;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use parquet::file::statistics::Statistics;

use crate::error::{BackfillError, Result};
use crate::keys::{KeyIndex, KeyRange, PkType};
use crate::plan::{NewField, PkField, SourceFile};
use crate::store::{ObjectMeta, Store};

/// The join key's column in the exchange's parts, and in a source without `spec.columnMapping`.
pub const KEY_COLUMN: &str = crate::plan::DEFAULT_KEY_COLUMN;

/// Reads byte ranges of one object through [`Store`], for the async Parquet reader.
pub struct ObjectReader {
    store: Store,
    key: String,
    size: u64,
    metadata: Option<Arc<ParquetMetaData>>,
    /// The whole object, when it was small enough to fetch in one request.
    whole: Option<Bytes>,
    /// Bytes fetched from the store, shared by the readers of one pass.
    fetched: Arc<AtomicU64>,
}

/// Objects up to this size are fetched whole: one request instead of one per column chunk.
pub const FETCH_WHOLE_BELOW: u64 = 16 * 1024 * 1024;
/// Ranges closer than this are merged into one request.
const COALESCE_GAP: u64 = 1024 * 1024;

impl ObjectReader {
    pub fn new(store: Store, key: String, size: u64) -> Self {
        Self {
            store,
            key,
            size,
            metadata: None,
            whole: None,
            fetched: Arc::default(),
        }
    }

    /// A footer already read: no fetch for it.
    pub fn with_metadata(mut self, metadata: Arc<ParquetMetaData>) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Counts this reader's fetches into `fetched`.
    pub fn counting(mut self, fetched: Arc<AtomicU64>) -> Self {
        self.fetched = fetched;
        self
    }

    /// Fetches the whole object now if it is small; later reads are served from memory.
    pub async fn prefetch_if_small(&mut self) -> Result<()> {
        if self.whole.is_none() && self.size <= FETCH_WHOLE_BELOW {
            let b = self
                .store
                .get(&self.key)
                .await
                .map_err(|e| BackfillError::data_read(self.store.display(&self.key), e))?;
            self.fetched.fetch_add(b.len() as u64, Ordering::Relaxed);
            self.whole = Some(b);
        }
        Ok(())
    }

    fn fetch(&self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            if let Some(w) = &self.whole {
                if range.end <= w.len() as u64 {
                    return Ok(w.slice(range.start as usize..range.end as usize));
                }
            }
            let b = self
                .store
                .get_range(&self.key, range)
                .await
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))?;
            self.fetched.fetch_add(b.len() as u64, Ordering::Relaxed);
            Ok(b)
        }
        .boxed()
    }

    pub async fn metadata(&mut self) -> Result<Arc<ParquetMetaData>> {
        if let Some(m) = &self.metadata {
            return Ok(m.clone());
        }
        let size = self.size;
        let what = self.store.display(&self.key);
        let md = ParquetMetaDataReader::new()
            .with_prefetch_hint(Some(64 * 1024))
            .load_and_finish(&mut *self, size)
            .await
            .map_err(|e| BackfillError::data_read(what, format!("not a readable Parquet file: {e}")))?;
        let md = Arc::new(md);
        self.metadata = Some(md.clone());
        Ok(md)
    }
}

/// What a Parquet footer says of its file: the field IDs of its top-level columns (as
/// milvus-storage tags them) and its row count. One ranged read of the footer.
pub async fn footer_fields_and_rows(store: &Store, key: &str, size: u64) -> Result<(Vec<i64>, u64)> {
    let md = ObjectReader::new(store.clone(), key.to_owned(), size)
        .metadata()
        .await?;
    let ids = md
        .file_metadata()
        .schema_descr()
        .root_schema()
        .get_fields()
        .iter()
        .filter(|f| f.get_basic_info().has_id())
        .map(|f| i64::from(f.get_basic_info().id()))
        .collect();
    Ok((ids, md.file_metadata().num_rows().max(0) as u64))
}

impl AsyncFileReader for ObjectReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        self.fetch(range)
    }

    /// Column chunks of one row group sit next to each other: fetch them in as few
    /// requests as possible.
    fn get_byte_ranges(&mut self, ranges: Vec<Range<u64>>) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            let merged = coalesce(&ranges, COALESCE_GAP);
            let mut fetched = Vec::with_capacity(merged.len());
            for r in &merged {
                fetched.push((r.start, self.fetch(r.clone()).await?));
            }
            Ok(ranges
                .iter()
                .map(|r| {
                    let (start, b) = fetched
                        .iter()
                        .find(|(s, b)| *s <= r.start && r.end <= *s + b.len() as u64)
                        .expect("every range lies in a merged range");
                    b.slice((r.start - start) as usize..(r.end - start) as usize)
                })
                .collect())
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            self.metadata()
                .await
                .map_err(|e| parquet::errors::ParquetError::General(e.message))
        }
        .boxed()
    }
}

/// Merges ranges that overlap or lie within `gap` bytes of each other.
pub fn coalesce(ranges: &[Range<u64>], gap: u64) -> Vec<Range<u64>> {
    let mut sorted: Vec<Range<u64>> = ranges.to_vec();
    sorted.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::new();
    for r in sorted {
        match out.last_mut() {
            Some(last) if r.start <= last.end + gap => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// Source files under a key or prefix: one `.parquet` object, or every `.parquet`
/// object under a prefix (Spark-style directories included), in key order.
pub async fn list_files(store: &Store, key: &str) -> Result<Vec<ObjectMeta>> {
    let not_found = || {
        BackfillError::data_read(
            store.display(key),
            "no Parquet files found: spec.source.path must name a .parquet file or a directory/prefix holding .parquet files",
        )
    };
    if key.ends_with(".parquet") {
        return match store.head(key).await {
            Ok(size) => Ok(vec![ObjectMeta {
                key: key.to_owned(),
                size,
            }]),
            Err(crate::store::StoreError::NotFound(_)) => Err(not_found()),
            Err(e) => Err(BackfillError::connection(e.to_string())),
        };
    }
    let prefix = if key.is_empty() || key.ends_with('/') {
        key.to_owned()
    } else {
        format!("{key}/")
    };
    let listed = store
        .list(&prefix)
        .await
        .map_err(|e| BackfillError::connection(e.to_string()))?;
    let files: Vec<ObjectMeta> = listed
        .into_iter()
        .filter(|o| {
            let name = o.key.rsplit('/').next().unwrap_or("");
            o.key.ends_with(".parquet") && !name.starts_with('.') && !name.starts_with('_') && o.size > 0
        })
        .collect();
    if files.is_empty() {
        return Err(not_found());
    }
    Ok(files)
}

/// The schema the source files share, checked against the collection.
#[derive(Debug, Clone)]
pub struct SourceSchema {
    pub schema: SchemaRef,
    /// The join key's column, when not `pk` (as [`crate::plan::Plan::source_key_column`]).
    pub key_column: Option<String>,
    pub new_fields: Vec<NewField>,
    pub files: Vec<SourceFile>,
    pub rows: u64,
}

impl SourceSchema {
    /// The join key's column.
    pub fn key_column(&self) -> &str {
        crate::plan::key_column_of(&self.key_column)
    }
}

/// How the source joins the collection: on the primary key, through `spec.columnMapping` if any.
#[derive(Debug, Clone, Copy)]
pub struct Join<'a> {
    pub pk: &'a PkField,
    pub mapping: Option<&'a BTreeMap<String, String>>,
}

/// Reads every file's footer; checks the key column and the new fields.
pub async fn inspect(
    store: &Store,
    files: &[ObjectMeta],
    join: &Join<'_>,
    existing_fields: &[String],
) -> Result<SourceSchema> {
    let mut schema: Option<SchemaRef> = None;
    let mut out = Vec::with_capacity(files.len());
    let mut first_row = 0u64;
    for f in files {
        let mut r = ObjectReader::new(store.clone(), f.key.clone(), f.size);
        let md = r.metadata().await?;
        let builder = ParquetRecordBatchStreamBuilder::new(r)
            .await
            .map_err(|e| BackfillError::data_read(store.display(&f.key), e))?;
        let s = builder.schema().clone();
        match &schema {
            None => schema = Some(s.clone()),
            Some(first) => {
                if !same_columns(first, &s) {
                    return Err(BackfillError::schema(format!(
                        "{} has columns {} but {} has {}; all source files must share one schema",
                        store.display(&f.key),
                        describe(&s),
                        store.display(&files[0].key),
                        describe(first)
                    )));
                }
            }
        }
        let rows = md.file_metadata().num_rows() as u64;
        out.push(SourceFile {
            key: f.key.clone(),
            size: f.size,
            rows,
            first_row,
        });
        first_row += rows;
    }
    let schema = schema.expect("at least one file");
    let (key_column, new_fields) = check_schema(&schema, join, existing_fields)?;
    Ok(SourceSchema {
        schema,
        key_column,
        new_fields,
        files: out,
        rows: first_row,
    })
}

fn same_columns(a: &SchemaRef, b: &SchemaRef) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields()
            .iter()
            .zip(b.fields())
            .all(|(x, y)| x.name() == y.name() && x.data_type() == y.data_type())
}

/// The columns with their types, for error messages.
pub(crate) fn describe(s: &arrow_schema::Schema) -> String {
    let cols: Vec<String> = s
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect();
    format!("[{}]", cols.join(", "))
}

/// The source columns ([`crate::columns::resolve`]) with the key column of the collection's
/// PK type, and no new field reusing the name of an existing collection field.
/// Returns the key column as the plan records it, and the new fields.
pub fn check_schema(
    schema: &SchemaRef,
    join: &Join<'_>,
    existing_fields: &[String],
) -> Result<(Option<String>, Vec<NewField>)> {
    let cols = crate::columns::resolve(schema, join.pk, join.mapping)?;
    let key = schema.field_with_name(&cols.key).expect("resolved from the schema");
    if !crate::keys::key_accepts(join.pk, key.data_type()) {
        let want = crate::keys::key_type_name(join.pk);
        return Err(BackfillError::schema(format!(
            "source column `{}` (the join key) is {}, but the join key field `{}` is {want}: write it as {want}",
            cols.key,
            key.data_type(),
            join.pk.name,
        )));
    }
    let new_fields: Vec<NewField> = cols
        .fields
        .iter()
        .map(|(column, name)| NewField {
            vector: None,
            name: name.clone(),
            arrow_type: schema
                .field_with_name(column)
                .expect("resolved from the schema")
                .data_type()
                .to_string(),
            field_id: None,
            source_column: (column != name).then(|| column.clone()),
        })
        .collect();
    let clashes: Vec<&str> = new_fields
        .iter()
        .filter(|f| existing_fields.iter().any(|e| e.eq_ignore_ascii_case(&f.name)))
        .map(|f| f.name.as_str())
        .collect();
    if !clashes.is_empty() {
        return Err(BackfillError::schema(format!(
            "new field(s) {clashes:?} already exist in the collection; rename these source columns (or map them to \
             other names in spec.columnMapping)"
        )));
    }
    Ok((cols.plan_key_column(), new_fields))
}

/// Null and duplicate key counts over all source files, with a few examples.
#[derive(Debug, Default, PartialEq)]
pub struct KeyReport {
    /// The key column checked.
    pub column: String,
    pub rows: u64,
    pub nulls: u64,
    pub duplicates: u64,
    pub examples: Vec<String>,
}

impl KeyReport {
    pub fn into_result(self) -> Result<u64> {
        if self.nulls == 0 && self.duplicates == 0 {
            return Ok(self.rows);
        }
        let mut parts = Vec::new();
        if self.nulls > 0 {
            parts.push(format!("{} row(s) with a null `{}`", self.nulls, self.column));
        }
        if self.duplicates > 0 {
            parts.push(format!(
                "{} duplicate `{}` value(s), e.g. {}",
                self.duplicates,
                self.column,
                self.examples.join(", ")
            ));
        }
        Err(BackfillError::schema(format!(
            "the source has {} among {} rows; every key must appear once and not be null (deduplicate the source)",
            parts.join(" and "),
            self.rows
        )))
    }
}

/// The memory the key check may hold when planning (keys of one pass, sorted in place).
pub const KEY_CHECK_BUDGET_BYTES: u64 = 256 << 20;

/// Null and duplicate keys over all source files, within [`KEY_CHECK_BUDGET_BYTES`].
pub async fn check_keys(store: &Store, files: &[SourceFile], column: &str, pk_type: PkType) -> Result<KeyReport> {
    check_keys_within(store, files, column, pk_type, KEY_CHECK_BUDGET_BYTES).await
}

/// Reads only the key column. The keys are split by hash into as many passes as the budget
/// needs; each pass keeps and sorts the keys of its share, so two equal keys always meet in
/// the same pass, wherever they sit (another file, another row group). Nulls and rows are
/// counted in the first pass. Memory: the budget, whatever the source size; reads: the key
/// column once per pass.
pub async fn check_keys_within(
    store: &Store,
    files: &[SourceFile],
    column: &str,
    pk_type: PkType,
    budget: u64,
) -> Result<KeyReport> {
    let per_key = match pk_type {
        PkType::Int64 => 8,
        // A boxed str and its heap block, rounded up to 16 bytes.
        PkType::VarChar => 16 + row_costs(store, files, column, &[]).await?.key_bytes.div_ceil(16) * 16,
    };
    let rows: u64 = files.iter().map(|f| f.rows).sum();
    let passes = rows.saturating_mul(per_key).div_ceil(budget.max(1)).max(1);
    let mut report = KeyReport {
        column: column.to_owned(),
        ..KeyReport::default()
    };
    for pass in 0..passes {
        let mut keys = PassKeys::new(pk_type, pass, passes);
        for f in files {
            let counted = scan_key_column(store, f, column, &mut keys).await?;
            if pass == 0 {
                report.rows += counted.rows;
                report.nulls += counted.nulls;
            }
        }
        keys.find_duplicates(&mut report);
    }
    if passes > 1 {
        tracing::info!(
            passes,
            rows,
            "source keys checked in passes within the key check's memory"
        );
    }
    Ok(report)
}

/// Rows and nulls of one file's key column, its keys of this pass handed to `keys`.
struct Counted {
    rows: u64,
    nulls: u64,
}

async fn scan_key_column(store: &Store, f: &SourceFile, column: &str, keys: &mut PassKeys) -> Result<Counted> {
    let r = ObjectReader::new(store.clone(), f.key.clone(), f.size);
    let what = store.display(&f.key);
    let b = ParquetRecordBatchStreamBuilder::new(r)
        .await
        .map_err(|e| BackfillError::data_read(&what, e))?;
    let idx = b
        .schema()
        .index_of(column)
        .map_err(|e| BackfillError::data_read(&what, e))?;
    let mask = ProjectionMask::roots(b.parquet_schema(), [idx]);
    let mut stream = b
        .with_projection(mask)
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|e| BackfillError::data_read(&what, e))?;
    let mut counted = Counted { rows: 0, nulls: 0 };
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| BackfillError::data_read(&what, e))?;
        let col = crate::keys::widen(batch.column(0).clone());
        counted.rows += col.len() as u64;
        counted.nulls += col.null_count() as u64;
        keys.take(col.as_ref());
    }
    Ok(counted)
}

/// The keys of one pass: those whose hash falls in this pass's share.
struct PassKeys {
    pass: u64,
    passes: u64,
    ints: Vec<i64>,
    strs: Vec<Box<str>>,
    pk_type: PkType,
}

impl PassKeys {
    fn new(pk_type: PkType, pass: u64, passes: u64) -> Self {
        Self {
            pass,
            passes,
            ints: Vec::new(),
            strs: Vec::new(),
            pk_type,
        }
    }

    fn mine(&self, hash: u64) -> bool {
        self.passes == 1 || hash % self.passes == self.pass
    }

    fn take(&mut self, col: &dyn Array) {
        match self.pk_type {
            PkType::Int64 => {
                let a = col.as_any().downcast_ref::<Int64Array>().expect("checked type");
                let kept: Vec<i64> = a
                    .iter()
                    .flatten()
                    .filter(|&k| self.mine(crate::keys::hash_i64(k)))
                    .collect();
                self.ints.extend(kept);
            }
            PkType::VarChar => {
                let mut add = |k: &str| {
                    if self.mine(crate::keys::hash_str(k)) {
                        self.strs.push(Box::from(k));
                    }
                };
                if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
                    a.iter().flatten().for_each(&mut add);
                } else if let Some(a) = col.as_any().downcast_ref::<LargeStringArray>() {
                    a.iter().flatten().for_each(&mut add);
                }
            }
        }
    }

    fn find_duplicates(mut self, report: &mut KeyReport) {
        fn dups<T: Ord + std::fmt::Debug>(v: &mut [T], report: &mut KeyReport) {
            v.sort_unstable();
            for w in v.windows(2) {
                if w[0] == w[1] {
                    report.duplicates += 1;
                    let example = format!("{:?}", w[0]);
                    if report.examples.len() < 5 && !report.examples.contains(&example) {
                        report.examples.push(example);
                    }
                }
            }
        }
        dups(&mut self.ints, report);
        dups(&mut self.strs, report);
    }
}

/// What one source row costs in memory once decoded, in bytes: its key and its new-field
/// values. From the first file's column chunk sizes, uncompressed (close to Arrow's layout).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowCosts {
    pub key_bytes: u64,
    pub value_bytes: u64,
}

impl RowCosts {
    /// What a row costs when the footer cannot tell (an empty or unreadable first file; the
    /// scan reports an unreadable file itself).
    pub const UNKNOWN: RowCosts = RowCosts {
        key_bytes: 16,
        value_bytes: 64,
    };
}

pub async fn row_costs(
    store: &Store,
    files: &[SourceFile],
    key_column: &str,
    new_fields: &[NewField],
) -> Result<RowCosts> {
    let Some(f) = files.first() else {
        return Ok(RowCosts::UNKNOWN);
    };
    let md = ObjectReader::new(store.clone(), f.key.clone(), f.size)
        .metadata()
        .await?;
    let rows = md.file_metadata().num_rows().max(0) as u64;
    if rows == 0 {
        return Ok(RowCosts::UNKNOWN);
    }
    let (mut key, mut values) = (0u64, 0u64);
    for rg in md.row_groups() {
        for c in rg.columns() {
            let root = c.column_path().parts().first().map(String::as_str).unwrap_or("");
            let size = c.uncompressed_size().max(0) as u64;
            if root == key_column {
                key += size;
            } else if new_fields.iter().any(|nf| nf.column() == root) {
                values += size;
            }
        }
    }
    Ok(RowCosts {
        key_bytes: key.div_ceil(rows),
        value_bytes: values.div_ceil(rows),
    })
}

/// Whether a row group's key statistics can overlap a segment's key range.
fn may_match(stats: Option<&Statistics>, range: &KeyRange) -> bool {
    match (stats, range) {
        (_, KeyRange::Empty) => false,
        (Some(Statistics::Int64(s)), KeyRange::Int64(lo, hi)) => match (s.min_opt(), s.max_opt()) {
            (Some(min), Some(max)) => !(max < lo || min > hi),
            _ => true,
        },
        // A physical Int8/16/32 join key: Parquet keeps their statistics as Int32.
        (Some(Statistics::Int32(s)), KeyRange::Int64(lo, hi)) => match (s.min_opt(), s.max_opt()) {
            (Some(&min), Some(&max)) => !(i64::from(max) < *lo || i64::from(min) > *hi),
            _ => true,
        },
        (Some(Statistics::ByteArray(s)), KeyRange::VarChar(lo, hi)) => {
            match (s.min_bytes_opt(), s.max_bytes_opt()) {
                // Truncated statistics are still valid bounds for a lower/upper check.
                (Some(min), Some(max)) => !(max < lo.as_bytes() || min > hi.as_bytes()),
                _ => true,
            }
        }
        _ => true,
    }
}

/// The source rows that match one segment: their values (new fields only) and the
/// segment offsets they belong to, in the same order.
#[derive(Default)]
pub struct Matches {
    pub batches: Vec<RecordBatch>,
    /// For each matched row, in order: its first offset in the segment.
    pub offsets: Vec<u32>,
    /// Global indices (across all source files) of the matched source rows.
    pub source_rows: Vec<u64>,
    pub row_groups_read: usize,
    pub row_groups_skipped: usize,
    /// Names and Arrow types of the new fields, from the source schema.
    pub fields: Vec<(String, DataType)>,
    /// Bytes fetched from the source for this scan.
    pub bytes_read: u64,
}

/// Streams every source file, decoding the value columns only for rows whose key
/// is in `index` (a row filter evaluated on the key column first).
pub async fn read_matches(
    store: &Store,
    files: &[SourceFile],
    index: Arc<KeyIndex>,
    key_column: &str,
    new_fields: &[NewField],
    batch_size: usize,
) -> Result<Matches> {
    let range = index.range();
    let mut m = Matches::default();
    // Row groups are decoded on all cores: the scan of the source dominates a segment.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
    let value_names: Arc<Vec<ValueColumn>> = Arc::new(
        new_fields
            .iter()
            .map(|f| (f.column().to_owned(), f.name.clone(), f.vector))
            .collect(),
    );
    let fetched = Arc::new(AtomicU64::new(0));
    for f in files {
        let file = OpenedFile::open(store, f, key_column, new_fields, fetched.clone()).await?;
        if m.fields.is_empty() {
            m.fields = file.value_fields(new_fields);
        }
        file.check_rows(f)?;
        let (groups, skipped) = file.matching_groups(f.first_row, &range);
        m.row_groups_read += groups.len();
        m.row_groups_skipped += skipped;
        if groups.is_empty() {
            continue;
        }
        let scans: Vec<_> = groups
            .chunks(groups.len().div_ceil(workers))
            .map(|chunk| {
                let scan = ChunkScan {
                    whole: file.whole.clone(),
                    store: store.clone(),
                    key: f.key.clone(),
                    size: f.size,
                    meta: file.meta.clone(),
                    groups: chunk.to_vec(),
                    key_idx: file.key_idx,
                    value_idx: file.value_idx.clone(),
                    value_names: value_names.clone(),
                    index: index.clone(),
                    batch_size,
                    fetched: fetched.clone(),
                };
                tokio::spawn(scan.run())
            })
            .collect();
        // Chunks are contiguous and joined in order, so rows stay in source order.
        for scan in scans {
            let part = scan
                .await
                .map_err(|e| BackfillError::unexpected(format!("{}: scan task: {e}", file.what)))??;
            m.batches.extend(part.batches);
            m.offsets.extend(part.offsets);
            m.source_rows.extend(part.source_rows);
        }
    }
    m.bytes_read = fetched.load(Ordering::Relaxed);
    Ok(m)
}

/// A source file opened for a scan: its footer, and where the key and the planned new
/// fields are among its columns.
struct OpenedFile {
    what: String,
    /// The whole object, when it was small enough to fetch at once; the scans share it.
    whole: Option<Bytes>,
    meta: ArrowReaderMetadata,
    key_column: String,
    key_idx: usize,
    value_idx: Vec<usize>,
}

impl OpenedFile {
    async fn open(
        store: &Store,
        f: &SourceFile,
        key_column: &str,
        new_fields: &[NewField],
        fetched: Arc<AtomicU64>,
    ) -> Result<Self> {
        let what = store.display(&f.key);
        let mut r = ObjectReader::new(store.clone(), f.key.clone(), f.size).counting(fetched);
        r.prefetch_if_small().await?;
        let md = r.metadata().await?;
        let meta = ArrowReaderMetadata::try_new(md, ArrowReaderOptions::default())
            .map_err(|e| BackfillError::data_read(&what, e))?;
        let schema = meta.schema().clone();
        let key_idx = schema
            .index_of(key_column)
            .map_err(|e| BackfillError::data_read(&what, e))?;
        let value_idx = planned_columns(&what, &schema, new_fields)?;
        Ok(Self {
            what,
            whole: r.whole,
            meta,
            key_column: key_column.to_owned(),
            key_idx,
            value_idx,
        })
    }

    /// The new fields' names (not their source columns') and types.
    fn value_fields(&self, new_fields: &[NewField]) -> Vec<(String, DataType)> {
        let schema = self.meta.schema();
        written_fields(schema, new_fields, &self.value_idx)
    }

    fn check_rows(&self, f: &SourceFile) -> Result<()> {
        let rows = self.meta.metadata().file_metadata().num_rows();
        if rows as u64 != f.rows {
            return Err(BackfillError::data_read(
                &self.what,
                format!(
                    "has {rows} rows, the plan expected {}; the source changed after planning, plan again",
                    f.rows
                ),
            ));
        }
        Ok(())
    }

    /// The row groups whose key statistics can overlap `range`, and how many cannot (those
    /// are never fetched). `first_row` is the file's first global source row.
    fn matching_groups(&self, first_row: u64, range: &KeyRange) -> (Vec<GroupSpan>, usize) {
        let key_leaf = self
            .meta
            .parquet_schema()
            .columns()
            .iter()
            .position(|c| c.path().parts() == [self.key_column.as_str()]);
        let mut groups = Vec::new();
        let mut skipped = 0;
        let mut row = first_row;
        for (i, rg) in self.meta.metadata().row_groups().iter().enumerate() {
            let stats = key_leaf.and_then(|k| rg.column(k).statistics());
            if may_match(stats, range) {
                groups.push(GroupSpan {
                    index: i,
                    first_row: row,
                    rows: rg.num_rows() as u64,
                });
            } else {
                skipped += 1;
            }
            row += rg.num_rows() as u64;
        }
        (groups, skipped)
    }
}

/// The name and type of each planned new field in `schema`, in plan order.
pub(crate) fn field_types(what: &str, schema: &SchemaRef, new_fields: &[NewField]) -> Result<Vec<(String, DataType)>> {
    Ok(written_fields(
        schema,
        new_fields,
        &planned_columns(what, schema, new_fields)?,
    ))
}

/// Each new field's name and the type it is written with, its source column at `idx`.
fn written_fields(schema: &SchemaRef, new_fields: &[NewField], idx: &[usize]) -> Vec<(String, DataType)> {
    new_fields
        .iter()
        .zip(idx)
        .map(|(nf, &i)| {
            let written = crate::vectors::written_type(nf.vector, schema.field(i).data_type());
            (nf.name.clone(), written)
        })
        .collect()
}

/// The new fields' names and types, from the first source file's footer.
pub async fn planned_field_types(
    store: &Store,
    files: &[SourceFile],
    new_fields: &[NewField],
) -> Result<Vec<(String, DataType)>> {
    let Some(f) = files.first() else {
        return Err(BackfillError::unexpected("a plan without source files"));
    };
    let what = store.display(&f.key);
    let md = ObjectReader::new(store.clone(), f.key.clone(), f.size)
        .metadata()
        .await?;
    let meta = ArrowReaderMetadata::try_new(md, ArrowReaderOptions::default())
        .map_err(|e| BackfillError::data_read(&what, e))?;
    field_types(&what, meta.schema(), new_fields)
}

/// The column index of each planned new field, which must still have its planned type.
pub(crate) fn planned_columns(what: &str, schema: &SchemaRef, new_fields: &[NewField]) -> Result<Vec<usize>> {
    new_fields
        .iter()
        .map(|nf| {
            let i = schema.index_of(nf.column()).map_err(|_| {
                BackfillError::schema(format!(
                    "{what} has no column `{}` that the plan expects; was the source changed after planning?",
                    nf.column()
                ))
            })?;
            if schema.field(i).data_type().to_string() != nf.arrow_type {
                return Err(BackfillError::schema(format!(
                    "{what}: column `{}` is {}, the plan expects {}; was the source changed after planning?",
                    nf.column(),
                    schema.field(i).data_type(),
                    nf.arrow_type
                )));
            }
            Ok(i)
        })
        .collect()
}

#[derive(Clone, Copy, Debug)]
struct GroupSpan {
    index: usize,
    first_row: u64,
    rows: u64,
}

/// Matches found in a run of consecutive row groups.
struct Part {
    batches: Vec<RecordBatch>,
    offsets: Vec<u32>,
    source_rows: Vec<u64>,
}

struct ChunkScan {
    whole: Option<Bytes>,
    store: Store,
    key: String,
    size: u64,
    meta: ArrowReaderMetadata,
    groups: Vec<GroupSpan>,
    key_idx: usize,
    value_idx: Vec<usize>,
    /// `(source column, field name, vector target)` of each value column.
    value_names: Arc<Vec<ValueColumn>>,
    index: Arc<KeyIndex>,
    batch_size: usize,
    fetched: Arc<AtomicU64>,
}

impl ChunkScan {
    async fn run(self) -> Result<Part> {
        let what = self.store.display(&self.key);
        let mut reader =
            ObjectReader::new(self.store.clone(), self.key.clone(), self.size).counting(self.fetched.clone());
        reader.metadata = Some(self.meta.metadata().clone());
        reader.whole = self.whole.clone();
        let builder = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, self.meta.clone());
        // The predicate sees the key column batch by batch, in row order; it records
        // the offsets and source rows of the matches, which the reader then emits in
        // the same order.
        let state = Arc::new(Mutex::new(PredicateState {
            index: self.index.clone(),
            groups: self.groups.iter().map(|g| (g.first_row, g.rows)).collect(),
            group: 0,
            group_start: 0,
            consumed: 0,
            hits: Vec::new(),
            offsets: Vec::new(),
            source_rows: Vec::new(),
        }));
        let st = state.clone();
        let predicate = ArrowPredicateFn::new(
            ProjectionMask::roots(builder.parquet_schema(), [self.key_idx]),
            move |batch: RecordBatch| {
                let mut s = st.lock().expect("predicate state");
                Ok(s.select(crate::keys::widen(batch.column(0).clone()).as_ref()))
            },
        );
        // The key column is not projected: the predicate already recorded what it needs.
        let mask = ProjectionMask::roots(builder.parquet_schema(), self.value_idx.iter().copied());
        let mut stream = builder
            .with_row_groups(self.groups.iter().map(|g| g.index).collect())
            .with_projection(mask)
            .with_row_filter(RowFilter::new(vec![Box::new(predicate)]))
            .with_batch_size(self.batch_size.max(8192))
            .build()
            .map_err(|e| BackfillError::data_read(&what, e))?;
        let mut batches = Vec::new();
        let mut emitted = 0usize;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| BackfillError::data_read(&what, e))?;
            emitted += batch.num_rows();
            let projected = batch.schema();
            // Named by field, whatever the source calls the columns; vectors normalized.
            let cols = self
                .value_names
                .iter()
                .map(|(column, name, vector)| {
                    let col = batch.column_by_name(column).expect("projected").clone();
                    crate::vectors::written_column(*vector, col, &what, name)
                })
                .collect::<Result<Vec<_>>>()?;
            let fields: Vec<_> = self
                .value_names
                .iter()
                .zip(&cols)
                .map(|((column, name, _), col)| {
                    let f = projected.field_with_name(column).expect("projected");
                    f.clone().with_name(name).with_data_type(col.data_type().clone())
                })
                .collect();
            let values = RecordBatch::try_new(Arc::new(arrow_schema::Schema::new(fields)), cols)
                .map_err(|e| BackfillError::data_read(&what, e))?;
            batches.push(values);
        }
        let mut s = state.lock().expect("predicate state");
        if s.offsets.len() != emitted {
            return Err(BackfillError::unexpected(format!(
                "{what}: the key filter selected {} rows but the reader returned {emitted}",
                s.offsets.len()
            )));
        }
        Ok(Part {
            batches,
            offsets: std::mem::take(&mut s.offsets),
            source_rows: std::mem::take(&mut s.source_rows),
        })
    }
}

/// `(source column, field name, vector target)` of a new field's column.
type ValueColumn = (String, String, Option<crate::plan::VectorTarget>);

struct PredicateState {
    index: Arc<KeyIndex>,
    /// (global first row, row count) of each selected row group, in read order.
    groups: Vec<(u64, u64)>,
    group: usize,
    /// Chunk-relative index of the first row of `groups[group]`.
    group_start: u64,
    /// Rows of this chunk seen so far.
    consumed: u64,
    hits: Vec<(u32, u32)>,
    offsets: Vec<u32>,
    source_rows: Vec<u64>,
}

impl PredicateState {
    /// Global source row of the `rel`-th row this chunk has read; calls come with
    /// increasing `rel`, so the cursor only moves forward.
    fn row_at(&mut self, rel: u64) -> u64 {
        while self.group < self.groups.len() && rel >= self.group_start + self.groups[self.group].1 {
            self.group_start += self.groups[self.group].1;
            self.group += 1;
        }
        let (first, _) = self.groups.get(self.group).copied().unwrap_or((u64::MAX, 0));
        first.wrapping_add(rel - self.group_start)
    }

    fn select(&mut self, keys: &dyn Array) -> BooleanArray {
        let n = keys.len();
        self.hits.clear();
        let mut hits = std::mem::take(&mut self.hits);
        self.index.probe(keys, &mut hits);
        let mut mask = arrow_buffer::BooleanBufferBuilder::new(n);
        mask.append_n(n, false);
        for &(i, off) in &hits {
            mask.set_bit(i as usize, true);
            let row = self.row_at(self.consumed + i as u64);
            self.offsets.push(off);
            self.source_rows.push(row);
        }
        self.consumed += n as u64;
        self.hits = hits;
        BooleanArray::new(mask.finish(), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `(pk)` Parquet files into a directory, `rows_per_group` rows per row group.
    fn key_files(
        dir: &std::path::Path,
        files: &[(&str, arrow_array::ArrayRef)],
        rows_per_group: usize,
    ) -> Vec<SourceFile> {
        let mut out = Vec::new();
        let mut first_row = 0;
        for (name, keys) in files {
            let schema = Arc::new(arrow_schema::Schema::new(vec![arrow_schema::Field::new(
                KEY_COLUMN,
                keys.data_type().clone(),
                true,
            )]));
            let batch = RecordBatch::try_new(schema.clone(), vec![keys.clone()]).unwrap();
            let props = parquet::file::properties::WriterProperties::builder()
                .set_max_row_group_row_count(Some(rows_per_group))
                .build();
            let path = dir.join(name);
            let mut w =
                parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema, Some(props))
                    .unwrap();
            w.write(&batch).unwrap();
            w.close().unwrap();
            out.push(SourceFile {
                key: (*name).to_owned(),
                size: std::fs::metadata(&path).unwrap().len(),
                rows: keys.len() as u64,
                first_row,
            });
            first_row += keys.len() as u64;
        }
        out
    }

    /// A duplicate split over two files (and row groups) and a null key are found, in one pass
    /// and in as many passes as there are rows; the report is the same either way.
    #[tokio::test]
    async fn the_key_check_finds_duplicates_across_files_in_any_number_of_passes() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::Local {
            root: tmp.path().to_path_buf(),
        };
        let files = key_files(
            tmp.path(),
            &[
                (
                    "a.parquet",
                    Arc::new(Int64Array::from(vec![Some(1), Some(2), Some(3), None])),
                ),
                ("b.parquet", Arc::new(Int64Array::from(vec![Some(4), Some(5), Some(2)]))),
            ],
            2,
        );
        let expected = KeyReport {
            column: "pk".into(),
            rows: 7,
            nulls: 1,
            duplicates: 1,
            examples: vec!["2".into()],
        };
        for budget in [u64::MAX, 8, 16] {
            let r = check_keys_within(&store, &files, "pk", PkType::Int64, budget)
                .await
                .unwrap();
            assert_eq!(r, expected, "budget {budget}");
        }
        let e = expected.into_result().unwrap_err();
        assert!(e.message.contains("1 row(s) with a null `pk`"), "{}", e.message);
        assert!(e.message.contains("1 duplicate `pk` value(s), e.g. 2"), "{}", e.message);
    }

    #[tokio::test]
    async fn the_key_check_of_varchar_keys_splits_by_hash_too() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::Local {
            root: tmp.path().to_path_buf(),
        };
        let keys: Vec<String> = (0..100).map(|i| format!("key-{i}")).collect();
        let mut second: Vec<String> = (100..150).map(|i| format!("key-{i}")).collect();
        second.push("key-7".into());
        second.push("key-42".into());
        let files = key_files(
            tmp.path(),
            &[
                ("a.parquet", Arc::new(StringArray::from(keys))),
                ("b.parquet", Arc::new(StringArray::from(second))),
            ],
            16,
        );
        for budget in [u64::MAX, 1024] {
            let r = check_keys_within(&store, &files, "pk", PkType::VarChar, budget)
                .await
                .unwrap();
            assert_eq!((r.rows, r.nulls, r.duplicates), (152, 0, 2), "budget {budget}");
            let mut ex = r.examples.clone();
            ex.sort();
            assert_eq!(ex, vec!["\"key-42\"", "\"key-7\""]);
        }
        let clean = key_files(
            tmp.path(),
            &[("c.parquet", Arc::new(StringArray::from(vec!["x", "y"])))],
            1,
        );
        let r = check_keys_within(&store, &clean, "pk", PkType::VarChar, 1)
            .await
            .unwrap();
        assert_eq!(r.into_result().unwrap(), 2);
    }

    #[test]
    fn ranges_coalesce_within_the_gap() {
        let r = coalesce(&[10..20, 0..5, 25..30, 100..110], 5);
        assert_eq!(r, vec![0..30, 100..110]);
        assert_eq!(coalesce(&[], 5), vec![]);
    }

    #[test]
    fn row_group_pruning_by_key_range() {
        use parquet::file::statistics::ValueStatistics;
        let s = Statistics::Int64(ValueStatistics::new(Some(10), Some(20), None, Some(0), false));
        assert!(may_match(Some(&s), &KeyRange::Int64(15, 100)));
        assert!(!may_match(Some(&s), &KeyRange::Int64(21, 100)));
        assert!(!may_match(Some(&s), &KeyRange::Int64(0, 9)));
        assert!(may_match(None, &KeyRange::Int64(0, 9)), "no statistics: read it");
        assert!(!may_match(None, &KeyRange::Empty));
    }
}
