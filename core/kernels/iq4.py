"""IQ4_NL and IQ4_XS: 4-bit non-linear quants, byte-identical to llama.cpp.

``ggml_quantize_chunk`` runs ``quantize_iq4_nl`` / ``quantize_iq4_xs`` (ggml-quants.c) with
or without importance weights; both call ``quantize_row_iq4_nl_impl`` with ``ntry = 7``
on the ``kvalues_iq4nl`` codebook (16 signed levels, -127 .. 113):

- per 32-weight block: weights ``x*x`` (or ``qw * sqrt(sigma2 + x*x)``, ``sigma2`` twice
  the super-block's mean square), a first scale ``max / 127`` and 15 trial scales
  ``(itry - 127) / max``; each trial maps ``x * id`` to the nearest level
  (``best_index_int8``) and keeps the weighted least-squares scale that is best;
- IQ4_NL (blocks of 32) stores that scale as fp16 and re-maps with its inverse;
- IQ4_XS (super-blocks of 256) stores ``d = -max_scale / 32`` as fp16 and each block's
  scale as a 6-bit ``nearest_int(scale / d)`` (clamped to -32..31, stored + 32), then
  re-maps every block with ``d * l``.

Block layouts (little-endian fp16 ``d``): IQ4_NL ``d qs[16]`` (18 B); IQ4_XS
``d scales_h(u16) scales_l[4] qs[128]`` (136 B), block ``ib``'s 6-bit scale is nibble
``ib % 2`` of ``scales_l[ib / 2]`` plus bits ``2 ib, 2 ib + 1`` of ``scales_h`` on top.
In ``qs`` (16 bytes per block of 32) nibble ``j`` holds weight ``j`` (low) and ``j + 16``
(high), both as indices into ``kvalues_iq4nl``.

All arithmetic is float32 in the C code's order; ``nearest_int`` is ggml's bit trick
(``kquants._nint``). Speed: ``best_index_int8`` (a binary search in C) is a branch-free count
of the midpoints between levels that ``x`` is not below, which picks the same level for every
float32 (NaN included; checked exhaustively), and the 16 trial scales of a block are
searched for 16 blocks at once (one lane each, blocks taken in row-major order across rows,
so an IQ4_XS group is two whole super-blocks): the inner loops run over the lanes and
vectorize, while each lane sums over its 32 weights in C order and makes the C code's choices.
"""
from __future__ import annotations

import numpy as np
from numba import njit
from gguf.constants import GGMLQuantizationType as T

from .floats import load_f16, store_f16
from .kquants import _nint

_F32 = np.float32
QK_K = 256
_GROUP_MAX_EPS = np.float32(1e-15)
KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int8)
_KV = KVALUES_IQ4NL.astype(np.float32)
_MID = ((_KV[:-1].astype(np.float64) + _KV[1:]) / 2).astype(np.float32)  # midpoints between levels
_STEP = np.concatenate([_KV[:1], np.diff(_KV)]).astype(np.float32)      # kvalue[0], then the steps
_NTRY = 7
_NL = 16  # blocks of 32 searched together (lanes); a multiple of 8, so IQ4_XS super-blocks stay whole


# -- best_index_int8 ---------------------------------------------------------------------
# The C binary search picks the level nearer to x (the upper one on a tie, NaN giving 15). Near
# a midpoint its two float32 differences x - lo, hi - x are exact, so the level is the number of
# midpoints x is not below; its value kvalues[0] plus the steps passed (exact small integers).
# Both checked equal to the C function for all 2**32 float32 inputs.
@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _level(al, mid):
    c = np.int32(0)
    for k in range(15):
        c += np.int32(0) if al < mid[k] else np.int32(1)
    return c


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _level_value(al, mid, step):
    q = step[0]
    for k in range(15):
        q += _F32(0.0) if al < mid[k] else step[k + 1]
    return q


