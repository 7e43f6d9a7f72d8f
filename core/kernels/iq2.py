"""IQ2_XXS, IQ2_XS and IQ2_S: 2-bit lattice ("i-quant") super-blocks of 256, byte-identical to llama.cpp.

``ggml_quantize_chunk`` runs ``quantize_iq2_xxs`` / ``quantize_iq2_xs`` / ``quantize_iq2_s``,
row by row through ``quantize_row_iq2_xxs_impl`` / ``_xs_impl`` / ``_s_impl`` (ggml-quants.c):
each group of 8 weights is coded as one point of an E8-like grid (2-bit coordinates 0..2 mapped
to magnitudes 1, 3, 5) plus 8 sign bits, with a scale per 32 (XXS) or 16 (XS, S) weights
searched over 13 / 19 trial scales. Off-grid codes are resolved through the neighbour lists of
``iq2xs_init_impl`` (``iq2_find_best_neighbour``); the tables come from :mod:`._iqgrid`
(built once per process and passed into the Numba functions).

IQ2_XXS and IQ2_XS need importance weights (``ggml_quantize_requires_imatrix``: llama.cpp
aborts without them); called without, these kernels raise :class:`core.errors.PlanError`.
IQ2_S takes them optionally (without: ``weight = sigma2/4 + x*x``).

Block layouts (fp16 little-endian ``d`` first):

- IQ2_XXS (66 B): ``d``, then 8 pairs of uint32 per 32 weights: word 0 = four 8-bit grid
  indices (256-point grid ``iq2xxs_grid``), word 1 = four 7-bit sign indices (``ksigns_iq2xs``,
  the 8th sign is the parity) and a 4-bit scale ``s`` in bits 28..31; ``dl = d*(0.5+s)/4``.
- IQ2_XS (74 B): ``d``, ``qs`` 32 uint16 (9-bit index into the 512-point ``iq2xs_grid`` | 7-bit
  sign index << 9), ``scales[8]`` (two 4-bit scales per 32 weights, one per 16).
- IQ2_S (82 B): ``d``, ``qs[32]`` (low 8 bits of 10-bit indices into the 1024-point
  ``iq2s_grid``), ``signs[32]`` (8 explicit sign bits per group), ``qh[8]`` (the high 2 bits,
  four groups per byte), ``scales[8]``; ``d`` is stored times 0.9875.

Non-finite input: llama.cpp's output is deterministic garbage where it does not abort; ours
is the same there. Where the C code aborts (a NaN scale leaves no best neighbour or an
off-grid code: ``GGML_ASSERT`` / "Oops: found point ... not on grid"; also finite rows whose
squares overflow float32), these kernels write grid point 0 for that group instead.

Speed: the neighbour searches are most of the work. Each off-grid code's candidates sit in
one contiguous record (``_iqgrid.encoder_tables``), transposed and padded to a multiple of 8,
and their distances are computed in one flat loop with unsigned indices, which LLVM
vectorizes: 8 (or 16) candidates side by side, each candidate's sum still in the C order;
the first strict minimum is then picked as the C loop picks it. All float arithmetic is
float32 in the C code's order (no FMA), ``nearest_int`` is ggml's bit trick.
"""
from __future__ import annotations

import numpy as np
from numba import njit
from gguf.constants import GGMLQuantizationType as T

from ..errors import PlanError
from ._iqgrid import decode_grid, encoder_tables, ksigns
from .floats import load_f16, store_f16
from .kquants import _make_qp_quants, _nint_f

_F32 = np.float32
_I = np.int64
_U64 = np.uint64
QK_K = 256
_FLT_MAX = np.float32(3.4028234663852886e38)
_GROUP_MAX_EPS = np.float32(1e-15)
_GROUP_MAX_EPS_IQ2_S = np.float32(1e-8)


