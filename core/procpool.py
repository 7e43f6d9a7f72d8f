"""Run core functions in child processes, with progress, posted results and cancellation.

An interactive program (the studio) keeps its own process for drawing: Python code running in
its threads would compete with the GUI thread for the GIL and stall the event loop, however
short each piece. The heavy work (statistics, previews, quantizing) therefore runs here, in a
few long-lived child processes started with ``spawn`` (safe next to any threads) that import
core on their own and keep their caches (open models, loaded kernels, preview results) between
calls.

A task is a module-level function ``fn(ctx, *args, **kwargs)`` named as ``"module:function"``;
``ctx`` has the same surface as a local task context: ``progress(ev)`` (throttled),
``post(obj)``, ``cancel`` (a :class:`~core.progress.CancelToken`) and ``check()``. Arguments,
posts and results travel by pickle. :meth:`ProcessPool.call` blocks the calling thread (not the
GIL) until the task ends and re-raises its exception; a caller's cancel token is forwarded.
"""
from __future__ import annotations

import atexit
import importlib
import itertools
import multiprocessing as mp
import os
import queue
import threading
import time
import traceback
from typing import Any, Callable, Optional

from .errors import Cancelled, QuantStudioError
from .progress import CancelToken, Progress

PROGRESS_INTERVAL = 0.05         # seconds between progress messages of one task
POLL = 0.05                      # how often a waiting caller looks at its cancel token

_MP = mp.get_context("spawn")


class WorkerDied(QuantStudioError):
    """A child process ended in the middle of a task (killed, or crashed in native code)."""


def resolve(target: str) -> Callable:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


# -- the child's side ----------------------------------------------------------------------
class _SharedCancel(CancelToken):
    """Cancelled when the parent wrote this task's number into the shared slot."""

    def __init__(self, slot, job: int):
        super().__init__()
        self._slot, self._job = slot, job

    @property
    def cancelled(self) -> bool:
        return self._slot.value == self._job or self._event.is_set()

    def check(self) -> None:
        if self.cancelled:
            raise Cancelled()


class ChildContext:
    """What a task function gets in the child process."""

    def __init__(self, conn, job: int, slot):
        self._conn, self._job = conn, job
        self.cancel = _SharedCancel(slot, job)
        self._last = 0.0
        self._lock = threading.Lock()

    def _send(self, kind: str, payload: Any) -> None:
        with self._lock:
            self._conn.send((kind, self._job, payload))

    def progress(self, ev: Progress) -> None:
        now = time.monotonic()
        if now - self._last < PROGRESS_INTERVAL and ev.done < ev.total and not ev.message:
            return
        self._last = now
        self._send("progress", ev)

    def post(self, obj: Any) -> None:
        self._send("post", obj)

    def check(self) -> None:
        self.cancel.check()


def _portable(e: BaseException) -> BaseException:
    """``e`` if it survives pickling, else a QuantStudioError with its text (and traceback)."""
    import pickle
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    try:
        pickle.loads(pickle.dumps(e))
        out = e
    except Exception:  # noqa: BLE001 - anything unpicklable travels as text
        out = QuantStudioError(f"{type(e).__name__}: {e}")
    out.traceback_text = tb  # type: ignore[attr-defined]
    return out


def _child_main(conn, slot, nice: int) -> None:
    if nice and hasattr(os, "nice"):
        try:
            os.nice(nice)
        except OSError:
            pass
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if msg is None:
            return
        job, target, args, kwargs = msg
        ctx = ChildContext(conn, job, slot)
        try:
            result = resolve(target)(ctx, *args, **kwargs)
            reply = ("ok", job, result)
        except Cancelled:
            reply = ("cancelled", job, None)
        except BaseException as e:  # noqa: BLE001 - every failure goes back to the caller
            reply = ("error", job, _portable(e))
        try:
            with ctx._lock:
                conn.send(reply)
        except (EOFError, OSError, BrokenPipeError):
            return
        except Exception as e:  # noqa: BLE001 - a result (or error) that cannot be pickled
            err = QuantStudioError(f"{target.split(':')[-1]}: its result cannot be sent back from the "
                                   f"worker process ({type(e).__name__}: {e})")
            with ctx._lock:
                conn.send(("error", job, _portable(err)))


