"""A fast, defensive GGUF header parser.

gguf-py's GGUFReader builds a numpy view per string (6 s for SmolLM2's 49k-token vocabulary);
this parser walks the header once with ``struct`` (about 0.1 s) and checks every length and
offset against the file size, so corrupt files give a clear error instead of a crash or a hang.
"""
from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from ..errors import SourceError, UnsupportedError
from ..gguf_meta import KV

_SCALARS = {  # value type -> (struct format, size)
    GGUFValueType.UINT8: ("<B", 1), GGUFValueType.INT8: ("<b", 1), GGUFValueType.UINT16: ("<H", 2),
    GGUFValueType.INT16: ("<h", 2), GGUFValueType.UINT32: ("<I", 4), GGUFValueType.INT32: ("<i", 4),
    GGUFValueType.FLOAT32: ("<f", 4), GGUFValueType.BOOL: ("<?", 1), GGUFValueType.UINT64: ("<Q", 8),
    GGUFValueType.INT64: ("<q", 8), GGUFValueType.FLOAT64: ("<d", 8),
}
_NP = {GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1", GGUFValueType.UINT16: "<u2",
       GGUFValueType.INT16: "<i2", GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4",
       GGUFValueType.FLOAT32: "<f4", GGUFValueType.BOOL: "?", GGUFValueType.UINT64: "<u8",
       GGUFValueType.INT64: "<i8", GGUFValueType.FLOAT64: "<f8"}
MAX_DIMS = 4


@dataclass
class TensorEntry:
    name: str
    shape: tuple[int, ...]      # numpy order
    qtype: GGMLQuantizationType
    offset: int                 # absolute file offset of the data
    nbytes: int


@dataclass
class Header:
    version: int
    kv: list[KV]
    tensors: list[TensorEntry]
    alignment: int
    data_start: int


class _Cursor:
    def __init__(self, buf, path: str):
        self.buf, self.pos, self.size, self.path = buf, 0, len(buf), path

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise SourceError(f"truncated or corrupt GGUF header: {what} at byte {self.pos} needs {n} bytes, "
                              f"the file has {self.size}", self.path)

    def take(self, fmt: str, n: int, what: str):
        self.need(n, what)
        v = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += n
        return v

    def string(self, what: str) -> str:
        n = self.take("<Q", 8, what)
        self.need(n, what)
        s = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return s.decode("utf-8", errors="replace")

    def vtype(self, what: str) -> GGUFValueType:
        t = self.take("<I", 4, what)
        try:
            return GGUFValueType(t)
        except ValueError:
            raise SourceError(f"corrupt GGUF header: unknown value type {t} in {what}", self.path) from None


def _value(c: _Cursor, vt: GGUFValueType, key: str):
    if vt == GGUFValueType.STRING:
        return c.string(key), None
    if vt in _SCALARS:
        fmt, n = _SCALARS[vt]
        return c.take(fmt, n, key), None
    sub = c.vtype(key)
    count = c.take("<Q", 8, key)
    if sub == GGUFValueType.STRING:
        if count * 8 > c.size - c.pos:
            raise SourceError(f"corrupt GGUF header: array '{key}' claims {count} strings, more than the file "
                              "can hold", c.path)
        return [c.string(key) for _ in range(count)], sub
    if sub == GGUFValueType.ARRAY:
        raise SourceError(f"unsupported GGUF metadata: nested array in '{key}'", c.path)
    fmt, n = _SCALARS[sub]
    c.need(count * n, f"array '{key}' of {count} items")
    arr = np.frombuffer(c.buf, dtype=_NP[sub], count=count, offset=c.pos).copy()
    c.pos += count * n
    return arr, sub


def parse_header(path: str, mm: mmap.mmap) -> Header:
    view = memoryview(mm)
    try:
        return _parse(_Cursor(view, path), path)
    finally:
        view.release()


def _parse(c: _Cursor, path: str) -> Header:
    if c.size < 24:
        raise SourceError(f"truncated GGUF: {c.size} bytes, the header alone needs 24", path)
    magic = bytes(c.buf[:4])
    if magic != b"GGUF":
        raise SourceError(f"not a GGUF file (magic {magic!r}, expected b'GGUF')", path)
    c.pos = 4
    version = c.take("<I", 4, "version")
    if version not in (2, 3):
        raise SourceError(f"unsupported GGUF version {version} (2 and 3 are supported)", path)
    n_tensors = c.take("<Q", 8, "tensor count")
    n_kv = c.take("<Q", 8, "metadata count")
    if n_tensors * 32 > c.size:
        raise SourceError(f"corrupt GGUF header: {n_tensors} tensors cannot fit in {c.size} bytes", path)
    if n_kv * 13 > c.size:
        raise SourceError(f"corrupt GGUF header: {n_kv} metadata entries cannot fit in {c.size} bytes", path)
    kv = []
    for _ in range(n_kv):
        key = c.string("metadata key")
        start = c.pos
        vt = c.vtype(f"'{key}'")
        value, sub = _value(c, vt, key)
        kv.append(KV(key, value, vt, sub, bytes(c.buf[start:c.pos])))
    align = next((int(k.value) for k in kv if k.key == "general.alignment"), 32)
    if align <= 0 or align & (align - 1):
        raise SourceError(f"corrupt GGUF header: alignment {align} is not a power of two", path)
    raw = []
    for _ in range(n_tensors):
        name = c.string("tensor name")
        nd = c.take("<I", 4, f"tensor '{name}'")
        if nd > MAX_DIMS:
            raise SourceError(f"corrupt GGUF header: tensor '{name}' has {nd} dimensions (at most {MAX_DIMS})",
                              path)
        c.need(8 * nd, f"tensor '{name}' shape")
        ne = list(struct.unpack_from(f"<{nd}Q", c.buf, c.pos))
        c.pos += 8 * nd
        tid = c.take("<I", 4, f"tensor '{name}'")
        off = c.take("<Q", 8, f"tensor '{name}'")
        try:
            qt = GGMLQuantizationType(tid)
        except ValueError:
            raise UnsupportedError(f"tensor '{name}' has unknown type id {tid}", path) from None
        raw.append((name, ne, qt, off))
    data_start = (c.pos + align - 1) // align * align
    tensors, seen = [], set()
    for name, ne, qt, off in raw:
        if name in seen:
            raise SourceError(f"corrupt GGUF header: tensor '{name}' appears twice", path)
        seen.add(name)
        bs, ts = GGML_QUANT_SIZES[qt]
        n = int(np.prod(ne, dtype=np.float64)) if ne else 1
        if any(d <= 0 for d in ne) or n > c.size * 64:
            raise SourceError(f"corrupt GGUF header: tensor '{name}' has shape {ne}", path)
        if ne and ne[0] % bs:
            raise SourceError(f"corrupt GGUF: tensor '{name}' row length {ne[0]} is not a multiple of "
                              f"{qt.name}'s block size {bs}", path)
        nbytes = n // bs * ts
        if data_start + off + nbytes > c.size:
            raise SourceError(f"truncated: tensor '{name}' data ends at byte {data_start + off + nbytes}, past "
                              f"the end of the file ({c.size} bytes)", path)
        tensors.append(TensorEntry(name, tuple(reversed(ne)), qt, data_start + off, nbytes))
    return Header(version, kv, tensors, align, data_start)
