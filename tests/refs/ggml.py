"""llama.cpp's own C quantizer, through ctypes: the oracle for byte-identity tests and benches.

The shared library comes from the ``llama-cpp-python`` package (which vendors and
builds llama.cpp). Its ``ggml_quantize_chunk`` is what ``llama-quantize`` calls for
every tensor.
"""
from __future__ import annotations

import ctypes
import glob
import os
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=None)
def lib_dir() -> str:
    import llama_cpp  # noqa: F401  (raises ImportError when not installed: an error in CI)

    d = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    if not glob.glob(os.path.join(d, "libggml-base*")):
        raise RuntimeError(f"llama-cpp-python has no libggml-base in {d}")
    return d


@lru_cache(maxsize=None)
def ggml_base() -> ctypes.CDLL:
    path = sorted(glob.glob(os.path.join(lib_dir(), "libggml-base.so*")) or
                  glob.glob(os.path.join(lib_dir(), "libggml-base*")))[0]
    lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    return lib


def quantize(qtype: int, x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Quantize float32 rows with llama.cpp's ``ggml_quantize_chunk``; returns uint8 (nrows, row_bytes)."""
    lib = ggml_base()
    x = np.ascontiguousarray(x, dtype=np.float32)
    x2 = x.reshape(-1, x.shape[-1])
    nrows, n = x2.shape
    rb = lib.ggml_row_size(int(qtype), n)
    out = np.zeros((nrows, rb), dtype=np.uint8)
    im = None
    if imatrix is not None:
        imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
        im = imatrix.ctypes.data
    size = lib.ggml_quantize_chunk(int(qtype), x2.ctypes.data, out.ctypes.data, 0, nrows, n, im)
    assert size == out.nbytes, (size, out.nbytes)
    return out
