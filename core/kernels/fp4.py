"""MXFP4 and NVFP4: E2M1 4-bit floats with shared power-of-two / E4M3 scales, byte-identical to llama.cpp.

``ggml_quantize_chunk`` runs ``quantize_mxfp4`` / ``quantize_nvfp4`` (ggml-quants.c), which
ignore importance weights and call ``quantize_row_mxfp4_ref`` / ``quantize_row_nvfp4_ref``.
Both code a weight as the index into ``kvalues_mxfp4`` (the E2M1 values doubled:
0 1 2 3 4 6 8 12, then the same negated, index 8 being -0) nearest to ``x`` at scale ``d``
(``best_index_mxfp4``: the first index of least ``|kvalue * d - x|``, so NaN codes as 0).

- MXFP4 (blocks of 32): E8M0 exponent ``e = floor(log2f(amax)) - 2 + 127`` (0 when
  ``amax`` is 0), ``d = 2**(e - 128)`` (``ggml_e8m0_to_fp32_half``: half the E8M0 value, as
  the kvalues are doubled). ``log2f`` is the C library's (Numba calls the same one), and
  the float-to-uint8 cast wraps as x86's conversion does (an infinity gives 0, a subnormal
  ``amax`` a wrapped exponent).
- NVFP4 (blocks of 64 = 4 sub-blocks of 16): one UE4M3 scale per sub-block,
  ``ggml_fp32_to_ue4m3(amax / 6)`` (unsigned E4M3, bias 7, mantissa rounded up on its
  next bit, 448 at most, subnormals below 2**-6), decoded by ``ggml_ue4m3_to_fp32`` at half
  value (0x00 and 0x7F decode to 0).

Block layouts: MXFP4 ``e qs[16]`` (17 B); NVFP4 ``d[4] qs[32]`` (36 B), sub-block ``s``
at ``qs[8 s : 8 s + 8]``. In each run of qs bytes of a block (or sub-block) of ``n``
weights, nibble ``j`` holds weight ``j`` (low) and ``j + n / 2`` (high).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit
from gguf.constants import GGMLQuantizationType as T

from .floats import bits_f32, f32_bits

_F32 = np.float32
_U32 = np.uint32
KVALUES_MXFP4 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.int8)
_KV = KVALUES_MXFP4.astype(np.float32)


def _ue4m3_table() -> np.ndarray:
    """ggml_ue4m3_to_fp32 of every byte (exact: at most 4 significant bits times a power of two)."""
    t = np.zeros(256, np.float64)
    for x in range(256):
        if x in (0, 0x7F):
            continue
        e, m = (x >> 3) & 0xF, x & 7
        t[x] = (m * 2.0 ** -9 if e == 0 else (1.0 + m / 8.0) * 2.0 ** (e - 7)) * 0.5
    return t.astype(np.float32)


UE4M3_TO_F32 = _ue4m3_table()


# -- scale helpers -----------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def e8m0_to_f32_half(e):
    """ggml_e8m0_to_fp32_half: 2**(e - 128) as float32 (subnormal for e < 2)."""
    e = _U32(e)
    return bits_f32(_U32(_U32(0x00200000) << e) if e < _U32(2) else _U32((e - _U32(1)) << _U32(23)))


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def mxfp4_exponent(amax):
    """The E8M0 byte of quantize_row_mxfp4_ref: (uint8_t)(floorf(log2f(amax)) - 2 + 127), 0 for 0.
    The cast is x86's (to int32, low byte kept; an infinity gives 0x80000000, low byte 0)."""
    if not (amax > _F32(0.0)):
        return 0
    v = np.floor(math.log2(amax)) - _F32(2.0) + _F32(127.0)
    if not (abs(v) < _F32(2147483648.0)):
        return 0
    return np.int64(v) & 0xFF


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def f32_to_ue4m3(x):
    """ggml_fp32_to_ue4m3: unsigned E4M3 byte of float32 x (0 for x <= 0 or NaN)."""
    if not (x > _F32(0.0)):
        return 0
    if x > _F32(448.0):
        x = _F32(448.0)
    bits = f32_bits(x)
    exp = np.int64((bits >> _U32(23)) & _U32(0xFF)) - 127 + 7
    man = np.int64((bits >> _U32(20)) & _U32(7))
    if exp <= 0:
        m = np.int64(x * _F32(512.0) + _F32(0.5))
        if m > 7:
            m = 7
        return m if m >= 1 else 0
    if exp >= 15:
        return 0x7E
    man += np.int64((bits >> _U32(19)) & _U32(1))
    if man > 7:
        man = 0
        exp += 1
        if exp >= 15:
            return 0x7E
    return (exp << 3) | man


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _amax(xr, o, n):
    a = _F32(0.0)
    for j in range(n):
        v = abs(xr[o + j])
        if a < v:
            a = v
    return a


