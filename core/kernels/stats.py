"""Numba kernels of :mod:`core.stats`: two passes over a chunk of float32 rows.

Not GGUF types, so not in the registry. Each kernel is single-threaded over one chunk
``x`` (float32, C-contiguous ``(nrows, ncols)``) and releases the GIL; the caller merges
the per-chunk results in chunk order, so the outcome does not depend on the thread count.

Magnitudes are compared as the float's bits with the sign cleared (``& 0x7fffffff``): for
finite values this orders like ``abs``, every NaN/Inf is ``>= 0x7F800000``, and the integer
max/min reductions vectorize without fast-math. A row with no NaN/Inf takes a branch-free
loop; a row with any takes a slower per-element loop that skips them.
"""
from __future__ import annotations

import numpy as np
from numba import njit

# int32 constants: numba widens int32 arithmetic to int64 unless every step is cast back,
# and the int64 forms do not vectorize well on AVX2.
_EXP = np.int32(0x7F800000)      # |bits| >= this: Inf (==) or NaN (>)
_MAG = np.int32(0x7FFFFFFF)
_S31 = np.int32(31)
_ZERO = np.int32(0)
_I32_MIN = np.int32(-(2 ** 31))
_I32_MAX = np.int32(2 ** 31 - 1)


@njit(cache=True, nogil=True, inline="always")
def _ordkey(b):
    """int32 bits of a float -> int32 that orders like the float (for finite values)."""
    return np.int32(b ^ np.int32((b >> _S31) & _MAG))


@njit(cache=True, nogil=True, inline="always")
def _mag(b):
    return np.int32(b & _MAG)


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _row_clean(r, rb, colb):
    """Branch-free pass-1 row loop. Returns (shifted sum, shifted sumsq, min key, max key,
    finite abs-max bits, abs-max bits of everything). ``colb`` gets the finite abs-max bits."""
    n = r.shape[0]
    k0 = np.float64(r[0])
    s = 0.0
    ss = 0.0
    kmin = _I32_MAX
    kmax = _I32_MIN
    afin = _ZERO
    aall = _ZERO
    for j in range(n):
        b = rb[j]
        a = _mag(b)
        af = a if a < _EXP else _ZERO
        colb[j] = max(colb[j], af)
        afin = max(afin, af)
        aall = max(aall, a)
        k = _ordkey(b)
        kmin = min(kmin, k)
        kmax = max(kmax, k)
        d = np.float64(r[j]) - k0
        s += d
        ss += d * d
    return s, ss, kmin, kmax, afin, aall


@njit(cache=True, nogil=True)
def _top_insert(tkey, tidx, tval, nt, key, idx, val):
    """Insert into the top-N set (order: key desc, then idx asc); returns the new size."""
    cap = tkey.shape[0]
    if nt < cap:
        tkey[nt] = key
        tidx[nt] = idx
        tval[nt] = val
        return nt + 1
    # replace the smallest: lowest key, among equal keys the highest index
    m = 0
    for t in range(1, cap):
        if tkey[t] < tkey[m] or (tkey[t] == tkey[m] and tidx[t] > tidx[m]):
            m = t
    if key > tkey[m] or (key == tkey[m] and idx < tidx[m]):
        tkey[m] = key
        tidx[m] = idx
        tval[m] = val
    return nt


@njit(cache=True, nogil=True)
def _top_threshold(tkey, nt):
    """Smallest key in the set once full, else -1 (anything finite qualifies)."""
    if nt < tkey.shape[0]:
        return -1
    m = tkey[0]
    for t in range(1, nt):
        m = min(m, tkey[t])
    return m


