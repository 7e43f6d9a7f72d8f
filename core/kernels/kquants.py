"""Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (and Q8_K): super-blocks of 256, byte-identical to llama.cpp.

Without importance weights each type follows ``quantize_row_<t>_ref`` (ggml-quants.c),
which ``ggml_quantize_chunk`` runs then; with them, ``quantize_row_<t>_impl``:

- Q2_K: ``make_qkx2_quants`` (16 per sub-block, |x| weights, mean abs error) / with
  weights ``make_qkx3_quants`` then ``make_qp_quants`` for the 4-bit scales and mins.
- Q3_K: ``make_q3_quants`` / ``make_qx_quants`` twice (values, then the 6-bit scales).
- Q4_K, Q5_K: ``make_qkx2_quants`` / ``make_qkx3_quants`` then ``make_qp_quants``.
- Q6_K: ``make_qx_quants`` (the raw importance weights, no sigma2 term).

Q8_K (``quantize_row_q8_K_ref``) is the intermediate type of the K-quant dot products,
kept for tools; it is not offered for weights and ignores ``qw``.

Block layouts (fp16 little-endian ``d``/``dmin``): Q2_K ``scales[16] qs[64] d dmin`` (84 B),
Q3_K ``hmask[32] qs[64] scales[12] d`` (110 B), Q4_K ``d dmin scales[12] qs[128]`` (144 B),
Q5_K ``d dmin scales[12] qh[32] qs[128]`` (176 B), Q6_K ``ql[128] qh[64] scales[16] d``
(210 B), Q8_K ``d(f32) qs[256] bsums(i16)[16]`` (292 B).

All arithmetic is float32 in the C code's order; ``nearest_int`` is ggml's bit trick
exactly (any input, NaN and out-of-range included); fp16 as ggml (``floats.store_f16``).
Speed: the scale searches run on 32 sub-blocks at once (of 2 or 4 super-blocks, taken
in row-major order across rows), one lane each, so the inner loops vectorize while each
lane sums in C order and makes the C code's choices; see "scale searches" below.
"""
from __future__ import annotations

import numpy as np
from numba import njit
from gguf.constants import GGMLQuantizationType as T

from .floats import bits_f32, f16_bits_to_f32, f32_bits, load_f16, store_f16

_F32 = np.float32
_I = np.int64  # wraps constant arguments: literal ints would compile a helper once per value
_U32 = np.uint32
QK_K = 256
_GROUP_MAX_EPS = np.float32(1e-15)
_MAGIC = np.float32(12582912.0)  # 1.5 * 2**23, ggml's nearest_int


# -- scalar helpers ----------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _nint_f(v):
    """ggml's nearest_int(v) as a float32, for every float32 v (as the C bit trick)."""
    b = f32_bits(v + _MAGIC) & _U32(0x007FFFFF)
    return bits_f32(_U32(b | _U32(0x4B000000))) - _MAGIC


@njit(cache=True, nogil=True, error_model="numpy")
def _nint(v):
    """ggml's nearest_int(v) as an int."""
    return np.int64(f32_bits(v + _MAGIC) & _U32(0x007FFFFF)) - 0x00400000


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _clampf(l, lo, hi):
    """MAX(lo, MIN(hi, l)) on float32 integers."""
    t = hi if hi < l else l
    return lo if lo > t else t


@njit(cache=True, nogil=True, error_model="numpy")
def _i8(v):
    """C conversion of an int to int8 (wraps)."""
    return ((v + 128) & 0xFF) - 128


@njit(cache=True, nogil=True, error_model="numpy")
def _put_f16(out, r, off, f):
    """Store float32 f as fp16 at out[r, off]; returns the value it decodes to."""
    return f16_bits_to_f32(store_f16(out[r], off, f))


# -- scale searches, one lane per sub-block ---------------------------------------------------
# ``xt``/``wt`` hold sub-blocks' values/weights transposed to (n, nl): row i holds element i
# of each of the nl sub-blocks (of one or more super-blocks), so every inner loop runs over
# the sub-blocks (lanes) and vectorizes, while each lane still sums over i in the C code's
# order. The per-lane state lives in rows of ``V`` (float32 (_NV, nl) scratch). Lanes past
# the last super-block are filled with zeros and their results ignored.
_NV = 22
_LANES = 32  # sub-blocks searched together


@njit(cache=True, nogil=True, error_model="numpy")
def _load_lanes(xb, n, nsub, xt, c0):
    """xt[i, c0 + j] = xb[n * j + i] for the nsub sub-blocks of super-block xb."""
    for j in range(nsub):
        for i in range(n):
            xt[i, c0 + j] = xb[n * j + i]


@njit(cache=True, nogil=True, error_model="numpy")
def _zero_lanes(n, nsub, xt, wt, c0):
    for i in range(n):
        for j in range(nsub):
            xt[i, c0 + j] = _F32(0.0)
            wt[i, c0 + j] = _F32(0.0)


@njit(cache=True, nogil=True, error_model="numpy")
def _lane_amax(xt, amax, mx):
    """amax[c] = max |x|, mx[c] = the first x reaching it (0 if all are 0), per lane.
    Lane by lane: a running maximum kept in memory vectorizes into slow masked stores."""
    n = xt.shape[0]
    for c in range(xt.shape[1]):
        a0 = _F32(0.0)
        m0 = _F32(0.0)
        for i in range(n):
            v = xt[i, c]
            a = abs(v)
            if a > a0:
                a0 = a
                m0 = v
        amax[c] = a0
        mx[c] = m0


