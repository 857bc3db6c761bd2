#!/usr/bin/env python3
"""Commits a `milvus-backfill` result for StorageV3 segments with the OFFICIAL milvus-storage transaction,
the way Milvus' DataCoord applies a result's `ops`, then checks the committed data through the official
reader against an independent left join of the segment PKs with the source.

    commit_and_verify.py --result RESULT.json --expected EXPECTED.json [--source SRC.parquet]
                         [--storage storage.json] [--retry | --already-committed]

--expected is written by make_collection.py (segment PKs in row order at the snapshot version, schema
facts); --source / --storage default to the ones recorded there. --retry applies the same result a second
time afterwards and checks that it changes nothing (what a retried commit must do).

--already-committed is for results of `spec.output.v3Commit: manifest`, where the run committed the
transaction itself: nothing is committed here; the entries must be `version` N+1 / `sourceVersion` N (N =
the latest version before the run) without `ops`, manifest N+1 must be the latest, keep every group of N
and add exactly the new columns, and the official reader at N+1 must return the joined values.

Before anything is committed, every rule of the result contract is checked (see README.md); any violation
stops the run with exit code 2 and nothing committed. A data mismatch after the commit exits 1.
The summary is printed as JSON on stdout.
"""
import argparse
import json
import os
import struct
import sys

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loon  # noqa: E402
from common import (  # noqa: E402
    OK_CODECS, check_row_group_metadata, compare_column, exit_on_violations, load_source, print_summary,
    snapshot_segments,
)
from make_collection import arrow_type, arrow_field, pyarrow_fs, key_prefix, written_arrow_type  # noqa: E402


class Violation(Exception):
    pass


def log(msg):
    print(f"commit_and_verify: {msg}", file=sys.stderr)


# ------------------------------------------------------------------ rules of the result contract
def check_top(result, expected):
    """Violations of the top-level keys (both V3 modes)."""
    errs = []
    coll = expected["collectionId"]
    new_names = {f["name"] for f in expected["newFields"]}
    if result.get("success") is not True:
        errs.append(f"success must be true, got {result.get('success')!r}")
    if result.get("collectionId") != coll:
        errs.append(f"collectionId {result.get('collectionId')!r} != the snapshot's {coll}")
    parts = expected["partitionIds"]
    allowed = {0} | ({parts[0]} if len(parts) == 1 else set())
    if result.get("partitionId") not in allowed:
        errs.append(f"partitionId {result.get('partitionId')!r}: must be {' or '.join(map(str, sorted(allowed)))} "
                    f"(the shared partition if all segments share one, else 0; never -1)")
    if result.get("schemaVersion") != expected["schemaVersion"]:
        errs.append(f"schemaVersion {result.get('schemaVersion')!r} != the snapshot schema's version "
                    f"{expected['schemaVersion']}")
    names = result.get("newFieldNames")
    if not isinstance(names, list) or set(names) != new_names or len(names) != len(set(names)):
        errs.append(f"newFieldNames {names!r} must list the new fields {sorted(new_names)} once each")
    snapshot_segments(result, expected, errs)
    return errs


def segment_entries(result, expected, errs):
    """(key, entry, expected segment) of the result's segments, after the checks common to both V3 modes."""
    exp_segs = {str(s["segmentId"]): s for s in expected["segments"]}
    out = []
    for key, entry in (result.get("segments") or {}).items():
        where = f"segment {key}"
        if key not in exp_segs:
            errs.append(f"{where}: not a segment of the snapshot (keys are decimal segment IDs)")
            continue
        exp = exp_segs[key]
        if not isinstance(entry, dict):
            errs.append(f"{where}: entry is not an object")
            continue
        if entry.get("segmentId") is not None and entry.get("segmentId") != exp["segmentId"]:
            errs.append(f"{where}: segmentId {entry.get('segmentId')!r} != key")
        if entry.get("partitionId") is not None and entry.get("partitionId") != exp["partitionId"]:
            errs.append(f"{where}: partitionId {entry.get('partitionId')!r} != {exp['partitionId']}")
        if entry.get("storage_version") == 2 or entry.get("column_groups"):
            errs.append(f"{where}: a V2 entry (storage_version 2 / column_groups) for a V3 segment")
        out.append((key, entry, exp))
    return out


