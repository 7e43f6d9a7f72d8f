"""The one bridge between core's long calls and Qt: run a function on a thread pool, turn its
progress callback and cancel token into signals.

A task is a plain function ``fn(ctx) -> result`` given a :class:`TaskContext`: ``ctx.progress``
is a core progress callback (throttled before it reaches the GUI), ``ctx.cancel`` a core
:class:`~core.progress.CancelToken`, ``ctx.post(obj)`` sends an intermediate result (a stats
record, a log line) to the GUI. The GUI holds a :class:`TaskHandle` and watches its signals;
they are delivered on the GUI thread, in order, after the function's own posts.
"""
from __future__ import annotations

import itertools
import os
import queue
import sys
import threading
import time
import traceback
from collections import deque
from typing import Any, Callable, Optional

from PySide6.QtCore import QObject, QTimer, Signal

from core.errors import Cancelled
from core.progress import CancelToken, Progress

PROGRESS_INTERVAL = 0.05          # seconds between progress signals of one task
POLL_MS = 15                      # how often the GUI thread collects what worker threads sent


def void(fn: Callable, *args: Any) -> None:
    """Call ``fn`` and drop its result. Slots must return None: PySide6 6.12 releases a reference
    to a bool a Python slot returns (``emit()`` returns True), and Py_True/Py_False then reach a
    zero count -- a fatal error at exit. Signals carrying Python bools are avoided for the same reason."""
    fn(*args)


def soon(timer: QTimer) -> None:
    """Start a single-shot ``timer`` unless it already runs: a stream of results then updates a
    view every interval (restarting it instead would postpone the update until the stream ends)."""
    if not timer.isActive():
        timer.start()


class TaskHandle(QObject):
    """GUI-side view of a running task. Exactly one of ``succeeded``/``failed``/``cancelled``
    fires, then ``finished``. Only the GUI thread ever holds a handle (see :class:`_Mailbox`)."""

    progress = Signal(object)      # core.progress.Progress
    posted = Signal(object)        # whatever the task passed to ctx.post
    succeeded = Signal(object)     # the function's return value
    failed = Signal(object)        # the exception (with .traceback_text)
    cancelled = Signal()
    finished = Signal()

    def __init__(self, name: str, parent: Optional[QObject] = None):
        super().__init__(parent)
        self.name = name
        self.token = CancelToken()
        self.running = True
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.was_cancelled = False

    def cancel(self) -> None:
        self.token.cancel()

    def _deliver(self, signal: str, value: tuple) -> None:
        if signal == "succeeded":
            self.result = value[0]
        elif signal == "failed":
            self.error = value[0]
        elif signal == "cancelled":
            self.was_cancelled = True
        elif signal == "finished":
            self.running = False
        getattr(self, signal).emit(*value)


class _Mailbox(QObject):
    """The one way from worker threads to the GUI thread: a worker appends ``(task, signal, value)``
    to a queue (plain Python, nothing else); a timer on the GUI thread drains it every
    ``POLL_MS`` while tasks run and emits the task handles' signals there, in order.

    No Qt call is made from a worker thread. Emitting a PySide signal from a Python thread while
    the GUI thread deletes wrapped items (a table refilled) crashes PySide 6.11 (reproduced: a
    thread emitting in a loop + QTableWidget.setItem in a loop segfaults within seconds), and
    Python wrappers of Qt objects released on worker threads crashed in Shiboken too."""

    def __init__(self):
        super().__init__()
        self.items: deque = deque()
        self.handles: dict[int, TaskHandle] = {}        # GUI thread only
        self.timer = QTimer(self, interval=POLL_MS)
        self.timer.timeout.connect(self.drain)

    def put(self, key: int, signal: str, *value: Any) -> None:      # any thread
        self.items.append((key, signal, value))

    def register(self, key: int, handle: TaskHandle) -> None:       # GUI thread
        self.handles[key] = handle
        if not self.timer.isActive():
            self.timer.start()

    def drain(self) -> None:
        while self.items:
            key, signal, value = self.items.popleft()
            h = self.handles.get(key)
            if signal == "finished":
                self.handles.pop(key, None)
            if h is not None:
                h._deliver(signal, value)
        if not self.handles:
            self.timer.stop()