@njit(cache=True, nogil=True, error_model="numpy")
def _qkx_lanes(xt, wt, nmax, rmin, rdelta, nstep, use_mad, V, scales, mins):
    """make_qkx2_quants / make_qkx3_quants (the same search for the callers here) on every
    lane: scales[c] = the returned scale, mins[c] = *the_min. The L of lane c is
    clamp(nearest_int(V[15, c] * (x - V[16, c]))) when V[10, c] != 0, else 0 (_fill_qkx_l).

    The state an accepted trial replaces (min, best error, scale, and the iscale and
    min its L came from) is kept in two row sets, read from one and written to the
    other by turns, so the choice is a plain select (no masked stores)."""
    n = xt.shape[0]
    nl = xt.shape[1]
    zero = _F32(0.0)
    fn = _F32(nmax)
    mx = V[0]
    sw = V[1]
    sx = V[2]
    isc = V[3]
    s1 = V[4]
    s2 = V[5]
    s3 = V[6]
    err = V[7]
    ts = V[8]
    tm = V[9]
    act = V[10]
    dd = V[11]
    mn = V[12]  # set 0: rows 12..16 (mn, best, scale, lisc, lmn); set 1: rows 17..21
    best = V[13]
    scale = V[14]
    lisc = V[15]
    lmn = V[16]
    for c in range(nl):
        m0 = xt[0, c]
        m1 = m0
        for i in range(1, n):
            v = xt[i, c]
            if v < m0:
                m0 = v
            if v > m1:
                m1 = v
        mn[c] = zero if m0 > zero else m0
        mx[c] = m1
        sw[c] = wt[0, c]
        sx[c] = wt[0, c] * xt[0, c]
    for i in range(1, n):
        for c in range(nl):
            wi = wt[i, c]
            sw[c] += wi
            sx[c] += wi * xt[i, c]
    for c in range(nl):
        m = mn[c]
        act[c] = _F32(0.0) if mx[c] == m else _F32(1.0)
        isc[c] = fn / (mx[c] - m)
        scale[c] = _F32(1.0) / isc[c]
        best[c] = zero
        lisc[c] = isc[c]
        lmn[c] = m
    for i in range(n):
        for c in range(nl):
            v = xt[i, c]
            l = _clampf(_nint_f(isc[c] * (v - mn[c])), zero, fn)
            diff = scale[c] * l + mn[c] - v
            diff = abs(diff) if use_mad else diff * diff
            best[c] += wt[i, c] * diff
    for k in range(nstep + 1):
        r0 = 12 + 5 * (k & 1)
        w0 = 29 - r0
        mn = V[r0]
        num = rmin + rdelta * _F32(k) + fn
        for c in range(nl):
            isc[c] = num / (mx[c] - mn[c])
            s1[c] = zero
            s2[c] = zero
            s3[c] = zero
            err[c] = zero
        for i in range(n):
            for c in range(nl):
                v = xt[i, c]
                l = _clampf(_nint_f(isc[c] * (v - mn[c])), zero, fn)
                wl = wt[i, c] * l
                s1[c] += wl
                s2[c] += wl * l
                s3[c] += wl * v
        for c in range(nl):
            sum_l = s1[c]
            sum_l2 = s2[c]
            sum_xl = s3[c]
            D = sw[c] * sum_l2 - sum_l * sum_l
            a = (sw[c] * sum_xl - sx[c] * sum_l) / D
            b = (sum_l2 * sx[c] - sum_l * sum_xl) / D
            a2 = sum_xl / sum_l2
            pos = b > zero
            ts[c] = a2 if pos else a
            tm[c] = zero if pos else b
            dd[c] = D
        for i in range(n):
            for c in range(nl):
                v = xt[i, c]
                l = _clampf(_nint_f(isc[c] * (v - mn[c])), zero, fn)
                diff = ts[c] * l + tm[c] - v
                diff = abs(diff) if use_mad else diff * diff
                err[c] += wt[i, c] * diff
        best = V[r0 + 1]
        scale = V[r0 + 2]
        lisc = V[r0 + 3]
        lmn = V[r0 + 4]
        mn_w = V[w0]
        best_w = V[w0 + 1]
        scale_w = V[w0 + 2]
        lisc_w = V[w0 + 3]
        lmn_w = V[w0 + 4]
        for c in range(nl):  # every value loaded before the selects (no masked moves)
            e = err[c]
            b0 = best[c]
            m = mn[c]
            t_s = ts[c]
            t_m = tm[c]
            t_i = isc[c]
            sc0 = scale[c]
            li0 = lisc[c]
            lm0 = lmn[c]
            ok = (act[c] != zero) & (dd[c] > zero) & (e < b0)
            best_w[c] = e if ok else b0
            scale_w[c] = t_s if ok else sc0
            lisc_w[c] = t_i if ok else li0
            lmn_w[c] = m if ok else lm0
            mn_w[c] = t_m if ok else m
    r0 = 12 + 5 * ((nstep + 1) & 1)
    for j in range(5):
        if r0 != 12:
            for c in range(nl):
                V[12 + j, c] = V[r0 + j, c]
    mn = V[12]
    scale = V[14]
    for c in range(nl):
        sc0 = scale[c]
        scales[c] = sc0 if act[c] != zero else zero
        mins[c] = -mn[c]


@njit(cache=True, nogil=True, error_model="numpy")
def _fill_qkx_l(xb, n, j, c, nmax, V, L):
    """L of sub-block j (lane c) as _qkx_lanes left it."""
    fn = _F32(nmax)
    for i in range(n):
        l = _clampf(_nint_f(V[15, c] * (xb[n * j + i] - V[16, c])), _F32(0.0), fn)
        L[n * j + i] = np.int32(l) if V[10, c] != _F32(0.0) else 0


@njit(cache=True, nogil=True, error_model="numpy")
def _qx_lanes(xt, wt, nmax, V, scales):
    """make_qx_quants(n, nmax, x, L, rmse_type=1, w) on every lane: scales[c] = the scale.
    The L of lane c is clamp(nearest_int(V[7, c] * x)) + nmax when V[8, c] != 0, else 0.
    The chosen trial's state (scale, best, iscale) alternates between two row sets."""
    n = xt.shape[0]
    nl = xt.shape[1]
    zero = _F32(0.0)
    fn = _F32(nmax)
    lo = -fn
    hi = fn - _F32(1.0)
    amax = V[0]
    mx = V[1]
    isc = V[2]
    s1 = V[3]
    s2 = V[4]
    act = V[8]
    _lane_amax(xt, amax, mx)
    for c in range(nl):
        act[c] = _F32(0.0) if amax[c] < _GROUP_MAX_EPS else _F32(1.0)
    for t in range(19):
        if t == 0:
            num = _F32(-nmax)
        else:
            k = t - 10 if t <= 9 else t - 9  # -9..-1, 1..9
            num = -(fn + _F32(0.1) * _F32(k))
        for c in range(nl):
            isc[c] = num / mx[c]
            s1[c] = zero
            s2[c] = zero
        for i in range(n):
            for c in range(nl):
                v = xt[i, c]
                wi = wt[i, c]
                l = _clampf(_nint_f(isc[c] * v), lo, hi)
                s1[c] += wi * v * l
                s2[c] += wi * l * l
        r0 = 5 + 4 * (t & 1)   # set 0: rows 5..7 (scale, best, bisc); set 1: rows 9..11
        w0 = 14 - r0
        scale_w = V[w0]
        best_w = V[w0 + 1]
        bisc_w = V[w0 + 2]
        if t == 0:
            for c in range(nl):
                a1 = s1[c]
                a2 = s2[c]
                q = a1 / a2
                sc = q if a2 != zero else zero
                scale_w[c] = sc
                best_w[c] = sc * a1
                bisc_w[c] = isc[c]
        else:
            scale = V[r0]
            best = V[r0 + 1]
            bisc = V[r0 + 2]
            for c in range(nl):
                a1 = s1[c]
                a2 = s2[c]
                b0 = best[c]
                sc0 = scale[c]
                bi0 = bisc[c]
                t_i = isc[c]
                ok = (a2 > zero) & (a1 * a1 > b0 * a2)
                sc = a1 / a2
                scale_w[c] = sc if ok else sc0
                best_w[c] = sc * a1 if ok else b0
                bisc_w[c] = t_i if ok else bi0
    # 19 trials: the last (t = 18) wrote set 1 (rows 9..11); keep its iscale in row 7
    for c in range(nl):
        sc0 = V[9, c]
        V[7, c] = V[11, c]
        scales[c] = sc0 if act[c] != zero else zero


