"""GGUF files of any tensor type: header parsed by ``gguf_header``, data memory-mapped."""
from __future__ import annotations

import mmap
import os
from typing import Optional

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from ..errors import SourceError, UnsupportedError
from ..qtypes import KERNEL_FAMILY
from .base import ModelSource, TensorInfo
from .gguf_header import parse_header

_INT_TYPES = {GGMLQuantizationType.I8: np.int8, GGMLQuantizationType.I16: np.int16,
              GGMLQuantizationType.I32: np.int32, GGMLQuantizationType.I64: np.int64,
              GGMLQuantizationType.F64: np.float64}


class GGUFSource(ModelSource):
    """A GGUF file. Tensors keep their stored type; ``read_rows`` dequantizes to float32 (our Numba
    kernels where we have them, gguf-py's numpy decoder for every other type)."""

    def __init__(self, path: str):
        super().__init__(path=os.fspath(path), kind="gguf")
        try:
            size = os.path.getsize(self.path)
            if size < 24:
                raise SourceError(f"truncated GGUF: {size} bytes, the header alone needs 24", self.path)
            with open(self.path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise SourceError(f"cannot open: {e.strerror or e}", self.path) from None
        try:
            h = parse_header(self.path, self._mm)
        except BaseException:
            try:
                self._mm.close()
            except BufferError:
                pass
            raise
        self.kv = h.kv
        self.version = h.version
        self.alignment = h.alignment
        self.metadata = {k.key: k.value for k in h.kv}
        self._entries = {t.name: t for t in h.tensors}
        self.tensors = [TensorInfo(t.name, t.shape, t.qtype.name, t.nbytes, t.qtype) for t in h.tensors]
        self._index()
        self._data = np.frombuffer(self._mm, dtype=np.uint8)

    @property
    def architecture(self) -> Optional[str]:
        return self.metadata.get("general.architecture")

    def data_span(self, name: str) -> tuple[int, int]:
        """(offset in the file, size in bytes) of a tensor's data."""
        self.tensor(name)
        e = self._entries[name]
        return e.offset, e.nbytes

    def raw(self, name: str) -> np.ndarray:
        self.tensor(name)
        e = self._entries[name]
        return self._data[e.offset:e.offset + e.nbytes]

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        t = self.tensor(name)
        self._check_rows(t, start, stop)
        qt = t.ggml_type
        bs, ts = GGML_QUANT_SIZES[qt]
        rows = self.raw(name).reshape(t.n_rows, t.row_len // bs * ts)[start:stop]
        n = stop - start
        try:
            if qt in _INT_TYPES:
                return rows.view(_INT_TYPES[qt]).astype(np.float32).reshape(n, t.row_len)
            if qt in KERNEL_FAMILY:
                from ..kernels import get_kernel
                return get_kernel(qt).dequantize(rows, t.row_len).reshape(n, t.row_len)
            from gguf.quants import dequantize
            return dequantize(np.ascontiguousarray(rows), qt).astype(np.float32, copy=False).reshape(n, t.row_len)
        except NotImplementedError:
            raise UnsupportedError(f"cannot decode tensor '{name}' of type {qt.name}", self.path) from None
        except OSError as e:
            raise SourceError(f"cannot read tensor '{name}': {e.strerror or e}", self.path) from None

    def release(self, name: str) -> None:
        e = self._entries.get(name)
        if e is None or self._mm is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        page = mmap.PAGESIZE
        start = e.offset // page * page
        try:
            self._mm.madvise(mmap.MADV_DONTNEED, start, e.offset + e.nbytes - start)
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        self._data = None
        mm = getattr(self, "_mm", None)
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass   # arrays still view the map; it closes when they go
