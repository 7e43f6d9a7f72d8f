"""IQ1_S and IQ1_M: ternary lattice super-blocks of 256 (1.5625 / 1.75 bpw), byte-identical to llama.cpp.

``ggml_quantize_chunk`` runs ``quantize_iq1_s`` / ``quantize_iq1_m``, row by row through
``quantize_row_iq1_s_impl`` / ``quantize_row_iq1_m_impl`` (ggml-quants.c): each block of 32
(IQ1_S) or 16 (IQ1_M) weights is split exhaustively into three value groups {-1, 0, 1} + delta
(delta = +-0.125, per block for IQ1_S, per 8 weights for IQ1_M) after sorting the weights
(``qsort`` with ``iq1_sort_helper``); the resulting 8-weight codes are moved onto the
2048-point grid ``iq1s_grid`` through the neighbour lists of ``iq2xs_init_impl``
(``iq1_find_best_neighbour2``; tables from :mod:`._iqgrid`, built once per process).

IQ1_S needs importance weights (``ggml_quantize_requires_imatrix``: llama.cpp aborts without);
called without, the kernel raises :class:`core.errors.PlanError`. IQ1_M takes them optionally
(without: ``weight = x*x``).

Block layouts:

- IQ1_S (50 B): fp16 ``d`` (stored times 1.125), ``qs[32]`` (low 8 bits of the 11-bit grid
  indices), ``qh`` 8 uint16 per 32 weights: bits 3k..3k+2 the high index bits of group k,
  bits 12..14 the 3-bit scale ``s`` (``dl = d*(2s+1)``), bit 15 the sign of delta.
- IQ1_M (56 B): ``qs[32]``, ``qh[16]`` (per 16 weights: high index bits of the two groups in
  bits 0..2 / 4..6, delta signs in bits 3 / 7), ``scales[8]`` as 4 uint16: 3-bit scales, four
  per uint16 in bits 0..11, and the fp16 super-block scale (times 1.1125) in the top nibbles.

The sort is glibc's ``qsort`` for these sizes: a stable top-down merge sort (``msort``), which
this module reproduces, ties and NaN comparisons included. A C library whose ``qsort`` orders
equal weights differently (musl, macOS, Windows) can make llama.cpp itself give other bytes
for blocks with repeated values; the bytes here are those of llama.cpp on glibc.
Non-finite input: as llama.cpp where it does not abort; where it aborts (``GGML_ASSERT`` on a
missing grid point) these kernels write grid point 0 for that group.

Speed: the neighbour searches run on the records of ``_iqgrid.encoder_tables``, 8 or 16
candidates side by side as in :mod:`.iq2` (each candidate's sum in C order); the split
searches are the C loops, with the per-``i1`` terms hoisted (same float operations); IQ1_M computes
each row of splits (one ``i1``) side by side and tests it against the best so far, walking the
row in the C order only where some split passes (about one row in five).
"""
from __future__ import annotations

import numpy as np
from numba import njit
from gguf.constants import GGMLQuantizationType as T

from ._iqgrid import _FLT_MAX, decode_grid, encoder_tables, record_best
from .floats import f16_bits_to_f32, f32_to_f16_bits, load_f16, store_f16
from .iq2 import _code_u, _ni, _sumx2, need_imatrix

_F32 = np.float32
_U64 = np.uint64
QK_K = 256
_DELTA = np.float32(0.125)
_EPS_IQ1_S = np.float32(1e-12)
_EPS_IQ1_M = np.float32(1e-7)


