"""Run a plan: read tensors in order, quantize row chunks on a thread pool, stream to the writer.

Progress (weights done / total) goes to a callback after every chunk; the cancel token is checked
between chunks. At most ``2 * threads`` chunks are in flight, so peak memory is a few chunks plus
the writer's buffers, not the model.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
from gguf.constants import GGML_QUANT_SIZES

from .errors import Cancelled, OutputError, PlanError, SourceError
from .gguf_meta import KV
from .gguf_out import GGUFStreamWriter, layout_for
from .chunks import CHUNK_WEIGHTS, row_chunks, run_chunks
from .kernels import default_threads, get_kernel
from .plan import Plan
from .progress import CancelToken, ProgressCallback, ProgressTracker, no_progress
from .sources.base import ModelSource

@dataclass
class TensorResult:
    name: str
    type: str
    n_elements: int
    nbytes: int
    seconds: float


@dataclass
class JobResult:
    paths: list[str]
    size: int
    n_elements: int
    tensor_bytes: int
    seconds: float
    tensors: list[TensorResult] = field(default_factory=list)

    @property
    def bpw(self) -> float:
        return 8.0 * self.tensor_bytes / self.n_elements if self.n_elements else 0.0


def run_plan(source: ModelSource, plan: Plan, output: str, *, threads: Optional[int] = None,
             split_max_size: Optional[int] = None, importances: Optional[dict[str, np.ndarray]] = None,
             extra_kv: Optional[list[KV]] = None, progress: ProgressCallback = no_progress,
             cancel: Optional[CancelToken] = None,
             on_tensor: Optional[Callable[[TensorResult], None]] = None) -> JobResult:
    """Write ``plan`` applied to ``source`` as GGUF at ``output`` (several shards with ``split_max_size``).
    ``importances``: a tensor's name -> its importance weights (its imatrix entry), where given."""
    if os.path.abspath(output) == os.path.abspath(source.path):
        raise OutputError("the output would overwrite the input", output)
    threads = threads or default_threads()
    cancel = cancel or CancelToken()
    for e in plan.entries:
        t = source.tensor(e.name)
        if tuple(t.shape) != tuple(e.shape):
            raise PlanError(f"plan shape {list(e.shape)} of '{e.name}' differs from the model's {list(t.shape)}")
        if e.quantize and t.row_len % GGML_QUANT_SIZES[e.qtype][0]:
            raise PlanError(f"'{e.name}' has rows of {t.row_len}, which {e.type} cannot take "
                            f"(blocks of {GGML_QUANT_SIZES[e.qtype][0]})")
    layout = layout_for(source, plan, output, split_max_size, extra_kv)
    tracker = ProgressTracker(progress, plan.n_elements, "quantize")
    results: list[TensorResult] = []
    t0 = time.perf_counter()
    with GGUFStreamWriter(layout) as writer:
        for e in plan.write_order():
            cancel.check()
            ts = time.perf_counter()
            info = source.tensor(e.name)
            if not e.quantize or e.type == info.dtype:
                _copy(source, e.name, writer, tracker, cancel)
            else:
                _quantize(source, e, writer, threads, tracker, cancel,
                          None if importances is None else importances.get(e.name))
            source.release(e.name)
            r = TensorResult(e.name, e.type, e.n_elements, e.nbytes, time.perf_counter() - ts)
            results.append(r)
            if on_tensor:
                on_tensor(r)
        cancel.check()
    return JobResult(layout.paths, layout.total_size, plan.n_elements, plan.tensor_bytes,
                     time.perf_counter() - t0, results)


def _copy(source, name, writer, tracker, cancel) -> None:
    raw = source.raw(name)
    n = source.tensor(name).n_elements
    step = 64 << 20
    for a in range(0, len(raw), step):
        cancel.check()
        writer.write(name, raw[a:a + step])
    tracker.advance(n, name, n, n)


def _quantize(source, e, writer, threads, tracker, cancel, importance) -> None:
    info = source.tensor(e.name)
    kernel = get_kernel(e.qtype)
    row_len = info.row_len
    rows_per_expert = info.n_rows // info.shape[0] if info.n_dims == 3 else info.n_rows
    if importance is not None:
        importance = np.ascontiguousarray(importance, dtype=np.float32)

    def work(a: int, b: int) -> np.ndarray:
        x = source.read_rows(e.name, a, b)
        finite = np.isfinite(x)
        if not finite.all():
            bad = x.size - int(np.count_nonzero(finite))
            raise SourceError(f"tensor '{e.name}' has {bad} NaN/Inf values in rows {a}..{b - 1}; "
                              "a GGUF with them would be rejected by llama.cpp", source.path)
        out = np.empty((b - a, kernel.row_bytes(row_len)), dtype=np.uint8)
        qw = importance
        if qw is not None and qw.ndim == 2:       # per-expert importance weights: (n_expert, row_len)
            qw = qw[a // rows_per_expert]
        kernel.quantize_into(np.ascontiguousarray(x), out, qw)
        return out

    bounds = row_chunks(info.n_rows, row_len, CHUNK_WEIGHTS, max(1, rows_per_expert))

    def write(i: int, data: np.ndarray) -> None:
        a, b = bounds[i]
        writer.write(e.name, data)
        tracker.advance((b - a) * row_len, e.name, b * row_len, info.n_elements)   # chunks arrive in order

    run_chunks(work, bounds, threads=threads, cancel=cancel, done=write)


__all__ = ["run_plan", "JobResult", "TensorResult", "Cancelled"]
