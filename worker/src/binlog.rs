//! Milvus V1 binlogs: the event framing around a Parquet payload.
//!
//! Layout (little-endian): magic, a descriptor event whose length depends on its
//! JSON extras, then data events that each carry one complete Parquet file with a
//! single column `val`. Everything is located by the lengths and positions the
//! file itself records; nothing is read at a fixed offset past the magic.

use std::collections::BTreeMap;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{Field, Schema};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

pub const MAGIC: i32 = 0x00FF_FABC;
const HEADER_LEN: usize = 17; // u64 timestamp, i8 type code, i32 event length, i32 next position
const DESCRIPTOR_FIXED_LEN: usize = 52;
const POST_HEADER_LENGTHS: [u8; 8] = [52, 16, 16, 16, 16, 16, 16, 16];

/// Event type codes of the binlog format.
pub const EVENT_DESCRIPTOR: i8 = 0;
pub const EVENT_INSERT: i8 = 1;
pub const EVENT_DELETE: i8 = 2;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub collection_id: i64,
    pub partition_id: i64,
    pub segment_id: i64,
    pub field_id: i64,
    pub start_ts: u64,
    pub end_ts: u64,
    /// `schemapb.DataType` of the payload.
    pub payload_type: i32,
    pub extras: BTreeMap<String, serde_json::Value>,
}

/// One data event: its type code and where its Parquet payload sits in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventSpan {
    pub type_code: i8,
    pub start_ts: u64,
    pub end_ts: u64,
    pub payload: std::ops::Range<usize>,
}

#[derive(Debug)]
pub struct ParsedBinlog {
    pub descriptor: Descriptor,
    pub events: Vec<EventSpan>,
}

/// Reads little-endian values; `base` is the file offset of `buf[0]`, so that a
/// window fetched from the middle of a remote file reports absolute offsets.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                format!(
                    "truncated binlog: {what} needs {n} bytes at offset {}, only {} available",
                    self.base + self.pos,
                    self.buf.len() - self.pos
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn i8(&mut self, what: &str) -> Result<i8, String> {
        Ok(self.take(1, what)?[0] as i8)
    }
    fn i32(&mut self, what: &str) -> Result<i32, String> {
        Ok(i32::from_le_bytes(self.take(4, what)?.try_into().expect("4")))
    }
    fn i64(&mut self, what: &str) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.take(8, what)?.try_into().expect("8")))
    }
    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().expect("8")))
    }
}

struct Header {
    type_code: i8,
    event_length: usize,
    next_position: usize,
}

fn header(c: &mut Cursor<'_>) -> Result<Header, String> {
    let start = c.base + c.pos;
    let _writer_ts = c.u64("event header")?;
    let type_code = c.i8("event header")?;
    let event_length = c.i32("event header")?;
    let next_position = c.i32("event header")?;
    if event_length < HEADER_LEN as i32 {
        return Err(format!("event at offset {start} has an invalid length {event_length}"));
    }
    let event_length = event_length as usize;
    if next_position as i64 != (start + event_length) as i64 {
        return Err(format!(
            "event at offset {start}: next position {next_position} != offset + length {}",
            start + event_length
        ));
    }
    Ok(Header {
        type_code,
        event_length,
        next_position: next_position as usize,
    })
}

/// Parses the framing of a whole binlog file. The payload bytes are not decoded.
pub fn parse(buf: &[u8]) -> Result<ParsedBinlog, String> {
    let (descriptor, mut pos) = parse_descriptor(buf)?;
    let mut events = Vec::new();
    while pos < buf.len() {
        let (event, next) = parse_event(buf, pos)?;
        events.push(event);
        pos = next;
    }
    Ok(ParsedBinlog { descriptor, events })
}

