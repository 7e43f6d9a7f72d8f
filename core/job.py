"""Run a plan: read tensors in order, quantize row chunks on a thread pool, stream to the writer.

Progress (weights done / total) goes to a callback after every chunk; the cancel token is checked
between chunks. At most ``2 * threads`` chunks are in flight, so peak memory is a few chunks plus
the writer's buffers, not the model.
"""
from __future__ import annotations

import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGUFValueType

from .errors import Cancelled, PlanError, SourceError, UnsupportedError
from .gguf_meta import KV
from .gguf_out import GGUFLayout, GGUFStreamWriter, OutTensor
from .kernels import default_threads, get_kernel
from .plan import Plan
from .progress import CancelToken, ProgressCallback, ProgressTracker, no_progress
from .sources.base import ModelSource

QUANTIZATION_VERSION = 2          # GGML_QNT_VERSION
CHUNK_ELEMENTS = 1 << 20          # weights per work item


def output_kv(source: ModelSource, plan: Plan, extra: Optional[list[KV]] = None) -> list[KV]:
    """The source's metadata with general.file_type and general.quantization_version set (in place
    when present, appended otherwise, as llama-quantize does) and split keys dropped."""
    kv = getattr(source, "kv", None)
    if kv is None:
        raise UnsupportedError("writing a GGUF needs GGUF metadata; this source has none "
                               "(a Hugging Face checkpoint must be converted)", source.path)
    out = [k for k in kv if not k.key.startswith("split.")]
    sets = [KV("general.quantization_version", QUANTIZATION_VERSION, GGUFValueType.UINT32),
            KV("general.file_type", plan.file_type, GGUFValueType.UINT32)] + list(extra or [])
    for new in sets:
        for i, k in enumerate(out):
            if k.key == new.key:
                out[i] = new
                break
        else:
            out.append(new)
    return out


def layout_for(source: ModelSource, plan: Plan, output: str, split_max_size: Optional[int] = None,
               extra_kv: Optional[list[KV]] = None) -> GGUFLayout:
    tensors = [OutTensor(e.name, tuple(e.shape), e.qtype) for e in plan.entries]
    return GGUFLayout(output, output_kv(source, plan, extra_kv), tensors, split_max_size)


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


def _chunks(n_rows: int, row_len: int, rows_per_expert: int) -> list[tuple[int, int]]:
    """Row ranges of about CHUNK_ELEMENTS weights that never cross an expert boundary."""
    step = max(1, CHUNK_ELEMENTS // max(1, row_len))
    return [(a, min(a + step, e0 + rows_per_expert, n_rows))
            for e0 in range(0, n_rows, rows_per_expert) for a in range(e0, min(e0 + rows_per_expert, n_rows), step)]


def run_plan(source: ModelSource, plan: Plan, output: str, *, threads: Optional[int] = None,
             split_max_size: Optional[int] = None, imatrix: Optional[dict[str, np.ndarray]] = None,
             extra_kv: Optional[list[KV]] = None, progress: ProgressCallback = no_progress,
             cancel: Optional[CancelToken] = None,
             on_tensor: Optional[Callable[[TensorResult], None]] = None) -> JobResult:
    """Write ``plan`` applied to ``source`` as GGUF at ``output`` (several shards with ``split_max_size``)."""
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
    with ThreadPoolExecutor(threads) as pool, GGUFStreamWriter(layout) as writer:
        for e in plan.entries:
            cancel.check()
            ts = time.perf_counter()
            info = source.tensor(e.name)
            if not e.quantize or e.type == info.dtype:
                _copy(source, e.name, writer, tracker, cancel)
            else:
                _quantize(source, e, writer, pool, threads, tracker, cancel,
                          None if imatrix is None else imatrix.get(e.name))
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


def _quantize(source, e, writer, pool, threads, tracker, cancel, imatrix) -> None:
    info = source.tensor(e.name)
    kernel = get_kernel(e.qtype)
    row_len = info.row_len
    if imatrix is not None:
        imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)

    def work(a: int, b: int) -> np.ndarray:
        if cancel.cancelled:
            return np.empty(0, np.uint8)
        x = source.read_rows(e.name, a, b)
        finite = np.isfinite(x)
        if not finite.all():
            bad = x.size - int(np.count_nonzero(finite))
            raise SourceError(f"tensor '{e.name}' has {bad} NaN/Inf values in rows {a}..{b - 1}; "
                              "a GGUF with them would be rejected by llama.cpp", source.path)
        out = np.empty((b - a, kernel.row_bytes(row_len)), dtype=np.uint8)
        qw = imatrix
        if qw is not None and qw.ndim == 2:       # per-expert importance weights: (n_expert, row_len)
            qw = qw[a // rows_per_expert]
        kernel.quantize_into(np.ascontiguousarray(x), out, qw)
        return out

    rows_per_expert = info.n_rows // info.shape[0] if info.n_dims == 3 else info.n_rows
    chunks = _chunks(info.n_rows, row_len, max(1, rows_per_expert))
    pending: deque = deque()
    done_rows = 0
    it = iter(chunks)
    try:
        for a, b in it:
            pending.append((a, b, pool.submit(work, a, b)))
            if len(pending) >= 2 * threads:
                done_rows = _drain_one(pending, e, writer, tracker, cancel, done_rows, info)
        while pending:
            done_rows = _drain_one(pending, e, writer, tracker, cancel, done_rows, info)
    except BaseException:
        for _, _, f in pending:
            f.cancel()
        raise


def _drain_one(pending, e, writer, tracker, cancel, done_rows, info) -> int:
    a, b, fut = pending.popleft()
    data = fut.result()
    cancel.check()
    writer.write(e.name, data)
    done_rows += b - a
    tracker.advance((b - a) * info.row_len, e.name, done_rows * info.row_len, info.n_elements)
    return done_rows


__all__ = ["run_plan", "layout_for", "output_kv", "JobResult", "TensorResult", "Cancelled"]
