"""core.levels: a typical block's level set equals what the dequantizer gives for every code of that
block (checked with gguf-py's own decoder and the block layouts gguf-py reads), and the exact error
histogram counts every weight with the RMSE of core.preview.exact."""
from __future__ import annotations

import numpy as np
import pytest
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf.quants import dequantize as gguf_dequantize

from core import preview
from core.errors import Cancelled
from core.levels import block_levels, code_bits, error_histogram, tensor_levels
from core.progress import CancelToken
from core.qtypes import REQUIRES_IMATRIX


@pytest.fixture(scope="module")
def weights():
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((96, 512)) * 0.02).astype(np.float32)
    x[:, 3] *= 6                                          # an outlier column: blocks with larger scales
    x[10, 100] = 0.4                                      # one large weight
    imp = rng.uniform(0.2, 3.0, 512).astype(np.float32)   # importance weights (an imatrix entry)
    return x, imp


def _nibble_codes(block: np.ndarray, start: int, stop: int) -> np.ndarray:
    """16 copies of ``block`` whose bytes [start, stop) hold the 4-bit code q in both nibbles (q = 0..15)."""
    out = np.repeat(block[None], 16, axis=0)
    out[:, start:stop] = (np.arange(16, dtype=np.uint8) * 17)[:, None]
    return out


def _iq2xxs_codes(block: np.ndarray) -> np.ndarray:
    """Every grid point (0..255) in every group of 8, all signs + and all signs - (7 sign bits set: the
    8th sign is their parity, odd), the 4-bit group scales (top bits of each group's second word) kept."""
    out = []
    for g in range(256):
        for signs in (0, sum(127 << (7 * i) for i in range(4))):
            b = block.copy()
            words = b[2:].view(np.uint32).reshape(-1, 2)
            words[:, 0] = g * 0x01010101
            words[:, 1] = (words[:, 1] & np.uint32(0xF0000000)) | np.uint32(signs)
            out.append(b)
    return np.stack(out)


# layout of each type as gguf-py reads it: which bytes hold the 4-bit codes
CRAFT = {
    T.Q4_0: lambda b: _nibble_codes(b, 2, 18),             # d (fp16), qs
    T.IQ4_NL: lambda b: _nibble_codes(b, 2, 18),           # d (fp16), qs: indices into the 16 values
    T.Q4_K: lambda b: _nibble_codes(b, 16, 144),           # d, dmin, 12 bytes of scales/mins, qs
    T.IQ2_XXS: _iq2xxs_codes,
}


@pytest.mark.parametrize("qtype", list(CRAFT), ids=lambda t: t.name)
def test_levels_equal_what_the_dequantizer_gives_for_every_code_of_the_block(weights, qtype):
    x, imp = weights
    use = imp if qtype in REQUIRES_IMATRIX else None     # IQ2_XXS: with importance weights, as llama.cpp needs
    lv = tensor_levels(x, qtype, use)
    assert lv.type == qtype.name and lv.label == f"{qtype.name} levels (typical block)"
    bs, ts = GGML_QUANT_SIZES[qtype]
    # the typical block, re-made from the same row and importance, decoded by gguf-py
    from core.kernels import get_kernel
    k = get_kernel(qtype)
    row = k.quantize(x[lv.row][None], use)[0]
    block = row[lv.block * ts:(lv.block + 1) * ts]
    assert np.array_equal(block_levels(qtype, block)[0], lv.levels)
    assert np.array_equal(gguf_dequantize(block, qtype), lv.block_values)
    crafted = CRAFT[qtype](block)
    expected = np.unique(gguf_dequantize(crafted.reshape(-1), qtype))
    assert lv.levels.size == expected.size, (lv.levels.size, expected.size)
    np.testing.assert_allclose(lv.levels, expected, rtol=1e-6, atol=0)
    assert np.isin(lv.block_values, lv.levels).all()
    assert lv.levels.size > (8 if qtype != T.Q4_0 and qtype != T.IQ4_NL else 15)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q5_1", "Q3_K", "Q6_K", "IQ4_XS", "MXFP4", "NVFP4", "TQ1_0", "TQ2_0",
                                   "Q1_0", "IQ3_S", "IQ1_M", "IQ1_S"])
def test_every_family_its_block_values_are_among_its_levels(weights, qtype):
    x, imp = weights
    lv = tensor_levels(x, qtype, imp)
    assert lv.levels.size >= 2 and np.all(np.diff(lv.levels) > 0)
    assert np.isin(lv.block_values, lv.levels).all()
    # every weight of the block takes one of the levels, and they stay within the block's reach
    assert lv.levels.min() < 0 < lv.levels.max()
    assert np.abs(lv.levels).max() < 8 * lv.block_absmax


