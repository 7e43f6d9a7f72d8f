"""Per-tensor statistics (``quant-studio inspect``, the GUI's tensor view): plain data, no GUI.

:func:`compute_stats` streams a tensor in chunks of rows through two Numba passes
(:mod:`core.kernels.stats`):

1. count, min/max, mean and a provisional variance (row-wise, merged with Chan's formula),
   NaN/Inf counts, per-row and per-column finite |x| max, top-N values by magnitude;
2. central moments around the pass-1 mean (std, excess kurtosis), the histogram over the
   pass-1 range, and counts of ``|x - mean| > k*std`` (k = 3, 6, 10; std from pass 1).

NaN and Inf are counted and excluded from everything else. Sums are float64. Chunk
boundaries depend only on the shape, and partial results merge in chunk order, so the
result is the same for any ``threads``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import numpy as np

from .chunks import row_chunks, run_chunks
from .errors import QuantStudioError
from .kernels import stats as _k
from .progress import CancelToken, Progress, ProgressCallback, ProgressTracker, no_progress
from .sources.base import ModelSource

OUTLIER_KS = (3, 6, 10)
CHUNK_WEIGHTS = 1 << 19        # weights per chunk of the two passes (see core.chunks)

RowReader = Callable[[int, int], np.ndarray]


@dataclass
class TensorStats:
    """Statistics of one tensor. ``count`` counts every element, NaN/Inf included; the moments,
    min/max, histogram, top-N and abs-maxima cover the ``n_finite`` finite ones. ``std`` is the
    population std (ddof=0); ``kurtosis`` is excess kurtosis (normal -> 0). Undefined values
    (no finite data, zero variance) are NaN. Rows are all dims but the last, flattened."""

    name: str
    shape: tuple[int, ...]
    count: int
    n_finite: int
    min: float
    max: float
    mean: float
    std: float
    kurtosis: float
    absmax: float
    nan_count: int
    inf_count: int
    hist_edges: np.ndarray            # float64, bins + 1, over [min, max] of finite values
    hist_counts: np.ndarray           # int64, bins
    outliers_k: dict[int, int]        # k -> count of |x - mean| > k * std
    top: list[tuple[float, int, int]]  # (value, row, col), largest |value| first
    row_absmax: np.ndarray            # float32 per row (0 for a row without finite values)
    col_absmax: np.ndarray            # float32 per column
    row_absmax_ratio: float = field(init=False)  # max / median of row_absmax: outlier rows
    col_absmax_ratio: float = field(init=False)  # max / median of col_absmax: outlier channels

    def __post_init__(self) -> None:
        self.row_absmax_ratio = _ratio(self.row_absmax)
        self.col_absmax_ratio = _ratio(self.col_absmax)

    def to_dict(self, arrays: bool = True) -> dict:
        """JSON-able dict (NaN/Inf become None). ``arrays=False`` leaves out the per-row and
        per-column abs-maxima, which can be long."""
        d = {
            "name": self.name, "shape": list(self.shape), "count": self.count,
            "n_finite": self.n_finite, "nan_count": self.nan_count, "inf_count": self.inf_count,
        }
        for k in ("min", "max", "mean", "std", "kurtosis", "absmax", "row_absmax_ratio",
                  "col_absmax_ratio"):
            d[k] = _num(getattr(self, k))
        d["hist_edges"] = [_num(v) for v in self.hist_edges.tolist()]
        d["hist_counts"] = [int(v) for v in self.hist_counts.tolist()]
        d["outliers_k"] = {str(k): int(v) for k, v in self.outliers_k.items()}
        d["top"] = [[_num(v), int(r), int(c)] for v, r, c in self.top]
        if arrays:
            d["row_absmax"] = [_num(v) for v in self.row_absmax.tolist()]
            d["col_absmax"] = [_num(v) for v in self.col_absmax.tolist()]
        return d


def _num(v) -> Optional[float]:
    v = float(v)
    return v if math.isfinite(v) else None


def _ratio(a: np.ndarray) -> float:
    if a.size == 0:
        return math.nan
    med = float(np.median(a.astype(np.float64)))
    top = float(a.max())
    if med > 0:
        return top / med
    return math.inf if top > 0 else math.nan


def _reader(shape: tuple[int, ...], nrows: int, ncols: int,
            row_source: Union[np.ndarray, RowReader]) -> RowReader:
    if callable(row_source):
        def read(a: int, b: int) -> np.ndarray:
            x = np.ascontiguousarray(row_source(a, b), dtype=np.float32)
            if x.size != (b - a) * ncols:
                raise QuantStudioError(f"read_rows({a}, {b}) gave shape {x.shape}, expected ({b - a}, {ncols})")
            return x.reshape(b - a, ncols)
        return read
    arr = np.asarray(row_source)
    if arr.size != nrows * ncols:
        raise QuantStudioError(f"array of shape {arr.shape} does not match tensor shape {tuple(shape)}")
    x2 = arr.reshape(nrows, ncols)
    return lambda a, b: np.ascontiguousarray(x2[a:b], dtype=np.float32)


def compute_stats(name: str, shape, row_source: Union[np.ndarray, RowReader], *, bins: int = 128,
                  top_n: int = 16, threads: int = 1, progress: Optional[ProgressCallback] = None,
                  cancel: Optional[CancelToken] = None, chunk_weights: int = CHUNK_WEIGHTS) -> TensorStats:
    """Statistics of a tensor of ``shape`` (numpy order; rows = prod(shape[:-1]), row length
    shape[-1]). ``row_source`` is a float array of that size, or ``read_rows(start, stop)``
    returning float32 ``(stop - start, ncols)``; it is called twice per chunk (once per pass),
    from worker threads when ``threads > 1``. ``progress`` gets events whose done/total count
    elements over both passes; ``cancel.check()`` runs between chunks (raises Cancelled)."""
    shape = tuple(int(s) for s in shape)
    if bins < 1 or top_n < 0:
        raise QuantStudioError("bins must be >= 1 and top_n >= 0")
    ncols = shape[-1] if shape else 1
    count = math.prod(shape) if shape else 1
    nrows = count // ncols if ncols else (math.prod(shape[:-1]) if shape else 1)
    read = _reader(shape, nrows, ncols, row_source)
    bounds = row_chunks(nrows, ncols, chunk_weights) if count else []
    threads = max(1, int(threads))
    tracker = ProgressTracker(progress, total=2 * count, stage="stats") if progress else None

    def tick(a: int, b: int) -> None:
        if tracker is not None:
            tracker.advance((b - a) * ncols, item=name)

    # -- pass 1 ---------------------------------------------------------------------------
    row_absmax = np.zeros(nrows, dtype=np.float32)
    colb = np.zeros(ncols, dtype=np.int32)
    acc = {"n": 0, "mean": 0.0, "m2": 0.0, "min": math.inf, "max": -math.inf, "nan": 0, "inf": 0}
    tops_k, tops_i, tops_v = [], [], []

    def p1(a: int, b: int):
        x = read(a, b)
        cb = np.zeros(ncols, dtype=np.int32)
        tk = np.zeros(top_n, dtype=np.int64)
        ti = np.zeros(top_n, dtype=np.int64)
        tv = np.zeros(top_n, dtype=np.float32)
        r = _k.pass1(x, a, cb, row_absmax[a:b], tk, ti, tv)
        return r, cb, tk, ti, tv

    def m1(i, res) -> None:
        (n, mean, m2, bmin, bmax, nnan, ninf, nt), cb, tk, ti, tv = res
        acc["nan"] += nnan
        acc["inf"] += ninf
        np.maximum(colb, cb, out=colb)
        tops_k.append(tk[:nt]); tops_i.append(ti[:nt]); tops_v.append(tv[:nt])
        if n:
            mn, mx = np.array([bmin, bmax], dtype=np.int64).astype(np.int32).view(np.float32)
            acc["min"] = min(acc["min"], float(mn))
            acc["max"] = max(acc["max"], float(mx))
            tot = acc["n"] + n
            delta = mean - acc["mean"]
            acc["mean"] += delta * n / tot
            acc["m2"] += m2 + delta * delta * (acc["n"] * n / tot)
            acc["n"] = tot
        tick(*bounds[i])

    run_chunks(p1, bounds, threads=threads, cancel=cancel, done=m1)

    n = acc["n"]
    mean1 = acc["mean"]
    std1 = math.sqrt(acc["m2"] / n) if n else math.nan
    if n:
        lo, hi = acc["min"], acc["max"]
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5          # as np.histogram does for an empty range
    else:
        lo, hi = 0.0, 1.0
    edges = np.linspace(lo, hi, bins + 1)
    # float32 bin guesses (kernels.stats.pass2) need float32 ends, a float32 span and scale
    f32max = float(np.finfo(np.float32).max)
    fast = bool(np.float32(lo) == lo and np.float32(hi) == hi and hi - lo < f32max
                and bins <= 1 << 16 and 1e-30 < bins / (hi - lo) < 1e30)

    # -- pass 2 ---------------------------------------------------------------------------
    hist = np.zeros(bins, dtype=np.int64)
    mom = {"s1": 0.0, "s2": 0.0, "s4": 0.0}
    outl = {k: 0 for k in OUTLIER_KS}
    thr = [k * std1 if n else math.inf for k in OUTLIER_KS]

    def p2(a: int, b: int):
        h = np.zeros((8, bins), dtype=np.int64)
        r = _k.pass2(read(a, b), mean1, thr[0], thr[1], thr[2], edges, fast, h)
        return r, h

    def m2_(i, res) -> None:
        (s1, s2, s4, o3, o6, o10), h = res
        mom["s1"] += s1; mom["s2"] += s2; mom["s4"] += s4
        for k, o in zip(OUTLIER_KS, (o3, o6, o10)):
            outl[k] += o
        hist[:] += h.sum(axis=0)
        tick(*bounds[i])

    if n:
        run_chunks(p2, bounds, threads=threads, cancel=cancel, done=m2_)
    elif tracker is not None:
        tracker.advance(count, item=name)
    if tracker is not None and not bounds:
        tracker.advance(0, item=name)

    # -- results --------------------------------------------------------------------------
    if n:
        s1, s2, s4 = mom["s1"], mom["s2"], mom["s4"]
        mean = mean1 + s1 / n
        m2c = max(s2 - s1 * s1 / n, 0.0)       # corrected two-pass sum of squares
        std = math.sqrt(m2c / n)
        kurt = n * s4 / (m2c * m2c) - 3.0 if m2c > 0 else math.nan
    else:
        mean = std = kurt = math.nan

    col_absmax = colb.view(np.float32).copy()
    tk = np.concatenate(tops_k) if tops_k else np.zeros(0, np.int64)
    ti = np.concatenate(tops_i) if tops_i else np.zeros(0, np.int64)
    tv = np.concatenate(tops_v) if tops_v else np.zeros(0, np.float32)
    order = np.lexsort((ti, -tk))[:top_n]
    top = [(float(tv[j]), int(ti[j] // ncols), int(ti[j] % ncols)) for j in order]

    return TensorStats(
        name=name, shape=shape, count=count, n_finite=n,
        min=acc["min"] if n else math.nan, max=acc["max"] if n else math.nan,
        mean=mean, std=std, kurtosis=kurt,
        absmax=float(col_absmax.max()) if n else math.nan,
        nan_count=acc["nan"], inf_count=acc["inf"],
        hist_edges=edges, hist_counts=hist, outliers_k=outl, top=top,
        row_absmax=row_absmax, col_absmax=col_absmax)


# ----------------------------------------------------------------------------- a model's tensors
def tensor_stats(src: ModelSource, name: str, *, threads: int = 1, progress: ProgressCallback = no_progress,
                 cancel: Optional[CancelToken] = None):
    t = src.tensor(name)
    return compute_stats(name, tuple(t.shape), lambda a, b: src.read_rows(name, a, b), threads=threads,
                         progress=progress, cancel=cancel)


def model_stats(src: ModelSource, *, threads: Optional[int] = None, progress: ProgressCallback = no_progress,
                cancel: Optional[CancelToken] = None) -> dict:
    """Name -> TensorStats for every tensor that reads as float (integer tensors included)."""
    from .kernels import default_threads

    threads = threads or default_threads()
    readable = [t for t in src.tensors if t.ggml_type is not None]
    tracker = ProgressTracker(progress, 2 * sum(t.n_elements for t in readable), "statistics")
    out = {}
    for t in readable:
        base = tracker.done

        def fwd(ev: Progress, base=base, t=t) -> None:
            tracker.done = base + ev.done
            tracker.advance(0, t.name, ev.done, ev.total)

        out[t.name] = tensor_stats(src, t.name, threads=threads, progress=fwd, cancel=cancel)
        tracker.done = base + 2 * t.n_elements
    return out
