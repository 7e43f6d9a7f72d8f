"""The worker bridge: results, progress, posts, errors and cancellation of tasks in worker processes
reach the GUI thread as signals, and no thread is started in the GUI process."""
from __future__ import annotations

import os
import threading

from core.errors import SourceError

from app.workers import Workers

T = "tests.core.procpool_tasks:"


def test_result_progress_and_posts_arrive_on_the_gui_thread(qtbot):
    w = Workers()
    gui = threading.get_ident()
    threads_before = threading.active_count()
    seen = {"progress": [], "posted": [], "threads": set()}
    h = w.submit(T + "echo", 7, times=5, name="t")
    h.progress.connect(lambda ev: (seen["progress"].append(ev.done), seen["threads"].add(threading.get_ident())))
    h.posted.connect(lambda x: (seen["posted"].append(x), seen["threads"].add(threading.get_ident())))
    with qtbot.waitSignal(h.finished, timeout=30000):
        pass
    assert h.result["x"] == 7 and h.result["pid"] != os.getpid() and not h.running
    assert seen["posted"] == [("item", i) for i in range(5)]
    assert seen["progress"][-1] == 5                    # throttled, but the last one always arrives
    assert seen["threads"] == {gui}
    assert threading.active_count() == threads_before   # no thread was started for it
    assert w.shutdown(5000)


def test_errors_and_cancellation(qtbot):
    w = Workers()
    h = w.submit(T + "fail", "/x.gguf")
    with qtbot.waitSignal(h.failed, timeout=30000) as sig:
        pass
    assert isinstance(sig.args[0], SourceError) and "/x.gguf" in str(sig.args[0])

    h = w.submit(T + "wait_for_cancel", 20.0)
    qtbot.waitUntil(lambda: h._task.state == "running", timeout=10000)
    with qtbot.waitSignal(h.cancelled, timeout=10000):
        h.cancel()
    assert h.was_cancelled and h.error is None
    assert w.shutdown(5000)


def test_run_here_reports_like_a_task(qtbot):
    w = Workers()
    h = w.run_here(lambda: 6 * 7)
    with qtbot.waitSignal(h.succeeded, timeout=5000) as sig:
        pass
    assert sig.args == [42]

    def broken():
        raise SourceError("cannot read", "/y.gguf")

    h = w.run_here(broken)
    with qtbot.waitSignal(h.failed, timeout=5000) as sig:
        pass
    assert isinstance(sig.args[0], SourceError) and "traceback_text" in vars(sig.args[0])


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