/// Parses the magic and the descriptor event; returns the offset of the first data event.
pub fn parse_descriptor(buf: &[u8]) -> Result<(Descriptor, usize), String> {
    let mut c = Cursor { buf, pos: 0, base: 0 };
    let magic = c.i32("magic number")?;
    if magic != MAGIC {
        return Err(format!(
            "not a Milvus binlog: magic {magic:#010x}, expected {MAGIC:#010x}"
        ));
    }
    let h = header(&mut c)?;
    if h.type_code != EVENT_DESCRIPTOR {
        return Err(format!(
            "first event has type {}, expected the descriptor (0)",
            h.type_code
        ));
    }
    let descriptor_end = 4 + h.event_length;
    let collection_id = c.i64("descriptor")?;
    let partition_id = c.i64("descriptor")?;
    let segment_id = c.i64("descriptor")?;
    let field_id = c.i64("descriptor")?;
    let start_ts = c.u64("descriptor")?;
    let end_ts = c.u64("descriptor")?;
    let payload_type = c.i32("descriptor")?;
    let post_header = c.take(POST_HEADER_LENGTHS.len(), "post-header lengths")?;
    if post_header[0] as usize != DESCRIPTOR_FIXED_LEN {
        return Err(format!(
            "descriptor fixed part is {} bytes, expected {DESCRIPTOR_FIXED_LEN}",
            post_header[0]
        ));
    }
    let extra_len = c.i32("extras length")?;
    if extra_len < 0 {
        return Err(format!("negative extras length {extra_len}"));
    }
    let extra = c.take(extra_len as usize, "descriptor extras")?;
    if c.pos != descriptor_end {
        return Err(format!(
            "descriptor ends at {} but its header says {descriptor_end}",
            c.pos
        ));
    }
    let extras = if extra.is_empty() {
        BTreeMap::new()
    } else {
        serde_json::from_slice(extra).map_err(|e| format!("descriptor extras are not a JSON object: {e}"))?
    };
    let descriptor = Descriptor {
        collection_id,
        partition_id,
        segment_id,
        field_id,
        start_ts,
        end_ts,
        payload_type,
        extras,
    };
    Ok((descriptor, h.next_position))
}

/// Parses the data event at `pos`; returns it and the next event's offset.
pub fn parse_event(buf: &[u8], pos: usize) -> Result<(EventSpan, usize), String> {
    let mut c = Cursor { buf, pos, base: 0 };
    let h = header(&mut c)?;
    if h.type_code <= EVENT_DESCRIPTOR || h.type_code as usize >= POST_HEADER_LENGTHS.len() {
        return Err(format!("event at offset {pos} has unknown type {}", h.type_code));
    }
    let fixed = POST_HEADER_LENGTHS[h.type_code as usize] as usize;
    let start_ts = c.u64("event fixed part")?;
    let end_ts = c.u64("event fixed part")?;
    let payload_start = pos + HEADER_LEN + fixed;
    let end = pos + h.event_length;
    if end > buf.len() || payload_start > end {
        return Err(format!(
            "event at offset {pos} runs past the end of the file ({end} > {})",
            buf.len()
        ));
    }
    Ok((
        EventSpan {
            type_code: h.type_code,
            start_ts,
            end_ts,
            payload: payload_start..end,
        },
        h.next_position,
    ))
}

/// Decodes the `val` column of every data event of a binlog, in order.
pub fn read_values(buf: Bytes) -> Result<(Descriptor, Vec<ArrayRef>), String> {
    let parsed = parse(&buf)?;
    let mut out = Vec::new();
    for ev in &parsed.events {
        let payload = buf.slice(ev.payload.clone());
        let reader = ParquetRecordBatchReaderBuilder::try_new(payload)
            .map_err(|e| format!("payload of event at {} is not Parquet: {e}", ev.payload.start))?
            .with_batch_size(64 * 1024)
            .build()
            .map_err(|e| format!("payload Parquet: {e}"))?;
        for batch in reader {
            let batch = batch.map_err(|e| format!("decoding payload: {e}"))?;
            let col = batch.column_by_name("val").ok_or_else(|| {
                format!(
                    "payload has no `val` column (columns: {:?})",
                    batch.schema().fields().iter().map(|f| f.name()).collect::<Vec<_>>()
                )
            })?;
            out.push(col.clone());
        }
    }
    Ok((parsed.descriptor, out))
}

/// Writes a V1 insert binlog the way Milvus 2.3 does. Used by tests and the
/// benchmark to build segments; it round-trips the real fixtures byte-for-byte
/// in framing (the Parquet payload differs in `created_by`).
pub struct BinlogWriter {
    pub collection_id: i64,
    pub partition_id: i64,
    pub segment_id: i64,
    pub field_id: i64,
    pub payload_type: i32,
    pub start_ts: u64,
    pub end_ts: u64,
    pub writer_ts: u64,
}

