"""The README's pictures: every view of the studio on the demo model, in a real X window.

    python bench/screenshots.py [--out resources/screenshots] [--sizes 1680x1050,1024x700]

Starts Xvfb with the openbox window manager (``apt-get install xvfb xauth openbox``), runs the studio in
it, and saves one PNG per view and window size, grabbed from the X screen (what a user sees: window
manager, overlapping docks and all). With ``--here`` it uses the current display instead (or Qt's
offscreen platform when there is none: then the window is rendered without a window manager).
Look at the pictures: a layout defect (a covered button, a cut label) shows there first.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "blk.0.ffn_down.weight"
# the size-vs-error chart with these presets only (every preset would take minutes more on two cores)
FRONTIER_PRESETS = ["Q8_0", "Q6_K", "Q5_K_M", "Q5_0", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K"]
# (file name, docks raised, plot tab, dark)
VIEWS = [("histogram", ("plan", "preview"), 0, False),
         ("channels", ("model", "preview"), 1, False),
         ("layers", ("plan", "quantize"), 2, False),
         ("histogram-dark", ("plan", "preview"), 0, True),
         ("error", ("plan", "preview"), 3, False)]


class XServerMissing(RuntimeError):
    """Xvfb or openbox is not installed."""


def _stop(proc: "subprocess.Popen | None") -> None:
    """Stop a process started in its own session, with everything it started."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _read_display(fd: int, xvfb: subprocess.Popen, timeout: float) -> int:
    """The display number Xvfb writes on ``-displayfd`` once it accepts connections."""
    got = b""
    end = time.monotonic() + timeout
    while not got.endswith(b"\n"):
        if xvfb.poll() is not None:
            raise RuntimeError(f"Xvfb exited with status {xvfb.returncode} before opening a display")
        left = end - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"Xvfb opened no display within {timeout:.0f} s")
        if select.select([fd], [], [], min(left, 0.5))[0]:
            chunk = os.read(fd, 32)
            if not chunk:
                raise RuntimeError("Xvfb closed its -displayfd pipe without a display number")
            got += chunk
    return int(got)


