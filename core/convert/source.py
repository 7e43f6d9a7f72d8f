"""A Hugging Face checkpoint seen as the GGUF llama.cpp's converter would write: GGUF tensor names,
shapes and types, full metadata (``kv``), and rows transformed lazily on read.

Each output tensor is a :class:`Recipe` over one checkpoint tensor: an optional row permutation
(rotary Q/K layout), a row count (Gemma3 drops embedding rows past the vocabulary), an additive
shift (Gemma norms) and the output type (the stored float type; F32 for 1-D tensors and norms, as
llama.cpp). Rope factor tensors computed from config.json carry their data.
"""
from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import gguf
import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T

from ..errors import SourceError, UnsupportedError
from ..gguf_meta import KV, make_kv
from ..sources.base import ModelSource, TensorInfo
from . import arch as A
from .gptq_awq import maybe_dequantized, quant_config

log = logging.getLogger("quant_studio.convert")

SKIP_SUFFIXES = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")
_FLOAT_STORED = {T.F32, T.F16, T.BF16, T.F64}


@dataclass
class Recipe:
    src: Optional[str]                      # checkpoint tensor (None: ``data`` holds the values)
    out_type: T
    n_rows: int                             # rows of the output (flattened to 2-D)
    perm: Optional[np.ndarray] = None       # output row r = source row perm[r]
    shift: float = 0.0
    data: Optional[np.ndarray] = None


def _string_array(values: list) -> bytes:
    """GGUF ARRAY-of-STRING value bytes (type, subtype, count, then length-prefixed UTF-8)."""
    parts = [struct.pack("<IIQ", int(gguf.GGUFValueType.ARRAY), int(gguf.GGUFValueType.STRING), len(values))]
    for v in values:
        b = v.encode("utf-8") if isinstance(v, str) else bytes(v)
        parts.append(len(b).to_bytes(8, "little"))
        parts.append(b)
    return b"".join(parts)


class _Recorder(gguf.GGUFWriter):
    """A GGUFWriter used only to collect key/values through gguf-py's ``add_*`` API."""

    def __init__(self, arch: str):
        super().__init__(None, arch)

    def add_key_value(self, key, val, vtype, sub_type=None) -> None:  # overwrite silently, keep position
        self.kv_data[0][key] = gguf.GGUFValue(value=val, type=vtype, sub_type=sub_type)

    def kv(self) -> list[KV]:
        out = []
        for key, v in self.kv_data[0].items():
            val = v.value
            if v.type == gguf.GGUFValueType.ARRAY:
                kv = make_kv(key, list(val), v.type, v.sub_type)
                if kv.subtype == gguf.GGUFValueType.STRING:       # token lists: serialize once, quickly
                    kv.raw = _string_array(kv.value)
                out.append(kv)
            else:
                out.append(make_kv(key, val, v.type))
        return out


