"""F32 / F16 / BF16 kernels: bytes as gguf-py and llama.cpp write them, exact decoding."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants as gq

from core.kernels import get_kernel
from tests.refs.ggml import quantize as ggml_quantize

from . import (assert_blocks_equal, assert_floats_identical, edge_rows, heavy_rows, imatrix_for,
               normal_rows)

FLOATS = ["F32", "F16", "BF16"]


def _special_rows() -> np.ndarray:
    """fp16 / bf16 boundaries, subnormals, infinities and NaNs with payloads and signs."""
    vals = np.array([
        0.0, -0.0, 1.0, -1.0, 65504.0, -65504.0, 65519.99, 65520.0, -65520.0, 1e10,
        6.1035156e-05, 6.0975552e-05, 5.9604645e-08, 2.9802322e-08, 2.9802326e-08, 1e-9, -1e-9,
        np.inf, -np.inf, 1.00048828125, 1.00146484375, 3.3895314e38, 3.4028235e38, 1e-45, -1e-40,
    ], dtype=np.float32)
    nans = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF812345, 0x7FBFFFFF, 0x7FC0FFFF],
                    dtype=np.uint32).view(np.float32)
    row = np.concatenate([vals, nans])
    row = np.resize(row, 64).astype(np.float32)
    rng = np.random.default_rng(11)
    bits = rng.integers(0, 2 ** 32, size=(63, 64), dtype=np.uint64).astype(np.uint32).view(np.float32)
    return np.concatenate([row[None], bits]).astype(np.float32)


def _gguf_bytes(x: np.ndarray, name: str) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return np.ascontiguousarray(gq.quantize(x, T[name])).view(np.uint8).reshape(x.shape[0], -1)


@pytest.mark.parametrize("name", FLOATS)
@pytest.mark.parametrize("data", ["normal", "heavy", "edge"])
def test_matches_gguf_py(name, data):
    x = {"normal": normal_rows, "heavy": heavy_rows, "edge": edge_rows}[data]()
    k = get_kernel(name)
    ours = k.quantize(x)
    assert ours.dtype == np.uint8 and ours.shape == (x.shape[0], k.row_bytes(x.shape[1]))
    assert_blocks_equal(ours, _gguf_bytes(x, name), k.type_size, f"{name} {data} vs gguf-py")
    assert_floats_identical(k.dequantize(ours, x.shape[1]), gq.dequantize(ours, T[name]),
                            f"{name} {data} dequantize vs gguf-py")


@pytest.mark.parametrize("name", FLOATS)
def test_specials_match_llama_cpp(name):
    """NaNs, infinities, subnormals, rounding boundaries and random bit patterns, as ggml."""
    x = _special_rows()
    k = get_kernel(name)
    ours = k.quantize(x)
    assert_blocks_equal(ours, ggml_quantize(T[name], x), k.type_size, f"{name} specials vs llama.cpp")
    # gguf-py agrees everywhere but on NaN payloads for F16 (numpy keeps them, ggml writes 0x7E00)
    ok = ~np.isnan(x) if name == "F16" else np.ones(x.shape, bool)
    ref = _gguf_bytes(x, name).view(np.uint16 if name != "F32" else np.uint32)
    mine = ours.view(np.uint16 if name != "F32" else np.uint32)
    assert np.array_equal(mine[ok], ref[ok]), f"{name}: {(mine[ok] != ref[ok]).sum()} values differ from gguf-py"
    if name == "F16":
        nan_bits = mine[np.isnan(x)]
        assert np.all((nan_bits & 0x7FFF) == 0x7E00), "F16 NaN must be written as sign | 0x7E00"


def test_f16_rounding_exhaustive_neighbourhoods():
    """Every float32 near each fp16 rounding boundary rounds to nearest even, as numpy does."""
    halves = np.arange(0, 0x7C00, dtype=np.uint32)  # every finite positive fp16
    mids = (halves.astype(np.uint16).view(np.float16).astype(np.float64)
            + np.append(np.diff(halves.astype(np.uint16).view(np.float16).astype(np.float64)), 32.0) / 2)
    base = mids.astype(np.float32).view(np.uint32)
    x = (base[:, None] + np.arange(-2, 3, dtype=np.int64)[None, :]).astype(np.uint32).view(np.float32)
    x = np.concatenate([x.reshape(-1), -x.reshape(-1)])
    x = x[: x.size // 64 * 64].reshape(-1, 64)
    ours = get_kernel("F16").quantize(x)
    with np.errstate(over="ignore"):
        ref = x.astype(np.float16).view(np.uint8)
    assert_blocks_equal(ours, ref, 2, "F16 rounding boundaries vs numpy")


def test_decode_every_f16_and_bf16_pattern():
    allbits = np.arange(65536, dtype=np.uint16).view(np.uint8).reshape(1, -1)
    f16 = get_kernel("F16").dequantize(allbits, 65536)
    assert np.array_equal(f16.view(np.uint32),
                          gq.dequantize(allbits, T.F16).view(np.uint32)), "fp16 decode not bit-exact"
    bf16 = get_kernel("BF16").dequantize(allbits, 65536)
    assert np.array_equal(bf16.view(np.uint32),
                          gq.dequantize(allbits, T.BF16).view(np.uint32)), "bf16 decode not bit-exact"


@pytest.mark.parametrize("name", FLOATS)
def test_importance_weights_ignored_and_threads(name):
    x = heavy_rows(rows=64)
    k = get_kernel(name)
    one = k.quantize(x)
    assert np.array_equal(k.quantize(x, importance=imatrix_for(x.shape[1])), one)
    assert np.array_equal(k.quantize(x, threads=2, chunk_weights=5 * x.shape[1]), one)
    assert np.array_equal(k.dequantize(one, x.shape[1], threads=2), k.dequantize(one, x.shape[1]))
