"""Q1_0 and Q2_0: 1-bit and 2-bit blocks with one fp16 scale, byte-identical to llama.cpp.

``ggml_quantize_chunk`` runs ``quantize_q1_0`` / ``quantize_q2_0``; with importance
weights they call ``quantize_row_q1_0_ref`` / ``quantize_row_q2_0_ref`` row by row,
without them over all rows at once: the weights are never read, and the bytes are the
same either way. Decoders: ``dequantize_row_q1_0`` / ``dequantize_row_q2_0``.

- Q1_0 (type 41), blocks of 128: ``d qs[16]`` (18 B). ``d = (sum of |x|, in order) / 128``;
  bit ``j % 8`` of byte ``j / 8`` is set when ``x[j] >= 0`` (-0.0 included, NaN not); a
  weight decodes to ``d`` (bit set) or ``-d``.
- Q2_0 (type 42), blocks of 64: ``d qs[16]`` (18 B). ``d = max |x|`` (NaN skipped:
  ``if (a > amax)``), ``id = d > 0 ? 1/d : 0``; ``q = (int)roundf(x * id) + 1`` clamped to
  0..3 sits in bits ``2 (j % 4)`` of byte ``j / 4``; it decodes to ``(q - 1) * d``.
  gguf-py 0.19.0's enum lacks type 42: ``core._gguf_compat`` adds it (``core`` imports it first).

Float32 arithmetic as the C code (the Q1_0 sum is sequential; up to 8 blocks of a row
are summed side by side, each in C order, which changes speed, not results); fp16 as
ggml. A float to int conversion of NaN or of a value out of int range gives INT_MIN as
on x86-64 (``cvttss2si``): in Q2_0 that is a NaN or infinite weight, or any weight of a
block whose scale is subnormal (``1/d`` is infinite), all of which clamp to q = 0 (other
platforms may differ there). Q2_0 blocks without NaN, with finite ``d`` and ``1/d``
(``|x * id| <= 1 + 2**-23``, where roundf is two comparisons with +-0.5) take a
branch-free loop that vectorizes, the others the exact general path.
"""
from __future__ import annotations

import numpy as np
from numba import njit
from gguf.constants import GGMLQuantizationType as T

from .floats import bits_f32, f32_bits, load_f16, store_f16
from .legacy import _roundf
from .ternary import minus_one_f32

_F32 = np.float32
_U32 = np.uint32
QK1_0 = 128
QK2_0 = 64
BLOCK_BYTES = 18  # both types
_TWO31 = np.float32(2147483648.0)
_LANES = 8


