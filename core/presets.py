"""llama-quantize's file types (presets) and its per-tensor type choice, ported from
llama.cpp ``src/llama-quant.cpp``.

``choose_types`` is the port: tensor categories, ``llama_tensor_get_type_impl`` (``use_more_bits``,
the ``i_attention_wv`` / ``i_ffn_down`` counters in llama.cpp's tensor order, ``n_gqa()`` and
``n_expert`` from the metadata, the 70B attn_v rule, output / tied token-embedding rules), the
row-length fallback, ``tensor_requires_imatrix`` and the precedence of the user options
(``--token-embedding-type`` > ``--output-tensor-type`` > ``--tensor-type`` patterns, first match
wins > the preset's rules unless ``--pure`` > fallback). Every choice carries a reason.

``strict=True`` is exactly llama.cpp. ``strict=False`` (what plans use) adds two things of ours:
``keep`` patterns (copy the tensor unchanged; checked first) and ``--tensor-type`` patterns that
also apply to the float presets (llama.cpp ignores them when the file type is F32/F16/BF16).
Every file type llama-quantize offers is a preset here; NVFP4 (a ggml type without a llama-quantize
preset) is offered as a type only.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from .errors import PlanError
from .qtypes import T, is_quantized

F = LlamaFileType


# ----------------------------------------------------------------------------- what is quantized
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
_NEVER_RE = re.compile("|".join(map(re.escape, _NEVER_QUANTIZE)))
_NEVER_GLM5_RE = re.compile("|".join(map(re.escape, _NEVER_QUANTIZE_GLM5_NEXT)))

# Fallbacks for rows a 256-block type cannot take (llama.cpp tensor_type_fallback).
_FALLBACK = {T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0,
             T.IQ1_S: T.IQ4_NL, T.IQ1_M: T.IQ4_NL, T.IQ2_XXS: T.IQ4_NL, T.IQ2_XS: T.IQ4_NL,
             T.IQ2_S: T.IQ4_NL, T.IQ3_XXS: T.IQ4_NL, T.IQ3_S: T.IQ4_NL, T.IQ4_XS: T.IQ4_NL,
             T.TQ1_0: T.Q4_0, T.TQ2_0: T.Q4_0, T.Q2_0: T.Q4_0}


def allows_quantization(name: str, n_dims: int, arch: Optional[str] = None,
                        quantize_output: bool = True) -> bool:
    """llama.cpp's tensor_allows_quantization: 2-D+ tensors named '*weight', minus norms and friends."""
    if n_dims < 2 or not name.endswith("weight"):
        return False
    if not quantize_output and name == "output.weight":
        return False
    if _NEVER_RE.search(name) or name in _NEVER_QUANTIZE_EXACT:
        return False
    if arch == "glm5-next" and _NEVER_GLM5_RE.search(name):
        return False
    return True


def kept_reason(name: str, n_dims: int, quantize_output: bool = True) -> str:
    """Why llama.cpp leaves a tensor as it is (for a tensor ``allows_quantization`` refuses)."""
    if "norm" in name and (n_dims < 2 or name.endswith("_norm.weight")):
        return "kept: norm"
    if n_dims < 2:
        return "kept: 1-D tensor"
    if not name.endswith("weight"):
        return "kept: not a weight"
    if not quantize_output and name == "output.weight":
        return "kept: output tensor left as is (--leave-output-tensor)"
    if "ffn_gate_inp.weight" in name:
        return "kept: expert router"
    if name in _NEVER_QUANTIZE_EXACT:
        return "kept: position/token-type embedding"
    hit = next((s for s in _NEVER_QUANTIZE + _NEVER_QUANTIZE_GLM5_NEXT if s in name), None)
    return f"kept: llama.cpp never quantizes '{hit}'" if hit else "kept"


def fallback_type(qtype: GGMLQuantizationType, row_len: int) -> tuple[GGMLQuantizationType, str]:
    """The type llama.cpp uses when ``row_len`` does not fit ``qtype``'s blocks; '' reason if it fits."""
    bs = GGML_QUANT_SIZES[qtype][0]
    if row_len % bs == 0:
        return qtype, ""
    new = _FALLBACK.get(qtype, qtype if bs <= 32 else None)
    if new is None:
        raise PlanError(f"no fallback is defined for type {qtype.name}")
    if row_len % GGML_QUANT_SIZES[new][0]:
        return T.F16, f"rows of {row_len} fit neither {qtype.name} nor {new.name}: F16"
    return new, f"rows of {row_len} not a multiple of {bs}: {qtype.name} -> {new.name}"


_FTYPE_ALIAS = {T.Q3_K: "MOSTLY_Q3_K_M", T.Q4_K: "MOSTLY_Q4_K_M", T.Q5_K: "MOSTLY_Q5_K_M", T.F32: "ALL_F32"}


