"""Error preview: figures against direct numpy computations, sampled estimates against exact ones."""
from __future__ import annotations

import math

import numpy as np
import pytest

from core import preview as P
from core.demo import synthetic_weights
from core.errors import Cancelled, PlanError, UnsupportedError
from core.imatrix import ImatrixData
from core.kernels import get_kernel
from core.plan import pure_plan
from core.progress import CancelToken
from core.models import open_model

LEGACY = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]
KQUANTS = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


def direct(x, t, imp=None, quant_imp=None):
    """Every figure computed the plain numpy way from the kernel's round trip."""
    k = get_kernel(t)
    x = np.asarray(x, np.float32)
    y = k.dequantize(k.quantize(x, quant_imp), x.shape[-1]).astype(np.float64).reshape(x.shape)
    x = x.astype(np.float64)
    err = y - x
    out = {"rmse": np.sqrt(np.mean(err ** 2)), "rel_rmse": np.sqrt((err ** 2).sum() / (x ** 2).sum()),
           "max_abs_err": np.abs(err).max(), "cosine": (x * y).sum() / np.sqrt((x ** 2).sum() * (y ** 2).sum())}
    out["snr_db"] = 10 * np.log10((x ** 2).sum() / (err ** 2).sum()) if err.any() else math.inf
    if imp is not None:
        out["weighted_rel_rmse"] = np.sqrt((imp * err ** 2).sum() / (imp * x ** 2).sum())
        out["weighted_rmse"] = np.sqrt((imp * err ** 2).sum() / (imp * np.ones_like(x)).sum())
    return out


def check(m, want, rtol=1e-9):
    for key, v in want.items():
        got = getattr(m, key)
        assert got == pytest.approx(v, rel=rtol, abs=1e-300), (m.type, key, got, v)


@pytest.fixture(scope="module")
def heavy():
    return synthetic_weights(np.random.default_rng(7), 96, 512)


@pytest.fixture(scope="module")
def imp512():
    return np.random.default_rng(8).lognormal(0.0, 1.0, 512).astype(np.float32)


@pytest.fixture(scope="module")
def demo(demo_path):
    return open_model(demo_path)


# -- figures ----------------------------------------------------------------------------------
@pytest.mark.parametrize("t", LEGACY + KQUANTS)
def test_exact_figures_match_numpy(heavy, imp512, t):
    m = P.exact(heavy, t, threads=2, chunk_weights=512 * 10)
    assert m.exact and m.design == "exact" and m.rows == 96 and not m.weighted
    check(m, direct(heavy, t))
    info = get_kernel(t).info
    assert m.bpw == info.bpw and m.nbytes == info.row_bytes(512) * 96
    if t == "F32":
        assert m.rel_rmse == 0 and m.snr_db == math.inf and m.cosine == pytest.approx(1.0)
    # with importance: the kernel quantizes with it and the weighted figures use it
    mw = P.exact(heavy, t, imp512, threads=2)
    assert mw.weighted and mw.weighted_rel_rmse_ci == (mw.weighted_rel_rmse,) * 2
    check(mw, direct(heavy, t, imp512, quant_imp=imp512))


def test_weighted_error_follows_the_weights(heavy):
    flat = np.ones(512, np.float32)
    m = P.exact(heavy, "Q4_0", flat, use_for_quantization=False)
    assert m.weighted_rel_rmse == pytest.approx(m.rel_rmse, rel=1e-12)
    # the error per column, from the round trip; weights on the worst vs the best columns
    k = get_kernel("Q4_0")
    err = ((k.dequantize(k.quantize(heavy), 512) - heavy).astype(np.float64) ** 2).sum(0)
    rel_col = err / (heavy.astype(np.float64) ** 2).sum(0)
    worst, best = np.argsort(rel_col)[-64:], np.argsort(rel_col)[:64]
    for cols, cmp in ((worst, np.greater), (best, np.less)):
        w = np.full(512, 1e-3, np.float32)
        w[cols] = 1.0
        mw = P.exact(heavy, "Q4_0", w, use_for_quantization=False)
        assert cmp(mw.weighted_rel_rmse, m.rel_rmse)
        check(mw, direct(heavy, "Q4_0", w))
    # quantizing with the weights changes the result (legacy imatrix path of Q4_0)
    w = np.random.default_rng(9).lognormal(0, 1.5, 512).astype(np.float32)
    with_q = P.exact(heavy, "Q4_0", w)
    without_q = P.exact(heavy, "Q4_0", w, use_for_quantization=False)
    assert with_q.rel_rmse != without_q.rel_rmse
    assert with_q.weighted_rel_rmse < without_q.weighted_rel_rmse


