"""Lattice tables of the IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S and IQ1_M encoders, built once per process.

llama.cpp's ``iq2xs_init_impl`` (ggml-quants.c) builds, per grid, three tables that its
quantizers search (``iq2_data[gindex]``):

- ``grid``: the grid points, 8 coordinates each, stored as ``2*l + 1`` (1, 3, 5) for the
  2-bit codes ``l`` of ``kgrid_2bit_256`` / ``kgrid_2bit_512`` / ``kgrid_2bit_1024`` /
  ``kgrid_1bit_2048`` (the codes themselves are data: :mod:`._iqgrid_data`, hex).
- ``map`` (``kmap_q2xs``, 43692 ints): the grid index of every 16-bit code ``u`` (coordinate
  ``k`` in bits ``2k``) that is a grid point; for the others ``-(offset + 1)``, where
  ``neighbours[offset]`` is a count ``n`` followed by ``n`` grid indices.
- ``neighbours`` (``kneighbors_q2xs``): for each code off the grid, the grid points at the
  ``nwant`` smallest distinct squared distances from its point (``2*l + 1`` per coordinate),
  ordered by (distance, index), as the C code's ``qsort`` with ``iq2_compare_func`` leaves them;
  ``nwant`` is 2 for IQ2_XXS / IQ2_XS, 1 for IQ2_S, 3 for IQ1_S / IQ1_M.

:func:`iq2_tables` builds the same three arrays (same layout, same offsets) with a Numba
counting pass instead of the sort: one ``lru_cache`` entry per grid, built on first use
(0.4-1.6 s each once compiled; the first compile takes longer). :func:`encoder_tables` lays
them out for the kernels' searches (one contiguous record per off-grid code, 4-15 MB per grid),
which :func:`record_best` scans (the Numba search shared by the IQ2 and IQ1 kernels).
The decoder grids of ggml-common.h (``iq2xxs_grid`` ... ``iq1s_grid``) are the same codes
with coordinate values mapped through (0x08, 0x19, 0x2b) for IQ2 and (-1, 0, 1) for IQ1:
:func:`decode_grid`. ``ksigns_iq2xs[i]`` is ``i`` with bit 7 set to the parity of ``i``.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import njit

from . import _iqgrid_data as _data

KMAP_SIZE = 43692
# grid name -> (codes, nwant of iq2xs_init_impl)
_GRIDS = {
    "iq2xxs": ("KGRID_2BIT_256", 2),
    "iq2xs": ("KGRID_2BIT_512", 2),
    "iq2s": ("KGRID_2BIT_1024", 1),
    "iq1s": ("KGRID_1BIT_2048", 3),
}


@lru_cache(maxsize=None)
def kgrid(name: str) -> np.ndarray:
    """The uint16 grid codes of ``name`` (``iq2xxs``, ``iq2xs``, ``iq2s`` or ``iq1s``)."""
    codes = _GRIDS[name][0]
    a = np.frombuffer(bytes.fromhex("".join(getattr(_data, codes))), dtype="<u2").astype(np.uint16)
    a.setflags(write=False)
    return a


def code_coords(codes: np.ndarray) -> np.ndarray:
    """(n, 8) int8 2-bit coordinates ``l`` of uint16 codes (coordinate k in bits 2k)."""
    c = np.asarray(codes, dtype=np.int64).reshape(-1, 1)
    return ((c >> (2 * np.arange(8))) & 3).astype(np.int8)


@lru_cache(maxsize=None)
def decode_grid(name: str) -> np.ndarray:
    """ggml-common.h's decoder grid of ``name`` as float32 (n, 8): iq2*_grid bytes or iq1s_grid."""
    values = (np.array([-1, 0, 1, 0], np.float32) if name == "iq1s"
              else np.array([0x08, 0x19, 0x2B, 0], np.float32))
    g = np.ascontiguousarray(values[code_coords(kgrid(name))])
    g.setflags(write=False)
    return g


@lru_cache(maxsize=None)
def ksigns() -> np.ndarray:
    """ksigns_iq2xs: uint8[128], i | parity(i) << 7."""
    i = np.arange(128)
    par = np.zeros(128, np.int64)
    for b in range(7):
        par ^= (i >> b) & 1
    return (i | (par << 7)).astype(np.uint8)


