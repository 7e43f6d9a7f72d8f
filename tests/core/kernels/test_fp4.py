"""MXFP4 and NVFP4: bytes identical to llama.cpp's C quantizer, block by block."""
from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from core.kernels.fp4 import KERNELS, UE4M3_TO_F32
from tests.refs.ggml import quantize as ggml_quantize

from . import (assert_blocks_equal, assert_floats_identical, assert_matches_llama_cpp, heavy_rows,
               kernel_data, kernel_of, normal_rows)
from .test_kquants import _c_dequantize, _gguf_dequant, heavy_imatrix

TYPES = ["MXFP4", "NVFP4"]


def _with_peaks(peaks: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Rows of 16-wide groups, each holding one peak (its |max|, sign alternating) over random
    values below it, so every MXFP4 block / NVFP4 sub-block has a chosen amax."""
    rng = np.random.default_rng(seed)
    peaks = np.asarray(peaks, np.float32)
    groups = -(-peaks.size // (n // 16)) * (n // 16)
    p = np.resize(peaks, groups).astype(np.float32)
    x = rng.uniform(-1.0, 1.0, size=(groups, 16)).astype(np.float32) * p[:, None]
    x[:, 3] = np.where(np.arange(groups) % 2 == 0, p, -p)
    return x.reshape(-1, n)


def scale_edge_rows(n: int = 512) -> np.ndarray:
    """Block maxima at the scale encodings' corners: every E8M0 exponent, mantissas just below a
    power of two (where floorf(log2f) may round up), subnormal float32 maxima (the exponent
    wraps), UE4M3 rounding boundaries of amax / 6 (and subnormal / clamped UE4M3 scales)."""
    bits = []
    for e in range(0, 255):
        for m in (0, 1, 0x3FFFFF, 0x400000, 0x7FF000, 0x7FFFF0, 0x7FFFFE, 0x7FFFFF):
            bits.append((e << 23) | m)
    peaks = [np.array(bits, np.uint32).view(np.float32)]
    u = np.arange(0, 128, dtype=np.float64)
    ue = np.where(u < 8, u * 2.0 ** -9, (1.0 + (u % 8) / 8.0) * 2.0 ** (np.floor(u / 8) - 7))  # E4M3 values
    half = np.concatenate([ue, (ue[:-1] + ue[1:]) / 2.0]) * 6.0
    near = np.concatenate([half, half * (1 + 2.0 ** -23), half * (1 - 2.0 ** -23), half * 1.00001, half * 0.99999])
    peaks.append(near.astype(np.float32))
    peaks.append(np.array([448 * 6, 448 * 6.5, 1e4, 3e38, 1e-3, 2e-3, 6 * 2.0 ** -10, 6 * 2.0 ** -11], np.float32))
    return _with_peaks(np.concatenate(peaks), n, seed=21)


def tie_rows(n: int = 512) -> np.ndarray:
    """Values exactly halfway between two E2M1 levels (ties keep the first, smaller, index) and
    on the levels, at several scales, with signed zeros."""
    rng = np.random.default_rng(22)
    lv = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float64)
    mids = (lv[:-1] + lv[1:]) / 2
    vals = np.concatenate([lv, mids, -lv, -mids, [-0.0]])
    rows = []
    for scale in (1.0, 0.25, 2.0 ** -20, 2.0 ** 20, 3.0):
        r = rng.choice(vals, size=(4, n)) * scale
        r[:, ::16] = 6.0 * scale  # the peak: amax = 6 * scale, so d is the level unit for both types
        rows.append(r)
    return np.concatenate(rows).astype(np.float32)


DATA = kernel_data(448, scale_edge=scale_edge_rows, ties=tie_rows)


kernel = partial(kernel_of, KERNELS)


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("data", list(DATA))
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_matches_llama_cpp(name, data):
    """Bytes as llama.cpp's on every data set, decoded as gguf-py and llama.cpp decode them."""
    assert_matches_llama_cpp(kernel(name), DATA[data](), f"{name} {data}")


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_importance_weights_ignored_as_llama_cpp(name):
    """quantize_mxfp4 / quantize_nvfp4 take no importance weights: the bytes are the same with them."""
    x = heavy_rows(seed=6, rows=48, n=512)
    im = heavy_imatrix(x.shape[1])
    k = kernel(name)
    ours = k.quantize(x, importance=im)
    assert_blocks_equal(ours, ggml_quantize(T[name], x, im), k.type_size, f"{name} imatrix vs llama.cpp")
    assert np.array_equal(ours, k.quantize(x))


@pytest.mark.parametrize("name", TYPES)
def test_dequantize_arbitrary_blocks(name):
    """Random block bytes (every scale byte) decode as gguf-py and llama.cpp."""
    k = kernel(name)
    rng = np.random.default_rng(7)
    nblk = 16
    q = rng.integers(0, 256, size=(64, nblk * k.type_size), dtype=np.uint8)
    q[0, ::k.type_size] = (np.arange(16) * 17 % 256).astype(np.uint8)  # some fixed scale bytes
    q[1, ::k.type_size] = [0, 1, 2, 0x7F, 0x7E, 0x80, 0xFE, 0xFF, 3, 8, 9, 127, 128, 129, 200, 254]
    n = nblk * k.block_size
    ours = k.dequantize(q, n)
    with np.errstate(over="ignore"):
        assert_floats_identical(ours, _gguf_dequant(q, name), f"{name} random blocks vs gguf-py")
    assert_floats_identical(ours, _c_dequantize(name, q, n), f"{name} random blocks vs llama.cpp")


def test_ue4m3_decode_table():
    """The 256-entry UE4M3 table is ggml_ue4m3_to_fp32 (as gguf-py's decoder) for every byte."""
    from gguf.quants import NVFP4
    ref = NVFP4.ue4m3_to_fp32(np.arange(256, dtype=np.uint8)).astype(np.float32)
    assert_floats_identical(UE4M3_TO_F32, ref, "UE4M3 table vs gguf-py")


@pytest.mark.parametrize("name", TYPES)
def test_threads_give_the_same_bytes(name):
    x = heavy_rows(seed=8, rows=37, n=512)
    k = kernel(name)
    assert np.array_equal(k.quantize(x, threads=2, chunk_weights=3 * x.shape[1]), k.quantize(x, threads=1))


def test_roundtrip_error():
    """Round-trip error of 4-bit floats: bounded, and NVFP4's finer E4M3 scales beat MXFP4's powers of two."""
    x = normal_rows(seed=13, rows=128, n=1024)
    rel = {}
    for name in TYPES:
        k = kernel(name)
        err = (k.dequantize(k.quantize(x), x.shape[1]) - x).astype(np.float64)
        rel[name] = float(np.sqrt(np.mean(err ** 2) / np.mean(x.astype(np.float64) ** 2)))
    assert 0.03 < rel["NVFP4"] < rel["MXFP4"] < 0.25, rel