def test_code_bits_of_q4_0_are_its_nibbles_and_the_scale_is_not_a_code():
    eff = code_bits("Q4_0")
    assert eff.shape == (18 * 8, 32)
    assert not eff[:16].any()                              # the fp16 scale decides every weight: not a code
    assert (eff[16:].sum(axis=0) == 4).all()               # four bits per weight
    assert (eff[16:].sum(axis=1) == 1).all()               # each code bit decides one weight
    q6 = code_bits("Q6_K")
    assert (q6.sum(axis=0) == 6).all()                     # 4 low bits + 2 high bits


def test_the_typical_block_is_the_median_of_the_sampled_blocks(weights):
    x, _ = weights
    lv = tensor_levels(x, "Q4_K", rows=32)
    idx = np.arange(0, 96, 96 // 32)[:32]
    amax = np.sort(np.abs(x[idx].reshape(-1, 256)).max(axis=1))
    assert lv.blocks_sampled == amax.size and lv.block_absmax == amax[amax.size // 2]
    assert lv.block_absmax == np.abs(x[lv.row, lv.block * 256:(lv.block + 1) * 256]).max()


def test_float_types_have_no_levels(weights):
    lv = tensor_levels(weights[0], "F16")
    assert lv.levels.size == 0 and "float" in lv.note


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_K", "IQ2_XXS", "F16"])
def test_error_histogram_counts_every_weight_with_the_exact_rmse(weights, qtype):
    x, imp = weights
    use = imp if qtype in ("IQ2_XXS",) else None
    h = error_histogram(x, qtype, use, threads=2, chunk_weights=8 * 512)
    m = preview.exact(x, qtype, use)
    assert h.n + h.n_nonfinite == x.size and h.counts.sum() == x.size
    assert h.rmse == pytest.approx(m.rmse, rel=1e-9) and h.max_abs_err == pytest.approx(m.max_abs_err, rel=1e-12)
    assert h.edges.size == h.counts.size + 1 and h.edges[0] == -h.edges[-1]
    # the bins match a direct histogram of x - q(x) (the tails clipped into the end bins)
    from core.kernels import get_kernel
    k = get_kernel(qtype)
    e = (x.astype(np.float64) - k.dequantize(k.quantize(x, use), 512)).ravel()
    direct = np.histogram(np.clip(e, h.edges[0], h.edges[-1]), h.edges)[0]
    assert np.abs(direct - h.counts).sum() <= 2                   # a value on a bin edge may fall either way
    assert h.below == int((e < h.edges[0]).sum()) and h.above == int((e >= h.edges[-1]).sum())


def test_error_histogram_of_a_model_tensor_reports_progress_and_cancels(synthetic_path):
    from core.models import open_model
    src = open_model(synthetic_path)
    name = "blk.0.ffn_down.weight"
    info = src.tensor(name)
    events = []
    h = error_histogram(src, "Q8_0", name=name, chunk_weights=info.row_len * 4, progress=events.append)
    assert h.counts.sum() == info.n_elements and events[-1].done == events[-1].total == info.n_elements
    assert h.rmse == pytest.approx(preview.exact(src, "Q8_0", name=name).rmse, rel=1e-9)
    tok = CancelToken()

    def stop(ev):
        tok.cancel()

    with pytest.raises(Cancelled):
        error_histogram(src, "Q8_0", name=name, chunk_weights=info.row_len * 4, progress=stop, cancel=tok)


def test_tasks_in_a_worker_give_what_in_process_calls_give(synthetic_path):
    from core import tasks
    from core.procpool import ProcessPool
    name = "blk.0.ffn_down.weight"

    class Ctx:
        cancel = CancelToken()

        def progress(self, ev):
            pass

    pool = ProcessPool(1, "test-levels", nice=0)
    try:
        lv = pool.call("core.tasks:levels", synthetic_path, name, "Q4_K", None, 64)
        h = pool.call("core.tasks:error_histogram", synthetic_path, name, "Q4_0", None, None)
    finally:
        pool.close()
    here = tasks.levels(Ctx(), synthetic_path, name, "Q4_K", None, 64)
    assert np.array_equal(lv.levels, here.levels) and (lv.row, lv.block) == (here.row, here.block)
    h2 = tasks.error_histogram(Ctx(), synthetic_path, name, "Q4_0", None, None)
    assert np.array_equal(h.counts, h2.counts) and h.rmse == h2.rmse
    assert tasks.error_histogram(Ctx(), synthetic_path, name, "Q4_0", None, None) is h2     # kept
