"""TQ1_0 and TQ2_0: bytes identical to llama.cpp's C quantizer, block by block; decoding
identical to gguf-py's and llama.cpp's."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants as gq

from core.kernels import Kernel
from core.kernels.ternary import KERNELS, lroundf
from core.qtypes import type_info
from tests.refs.ggml import quantize as ggml_quantize
from tests.refs.ggml_dequant import dequantize as c_dequantize

from . import (assert_blocks_equal, assert_floats_identical, edge_rows, heavy_rows, normal_rows,
               positive_rows, row_builder)
from .test_kquants import heavy_imatrix, kquant_edge_rows, nonfinite_rows

TYPES = ["TQ1_0", "TQ2_0"]


def scale_edge_rows(n: int = 512) -> np.ndarray:
    """Corner cases of the max-|x| / mean-|x| scales and of the rounding to the grid, laid out
    every 64 weights (so each block of 64, 128 or 256 gets them); shared with test_lowbit."""
    rng = np.random.default_rng(21)
    rows, row = row_builder(n)
    g = lambda scale=1.0: rng.standard_normal(n) * scale  # noqa: E731

    r = row(g(0.3))                              # exact ties: x * (1/amax) == +-0.5
    r[0::64] = 2.0; r[1::64] = 1.0; r[2::64] = -1.0
    r[3::64] = np.float32(0.99999994); r[4::64] = np.float32(-1.0000001); r[5::64] = -2.0
    r = row(np.round(g(2.0)))                    # small integers: many exact ties
    r[0::64] = 4.0
    r = row(g()); r[9::64] = -7.0                # negative maximum
    r = row(g()); r[9::64] = 5.0; r[40::64] = -5.0   # |max| tie
    row(1e-40)                                   # all subnormal: 1/d overflows to inf
    r = row(g(1e-39)); r[::3] = 0.0; r[1::5] = -0.0  # subnormal with signed zeros (0 * inf = NaN)
    r = row(0.0); r[17::64] = -1e-45             # the smallest subnormal alone
    row(g(1e-20))                                # tiny: fp16 d flushes to zero, id stays finite
    row(g(6e4))                                  # near the fp16 limit
    r = row(g(7e4)); r[0::64] = 65519.0          # fp16 rounding of d across the limit
    r = row(g(1e37)); r[::16] = 3e38             # sums overflow float32
    r = row(g()); r[5::64] = np.inf              # infinities: amax inf, id = 0
    r = row(g()); r[6::64] = -np.inf; r[7::64] = np.inf
    r = row(g()); r[::64] = np.inf; r[1::64] = np.nan
    r = row(g()); r[1::64] = np.nan; r[2::64] = np.inf  # NaN then inf
    r = row(g()); r[63::64] = np.nan             # NaN last: amax NaN (MAX), NaN skipped (q2_0)
    r = row(g(1e-3))                             # NaN after large values: the C running MAX
    for j, v in enumerate([300.7, -77.5, 1234567.5, -2.5e2, 3e9, -1e17, 1e20, 5e18, 255.5, -256.49]):
        r[j::64] = v                             # restarts, so lroundf sees values >> 1
    r[12::64] = np.nan
    r = row(g()); r[::2] = np.nan                # many NaNs
    row(np.nan)                                  # all NaN
    row(np.where(rng.random(n) < 0.5, -0.0, 0.0))  # signed zeros only
    r = row(g(0.02)); r[::64] *= 1e4             # one outlier per block
    return np.stack(rows).astype(np.float32)


DATA = {
    "normal": lambda: normal_rows(rows=192, n=512),
    "heavy": lambda: heavy_rows(rows=192, n=1024),
    "positive": lambda: positive_rows(rows=64, n=256),
    "edge": lambda: edge_rows(512),
    "kquant_edge": kquant_edge_rows,
    "scale_edge": scale_edge_rows,
    "odd_rows": lambda: heavy_rows(seed=4, rows=67, n=768),
    "wide": lambda: normal_rows(seed=5, rows=24, n=2560),  # 20 Q1_0 blocks a row: 8 + 8 summed together, 4 alone
    "nonfinite": nonfinite_rows,
}


def run_quantize(name: str, x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    """Our kernel called as the registry calls it (imatrix of length 0 for none)."""
    q, _ = KERNELS[T[name]]
    info = type_info(name)
    out = np.full((x.shape[0], info.row_bytes(x.shape[1])), 0xAA, dtype=np.uint8)
    q(np.ascontiguousarray(x), np.zeros(0, np.float32) if qw is None else qw, out)
    return out


def run_dequantize(name: str, q: np.ndarray, n: int) -> np.ndarray:
    _, dq = KERNELS[T[name]]
    out = np.full((q.shape[0], n), np.float32(7.0), dtype=np.float32)
    dq(np.ascontiguousarray(q), out)
    return out


def _gguf_dequant(q: np.ndarray, name: str) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return gq.dequantize(q, T[name])


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("data", list(DATA))
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_matches_llama_cpp(name, data):
    x = DATA[data]()
    ours = run_quantize(name, x)
    info = type_info(name)
    assert_blocks_equal(ours, ggml_quantize(T[name], x), info.type_size, f"{name} {data} vs llama.cpp")
    deq = run_dequantize(name, ours, x.shape[1])
    assert_floats_identical(deq, _gguf_dequant(ours, name), f"{name} {data} dequantize vs gguf-py")
    assert_floats_identical(deq, c_dequantize(name.lower(), ours, x.shape[1]),
                            f"{name} {data} dequantize vs llama.cpp")


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("data", ["normal", "heavy", "scale_edge", "nonfinite"])
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_importance_weights_are_ignored(name, data):
    """llama.cpp's quantize_tq*_0 never reads the imatrix: same bytes with and without, as ours."""
    x = DATA[data]()
    im = heavy_imatrix(x.shape[1])
    ours = run_quantize(name, x, im)
    assert_blocks_equal(ours, ggml_quantize(T[name], x, im), type_info(name).type_size,
                        f"{name} {data} imatrix vs llama.cpp")
    assert np.array_equal(ours, run_quantize(name, x))


