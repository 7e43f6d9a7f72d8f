"""IQ3_XXS and IQ3_S: 3-bit lattice quants, byte-identical to llama.cpp.

``ggml_quantize_chunk`` runs ``quantize_iq3_xxs`` (one ``quantize_row_iq3_xxs_impl(256, ...)``
per row) and ``quantize_iq3_s`` (``quantize_row_iq3_s_impl(32, ...)``), with or without
importance weights (ggml-quants.c). Each 32-value sub-block is split into signs and
magnitudes; groups of four magnitudes are quantized to 3-bit levels ``l`` (value ``2*l+1``)
that must form a point of the type's grid (256 points for IQ3_XXS, 512 for IQ3_S, out of
8**4). A scale search tries 31 (IQ3_XXS: ``is`` in -15..15) or 19 (IQ3_S: -9..9) scales;
a group off the grid is replaced by its best neighbour (``iq3_find_best_neighbour``:
the smallest ``sqrt(weight)``-weighted squared error among the grid points nearest to it,
the list ``iq3xs_init_impl`` builds). The best scale (largest ``sumqx**2/sumq2``) is refined
once with the off-grid groups re-mapped, and the 8 sub-block scales are quantized to 4 bits
against ``max_scale/31``.

Block layouts (fp16 little-endian ``d``):

- IQ3_XXS, 98 B: ``d``, ``qs[64]`` grid indices (8 per sub-block), then 8 little-endian
  uint32 ``scales_and_signs``: bits 0..27 four 7-bit sign groups (``ksigns_iq2xs``
  index: the 8th sign of a group is the parity, IQ3_XXS flips the cheapest value to make
  the count of negatives even), bits 28..31 the 4-bit scale ``s``; value
  ``d * (0.5 + s) * 0.5 * grid * sign``.
- IQ3_S, 110 B: ``d``, ``qs[64]`` low 8 bits of the grid indices, ``qh[8]`` their 9th bits
  (bit k of ``qh[ib]`` for group k of sub-block ib), ``signs[32]`` (one bit per value),
  ``scales[4]`` two 4-bit scales each; value ``d * (1 + 2*s) * grid * sign``. As in the C
  code, an all-zero sub-block does not advance the ``qs``/``signs`` write positions (the
  following sub-blocks' bytes move up); the bytes written are the C code's.

Tables: the grid points come from ``iq3grids.py`` (a data module: llama.cpp's
``kgrid_256``/``kgrid_512`` as hex strings). :func:`tables` builds, once per process and
grid size, what ``iq3xs_init_impl`` builds (the encoder grid, ``kmap`` from the 4096
level-tuples to grid index or ``-(offset+1)`` into the neighbour lists, the neighbour lists
themselves, count first) and the decoder grids of ggml-common.h (``iq3xxs_grid``,
``iq3s_grid``); ``ksigns_iq2xs`` is computed (index | parity << 7), ``kmask_iq2xs[j]`` is
``1 << j``.

llama.cpp aborts the process (GGML_ASSERT) on some inputs with NaN or infinity, or values
so large that the weighted distances overflow: a group with no neighbour at a distance
below FLT_MAX, or a NaN sub-block scale. On the same inputs, at the same condition, the
quantize kernels raise ValueError ("llama.cpp aborts here: ..."); everywhere else they
write the C code's bytes.
All arithmetic is float32 in the C code's order, ``nearest_int`` is ggml's bit trick.

Speed: one njit function serves both types (``_quantize``, a flag picks the variant); the
trial scales of a sub-block run as SIMD lanes (see ``_search``), and the tables are passed
as arguments (nothing large is frozen into the compiled code).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import njit
from gguf.constants import GGMLQuantizationType as T

from . import iq3grids
from .floats import load_f16, store_f16
from .kquants import _clampf, _nint, _nint_f

_F32 = np.float32
_U32 = np.uint32
QK_K = 256
_FLT_MAX = np.float32(3.4028234663852886e38)
_EPS_XXS = np.float32(1e-8)      # GROUP_MAX_EPS_IQ3_XXS
_XXS_LEVELS = (4, 12, 20, 28, 36, 44, 52, 62)  # iq3xxs_grid byte of level l
XXS_BYTES = 2 + 96               # block_iq3_xxs
S_BYTES = 2 + 64 + 8 + 32 + 4    # block_iq3_s


# -- tables ----------------------------------------------------------------------------------
def grid_points(grid_size: int) -> np.ndarray:
    """llama.cpp's kgrid_256 / kgrid_512: int64 points, four 3-bit levels each."""
    s = "".join(iq3grids.KGRID_256 if grid_size == 256 else iq3grids.KGRID_512)
    if grid_size not in (256, 512) or len(s) != 3 * grid_size:
        raise ValueError(f"no IQ3 grid of size {grid_size}")
    return np.array([int(s[i:i + 3], 16) for i in range(0, len(s), 3)], dtype=np.int64)


