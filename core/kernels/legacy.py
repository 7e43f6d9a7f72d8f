"""Q8_0, Q4_0, Q4_1, Q5_0, Q5_1: blocks of 32 weights, byte-identical to llama.cpp.

Without importance weights each type follows ``quantize_row_<t>_ref`` (ggml-quants.c),
which is what ``ggml_quantize_chunk`` runs then. With them, Q4_0/Q5_0 follow
``quantize_row_q4_0_impl``/``q5_0_impl`` (``make_qx_quants``, rmse_type 1) and
Q4_1/Q5_1 ``quantize_row_q4_1_impl``/``q5_1_impl`` (``make_qkx3_quants``), with weights
``qw[j] * sqrt(sigma2 + x[j]**2)``, ``sigma2`` the row's mean square. Q8_0 ignores
them, as llama.cpp does.

Block layouts (little-endian fp16 ``d`` and ``m``, ``qh`` the fifth bits as uint32):
Q8_0 ``d qs[32]`` (34 B), Q4_0 ``d qs[16]`` (18 B), Q4_1 ``d m qs[16]`` (20 B),
Q5_0 ``d qh qs[16]`` (22 B), Q5_1 ``d m qh qs[16]`` (24 B); nibble ``j`` of ``qs``
holds weight ``j`` (low) and ``j + 16`` (high).

All arithmetic is float32 in the C code's order; the imatrix searches evaluate their
trial scales side by side (see ``_make_qx_quants``), which changes speed, not results.
Inputs with NaN or infinity are outside the contract (the C code converts them to
integers, which C leaves undefined).
"""
from __future__ import annotations

import numpy as np
from numba import njit
from gguf.constants import GGMLQuantizationType as T

from .floats import f32_bits, load_f16, store_f16

_F32 = np.float32
QK = 32
_FLT_MAX = np.float32(3.4028234663852886e38)
_GROUP_MAX_EPS = np.float32(1e-15)
_QX_LANES = 24
_K3_LANES = 16


# -- scalar helpers ----------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _roundf(v):
    """C roundf (half away from zero) of a float32 of moderate magnitude, as float32."""
    a = abs(v)
    r = np.floor(a)
    if a - r >= _F32(0.5):
        r += _F32(1.0)
    return r if v >= _F32(0.0) else -r


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _amax_signed(x, r, o):
    """Value of the first element of largest magnitude in x[r, o:o+32] (+0.0 if all zero)."""
    amax = _F32(0.0)
    mx = _F32(0.0)
    for j in range(QK):
        v = x[r, o + j]
        a = abs(v)
        if amax < a:
            amax = a
            mx = v
    return mx


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _min_max(x, r, o):
    mn = _FLT_MAX
    mx = -_FLT_MAX
    for j in range(QK):
        v = x[r, o + j]
        if v < mn:
            mn = v
        if v > mx:
            mx = v
    return mn, mx


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _put_u32(out, r, o, v):
    out[r, o] = v & 0xFF
    out[r, o + 1] = (v >> 8) & 0xFF
    out[r, o + 2] = (v >> 16) & 0xFF
    out[r, o + 3] = (v >> 24) & 0xFF


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _get_u32(q, r, o):
    return (np.int64(q[r, o]) | (np.int64(q[r, o + 1]) << 8) | (np.int64(q[r, o + 2]) << 16)
            | (np.int64(q[r, o + 3]) << 24))


@njit(cache=True, nogil=True, error_model="numpy")
def _row_weights(x, r, qw, w):
    """w[:] = qw * sqrt(sigma2 + x**2) for row r, as the *_impl functions (one row at a time)."""
    n = x.shape[1]
    s = _F32(0.0)
    for j in range(n):
        s += x[r, j] * x[r, j]
    sigma2 = s / _F32(n)
    for j in range(n):
        w[j] = qw[j] * np.sqrt(sigma2 + x[r, j] * x[r, j])


