"""IQ4_NL and IQ4_XS: bytes identical to llama.cpp's C quantizer, block by block."""
from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from numba import njit

from core.kernels import iq4
from core.kernels.floats import bits_f32
from core.kernels.iq4 import KERNELS
from tests.refs.ggml import quantize as ggml_quantize

from . import (assert_blocks_equal, assert_floats_identical, assert_matches_llama_cpp, heavy_rows,
               kernel_data, kernel_of, normal_rows, smollm2_gguf)
from .test_kquants import _c_dequantize, _gguf_dequant, heavy_imatrix

TYPES = ["IQ4_NL", "IQ4_XS"]

DATA = kernel_data(768)  # odd_rows: blocks not a multiple of the 16 lanes


kernel = partial(kernel_of, KERNELS)


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("data", list(DATA))
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_matches_llama_cpp(name, data):
    assert_matches_llama_cpp(kernel(name), DATA[data](), f"{name} {data}")


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("data", list(DATA))
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_importance_weights_match_llama_cpp(name, data):
    x = DATA[data]()
    im = heavy_imatrix(x.shape[1])
    k = kernel(name)
    ours = k.quantize(x, importance=im)
    assert_blocks_equal(ours, ggml_quantize(T[name], x, im), k.type_size, f"{name} {data} imatrix vs llama.cpp")
    if data in ("normal", "heavy"):
        assert not np.array_equal(ours, k.quantize(x)), "importance weights had no effect"


@pytest.mark.parametrize("name", TYPES)
def test_uniform_importance_weights(name):
    """All-ones and all-zero importance weights run the same searches as llama.cpp."""
    x = heavy_rows(seed=6, rows=48, n=512)
    k = kernel(name)
    for im in (np.ones(x.shape[1], np.float32), np.zeros(x.shape[1], np.float32)):
        assert_blocks_equal(k.quantize(x, importance=im), ggml_quantize(T[name], x, im), k.type_size,
                            f"{name} imatrix={im[0]} vs llama.cpp")


@pytest.mark.parametrize("name", TYPES)
def test_dequantize_arbitrary_blocks(name):
    """Random block bytes (any fp16 scale, infinities and NaNs included) decode as gguf-py and llama.cpp."""
    k = kernel(name)
    rng = np.random.default_rng(7)
    nblk = 3 if name == "IQ4_XS" else 24
    q = rng.integers(0, 256, size=(48, nblk * k.type_size), dtype=np.uint8)
    n = nblk * k.block_size
    ours = k.dequantize(q, n)
    assert_floats_identical(ours, _gguf_dequant(q, name), f"{name} random blocks vs gguf-py")
    assert_floats_identical(ours, _c_dequantize(name, q, n), f"{name} random blocks vs llama.cpp")


@pytest.mark.parametrize("name", TYPES)
def test_threads_give_the_same_bytes(name):
    x = heavy_rows(seed=8, rows=37, n=512)
    im = heavy_imatrix(x.shape[1])
    k = kernel(name)
    assert np.array_equal(k.quantize(x, threads=2, chunk_weights=3 * x.shape[1]), k.quantize(x, threads=1))
    assert np.array_equal(k.quantize(x, im, threads=2, chunk_weights=5 * x.shape[1]), k.quantize(x, im, threads=1))


@njit(cache=True)
def _c_best_index_int8(x, val):
    """best_index_int8 of ggml-quants.c as written (binary search), for the check below."""
    if x <= val[0]:
        return 0
    if x >= val[15]:
        return 15
    ml, mu = 0, 15
    while mu - ml > 1:
        mav = (ml + mu) // 2
        if x < val[mav]:
            mu = mav
        else:
            ml = mav
    return mu - 1 if x - val[mu - 1] < val[mu] - x else mu


@njit(cache=True)
def _count_level_mismatches(stride, kv, mid, step):
    bad = 0
    for u in range(0, 1 << 32, stride):
        x = bits_f32(np.uint32(u))
        c = _c_best_index_int8(x, kv)
        if iq4._level(x, mid) != c or iq4._level_value(x, mid, step) != kv[c]:
            bad += 1
    return bad


def test_level_search_equals_binary_search():
    """The branch-free level count equals best_index_int8 (a sample here; all 2**32 float32 were checked
    once with stride 1), over every exponent, signed zeros, infinities and NaNs included."""
    assert _count_level_mismatches(509, iq4._KV, iq4._MID, iq4._STEP) == 0
    edges = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 3.4e38, -3.4e38], np.float32)
    near = np.concatenate([iq4._MID, iq4._KV])
    near = np.concatenate([near, np.nextafter(near, np.float32(np.inf)), np.nextafter(near, np.float32(-np.inf))])
    for v in np.concatenate([edges, near.astype(np.float32)]):
        c = _c_best_index_int8(v, iq4._KV)
        assert iq4._level(v, iq4._MID) == c and iq4._level_value(v, iq4._MID, iq4._STEP) == iq4._KV[c], v


def test_roundtrip_error_and_importance():
    """Round-trip error is IQ4-like, IQ4_XS (finer per-block scales) no worse than IQ4_NL on normal data,
    and importance weights lower the weighted error."""
    x = heavy_rows(seed=12, rows=128, n=1024)
    xn = normal_rows(seed=13, rows=128, n=1024)
    im = (np.random.default_rng(13).lognormal(0.0, 1.5, x.shape[1]) ** 2).astype(np.float32)
    for name in TYPES:
        k = kernel(name)
        for data, lim in ((x, 0.15), (xn, 0.12)):
            err = (k.dequantize(k.quantize(data), data.shape[1]) - data).astype(np.float64)
            rel = float(np.sqrt(np.mean(err ** 2) / np.mean(data.astype(np.float64) ** 2)))
            assert 0.01 < rel < lim, (name, rel)
        e = (k.dequantize(k.quantize(x), x.shape[1]) - x).astype(np.float64)
        ei = (k.dequantize(k.quantize(x, importance=im), x.shape[1]) - x).astype(np.float64)
        assert np.sum(im * ei ** 2) < np.sum(im * e ** 2), name


def test_real_weights_smollm2():
    """SmolLM2-135M weights (decoded from the shipped Q4_1 file) re-quantized to IQ4_NL and IQ4_XS."""
    reader = GGUFReader(smollm2_gguf())
    t = {t.name: t for t in reader.tensors}["blk.0.ffn_down.weight"]
    x = np.ascontiguousarray(_gguf_dequant(np.asarray(t.data)[:96], "Q4_1"), dtype=np.float32)
    assert x.shape[1] % 256 == 0
    im = (np.random.default_rng(0).standard_normal((64, x.shape[1])) ** 2).mean(axis=0).astype(np.float32)
    for name in TYPES:
        k = kernel(name)
        assert_blocks_equal(k.quantize(x), ggml_quantize(T[name], x), k.type_size, f"SmolLM2 {name} vs llama.cpp")
        assert_blocks_equal(k.quantize(x, importance=im), ggml_quantize(T[name], x, im), k.type_size,
                            f"SmolLM2 {name} imatrix vs llama.cpp")