# -- the parent's side ---------------------------------------------------------------------
class _Child:
    _jobs = itertools.count(1)

    def __init__(self, name: str, nice: int):
        self.name, self.nice = name, nice
        self.slot = _MP.Value("q", 0, lock=False)
        parent, child = _MP.Pipe()
        self.conn = parent
        self.proc = _MP.Process(target=_child_main, args=(child, self.slot, nice), name=name, daemon=True)
        self.proc.start()
        child.close()

    def call(self, target: str, args: tuple, kwargs: dict, progress, post, cancel) -> Any:
        job = next(self._jobs)
        self.conn.send((job, target, args, kwargs))
        asked = False
        while True:
            if not asked and cancel is not None and cancel.cancelled:
                self.slot.value = job
                asked = True
            try:
                if not self.conn.poll(POLL):
                    if not self.proc.is_alive():
                        raise EOFError
                    continue
                kind, j, payload = self.conn.recv()
            except (EOFError, OSError):
                raise WorkerDied(f"the background process stopped unexpectedly during {target.split(':')[-1]} "
                                 f"(exit code {self.proc.exitcode})") from None
            if j != job:
                continue
            if kind == "progress":
                if progress is not None:
                    progress(payload)
            elif kind == "post":
                if post is not None:
                    post(payload)
            elif kind == "ok":
                return payload
            elif kind == "cancelled":
                raise Cancelled()
            else:
                raise payload

    def close(self, timeout: float = 2.0) -> None:
        try:
            self.conn.send(None)
        except (OSError, BrokenPipeError):
            pass
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(timeout)
        self.conn.close()


class ProcessPool:
    """``size`` child processes; :meth:`call` runs a task on a free one (waiting for one if all are
    busy). Children start on first use (or :meth:`start`) and are replaced when one dies."""

    def __init__(self, size: int = 1, name: str = "quant-studio-worker", nice: int = 10):
        self.size, self.name, self.nice = max(1, size), name, nice
        self._idle: "queue.Queue[_Child]" = queue.Queue()
        self._started = 0
        self._children: list[_Child] = []
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> None:
        with self._lock:
            while self._started < self.size and not self._closed:
                self._spawn()

    def _spawn(self) -> None:
        c = _Child(f"{self.name}-{self._started + 1}", self.nice)
        self._started += 1
        self._children.append(c)
        self._idle.put(c)

    def _acquire(self, cancel: Optional[CancelToken]) -> _Child:
        with self._lock:
            if self._closed:
                raise Cancelled()
            if self._idle.empty() and self._started < self.size:
                self._spawn()
        while True:
            try:
                return self._idle.get(timeout=POLL)
            except queue.Empty:
                if (cancel is not None and cancel.cancelled) or self._closed:
                    raise Cancelled() from None

    def call(self, target: str, *args: Any, progress: Optional[Callable[[Progress], None]] = None,
             post: Optional[Callable[[Any], None]] = None, cancel: Optional[CancelToken] = None,
             **kwargs: Any) -> Any:
        child = self._acquire(cancel)
        try:
            return child.call(target, args, kwargs, progress, post, cancel)
        except WorkerDied:
            with self._lock:                  # replace the dead child, then report the failure
                self._children.remove(child)
                self._started -= 1
                child.close(0.1)
                child = None
                if not self._closed:
                    self._spawn()
            raise
        finally:
            if child is not None:
                self._idle.put(child)

    def broadcast(self, target: str, *args: Any, **kwargs: Any) -> list:
        """``target`` once in every child (e.g. to load kernels everywhere); their results."""
        self.start()
        children = [self._acquire(None) for _ in range(self._started)]
        try:
            return [c.call(target, args, kwargs, None, None, None) for c in children]
        finally:
            for c in children:
                self._idle.put(c)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            children, self._children = self._children, []
        for c in children:
            c.close()

    @property
    def pids(self) -> list[int]:
        return [c.proc.pid for c in self._children]


_POOLS: dict[str, ProcessPool] = {}
_POOLS_LOCK = threading.Lock()


def shared_pool(name: str, size: int = 1, nice: int = 10) -> ProcessPool:
    """One pool per name for the whole process (children are kept warm between users)."""
    with _POOLS_LOCK:
        p = _POOLS.get(name)
        if p is None or p._closed:
            p = _POOLS[name] = ProcessPool(size, f"quant-studio-{name}", nice)
        return p


@atexit.register
def close_shared_pools() -> None:
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for p in pools:
        p.close()