@njit(cache=True, nogil=True, error_model="numpy")
def _fill_qx_l(xb, n, j, c, nmax, V, L):
    """L of sub-block j (lane c) as _qx_lanes left it."""
    fn = _F32(nmax)
    for i in range(n):
        l = _clampf(_nint_f(V[7, c] * xb[n * j + i]), -fn, fn - _F32(1.0))
        L[n * j + i] = np.int32(l) + nmax if V[8, c] != _F32(0.0) else 0


@njit(cache=True, nogil=True, error_model="numpy")
def _q3_lanes(xt, nmax, V, Lt, scales):
    """make_q3_quants(n, nmax, x, L, do_rmse=true) on every lane: scales[c] = the scale,
    Lt[i, c] = L (with nmax added; 0 for an all-zero lane); Lt has 2n rows, the second
    half is scratch. The first refinement pass runs on all lanes together; most lanes
    change nothing in it and are done (as the C loop breaks), the others finish one at
    a time."""
    n = xt.shape[0]
    nl = xt.shape[1]
    zero = _F32(0.0)
    fn = _F32(nmax)
    lo = -fn
    hi = fn - _F32(1.0)
    amax = V[0]
    mx = V[1]
    isc = V[2]
    s1 = V[3]
    s2 = V[4]
    act = V[5]
    chg = V[6]
    _lane_amax(xt, amax, mx)
    for c in range(nl):
        act[c] = _F32(0.0) if amax[c] < _GROUP_MAX_EPS else _F32(1.0)
        isc[c] = _F32(-nmax) / mx[c]
        s1[c] = zero
        s2[c] = zero
        chg[c] = zero
    for i in range(n):
        for c in range(nl):
            v = xt[i, c]
            l = _clampf(_nint_f(isc[c] * v), lo, hi)
            Lt[i, c] = l
            w = v * v
            s1[c] += w * v * l
            s2[c] += w * l * l
    for i in range(n):  # first refinement pass, all lanes: L from row i to row n + i
        for c in range(nl):
            v = xt[i, c]
            w = v * v
            li = Lt[i, c]
            a1 = s1[c]
            a2 = s2[c]
            slx = a1 - w * v * li
            sl2 = a2 - w * li * li
            nl_ = _clampf(_nint_f(v * sl2 / slx), lo, hi)
            slx2 = slx + w * v * nl_
            sl22 = sl2 + w * nl_ * nl_
            ok = ((act[c] != zero) & (slx > zero) & (nl_ != li) & (sl22 > zero)
                  & (slx2 * slx2 * a2 > a1 * a1 * sl22))
            Lt[n + i, c] = nl_ if ok else li
            s1[c] = slx2 if ok else a1
            s2[c] = sl22 if ok else a2
            chg[c] += _F32(1.0) if ok else zero
    for c in range(nl):  # passes 2..5 of the lanes that changed
        if chg[c] == zero:
            continue
        a1 = s1[c]
        a2 = s2[c]
        for _ in range(4):
            changed = 0
            for i in range(n):
                v = xt[i, c]
                w = v * v
                li = Lt[n + i, c]
                slx = a1 - w * v * li
                if slx > zero:
                    sl2 = a2 - w * li * li
                    nl_ = _clampf(_nint_f(v * sl2 / slx), lo, hi)
                    if nl_ != li:
                        slx += w * v * nl_
                        sl2 += w * nl_ * nl_
                        if sl2 > zero and slx * slx * a2 > a1 * a1 * sl2:
                            Lt[n + i, c] = nl_
                            a1 = slx
                            a2 = sl2
                            changed += 1
            if changed == 0:
                break
        s1[c] = a1
        s2[c] = a2
    for c in range(nl):
        a1 = s1[c]
        a2 = s2[c]
        q = a1 / a2
        sc = q if a2 > zero else zero
        scales[c] = sc if act[c] != zero else zero
    for i in range(n):
        for c in range(nl):
            l = Lt[n + i, c] + fn
            Lt[i, c] = l if act[c] != zero else zero


@njit(cache=True, nogil=True, error_model="numpy")
def _make_qp_quants(n, nmax, xa, qa, o, L):
    """make_qp_quants(n, nmax, xa + o, L, qa + o): returns the scale; L holds uint8 values (as C)."""
    xs = xa[o:o + n]
    qw = qa[o:o + n]
    zero = _F32(0.0)
    mx = zero
    for i in range(n):
        mx = mx if mx > xs[i] else xs[i]
    if mx < _GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return zero
    fn = _F32(nmax)
    iscale = fn / mx
    for i in range(n):
        L[i] = _nint(iscale * xs[i]) & 0xFF
    scale = _F32(1.0) / iscale
    best_mse = zero
    for i in range(n):
        diff = xs[i] - scale * _F32(L[i])
        best_mse += qw[i] * diff * diff
    for k in range(-4, 5):
        if k == 0:
            continue
        isc = (_F32(0.1) * _F32(k) + fn) / mx
        sc = _F32(1.0) / isc
        mse = zero
        for i in range(n):
            l = min(nmax, _nint(isc * xs[i]))
            diff = xs[i] - sc * _F32(l)
            mse += qw[i] * diff * diff
        if mse < best_mse:
            best_mse = mse
            iscale = isc
    sumlx = zero
    suml2 = zero
    for i in range(n):
        l = min(nmax, _nint(iscale * xs[i]))
        L[i] = l & 0xFF
        w = qw[i]
        fl = _F32(l)
        sumlx += w * xs[i] * fl
        suml2 += w * fl * fl
    for _ in range(5):
        n_changed = 0
        for i in range(n):
            w = qw[i]
            li = _F32(L[i])
            slx = sumlx - w * xs[i] * li
            sl2 = suml2 - w * li * li
            if slx > zero and sl2 > zero:
                new_l = min(nmax, _nint(xs[i] * sl2 / slx))
                if new_l != L[i]:
                    fl = _F32(new_l)
                    slx += w * xs[i] * fl
                    sl2 += w * fl * fl
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l & 0xFF
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    return sumlx / suml2 if suml2 > zero else zero


