"""Helpers shared by the harness scripts (pyarrow only: no loon, no Rust code).

* Parquet as milvus-storage's writers write it: `row_group_metadata`, `parquet_bytes` (make_v2_collection,
  fake_backfill, fake_backfill_v2, probe_library).
* The oracle: `load_source`, `same_value`, `compare_column` (commit_and_verify, check_v2).
* Result and footer checks: `snapshot_segments`, `OK_CODECS`, `check_row_group_metadata` (commit_and_verify,
  check_v2).
* How a checker ends: `exit_on_violations`, `print_summary` (commit_and_verify, check_v2).
"""
import io
import json
import math
import struct
import sys

import pyarrow.parquet as pq

OK_CODECS = {"ZSTD", "UNCOMPRESSED"}

# schemapb.DataType of the vector types: BinaryVector .. Int8Vector.
VECTOR_TYPES = {100, 101, 102, 103, 104, 105}


# ------------------------------------------------------------------ writing Parquet
def row_group_metadata(table, rows_per_group):
    """The `row_group_metadata` footer value for `table` written in row groups of `rows_per_group` rows:
    `memSize|rowNum|rowOffset` per row group (memSize = the Arrow slice's bytes), `;`-separated."""
    parts, off = [], 0
    while off < table.num_rows:
        n = min(rows_per_group, table.num_rows - off)
        parts.append(f"{table.slice(off, n).nbytes}|{n}|{off}")
        off += n
    return ";".join(parts)


def parquet_bytes(table, rows_per_group, compression, key_values=None, store_schema=False):
    """Parquet bytes in row groups of `rows_per_group` rows, dictionary pages, footer key-values
    `key_values` (none if None); store_schema=False: no ARROW:schema key (milvus-storage writes none)."""
    buf = io.BytesIO()
    w = pq.ParquetWriter(buf, table.schema, compression=compression, store_schema=store_schema)
    w.write_table(table, row_group_size=rows_per_group)
    if key_values is not None:
        w.add_key_value_metadata(key_values)
    w.close()
    return buf.getvalue()


# ------------------------------------------------------------------ oracle
def as_mapped(t, expected):
    """The source table with columns `pk` and the field names: as the expectation's `columnMapping`
    (source column -> field name) renames them, unlisted columns dropped."""
    mapping = expected.get("columnMapping")
    if not mapping:
        return t
    return t.select(list(mapping)).rename_columns(
        ["pk" if mapping[c] == expected["pk"]["name"] else mapping[c] for c in mapping])


def load_source(path, expected):
    """The source as {"__keys__": set of keys, new field name: {key: value}}: key column `pk` and columns
    named by field, or as the expectation's `columnMapping` (source column -> field name) says."""
    t = as_mapped(pq.read_table(path), expected)
    keys = t.column(expected.get("joinKey") or "pk").to_pylist()
    if len(keys) != len(set(keys)):
        raise SystemExit("source has duplicate keys: the oracle needs unique keys")
    out = {"__keys__": set(keys)}
    for f in expected["newFields"]:
        vals = t.column(f["name"]).to_pylist() if f["name"] in t.column_names else None
        if vals is not None and f["dataType"] in VECTOR_TYPES:
            vals = [None if v is None else vector_bytes(f, v) for v in vals]
        out[f["name"]] = dict(zip(keys, vals)) if vals is not None else {}
    return out


def vector_bytes(field, value):
    """Milvus' per-row bytes of a vector value in one of the source forms make_collection writes
    (a list, a JSON string, bytes, or a map's (index, value) pairs), normalized here on its own."""
    dt = field["dataType"]
    if isinstance(value, str):
        value = json.loads(value)
    if isinstance(value, bytes):
        return value
    if dt == 101:
        return struct.pack(f"<{len(value)}f", *value)
    if dt in (100, 105):
        return bytes(v & 0xFF for v in value)
    if dt == 102:
        return struct.pack(f"<{len(value)}e", *value)
    if dt == 103:
        return b"".join(struct.pack("<H", struct.unpack("<I", struct.pack("<f", v))[0] >> 16) for v in value)
    if dt == 104:
        return b"".join(struct.pack("<If", i, v) for i, v in sorted(value))
    raise ValueError(f"not a vector type: {dt}")


