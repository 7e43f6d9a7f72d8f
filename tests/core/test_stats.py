"""core.stats against plain numpy formulas on random data (normal, heavy-tailed with planted
outlier rows/columns, NaN/Inf inserted), plus streaming, threading, cancel and progress."""
from __future__ import annotations

import json

import numpy as np
import pytest

from core.errors import Cancelled, QuantStudioError
from core.progress import CancelToken
from core.stats import OUTLIER_KS, compute_stats


# -- data ------------------------------------------------------------------------------
def _normal():
    return np.random.default_rng(1).standard_normal((240, 96)).astype(np.float32)


def _student_t_outliers():
    rng = np.random.default_rng(2)
    x = rng.standard_t(4, size=(300, 130)).astype(np.float32)
    x[:, 5] *= 60.0           # outlier channels
    x[:, 77] *= 25.0
    x[17, :] *= 30.0          # outlier row
    x[3, 9] = np.nan
    x[250, 0] = np.nan
    x[100, 129] = np.inf
    x[101, 64] = -np.inf
    x[17, 5] = np.nan         # NaN in the outlier row/column crossing
    return x


def _three_d():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 50, 64)) * 0.02 + 0.3).astype(np.float32)
    x[2, 10, :7] = np.nan
    x[0, 0, 63] = np.inf
    return x


DATA = {"normal": _normal, "student_t": _student_t_outliers, "3d": _three_d}


def _ref(x: np.ndarray, bins: int = 128):
    x2 = x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
    fin = np.isfinite(x2)
    f = x2[fin].astype(np.float64)
    mean = f.mean()
    d = f - mean
    m2 = (d ** 2).mean()
    std = np.sqrt(m2)
    a = np.where(fin, np.abs(x2), np.float32(0))
    return dict(
        f=f, mean=mean, std=std, kurt=(d ** 4).mean() / m2 ** 2 - 3.0,
        nan=int(np.isnan(x2).sum()), inf=int(np.isinf(x2).sum()),
        outl={k: int((np.abs(d) > k * std).sum()) for k in OUTLIER_KS},
        row_absmax=a.max(axis=1), col_absmax=a.max(axis=0), x2=x2, fin=fin,
    )


