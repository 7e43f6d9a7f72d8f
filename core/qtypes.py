"""GGUF tensor types: names, block geometry and which ones Quant Studio can write.

Everything here derives from ``gguf.constants`` (GGMLQuantizationType,
GGML_QUANT_SIZES); nothing is re-typed. Names are llama.cpp's (``Q4_K``). Types llama.cpp has and
the installed gguf-py lacks (Q2_0) are added to those enums by ``core._gguf_compat``, which
``core/__init__.py`` runs first.
"""
from __future__ import annotations

from dataclasses import dataclass

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from .errors import PlanError

T = GGMLQuantizationType

# Kernel family module (core.kernels.<family>) -> the weight types it writes: an index, so that a
# type's family is imported only when the type is used. Each module ends with its KERNELS table
# (type -> quantize, dequantize), which a test checks against this index. Only these can be written.
KERNEL_FAMILIES: dict[str, tuple[GGMLQuantizationType, ...]] = {
    "floats": (T.F32, T.F16, T.BF16),
    "legacy": (T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1),
    "kquants": (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K),
    "iq4": (T.IQ4_NL, T.IQ4_XS),
    "fp4": (T.MXFP4, T.NVFP4),
    "ternary": (T.TQ1_0, T.TQ2_0),
    "lowbit": (T.Q1_0, T.Q2_0),
    "iq3": (T.IQ3_XXS, T.IQ3_S),
    "iq2": (T.IQ2_XXS, T.IQ2_XS, T.IQ2_S),
    "iq1": (T.IQ1_S, T.IQ1_M),
}
KERNEL_FAMILY: dict[GGMLQuantizationType, str] = {t: fam for fam, ts in KERNEL_FAMILIES.items() for t in ts}

# Types whose quantizer needs importance weights (ggml_quantize_requires_imatrix: llama.cpp aborts without).
REQUIRES_IMATRIX = {T.IQ2_XXS, T.IQ2_XS, T.IQ1_S}

# Types that are intermediate-only in llama.cpp and never offered for weights.
INTERMEDIATE_ONLY = {T.Q8_K}

FLOAT_TYPES = {T.F32, T.F16, T.BF16, T.F64}