def test_experts_use_their_own_vectors():
    rng = np.random.default_rng(10)
    x = synthetic_weights(rng, 3 * 40, 256).reshape(3, 40, 256)
    imp = rng.lognormal(0, 1, (3, 256)).astype(np.float32)
    m = P.exact(x, "Q4_0", imp, chunk_weights=256 * 16)
    k = get_kernel("Q4_0")
    ys = [k.dequantize(k.quantize(x[e], imp[e]), 256) for e in range(3)]
    err = np.stack(ys).astype(np.float64) - x
    xx = x.astype(np.float64)
    assert m.rel_rmse == pytest.approx(np.sqrt((err ** 2).sum() / (xx ** 2).sum()), rel=1e-12)
    wsum = sum((imp[e] * err[e] ** 2).sum() for e in range(3))
    assert m.weighted_rel_rmse == pytest.approx(np.sqrt(wsum / sum((imp[e] * xx[e] ** 2).sum() for e in range(3))),
                                                rel=1e-12)
    s = P.estimate(x, "Q4_0", imp, sample_rows=50, seed=1)
    assert s.design == "pps" and s.draws == 50 and s.in_interval(m.rel_rmse)
    with pytest.raises(PlanError, match="768"):
        P.exact(x, "Q4_0", imp[0])


# -- samples ----------------------------------------------------------------------------------
def _demo_cases(demo):
    mats = [t for t in demo.tensors if t.n_dims == 2 and t.name.startswith("blk.")]
    rng = np.random.default_rng(0)
    picks = [mats[i] for i in rng.choice(len(mats), 8, replace=False)]
    picks.append(demo.tensor("blk.1.ffn_down.weight"))                 # a few outlier rows
    for t in picks:
        for q in ("Q8_0", "Q4_0", "Q5_1") + (("Q4_K", "Q6_K") if t.row_len % 256 == 0 else ()):
            yield t.name, q


def test_sampled_interval_holds_the_exact_value(demo):
    hits, cases, worst = 0, 0, 0.0
    for name, q in _demo_cases(demo):
        ex = P.exact(demo, q, name=name)
        for seed in (0, 1):
            s = P.estimate(demo, q, name=name, sample_rows=64, seed=seed)
            assert s.design == "pps" and s.draws == 64 and not s.exact and s.total_rows == ex.total_rows
            lo, hi = s.rel_rmse_ci
            assert lo < s.rel_rmse < hi and s.rel_rmse_se > 0
            cases += 1
            hits += s.in_interval(ex.rel_rmse)
            worst = max(worst, abs(s.rel_rmse - ex.rel_rmse) / ((hi - lo) / 2))
            assert s.max_abs_err <= ex.max_abs_err
            assert s.nbytes == ex.nbytes and s.bpw == ex.bpw
    assert hits / cases >= 0.85, f"95% intervals held the exact value in {hits}/{cases} cases"
    assert worst < 2.5, f"an estimate was {worst:.2f} half-widths from the exact value"


def test_weighted_interval_holds_the_exact_value(demo):
    im = ImatrixData.random_for(demo, n_tokens=16)
    hits = whits = cases = 0
    for name in ("blk.2.attn_q.weight", "blk.9.ffn_up.weight", "blk.14.ffn_down.weight", "blk.20.attn_v.weight"):
        w = im.for_tensor(name, demo.tensor(name).shape)
        ex = P.exact(demo, "Q4_0", w, name=name)
        s = P.estimate(demo, "Q4_0", w, name=name, sample_rows=64)
        lo, hi = s.weighted_rel_rmse_ci
        assert s.weighted and lo < s.weighted_rel_rmse < hi
        cases += 1
        hits += s.in_interval(ex.rel_rmse)
        whits += lo <= ex.weighted_rel_rmse <= hi
    assert hits >= cases - 1 and whits >= cases - 1