def ksigns_iq2xs() -> np.ndarray:
    """ggml-common.h's ksigns_iq2xs: 7 sign bits plus their parity as the 8th."""
    i = np.arange(128)
    parity = np.zeros(128, dtype=np.int64)
    for b in range(7):
        parity ^= (i >> b) & 1
    return (i | (parity << 7)).astype(np.uint8)


@lru_cache(maxsize=None)
def tables(grid_size: int):
    """What ``iq3xs_init_impl(grid_size)`` builds, plus the decoder grid, built once per process.

    Returns ``(kmap, neighbours, gridf, gridl, dgrid)``: kmap int32[4096] (grid index of a
    level tuple, else ``-(offset+1)``), neighbours uint16 (at an offset: the count, then the
    grid indices of the neighbours in the C order: by distance, then index), gridf float32
    (grid_size, 4) coordinates ``2*l+1``, gridl int8 (grid_size, 4) levels, dgrid uint8
    (grid_size, 4) the decoder grid (``iq3xxs_grid`` / ``iq3s_grid`` bytes)."""
    kg = grid_points(grid_size)
    nwant = 2 if grid_size == 256 else 3
    shifts = 3 * np.arange(4)
    lv = (kg[:, None] >> shifts) & 7
    kmap = np.full(4096, -1, dtype=np.int64)
    kmap[kg] = np.arange(grid_size)
    off = np.flatnonzero(kmap < 0)
    lp = (off[:, None] >> shifts) & 7
    d2 = sum(4 * (lp[:, None, i].astype(np.int32) - lv[None, :, i].astype(np.int32)) ** 2
             for i in range(4))                                       # (2l+1) - (2m+1) = 2(l-m)
    key = np.sort(d2 * grid_size + np.arange(grid_size), axis=1)      # by distance, then grid index
    sd, order = np.divmod(key, grid_size)
    rank = np.concatenate([np.zeros((len(off), 1), np.int64), np.cumsum(sd[:, 1:] > sd[:, :-1], axis=1)], axis=1)
    keep = rank < nwant
    counts = keep.sum(axis=1)
    starts = np.concatenate([[0], np.cumsum(counts + 1)[:-1]])
    nbr = np.empty(int((counts + 1).sum()), dtype=np.uint16)
    nbr[starts] = counts
    rows, cols = np.nonzero(keep)                                      # row-major: each list in order
    nbr[starts[rows] + 1 + cols] = order[rows, cols]
    kmap[off] = -(starts + 1)
    levels = np.array(_XXS_LEVELS) if grid_size == 256 else 2 * np.arange(8) + 1
    return (kmap.astype(np.int32), nbr, (2 * lv + 1).astype(np.float32), lv.astype(np.int8),
            levels[lv].astype(np.uint8))


# -- the search of one 32-value sub-block ----------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def _nearest(nbr, start, gridf, xval, waux, o, scale):
    """iq3_find_best_neighbour for the group at ``o``: the grid index (its levels are gridl's)."""
    n = nbr[start]
    best = _FLT_MAX
    gi = -1
    x0, x1, x2, x3 = xval[o], xval[o + 1], xval[o + 2], xval[o + 3]
    w0, w1, w2, w3 = waux[o], waux[o + 1], waux[o + 2], waux[o + 3]
    for j in range(start + 1, start + 1 + n):
        g = nbr[j]
        diff = scale * gridf[g, 0] - x0
        d2 = _F32(0.0) + w0 * diff * diff
        diff = scale * gridf[g, 1] - x1
        d2 += w1 * diff * diff
        diff = scale * gridf[g, 2] - x2
        d2 += w2 * diff * diff
        diff = scale * gridf[g, 3] - x3
        d2 += w3 * diff * diff
        if d2 < best:
            best = d2
            gi = g
    if gi < 0:
        raise ValueError("llama.cpp aborts here: no neighbour at a finite distance (NaN/inf input)")
    return gi


@njit(cache=True, nogil=True, error_model="numpy")
def _group_levels(xval, o, id_, L):
    """Levels of the group at ``o`` for inverse scale ``id_``; returns their kmap key."""
    u = 0
    for i in range(4):
        l = _nint(_F32(0.5) * (id_ * xval[o + i] - _F32(1.0)))
        l = max(0, min(7, l))
        L[o + i] = l
        u |= l << (3 * i)
    return u