# -- scale search, one lane per block of 32 ------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def _load_lanes(x, qw, imat, g0, nl, n, sbs, xt, wt):
    """xt[j, c] = weight j of block g0 + c (blocks of 32 numbered row-major over x), wt[j, c] its
    weight: x*x, or qw * sqrt(sigma2 + x*x) with sigma2 twice the mean square of its super-block
    of sbs values (32 for IQ4_NL, 256 for IQ4_XS) summed in C order. Lanes past nl get zeros."""
    nb = n // 32
    sig = _F32(0.0)
    for c in range(nl):
        g = g0 + c
        r = g // nb
        o = (g - r * nb) * 32
        xr = x[r]
        if imat and o % sbs == 0:
            s0 = o
            sig = _F32(0.0)
            for j in range(sbs):
                sig += xr[s0 + j] * xr[s0 + j]
            sig *= _F32(2.0) / _F32(sbs)
        for j in range(32):
            v = xr[o + j]
            xt[j, c] = v
            wt[j, c] = qw[o + j] * np.sqrt(sig + v * v) if imat else v * v
    for c in range(nl, _NL):
        for j in range(32):
            xt[j, c] = _F32(0.0)
            wt[j, c] = _F32(0.0)


@njit(cache=True, nogil=True, error_model="numpy")
def _lane_scales(xt, wt, mid, step, V, scales):
    """scales[c] = the scale quantize_row_iq4_nl_impl (ntry 7) finds for lane c's block: the
    least-squares scale of the best of its 16 trial inverse scales, 0 below GROUP_MAX_EPS.
    V: float32 (7, _NL) scratch (amax, max, id, sumqx, sumq2, d, best)."""
    amax, mx, idd, sqx, sq2, d, best = V[0], V[1], V[2], V[3], V[4], V[5], V[6]
    for c in range(_NL):  # lane by lane: the first |x| maximum and its signed value
        a0 = _F32(0.0)
        m0 = _F32(0.0)
        for j in range(32):
            v = xt[j, c]
            if abs(v) > a0:
                a0 = abs(v)
                m0 = v
        amax[c] = a0
        mx[c] = m0
    for t in range(2 * _NTRY + 2):
        for c in range(_NL):
            idd[c] = _F32(1.0) / (-mx[c] / _F32(-127.0)) if t == 0 else _F32(t - 1 - _NTRY - 127) / mx[c]
            sqx[c] = _F32(0.0)
            sq2[c] = _F32(0.0)
        for j in range(32):
            for c in range(_NL):
                v = xt[j, c]
                q = _level_value(idd[c] * v, mid, step)
                wq = wt[j, c] * q
                sqx[c] += wq * v
                sq2[c] += wq * q
        for c in range(_NL):
            if t == 0:
                d[c] = sqx[c] / sq2[c] if sq2[c] > _F32(0.0) else _F32(0.0)
                best[c] = d[c] * sqx[c]
            elif sq2[c] > _F32(0.0) and sqx[c] * sqx[c] > best[c] * sq2[c]:
                d[c] = sqx[c] / sq2[c]
                best[c] = d[c] * sqx[c]
    for c in range(_NL):
        scales[c] = _F32(0.0) if amax[c] < _GROUP_MAX_EPS else d[c]


@njit(cache=True, nogil=True, error_model="numpy")
def _map_block(xt, c, idl, mid, out, r, ob):
    """Levels of lane c's block at inverse scale idl, packed as qs at out[r, ob:ob+16]."""
    for j in range(16):
        out[r, ob + j] = _level(idl * xt[j, c], mid) | (_level(idl * xt[16 + j, c], mid) << 4)


@njit(cache=True, nogil=True, error_model="numpy")
def _scratch():
    return (np.empty((32, _NL), np.float32), np.empty((32, _NL), np.float32), np.empty((7, _NL), np.float32),
            np.empty(_NL, np.float32), _MID.copy(), _STEP.copy())


# -- IQ4_NL ------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def quantize_iq4_nl(x, qw, out):
    """quantize_iq4_nl: blocks of 32, one fp16 scale each (the searched scale)."""
    nrows, n = x.shape
    nb = n // 32
    imat = qw.shape[0] > 0
    xt, wt, V, scales, mid, step = _scratch()
    total = nrows * nb
    for g0 in range(0, total, _NL):
        nl = min(_NL, total - g0)
        _load_lanes(x, qw, imat, g0, nl, n, 32, xt, wt)
        _lane_scales(xt, wt, mid, step, V, scales)
        for c in range(nl):
            r = (g0 + c) // nb
            ob = ((g0 + c) - r * nb) * 18
            s = scales[c]
            store_f16(out[r], ob, s)
            _map_block(xt, c, _F32(1.0) / s if s != _F32(0.0) else _F32(0.0), mid, out, r, ob + 2)


