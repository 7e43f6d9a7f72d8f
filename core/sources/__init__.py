"""The raw readers: ``open_file(path)`` -> :class:`ModelSource` of a GGUF file, a .safetensors file
or a Hugging Face folder as stored (no conversion; ``core.models.open_model`` is what users of a
model call)."""
from __future__ import annotations

import os

from ..errors import SourceError
from .base import ModelSource, TensorInfo, layer_of

__all__ = ["open_file", "ModelSource", "TensorInfo", "layer_of"]


def open_file(path: "str | os.PathLike", whole_split: bool = True) -> ModelSource:
    """Open a GGUF file, a .safetensors file or a Hugging Face folder (headers only; data stays mapped).
    A shard of a split GGUF opens as the whole model (every shard), unless ``whole_split`` is False."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise SourceError("no such file or folder", path)
    if os.path.isdir(path):
        from .safetensors_source import SafetensorsSource
        return SafetensorsSource(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise SourceError(f"cannot open: {e.strerror or e}", path) from None
    if head[:4] == b"GGUF" or path.lower().endswith(".gguf"):
        from .gguf_source import GGUFSource
        src = GGUFSource(path)
        if whole_split:
            from .gguf_split import SplitGGUFSource, is_split
            if is_split(src):
                return SplitGGUFSource(path, src)
        return src
    if path.lower().endswith(".safetensors") or len(head) == 8:
        from .safetensors_source import SafetensorsSource
        if path.lower().endswith(".safetensors"):
            return SafetensorsSource(path)
    raise SourceError("not a model file: expected a .gguf, a .safetensors or a Hugging Face folder", path)
