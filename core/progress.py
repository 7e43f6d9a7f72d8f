"""Progress events and cancel tokens shared by every long core API.

A long operation takes ``progress`` (a callable receiving :class:`Progress`) and
``cancel`` (a :class:`CancelToken`). The CLI's progress bar and the GUI's progress
bar are two views of the same events.
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from .errors import Cancelled


class CancelToken:
    """Thread-safe cancel flag, checked between chunks of work."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if cancellation was requested."""
        if self._event.is_set():
            raise Cancelled()


@contextlib.contextmanager
def sigint_cancels(cancel: CancelToken):
    """Within the block, Ctrl-C sets ``cancel`` instead of raising KeyboardInterrupt (which can be lost:
    Python drops it when it lands inside a ctypes callback, e.g. during a Numba compile, and the work
    would run on to the end). A second Ctrl-C raises KeyboardInterrupt as usual. Outside the main thread
    this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield cancel
        return

    def handler(signum, frame):
        if cancel.cancelled:
            raise KeyboardInterrupt
        cancel.cancel()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield cancel
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class Progress:
    """One progress event. ``done``/``total`` count work units (weights for a quantize job)."""

    done: int
    total: int
    stage: str = ""
    item: str = ""          # e.g. the tensor being processed
    item_done: int = 0
    item_total: int = 0
    elapsed: float = 0.0
    message: str = ""       # a log line, when there is one

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    @property
    def eta(self) -> Optional[float]:
        """Seconds left, from the average rate so far; None until there is a rate."""
        if self.done <= 0 or self.elapsed <= 0 or self.total <= 0:
            return None
        return max(0.0, self.elapsed * (self.total - self.done) / self.done)


ProgressCallback = Callable[[Progress], None]


def no_progress(_: Progress) -> None:
    pass


@dataclass
class ProgressTracker:
    """Helper that stamps elapsed time on events and forwards them to a callback."""

    callback: ProgressCallback = no_progress
    total: int = 0
    stage: str = ""
    done: int = 0
    start: float = field(default_factory=time.perf_counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def advance(self, n: int, item: str = "", item_done: int = 0, item_total: int = 0,
                message: str = "") -> None:
        with self._lock:
            self.done += n
            ev = Progress(self.done, self.total, self.stage, item, item_done, item_total,
                          time.perf_counter() - self.start, message)
        self.callback(ev)
