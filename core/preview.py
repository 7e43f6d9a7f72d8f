"""Quantization error preview: quantize -> dequantize a tensor and measure what was lost.

Figures per tensor and type (:class:`ErrorMetrics`): RMSE, relative RMSE
(``sqrt(sum err^2 / sum x^2)``), SNR in dB (``-20 log10`` of the relative RMSE), max abs
error, cosine similarity, bits per weight and size; with importance weights ``w`` (the
imatrix: mean squared activation per input column) also the weighted relative RMSE
``sqrt(sum w err^2 / sum w x^2)`` -- the relative error of the layer's outputs for
activations of that power -- and the weighted RMSE ``sqrt(sum w err^2 / sum w)``.
The importance weights are also passed to the kernel, as llama-quantize does.

Two ways to get them:

- :func:`estimate`: a random sample of rows (fixed seed) sized to a time budget; rows
  are the sampling unit because llama.cpp quantizes row by row. By default rows are
  drawn with probability proportional to a size measure read from every row (the
  squared block maxima set the quantization step, so a few outlier rows that carry
  much of the error are not missed); the relative RMSE comes with a standard error
  and a confidence interval (Hansen-Hurwitz / ratio estimators, linearized variance,
  normal approximation). Max abs error is the sample's.
- :func:`exact`: every row, in chunks over threads, with progress and cancel.

:func:`candidates` previews every writable type a tensor's rows fit, side by side;
:func:`preview_plan` gives size and error per tensor of a plan, with a
:class:`PreviewCache` keyed by (source, tensor, type, imatrix id).
"""
from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from numba import njit

from .chunks import CHUNK_WEIGHTS, row_chunks, run_chunks
from .errors import PlanError, UnsupportedError
from .kernels import get_kernel
from .progress import CancelToken, ProgressCallback, ProgressTracker, no_progress
from .qtypes import INTERMEDIATE_ONLY, REQUIRES_IMATRIX, parse_type, type_info, writable_types

_F64 = np.float64
N_STATS = 8            # per-row sums: x^2, err^2, x*y, y^2, max|err|, w*err^2, w*x^2, w
DEFAULT_BUDGET = 0.22  # seconds for a sampled estimate (300 ms with the final bookkeeping and jitter)
MIN_SAMPLE_ROWS = 32
PILOT_WEIGHTS = 1 << 17
PPS_SOURCE_LIMIT = 8 << 20         # "auto" reads a source tensor whole for its size measure up to
PPS_FLOAT_SOURCE_LIMIT = 64 << 20  # this many weights (float storage: this many); cached per tensor


# -- the per-row sums (Numba) ---------------------------------------------------------------
@njit(cache=True, nogil=True)
def _row_stats(x, y, w, out):
    """out[r] = per-row sums over x, y = dequantized x, w = weights (length 0: none), in float64."""
    nrows, n = x.shape
    has_w = w.shape[0] > 0
    for r in range(nrows):
        sx2 = 0.0
        se2 = 0.0
        sxy = 0.0
        sy2 = 0.0
        mx = 0.0
        swe = 0.0
        swx = 0.0
        sw = 0.0
        for j in range(n):
            xv = _F64(x[r, j])
            yv = _F64(y[r, j])
            e = yv - xv
            sx2 += xv * xv
            se2 += e * e
            sxy += xv * yv
            sy2 += yv * yv
            ae = abs(e)
            if ae > mx or ae != ae:
                mx = ae
            if has_w:
                wv = _F64(w[j])
                swe += wv * e * e
                swx += wv * xv * xv
                sw += wv
        out[r, 0] = sx2
        out[r, 1] = se2
        out[r, 2] = sxy
        out[r, 3] = sy2
        out[r, 4] = mx
        out[r, 5] = swe
        out[r, 6] = swx
        out[r, 7] = sw