impl BinlogWriter {
    /// A writer of Int64 primary key binlogs with fixed, non-zero timestamps, as the benchmarks
    /// and tests build segments.
    pub fn int64_pk(collection_id: i64, partition_id: i64, segment_id: i64, field_id: i64) -> Self {
        Self {
            collection_id,
            partition_id,
            segment_id,
            field_id,
            payload_type: 5,
            start_ts: 1 << 18,
            end_ts: 2 << 18,
            writer_ts: 3 << 18,
        }
    }

    pub fn write_insert(&self, values: ArrayRef) -> Result<Vec<u8>, String> {
        if self.start_ts == 0 || self.end_ts == 0 {
            return Err("binlog timestamps must be non-zero".into());
        }
        let original_size: usize = match values.data_type() {
            arrow_schema::DataType::Utf8 => {
                let a = values
                    .as_any()
                    .downcast_ref::<arrow_array::StringArray>()
                    .expect("utf8");
                a.iter().map(|v| v.map_or(0, str::len) + 16).sum()
            }
            _ => values.get_array_memory_size(),
        };
        let original_size = match values.data_type() {
            arrow_schema::DataType::Int64 => 8 * values.len(),
            _ => original_size,
        };
        let extras = serde_json::json!({ "original_size": original_size.to_string() }).to_string();
        let payload = parquet_payload(values)?;

        let mut out = Vec::with_capacity(payload.len() + 160);
        out.extend_from_slice(&MAGIC.to_le_bytes());
        let desc_len = HEADER_LEN + DESCRIPTOR_FIXED_LEN + POST_HEADER_LENGTHS.len() + 4 + extras.len();
        push_header(&mut out, self.writer_ts, EVENT_DESCRIPTOR, desc_len, 4 + desc_len);
        for v in [self.collection_id, self.partition_id, self.segment_id, self.field_id] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.start_ts.to_le_bytes());
        out.extend_from_slice(&self.end_ts.to_le_bytes());
        out.extend_from_slice(&self.payload_type.to_le_bytes());
        out.extend_from_slice(&POST_HEADER_LENGTHS);
        out.extend_from_slice(&(extras.len() as i32).to_le_bytes());
        out.extend_from_slice(extras.as_bytes());
        let ev_start = out.len();
        let ev_len = HEADER_LEN + 16 + payload.len();
        push_header(&mut out, self.writer_ts, EVENT_INSERT, ev_len, ev_start + ev_len);
        out.extend_from_slice(&self.start_ts.to_le_bytes());
        out.extend_from_slice(&self.end_ts.to_le_bytes());
        out.extend_from_slice(&payload);
        Ok(out)
    }
}

fn push_header(out: &mut Vec<u8>, ts: u64, code: i8, len: usize, next: usize) {
    out.extend_from_slice(&ts.to_le_bytes());
    out.push(code as u8);
    out.extend_from_slice(&(len as i32).to_le_bytes());
    out.extend_from_slice(&(next as i32).to_le_bytes());
}

fn parquet_payload(values: ArrayRef) -> Result<Vec<u8>, String> {
    let schema = std::sync::Arc::new(Schema::new(vec![Field::new("val", values.data_type().clone(), false)]));
    let batch = RecordBatch::try_new(schema.clone(), vec![values]).map_err(|e| e.to_string())?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("level 3")))
        .set_max_row_group_row_count(Some(usize::MAX / 2))
        .build();
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, schema, Some(props)).map_err(|e| e.to_string())?;
    w.write(&batch).map_err(|e| e.to_string())?;
    w.close().map_err(|e| e.to_string())?;
    Ok(buf)
}