# -- shared steps --------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _msort(keys, idx, tk, ti, n):
    """glibc msort of (key, index) pairs by key (n a power of two, so the top-down halves are
    the bottom-up runs): stable, and a pair is taken from the left run unless left > right."""
    width = 1
    while width < n:
        for a in range(0, n, 2 * width):
            i = a
            j = a + width
            ie = a + width
            je = a + 2 * width
            o = a
            while i < ie and j < je:
                if keys[i] > keys[j]:
                    tk[o] = keys[j]
                    ti[o] = idx[j]
                    j += 1
                else:
                    tk[o] = keys[i]
                    ti[o] = idx[i]
                    i += 1
                o += 1
            while i < ie:
                tk[o] = keys[i]
                ti[o] = idx[i]
                i += 1
                o += 1
            while j < je:
                tk[o] = keys[j]
                ti[o] = idx[j]
                j += 1
                o += 1
        for o in range(n):
            keys[o] = tk[o]
            idx[o] = ti[o]
        width *= 2


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _best_neighbour2(rec, b, grid, xf, xo, weight, wo, scale, xx, d2):
    """iq1_find_best_neighbour2: the grid index minimizing sum w*(scale*xx[l] - x)^2 over the
    search record at rec[b] (_iqgrid.encoder_tables; the candidates side by side, each sum in
    C order), else over the whole grid (where the C code reads x[i] for grid index i: past
    the 8 weights, along the input; NaN past its end); -1 if none (llama.cpp aborts)."""
    q0 = xx[0]  # xx[l] == xx[0] + l exactly for both delta signs
    gi = record_best(rec, b, xf, xo, weight, wo, scale, q0, True, d2)
    best = _FLT_MAX
    if gi < 0:
        for i in range(grid.shape[0]):
            xv = xf[xo + i] if xo + i < xf.shape[0] else _F32(np.nan)
            dd = _F32(0.0)
            for j in range(8):
                q = xx[(np.int64(grid[i, j]) - 1) // 2]
                diff = scale * q - xv
                dd += weight[wo + j] * diff * diff
            if dd < best:
                best = dd
                gi = i
    return gi


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _code_record(L, o, rec_off):
    """rec_off of the code L[o:o+8]: -(grid index + 1) on the grid, else its search record."""
    return np.int64(rec_off[_code_u(L, o)])


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _group_index(L, k, rec_off, rec, grid, xf, xo, weight, scale, xx, d2):
    """(grid index, on the grid) of group k's code L[8k:8k+8]; off the grid, the index of its
    best neighbour (_best_neighbour2 on the weights at xf[xo + 8k]), whose coordinates then
    replace the code (point 0 where llama.cpp aborts)."""
    gi = _code_record(L, 8 * k, rec_off)
    if gi < 0:
        return -gi - 1, True
    gi = _best_neighbour2(rec, gi, grid, xf, xo + 8 * k, weight, 8 * k, scale, xx, d2)
    gi = 0 if gi < 0 else gi
    for j in range(8):
        L[8 * k + j] = (np.int64(grid[gi, j]) - 1) // 2
    return gi, False


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _sorted_block(xb, n, keys, idx, tk, ti):
    """idx = the order in which glibc's qsort (msort: stable) leaves the n values of xb. Without NaN
    every stable sort gives that order, so each value's rank is counted side by side (values below it,
    and equal ones before it: -0.0 equals 0.0 as in iq1_sort_helper) and placed; with a NaN, msort."""
    nan = False
    for j in range(n):
        nan |= xb[j] != xb[j]
    if nan:
        for j in range(n):
            keys[j] = xb[j]
            idx[j] = j
        _msort(keys, idx, tk, ti, n)
        return
    for i in range(n):
        v = xb[i]
        r = 0
        for j in range(n):
            u = xb[j]
            r += np.int64(u < v) + np.int64((u == v) & (j < i))
        idx[r] = i


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _abs_max(xb, n):
    mx = abs(xb[0])
    for i in range(1, n):
        a = abs(xb[i])
        mx = mx if mx > a else a
    return mx


# -- IQ1_S ---------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def _quantize_iq1_s(x, qw, out, grid, rec_off, rec):
    nrows, n = x.shape
    xf = x.reshape(-1)
    nbl = n // QK_K
    x_p = np.array([-1.0 + 0.125, 0.125, 1.0 + 0.125], dtype=np.float32)
    x_m = np.array([-1.0 - 0.125, -0.125, 1.0 - 0.125], dtype=np.float32)
    p0, p1, p2 = x_p[0], x_p[1], x_p[2]
    m0, m1, m2 = x_m[0], x_m[1], x_m[2]
    weight = np.empty(32, np.float32)
    d2 = np.empty(4096, np.float32)
    keys = np.empty(32, np.float32)
    idx = np.empty(32, np.int64)
    tk = np.empty(32, np.float32)
    ti = np.empty(32, np.int64)
    sumx = np.empty(33, np.float32)
    sumw = np.empty(33, np.float32)
    L = np.empty(32, np.int64)
    index = np.empty(4, np.int64)
    scales = np.empty(8, np.float32)
    shifts = np.empty(8, np.int64)
    for r in range(nrows):
        for ibl in range(nbl):
            xbl = x[r, ibl * QK_K:(ibl + 1) * QK_K]
            ob = ibl * 50
            for i in range(50):
                out[r, ob + i] = 0
            max_scale = _F32(0.0)
            sigma2 = _F32(2.0) * _sumx2(xbl) / _F32(QK_K)
            for ib in range(8):
                xb = xbl[32 * ib:32 * ib + 32]
                qo = QK_K * ibl + 32 * ib
                for i in range(32):
                    weight[i] = qw[qo + i] * np.sqrt(sigma2 + xb[i] * xb[i])
                if _abs_max(xb, 32) < _EPS_IQ1_S:
                    scales[ib] = _F32(0.0)
                    shifts[ib] = 1
                    continue
                _sorted_block(xb, 32, keys, idx, tk, ti)
                sumx[0] = _F32(0.0)
                sumw[0] = _F32(0.0)
                for j in range(32):
                    i = idx[j]
                    sumx[j + 1] = sumx[j] + weight[i] * xb[i]
                    sumw[j + 1] = sumw[j] + weight[i]
                best_score = -_FLT_MAX
                scale = _F32(0.0)
                besti1 = -1
                besti2 = -1
                best_shift = 0
                sx0 = sumx[0]
                sw0 = sumw[0]
                sxn = sumx[32]
                swn = sumw[32]
                for i1 in range(33):
                    a1 = sumx[i1] - sx0
                    b1 = sumw[i1] - sw0
                    ap = a1 * p0
                    am = a1 * m0
                    bp = b1 * p0 * p0
                    bm = b1 * m0 * m0
                    for i2 in range(i1, 33):
                        a2 = sumx[i2] - sumx[i1]
                        a3 = sxn - sumx[i2]
                        b2 = sumw[i2] - sumw[i1]
                        b3 = swn - sumw[i2]
                        sumqx = ap + a2 * p1 + a3 * p2
                        sumq2 = bp + b2 * p1 * p1 + b3 * p2 * p2
                        if sumq2 > _F32(0.0) and sumqx * sumqx > best_score * sumq2:
                            scale = sumqx / sumq2
                            best_score = scale * sumqx
                            besti1 = i1
                            besti2 = i2
                            best_shift = 1
                        sumqx = am + a2 * m1 + a3 * m2
                        sumq2 = bm + b2 * m1 * m1 + b3 * m2 * m2
                        if sumq2 > _F32(0.0) and sumqx * sumqx > best_score * sumq2:
                            scale = sumqx / sumq2
                            best_score = scale * sumqx
                            besti1 = i1
                            besti2 = i2
                            best_shift = -1
                if besti1 < 0 or besti2 < 0 or best_shift == 0:
                    scales[ib] = _F32(0.0)
                    shifts[ib] = 1
                    continue
                for j in range(32):
                    L[idx[j]] = 0 if j < besti1 else (1 if j < besti2 else 2)
                if scale < _F32(0.0):
                    for j in range(32):
                        L[j] = 2 - L[j]
                    scale = -scale
                    best_shift = -best_shift
                xx = x_p if best_shift == 1 else x_m
                all_on_grid = True
                xo = r * n + ibl * QK_K + 32 * ib
                for k in range(4):
                    index[k], on = _group_index(L, k, rec_off, rec, grid, xf, xo, weight, scale, xx, d2)
                    all_on_grid = all_on_grid and on
                if not all_on_grid:
                    sumqx = _F32(0.0)
                    sumq2 = _F32(0.0)
                    for k in range(4):
                        for j in range(8):
                            w = weight[8 * k + j]
                            q = xx[(np.int64(grid[index[k], j]) - 1) // 2]
                            sumqx += w * q * xb[8 * k + j]
                            sumq2 += w * q * q
                    if sumqx > _F32(0.0) and sumq2 > _F32(0.0):
                        scale = sumqx / sumq2
                h = 0
                for k in range(4):
                    out[r, ob + 2 + 4 * ib + k] = index[k] & 255
                    h |= (index[k] >> 8) << (3 * k)
                out[r, ob + 34 + 2 * ib] = h & 0xFF
                out[r, ob + 35 + 2 * ib] = (h >> 8) & 0xFF
                scales[ib] = scale
                shifts[ib] = best_shift
                max_scale = max_scale if max_scale > scale else scale
            if not max_scale:
                continue
            d = max_scale / _F32(15.0)
            store_f16(out[r], ob, d * _F32(1.125))
            idv = _F32(1.0) / d
            for ib in range(8):
                l = _ni(_F32(0.5) * (idv * scales[ib] - _F32(1.0)))
                l = 0 if l < 0 else (7 if l > 7 else l)
                if shifts[ib] == -1:
                    l |= 8
                out[r, ob + 35 + 2 * ib] |= (l << 4) & 0xFF


@njit(cache=True, nogil=True, error_model="numpy")
def _dequantize_iq1_s(q, out, dgrid):
    nrows, n = out.shape
    for r in range(nrows):
        for ibl in range(n // QK_K):
            ob = ibl * 50
            d = load_f16(q[r], ob)
            for ib in range(8):
                qh = np.int64(q[r, ob + 34 + 2 * ib]) | (np.int64(q[r, ob + 35 + 2 * ib]) << 8)
                dl = d * _F32(2 * ((qh >> 12) & 7) + 1)
                delta = -_DELTA if qh & 0x8000 else _DELTA
                for l in range(4):
                    gi = np.int64(q[r, ob + 2 + 4 * ib + l]) | (((qh >> (3 * l)) & 7) << 8)
                    yo = ibl * QK_K + 32 * ib + 8 * l
                    for j in range(8):
                        out[r, yo + j] = dl * (dgrid[gi, j] + delta)


# -- IQ1_M ---------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _iq1m_weights(xb, qw, qo, sigma2, weight):
    if qw.shape[0] > 0:
        for i in range(16):
            weight[i] = qw[qo + i] * np.sqrt(sigma2 + xb[i] * xb[i])
    else:
        for i in range(16):
            weight[i] = xb[i] * xb[i]


@njit(cache=True, nogil=True, error_model="numpy")
def _quantize_iq1_m(x, qw, out, grid, rec_off, rec):
    nrows, n = x.shape
    xf = x.reshape(-1)
    nbl = n // QK_K
    x_p = np.array([-1.0 + 0.125, 0.125, 1.0 + 0.125], dtype=np.float32)
    x_m = np.array([-1.0 - 0.125, -0.125, 1.0 - 0.125], dtype=np.float32)
    masks = np.array([0x00, 0x80, 0x08, 0x88], dtype=np.int64)
    wbl = np.empty(QK_K, np.float32)      # the super-block's weights
    d2 = np.empty(4096, np.float32)
    keys = np.empty(16, np.float32)
    idx = np.empty(16, np.int64)
    tk = np.empty(16, np.float32)
    ti = np.empty(16, np.int64)
    px = np.empty((2, 17), np.float32)
    pw = np.empty((2, 17), np.float32)
    L = np.empty(16, np.int64)
    index = np.empty(2, np.int64)
    scales = np.empty(16, np.float32)
    shifts = np.empty(16, np.int64)
    RX = np.empty(4 * 17, np.float32)     # one row of splits: sumqx, sumq2 of the 4 sign pairs
    RQ = np.empty(4 * 17, np.float32)
    sc = np.zeros(4, np.int64)
    p2 = x_p[2]
    m2 = x_m[2]
    cp1 = x_p[0] * x_p[0] - x_p[1] * x_p[1]
    cp2 = x_p[1] * x_p[1] - x_p[2] * x_p[2]
    cm1 = x_m[0] * x_m[0] - x_m[1] * x_m[1]
    cm2 = x_m[1] * x_m[1] - x_m[2] * x_m[2]
    for r in range(nrows):
        for ibl in range(nbl):
            xbl = x[r, ibl * QK_K:(ibl + 1) * QK_K]
            ob = ibl * 56
            for i in range(56):
                out[r, ob + i] = 0
            max_scale = _F32(0.0)
            sigma2 = _F32(2.0) * _sumx2(xbl) / _F32(QK_K)
            for ib in range(16):
                xb = xbl[16 * ib:16 * ib + 16]
                weight = wbl[16 * ib:16 * ib + 16]     # kept for the super-block's final pass
                _iq1m_weights(xb, qw, QK_K * ibl + 16 * ib, sigma2, weight)
                if _abs_max(xb, 16) < _EPS_IQ1_M:
                    scales[ib] = _F32(0.0)
                    shifts[ib] = 0
                    continue
                _sorted_block(xb, 16, keys, idx, tk, ti)
                px[0, 0] = _F32(0.0)
                px[1, 0] = _F32(0.0)
                pw[0, 0] = _F32(0.0)
                pw[1, 0] = _F32(0.0)
                for j in range(16):
                    i = idx[j]
                    h = 0 if i < 8 else 1
                    px[h, j + 1] = px[h, j] + weight[i] * xb[i]
                    px[1 - h, j + 1] = px[1 - h, j]
                    pw[h, j + 1] = pw[h, j] + weight[i]
                    pw[1 - h, j + 1] = pw[1 - h, j]
                tx0 = px[0, 16]
                tx1 = px[1, 16]
                tw0 = pw[0, 16]
                tw1 = pw[1, 16]
                tpx0 = tx0 * p2
                tpx1 = tx1 * p2
                tmx0 = tx0 * m2
                tmx1 = tx1 * m2
                tpw0 = tw0 * p2 * p2
                tpw1 = tw1 * p2 * p2
                tmw0 = tw0 * m2 * m2
                tmw1 = tw1 * m2 * m2
                best_score = -_FLT_MAX
                scale = _F32(0.0)
                besti1 = -1
                besti2 = -1
                best_k = -1
                for i1 in range(17):
                    # one row of splits (i1, i1..16) side by side, tested against the best so far; only a
                    # row where some split passes is walked in the C order (the best changes there)
                    nr = 17 - i1
                    hx0 = px[0, i1]
                    hx1 = px[1, i1]
                    hp0 = tpw0 + pw[0, i1] * cp1
                    hm0 = tmw0 + pw[0, i1] * cm1
                    hp1 = tpw1 + pw[1, i1] * cp1
                    hm1 = tmw1 + pw[1, i1] * cm1
                    hit = 0
                    for j in range(nr):
                        i2 = i1 + j
                        sx0 = hx0 + px[0, i2]
                        sx1 = hx1 + px[1, i2]
                        qxp0 = tpx0 - sx0
                        qxm0 = tmx0 - sx0
                        qxp1 = tpx1 - sx1
                        qxm1 = tmx1 - sx1
                        q2p0 = hp0 + pw[0, i2] * cp2
                        q2m0 = hm0 + pw[0, i2] * cm2
                        q2p1 = hp1 + pw[1, i2] * cp2
                        q2m1 = hm1 + pw[1, i2] * cm2
                        a0 = qxp0 + qxp1
                        a1 = qxp0 + qxm1
                        a2 = qxm0 + qxp1
                        a3 = qxm0 + qxm1
                        b0 = q2p0 + q2p1
                        b1 = q2p0 + q2m1
                        b2 = q2m0 + q2p1
                        b3 = q2m0 + q2m1
                        RX[j] = a0
                        RX[17 + j] = a1
                        RX[34 + j] = a2
                        RX[51 + j] = a3
                        RQ[j] = b0
                        RQ[17 + j] = b1
                        RQ[34 + j] = b2
                        RQ[51 + j] = b3
                    for j in range(_U64(68)):  # the 4 x 17 slots (those past nr hold older values: harmless)
                        hit |= np.int32(RQ[j] > _F32(0.0)) & np.int32(RX[j] * RX[j] > best_score * RQ[j])
                    if hit == 0:
                        continue
                    for j in range(nr):
                        for k in range(4):
                            sqx = RX[17 * k + j]
                            sq2 = RQ[17 * k + j]
                            if sq2 > _F32(0.0) and sqx * sqx > best_score * sq2:
                                scale = sqx / sq2
                                best_score = scale * sqx
                                besti1 = i1
                                besti2 = i1 + j
                                best_k = k
                if besti1 < 0 or besti2 < 0 or best_k < 0:
                    scales[ib] = _F32(0.0)
                    shifts[ib] = 0
                    continue
                for j in range(16):
                    L[idx[j]] = 0 if j < besti1 else (1 if j < besti2 else 2)
                if scale < _F32(0.0):
                    for j in range(16):
                        L[j] = 2 - L[j]
                    scale = -scale
                    best_k = 3 - best_k
                all_on_grid = True
                xo = r * n + ibl * QK_K + 16 * ib
                for k in range(2):
                    xx = x_p if (best_k < 2 if k == 0 else best_k % 2 == 0) else x_m
                    index[k], on = _group_index(L, k, rec_off, rec, grid, xf, xo, weight, scale, xx, d2)
                    all_on_grid = all_on_grid and on
                if not all_on_grid:
                    sqx = _F32(0.0)
                    sq2 = _F32(0.0)
                    for k in range(2):
                        xx = x_p if (best_k < 2 if k == 0 else best_k % 2 == 0) else x_m
                        for j in range(8):
                            w = weight[8 * k + j]
                            q = xx[(np.int64(grid[index[k], j]) - 1) // 2]
                            sqx += w * q * xb[8 * k + j]
                            sq2 += w * q * q
                    if sqx > _F32(0.0) and sq2 > _F32(0.0):
                        scale = sqx / sq2
                out[r, ob + 2 * ib] = index[0] & 255
                out[r, ob + 2 * ib + 1] = index[1] & 255
                out[r, ob + 32 + ib] = ((index[0] >> 8) | ((index[1] >> 8) << 4)) & 0xFF
                scales[ib] = scale
                shifts[ib] = best_k
                max_scale = max_scale if max_scale > scale else scale
            if not max_scale:
                continue
            d = max_scale / _F32(15.0)
            idv = _F32(1.0) / d
            sqx = _F32(0.0)
            sq2 = _F32(0.0)
            sc[:] = 0
            for ib in range(16):
                l = _ni(_F32(0.5) * (idv * scales[ib] - _F32(1.0)))
                l = 0 if l < 0 else (7 if l > 7 else l)
                sc[ib // 4] |= l << (3 * (ib % 4))
                qh = np.int64(out[r, ob + 32 + ib]) | masks[shifts[ib]]
                out[r, ob + 32 + ib] = qh
                xb = xbl[16 * ib:16 * ib + 16]
                weight = wbl[16 * ib:16 * ib + 16]
                fl = _F32(2 * l + 1)
                for k in range(2):
                    xx = x_p if (shifts[ib] < 2 if k == 0 else shifts[ib] % 2 == 0) else x_m
                    gi = np.int64(out[r, ob + 2 * ib + k]) + ((qh << (8 - 4 * k)) & 0x700)
                    for j in range(8):
                        w = weight[8 * k + j]
                        q = xx[(np.int64(grid[gi, j]) - 1) // 2] * fl
                        sqx += w * q * xb[8 * k + j]
                        sq2 += w * q * q
            if sq2 > _F32(0.0):
                d = sqx / sq2
            s = np.int64(f32_to_f16_bits(d * _F32(1.1125)))
            sc[0] |= (s & 0x000F) << 12
            sc[1] |= (s & 0x00F0) << 8
            sc[2] |= (s & 0x0F00) << 4
            sc[3] |= s & 0xF000
            for j in range(4):
                out[r, ob + 48 + 2 * j] = sc[j] & 0xFF
                out[r, ob + 49 + 2 * j] = (sc[j] >> 8) & 0xFF


@njit(cache=True, nogil=True, error_model="numpy")
def _dequantize_iq1_m(q, out, dgrid):
    nrows, n = out.shape
    for r in range(nrows):
        for ibl in range(n // QK_K):
            ob = ibl * 56
            sc0 = np.int64(q[r, ob + 48]) | (np.int64(q[r, ob + 49]) << 8)
            sc1 = np.int64(q[r, ob + 50]) | (np.int64(q[r, ob + 51]) << 8)
            sc2 = np.int64(q[r, ob + 52]) | (np.int64(q[r, ob + 53]) << 8)
            sc3 = np.int64(q[r, ob + 54]) | (np.int64(q[r, ob + 55]) << 8)
            hb = (sc0 >> 12) | ((sc1 >> 8) & 0x00F0) | ((sc2 >> 4) & 0x0F00) | (sc3 & 0xF000)
            d = f16_bits_to_f32(np.uint32(hb))
            for ib in range(16):
                scw = np.int64(q[r, ob + 48 + 2 * (ib // 4)]) | (np.int64(q[r, ob + 49 + 2 * (ib // 4)]) << 8)
                dl = d * _F32(2 * ((scw >> (3 * (ib % 4))) & 7) + 1)
                qh0 = np.int64(q[r, ob + 32 + ib])
                for l in range(2):
                    gi = np.int64(q[r, ob + 2 * ib + l]) | ((qh0 << (8 - 4 * l)) & 0x700)
                    delta = -_DELTA if qh0 & (0x08 << (4 * l)) else _DELTA
                    yo = ibl * QK_K + 16 * ib + 8 * l
                    for j in range(8):
                        out[r, yo + j] = dl * (dgrid[gi, j] + delta)


# -- table entries (thin wrappers passing the cached tables) ------------------------------------
def quantize_iq1_s(x, qw, out):
    need_imatrix(qw, "IQ1_S")
    _quantize_iq1_s(x, qw, out, *encoder_tables("iq1s"))


def dequantize_iq1_s(q, out):
    _dequantize_iq1_s(q, out, decode_grid("iq1s"))


def quantize_iq1_m(x, qw, out):
    _quantize_iq1_m(x, qw, out, *encoder_tables("iq1s"))


def dequantize_iq1_m(q, out):
    _dequantize_iq1_m(q, out, decode_grid("iq1s"))


KERNELS = {
    T.IQ1_S: (quantize_iq1_s, dequantize_iq1_s),
    T.IQ1_M: (quantize_iq1_m, dequantize_iq1_m),
}