def _top_ref(x2, fin, n):
    """(value, row, col) of the n largest finite |x|; ties broken by lowest flat index."""
    flat = x2.ravel()
    idx = np.flatnonzero(fin.ravel())
    mag = np.abs(flat[idx])
    order = np.lexsort((idx, -mag.astype(np.float64)))[:n]
    ncols = x2.shape[1]
    return [(float(flat[idx[j]]), int(idx[j] // ncols), int(idx[j] % ncols)) for j in order]


def _assert_same(a, b):
    """Two TensorStats are identical (bit for bit, NaN equal to NaN)."""
    da, db = a.to_dict(), b.to_dict()
    assert da == db


# -- statistics against numpy ------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(DATA))
def test_moments_and_counts_match_numpy(kind):
    x = DATA[kind]()
    s = compute_stats(kind, x.shape, x)
    r = _ref(x)
    assert s.shape == x.shape and s.count == x.size
    assert s.nan_count == r["nan"] and s.inf_count == r["inf"]
    assert s.n_finite == r["f"].size
    assert s.min == r["f"].min() and s.max == r["f"].max()
    assert s.absmax == np.abs(r["f"]).max()
    assert s.mean == pytest.approx(r["mean"], rel=1e-12, abs=1e-15)
    assert s.std == pytest.approx(r["std"], rel=1e-12)
    assert s.kurtosis == pytest.approx(r["kurt"], rel=1e-9, abs=1e-12)
    assert s.outliers_k == r["outl"]


@pytest.mark.parametrize("kind", sorted(DATA))
def test_histogram_equals_numpy(kind):
    x = DATA[kind]()
    s = compute_stats(kind, x.shape, x, bins=128)
    f = _ref(x)["f"]
    assert s.hist_edges.shape == (129,) and s.hist_counts.dtype == np.int64
    np.testing.assert_array_equal(s.hist_edges, np.linspace(f.min(), f.max(), 129))
    np.testing.assert_array_equal(s.hist_counts, np.histogram(f, bins=s.hist_edges)[0])
    assert s.hist_counts.sum() == s.n_finite


@pytest.mark.parametrize("lo,hi,bins", [(0.0, 1.0, 64), (-0.3, 0.7, 100), (-1.7, 2.9, 128)])
def test_histogram_values_on_and_beside_edges(lo, hi, bins):
    # float32 values nearest to every edge and their float32 neighbours: the binning must agree
    # with np.histogram's comparisons against the float64 edges even where rounding is closest
    lo, hi = float(np.float32(lo)), float(np.float32(hi))
    e = np.linspace(lo, hi, bins + 1).astype(np.float32)
    near, down, up = [e], e, e
    for _ in range(3):                               # up to 3 ulp either side of each edge
        down, up = np.nextafter(down, np.float32(-9)), np.nextafter(up, np.float32(9))
        near += [down, up]
    vals = np.clip(np.concatenate(near), np.float32(lo), np.float32(hi))
    x = np.tile(vals, 3).reshape(3, -1).astype(np.float32)
    s = compute_stats("edges", x.shape, x, bins=bins)
    np.testing.assert_array_equal(s.hist_edges, np.linspace(lo, hi, bins + 1))
    np.testing.assert_array_equal(s.hist_counts, np.histogram(x.astype(np.float64), bins=s.hist_edges)[0])


@pytest.mark.parametrize("bins", [1, 7, 300])
def test_histogram_other_bin_counts(bins):
    x = _student_t_outliers()
    s = compute_stats("t", x.shape, x, bins=bins)
    f = _ref(x)["f"]
    assert s.hist_counts.shape == (bins,)
    np.testing.assert_array_equal(s.hist_counts, np.histogram(f, bins=s.hist_edges)[0])


def test_histogram_range_too_wide_for_float32():
    # max - min overflows float32: the exact float64 binning path is used
    rng = np.random.default_rng(4)
    x = (rng.uniform(-1, 1, size=(64, 40)) * 3e38).astype(np.float32)
    s = compute_stats("wide", x.shape, x, bins=50)
    f = x.astype(np.float64).ravel()
    np.testing.assert_array_equal(s.hist_counts, np.histogram(f, bins=s.hist_edges)[0])
    assert s.min == f.min() and s.max == f.max()


def test_constant_tensor():
    x = np.full((30, 20), 0.125, dtype=np.float32)
    s = compute_stats("c", x.shape, x, bins=16)
    counts, edges = np.histogram(x.astype(np.float64), bins=16)   # numpy widens an empty range by 0.5
    np.testing.assert_array_equal(s.hist_edges, edges)
    np.testing.assert_array_equal(s.hist_counts, counts)
    assert s.mean == 0.125 and s.std == 0.0 and np.isnan(s.kurtosis)
    assert s.outliers_k == {k: 0 for k in OUTLIER_KS}


@pytest.mark.parametrize("kind", sorted(DATA))
def test_top_n_positions(kind):
    x = DATA[kind]()
    s = compute_stats(kind, x.shape, x, top_n=16)
    r = _ref(x)
    assert s.top == _top_ref(r["x2"], r["fin"], 16)


def test_top_n_ties_and_planted_outliers():
    rng = np.random.default_rng(5)
    x = rng.integers(-3, 4, size=(200, 50)).astype(np.float32)   # many equal magnitudes
    x[150, 7] = -9.0
    x[20, 44] = 8.5
    x[20, 45] = np.inf                                          # not a top value: not finite
    s = compute_stats("ties", x.shape, x, top_n=10, chunk_weights=512)
    r = _ref(x)
    assert s.top == _top_ref(r["x2"], r["fin"], 10)
    assert s.top[0] == (-9.0, 150, 7) and s.top[1] == (8.5, 20, 44)
    assert compute_stats("few", (2, 3), np.ones((2, 3), np.float32), top_n=16).top == \
        [(1.0, i, j) for i in range(2) for j in range(3)]
    assert compute_stats("none", x.shape, x, top_n=0).top == []
    # all magnitudes equal: the earliest positions win, whatever the chunking
    signs = np.where(rng.random((40, 30)) < 0.5, -1.0, 1.0).astype(np.float32)
    for chunk in (30, 300, 1 << 19):
        s = compute_stats("pm1", signs.shape, signs, top_n=12, chunk_weights=chunk)
        assert [(r, c) for _, r, c in s.top] == [divmod(i, 30) for i in range(12)]
        assert [v for v, _, _ in s.top] == signs.ravel()[:12].tolist()


@pytest.mark.parametrize("kind", sorted(DATA))
def test_row_and_col_absmax_exact(kind):
    x = DATA[kind]()
    s = compute_stats(kind, x.shape, x)
    r = _ref(x)
    assert s.row_absmax.dtype == np.float32 and s.col_absmax.dtype == np.float32
    np.testing.assert_array_equal(s.row_absmax, r["row_absmax"])
    np.testing.assert_array_equal(s.col_absmax, r["col_absmax"])
    assert s.col_absmax_ratio == pytest.approx(r["col_absmax"].max() / np.median(r["col_absmax"]))
    assert s.row_absmax_ratio == pytest.approx(r["row_absmax"].max() / np.median(r["row_absmax"]))


def test_outlier_channels_stand_out():
    s = compute_stats("t", (300, 130), _student_t_outliers())
    top_cols = np.argsort(s.col_absmax)[::-1][:2]
    assert set(top_cols.tolist()) == {5, 77}
    assert int(np.argmax(s.row_absmax)) in (17,) or s.row_absmax[17] > 5 * np.median(s.row_absmax)
    assert s.col_absmax_ratio > 10


# -- edge cases ------------------------------------------------------------------------------
def test_all_nan_and_json():
    x = np.full((5, 8), np.nan, dtype=np.float32)
    x[1, 1] = np.inf
    s = compute_stats("nan", x.shape, x)
    assert s.nan_count == 39 and s.inf_count == 1 and s.n_finite == 0
    assert np.isnan(s.mean) and np.isnan(s.min) and s.top == [] and s.hist_counts.sum() == 0
    np.testing.assert_array_equal(s.row_absmax, np.zeros(5, np.float32))
    d = json.loads(json.dumps(s.to_dict(), allow_nan=False))
    assert d["mean"] is None and d["nan_count"] == 39


def test_to_dict_is_json():
    x = _student_t_outliers()
    s = compute_stats("t", x.shape, x)
    d = json.loads(json.dumps(s.to_dict(), allow_nan=False))
    assert d["hist_counts"] == s.hist_counts.tolist() and d["outliers_k"]["3"] == s.outliers_k[3]
    assert d["top"][0] == [s.top[0][0], s.top[0][1], s.top[0][2]]
    assert len(d["col_absmax"]) == 130 and "row_absmax" not in s.to_dict(arrays=False)


def test_one_dim_and_empty():
    v = np.random.default_rng(6).standard_normal(1000).astype(np.float32)
    s = compute_stats("v", v.shape, v)
    assert s.row_absmax.shape == (1,) and s.col_absmax.shape == (1000,)
    assert s.mean == pytest.approx(v.astype(np.float64).mean(), rel=1e-12)
    assert s.top[0][1] == 0 and s.top[0][2] == int(np.argmax(np.abs(v)))
    e = compute_stats("e", (0, 16), np.zeros((0, 16), np.float32))
    assert e.count == 0 and e.n_finite == 0 and e.col_absmax.shape == (16,)


def test_shape_mismatch_is_an_error():
    with pytest.raises(QuantStudioError):
        compute_stats("bad", (10, 10), np.zeros(99, np.float32))
    with pytest.raises(QuantStudioError):
        compute_stats("bad", (10, 10), lambda a, b: np.zeros((b - a, 9), np.float32))


# -- streaming, threads, cancel, progress --------------------------------------------------------
def _reader(x, calls):
    x2 = x.reshape(-1, x.shape[-1])

    def read_rows(a, b):
        calls.append((a, b))
        return x2[a:b].copy()
    return read_rows


@pytest.mark.parametrize("kind", sorted(DATA))
def test_callable_source_matches_array(kind):
    x = DATA[kind]()
    ncols = x.shape[-1]
    calls = []
    chunk = 37 * ncols                                  # 37 rows per chunk
    streamed = compute_stats(kind, x.shape, _reader(x, calls), chunk_weights=chunk)
    assert max(b - a for a, b in calls) == 37           # memory bounded by the chunk size
    nrows = x.size // ncols
    assert sorted(set(calls)) == [(a, min(a + 37, nrows)) for a in range(0, nrows, 37)]
    _assert_same(streamed, compute_stats(kind, x.shape, x, chunk_weights=chunk))
    # against the one-chunk in-memory run: counts exact, float sums to rounding
    whole = compute_stats(kind, x.shape, x)
    for k in ("count", "n_finite", "nan_count", "inf_count", "min", "max", "absmax", "outliers_k", "top"):
        assert getattr(streamed, k) == getattr(whole, k), k
    for k in ("hist_edges", "hist_counts", "row_absmax", "col_absmax"):
        np.testing.assert_array_equal(getattr(streamed, k), getattr(whole, k))
    for k in ("mean", "std", "kurtosis"):
        assert getattr(streamed, k) == pytest.approx(getattr(whole, k), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("kind", sorted(DATA))
def test_two_threads_equal_one(kind):
    x = DATA[kind]()
    kw = dict(chunk_weights=20 * x.shape[-1])
    one = compute_stats(kind, x.shape, x, threads=1, **kw)
    _assert_same(one, compute_stats(kind, x.shape, x, threads=2, **kw))
    _assert_same(one, compute_stats(kind, x.shape, _reader(x, []), threads=2, **kw))


@pytest.mark.parametrize("threads", [1, 2])
def test_cancel_raises(threads):
    x = _normal()
    tok = CancelToken()
    calls = []
    seen = []

    def progress(ev):
        seen.append(ev.done)
        if len(seen) == 2:
            tok.cancel()

    with pytest.raises(Cancelled):
        compute_stats("n", x.shape, _reader(x, calls), threads=threads, progress=progress,
                      cancel=tok, chunk_weights=10 * 96)
    assert len(calls) < 2 * 24      # stopped before reading every chunk twice
    pre = CancelToken()
    pre.cancel()
    with pytest.raises(Cancelled):
        compute_stats("n", x.shape, x, cancel=pre)


@pytest.mark.parametrize("threads", [1, 2])
def test_progress_reaches_total(threads):
    x = _student_t_outliers()
    events = []
    compute_stats("t", x.shape, x, threads=threads, progress=events.append, chunk_weights=50 * 130)
    assert events and all(e.total == 2 * x.size for e in events)
    done = [e.done for e in events]
    assert done == sorted(done) and done[-1] == 2 * x.size
    assert events[-1].fraction == 1.0 and events[0].item == "t"