@njit(cache=True, nogil=True)
def _neighbour_pass(grid, kmap, nwant, counts, offsets, out):
    """One pass of iq2xs_init_impl's neighbour search over every code off the grid:
    with ``out`` empty it fills ``counts``, else writes each code's list at ``offsets``."""
    ng = grid.shape[0]
    d2 = np.empty(ng, dtype=np.int64)
    levels = np.empty(nwant, dtype=np.int64)
    pos = np.empty(8, dtype=np.int64)
    fill = out.shape[0] > 0
    for i in range(kmap.shape[0]):
        if kmap[i] >= 0:
            continue
        for k in range(8):
            pos[k] = 2 * ((i >> (2 * k)) & 3) + 1
        for j in range(ng):
            s = 0
            for k in range(8):
                t = np.int64(grid[j, k]) - pos[k]
                s += t * t
            d2[j] = s
        # the nwant smallest distinct distances (fewer if the grid has fewer)
        nl = 0
        last = -1
        while nl < nwant:
            best = -1
            for j in range(ng):
                if d2[j] > last and (best < 0 or d2[j] < best):
                    best = d2[j]
            if best < 0:
                break
            levels[nl] = best
            nl += 1
            last = best
        if not fill:
            n = 0
            for j in range(ng):
                if d2[j] <= last:
                    n += 1
            counts[i] = n
            continue
        o = offsets[i]
        n = 0
        for t in range(nl):
            for j in range(ng):
                if d2[j] == levels[t]:
                    n += 1
                    out[o + n] = j
        out[o] = n


@lru_cache(maxsize=None)
def iq2_tables(name: str):
    """``(grid, kmap, neighbours)`` of iq2xs_init_impl for grid ``name``: int8 (n, 8) points
    (2*l + 1), int32 kmap of 43692 entries, uint16 neighbour lists (see the module doc)."""
    nwant = _GRIDS[name][1]
    codes = kgrid(name)
    grid = np.ascontiguousarray(2 * code_coords(codes) + 1).astype(np.int8)
    kmap = np.full(KMAP_SIZE, -1, dtype=np.int32)
    kmap[codes.astype(np.int64)] = np.arange(codes.shape[0], dtype=np.int32)
    counts = np.zeros(KMAP_SIZE, dtype=np.int64)
    empty = np.zeros(0, dtype=np.uint16)
    _neighbour_pass(grid, kmap, np.int64(nwant), counts, counts, empty)
    off_grid = kmap < 0
    sizes = np.where(off_grid, counts + 1, 0)
    offsets = np.cumsum(sizes) - sizes
    neighbours = np.zeros(int(sizes.sum()), dtype=np.uint16)
    _neighbour_pass(grid, kmap, np.int64(nwant), counts, offsets, neighbours)
    kmap[off_grid] = -(offsets[off_grid] + 1).astype(np.int32)
    for a in (grid, kmap, neighbours):
        a.setflags(write=False)
    return grid, kmap, neighbours


@njit(cache=True, nogil=True)
def _pack_records(grid, kmap, nb, rec_off, rec):
    """Search records of the off-grid codes (see encoder_tables); returns the bytes used
    (``rec`` empty: only sizes them). On-grid codes get rec_off = -(grid index + 1)."""
    pos = 0
    fill = rec.shape[0] > 0
    for u in range(kmap.shape[0]):
        if kmap[u] >= 0:
            rec_off[u] = -np.int64(kmap[u]) - 1
            continue
        o = -np.int64(kmap[u]) - 1
        n = np.int64(nb[o])
        m = (n + 7) // 8 * 8
        rec_off[u] = pos
        if fill:
            rec[pos] = m & 0xFF
            rec[pos + 1] = m >> 8
            rec[pos + 2] = n & 0xFF
            rec[pos + 3] = n >> 8
            for j in range(m):
                g = np.int64(nb[o + 1 + min(j, n - 1)])
                for i in range(8):
                    rec[pos + 8 + i * m + j] = grid[g, i]
                rec[pos + 8 + 8 * m + 2 * j] = g & 0xFF
                rec[pos + 9 + 8 * m + 2 * j] = g >> 8
        pos += 8 + 10 * m
    return pos


@lru_cache(maxsize=None)
def encoder_tables(name: str):
    """``(grid, rec_off, rec)``: the tables of :func:`iq2_tables` laid out for the searches.
    ``rec_off`` (int32 per code ``u``): ``-(index + 1)`` for a grid point, else the offset in
    ``rec`` (uint8) of the code's record: ``m`` (uint16), ``n`` (uint16), 4 spare bytes, the neighbour list
    (``n`` entries padded to ``m = 8*ceil(n/8)`` with copies of the last, which can never win
    a strict first-minimum search) coordinate-major (coordinate ``i`` of entry ``j`` at
    ``8 + i*m + j``, values 2*l + 1), then the entries' grid indices (uint16). One record is
    contiguous (few cache lines per search) and 8 candidates' distances are computed side by
    side, each in the C code's order."""
    grid, kmap, nb = iq2_tables(name)
    rec_off = np.zeros(kmap.shape[0], dtype=np.int64)
    size = _pack_records(grid, kmap, nb, rec_off, np.zeros(0, np.uint8))
    rec = np.zeros(size, dtype=np.uint8)
    _pack_records(grid, kmap, nb, rec_off, rec)
    rec_off = rec_off.astype(np.int32)
    for a in (rec_off, rec):
        a.setflags(write=False)
    return grid, rec_off, rec