@pytest.mark.parametrize("name", TYPES)
def test_dequantize_arbitrary_blocks(name):
    """Random block bytes (bytes past 242 that no quantizer writes, any fp16 scale, NaN and
    infinities included) decode as gguf-py and llama.cpp do."""
    info = type_info(name)
    rng = np.random.default_rng(7)
    q = rng.integers(0, 256, size=(64, 3 * info.type_size), dtype=np.uint8)
    q[0, info.type_size - 2:info.type_size] = (0x00, 0x7C)  # +inf scale
    q[1, info.type_size - 2:info.type_size] = (0x01, 0xFE)  # NaN scale
    n = 3 * info.block_size
    ours = run_dequantize(name, q, n)
    assert_floats_identical(ours, _gguf_dequant(q, name), f"{name} random blocks vs gguf-py")
    assert_floats_identical(ours, c_dequantize(name.lower(), q, n), f"{name} random blocks vs llama.cpp")


@pytest.mark.parametrize("name", TYPES)
def test_ternary_weights_round_trip(name):
    """Weights that are already ternary (d * {-1, 0, 1}, d exact in fp16) come back exactly."""
    rng = np.random.default_rng(3)
    d = np.float32(0.01171875)  # 1.5 * 2**-7, exact in fp16
    x = (rng.integers(-1, 2, size=(16, 1024)) * d).astype(np.float32)
    x[:, ::256] = d  # every super-block reaches d
    out = run_dequantize(name, run_quantize(name, x), x.shape[1])
    assert_floats_identical(out, x, f"{name} ternary round trip")


@pytest.mark.parametrize("name", TYPES)
def test_threads_give_the_same_bytes(name):
    """Through the registry's Kernel wrapper: rows split into chunks over threads."""
    x = heavy_rows(seed=8, rows=37, n=512)
    k = Kernel(type_info(name), *KERNELS[T[name]])
    whole = k.quantize(x, threads=1)
    assert np.array_equal(k.quantize(x, threads=2, chunk_weights=3 * x.shape[1]), whole)
    assert np.array_equal(k.dequantize(whole, x.shape[1], threads=2), k.dequantize(whole, x.shape[1]))


def test_lroundf_matches_c():
    """The C lroundf, x86-64 glibc: half away from zero, exact near .5, LONG_MIN past 2**63 and for NaN."""
    import ctypes
    import ctypes.util

    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    libm.lroundf.restype = ctypes.c_long
    libm.lroundf.argtypes = [ctypes.c_float]
    vals = np.array([0.0, -0.0, 0.5, -0.5, 0.49999997, -0.49999997, 1.5, 2.5, -2.5, 8388607.5, 8388609.0,
                     4503599627370496.0, 9.2e18, -9.2e18, 9.3e18, -9.3e18, 1e30, np.inf, -np.inf, np.nan,
                     1e-45, 255.5, -256.5], dtype=np.float32)
    from numba import njit

    ours = njit(lambda v: lroundf(v))
    for v in vals:
        assert ours(np.float32(v)) == libm.lroundf(float(v)), v