@njit(cache=True, nogil=True, error_model="numpy")
def _make_qx_quants(x, r, o, nmax, w, L, S):
    """make_qx_quants(32, nmax, x, L, rmse_type=1, qw=w[o:]) -> scale; L in [0, 2*nmax).

    The C code tries its first guess and then 18 scales one after another; their sums
    do not depend on each other, so all 19 are accumulated together here (lanes of
    ``S``, float32 (3, _QX_LANES) scratch), each in the C code's order, and the
    sequential choice is replayed on the results.
    """
    mx = _amax_signed(x, r, o)
    if abs(mx) < _GROUP_MAX_EPS:
        for i in range(QK):
            L[i] = 0
        return _F32(0.0)
    fmax = _F32(nmax)
    S[0, 0] = -fmax / mx
    c = 1
    for k in range(-9, 10):
        if k != 0:
            S[0, c] = -(fmax + _F32(0.1) * _F32(k)) / mx
            c += 1
    for c in range(19, _QX_LANES):
        S[0, c] = S[0, 0]
    for c in range(_QX_LANES):
        S[1, c] = _F32(0.0)
        S[2, c] = _F32(0.0)
    lo = -fmax
    hi = fmax - _F32(1.0)
    for i in range(QK):
        v = x[r, o + i]
        wi = w[o + i]
        wv = wi * v
        for c in range(_QX_LANES):
            l = min(max(np.rint(S[0, c] * v), lo), hi)
            S[1, c] += wv * l
            S[2, c] += wi * l * l
    sumlx = S[1, 0]
    suml2 = S[2, 0]
    scale = sumlx / suml2 if suml2 != _F32(0.0) else _F32(0.0)
    best = scale * sumlx
    bi = 0
    for c in range(1, 19):
        sumlx = S[1, c]
        suml2 = S[2, c]
        if suml2 > _F32(0.0) and sumlx * sumlx > best * suml2:
            scale = sumlx / suml2
            best = scale * sumlx
            bi = c
    iscale = S[0, bi]
    for i in range(QK):
        L[i] = np.int32(min(max(np.rint(iscale * x[r, o + i]), lo), hi)) + nmax
    return scale