@njit(cache=True, nogil=True)
def pass1(x, row0, colb, row_amax, tkey, tidx, tval):
    """Pass 1 over a chunk. ``colb`` (int32, ncols) accumulates finite |x| max bits per column,
    ``row_amax`` (float32, nrows) gets each row's finite |x| max (0 if none), ``tkey/tidx/tval``
    (capacity N, filled from 0) the top-N finite values by magnitude with flat indices
    ``(row0 + i) * ncols + j``. Returns (n_finite, mean, M2, min bits, max bits, n_nan, n_inf,
    n_top); min/max are the int32 bits of the float32 values (meaningless if n_finite is 0)."""
    nrows, ncols = x.shape
    xb = x.view(np.int32)
    rab = row_amax.view(np.int32)
    n = 0
    mean = 0.0
    m2 = 0.0
    kmin = _I32_MAX
    kmax = _I32_MIN
    nnan = 0
    ninf = 0
    nt = 0
    thr = np.int64(-1)
    if ncols == 0:
        return 0, 0.0, 0.0, 0, 0, 0, 0, 0
    for i in range(nrows):
        r = x[i]
        rb = xb[i]
        s, ss, rkmin, rkmax, afin, aall = _row_clean(r, rb, colb)
        rab[i] = afin
        rn = ncols
        k0 = np.float64(r[0])
        if aall >= _EXP:  # NaN/Inf in the row: redo it, skipping them (colb is already right)
            rn = 0
            s = 0.0
            ss = 0.0
            rkmin = _I32_MAX
            rkmax = _I32_MIN
            for j in range(ncols):
                a = _mag(rb[j])
                if a >= _EXP:
                    if a == _EXP:
                        ninf += 1
                    else:
                        nnan += 1
                    continue
                if rn == 0:
                    k0 = np.float64(r[j])
                rn += 1
                k = _ordkey(rb[j])
                rkmin = min(rkmin, k)
                rkmax = max(rkmax, k)
                d = np.float64(r[j]) - k0
                s += d
                ss += d * d
            if rn == 0:
                continue
        kmin = min(kmin, rkmin)
        kmax = max(kmax, rkmax)
        # Chan et al. merge of the row's (count, mean, M2) into the chunk's
        rmean = k0 + s / rn
        rm2 = max(ss - s * s / rn, 0.0)
        tot = n + rn
        delta = rmean - mean
        mean += delta * rn / tot
        m2 += rm2 + delta * delta * (np.float64(n) * rn / tot)
        n = tot
        # top-N: only rows whose max magnitude can enter the set are scanned
        if afin > thr and tkey.shape[0] > 0:
            base = np.int64(row0 + i) * ncols
            for j in range(ncols):
                a = _mag(rb[j])
                if a < _EXP and a > thr:
                    nt = _top_insert(tkey, tidx, tval, nt, np.int64(a), base + j, r[j])
                    thr = _top_threshold(tkey, nt)
    return n, mean, m2, np.int64(_ordkey(kmin)), np.int64(_ordkey(kmax)), nnan, ninf, nt


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _moments_clean(r, rb, mean, t3, t6, t10):
    """Branch-free pass-2 moments of a row; the last value returned is the row's abs-max bits
    (NaN/Inf included): if it is >= _EXP the rest is meaningless."""
    s1 = 0.0
    s2 = 0.0
    s4 = 0.0
    o3 = 0
    o6 = 0
    o10 = 0
    aall = _ZERO
    for j in range(r.shape[0]):
        aall = max(aall, _mag(rb[j]))
        d = np.float64(r[j]) - mean
        d2 = d * d
        s1 += d
        s2 += d2
        s4 += d2 * d2
        ad = abs(d)
        o3 += 1 if ad > t3 else 0
        o6 += 1 if ad > t6 else 0
        o10 += 1 if ad > t10 else 0
    return s1, s2, s4, o3, o6, o10, aall


@njit(cache=True, nogil=True, inline="always")
def _bin_exact(v, b, edges, nb):
    """Move the guess ``b`` to the bin np.histogram gives ``v`` with these edges (last closed)."""
    b = min(max(b, 0), nb - 1)
    while b > 0 and v < edges[b]:
        b -= 1
    while b < nb - 1 and v >= edges[b + 1]:
        b += 1
    return b


