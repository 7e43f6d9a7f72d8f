"""llama.cpp's own tensor-type choice (``llama_model_quantize``), through ctypes: the oracle for presets.

``quantize(path, ftype, ...)`` runs ``llama_model_quantize`` in dry-run mode (no output is written)
and reads the per-tensor lines it logs (``[  3/272] blk.0.attn_v.weight - [...], type = q4_1,
size = ... MiB -> ... MiB (q6_K)``; an unquantized tensor's line has no arrow and keeps its type).
With ``output=`` it really quantizes (1 thread) and the types are read back with gguf-py.
The parameters struct comes from the ``llama_cpp`` package; ``check_params_layout`` guards against
a binding that is stale relative to the library (the defaults must read back as llama.h says).

``write_shape_gguf`` makes GGUF files with zero weights of any names/shapes and hyperparameters:
the type choice reads only names, shapes and metadata, so tiny files cover 80-layer, MoE, falcon
and odd-row models in milliseconds.
"""
from __future__ import annotations

import ctypes
import re
import threading
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

_LINE = re.compile(r"\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[[^\]]*\], type =\s*(\S+), size =\s*[\d.]+ MiB"
                   r"(?: ->\s*[\d.]+ MiB \((\S+)\))?")
GGML_TYPE_COUNT = 43          # ggml.h of the vendored llama.cpp
_lock = threading.Lock()


def _lib():
    import llama_cpp  # noqa: F401  (ImportError when not installed is an error in CI)

    return llama_cpp


def check_params_layout() -> None:
    """The binding's struct must read llama.cpp's defaults back correctly (fields, order, sizes)."""
    lc = _lib()
    p = lc.llama_model_quantize_default_params()
    got = (p.nthread, p.ftype, p.output_tensor_type, p.token_embedding_type, p.allow_requantize,
           p.quantize_output_tensor, p.only_copy, p.pure, p.keep_split, p.dry_run, bool(p.imatrix),
           bool(p.kv_overrides), bool(p.tt_overrides), bool(p.prune_layers), p.max_buf_size)
    want = (0, 7, GGML_TYPE_COUNT, GGML_TYPE_COUNT, False, True, False, False, False, False, False,
            False, False, False, 8 << 30)
    if got != want:
        raise RuntimeError(f"llama_cpp's llama_model_quantize_params does not match the library: {got}")


def _type_id(name: str) -> int:
    from gguf.constants import GGMLQuantizationType

    return int(GGMLQuantizationType[name.upper()])


@dataclass
class Result:
    types: dict[str, str]            # tensor name -> GGUF type name
    needs_imatrix: bool              # the dry run warned that the real run needs an imatrix
    log: str