def check_rows_and_path(entry, exp, expected, errs, where):
    """rowCount = the segment's rows, outputPath = its base path (a leading bucket name stripped)."""
    if entry.get("rowCount") != exp["rows"]:
        errs.append(f"{where}: rowCount {entry.get('rowCount')!r} != the segment's {exp['rows']} rows")
    out = strip_bucket(entry.get("outputPath") or "", expected["bucket"])
    if out.rstrip("/") != exp["basePath"]:
        errs.append(f"{where}: outputPath {entry.get('outputPath')!r} is not the segment base path "
                    f"{exp['basePath']!r}")


def check_result(result, expected):
    """Returns a list of violations (strings) of the V3 `ops` result contract."""
    errs = check_top(result, expected)
    if not isinstance(result.get("segments"), dict):
        return errs
    new_ids = {str(f["fieldId"]): f for f in expected["newFields"]}
    for key, entry, exp in segment_entries(result, expected, errs):
        where = f"segment {key}"
        ops = entry.get("ops")
        if not ops:
            errs.append(f"{where}: no ops (without --already-committed this harness checks V3 delta "
                        f"entries; `version`-only entries are checked with --already-committed)")
            continue
        check_rows_and_path(entry, exp, expected, errs, where)
        seen = {}
        for i, op in enumerate(ops):
            ow = f"{where} op {i}"
            if op.get("type") not in ("replace", "add"):
                errs.append(f"{ow}: type {op.get('type')!r} (replace or add)")
            if op.get("format") != "parquet":
                errs.append(f"{ow}: format {op.get('format')!r} != 'parquet'")
            cols = op.get("columns")
            if not isinstance(cols, list) or not cols:
                errs.append(f"{ow}: columns must be a non-empty list")
                cols = []
            for c in cols:
                if not isinstance(c, str) or not c.isdigit():
                    errs.append(f"{ow}: column {c!r} is not a field-ID string")
                elif c not in new_ids:
                    errs.append(f"{ow}: column {c} is not one of the new fields {sorted(new_ids)}")
                if c in seen:
                    errs.append(f"{ow}: column {c} already in op {seen[c]} (each column in exactly one op)")
                seen[c] = i
            files = op.get("files")
            if not isinstance(files, list) or not files:
                errs.append(f"{ow}: files must be a non-empty list")
                continue
            total = 0
            for j, f in enumerate(files):
                fw = f"{ow} file {j}"
                s, e = f.get("startIndex"), f.get("endIndex")
                if not isinstance(s, int) or not isinstance(e, int) or s < 0 or e <= s:
                    errs.append(f"{fw}: need 0 <= startIndex < endIndex, got [{s!r}, {e!r})")
                else:
                    total += e - s
                try:
                    bare_name(f.get("path"), exp["basePath"])
                except Violation as v:
                    errs.append(f"{fw}: {v}")
                p = f.get("properties")
                if p is not None:
                    if not isinstance(p, dict) or not all(isinstance(v, str) for v in p.values()):
                        errs.append(f"{fw}: properties must be a string map")
                    else:
                        for k in ("file_size", "footer_size"):
                            if k in p and not p[k].isdigit():
                                errs.append(f"{fw}: properties.{k} {p[k]!r} is not a decimal string")
            if total != exp["rows"]:
                errs.append(f"{ow}: sum(endIndex - startIndex) = {total} != the segment's {exp['rows']} rows")
            rc = op.get("rowCount")
            if rc not in (None, 0) and rc != total:
                errs.append(f"{ow}: rowCount {rc!r} != sum(endIndex - startIndex) = {total}")
        for c in sorted(set(new_ids) - set(seen), key=int):
            errs.append(f"{where}: new field {c} ({new_ids[c]['name']}) has no op")
    return errs


def strip_bucket(path, bucket):
    return path[len(bucket) + 1:] if path.startswith(bucket + "/") else path


def bare_name(path, base):
    """The file name relative to `{base}/_data/`, as the manifest stores it. Accepts the bare name or the
    full bucket-relative key `{base}/_data/{name}`; anything else is a violation."""
    if not isinstance(path, str) or not path:
        raise Violation("path must be a non-empty string")
    data = base.rstrip("/") + "/_data/"
    if path.startswith(data):
        name = path[len(data):]
    elif "/" not in path:
        name = path
    elif path.startswith("_data/"):
        raise Violation(f"path {path!r}: `_data/<name>` would resolve to {data}_data/<name>; "
                        f"give the bare name or the full key {data}<name>")
    else:
        raise Violation(f"path {path!r} is neither a bare file name nor the bucket-relative key under {data}")
    if not name or "/" in name:
        raise Violation(f"path {path!r}: the file must sit directly in {data}")
    return name


