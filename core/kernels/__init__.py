"""Numba quantization kernels, one module per family, imported lazily per type.

Contract of a family module (``floats``, ``legacy``, ``kquants``): it ends with a table
``KERNELS = {GGMLQuantizationType: (quantize, dequantize)}`` of ``@njit(cache=True, nogil=True)``
functions, each single-threaded over a chunk of rows (``core.qtypes.KERNEL_FAMILIES`` indexes
which module serves which type, so a type's family is imported only when it is used):

- ``quantize(x, qw, out)``: ``x`` float32 C-contiguous ``(nrows, n_per_row)``;
  ``qw`` float32 importance weights of length ``n_per_row``, or length 0 for none;
  ``out`` uint8 ``(nrows, row_bytes)``, filled with the GGUF block bytes.
- ``dequantize(q, out)``: ``q`` uint8 ``(nrows, row_bytes)``; ``out`` float32
  ``(nrows, n_per_row)``.

Threads run chunks of rows through these (they release the GIL), so progress and
cancel stay responsive; see :meth:`Kernel.quantize`.
"""
from __future__ import annotations

import importlib
import os
from functools import lru_cache

import numpy as np

from ..chunks import row_chunks, run_chunks
from ..errors import PlanError, UnsupportedError
from ..qtypes import KERNEL_FAMILY, TypeInfo, parse_type, type_info

_EMPTY_QW = np.zeros(0, dtype=np.float32)


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class Kernel:
    """Quantize/dequantize pair of one GGUF type, with its block geometry."""

    def __init__(self, info: TypeInfo, quantize_fn, dequantize_fn):
        self.info = info
        self.qtype = info.qtype
        self.name = info.name
        self.block_size = info.block_size
        self.type_size = info.type_size
        self._q = quantize_fn
        self._dq = dequantize_fn

    def row_bytes(self, n_per_row: int) -> int:
        return self.info.row_bytes(n_per_row)

    # -- single chunk (called from worker threads) -------------------------------------
    def quantize_into(self, x: np.ndarray, out: np.ndarray, importance: np.ndarray | None = None) -> None:
        """``importance``: one weight per column of ``x`` (a tensor's imatrix entry), or None. Rows that make
        llama.cpp's own quantizer abort (the i-quants on non-finite or huge values) raise PlanError."""
        try:
            self._q(x, _EMPTY_QW if importance is None else importance, out)
        except ValueError as e:
            if "llama.cpp aborts" not in str(e):
                raise
            raise PlanError(f"{self.name} cannot encode these weights ({e}): use another type") from None

    def dequantize_into(self, q: np.ndarray, out: np.ndarray) -> None:
        self._dq(q, out)

    # -- whole arrays, rows split over threads -----------------------------------------
    def quantize(self, x: np.ndarray, importance: np.ndarray | None = None, threads: int = 1,
                 chunk_weights: int | None = None) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim == 1:
            x = x.reshape(1, -1)
        x2 = x.reshape(-1, x.shape[-1])
        n_per_row = x2.shape[1]
        rb = self.row_bytes(n_per_row)
        if importance is not None:
            importance = np.ascontiguousarray(importance, dtype=np.float32).reshape(-1)
            if importance.shape[0] != n_per_row:
                raise PlanError(f"importance weights have {importance.shape[0]} values, rows have {n_per_row}")
        out = np.empty((x2.shape[0], rb), dtype=np.uint8)
        self._run(lambda a, b: self.quantize_into(x2[a:b], out[a:b], importance), x2.shape[0], n_per_row, threads,
                  chunk_weights)
        return out.reshape(x.shape[:-1] + (rb,))

    def dequantize(self, q: np.ndarray, n_per_row: int, threads: int = 1) -> np.ndarray:
        q = np.ascontiguousarray(q, dtype=np.uint8)
        rb = self.row_bytes(n_per_row)
        q2 = q.reshape(-1, rb)
        out = np.empty((q2.shape[0], n_per_row), dtype=np.float32)
        self._run(lambda a, b: self.dequantize_into(q2[a:b], out[a:b]), q2.shape[0], n_per_row, threads, None)
        return out.reshape(q.shape[:-1] + (n_per_row,)) if q.ndim > 1 else out.reshape(-1)

    @staticmethod
    def _run(fn, nrows: int, row_len: int, threads: int, chunk_weights: int | None) -> None:
        threads = max(1, int(threads))
        if chunk_weights is None:               # one call on one thread, else about four chunks per thread
            chunk_weights = (nrows if threads == 1 else max(1, -(-nrows // (threads * 4)))) * row_len
        run_chunks(fn, row_chunks(nrows, row_len, chunk_weights), threads=threads)

    def __repr__(self) -> str:
        return f"Kernel({self.name})"


@lru_cache(maxsize=None)
def get_kernel(t) -> Kernel:
    """The kernel of a type (name, id or GGMLQuantizationType); imports its family lazily."""
    qt = parse_type(t)
    family = KERNEL_FAMILY.get(qt)
    if family is None:
        raise UnsupportedError(f"type {qt.name} cannot be written by Quant Studio yet")
    quantize, dequantize = importlib.import_module(f"{__name__}.{family}").KERNELS[qt]
    return Kernel(type_info(qt), quantize, dequantize)