def file_type_of(qtype: GGMLQuantizationType) -> int:
    """llama_ftype for a pure file of ``qtype`` (general.file_type; Q4_K is Q4_K_M as in llama-quantize)."""
    name = _FTYPE_ALIAS.get(qtype, f"MOSTLY_{qtype.name}")
    try:
        return int(LlamaFileType[name])
    except KeyError:
        raise PlanError(f"type {qtype.name} has no llama.cpp file type") from None


@dataclass(frozen=True)
class Preset:
    name: str                          # llama-quantize's name ("Q4_K_M")
    ftype: int                         # llama_ftype (general.file_type)
    default_type: GGMLQuantizationType  # llama_ftype_get_default_type
    description: str                   # one line: what it does, nominal size as llama-quantize prints it


# In llama-quantize's order; sizes/ppl are its own help text (Llama-3-8B; F16/BF16 Mistral-7B). The i-quant,
# ternary, 1-bit and 2-bit presets show llama-quantize's nominal bits per weight.
PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("Q1_0", F.MOSTLY_Q1_0, T.Q1_0, "1.125 bpw, blocks of 128 with one scale"),
    Preset("Q2_0", F.MOSTLY_Q2_0, T.Q2_0, "2.25 bpw, blocks of 64 with one scale (weights -d, 0 or +d)"),
    Preset("Q4_0", F.MOSTLY_Q4_0, T.Q4_0, "4.5 bpw legacy, symmetric, blocks of 32 (4.34G, +0.4685 ppl @ Llama-3-8B)"),
    Preset("Q4_1", F.MOSTLY_Q4_1, T.Q4_1, "5.0 bpw legacy with minimum, blocks of 32 (4.78G, +0.4511 ppl @ Llama-3-8B)"),
    Preset("MXFP4_MOE", F.MOSTLY_MXFP4_MOE, T.MXFP4, "MXFP4 for expert tensors, Q8_0 for the rest (MoE models)"),
    Preset("Q5_0", F.MOSTLY_Q5_0, T.Q5_0, "5.5 bpw legacy, symmetric, blocks of 32 (5.21G, +0.1316 ppl @ Llama-3-8B)"),
    Preset("Q5_1", F.MOSTLY_Q5_1, T.Q5_1, "6.0 bpw legacy with minimum, blocks of 32 (5.65G, +0.1062 ppl @ Llama-3-8B)"),
    Preset("IQ2_XXS", F.MOSTLY_IQ2_XXS, T.IQ2_XXS, "2.06 bpw i-quant, needs an imatrix"),
    Preset("IQ2_XS", F.MOSTLY_IQ2_XS, T.IQ2_XS, "2.31 bpw i-quant, needs an imatrix"),
    Preset("IQ2_S", F.MOSTLY_IQ2_S, T.IQ2_XS, "2.5 bpw i-quant mix, needs an imatrix"),
    Preset("IQ2_M", F.MOSTLY_IQ2_M, T.IQ2_S, "2.7 bpw i-quant mix, needs an imatrix"),
    Preset("IQ1_S", F.MOSTLY_IQ1_S, T.IQ1_S, "1.56 bpw i-quant, needs an imatrix"),
    Preset("IQ1_M", F.MOSTLY_IQ1_M, T.IQ1_M, "1.75 bpw i-quant, needs an imatrix"),
    Preset("TQ1_0", F.MOSTLY_TQ1_0, T.TQ1_0, "1.69 bpw ternary (for ternary-trained models such as BitNet)"),
    Preset("TQ2_0", F.MOSTLY_TQ2_0, T.TQ2_0, "2.06 bpw ternary (for ternary-trained models such as BitNet)"),
    Preset("Q2_K", F.MOSTLY_Q2_K, T.Q2_K, "mostly Q2_K, attn_v/ffn_down/attn_output Q3_K-Q4_K (2.96G, +3.5199 ppl @ Llama-3-8B)"),
    Preset("Q2_K_S", F.MOSTLY_Q2_K_S, T.Q2_K, "mostly Q2_K, needs an imatrix (2.96G, +3.1836 ppl @ Llama-3-8B)"),
    Preset("IQ3_XXS", F.MOSTLY_IQ3_XXS, T.IQ3_XXS, "3.06 bpw i-quant, needs an imatrix"),
    Preset("IQ3_S", F.MOSTLY_IQ3_S, T.IQ3_S, "3.44 bpw i-quant"),
    Preset("IQ3_M", F.MOSTLY_IQ3_M, T.IQ3_S, "3.66 bpw i-quant mix"),
    Preset("IQ3_XS", F.MOSTLY_IQ3_XS, T.IQ3_S, "3.3 bpw i-quant mix"),
    Preset("Q3_K_S", F.MOSTLY_Q3_K_S, T.Q3_K, "all Q3_K but output (3.41G, +1.6321 ppl @ Llama-3-8B)"),
    Preset("Q3_K_M", F.MOSTLY_Q3_K_M, T.Q3_K, "Q3_K, attn_v/ffn_down/attn_output Q4_K-Q5_K (3.74G, +0.6569 ppl @ Llama-3-8B)"),
    Preset("Q3_K_L", F.MOSTLY_Q3_K_L, T.Q3_K, "Q3_K, attn_v/ffn_down/attn_output Q5_K (4.03G, +0.5562 ppl @ Llama-3-8B)"),
    Preset("IQ4_NL", F.MOSTLY_IQ4_NL, T.IQ4_NL, "4.50 bpw non-linear, blocks of 32"),
    Preset("IQ4_XS", F.MOSTLY_IQ4_XS, T.IQ4_XS, "4.25 bpw non-linear, super-blocks of 256"),
    Preset("Q4_K_S", F.MOSTLY_Q4_K_S, T.Q4_K, "Q4_K, first attn_v/ffn_down Q5_K (4.37G, +0.2689 ppl @ Llama-3-8B)"),
    Preset("Q4_K_M", F.MOSTLY_Q4_K_M, T.Q4_K, "Q4_K, half of attn_v/ffn_down Q6_K (4.58G, +0.1754 ppl @ Llama-3-8B)"),
    Preset("Q5_K_S", F.MOSTLY_Q5_K_S, T.Q5_K, "all Q5_K but output (5.21G, +0.1049 ppl @ Llama-3-8B)"),
    Preset("Q5_K_M", F.MOSTLY_Q5_K_M, T.Q5_K, "Q5_K, half of attn_v/ffn_down Q6_K (5.33G, +0.0569 ppl @ Llama-3-8B)"),
    Preset("Q6_K", F.MOSTLY_Q6_K, T.Q6_K, "6.5625 bpw K-quant (6.14G, +0.0217 ppl @ Llama-3-8B)"),
    Preset("Q8_0", F.MOSTLY_Q8_0, T.Q8_0, "8.5 bpw, nearly lossless (7.96G, +0.0026 ppl @ Llama-3-8B)"),
    Preset("F16", F.MOSTLY_F16, T.F16, "16-bit IEEE half (14.00G, +0.0020 ppl @ Mistral-7B)"),
    Preset("BF16", F.MOSTLY_BF16, T.BF16, "bfloat16 (14.00G, -0.0050 ppl @ Mistral-7B)"),
    Preset("F32", F.ALL_F32, T.F32, "32-bit float (26.00G @ 7B)"),
)}
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}   # llama-quantize's aliases