# ------------------------------------------------------------------ data file checks (footer)
def check_file(fs, prefix, base, name, op, fentry, expected, errs, where):
    key = f"{base}/_data/{name}"
    try:
        info = fs.get_file_info(prefix + key)
        if info.type.name != "File":
            errs.append(f"{where}: {key} does not exist")
            return None
        with fs.open_input_file(prefix + key) as fh:
            size = fh.size()
            fh.seek(size - 8)
            tail = fh.read(8)
            pf = pq.ParquetFile(fh)
            md, arrow_schema = pf.metadata, pf.schema_arrow
    except Exception as e:  # noqa: BLE001
        errs.append(f"{where}: {key} is not a readable Parquet file: {e}")
        return None
    if tail[4:] != b"PAR1":
        errs.append(f"{where}: {key} has no Parquet footer magic")
        return None
    footer = struct.unpack("<I", tail[:4])[0] + 8
    props = fentry.get("properties") or {}
    if "file_size" in props and int(props["file_size"]) != size:
        errs.append(f"{where}: properties.file_size {props['file_size']} != the object's {size} bytes")
    if "footer_size" in props and int(props["footer_size"]) != footer:
        errs.append(f"{where}: properties.footer_size {props['footer_size']} != {footer} (FileMetaData + 8)")
    types = {str(f["fieldId"]): f for f in expected["newFields"]}
    if arrow_schema.names != op["columns"]:
        errs.append(f"{where}: columns {arrow_schema.names} != the op's {op['columns']} (V3 names columns by field ID)")
    for i, c in enumerate(op["columns"]):
        if c not in arrow_schema.names or c not in types:
            continue
        fld = arrow_schema.field(c)
        want = written_arrow_type({"data_type": types[c]["dataType"], "type_params": types[c]["typeParams"],
                                   "nullable": types[c]["nullable"]})
        if fld.type != want:
            errs.append(f"{where}: column {c} is {fld.type}, Milvus reads it as {want}")
        if types[c]["nullable"] and not fld.nullable:
            errs.append(f"{where}: column {c} must be nullable")
        fid = (fld.metadata or {}).get(b"PARQUET:field_id")
        if fid != c.encode():
            errs.append(f"{where}: column {c} has PARQUET:field_id {fid!r}")
    kv = md.metadata or {}
    if kv.get(b"storage_version") != b"1.0.0":
        errs.append(f"{where}: footer storage_version {kv.get(b'storage_version')!r} != b'1.0.0'")
    rgm = kv.get(b"row_group_metadata")
    if rgm is None:
        errs.append(f"{where}: footer key row_group_metadata missing")
    else:
        check_row_group_metadata(rgm.decode(), md, errs, where, "row group rows {rows} at offset {off}")
    if b"group_field_id_list" in kv:
        errs.append(f"{where}: footer has group_field_id_list (a V2 key, not written for V3)")
    codecs = {md.row_group(i).column(j).compression for i in range(md.num_row_groups)
              for j in range(md.num_columns)}
    if codecs - OK_CODECS:
        errs.append(f"{where}: compression {sorted(codecs - OK_CODECS)}: the official reader is built with "
                    f"ZSTD only (Snappy: 'Support for codec snappy not built')")
    if fentry["endIndex"] > md.num_rows:
        errs.append(f"{where}: endIndex {fentry['endIndex']} > the file's {md.num_rows} rows")
    return md.num_rows


# ------------------------------------------------------------------ commit
def same_group(existing, columns, files):
    return (existing["columns"] == columns and
            [(os.path.basename(f["path"]), f["start_index"], f["end_index"]) for f in existing["files"]] ==
            [(f["path"], f["start_index"], f["end_index"]) for f in files])


