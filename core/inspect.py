"""Statistics for every tensor of a model, streamed from the source in row chunks."""
from __future__ import annotations

from typing import Optional

from .progress import CancelToken, Progress, ProgressCallback, ProgressTracker, no_progress
from .sources.base import ModelSource


def tensor_stats(src: ModelSource, name: str, *, threads: int = 1, progress: ProgressCallback = no_progress,
                 cancel: Optional[CancelToken] = None):
    from .stats import compute_stats

    t = src.tensor(name)
    return compute_stats(name, tuple(t.shape), lambda a, b: src.read_rows(name, a, b), threads=threads,
                         progress=progress, cancel=cancel)


def model_stats(src: ModelSource, *, threads: Optional[int] = None, progress: ProgressCallback = no_progress,
                cancel: Optional[CancelToken] = None) -> dict:
    """Name -> TensorStats for every tensor that reads as float (integer tensors included)."""
    from .kernels import default_threads

    threads = threads or default_threads()
    readable = [t for t in src.tensors if t.ggml_type is not None]
    tracker = ProgressTracker(progress, 2 * sum(t.n_elements for t in readable), "statistics")
    out = {}
    for t in readable:
        base = tracker.done

        def fwd(ev: Progress, base=base, t=t) -> None:
            tracker.done = base + ev.done
            tracker.advance(0, t.name, ev.done, ev.total)

        out[t.name] = tensor_stats(src, t.name, threads=threads, progress=fwd, cancel=cancel)
        tracker.done = base + 2 * t.n_elements
    return out
