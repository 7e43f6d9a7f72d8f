"""The plan: per tensor, the output type and why. Plain data that the CLI and the GUI edit.

``pure_plan`` mirrors ``llama-quantize --pure``: which tensors are quantized at all
(``allows_quantization``, as llama.cpp's tensor_allows_quantization) and the fallback
for row lengths a type cannot take (tensor_type_fallback).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from .errors import PlanError
from .qtypes import T, is_quantized, parse_type

PLAN_VERSION = 1

# Substrings that keep a tensor unquantized in llama.cpp (any architecture).
_NEVER_QUANTIZE = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
    "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
    "indexer.q_proj.weight", "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight",
    "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight",
    "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight",
    "time_mix_g2.weight", "time_mix_decay_w1.weight", "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight", "attn_rel_b.weight", ".position_embd", "sam.pos_embd", "sam.neck.",
    "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger", "a.rvq.codebook", "mm.a.code_embd",
)
_NEVER_QUANTIZE_GLM5_NEXT = (
    "hc_", "indexer.attn_q_b", "indexer.attn_k", "indexer.proj", "indexer_compressor_gate",
    "indexer_compressor_ape", "ssm_f_a.weight", "ssm_f_b.weight", "ssm_g_a.weight", "ssm_g_b.weight",
    "ssm_beta.weight", "attn_kv_a_mqa.weight", "attn_k_b.weight", "attn_v_b.weight",
)
_NEVER_QUANTIZE_EXACT = ("position_embd.weight", "token_types.weight")

# Fallbacks for rows a 256-block type cannot take (llama.cpp tensor_type_fallback).
_FALLBACK = {T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0,
             T.IQ1_S: T.IQ4_NL, T.IQ1_M: T.IQ4_NL, T.IQ2_XXS: T.IQ4_NL, T.IQ2_XS: T.IQ4_NL,
             T.IQ2_S: T.IQ4_NL, T.IQ3_XXS: T.IQ4_NL, T.IQ3_S: T.IQ4_NL, T.IQ4_XS: T.IQ4_NL,
             T.TQ1_0: T.Q4_0, T.TQ2_0: T.Q4_0}


def allows_quantization(name: str, n_dims: int, arch: Optional[str] = None,
                        quantize_output: bool = True) -> bool:
    """llama.cpp's tensor_allows_quantization: 2-D+ tensors named '*weight', minus norms and friends."""
    if n_dims < 2 or not name.endswith("weight"):
        return False
    if not quantize_output and name == "output.weight":
        return False
    if any(s in name for s in _NEVER_QUANTIZE) or name in _NEVER_QUANTIZE_EXACT:
        return False
    if arch == "glm5-next" and any(s in name for s in _NEVER_QUANTIZE_GLM5_NEXT):
        return False
    return True


def fallback_type(qtype: GGMLQuantizationType, row_len: int) -> tuple[GGMLQuantizationType, str]:
    """The type llama.cpp uses when ``row_len`` does not fit ``qtype``'s blocks; '' reason if it fits."""
    bs = GGML_QUANT_SIZES[qtype][0]
    if row_len % bs == 0:
        return qtype, ""
    new = _FALLBACK.get(qtype, qtype if bs <= 32 else None)
    if new is None:
        raise PlanError(f"no fallback is defined for type {qtype.name}")
    if row_len % GGML_QUANT_SIZES[new][0]:
        return T.F16, f"row length {row_len} fits neither {qtype.name} nor {new.name}: F16"
    return new, f"row length {row_len} is not a multiple of {bs}: {qtype.name} -> {new.name}"


def file_type_of(qtype: GGMLQuantizationType) -> int:
    """llama_ftype for a pure file of ``qtype`` (general.file_type)."""
    name = "ALL_F32" if qtype == T.F32 else f"MOSTLY_{qtype.name}"
    try:
        return int(LlamaFileType[name])
    except KeyError:
        raise PlanError(f"type {qtype.name} has no llama.cpp file type") from None


@dataclass
class PlanEntry:
    name: str
    shape: tuple[int, ...]
    src_type: str
    type: str                       # GGUF type name of the output
    reason: str = ""
    quantize: bool = True           # False: copied unchanged from the source

    @property
    def qtype(self) -> GGMLQuantizationType:
        return GGMLQuantizationType[self.type]

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape) if self.shape else 1

    @property
    def nbytes(self) -> int:
        bs, ts = GGML_QUANT_SIZES[self.qtype]
        return self.n_elements // bs * ts


@dataclass
class Plan:
    entries: list[PlanEntry]
    file_type: int                  # general.file_type of the output
    preset: str = ""                # llama-quantize name of the preset ("Q4_K_M") or the pure type
    pure: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def entry(self, name: str) -> PlanEntry:
        for e in self.entries:
            if e.name == name:
                return e
        raise PlanError(f"the plan has no tensor '{name}'")

    @property
    def n_elements(self) -> int:
        return sum(e.n_elements for e in self.entries)

    @property
    def tensor_bytes(self) -> int:
        return sum(e.nbytes for e in self.entries)

    def to_json(self) -> str:
        d = {"version": PLAN_VERSION, "file_type": self.file_type, "preset": self.preset, "pure": self.pure,
             "options": self.options, "tensors": [asdict(e) | {"shape": list(e.shape)} for e in self.entries]}
        return json.dumps(d, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        try:
            d = json.loads(text)
            if d.get("version") != PLAN_VERSION:
                raise PlanError(f"plan version {d.get('version')} is not supported (expected {PLAN_VERSION})")
            entries = [PlanEntry(e["name"], tuple(e["shape"]), e["src_type"], parse_type(e["type"]).name,
                                 e.get("reason", ""), bool(e.get("quantize", True))) for e in d["tensors"]]
            return cls(entries, int(d["file_type"]), d.get("preset", ""), bool(d.get("pure", False)),
                       dict(d.get("options", {})))
        except (ValueError, KeyError, TypeError) as e:
            raise PlanError(f"not a valid plan file: {e}") from None


def pure_plan(tensors: Iterable, qtype: "GGMLQuantizationType | str", arch: Optional[str] = None) -> Plan:
    """Every quantizable tensor to ``qtype`` (with llama.cpp's fallbacks), the rest copied."""
    qtype = parse_type(qtype)
    entries = []
    for t in tensors:
        src = t.ggml_type
        if src is None:
            raise PlanError(f"tensor '{t.name}' has dtype {t.dtype}, which GGUF cannot hold")
        if allows_quantization(t.name, t.n_dims, arch):
            new, why = (fallback_type(qtype, t.row_len) if is_quantized(qtype) else (qtype, ""))
            reason = why or f"pure {qtype.name}"
        else:
            new, reason = src, "kept: not a quantizable weight"
        entries.append(PlanEntry(t.name, tuple(t.shape), t.dtype, new.name, reason, new != src))
    return Plan(entries, file_type_of(qtype), qtype.name, True)
