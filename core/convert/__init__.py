"""Hugging Face checkpoints to GGUF, in the same streaming pass as quantization.

``convert_source(SafetensorsSource(folder))`` gives a :class:`ConvertedSource`: GGUF tensor names,
shapes and types plus the full GGUF metadata (``kv``), with rows transformed lazily. Feed it to
``core.plan`` / ``core.job.run_plan`` like any other source; :func:`quantize_hf` does all of it.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import numpy as np

from ..errors import QuantStudioError
from ..progress import CancelToken, ProgressCallback, no_progress
from .arch import SUPPORTED_ARCHITECTURES
from .gptq_awq import DequantizedSource, maybe_dequantized
from .source import ConvertedSource, convert_source


def open_hf(folder: "str | os.PathLike") -> ConvertedSource:
    """Open a Hugging Face folder (GPTQ/AWQ dequantized) and convert it."""
    from ..sources.safetensors_source import SafetensorsSource

    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise QuantStudioError("not a folder: converting needs a Hugging Face model folder", folder)
    return convert_source(SafetensorsSource(folder))


def quantize_hf(folder: "str | os.PathLike", output: str, qtype: str, *, threads: Optional[int] = None,
                split_max_size: Optional[int] = None, imatrix: Optional[dict[str, np.ndarray]] = None,
                progress: ProgressCallback = no_progress, cancel: Optional[CancelToken] = None,
                on_tensor: Optional[Callable] = None):
    """``quantize HF_FOLDER OUT.gguf --type T``: convert and quantize in one streaming pass (no F16
    intermediate file). Every check on the input runs before the output is opened. Returns the
    job's :class:`core.job.JobResult`."""
    from ..job import run_plan
    from ..plan import pure_plan

    src = open_hf(folder)
    try:
        if os.path.abspath(output) == os.path.abspath(os.fspath(folder)):
            raise QuantStudioError("output would overwrite the input", output)
        plan = pure_plan(src.tensors, qtype, src.architecture)
        return run_plan(src, plan, output, threads=threads, split_max_size=split_max_size, imatrix=imatrix,
                        progress=progress, cancel=cancel, on_tensor=on_tensor)
    finally:
        src.close()


__all__ = ["convert_source", "ConvertedSource", "DequantizedSource", "maybe_dequantized", "open_hf",
           "quantize_hf", "SUPPORTED_ARCHITECTURES"]
