"""llama.cpp's C decoders (``dequantize_row_<type>``) through ctypes: the oracle for types that
gguf-py cannot decode (Q1_0, Q2_0) and a second one for the others.

The library is the one ``tests.refs.ggml`` loads (llama-cpp-python's libggml-base).
"""
from __future__ import annotations

import ctypes
from functools import lru_cache

import numpy as np

from .ggml import ggml_base


@lru_cache(maxsize=None)
def _decoder(type_name: str):
    fn = getattr(ggml_base(), "dequantize_row_" + type_name)
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    return fn


def dequantize(type_name: str, q: np.ndarray, n_per_row: int) -> np.ndarray:
    """Decode uint8 rows ``q`` (nrows, row_bytes) of type ``type_name`` (ggml's spelling,
    e.g. ``"q1_0"``, ``"tq2_0"``, ``"q4_K"``) into float32 (nrows, n_per_row)."""
    q = np.ascontiguousarray(q, dtype=np.uint8)
    q2 = q.reshape(-1, q.shape[-1])
    out = np.empty((q2.shape[0], n_per_row), dtype=np.float32)
    dequantize_into(type_name, q2, out)
    return out


def dequantize_into(type_name: str, q: np.ndarray, out: np.ndarray) -> None:
    """As :func:`dequantize`, into a C-contiguous float32 ``out`` (nrows, n_per_row) that
    the caller owns (no allocation: for benches)."""
    assert q.flags.c_contiguous and out.flags.c_contiguous and out.dtype == np.float32
    _decoder(type_name)(q.ctypes.data, out.ctypes.data, out.size)


def row_size(qtype: int, n_per_row: int) -> int:
    """``ggml_row_size``: bytes of one row of ``n_per_row`` weights of type id ``qtype``."""
    return int(ggml_base().ggml_row_size(int(qtype), int(n_per_row)))
