"""The one chunk loop of core: a tensor's rows, in chunks of about ``chunk_weights`` weights, run
over threads (the Numba kernels release the GIL), results handed back in order on the calling
thread, the cancel token checked between chunks. Statistics, previews, kernels and the
quantization job all use it, so memory stays bounded by a few chunks and a cancel takes effect
within one chunk everywhere."""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional, Sequence

from .progress import CancelToken

CHUNK_WEIGHTS = 1 << 20          # weights per chunk (rounded to whole rows)


def row_chunks(n_rows: int, row_len: int, chunk_weights: int = CHUNK_WEIGHTS,
               rows_per_matrix: int = 0) -> list[tuple[int, int]]:
    """Row ranges ``(start, stop)`` of about ``chunk_weights`` weights (at least one row) that never
    cross a matrix boundary (``rows_per_matrix`` rows each: the experts of a 3-D tensor)."""
    per = max(1, int(chunk_weights) // max(1, int(row_len)))
    rpm = int(rows_per_matrix) or n_rows
    return [(a, min(a + per, m0 + rpm, n_rows))
            for m0 in range(0, n_rows, max(1, rpm)) for a in range(m0, min(m0 + rpm, n_rows), per)]


def run_chunks(fn: Callable[[int, int], Any], bounds: Sequence[tuple[int, int]], *, threads: int = 1,
               cancel: Optional[CancelToken] = None,
               done: Optional[Callable[[int, Any], None]] = None) -> None:
    """``fn(a, b)`` for every ``(a, b)`` in ``bounds`` on up to ``threads`` threads; ``done(i, result)``
    on the calling thread, in chunk order. At most ``2 * threads`` chunks are in flight (memory
    stays bounded for streamed sources); ``cancel`` is checked before the first chunk and after
    each one (raises Cancelled). On an error or a cancel, chunks not yet started are dropped and
    the running ones finish before the exception propagates."""
    if cancel is not None:
        cancel.check()
    threads = max(1, int(threads))
    if threads == 1 or len(bounds) <= 1:
        for i, (a, b) in enumerate(bounds):
            r = fn(a, b)
            if done is not None:
                done(i, r)
            if cancel is not None:
                cancel.check()
        return
    with ThreadPoolExecutor(min(threads, len(bounds))) as ex:
        pending: deque = deque()
        it = iter(enumerate(bounds))
        try:
            for i, (a, b) in it:
                pending.append((i, ex.submit(fn, a, b)))
                if len(pending) >= 2 * threads:
                    break
            while pending:
                i, fut = pending.popleft()
                r = fut.result()
                if done is not None:
                    done(i, r)
                if cancel is not None:
                    cancel.check()
                nxt = next(it, None)
                if nxt is not None:
                    j, (a, b) = nxt
                    pending.append((j, ex.submit(fn, a, b)))
        finally:
            for _, fut in pending:
                fut.cancel()