# llama_ftype_get_default_type for the file types outside PRESETS (used by the port only).
_OTHER_DEFAULTS = {F.MOSTLY_NVFP4: T.NVFP4}


def get_preset(name: "str | int") -> Preset:
    """A preset by llama-quantize name (case-insensitive, aliases Q3_K/Q4_K/Q5_K) or llama_ftype id."""
    if isinstance(name, int) or (isinstance(name, str) and name.strip().isdigit()):
        for p in PRESETS.values():
            if int(p.ftype) == int(name):
                return p
        raise PlanError(f"unknown file type id {name}")
    key = str(name).strip().upper()
    key = ALIASES.get(key, key)
    if key not in PRESETS:
        raise PlanError(f"unknown preset '{name}' (known: {', '.join(PRESETS)})")
    return PRESETS[key]


def default_type(ftype: int) -> GGMLQuantizationType:
    """llama_ftype_get_default_type."""
    for p in PRESETS.values():
        if int(p.ftype) == int(ftype):
            return p.default_type
    try:
        return _OTHER_DEFAULTS[F(int(ftype))]
    except (KeyError, ValueError):
        raise PlanError(f"invalid output file type {ftype}") from None


# ----------------------------------------------------------------------------- model facts
@dataclass(frozen=True)
class ModelFacts:
    """What the type choice reads from the model's hyperparameters (llama_hparams)."""

    arch: str = ""
    n_layer: int = 0          # {arch}.block_count (n_layer_all, nextn layers included)
    n_layer_nextn: int = 0    # {arch}.nextn_predict_layers
    n_head: int = 0           # {arch}.attention.head_count (layer 0 when per layer)
    n_head_kv: int = 0        # {arch}.attention.head_count_kv, default n_head
    n_expert: int = 0         # {arch}.expert_count

    @classmethod
    def from_metadata(cls, md: Mapping[str, Any]) -> "ModelFacts":
        arch = str(md.get("general.architecture", "") or "")

        def first(key: str, default: int = 0) -> int:     # per-layer arrays: layer 0, as n_head(0)
            v = md.get(f"{arch}.{key}", default)
            if hasattr(v, "__len__") and not isinstance(v, (str, bytes)):
                v = v[0] if len(v) else default
            return int(v)

        n_head = first("attention.head_count")
        return cls(arch, first("block_count"), first("nextn_predict_layers"), n_head,
                   first("attention.head_count_kv", n_head), first("expert_count"))

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head_kv else 0

    @property
    def is_70b(self) -> bool:
        """llama.cpp's LLM_TYPE_70B, the only model size the type choice looks at."""
        n = self.n_layer - self.n_layer_nextn
        if self.arch in ("llama", "llama-embed"):
            return self.n_expert != 8 and n == 80 and self.n_head != self.n_head_kv
        return (self.arch in ("qwen2", "deci", "olmo") and n == 80) or (self.arch == "jais2" and n == 68)

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- categories
TOKEN_EMBD, ATTN_Q, ATTN_V, ATTN_K, ATTN_QKV, ATTN_KV_B, ATTN_OUTPUT = (
    "token_embd", "attn_q", "attn_v", "attn_k", "attn_qkv", "attn_kv_b", "attn_output")
