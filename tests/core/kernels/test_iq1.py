"""IQ1_S, IQ1_M: bytes identical to llama.cpp's C quantizer, block by block (ties in the block
sorts included); decoders as gguf-py and llama.cpp. The C oracle runs in forked children (see
test_iq2: llama.cpp aborts on some non-finite rows)."""
from __future__ import annotations

import numpy as np
import pytest

from core.errors import PlanError
from core.kernels.iq1 import KERNELS, _msort

from . import IQ_CHECKS, check_iq_kernel, imatrix_for, kernel_of, normal_rows, row_builder
from .test_iq2 import DATA, IMATRICES, OPTIONAL_IMATRIX, check_nonfinite_rows, compare_with_c

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
    check_nonfinite_rows(kernel_of(KERNELS, name))


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
@pytest.mark.parametrize("check", IQ_CHECKS)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_decoders_and_threads(name, check):
    check_iq_kernel(kernel_of(KERNELS, name), check, rel_bound=0.8)  # 1.5 bits: a looser bound than IQ2's