@njit(cache=True, nogil=True, error_model="numpy")
def _sums(xval, weight, L):
    """sumqx, sumq2 of levels L (C order: (w*x)*q and (w*q)*q, summed over i)."""
    sumqx = _F32(0.0)
    sumq2 = _F32(0.0)
    for i in range(32):
        w = weight[i]
        q = _F32(2 * L[i] + 1)
        sumqx += w * xval[i] * q
        sumq2 += w * q * q
    return sumqx, sumq2


@njit(cache=True, nogil=True, error_model="numpy")
def _search(xval, weight, waux, mx, nis, on_grid_init, fix_all, kmap, nbr, gridf, gridl, S, L, Laux, on_grid, gidx):
    """The scale search of quantize_row_iq3_*_impl for one sub-block (C's is = -nis..nis).

    The 2*nis+1 trial scales run as lanes (columns of the float32 scratch ``S``, (52, 32)):
    levels and sums vectorize across trials while each trial sums in the C order; the
    neighbour searches and the choice of the best trial then go trial by trial as in C.
    Fills L (levels) and gidx (grid index of each group); returns the scale."""
    nt = 2 * nis + 1
    nl = (nt + 7) & ~7                   # lanes: whole vectors
    ids = S[32]
    scl = S[33]
    sqx = S[34]
    sq2 = S[35]
    onf = S[36:44]                       # on-grid flag per group (row) and trial (lane)
    U = S[44:52]                         # kmap key per group and trial
    for t in range(nl):
        if t < nt:
            ids[t] = (_F32(15.0) + _F32(t - nis) * _F32(0.2)) / mx
        else:
            ids[t] = _F32(0.0)
        scl[t] = _F32(1.0) / ids[t]
    half = _F32(0.5)
    one = _F32(1.0)
    zero = _F32(0.0)
    seven = _F32(7.0)
    for i in range(32):
        xi = xval[i]
        Si = S[i]
        for t in range(nl):
            Si[t] = _clampf(_nint_f(half * (ids[t] * xi - one)), zero, seven)
    for k in range(8):
        S0, S1, S2, S3 = S[4 * k], S[4 * k + 1], S[4 * k + 2], S[4 * k + 3]
        Uk = U[k]
        for t in range(nl):
            Uk[t] = S0[t] + _F32(8.0) * S1[t] + _F32(64.0) * S2[t] + _F32(512.0) * S3[t]
    for k in range(8):
        for t in range(nt):
            g = kmap[int(U[k, t])]
            if g >= 0:
                onf[k, t] = one
            else:
                onf[k, t] = zero
                gi = _nearest(nbr, -g - 1, gridf, xval, waux, 4 * k, scl[t])
                for i in range(4):
                    S[4 * k + i, t] = _F32(gridl[gi, i])
    two = _F32(2.0)
    for t in range(nl):
        sqx[t] = zero
        sq2[t] = zero
    for i in range(32):
        w = weight[i]
        wx = w * xval[i]
        Si = S[i]
        for t in range(nl):
            q = two * Si[t] + one
            sqx[t] += wx * q
            sq2[t] += w * q * q
    best = zero
    scale = mx / _F32(15.0)
    tb = -1
    for t in range(nt):
        sumqx = sqx[t]
        sumq2 = sq2[t]
        if sumq2 > zero and sumqx * sumqx > best * sumq2:
            scale = sumqx / sumq2
            best = scale * sumqx
            tb = t
    n_off = 0
    for i in range(32):
        L[i] = 0 if tb < 0 else int(S[i, tb])
    for k in range(8):
        on_grid[k] = on_grid_init if tb < 0 else onf[k, tb] != zero
        if not on_grid[k]:
            n_off += 1
    if n_off > 0 and scale > zero:
        id_ = one / scale
        for k in range(8):
            if on_grid[k] and not fix_all:
                continue
            u = _group_levels(xval, 4 * k, id_, Laux)
            g = kmap[u]
            if g < 0:
                g = _nearest(nbr, -g - 1, gridf, xval, waux, 4 * k, scale)
            for i in range(4):
                L[4 * k + i] = gridl[g, i]
        sumqx, sumq2 = _sums(xval, weight, L)
        if sumq2 > zero:
            scale = sumqx / sumq2
    for k in range(8):
        u = 0
        for i in range(4):
            u |= L[4 * k + i] << (3 * i)
        if kmap[u] < 0:
            raise ValueError("llama.cpp aborts here: a point off the grid")
        gidx[k] = kmap[u]
    return scale


