#!/usr/bin/env python3
"""Checks a `milvus-backfill run` result for StorageV2 segments with pyarrow only (no Rust code, no
milvus-storage): the result entries as Milvus' `CommitBackfillResult` decodes them, every new column
group file as milvus-storage's packed reader reads it, and every value against an independent left
join of the segment's PK column with the source.

    check_v2.py --result RESULT.json --expected EXPECTED.json [--storage storage.json] [--fixture F.parquet]

--expected is written by make_v2_collection.py. --fixture is a file written by milvus-storage's packed
writer whose footer keys the new files must have (default: shared/fixtures/milvus-storage-v2/
column_group_1.parquet next to the repository, or $MB_SHARED_FIXTURES/milvus-storage-v2/...).
Exit 2 on a contract violation, 1 on a data mismatch, 0 when all holds. JSON summary on stdout.
"""
import argparse
import json
import os
import re
import sys

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    OK_CODECS, check_row_group_metadata, compare_column, exit_on_violations, load_source, print_summary,
    snapshot_segments,
)
from make_collection import key_prefix, pyarrow_fs  # noqa: E402

LOG_ID_MIN = 1 << 62  # Milvus' own log IDs (TSO) stay below; the backfill's must not collide with them
# the packed writer's keys, should the fixture be missing (shared/docs/milvus-storage.md §15.2)
DOCUMENTED_KEYS = ["group_field_id_list", "row_group_metadata", "storage_version"]


def log(msg):
    print(f"check_v2: {msg}", file=sys.stderr)


def fixture_path(arg):
    if arg:
        return arg
    base = os.environ.get("MB_SHARED_FIXTURES") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "fixtures")
    return os.path.join(base, "milvus-storage-v2", "column_group_1.parquet")


def reference_keys(path):
    if os.path.exists(path):
        return [k.decode() for k in (pq.ParquetFile(path).metadata.metadata or {})], os.path.abspath(path)
    log(f"fixture {path} not found: comparing with the documented keys {DOCUMENTED_KEYS}")
    return list(DOCUMENTED_KEYS), None


# ------------------------------------------------------------------ the result entries
def check_result(result, expected):
    errs = []
    if result.get("success") is not True:
        errs.append(f"success must be true, got {result.get('success')!r}")
    if result.get("collectionId") != expected["collectionId"]:
        errs.append(f"collectionId {result.get('collectionId')!r} != {expected['collectionId']}")
    allowed = {0} | set(expected["partitionIds"][:1] if len(expected["partitionIds"]) == 1 else [])
    if result.get("partitionId") not in allowed:
        errs.append(f"partitionId {result.get('partitionId')!r} not in {sorted(allowed)}")
    if result.get("schemaVersion") != expected["schemaVersion"]:
        errs.append(f"schemaVersion {result.get('schemaVersion')!r} != {expected['schemaVersion']}")
    new_names = sorted(f["name"] for f in expected["newFields"])
    if sorted(result.get("newFieldNames") or []) != new_names:
        errs.append(f"newFieldNames {result.get('newFieldNames')!r} != {new_names}")
    exp = snapshot_segments(result, expected, errs)
    if exp is None:
        return errs
    segs = result["segments"]
    for k in sorted(set(segs) - set(exp)):
        errs.append(f"segment {k}: not a segment of the snapshot")
    new_ids = {f["fieldId"]: f for f in expected["newFields"]}
    seen_logs = {}
    for key in sorted(set(segs) & set(exp)):
        e, s, where = segs[key], exp[key], f"segment {key}"
        if e.get("storage_version") != 2:
            errs.append(f"{where}: storage_version {e.get('storage_version')!r} != 2")
        if e.get("version") != -1:
            errs.append(f"{where}: version {e.get('version')!r} != -1 (V2 entries carry -1)")
        if e.get("rowCount") != s["rows"]:
            errs.append(f"{where}: rowCount {e.get('rowCount')!r} != the segment's {s['rows']} rows")
        if e.get("ops"):
            errs.append(f"{where}: a V2 entry has ops (Milvus would classify it as V3 only without column_groups)")
        groups = e.get("column_groups")
        if not isinstance(groups, list) or not groups:
            errs.append(f"{where}: column_groups must be a non-empty list")
            continue
        covered = []
        for i, g in enumerate(groups):
            gw = f"{where} group {i}"
            fids = g.get("field_ids")
            if not isinstance(fids, list) or len(fids) != 1 or fids[0] not in new_ids:
                errs.append(f"{gw}: field_ids {fids!r} must be exactly one new field ID of {sorted(new_ids)}")
                continue
            fid = fids[0]
            covered.append(fid)
            if g.get("row_count") != s["rows"]:
                errs.append(f"{gw}: row_count {g.get('row_count')!r} != the segment's {s['rows']} rows")
            files = g.get("binlog_files")
            if not isinstance(files, list) or not files:
                errs.append(f"{gw}: binlog_files must be a non-empty list")
                continue
            pat = re.compile(re.escape(f"{s['prefix']}/{fid}/") + r"([0-9]+)$")
            last = None
            for j, path in enumerate(files):
                m = pat.match(path) if isinstance(path, str) else None
                if not m:
                    errs.append(f"{gw} file {j}: {path!r} is not the bucket-relative key {s['prefix']}/{fid}/<logID>")
                    continue
                lid = int(m.group(1))
                if m.group(1) != str(lid):
                    errs.append(f"{gw} file {j}: log ID {m.group(1)!r} has leading zeros (Milvus rebuilds the key "
                                f"from the number)")
                if not LOG_ID_MIN < lid < 1 << 63:
                    errs.append(f"{gw} file {j}: log ID {lid} not in (2^62, 2^63)")
                if last is not None and lid <= last:
                    errs.append(f"{gw} file {j}: log IDs not ascending ({last} then {lid})")
                last = lid
                if lid in seen_logs and seen_logs[lid] != (key, fid):
                    errs.append(f"{gw} file {j}: log ID {lid} also used by segment/field {seen_logs[lid]}")
                seen_logs[lid] = (key, fid)
        if sorted(covered) != sorted(new_ids):
            errs.append(f"{where}: column groups cover fields {sorted(covered)}, want each of {sorted(new_ids)} once")
    return errs