@njit(cache=True, nogil=True, error_model="numpy")
def dequantize_iq4_nl(q, out):
    nrows, n = out.shape
    kv = _KV
    for r in range(nrows):
        for b in range(n // 32):
            ob = 18 * b
            d = load_f16(q[r], ob)
            for j in range(16):
                c = q[r, ob + 2 + j]
                out[r, 32 * b + j] = d * kv[c & 0xF]
                out[r, 32 * b + 16 + j] = d * kv[c >> 4]


# -- IQ4_XS ------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def _xs_finish(xt, c0, scales, mid, out, r, ob):
    """The super-block of lanes c0..c0+7: fp16 d = -max_scale / 32, the 6-bit block scales
    nearest_int(scale / d) (clamped to -32..31, stored + 32) and every block's levels at d * l."""
    max_scale = _F32(0.0)
    amax_scale = _F32(0.0)
    for ib in range(8):
        s = scales[c0 + ib]
        if abs(s) > amax_scale:
            amax_scale = abs(s)
            max_scale = s
    d = -max_scale / _F32(32.0)
    store_f16(out[r], ob, d)
    idd = _F32(1.0) / d if d != _F32(0.0) else _F32(0.0)
    sh = 0
    for ib in range(8):
        l = max(-32, min(31, _nint(idd * scales[c0 + ib])))
        dl = d * _F32(l)
        _map_block(xt, c0 + ib, _F32(1.0) / dl if dl != _F32(0.0) else _F32(0.0), mid, out, r, ob + 8 + 16 * ib)
        l += 32
        if ib % 2 == 0:
            out[r, ob + 4 + ib // 2] = l & 0xF
        else:
            out[r, ob + 4 + ib // 2] |= (l & 0xF) << 4
        sh |= (l >> 4) << (2 * ib)
    out[r, ob + 2] = sh & 0xFF
    out[r, ob + 3] = sh >> 8


@njit(cache=True, nogil=True, error_model="numpy")
def quantize_iq4_xs(x, qw, out):
    """quantize_iq4_xs: super-blocks of 256, fp16 d and 6-bit block scales."""
    nrows, n = x.shape
    nb = n // 32
    imat = qw.shape[0] > 0
    xt, wt, V, scales, mid, step = _scratch()
    total = nrows * nb
    for g0 in range(0, total, _NL):
        nl = min(_NL, total - g0)
        _load_lanes(x, qw, imat, g0, nl, n, QK_K, xt, wt)
        _lane_scales(xt, wt, mid, step, V, scales)
        for c0 in range(0, nl, 8):
            r = (g0 + c0) // nb
            _xs_finish(xt, c0, scales, mid, out, r, ((g0 + c0) - r * nb) // 8 * 136)


@njit(cache=True, nogil=True, error_model="numpy")
def dequantize_iq4_xs(q, out):
    nrows, n = out.shape
    kv = _KV
    for r in range(nrows):
        for b in range(n // QK_K):
            ob = 136 * b
            d = load_f16(q[r], ob)
            sh = np.int64(q[r, ob + 2]) | (np.int64(q[r, ob + 3]) << 8)
            for ib in range(8):
                ls = ((np.int64(q[r, ob + 4 + ib // 2]) >> (4 * (ib % 2))) & 0xF) | (((sh >> (2 * ib)) & 3) << 4)
                dl = d * _F32(ls - 32)
                yo = QK_K * b + 32 * ib
                so = ob + 8 + 16 * ib
                for j in range(16):
                    c = q[r, so + j]
                    out[r, yo + j] = dl * kv[c & 0xF]
                    out[r, yo + 16 + j] = dl * kv[c >> 4]


# GGUF type -> (quantize, dequantize): the registry (core.kernels.get_kernel) reads this table.
KERNELS = {
    T.IQ4_NL: (quantize_iq4_nl, dequantize_iq4_nl),
    T.IQ4_XS: (quantize_iq4_xs, dequantize_iq4_xs),
}