class ConvertedSource(ModelSource):
    """See the module docstring. ``hf`` is the checkpoint (SafetensorsSource or DequantizedSource)."""

    def __init__(self, hf: ModelSource, spec: A.ArchSpec, hp: A.HParams):
        super().__init__(path=hf.path, kind="hf")
        self.hf = hf
        self.spec = spec
        self.hf_arch = spec.hf
        self.hp = hp
        self.warnings: list[str] = []
        self._recipes: dict[str, Recipe] = {}
        self._hf_names: dict[str, str] = {}
        w = _Recorder(spec.arch_name)
        w.add_type(gguf.GGUFType.MODEL)
        vocab = _Recorder(spec.arch_name)                 # tokenizer first: the embedding rows depend on it
        n_vocab = spec.vocab(vocab, hp, self._warn)
        params = _Recorder(spec.arch_name)
        spec.params(params, hp)
        extra = spec.extra(params, hp)
        self._build_tensors(n_vocab, extra)
        self._general(w)
        w.kv_data[0].update(params.kv_data[0])
        w.add_file_type(self._natural_file_type())
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.kv_data[0].update(vocab.kv_data[0])
        self.kv = w.kv()
        self.metadata = {k.key: k.value for k in self.kv}

    def _warn(self, msg: str) -> None:
        self.warnings.append(msg)
        log.warning("%s: %s", self.path, msg)

    def _file(self, name: str) -> str:
        hf = getattr(self.hf, "hf", self.hf)
        f = getattr(hf, "_where", {}).get(name)
        return f.path if f is not None else self.path

    # -- tensors -------------------------------------------------------------------------
    def _build_tensors(self, n_vocab: int, extra: A.Extra) -> None:
        spec, hp = self.spec, self.hp
        tmap = gguf.get_tensor_name_map(spec.arch, hp.n_layer)
        tied = bool(hp.get("tie_word_embeddings", False))
        found: dict[str, str] = {}
        order: list[tuple[tuple[int, int], TensorInfo]] = []
        for t in extra:
            name, data = t
            self._add(TensorInfo(name, data.shape, "F32", data.nbytes, T.F32), Recipe(None, T.F32, 1, data=data), None)
            order.append(((-2, len(order)), self.tensors[-1]))
        for pos, t in enumerate(self.hf.tensors):
            name = t.name
            if name.endswith(SKIP_SUFFIXES):
                continue
            if name == "lm_head.weight" and (spec.skip_lm_head or tied):
                continue
            mapped = tmap.get_type_and_name(name, try_suffixes=(".weight", ".bias"))
            if mapped is None:
                raise UnsupportedError(f"tensor '{name}' has no GGUF counterpart for {spec.hf}", self._file(name))
            kind, new = mapped
            if new in found:
                raise SourceError(f"tensors '{found[new]}' and '{name}' both map to '{new}'", self._file(name))
            found[new] = name
            if t.ggml_type not in _FLOAT_STORED:
                raise UnsupportedError(f"tensor '{name}' has dtype {t.dtype}, which cannot be converted "
                                       "(F32, F16, BF16 can)", self._file(name))
            shape = tuple(t.shape)
            want = A.expected_shape(kind, hp, spec, n_vocab)
            if want is not None and new.endswith(".bias"):
                want = want[:1]
            if want is not None and spec.trim_embd and kind == A.MT.TOKEN_EMBD and len(shape) == 2 \
                    and shape[0] >= n_vocab:
                shape = (n_vocab,) + shape[1:]
            if want is not None and shape != want:
                extra_msg = " (rows = tokens in the vocabulary)" if kind in (A.MT.TOKEN_EMBD, A.MT.OUTPUT) else ""
                raise SourceError(f"tensor '{name}' has shape {list(t.shape)}, but config.json and the tokenizer "
                                  f"imply {list(want)}{extra_msg}", self._file(name))
            n_dims = len(shape)
            if n_dims <= 1 or new.endswith("_norm.weight") or not new.endswith(".weight") or t.ggml_type == T.F64:
                out_t = T.F32
            else:
                out_t = t.ggml_type
            row_len = shape[-1] if shape else 1
            n_rows = int(np.prod(shape)) // row_len if shape else 1
            r = Recipe(name, out_t, n_rows)
            if spec.permute_qk and kind in (A.MT.ATTN_Q, A.MT.ATTN_K):
                heads = hp.n_head if kind == A.MT.ATTN_Q else hp.n_head_kv
                r.perm = A.qk_permutation(shape[0], heads, self._file(name), name)
            if spec.norm_shift and name.endswith("norm.weight"):
                r.shift = spec.norm_shift
            bs, ts = GGML_QUANT_SIZES[out_t]
            self._add(TensorInfo(new, shape, out_t.name, int(np.prod(shape)) // bs * ts, out_t), r, name)
            layer = self.tensors[-1].layer
            rank = -1 if kind == A.MT.TOKEN_EMBD else (layer if layer is not None else 1 << 30)
            order.append(((rank, pos), self.tensors[-1]))
        self._check_complete(found)
        self.tensors = [t for _, t in sorted(order, key=lambda x: x[0])]
        self._index()

    def _add(self, info: TensorInfo, recipe: Recipe, hf_name: Optional[str]) -> None:
        self.tensors.append(info)
        self._recipes[info.name] = recipe
        if hf_name is not None:
            self._hf_names[info.name] = hf_name

    def _check_complete(self, found: dict[str, str]) -> None:
        need = [A.MT.TOKEN_EMBD, A.MT.OUTPUT_NORM]
        per_layer = [A.MT.ATTN_NORM, A.MT.ATTN_OUT, A.MT.FFN_UP, A.MT.FFN_DOWN]
        if not self.spec.fused_ffn_up:
            per_layer.append(A.MT.FFN_GATE)
        names = [gguf.TENSOR_NAMES[k] + ".weight" for k in need]
        for i in range(self.hp.n_layer):
            names += [gguf.TENSOR_NAMES[k].format(bid=i) + ".weight" for k in per_layer]
            qkv = [gguf.TENSOR_NAMES[k].format(bid=i) + ".weight" for k in (A.MT.ATTN_Q, A.MT.ATTN_K, A.MT.ATTN_V)]
            fused = gguf.TENSOR_NAMES[A.MT.ATTN_QKV].format(bid=i) + ".weight"
            if fused not in found:
                names += qkv
        missing = [n for n in names if n not in found]
        if missing:
            where = getattr(self.hf, "index_path", None) or self.path
            raise SourceError(f"the checkpoint has no tensor for '{missing[0]}'"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                              + f"; config.json says {self.hp.n_layer} layers", where)

    def _natural_file_type(self) -> int:
        count: dict[T, int] = {}
        for t in self.tensors:
            if t.n_dims >= 2:
                count[t.ggml_type] = count.get(t.ggml_type, 0) + t.n_elements
        top = max(count, key=count.get) if count else T.F32
        return int({T.F32: gguf.LlamaFileType.ALL_F32, T.BF16: gguf.LlamaFileType.MOSTLY_BF16}
                   .get(top, gguf.LlamaFileType.MOSTLY_F16))

    def _general(self, w: gguf.GGUFWriter) -> None:
        total = sum(t.n_elements for t in self.tensors)
        try:
            md = gguf.Metadata.load(None, Path(self.path), None, total)
        except Exception as e:  # noqa: BLE001 - a bad model card must not stop a conversion
            self._warn(f"model card ignored: {e}")
            md = gguf.Metadata()
        if md.name is None:
            md.name = os.path.basename(os.path.normpath(self.path))
        if md.size_label is None and total > 0:
            md.size_label = gguf.size_label(total, total, 0, 0)
        md.set_gguf_meta_model(w)

    # -- model API -------------------------------------------------------------------------
    @property
    def architecture(self) -> Optional[str]:
        return self.spec.arch_name

    @property
    def name(self) -> str:
        return self.metadata.get("general.name") or super().name

    def hf_name(self, name: str) -> Optional[str]:
        """The checkpoint tensor a GGUF tensor comes from (None for computed ones)."""
        self.tensor(name)
        return self._hf_names.get(name)

    def _virtual(self, src: str) -> bool:
        return bool(getattr(self.hf, "is_virtual", lambda n: False)(src))

    def is_transformed(self, name: str) -> bool:
        """False when the tensor is the checkpoint's stored bytes unchanged."""
        r = self._recipes[self.tensor(name).name]
        if r.src is None or r.perm is not None or r.shift or self._virtual(r.src):
            return True
        src = self.hf.tensor(r.src)
        return src.ggml_type != r.out_type or src.n_rows != r.n_rows

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        t = self.tensor(name)
        self._check_rows(t, start, stop)
        r = self._recipes[name]
        if r.data is not None:
            return np.array(r.data.reshape(t.n_rows, t.row_len)[start:stop], dtype=np.float32)
        if r.perm is None:
            x = self.hf.read_rows(r.src, start, stop)
        else:
            idx = r.perm[start:stop]
            if len(idx) == 0:
                return np.empty((0, t.row_len), np.float32)
            lo, hi = int(idx.min()), int(idx.max()) + 1
            x = self.hf.read_rows(r.src, lo, hi)[idx - lo]
        if r.shift:
            x = x + np.float32(r.shift)
        return x

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes in its GGUF type: the stored bytes when untransformed (memory-mapped),
        else the rows reordered (same type) or converted, built in memory."""
        t = self.tensor(name)
        r = self._recipes[name]
        if r.data is not None:
            return np.ascontiguousarray(r.data, dtype=np.float32).view(np.uint8).reshape(-1)
        if not self.is_transformed(name):
            return self.hf.raw(r.src)
        src = self.hf.tensor(r.src)
        if not r.shift and not self._virtual(r.src) and src.ggml_type == r.out_type:
            items = self.hf.stored(r.src).reshape(src.n_rows, src.row_len)
            items = items[r.perm] if r.perm is not None else items[: r.n_rows]
            return np.ascontiguousarray(items).view(np.uint8).reshape(-1)
        from ..kernels import get_kernel

        k = get_kernel(r.out_type)
        out = np.empty((t.n_rows, k.row_bytes(t.row_len)), dtype=np.uint8)
        step = max(1, (1 << 20) // max(1, t.row_len))
        for a in range(0, t.n_rows, step):
            b = min(a + step, t.n_rows)
            k.quantize_into(np.ascontiguousarray(self.read_rows(name, a, b)), out[a:b])
        return out.reshape(-1)

    def release(self, name: str) -> None:
        r = self._recipes.get(name)
        if r is not None and r.src is not None:
            self.hf.release(r.src)

    def close(self) -> None:
        self.hf.close()


def convert_source(hf: ModelSource) -> ConvertedSource:
    """The GGUF view of a Hugging Face folder (a SafetensorsSource, or a DequantizedSource for
    GPTQ/AWQ; a GPTQ/AWQ SafetensorsSource is wrapped here)."""
    if getattr(hf, "kind", None) != "hf" or not os.path.isdir(hf.path):
        raise SourceError("not a folder: converting needs a Hugging Face model folder (config.json, "
                          "tokenizer, safetensors weights)", hf.path)
    cfg_path = os.path.join(hf.path, "config.json")
    config = getattr(hf, "config", None)
    if not os.path.exists(cfg_path):
        raise SourceError("no config.json: the architecture and hyper-parameters are unknown", cfg_path)
    if not isinstance(config, dict) or not config:
        raise SourceError("config.json is empty or not a JSON object", cfg_path)
    if not hasattr(hf, "is_virtual"):
        qc = quant_config(hf.path, config)
        if qc is not None:
            hf = maybe_dequantized(hf, strict=True)
    archs = config.get("architectures") or []
    arch = archs[0] if archs else None
    spec = A.ARCHS.get(arch)
    if spec is None:
        raise UnsupportedError(f"architecture '{arch or config.get('model_type') or 'unknown'}' cannot be "
                               f"converted; supported: {', '.join(A.SUPPORTED_ARCHITECTURES)}", cfg_path)
    hp = A.HParams(config, hf.path)
    return ConvertedSource(hf, spec, hp)


__all__ = ["ConvertedSource", "Recipe", "convert_source"]
