"""A small ctypes binding to the official milvus-storage C++ library ("loon", Milvus StorageV3).

The library is the one bundled in the PyPI wheel `milvus-storage==0.1.0.dev1`. We do not import the
wheel's own Python package (its wrapper calls names the library does not export). The C functions
`loon_*` exist in the library but are *local* ELF symbols, absent from the dynamic symbol table, so
`dlsym` cannot find them: we read their addresses from the ELF `.symtab`, add the load bias of the
library in this process, and call them with the signatures of milvus-storage
`cpp/include/milvus-storage/ffi_c.h` (commit aa8631a8, which matches the wheel).

Only what the e2e harness needs is bound: properties, the writer, transactions, the reader.
Every failing call raises `LoonError` carrying the library's own message.
"""
import ctypes
import ctypes.util
import importlib.util
import mmap
import os
import struct

import pyarrow as pa

__all__ = [
    "LoonError", "Library", "Transaction", "local_fs", "s3_fs", "storage_fs",
    "write_table", "manifest_at", "read_table",
]


class LoonError(RuntimeError):
    """A `loon_*` call failed; `code` is the LOON_* error code, the text is the library's message."""

    def __init__(self, func, code, message):
        self.func, self.code, self.library_message = func, code, message
        super().__init__(f"{func} failed (code {code} {_CODE_NAMES.get(code, '?')}): {message}")


_CODE_NAMES = {1: "INVALID_ARGS", 2: "MEMORY_ERROR", 3: "ARROW_ERROR", 4: "LOGICAL_ERROR",
               5: "GOT_EXCEPTION", 6: "UNREACHABLE_ERROR", 7: "INVALID_PROPERTIES"}


# ------------------------------------------------------------------ C structures (ffi_c.h)
class _Result(ctypes.Structure):
    # `message` is heap memory owned by the library: kept as a raw pointer so we can free it.
    _fields_ = [("err_code", ctypes.c_int), ("message", ctypes.c_void_p)]


class _Property(ctypes.Structure):
    _fields_ = [("key", ctypes.c_char_p), ("value", ctypes.c_char_p)]


class _Properties(ctypes.Structure):
    _fields_ = [("properties", ctypes.POINTER(_Property)), ("count", ctypes.c_size_t)]


class _GroupFile(ctypes.Structure):
    _fields_ = [("path", ctypes.c_char_p), ("start_index", ctypes.c_int64), ("end_index", ctypes.c_int64),
                ("metadata", ctypes.POINTER(ctypes.c_uint8)), ("metadata_size", ctypes.c_uint64)]


class _Group(ctypes.Structure):
    _fields_ = [("columns", ctypes.POINTER(ctypes.c_char_p)), ("num_of_columns", ctypes.c_uint32),
                ("format", ctypes.c_char_p), ("files", ctypes.POINTER(_GroupFile)),
                ("num_of_files", ctypes.c_uint32)]


class _Groups(ctypes.Structure):
    _fields_ = [("column_group_array", ctypes.POINTER(_Group)), ("num_of_column_groups", ctypes.c_uint32)]


class _DeltaLogs(ctypes.Structure):
    _fields_ = [("delta_log_paths", ctypes.POINTER(ctypes.c_char_p)),
                ("delta_log_num_entries", ctypes.POINTER(ctypes.c_uint32)),
                ("num_delta_logs", ctypes.c_uint32)]


class _Stats(ctypes.Structure):
    _fields_ = [("stat_keys", ctypes.POINTER(ctypes.c_char_p)),
                ("stat_files", ctypes.POINTER(ctypes.POINTER(ctypes.c_char_p))),
                ("stat_file_counts", ctypes.POINTER(ctypes.c_uint32)), ("num_stats", ctypes.c_uint32)]


class _Manifest(ctypes.Structure):
    _fields_ = [("column_groups", _Groups), ("delta_logs", _DeltaLogs), ("stats", _Stats)]


# Sizes of the Arrow C data interface structs (arrow/c/abi.h) on 64-bit.
_ARROW_SCHEMA_SIZE = 72
_ARROW_ARRAY_SIZE = 80
_ARROW_STREAM_SIZE = 40

_u64, _i64, _vp, _cp = ctypes.c_uint64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_char_p
_ptr = ctypes.POINTER