FFN_UP, FFN_GATE, FFN_DOWN, OUTPUT, OTHER = "ffn_up", "ffn_gate", "ffn_down", "output", "other"
_CATEGORY_SUBSTR = ((ATTN_QKV, "attn_qkv.weight"), (ATTN_KV_B, "attn_kv_b.weight"), (ATTN_V, "attn_v.weight"),
                    (ATTN_K, "attn_k.weight"), (ATTN_Q, "attn_q.weight"), (ATTN_OUTPUT, "attn_output.weight"),
                    (FFN_UP, "ffn_up"), (FFN_GATE, "ffn_gate"), (FFN_DOWN, "ffn_down"))


def tensor_category(name: str) -> str:
    """tensor_get_category: broad category by name, first match in llama.cpp's order."""
    if name == "output.weight":
        return OUTPUT
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return TOKEN_EMBD
    for cat, sub in _CATEGORY_SUBSTR:
        if sub in name:
            return cat
    return OTHER


def _is_attn_v(cat: str) -> bool:
    return cat in (ATTN_V, ATTN_QKV, ATTN_KV_B)


_BLK = re.compile(r"blk\.\s*([+-]?\d+)")       # sscanf(name, "blk.%d.")


def _blk(name: str) -> Optional[int]:
    m = _BLK.match(name)
    return int(m.group(1)) if m else None


def llama_order_key(name: str) -> tuple[int, str]:
    """llama.cpp's tensor order (weight_name_comparer): by ``blk.N`` (others first), then name."""
    b = _blk(name)
    return (-1 if b is None else b, name)


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def _cdiv(a: int, b: int) -> int:       # C integer division (truncates toward zero)
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _cmod(a: int, b: int) -> int:
    return a - b * _cdiv(a, b)


def _umb(i: int, n: int) -> bool:       # use_more_bits with C arithmetic (i may exceed n)
    return i < _cdiv(n, 8) or i >= _cdiv(7 * n, 8) or _cmod(i - _cdiv(n, 8), 3) == 2


def tensor_requires_imatrix(name: str, dst: GGMLQuantizationType, ftype: int) -> bool:
    """Types llama.cpp refuses to write without an importance matrix (Q2_K only in a Q2_K_S file)."""
    if name in ("token_embd.weight", "per_layer_token_embd.weight", "output.weight"):
        return False
    if dst in (T.IQ3_XXS, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ1_M, T.IQ1_S):
        return True
    return dst == T.Q2_K and int(ftype) == F.MOSTLY_Q2_K_S


# ----------------------------------------------------------------------------- the port
@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]              # numpy order: the last dim is the row
    src: GGMLQuantizationType

    @property
    def n_dims(self) -> int:
        return len(self.shape)

    @property
    def row_len(self) -> int:
        return int(self.shape[-1]) if self.shape else 1

    @property
    def ne2(self) -> int:
        return int(self.shape[-3]) if len(self.shape) >= 3 else 1


@dataclass
class Choice:
    type: GGMLQuantizationType
    reason: str
    origin: str                         # "kept" | "preset" | "pure" | "option" | "user"
    requires_imatrix: bool = False


@dataclass(frozen=True)
class Pattern:
    regex: str
    type: Optional[GGMLQuantizationType]  # None: keep the source type
    label: str

    def compiled(self) -> "re.Pattern[str]":
        try:
            return re.compile(self.regex)
        except re.error as e:
            raise PlanError(f"invalid regular expression '{self.regex}': {e}") from None


_IQ2_GROUP = (F.MOSTLY_IQ2_XXS, F.MOSTLY_IQ2_XS, F.MOSTLY_IQ1_S, F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M, F.MOSTLY_IQ1_M)


