"""The supported Hugging Face architectures: GGUF architecture, hyper-parameter keys, tokenizer
kind and tensor transformations, following llama.cpp's ``convert_hf_to_gguf.py`` model classes
(LlamaModel, Qwen2Model, Qwen3Model, Gemma2Model, Gemma3Model, Phi3MiniModel)."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

import gguf
import numpy as np

from ..errors import SourceError
from . import vocab as V

MT = gguf.MODEL_TENSOR


class HParams:
    """config.json (``text_config`` merged in) with lookups that fail naming the file."""

    def __init__(self, config: dict[str, Any], folder: str):
        self.path = os.path.join(folder, "config.json")
        self.folder = folder
        hp = dict(config)
        if isinstance(hp.get("text_config"), dict):
            hp = {**hp, **hp["text_config"]}
        self.d = hp
        self.rope = self._rope()

    def get(self, key: str, default: Any = None) -> Any:
        return self.d.get(key, default)

    def find(self, keys: list[str], default: Any = None) -> Any:
        """The value of the first of ``keys`` present (llama.cpp's find_hparam)."""
        for k in keys:
            if k in self.d:
                return self.d[k]
        return default

    def req(self, keys: "str | list[str]", what: str = "") -> Any:
        keys = [keys] if isinstance(keys, str) else keys
        for k in keys:
            if self.d.get(k) is not None:
                return self.d[k]
        raise SourceError(f"config.json has no '{keys[0]}'" + (f" (needed for {what})" if what else ""), self.path)

    def _rope(self) -> dict[str, Any]:
        rp = dict(self.d.get("rope_parameters") or self.d.get("rope_scaling") or {})
        if "full_attention" in rp or "sliding_attention" in rp:
            return rp
        theta = self.find(["global_rope_theta", "rope_global_theta", "rope_theta_global", "rope_theta",
                           "rotary_emb_base"])
        local = self.find(["local_rope_theta", "rope_local_theta", "rope_theta_local", "swa_rope_theta",
                           "rope_local_base_freq"])
        if local is not None:
            rp["sliding_attention"] = {"rope_theta": local}
        if "rope_theta" not in rp and theta is not None:
            rp["rope_theta"] = theta
        if "rope_type" not in rp and rp.get("type") is not None:
            rp["rope_type"] = rp["type"]
        for k, keys in (("partial_rotary_factor", ["partial_rotary_factor", "rope_pct", "rope_percent"]),
                        ("original_max_position_embeddings", ["original_max_position_embeddings"])):
            v = self.find(keys)
            if k not in rp and v is not None:
                rp[k] = v
        return rp

    @property
    def rope_full(self) -> dict[str, Any]:
        return self.rope.get("full_attention", self.rope)

    @property
    def n_layer(self) -> int:
        return int(self.req(["n_layers", "num_hidden_layers", "n_layer", "num_layers"]))

    @property
    def n_embd(self) -> int:
        return int(self.req(["hidden_size", "n_embd", "dim"]))

    @property
    def n_head(self) -> int:
        return int(self.req(["num_attention_heads", "n_head", "n_heads"]))

    @property
    def n_head_kv(self) -> int:
        v = self.find(["num_key_value_heads", "n_kv_heads", "n_head_kv"])
        return int(v) if v is not None else self.n_head

    @property
    def head_dim(self) -> int:
        v = self.d.get("head_dim")
        return int(v) if v is not None else self.n_embd // self.n_head

    @property
    def n_ff(self) -> int:
        return int(self.req(["intermediate_size", "n_inner", "hidden_dim"]))


# ----------------------------------------------------------------------------- parameters
def text_params(w: gguf.GGUFWriter, hp: HParams) -> None:
    """llama.cpp's TextModel.set_gguf_parameters (dense models)."""
    w.add_block_count(hp.n_layer)
    if (v := hp.find(["max_position_embeddings", "n_ctx", "n_positions", "max_length", "max_sequence_length",
                      "model_max_length"])) is not None:
        w.add_context_length(int(v))
    w.add_embedding_length(hp.n_embd)
    if (v := hp.find(["prefix_dense_intermediate_size", "dense_intermediate_size", "intermediate_size",
                      "n_inner", "hidden_dim"])) is not None:
        w.add_feed_forward_length(int(v))
    w.add_head_count(hp.n_head)
    if (v := hp.find(["num_key_value_heads", "n_kv_heads"])) is not None:
        w.add_head_count_kv(int(v))
    if hp.get("is_causal") is False:
        w.add_causal_attention(False)
    rp = hp.rope_full
    rope_type, factor = rp.get("rope_type"), rp.get("factor")
    if rope_type == "linear" and factor is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(factor))
    elif rope_type == "yarn" and factor is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(factor))
        w.add_rope_scaling_orig_ctx_len(int(rp.get("original_max_position_embeddings") or
                                            hp.req("original_max_position_embeddings", "YaRN rope scaling")))
        for key, add in (("extrapolation_factor", w.add_rope_scaling_yarn_ext_factor),
                         ("beta_fast", w.add_rope_scaling_yarn_beta_fast),
                         ("beta_slow", w.add_rope_scaling_yarn_beta_slow)):
            if rp.get(key) is not None:
                add(float(rp[key]))
        if (v := rp.get("attention_factor", rp.get("attn_factor"))) is not None:
            w.add_rope_scaling_yarn_attn_factor(float(v))
    elif rope_type in ("su", "longrope"):
        w.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
    if rp.get("rope_theta") is not None:
        w.add_rope_freq_base(float(rp["rope_theta"]))
    if (v := hp.rope.get("sliding_attention", {}).get("rope_theta")) is not None:
        w.add_rope_freq_base_swa(float(v))
    if (v := hp.find(["rms_norm_eps", "norm_eps"])) is not None:
        w.add_layer_norm_rms_eps(float(v))
    if (v := hp.find(["layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"])) is not None:
        w.add_layer_norm_eps(float(v))
    if hp.get("head_dim") is not None:
        w.add_key_length(int(hp.get("head_dim")))
        w.add_value_length(int(hp.get("head_dim")))