@njit(cache=True, nogil=True, error_model="numpy")
def _make_qkx3_quants(x, r, o, nmax, w, L, S):
    """make_qkx3_quants(32, nmax, x, w[o:], L, &the_min, Laux, -0.9, 0.05, 36, false).

    Returns (scale, mn), ``mn`` the value the C code's ``-the_min`` equals. The 37 trial
    scales run in batches of _K3_LANES lanes of ``S`` (float32 (8, _K3_LANES) scratch),
    each lane summing in the C code's order. A trial depends on earlier ones only
    through the minimum, so when an accepted trial moves the minimum the batch is cut
    there and the next one starts after it: the choices are exactly the C code's.
    """
    rmin = _F32(-0.9)
    rdelta = _F32(0.05)
    fnmax = _F32(nmax)
    zero = _F32(0.0)
    mn = x[r, o]
    mx = x[r, o]
    sum_w = w[o]
    sum_x = sum_w * x[r, o]
    for i in range(1, QK):
        v = x[r, o + i]
        if v < mn:
            mn = v
        if v > mx:
            mx = v
        wi = w[o + i]
        sum_w += wi
        sum_x += wi * v
    if mn > zero:
        mn = zero
    if mx <= mn:
        for i in range(QK):
            L[i] = 0
        return zero, mn
    iscale = fnmax / (mx - mn)
    scale = _F32(1.0) / iscale
    best_mad = zero
    for i in range(QK):
        v = x[r, o + i]
        l = min(max(np.rint(iscale * (v - mn)), zero), fnmax)
        diff = scale * l + mn - v
        best_mad += w[o + i] * (diff * diff)
    l_isc = iscale  # L is rebuilt from the accepted trial's iscale and minimum
    l_mn = mn
    k = 0
    while k < 37:
        rng = mx - mn
        for c in range(_K3_LANES):
            S[0, c] = (rmin + rdelta * _F32(k + c) + fnmax) / rng
            S[1, c] = zero
            S[2, c] = zero
            S[3, c] = zero
            S[6, c] = zero
        for i in range(QK):
            v = x[r, o + i]
            wi = w[o + i]
            t = v - mn
            for c in range(_K3_LANES):
                l = min(max(np.rint(S[0, c] * t), zero), fnmax)
                wl = wi * l
                S[1, c] += wl
                S[2, c] += wl * l
                S[3, c] += wl * v
        for c in range(_K3_LANES):
            sum_l = S[1, c]
            sum_l2 = S[2, c]
            sum_xl = S[3, c]
            D = sum_w * sum_l2 - sum_l * sum_l
            ts = (sum_w * sum_xl - sum_x * sum_l) / D
            tm = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if tm > zero:
                tm = zero
                ts = sum_xl / sum_l2
            S[4, c] = ts
            S[5, c] = tm
            S[7, c] = D
        for i in range(QK):
            v = x[r, o + i]
            wi = w[o + i]
            t = v - mn
            for c in range(_K3_LANES):
                l = min(max(np.rint(S[0, c] * t), zero), fnmax)
                diff = S[4, c] * l + S[5, c] - v
                S[6, c] += wi * (diff * diff)
        step = min(_K3_LANES, 37 - k)
        for c in range(step):
            if S[7, c] > zero and S[6, c] < best_mad:
                best_mad = S[6, c]
                scale = S[4, c]
                l_isc = S[0, c]
                l_mn = mn
                new_mn = S[5, c]
                if f32_bits(new_mn) != f32_bits(mn):
                    mn = new_mn
                    step = c + 1
                    break
        k += step
    for i in range(QK):
        L[i] = np.int32(min(max(np.rint(l_isc * (x[r, o + i] - l_mn)), zero), fnmax))
    return scale, mn


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _pack4(out, r, ob, L):
    for j in range(16):
        out[r, ob + j] = L[j] | (L[j + 16] << 4)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _pack5(out, r, ob, L):
    """qh (4 bytes) at ob, then qs (16 bytes)."""
    qh = 0
    for j in range(16):
        a = L[j]
        b = L[j + 16]
        out[r, ob + 4 + j] = (a & 0x0F) | ((b & 0x0F) << 4)
        qh |= ((a >> 4) & 1) << j
        qh |= ((b >> 4) & 1) << (j + 16)
    _put_u32(out, r, ob, qh)