class _Chooser:
    """quantize_state_impl + llama_tensor_get_type(_impl) for one model and one set of options."""

    def __init__(self, tensors: Sequence[TensorSpec], facts: ModelFacts, preset: Preset | int, *, pure: bool,
                 patterns: Sequence[Pattern], keep: Sequence[Pattern], token_embedding_type, output_tensor_type,
                 has_imatrix: bool, quantize_output_tensor: bool, strict: bool):
        self.facts = facts
        self.ftype = int(preset.ftype if isinstance(preset, Preset) else preset)
        self.label = preset.name if isinstance(preset, Preset) else F(self.ftype).name.replace("MOSTLY_", "")
        self.default = default_type(self.ftype)
        self.pure, self.strict = pure, strict
        self.patterns = [(p.compiled(), p) for p in patterns]
        self.keep = [(p.compiled(), p) for p in keep]
        self.tok_type, self.out_type = token_embedding_type, output_tensor_type
        self.has_imatrix, self.quantize_output = has_imatrix, quantize_output_tensor
        cats = [tensor_category(t.name) for t in tensors]
        self.n_attention_wv = sum(_is_attn_v(c) for c in cats)
        self.tied = OUTPUT not in cats
        self.n_ffn_down = self.n_ffn_gate = self.n_ffn_up = facts.n_layer
        self.i_attention_wv = self.i_ffn_down = self.i_ffn_gate = self.i_ffn_up = 0

    # llama_tensor_get_type
    def choose(self, t: TensorSpec) -> Choice:
        if not allows_quantization(t.name, t.n_dims, self.facts.arch, self.quantize_output):
            return Choice(t.src, kept_reason(t.name, t.n_dims, self.quantize_output), "kept")
        c = self._choose(t)
        c.requires_imatrix = tensor_requires_imatrix(t.name, c.type, self.ftype)
        return c

    def _choose(self, t: TensorSpec) -> Choice:
        name, cat = t.name, tensor_category(t.name)
        if not self.strict:
            for rx, p in self.keep:
                if rx.search(name):
                    return Choice(t.src, f"kept: user rule '{p.label}'", "kept")
        if self.tok_type is not None and cat == TOKEN_EMBD:
            named = name == "per_layer_token_embd.weight" and any(rx.search(name) for rx, _ in self.patterns)
            if not named:
                return self._option(t, self.tok_type, "token-embedding type")
        if self.out_type is not None and cat == OUTPUT:
            return self._option(t, self.out_type, "output tensor type")
        new = self.default
        if not is_quantized(new) and (self.strict or not self.patterns):
            return Choice(new, f"preset {self.label}: {new.name}", "preset")
        for rx, p in self.patterns:
            if rx.search(name):
                reason, origin = f"user rule '{p.label}'", "user"
                new = t.src if p.type is None else p.type
                break
        else:
            if not is_quantized(new):
                return Choice(new, f"preset {self.label}: {new.name}", "preset")
            if self.pure:
                reason, origin = f"pure {new.name}", "pure"
            else:
                new, why = self._impl(new, t, cat)
                reason, origin = f"preset {self.label}: {why}", "preset"
        if not is_quantized(new):
            return Choice(new, reason, origin)
        fb, why = fallback_type(new, t.row_len)
        return Choice(fb, f"{reason}; fallback: {why}" if why else reason, origin)

    def _option(self, t: TensorSpec, qtype: GGMLQuantizationType, what: str) -> Choice:
        bs = GGML_QUANT_SIZES[qtype][0]
        if t.row_len % bs:   # llama.cpp applies these without a fallback and fails later
            raise PlanError(f"{what} {qtype.name} cannot take '{t.name}': rows of {t.row_len} "
                            f"are not a multiple of {bs}")
        return Choice(qtype, f"{what} {qtype.name} (user option)", "option")

    def _layer(self, counter: int, n_layer: int, name: str) -> tuple[int, int]:
        if max(1, self.facts.n_expert) > 1:
            i = _blk(name)
            if i is None:
                raise PlanError(f"failed to determine the layer of tensor '{name}'")
            if not 0 <= i < n_layer:
                raise PlanError(f"bad layer {i} for tensor '{name}': must be in [0, {n_layer})")
            return i, n_layer
        return counter, n_layer

    # llama_tensor_get_type_impl: (type, why)
    def _impl(self, new: GGMLQuantizationType, t: TensorSpec, cat: str) -> tuple[GGMLQuantizationType, str]:
        ft, fx, name = self.ftype, self.facts, t.name
        arch, gqa, n_expert = fx.arch, fx.n_gqa, fx.n_expert
        why = f"default {new.name}"

        if arch == "glm5-next" and any(s in name for s in ("attn_q_a", "attn_q_b", "nextn.eh_proj")):
            if new not in (T.F32, T.BF16, T.F16):
                return T.Q8_0, "glm5-next attn_q_a/attn_q_b/nextn.eh_proj stay Q8_0"

        if cat == OUTPUT or (self.tied and cat == TOKEN_EMBD):
            what = "output" if cat == OUTPUT else "token_embd (tied to the output)"
            if self.out_type is not None:
                return self.out_type, f"{what}: output tensor type {self.out_type.name}"
            nx, qk = t.row_len, GGML_QUANT_SIZES[new][0]
            if ft == F.MOSTLY_MXFP4_MOE:
                return T.Q8_0, f"{what} Q8_0"
            if arch == "falcon" or nx % qk:
                return T.Q8_0, (f"{what} Q8_0 (falcon)" if arch == "falcon"
                                else f"{what} Q8_0: rows of {nx} not a multiple of {qk}")
            if ft in (F.MOSTLY_IQ2_XXS, F.MOSTLY_IQ2_XS, F.MOSTLY_IQ3_XXS, F.MOSTLY_IQ1_S, F.MOSTLY_IQ2_S,
                      F.MOSTLY_IQ2_M, F.MOSTLY_IQ1_M):
                return T.Q5_K, f"{what} Q5_K"
            if new != T.Q8_0:
                return T.Q6_K, f"{what} Q6_K"
            return new, f"{what} Q8_0"

        if ft == F.MOSTLY_MXFP4_MOE:
            expert = arch != "bailingmoe3" or cat in (FFN_UP, FFN_GATE, FFN_DOWN)
            return (T.MXFP4, "expert tensors MXFP4") if t.ne2 > 1 and expert else (T.Q8_0, "non-expert Q8_0")

        if cat == TOKEN_EMBD:
            if self.tok_type is not None:
                return self.tok_type, f"token-embedding type {self.tok_type.name}"
            if ft in (F.MOSTLY_IQ2_XXS, F.MOSTLY_IQ2_XS, F.MOSTLY_IQ1_S, F.MOSTLY_IQ1_M):
                return T.Q2_K, "token_embd Q2_K"
            if ft in (F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M, F.MOSTLY_IQ3_XXS):
                return T.IQ3_S, "token_embd IQ3_S"
            if ft in (F.MOSTLY_TQ1_0, F.MOSTLY_TQ2_0, F.MOSTLY_Q2_0):
                return T.Q4_K, "token_embd Q4_K"
            return new, why

        if ft in _IQ2_GROUP:
            iq2s = ft in (F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M)
            if _is_attn_v(cat):
                if gqa >= 4 or n_expert >= 4:
                    new, why = T.Q4_K, f"{cat} Q4_K (n_gqa {gqa} / n_expert {n_expert})"
                else:
                    new = T.IQ3_S if iq2s else T.Q2_K
                    why = f"{cat} {new.name}"
                self.i_attention_wv += 1
            elif n_expert == 8 and cat == ATTN_K:
                new, why = T.Q4_K, "attn_k Q4_K (8 experts)"
            elif cat == FFN_DOWN:
                if self.i_ffn_down < _cdiv(self.n_ffn_down, 8):
                    new = T.IQ3_S if iq2s else T.Q2_K
                    why = f"ffn_down {new.name} in the first 1/8 of layers"
                self.i_ffn_down += 1
            elif cat == ATTN_OUTPUT:
                if n_expert == 8:
                    new, why = T.Q5_K, "attn_output Q5_K (8 experts)"
                elif ft in (F.MOSTLY_IQ1_S, F.MOSTLY_IQ1_M):
                    new, why = T.IQ2_XXS, "attn_output IQ2_XXS"
                elif iq2s:
                    new, why = T.IQ3_S, "attn_output IQ3_S"
            return new, why

        if _is_attn_v(cat):
            i, n = self.i_attention_wv, self.n_attention_wv
            if ft == F.MOSTLY_Q2_K:
                new, why = (T.Q4_K, f"{cat} Q4_K (n_gqa {gqa} >= 4)") if gqa >= 4 else (T.Q3_K, f"{cat} Q3_K")
            elif ft == F.MOSTLY_Q2_K_S and gqa >= 4:
                new, why = T.Q4_K, f"{cat} Q4_K (n_gqa {gqa} >= 4)"
            elif ft == F.MOSTLY_IQ3_XXS:
                new = T.Q4_K if gqa >= 4 else (T.IQ3_S if not self.has_imatrix else T.IQ3_XXS)
                why = f"{cat} {new.name}"
            elif ft in (F.MOSTLY_IQ3_XS, F.MOSTLY_IQ3_S) and gqa >= 4:
                new, why = T.Q4_K, f"{cat} Q4_K (n_gqa {gqa} >= 4)"
            elif ft == F.MOSTLY_IQ3_M:
                new, why = T.Q4_K, f"{cat} Q4_K"
            elif ft == F.MOSTLY_Q3_K_M:
                new, why = (T.Q5_K, f"{cat} Q5_K (first 2)") if i < 2 else (T.Q4_K, f"{cat} Q4_K")
            elif ft == F.MOSTLY_Q3_K_L:
                new, why = T.Q5_K, f"{cat} Q5_K"
            elif ft in (F.MOSTLY_IQ4_NL, F.MOSTLY_IQ4_XS) and gqa >= 4:
                new, why = T.Q5_K, f"{cat} Q5_K (n_gqa {gqa} >= 4)"
            elif ft in (F.MOSTLY_Q4_K_M, F.MOSTLY_Q5_K_M) and _umb(i, n):
                new, why = T.Q6_K, f"{cat} use_more_bits ({i} of {n}) -> Q6_K"
            elif ft == F.MOSTLY_Q4_K_S and i < 4:
                new, why = T.Q5_K, f"{cat} Q5_K (first 4)"
            if fx.is_70b and new in (T.Q3_K, T.Q4_K):
                new, why = T.Q5_K, f"{cat} Q5_K (70B: 8 heads share attn_v)"
            if n_expert == 8:
                new, why = T.Q8_0, f"{cat} Q8_0 (8 experts)"
            self.i_attention_wv += 1
            return new, why

        if cat == ATTN_K:
            if n_expert == 8:
                return T.Q8_0, "attn_k Q8_0 (8 experts)"
            if ft == F.MOSTLY_IQ3_XS:
                return T.IQ3_XXS, "attn_k IQ3_XXS"
            if ft == F.MOSTLY_IQ3_XXS:
                return T.IQ2_S, "attn_k IQ2_S"
            return new, why

        if cat == ATTN_Q:
            if ft == F.MOSTLY_IQ3_XS:
                return T.IQ3_XXS, "attn_q IQ3_XXS"
            if ft == F.MOSTLY_IQ3_XXS:
                return T.IQ2_S, "attn_q IQ2_S"
            return new, why

        if cat == FFN_DOWN:
            i, n = self._layer(self.i_ffn_down, self.n_ffn_down, name)
            falcon = arch == "falcon"
            pos = f"layer {i} of {n}"
            if ft == F.MOSTLY_Q2_K:
                new, why = T.Q3_K, "ffn_down Q3_K"
            elif ft == F.MOSTLY_Q2_K_S:
                if i < _cdiv(n, 8):
                    new, why = T.Q4_K, f"ffn_down Q4_K in the first 1/8 ({pos})"
            elif ft == F.MOSTLY_IQ3_XXS and not self.has_imatrix:
                new = T.Q4_K if i < _cdiv(n, 8) else T.Q3_K
                why = f"ffn_down {new.name} without imatrix ({pos})"
            elif ft == F.MOSTLY_Q3_K_M:
                if i < _cdiv(n, 16):
                    new, why = T.Q5_K, f"ffn_down Q5_K in the first 1/16 ({pos})"
                elif not falcon or _umb(i, n):
                    new, why = T.Q4_K, f"ffn_down Q4_K ({pos})"
                else:
                    new, why = T.Q3_K, f"ffn_down Q3_K (falcon, {pos})"
            elif ft == F.MOSTLY_IQ3_M and (i < _cdiv(n, 8) or (n_expert == 8 and _umb(i, n))):
                new, why = T.Q4_K, f"ffn_down Q4_K ({pos})"
            elif ft == F.MOSTLY_Q3_K_L:
                new = T.Q4_K if falcon else T.Q5_K
                why = f"ffn_down {new.name}"
            elif ft == F.MOSTLY_Q4_K_M:
                if falcon:
                    new = T.Q6_K if i < _cdiv(n, 16) else T.Q5_K if _umb(i, n) else T.Q4_K
                    why = f"ffn_down {new.name} (falcon, {pos})"
                elif _umb(i, n):
                    new, why = T.Q6_K, f"ffn_down use_more_bits ({pos}) -> Q6_K"
            elif i < _cdiv(n, 8) and ft in (F.MOSTLY_IQ4_NL, F.MOSTLY_IQ4_XS) and not self.has_imatrix:
                new, why = T.Q5_K, f"ffn_down Q5_K in the first 1/8 without imatrix ({pos})"
            elif ft == F.MOSTLY_Q5_K_M and _umb(i, n):
                new, why = T.Q6_K, f"ffn_down use_more_bits ({pos}) -> Q6_K"
            elif ft == F.MOSTLY_Q4_K_S and not falcon and i < _cdiv(n, 8):
                new, why = T.Q5_K, f"ffn_down Q5_K in the first 1/8 ({pos})"
            elif ft in (F.MOSTLY_Q4_0, F.MOSTLY_Q5_0) and self.has_imatrix and i < _cdiv(n, 8):
                new = T.Q4_1 if ft == F.MOSTLY_Q4_0 else T.Q5_1
                why = f"ffn_down {new.name} in the first 1/8 with imatrix ({pos})"
            self.i_ffn_down += 1
            return new, why

        if cat == ATTN_OUTPUT:
            if arch != "falcon":
                if n_expert == 8:
                    if ft in (F.MOSTLY_Q2_K, F.MOSTLY_IQ3_XS, F.MOSTLY_IQ3_XXS, F.MOSTLY_Q3_K_S, F.MOSTLY_Q3_K_M,
                              F.MOSTLY_IQ4_NL, F.MOSTLY_Q4_K_S, F.MOSTLY_Q4_K_M, F.MOSTLY_IQ3_S, F.MOSTLY_IQ3_M,
                              F.MOSTLY_IQ4_XS):
                        new, why = T.Q5_K, "attn_output Q5_K (8 experts)"
                else:
                    up = {F.MOSTLY_Q2_K: T.Q3_K, F.MOSTLY_IQ3_XXS: T.IQ3_S, F.MOSTLY_Q3_K_M: T.Q4_K,
                          F.MOSTLY_Q3_K_L: T.Q5_K, F.MOSTLY_IQ3_M: T.Q4_K}.get(ft)
                    if up is not None:
                        new, why = up, f"attn_output {up.name}"
            elif ft == F.MOSTLY_Q3_K_L:
                new, why = T.Q4_K, "attn_output Q4_K (falcon)"
            return new, why

        if cat == ATTN_QKV:
            up = {F.MOSTLY_Q3_K_M: T.Q4_K, F.MOSTLY_Q3_K_L: T.Q4_K, F.MOSTLY_IQ3_M: T.Q4_K,
                  F.MOSTLY_Q4_K_M: T.Q5_K, F.MOSTLY_Q5_K_M: T.Q6_K}.get(ft)
            return (up, f"attn_qkv {up.name}") if up is not None else (new, why)

        if cat in (FFN_GATE, FFN_UP):
            counter = self.i_ffn_gate if cat == FFN_GATE else self.i_ffn_up
            i, n = self._layer(counter, self.n_ffn_gate if cat == FFN_GATE else self.n_ffn_up, name)
            if ft == F.MOSTLY_IQ3_XS and _cdiv(n, 8) <= i < _cdiv(7 * n, 8):
                new, why = T.IQ3_XXS, f"{cat} IQ3_XXS (middle layers)"
            if cat == FFN_GATE:
                self.i_ffn_gate += 1
            else:
                self.i_ffn_up += 1
            return new, why

        return new, why