def apply_entry(lib, props, exp, entry):
    """Applies one segment's ops in one transaction at the latest version. Returns (before, after, action)."""
    base = exp["basePath"]
    with loon.Transaction(lib, props, base, -1) as tx:
        before = tx.read_version
        sv = entry.get("sourceVersion")
        if isinstance(sv, int) and sv > 0 and sv != before:
            raise Violation(f"segment {exp['segmentId']}: sourceVersion {sv} != the current manifest version "
                            f"{before}; Milvus refuses the entry (ops are applied to the current manifest: "
                            f"leave sourceVersion out or 0)")
        manifest = tx.manifest()
        by_col = {c: g for g in manifest["column_groups"] for c in g["columns"]}
        planned, already = [], 0
        for op in entry["ops"]:
            files = [{"path": bare_name(f["path"], base), "start_index": f["startIndex"], "end_index": f["endIndex"]}
                     for f in op["files"]]
            present = [c for c in op["columns"] if c in by_col]
            if present and op["type"] == "add":
                raise Violation(f"segment {exp['segmentId']}: op add of {present}: the column already exists "
                                f"(an `add` cannot be retried; use `replace`)")
            if present:
                if lib.has_drop_column:
                    for c in present:
                        tx.drop_column(c)
                elif len(present) == len(op["columns"]) and all(
                        same_group(by_col[c], op["columns"], files) for c in present):
                    already += 1  # the very same group is in the manifest: a retry, nothing to do
                    continue
                else:
                    raise Violation(f"segment {exp['segmentId']}: columns {present} already exist with other "
                                    f"files and this milvus-storage build has no drop-column, so `replace` "
                                    f"cannot be applied")
            planned.append((op["columns"], files))
        if not planned:
            return before, before, f"already applied ({already} op(s) unchanged)"
        for cols, files in planned:
            tx.add_column_group(cols, files, "parquet")
        after = tx.commit()
    return before, after, "committed"


def check_manifest_after(lib, props, exp, entry, before_m, after_ver, errs):
    _v, m = loon.manifest_at(lib, props, exp["basePath"], after_ver)
    new_cols = {c for op in entry["ops"] for c in op["columns"]}
    kept = [g for g in before_m["column_groups"] if not set(g["columns"]) & new_cols]
    now_other = [g for g in m["column_groups"] if not set(g["columns"]) & new_cols]
    if kept != now_other:
        errs.append(f"segment {exp['segmentId']}: the commit changed column groups it must keep")
    for op in entry["ops"]:
        gs = [g for g in m["column_groups"] if set(g["columns"]) & set(op["columns"])]
        want = [(bare_name(f["path"], exp["basePath"]), f["startIndex"], f["endIndex"]) for f in op["files"]]
        if len(gs) != 1 or gs[0]["columns"] != op["columns"] or \
                [(os.path.basename(f["path"]), f["start_index"], f["end_index"]) for f in gs[0]["files"]] != want:
            errs.append(f"segment {exp['segmentId']}: manifest v{after_ver} does not hold the group of {op['columns']} "
                        f"as committed: {gs}")
    return m


# ------------------------------------------------------------------ --already-committed (v3Commit: manifest)
def check_result_committed(result, expected):
    """Violations of a result whose run committed the loon transaction itself (`spec.output.v3Commit:
    manifest`): per segment `version` = N+1, `sourceVersion` = N = the latest version before the run,
    no `ops`. The manifests themselves are checked by `check_committed_segment`."""
    errs = check_top(result, expected)
    if not isinstance(result.get("segments"), dict):
        return errs
    for key, entry, exp in segment_entries(result, expected, errs):
        where = f"segment {key}"
        if "ops" in entry:
            errs.append(f"{where}: has ops {'(empty) ' if not entry['ops'] else ''}although the run committed the "
                        f"manifest itself (DataCoord would apply them a second time)")
        check_rows_and_path(entry, exp, expected, errs, where)
        n = exp["latestVersionAtSetup"]
        sv, v = entry.get("sourceVersion"), entry.get("version")
        if sv != n:
            errs.append(f"{where}: sourceVersion {sv!r} != {n}, the latest manifest version before the run"
                        + (f" (the snapshot's ver is {exp['snapshotVersion']}: rows are read there, the commit "
                           f"goes onto the latest)" if n != exp["snapshotVersion"] else ""))
        if v != n + 1:
            errs.append(f"{where}: version {v!r} != {n + 1} (sourceVersion + 1)")
    return errs


def group_key(g):
    return (tuple(g["columns"]), g["format"],
            tuple((f["path"], f["start_index"], f["end_index"], f.get("metadata")) for f in g["files"]))


