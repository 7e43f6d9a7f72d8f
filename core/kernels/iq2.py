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

Speed: the codes of all trial scales of a sub-block are computed first, in one flat loop
that LLVM vectorizes (the same float32 operations element by element); each trial then
only looks its codes up and searches the neighbours of those off the grid. Each off-grid
code's candidates sit in one contiguous record (``_iqgrid.encoder_tables``), transposed and
padded to a multiple of 8, and their distances are computed side by side
(``_iqgrid.record_best``), each candidate's sum still in the C order; the first strict
minimum is then picked as the C loop picks it. IQ2_XS / IQ2_S: consecutive trial scales mostly
give a group the same code (82 % of trials on 4096-wide t-distributed rows), so a code's record
gets its candidates' moments once and later trials pick the winner from those in float64 with
a proven error margin (``_iqgrid.record_best_again``: the C float32 sums only on near-ties), and a
trial whose grid points equal the previous trial's reuses its sums. All float arithmetic that
decides an output is float32 in the C code's order (no FMA), ``nearest_int`` is ggml's bit trick.
"""
from __future__ import annotations

import numpy as np
from numba import njit
from gguf.constants import GGMLQuantizationType as T

from ..errors import PlanError
from ._iqgrid import decode_grid, encoder_tables, ksigns, record_best, record_best_again, record_moments
from .floats import load_f16, store_f16
from .kquants import _make_qp_quants, _nint_f

_F32 = np.float32
_I = np.int64
_U64 = np.uint64
QK_K = 256
_GROUP_MAX_EPS = np.float32(1e-15)
_GROUP_MAX_EPS_IQ2_S = np.float32(1e-8)


# -- shared steps --------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _ni(v):
    """ggml's nearest_int(v) (the bit trick, any float32 v) as an int64."""
    return np.int64(_nint_f(v))


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _codes(xval, xo, n, idv, La, lo):
    """La[lo:lo+n] = clamp(nearest_int((id*x - 1)/2), 0, 2) of xval[xo:xo+n], in int32 so that
    the loop vectorizes (the bit trick's result always fits)."""
    xu = _U64(xo)
    lu = _U64(lo)
    for i in range(_U64(n)):  # unsigned indices: no negative-index wraparound
        l = np.int32(_nint_f(_F32(0.5) * (idv * xval[xu + i] - _F32(1.0))))
        La[lu + i] = max(np.int32(0), min(np.int32(2), l))


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _code_u(La, lo):
    """The 16-bit code of the 8 2-bit values at La[lo] (value i in bits 2i)."""
    u = 0
    for i in range(8):
        u |= (np.int64(La[lo + i]) & 0xFF) << (2 * i)
    return u


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _resolve(xval, waux, xo, scale, La, lo, rec_off, rec, grid, d2):
    """When the code at La[lo:lo+8] (of the group xval[xo:xo+8]) is off the grid, replace it by
    the coordinates of its best neighbour. Returns True when it was on the grid."""
    r = np.int64(rec_off[_code_u(La, lo)])
    if r < 0:
        return True
    gi = record_best(rec, r, xval, xo, waux, xo, scale, _F32(0.0), False, d2)  # iq2_find_best_neighbour
    if gi < 0:  # llama.cpp aborts here (NaN); keep going with point 0
        gi = 0
    for i in range(8):
        La[lo + i] = (np.int64(grid[gi, i]) - 1) // 2
    return False


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _quant_group(xval, waux, o, idv, scale, L, rec_off, rec, grid, d2):
    """L[o:o+8] = the codes of the group at o for 1/scale = idv, moved to the best neighbouring
    grid point when off the grid. Returns True when on the grid."""
    _codes(xval, o, 8, idv, L, o)
    return _resolve(xval, waux, o, scale, L, o, rec_off, rec, grid, d2)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _trial_codes(xval, n, mx, k0, nt, idvs, xrep, idrep, Lt):
    """The codes of every trial scale at once: trial t has id = (5 + (k0 + t)*0.1)/mx, kept in
    idvs[t], and its n codes at Lt[n*t]. One flat loop over (x, id) pairs laid out in xrep and
    idrep, which LLVM vectorizes (the same float32 operations, element by element)."""
    for t in range(nt):
        idv = (_F32(5.0) + _F32(k0 + t) * _F32(0.1)) / mx
        idvs[t] = idv
        for i in range(n):
            xrep[n * t + i] = xval[i]
            idrep[n * t + i] = idv
    for j in range(_U64(n * nt)):
        l = np.int32(_nint_f(_F32(0.5) * (idrep[j] * xrep[j] - _F32(1.0))))
        Lt[j] = max(np.int32(0), min(np.int32(2), l))


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _grid_index(L, o, rec_off):
    """Grid index of the code L[o:o+8] (0 where llama.cpp would abort: off the grid)."""
    u = _code_u(L, o)
    if u >= rec_off.shape[0] or rec_off[u] >= 0:
        return 0
    return -np.int64(rec_off[u]) - 1


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _group_bound(xval, w, o, bounds, bo):
    """(sum w, sum w*x, sum w*x^2) of the group at o, for record_best_again's error bound."""
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    for i in range(8):
        wi = np.float64(w[o + i])
        xi = np.float64(xval[o + i])
        s0 += wi
        s1 += wi * xi
        s2 += wi * xi * xi
    bounds[bo] = s0
    bounds[bo + 1] = s1
    bounds[bo + 2] = s2


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
def _sum_q(weight, xval, L, lo, n):
    """(sumqx, sumq2) of q = 2*L[lo:lo+n] + 1 in C order."""
    sumqx = _F32(0.0)
    sumq2 = _F32(0.0)
    for i in range(n):
        w = weight[i]
        q = _F32(2 * L[lo + i] + 1)
        sumqx += w * xval[i] * q
        sumq2 += w * q * q
    return sumqx, sumq2


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _refit(weight, xval, L, n, scale):
    """The least-squares scale sumqx/sumq2 of the final codes L[:n] (scale kept if sumq2 <= 0)."""
    sumqx, sumq2 = _sum_q(weight, xval, L, 0, n)
    return sumqx / sumq2 if sumq2 > _F32(0.0) else scale


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _positive_scale(scale, signs, ng, mask):
    """A negative scale made positive, the sign bits of the ng groups flipped instead."""
    if scale < _F32(0.0):
        scale = -scale
        for k in range(ng):
            signs[k] = (~signs[k]) & mask
    return scale


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
                    sumqx, sumq2 = _sum_q(weight, xval, Laux, 0, 32)
                    if sumq2 > _F32(0.0) and sumqx * sumqx > best * sumq2:
                        scale = sumqx / sumq2
                        best = scale * sumqx
                        L[:] = Laux
                if scale > _F32(0.0):
                    idv = _F32(1.0) / scale
                    for k in range(4):
                        _quant_group(xval, waux, 8 * k, idv, scale, L, rec_off, rec, grid, d2)
                    scale = _refit(weight, xval, L, 32, scale)
                scale = _positive_scale(scale, signs, 4, 127)
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
    Lt = np.zeros(19 * 16, np.int32)
    idvs = np.empty(19, np.float32)
    xrep = np.empty(19 * 16, np.float32)
    idrep = np.empty(19 * 16, np.float32)
    scales = np.empty(16, np.float32)
    signs = np.empty(2, np.int64)
    on_grid = np.empty(2, np.bool_)
    on_aux = np.empty(2, np.bool_)
    pu = np.empty(2, np.int64)        # per group: the previous trial's code, its rec_off, its grid point
    pr = np.empty(2, np.int64)
    pg = np.empty(2, np.int64)
    A = np.empty(1024, np.float64)    # per group: the moments of its current record's candidates
    B = np.empty(1024, np.float64)
    vals = np.empty(512, np.float64)
    bounds = np.empty(6, np.float64)
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
                _trial_codes(xval, 16, mx, -9, 19, idvs, xrep, idrep, Lt)
                for k in range(2):
                    _group_bound(xval, waux, 8 * k, bounds, 3 * k)
                bt = -1
                pu[0] = -1
                pu[1] = -1
                sumqx = _F32(0.0)
                sumq2 = _F32(0.0)
                for t in range(19):
                    this_scale = _F32(1.0) / idvs[t]
                    same = t > 0
                    for k in range(2):
                        lo = 16 * t + 8 * k
                        u = _code_u(Lt, lo)
                        if u != pu[k]:  # a new code: its record's moments, for this and the next trials
                            pu[k] = u
                            pr[k] = rec_off[u]
                            if pr[k] >= 0:
                                record_moments(rec, pr[k], xval, 8 * k, waux, 8 * k, A, B, 512 * k)
                        if pr[k] < 0:
                            gi = -np.int64(pr[k]) - 1
                            on_aux[k] = True
                        else:
                            gi = record_best_again(rec, pr[k], xval, 8 * k, waux, 8 * k, this_scale, d2, vals,
                                                   A, B, 512 * k, bounds[3 * k:3 * k + 3])
                            gi = 0 if gi < 0 else gi  # llama.cpp aborts here (NaN); keep going with point 0
                            for i in range(8):
                                Lt[lo + i] = (np.int64(grid[gi, i]) - 1) // 2
                            on_aux[k] = False
                        same = same and gi == pg[k]
                        pg[k] = gi
                    if not same:  # the same grid points as the trial before: the same sums
                        sumqx, sumq2 = _sum_q(weight, xval, Lt, 16 * t, 16)
                    if sumq2 > _F32(0.0) and sumqx * sumqx > best * sumq2:
                        scale = sumqx / sumq2
                        best = scale * sumqx
                        bt = t
                        on_grid[0] = on_aux[0]
                        on_grid[1] = on_aux[1]
                if bt >= 0:
                    L[:] = Lt[16 * bt:16 * bt + 16]
                if (not on_grid[0] or not on_grid[1]) and scale > _F32(0.0):
                    idv = _F32(1.0) / scale
                    for k in range(2):
                        if not on_grid[k]:
                            _quant_group(xval, waux, 8 * k, idv, scale, L, rec_off, rec, grid, d2)
                    scale = _refit(weight, xval, L, 16, scale)
                scale = _positive_scale(scale, signs, 2, 255 if is_s else 127)
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