# -- packing -----------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def _pack_2bit(out, r, ob, L):
    """qs[64] at ob: byte j/4 + l of each half holds L[j+l], L[j+l+32], L[j+l+64], L[j+l+96]."""
    for j in range(0, QK_K, 128):
        for l in range(32):
            out[r, ob + j // 4 + l] = (L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4)
                                       | (L[j + l + 96] << 6)) & 0xFF


@njit(cache=True, nogil=True, error_model="numpy")
def _put_scale_min_k4(out, r, ob, j, ls, lm):
    """Pack the 6-bit scale and min of sub-block j into scales[12] at ob."""
    if j < 4:
        out[r, ob + j] = ls
        out[r, ob + j + 4] = lm
    else:
        out[r, ob + j + 4] = (ls & 0xF) | ((lm & 0xF) << 4)
        out[r, ob + j - 4] |= ((ls >> 4) << 6) & 0xFF
        out[r, ob + j] |= ((lm >> 4) << 6) & 0xFF


@njit(cache=True, nogil=True, error_model="numpy")
def _scale_min_k4(q, r, ob, j):
    """get_scale_min_k4: (scale, min) of sub-block j from scales[12] at ob."""
    if j < 4:
        return np.int64(q[r, ob + j]) & 63, np.int64(q[r, ob + j + 4]) & 63
    a = np.int64(q[r, ob + j + 4])
    sc = (a & 0xF) | ((np.int64(q[r, ob + j - 4]) >> 6) << 4)
    return sc, (a >> 4) | ((np.int64(q[r, ob + j]) >> 6) << 4)