def check_committed_segment(lib, props, fs, prefix, exp, entry, expected, errs):
    """Checks the manifest the run published for one segment. Returns the new version (or None)."""
    base, seg = exp["basePath"], exp["segmentId"]
    n, want = exp["latestVersionAtSetup"], entry["version"]
    latest, after = loon.manifest_at(lib, props, base)
    if latest != want:
        errs.append(f"segment {seg}: the latest manifest version is {latest}, the result says {want}")
        return None
    key = f"{base}/_metadata/manifest-{want}.avro"
    if fs.get_file_info(prefix + key).type.name != "File":
        errs.append(f"segment {seg}: no object {key}")
    _v, before = loon.manifest_at(lib, props, base, n)
    new_cols = {str(f["fieldId"]) for f in expected["newFields"]}
    old = [group_key(g) for g in before["column_groups"]]
    now = [group_key(g) for g in after["column_groups"]]
    # A new field's earlier group (a re-backfill) is replaced; every other group stays as it was.
    missing = [g for g in old if g not in now and not set(g[0]) <= new_cols]
    if missing:
        errs.append(f"segment {seg}: manifest v{want} lost or changed {len(missing)} column group(s) of v{n}: "
                    f"{[list(g[0]) for g in missing]}")
    if exp["latestVersionAtSetup"] != exp["snapshotVersion"] and \
            not any(g["columns"] == ["999"] for g in after["column_groups"]):
        errs.append(f"segment {seg}: the group of column 999 (published after the snapshot) is gone in v{want}")
    added = [g for g in after["column_groups"] if group_key(g) not in old]
    cols = [c for g in added for c in g["columns"]]
    if sorted(cols) != sorted(new_cols):
        errs.append(f"segment {seg}: manifest v{want} adds columns {sorted(cols)}, want each of {sorted(new_cols)} "
                    f"once")
    for gi, g in enumerate(added):
        if g["format"] != "parquet":
            errs.append(f"segment {seg}: new group {g['columns']} has format {g['format']!r}")
        if loon.group_rows(g) != exp["rows"]:
            errs.append(f"segment {seg}: new group {g['columns']} holds {loon.group_rows(g)} rows, the segment "
                        f"{exp['rows']}")
        for fi, f in enumerate(g["files"]):
            where = f"segment {seg} v{want} group {g['columns']} file {fi}"
            try:
                name = bare_name(f["path"], base)
            except Violation as v:
                errs.append(f"{where}: {v} (the library re-absolutises the stored path)")
                continue
            if not 0 <= f["start_index"] < f["end_index"]:
                errs.append(f"{where}: range [{f['start_index']}, {f['end_index']})")
            op = {"columns": [c for c in g["columns"] if c in new_cols]}
            check_file(fs, prefix, base, name, op, {"endIndex": f["end_index"]}, expected, errs, where)
    return want


def verify_committed(args, result, expected, lib, props, fs, prefix, summary):
    errs = check_result_committed(result, expected)
    exp_segs = {str(s["segmentId"]): s for s in expected["segments"]}
    versions = {}
    if not errs:
        for key, entry in sorted(result["segments"].items()):
            versions[key] = check_committed_segment(lib, props, fs, prefix, exp_segs[key], entry, expected, errs)
    source_map = load_source(args.source or expected["source"], expected)
    for key in sorted(versions):
        errs += provenance_errors(expected.get("mode", "replace"), result["segments"][key], exp_segs[key],
                                  expected["newFields"], source_map)
    exit_on_violations(log, summary, errs, committed=0)
    mismatches, reps = [], []
    for key, ver in sorted(versions.items()):
        exp = exp_segs[key]
        checked, matched = verify_segment(lib, props, exp, expected, ver, source_map, mismatches)
        reps.append({"segmentId": exp["segmentId"], "action": "committed by the run",
                     "versionBefore": exp["latestVersionAtSetup"], "versionAfter": ver,
                     "snapshotVersion": exp["snapshotVersion"], "rows": exp["rows"],
                     "rowsWithSourceKey": matched, "valuesChecked": checked})
        log(f"segment {key}: committed by the run v{exp['latestVersionAtSetup']} -> v{ver} (snapshot v"
            f"{exp['snapshotVersion']}); {checked} values checked, {matched}/{exp['rows']} rows have a source key")
    summary.update(
        ok=not mismatches, segmentsCommitted=len(reps), rowsChecked=sum(r["rows"] for r in reps),
        valuesChecked=sum(r["valuesChecked"] for r in reps), rowsWithSourceKey=sum(r["rowsWithSourceKey"] for r in reps),
        retry=None, mismatches=len(mismatches), mismatchSamples=mismatches[:30], segments=reps)
    print_summary(log, summary, mismatches)
    log(f"OK: {len(reps)} segments committed by the run, {summary['rowsChecked']} rows and "
        f"{summary['valuesChecked']} values checked, 0 mismatches")