@njit(cache=True, nogil=True, fastmath=True)
def _row_proxy(x, s_out, m_out):
    """Per row: sum of x^2, and sum over blocks of 32 of (block abs max)^2 -- the size of the
    quantization step, which tracks a block quantizer's error. A size measure only: float32
    sums within a block, any order (fastmath lets them vectorize)."""
    nrows, n = x.shape
    nb = n // 32
    for r in range(nrows):
        row = x[r]
        s = 0.0
        m = 0.0
        for b in range(nb + (1 if n % 32 else 0)):
            o = b * 32
            bs = np.float32(0.0)
            amax = np.float32(0.0)
            if b < nb:
                for j in range(32):
                    v = row[o + j]
                    bs += v * v
                    a = abs(v)
                    amax = a if a > amax else amax
            else:
                for j in range(o, n):
                    v = row[j]
                    bs += v * v
                    a = abs(v)
                    amax = a if a > amax else amax
            s += bs
            m += _F64(amax) * _F64(amax)
        s_out[r] = s
        m_out[r] = m


# -- tensors: an array or a source's tensor, read by rows ----------------------------------------
class _Rows:
    """Rows of a tensor (all dims but the last flattened). 3-D tensors are ``n_mat`` matrices
    (experts) of ``rows_per_mat`` rows each; row ``r`` belongs to matrix ``r // rows_per_mat``."""

    def __init__(self, tensor, name: Optional[str] = None):
        if isinstance(tensor, tuple) and len(tensor) == 2 and not isinstance(tensor[0], np.ndarray):
            tensor, name = tensor
        if isinstance(tensor, np.ndarray):
            if tensor.ndim < 1:
                raise PlanError("a tensor to preview needs at least one dimension")
            self.array = np.ascontiguousarray(tensor, dtype=np.float32).reshape(-1, tensor.shape[-1])
            self.source = None
            self.shape = tuple(int(d) for d in tensor.shape)
            self.name = name or "tensor"
        else:
            if name is None:
                raise PlanError("previewing a tensor of a model needs its name")
            self.source, self.array, self.name = tensor, None, name
            self.shape = tuple(tensor.tensor(name).shape)
        self.row_len = int(self.shape[-1])
        self.n_rows = int(math.prod(self.shape[:-1])) if len(self.shape) > 1 else 1
        self.n_mat = int(self.shape[-3]) if len(self.shape) >= 3 else 1
        self.rows_per_mat = self.n_rows // self.n_mat if self.n_mat else self.n_rows

    @property
    def n_elements(self) -> int:
        return self.n_rows * self.row_len

    def read(self, a: int, b: int) -> np.ndarray:
        if self.array is not None:
            return self.array[a:b]
        return np.ascontiguousarray(self.source.read_rows(self.name, a, b), dtype=np.float32)

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (sorted ascending), reading runs of consecutive rows at once."""
        if self.array is not None:
            return self.array[idx]
        out = np.empty((idx.size, self.row_len), dtype=np.float32)
        if idx.size == 0:
            return out
        breaks = np.flatnonzero(np.diff(idx) != 1) + 1
        starts = np.concatenate(([0], breaks))
        ends = np.concatenate((breaks, [idx.size]))
        for s, e in zip(starts.tolist(), ends.tolist()):
            out[s:e] = self.source.read_rows(self.name, int(idx[s]), int(idx[e - 1]) + 1)
        return out


def _importance(rows: _Rows, importance) -> Optional[np.ndarray]:
    """Importance as float32 ``(n_mat, row_len)``, or None."""
    if importance is None:
        return None
    w = np.ascontiguousarray(importance, dtype=np.float32)
    if w.size == rows.row_len and rows.n_mat == 1:
        return w.reshape(1, -1)
    if w.size == rows.row_len * rows.n_mat:
        return w.reshape(rows.n_mat, rows.row_len)
    raise PlanError(f"importance for '{rows.name}' has {w.size} values, the tensor needs "
                    f"{rows.row_len * rows.n_mat} ({rows.n_mat} x {rows.row_len})")


# -- results ---------------------------------------------------------------------------------
@dataclass
class ErrorMetrics:
    """Error of one tensor in one type.

    ``design``: "exact" (every row), "pps" (rows drawn with replacement, probability
    proportional to a size measure read from every row: sum of squared block maxima, or
    of x^2 for float types) or "srs" (simple random sample of rows). For a sample every
    figure is an estimate; ``rel_rmse_ci`` is the ``confidence`` interval of the relative
    RMSE (normal approximation) and ``max_abs_err`` the largest error in the rows seen.
    ``sum_sq``/``sum_sq_err`` are (estimated) whole-tensor sums of x^2 and err^2."""

    name: str
    type: str
    shape: tuple[int, ...]
    nbytes: int                   # the whole tensor in this type
    bpw: float
    exact: bool
    design: str
    rows: int                     # distinct rows measured
    draws: int                    # sample size (draws; = rows unless drawn with replacement)
    total_rows: int
    rmse: float
    rel_rmse: float
    snr_db: float
    max_abs_err: float
    cosine: float
    rel_rmse_se: float = 0.0
    rel_rmse_ci: tuple[float, float] = (0.0, 0.0)
    cosine_ci: tuple[float, float] = (1.0, 1.0)
    confidence: float = 0.95
    weighted: bool = False        # importance weights given
    weighted_rel_rmse: Optional[float] = None
    weighted_rmse: Optional[float] = None
    weighted_rel_rmse_ci: Optional[tuple[float, float]] = None
    sum_sq: float = 0.0
    sum_sq_err: float = 0.0
    seconds: float = 0.0

    @property
    def n_elements(self) -> int:
        return int(math.prod(self.shape)) if self.shape else 1

    @property
    def sample_elements(self) -> int:
        return self.rows * (self.shape[-1] if self.shape else 1)

    def in_interval(self, rel_rmse: float) -> bool:
        lo, hi = self.rel_rmse_ci
        return lo <= rel_rmse <= hi

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["n_elements"] = self.n_elements
        return d


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return 0.0 if num == 0 else math.inf


def _sqrt_ci(r: float, se: float, z: float) -> tuple[float, float]:
    return math.sqrt(max(r - z * se, 0.0)), math.sqrt(r + z * se) if math.isfinite(r) else math.inf


class _Est:
    """Totals and ratio variances from per-draw sums ``st`` and expansion factors ``u = 1/p``
    (Hansen-Hurwitz; for a simple random sample ``u = N`` and ``fpc = 1 - n/N``)."""

    def __init__(self, st: np.ndarray, u: np.ndarray, fpc: float, known_s: Optional[float]):
        self.st, self.u, self.fpc, self.n = st, u, fpc, st.shape[0]
        self.tot = (st * u[:, None]).mean(axis=0)
        self.known_s = known_s

    @property
    def s(self) -> float:
        return self.known_s if self.known_s is not None else float(self.tot[0])

    def ratio(self, num: int, den: int) -> tuple[float, float]:
        """R = total[num] / total[den] and its standard error (linearization)."""
        n = self.n
        d_tot = self.s if den == 0 else float(self.tot[den])
        r = _ratio(float(self.tot[num]), d_tot)
        if n < 2 or not math.isfinite(r) or d_tot <= 0:
            return r, 0.0
        if den == 0 and self.known_s is not None:
            z = self.st[:, num] * self.u
        else:
            z = (self.st[:, num] - r * self.st[:, den]) * self.u
        var = self.fpc * float(np.var(z, ddof=1)) / n / (d_tot * d_tot)
        return r, math.sqrt(max(var, 0.0))

    def cosine(self) -> tuple[float, float]:
        """cos = XY / sqrt(S * Y2), every total estimated from the same draws (the known S would bias
        it: a ratio needs its parts from one sample), and its standard error (linearization)."""
        t0, t2, t3 = (float(self.tot[i]) for i in (0, 2, 3))
        if t0 <= 0 or t3 <= 0:
            return (1.0 if t0 == t3 == 0 else 0.0), 0.0
        g = t2 / math.sqrt(t0 * t3)
        if self.n < 2:
            return g, 0.0
        z = (self.st[:, 2] / t2 - self.st[:, 0] / (2 * t0) - self.st[:, 3] / (2 * t3)) * g * self.u if t2 else \
            np.zeros(self.n)
        return g, math.sqrt(max(self.fpc * float(np.var(z, ddof=1)) / self.n, 0.0))


def _metrics(rows: _Rows, qtype, st: np.ndarray, weighted: bool, design: str, confidence: float, seconds: float,
             u: Optional[np.ndarray] = None, fpc: float = 0.0, known_s: Optional[float] = None,
             n_distinct: Optional[int] = None) -> ErrorMetrics:
    """Figures from per-row sums: every row (``design`` "exact") or a sample with factors ``u``."""
    info = type_info(qtype)
    exact_ = design == "exact"
    k = st.shape[0]
    if exact_:
        u, fpc, known_s = np.full(k, float(k)), 0.0, None
    est = _Est(st, u, fpc, known_s)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    S, E = est.s, float(est.tot[1])
    r, r_se = est.ratio(1, 0)
    cos, cos_se = est.cosine()
    rel = math.sqrt(r)
    m = ErrorMetrics(
        name=rows.name, type=info.name, shape=rows.shape,
        nbytes=info.row_bytes(rows.row_len) * rows.n_rows, bpw=info.bpw, exact=exact_, design=design,
        rows=n_distinct if n_distinct is not None else k, draws=k, total_rows=rows.n_rows,
        rmse=math.sqrt(E / rows.n_elements) if rows.n_elements else 0.0, rel_rmse=rel,
        snr_db=(10 * math.log10(S / E) if E > 0 and S > 0 else (math.inf if E == 0 else -math.inf)),
        max_abs_err=float(st[:, 4].max()) if k else 0.0,
        cosine=cos, cosine_ci=(cos, cos) if exact_ else (max(-1.0, cos - z * cos_se), min(1.0, cos + z * cos_se)),
        rel_rmse_se=r_se / (2 * rel) if rel > 0 else 0.0,
        rel_rmse_ci=(rel, rel) if exact_ else _sqrt_ci(r, r_se, z), confidence=confidence,
        weighted=weighted, sum_sq=S, sum_sq_err=E, seconds=seconds)
    if weighted:
        wr, w_se = est.ratio(5, 6)
        m.weighted_rel_rmse = math.sqrt(wr)
        m.weighted_rmse = math.sqrt(_ratio(float(est.tot[5]), float(est.tot[7])))
        m.weighted_rel_rmse_ci = (m.weighted_rel_rmse,) * 2 if exact_ else _sqrt_ci(wr, w_se, z)
    return m


# -- the work: quantize, dequantize, measure ---------------------------------------------------
_NO_W = np.zeros(0, dtype=np.float32)


def round_trip(kernel, x: np.ndarray, qw: Optional[np.ndarray]) -> np.ndarray:
    """``x`` (float32 rows) quantized with importance ``qw`` (or None) and dequantized, on this thread."""
    q = np.empty((x.shape[0], kernel.row_bytes(x.shape[1])), dtype=np.uint8)
    kernel.quantize_into(x, q, qw)
    y = np.empty_like(x)
    kernel.dequantize_into(q, y)
    return y


def _measure(kernel, x: np.ndarray, qw: Optional[np.ndarray], w_err: Optional[np.ndarray]) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = round_trip(kernel, x, qw)
    out = np.empty((x.shape[0], N_STATS), dtype=np.float64)
    _row_stats(x, y, w_err if w_err is not None else _NO_W, out)
    return out


def _prepare(tensor, qtype, importance, name, use_for_quantization):
    rows = _Rows(tensor, name)
    qt = parse_type(qtype)
    if qt in INTERMEDIATE_ONLY:
        raise UnsupportedError(f"{qt.name} is an intermediate type, not offered for weights")
    info = type_info(qt)
    info.row_bytes(rows.row_len)                 # PlanError when the rows do not fit the blocks
    kernel = get_kernel(qt)
    imp = _importance(rows, importance)
    qimp = imp if (imp is not None and use_for_quantization) else None
    return rows, qt, kernel, imp, qimp


def _measure_rows(kernel, rows: _Rows, idx: np.ndarray, x: np.ndarray, qimp, imp, threads: int) -> np.ndarray:
    """Per-row sums for rows ``idx`` (sorted, distinct; values ``x``), over threads and matrices."""
    mats = idx // rows.rows_per_mat if rows.n_mat > 1 else np.zeros(idx.size, dtype=np.int64)
    bounds = []                                   # runs of positions in x, one matrix each
    for m in np.unique(mats).tolist():
        pos = np.flatnonzero(mats == m)
        bounds += [(int(p[0]), int(p[-1]) + 1) for p in np.array_split(pos, max(1, min(threads, pos.size))) if p.size]
    out = np.empty((idx.size, N_STATS), dtype=np.float64)

    def one(a: int, b: int) -> None:
        m = int(mats[a])
        out[a:b] = _measure(kernel, x[a:b], qimp[m] if qimp is not None else None, imp[m] if imp is not None else None)

    run_chunks(one, bounds, threads=threads)
    return out


def _pps_limit(rows: _Rows) -> int:
    """Largest source tensor "auto" reads whole for its size measure: float storage decodes fast."""
    dtype = getattr(rows.source.tensor(rows.name), "dtype", "")
    return PPS_FLOAT_SOURCE_LIMIT if str(dtype).upper() in ("F32", "F16", "BF16") else PPS_SOURCE_LIMIT


def _source_id(source) -> tuple:
    """A source's identity for caches: its file (path, size, mtime), else the object."""
    path = getattr(source, "path", None)
    try:
        st = os.stat(path) if path else None
    except OSError:
        st = None
    return (os.path.abspath(path), st.st_size, st.st_mtime_ns) if st else (id(source),)


