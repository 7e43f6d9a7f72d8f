"""Hyperparameters of a decoder-only model, read from GGUF metadata as llama.cpp reads them.

One table (:data:`ARCHS`) says what differs between the architectures the converter supports; one
function (:func:`hparams_from`) reads the keys (``{arch}.block_count``, ``.attention.head_count``,
``.rope.freq_base`` ...) with llama.cpp's defaults. Sources: ``llama-model.cpp`` (``load_hparams``:
the shared keys; ``llama_model_rope_type``), ``llama-context.cpp`` (YaRN ``ext_factor``/``attn_factor``),
``llama-hparams.cpp`` (``set_swa_pattern``) and ``models/<arch>.cpp`` (``load_arch_hparams``, the graph).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import UnsupportedError


@dataclass(frozen=True)
class ArchSpec:
    """What one GGUF architecture does in its graph (``src/models/<arch>.cpp``)."""

    rope_neox: bool                 # NEOX rotates (i, i+n_rot/2); NORM (llama) rotates adjacent pairs
    ffn_act: str = "silu"           # gate activation: "silu" | "gelu" (tanh approximation)
    embd_scale: bool = False        # token embeddings times sqrt(n_embd) (gemma)
    post_norms: bool = False        # attn_post_norm / ffn_post_norm after each block (gemma2/3)
    qk_norm: bool = False           # RMS norm of each q and k head before RoPE (qwen3, gemma3)
    q_prescale: bool = False        # scale folded into Q before attention (gemma, phi3), else in softmax
    swa_pattern: int = 0            # default sliding_window_pattern (0: no sliding window)
    attn_softcap: Optional[float] = None   # default attention logit soft-cap (None: off)
    final_softcap: Optional[float] = None  # default final logit soft-cap (None: off)
    swa_rope_own: bool = False      # SWA layers use rope.freq_base_swa and scale 1 (gemma3)


ARCHS: dict[str, ArchSpec] = {
    "llama":  ArchSpec(rope_neox=False),
    "qwen2":  ArchSpec(rope_neox=True),
    "qwen3":  ArchSpec(rope_neox=True, qk_norm=True),
    "gemma2": ArchSpec(rope_neox=True, ffn_act="gelu", embd_scale=True, post_norms=True, q_prescale=True,
                       swa_pattern=2, attn_softcap=50.0, final_softcap=30.0),
    "gemma3": ArchSpec(rope_neox=True, ffn_act="gelu", embd_scale=True, post_norms=True, qk_norm=True,
                       q_prescale=True, swa_pattern=6, swa_rope_own=True),
    "phi3":   ArchSpec(rope_neox=True, q_prescale=True),
}


@dataclass(frozen=True)
class Hparams:
    """Everything the forward pass needs besides the tensors."""

    arch: str
    spec: ArchSpec
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int                   # key_length
    head_dim_v: int                 # value_length
    n_vocab: int
    eps: float
    n_rot: int
    freq_base: float
    freq_scale: float
    freq_base_swa: float
    freq_scale_swa: float
    ext_factor: float               # YaRN extrapolation mix (0 unless rope.scaling.type is yarn)
    attn_factor: float              # RoPE magnitude scale (YaRN / longrope attn_factor)
    beta_fast: float
    beta_slow: float
    n_ctx_orig: int                 # rope.scaling.original_context_length (YaRN; longrope long/short)
    n_swa: int                      # sliding window (0: none)
    swa_layers: tuple[bool, ...]
    attn_scale: float               # multiplies q.k
    attn_softcap: float             # 0: off
    final_softcap: float            # 0: off

    def is_swa(self, il: int) -> bool:
        return self.n_swa > 0 and self.swa_layers[il]

    def rope_base_scale(self, il: int) -> tuple[float, float]:
        """(freq_base, freq_scale) of layer ``il`` (``llama_model::get_rope_freq_base/scale``)."""
        if self.is_swa(il):
            return self.freq_base_swa, self.freq_scale_swa
        return self.freq_base, self.freq_scale


def _swa_layers(n_layer: int, pattern: Any) -> tuple[bool, ...]:
    """``llama_hparams::set_swa_pattern`` (dense_first=false): layer il slides when il % n < n - 1;
    an array pattern in the metadata is taken as it is."""
    if isinstance(pattern, (list, tuple)):
        vals = [bool(v) for v in pattern]
        return tuple(vals[:n_layer] + [False] * (n_layer - len(vals)))
    n = int(pattern)
    return tuple(n == 0 or (il % n < n - 1) for il in range(n_layer))


def hparams_from(metadata: dict[str, Any], tensor_shapes: dict[str, tuple[int, ...]],
                 path: Optional[str] = None) -> Hparams:
    """Read the hyperparameters of a model from its GGUF metadata (and a few tensor shapes), with the
    defaults llama.cpp uses when a key is absent. Raises UnsupportedError for other architectures."""
    arch = metadata.get("general.architecture")
    if arch not in ARCHS:
        raise UnsupportedError(f"the forward pass does not support architecture '{arch}' "
                               f"(supported: {', '.join(ARCHS)})", path)
    spec = ARCHS[arch]

    def get(key: str, default: Any = None) -> Any:
        v = metadata.get(f"{arch}.{key}", default)
        return default if v is None else v

    if get("expert_count", 0):
        raise UnsupportedError("the forward pass does not support mixture-of-experts models", path)

    def scalar(key: str, default: Any = None) -> Any:
        v = get(key, default)
        if isinstance(v, (list, tuple)):          # per-layer arrays: all equal in the supported models
            if len(set(v)) != 1:
                raise UnsupportedError(f"per-layer '{arch}.{key}' values are not supported", path)
            v = v[0]
        return v

    try:
        n_layer = int(get("block_count"))
        n_embd = int(get("embedding_length"))
        n_head = int(scalar("attention.head_count"))
    except (TypeError, ValueError):
        raise UnsupportedError(f"incomplete '{arch}' metadata (block_count, embedding_length, "
                               "attention.head_count are needed)", path) from None
    n_head_kv = int(scalar("attention.head_count_kv", n_head))
    head_dim = int(get("attention.key_length", n_embd // n_head))
    head_dim_v = int(get("attention.value_length", n_embd // n_head))
    n_rot = int(get("rope.dimension_count", head_dim))
    emb = tensor_shapes.get("token_embd.weight")
    n_vocab = int(emb[0]) if emb else int(get("vocab_size", 0))

    freq_base = float(get("rope.freq_base", 10000.0))
    scaling = str(get("rope.scaling.type", "linear"))
    factor = float(get("rope.scaling.factor", 0.0) or get("rope.scale_linear", 0.0) or 0.0)
    freq_scale = 1.0 if (factor == 0.0 or scaling == "none") else 1.0 / factor
    n_ctx_train = int(get("context_length", 0) or 0)
    n_ctx_orig = int(get("rope.scaling.original_context_length", 0) or n_ctx_train)
    ext_factor = 1.0 if scaling == "yarn" else 0.0
    attn_factor = 1.0
    if ext_factor != 0.0:
        # llama_context: get_mscale(factor) cancelled against rope_yarn's own 1 + 0.1 ln(1/freq_scale)
        f = 1.0 / freq_scale
        log_mul = float(get("rope.scaling.yarn_log_multiplier", 0.0) or 0.0)
        mscale = (lambda s, m: 1.0 if s <= 1.0 else 0.1 * m * math.log(s) + 1.0)
        attn_factor = mscale(f, 1.0) / mscale(f, log_mul) if log_mul else mscale(f, 1.0)
        attn_factor *= 1.0 / (1.0 + 0.1 * math.log(f))
    attn_factor *= float(get("rope.scaling.attn_factor", 1.0) or 1.0)

    n_swa = 0
    swa_layers = tuple(False for _ in range(n_layer))
    freq_base_swa, freq_scale_swa = freq_base, freq_scale
    if spec.swa_pattern:
        default_window = 4096 if arch == "gemma2" else 0
        n_swa = int(get("attention.sliding_window", default_window) or 0)
        swa_layers = _swa_layers(n_layer, get("attention.sliding_window_pattern", spec.swa_pattern))
        if spec.swa_rope_own:
            freq_base_swa, freq_scale_swa = float(get("rope.freq_base_swa", 10000.0)), 1.0
        else:
            freq_base_swa = float(get("rope.freq_base_swa", freq_base))
    # phi3: llama.cpp disables Phi's sliding window (models/phi3.cpp, PR 13676); so do we.

    if arch in ("gemma2", "gemma3"):
        big = n_layer == (46 if arch == "gemma2" else 62)    # the 27B models scale by n_embd / n_head
        attn_scale = 1.0 / math.sqrt(n_embd / n_head if big else head_dim)
    else:
        attn_scale = 1.0 / math.sqrt(head_dim)
    attn_softcap = float(get("attn_logit_softcapping", spec.attn_softcap or 0.0) or 0.0) \
        if spec.attn_softcap else 0.0
    final_softcap = float(get("final_logit_softcapping", spec.final_softcap or 0.0) or 0.0)

    return Hparams(arch=arch, spec=spec, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                   n_head_kv=n_head_kv, head_dim=head_dim, head_dim_v=head_dim_v, n_vocab=n_vocab,
                   eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)), n_rot=n_rot,
                   freq_base=freq_base, freq_scale=freq_scale, freq_base_swa=freq_base_swa,
                   freq_scale_swa=freq_scale_swa, ext_factor=ext_factor, attn_factor=attn_factor,
                   beta_fast=float(get("rope.scaling.yarn_beta_fast", 32.0) or 32.0),
                   beta_slow=float(get("rope.scaling.yarn_beta_slow", 1.0) or 1.0),
                   n_ctx_orig=n_ctx_orig, n_swa=n_swa, swa_layers=swa_layers, attn_scale=attn_scale,
                   attn_softcap=attn_softcap, final_softcap=final_softcap)
