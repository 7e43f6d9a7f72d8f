"""Scalar helpers shared by the kernel families: fp16 / bf16 encoding, llama.cpp rounding.

All are ``@njit(cache=True, nogil=True)`` and bit-exact with ggml's reference code:
fp32 -> fp16 rounds to nearest even (as ggml_compute_fp32_to_fp16 / F16C),
fp32 -> bf16 as ggml_compute_fp32_to_bf16, ``nearest_int`` as ggml's (round half even).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

_F32 = np.float32


@njit(cache=True, nogil=True)
def fp16_bits(f):
    """IEEE half bits (as int) of float32 ``f``, round to nearest even; NaN -> 0x7E00."""
    a = np.float64(f)
    if a != a:
        return 0x7E00
    sign = 0
    if a < 0.0 or (a == 0.0 and math.copysign(1.0, a) < 0.0):
        sign = 0x8000
        a = -a
    if a >= 65520.0:
        return sign | 0x7C00
    if a < 6.103515625e-05:  # 2**-14: subnormal half (or zero); quantum 2**-24
        return sign | int(np.rint(a * 16777216.0))
    m, e = math.frexp(a)  # a = m * 2**e, 0.5 <= m < 1
    q = int(np.rint(math.ldexp(a, 11 - e)))  # 1024 <= q <= 2048 (2048 carries into the exponent)
    return sign | (((e + 14) << 10) + (q - 1024))


@njit(cache=True, nogil=True)
def fp16_to_f32(h):
    """float32 value of IEEE half bits ``h``."""
    h = int(h)
    sign = -1.0 if (h & 0x8000) else 1.0
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    if e == 0:
        return np.float32(sign * m * 5.9604644775390625e-08)
    if e == 31:
        if m:
            return np.float32(np.nan)
        return np.float32(sign * np.inf)
    return np.float32(sign * math.ldexp(1024 + m, e - 25))


@njit(cache=True, nogil=True)
def fp16_round(f):
    """float32 -> fp16 -> float32: the value a stored fp16 scale decodes to."""
    return fp16_to_f32(fp16_bits(f))


@njit(cache=True, nogil=True)
def put_fp16(buf, off, f):
    """Write float32 ``f`` as little-endian fp16 into uint8 ``buf`` at ``off``; returns its float32 value."""
    h = fp16_bits(f)
    buf[off] = h & 0xFF
    buf[off + 1] = (h >> 8) & 0xFF
    return fp16_to_f32(h)


@njit(cache=True, nogil=True)
def get_fp16(buf, off):
    """Read a little-endian fp16 from uint8 ``buf`` at ``off`` as float32."""
    return fp16_to_f32(np.int64(buf[off]) | (np.int64(buf[off + 1]) << 8))


@njit(cache=True, nogil=True)
def nearest_int(f):
    """ggml's nearest_int: round half to even (valid for |f| <= 4194303)."""
    return int(np.rint(np.float32(f)))
