"""core.procpool: tasks in worker processes return results, stream posts and progress, re-raise
errors, honour cancellation and survive a worker that dies."""
from __future__ import annotations

import os
import threading
import time

import pytest

from core.errors import Cancelled, QuantStudioError, SourceError
from core.procpool import ProcessPool, WorkerDied
from core.progress import CancelToken

T = "tests.core.procpool_tasks:"


@pytest.fixture(scope="module")
def pool():
    p = ProcessPool(1, "test-pool", nice=0)
    yield p
    p.close()


def test_result_posts_and_progress(pool):
    posts, progress = [], []
    r = pool.call(T + "echo", 41, times=5, post=posts.append, progress=progress.append)
    assert r["x"] == 41 and r["pid"] != os.getpid() and r["pid"] in pool.pids
    assert posts == [("item", i) for i in range(5)]
    assert progress and progress[-1].done == 5 == progress[-1].total     # throttled; the last one arrives
    assert pool.call(T + "echo", "again")["pid"] == r["pid"]              # the same warm process


def test_errors_come_back_as_themselves(pool):
    with pytest.raises(SourceError) as ei:
        pool.call(T + "fail", "/x/model.gguf")
    assert ei.value.path == "/x/model.gguf" and ei.value.message == "broken on purpose"
    assert "fail" in ei.value.traceback_text
    with pytest.raises(ValueError, match="plain failure"):
        pool.call(T + "fail_plain")
    with pytest.raises(QuantStudioError, match="cannot be sent back"):    # a result pickle cannot carry
        pool.call(T + "unpicklable")
    with pytest.raises(ModuleNotFoundError, match="no_such_module"):
        pool.call("no_such_module:fn")
    assert pool.call(T + "echo", 1)["x"] == 1                            # the worker is still fine


def test_cancel_reaches_the_worker(pool):
    token = CancelToken()
    threading.Timer(0.3, token.cancel).start()
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        pool.call(T + "wait_for_cancel", 20.0, cancel=token)
    assert time.monotonic() - t0 < 15
    assert pool.call(T + "wait_for_cancel", 0.05) == "not cancelled"     # the next task is not cancelled


def test_a_dead_worker_is_reported_and_replaced():
    p = ProcessPool(1, "test-dies", nice=0)
    try:
        first = p.call(T + "echo", 0)["pid"]
        with pytest.raises(WorkerDied, match="exit code 7"):
            p.call(T + "die", 7)
        second = p.call(T + "echo", 0)["pid"]
        assert second != first and p.pids == [second]
    finally:
        p.close()
    assert not any(c.proc.is_alive() for c in p._children)


def test_broadcast_reaches_every_worker_and_close_stops_them():
    p = ProcessPool(2, "test-two", nice=0)
    pids = [r["pid"] for r in p.broadcast(T + "echo", 0)]
    assert sorted(pids) == sorted(p.pids) and len(set(pids)) == 2
    procs = [c.proc for c in p._children]
    p.close()
    assert not any(pr.is_alive() for pr in procs)
    with pytest.raises(Cancelled):
        p.call(T + "echo", 0)
