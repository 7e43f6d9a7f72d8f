"""TQ1_0 and TQ2_0: ternary (BitNet b1.58, TriLM) super-blocks of 256, byte-identical to llama.cpp.

``ggml_quantize_chunk`` runs ``quantize_tq1_0`` / ``quantize_tq2_0``, which ignore the
importance weights and call ``quantize_row_tq1_0_ref`` / ``quantize_row_tq2_0_ref`` over
all the rows at once; the decoders are ``dequantize_row_tq1_0`` / ``dequantize_row_tq2_0``.

Per super-block: ``d = amax`` (``amax = MAX(amax, fabsf(x))`` from 0, in order), stored
as fp16; ``id = d ? 1/d : 0`` (the float32 ``d``); each weight becomes the trit
``t = lroundf(x * id) + 1`` (0, 1, 2 for -1, 0, +1); it decodes to ``(t - 1) * d``.

Block layouts (little-endian fp16 ``d`` last):

- TQ1_0 ``qs[48] qh[4] d`` (54 B). Five trits per byte, most significant first, stored
  as ``ceil(value * 256 / 243)`` so that a byte times 3**n keeps trit n on top:
  byte ``m < 32`` of ``qs`` holds weights ``m + 32 n`` (n = 0..4, weights 0..159),
  byte ``32 + m`` (m < 16) holds ``160 + m + 16 n`` (weights 160..239); ``qh[j]`` holds
  four trits, weights ``240 + j + 4 n`` (n = 0..3), then a zero trit.
- TQ2_0 ``qs[64] d`` (66 B). Byte ``32 c + m`` holds weight ``128 c + 32 n + m`` in
  bits ``2n..2n+1``.

All values follow the C code: ``MAX`` as a ternary (a NaN makes the running maximum NaN
and the next weight replaces it), ``lroundf`` exactly (half away from zero, no float32
rounding of ``|v| + 0.5``), and the uint8 wrap-around of the trit packing. For NaN and
out-of-range products ``lroundf`` returns what x86-64 glibc returns, LONG_MIN (the
``cvttss2si`` result), whose low bits are zero: so NaN and infinities encode as the trit
1, as llama.cpp's x86-64 build does (other platforms' libm may differ there).

Speed: a block without NaN, with finite ``d`` and ``1/d``, has ``|x * id| <= 1 + 2**-23``,
where ``lroundf`` is two comparisons with +-0.5; such blocks take a branch-free loop that
vectorizes, the others the exact general path. Decoding builds floats from bits
(``minus_one_f32``) instead of int-to-float conversions, which LLVM leaves scalar here.
"""
from __future__ import annotations

import numpy as np
from numba import njit
from gguf.constants import GGMLQuantizationType as T

from .floats import bits_f32, f32_bits, load_f16, store_f16

_F32 = np.float32
_U32 = np.uint32
QK_K = 256
TQ1_BYTES = 54
TQ2_BYTES = 66
_TWO52 = np.float32(4503599627370496.0)
_TWO63 = np.float32(9223372036854775808.0)
_LONG_MIN = np.int64(-9223372036854775807 - 1)


# -- scalar helpers ----------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def lroundf(v):
    """C lroundf of a float32 as int64 (half away from zero); NaN and |v| >= 2**63 give
    LONG_MIN, as glibc on x86-64."""
    a = abs(v)
    if a < _TWO52:  # a + 0.5 is exact in float64
        r = np.int64(np.floor(np.float64(a) + 0.5))
    elif a < _TWO63:  # already an integer
        r = np.int64(a)
    else:
        return _LONG_MIN
    return -r if v < _F32(0.0) else r


@njit(cache=True, nogil=True, error_model="numpy")
def minus_one_f32(t):
    """float32(t - 1) of a uint32 ``t < 2**23``, exactly, by bits (``2**23 + t`` minus
    ``2**23 + 1``): unlike an int-to-float conversion it lets the decode loops vectorize."""
    return bits_f32(_U32(_U32(0x4B000000) | t)) - _F32(8388609.0)


@njit(cache=True, nogil=True, error_model="numpy")
def _trit(v, idd, fast):
    """(lroundf(v * id) + 1) & 0xFF: the trit (its low byte, all the packing keeps).

    ``fast``: the block has no NaN and finite ``d`` and ``id``, so |v * id| <= 1 + 2**-23
    and lroundf is a comparison with +-0.5 (which vectorizes)."""
    p = v * idd
    if fast:
        return 1 + np.int64(p >= _F32(0.5)) - np.int64(p <= _F32(-0.5))
    return (lroundf(p) + 1) & 0xFF


@njit(cache=True, nogil=True, error_model="numpy")
def _block_scale(xr, o):
    """(d, id, fast) of the super-block at xr[o:o+256]: ``d`` is C's
    ``amax = MAX(amax, fabsf(x[j]))`` from 0, ``id = d ? 1/d : 0``; ``fast`` as in _trit.

    Without NaN ``d`` is the plain maximum, taken on the bit patterns of |x| (which order
    like the values) so that the loop vectorizes; with a NaN the C order matters (a NaN
    makes the running value NaN, and the next element replaces it), so it is replayed.
    """
    mb = _U32(0)
    for j in range(QK_K):
        b = f32_bits(xr[o + j]) & _U32(0x7FFFFFFF)
        mb = b if b > mb else mb
    if mb <= _U32(0x7F800000):
        d = bits_f32(_U32(mb))
    else:
        d = _F32(0.0)
        for j in range(QK_K):
            a = abs(xr[o + j])
            d = d if d > a else a
    idd = _F32(1.0) / d if d != _F32(0.0) else _F32(0.0)
    return d, idd, mb < _U32(0x7F800000) and idd < _F32(np.inf)


