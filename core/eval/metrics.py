"""Perplexity and KL divergence exactly as ``llama-perplexity`` (``--kl-divergence``) computes and reports them.

The protocol (tools/perplexity/perplexity.cpp ``perplexity()`` and ``kl_divergence()``):

- the text is cut into chunks of ``n_ctx`` tokens, BOS substituted for each chunk's first token when the
  vocabulary adds BOS (core.eval.chunking); each chunk is evaluated from an empty KV cache;
- only the second half is scored: logits at positions ``first = n_ctx/2 .. n_ctx-2`` predict tokens
  ``first+1 .. n_ctx-1`` (``n_ctx - 1 - first`` predictions per chunk);
- the base run stores, per scored position, its log-softmax quantized to uint16 (``log_softmax`` with
  ``log_prob``): ``max``/``min`` logit with ``min`` clamped to ``max - 16``, ``scale = (max-min)/65535``,
  ``q[i] = nearest_int((l_i - min)/scale)`` (0 below ``min``), stored with ``scale`` and
  ``min_log_prob = min - max - log Σexp(l - max)``: the log-probability of token i is ``scale*q[i] + min_log_prob``;
- the candidate run, per scored position (``log_softmax`` with ``base_log_prob``), in float32 with the
  exponential sum in double: ``nll = max + log Σexp(l - max) - l[tok]``, ``nll_base = -(scale*q[tok] + min_lp)``,
  ``KLD = Σ_i p_base,i (log p_base,i - log p_i)`` over the tokens with ``log p_base,i > -16``,
  ``Δp = exp(-nll) - exp(-nll_base)``, "same top" when the argmax of the candidate's logits (first maximum)
  equals the argmax of the stored base log-probs;
- sums in double: ``mean ± sqrt((Σx²/n - mean²)/(n-1))`` (0 when n <= 10), ``PPL = exp(mean nll) ± PPL*err``,
  ``ln(PPL(Q)/PPL(base))`` with the covariance term, ``RMS Δp = sqrt(mean Δp²) ± 0.5/RMS * err(Δp²)``,
  ``same top p ± sqrt(p(1-p)/(n-1))``; KLD and Δp percentiles by linear interpolation on the sorted values
  (llama.cpp's ``percentile`` lambda, in float32), median as the middle value (mean of the two middle ones).

So PPL(base) here is the base's perplexity *as read back from the uint16 table*, as llama-perplexity prints it in
``--kl-divergence`` mode. :class:`KLDReducer` with ``exact_base=True`` skips the uint16 step (float64-exact base).

Streaming: feed chunk by chunk; memory is O(vocab x chunk) plus 8 bytes per scored token (for percentiles).
Several candidates share one base: :func:`prepare_base` once per chunk, one :class:`KLDReducer` per candidate.
The ``.kld`` base-logits file llama-perplexity writes (``--kl-divergence-base``) is read and written here too.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numba as nb
import numpy as np

from ..errors import OutputError, QuantStudioError, SourceError

KLD_PERCENTILES = (99.9, 99.0, 95.0, 90.0, 50.0, 10.0, 5.0, 1.0, 0.1)
DELTA_P_PERCENTILES = (99.9, 99.0, 95.0, 90.0, 75.0, 50.0, 25.0, 10.0, 5.0, 1.0, 0.1)
_MAGIC = b"_logits_"


# ------------------------------------------------------------------------------------------- kernels
@nb.njit(cache=True, nogil=True)
def _quantize_logprobs(logits, scale, min_lp, q):
    """perplexity.cpp ``log_softmax(n_vocab, logits, uint16_t * log_prob, tok)`` for every row."""
    n, v = logits.shape
    c16 = np.float32(16.0)
    c65535 = np.float32(65535.0)
    one = np.float32(1.0)
    for r in range(n):
        row = logits[r]
        mx = row[0]
        mn = row[0]
        for i in range(1, v):
            x = row[i]
            if x > mx:
                mx = x
            if x < mn:
                mn = x
        if mx - c16 > mn:
            mn = mx - c16
        s = 0.0
        for i in range(v):
            s += np.exp(row[i] - mx)
        lse = np.float32(math.log(s))
        min_lp[r] = mn - mx - lse
        sc = (mx - mn) / c65535
        scale[r] = sc
        if sc != 0:
            inv = one / sc
            for i in range(v):
                q[r, i] = np.uint16(np.rint(inv * (row[i] - mn))) if row[i] > mn else np.uint16(0)
        else:
            for i in range(v):
                q[r, i] = 0


@nb.njit(cache=True, nogil=True)
def _kld_rows(logits, scale, min_lp, q, toks, nll, nll_base, kld, p_diff, same):
    """perplexity.cpp ``log_softmax(n_vocab, logits, base_log_prob, tok, kld)`` for every row."""
    n, v = logits.shape
    c16 = np.float32(-16.0)
    for r in range(n):
        row = logits[r]
        mx = row[0]
        imax = 0
        for i in range(1, v):
            if row[i] > mx:
                mx = row[i]
                imax = i
        s = 0.0
        for i in range(v):
            s += np.exp(row[i] - mx)
        lse = np.float32(math.log(s))
        t = toks[r]
        a = mx + lse - row[t]
        nll[r] = a
        sc = scale[r]
        mlp = min_lp[r]
        b = -(sc * np.float32(q[r, t]) + mlp)
        nll_base[r] = b
        mx2 = mx + lse
        acc = 0.0
        imax_b = -1
        pmax = np.float32(0.0)
        for i in range(v):
            pl = sc * np.float32(q[r, i]) + mlp
            if i == 0 or pl > pmax:
                pmax = pl
                imax_b = i
            if pl > c16:
                pb = np.exp(pl)
                acc += pb * (pl - row[i] + mx2)
        kld[r] = acc
        same[r] = imax == imax_b
        p_diff[r] = np.exp(-a) - np.exp(-b)


@nb.njit(cache=True, nogil=True)
def _nll_rows(logits, toks, nll):
    """perplexity.cpp ``log_softmax(n_vocab, logits, tok)``: ``-log p(tok)`` in float32, sum in double."""
    n, v = logits.shape
    for r in range(n):
        row = logits[r]
        mx = row[0]
        for i in range(1, v):
            if row[i] > mx:
                mx = row[i]
        s = 0.0
        for i in range(v):
            s += np.exp(row[i] - mx)
        nll[r] = -((row[toks[r]] - mx) - math.log(s))


# ------------------------------------------------------------------------------------------- the base
@dataclass(frozen=True)
class BaseChunk:
    """A base model's scored rows of one chunk as llama-perplexity stores them: per row ``scale``,
    ``min_log_prob`` (float32) and the uint16 table ``q`` (``(n_rows, n_vocab)``)."""

    scale: np.ndarray
    min_log_prob: np.ndarray
    q: np.ndarray

    @property
    def log_probs(self) -> np.ndarray:
        """Float32 log-probabilities the table stands for (``scale*q + min_log_prob``)."""
        return self.scale[:, None] * self.q.astype(np.float32) + self.min_log_prob[:, None]


def _scored(logits: np.ndarray, n_ctx: int) -> np.ndarray:
    """The rows that are scored: ``first .. n_ctx-2`` of a full chunk's logits (``(n_ctx, V)``), or all but
    the last of the ``n_ctx - first`` rows llama.cpp requests (``(n_ctx - first, V)``)."""
    first = n_ctx // 2
    a = np.asarray(logits)
    if a.ndim != 2:
        raise QuantStudioError(f"logits must be 2-D (tokens, vocabulary), got shape {a.shape}")
    if a.shape[0] == n_ctx:
        a = a[first:n_ctx - 1]
    elif a.shape[0] == n_ctx - first:
        a = a[:n_ctx - 1 - first]
    elif a.shape[0] != n_ctx - 1 - first:
        raise QuantStudioError(f"logits have {a.shape[0]} rows; a chunk of {n_ctx} tokens needs {n_ctx} "
                               f"(or the {n_ctx - first} scored ones)")
    return np.ascontiguousarray(a, dtype=np.float32)


def prepare_base(base_logits: np.ndarray, n_ctx: int) -> BaseChunk:
    """Quantize a base chunk's logits as ``llama-perplexity --kl-divergence-base`` stores them."""
    rows = _scored(base_logits, n_ctx)
    n, v = rows.shape
    scale = np.empty(n, np.float32)
    mlp = np.empty(n, np.float32)
    q = np.empty((n, v), np.uint16)
    _quantize_logprobs(rows, scale, mlp, q)
    return BaseChunk(scale, mlp, q)