def same_value(a, b):
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return struct.pack("<d", a) == struct.pack("<d", b)  # -0.0 != 0.0
    return a == b


def compare_column(segment_id, field_name, pks, got, src, mismatches, limit, per_segment=False):
    """Compares got[i] with the source's value for pks[i] (absent key: None). A mismatch is appended to
    `mismatches` in full while fewer than `limit` are recorded (of this segment, with per_segment), else
    as suppressed. Returns the number of values compared."""
    for i, k in enumerate(pks):
        want = src.get(k)
        if not same_value(got[i], want):
            recorded = (sum(1 for m in mismatches if m["segment"] == segment_id) if per_segment
                        else len(mismatches))
            if recorded < limit:
                mismatches.append({"segment": segment_id, "row": i, "pk": k, "field": field_name,
                                   "got": repr(got[i]), "want": repr(want)})
            else:
                mismatches.append({"segment": segment_id, "suppressed": True})
    return len(pks)


# ------------------------------------------------------------------ result and footer checks
def snapshot_segments(result, expected, errs):
    """The snapshot's segments keyed by decimal segment ID, after appending to `errs` a violation for each
    of them missing from the result's `segments`; None (after a violation) if `segments` is no object."""
    segs = result.get("segments")
    if not isinstance(segs, dict):
        errs.append("segments must be an object keyed by segment ID")
        return None
    exp = {str(s["segmentId"]): s for s in expected["segments"]}
    for k in sorted(set(exp) - set(segs)):
        errs.append(f"segment {k} of the snapshot is missing from the result")
    return exp


def check_row_group_metadata(rgm, md, errs, where, entry_msg, check_total=False):
    """`row_group_metadata` (str) against the Parquet metadata `md`: one `memSize|rowNum|rowOffset` entry
    per row group, rowNum and the cumulative rowOffset matching; with check_total the rows must add up to
    the file's. entry_msg words a mismatching entry, formatted with i, rows (the row group's) and off."""
    parts = [p for p in rgm.split(";") if p]
    if len(parts) != md.num_row_groups:
        errs.append(f"{where}: row_group_metadata has {len(parts)} entries for {md.num_row_groups} row groups")
    off = 0
    for i, p in enumerate(parts[:md.num_row_groups]):
        t = p.split("|")
        if len(t) != 3 or not all(x.isdigit() for x in t):
            errs.append(f"{where}: row_group_metadata entry {p!r} is not memSize|rowNum|rowOffset")
            break
        rows = md.row_group(i).num_rows
        if int(t[1]) != rows or int(t[2]) != off:
            errs.append(f"{where}: row_group_metadata entry {i} {p!r} != " + entry_msg.format(i=i, rows=rows, off=off))
        off += rows
    if check_total and off != md.num_rows:
        errs.append(f"{where}: row_group_metadata rows add up to {off}, the file has {md.num_rows}")


# ------------------------------------------------------------------ how a checker ends
def exit_on_violations(log, summary, errs, **extra):
    """With violations: logs each, prints the summary with ok=False, them and `extra`, exits 2."""
    if not errs:
        return
    for e in errs:
        log("VIOLATION " + e)
    summary.update(ok=False, violations=errs, **extra)
    print(json.dumps(summary, indent=1))
    sys.exit(2)


def print_summary(log, summary, mismatches):
    """Prints the summary; with mismatches, logs their count and exits 1."""
    print(json.dumps(summary, indent=1))
    if mismatches:
        log(f"FAILED: {len(mismatches)} mismatch(es)")
        sys.exit(1)