@njit(cache=True, nogil=True, error_model="numpy")
def _weights(xb, qw, o, sigma2, weight, waux):
    if qw.shape[0] > 0:
        for i in range(32):
            weight[i] = qw[o + i] * np.sqrt(sigma2 + xb[i] * xb[i])
    else:
        for i in range(32):
            weight[i] = xb[i] * xb[i]
    for i in range(32):
        waux[i] = np.sqrt(weight[i])


@njit(cache=True, nogil=True, error_model="numpy")
def _sigma2(xbl):
    sumx2 = _F32(0.0)
    for i in range(QK_K):
        sumx2 += xbl[i] * xbl[i]
    return _F32(2.0) * sumx2 / _F32(QK_K)


@njit(cache=True, nogil=True, error_model="numpy")
def _scale_code(id_, s):
    """4-bit code of a sub-block scale: MAX(0, MIN(15, nearest_int(0.5f*(id*s-1))))."""
    return max(0, min(15, _nint(_F32(0.5) * (id_ * s - _F32(1.0)))))


@njit(cache=True, nogil=True, error_model="numpy")
def _signs_and_max(xb, weight, xval, signs, xxs):
    """xval = |xb| and the 4 sign bytes of a sub-block; IQ3_XXS makes each group of 8 have an
    even count of negatives (flipping the value of least weight*x*x) and keeps 7 bits. Returns
    the maximum of xval as C's MAX chain."""
    for k in range(4):
        nflip = 0
        s = 0
        for i in range(8):
            v = xb[8 * k + i]
            if v >= _F32(0.0):
                xval[8 * k + i] = v
            else:
                xval[8 * k + i] = -v
                nflip += 1
                s |= 1 << i
        if xxs and nflip % 2:
            imin = 0
            mn = weight[8 * k] * xb[8 * k] * xb[8 * k]
            for i in range(1, 8):
                ax = weight[8 * k + i] * xb[8 * k + i] * xb[8 * k + i]
                if ax < mn:
                    mn = ax
                    imin = i
            xval[8 * k + imin] = -xval[8 * k + imin]
            s ^= 1 << imin
        signs[k] = s & 127 if xxs else s
    mx = xval[0]
    for i in range(1, 32):
        mx = mx if mx > xval[i] else xval[i]
    return mx