@njit(cache=True, nogil=True, error_model="numpy")
def _codes(xr, D, kv, C):
    """C[j] = best_index_mxfp4(xr[j], D[j]) (the first index of least |kv * d - x|) over a
    row; one loop over the row with the 16 candidates unrolled, so it vectorizes."""
    for j in range(xr.shape[0]):
        x = xr[j]
        d = D[j]
        bi = np.int32(0)
        be = abs(kv[0] * d - x)
        for i in range(1, 16):
            err = abs(kv[i] * d - x)
            if err < be:
                bi = np.int32(i)
                be = err
        C[j] = bi


@njit(cache=True, nogil=True, error_model="numpy")
def _pack(C, o, h, out, r, ob):
    """out[r, ob + j] = C[o + j] | C[o + h + j] << 4 for j < h: a (sub-)block of 2h codes."""
    for j in range(h):
        out[r, ob + j] = C[o + j] | (C[o + h + j] << 4)


# -- MXFP4 -------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def quantize_mxfp4(x, qw, out):
    """quantize_row_mxfp4_ref over every row; ``qw`` is ignored (as llama.cpp does)."""
    nrows, n = x.shape
    kv = _KV
    D = np.empty(n, np.float32)
    C = np.empty(n, np.int32)
    for r in range(nrows):
        xr = x[r]
        for b in range(n // 32):
            e = mxfp4_exponent(_amax(xr, 32 * b, 32))
            out[r, 17 * b] = e
            D[32 * b:32 * b + 32] = e8m0_to_f32_half(e)
        _codes(xr, D, kv, C)
        for b in range(n // 32):
            _pack(C, 32 * b, 16, out, r, 17 * b + 1)


@njit(cache=True, nogil=True, error_model="numpy")
def dequantize_mxfp4(q, out):
    nrows, n = out.shape
    kv = _KV
    for r in range(nrows):
        for b in range(n // 32):
            ob = 17 * b
            d = e8m0_to_f32_half(q[r, ob])
            for j in range(16):
                c = q[r, ob + 1 + j]
                out[r, 32 * b + j] = kv[c & 0xF] * d
                out[r, 32 * b + 16 + j] = kv[c >> 4] * d


# -- NVFP4 -------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def quantize_nvfp4(x, qw, out):
    """quantize_row_nvfp4_ref over every row; ``qw`` is ignored (as llama.cpp does)."""
    nrows, n = x.shape
    kv = _KV
    dec = UE4M3_TO_F32
    D = np.empty(n, np.float32)
    C = np.empty(n, np.int32)
    for r in range(nrows):
        xr = x[r]
        for b in range(n // 16):
            ue = f32_to_ue4m3(_amax(xr, 16 * b, 16) / _F32(6.0))
            out[r, 36 * (b // 4) + b % 4] = ue
            D[16 * b:16 * b + 16] = dec[ue]
        _codes(xr, D, kv, C)
        for b in range(n // 16):
            _pack(C, 16 * b, 8, out, r, 36 * (b // 4) + 4 + 8 * (b % 4))


@njit(cache=True, nogil=True, error_model="numpy")
def dequantize_nvfp4(q, out):
    nrows, n = out.shape
    kv = _KV
    dec = UE4M3_TO_F32
    for r in range(nrows):
        for b in range(n // 64):
            ob = 36 * b
            for s in range(4):
                d = dec[q[r, ob + s]]
                yo = 64 * b + 16 * s
                for j in range(8):
                    c = q[r, ob + 4 + 8 * s + j]
                    out[r, yo + j] = kv[c & 0xF] * d
                    out[r, yo + 8 + j] = kv[c >> 4] * d


# GGUF type -> (quantize, dequantize): the registry (core.kernels.get_kernel) reads this table.
KERNELS = {
    T.MXFP4: (quantize_mxfp4, dequantize_mxfp4),
    T.NVFP4: (quantize_nvfp4, dequantize_nvfp4),
}
