"""safetensors files and Hugging Face folders (sharded, with model.safetensors.index.json).

The header is parsed here (8-byte length + JSON) and data is memory-mapped, because the
``safetensors`` numpy loader rejects BF16, the dtype most checkpoints ship in, and loads whole
tensors where we want row ranges.
"""
from __future__ import annotations

import glob
import json
import mmap
import os
import struct
from typing import Any, Optional

import numpy as np

from gguf.constants import GGMLQuantizationType as T

from ..errors import SourceError, UnsupportedError
from .base import ModelSource, TensorInfo

# safetensors dtype -> (numpy dtype of the stored items, GGUF type or None)
DTYPES: dict[str, tuple[Any, Optional[T]]] = {
    "F64": (np.float64, T.F64), "F32": (np.float32, T.F32), "F16": (np.float16, T.F16),
    "BF16": (np.uint16, T.BF16), "I64": (np.int64, T.I64), "I32": (np.int32, T.I32),
    "I16": (np.int16, T.I16), "I8": (np.int8, T.I8), "U8": (np.uint8, None), "BOOL": (np.uint8, None),
    "U16": (np.uint16, None), "U32": (np.uint32, None), "U64": (np.uint64, None),
    "F8_E4M3": (np.uint8, None), "F8_E5M2": (np.uint8, None),
}
MAX_HEADER = 100 * 1024 * 1024


def bf16_to_f32(u16: np.ndarray) -> np.ndarray:
    return (u16.astype(np.uint32) << 16).view(np.float32)