@njit(cache=True, nogil=True, error_model="numpy")
def _quantize(x, qw, out, xxs, kmap, nbr, gridf, gridl):
    """quantize_row_iq3_xxs_impl(256, ...) (xxs) or quantize_row_iq3_s_impl(32, ...) on every row."""
    nrows, n = x.shape
    bs = XXS_BYTES if xxs else S_BYTES
    weight = np.empty(32, dtype=_F32)
    waux = np.empty(32, dtype=_F32)
    xval = np.empty(32, dtype=_F32)
    L = np.empty(32, dtype=np.int64)
    Laux = np.empty(32, dtype=np.int64)
    S = np.empty((52, 32), dtype=_F32)
    ong = np.empty(8, dtype=np.bool_)
    gidx = np.empty(8, dtype=np.int64)
    scales = np.empty(8, dtype=_F32)
    sas = np.empty(8, dtype=np.uint32)
    signs = np.empty(4, dtype=np.int64)
    for r in range(nrows):
        for ibl in range(n // QK_K):
            xbl = x[r, QK_K * ibl:QK_K * (ibl + 1)]
            ob = out[r, bs * ibl:bs * (ibl + 1)]
            for j in range(bs):
                ob[j] = 0
            sigma2 = _sigma2(xbl)
            max_scale = _F32(0.0)
            pos = 0                      # IQ3_S: sub-blocks written (C's qs/signs pointers)
            for ib in range(8):
                xb = xbl[32 * ib:32 * ib + 32]
                sas[ib] = 0
                _weights(xb, qw, QK_K * ibl + 32 * ib, sigma2, weight, waux)
                mx = _signs_and_max(xb, weight, xval, signs, xxs)
                if (mx < _EPS_XXS) if xxs else (mx == _F32(0.0)):
                    scales[ib] = _F32(0.0)
                    continue
                scale = _search(xval, weight, waux, mx, 15 if xxs else 9, xxs, not xxs, kmap, nbr, gridf, gridl,
                                S, L, Laux, ong, gidx)
                if scale < _F32(0.0):
                    scale = -scale
                    for k in range(4):
                        signs[k] = (~signs[k]) & (127 if xxs else 255)
                if xxs:
                    for k in range(8):
                        ob[2 + 8 * ib + k] = gidx[k]
                    sas[ib] = _U32(signs[0] | (signs[1] << 7) | (signs[2] << 14) | (signs[3] << 21))
                else:
                    for k in range(8):
                        ob[2 + 8 * pos + k] = gidx[k] & 255
                        ob[66 + ib] |= (gidx[k] >> 8) << k
                    for k in range(4):
                        ob[74 + 4 * pos + k] = signs[k]
                    pos += 1
                if not scale >= _F32(0.0):
                    raise ValueError("llama.cpp aborts here: GGML_ASSERT(scale >= 0) (NaN input)")
                scales[ib] = scale
                max_scale = max_scale if max_scale > scale else scale
            if max_scale == _F32(0.0):
                if xxs:                  # IQ3_XXS clears its indices, IQ3_S keeps them
                    for j in range(bs):
                        ob[j] = 0
                continue
            d = max_scale / _F32(31.0)
            store_f16(ob, 0, d * (_F32(1.0125) if xxs else _F32(1.033)))
            id_ = _F32(1.0) / d
            for ib in range(8):
                c = _scale_code(id_, scales[ib])
                if xxs:
                    v = sas[ib] | (_U32(c) << _U32(28))
                    for j in range(4):
                        ob[66 + 4 * ib + j] = (v >> _U32(8 * j)) & _U32(0xFF)
                else:
                    ob[106 + ib // 2] |= c << (4 * (ib % 2))


# -- dequantize (dequantize_row_iq3_xxs / _s; gguf-py's order: (d * s-factor) * grid * sign) ---
@njit(cache=True, nogil=True, error_model="numpy")
def _dequantize_xxs(q, out, dgrid, ksigns):
    nrows, n = out.shape
    for r in range(nrows):
        for ibl in range(n // QK_K):
            qb = q[r, XXS_BYTES * ibl:XXS_BYTES * (ibl + 1)]
            y = out[r, QK_K * ibl:QK_K * (ibl + 1)]
            d = load_f16(qb, 0)
            for ib in range(8):
                o = 66 + 4 * ib
                aux = (_U32(qb[o]) | (_U32(qb[o + 1]) << _U32(8)) | (_U32(qb[o + 2]) << _U32(16))
                       | (_U32(qb[o + 3]) << _U32(24)))
                db = d * (_F32(0.5) + _F32(aux >> _U32(28))) * _F32(0.5)
                for l in range(4):
                    sg = ksigns[(aux >> _U32(7 * l)) & _U32(127)]
                    for h in range(2):
                        g = qb[2 + 8 * ib + 2 * l + h]
                        for j in range(4):
                            v = db * _F32(dgrid[g, j])
                            y[32 * ib + 8 * l + 4 * h + j] = -v if (sg >> (4 * h + j)) & 1 else v


@njit(cache=True, nogil=True, error_model="numpy")
def _dequantize_s(q, out, dgrid):
    nrows, n = out.shape
    for r in range(nrows):
        for ibl in range(n // QK_K):
            qb = q[r, S_BYTES * ibl:S_BYTES * (ibl + 1)]
            y = out[r, QK_K * ibl:QK_K * (ibl + 1)]
            d = load_f16(qb, 0)
            for ib in range(8):
                sc = (qb[106 + ib // 2] >> (4 * (ib % 2))) & 15
                db = d * _F32(1 + 2 * sc)
                for k in range(8):
                    g = qb[2 + 8 * ib + k] | (((qb[66 + ib] >> k) & 1) << 8)
                    sg = qb[74 + 4 * ib + k // 2]
                    for j in range(4):
                        v = db * _F32(dgrid[g, j])
                        y[32 * ib + 4 * k + j] = -v if (sg >> (4 * (k % 2) + j)) & 1 else v


# -- the kernel table: thin wrappers passing the tables ---------------------------------------
def quantize_iq3_xxs(x, qw, out):
    kmap, nbr, gridf, gridl, _ = tables(256)
    _quantize(x, qw, out, True, kmap, nbr, gridf, gridl)


def quantize_iq3_s(x, qw, out):
    kmap, nbr, gridf, gridl, _ = tables(512)
    _quantize(x, qw, out, False, kmap, nbr, gridf, gridl)


@lru_cache(maxsize=None)
def _ksigns():
    return ksigns_iq2xs()


def dequantize_iq3_xxs(q, out):
    _dequantize_xxs(q, out, tables(256)[4], _ksigns())


def dequantize_iq3_s(q, out):
    _dequantize_s(q, out, tables(512)[4])


KERNELS = {
    T.IQ3_XXS: (quantize_iq3_xxs, dequantize_iq3_xxs),
    T.IQ3_S: (quantize_iq3_s, dequantize_iq3_s),
}