_PROXIES: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}     # size measures of source tensors, by tensor
_PROXIES_LOCK = threading.Lock()


class _Sample:
    """Random draws of rows for one tensor (fixed seed), shared by every type previewed.

    "srs": a random permutation, any prefix a simple random sample. "pps": rows drawn with
    replacement, probability proportional to a size measure read from every row once
    (``s``: sum of x^2, for float types; ``m``: sum of squared block-of-32 maxima, else)."""

    MAX_DRAWS = 1 << 16

    def __init__(self, rows: _Rows, seed: int, design: str, threads: int):
        self.rows, self.seed, self.threads = rows, seed, threads
        if design == "auto":
            design = "pps" if rows.array is not None or rows.n_elements <= _pps_limit(rows) else "srs"
        if design not in ("pps", "srs"):
            raise PlanError(f"unknown sampling design '{design}' (auto, pps, srs)")
        self.design = design
        self._proxy: Optional[tuple[np.ndarray, np.ndarray]] = None
        self._draws: dict[str, tuple[np.ndarray, Optional[np.ndarray]]] = {}
        self._cache: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def proxy(self) -> tuple[np.ndarray, np.ndarray]:
        if self._proxy is None and self.rows.source is not None:
            key = (_source_id(self.rows.source), self.rows.name)
            self._proxy = _PROXIES.get(key)
        if self._proxy is None:
            rows = self.rows
            s = np.empty(rows.n_rows)
            m = np.empty(rows.n_rows)

            def one(a: int, b: int) -> None:
                _row_proxy(np.ascontiguousarray(rows.read(a, b), dtype=np.float32), s[a:b], m[a:b])

            run_chunks(one, row_chunks(rows.n_rows, rows.row_len, CHUNK_WEIGHTS, rows.rows_per_mat),
                       threads=self.threads)
            self._proxy = (s, m)
            if rows.source is not None:
                with _PROXIES_LOCK:
                    _PROXIES[(_source_id(rows.source), rows.name)] = self._proxy
                    while len(_PROXIES) > 256:
                        _PROXIES.pop(next(iter(_PROXIES)))
        return self._proxy

    def draws(self, kind: str) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """(row per draw, probability per row or None for srs); kind "srs", "s" or "m"."""
        if kind not in self._draws:
            rng = np.random.default_rng(self.seed)
            n = self.rows.n_rows
            p = None
            if kind != "srs":
                size = self.proxy()[0 if kind == "s" else 1]
                tot = float(size.sum())
                if tot > 0 and math.isfinite(tot):
                    p = size / tot
            if p is None:
                order = rng.permutation(n) if n <= (1 << 22) else rng.choice(n, self.MAX_DRAWS, replace=False)
            else:
                order = rng.choice(n, min(self.MAX_DRAWS, 64 * n), replace=True, p=p)
            self._draws[kind] = (order, p)
        return self._draws[kind]

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (sorted, distinct), remembered for sources."""
        if self.rows.array is not None:
            return self.rows.take(idx)
        with self._lock:
            need = np.array([i for i in idx.tolist() if i not in self._cache], dtype=np.int64)
            if need.size:
                for i, row in zip(need.tolist(), self.rows.take(need)):
                    self._cache[i] = row
            return np.stack([self._cache[i] for i in idx.tolist()])


def warm_up(types: Sequence = ()) -> None:
    """Load (compile or read from cache) the kernels of ``types`` (all writable ones by default)."""
    x = np.zeros((1, 256), dtype=np.float32)
    _row_proxy(x, np.empty(1), np.empty(1))
    for t in (types or writable_types()):
        try:
            k = get_kernel(t)
        except (UnsupportedError, ImportError, AttributeError):
            continue
        if type_info(t).fits(256):
            _measure(k, x, None, None)
            _measure(k, x, np.ones(256, dtype=np.float32), np.ones(256, dtype=np.float32))


def _all_rows(kernel, rows: _Rows, qimp, imp, threads: int, chunk_weights: int = CHUNK_WEIGHTS,
              progress: ProgressCallback = no_progress, cancel: Optional[CancelToken] = None) -> np.ndarray:
    """Per-row sums of every row, chunk by chunk; progress counts weights; cancel between chunks."""
    tracker = ProgressTracker(progress, rows.n_elements, "preview")
    out = np.empty((rows.n_rows, N_STATS), dtype=np.float64)

    def work(a: int, b: int) -> None:
        m = a // rows.rows_per_mat
        out[a:b] = _measure(kernel, rows.read(a, b), None if qimp is None else qimp[m],
                            None if imp is None else imp[m])
        tracker.advance((b - a) * rows.row_len, item=rows.name, item_done=b, item_total=rows.n_rows)

    run_chunks(work, row_chunks(rows.n_rows, rows.row_len, chunk_weights, rows.rows_per_mat),
               threads=threads, cancel=cancel)
    return out


def estimate(tensor, qtype, importance=None, *, name: Optional[str] = None, sample_rows: Optional[int] = None,
             time_budget: float = DEFAULT_BUDGET, seed: int = 0, threads: int = 2, confidence: float = 0.95,
             design: str = "auto", use_for_quantization: bool = True,
             _sample: Optional[_Sample] = None) -> ErrorMetrics:
    """Error estimate from a random sample of rows.

    ``tensor``: a float array (rows = last dim) or a ModelSource with ``name`` (or a
    ``(source, name)`` pair). ``importance``: ``(row_len,)`` or ``(n_expert, row_len)``.
    ``sample_rows`` fixes the number of draws (reproducible); otherwise a pilot measures the
    speed and the sample fills ``time_budget`` seconds (at least 32 draws). When every row
    fits in the budget (or ``sample_rows >= rows``) the result is exact. ``design``: "pps",
    "srs" or "auto" (pps for arrays and for source tensors up to 8 M weights, 64 M if stored
    as floats: their size measure costs one read of the tensor, then is cached)."""
    t0 = time.perf_counter()
    rows, qt, kernel, imp, qimp = _prepare(tensor, qtype, importance, name, use_for_quantization)
    sample = _sample or _Sample(rows, seed, design, threads)
    total = rows.n_rows

    def everything() -> ErrorMetrics:
        st = _all_rows(kernel, rows, qimp, imp, threads)
        return _metrics(rows, qt, st, imp is not None, "exact", confidence, time.perf_counter() - t0)

    if sample_rows is not None and sample_rows >= total:
        return everything()
    kind = "srs" if sample.design == "srs" else ("s" if type_info(qt).is_float else "m")
    if sample_rows is None:
        _measure(kernel, np.zeros((1, rows.row_len), dtype=np.float32), None if qimp is None else qimp[0],
                 None if imp is None else imp[0])                  # loads the kernels outside the timing
    order, p = sample.draws(kind)
    done: dict[int, np.ndarray] = {}                                 # row -> its sums

    def measure(n: int) -> None:
        new = np.unique(order[:n])
        new = new[[i not in done for i in new.tolist()]] if done else new
        if new.size:
            st = _measure_rows(kernel, rows, new, sample.take(new), qimp, imp, threads)
            done.update(zip(new.tolist(), st))

    if sample_rows is not None:
        n = min(int(sample_rows), order.size)
        measure(n)
    else:
        n = min(order.size, max(2 * threads, -(-PILOT_WEIGHTS // rows.row_len)))
        for step in range(6):                 # a pilot, then batches sized from the last one's speed
            t1, had = time.perf_counter(), len(done)
            measure(n)
            rate = (len(done) - had + 1) / max(time.perf_counter() - t1, 1e-6)   # rows/s, reading included
            left = time_budget - (time.perf_counter() - t0)
            if step == 0 and total - len(done) <= rate * left * 0.6:
                return everything()
            more = min(int(rate * left * 0.6), 4 * n)   # at most 5x per step: one noisy timing can't overrun
            if n >= order.size or (more < n // 8 and n >= MIN_SAMPLE_ROWS):
                break
            n = min(order.size, max(MIN_SAMPLE_ROWS, n + more))
        measure(n)                            # no-op unless the last batch was sized but not run
    if len(done) == total:                    # the draws happened to cover every row
        st = np.stack([done[i] for i in range(total)])
        return _metrics(rows, qt, st, imp is not None, "exact", confidence, time.perf_counter() - t0)
    drawn = order[:n]
    st = np.stack([done[i] for i in drawn.tolist()])
    if p is None:
        u, fpc, known = np.full(n, float(total)), max(0.0, 1.0 - n / total), None
    else:
        u, fpc, known = 1.0 / p[drawn], 1.0, float(sample.proxy()[0].sum())
    return _metrics(rows, qt, st, imp is not None, "pps" if p is not None else "srs", confidence,
                    time.perf_counter() - t0, u, fpc, known, n_distinct=len(done))


def exact(tensor, qtype, importance=None, *, name: Optional[str] = None, threads: int = 2,
          progress: ProgressCallback = no_progress, cancel: Optional[CancelToken] = None,
          chunk_weights: int = CHUNK_WEIGHTS, confidence: float = 0.95,
          use_for_quantization: bool = True) -> ErrorMetrics:
    """Error over every row, in chunks of about ``chunk_weights`` over ``threads`` threads.
    Progress counts weights; ``cancel`` is checked between chunks (raises Cancelled)."""
    t0 = time.perf_counter()
    rows, qt, kernel, imp, qimp = _prepare(tensor, qtype, importance, name, use_for_quantization)
    st = _all_rows(kernel, rows, qimp, imp, threads, chunk_weights, progress, cancel)
    return _metrics(rows, qt, st, imp is not None, "exact", confidence, time.perf_counter() - t0)


def candidate_types(row_len: int) -> list:
    """Writable weight types whose blocks fit ``row_len`` and whose kernels load, most bits first."""
    out = []
    for t in writable_types():
        if t in INTERMEDIATE_ONLY or not type_info(t).fits(row_len):
            continue
        try:
            get_kernel(t)
        except (UnsupportedError, ImportError, AttributeError):
            continue
        out.append(t)
    return sorted(out, key=lambda t: (-type_info(t).bpw, t.name))


def candidates(tensor, importance=None, *, name: Optional[str] = None, types: Optional[Sequence] = None,
               sample_rows: Optional[int] = None, time_budget: float = DEFAULT_BUDGET, seed: int = 0,
               threads: int = 2, confidence: float = 0.95, design: str = "auto") -> list[ErrorMetrics]:
    """Sampled previews of every candidate type (``types`` or :func:`candidate_types`), side by
    side; all share one random row order, so the rows read once serve every type."""
    rows = _Rows(tensor, name)
    ts = [parse_type(t) for t in types] if types is not None else candidate_types(rows.row_len)
    if importance is None:                 # these types cannot be made without importance weights
        ts = [t for t in ts if t not in REQUIRES_IMATRIX]
    sample = _Sample(rows, seed, design, threads)
    return [estimate(tensor, t, importance, name=name, sample_rows=sample_rows, time_budget=time_budget,
                     seed=seed, threads=threads, confidence=confidence, _sample=sample) for t in ts]


# -- whole plans ------------------------------------------------------------------------------
class PreviewCache:
    """Results keyed by (source, tensor, type, imatrix id); an exact result replaces a sampled one."""

    def __init__(self) -> None:
        self._d: dict[tuple, ErrorMetrics] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(source, name: str, qtype, imatrix_id: Optional[str]) -> tuple:
        return _source_id(source) + (name, parse_type(qtype).name, imatrix_id)

    def get(self, key: tuple, exact: bool = False) -> Optional[ErrorMetrics]:
        with self._lock:
            m = self._d.get(key)
        return m if m is not None and (m.exact or not exact) else None

    def put(self, key: tuple, m: ErrorMetrics) -> None:
        with self._lock:
            old = self._d.get(key)
            if old is None or m.exact or not old.exact:
                self._d[key] = m

    def clear(self) -> None:
        with self._lock:
            self._d.clear()

    def __len__(self) -> int:
        return len(self._d)


@dataclass
class TensorPreview:
    name: str
    type: str
    shape: tuple[int, ...]
    nbytes: int
    bpw: float
    quantized: bool                    # False: copied from the source unchanged (no error)
    imatrix: bool = False              # importance weights used
    metrics: Optional[ErrorMetrics] = None

    @property
    def n_elements(self) -> int:
        return int(math.prod(self.shape)) if self.shape else 1


@dataclass
class PlanPreview:
    tensors: list[TensorPreview] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        """Tensor data bytes (without header or padding; core.plan predicts the file size)."""
        return sum(t.nbytes for t in self.tensors)

    @property
    def n_elements(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def bpw(self) -> float:
        return 8.0 * self.nbytes / self.n_elements if self.n_elements else 0.0

    @property
    def rel_rmse(self) -> float:
        """Relative RMSE over all quantized tensors together (sum err^2 / sum x^2, estimated)."""
        ms = [t.metrics for t in self.tensors if t.metrics is not None]
        return math.sqrt(_ratio(sum(m.sum_sq_err for m in ms), sum(m.sum_sq for m in ms)))

    @property
    def exact(self) -> bool:
        return all(t.metrics is None or t.metrics.exact for t in self.tensors)


def preview_plan(source, plan, imatrix=None, *, exact_all: bool = False, cache: Optional[PreviewCache] = None,
                 threads: int = 2, time_budget: float = 0.1, sample_rows: Optional[int] = None, seed: int = 0,
                 progress: ProgressCallback = no_progress, cancel: Optional[CancelToken] = None) -> PlanPreview:
    """Size and error of every tensor of ``plan`` (a core.plan.Plan or a mapping name -> type).

    ``imatrix``: an ImatrixData (entries matched by tensor name). Sampled estimates unless
    ``exact_all``; results come from / go to ``cache``. Progress counts tensors."""
    from .imatrix import ImatrixData

    if isinstance(plan, Mapping):
        items = [(n, parse_type(t).name, True) for n, t in plan.items()]
    else:
        items = [(e.name, e.type, bool(e.quantize)) for e in plan.entries]
    imid = imatrix.id if isinstance(imatrix, ImatrixData) else None
    tracker = ProgressTracker(progress, len(items), "preview")
    cancel = cancel or CancelToken()
    out = PlanPreview()
    for name, tname, quant in items:
        cancel.check()
        info = source.tensor(name)
        ti = type_info(tname)
        shape = tuple(info.shape)
        n_el = int(math.prod(shape)) if shape else 1
        tp = TensorPreview(name, ti.name, shape, n_el // ti.block_size * ti.type_size, ti.bpw, quant)
        if quant:
            imp = imatrix.for_tensor(name, shape) if imatrix is not None else None
            tp.imatrix = imp is not None
            key = PreviewCache.key(source, name, ti.qtype, imid if imp is not None else None)
            m = cache.get(key, exact=exact_all) if cache is not None else None
            if m is None:
                if exact_all:
                    m = exact(source, ti.qtype, imp, name=name, threads=threads, cancel=cancel)
                else:
                    m = estimate(source, ti.qtype, imp, name=name, sample_rows=sample_rows,
                                 time_budget=time_budget, seed=seed, threads=threads)
                if cache is not None:
                    cache.put(key, m)
            tp.metrics = m
        out.tensors.append(tp)
        tracker.advance(1, item=name)
    return out