# -- searching the records (shared by the IQ2 and IQ1 kernels) ----------------------------------
_FLT_MAX = np.float32(3.4028234663852886e38)
_F32 = np.float32
_U64 = np.uint64


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def record_counts(rec, b):
    """(m, n) of the search record at rec[b]: its padded and its true candidate count."""
    return (_U64(rec[b]) | (_U64(rec[b + 1]) << _U64(8)),
            np.int64(rec[b + 2]) | (np.int64(rec[b + 3]) << 8))


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _coord(rec, i, q0, half):
    """A candidate's coordinate: the record's 2*l + 1, or with ``half`` q0 + l."""
    return q0 + _F32(rec[i] >> 1) if half else _F32(rec[i])


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def record_best(rec, b, xs, xo, ws, wo, scale, q0, half, d2):
    """The grid index in the search record at rec[b] minimizing sum w*(scale*q - x)^2 over the
    8 weights ws[wo:] and values xs[xo:] (q: :func:`_coord`), the first of equals, as the C
    searches (``iq2_find_best_neighbour``, ``iq1_find_best_neighbour2``) find it; -1 when none
    compares below FLT_MAX (NaN). The m candidates' sums run side by side in one flat loop over
    unsigned indices (no wraparound), which LLVM vectorizes; each sum stays in the C order."""
    m, n = record_counts(rec, b)
    x0, x1, x2, x3 = xs[xo], xs[xo + 1], xs[xo + 2], xs[xo + 3]
    x4, x5, x6, x7 = xs[xo + 4], xs[xo + 5], xs[xo + 6], xs[xo + 7]
    w0, w1, w2, w3 = ws[wo], ws[wo + 1], ws[wo + 2], ws[wo + 3]
    w4, w5, w6, w7 = ws[wo + 4], ws[wo + 5], ws[wo + 6], ws[wo + 7]
    p0 = _U64(b) + _U64(8)
    p1 = p0 + m
    p2 = p1 + m
    p3 = p2 + m
    p4 = p3 + m
    p5 = p4 + m
    p6 = p5 + m
    p7 = p6 + m
    for j in range(m):
        t0 = scale * _coord(rec, p0 + j, q0, half) - x0
        t1 = scale * _coord(rec, p1 + j, q0, half) - x1
        t2 = scale * _coord(rec, p2 + j, q0, half) - x2
        t3 = scale * _coord(rec, p3 + j, q0, half) - x3
        t4 = scale * _coord(rec, p4 + j, q0, half) - x4
        t5 = scale * _coord(rec, p5 + j, q0, half) - x5
        t6 = scale * _coord(rec, p6 + j, q0, half) - x6
        t7 = scale * _coord(rec, p7 + j, q0, half) - x7
        s = _F32(0.0) + w0 * t0 * t0
        s += w1 * t1 * t1
        s += w2 * t2 * t2
        s += w3 * t3 * t3
        s += w4 * t4 * t4
        s += w5 * t5 * t5
        s += w6 * t6 * t6
        s += w7 * t7 * t7
        d2[j] = s
    # the first strict minimum below FLT_MAX (one pass, branch-free; the padding repeats the
    # last entry, so only the n true entries are scanned)
    mn = _FLT_MAX
    bj = -1
    for j in range(n):
        v = d2[j]
        c = v < mn
        bj = j if c else bj
        mn = v if c else mn
    if bj < 0:
        return -1
    p = p0 + _U64(8) * m + _U64(2 * bj)
    return np.int64(rec[p]) | (np.int64(rec[p + _U64(1)]) << 8)


