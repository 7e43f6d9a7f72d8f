"""Task functions for tests/core/test_procpool.py (module-level, so worker processes can import them)."""
from __future__ import annotations

import os
import threading
import time

from core.errors import SourceError
from core.progress import Progress


def echo(ctx, x, *, times: int = 1):
    for i in range(times):
        ctx.post(("item", i))
        ctx.progress(Progress(i + 1, times, "echo"))
    return {"x": x, "pid": os.getpid()}


def fail(ctx, path):
    raise SourceError("broken on purpose", path)


def fail_plain(ctx):
    raise ValueError("plain failure")


def unpicklable(ctx):
    return threading.Lock()


def wait_for_cancel(ctx, seconds: float):
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:          # bounded, so a broken cancel cannot hang the run
        ctx.check()
        time.sleep(0.01)
    return "not cancelled"


def die(ctx, code: int):
    os._exit(code)


def record(ctx, item, log_path: str):
    """Appends ``item`` to a log file (the order in which a worker ran things)."""
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(f"{item}\n")
    ctx.post(item)
