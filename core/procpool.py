"""Run core functions in child processes, with progress, posted results and cancellation.

An interactive program (the studio) keeps its own process for drawing: Python code running in
its threads would compete with the GUI thread for the GIL and stall the event loop, however
short each piece. The heavy work (statistics, previews, quantizing) therefore runs here, in a
few long-lived child processes started with ``spawn`` (safe next to any threads) that import
core on their own and keep their caches (open models, loaded kernels, preview results) between
calls.

A task is a module-level function ``fn(ctx, *args, **kwargs)`` named as ``"module:function"``;
``ctx`` has ``progress(ev)`` (throttled here, once), ``post(obj)``, ``cancel`` (a
:class:`~core.progress.CancelToken`) and ``check()``. Arguments, posts and results travel by pickle.

The parent never blocks and starts no thread: :meth:`ProcessPool.submit` queues a task (by
priority) and returns a :class:`Task`; :meth:`ProcessPool.poll` hands queued tasks to idle
children, reads whatever the children sent (``multiprocessing.connection.wait`` over their pipes
and process sentinels) and calls the tasks' callbacks on the polling thread. A GUI polls from a
timer; :meth:`ProcessPool.call` is submit + poll until done, for code that may block.
:meth:`ProcessPool.submit_each` runs a function over a list in slices of a time budget, so a
task someone waits for gets a child between two slices instead of after a whole pass.
"""
from __future__ import annotations

import atexit
import heapq
import importlib
import itertools
import multiprocessing as mp
import os
import threading
import time
import traceback
from multiprocessing.connection import wait as wait_any
from typing import Any, Callable, Optional, Sequence

from .errors import Cancelled, QuantStudioError
from .progress import CancelToken, Progress

PROGRESS_INTERVAL = 0.05         # seconds between progress messages of one task
POLL = 0.05                      # how long a blocking call waits between looks at its cancel token
SLICE_SECONDS = 0.3              # default length of one slice of submit_each
MAX_MESSAGES = 200               # messages read from one child per poll (the rest at the next one)
# Worker priorities (Unix nice values, added to the parent's): the window's responsiveness against
# the work's share of a busy machine. Measured on 2 cores (bench/bench_gui.py, bench/bench_load.py):
# at nice 10 a worker gets ~10 % of the CPU next to one busy program (a 0.19 s task took 2.1 s with
# two busy processes, 11x; a preview in the tests tens of seconds); at nice 0 the window stalls up to
# 110-170 ms while the demo is quantized (3 busy threads on 2 cores with it); at nice 5 the task
# takes 0.78 s under that load (4.3x) and the window's longest stall is 77-100 ms (goal < 100 ms).
JOBS_NICE = 5                    # what the user started (quantizing)
ANALYSIS_NICE = 5                # statistics and previews running behind it

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


def run_slice(ctx, target: str, items: Sequence, budget: float, *args: Any) -> int:
    """``target(ctx, item, *args)`` for items in order until ``budget`` seconds have passed (at
    least one); returns how many were done (the child's side of :meth:`ProcessPool.submit_each`)."""
    fn = resolve(target)
    t0, i = time.monotonic(), 0
    while i < len(items) and (i == 0 or time.monotonic() - t0 < budget):
        ctx.check()
        fn(ctx, items[i], *args)
        i += 1
    return i


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
class Task:
    """A submitted task as the parent sees it. Callbacks run on the thread that polls the pool:
    ``progress(Progress)``, ``post(obj)`` any number of times, then ``done(task)`` exactly once,
    when ``state`` has become ``"ok"`` (``result``), ``"error"`` (``error``) or ``"cancelled"``."""

    _ids = itertools.count(1)

    def __init__(self, target: str, args: tuple, kwargs: dict, priority: int,
                 progress: Optional[Callable] = None, post: Optional[Callable] = None,
                 done: Optional[Callable] = None):
        self.id = next(self._ids)
        self.target, self.args, self.kwargs, self.priority = target, args, kwargs, priority
        self.progress, self.post, self.done = progress, post, done
        self.state = "queued"
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.cancel_requested = False
        self._child: Optional[_Child] = None

    @property
    def finished(self) -> bool:
        return self.state in ("ok", "error", "cancelled")

    def cancel(self) -> None:
        """Ask the task to stop (any thread): a queued task never starts, a running one is told
        through its cancel token; ``done`` follows with state ``"cancelled"`` (or its result, when
        it ended first)."""
        self.cancel_requested = True
        child = self._child
        if child is not None and self.state == "running":
            child.slot.value = self.id

    def raise_or_result(self) -> Any:
        if self.state == "ok":
            return self.result
        if self.state == "cancelled":
            raise Cancelled()
        raise self.error

    def _finish(self, state: str, result: Any = None, error: Optional[BaseException] = None) -> None:
        self.state, self.result, self.error, self._child = state, result, error, None
        if self.done is not None:
            self.done(self)


