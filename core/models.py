"""The one way to open a model: :func:`open_model`, used by the CLI, the studio's workers and the tests.

A GGUF file opens as it is. A Hugging Face folder (or a single ``.safetensors`` file) opens as the
GGUF it converts to (``core.convert``: GGUF names, metadata, lazy transformations; GPTQ/AWQ weights
dequantized); when it cannot be converted it opens as stored, for inspection only, and ``note``
says why (writing it then fails with that reason). ``core.sources.open_file`` is the raw reader
underneath.
"""
from __future__ import annotations

import os

from .errors import QuantStudioError
from .sources import ModelSource, open_file


def open_model(path: "str | os.PathLike", *, writable: bool = False) -> ModelSource:
    """Open any model the studio reads (headers only; data stays memory-mapped). ``source.note`` is
    '' for a model that can be written as GGUF, else the reason it can only be inspected; with
    ``writable`` that reason is raised instead (the exception of the conversion, naming its file)."""
    src = open_file(path)
    if getattr(src, "kv", None) is not None:
        src.note = ""
        return src
    from .convert import convert_source, maybe_dequantized
    try:
        out = convert_source(src)
    except QuantStudioError as e:
        if writable:
            raise
        src = maybe_dequantized(src)                  # GPTQ/AWQ folders are still seen dequantized
        src.note = f"inspection only, cannot convert to GGUF: {e}"
        return src
    out.note = ""
    return out