# ------------------------------------------------------------------ oracle
def verify_segment(lib, props, exp, expected, version, source_map, mismatches, limit=20):
    pk = expected["pk"]
    fields = expected["newFields"]
    schema = pa.schema([arrow_field(pk["fieldId"], arrow_type({"data_type": pk["dataType"]}), False)] +
                       [arrow_field(f["fieldId"], written_arrow_type({"data_type": f["dataType"], "type_params": f["typeParams"],
                                                                      "nullable": f["nullable"]}),
                                    True) for f in fields])
    _v, t = loon.read_table(lib, props, exp["basePath"], schema, version=version)
    pks = t.column(0).to_pylist()
    if pks != exp["pks"]:
        mismatches.append({"segment": exp["segmentId"], "problem": "PK column at the new version differs from the "
                           "snapshot's row order", "rows": len(pks), "expectedRows": len(exp["pks"])})
        return 0, 0
    checked = 0
    # spec.joinKey: each row is looked up by its join field's value, which may repeat.
    lookup = exp.get("joinKeys") or pks
    keys = {pk for pk, k in zip(pks, lookup) if k in source_map["__keys__"]}
    for f in fields:
        src = {pk: source_map[f["name"]][k] for pk, k in zip(pks, lookup) if k in source_map[f["name"]]}
        want = merged(expected.get("mode", "replace"), pks, exp.get("existing", {}).get(f["name"]), src, keys)
        checked += compare_column(exp["segmentId"], f["name"], pks, t.column(str(f["fieldId"])).to_pylist(),
                                  want, mismatches, limit, per_segment=True)
    matched = len(keys)
    return checked, matched


def merged(mode, pks, existing, src, keys):
    """{pk: the value the reference's `mode` gives}: the segment's existing values (None: the field had no
    data yet) merged with the source's (src: key -> value, keys: every source key)."""
    out = {}
    for i, k in enumerate(pks):
        old = existing[i] if existing is not None else None
        if mode == "replace":
            out[k] = src.get(k)
        elif mode == "coalesce":
            out[k] = old if old is not None else src.get(k)
        elif mode == "overwrite":
            out[k] = src.get(k) if k in keys else old
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    return out


