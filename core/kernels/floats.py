"""F32, F16 and BF16 "quantization": plain float encodings, bit-exact with ggml.

F16 follows ``ggml_compute_fp32_to_fp16`` (round to nearest even; NaN -> sign | 0x7E00),
BF16 ``ggml_compute_fp32_to_bf16`` (round to nearest even; NaN forced quiet). Values are
written little-endian into the uint8 output. Importance weights are ignored.

The scalar helpers here (float bit casts, branch-free fp16 encode/decode) are
written so that LLVM vectorizes loops over them; the legacy family reuses them.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic
from gguf.constants import GGMLQuantizationType as T

_F32 = np.float32
_U32 = np.uint32
_TO_INF = np.float32(2.0 ** 112)
_TO_ZERO = np.float32(2.0 ** -110)
_EXP_SCALE = np.float32(2.0 ** -112)


# -- bit casts ---------------------------------------------------------------------------
@intrinsic
def f32_bits(typingctx, f):
    """The IEEE bits of a float32 as uint32 (a free bit cast)."""
    if not (isinstance(f, types.Float) and f.bitwidth == 32):
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@intrinsic
def bits_f32(typingctx, u):
    """The float32 whose IEEE bits are uint32 ``u`` (a free bit cast)."""
    if not (isinstance(u, types.Integer) and u.bitwidth == 32):
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(u), codegen


# -- fp16 --------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def f32_to_f16_bits(f):
    """fp16 bits (uint32) of float32 ``f``, as ggml_compute_fp32_to_fp16."""
    base = (abs(f) * _TO_INF) * _TO_ZERO
    w = f32_bits(f)
    shl1_w = _U32(w + w)
    sign = w & _U32(0x80000000)
    bias = shl1_w & _U32(0xFF000000)
    if bias < _U32(0x71000000):
        bias = _U32(0x71000000)
    base = bits_f32(_U32((bias >> _U32(1)) + _U32(0x07800000))) + base
    bits = f32_bits(base)
    nonsign = ((bits >> _U32(13)) & _U32(0x7C00)) + (bits & _U32(0x0FFF))
    if shl1_w > _U32(0xFF000000):
        nonsign = _U32(0x7E00)
    return (sign >> _U32(16)) | nonsign


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def f16_bits_to_f32(h):
    """float32 value of fp16 bits ``h``, as ggml_compute_fp16_to_fp32; exact, and NaN
    payloads are kept bit for bit (as numpy's float16 -> float32)."""
    w = _U32(h) << _U32(16)
    sign = w & _U32(0x80000000)
    two_w = _U32(w + w)
    pre = _U32((two_w >> _U32(4)) + _U32(0x70000000))
    normalized = bits_f32(pre) * _EXP_SCALE
    denorm = bits_f32(_U32((two_w >> _U32(17)) | _U32(0x3F000000))) - _F32(0.5)
    res = f32_bits(denorm) if two_w < _U32(0x08000000) else f32_bits(normalized)
    if two_w >= _U32(0xF8000000):  # inf / NaN: the exponent alone moves
        res = pre
    return bits_f32(_U32(sign | res))


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def store_f16(buf, off, f):
    """Write float32 ``f`` as little-endian fp16 at ``buf[off]``; returns the bits."""
    h = f32_to_f16_bits(f)
    buf[off] = h & _U32(0xFF)
    buf[off + 1] = h >> _U32(8)
    return h


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def load_f16(buf, off):
    """Read a little-endian fp16 at ``buf[off]`` as float32."""
    return f16_bits_to_f32(_U32(buf[off]) | (_U32(buf[off + 1]) << _U32(8)))


# -- bf16 --------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def f32_to_bf16_bits(f):
    """bf16 bits (uint32) of float32 ``f``, as ggml_compute_fp32_to_bf16."""
    u = f32_bits(f)
    r = _U32(u + (_U32(0x7FFF) + ((u >> _U32(16)) & _U32(1)))) >> _U32(16)
    if (u & _U32(0x7FFFFFFF)) > _U32(0x7F800000):
        r = (u >> _U32(16)) | _U32(64)
    return r


# -- kernels (rows viewed as little-endian words, as on every platform numba targets) ---
@njit(cache=True, nogil=True, error_model="numpy")
def quantize_f32(x, qw, out):
    for r in range(x.shape[0]):
        o = out[r].view(np.float32)
        for k in range(x.shape[1]):
            o[k] = x[r, k]


@njit(cache=True, nogil=True, error_model="numpy")
def dequantize_f32(q, out):
    for r in range(out.shape[0]):
        h = q[r].view(np.float32)
        for k in range(out.shape[1]):
            out[r, k] = h[k]


@njit(cache=True, nogil=True, error_model="numpy")
def quantize_f16(x, qw, out):
    for r in range(x.shape[0]):
        o = out[r].view(np.uint16)
        for k in range(x.shape[1]):
            o[k] = f32_to_f16_bits(x[r, k])


@njit(cache=True, nogil=True, error_model="numpy")
def dequantize_f16(q, out):
    for r in range(out.shape[0]):
        h = q[r].view(np.uint16)
        for k in range(out.shape[1]):
            out[r, k] = f16_bits_to_f32(h[k])


@njit(cache=True, nogil=True, error_model="numpy")
def quantize_bf16(x, qw, out):
    for r in range(x.shape[0]):
        o = out[r].view(np.uint16)
        for k in range(x.shape[1]):
            o[k] = f32_to_bf16_bits(x[r, k])


@njit(cache=True, nogil=True, error_model="numpy")
def dequantize_bf16(q, out):
    for r in range(out.shape[0]):
        h = q[r].view(np.uint16)
        for k in range(out.shape[1]):
            out[r, k] = bits_f32(_U32(_U32(h[k]) << _U32(16)))


# GGUF type -> (quantize, dequantize): the registry (core.kernels.get_kernel) reads this table.
KERNELS = {
    T.F32: (quantize_f32, dequantize_f32),
    T.F16: (quantize_f16, dequantize_f16),
    T.BF16: (quantize_bf16, dequantize_bf16),
}