# ------------------------------------------------------------------ the files
def milvus_entries(row_count, n):
    """EntriesNum Milvus records per file when it commits a V2 group of n files (integer division,
    remainder to the last file: services_commit_backfill.go)."""
    per = row_count // n
    return [per] * (n - 1) + [row_count - per * (n - 1)]


def check_file(fs, prefix, key, field, want_rows, ref_keys, errs, where):
    """Footer and schema checks; returns the column's values or None."""
    try:
        with fs.open_input_file(prefix + key) as fh:
            pf = pq.ParquetFile(fh)
            md, schema = pf.metadata, pf.schema_arrow
            table = pf.read()
    except Exception as e:  # noqa: BLE001
        errs.append(f"{where}: {key} is not a readable Parquet file: {e}")
        return None
    fid = str(field["fieldId"]).encode()
    if len(schema) != 1:
        errs.append(f"{where}: {len(schema)} columns {schema.names}, want exactly one")
    by_id = [i for i in range(len(schema)) if (schema.field(i).metadata or {}).get(b"PARQUET:field_id") == fid]
    if len(by_id) != 1:
        errs.append(f"{where}: no single column with PARQUET:field_id {fid.decode()} "
                    f"(columns {[(f.name, (f.metadata or {}).get(b'PARQUET:field_id')) for f in schema]})")
        return None
    col = schema.field(by_id[0])
    if col.name != field["name"]:
        errs.append(f"{where}: column is named {col.name!r}; StorageV2 names columns by field name ({field['name']!r})")
    if col.type != pa.float64():
        errs.append(f"{where}: column type {col.type}, Milvus reads Double as double")
    if field["nullable"] and not col.nullable:
        errs.append(f"{where}: column must be nullable")
    kv = {k.decode(): v.decode() for k, v in (md.metadata or {}).items()}
    if sorted(kv) != sorted(ref_keys):
        errs.append(f"{where}: footer keys {sorted(kv)} != the packed writer's {sorted(ref_keys)}")
    if kv.get("group_field_id_list") != fid.decode():
        errs.append(f"{where}: group_field_id_list {kv.get('group_field_id_list')!r} != {fid.decode()!r}")
    if kv.get("storage_version") != "1.0.0":
        errs.append(f"{where}: storage_version {kv.get('storage_version')!r} != '1.0.0'")
    rgm = kv.get("row_group_metadata")
    if rgm is not None:
        check_row_group_metadata(rgm, md, errs, where, "row group {i}: {rows} rows at offset {off}", check_total=True)
    codecs = {md.row_group(i).column(j).compression for i in range(md.num_row_groups) for j in range(md.num_columns)}
    if codecs - OK_CODECS:
        errs.append(f"{where}: compression {sorted(codecs - OK_CODECS)} (want ZSTD or none)")
    if md.num_rows != want_rows:
        errs.append(f"{where}: {md.num_rows} rows, but Milvus records EntriesNum {want_rows} for this file "
                    f"(row_count spread over the files by integer division, remainder to the last)")
    return table.column(by_id[0]).to_pylist()


