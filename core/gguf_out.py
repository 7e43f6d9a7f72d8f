"""Streaming GGUF writer: exact layout up front, tensors written in order, temp files renamed at the end.

The layout (offsets, padding, split shards) is a pure function of the metadata and the tensor
shapes/types, so the predicted size equals the written size to the byte.
Split output follows llama.cpp's gguf-split: ``NAME-00001-of-00003.gguf``, all metadata in the
first shard, ``split.no``/``split.count``/``split.tensors.count`` in every shard.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from .errors import OutputError, UnsupportedError
from .gguf_meta import KV

GGUF_VERSION = 3
DEFAULT_ALIGNMENT = 32
SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS = "split.no", "split.count", "split.tensors.count"


def pad(n: int, align: int) -> int:
    return (n + align - 1) // align * align


@dataclass(frozen=True)
class OutTensor:
    name: str
    shape: tuple[int, ...]           # numpy order: last dim is the row
    qtype: GGMLQuantizationType

    @property
    def nbytes(self) -> int:
        bs, ts = GGML_QUANT_SIZES[self.qtype]
        n = int(np.prod(self.shape)) if self.shape else 1
        return n // bs * ts

    def info_bytes(self, offset: int) -> bytes:
        name = self.name.encode("utf-8")
        ne = list(reversed(self.shape)) or [1]
        return (np.uint64(len(name)).tobytes() + name + np.uint32(len(ne)).tobytes()
                + np.asarray(ne, dtype="<u8").tobytes() + np.uint32(int(self.qtype)).tobytes()
                + np.uint64(offset).tobytes())


@dataclass
class Shard:
    path: str
    kv: list[KV]
    tensors: list[OutTensor] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)   # relative to the data section
    header: bytes = b""
    data_size: int = 0

    @property
    def size(self) -> int:
        return len(self.header) + self.data_size


def shard_path(path: str, i: int, n: int) -> str:
    prefix = path[:-5] if path.lower().endswith(".gguf") else path
    return f"{prefix}-{i + 1:05d}-of-{n:05d}.gguf"


class GGUFLayout:
    """Where every byte of the output goes, computed before anything is written."""

    def __init__(self, path: str, kv: Sequence[KV], tensors: Sequence[OutTensor],
                 split_max_size: Optional[int] = None):
        self.path = os.fspath(path)
        self.kv = list(kv)
        self.tensors = list(tensors)
        align = next((kv.value for kv in self.kv if kv.key == "general.alignment"), DEFAULT_ALIGNMENT)
        self.alignment = int(align)
        groups = self._split(split_max_size) if split_max_size else [self.tensors]
        n = len(groups)
        self.shards: list[Shard] = []
        for i, group in enumerate(groups):
            kvs = [k for k in self.kv if k.key not in (SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS)] if i == 0 else []
            if n > 1:
                kvs = kvs + [KV(SPLIT_NO, i, GGUFValueType.UINT16), KV(SPLIT_COUNT, n, GGUFValueType.UINT16),
                             KV(SPLIT_TENSORS, len(self.tensors), GGUFValueType.INT32)]
            shard = Shard(shard_path(self.path, i, n) if n > 1 else self.path, kvs, list(group))
            self._place(shard)
            self.shards.append(shard)

    def _split(self, max_size: int) -> list[list[OutTensor]]:
        groups: list[list[OutTensor]] = [[]]
        cur = 0
        for t in self.tensors:
            nb = pad(t.nbytes, self.alignment)
            if groups[-1] and cur + nb > max_size:
                groups.append([])
                cur = 0
            groups[-1].append(t)
            cur += nb
        return groups

    def _place(self, shard: Shard) -> None:
        off = 0
        infos = []
        for t in shard.tensors:
            shard.offsets.append(off)
            infos.append(t.info_bytes(off))
            off += pad(t.nbytes, self.alignment)
        head = (b"GGUF" + np.uint32(GGUF_VERSION).tobytes() + np.uint64(len(shard.tensors)).tobytes()
                + np.uint64(len(shard.kv)).tobytes() + b"".join(k.encode() for k in shard.kv) + b"".join(infos))
        shard.header = head + b"\0" * (pad(len(head), self.alignment) - len(head))
        # the last tensor is padded too, as ggml's writer does
        shard.data_size = off

    @property
    def total_size(self) -> int:
        return sum(s.size for s in self.shards)

    @property
    def paths(self) -> list[str]:
        return [s.path for s in self.shards]


class GGUFStreamWriter:
    """Writes a :class:`GGUFLayout` tensor by tensor (each in one or more chunks, in order).

    Files are written as ``NAME.partial`` beside the target and renamed only by :meth:`finish`;
    :meth:`abort` (also on any exception inside ``with``) removes them, leaving existing files intact.
    """

    def __init__(self, layout: GGUFLayout):
        self.layout = layout
        self._order = [(si, ti) for si, s in enumerate(layout.shards) for ti in range(len(s.tensors))]
        self._pos = 0          # index into _order of the tensor being written
        self._written = 0      # bytes of the current tensor written so far
        self._files: list = []
        self._shard = -1

    @staticmethod
    def partial(path: str) -> str:
        return path + ".partial"

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()

    def open(self) -> None:
        for s in self.layout.shards:
            d = os.path.dirname(os.path.abspath(s.path))
            if not os.path.isdir(d):
                raise OutputError("output folder does not exist", d)
            if os.path.isdir(s.path):
                raise OutputError("output path is a folder", s.path)
        self._next_shard()

    def _next_shard(self) -> None:
        if self._files:
            prev = self._files[-1]
            self._io(lambda _: self._close(prev), None)
        self._shard += 1
        s = self.layout.shards[self._shard]
        try:
            f = open(self.partial(s.path), "wb")
        except OSError as e:
            self._files.append(None)
            raise OutputError(f"cannot write: {e.strerror or e}", s.path) from None
        self._files.append(f)
        self._io(f.write, s.header)

    def _io(self, fn, data) -> None:
        try:
            fn(data)
        except OSError as e:
            s = self.layout.shards[self._shard]
            if e.errno == errno.ENOSPC:
                raise OutputError("disk full while writing", s.path) from None
            raise OutputError(f"write failed: {e.strerror or e}", s.path) from None

    @property
    def current(self) -> Optional[OutTensor]:
        if self._pos >= len(self._order):
            return None
        si, ti = self._order[self._pos]
        return self.layout.shards[si].tensors[ti]

    def write(self, name: str, data: np.ndarray) -> None:
        """Append bytes of tensor ``name`` (which must be the next in order)."""
        t = self.current
        if t is None or t.name != name:
            raise OutputError(f"tensor '{name}' written out of order (expected "
                              f"'{t.name if t else 'nothing'}')", self.layout.path)
        si, _ = self._order[self._pos]
        if si != self._shard:
            self._next_shard()
        buf = memoryview(np.ascontiguousarray(data)).cast("B")
        if self._written + len(buf) > t.nbytes:
            raise OutputError(f"tensor '{name}' got {self._written + len(buf)} bytes, expected {t.nbytes}",
                              self.layout.path)
        self._io(self._files[-1].write, buf)
        self._written += len(buf)
        if self._written == t.nbytes:
            padding = pad(t.nbytes, self.layout.alignment) - t.nbytes
            if padding:
                self._io(self._files[-1].write, b"\0" * padding)
            self._pos += 1
            self._written = 0

    def finish(self) -> list[str]:
        if self._pos != len(self._order):
            t = self.current
            self.abort()
            raise OutputError(f"output incomplete: tensor '{t.name if t else '?'}' was never written",
                              self.layout.path)
        try:
            for f in self._files:
                self._close(f)
            for s in self.layout.shards:
                got = os.path.getsize(self.partial(s.path))
                if got != s.size:
                    raise OutputError(f"wrote {got} bytes, layout says {s.size}", s.path)
            for s in self.layout.shards:
                os.replace(self.partial(s.path), s.path)
        except OSError as e:
            self.abort()
            raise OutputError(f"cannot finish writing: {e.strerror or e}", self.layout.path) from None
        except OutputError:
            self.abort()
            raise
        return self.layout.paths

    @staticmethod
    def _close(f) -> None:
        if f is not None and not f.closed:
            f.flush()
            os.fsync(f.fileno())
            f.close()

    def abort(self) -> None:
        for f in self._files:
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        for s in self.layout.shards:
            try:
                os.remove(self.partial(s.path))
            except OSError:
                pass


# ----------------------------------------------------------------------------- a plan's output
QUANTIZATION_VERSION = 2          # GGML_QNT_VERSION


def output_kv(source, plan, extra: Optional[list[KV]] = None) -> list[KV]:
    """The source's metadata with split keys dropped and general.quantization_version,
    general.file_type and ``extra`` set, each as gguf_set_val does in llama-quantize: an existing
    entry of that key is removed and the new one appended at the end."""
    kv = getattr(source, "kv", None)
    if kv is None:
        raise UnsupportedError("writing a GGUF needs GGUF metadata; this source has none "
                               "(a Hugging Face checkpoint must be converted)", source.path)
    sets = [KV("general.quantization_version", QUANTIZATION_VERSION, GGUFValueType.UINT32),
            KV("general.file_type", plan.file_type, GGUFValueType.UINT32)] + list(extra or [])
    keys = {k.key for k in sets}
    out = [k for k in kv if not k.key.startswith("split.") and k.key not in keys]
    return out + sets


def layout_for(source, plan, output: str, split_max_size: Optional[int] = None,
               extra_kv: Optional[list[KV]] = None) -> "GGUFLayout":
    """The layout of ``plan`` (a core.plan.Plan) written from ``source`` (a ModelSource) to ``output``."""
    tensors = [OutTensor(e.name, tuple(e.shape), e.qtype) for e in plan.write_order()]
    return GGUFLayout(output, output_kv(source, plan, extra_kv), tensors, split_max_size)