def llama_params(w, hp: HParams) -> None:
    text_params(w, hp)
    w.add_vocab_size(int(hp.req("vocab_size", "llama")))
    w.add_rope_dimension_count(hp.head_dim)


def gemma2_params(w, hp: HParams) -> None:
    what = "Gemma2ForCausalLM"
    w.add_context_length(int(hp.req("max_position_embeddings", what)))
    w.add_embedding_length(hp.n_embd)
    w.add_block_count(hp.n_layer)
    w.add_feed_forward_length(hp.n_ff)
    w.add_head_count(hp.n_head)
    w.add_head_count_kv(hp.n_head_kv)
    w.add_layer_norm_rms_eps(float(hp.req("rms_norm_eps", what)))
    w.add_key_length(int(hp.req("head_dim", what)))
    w.add_value_length(int(hp.req("head_dim", what)))
    w.add_attn_logit_softcapping(float(hp.req("attn_logit_softcapping", what)))
    w.add_final_logit_softcapping(float(hp.req("final_logit_softcapping", what)))
    w.add_sliding_window(int(hp.req("sliding_window", what)))


def gemma3_params(w, hp: HParams) -> None:
    text_params(w, hp)
    w.add_context_length(int(hp.get("max_position_embeddings", 131072)))
    w.add_head_count(int(hp.get("num_attention_heads", 8)))
    w.add_layer_norm_rms_eps(float(hp.get("rms_norm_eps", 1e-6)))
    w.add_key_length(int(hp.get("head_dim", 256)))
    w.add_value_length(int(hp.get("head_dim", 256)))
    w.add_rope_freq_base(float(hp.rope_full.get("rope_theta", 1_000_000.0)))
    if hp.get("final_logit_softcapping"):
        w.add_final_logit_softcapping(float(hp.get("final_logit_softcapping")))
    if hp.get("sliding_window_pattern") != 1:
        w.add_sliding_window(int(hp.req("sliding_window", "Gemma3ForCausalLM")))
    w.add_head_count_kv(int(hp.get("num_key_value_heads", 4)))


def _phi3_rope_dims(hp: HParams) -> int:
    return int(hp.rope.get("partial_rotary_factor", 1.0) * hp.n_embd) // hp.n_head


def phi3_params(w, hp: HParams) -> None:
    what = "Phi3ForCausalLM"
    w.add_context_length(int(hp.req(["n_positions", "max_position_embeddings"], what)))
    orig = hp.rope.get("original_max_position_embeddings")
    if orig is None:
        hp.req("original_max_position_embeddings", what)
    w.add_rope_scaling_orig_ctx_len(int(orig))
    w.add_embedding_length(hp.n_embd)
    w.add_feed_forward_length(hp.n_ff)
    w.add_block_count(hp.n_layer)
    w.add_head_count(hp.n_head)
    w.add_head_count_kv(hp.n_head_kv)
    w.add_layer_norm_rms_eps(float(hp.req("rms_norm_eps", what)))
    w.add_rope_dimension_count(_phi3_rope_dims(hp))
    theta = hp.rope_full.get("rope_theta")
    if theta is None:
        hp.req("rope_theta", what)
    w.add_rope_freq_base(float(theta))
    w.add_sliding_window(int(hp.get("sliding_window") or 0))