def _exact_base(base_logits: np.ndarray, n_ctx: int) -> np.ndarray:
    rows = _scored(base_logits, n_ctx).astype(np.float64)
    m = rows.max(axis=1, keepdims=True)
    return (rows - m - np.log(np.exp(rows - m).sum(axis=1, keepdims=True))).astype(np.float32)


# ------------------------------------------------------------------------------------------- statistics
def _mean_unc(s: float, s2: float, n: int) -> tuple[float, float]:
    if n < 1:
        return 0.0, 0.0
    f = s / n
    df = s2 / n - f * f
    return f, (math.sqrt(df / (n - 1)) if df > 0 and n > 10 else 0.0)


def _cov(sa: float, sb: float, sab: float, n: int) -> float:
    if n < 10:
        return 0.0
    return (sab / n - (sa / n) * (sb / n)) / (n - 1)


def _percentile(v: np.ndarray, fraction: float) -> float:
    """llama.cpp's ``percentile`` lambda on sorted float32 values (interpolation weights in float32)."""
    if fraction <= 0:
        return float(v[0])
    if fraction >= 1:
        return float(v[-1])
    p = np.float32(fraction) * np.float32(v.size - 1)
    ip = int(p)
    p = np.float32(p - np.float32(ip))
    return float((np.float32(1) - p) * v[ip] + p * v[min(ip + 1, v.size - 1)])