def quantize(path: str, ftype: int, *, pure: bool = False, tensor_types: Sequence[tuple[str, str]] = (),
             token_embedding_type: Optional[str] = None, output_tensor_type: Optional[str] = None,
             has_imatrix: bool = False, quantize_output_tensor: bool = True,
             output: Optional[str] = None, nthread: int = 1, imatrix: Optional[dict] = None) -> Result:
    """What ``llama-quantize`` chooses for every tensor of ``path`` as file type ``ftype``.

    ``tensor_types`` are ``--tensor-type`` patterns as llama-quantize hands them to the library
    (the tool lowercases them; pass them lowercased to mirror it). ``has_imatrix`` passes a
    one-entry importance matrix, which is all the type choice looks at (dry run only).
    """
    lc = _lib()
    check_params_layout()
    p = lc.llama_model_quantize_default_params()
    p.ftype = int(ftype)
    p.nthread = int(nthread)
    p.dry_run = output is None
    p.allow_requantize = True
    p.pure = pure
    p.quantize_output_tensor = quantize_output_tensor
    if token_embedding_type:
        p.token_embedding_type = _type_id(token_embedding_type)
    if output_tensor_type:
        p.output_tensor_type = _type_id(output_tensor_type)
    alive: list = []                  # buffers the struct points into
    if tensor_types:
        arr = (lc.llama_model_tensor_override * (len(tensor_types) + 1))()
        for i, (rx, t) in enumerate(tensor_types):
            b = ctypes.create_string_buffer(rx.encode())
            alive.append(b)
            arr[i].pattern = ctypes.cast(b, ctypes.c_char_p)
            arr[i].type = _type_id(t)
        arr[len(tensor_types)].pattern = None
        arr[len(tensor_types)].type = GGML_TYPE_COUNT
        alive.append(arr)
        p.tt_overrides = ctypes.cast(arr, ctypes.POINTER(lc.llama_model_tensor_override))
    if imatrix:
        import numpy as np

        arr = (lc.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(imatrix.items()):
            v = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
            b = ctypes.create_string_buffer(name.encode())
            alive += [v, b]
            arr[i].name = ctypes.cast(b, ctypes.c_char_p)
            arr[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = v.size
        arr[len(imatrix)].name = None
        alive.append(arr)
        p.imatrix = ctypes.cast(arr, ctypes.POINTER(lc.llama_model_imatrix_data))
    elif has_imatrix:
        if output is not None:
            raise ValueError("has_imatrix is for dry runs only")
        data = (ctypes.c_float * 1)(1.0)
        arr = (lc.llama_model_imatrix_data * 2)()
        name = ctypes.create_string_buffer(b"__dummy__")
        arr[0].name = ctypes.cast(name, ctypes.c_char_p)
        arr[0].data = data
        arr[0].size = 1
        arr[1].name = None
        alive += [data, arr, name]
        p.imatrix = ctypes.cast(arr, ctypes.POINTER(lc.llama_model_imatrix_data))

    chunks: list[str] = []

    @lc.llama_log_callback
    def cb(level, text, user_data):  # noqa: ARG001
        chunks.append(text.decode("utf-8", "replace"))

    with _lock:
        lc.llama_log_set(cb, ctypes.c_void_p(0))
        try:
            rc = lc.llama_model_quantize(path.encode(), (output or "").encode(), ctypes.byref(p))
        finally:
            from llama_cpp import _logger

            lc.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    text = "".join(chunks)
    if rc != 0:
        tail = "\n".join(text.strip().splitlines()[-5:])
        raise RuntimeError(f"llama_model_quantize failed ({rc}): {tail}")
    if output is not None:
        from core.models import open_model   # its header parser is tested against gguf-py's GGUFReader

        with open_model(output) as m:
            types = {t.name: t.dtype for t in m.tensors}
    else:
        types = {m.group(1): (m.group(3) or m.group(2)).upper() for m in _LINE.finditer(text)}
    if not types:
        raise RuntimeError("no per-tensor lines in llama.cpp's log:\n" + text[-2000:])
    return Result(types, "will require an imatrix" in text, text)


def quantize_types(path: str, ftype: int, **kw) -> dict[str, str]:
    return quantize(path, ftype, **kw).types


def write_shape_gguf(path: str, arch: str, tensors: Sequence[tuple[str, tuple[int, ...]]], *, n_layer: int,
                     n_head: int = 4, n_head_kv: Optional[int] = None, n_expert: int = 0,
                     extra_u32: Optional[dict[str, int]] = None) -> str:
    """A GGUF with zero weights (F16; 1-D tensors F32) and the hyperparameters llama.cpp's
    quantizer loads: enough for its type choice, not for inference."""
    from gguf import GGUFWriter

    w = GGUFWriter(path, arch)
    w.add_context_length(64)
    w.add_embedding_length(256)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(256)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head if n_head_kv is None else n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_layer_norm_eps(1e-5)
    if n_expert:
        w.add_expert_count(n_expert)
        w.add_expert_used_count(2)
    for k, v in (extra_u32 or {}).items():
        w.add_uint32(k, v)
    for name, shape in tensors:
        w.add_tensor(name, np.zeros(shape, dtype=np.float32 if len(shape) == 1 else np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def layer_tensors(n_layer: int, kinds: Sequence[str], *, row: int = 256, rows: int = 32, n_expert: int = 0,
                  output: bool = True, vocab_row: Optional[int] = None) -> list[tuple[str, tuple[int, ...]]]:
    """GGUF tensor names and shapes of a decoder: token_embd, per layer a norm and ``kinds``
    (``*_exps`` kinds get ``n_expert`` experts), output_norm and (unless tied) output."""
    vr = row if vocab_row is None else vocab_row
    out: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (64, vr)), ("output_norm.weight", (vr,))]
    for i in range(n_layer):
        out.append((f"blk.{i}.attn_norm.weight", (row,)))
        for k in kinds:
            shape = (n_expert, rows, row) if n_expert and "exps" in k else (rows, row)
            out.append((f"blk.{i}.{k}.weight", shape))
    if output:
        out.append(("output.weight", (64, vr)))
    return out