def read_pks(fs, prefix, seg, pk_field_id):
    """The segment's PK column: group 0's files in ascending log ID, the column found by field ID."""
    out = []
    for key, _lid, rows in sorted(seg["group0Files"], key=lambda f: f[1]):
        t = pq.read_table(prefix + key, filesystem=fs)
        idx = [i for i, f in enumerate(t.schema)
               if (f.metadata or {}).get(b"PARQUET:field_id") == str(pk_field_id).encode()]
        col = t.column(idx[0]).to_pylist()
        assert len(col) == rows, (key, len(col), rows)
        out += col
    return out


def list_files(fs, prefix, directory):
    try:
        infos = fs.get_file_info(pafs.FileSelector(prefix + directory, recursive=True, allow_not_found=True))
    except FileNotFoundError:
        return {}
    return {i.path[len(prefix):] if i.path.startswith(prefix) else i.path: i.size
            for i in infos if i.type == pafs.FileType.File}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--result", required=True)
    ap.add_argument("--expected", required=True)
    ap.add_argument("--storage")
    ap.add_argument("--source")
    ap.add_argument("--fixture")
    args = ap.parse_args()
    expected = json.load(open(args.expected))
    result = json.load(open(args.result))
    storage = json.load(open(args.storage)) if args.storage else expected["storage"]
    fs, prefix = pyarrow_fs(storage), key_prefix(storage)
    if storage["kind"] == "local":  # LocalFileSystem paths are absolute; S3 ones are bucket/key
        prefix = os.path.abspath(prefix[:-1]) + "/"
    ref_keys, ref_path = reference_keys(fixture_path(args.fixture))
    summary = {"collection": expected["collectionName"], "result": os.path.abspath(args.result),
               "footerKeysFrom": ref_path or "documented list", "footerKeys": ref_keys}

    errs = check_result(result, expected)
    source = load_source(args.source or expected["source"], expected)
    mismatches, seg_reports = [], []
    if not errs:
        new = {f["fieldId"]: f for f in expected["newFields"]}
        for seg in expected["segments"]:
            key = str(seg["segmentId"])
            entry = result["segments"][key]
            pks = read_pks(fs, prefix, seg, expected["pk"]["fieldId"])
            if pks != seg["pks"]:
                errs.append(f"segment {key}: the PKs read from group 0 in ascending log ID differ from the ones "
                            f"written (harness bug)")
                continue
            # the segment's existing files are unchanged, and nothing but the listed files was added
            now = list_files(fs, prefix, seg["prefix"])
            for k, size in seg["existingFiles"].items():
                if now.get(k) != size:
                    errs.append(f"segment {key}: existing file {k} changed (size {now.get(k)} != {size})")
            listed = {p for g in entry["column_groups"] for p in g["binlog_files"]}
            for k in sorted(set(now) - set(seg["existingFiles"]) - listed):
                errs.append(f"segment {key}: object {k} was written but is in no column group (garbage for GC)")
            checked = matched = 0
            for g in entry["column_groups"]:
                field = new[g["field_ids"][0]]
                values = []
                files = g["binlog_files"]
                for j, (path, want_rows) in enumerate(zip(files, milvus_entries(g["row_count"], len(files)))):
                    v = check_file(fs, prefix, path, field, want_rows, ref_keys, errs,
                                   f"segment {key} field {field['fieldId']} file {j}")
                    values += v if v is not None else []
                if len(values) != len(pks):
                    errs.append(f"segment {key} field {field['fieldId']}: {len(values)} values for {len(pks)} rows")
                    continue
                checked += compare_column(seg["segmentId"], field["name"], pks, values, source[field["name"]],
                                          mismatches, 30)
            matched = sum(1 for k in pks if k in source["__keys__"])
            files_n = sum(len(g["binlog_files"]) for g in entry["column_groups"])
            seg_reports.append({"segmentId": seg["segmentId"], "rows": seg["rows"], "files": files_n,
                                "valuesChecked": checked, "rowsWithSourceKey": matched})
            log(f"segment {key}: {files_n} file(s), {checked} values checked, {matched}/{seg['rows']} rows have a "
                f"source key")
    exit_on_violations(log, summary, errs)
    summary.update(ok=not mismatches, segments=seg_reports, rowsChecked=sum(r["rows"] for r in seg_reports),
                   valuesChecked=sum(r["valuesChecked"] for r in seg_reports),
                   rowsWithSourceKey=sum(r["rowsWithSourceKey"] for r in seg_reports),
                   filesChecked=sum(r["files"] for r in seg_reports),
                   mismatches=len(mismatches), mismatchSamples=mismatches[:30])
    print_summary(log, summary, mismatches)
    log(f"OK: {len(seg_reports)} segments, {summary['rowsChecked']} rows, {summary['valuesChecked']} values, "
        f"{summary['filesChecked']} files checked, 0 mismatches")


if __name__ == "__main__":
    main()