@njit(cache=True, nogil=True, error_model="numpy")
def _put_q3_scale(out, r, ob, j, l):
    """Pack 6-bit scale l (0..63) of sub-block j into Q3_K scales[12] at ob (zeroed)."""
    if j < 8:
        out[r, ob + j] = l & 0xF
    else:
        out[r, ob + j - 8] |= (l & 0xF) << 4
    out[r, ob + 8 + j % 4] |= (l >> 4) << (2 * (j // 4))


@njit(cache=True, nogil=True, error_model="numpy")
def _q3_scale(q, r, ob, j):
    """Signed 6-bit scale (-32..31) of Q3_K sub-block j."""
    lo = (np.int64(q[r, ob + j]) & 0xF) if j < 8 else (np.int64(q[r, ob + j - 8]) >> 4)
    return (lo | (((np.int64(q[r, ob + 8 + j % 4]) >> (2 * (j // 4))) & 3) << 4)) - 32


# -- shared super-block steps ----------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def _sumsq(xb, o, n):
    s = _F32(0.0)
    for i in range(n):
        s += xb[o + i] * xb[o + i]
    return s


@njit(cache=True, nogil=True, error_model="numpy")
def _imatrix_weights(xb, qw, qo, n, nsub, sigma2, xt, wt, sw, c0):
    """wt = qw * sqrt(sigma2 + x*x) for the lanes of super-block xb (columns qo..) and
    sw[c0 + j] = the sum of sub-block j's weights, in C order."""
    for j in range(nsub):
        sw[c0 + j] = _F32(0.0)
    for i in range(n):
        for j in range(nsub):
            v = xt[i, c0 + j]
            wt[i, c0 + j] = qw[qo + n * j + i] * np.sqrt(sigma2 + v * v)
    for i in range(n):
        for j in range(nsub):
            sw[c0 + j] += wt[i, c0 + j]


@njit(cache=True, nogil=True, error_model="numpy")
def _requant_min(xb, D, M, nmax, L):
    """L[i] = MAX(0, MIN(nmax, nearest_int((x + M[i]) / D[i]))) over the super-block (one
    loop of 256, so it vectorizes; sub-blocks whose d is 0 are refilled by the caller)."""
    fn = _F32(nmax)
    for i in range(xb.shape[0]):
        L[i] = np.int32(_clampf(_nint_f((xb[i] + M[i]) / D[i]), _F32(0.0), fn))


@njit(cache=True, nogil=True, error_model="numpy")
def _requant_sym(xb, D, nmax, L):
    """L[i] = MAX(-nmax, MIN(nmax - 1, nearest_int(x / D[i]))) + nmax over the super-block."""
    fn = _F32(nmax)
    for i in range(xb.shape[0]):
        L[i] = np.int32(_clampf(_nint_f(xb[i] / D[i]), -fn, fn - _F32(1.0))) + nmax


@njit(cache=True, nogil=True, error_model="numpy")
def _fill(A, o, n, v):
    for i in range(n):
        A[o + i] = v


# -- Q2_K ----------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def _q2_finish(xb, out, r, ob, imat, c0, V, sw, scales, mins, Ls, Lm, L, D, M):
    """Scales/mins bytes, d, dmin and qs of one Q2_K super-block (lanes c0..c0+15)."""
    q4 = _F32(15.0)
    if imat:
        dm = _make_qp_quants(_I(16), _I(15), scales, sw, c0, Ls)
        mm = _make_qp_quants(_I(16), _I(15), mins, sw, c0, Lm)
        dm = _put_f16(out, r, ob + 80, dm)
        mm = _put_f16(out, r, ob + 82, mm)
        for j in range(16):
            out[r, ob + j] = (Ls[j] | (Lm[j] << 4)) & 0xFF
    else:
        max_scale = _F32(0.0)
        max_min = _F32(0.0)
        for j in range(16):
            if scales[c0 + j] > max_scale:
                max_scale = scales[c0 + j]
            if mins[c0 + j] > max_min:
                max_min = mins[c0 + j]
        if max_scale > _F32(0.0):
            isc = q4 / max_scale
            for j in range(16):
                out[r, ob + j] = _nint(isc * scales[c0 + j]) & 0xFF
            dm = _put_f16(out, r, ob + 80, max_scale / q4)
        else:
            for j in range(16):
                out[r, ob + j] = 0
            dm = _put_f16(out, r, ob + 80, _F32(0.0))
        if max_min > _F32(0.0):
            isc = q4 / max_min
            for j in range(16):
                out[r, ob + j] |= (_nint(isc * mins[c0 + j]) << 4) & 0xFF
            mm = _put_f16(out, r, ob + 82, max_min / q4)
        else:
            mm = _put_f16(out, r, ob + 82, _F32(0.0))
    for j in range(16):
        sc = np.int64(out[r, ob + j])
        _fill(D, 16 * j, 16, dm * _F32(sc & 0xF))
        _fill(M, 16 * j, 16, mm * _F32(sc >> 4))
    _requant_min(xb, D, M, _I(3), L)
    for j in range(16):
        if D[16 * j] == _F32(0.0):
            _fill_qkx_l(xb, _I(16), j, c0 + j, _I(3), V, L)
    _pack_2bit(out, r, ob + 16, L)


@njit(cache=True, nogil=True, error_model="numpy")
def quantize_q2_k(x, qw, out):
    nrows, n = x.shape
    nb = n // QK_K
    total = nrows * nb
    G = _LANES // 16
    L = np.zeros(QK_K, dtype=np.int32)
    D = np.empty(QK_K, dtype=np.float32)  # per-weight divisor / offset of the requantization
    M = np.empty(QK_K, dtype=np.float32)
    xt = np.empty((16, _LANES), dtype=np.float32)
    wt = np.empty((16, _LANES), dtype=np.float32)
    V = np.empty((_NV, _LANES), dtype=np.float32)
    sw = np.empty(_LANES, dtype=np.float32)
    scales = np.empty(_LANES, dtype=np.float32)
    mins = np.empty(_LANES, dtype=np.float32)
    Ls = np.empty(16, dtype=np.int64)
    Lm = np.empty(16, dtype=np.int64)
    imat = qw.shape[0] > 0
    # make_qkx3_quants(16, 3, .., -0.9, 0.05, 36, mse) / make_qkx2_quants(16, 3, .., -0.5, 0.1, 15, mad)
    rmin = _F32(-0.9) if imat else _F32(-0.5)
    rdelta = _F32(0.05) if imat else _F32(0.1)
    nstep = _I(36) if imat else _I(15)
    for s0 in range(0, total, G):
        for g in range(G):
            c0 = 16 * g
            if s0 + g >= total:
                _zero_lanes(_I(16), _I(16), xt, wt, c0)
                continue
            r, b = divmod(s0 + g, nb)
            xb = x[r, b * QK_K:(b + 1) * QK_K]
            _load_lanes(xb, _I(16), _I(16), xt, c0)
            if imat:
                sigma2 = _sumsq(xb, _I(0), _I(QK_K)) / _F32(QK_K)
                _imatrix_weights(xb, qw, b * QK_K, _I(16), _I(16), sigma2, xt, wt, sw, c0)
            else:
                for i in range(16):
                    for j in range(16):
                        wt[i, c0 + j] = abs(xt[i, c0 + j])
        _qkx_lanes(xt, wt, _I(3), rmin, rdelta, nstep, not imat, V, scales, mins)
        for g in range(min(G, total - s0)):
            r, b = divmod(s0 + g, nb)
            _q2_finish(x[r, b * QK_K:(b + 1) * QK_K], out, r, b * 84, imat, 16 * g, V, sw, scales, mins,
                       Ls, Lm, L, D, M)


@njit(cache=True, nogil=True, error_model="numpy")
def dequantize_q2_k(q, out):
    nrows, n = out.shape
    for r in range(nrows):
        for b in range(n // QK_K):
            ob = b * 84
            d = load_f16(q[r], ob + 80)
            mn = load_f16(q[r], ob + 82)
            for k in range(16):
                sc = np.int64(q[r, ob + k])
                dl = d * _F32(sc & 0xF)
                ml = mn * _F32(sc >> 4)
                half = k // 8          # 128-value half
                shift = 2 * ((k % 8) // 2)
                qo = ob + 16 + 32 * half + 16 * (k % 2)
                yo = b * QK_K + 16 * k
                for l in range(16):
                    out[r, yo + l] = dl * _F32((np.int64(q[r, qo + l]) >> shift) & 3) - ml


# -- Q3_K ----------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def _q3_finish(xb, out, r, ob, imat, c0, g, V, V1, Lt, scales, d1, L, D):
    """Scales bytes, d, hmask and qs of one Q3_K super-block (lanes c0..c0+15; with
    importance weights its 6-bit scales come from lane g of the second search, in V1)."""
    for j in range(12):
        out[r, ob + 96 + j] = 0
    if imat:
        for j in range(16):
            l = np.int64(_clampf(_nint_f(V1[7, g] * scales[c0 + j]), _F32(-32.0), _F32(31.0))) + 32
            _put_q3_scale(out, r, ob + 96, j, l if V1[8, g] != _F32(0.0) else 0)
        dall = _put_f16(out, r, ob + 108, d1[g])
    else:
        max_scale = _F32(0.0)
        amax = _F32(0.0)
        for j in range(16):
            a = abs(scales[c0 + j])
            if a > amax:
                amax = a
                max_scale = scales[c0 + j]
        if max_scale != _F32(0.0):
            isc = _F32(-32.0) / max_scale
            for j in range(16):
                l = _i8(_nint(isc * scales[c0 + j]))
                _put_q3_scale(out, r, ob + 96, j, max(-32, min(31, l)) + 32)
            dall = _put_f16(out, r, ob + 108, _F32(1.0) / isc)
        else:
            dall = _put_f16(out, r, ob + 108, _F32(0.0))
    for j in range(16):
        _fill(D, 16 * j, 16, dall * _F32(_q3_scale(out, r, ob + 96, j)))
    _requant_sym(xb, D, _I(4), L)
    for j in range(16):
        if D[16 * j] != _F32(0.0):
            continue
        if imat:
            _fill_qx_l(xb, _I(16), j, c0 + j, _I(4), V, L)
        else:
            for i in range(16):
                L[16 * j + i] = np.int32(Lt[i, c0 + j])
    for l in range(32):  # hmask: bit k of byte l is the high bit of L[32k + l] (L in 0..7)
        h = 0
        for k in range(8):
            h |= (L[32 * k + l] >> 2) << k
        out[r, ob + l] = h
    for j in range(QK_K):
        L[j] &= 3
    _pack_2bit(out, r, ob + 32, L)


@njit(cache=True, nogil=True, error_model="numpy")
def quantize_q3_k(x, qw, out):
    nrows, n = x.shape
    nb = n // QK_K
    total = nrows * nb
    G = _LANES // 16
    L = np.zeros(QK_K, dtype=np.int32)
    D = np.empty(QK_K, dtype=np.float32)  # per-weight divisor of the requantization
    xt = np.empty((16, _LANES), dtype=np.float32)
    wt = np.empty((16, _LANES), dtype=np.float32)
    Lt = np.empty((32, _LANES), dtype=np.float32)
    V = np.empty((_NV, _LANES), dtype=np.float32)
    sw = np.empty(_LANES, dtype=np.float32)
    scales = np.empty(_LANES, dtype=np.float32)
    st = np.empty((16, G), dtype=np.float32)  # second search: the 16 scales of each super-block
    swt = np.empty((16, G), dtype=np.float32)
    V1 = np.empty((_NV, G), dtype=np.float32)
    d1 = np.empty(G, dtype=np.float32)
    imat = qw.shape[0] > 0
    for s0 in range(0, total, G):
        for g in range(G):
            c0 = 16 * g
            if s0 + g >= total:
                _zero_lanes(_I(16), _I(16), xt, wt, c0)
                continue
            r, b = divmod(s0 + g, nb)
            xb = x[r, b * QK_K:(b + 1) * QK_K]
            _load_lanes(xb, _I(16), _I(16), xt, c0)
            if imat:
                sigma2 = _F32(2.0) * _sumsq(xb, _I(0), _I(QK_K)) / _F32(QK_K)
                _imatrix_weights(xb, qw, b * QK_K, _I(16), _I(16), sigma2, xt, wt, sw, c0)
        if imat:
            _qx_lanes(xt, wt, _I(4), V, scales)
            for g in range(G):
                for j in range(16):
                    st[j, g] = scales[16 * g + j]
                    swt[j, g] = sw[16 * g + j] if s0 + g < total else _F32(0.0)
            _qx_lanes(st, swt, _I(32), V1, d1)
        else:
            _q3_lanes(xt, _I(4), V, Lt, scales)
        for g in range(min(G, total - s0)):
            r, b = divmod(s0 + g, nb)
            _q3_finish(x[r, b * QK_K:(b + 1) * QK_K], out, r, b * 110, imat, 16 * g, g, V, V1, Lt, scales,
                       d1, L, D)


@njit(cache=True, nogil=True, error_model="numpy")
def dequantize_q3_k(q, out):
    nrows, n = out.shape
    for r in range(nrows):
        for b in range(n // QK_K):
            ob = b * 110
            d = load_f16(q[r], ob + 108)
            for k in range(16):
                dl = d * _F32(_q3_scale(q, r, ob + 96, k))
                half = k // 8
                pair = (k % 8) // 2   # shift index within the half
                shift = 2 * pair
                m = 1 << (4 * half + pair)
                qo = 32 * half + 16 * (k % 2)
                yo = b * QK_K + 16 * k
                for l in range(16):
                    v = (np.int64(q[r, ob + 32 + qo + l]) >> shift) & 3
                    if (np.int64(q[r, ob + 16 * (k % 2) + l]) & m) == 0:
                        v -= 4
                    out[r, yo + l] = dl * _F32(v)


# -- Q4_K / Q5_K ---------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def _q45_finish(xb, out, r, ob, nmax, imat, c0, V, sw, scales, mins, Ls, Lm, L, D, M):
    """Scales/mins bytes, d, dmin and L (0..nmax) of one Q4_K (nmax 15) / Q5_K (nmax 31)
    super-block at out[r, ob:] (lanes c0..c0+7)."""
    if imat:
        d_block = _make_qp_quants(_I(8), _I(63), scales, sw, c0, Ls)
        m_block = _make_qp_quants(_I(8), _I(63), mins, sw, c0, Lm)
        for j in range(8):  # Q5_K caps at 63, Q4_K does not (equal unless a scale is negative)
            ls = Ls[j] if nmax == 15 else min(63, Ls[j])
            lm = Lm[j] if nmax == 15 else min(63, Lm[j])
            _put_scale_min_k4(out, r, ob + 4, j, ls, lm)
        d = _put_f16(out, r, ob, d_block)
        dmin = _put_f16(out, r, ob + 2, m_block)
    else:
        max_scale = _F32(0.0)
        max_min = _F32(0.0)
        for j in range(8):
            if scales[c0 + j] > max_scale:
                max_scale = scales[c0 + j]
            if mins[c0 + j] > max_min:
                max_min = mins[c0 + j]
        inv_scale = _F32(63.0) / max_scale if max_scale > _F32(0.0) else _F32(0.0)
        inv_min = _F32(63.0) / max_min if max_min > _F32(0.0) else _F32(0.0)
        for j in range(8):
            ls = min(63, _nint(inv_scale * scales[c0 + j]) & 0xFF)
            lm = min(63, _nint(inv_min * mins[c0 + j]) & 0xFF)
            _put_scale_min_k4(out, r, ob + 4, j, ls, lm)
        d = _put_f16(out, r, ob, max_scale / _F32(63.0))
        dmin = _put_f16(out, r, ob + 2, max_min / _F32(63.0))
    for j in range(8):
        sc, m = _scale_min_k4(out, r, ob + 4, j)
        _fill(D, 32 * j, 32, d * _F32(sc))
        _fill(M, 32 * j, 32, dmin * _F32(m))
    _requant_min(xb, D, M, nmax, L)
    for j in range(8):
        if D[32 * j] == _F32(0.0):
            _fill_qkx_l(xb, _I(32), j, c0 + j, nmax, V, L)


@njit(cache=True, nogil=True, error_model="numpy")
def _quantize_q45(x, qw, out):
    """Q4_K or Q5_K, told apart by the row size of ``out`` (144 or 176 bytes a block):
    one compiled function serves both."""
    nrows, n = x.shape
    nb = n // QK_K
    total = nrows * nb
    G = _LANES // 8
    bsize = 144 if out.shape[1] == 144 * nb else 176
    nmax = 15 if bsize == 144 else 31
    L = np.zeros(QK_K, dtype=np.int32)
    D = np.empty(QK_K, dtype=np.float32)  # per-weight divisor / offset of the requantization
    M = np.empty(QK_K, dtype=np.float32)
    xt = np.empty((32, _LANES), dtype=np.float32)
    wt = np.empty((32, _LANES), dtype=np.float32)
    V = np.empty((_NV, _LANES), dtype=np.float32)
    sw = np.empty(_LANES, dtype=np.float32)
    scales = np.empty(_LANES, dtype=np.float32)
    mins = np.empty(_LANES, dtype=np.float32)
    Ls = np.empty(8, dtype=np.int64)
    Lm = np.empty(8, dtype=np.int64)
    imat = qw.shape[0] > 0
    # make_qkx3_quants(32, nmax, .., -0.9, 0.05, 36) / make_qkx2_quants(32, nmax, .., -1 | -0.5, 0.1, 20 | 15)
    rmin = _F32(-0.9) if imat else (_F32(-1.0) if nmax == 15 else _F32(-0.5))
    rdelta = _F32(0.05) if imat else _F32(0.1)
    nstep = _I(36) if imat else (_I(20) if nmax == 15 else _I(15))
    for s0 in range(0, total, G):
        for g in range(G):
            c0 = 8 * g
            if s0 + g >= total:
                _zero_lanes(_I(32), _I(8), xt, wt, c0)
                continue
            r, b = divmod(s0 + g, nb)
            xb = x[r, b * QK_K:(b + 1) * QK_K]
            _load_lanes(xb, _I(32), _I(8), xt, c0)
            if imat:
                sigma2 = _F32(2.0) * _sumsq(xb, _I(0), _I(QK_K)) / _F32(QK_K)
                _imatrix_weights(xb, qw, b * QK_K, _I(32), _I(8), sigma2, xt, wt, sw, c0)
            else:
                for j in range(8):
                    av_x = np.sqrt(_sumsq(xb, 32 * j, _I(32)) / _F32(32.0))
                    for i in range(32):
                        wt[i, c0 + j] = av_x + abs(xt[i, c0 + j])
        _qkx_lanes(xt, wt, nmax, rmin, rdelta, nstep, nmax < 0, V, scales, mins)
        for g in range(min(G, total - s0)):
            r, b = divmod(s0 + g, nb)
            ob = b * bsize
            _q45_finish(x[r, b * QK_K:(b + 1) * QK_K], out, r, ob, nmax, imat, 8 * g, V, sw, scales, mins,
                        Ls, Lm, L, D, M)
            if nmax == 15:
                for j in range(0, QK_K, 64):
                    for l in range(32):
                        out[r, ob + 16 + j // 2 + l] = L[j + l] | (L[j + l + 32] << 4)
            else:
                for j in range(32):  # qh: bits 2k, 2k+1 of byte j: 5th bits of L[64k + j], L[64k + 32 + j]
                    h = 0
                    for k in range(4):
                        h |= ((L[64 * k + j] >> 4) << (2 * k)) | ((L[64 * k + 32 + j] >> 4) << (2 * k + 1))
                    out[r, ob + 16 + j] = h
                for k in range(4):
                    for j in range(32):
                        lo = L[64 * k + j] & 0xF
                        out[r, ob + 48 + 32 * k + j] = lo | ((L[64 * k + 32 + j] & 0xF) << 4)


quantize_q4_k = _quantize_q45
quantize_q5_k = _quantize_q45


@njit(cache=True, nogil=True, error_model="numpy")
def dequantize_q4_k(q, out):
    nrows, n = out.shape
    for r in range(nrows):
        for b in range(n // QK_K):
            ob = b * 144
            d = load_f16(q[r], ob)
            mn = load_f16(q[r], ob + 2)
            for j in range(4):
                sc, m = _scale_min_k4(q, r, ob + 4, 2 * j)
                d1 = d * _F32(sc)
                m1 = mn * _F32(m)
                sc, m = _scale_min_k4(q, r, ob + 4, 2 * j + 1)
                d2 = d * _F32(sc)
                m2 = mn * _F32(m)
                yo = b * QK_K + 64 * j
                qo = ob + 16 + 32 * j
                for l in range(32):
                    v = np.int64(q[r, qo + l])
                    out[r, yo + l] = d1 * _F32(v & 0xF) - m1
                    out[r, yo + 32 + l] = d2 * _F32(v >> 4) - m2


@njit(cache=True, nogil=True, error_model="numpy")
def dequantize_q5_k(q, out):
    nrows, n = out.shape
    for r in range(nrows):
        for b in range(n // QK_K):
            ob = b * 176
            d = load_f16(q[r], ob)
            mn = load_f16(q[r], ob + 2)
            for j in range(4):
                sc, m = _scale_min_k4(q, r, ob + 4, 2 * j)
                d1 = d * _F32(sc)
                m1 = mn * _F32(m)
                sc, m = _scale_min_k4(q, r, ob + 4, 2 * j + 1)
                d2 = d * _F32(sc)
                m2 = mn * _F32(m)
                u1 = 1 << (2 * j)
                u2 = u1 << 1
                yo = b * QK_K + 64 * j
                qo = ob + 48 + 32 * j
                for l in range(32):
                    v = np.int64(q[r, qo + l])
                    h = np.int64(q[r, ob + 16 + l])
                    out[r, yo + l] = d1 * _F32((v & 0xF) + (16 if h & u1 else 0)) - m1
                    out[r, yo + 32 + l] = d2 * _F32((v >> 4) + (16 if h & u2 else 0)) - m2


# -- Q6_K ----------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def _q6_finish(xb, out, r, ob, c0, V, scales, L, D):
    """Scales bytes, d, ql and qh of one Q6_K super-block (lanes c0..c0+15)."""
    max_scale = _F32(0.0)
    max_abs = _F32(0.0)
    for j in range(16):
        a = abs(scales[c0 + j])
        if a > max_abs:
            max_abs = a
            max_scale = scales[c0 + j]
    if max_abs < _GROUP_MAX_EPS:
        for j in range(210):
            out[r, ob + j] = 0
        return
    isc = _F32(-128.0) / max_scale
    d = _put_f16(out, r, ob + 208, _F32(1.0) / isc)
    for j in range(16):
        s8 = _i8(min(127, _nint(isc * scales[c0 + j])))
        out[r, ob + 192 + j] = s8 & 0xFF
        _fill(D, 16 * j, 16, d * _F32(s8))
    _requant_sym(xb, D, _I(32), L)
    for j in range(16):
        if D[16 * j] == _F32(0.0):
            _fill_qx_l(xb, _I(16), j, c0 + j, _I(32), V, L)
    for h in range(2):
        j = 128 * h
        for l in range(32):
            a0 = L[j + l]
            a1 = L[j + l + 32]
            a2 = L[j + l + 64]
            a3 = L[j + l + 96]
            out[r, ob + 64 * h + l] = (a0 & 0xF) | ((a2 & 0xF) << 4)
            out[r, ob + 64 * h + 32 + l] = (a1 & 0xF) | ((a3 & 0xF) << 4)
            out[r, ob + 128 + 32 * h + l] = ((a0 >> 4) | ((a1 >> 4) << 2) | ((a2 >> 4) << 4)
                                             | ((a3 >> 4) << 6)) & 0xFF


@njit(cache=True, nogil=True, error_model="numpy")
def quantize_q6_k(x, qw, out):
    nrows, n = x.shape
    nb = n // QK_K
    total = nrows * nb
    G = _LANES // 16
    L = np.zeros(QK_K, dtype=np.int32)
    D = np.empty(QK_K, dtype=np.float32)  # per-weight divisor of the requantization
    xt = np.empty((16, _LANES), dtype=np.float32)
    wt = np.empty((16, _LANES), dtype=np.float32)
    V = np.empty((_NV, _LANES), dtype=np.float32)
    scales = np.empty(_LANES, dtype=np.float32)
    imat = qw.shape[0] > 0
    for s0 in range(0, total, G):
        for g in range(G):
            c0 = 16 * g
            if s0 + g >= total:
                _zero_lanes(_I(16), _I(16), xt, wt, c0)
                continue
            r, b = divmod(s0 + g, nb)
            xb = x[r, b * QK_K:(b + 1) * QK_K]
            _load_lanes(xb, _I(16), _I(16), xt, c0)
            for i in range(16):
                for j in range(16):
                    v = xt[i, c0 + j]
                    wt[i, c0 + j] = qw[b * QK_K + 16 * j + i] if imat else v * v
        _qx_lanes(xt, wt, _I(32), V, scales)
        for g in range(min(G, total - s0)):
            r, b = divmod(s0 + g, nb)
            _q6_finish(x[r, b * QK_K:(b + 1) * QK_K], out, r, b * 210, 16 * g, V, scales, L, D)


@njit(cache=True, nogil=True, error_model="numpy")
def dequantize_q6_k(q, out):
    nrows, n = out.shape
    for r in range(nrows):
        for b in range(n // QK_K):
            ob = b * 210
            d = load_f16(q[r], ob + 208)
            for h in range(2):
                yo = b * QK_K + 128 * h
                lo = ob + 64 * h
                ho = ob + 128 + 32 * h
                so = ob + 192 + 8 * h
                for l in range(32):
                    i = l // 16
                    a = np.int64(q[r, lo + l])
                    c = np.int64(q[r, lo + 32 + l])
                    hh = np.int64(q[r, ho + l])
                    q1 = ((a & 0xF) | ((hh & 3) << 4)) - 32
                    q2 = ((c & 0xF) | (((hh >> 2) & 3) << 4)) - 32
                    q3 = ((a >> 4) | (((hh >> 4) & 3) << 4)) - 32
                    q4 = ((c >> 4) | (((hh >> 6) & 3) << 4)) - 32
                    out[r, yo + l] = d * _F32(np.int8(q[r, so + i])) * _F32(q1)
                    out[r, yo + 32 + l] = d * _F32(np.int8(q[r, so + i + 2])) * _F32(q2)
                    out[r, yo + 64 + l] = d * _F32(np.int8(q[r, so + i + 4])) * _F32(q3)
                    out[r, yo + 96 + l] = d * _F32(np.int8(q[r, so + i + 6])) * _F32(q4)


# -- Q8_K (intermediate type) -----------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def quantize_q8_k(x, qw, out):
    """quantize_row_q8_K_ref; ``qw`` is ignored. An all-zero block gets zero bsums."""
    nrows, n = x.shape
    for r in range(nrows):
        xr = x[r]
        for b in range(n // QK_K):
            xo = b * QK_K
            ob = b * 292
            amax = _F32(0.0)
            mx = _F32(0.0)
            for j in range(QK_K):
                a = abs(xr[xo + j])
                if a > amax:
                    amax = a
                    mx = xr[xo + j]
            if amax == _F32(0.0):
                for j in range(292):
                    out[r, ob + j] = 0
                continue
            isc = _F32(-127.0) / mx
            for j in range(16):
                s = 0
                for i in range(16):
                    v = _i8(min(127, _nint(isc * xr[xo + 16 * j + i])))
                    out[r, ob + 4 + 16 * j + i] = v & 0xFF
                    s += v
                out[r, ob + 260 + 2 * j] = s & 0xFF
                out[r, ob + 261 + 2 * j] = (s >> 8) & 0xFF
            db = f32_bits(_F32(1.0) / isc)
            for k in range(4):
                out[r, ob + k] = (db >> _U32(8 * k)) & _U32(0xFF)


@njit(cache=True, nogil=True, error_model="numpy")
def dequantize_q8_k(q, out):
    nrows, n = out.shape
    for r in range(nrows):
        for b in range(n // QK_K):
            ob = b * 292
            db = (_U32(q[r, ob]) | (_U32(q[r, ob + 1]) << _U32(8)) | (_U32(q[r, ob + 2]) << _U32(16))
                  | (_U32(q[r, ob + 3]) << _U32(24)))
            d = bits_f32(_U32(db))
            for j in range(QK_K):
                out[r, b * QK_K + j] = d * _F32(np.int8(q[r, ob + 4 + j]))


# GGUF type -> (quantize, dequantize): the registry (core.kernels.get_kernel) reads this table.
KERNELS = {
    T.Q2_K: (quantize_q2_k, dequantize_q2_k),
    T.Q3_K: (quantize_q3_k, dequantize_q3_k),
    T.Q4_K: (quantize_q4_k, dequantize_q4_k),
    T.Q5_K: (quantize_q5_k, dequantize_q5_k),
    T.Q6_K: (quantize_q6_k, dequantize_q6_k),
    T.Q8_K: (quantize_q8_k, dequantize_q8_k),
}