# name -> (restype, argtypes); handles are uintptr_t.
_SIGNATURES = {
    "loon_ffi_free_result": (None, [_ptr(_Result)]),
    "loon_properties_create": (_Result, [_ptr(_cp), _ptr(_cp), ctypes.c_size_t, _ptr(_Properties)]),
    "loon_properties_free": (None, [_ptr(_Properties)]),
    "loon_writer_new": (_Result, [_cp, _vp, _ptr(_Properties), _ptr(_u64)]),
    "loon_writer_write": (_Result, [_u64, _vp]),
    "loon_writer_flush": (_Result, [_u64]),
    "loon_writer_close": (_Result, [_u64, _ptr(_cp), _ptr(_cp), ctypes.c_uint16, _ptr(_ptr(_Groups))]),
    "loon_writer_destroy": (None, [_u64]),
    "loon_column_groups_destroy": (None, [_ptr(_Groups)]),
    "loon_manifest_destroy": (None, [_ptr(_Manifest)]),
    "loon_reader_new": (_Result, [_ptr(_Groups), _vp, _ptr(_cp), ctypes.c_size_t, _ptr(_Properties), _ptr(_u64)]),
    "loon_get_record_batch_reader": (_Result, [_u64, _cp, _vp]),
    "loon_reader_destroy": (None, [_u64]),
    "loon_transaction_begin": (_Result, [_cp, _ptr(_Properties), _i64, ctypes.c_uint32, _ptr(_u64)]),
    "loon_transaction_get_manifest": (_Result, [_u64, _ptr(_ptr(_Manifest))]),
    "loon_transaction_get_read_version": (_Result, [_u64, _ptr(_i64)]),
    "loon_transaction_add_column_group": (_Result, [_u64, _ptr(_Group)]),
    "loon_transaction_append_files": (_Result, [_u64, _ptr(_Groups)]),
    "loon_transaction_commit": (_Result, [_u64, _ptr(_i64)]),
    "loon_transaction_destroy": (None, [_u64]),
}
# Present only in newer milvus-storage builds (main after Jan 2026); bound when the library has it.
_OPTIONAL_SIGNATURES = {
    "loon_transaction_drop_column": (_Result, [_u64, _cp]),
}