# -- shared steps --------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _ni(v):
    """ggml's nearest_int(v) (the bit trick, any float32 v) as an int64."""
    return np.int64(_nint_f(v))


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _first_min(d2, m):
    """The first index of the smallest d2[:m] below FLT_MAX, as a strict-< scan from FLT_MAX
    finds it (NaN never wins); -1 if none."""
    mn = _FLT_MAX
    for j in range(m):
        v = d2[j]
        mn = v if v < mn else mn
    if not mn < _FLT_MAX:
        return -1
    j = _U64(0)
    while d2[j] != mn:
        j += _U64(1)
    return np.int64(j)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _record_entry(rec, b, m, j):
    """Grid index of entry j of the search record at rec[b] (m padded entries)."""
    p = _U64(b) + _U64(8) + _U64(8) * m + _U64(2 * j)
    return np.int64(rec[p]) | (np.int64(rec[p + _U64(1)]) << 8)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _best_neighbour(rec, b, xval, waux, o, scale, d2):
    """iq2_find_best_neighbour over the search record at rec[b] (_iqgrid.encoder_tables):
    the grid index minimizing sum waux*(scale*q - x)^2 (first of equals); -1 when none
    compares below FLT_MAX (NaN). The candidates' sums run side by side, each in C order."""
    m = _U64(rec[b]) | (_U64(rec[b + 1]) << _U64(8))
    x0, x1, x2, x3 = xval[o], xval[o + 1], xval[o + 2], xval[o + 3]
    x4, x5, x6, x7 = xval[o + 4], xval[o + 5], xval[o + 6], xval[o + 7]
    w0, w1, w2, w3 = waux[o], waux[o + 1], waux[o + 2], waux[o + 3]
    w4, w5, w6, w7 = waux[o + 4], waux[o + 5], waux[o + 6], waux[o + 7]
    # unsigned indices: no negative-index wraparound, so the loop vectorizes
    p0 = _U64(b) + _U64(8)
    p1 = p0 + m
    p2 = p1 + m
    p3 = p2 + m
    p4 = p3 + m
    p5 = p4 + m
    p6 = p5 + m
    p7 = p6 + m
    for j in range(m):  # one flat loop, so that LLVM's loop vectorizer takes it
        t0 = scale * _F32(rec[p0 + j]) - x0
        t1 = scale * _F32(rec[p1 + j]) - x1
        t2 = scale * _F32(rec[p2 + j]) - x2
        t3 = scale * _F32(rec[p3 + j]) - x3
        t4 = scale * _F32(rec[p4 + j]) - x4
        t5 = scale * _F32(rec[p5 + j]) - x5
        t6 = scale * _F32(rec[p6 + j]) - x6
        t7 = scale * _F32(rec[p7 + j]) - x7
        s = _F32(0.0) + w0 * t0 * t0
        s += w1 * t1 * t1
        s += w2 * t2 * t2
        s += w3 * t3 * t3
        s += w4 * t4 * t4
        s += w5 * t5 * t5
        s += w6 * t6 * t6
        s += w7 * t7 * t7
        d2[j] = s
    j = _first_min(d2, m)
    return -1 if j < 0 else _record_entry(rec, b, m, j)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _quant_group(xval, waux, o, idv, scale, L, rec_off, rec, grid, d2):
    """L[o:o+8] = clamp(nearest_int((id*x - 1)/2), 0, 2), moved to the best neighbouring grid
    point when off the grid (then L is the point's coordinates). Returns True when on the grid."""
    u = 0
    for i in range(8):
        l = _ni(_F32(0.5) * (idv * xval[o + i] - _F32(1.0)))
        l = 0 if l < 0 else (2 if l > 2 else l)
        L[o + i] = l
        u |= l << (2 * i)
    r = np.int64(rec_off[u])
    if r < 0:
        return True
    gi = _best_neighbour(rec, r, xval, waux, o, scale, d2)
    if gi < 0:  # llama.cpp aborts here (NaN); keep going with point 0
        gi = 0
    for i in range(8):
        L[o + i] = (np.int64(grid[gi, i]) - 1) // 2
    return False


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _grid_index(L, o, rec_off):
    """Grid index of the code L[o:o+8] (0 where llama.cpp would abort: off the grid)."""
    u = 0
    for i in range(8):
        u |= (np.int64(L[o + i]) & 0xFF) << (2 * i)
    if u >= rec_off.shape[0] or rec_off[u] >= 0:
        return 0
    return -np.int64(rec_off[u]) - 1


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _signs8(xb, o, weight, xval, parity):
    """xval = |x| of the group at o with its sign bits; with ``parity`` an odd count of
    negatives flips the least important one back (so the 8th sign is the parity of 7)."""
    s = 0
    nflip = 0
    for i in range(8):
        v = xb[o + i]
        if v >= _F32(0.0):
            xval[o + i] = v
        else:
            xval[o + i] = -v
            nflip += 1
            s |= 1 << i
    if parity and nflip % 2:
        imin = 0
        mn = weight[o] * xb[o] * xb[o]
        for i in range(1, 8):
            ax = weight[o + i] * xb[o + i] * xb[o + i]
            if ax < mn:
                mn = ax
                imin = i
        xval[o + imin] = -xval[o + imin]
        s ^= 1 << imin
    return s & 127 if parity else s


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _sum_q(weight, xval, L, n):
    """(sumqx, sumq2) of q = 2*L + 1 in C order."""
    sumqx = _F32(0.0)
    sumq2 = _F32(0.0)
    for i in range(n):
        w = weight[i]
        q = _F32(2 * L[i] + 1)
        sumqx += w * xval[i] * q
        sumq2 += w * q * q
    return sumqx, sumq2


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _sumx2(xbl):
    s = _F32(0.0)
    for i in range(QK_K):
        s += xbl[i] * xbl[i]
    return s


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _put_u32(out, r, o, v):
    for b in range(4):
        out[r, o + b] = (v >> (8 * b)) & 0xFF