# Short explanations shown as tooltips / in `--help` tables.
DESCRIPTIONS: dict[GGMLQuantizationType, str] = {
    T.F32: "32-bit float, lossless",
    T.F16: "16-bit IEEE half float",
    T.BF16: "bfloat16: float32's range, 8-bit mantissa",
    T.Q8_0: "8-bit, blocks of 32 with one fp16 scale (8.5 bpw)",
    T.Q4_0: "4-bit, blocks of 32 with one fp16 scale, symmetric (4.5 bpw)",
    T.Q4_1: "4-bit, blocks of 32 with fp16 scale and minimum (5.0 bpw)",
    T.Q5_0: "5-bit, blocks of 32 with one fp16 scale, symmetric (5.5 bpw)",
    T.Q5_1: "5-bit, blocks of 32 with fp16 scale and minimum (6.0 bpw)",
    T.Q2_K: "2-bit K-quant, super-blocks of 256, 4-bit sub-block scales/mins (2.625 bpw)",
    T.Q3_K: "3-bit K-quant, super-blocks of 256, 6-bit sub-block scales (3.4375 bpw)",
    T.Q4_K: "4-bit K-quant, super-blocks of 256, 6-bit scales and mins (4.5 bpw)",
    T.Q5_K: "5-bit K-quant, super-blocks of 256, 6-bit scales and mins (5.5 bpw)",
    T.Q6_K: "6-bit K-quant, super-blocks of 256, 8-bit sub-block scales (6.5625 bpw)",
    T.IQ4_NL: "4-bit non-linear (16-level codebook), blocks of 32 with one fp16 scale (4.5 bpw)",
    T.IQ4_XS: "4-bit non-linear, super-blocks of 256 with 6-bit block scales (4.25 bpw)",
    T.MXFP4: "4-bit E2M1 floats, blocks of 32 with a power-of-two (E8M0) scale (4.25 bpw)",
    T.NVFP4: "4-bit E2M1 floats, blocks of 64 with four E4M3 sub-block scales (4.5 bpw); no llama-quantize preset",
    T.TQ1_0: "ternary {-1, 0, +1}, super-blocks of 256 with one fp16 scale, 5 trits per byte (1.6875 bpw); "
             "for models trained ternary (BitNet b1.58)",
    T.TQ2_0: "ternary {-1, 0, +1}, super-blocks of 256 with one fp16 scale, 2 bits each (2.0625 bpw); "
             "for models trained ternary",
    T.IQ3_XXS: "3-bit lattice (256-point grid of 4-value groups), super-blocks of 256 with 4-bit block scales "
               "(3.0625 bpw)",
    T.IQ3_S: "3-bit lattice (512-point grid), super-blocks of 256 with 4-bit block scales and sign bits (3.4375 bpw)",
    T.IQ2_XXS: "2-bit i-quant, 256-point lattice per 8 weights, needs an imatrix (2.0625 bpw)",
    T.IQ2_XS: "2-bit i-quant, 512-point lattice, 4-bit scales per 16, needs an imatrix (2.3125 bpw)",
    T.IQ2_S: "2-bit i-quant, 1024-point lattice, explicit signs, 4-bit scales per 16 (2.5625 bpw)",
    T.IQ1_S: "1-bit ternary i-quant, 2048-point lattice, needs an imatrix (1.5625 bpw)",
    T.IQ1_M: "1-bit ternary i-quant, scales per 16, no fp16 d field (1.75 bpw)",
    T.Q1_0: "1-bit signs, blocks of 128 with one fp16 scale (1.125 bpw); for models trained binary",
    T.Q2_0: "2-bit codes, blocks of 64 with one fp16 scale d = max |x|, so weights become -d, 0 or +d "
            "(2.25 bpw)",
}


@dataclass(frozen=True)
class TypeInfo:
    qtype: GGMLQuantizationType
    block_size: int   # weights per block
    type_size: int    # bytes per block

    @property
    def name(self) -> str:
        return self.qtype.name

    @property
    def bpw(self) -> float:
        return 8.0 * self.type_size / self.block_size

    @property
    def is_float(self) -> bool:
        return self.qtype in FLOAT_TYPES

    def row_bytes(self, n_per_row: int) -> int:
        if n_per_row % self.block_size:
            raise PlanError(f"row length {n_per_row} is not a multiple of {self.block_size}, "
                            f"which {self.name} needs")
        return n_per_row // self.block_size * self.type_size

    def fits(self, n_per_row: int) -> bool:
        return n_per_row % self.block_size == 0


def type_info(t: "GGMLQuantizationType | str | int") -> TypeInfo:
    qt = parse_type(t)
    bs, ts = GGML_QUANT_SIZES[qt]
    return TypeInfo(qt, bs, ts)


def parse_type(t: "GGMLQuantizationType | str | int") -> GGMLQuantizationType:
    """Accept a GGMLQuantizationType, its llama.cpp name (case-insensitive) or its id."""
    if isinstance(t, GGMLQuantizationType):
        return t
    if isinstance(t, int):
        try:
            return GGMLQuantizationType(t)
        except ValueError:
            raise PlanError(f"unknown tensor type id {t}") from None
    name = str(t).strip().upper()
    try:
        return GGMLQuantizationType[name]
    except KeyError:
        raise PlanError(f"unknown tensor type '{t}' (known: {', '.join(writable_type_names())})") from None


def writable_types() -> list[GGMLQuantizationType]:
    return list(KERNEL_FAMILY)


def writable_type_names() -> list[str]:
    return [t.name for t in KERNEL_FAMILY]


def is_quantized(t: GGMLQuantizationType) -> bool:
    return t not in FLOAT_TYPES and t not in (T.I8, T.I16, T.I32, T.I64)
