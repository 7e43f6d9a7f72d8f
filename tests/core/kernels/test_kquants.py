"""Q2_K..Q6_K (and Q8_K): bytes identical to llama.cpp's C quantizer, block by block."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from gguf import quants as gq

from core.errors import UnsupportedError
from core.kernels import get_kernel, kquants
from tests.refs.ggml import ggml_base
from tests.refs.ggml import quantize as ggml_quantize

from . import (assert_blocks_equal, assert_floats_identical, heavy_rows, imatrix_for, normal_rows,
               positive_rows, row_builder, smollm2_gguf)

KQUANTS = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
QK_K = 256


def kquant_edge_rows(n: int = 512) -> np.ndarray:
    """Rows of super-block corner cases (each row is n // 256 super-blocks of 16 / 8 sub-blocks)."""
    rng = np.random.default_rng(11)
    rows, row = row_builder(n)

    g = lambda scale=1.0: rng.standard_normal(n) * scale  # noqa: E731
    row(0.0)                                    # all zero: every early-out
    row(-0.0)
    r = row(g(0.02)); r[:16] = 0.0; r[32:64] = 0.0    # zero sub-blocks inside normal data
    r = row(g(0.02)); r[16:32] = 0.5; r[64:96] = -0.25  # constant sub-blocks (max == min)
    row(1.5)                                    # constant super-blocks
    row(-0.75)
    row(g(1e-6))                                # tiny: fp16 subnormal d / dmin
    row(g(1e-30))                               # tinier: d flushes to zero, below GROUP_MAX_EPS
    row(g(3e4))                                 # near the fp16 limit
    row(g(1e30))                                # huge: d overflows fp16 to inf
    r = row(g(1e-4)); r[7::64] = 50.0           # one sub-block dominates: others' 6-bit scales round to 0
    r = row(g(1e-4)); r[::256] = -50.0
    r = row(0.0); r[::16] = 3.0                 # one nonzero per sub-block
    r = row(0.0); r[5::32] = -2.0
    row(np.abs(g(0.02)))                        # all positive: minimum clamps to 0
    row(-np.abs(g(0.02)) - 0.01)                # all negative
    row(np.abs(g()) + 1.0)                      # positive, far from zero
    row(np.where(rng.random(n) < 0.5, -0.0, 1.0))  # zeros and ones
    row(np.round(g(4.0)))                       # small integers: exact ties in the searches
    row(np.round(g(4.0)) * 0.5)
    r = row(g(0.02)); r[::2] *= 1e3             # mixed magnitudes within sub-blocks
    return np.stack(rows).astype(np.float32)


def nonfinite_rows(n: int = 512) -> np.ndarray:
    """NaN, infinities, values near the float32 limit and subnormals: llama.cpp's output is
    garbage there but deterministic, and ours is the same garbage."""
    x = normal_rows(seed=14, rows=8, n=n)
    x[0, 5] = np.nan
    x[1, 300 % n] = np.inf
    x[2, 7] = -np.inf
    x[3, ::7] = np.nan
    x[4, :] = np.inf
    x[5, 100], x[5, 101] = 3e38, -3e38
    x[6, :QK_K] = np.nan
    x[7, :32] = 1e-40
    return x


def heavy_imatrix(n: int, seed: int = 9) -> np.ndarray:
    """llama-imatrix-like weights: heavy-tailed positive, some zero, one whole super-block zero."""
    w = imatrix_for(n, seed)
    if n >= 2 * QK_K:
        w[QK_K:2 * QK_K] = 0.0
    w[::97] *= 1e3
    return w


DATA = {
    "normal": lambda: normal_rows(rows=192, n=512),
    "heavy": lambda: heavy_rows(rows=192, n=1024),
    "positive": lambda: positive_rows(rows=64, n=256),
    "edge": kquant_edge_rows,
    "odd_rows": lambda: heavy_rows(seed=4, rows=67, n=768),  # super-blocks not a multiple of the lane groups
    "nonfinite": nonfinite_rows,
}


def _c_fn(name: str, argtypes):
    fn = getattr(ggml_base(), name)
    fn.restype = None
    fn.argtypes = argtypes
    return fn


def _c_dequantize(name: str, q: np.ndarray, n: int) -> np.ndarray:
    """llama.cpp's dequantize_row_<t> over every row."""
    fn = _c_fn("dequantize_row_" + name.lower().replace("_k", "_K"),
               [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64])
    q = np.ascontiguousarray(q)
    out = np.empty((q.shape[0], n), dtype=np.float32)
    fn(q.ctypes.data, out.ctypes.data, q.shape[0] * n)
    return out


def _gguf_dequant(q: np.ndarray, name: str) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return gq.dequantize(q, T[name])


@pytest.mark.parametrize("name", KQUANTS)
@pytest.mark.parametrize("data", list(DATA))
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_matches_llama_cpp(name, data):
    x = DATA[data]()
    k = get_kernel(name)
    ours = k.quantize(x)
    assert ours.dtype == np.uint8 and ours.shape == (x.shape[0], k.row_bytes(x.shape[1]))
    assert_blocks_equal(ours, ggml_quantize(T[name], x), k.type_size, f"{name} {data} vs llama.cpp")
    deq = k.dequantize(ours, x.shape[1])
    assert_floats_identical(deq, _gguf_dequant(ours, name), f"{name} {data} dequantize vs gguf-py")
    assert_floats_identical(deq, _c_dequantize(name, ours, x.shape[1]),
                            f"{name} {data} dequantize vs llama.cpp")


@pytest.mark.parametrize("name", KQUANTS)
@pytest.mark.parametrize("data", list(DATA))
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_importance_weights_match_llama_cpp(name, data):
    x = DATA[data]()
    im = heavy_imatrix(x.shape[1])
    k = get_kernel(name)
    ours = k.quantize(x, importance=im)
    assert_blocks_equal(ours, ggml_quantize(T[name], x, im), k.type_size,
                        f"{name} {data} imatrix vs llama.cpp")
    if data in ("normal", "heavy"):
        assert not np.array_equal(ours, k.quantize(x)), "importance weights had no effect"


@pytest.mark.parametrize("name", KQUANTS)
def test_uniform_importance_weights(name):
    """All-ones and all-zero importance weights run the same searches as llama.cpp."""
    x = heavy_rows(seed=6, rows=48, n=512)
    k = get_kernel(name)
    for im in (np.ones(x.shape[1], np.float32), np.zeros(x.shape[1], np.float32)):
        assert_blocks_equal(k.quantize(x, importance=im), ggml_quantize(T[name], x, im), k.type_size,
                            f"{name} imatrix={im[0]} vs llama.cpp")


@pytest.mark.parametrize("name", KQUANTS)
def test_dequantize_arbitrary_blocks(name):
    """Random block bytes (any fp16 scale, infinities and NaNs included) decode as gguf-py and llama.cpp."""
    k = get_kernel(name)
    rng = np.random.default_rng(7)
    q = rng.integers(0, 256, size=(48, 3 * k.type_size), dtype=np.uint8)
    n = 3 * QK_K
    ours = k.dequantize(q, n)
    assert_floats_identical(ours, _gguf_dequant(q, name), f"{name} random blocks vs gguf-py")
    assert_floats_identical(ours, _c_dequantize(name, q, n), f"{name} random blocks vs llama.cpp")


@pytest.mark.parametrize("name", KQUANTS)
def test_threads_give_the_same_bytes(name):
    x = heavy_rows(seed=8, rows=37, n=512)
    im = heavy_imatrix(x.shape[1])
    k = get_kernel(name)
    assert np.array_equal(k.quantize(x, threads=2, chunk_weights=3 * x.shape[1]), k.quantize(x, threads=1))
    assert np.array_equal(k.quantize(x, im, threads=2, chunk_weights=5 * x.shape[1]), k.quantize(x, im, threads=1))


def test_error_ordering_and_importance():
    """Round-trip error falls with the bit width, and importance weights lower the weighted error."""
    x = heavy_rows(seed=12, rows=128, n=1024)
    im = (np.random.default_rng(13).lognormal(0.0, 1.5, x.shape[1]) ** 2).astype(np.float32)
    rel, wrel = {}, {}
    for name in KQUANTS:
        k = get_kernel(name)
        err = k.dequantize(k.quantize(x), x.shape[1]) - x
        erri = k.dequantize(k.quantize(x, importance=im), x.shape[1]) - x
        e2, ei2 = err.astype(np.float64) ** 2, erri.astype(np.float64) ** 2
        rel[name] = float(np.sqrt(e2.mean() / np.mean(x.astype(np.float64) ** 2)))
        wrel[name] = (float(np.sum(im * ei2)), float(np.sum(im * e2)))
    order = [rel[n] for n in reversed(KQUANTS)]
    assert order == sorted(order), f"relative RMSE not decreasing with bits: {rel}"
    assert rel["Q6_K"] < 0.05 and rel["Q2_K"] < 0.5, rel  # heavy tails + outlier columns
    for name, (with_im, without) in wrel.items():
        assert with_im < without, f"{name}: importance-weighted error {with_im} not below {without}"


def test_real_weights_smollm2():
    """SmolLM2-135M weights (decoded from the shipped Q4_1 file) re-quantized to every K-quant."""
    reader = GGUFReader(smollm2_gguf())
    t = {t.name: t for t in reader.tensors}["blk.0.ffn_down.weight"]
    x = np.ascontiguousarray(_gguf_dequant(np.asarray(t.data)[:96], "Q4_1"), dtype=np.float32)
    assert x.shape[1] % QK_K == 0
    im = (np.random.default_rng(0).standard_normal((64, x.shape[1])) ** 2).mean(axis=0).astype(np.float32)
    for name in KQUANTS:
        k = get_kernel(name)
        assert_blocks_equal(k.quantize(x), ggml_quantize(T[name], x), k.type_size,
                            f"SmolLM2 {name} vs llama.cpp")
        assert_blocks_equal(k.quantize(x, importance=im), ggml_quantize(T[name], x, im), k.type_size,
                            f"SmolLM2 {name} imatrix vs llama.cpp")


def test_q8_k_matches_llama_cpp():
    """Q8_K (intermediate type): quantize_row_q8_K_ref and dequantize_row_q8_K."""
    x = np.concatenate([normal_rows(rows=32, n=512), heavy_rows(rows=32, n=512), kquant_edge_rows(512),
                        nonfinite_rows(512)])
    out = np.empty((x.shape[0], 2 * 292), dtype=np.uint8)
    kquants.quantize_q8_k(x, np.zeros(0, np.float32), out)
    ref = np.zeros_like(out)  # an all-zero block leaves bsums untouched in C: zero here, as ours
    _c_fn("quantize_row_q8_K_ref", [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64])(
        x.ctypes.data, ref.ctypes.data, x.size)
    assert_blocks_equal(out, ref, 292, "Q8_K vs llama.cpp")
    deq = np.empty_like(x)
    kquants.dequantize_q8_k(out, deq)
    assert_floats_identical(deq, _c_dequantize("Q8_K", out, x.shape[1]), "Q8_K dequantize vs llama.cpp")
    with pytest.raises(UnsupportedError):
        get_kernel("Q8_K")  # intermediate only: not offered for weights