def test_simple_random_sample_design(demo):
    name = "blk.5.ffn_up.weight"
    ex = P.exact(demo, "Q4_0", name=name)
    hits = 0
    for seed in range(6):
        s = P.estimate(demo, "Q4_0", name=name, sample_rows=100, seed=seed, design="srs")
        assert s.design == "srs" and s.rows == s.draws == 100
        hits += s.in_interval(ex.rel_rmse)
    assert hits >= 5
    with pytest.raises(PlanError, match="design"):
        P.estimate(demo, "Q4_0", name=name, design="cluster")


def test_sample_of_every_row_is_exact_and_sources_match_arrays(demo):
    name = "blk.0.attn_k.weight"                                        # 192 rows
    ex = P.exact(demo, "Q5_0", name=name)
    full = P.estimate(demo, "Q5_0", name=name, sample_rows=500)
    assert full.exact and full.rel_rmse == ex.rel_rmse and full.max_abs_err == ex.max_abs_err
    a = P.estimate(demo, "Q5_0", name=name, sample_rows=40, seed=3)
    b = P.estimate(demo.read(name), "Q5_0", name=name, sample_rows=40, seed=3)
    assert (a.rel_rmse, a.rel_rmse_ci, a.rows) == (b.rel_rmse, b.rel_rmse_ci, b.rows)
    c = P.estimate((demo, name), "Q5_0", sample_rows=40, seed=3)
    assert c.rel_rmse == a.rel_rmse


def test_time_budget_sizes_the_sample():
    x = synthetic_weights(np.random.default_rng(11), 3000, 512)
    tiny = P.estimate(x, "Q4_1", np.ones(512, np.float32), time_budget=0.0)
    assert not tiny.exact and tiny.draws >= P.MIN_SAMPLE_ROWS and tiny.rows < 3000
    assert tiny.in_interval(P.exact(x, "Q4_1", np.ones(512, np.float32)).rel_rmse)
    big = P.estimate(x, "Q8_0", time_budget=30.0)
    assert big.exact and big.rows == 3000


# -- exact: progress and cancel ----------------------------------------------------------------------
def test_progress_cancel_and_background(heavy):
    events = []
    m = P.exact(heavy, "Q4_0", name="w", progress=events.append, chunk_weights=512 * 8, threads=2)
    done = [e.done for e in events]
    assert done == sorted(done) and done[-1] == heavy.size == events[-1].total
    assert all(e.item == "w" for e in events)
    tok = CancelToken()

    def stop_after_first(ev):
        tok.cancel()

    with pytest.raises(Cancelled):
        P.exact(heavy, "Q4_0", progress=stop_after_first, cancel=tok, chunk_weights=512 * 4, threads=1)
    assert P.exact(heavy, "Q4_0", name="w", threads=1).rel_rmse == m.rel_rmse     # any thread count
    pre = CancelToken()
    pre.cancel()
    with pytest.raises(Cancelled):                  # (start_exact, its thread wrapper, is gone: unused)
        P.exact(heavy, "Q4_0", cancel=pre)


# -- candidates and plans ---------------------------------------------------------------------------
def test_candidates_side_by_side(heavy, imp512):
    rows = P.candidates(heavy, imp512, sample_rows=40)
    names = [m.type for m in rows]
    want = [t.name for t in P.candidate_types(512)]
    assert names == want and set(LEGACY) <= set(names)
    assert [m.bpw for m in rows] == sorted((m.bpw for m in rows), reverse=True)
    by = {m.type: m for m in rows}
    assert by["F32"].rel_rmse == 0 and by["Q8_0"].rel_rmse < by["Q5_1"].rel_rmse < by["Q4_0"].rel_rmse
    assert all(m.weighted for m in rows)
    single = P.estimate(heavy, "Q4_1", imp512, sample_rows=40)
    assert single.rel_rmse == by["Q4_1"].rel_rmse
    narrow = P.candidate_types(576)                   # 576 = 2.25 x 256: no K-/i-quant super-blocks, NVFP4's 64 fit
    assert all(576 % get_kernel(t).block_size == 0 and get_kernel(t).block_size < 256 for t in narrow)
    assert "NVFP4" in [str(getattr(t, "name", t)) for t in narrow] and "Q4_K" not in [str(getattr(t, "name", t)) for t in narrow]
    with pytest.raises(PlanError, match="multiple of 32"):
        P.estimate(heavy[:, :48], "Q4_0")
    with pytest.raises(UnsupportedError):
        P.estimate(heavy, "Q8_K")