@contextlib.contextmanager
def x_display(width: int = 1920, height: int = 1200, timeout: float = 60.0):
    """A fresh Xvfb screen managed by openbox, for as long as the block runs; yields the environment
    that runs a Qt program on it (``DISPLAY`` set, ``QT_QPA_PLATFORM=xcb``). Xvfb picks a free display
    number itself (``-displayfd``: no race with another X server) and says so once it accepts
    connections; openbox is ready when it runs its ``--startup`` command. Both are stopped, with their
    process groups, however the block ends. Raises XServerMissing when either is not installed."""
    missing = [t for t in ("Xvfb", "openbox") if shutil.which(t) is None]
    if missing:
        raise XServerMissing(f"{' and '.join(missing)} not found: apt-get install -y xvfb xauth openbox "
                             "(packaging/bootstrap.sh installs them)")
    xvfb = wm = None
    scratch = tempfile.mkdtemp(prefix="qs-xvfb-")
    read_fd, write_fd = os.pipe()
    try:
        xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write_fd), "-screen", "0", f"{width}x{height}x24",
                                 "-nolisten", "tcp"], pass_fds=(write_fd,), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        os.close(write_fd)
        write_fd = -1
        n = _read_display(read_fd, xvfb, timeout)
        env = dict(os.environ, DISPLAY=f":{n}", QT_QPA_PLATFORM="xcb")
        env.pop("WAYLAND_DISPLAY", None)
        ready = os.path.join(scratch, "openbox-ready")
        wm = subprocess.Popen(["openbox", "--sm-disable", "--startup", f"touch {ready}"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        end = time.monotonic() + timeout
        while not os.path.exists(ready):
            if wm.poll() is not None:
                raise RuntimeError(f"openbox exited with status {wm.returncode} on display :{n}")
            if time.monotonic() > end:
                raise RuntimeError(f"openbox did not start within {timeout:.0f} s on display :{n}")
            time.sleep(0.05)
        yield env
    finally:
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
        _stop(wm)
        _stop(xvfb)
        shutil.rmtree(scratch, ignore_errors=True)


def run_in_xvfb(argv: list[str], width: int = 1920, height: int = 1200) -> int:
    """Run this script with ``--here`` under a fresh Xvfb + openbox; both are stopped afterwards."""
    try:
        with x_display(width, height) as env:
            return subprocess.call([sys.executable, os.path.abspath(__file__), "--here"] + argv, env=env)
    except XServerMissing as e:
        sys.exit(str(e))


def capture(out: str, sizes: list[tuple[int, int]]) -> list[str]:
    """Open the demo model in a studio window and save each view at each size; returns the paths."""
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.path.insert(0, ROOT)
    from PySide6.QtCore import QEventLoop
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QApplication

    from app import theme
    from app.main import _application
    from app.main_window import MainWindow
    from core.demo import demo_model_path

    app = _application(offscreen=os.environ.get("QT_QPA_PLATFORM") == "offscreen")
    settings = tempfile.mkdtemp(prefix="qs-shots-")
    theme.use_settings_file(os.path.join(settings, "settings.ini"))    # a first start, not the user's layout

    def wait(ms: int) -> None:
        end = time.monotonic() + ms / 1000
        while time.monotonic() < end:
            app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
            time.sleep(0.01)

    def wait_until(pred, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > end:
                print(f"  (gave up waiting for {what})", file=sys.stderr)
                return
            app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
            time.sleep(0.02)

    win = MainWindow(follow_system_theme=False)
    win.ask_unsaved = lambda *a, **k: "discard"
    win.s.frontier_presets = FRONTIER_PRESETS
    win.show()
    win.open_path(demo_model_path())
    wait_until(lambda: win.s.source is not None, 60, "the model")
    win.table.select(NAME)
    wait_until(lambda: NAME in win.s.stats, 60, "statistics")
    wait_until(lambda: win.preview.metrics and all(m.exact for m in win.preview.metrics), 240, "candidates")
    wait_until(lambda: win.hist.overlay is not None, 60, "the overlay")
    wait_until(lambda: win.stats_label.text() == "statistics complete", 240, "all statistics")
    wait_until(lambda: bool(win.preview.frontier.points), 180, "the presets' frontier")
    os.makedirs(out, exist_ok=True)
    paths = []
    screen = QGuiApplication.primaryScreen()
    for w, h in sizes:
        win.showNormal()
        win.resize(w, h)
        win.move(0, 0)
        wait_until(lambda: (win.width(), win.height()) == (w, h), 5, "the window manager's resize")
        wait(400)
        win.reset_layout()
        wait(300)
        for name, docks, tab, dark in VIEWS:
            win.set_dark(dark)
            for d in docks:
                win.docks[d].raise_()
            win.plots.setCurrentIndex(tab)
            win.heatmap.redraw(force=True)
            if name == "error":                   # computed while its tab is open (every row of the tensor)
                wait_until(lambda: win.errors.result is not None, 120, "the error histogram")
            wait(300)
            fg = win.frameGeometry()
            shot = screen.grabWindow(0, fg.x(), fg.y(), fg.width(), fg.height()) \
                if os.environ.get("QT_QPA_PLATFORM") != "offscreen" else win.grab()
            if shot.isNull() or shot.width() < 100:
                shot = win.grab()
            path = os.path.join(out, f"{w}x{h}-{name}.png")
            shot.save(path)
            paths.append(path)
            print(f"{path}  window {win.width()}x{win.height()}, plan dock {win.docks['plan'].width()} px, "
                  f"preview dock {win.docks['preview'].height()} px")
        win.set_dark(False)
    paths += capture_dialogs(win, out, wait, wait_until, screen)
    # the user guide, once
    guide = win.show_guide()
    guide.resize(760, 560)
    wait(300)
    path = os.path.join(out, "guide.png")
    guide.grab().save(path)
    paths.append(path)
    guide.close()
    win.close()
    QApplication.processEvents()
    shutil.rmtree(settings, ignore_errors=True)
    return paths


def _grab(widget, screen, path: str) -> str:
    """The widget's window as the X screen shows it (frame included); a render of it offscreen."""
    fg = widget.frameGeometry()
    shot = screen.grabWindow(0, fg.x(), fg.y(), fg.width(), fg.height()) \
        if os.environ.get("QT_QPA_PLATFORM") != "offscreen" else widget.grab()
    if shot.isNull() or shot.width() < 100:
        shot = widget.grab()
    shot.save(path)
    print(f"{path}  {widget.windowTitle()}: {widget.width()}x{widget.height()}")
    return path


def capture_dialogs(win, out: str, wait, wait_until, screen) -> list[str]:
    """The dialogs that run the model: Calibrate (done, on the built-in text) and Evaluate (the plan and
    two presets against the open model, one token's worst KLD shown), each after its work finished."""
    paths = []
    cal = win.calibrate_dialog()
    cal.ctx.setValue(128)
    cal.chunks.setValue(4)
    cal.output.setText(os.path.join(tempfile.mkdtemp(prefix="qs-shots-"), "demo.imatrix.gguf"))
    cal.resize(720, 300)
    cal.start()
    wait_until(lambda: cal.run_btn.isEnabled() and cal.progress.value() == 1000, 600, "the calibration")
    wait(300)
    paths.append(_grab(cal, screen, os.path.join(out, "calibrate.png")))
    cal.close()
    ev = win.evaluate_dialog()
    ev.ctx.setValue(128)
    ev.chunks.setValue(4)
    ev.set_presets({"Q4_K_M", "Q3_K_M", "Q8_0"})
    ev.resize(1280, 820)
    ev.start()
    wait_until(lambda: ev.data is not None, 900, "the evaluation")
    ev.table.selectRow(2)
    wait(500)
    paths.append(_grab(ev, screen, os.path.join(out, "evaluate.png")))
    ev.close()
    # Fit a Budget: the fast fit (imatrix-weighted error), then the slider moved once
    bd = win.budget_dialog()
    bd.fast.setChecked(True)
    bd.value.setText(str(int(win.s.planned_bytes() * 0.85)))
    bd.resize(1180, 760)
    bd.start()
    wait_until(lambda: bd.result is not None and bd.chart is not None and not bd.solving(), 900, "the budget fit")
    bd.slider.setValue(400)
    wait_until(lambda: not bd.solving(), 120, "the re-solve")
    wait(500)
    paths.append(_grab(bd, screen, os.path.join(out, "budget.png")))
    bd.close()
    # Batch export of two presets (written, verified), then Compare of the two files against the open model
    folder = tempfile.mkdtemp(prefix="qs-shots-batch-")
    bx = win.batch_dialog()
    bx.folder.setText(folder)
    bx.check(["Q8_0", "Q4_K_M"])
    bx.resize(900, 600)
    bx.start()
    wait_until(lambda: not bx.running, 900, "the batch export")
    wait(300)
    paths.append(_grab(bx, screen, os.path.join(out, "batch.png")))
    files = [r.path for r in bx.result.items] if bx.result is not None else []
    bx.close()
    if len(files) == 2:
        cd = win.compare_dialog(*files)
        cd.resize(1400, 820)
        cd.start()
        wait_until(lambda: cd.result is not None, 600, "the comparison")
        rows = cd.differing_rows()
        if rows:
            cd.table.selectRow(rows[len(rows) // 2])
            wait_until(lambda: cd.histograms is not None, 120, "the histograms")
        wait(500)
        paths.append(_grab(cd, screen, os.path.join(out, "compare.png")))
        cd.close()
    shutil.rmtree(folder, ignore_errors=True)
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(ROOT, "resources", "screenshots"))
    p.add_argument("--sizes", default="1680x1050,1024x700", help="window sizes, WxH[,WxH…]")
    p.add_argument("--here", action="store_true", help="use the current display (no Xvfb of our own)")
    args = p.parse_args(argv)
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
    if not args.here:
        return run_in_xvfb(["--out", args.out, "--sizes", args.sizes])
    paths = capture(os.path.abspath(args.out), sizes)
    print(f"{len(paths)} pictures in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
