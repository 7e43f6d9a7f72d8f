"""The one bridge between core's long calls and Qt: tasks run in worker processes
(:mod:`core.procpool`); a timer on the GUI thread polls the pools and turns each task's progress,
posts and end into a :class:`TaskHandle`'s signals.

No thread is started in the GUI process and no Python code runs in the background here: the
GUI thread keeps the GIL to itself, and every Qt call happens on it. A task is a core function
named ``"module:function"`` taking a context first (see core.procpool and core.tasks).
"""
from __future__ import annotations

import os
import traceback
from typing import Any, Callable, Optional, Sequence

from PySide6.QtCore import QObject, QTimer, Signal

from core.procpool import ANALYSIS_NICE, JOBS_NICE, SLICE_SECONDS, Task, shared_pool

POLL_MS = 15                      # how often the GUI thread collects what the workers sent


def soon(timer: QTimer) -> None:
    """Start a single-shot ``timer`` unless it already runs: a stream of results then updates a
    view every interval (restarting it instead would postpone the update until the stream ends)."""
    if not timer.isActive():
        timer.start()


class TaskHandle(QObject):
    """GUI-side view of a task. Exactly one of ``succeeded``/``failed``/``cancelled`` fires, then
    ``finished``; every signal is emitted on the GUI thread, never before the caller regains control."""

    progress = Signal(object)      # core.progress.Progress
    posted = Signal(object)        # whatever the task passed to ctx.post
    succeeded = Signal(object)     # the function's return value
    failed = Signal(object)        # the exception (with .traceback_text)
    cancelled = Signal()
    finished = Signal()

    def __init__(self, name: str, parent: Optional[QObject] = None):
        super().__init__(parent)
        self.name = name
        self.running = True
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.was_cancelled = False
        self._task: Optional[Task] = None
        self._cancel_asked = False

    def cancel(self) -> None:
        self._cancel_asked = True
        if self._task is not None:
            self._task.cancel()

    def _end(self, state: str, result: Any = None, error: Optional[BaseException] = None) -> None:
        self.running = False
        if state == "ok":
            self.result = result
            self.succeeded.emit(result)
        elif state == "cancelled":
            self.was_cancelled = True
            self.cancelled.emit()
        else:
            self.error = error
            self.failed.emit(error)
        self.finished.emit()

    def _done(self, task: Task) -> None:
        from shiboken6 import isValid
        if not isValid(self):
            # the handle went with its window (a task of a closed window's session, ended later by the
            # shared pool while another window shuts down): nobody listens, and emitting would raise
            return
        self._end(task.state, task.result, task.error)


def analysis_processes() -> int:
    """Worker processes for analysis: one on a small machine (the quantizer needs the cores too)."""
    return 1 if (os.cpu_count() or 1) <= 4 else 2


class Workers(QObject):
    """Two process pools: ``jobs`` for what the user started (quantizing), ``analysis`` for the
    statistics and previews running behind it, so the first never queues behind the second. The
    pools are shared by every window of the program; a timer polls them while tasks run."""

    def __init__(self, parent: Optional[QObject] = None):
        super().__init__(parent)
        self.analysis = shared_pool("analysis", analysis_processes(), nice=ANALYSIS_NICE)
        self.jobs = shared_pool("jobs", 1, nice=JOBS_NICE)
        self._handles: set[TaskHandle] = set()
        self._closed = False
        self.timer = QTimer(self, interval=POLL_MS)
        self.timer.timeout.connect(self.poll)

    def start_processes(self) -> None:
        """Start the worker processes now (they import core while the window comes up)."""
        self.analysis.start()
        self.jobs.start()

    def poll(self) -> None:
        busy = False
        for pool in (self.jobs, self.analysis):
            busy = pool.poll(0) or busy
        if not busy:
            self.timer.stop()

    def _handle(self, name: str) -> TaskHandle:
        h = TaskHandle(name, self)
        self._handles.add(h)
        h.finished.connect(lambda h=h: self._handles.discard(h))
        return h

    def _watch(self, h: TaskHandle, task: Task) -> TaskHandle:
        h._task = task
        if task.finished:           # ended at submission (a closed pool, nothing to do): tell later
            QTimer.singleShot(0, self, lambda: h._done(task))
        elif not self.timer.isActive():
            self.timer.start()
        return h

    def _callbacks(self, h: TaskHandle) -> dict:
        from shiboken6 import isValid

        def live(signal: str):
            # a message of a task whose handle went with its window (the pools are shared by every window
            # of the process) is dropped: emitting from a deleted QObject raises in the poll timer
            return lambda x: getattr(h, signal).emit(x) if isValid(h) else None

        return dict(progress=live("progress"), post=live("posted"), done=h._done)

    def submit(self, target: str, *args: Any, name: str = "task", priority: int = 0, user: bool = False,
               **kwargs: Any) -> TaskHandle:
        """``target(ctx, *args, **kwargs)`` in a worker process (``user``: the jobs pool)."""
        h = self._handle(name)
        pool = self.jobs if user else self.analysis
        return self._watch(h, pool.submit(target, *args, priority=priority, **self._callbacks(h), **kwargs))

    def submit_each(self, target: str, items: Sequence, *args: Any, name: str = "task", priority: int = -1,
                    budget: float = SLICE_SECONDS, pending: Optional[Callable[[Any], bool]] = None) -> TaskHandle:
        """``target(ctx, item, *args)`` over ``items`` in slices on the analysis pool (see
        ProcessPool.submit_each); ``succeeded`` carries the number of items done."""
        h = self._handle(name)
        task = self.analysis.submit_each(target, items, *args, priority=priority, budget=budget, pending=pending,
                                         **self._callbacks(h))
        return self._watch(h, task)

    def run_here(self, fn: Callable[[], Any], name: str = "task") -> TaskHandle:
        """``fn()`` on the GUI thread at the next turn of the event loop, reported like a task: for
        short in-process work whose result must live in this process (an opened model's header)."""
        h = self._handle(name)

        def run() -> None:
            if self._closed or h._cancel_asked:
                h._end("cancelled")
                return
            try:
                h._end("ok", fn())
            except Exception as e:  # noqa: BLE001 - every failure reaches the GUI as a signal
                e.traceback_text = traceback.format_exc()  # type: ignore[attr-defined]
                h._end("error", error=e)

        QTimer.singleShot(0, self, run)
        return h

    def cancel_all(self) -> None:
        for h in list(self._handles):
            h.cancel()

    def shutdown(self, timeout_ms: int = 30000) -> bool:
        """Cancel every task and wait until each has ended (True when all did in time)."""
        import time
        self._closed = True
        self.cancel_all()
        end = time.monotonic() + timeout_ms / 1000
        while any(h._task is not None and not h._task.finished for h in self._handles):
            if time.monotonic() > end:
                return False
            for pool in (self.jobs, self.analysis):
                pool.poll(0.02)
        self.timer.stop()
        return True