class _SlicedTask(Task):
    """:meth:`ProcessPool.submit_each`: one task over many items, sent to a child slice by slice."""

    def __init__(self, fn_target: str, items: list, args: tuple, budget: float, priority: int,
                 pending: Optional[Callable], **callbacks):
        super().__init__("core.procpool:run_slice", (), {}, priority, **callbacks)
        self.fn_target, self.items, self.fn_args, self.budget, self.pending = fn_target, items, args, budget, pending

    def next_slice(self) -> bool:
        """Set up the arguments of the next slice; False when no item is left."""
        if self.pending is not None:
            self.items = [it for it in self.items if self.pending(it)]
        if not self.items:
            return False
        self.args = (self.fn_target, self.items, self.budget, *self.fn_args)
        return True


class _Child:
    def __init__(self, name: str, nice: int):
        self.name, self.nice = name, nice
        self.slot = _MP.Value("q", 0, lock=False)
        parent, child = _MP.Pipe()
        self.conn = parent
        self.proc = _MP.Process(target=_child_main, args=(child, self.slot, nice), name=name, daemon=True)
        self.proc.start()
        child.close()
        self.task: Optional[Task] = None

    def start(self, task: Task) -> None:
        self.task, task._child, task.state = task, self, "running"
        self.conn.send((task.id, task.target, task.args, task.kwargs))
        if task.cancel_requested:
            self.slot.value = task.id

    def exit_code(self) -> Optional[int]:
        """The exit code of a child whose pipe closed (reaped first, so it is not None)."""
        self.proc.join(2.0)
        return self.proc.exitcode

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
    """``size`` child processes running submitted tasks, highest priority first (then in order of
    submission). Children start on first use (or :meth:`start`) and are replaced when one dies."""

    def __init__(self, size: int = 1, name: str = "quant-studio-worker", nice: int = ANALYSIS_NICE):
        self.size, self.name, self.nice = max(1, size), name, nice
        self._children: list[_Child] = []
        self._queue: list[tuple[int, int, Task]] = []        # heap of (-priority, seq, task)
        self._seq = itertools.count()
        self._spawned = 0
        self._lock = threading.RLock()                       # poll may be called from several threads
        self._closed = False

    # -- submitting --------------------------------------------------------------------------
    def submit(self, target: str, *args: Any, priority: int = 0, progress: Optional[Callable] = None,
               post: Optional[Callable] = None, done: Optional[Callable] = None, **kwargs: Any) -> Task:
        """Queue ``target(ctx, *args, **kwargs)``; it starts at a later :meth:`poll`."""
        return self._enqueue(Task(target, args, kwargs, priority, progress, post, done))

    def submit_each(self, target: str, items: Sequence, *args: Any, priority: int = 0,
                    budget: float = SLICE_SECONDS, pending: Optional[Callable[[Any], bool]] = None,
                    progress: Optional[Callable] = None, post: Optional[Callable] = None,
                    done: Optional[Callable] = None) -> Task:
        """``target(ctx, item, *args)`` for every item, in slices of about ``budget`` seconds, each
        slice queued anew at ``priority`` (so higher-priority tasks run in between). ``pending(item)``,
        asked before each slice, drops items done meanwhile. The task's result is the item count."""
        return self._enqueue(_SlicedTask(target, list(items), args, budget, priority, pending,
                                         progress=progress, post=post, done=done))

    def _enqueue(self, task: Task) -> Task:
        with self._lock:
            if self._closed:
                task._finish("cancelled")
                return task
            if isinstance(task, _SlicedTask):
                task.result = 0
                if not task.next_slice():
                    task._finish("ok", 0)
                    return task
            heapq.heappush(self._queue, (-task.priority, next(self._seq), task))
        return task

    # -- running ------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """Any task queued or running."""
        return bool(self._queue) or any(c.task is not None for c in self._children)

    def start(self) -> None:
        """Start every child now (they import core while the caller does other things)."""
        with self._lock:
            while len(self._children) < self.size and not self._closed:
                self._spawn()

    def _spawn(self) -> _Child:
        self._spawned += 1
        c = _Child(f"{self.name}-{self._spawned}", self.nice)
        self._children.append(c)
        return c

    def _dispatch(self) -> None:
        while self._queue:
            idle = next((c for c in self._children if c.task is None), None)
            if idle is None:
                if len(self._children) >= self.size:
                    return
                try:
                    idle = self._spawn()
                except Exception as e:  # noqa: BLE001 - no process: the task fails, with the reason
                    _, _, task = heapq.heappop(self._queue)
                    task._finish("error", error=WorkerDied(f"cannot start a background process: "
                                                           f"{type(e).__name__}: {e}"))
                    continue
            _, _, task = heapq.heappop(self._queue)
            if task.cancel_requested:
                task._finish("cancelled", task.result if isinstance(task, _SlicedTask) else None)
                continue
            try:
                idle.start(task)
            except (OSError, BrokenPipeError):
                self._died(idle)

    def poll(self, timeout: float = 0.0) -> bool:
        """Start queued tasks, wait up to ``timeout`` seconds for messages, handle all that arrived
        (callbacks run here). True while any task is queued or running."""
        with self._lock:
            self._dispatch()
            busy = [c for c in self._children if c.task is not None]
            if busy:
                waitables = [c.conn for c in busy] + [c.proc.sentinel for c in busy]
                ready = set(wait_any(waitables, timeout))
                for c in busy:
                    if c.conn in ready:
                        self._read(c)
                    elif c.proc.sentinel in ready and c.task is not None:
                        self._died(c)
                self._dispatch()
            return self.busy

    def _read(self, c: _Child) -> None:
        """Handle every message ``c`` has sent so far."""
        try:
            for _ in range(MAX_MESSAGES):
                if c.task is None or not c.conn.poll():
                    return
                kind, j, payload = c.conn.recv()
                task = c.task
                if j != task.id:
                    continue
                if kind == "progress":
                    if task.progress is not None:
                        task.progress(payload)
                elif kind == "post":
                    if task.post is not None:
                        task.post(payload)
                else:
                    c.task = None
                    self._ended(task, kind, payload)
        except (EOFError, OSError):
            self._died(c)

    def _ended(self, task: Task, kind: str, payload: Any) -> None:
        if isinstance(task, _SlicedTask) and kind == "ok":
            task.result += payload
            task.items = task.items[payload:]
            if not task.cancel_requested and not self._closed and task.next_slice():
                task.state, task._child = "queued", None
                heapq.heappush(self._queue, (-task.priority, next(self._seq), task))
                return
            kind = "cancelled" if task.cancel_requested and task.items else "ok"
            payload = task.result
        if kind in ("ok", "cancelled"):         # a cancelled sliced task keeps the count it reached
            task._finish(kind, task.result if isinstance(task, _SlicedTask) else payload)
        else:
            task._finish("error", error=payload)

    def _died(self, c: _Child) -> None:
        """``c`` ended while running a task: replace it, fail the task with its exit code."""
        task, c.task = c.task, None
        code = c.exit_code()
        self._children.remove(c)
        c.close(0.1)
        if task is not None:
            task._finish("error", error=WorkerDied(
                f"the background process stopped unexpectedly during {task.target.split(':')[-1]} "
                f"(exit code {code})"))

    def call(self, target: str, *args: Any, progress: Optional[Callable[[Progress], None]] = None,
             post: Optional[Callable[[Any], None]] = None, cancel: Optional[CancelToken] = None,
             priority: int = 0, **kwargs: Any) -> Any:
        """Run ``target`` and wait for it: its result, or its exception re-raised (blocking; the
        callbacks run on this thread). A ``cancel`` token is forwarded to the task."""
        task = self.submit(target, *args, priority=priority, progress=progress, post=post, **kwargs)
        while not task.finished:
            if cancel is not None and cancel.cancelled and not task.cancel_requested:
                task.cancel()
            self.poll(POLL)
        return task.raise_or_result()

    def broadcast(self, target: str, *args: Any, **kwargs: Any) -> list:
        """``target`` once in every child (e.g. to load kernels everywhere), blocking; their results."""
        self.start()
        while True:
            with self._lock:
                if self._closed:
                    raise Cancelled()
                if not self._queue and all(c.task is None for c in self._children):
                    tasks = [Task(target, args, kwargs, 0) for _ in self._children]
                    for c, t in zip(self._children, tasks):
                        c.start(t)
                    break
            self.poll(POLL)
        while not all(t.finished for t in tasks):
            self.poll(POLL)
        return [t.raise_or_result() for t in tasks]

    def close(self) -> None:
        """Cancel every task (their ``done`` callbacks run) and stop the children."""
        with self._lock:
            self._closed = True
            queued, self._queue = [t for _, _, t in self._queue], []
            children, self._children = self._children, []
        for t in queued:
            t._finish("cancelled")
        for c in children:
            task, c.task = c.task, None
            c.close()
            if task is not None:
                task._finish("cancelled")

    @property
    def pids(self) -> list[int]:
        return [c.proc.pid for c in self._children]


_POOLS: dict[str, ProcessPool] = {}
_POOLS_LOCK = threading.Lock()


def shared_pool(name: str, size: int = 1, nice: int = ANALYSIS_NICE) -> ProcessPool:
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