def provenance_errors(mode, entry, exp, fields, source_map):
    """The result's usedSourceByField / usedDataFileByField of one segment against the reference's counts."""
    if mode == "replace":
        return [] if not entry.get("usedSourceByField") else [f"segment {exp['segmentId']}: replace has provenance"]
    errs, keys = [], source_map["__keys__"]
    lookup = exp.get("joinKeys") or exp["pks"]  # spec.joinKey: rows looked up by the join field
    for f in fields:
        old = exp.get("existing", {}).get(f["name"]) or [None] * len(exp["pks"])
        src = source_map[f["name"]]
        if mode == "coalesce":
            kept = sum(1 for v in old if v is not None)
            filled = sum(1 for k, v in zip(lookup, old) if v is None and src.get(k) is not None)
        else:
            filled = sum(1 for k in lookup if k in keys)
            kept = len(exp["pks"]) - filled
        got = (entry.get("usedSourceByField", {}).get(f["name"]), entry.get("usedDataFileByField", {}).get(f["name"]))
        if got != (kept, filled):
            errs.append(f"segment {exp['segmentId']} field {f['name']}: (usedSourceByField, usedDataFileByField) = "
                        f"{got}, the reference counts {(kept, filled)}")
    return errs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--result", required=True)
    ap.add_argument("--expected", required=True)
    ap.add_argument("--source")
    ap.add_argument("--storage", help="storage.json (default: the one recorded in --expected)")
    ap.add_argument("--retry", action="store_true", help="apply the result a second time and check idempotency")
    ap.add_argument("--already-committed", action="store_true",
                    help="the run committed the manifests itself (spec.output.v3Commit: manifest): check the "
                         "version-only entries and the published manifests, commit nothing, verify at the latest")
    args = ap.parse_args()

    expected = json.load(open(args.expected))
    result = json.load(open(args.result))
    storage = json.load(open(args.storage)) if args.storage else expected["storage"]
    lib = loon.Library.get()
    props = lib.properties(loon.storage_fs(storage))
    fs, prefix = pyarrow_fs(storage), key_prefix(storage)
    summary = {"collection": expected["collectionName"], "result": os.path.abspath(args.result),
               "dropColumnInLibrary": lib.has_drop_column}

    if args.already_committed:
        if args.retry:
            raise SystemExit("--retry and --already-committed exclude each other")
        summary["mode"] = "already committed (v3Commit: manifest)"
        return verify_committed(args, result, expected, lib, props, fs, prefix, summary)
    errs = check_result(result, expected)
    exp_segs = {str(s["segmentId"]): s for s in expected["segments"]}
    if not errs:
        for key, entry in sorted(result["segments"].items()):
            exp = exp_segs[key]
            for i, op in enumerate(entry["ops"]):
                for j, f in enumerate(op["files"]):
                    check_file(fs, prefix, exp["basePath"], bare_name(f["path"], exp["basePath"]), op, f, expected,
                               errs, f"segment {key} op {i} file {j}")
            sv = entry.get("sourceVersion")
            if isinstance(sv, int) and sv > 0:
                cur, _m = loon.manifest_at(lib, props, exp["basePath"])
                if sv != cur:
                    errs.append(f"segment {key}: sourceVersion {sv} != the current manifest version {cur} "
                                f"(snapshot ver {exp['snapshotVersion']}); Milvus refuses such an entry. Ops are "
                                f"applied to the current manifest: leave sourceVersion out (or 0)")
    source_map = load_source(args.source or expected["source"], expected)
    if not errs:
        for key, entry in sorted(result["segments"].items()):
            errs += provenance_errors(expected.get("mode", "replace"), entry, exp_segs[key], expected["newFields"],
                                      source_map)
    exit_on_violations(log, summary, errs, committed=0)

    rounds = 2 if args.retry else 1
    mismatches, seg_reports = [], []
    for rnd in range(rounds):
        for key, entry in sorted(result["segments"].items()):
            exp = exp_segs[key]
            _bv, before_m = loon.manifest_at(lib, props, exp["basePath"])
            try:
                before, after, action = apply_entry(lib, props, exp, entry)
            except (Violation, loon.LoonError) as e:
                log(f"COMMIT FAILED segment {key} (round {rnd + 1}): {e}")
                summary.update(ok=False, commitError=str(e), segments=seg_reports)
                print(json.dumps(summary, indent=1))
                sys.exit(2 if isinstance(e, Violation) else 1)
            merrs = []
            check_manifest_after(lib, props, exp, entry, before_m, after, merrs)
            for e in merrs:
                mismatches.append({"segment": exp["segmentId"], "problem": e})
            checked, matched = verify_segment(lib, props, exp, expected, after, source_map, mismatches)
            rep = {"round": rnd + 1, "segmentId": exp["segmentId"], "action": action, "versionBefore": before,
                   "versionAfter": after, "snapshotVersion": exp["snapshotVersion"], "rows": exp["rows"],
                   "rowsWithSourceKey": matched, "valuesChecked": checked}
            seg_reports.append(rep)
            log(f"round {rnd + 1} segment {key}: {action} v{before} -> v{after}; {checked} values checked, "
                f"{matched}/{exp['rows']} rows have a source key")
            if rnd == 1 and (action == "committed") != lib.has_drop_column:
                mismatches.append({"segment": exp["segmentId"], "problem": f"retry: unexpected action {action!r}"})
    first = [r for r in seg_reports if r["round"] == 1]
    summary.update(
        ok=not mismatches,
        segmentsCommitted=sum(1 for r in first if r["action"] == "committed"),
        rowsChecked=sum(r["rows"] for r in first),
        valuesChecked=sum(r["valuesChecked"] for r in first),
        rowsWithSourceKey=sum(r["rowsWithSourceKey"] for r in first),
        retry=("idempotent: " + ", ".join(sorted({r["action"] for r in seg_reports if r["round"] == 2})))
        if args.retry else None,
        mismatches=len(mismatches), mismatchSamples=mismatches[:30], segments=seg_reports)
    print_summary(log, summary, mismatches)
    log(f"OK: {summary['segmentsCommitted']} segments committed, {summary['rowsChecked']} rows and "
        f"{summary['valuesChecked']} values checked, 0 mismatches")


if __name__ == "__main__":
    main()
