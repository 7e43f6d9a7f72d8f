"""Where a type's representable values lie for one tensor, and the exact error distribution.

**Levels** (:func:`block_levels`, :func:`tensor_levels`). What a quantized weight can be depends on
its block's scales, so one set of levels per tensor does not exist. What is computed is the exact
set of values that one *typical block* can represent: of a strided sample of rows, the block whose
largest ``|x|`` is the median (the block maximum sets the scale in every GGUF type), quantized in
its row by the type's own kernel (with the row's importance weights). Its *code bits* stay free,
every other bit (fp16/E8M0/E4M3 scales, sub-block scales and minimums) is kept, and every code
combination is dequantized by the type's own dequantizer: the level set is every value a weight of
that block can take. No table is re-typed; the grids of the i-quants come in through their kernels.

Which bits are code bits is found from the kernels too (:func:`code_bits`): flip each bit of a few
quantized random blocks, dequantize, and count the weights that change. A code bit changes at most
``CODE_SPAN`` = 8 weights (one weight's index, sign or high bit; a lattice index of 4 or 8 weights;
the 5 trits of a TQ1_0 byte); a scale or minimum bit changes a whole (sub-)block of 16 weights or
more. A weight's value then depends on its own code bits only; weights whose code bits are disjoint
are enumerated in the same crafted blocks. A weight with more than 12 code bits (the parity lane of
IQ2_XXS/IQ2_XS/IQ3_XXS, whose sign is the parity of 7 others) gets 4096 random combinations
(``complete`` False); the other lanes of its group give those values anyway. Float types have no
grid: they get no levels.

**Error distribution** (:func:`error_histogram`): ``x - q(x)`` of every weight, streamed in row
chunks (core.chunks) with progress and cancel, counted into fixed bins set from a pilot sample (the
weights beyond them counted in the end bins and reported), with the exact RMSE (float64 sums).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np
from numba import njit

from .chunks import CHUNK_WEIGHTS, row_chunks, run_chunks
from .errors import UnsupportedError
from .kernels import get_kernel
from .preview import _prepare, _Rows, round_trip
from .progress import CancelToken, ProgressCallback, ProgressTracker, no_progress
from .qtypes import REQUIRES_IMATRIX, parse_type, type_info

CODE_SPAN = 8             # a bit that changes at most this many weights of a block is a code bit
MAX_CODE_BITS = 12        # weights with more code bits than this get MAX_COMBOS random combinations
MAX_COMBOS = 1 << MAX_CODE_BITS
N_PROBE = 8               # random blocks that classify the bits of a type
SAMPLE_ROWS = 256         # rows searched for the typical block
ERROR_BINS = 121          # odd: one bin centred on zero
PILOT_ROWS = 64           # rows whose errors set the bins of the error histogram
PILOT_MARGIN = 1.25


# -- levels ----------------------------------------------------------------------------------------
def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ~((a == b) | (np.isnan(a) & np.isnan(b)))


@lru_cache(maxsize=None)
def code_bits(qtype) -> np.ndarray:
    """``(type_size * 8, block_size)`` bool: bit ``k`` of a block (byte ``k // 8``, bit ``k % 8``) is a
    code bit of weight ``j``. Found by flipping every bit of ``N_PROBE`` quantized Gaussian blocks."""
    qt = parse_type(qtype)
    info = type_info(qt)
    if info.is_float:
        raise UnsupportedError(f"{qt.name} is a float type: it has no level grid")
    k, bs, nbits = get_kernel(qt), info.block_size, info.type_size * 8
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N_PROBE, bs)).astype(np.float32)
    q = k.quantize(x, np.ones(bs, np.float32) if qt in REQUIRES_IMATRIX else None)
    bit = np.arange(nbits)
    effect = np.zeros((nbits, bs), dtype=bool)
    span = np.zeros(nbits, dtype=np.int64)
    for blk in q:
        base = k.dequantize(blk[None], bs)
        flips = np.repeat(blk[None], nbits, axis=0)
        flips[bit, bit >> 3] ^= (1 << (bit & 7)).astype(np.uint8)
        ch = _changed(k.dequantize(flips, bs), base)
        effect |= ch
        span = np.maximum(span, ch.sum(axis=1))
    effect[span > CODE_SPAN] = False
    effect.setflags(write=False)
    return effect


def block_levels(qtype, block: np.ndarray) -> tuple[np.ndarray, bool]:
    """Every value a weight of the quantized ``block`` (its ``type_size`` bytes) can take with the
    block's scales kept, sorted and distinct; and whether every code combination was tried."""
    qt = parse_type(qtype)
    info = type_info(qt)
    k, bs = get_kernel(qt), info.block_size
    block = np.ascontiguousarray(block, dtype=np.uint8).reshape(info.type_size)
    effect = code_bits(qt)
    groups: dict[tuple, list[int]] = {}                     # code bits -> the weights they decide
    for j in range(bs):
        groups.setdefault(tuple(np.flatnonzero(effect[:, j]).tolist()), []).append(j)
    batches: list[list] = []                                # [mask of bits used, [(bits, weights)]]
    for bits, pos in groups.items():
        m = sum(1 << b for b in bits)
        for b in batches:
            if not b[0] & m:
                b[0] |= m
                b[1].append((bits, pos))
                break
        else:
            batches.append([m, [(bits, pos)]])
    rng = np.random.default_rng(0)
    complete = True
    values = [k.dequantize(block[None], bs).ravel()]
    for _, members in batches:
        n_rows = max(min(1 << len(bits), MAX_COMBOS) for bits, _ in members)
        crafted = np.repeat(block[None], n_rows, axis=0)
        for bits, _ in members:
            if len(bits) > MAX_CODE_BITS:
                combos = rng.integers(0, 1 << len(bits), n_rows)
                complete = False
            else:
                combos = np.arange(n_rows) % (1 << len(bits))
            for i, b in enumerate(bits):
                col = crafted[:, b >> 3]
                crafted[:, b >> 3] = (col & np.uint8(0xFF ^ (1 << (b & 7)))) | \
                    (((combos >> i) & 1) << (b & 7)).astype(np.uint8)
        y = k.dequantize(crafted, bs)
        values += [y[:, pos].ravel() for _, pos in members]
    v = np.concatenate(values)
    return np.unique(v[np.isfinite(v)]), complete


@dataclass
class Levels:
    """The level set of one typical block of a tensor in a type (see the module docstring)."""

    name: str
    type: str
    levels: np.ndarray            # sorted distinct float32 values (empty for float types)
    block_values: np.ndarray      # the typical block's own weights after the round trip
    row: int                      # where the typical block is: its row, and its index in the row
    block: int
    block_absmax: float           # its largest |x| (the median of the sampled blocks')
    blocks_sampled: int
    complete: bool                # every code combination tried
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.type} levels (typical block)"