# ------------------------------------------------------------------ ELF: local symbol addresses
def _elf_function_symbols(path, prefix):
    """{name: st_value} of the defined FUNC symbols in the SHT_SYMTAB section whose name starts with prefix,
    and the lowest PT_LOAD virtual address (to turn st_value into an address in memory)."""
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
        if m[:4] != b"\x7fELF" or m[4] != 2 or m[5] != 1:
            raise LoonError("elf", -1, f"{path} is not a little-endian ELF64 file")
        e_phoff, e_shoff = struct.unpack_from("<QQ", m, 0x20)
        e_phentsize, e_phnum, e_shentsize, e_shnum = struct.unpack_from("<HHHH", m, 0x36)
        min_vaddr = None
        for i in range(e_phnum):
            p_type, _flags, _off, p_vaddr = struct.unpack_from("<IIQQ", m, e_phoff + i * e_phentsize)
            if p_type == 1:  # PT_LOAD
                min_vaddr = p_vaddr if min_vaddr is None else min(min_vaddr, p_vaddr)
        sections = []
        for i in range(e_shnum):
            # sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, sh_info, sh_addralign, sh_entsize
            sections.append(struct.unpack_from("<IIQQQQIIQQ", m, e_shoff + i * e_shentsize))
        found = {}
        for sec in sections:
            if sec[1] != 2:  # SHT_SYMTAB
                continue
            str_off = sections[sec[6]][4]
            entsize = sec[9] or 24
            for i in range(sec[5] // entsize):
                st_name, st_info, _other, st_shndx, st_value, _size = struct.unpack_from(
                    "<IBBHQQ", m, sec[4] + i * entsize)
                if (st_info & 0xF) != 2 or st_shndx == 0:  # STT_FUNC, defined
                    continue
                end = m.find(b"\0", str_off + st_name)
                name = m[str_off + st_name:end]
                if name.startswith(prefix) and b"." not in name:
                    found[name.decode()] = st_value
        if not found:
            raise LoonError("elf", -1, f"no {prefix.decode()}* symbols in the .symtab of {path} (stripped build?)")
        return found, (min_vaddr or 0)


def _load_bias(path, min_vaddr):
    real = os.path.realpath(path)
    lowest = None
    with open("/proc/self/maps") as fh:
        for line in fh:
            cols = line.split(maxsplit=5)
            if len(cols) == 6 and cols[5].strip() == real:
                start = int(cols[0].split("-")[0], 16)
                if int(cols[2], 16) == 0 and (lowest is None or start < lowest):
                    lowest = start
    if lowest is None:
        raise LoonError("maps", -1, f"{real} is not mapped in this process")
    return lowest - (min_vaddr & ~0xFFF)


def default_library_path():
    env = os.environ.get("MILVUS_STORAGE_LIB")
    if env:
        return env
    spec = importlib.util.find_spec("milvus_storage")
    if spec is None or not spec.submodule_search_locations:
        raise LoonError("load", -1, "the PyPI wheel milvus-storage==0.1.0.dev1 is not installed in this Python")
    return os.path.join(list(spec.submodule_search_locations)[0], "lib", "libmilvus-storage.so")


class Library:
    """The loaded native library and its bound functions. One per process is enough (see `get()`)."""

    _instance = None

    @classmethod
    def get(cls):
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def __init__(self, path=None):
        self.path = path or default_library_path()
        # The bundled glog references an lzma symbol version that must already be global.
        for cand in ("liblzma.so.5", ctypes.util.find_library("lzma")):
            if not cand:
                continue
            try:
                ctypes.CDLL(cand, mode=ctypes.RTLD_GLOBAL)
                break
            except OSError:
                continue
        self._dll = ctypes.CDLL(self.path, mode=ctypes.RTLD_GLOBAL)
        symbols, min_vaddr = _elf_function_symbols(self.path, b"loon_")
        bias = _load_bias(self.path, min_vaddr)
        self._fn = {}
        for name, (res, args) in list(_SIGNATURES.items()) + list(_OPTIONAL_SIGNATURES.items()):
            if name not in symbols:
                if name in _SIGNATURES:
                    raise LoonError("load", -1, f"{name} not found in {self.path}: not the expected wheel?")
                continue
            self._fn[name] = ctypes.CFUNCTYPE(res, *args)(bias + symbols[name])
        self.symbols = sorted(symbols)

    @property
    def has_drop_column(self):
        return "loon_transaction_drop_column" in self._fn

    def raw(self, name):
        return self._fn[name]

    def call(self, name, *args):
        """Calls a LoonFFIResult-returning function; raises LoonError with the library's message."""
        res = self._fn[name](*args)
        if res.err_code != 0:
            msg = ctypes.string_at(res.message).decode(errors="replace") if res.message else ""
            self._fn["loon_ffi_free_result"](ctypes.byref(res))
            raise LoonError(name, res.err_code, msg)

    def properties(self, mapping):
        return Properties(self, mapping)


class Properties:
    """A LoonProperties built by the library from a {key: value} dict."""

    def __init__(self, lib, mapping):
        if not mapping:
            raise ValueError("the library refuses empty properties")
        self.lib, self.mapping = lib, {str(k): str(v) for k, v in mapping.items()}
        keys = (ctypes.c_char_p * len(self.mapping))(*[k.encode() for k in self.mapping])
        vals = (ctypes.c_char_p * len(self.mapping))(*[v.encode() for v in self.mapping.values()])
        self._c = _Properties()
        lib.call("loon_properties_create", keys, vals, len(self.mapping), ctypes.byref(self._c))

    @property
    def ref(self):
        return ctypes.byref(self._c)

    def __del__(self):
        try:
            if self._c.count:
                self.lib.raw("loon_properties_free")(ctypes.byref(self._c))
                self._c.count = 0
        except Exception:  # interpreter shutdown
            pass


# ------------------------------------------------------------------ filesystem properties
def local_fs(root):
    """Library properties for a local directory acting as the bucket (paths are relative to it)."""
    return {"fs.storage_type": "local", "fs.root_path": os.path.abspath(root)}


def s3_fs(endpoint, bucket, access_key=None, secret_key=None, region="us-east-1", use_ssl=False):
    """Library properties for an S3-compatible endpoint `host:port`; paths are bucket-relative keys."""
    return {
        "fs.storage_type": "remote", "fs.cloud_provider": "aws", "fs.address": endpoint,
        "fs.bucket_name": bucket,
        "fs.access_key_id": access_key if access_key is not None else os.environ.get("AWS_ACCESS_KEY_ID", "test"),
        "fs.access_key_value": secret_key if secret_key is not None else os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
        "fs.region": region, "fs.use_ssl": "true" if use_ssl else "false", "fs.use_virtual_host": "false",
        "fs.root_path": "",
    }


def storage_fs(storage):
    """Properties from the harness' storage descriptor: {"kind": "local", "root": DIR} or
    {"kind": "s3", "endpoint": "host:port", "bucket": B, "region": R}. Credentials come from the environment."""
    if storage["kind"] == "local":
        return local_fs(storage["root"])
    return s3_fs(storage["endpoint"], storage["bucket"], region=storage.get("region", "us-east-1"))


# ------------------------------------------------------------------ manifests
def _manifest_dict(m):
    groups = []
    cg = m.column_groups
    for i in range(cg.num_of_column_groups):
        g = cg.column_group_array[i]
        files = []
        for j in range(g.num_of_files):
            f = g.files[j]
            entry = {"path": f.path.decode(), "start_index": f.start_index, "end_index": f.end_index}
            if f.metadata and f.metadata_size:
                entry["metadata"] = ctypes.string_at(f.metadata, f.metadata_size)
            files.append(entry)
        groups.append({"columns": [g.columns[k].decode() for k in range(g.num_of_columns)],
                       "format": g.format.decode() if g.format else "", "files": files})
    dl = m.delta_logs
    deltas = [{"path": dl.delta_log_paths[i].decode(), "num_entries": dl.delta_log_num_entries[i]}
              for i in range(dl.num_delta_logs)]
    st = m.stats
    stats = {st.stat_keys[i].decode(): [st.stat_files[i][j].decode() for j in range(st.stat_file_counts[i])]
             for i in range(st.num_stats)}
    return {"column_groups": groups, "delta_logs": deltas, "stats": stats}


def group_rows(group):
    return sum(f["end_index"] - f["start_index"] for f in group["files"])


def _c_group(columns, files, fmt):
    """Builds a LoonColumnGroup; returns it with the Python objects that keep its memory alive."""
    keep = []
    cols = (ctypes.c_char_p * len(columns))(*[c.encode() for c in columns])
    cfiles = (_GroupFile * len(files))()
    for i, f in enumerate(files):
        cfiles[i].path = f["path"].encode()
        cfiles[i].start_index = int(f["start_index"])
        cfiles[i].end_index = int(f["end_index"])
        meta = f.get("metadata")
        if meta:
            buf = (ctypes.c_uint8 * len(meta)).from_buffer_copy(meta)
            keep.append(buf)
            cfiles[i].metadata = ctypes.cast(buf, ctypes.POINTER(ctypes.c_uint8))
            cfiles[i].metadata_size = len(meta)
    fmt_b = fmt.encode()
    g = _Group(columns=cols, num_of_columns=len(columns), format=fmt_b, files=cfiles, num_of_files=len(files))
    keep += [cols, cfiles, fmt_b]
    return g, keep


class Transaction:
    """A manifest transaction on one segment base path (`loon_transaction_begin` .. `commit`).

    version=-1 opens the latest manifest; a positive version opens that one. The library resolves
    conflicts with its FailResolver: a commit fails if another version was published meanwhile."""

    def __init__(self, lib, props, base_path, version=-1, retry_limit=1):
        self.lib, self.props, self.base_path = lib, props, base_path
        self._h = ctypes.c_uint64()
        lib.call("loon_transaction_begin", base_path.encode(), props.ref, int(version), retry_limit,
                 ctypes.byref(self._h))
        self._keep = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._h.value:
            self.lib.raw("loon_transaction_destroy")(self._h)
            self._h = ctypes.c_uint64()

    @property
    def read_version(self):
        v = ctypes.c_int64()
        self.lib.call("loon_transaction_get_read_version", self._h, ctypes.byref(v))
        return v.value

    def _manifest_ptr(self):
        mp = _ptr(_Manifest)()
        self.lib.call("loon_transaction_get_manifest", self._h, ctypes.byref(mp))
        return mp

    def manifest(self):
        """The manifest read by this transaction, as a dict (file paths as the library returns them:
        re-absolutised against the base path, i.e. `{base}/_data/{name}`)."""
        mp = self._manifest_ptr()
        try:
            return _manifest_dict(mp.contents)
        finally:
            self.lib.raw("loon_manifest_destroy")(mp)

    def add_column_group(self, columns, files, fmt="parquet"):
        """files: [{"path", "start_index", "end_index", optional "metadata": bytes}]."""
        g, keep = _c_group(columns, files, fmt)
        self._keep.append((g, keep))
        self.lib.call("loon_transaction_add_column_group", self._h, ctypes.byref(g))

    def append_files(self, groups_ptr):
        """Appends the files of library-made column groups (from the writer) to the existing groups."""
        self.lib.call("loon_transaction_append_files", self._h, groups_ptr)

    def drop_column(self, column):
        if not self.lib.has_drop_column:
            raise LoonError("loon_transaction_drop_column", -1,
                            "this milvus-storage build has no drop-column transaction function")
        self.lib.call("loon_transaction_drop_column", self._h, column.encode())

    def commit(self):
        v = ctypes.c_int64()
        self.lib.call("loon_transaction_commit", self._h, ctypes.byref(v))
        return v.value


def manifest_at(lib, props, base_path, version=-1):
    """(version, manifest dict) at `version` (-1 = latest)."""
    with Transaction(lib, props, base_path, version) as tx:
        return tx.read_version, tx.manifest()


# ------------------------------------------------------------------ writer and reader
def _export_schema(schema):
    buf = ctypes.create_string_buffer(_ARROW_SCHEMA_SIZE)
    schema._export_to_c(ctypes.addressof(buf))
    return buf


def write_table(lib, fs_props, base_path, table, groups=None, batch_rows=None, new_groups=False):
    """Writes `table` with the official writer and commits its files as a new manifest version.

    groups: None for one column group, or a list of regexes on column names (the library's
    `schema_based` policy): group i = columns matching pattern i, then a last group for the rest.
    new_groups=False appends the files to the existing groups (same grouping required; on an empty
    dataset this creates them); True adds the writer's groups as new column groups (their columns
    must not exist yet). Returns the committed manifest version."""
    wprops = dict(fs_props)
    if groups:
        wprops["writer.policy"] = "schema_based"
        wprops["writer.split.schema_based.patterns"] = ",".join(groups)
    props = lib.properties(wprops)
    c_schema = _export_schema(table.schema)
    wh = ctypes.c_uint64()
    lib.call("loon_writer_new", base_path.encode(), ctypes.addressof(c_schema), props.ref, ctypes.byref(wh))
    out = _ptr(_Groups)()
    try:
        for batch in table.to_batches(max_chunksize=batch_rows):
            arr = ctypes.create_string_buffer(_ARROW_ARRAY_SIZE)
            batch._export_to_c(ctypes.addressof(arr))
            lib.call("loon_writer_write", wh, ctypes.addressof(arr))
        lib.call("loon_writer_flush", wh)
        none = (ctypes.c_char_p * 1)()
        lib.call("loon_writer_close", wh, none, none, 0, ctypes.byref(out))
    finally:
        lib.raw("loon_writer_destroy")(wh)
    try:
        with Transaction(lib, props, base_path) as tx:
            if new_groups:
                for i in range(out.contents.num_of_column_groups):
                    lib.call("loon_transaction_add_column_group", tx._h,
                             ctypes.byref(out.contents.column_group_array[i]))
            else:
                tx.append_files(out)
            return tx.commit()
    finally:
        lib.raw("loon_column_groups_destroy")(out)


def read_table(lib, props, base_path, schema, version=-1):
    """Reads the columns of `schema` (names = manifest column names) through the official reader,
    at manifest `version` (-1 = latest). Returns (version read, pyarrow.Table)."""
    with Transaction(lib, props, base_path, version) as tx:
        ver = tx.read_version
        mp = tx._manifest_ptr()
    try:
        names = (ctypes.c_char_p * len(schema.names))(*[n.encode() for n in schema.names])
        c_schema = _export_schema(schema)
        rh = ctypes.c_uint64()
        lib.call("loon_reader_new", ctypes.byref(mp.contents.column_groups), ctypes.addressof(c_schema), names,
                 len(schema.names), props.ref, ctypes.byref(rh))
    finally:
        lib.raw("loon_manifest_destroy")(mp)
    try:
        stream = ctypes.create_string_buffer(_ARROW_STREAM_SIZE)
        lib.call("loon_get_record_batch_reader", rh, None, ctypes.addressof(stream))
        try:
            table = pa.RecordBatchReader._import_from_c(ctypes.addressof(stream)).read_all()
        except pa.ArrowException as e:  # errors raised while the library decodes the files
            raise LoonError("record batch stream", 3, str(e)) from e
    finally:
        lib.raw("loon_reader_destroy")(rh)
    return ver, table