# -- the same search, repeated on one record at other scales -------------------------------------
_MARGIN = np.float64(2.0 ** -16)      # 16x the bound on a candidate's float32 rounding error (below)
_TINY = np.float64(1e-37)             # covers subnormal results, whose error is absolute


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def record_moments(rec, b, xs, xo, ws, wo, A, B, ao):
    """For the candidates q_j of the record at rec[b]: A[ao+j] = sum w*q_j^2 and B[ao+j] = sum w*x*q_j
    (float64; q = the record's 2*l + 1), so that sum w*(s*q_j - x)^2 = s*(s*A_j - 2*B_j) + sum w*x^2
    at any scale s (see :func:`record_best_again`)."""
    m, n = record_counts(rec, b)
    w0, w1, w2, w3 = np.float64(ws[wo]), np.float64(ws[wo + 1]), np.float64(ws[wo + 2]), np.float64(ws[wo + 3])
    w4, w5, w6, w7 = np.float64(ws[wo + 4]), np.float64(ws[wo + 5]), np.float64(ws[wo + 6]), np.float64(ws[wo + 7])
    v0, v1, v2, v3 = w0 * xs[xo], w1 * xs[xo + 1], w2 * xs[xo + 2], w3 * xs[xo + 3]
    v4, v5, v6, v7 = w4 * xs[xo + 4], w5 * xs[xo + 5], w6 * xs[xo + 6], w7 * xs[xo + 7]
    p0 = _U64(b) + _U64(8)
    a0 = _U64(ao)
    for j in range(m):
        q0 = np.float64(rec[p0 + j])
        q1 = np.float64(rec[p0 + m + j])
        q2 = np.float64(rec[p0 + _U64(2) * m + j])
        q3 = np.float64(rec[p0 + _U64(3) * m + j])
        q4 = np.float64(rec[p0 + _U64(4) * m + j])
        q5 = np.float64(rec[p0 + _U64(5) * m + j])
        q6 = np.float64(rec[p0 + _U64(6) * m + j])
        q7 = np.float64(rec[p0 + _U64(7) * m + j])
        A[a0 + j] = (w0 * q0 * q0 + w1 * q1 * q1 + w2 * q2 * q2 + w3 * q3 * q3
                     + w4 * q4 * q4 + w5 * q5 * q5 + w6 * q6 * q6 + w7 * q7 * q7)
        B[a0 + j] = v0 * q0 + v1 * q1 + v2 * q2 + v3 * q3 + v4 * q4 + v5 * q5 + v6 * q6 + v7 * q7


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def record_best_again(rec, b, xs, xo, ws, wo, scale, d2, vals, A, B, ao, bound):
    """:func:`record_best` (IQ2 records, q = 2*l + 1, x >= 0) from the record's moments
    (:func:`record_moments`), for the many trial scales that meet the same off-grid code; the same answer.
    Each candidate's value s*(s*A_j - 2*B_j) (its distance less the common sum w*x^2) is computed in
    float64 (``vals``); a C float32 distance is within E = 2^-20 * sum w*(5|s| + x)^2 of the exact one (8
    terms of at most 3 roundings each, summed in order), so only the candidates within 2E of the least
    ("contenders") can be the C search's first minimum: with one contender that is the answer, with more
    their float32 sums are computed in the C order among them. ``bound`` = (sum w, sum w*x, sum w*x^2) of
    the 8 weights; E is taken 16x larger, plus a term for subnormal results. Non-finite or huge values
    go to record_best itself (``d2`` its float32 scratch)."""
    m, n = record_counts(rec, b)
    s = np.float64(scale)
    s5 = 5.0 * abs(s)
    err = _MARGIN * (s5 * s5 * bound[0] + 2.0 * s5 * bound[1] + bound[2]) + _TINY
    # one branch-free pass: the least value, where it first occurs, and the second least
    vmin = np.inf
    v2 = np.inf
    bj = 0
    a0 = _U64(ao)
    for j in range(n):
        v = s * (s * A[a0 + _U64(j)] - 2.0 * B[a0 + _U64(j)])
        vals[j] = v
        v2 = min(v2, max(v, vmin))
        c = v < vmin
        bj = j if c else bj
        vmin = v if c else vmin
    if not (err < 1e30 and abs(vmin) < 1e30):
        return record_best(rec, b, xs, xo, ws, wo, scale, _F32(0.0), False, d2)
    thr = vmin + 2.0 * err
    if v2 <= thr:  # near-ties: the C code's float32 sums, in its order, among the contenders
        mn = _FLT_MAX
        bj = -1
        p0 = _U64(b) + _U64(8)
        for j in range(n):
            if vals[j] > thr:
                continue
            jj = _U64(j)
            e = _F32(0.0)
            for i in range(8):
                t = scale * _F32(rec[p0 + _U64(i) * m + jj]) - xs[xo + i]
                e += ws[wo + i] * t * t
            if e < mn:
                mn = e
                bj = j
        if bj < 0:
            return -1
    p = _U64(b) + _U64(8) + _U64(8) * m + _U64(2 * bj)
    return np.int64(rec[p]) | (np.int64(rec[p + _U64(1)]) << 8)
