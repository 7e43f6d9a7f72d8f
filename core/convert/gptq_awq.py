"""GPTQ (AutoGPTQ / GPTQModel) and AWQ (AutoAWQ, GEMM packing) checkpoints, dequantized on read.

A layer ``L`` of such a checkpoint is stored as ``L.qweight``, ``L.qzeros``, ``L.scales`` (and
``L.g_idx`` for GPTQ) instead of ``L.weight``. :class:`DequantizedSource` lists ``L.weight`` in its
place (shape ``(out, in)``, the scales' float type) and computes its rows on demand:

- GPTQ: ``qweight`` ``(in*bits/32, out)`` int32 packs ``bits``-bit values along the input dim, low bits
  first; ``qzeros`` ``(groups, out*bits/32)`` packs the zero points along the output dim; the "gptq"
  (v1) checkpoint format stores zero-1. ``W[i, o] = scales[g_idx[i], o] * (q[i, o] - zero[g_idx[i], o])``.
- AWQ (GEMM): ``qweight`` ``(in, out/8)`` and ``qzeros`` ``(groups, out/8)`` pack 8 output columns per
  int32 in the order 0,2,4,6,1,3,5,7; ``W[i, o] = scales[i // group, o] * (q[i, o] - zero[i // group, o])``.

The same arithmetic as llama.cpp's ``convert_hf_to_gguf.py`` (``dequant_gptq``), in float32.
Other tensors pass through unchanged.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import numpy as np
from gguf.constants import GGMLQuantizationType as T

from ..errors import SourceError, UnsupportedError
from ..sources.base import ModelSource, TensorInfo
from ..sources.safetensors_source import SafetensorsSource, bf16_to_f32

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)       # nibble k of an AWQ word holds column AWQ_ORDER[k]
_FLOAT_OF = {"F16": T.F16, "BF16": T.BF16, "F32": T.F32}


def quant_config(folder: str, config: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The checkpoint's quantization settings normalized to ``{method, bits, group_size, format,
    file}``, or None for an unquantized checkpoint. Reads config.json's ``quantization_config``,
    else AutoGPTQ's ``quantize_config.json`` or AutoAWQ's ``quant_config.json``."""
    qc = config.get("quantization_config")
    file = os.path.join(folder, "config.json")
    if not isinstance(qc, dict):
        qc = None
        for name, method in (("quantize_config.json", "gptq"), ("quant_config.json", "awq")):
            p = os.path.join(folder, name)
            if os.path.exists(p):
                try:
                    with open(p, encoding="utf-8") as f:
                        qc = dict(json.load(f))
                except (OSError, ValueError, TypeError) as e:
                    raise SourceError(f"cannot read {name}: {e}", p) from None
                qc.setdefault("quant_method", method)
                file = p
                break
        if qc is None:
            return None
    method = str(qc.get("quant_method", "")).lower()
    if not method:
        return None
    bits = qc.get("bits", qc.get("w_bit"))
    group = qc.get("group_size", qc.get("q_group_size", -1))
    fmt = str(qc.get("checkpoint_format", qc.get("version", "gptq" if method == "gptq" else "gemm"))).lower()
    return {"method": method, "bits": bits, "group_size": group, "format": fmt, "file": file,
            "zero_point": qc.get("zero_point", True)}


def _check_supported(qc: dict[str, Any]) -> None:
    method, bits, fmt = qc["method"], qc["bits"], qc["format"]
    if method == "gptq":
        if bits not in (2, 4, 8):
            raise UnsupportedError(f"GPTQ with {bits}-bit weights is not supported (2, 4 and 8 are)", qc["file"])
        if fmt not in ("gptq", "gptq_v2"):
            raise UnsupportedError(f"GPTQ checkpoint format '{fmt}' is not supported (gptq, gptq_v2 are)", qc["file"])
    elif method == "awq":
        if bits != 4:
            raise UnsupportedError(f"AWQ with {bits}-bit weights is not supported (4-bit is)", qc["file"])
        if fmt != "gemm":
            raise UnsupportedError(f"AWQ version '{fmt}' is not supported (GEMM packing is)", qc["file"])
        if not qc["zero_point"]:
            raise UnsupportedError("AWQ without zero points is not supported", qc["file"])
    else:
        raise UnsupportedError(f"quantized checkpoints of method '{method}' are not supported "
                               "(GPTQ and AWQ are)", qc["file"])