# -- Q1_0 --------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def _q1_signs(xr, o, yr, ob):
    """Bit j % 8 of byte 2 + j / 8 set where xr[o + j] >= 0 (false for NaN)."""
    for k in range(QK1_0 // 8):
        v = 0
        for j in range(8):
            v |= np.int32(xr[o + 8 * k + j] >= _F32(0.0)) << j
        yr[ob + 2 + k] = v


@njit(cache=True, nogil=True, error_model="numpy")
def quantize_q1_0(x, qw, out):
    nrows, n = x.shape
    nb = n // QK1_0
    sums = np.zeros(nb, dtype=np.float32)
    for r in range(nrows):
        xr = x[r]
        yr = out[r]
        b0 = 0
        while b0 < nb:  # blocks b0 .. b0+_LANES-1 of the row, one sequential sum per lane
            if nb - b0 >= _LANES:
                o = b0 * QK1_0
                for c in range(_LANES):
                    sums[b0 + c] = _F32(0.0)
                for j in range(QK1_0):
                    for c in range(_LANES):
                        sums[b0 + c] += abs(xr[o + c * QK1_0 + j])
                b0 += _LANES
            else:
                s = _F32(0.0)
                for j in range(QK1_0):
                    s += abs(xr[b0 * QK1_0 + j])
                sums[b0] = s
                b0 += 1
        for b in range(nb):
            store_f16(yr, b * BLOCK_BYTES, sums[b] / _F32(QK1_0))
            _q1_signs(xr, b * QK1_0, yr, b * BLOCK_BYTES)


@njit(cache=True, nogil=True, error_model="numpy")
def dequantize_q1_0(q, out):
    nrows, n = out.shape
    for r in range(nrows):
        qr = q[r]
        yr = out[r]
        for b in range(n // QK1_0):
            ob = b * BLOCK_BYTES
            o = b * QK1_0
            db = f32_bits(load_f16(qr, ob)) ^ _U32(0x80000000)  # -d: a clear bit flips d's sign back
            for j in range(QK1_0):
                bit = (_U32(qr[ob + 2 + (j >> 3)]) >> _U32(j & 7)) & _U32(1)
                yr[o + j] = bits_f32(_U32(db ^ (bit << _U32(31))))


# -- Q2_0 --------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def _c_int_roundf(v):
    """``(int)roundf(v)`` with x86-64's conversion: INT_MIN for NaN and |v| >= 2**31."""
    if abs(v) < _TWO31:
        return np.int64(_roundf(v))
    return np.int64(-2147483648)


@njit(cache=True, nogil=True, error_model="numpy")
def quantize_q2_0(x, qw, out):
    nrows, n = x.shape
    codes = np.zeros(QK2_0, dtype=np.int64)
    for r in range(nrows):
        xr = x[r]
        yr = out[r]
        for b in range(n // QK2_0):
            o = b * QK2_0
            ob = b * BLOCK_BYTES
            # max |x| on the bit patterns (ordered as the values), so the loop vectorizes;
            # with a NaN (bits above +inf's) again, skipping it as the C code's `a > amax` does
            mx = _U32(0)
            for j in range(QK2_0):
                mx = max(f32_bits(xr[o + j]) & _U32(0x7FFFFFFF), mx)
            mb = mx
            if mx > _U32(0x7F800000):
                mb = _U32(0)
                for j in range(QK2_0):
                    a = f32_bits(xr[o + j]) & _U32(0x7FFFFFFF)
                    mb = max(a if a <= _U32(0x7F800000) else _U32(0), mb)
            d = bits_f32(_U32(mb))
            idd = _F32(1.0) / d if d > _F32(0.0) else _F32(0.0)
            store_f16(yr, ob, d)
            if mx < _U32(0x7F800000) and idd < _F32(np.inf):
                # no NaN, finite d and id: |x * id| <= 1 + 2**-23, roundf is a comparison
                for j in range(QK2_0):
                    p = xr[o + j] * idd
                    codes[j] = 1 + np.int64(p >= _F32(0.5)) - np.int64(p <= _F32(-0.5))
            else:
                for j in range(QK2_0):
                    codes[j] = min(max(_c_int_roundf(xr[o + j] * idd) + 1, 0), 3)
            for k in range(QK2_0 // 4):
                yr[ob + 2 + k] = (codes[4 * k] | (codes[4 * k + 1] << 2) | (codes[4 * k + 2] << 4)
                                  | (codes[4 * k + 3] << 6))


@njit(cache=True, nogil=True, error_model="numpy")
def dequantize_q2_0(q, out):
    nrows, n = out.shape
    for r in range(nrows):
        qr = q[r]
        yr = out[r]
        for b in range(n // QK2_0):
            ob = b * BLOCK_BYTES
            o = b * QK2_0
            d = load_f16(qr, ob)
            for k in range(QK2_0 // 4):
                v = _U32(qr[ob + 2 + k])
                yr[o + 4 * k] = minus_one_f32(_U32(v & _U32(3))) * d
                yr[o + 4 * k + 1] = minus_one_f32(_U32((v >> _U32(2)) & _U32(3))) * d
                yr[o + 4 * k + 2] = minus_one_f32(_U32((v >> _U32(4)) & _U32(3))) * d
                yr[o + 4 * k + 3] = minus_one_f32(_U32(v >> _U32(6))) * d


# GGUF type -> (quantize, dequantize): the registry (core.kernels.get_kernel) reads this table.
KERNELS = {
    T.Q1_0: (quantize_q1_0, dequantize_q1_0),
    T.Q2_0: (quantize_q2_0, dequantize_q2_0),
}