_MAILBOX: Optional[_Mailbox] = None
_KEYS = itertools.count(1)


def _mailbox() -> _Mailbox:
    global _MAILBOX
    if _MAILBOX is None:
        _MAILBOX = _Mailbox()
    return _MAILBOX


class TaskContext:
    """What a task function gets: progress callback, cancel token, a way to post results."""

    def __init__(self, key: int, token: CancelToken, interval: float):
        self._key = key
        self.cancel: CancelToken = token
        self._interval = interval
        self._last = 0.0
        self._lock = threading.Lock()

    def progress(self, ev: Progress) -> None:
        """A core progress callback: forwards at most one event per interval (and the last one)."""
        now = time.monotonic()
        with self._lock:
            if now - self._last < self._interval and ev.done < ev.total and not ev.message:
                return
            self._last = now
        _MAILBOX.put(self._key, "progress", ev)

    def post(self, obj: Any) -> None:
        _MAILBOX.put(self._key, "posted", obj)

    def check(self) -> None:
        self.cancel.check()


BACKGROUND_NICE = 10
_niced: set[int] = set()


def _lower_priority() -> None:
    """Run this worker thread (and the threads core starts from it, which inherit it) at a lower
    OS priority than the GUI thread, so the GUI thread wins CPU time and, with it, the GIL more
    often (Linux: per-thread nice value; elsewhere nothing)."""
    tid = threading.get_native_id()
    if tid in _niced or not hasattr(os, "setpriority") or not sys.platform.startswith("linux"):
        return
    _niced.add(tid)
    try:
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), BACKGROUND_NICE))
    except OSError:
        pass


class _Job:
    """A task as worker threads see it: the function, a key into the mailbox, the cancel token."""

    def __init__(self, fn: Callable[[TaskContext], Any], key: int, token: CancelToken, interval: float):
        self._fn, self._key, self._token, self._interval = fn, key, token, interval

    def run_cancelled(self) -> None:
        """Finish without running (the pool was shut down first)."""
        _MAILBOX.put(self._key, "cancelled")
        _MAILBOX.put(self._key, "finished")

    def run(self) -> None:  # worker thread
        _lower_priority()
        key = self._key
        ctx = TaskContext(key, self._token, self._interval)
        try:
            if self._token.cancelled:
                raise Cancelled()
            out = ("succeeded", self._fn(ctx))
        except Cancelled:
            out = ("cancelled",)
        except BaseException as e:  # noqa: BLE001 - every failure reaches the GUI as a signal
            if not hasattr(e, "traceback_text"):        # a worker process's error keeps its own
                e.traceback_text = traceback.format_exc()  # type: ignore[attr-defined]
            out = ("failed", e)
        _MAILBOX.put(key, *out)
        _MAILBOX.put(key, "finished")