def _median(v: np.ndarray) -> float:
    n = v.size
    return float(np.float32(0.5) * (v[n // 2] + v[n // 2 - 1])) if n % 2 == 0 else float(v[n // 2])


@dataclass
class KLDResult:
    """Everything ``llama-perplexity --kl-divergence`` prints, as numbers (fractions, not percent)."""

    tokens: int
    chunks: int
    ppl: float
    ppl_err: float
    ppl_base: float
    ppl_base_err: float
    ppl_cor: float
    ln_ppl_ratio: float
    ln_ppl_ratio_err: float
    ppl_ratio: float
    ppl_ratio_err: float
    ppl_diff: float
    ppl_diff_err: float
    kld_mean: float
    kld_err: float
    kld_max: float
    kld_min: float
    kld_median: float
    kld_percentiles: dict[float, float]
    delta_p_mean: float
    delta_p_err: float
    delta_p_max: float
    delta_p_min: float
    delta_p_median: float
    delta_p_percentiles: dict[float, float]
    delta_p_rms: float
    delta_p_rms_err: float
    delta_p_max_abs: float
    same_top_p: float
    same_top_p_err: float

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)

    def __getitem__(self, key: str):
        return getattr(self, key)

    def keys(self):
        return self.to_dict().keys()

    def format(self) -> str:
        """The statistics block in llama-perplexity's layout."""
        L = [f"Mean PPL(Q)                   : {self.ppl:10.6f} ± {self.ppl_err:10.6f}",
             f"Mean PPL(base)                : {self.ppl_base:10.6f} ± {self.ppl_base_err:10.6f}",
             f"Cor(ln(PPL(Q)), ln(PPL(base))): {100 * self.ppl_cor:6.2f}%",
             f"Mean ln(PPL(Q)/PPL(base))     : {self.ln_ppl_ratio:10.6f} ± {self.ln_ppl_ratio_err:10.6f}",
             f"Mean PPL(Q)/PPL(base)         : {self.ppl_ratio:10.6f} ± {self.ppl_ratio_err:10.6f}",
             f"Mean PPL(Q)-PPL(base)         : {self.ppl_diff:10.6f} ± {self.ppl_diff_err:10.6f}",
             f"Mean    KLD: {self.kld_mean:10.6f} ± {self.kld_err:10.6f}",
             f"Maximum KLD: {self.kld_max:10.6f}"]
        L += [f"{p:4.1f}%   KLD: {v:10.6f}" if p != 50.0 else f"Median  KLD: {v:10.6f}"
              for p, v in self.kld_percentiles.items()]
        L += [f"Minimum KLD: {self.kld_min:10.6f}",
              f"Mean    Δp: {100 * self.delta_p_mean:6.3f} ± {100 * self.delta_p_err:5.3f} %",
              f"RMS Δp    : {100 * self.delta_p_rms:6.3f} ± {100 * self.delta_p_rms_err:5.3f} %",
              f"Same top p: {100 * self.same_top_p:6.3f} ± {100 * self.same_top_p_err:5.3f} %"]
        return "\n".join(L)


@dataclass
class KLDReducer:
    """Streaming PPL/KLD of one candidate against a base, chunk by chunk (see the module docstring).

    ``n_ctx``: the chunk length; ``exact_base``: use the base's float log-softmax instead of llama.cpp's
    uint16 table (then numbers differ from llama-perplexity's by the table's rounding, ~1e-4 in log-prob)."""

    n_ctx: int
    exact_base: bool = False
    chunks: int = 0
    _s: dict = field(default_factory=lambda: dict.fromkeys(
        ("nll", "nll2", "nllb", "nllb2", "nllnllb", "kld", "kld2", "pd", "pd2", "pd4"), 0.0))
    _count: int = 0
    _same: int = 0
    _max_pd: float = 0.0
    _kld_vals: list = field(default_factory=list)
    _pd_vals: list = field(default_factory=list)

    def add(self, base: "BaseChunk | np.ndarray", candidate_logits: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """One chunk: ``base`` from :func:`prepare_base` (or raw base logits), the candidate's logits
        (``(n_ctx, V)`` float32, or only the scored rows), the chunk's ``n_ctx`` tokens. Returns the chunk's
        per-token KLD (float32, one per scored position)."""
        first = self.n_ctx // 2
        toks = np.asarray(tokens).reshape(-1)
        if toks.size != self.n_ctx:
            raise QuantStudioError(f"a chunk has {self.n_ctx} tokens, got {toks.size}")
        targets = np.ascontiguousarray(toks[first + 1:], dtype=np.int64)
        cand = _scored(candidate_logits, self.n_ctx)
        if self.exact_base and not isinstance(base, BaseChunk):
            lp = _exact_base(base, self.n_ctx)
            n = cand.shape[0]
            nll, nllb, kld, pd, same = _kld_exact(cand, lp, targets)
        else:
            b = base if isinstance(base, BaseChunk) else prepare_base(base, self.n_ctx)
            if b.q.shape != cand.shape:
                raise QuantStudioError(f"base rows {b.q.shape} and candidate rows {cand.shape} differ")
            n = cand.shape[0]
            nll, nllb, kld, pd = (np.empty(n, np.float32), np.empty(n, np.float32), np.empty(n, np.float64),
                                  np.empty(n, np.float32))
            same = np.empty(n, np.bool_)
            _kld_rows(cand, b.scale, b.min_log_prob, b.q, targets, nll, nllb, kld, pd, same)
        s = self._s
        nd, nbd, pdd = nll.astype(np.float64), nllb.astype(np.float64), pd.astype(np.float64)
        pd2 = (pd * pd).astype(np.float64)          # float product, then double (as perplexity.cpp)
        s["nll"] += nd.sum()
        s["nll2"] += (nll * nll).astype(np.float64).sum()
        s["nllb"] += nbd.sum()
        s["nllb2"] += (nllb * nllb).astype(np.float64).sum()
        s["nllnllb"] += (nll * nllb).astype(np.float64).sum()
        s["kld"] += kld.sum()
        s["kld2"] += (kld * kld).sum()
        s["pd"] += pdd.sum()
        s["pd2"] += pd2.sum()
        s["pd4"] += (pd2 * pd2).sum()
        self._max_pd = max(self._max_pd, float(np.abs(pd).max()) if n else 0.0)
        self._count += n
        self._same += int(same.sum())
        self._kld_vals.append(kld.astype(np.float32))
        self._pd_vals.append(pd.astype(np.float32))
        self.chunks += 1
        return self._kld_vals[-1]

    @property
    def count(self) -> int:
        return self._count

    def result(self) -> KLDResult:
        n = self._count
        if n < 2:
            raise QuantStudioError("too few scored tokens for statistics (feed at least one chunk)")
        s = self._s
        lp, lp_e = _mean_unc(s["nll"], s["nll2"], n)
        lb, lb_e = _mean_unc(s["nllb"], s["nllb2"], n)
        ppl, ppl_b = math.exp(lp), math.exp(lb)
        cov = _cov(s["nll"], s["nllb"], s["nllnllb"], n)
        cor = cov / (lp_e * lb_e) if lp_e * lb_e > 0 else 0.0
        r, r_e = lp - lb, math.sqrt(max(0.0, lp_e ** 2 + lb_e ** 2 - 2 * cov))
        ppl_cov = ppl * ppl_b * cov
        d_e = math.sqrt(max(0.0, (ppl * lp_e) ** 2 + (ppl_b * lb_e) ** 2 - 2 * ppl_cov))
        k, k_e = _mean_unc(s["kld"], s["kld2"], n)
        kv = np.sort(np.concatenate(self._kld_vals))
        pv = np.sort(np.concatenate(self._pd_vals))
        pm, pm_e = _mean_unc(s["pd"], s["pd2"], n)
        mse, mse_e = _mean_unc(s["pd2"], s["pd4"], n)
        rms = math.sqrt(mse)
        top = self._same / n
        return KLDResult(
            tokens=n, chunks=self.chunks, ppl=ppl, ppl_err=ppl * lp_e, ppl_base=ppl_b, ppl_base_err=ppl_b * lb_e,
            ppl_cor=cor, ln_ppl_ratio=r, ln_ppl_ratio_err=r_e, ppl_ratio=math.exp(r),
            ppl_ratio_err=math.exp(r) * r_e, ppl_diff=ppl - ppl_b, ppl_diff_err=d_e,
            kld_mean=k, kld_err=k_e, kld_max=float(kv[-1]), kld_min=float(kv[0]), kld_median=_median(kv),
            kld_percentiles={p: (_median(kv) if p == 50.0 else _percentile(kv, p / 100)) for p in KLD_PERCENTILES},
            delta_p_mean=pm, delta_p_err=pm_e, delta_p_max=float(pv[-1]), delta_p_min=float(pv[0]),
            delta_p_median=_median(pv),
            delta_p_percentiles={p: (_median(pv) if p == 50.0 else _percentile(pv, p / 100))
                                 for p in DELTA_P_PERCENTILES},
            delta_p_rms=rms, delta_p_rms_err=(0.5 / rms * mse_e if rms > 0 else 0.0), delta_p_max_abs=self._max_pd,
            same_top_p=top, same_top_p_err=math.sqrt(top * (1 - top) / (n - 1)))


def _kld_exact(cand: np.ndarray, base_lp: np.ndarray, targets: np.ndarray):
    """The same quantities against an exact float base log-softmax (no uint16 table, no -16 cut)."""
    c = cand.astype(np.float64)
    m = c.max(axis=1, keepdims=True)
    lq = c - m - np.log(np.exp(c - m).sum(axis=1, keepdims=True))
    lb = base_lp.astype(np.float64)
    idx = np.arange(c.shape[0])
    nll = (-lq[idx, targets]).astype(np.float32)
    nllb = (-lb[idx, targets]).astype(np.float32)
    kld = (np.exp(lb) * (lb - lq)).sum(axis=1)
    pd = (np.exp(-nll.astype(np.float64)) - np.exp(-nllb.astype(np.float64))).astype(np.float32)
    same = cand.argmax(axis=1) == base_lp.argmax(axis=1)
    return nll, nllb, kld, pd, same


@dataclass
class PPLReducer:
    """Perplexity of one model as ``llama-perplexity`` (no KLD) computes it: ``PPL = exp(mean nll) ±
    PPL * sqrt((mean nll² - mean²)/(n-1))``."""

    n_ctx: int
    nll: float = 0.0
    nll2: float = 0.0
    count: int = 0

    def add(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        first = self.n_ctx // 2
        toks = np.asarray(tokens).reshape(-1)
        rows = _scored(logits, self.n_ctx)
        out = np.empty(rows.shape[0], np.float64)
        _nll_rows(rows, np.ascontiguousarray(toks[first + 1:], dtype=np.int64), out)
        self.nll += out.sum()
        self.nll2 += (out * out).sum()
        self.count += out.size

    def result(self) -> tuple[float, float]:
        m = self.nll / self.count
        var = self.nll2 / self.count - m * m
        ppl = math.exp(m)
        return ppl, (ppl * math.sqrt(var / (self.count - 1)) if var > 0 else 0.0)


# ------------------------------------------------------------------------------------------- .kld files
@dataclass
class KLDBase:
    """llama-perplexity's ``--kl-divergence-base`` file: header, the original tokens (no BOS substitution)
    and per chunk the uint16 tables of its scored rows."""

    n_ctx: int
    n_vocab: int
    tokens: np.ndarray                  # int32 (n_chunk, n_ctx)
    path: str = ""

    @property
    def n_chunk(self) -> int:
        return int(self.tokens.shape[0])

    def chunks(self) -> Iterator[BaseChunk]:
        nv = 2 * ((self.n_vocab + 1) // 2) + 4
        rows = self.n_ctx - 1 - self.n_ctx // 2
        start = 20 + 4 * self.tokens.size
        mm = np.memmap(self.path, dtype=np.uint16, mode="r", offset=start, shape=(self.n_chunk, rows, nv))
        for c in range(self.n_chunk):
            blk = np.array(mm[c])
            head = blk[:, :4].copy().view(np.float32)           # two floats: scale, min_log_prob
            yield BaseChunk(head[:, 0].copy(), head[:, 1].copy(), np.ascontiguousarray(blk[:, 4:4 + self.n_vocab]))


def read_kld_base(path: "str | os.PathLike") -> KLDBase:
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(20)
            if len(head) < 20 or head[:8] != _MAGIC:
                raise SourceError("does not look like a file containing log-probabilities", path)
            n_ctx, n_vocab, n_chunk = np.frombuffer(head[8:], dtype="<u4", count=1)[0], *np.frombuffer(
                head[12:], dtype="<i4", count=2)
            toks = np.frombuffer(f.read(4 * int(n_ctx) * int(n_chunk)), dtype="<i4")
    except OSError as e:
        raise SourceError(f"cannot read: {e.strerror or e}", path) from None
    if toks.size != int(n_ctx) * int(n_chunk):
        raise SourceError("truncated log-probabilities file", path)
    rows = int(n_ctx) - 1 - int(n_ctx) // 2
    need = 20 + 4 * toks.size + 2 * int(n_chunk) * rows * (2 * ((int(n_vocab) + 1) // 2) + 4)
    if os.path.getsize(path) < need:
        raise SourceError("truncated log-probabilities file", path)
    return KLDBase(int(n_ctx), int(n_vocab), toks.reshape(int(n_chunk), int(n_ctx)).astype(np.int32), path)


def write_kld_base(path: "str | os.PathLike", tokens: np.ndarray, bases: Iterable[BaseChunk], n_vocab: int) -> str:
    """Write a ``.kld`` base file llama-perplexity reads (``tokens``: ``(n_chunk, n_ctx)`` as in the text, i.e.
    without BOS substitution); ``NAME.partial`` then renamed."""
    path = os.fspath(path)
    tokens = np.asarray(tokens, dtype="<i4")
    n_chunk, n_ctx = tokens.shape
    nv = 2 * ((n_vocab + 1) // 2) + 4
    part = path + ".partial"
    try:
        with open(part, "wb") as f:
            f.write(_MAGIC + np.uint32(n_ctx).tobytes() + np.int32(n_vocab).tobytes() + np.int32(n_chunk).tobytes())
            f.write(tokens.tobytes())
            for b in bases:
                blk = np.zeros((b.q.shape[0], nv), np.uint16)
                blk[:, :4] = np.stack([b.scale, b.min_log_prob], axis=1).astype("<f4").view(np.uint16)
                blk[:, 4:4 + n_vocab] = b.q
                f.write(blk.tobytes())
        os.replace(part, path)
    except OSError as e:
        raise OutputError(f"cannot write: {e.strerror or e}", path) from None
    finally:
        if os.path.exists(part):
            os.remove(part)
    return path