# -- IQ2_XXS -------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def _quantize_iq2_xxs(x, qw, out, grid, rec_off, rec):
    nrows, n = x.shape
    nbl = n // QK_K
    weight = np.empty(32, np.float32)
    d2 = np.empty(4096, np.float32)
    waux = np.empty(32, np.float32)
    xval = np.empty(32, np.float32)
    L = np.zeros(32, np.uint8)
    Laux = np.zeros(32, np.uint8)
    scales = np.empty(8, np.float32)
    signs = np.empty(4, np.int64)
    q2 = np.empty(16, np.int64)
    three = _F32(3.0)
    for r in range(nrows):
        for ibl in range(nbl):
            xbl = x[r, ibl * QK_K:(ibl + 1) * QK_K]
            ob = ibl * 66
            q2[:] = 0
            max_scale = _F32(0.0)
            sigma2 = _sumx2(xbl) / _F32(QK_K)
            for ib in range(8):
                xb = xbl[32 * ib:32 * ib + 32]
                qo = QK_K * ibl + 32 * ib
                for i in range(32):
                    weight[i] = qw[qo + i] * np.sqrt(sigma2 + xb[i] * xb[i])
                for i in range(32):
                    waux[i] = np.sqrt(weight[i])
                for k in range(4):
                    signs[k] = _signs8(xb, 8 * k, weight, xval, True)
                mx = xval[0]
                for i in range(1, 32):
                    mx = mx if mx > xval[i] else xval[i]
                if mx < _GROUP_MAX_EPS:
                    scales[ib] = _F32(0.0)
                    continue
                scale = _make_qp_quants(_I(32), _I(4), xval, weight, _I(0), L)
                eff_max = scale * three
                if eff_max <= _F32(0.0):
                    scales[ib] = _F32(0.0)
                    continue
                best = _F32(0.0)
                for k_is in range(-6, 7):
                    idv = (_F32(5.0) + _F32(k_is) * _F32(0.1)) / eff_max
                    this_scale = _F32(1.0) / idv
                    for k in range(4):
                        _quant_group(xval, waux, 8 * k, idv, this_scale, Laux, rec_off, rec, grid, d2)
                    sumqx, sumq2 = _sum_q(weight, xval, Laux, 32)
                    if sumq2 > _F32(0.0) and sumqx * sumqx > best * sumq2:
                        scale = sumqx / sumq2
                        best = scale * sumqx
                        L[:] = Laux
                if scale > _F32(0.0):
                    idv = _F32(1.0) / scale
                    for k in range(4):
                        _quant_group(xval, waux, 8 * k, idv, scale, L, rec_off, rec, grid, d2)
                    sumqx, sumq2 = _sum_q(weight, xval, L, 32)
                    if sumq2 > _F32(0.0):
                        scale = sumqx / sumq2
                if scale < _F32(0.0):
                    scale = -scale
                    for k in range(4):
                        signs[k] = (~signs[k]) & 127
                for k in range(4):
                    q2[2 * ib] |= _grid_index(L, 8 * k, rec_off) << (8 * k)
                    q2[2 * ib + 1] |= signs[k] << (7 * k)
                scales[ib] = scale
                max_scale = max_scale if max_scale > scale else scale
            if not max_scale:
                for i in range(66):
                    out[r, ob + i] = 0
                continue
            d = max_scale / _F32(31.0)
            store_f16(out[r], ob, d)
            idv = _F32(1.0) / d
            for ib in range(8):
                l = _ni(_F32(0.5) * (idv * scales[ib] - _F32(1.0)))
                l = 0 if l < 0 else (15 if l > 15 else l)
                q2[2 * ib + 1] |= l << 28
            for j in range(16):
                _put_u32(out, r, ob + 2 + 4 * j, q2[j])


