"""Hugging Face checkpoints to GGUF, in the same streaming pass as quantization.

``convert_source(SafetensorsSource(folder))`` gives a :class:`ConvertedSource`: GGUF tensor names,
shapes and types plus the full GGUF metadata (``kv``), with rows transformed lazily. Feed it to
``core.plan`` / ``core.job.run_plan`` like any other source; ``core.models.open_model`` opens a
folder this way.
"""
from __future__ import annotations

from .arch import SUPPORTED_ARCHITECTURES
from .gptq_awq import DequantizedSource, maybe_dequantized
from .source import ConvertedSource, convert_source


__all__ = ["convert_source", "ConvertedSource", "DequantizedSource", "maybe_dequantized",
           "SUPPORTED_ARCHITECTURES"]
