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


def test_submit_never_blocks_and_poll_delivers_callbacks_on_the_polling_thread():
    p = ProcessPool(1, "test-poll", nice=0)
    try:
        me, seen = threading.get_ident(), []
        t0 = time.monotonic()
        task = p.submit(T + "wait_for_cancel", 0.5, post=seen.append,
                        done=lambda t: seen.append((t.state, threading.get_ident())))
        assert time.monotonic() - t0 < 0.2 and task.state == "queued"    # nothing started before a poll
        while p.poll(0.05):
            pass
        assert task.state == "ok" and task.result == "not cancelled" and seen == [("ok", me)]
    finally:
        p.close()


def test_priorities_and_slices_let_urgent_work_in_between(tmp_path):
    """A long sliced pass (one item per slice) gives the single worker to a task submitted later at a
    higher priority after the current slice, not after the whole pass."""
    p = ProcessPool(1, "test-slices", nice=0)
    log = str(tmp_path / "order.txt")
    try:
        posts = []
        bg = p.submit_each(T + "record", [f"bg{i}" for i in range(6)], log, priority=-1, budget=0.0,
                           post=posts.append)
        p.poll(0)                                          # the first slice starts
        urgent = p.submit(T + "record", "urgent", log, priority=5)
        low = p.submit(T + "record", "low", log, priority=-5)
        while p.poll(0.05):
            pass
        order = open(log, encoding="utf-8").read().split()
        assert order[0] == "bg0" and order[1] == "urgent" and order[-1] == "low"
        assert [x for x in order if x.startswith("bg")] == [f"bg{i}" for i in range(6)]
        assert bg.state == "ok" and bg.result == 6 and posts == [f"bg{i}" for i in range(6)]
        assert urgent.state == low.state == "ok"
    finally:
        p.close()


def test_a_sliced_pass_skips_items_done_meanwhile_and_stops_when_cancelled(tmp_path):
    p = ProcessPool(1, "test-pending", nice=0)
    log = str(tmp_path / "order.txt")
    try:
        done_elsewhere = {"b", "d"}
        t = p.submit_each(T + "record", list("abcde"), log, budget=0.0, pending=lambda x: x not in done_elsewhere)
        while p.poll(0.05):
            pass
        assert open(log, encoding="utf-8").read().split() == ["a", "c", "e"] and t.result == 3
        t2 = p.submit_each(T + "record", list("vwxyz"), log, budget=0.0)
        p.poll(0)
        t2.cancel()
        while p.poll(0.05):
            pass
        assert t2.state == "cancelled" and t2.result < 5
        queued = p.submit(T + "echo", 1)
        queued.cancel()                                    # cancelled before it starts: it never runs
        while p.poll(0.05):
            pass
        assert queued.state == "cancelled" and queued.result is None
    finally:
        p.close()
