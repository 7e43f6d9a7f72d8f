"""The worker bridge: results, progress, posts, errors and cancellation reach the GUI thread as signals."""
from __future__ import annotations

import os
import threading
import time

from core.errors import SourceError
from core.progress import Progress

from app.workers import Workers


def test_result_progress_and_posts_arrive_on_the_gui_thread(qtbot):
    w = Workers()
    gui = threading.get_ident()
    seen = {"progress": [], "posted": [], "threads": set()}

    def work(ctx):
        assert threading.get_ident() != gui
        for i in range(5):
            ctx.post(i)
            ctx.progress(Progress(i + 1, 5, "test"))
        return "done"

    h = w.submit(work, "t")
    h.progress.connect(lambda ev: (seen["progress"].append(ev.done), seen["threads"].add(threading.get_ident())))
    h.posted.connect(lambda x: (seen["posted"].append(x), seen["threads"].add(threading.get_ident())))
    with qtbot.waitSignal(h.finished, timeout=5000):
        pass
    assert h.result == "done" and not h.running
    assert seen["posted"] == [0, 1, 2, 3, 4]
    assert seen["progress"][-1] == 5                    # throttled, but the last one always arrives
    assert seen["threads"] == {gui}
    assert w.shutdown(5000)


def test_errors_and_cancellation(qtbot):
    w = Workers()

    def bad(ctx):
        raise SourceError("broken file", "/x.gguf")

    h = w.submit(bad)
    with qtbot.waitSignal(h.failed, timeout=5000) as sig:
        pass
    assert isinstance(sig.args[0], SourceError) and "broken file" in str(sig.args[0])

    started = threading.Event()

    def slow(ctx):
        started.set()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10:          # bounded, so a failing test cannot hang the run
            ctx.check()
            time.sleep(0.01)

    h = w.submit(slow)
    qtbot.waitUntil(started.is_set, timeout=5000)       # tasks start from the event loop
    with qtbot.waitSignal(h.cancelled, timeout=5000):
        h.cancel()
    assert h.was_cancelled and h.error is None
    assert w.shutdown(5000)


def test_warm_up_loads_kernels_in_the_worker_process(qtbot):
    from app.session import Session

    s = Session()
    with qtbot.waitSignal(s.warmupDone, timeout=120000):
        s.warm_up(["Q5_1", "Q4_0"])
    assert s.warmed
    pids = s.workers.analysis.pids
    assert pids and os.getpid() not in pids
    assert {"stats", "Q5_1", "Q4_0"} <= set().union(*s.workers.analysis.broadcast("core.tasks:warmed"))
    s.shutdown()


def test_a_failing_worker_call_reaches_the_gui_as_a_signal(qtbot, tmp_path):
    from app.session import Session

    s = Session()
    missing = str(tmp_path / "missing.gguf")
    with qtbot.waitSignal(s.backgroundError, timeout=30000) as sig:
        s._call("probe", "core.tasks:stats", missing, "x")
    what, err = sig.args
    assert what == "probe" and isinstance(err, SourceError) and missing in str(err)
    s.shutdown()