def tensor_spec(t: Any) -> "TensorSpec":
    """A TensorSpec from a TensorInfo, a PlanEntry or anything with name/shape and a type."""
    if hasattr(t, "ggml_type"):
        src = t.ggml_type
        if src is None:
            raise PlanError(f"tensor '{t.name}' has dtype {t.dtype}, which GGUF cannot hold")
    else:
        name = getattr(t, "src_type", None)
        if name not in GGMLQuantizationType.__members__:
            raise PlanError(f"tensor '{t.name}' has type {name}, which GGUF cannot hold")
        src = GGMLQuantizationType[name]
    return TensorSpec(t.name, tuple(int(x) for x in t.shape), src)


def counter_group(name: str, n_expert: int) -> Optional[str]:
    """The llama.cpp counter a tensor advances (attn_v-like always; ffn_* only without experts)."""
    c = tensor_category(name)
    if c in (ATTN_V, ATTN_QKV, ATTN_KV_B):
        return ATTN_V
    return c if c in (FFN_DOWN, FFN_GATE, FFN_UP) and n_expert <= 1 else None


def choose_types(tensors: Iterable[TensorSpec], facts: ModelFacts, preset: "Preset | int", *,
                 pure: bool = False, patterns: Sequence[Pattern] = (), keep: Sequence[Pattern] = (),
                 token_embedding_type: Optional[GGMLQuantizationType] = None,
                 output_tensor_type: Optional[GGMLQuantizationType] = None, has_imatrix: bool = False,
                 quantize_output_tensor: bool = True, strict: bool = False) -> dict[str, Choice]:
    """The type of every tensor, as llama-quantize chooses it (``strict``) or as a plan does.

    Tensors are visited in llama.cpp's order (the counters depend on it); the result is keyed
    by name. ``preset`` is a :class:`Preset` or any llama_ftype id.
    """
    tensors = list(tensors)
    ch = _Chooser(tensors, facts, preset, pure=pure, patterns=patterns, keep=keep,
                  token_embedding_type=token_embedding_type, output_tensor_type=output_tensor_type,
                  has_imatrix=has_imatrix, quantize_output_tensor=quantize_output_tensor, strict=strict)
    return {t.name: ch.choose(t) for t in sorted(tensors, key=lambda t: llama_order_key(t.name))}


__all__ = ["allows_quantization", "kept_reason", "fallback_type", "file_type_of", "tensor_spec", "counter_group",
           "PRESETS", "ALIASES", "Preset", "get_preset", "default_type", "ModelFacts", "TensorSpec", "Choice",
           "Pattern", "choose_types", "tensor_category", "tensor_requires_imatrix", "use_more_bits",
           "llama_order_key"]