@njit(cache=True, nogil=True, error_model="numpy")
def _dequantize_iq2_xxs(q, out, dgrid, ksg):
    nrows, n = out.shape
    for r in range(nrows):
        for ibl in range(n // QK_K):
            ob = ibl * 66
            d = load_f16(q[r], ob)
            for ib in range(8):
                o = ob + 2 + 8 * ib
                a1 = (np.int64(q[r, o + 4]) | (np.int64(q[r, o + 5]) << 8) | (np.int64(q[r, o + 6]) << 16)
                      | (np.int64(q[r, o + 7]) << 24))
                db = d * (_F32(0.5) + _F32(a1 >> 28)) * _F32(0.25)
                for l in range(4):
                    gi = np.int64(q[r, o + l])
                    sg = np.int64(ksg[(a1 >> (7 * l)) & 127])
                    yo = ibl * QK_K + 32 * ib + 8 * l
                    for j in range(8):
                        v = db * dgrid[gi, j]
                        out[r, yo + j] = -v if (sg >> j) & 1 else v


# -- IQ2_XS / IQ2_S (16-weight sub-blocks) ----------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def _quantize_iq2_16(x, qw, out, grid, rec_off, rec, is_s):
    """quantize_row_iq2_xs_impl (is_s False, 74-byte blocks) / quantize_row_iq2_s_impl (82)."""
    nrows, n = x.shape
    nbl = n // QK_K
    bs = 82 if is_s else 74
    imat = qw.shape[0] > 0
    weight = np.empty(16, np.float32)
    d2 = np.empty(4096, np.float32)
    waux = np.empty(16, np.float32)
    xval = np.empty(16, np.float32)
    L = np.zeros(16, np.uint8)
    Laux = np.zeros(16, np.uint8)
    scales = np.empty(16, np.float32)
    signs = np.empty(2, np.int64)
    on_grid = np.empty(2, np.bool_)
    on_aux = np.empty(2, np.bool_)
    eps = _GROUP_MAX_EPS_IQ2_S if is_s else _GROUP_MAX_EPS
    for r in range(nrows):
        for ibl in range(nbl):
            xbl = x[r, ibl * QK_K:(ibl + 1) * QK_K]
            ob = ibl * bs
            for i in range(bs):
                out[r, ob + i] = 0
            max_scale = _F32(0.0)
            sumx2 = _sumx2(xbl)
            sigma2 = (_F32(2.0) * sumx2 if is_s else sumx2) / _F32(QK_K)
            for ib in range(16):
                xb = xbl[16 * ib:16 * ib + 16]
                qo = QK_K * ibl + 16 * ib
                if imat:
                    for i in range(16):
                        weight[i] = qw[qo + i] * np.sqrt(sigma2 + xb[i] * xb[i])
                else:
                    for i in range(16):
                        weight[i] = _F32(0.25) * sigma2 + xb[i] * xb[i]
                for i in range(16):
                    waux[i] = np.sqrt(weight[i])
                for k in range(2):
                    signs[k] = _signs8(xb, 8 * k, weight, xval, not is_s)
                mx = xval[0]
                for i in range(1, 16):
                    mx = mx if mx > xval[i] else xval[i]
                L[:] = 0
                if mx < eps:
                    scales[ib] = _F32(0.0)
                    continue
                best = _F32(0.0)
                scale = mx / _F32(5.0)
                on_grid[0] = True
                on_grid[1] = True
                for k_is in range(-9, 10):
                    idv = (_F32(5.0) + _F32(k_is) * _F32(0.1)) / mx
                    this_scale = _F32(1.0) / idv
                    for k in range(2):
                        on_aux[k] = _quant_group(xval, waux, 8 * k, idv, this_scale, Laux, rec_off, rec, grid, d2)
                    sumqx, sumq2 = _sum_q(weight, xval, Laux, 16)
                    if sumq2 > _F32(0.0) and sumqx * sumqx > best * sumq2:
                        scale = sumqx / sumq2
                        best = scale * sumqx
                        L[:] = Laux
                        on_grid[0] = on_aux[0]
                        on_grid[1] = on_aux[1]
                if (not on_grid[0] or not on_grid[1]) and scale > _F32(0.0):
                    idv = _F32(1.0) / scale
                    for k in range(2):
                        if not on_grid[k]:
                            _quant_group(xval, waux, 8 * k, idv, scale, L, rec_off, rec, grid, d2)
                    sumqx, sumq2 = _sum_q(weight, xval, L, 16)
                    if sumq2 > _F32(0.0):
                        scale = sumqx / sumq2
                if scale < _F32(0.0):
                    scale = -scale
                    for k in range(2):
                        signs[k] = (~signs[k]) & (255 if is_s else 127)
                for k in range(2):
                    gi = _grid_index(L, 8 * k, rec_off)
                    i8 = 2 * ib + k
                    if is_s:
                        out[r, ob + 2 + i8] = gi & 255
                        out[r, ob + 66 + i8 // 4] |= (gi >> 8) << (2 * (i8 % 4))
                        out[r, ob + 34 + i8] = signs[k]
                    else:
                        v = gi | (signs[k] << 9)
                        out[r, ob + 2 + 2 * i8] = v & 0xFF
                        out[r, ob + 3 + 2 * i8] = (v >> 8) & 0xFF
                scales[ib] = scale
                max_scale = max_scale if max_scale > scale else scale
            if not max_scale:
                if not is_s:
                    for i in range(64):
                        out[r, ob + 2 + i] = 0
                continue
            d = max_scale / _F32(31.0)
            store_f16(out[r], ob, d * _F32(0.9875) if is_s else d)
            idv = _F32(1.0) / d
            so = ob + (74 if is_s else 66)
            for ib in range(16):
                l = _ni(_F32(0.5) * (idv * scales[ib] - _F32(1.0)))
                l = 0 if l < 0 else (15 if l > 15 else l)
                if ib % 2 == 0:
                    out[r, so + ib // 2] = l
                else:
                    out[r, so + ib // 2] |= l << 4


@njit(cache=True, nogil=True, error_model="numpy")
def _dequantize_iq2_16(q, out, dgrid, ksg, is_s):
    nrows, n = out.shape
    bs = 82 if is_s else 74
    for r in range(nrows):
        for ibl in range(n // QK_K):
            ob = ibl * bs
            d = load_f16(q[r], ob)
            so = ob + (74 if is_s else 66)
            for ib in range(8):
                sc = np.int64(q[r, so + ib])
                db0 = d * (_F32(0.5) + _F32(sc & 0xF)) * _F32(0.25)
                db1 = d * (_F32(0.5) + _F32(sc >> 4)) * _F32(0.25)
                for l in range(4):
                    dl = db0 if l < 2 else db1
                    if is_s:
                        qh = np.int64(q[r, ob + 66 + ib])
                        gi = np.int64(q[r, ob + 2 + 4 * ib + l]) | ((qh << (8 - 2 * l)) & 0x300)
                        sg = np.int64(q[r, ob + 34 + 4 * ib + l])
                    else:
                        v = np.int64(q[r, ob + 2 + 8 * ib + 2 * l]) | (np.int64(q[r, ob + 3 + 8 * ib + 2 * l]) << 8)
                        gi = v & 511
                        sg = np.int64(ksg[v >> 9])
                    yo = ibl * QK_K + 32 * ib + 8 * l
                    for j in range(8):
                        v2 = dl * dgrid[gi, j]
                        out[r, yo + j] = -v2 if (sg >> j) & 1 else v2


# -- table entries (thin wrappers passing the cached tables) ------------------------------------
def need_imatrix(qw, name: str) -> None:
    """llama.cpp aborts on IQ2_XXS, IQ2_XS and IQ1_S without importance weights; we raise."""
    if qw.shape[0] == 0:
        raise PlanError(f"{name} needs an importance matrix (imatrix), as in llama.cpp")


def quantize_iq2_xxs(x, qw, out):
    need_imatrix(qw, "IQ2_XXS")
    _quantize_iq2_xxs(x, qw, out, *encoder_tables("iq2xxs"))


def dequantize_iq2_xxs(q, out):
    _dequantize_iq2_xxs(q, out, decode_grid("iq2xxs"), ksigns())


def quantize_iq2_xs(x, qw, out):
    need_imatrix(qw, "IQ2_XS")
    _quantize_iq2_16(x, qw, out, *encoder_tables("iq2xs"), False)


def dequantize_iq2_xs(q, out):
    _dequantize_iq2_16(q, out, decode_grid("iq2xs"), ksigns(), False)


def quantize_iq2_s(x, qw, out):
    _quantize_iq2_16(x, qw, out, *encoder_tables("iq2s"), True)


def dequantize_iq2_s(q, out):
    _dequantize_iq2_16(q, out, decode_grid("iq2s"), ksigns(), True)


KERNELS = {
    T.IQ2_XXS: (quantize_iq2_xxs, dequantize_iq2_xxs),
    T.IQ2_XS: (quantize_iq2_xs, dequantize_iq2_xs),
    T.IQ2_S: (quantize_iq2_s, dequantize_iq2_s),
}