/// Row count of a binlog from its framing and the Parquet footers alone, for planning:
/// `fetch(range)` returns bytes of the file, which may be remote.
pub async fn count_rows<F, Fut>(file_size: u64, mut fetch: F) -> Result<u64, String>
where
    F: FnMut(std::ops::Range<u64>) -> Fut,
    Fut: std::future::Future<Output = Result<Bytes, String>>,
{
    let head_len = file_size.min(4096);
    let head = fetch(0..head_len).await?;
    let desc = match parse_descriptor(&head) {
        Ok(d) => d,
        Err(_) if head_len < file_size => {
            // Extras larger than the first read: fetch the whole descriptor.
            let whole = fetch(0..file_size).await?;
            parse_descriptor(&whole)?
        }
        Err(e) => return Err(e),
    };
    let mut pos = desc.1 as u64;
    let mut rows = 0u64;
    while pos < file_size {
        let hdr_end = (pos + (HEADER_LEN + 16) as u64).min(file_size);
        let hdr = fetch(pos..hdr_end).await?;
        let mut c = Cursor {
            buf: &hdr,
            pos: 0,
            base: pos as usize,
        };
        let h = header(&mut c)?;
        if h.type_code <= EVENT_DESCRIPTOR || h.type_code as usize >= POST_HEADER_LENGTHS.len() {
            return Err(format!("event at offset {pos} has unknown type {}", h.type_code));
        }
        let fixed = POST_HEADER_LENGTHS[h.type_code as usize] as u64;
        let payload_end = pos + h.event_length as u64;
        let payload_start = pos + HEADER_LEN as u64 + fixed;
        if payload_end > file_size || payload_end < payload_start + 12 {
            return Err(format!("event at offset {pos} runs past the end of the file"));
        }
        let tail = fetch(payload_end - 8..payload_end).await?;
        if &tail[4..] != b"PAR1" {
            return Err(format!(
                "event at offset {pos}: payload does not end with a Parquet footer"
            ));
        }
        let meta_len = u32::from_le_bytes(tail[..4].try_into().expect("4")) as u64;
        if meta_len + 8 > payload_end - payload_start {
            return Err(format!(
                "event at offset {pos}: Parquet footer length {meta_len} is too large"
            ));
        }
        let meta = fetch(payload_end - 8 - meta_len..payload_end - 8).await?;
        let md = parquet::file::metadata::ParquetMetaDataReader::decode_metadata(&meta)
            .map_err(|e| format!("event at offset {pos}: Parquet footer: {e}"))?;
        rows += md.file_metadata().num_rows() as u64;
        pos = h.next_position as u64;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Array, Int64Array, StringArray};
    use std::sync::Arc;

    fn writer() -> BinlogWriter {
        BinlogWriter {
            collection_id: 1,
            partition_id: 2,
            segment_id: 3,
            field_id: 100,
            payload_type: 5,
            start_ts: 10,
            end_ts: 20,
            writer_ts: 99 << 18,
        }
    }

    #[test]
    fn written_binlog_reads_back() {
        let vals: ArrayRef = Arc::new(Int64Array::from(vec![5, 3, 9]));
        let bytes = writer().write_insert(vals.clone()).unwrap();
        let (desc, arrays) = read_values(Bytes::from(bytes)).unwrap();
        assert_eq!(desc.segment_id, 3);
        assert_eq!(desc.field_id, 100);
        assert_eq!(desc.payload_type, 5);
        assert_eq!(desc.extras["original_size"], "24");
        assert_eq!(arrays.len(), 1);
        assert_eq!(arrays[0].as_ref(), vals.as_ref());
    }

    #[test]
    fn varchar_values_and_extras() {
        let vals: ArrayRef = Arc::new(StringArray::from(vec!["ab", "c"]));
        let mut w = writer();
        w.payload_type = 21;
        let (desc, arrays) = read_values(Bytes::from(w.write_insert(vals).unwrap())).unwrap();
        assert_eq!(desc.extras["original_size"], "35");
        let s = arrays[0].as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(s.value(1), "c");
    }

    #[test]
    fn corrupt_files_give_clear_errors() {
        let bytes = writer().write_insert(Arc::new(Int64Array::from(vec![1]))).unwrap();
        let mut bad_magic = bytes.clone();
        bad_magic[0] = 0;
        assert!(parse(&bad_magic).unwrap_err().contains("magic"));
        let truncated = &bytes[..bytes.len() - 10];
        assert!(parse(truncated).unwrap_err().contains("past the end"));
        assert!(parse(&bytes[..30]).unwrap_err().contains("truncated"));
    }

    #[tokio::test]
    async fn count_rows_reads_only_framing_and_footer() {
        let n = 5000;
        let bytes = Bytes::from(
            writer()
                .write_insert(Arc::new(Int64Array::from_iter_values(0..n)))
                .unwrap(),
        );
        let size = bytes.len() as u64;
        let b = bytes.clone();
        let rows = count_rows(size, |r| {
            let b = b.clone();
            async move { Ok(b.slice(r.start as usize..r.end as usize)) }
        })
        .await
        .unwrap();
        assert_eq!(rows, n as u64);
    }
}