# ----------------------------------------------------------------------------- extra tensors
Extra = list[tuple[str, np.ndarray]]


def llama_extra(w, hp: HParams) -> Extra:
    """rope_freqs for Llama 3.1-style rope scaling (rope_type 'llama3')."""
    rp = hp.rope_full
    if str(rp.get("rope_type", "")).lower() != "llama3":
        return []
    base = float(rp.get("rope_theta", 10000.0))
    dim = hp.head_dim
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = rp.get("factor", 8.0)
    lo, hi = rp.get("low_freq_factor", 1.0), rp.get("high_freq_factor", 4.0)
    old = rp.get("original_max_position_embeddings", 8192)
    lo_wl, hi_wl = old / lo, old / hi
    out = []
    for f in freqs:
        wl = 2 * math.pi / float(f)
        if wl < hi_wl:
            out.append(1.0)
        elif wl > lo_wl:
            out.append(factor)
        else:
            smooth = (old / wl - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return [(gguf.TENSOR_NAMES[MT.ROPE_FREQS] + ".weight", np.asarray(out, dtype=np.float32))]


def phi3_extra(w, hp: HParams) -> Extra:
    """LongRoPE factors of the 128k Phi-3 models (and their attention factor)."""
    rp = hp.rope
    long_f, short_f = rp.get("long_factor"), rp.get("short_factor")
    if not long_f:
        return []
    scale = hp.req(["n_positions", "max_position_embeddings"]) / rp["original_max_position_embeddings"]
    kind = str(rp.get("rope_type", "")).lower()
    orig = rp["original_max_position_embeddings"]
    if kind in ("su", "longrope"):
        attn = math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0
    elif kind == "yarn":
        attn = 0.1 * math.log(scale) + 1.0 if scale > 1.0 else 1.0
    else:
        raise SourceError(f"rope scaling type '{kind}' with long/short factors is not supported", hp.path)
    w.add_rope_scaling_attn_factors(attn)
    dims = _phi3_rope_dims(hp)
    if not short_f or len(long_f) != len(short_f) or len(long_f) * 2 != dims:
        raise SourceError(f"rope long/short factors must both have {dims // 2} values", hp.path)
    return [(gguf.TENSOR_NAMES[MT.ROPE_FACTORS_LONG] + ".weight", np.asarray(long_f, dtype=np.float32)),
            (gguf.TENSOR_NAMES[MT.ROPE_FACTORS_SHORT] + ".weight", np.asarray(short_f, dtype=np.float32))]


def no_extra(w, hp: HParams) -> Extra:
    return []


# ----------------------------------------------------------------------------- vocabularies
Warn = Callable[[str], None]


def llama_vocab(w, hp: HParams, warn: Warn) -> int:
    folder = hp.folder
    V.require_tokenizer(folder)
    aps = V.tokenizer_config(folder).get("add_prefix_space")
    if aps is not None:
        w.add_add_space_prefix(bool(aps))
    if V.has_spm(folder):
        n = V.set_vocab_spm(w, folder, hp.get("vocab_size"))
    else:
        V.check_llama_hf_bpe(folder)
        n = V.set_vocab_bpe(w, folder, hp.get("vocab_size"), warn)
    if hp.get("vocab_size", 32000) == 49152:       # granite / SmolLM small models (as llama.cpp)
        w.add_add_bos_token(False)
    return n


def spm_or_bpe_vocab(w, hp: HParams, warn: Warn) -> int:
    V.require_tokenizer(hp.folder)
    if V.has_spm(hp.folder):
        return V.set_vocab_spm(w, hp.folder, hp.get("vocab_size"))
    return V.set_vocab_bpe(w, hp.folder, hp.get("vocab_size"), warn)


def gemma2_vocab(w, hp: HParams, warn: Warn) -> int:
    n = V.set_vocab_spm(w, hp.folder, hp.get("vocab_size"))
    w.add_add_space_prefix(False)
    return n


def gemma3_vocab(w, hp: HParams, warn: Warn) -> int:
    V.require_tokenizer(hp.folder)
    if V.has_spm(hp.folder):
        n = V.set_vocab_spm(w, hp.folder, hp.get("vocab_size"))
        w.add_add_space_prefix(False)
        return n
    return V.set_vocab_bpe(w, hp.folder, hp.get("vocab_size"), warn)


def phi3_vocab(w, hp: HParams, warn: Warn) -> int:
    if V.tokenizer_config(hp.folder).get("tokenizer_class") == "GPT2Tokenizer":
        return V.set_vocab_bpe(w, hp.folder, hp.get("vocab_size"), warn)
    return V.set_vocab_spm(w, hp.folder, hp.get("vocab_size"), phi3=True)


# ----------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class ArchSpec:
    hf: str
    arch: gguf.MODEL_ARCH
    params: Callable[[Any, HParams], None]
    vocab: Callable[[Any, HParams, Warn], int]
    extra: Callable[[Any, HParams], Extra] = no_extra
    permute_qk: bool = False            # undo HF's rotary layout of q/k rows (llama.cpp's LlamaModel.permute)
    norm_shift: float = 0.0             # added to every '*norm.weight' (Gemma stores weight - 1)
    skip_lm_head: bool = False          # Gemma2: lm_head is ignored (AutoAWQ adds it)
    trim_embd: bool = False             # Gemma3: token_embd rows beyond the vocabulary are dropped
    fused_ffn_up: bool = False          # Phi3: gate_up_proj stays one ffn_up of 2*n_ff rows

    @property
    def arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.arch]