class ThreadPool:
    """Plain Python threads taking jobs by priority (higher first, then in order of submission).
    No Qt object lives on these threads (a Python-subclassed QRunnable is deleted by Qt on the pool
    thread, which was seen to crash in Shiboken under load); results reach the GUI through
    :class:`_Mailbox`."""

    def __init__(self, size: int, name: str):
        self.size, self.name = max(1, size), name
        self._q: queue.PriorityQueue = queue.PriorityQueue()
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []
        self._busy = 0
        self._cv = threading.Condition()

    def start(self, job: _Job, priority: int = 0) -> None:
        with self._cv:
            self._q.put((-priority, next(self._seq), job))
            self._threads = [t for t in self._threads if t.is_alive()]
            if len(self._threads) < self.size and self._q.qsize() > len(self._threads) - self._busy:
                t = threading.Thread(target=self._work, name=f"{self.name}-{len(self._threads) + 1}", daemon=True)
                self._threads.append(t)
                t.start()

    def _work(self) -> None:
        while True:
            _, _, job = self._q.get()
            if job is None:
                return
            with self._cv:
                self._busy += 1
            try:
                job.run()
            finally:
                with self._cv:
                    self._busy -= 1
                    self._cv.notify_all()

    def clear(self) -> list[_Job]:
        """Take the jobs that have not started off the queue (returned)."""
        out = []
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return out
            if item[2] is not None:
                out.append(item[2])

    def wait(self, timeout: float) -> bool:
        """Wait until no job runs or waits (True), at most ``timeout`` seconds."""
        end = time.monotonic() + timeout
        with self._cv:
            while self._busy or not self._q.empty():
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.05))
        return True

    def stop(self) -> None:
        """End the threads once they are idle."""
        for _ in self._threads:
            self._q.put((float("inf"), next(self._seq), None))


def analysis_processes() -> int:
    """Worker processes for analysis: one on a small machine (the quantizer needs the cores too)."""
    return 1 if (os.cpu_count() or 1) <= 4 else 2


class Workers(QObject):
    """Two thread pools: one for what the user asked for (open a file, quantize), one for analysis
    running behind it (statistics, previews), so the first never queues behind the second. The
    heavy work runs in worker processes (core.procpool, shared by every window of the program):
    ``analysis`` for statistics and previews, ``jobs`` for quantizing. A thread of the matching
    pool waits for each call, so ordering, priorities, progress and cancel work as for threads,
    while the GUI process keeps its GIL and its CPU time for drawing."""

    def __init__(self, max_threads: Optional[int] = None, parent: Optional[QObject] = None):
        super().__init__(parent)
        from core.procpool import shared_pool
        self.analysis = shared_pool("analysis", analysis_processes())
        self.jobs = shared_pool("jobs", 1, nice=5)
        self.pool = ThreadPool(max_threads or self.analysis.size, "analysis")     # background analysis
        self.user_pool = ThreadPool(2, "user")                                    # user actions
        self._active: set[TaskHandle] = set()
        self._closed = False

    def start_processes(self) -> None:
        """Start the worker processes now (they import core while the window comes up)."""
        self.analysis.start()
        self.jobs.start()

    def submit(self, fn: Callable[[TaskContext], Any], name: str = "task",
               interval: float = PROGRESS_INTERVAL, priority: int = 0, user: bool = False) -> TaskHandle:
        handle = TaskHandle(name, self)
        self._active.add(handle)
        handle.finished.connect(lambda h=handle: self._active.discard(h))
        key = next(_KEYS)
        _mailbox().register(key, handle)
        pool, job = (self.user_pool if user else self.pool), _Job(fn, key, handle.token, interval)
        # started from the event loop, so the caller connects its slots before anything can be emitted
        QTimer.singleShot(0, self, lambda: self._start(pool, job, priority))
        return handle

    def _start(self, pool: ThreadPool, job: _Job, priority: int) -> None:
        if self._closed:
            job.run_cancelled()
        else:
            pool.start(job, priority)

    @property
    def active(self) -> list[TaskHandle]:
        return [h for h in self._active if h.running]

    def cancel_all(self) -> None:
        for h in list(self._active):
            h.cancel()

    def shutdown(self, timeout_ms: int = 30000) -> bool:
        """Cancel every task and wait for the threads (True when all stopped in time)."""
        self._closed = True
        self.cancel_all()
        for pool in (self.pool, self.user_pool):
            for job in pool.clear():
                job.run_cancelled()
        ok = self.user_pool.wait(timeout_ms / 1000) and self.pool.wait(timeout_ms / 1000)
        self.pool.stop()
        self.user_pool.stop()
        return ok