_NEAR = np.int32(1 << 24)  # flag on a float32 bin guess too close to an edge to trust
_BIN = np.int32((1 << 24) - 1)


@njit(cache=True, nogil=True)
def _bins_f32(r, lo, scale, eps, nb, buf):
    """Vectorized float32 bin guesses of a clean row into ``buf``; a guess whose fractional
    position is within ``eps`` of an edge gets the ``_NEAR`` flag. Returns the flagged count."""
    top = np.float32(nb - 1)
    one = np.float32(1.0)
    nnear = _ZERO
    for j in range(r.shape[0]):
        t = (r[j] - lo) * scale
        t = min(max(t, np.float32(0.0)), top + one)
        fb = np.float32(np.int32(t))
        fr = t - fb
        near = (fr < eps) | (fr > one - eps)
        buf[j] = np.int32(np.int32(min(fb, top)) | (_NEAR if near else _ZERO))
        nnear = np.int32(nnear + (np.int32(1) if near else _ZERO))
    return nnear


@njit(cache=True, nogil=True)
def pass2(x, mean, t3, t6, t10, edges, fast, hist):
    """Pass 2 over a chunk: sums of d, d^2, d^4 (d = x - mean) and counts of |d| > t3/t6/t10
    over finite values; ``hist`` (int64, (8, bins)) accumulates the histogram over ``edges``
    in eight interleaved copies (the caller sums them), binned exactly as np.histogram does.
    ``fast``: float32 bin guesses are safe (edges[0], edges[-1] are float32 values with a
    finite float32 difference; see core.stats). Returns (s1, s2, s4, o3, o6, o10)."""
    nrows, ncols = x.shape
    xb = x.view(np.int32)
    nb = edges.shape[0] - 1
    lo = edges[0]
    scale = nb / (edges[nb] - lo)
    lo32 = np.float32(lo)
    scale32 = np.float32(scale)
    # float32 guesses are off by at most ~3 ulp relative of t <= nb: 1.8e-7 * nb
    eps = np.float32(nb * 4e-7)
    buf = np.empty(ncols, dtype=np.int32)
    s1 = 0.0
    s2 = 0.0
    s4 = 0.0
    o3 = 0
    o6 = 0
    o10 = 0
    for i in range(nrows):
        r = x[i]
        rb = xb[i]
        a1, a2, a4, c3, c6, c10, aall = _moments_clean(r, rb, mean, t3, t6, t10)
        if aall < _EXP:
            s1 += a1
            s2 += a2
            s4 += a4
            o3 += c3
            o6 += c6
            o10 += c10
            if fast:
                nnear = _bins_f32(r, lo32, scale32, eps, nb, buf)
            else:
                nnear = 0
                for j in range(ncols):
                    v = np.float64(r[j])
                    buf[j] = _bin_exact(v, int((v - lo) * scale), edges, nb)
            j = 0
            while j + 8 <= ncols:
                for u in range(8):
                    hist[u, buf[j + u] & _BIN] += 1
                j += 8
            while j < ncols:
                hist[0, buf[j] & _BIN] += 1
                j += 1
            if nnear > 0:  # move the flagged guesses to their exact bins
                for j in range(ncols):
                    if buf[j] >= _NEAR:
                        g = buf[j] & _BIN
                        b = _bin_exact(np.float64(r[j]), g, edges, nb)
                        if b != g:
                            hist[0, g] -= 1
                            hist[0, b] += 1
        else:
            for j in range(ncols):
                if _mag(rb[j]) >= _EXP:
                    continue
                v = np.float64(r[j])
                d = v - mean
                d2 = d * d
                s1 += d
                s2 += d2
                s4 += d2 * d2
                ad = abs(d)
                if ad > t3:
                    o3 += 1
                if ad > t6:
                    o6 += 1
                if ad > t10:
                    o10 += 1
                hist[0, _bin_exact(v, int((v - lo) * scale), edges, nb)] += 1
    return s1, s2, s4, o3, o6, o10