def _unpack(words: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """int32 words -> unsigned ``bits``-bit values, the k-th value of a word (low bits first) placed
    at index ``word * (32 // bits) + k`` along ``axis``."""
    u = words.astype(np.uint32, copy=False)
    per = 32 // bits
    shifts = (np.arange(per, dtype=np.uint32) * np.uint32(bits))
    mask = np.uint32((1 << bits) - 1)
    if axis == 0:
        v = (u[:, None, :] >> shifts[None, :, None]) & mask       # (words, per, cols)
        return v.reshape(u.shape[0] * per, u.shape[1])
    v = (u[:, :, None] >> shifts[None, None, :]) & mask           # (rows, words, per)
    return v.reshape(u.shape[0], u.shape[1] * per)


class DequantizedSource(ModelSource):
    """A GPTQ or AWQ Hugging Face folder whose packed layers read as float weights."""

    def __init__(self, hf: SafetensorsSource, qc: dict[str, Any]):
        _check_supported(qc)
        super().__init__(path=hf.path, kind=hf.kind, metadata=dict(hf.metadata))
        self.hf = hf
        self.config = hf.config
        self.index_path = hf.index_path
        self.qc = qc
        self.bits = int(qc["bits"])
        self._layers: dict[str, dict[str, Any]] = {}
        hidden: set[str] = set()
        tensors: list[TensorInfo] = []
        for t in hf.tensors:
            if not t.name.endswith(".qweight"):
                continue
            base = t.name[: -len(".qweight")]
            parts = {s: f"{base}.{s}" for s in ("qweight", "qzeros", "scales", "g_idx")}
            need = ("qweight", "qzeros", "scales") + (("g_idx",) if qc["method"] == "gptq" and parts["g_idx"] in hf else ())
            for s in need:
                if parts[s] not in hf:
                    raise SourceError(f"quantized layer '{base}' has no '{parts[s]}'", self._file(t.name))
            self._layers[f"{base}.weight"] = self._layer_info(base, parts, need)
            hidden.update(parts[s] for s in need)
        for t in hf.tensors:
            if t.name.endswith(".qweight"):
                info = self._layers[t.name[: -len(".qweight")] + ".weight"]
                ft = info["ftype"]
                n = info["out"] * info["in"]
                tensors.append(TensorInfo(info["name"], (info["out"], info["in"]), ft.name,
                                          n * (4 if ft == T.F32 else 2), ft))
            elif t.name not in hidden:
                tensors.append(t)
        self.tensors = tensors
        self._index()

    # -- layout ---------------------------------------------------------------------------
    def _file(self, name: str) -> str:
        f = getattr(self.hf, "_where", {}).get(name)
        return f.path if f is not None else self.hf.path

    def _layer_info(self, base: str, parts: dict[str, str], need: tuple[str, ...]) -> dict[str, Any]:
        hf, bits = self.hf, self.bits
        per = 32 // bits
        qw, qz, sc = (hf.tensor(parts[s]) for s in ("qweight", "qzeros", "scales"))
        where = self._file(parts["qweight"])
        if qw.dtype not in ("I32", "U32") or qz.dtype not in ("I32", "U32"):
            raise UnsupportedError(f"'{base}': packed weights of dtype {qw.dtype}/{qz.dtype} (expected int32)", where)
        if sc.dtype not in _FLOAT_OF:
            raise UnsupportedError(f"'{base}.scales' has dtype {sc.dtype} (expected F16, BF16 or F32)", where)
        if qw.n_dims != 2 or qz.n_dims != 2 or sc.n_dims != 2:
            raise SourceError(f"'{base}': packed tensors must be 2-D", where)
        groups, n_out = sc.shape
        if self.qc["method"] == "gptq":
            n_in = qw.shape[0] * per
            ok = qw.shape[1] == n_out and qz.shape == (groups, n_out // per) and n_out % per == 0
        else:
            n_in = qw.shape[0]
            ok = qw.shape[1] * per == n_out and qz.shape == (groups, n_out // per) and n_in % groups == 0
        if not ok:
            raise SourceError(f"'{base}': shapes qweight {list(qw.shape)}, qzeros {list(qz.shape)}, scales "
                              f"{list(sc.shape)} do not fit {bits}-bit {self.qc['method'].upper()} packing", where)
        if "g_idx" in need:
            gi = hf.tensor(parts["g_idx"])
            if gi.shape != (n_in,):
                raise SourceError(f"'{parts['g_idx']}' has shape {list(gi.shape)}, expected [{n_in}]", where)
        return {"name": f"{base}.weight", "parts": parts, "need": need, "in": n_in, "out": n_out,
                "groups": groups, "ftype": _FLOAT_OF[sc.dtype]}

    @property
    def architecture(self) -> Optional[str]:
        return self.hf.architecture

    @property
    def name(self) -> str:
        return self.hf.name

    def is_virtual(self, name: str) -> bool:
        """True for a dequantized layer (its float values are computed, not stored)."""
        return name in self._layers

    # -- data -----------------------------------------------------------------------------
    def _float(self, name: str, cols: slice) -> np.ndarray:
        a = self.hf.stored(name)[:, cols]
        return bf16_to_f32(a) if self.hf.tensor(name).dtype == "BF16" else a.astype(np.float32)

    def _groups(self, info: dict[str, Any]) -> np.ndarray:
        """Group of each input index when the checkpoint has no g_idx: consecutive runs of group_size."""
        gs = self.qc["group_size"]
        gs = int(gs) if isinstance(gs, int) and gs > 0 else -(-info["in"] // info["groups"])
        return np.minimum(np.arange(info["in"], dtype=np.int64) // gs, info["groups"] - 1)

    def _dequant(self, info: dict[str, Any], a: int, b: int) -> np.ndarray:
        """Rows [a, b) of the (out, in) weight, float32."""
        hf, bits, p = self.hf, self.bits, info["parts"]
        per = 32 // bits
        wa, wb = a // per, -(-b // per)                     # packed columns covering outputs [a, b)
        off = a - wa * per
        scales = self._float(p["scales"], slice(a, b))                       # (groups, b-a)
        if self.qc["method"] == "gptq":
            q = _unpack(hf.stored(p["qweight"])[:, a:b], bits, axis=0)       # (in, b-a)
            z = _unpack(hf.stored(p["qzeros"])[:, wa:wb], bits, axis=1)[:, off:off + b - a]
            z = z.astype(np.float32)
            if self.qc["format"] == "gptq":
                z += np.float32(1)
            if "g_idx" in info["need"]:
                g = np.asarray(hf.stored(p["g_idx"]), dtype=np.int64)
            else:
                g = self._groups(info)
            if g.min(initial=0) < 0 or g.max(initial=0) >= info["groups"]:
                raise SourceError(f"'{p['g_idx']}' has group indices outside [0, {info['groups']})",
                                  self._file(p["g_idx"]))
            w = scales[g] * (q.astype(np.float32) - z[g])
        else:
            order = np.argsort(np.asarray(AWQ_ORDER))                        # column c sits at nibble order[c]
            perm = (np.arange(wb - wa)[:, None] * per + order[None, :]).reshape(-1)
            q = _unpack(hf.stored(p["qweight"])[:, wa:wb], bits, axis=1)[:, perm][:, off:off + b - a]
            z = _unpack(hf.stored(p["qzeros"])[:, wa:wb], bits, axis=1)[:, perm][:, off:off + b - a]
            g = self._groups(info)
            w = scales[g] * (q.astype(np.float32) - z.astype(np.float32)[g])
        return np.ascontiguousarray(w.T, dtype=np.float32)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        info = self._layers.get(name)
        if info is None:
            self.tensor(name)
            return self.hf.read_rows(name, start, stop)
        self._check_rows(self.tensor(name), start, stop)
        try:
            return self._dequant(info, start, stop)
        except OSError as e:
            raise SourceError(f"cannot read tensor '{name}': {e.strerror or e}", self._file(info["parts"]["qweight"])) from None

    def stored(self, name: str) -> np.ndarray:
        if name in self._layers:
            raise SourceError(f"'{name}' is dequantized on read and has no stored items", self.path)
        return self.hf.stored(name)

    def raw(self, name: str) -> np.ndarray:
        info = self._layers.get(name)
        if info is None:
            return self.hf.raw(name)
        from ..kernels import get_kernel

        t = self.tensor(name)
        k = get_kernel(t.ggml_type)
        out = np.empty((t.n_rows, k.row_bytes(t.row_len)), dtype=np.uint8)
        step = max(1, (1 << 20) // t.row_len)
        for a in range(0, t.n_rows, step):
            b = min(a + step, t.n_rows)
            k.quantize_into(self._dequant(info, a, b), out[a:b])
        return out.reshape(-1)

    def release(self, name: str) -> None:
        info = self._layers.get(name)
        for n in (info["parts"][s] for s in info["need"]) if info else (name,):
            self.hf.release(n)

    def close(self) -> None:
        self.hf.close()


def maybe_dequantized(hf: SafetensorsSource, strict: bool = False) -> ModelSource:
    """``hf`` itself, or a :class:`DequantizedSource` over it when it is a GPTQ/AWQ folder.

    A quantization this module cannot decode (bitsandbytes, fp8, 3-bit GPTQ, ...) raises
    UnsupportedError with ``strict``; otherwise the folder is returned as stored (inspection
    still lists its integer tensors)."""
    if hf.kind != "hf":
        return hf
    qc = quant_config(hf.path, hf.config)
    if qc is None:
        return hf
    try:
        _check_supported(qc)
    except UnsupportedError:
        if strict:
            raise
        return hf
    return DequantizedSource(hf, qc)


__all__ = ["DequantizedSource", "maybe_dequantized", "quant_config", "AWQ_ORDER"]