def test_plan_preview_and_cache(synthetic_path):
    src = open_model(synthetic_path)
    plan = pure_plan(src.tensors, "Q4_0", src.architecture)
    cache = P.PreviewCache()
    pv = P.preview_plan(src, plan, cache=cache, sample_rows=48)
    assert [t.name for t in pv.tensors] == [e.name for e in plan.entries]
    for t, e in zip(pv.tensors, plan.entries):
        assert t.nbytes == e.nbytes and t.type == e.type and t.quantized == e.quantize
        assert (t.metrics is None) == (not e.quantize)
    n_q = sum(e.quantize for e in plan.entries)
    assert len(cache) == n_q and pv.nbytes == plan.tensor_bytes
    assert pv.bpw == pytest.approx(8 * plan.tensor_bytes / plan.n_elements)
    again = P.preview_plan(src, plan, cache=cache, sample_rows=48)
    assert all(a.metrics is b.metrics for a, b in zip(pv.tensors, again.tensors))
    ex = P.preview_plan(src, plan, cache=cache, exact_all=True)
    assert ex.exact and len(cache) == n_q
    name = next(e.name for e in plan.entries if e.quantize)
    assert ex.tensors[[t.name for t in ex.tensors].index(name)].metrics.rel_rmse == \
        P.exact(src, "Q4_0", name=name).rel_rmse
    tot_e = sum(t.metrics.sum_sq_err for t in ex.tensors if t.metrics)
    tot_s = sum(t.metrics.sum_sq for t in ex.tensors if t.metrics)
    assert ex.rel_rmse == pytest.approx(math.sqrt(tot_e / tot_s))
    # sampled results do not replace exact ones; an imatrix makes new keys
    assert P.preview_plan(src, plan, cache=cache, sample_rows=48).exact
    im = ImatrixData.random_for(src, n_tokens=8)
    wi = P.preview_plan(src, plan, im, cache=cache, sample_rows=48)
    assert len(cache) > n_q
    assert any(t.imatrix and t.metrics.weighted for t in wi.tensors)
    one = P.preview_plan(src, {name: "Q8_0"})
    assert [t.type for t in one.tensors] == ["Q8_0"] and one.tensors[0].metrics.type == "Q8_0"


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q5_1", "F16", "BF16"])
def test_every_sampled_metric_agrees_with_the_exact_one(demo, qtype):
    """The sampled estimate of a source tensor (pps design with the known sum of squares) states
    intervals that hold the exact relative RMSE and cosine; the cosine is not biased by mixing the
    exact sum of squares with sampled cross terms (it was 0.985 for Q8_0 beside an exact 0.999985)."""
    name = "blk.3.ffn_down.weight"
    ex = P.exact(demo, qtype, name=name, threads=2)
    est = P.estimate(demo, qtype, name=name, sample_rows=96, confidence=0.99, threads=2)
    assert est.design == "pps" and not est.exact
    lo, hi = est.rel_rmse_ci
    assert lo <= ex.rel_rmse <= hi, (qtype, lo, ex.rel_rmse, hi)
    clo, chi = est.cosine_ci
    assert clo <= ex.cosine <= chi, (qtype, clo, ex.cosine, chi)
    assert abs(est.cosine - ex.cosine) <= 4 * (1 - ex.cosine) + 1e-7
    snr_lo, snr_hi = -20 * math.log10(hi), -20 * math.log10(lo) if lo > 0 else math.inf
    assert snr_lo <= ex.snr_db <= snr_hi