# -- TQ1_0 -------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def _pack5(q):
    """The C code's ``((uint16_t)q * 256 + 242) / 243`` of the uint8 q, stored as uint8."""
    return (((q & 0xFF) * 256 + 242) // 243) & 0xFF


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _tq1_trits(xr, o, yr, ob, idd, fast):
    for m in range(32):
        q = 0
        for k in range(5):
            q = q * 3 + _trit(xr[o + m + 32 * k], idd, fast)
        yr[ob + m] = _pack5(q)
    for m in range(16):
        q = 0
        for k in range(5):
            q = q * 3 + _trit(xr[o + 160 + m + 16 * k], idd, fast)
        yr[ob + 32 + m] = _pack5(q)
    for j in range(4):
        q = 0
        for k in range(4):
            q = q * 3 + _trit(xr[o + 240 + j + 4 * k], idd, fast)
        yr[ob + 48 + j] = _pack5(q * 3)


@njit(cache=True, nogil=True, error_model="numpy")
def quantize_tq1_0(x, qw, out):
    nrows, n = x.shape
    for r in range(nrows):
        xr = x[r]
        yr = out[r]
        for b in range(n // QK_K):
            o = b * QK_K
            ob = b * TQ1_BYTES
            d, idd, fast = _block_scale(xr, o)
            store_f16(yr, ob + 52, d)
            if fast:  # the constant flag compiles a loop without the lroundf branches
                _tq1_trits(xr, o, yr, ob, idd, True)
            else:
                _tq1_trits(xr, o, yr, ob, idd, False)


@njit(cache=True, nogil=True, error_model="numpy")
def _untrit(byte, p):
    """float32(trit - 1), the trit on top of ``byte * p`` (p a power of 3): as the C code's
    ``((uint8_t)(q * p) * 3) >> 8``."""
    return minus_one_f32(_U32((((_U32(byte) * p) & _U32(0xFF)) * _U32(3)) >> _U32(8)))


@njit(cache=True, nogil=True, error_model="numpy")
def dequantize_tq1_0(q, out):
    nrows, n = out.shape
    for r in range(nrows):
        qr = q[r]
        yr = out[r]
        for b in range(n // QK_K):
            o = b * QK_K
            ob = b * TQ1_BYTES
            d = load_f16(qr, ob + 52)
            for m in range(32):
                v = qr[ob + m]
                yr[o + m] = _untrit(v, _U32(1)) * d
                yr[o + 32 + m] = _untrit(v, _U32(3)) * d
                yr[o + 64 + m] = _untrit(v, _U32(9)) * d
                yr[o + 96 + m] = _untrit(v, _U32(27)) * d
                yr[o + 128 + m] = _untrit(v, _U32(81)) * d
            for m in range(16):
                v = qr[ob + 32 + m]
                yr[o + 160 + m] = _untrit(v, _U32(1)) * d
                yr[o + 176 + m] = _untrit(v, _U32(3)) * d
                yr[o + 192 + m] = _untrit(v, _U32(9)) * d
                yr[o + 208 + m] = _untrit(v, _U32(27)) * d
                yr[o + 224 + m] = _untrit(v, _U32(81)) * d
            for j in range(4):
                v = qr[ob + 48 + j]
                yr[o + 240 + j] = _untrit(v, _U32(1)) * d
                yr[o + 244 + j] = _untrit(v, _U32(3)) * d
                yr[o + 248 + j] = _untrit(v, _U32(9)) * d
                yr[o + 252 + j] = _untrit(v, _U32(27)) * d


# -- TQ2_0 -------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _tq2_trits(xr, o, yr, ob, idd, fast):
    for c in range(2):
        for m in range(32):
            q = 0
            for k in range(4):
                q |= (_trit(xr[o + 128 * c + 32 * k + m], idd, fast) & 3) << (2 * k)
            yr[ob + 32 * c + m] = q


@njit(cache=True, nogil=True, error_model="numpy")
def quantize_tq2_0(x, qw, out):
    nrows, n = x.shape
    for r in range(nrows):
        xr = x[r]
        yr = out[r]
        for b in range(n // QK_K):
            o = b * QK_K
            ob = b * TQ2_BYTES
            d, idd, fast = _block_scale(xr, o)
            store_f16(yr, ob + 64, d)
            if fast:
                _tq2_trits(xr, o, yr, ob, idd, True)
            else:
                _tq2_trits(xr, o, yr, ob, idd, False)


@njit(cache=True, nogil=True, error_model="numpy")
def dequantize_tq2_0(q, out):
    nrows, n = out.shape
    for r in range(nrows):
        qr = q[r]
        yr = out[r]
        for b in range(n // QK_K):
            o = b * QK_K
            ob = b * TQ2_BYTES
            d = load_f16(qr, ob + 64)
            for c in range(2):
                for k in range(4):
                    sh = _U32(2 * k)
                    for m in range(32):
                        t = _U32((_U32(qr[ob + 32 * c + m]) >> sh) & _U32(3))
                        yr[o + 128 * c + 32 * k + m] = minus_one_f32(t) * d


# GGUF type -> (quantize, dequantize): the registry (core.kernels.get_kernel) reads this table.
KERNELS = {
    T.TQ1_0: (quantize_tq1_0, dequantize_tq1_0),
    T.TQ2_0: (quantize_tq2_0, dequantize_tq2_0),
}