def tensor_levels(tensor, qtype, importance=None, *, name: Optional[str] = None,
                  rows: int = SAMPLE_ROWS) -> Levels:
    """:class:`Levels` of ``tensor`` (an array, or a ModelSource with ``name``) in ``qtype``: the
    typical block among ``rows`` evenly spaced rows, quantized in its row with ``importance``."""
    r = _Rows(tensor, name)
    qt = parse_type(qtype)
    info = type_info(qt)
    if info.is_float:
        return Levels(r.name, qt.name, np.zeros(0, np.float32), np.zeros(0, np.float32), 0, 0, 0.0, 0, True,
                      f"{qt.name} is a float type: every float of that format can be stored, no grid")
    r, qt, kernel, _, qimp = _prepare(tensor, qt, importance, name, True)
    idx = np.arange(0, r.n_rows, max(1, r.n_rows // max(1, rows)))[:rows]
    x = r.take(idx)
    amax = np.abs(x.reshape(-1, info.block_size)).max(axis=1)
    amax = np.where(np.isfinite(amax), amax, np.inf)
    pick = int(np.argsort(amax, kind="stable")[amax.size // 2])
    per_row = r.row_len // info.block_size
    row, blk = int(idx[pick // per_row]), pick % per_row
    qrow = kernel.quantize(x[pick // per_row][None], None if qimp is None else qimp[row // r.rows_per_mat])
    block = qrow[0, blk * info.type_size:(blk + 1) * info.type_size]
    levels, complete = block_levels(qt, block)
    return Levels(r.name, qt.name, levels, kernel.dequantize(block[None], info.block_size).ravel(), row, blk,
                  float(amax[pick]), int(amax.size), complete)


# -- the error distribution ---------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _error_counts(x, y, lo, inv_width, counts, acc):
    """Adds the errors ``x - y`` into ``counts`` (bins of width ``1 / inv_width`` from ``lo``; those
    beyond counted in the end bins); ``acc``: sum of squares, max |err|, non-finite, below, above."""
    nb = counts.shape[0]
    for r in range(x.shape[0]):
        for j in range(x.shape[1]):
            e = np.float64(x[r, j]) - np.float64(y[r, j])
            acc[0] += e * e
            if not np.isfinite(e):
                acc[2] += 1.0
                continue
            ae = abs(e)
            if ae > acc[1]:
                acc[1] = ae
            f = (e - lo) * inv_width
            if f < 0.0:
                counts[0] += 1
                acc[3] += 1.0
            elif f >= nb:
                counts[nb - 1] += 1
                acc[4] += 1.0
            else:
                counts[int(f)] += 1


@dataclass
class ErrorHistogram:
    """Counts of ``x - q(x)`` over every weight of a tensor in a type."""

    name: str
    type: str
    shape: tuple[int, ...]
    edges: np.ndarray             # bins + 1 edges, symmetric about 0
    counts: np.ndarray            # int64 per bin; weights beyond the edges are counted in the end bins
    n: int                        # weights counted (finite errors): counts.sum()
    n_nonfinite: int
    below: int                    # counted in the first / last bin from beyond the edges
    above: int
    rmse: float                   # sqrt(sum (x - q(x))^2 / weights), exact
    max_abs_err: float
    seconds: float = 0.0


def _pilot_span(kernel, r: _Rows, qimp) -> float:
    idx = np.arange(0, r.n_rows, max(1, r.n_rows // PILOT_ROWS))[:PILOT_ROWS]
    mats = idx // r.rows_per_mat
    span = 0.0
    for m in np.unique(mats).tolist():
        x = r.take(idx[mats == m])
        e = np.abs(x - round_trip(kernel, x, None if qimp is None else qimp[m]))
        e = e[np.isfinite(e)]
        span = max(span, float(e.max()) if e.size else 0.0)
    return span * PILOT_MARGIN if span > 0 else 1e-30


def error_histogram(tensor, qtype, importance=None, *, name: Optional[str] = None, bins: int = ERROR_BINS,
                    span: Optional[float] = None, threads: int = 1, chunk_weights: int = CHUNK_WEIGHTS,
                    progress: ProgressCallback = no_progress,
                    cancel: Optional[CancelToken] = None) -> ErrorHistogram:
    """:class:`ErrorHistogram` of every row of ``tensor`` in ``qtype`` (importance weights used to
    quantize, as in core.preview), in chunks over ``threads``; bins over ``[-span, span]`` (by
    default 1.25 x the largest error of 64 evenly spaced rows). Progress counts weights."""
    t0 = time.perf_counter()
    r, qt, kernel, _, qimp = _prepare(tensor, qtype, importance, name, True)
    span = float(span) if span else _pilot_span(kernel, r, qimp)
    lo, inv_width = -span, bins / (2 * span)
    counts = np.zeros(bins, dtype=np.int64)
    acc = np.zeros(5, dtype=np.float64)
    tracker = ProgressTracker(progress, r.n_elements, "error histogram")

    def work(a: int, b: int):
        c, s = np.zeros(bins, dtype=np.int64), np.zeros(5, dtype=np.float64)
        x = r.read(a, b)
        _error_counts(x, round_trip(kernel, x, None if qimp is None else qimp[a // r.rows_per_mat]), lo,
                      inv_width, c, s)
        tracker.advance((b - a) * r.row_len, item=r.name, item_done=b, item_total=r.n_rows)
        return c, s

    def done(_: int, res) -> None:
        c, s = res
        counts[:] += c
        acc[0] += s[0]
        acc[1] = max(acc[1], s[1])
        acc[2:] += s[2:]

    run_chunks(work, row_chunks(r.n_rows, r.row_len, chunk_weights, r.rows_per_mat), threads=threads,
               cancel=cancel, done=done)
    n_el = r.n_elements
    return ErrorHistogram(r.name, qt.name, r.shape, np.linspace(-span, span, bins + 1), counts, int(counts.sum()),
                          int(acc[2]), int(acc[3]), int(acc[4]), math.sqrt(acc[0] / n_el) if n_el else 0.0,
                          float(acc[1]), time.perf_counter() - t0)
