"""IQ1_S, IQ1_M: bytes identical to llama.cpp's C quantizer, block by block (ties in the block
sorts included); decoders as gguf-py and llama.cpp. The C oracle runs in forked children (see
test_iq2: llama.cpp aborts on some non-finite rows)."""
from __future__ import annotations

import numpy as np
import pytest

from core.errors import PlanError
from core.kernels.iq1 import KERNELS, _msort

from . import assert_floats_identical, heavy_rows, imatrix_for, normal_rows, row_builder
from .test_iq2 import (DATA, IMATRICES, OPTIONAL_IMATRIX, QK_K, c_dequantize, c_quantize_rows, compare_with_c,
                       gguf_dequant, kernel_of)
from .test_kquants import heavy_imatrix, nonfinite_rows

TYPES = ["IQ1_S", "IQ1_M"]


def tie_rows(n: int = 512) -> np.ndarray:
    """Blocks full of equal values (the sort's order of equals decides which weights go to
    which group): two or three distinct values, signed zeros, small integers."""
    rng = np.random.default_rng(31)
    rows, row = row_builder(n)
    row(rng.choice(np.array([-1.0, 0.0, 1.0], np.float32), n) * 0.01)
    row(rng.choice(np.array([-0.0, 0.0, 0.5], np.float32), n))
    row(rng.integers(-3, 4, n) * 0.004)
    row(np.where(rng.random(n) < 0.5, 0.02, 0.03))
    r = row(rng.standard_normal(n) * 0.02); r[::2] = r[1::2]
    r = row(0.0); r[::5] = 0.01; r[1::7] = -0.01
    return np.stack(rows).astype(np.float32)


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("data", list(DATA) + ["ties"])
@pytest.mark.parametrize("imx", list(IMATRICES))
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_matches_llama_cpp(name, data, imx):
    x = tie_rows() if data == "ties" else DATA[data]()
    im = IMATRICES[imx](x.shape[1])
    k = kernel_of(KERNELS, name)
    compare_with_c(k, x, im, f"{name} {data} {imx}", min_ok=0.9 if data == "edge" else 1.0)


@pytest.mark.parametrize("data", list(DATA) + ["ties"])
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_iq1_m_without_imatrix_matches_llama_cpp(data):
    assert "IQ1_M" in OPTIONAL_IMATRIX
    x = tie_rows() if data == "ties" else DATA[data]()
    k = kernel_of(KERNELS, "IQ1_M")
    compare_with_c(k, x, None, f"IQ1_M {data} no imatrix", min_ok=0.9 if data == "edge" else 1.0)
    if data in ("normal", "heavy"):
        assert not np.array_equal(k.quantize(x), k.quantize(x, importance=imatrix_for(x.shape[1])))


def test_iq1_s_requires_imatrix():
    with pytest.raises(PlanError, match="importance matrix"):
        kernel_of(KERNELS, "IQ1_S").quantize(normal_rows(rows=2, n=256))


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nonfinite_rows(name):
    x = nonfinite_rows(512)
    k = kernel_of(KERNELS, name)
    for im in (imatrix_for(512), np.ones(512, np.float32)):
        ours = k.quantize(x, importance=im)
        ref, ok = c_quantize_rows(k.qtype, x, im)
        assert ok.sum() >= 2, f"{name}: llama.cpp survived only rows {np.flatnonzero(ok).tolist()}"
        assert np.array_equal(ours[ok], ref[ok]), f"{name}: non-finite rows differ from llama.cpp"
        assert np.array_equal(ours, k.quantize(x, importance=im))


def test_msort_is_glibc_merge_sort():
    """Stable, and with NaN (every comparison false) a pair moves left only past a larger key."""
    rng = np.random.default_rng(3)
    for n in (16, 32):
        for _ in range(200):
            keys = rng.choice(np.array([-1.0, 0.0, -0.0, 0.5, 2.0, np.nan], np.float32), n)
            k, i = keys.copy(), np.arange(n, dtype=np.int64)
            _msort(k, i, np.empty(n, np.float32), np.empty(n, np.int64), n)
            assert np.array_equal(k.view(np.uint32), keys[i].view(np.uint32))
            if not np.isnan(keys).any():
                assert np.array_equal(i, np.argsort(keys, kind="stable"))


@pytest.mark.parametrize("name", TYPES)
def test_dequantize_arbitrary_blocks(name):
    k = kernel_of(KERNELS, name)
    rng = np.random.default_rng(7)
    q = rng.integers(0, 256, size=(48, 3 * k.type_size), dtype=np.uint8)
    n = 3 * QK_K
    ours = k.dequantize(q, n)
    assert_floats_identical(ours, gguf_dequant(q, name), f"{name} random blocks vs gguf-py")
    assert_floats_identical(ours, c_dequantize(name, q, n), f"{name} random blocks vs llama.cpp")


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_dequantize_quantized(name):
    x = normal_rows(seed=3, rows=32, n=512)
    k = kernel_of(KERNELS, name)
    q = k.quantize(x, importance=imatrix_for(512))
    deq = k.dequantize(q, 512)
    assert_floats_identical(deq, gguf_dequant(q, name), f"{name} dequantize vs gguf-py")
    assert_floats_identical(deq, c_dequantize(name, q, 512), f"{name} dequantize vs llama.cpp")
    rel = np.sqrt(np.mean((deq - x).astype(np.float64) ** 2) / np.mean(x.astype(np.float64) ** 2))
    assert rel < 0.8, rel


@pytest.mark.parametrize("name", TYPES)
def test_threads_give_the_same_bytes(name):
    x = heavy_rows(seed=8, rows=37, n=512)
    im = heavy_imatrix(512)
    k = kernel_of(KERNELS, name)
    assert np.array_equal(k.quantize(x, im, threads=2, chunk_weights=5 * 512), k.quantize(x, im, threads=1))