# -- Q8_0 --------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def quantize_q8_0(x, qw, out):
    nrows, n = x.shape
    for r in range(nrows):
        for b in range(n // QK):
            o = b * QK
            ob = b * 34
            amax = _F32(0.0)
            for j in range(QK):
                a = abs(x[r, o + j])
                amax = amax if amax > a else a
            d = amax / _F32(127.0)
            idd = _F32(1.0) / d if d != _F32(0.0) else _F32(0.0)
            store_f16(out[r], ob, d)
            for j in range(QK):
                out[r, ob + 2 + j] = np.int32(_roundf(x[r, o + j] * idd)) & 0xFF


@njit(cache=True, nogil=True, error_model="numpy")
def dequantize_q8_0(q, out):
    nrows, n = out.shape
    for r in range(nrows):
        for b in range(n // QK):
            ob = b * 34
            d = load_f16(q[r], ob)
            for j in range(QK):
                out[r, b * QK + j] = _F32(np.int8(q[r, ob + 2 + j])) * d


# -- Q4_0 --------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def quantize_q4_0(x, qw, out):
    nrows, n = x.shape
    if qw.shape[0] == 0:
        for r in range(nrows):
            for b in range(n // QK):
                o = b * QK
                ob = b * 18
                d = _amax_signed(x, r, o) / _F32(-8.0)
                idd = _F32(1.0) / d if d != _F32(0.0) else _F32(0.0)
                store_f16(out[r], ob, d)
                for j in range(16):
                    q0 = np.uint8(min(np.trunc(x[r, o + j] * idd + _F32(8.5)), _F32(15.0)))
                    q1 = np.uint8(min(np.trunc(x[r, o + 16 + j] * idd + _F32(8.5)), _F32(15.0)))
                    out[r, ob + 2 + j] = q0 | (q1 << 4)
        return
    w = np.empty(n, dtype=np.float32)
    L = np.empty(QK, dtype=np.int32)
    S = np.empty((3, _QX_LANES), dtype=np.float32)
    for r in range(nrows):
        _row_weights(x, r, qw, w)
        for b in range(n // QK):
            d = _make_qx_quants(x, r, b * QK, 8, w, L, S)
            store_f16(out[r], b * 18, d)
            _pack4(out, r, b * 18 + 2, L)


@njit(cache=True, nogil=True, error_model="numpy")
def dequantize_q4_0(q, out):
    nrows, n = out.shape
    for r in range(nrows):
        for b in range(n // QK):
            ob = b * 18
            d = load_f16(q[r], ob)
            for j in range(16):
                v = np.int32(q[r, ob + 2 + j])
                out[r, b * QK + j] = _F32((v & 0x0F) - 8) * d
                out[r, b * QK + 16 + j] = _F32((v >> 4) - 8) * d


# -- Q4_1 --------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def quantize_q4_1(x, qw, out):
    nrows, n = x.shape
    if qw.shape[0] == 0:
        for r in range(nrows):
            for b in range(n // QK):
                o = b * QK
                ob = b * 20
                mn, mx = _min_max(x, r, o)
                d = (mx - mn) / _F32(15.0)
                idd = _F32(1.0) / d if d != _F32(0.0) else _F32(0.0)
                store_f16(out[r], ob, d)
                store_f16(out[r], ob + 2, mn)
                for j in range(16):
                    q0 = np.uint8(min(np.trunc((x[r, o + j] - mn) * idd + _F32(0.5)), _F32(15.0)))
                    q1 = np.uint8(min(np.trunc((x[r, o + 16 + j] - mn) * idd + _F32(0.5)), _F32(15.0)))
                    out[r, ob + 4 + j] = q0 | (q1 << 4)
        return
    w = np.empty(n, dtype=np.float32)
    L = np.empty(QK, dtype=np.int32)
    S = np.empty((8, _K3_LANES), dtype=np.float32)
    for r in range(nrows):
        _row_weights(x, r, qw, w)
        for b in range(n // QK):
            d, mn = _make_qkx3_quants(x, r, b * QK, 15, w, L, S)
            store_f16(out[r], b * 20, d)
            store_f16(out[r], b * 20 + 2, -(-mn))
            _pack4(out, r, b * 20 + 4, L)


@njit(cache=True, nogil=True, error_model="numpy")
def dequantize_q4_1(q, out):
    nrows, n = out.shape
    for r in range(nrows):
        for b in range(n // QK):
            ob = b * 20
            d = load_f16(q[r], ob)
            m = load_f16(q[r], ob + 2)
            for j in range(16):
                v = np.int32(q[r, ob + 4 + j])
                out[r, b * QK + j] = _F32(v & 0x0F) * d + m
                out[r, b * QK + 16 + j] = _F32(v >> 4) * d + m


# -- Q5_0 --------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def quantize_q5_0(x, qw, out):
    nrows, n = x.shape
    if qw.shape[0] == 0:
        for r in range(nrows):
            for b in range(n // QK):
                o = b * QK
                ob = b * 22
                d = _amax_signed(x, r, o) / _F32(-16.0)
                idd = _F32(1.0) / d if d != _F32(0.0) else _F32(0.0)
                store_f16(out[r], ob, d)
                qh = 0
                for j in range(16):
                    q0 = np.uint8(min(np.trunc(x[r, o + j] * idd + _F32(16.5)), _F32(31.0)))
                    q1 = np.uint8(min(np.trunc(x[r, o + 16 + j] * idd + _F32(16.5)), _F32(31.0)))
                    out[r, ob + 6 + j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4)
                    qh |= ((q0 >> 4) & 1) << j
                    qh |= ((q1 >> 4) & 1) << (j + 16)
                _put_u32(out, r, ob + 2, qh)
        return
    w = np.empty(n, dtype=np.float32)
    L = np.empty(QK, dtype=np.int32)
    S = np.empty((3, _QX_LANES), dtype=np.float32)
    for r in range(nrows):
        _row_weights(x, r, qw, w)
        for b in range(n // QK):
            d = _make_qx_quants(x, r, b * QK, 16, w, L, S)
            store_f16(out[r], b * 22, d)
            _pack5(out, r, b * 22 + 2, L)


@njit(cache=True, nogil=True, error_model="numpy")
def dequantize_q5_0(q, out):
    nrows, n = out.shape
    for r in range(nrows):
        for b in range(n // QK):
            ob = b * 22
            d = load_f16(q[r], ob)
            qh = _get_u32(q, r, ob + 2)
            for j in range(16):
                v = np.int64(q[r, ob + 6 + j])
                lo = (v & 0x0F) | (((qh >> j) & 1) << 4)
                hi = (v >> 4) | (((qh >> (j + 16)) & 1) << 4)
                out[r, b * QK + j] = _F32(lo - 16) * d
                out[r, b * QK + 16 + j] = _F32(hi - 16) * d


# -- Q5_1 --------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def quantize_q5_1(x, qw, out):
    nrows, n = x.shape
    if qw.shape[0] == 0:
        for r in range(nrows):
            for b in range(n // QK):
                o = b * QK
                ob = b * 24
                mn, mx = _min_max(x, r, o)
                d = (mx - mn) / _F32(31.0)
                idd = _F32(1.0) / d if d != _F32(0.0) else _F32(0.0)
                store_f16(out[r], ob, d)
                store_f16(out[r], ob + 2, mn)
                qh = 0
                for j in range(16):
                    q0 = np.uint8(np.trunc((x[r, o + j] - mn) * idd + _F32(0.5)))
                    q1 = np.uint8(np.trunc((x[r, o + 16 + j] - mn) * idd + _F32(0.5)))
                    out[r, ob + 8 + j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4)
                    qh |= ((q0 >> 4) & 1) << j
                    qh |= ((q1 >> 4) & 1) << (j + 16)
                _put_u32(out, r, ob + 4, qh)
        return
    w = np.empty(n, dtype=np.float32)
    L = np.empty(QK, dtype=np.int32)
    S = np.empty((8, _K3_LANES), dtype=np.float32)
    for r in range(nrows):
        _row_weights(x, r, qw, w)
        for b in range(n // QK):
            d, mn = _make_qkx3_quants(x, r, b * QK, 31, w, L, S)
            store_f16(out[r], b * 24, d)
            store_f16(out[r], b * 24 + 2, -(-mn))
            _pack5(out, r, b * 24 + 4, L)


@njit(cache=True, nogil=True, error_model="numpy")
def dequantize_q5_1(q, out):
    nrows, n = out.shape
    for r in range(nrows):
        for b in range(n // QK):
            ob = b * 24
            d = load_f16(q[r], ob)
            m = load_f16(q[r], ob + 2)
            qh = _get_u32(q, r, ob + 4)
            for j in range(16):
                v = np.int64(q[r, ob + 8 + j])
                lo = (v & 0x0F) | (((qh >> j) & 1) << 4)
                hi = (v >> 4) | (((qh >> (j + 16)) & 1) << 4)
                out[r, b * QK + j] = _F32(lo) * d + m
                out[r, b * QK + 16 + j] = _F32(hi) * d + m


# GGUF type -> (quantize, dequantize): the registry (core.kernels.get_kernel) reads this table.
KERNELS = {
    T.Q8_0: (quantize_q8_0, dequantize_q8_0),
    T.Q4_0: (quantize_q4_0, dequantize_q4_0),
    T.Q4_1: (quantize_q4_1, dequantize_q4_1),
    T.Q5_0: (quantize_q5_0, dequantize_q5_0),
    T.Q5_1: (quantize_q5_1, dequantize_q5_1),
}