class _File:
    """One .safetensors file: parsed header, lazily memory-mapped data."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.size = os.path.getsize(path)
            with open(path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise SourceError(f"truncated safetensors: {self.size} bytes, no header", path)
                (n,) = struct.unpack("<Q", head)
                if n > min(MAX_HEADER, self.size - 8):
                    raise SourceError(f"corrupt or truncated safetensors: header length {n} does not fit "
                                      f"in the file ({self.size} bytes)", path)
                raw = f.read(n)
        except OSError as e:
            raise SourceError(f"cannot read: {e.strerror or e}", path) from None
        try:
            header = json.loads(raw.decode("utf-8"))
            if not isinstance(header, dict):
                raise ValueError("header is not a JSON object")
        except (ValueError, UnicodeDecodeError) as e:
            raise SourceError(f"corrupt safetensors header: {e}", path) from None
        self.data_start = 8 + n
        self.user_metadata = header.pop("__metadata__", None) or {}
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, e in header.items():
            try:
                dtype, shape, (b, end) = e["dtype"], tuple(int(s) for s in e["shape"]), e["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise SourceError(f"corrupt safetensors header: bad entry for '{name}'", path) from None
            if dtype not in DTYPES:
                raise UnsupportedError(f"tensor '{name}' has unsupported dtype {dtype}", path)
            nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(DTYPES[dtype][0]).itemsize
            if end - b != nbytes or b < 0:
                raise SourceError(f"corrupt safetensors header: '{name}' {dtype}{list(shape)} needs {nbytes} "
                                  f"bytes, offsets give {end - b}", path)
            if self.data_start + end > self.size:
                raise SourceError(f"truncated: tensor '{name}' data ends at byte {self.data_start + end}, "
                                  f"past the end of the file ({self.size} bytes)", path)
            self.entries[name] = (dtype, shape, int(b), int(end))
        self._mm: Optional[np.memmap] = None

    def array(self, name: str) -> np.ndarray:
        dtype, shape, b, end = self.entries[name]
        if self._mm is None:
            try:
                self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
            except (OSError, ValueError) as e:
                raise SourceError(f"cannot map file: {e}", self.path) from None
        return self._mm[self.data_start + b: self.data_start + end].view(DTYPES[dtype][0])

    def close(self) -> None:
        self._mm = None


class SafetensorsSource(ModelSource):
    """A single .safetensors file or a Hugging Face model folder."""

    def __init__(self, path: str):
        path = os.fspath(path)
        super().__init__(path=path, kind="hf" if os.path.isdir(path) else "safetensors")
        self.config: dict[str, Any] = {}
        self.index_path: Optional[str] = None
        files = self._discover(path)
        self._files = [_File(p) for p in files]
        self._where: dict[str, _File] = {}
        tensors = []
        for f in self._files:
            for name, (dtype, shape, b, end) in f.entries.items():
                if name in self._where:
                    raise SourceError(f"tensor '{name}' appears in two files ({self._where[name].path})", f.path)
                self._where[name] = f
                tensors.append(TensorInfo(name, shape, dtype, end - b, DTYPES[dtype][1]))
        if self._index_map:
            missing = sorted(set(self._index_map) - set(self._where))
            if missing:
                raise SourceError(f"{len(missing)} tensors listed in the index are in no shard "
                                  f"(first: '{missing[0]}' in {self._index_map[missing[0]]})", self.index_path)
        self.tensors = tensors
        self._index()
        self.metadata = {**{f"safetensors.{k}": v for f in self._files for k, v in f.user_metadata.items()},
                         **{f"config.{k}": v for k, v in self.config.items()}}

    def _discover(self, path: str) -> list[str]:
        self._index_map: dict[str, str] = {}
        if not os.path.isdir(path):
            return [path]
        cfg = os.path.join(path, "config.json")
        if os.path.exists(cfg):
            try:
                with open(cfg, encoding="utf-8") as fh:
                    self.config = json.load(fh)
            except (OSError, ValueError) as e:
                raise SourceError(f"cannot read config.json: {e}", cfg) from None
        idx = sorted(glob.glob(os.path.join(path, "*.safetensors.index.json")))
        if idx:
            self.index_path = idx[0]
            try:
                with open(idx[0], encoding="utf-8") as fh:
                    self._index_map = dict(json.load(fh)["weight_map"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise SourceError(f"cannot read the shard index: {e}", idx[0]) from None
            shards = sorted(set(self._index_map.values()))
            absent = [s for s in shards if not os.path.exists(os.path.join(path, s))]
            if absent:
                raise SourceError(f"shard '{absent[0]}' listed in the index is missing"
                                  + (f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""), idx[0])
            return [os.path.join(path, s) for s in shards]
        files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
        if not files:
            raise SourceError("folder has no .safetensors weights (and no model.safetensors.index.json)", path)
        return files

    @property
    def architecture(self) -> Optional[str]:
        archs = self.config.get("architectures") or []
        return archs[0] if archs else self.config.get("model_type")

    @property
    def name(self) -> str:
        return os.path.basename(os.path.normpath(self.path))

    def stored(self, name: str) -> np.ndarray:
        """The stored items (BF16 as uint16) in the tensor's shape, memory-mapped."""
        t = self.tensor(name)
        return self._where[name].array(name).reshape(t.shape)

    def raw(self, name: str) -> np.ndarray:
        self.tensor(name)
        return self._where[name].array(name).view(np.uint8)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        t = self.tensor(name)
        self._check_rows(t, start, stop)
        if t.ggml_type is None and t.dtype not in ("U8", "BOOL", "U16", "U32", "U64"):
            raise UnsupportedError(f"cannot read tensor '{name}' of dtype {t.dtype} as float", self.path)
        flat = self._where[name].array(name).reshape(t.n_rows, t.row_len)[start:stop]
        try:
            if t.dtype == "BF16":
                return bf16_to_f32(flat)
            return flat.astype(np.float32)
        except OSError as e:
            raise SourceError(f"cannot read tensor '{name}': {e.strerror or e}", self._where[name].path) from None

    def release(self, name: str) -> None:
        f = self._where.get(name)
        mm = getattr(f._mm, "_mmap", None) if f is not None and f._mm is not None else None
        if mm is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        _, _, b, end = f.entries[name]
        start = (f.data_start + b) // mmap.PAGESIZE * mmap.PAGESIZE
        try:
            mm.madvise(mmap.MADV_DONTNEED, start, f.data_start + end - start)
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        for f in self._files:
            f.close()