A = gguf.MODEL_ARCH
ARCHS: dict[str, ArchSpec] = {s.hf: s for s in (
    ArchSpec("LlamaForCausalLM", A.LLAMA, llama_params, llama_vocab, llama_extra, permute_qk=True),
    ArchSpec("MistralForCausalLM", A.LLAMA, llama_params, llama_vocab, llama_extra, permute_qk=True),
    ArchSpec("Qwen2ForCausalLM", A.QWEN2, text_params, spm_or_bpe_vocab),
    ArchSpec("Qwen3ForCausalLM", A.QWEN3, text_params, spm_or_bpe_vocab),
    ArchSpec("Gemma2ForCausalLM", A.GEMMA2, gemma2_params, gemma2_vocab, norm_shift=1.0, skip_lm_head=True),
    ArchSpec("Gemma3ForCausalLM", A.GEMMA3, gemma3_params, gemma3_vocab, norm_shift=1.0, trim_embd=True),
    ArchSpec("Phi3ForCausalLM", A.PHI3, phi3_params, phi3_vocab, phi3_extra, fused_ffn_up=True),
)}
SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(ARCHS)


def expected_shape(kind: MT, hp: HParams, spec: ArchSpec, n_vocab: int) -> Optional[tuple[int, ...]]:
    """Shape of a ``.weight`` of this kind implied by config.json (None: not checked)."""
    e, hd, nh, nkv = hp.n_embd, hp.head_dim, hp.n_head, hp.n_head_kv
    if kind in (MT.TOKEN_EMBD, MT.OUTPUT):
        return (n_vocab, e)
    if kind in (MT.OUTPUT_NORM, MT.ATTN_NORM, MT.FFN_NORM, MT.ATTN_POST_NORM, MT.FFN_PRE_NORM, MT.FFN_POST_NORM):
        return (e,)
    if kind in (MT.ATTN_Q_NORM, MT.ATTN_K_NORM):
        return (hd,)
    if kind == MT.ATTN_Q:
        return (nh * hd, e)
    if kind in (MT.ATTN_K, MT.ATTN_V):
        return (nkv * hd, e)
    if kind == MT.ATTN_QKV:
        return ((nh + 2 * nkv) * hd, e)
    if kind == MT.ATTN_OUT:
        return (e, nh * hd)
    if kind == MT.FFN_GATE:
        return (hp.n_ff, e)
    if kind == MT.FFN_UP:
        return ((2 if spec.fused_ffn_up else 1) * hp.n_ff, e)
    if kind == MT.FFN_DOWN:
        return (e, hp.n_ff)
    return None


def qk_permutation(n_rows: int, n_head: int, where: str, name: str) -> np.ndarray:
    """Row order of llama.cpp's ``permute``: GGUF row ``h*hd + 2*i + j`` is HF row ``h*hd + j*hd/2 + i``."""
    if n_rows % (2 * n_head):
        raise SourceError(f"'{name}' has {n_rows} rows, which {n_head} rotary heads cannot split", where)
    hd = n_rows // n_head
    r = np.arange(n_rows)
    h, rem = np.divmod(r, hd)
    i, j = np.divmod(rem, 2)
    return h * hd + j * (hd // 2) + i


__all__ = ["ARCHS", "SUPPORTED_ARCHITECTURES", "ArchSpec", "HParams", "expected_shape", "qk_permutation"]
