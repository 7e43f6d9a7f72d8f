"""Entry point of the studio: ``run(argv)``.

``quant-studio [MODEL]`` opens the window (with MODEL, or the demo model on first start);
``quant-studio --self-test [--screenshot PATH]`` runs offscreen: opens the demo model, quantizes
it to Q8_0 in a temporary folder, checks the output opens (then deletes it), saves a screenshot
of the window, prints its path and exits 0 (1 on any failure).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Optional, Sequence

SELF_TEST_TIMEOUT = 300.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quant-studio", description="Quant Studio: the desktop studio.")
    p.add_argument("model", nargs="?", help="GGUF file, .safetensors file or Hugging Face folder to open")
    p.add_argument("--self-test", action="store_true",
                   help="offscreen: open the demo model, quantize it, save a screenshot, exit 0")
    p.add_argument("--screenshot", metavar="PATH", help="where --self-test saves its screenshot (PNG)")
    return p


def _application(offscreen: bool):
    if offscreen:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    if app is None:
        QGuiApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
        app = QApplication([sys.argv[0] if sys.argv else "quant-studio"])
    app.setApplicationName("Quant Studio")
    app.setOrganizationName("QuantStudio")
    app.setApplicationDisplayName("Quant Studio")
    app.setDesktopFileName("quant-studio")
    return app


def run(argv: Optional[Sequence[str]] = None) -> int:
    """``quant-studio [MODEL] | --self-test [--screenshot PATH]``; returns the exit status."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.self_test:
        return self_test(args.screenshot)
    app, _win = start(args.model)
    return app.exec()


def start(model: Optional[str] = None, warm_up: bool = True):
    """Create the application and the window, show it, and open ``model`` (else the demo model on
    the first start, else the most recent file). Returns (app, window); the caller runs the loop."""
    app = _application(offscreen=False)
    from . import theme
    from .main_window import MainWindow

    app.setWindowIcon(theme.app_icon())
    win = MainWindow()
    win.show()
    if warm_up:
        win.s.warm_up()
        win.warm_label.setText("warming up kernels…")
    if model:
        win.open_path(model)
    elif win.first_start():
        win.open_demo()
        win.show_first_run_hint()
    else:
        recent = win.recent_files()
        if recent and os.path.exists(recent[0]):
            win.open_path(recent[0])
    return app, win


def self_test(screenshot: Optional[str] = None, timeout: float = SELF_TEST_TIMEOUT) -> int:
    """Open the demo model offscreen, quantize it to Q8_0, check the output, save a screenshot."""
    app = _application(offscreen=True)
    from PySide6.QtCore import QEventLoop, QTimer

    from core.demo import demo_model_path
    from core.models import open_model

    from . import theme
    from .main_window import MainWindow

    work = tempfile.mkdtemp(prefix="quant-studio-self-test-")
    theme.use_settings_file(os.path.join(work, "settings.ini"))
    shot = os.path.abspath(screenshot or os.path.join(work, "quant-studio-self-test.png"))
    out = os.path.join(work, "demo.Q8_0.gguf")
    state = {"rc": None, "msg": ""}
    loop = QEventLoop()

    def finish(rc: int, msg: str) -> None:
        if state["rc"] is None:
            state["rc"], state["msg"] = rc, msg
            QTimer.singleShot(0, loop.quit)

    win = MainWindow(follow_system_theme=False)
    win.ask_unsaved = lambda action, can_carry=False: "discard"     # unattended: no question
    # only kernels that compile quickly: on a cold Numba cache the K-quants alone take minutes
    win.s.candidate_types = ["F16", "Q8_0", "Q5_0", "Q4_0"]
    win.s.frontier_presets = ["F16", "Q8_0", "Q5_0", "Q4_0"]
    win.set_dark(False)
    win.resize(1500, 940)
    win.show()
    win.errorShown.connect(lambda title, text: finish(1, f"{title}: {text}"))
    t0 = time.monotonic()

    def opened() -> None:
        s = win.s
        name = "blk.0.ffn_down.weight" if "blk.0.ffn_down.weight" in s.source else None
        if name:
            win.table.select(name)
        if s.rules.preset != "Q8_0" and not s.set_preset("Q8_0"):
            finish(1, "cannot set the Q8_0 preset")
            return
        win.quantize.set_output(out)
        if win.run_quantize() is None:
            finish(1, "the quantization did not start")

    def done(res) -> None:
        try:
            with open_model(res.paths[0]) as q:
                n_in, n_out = len(win.s.source.tensors), len(q.tensors)
                types = q.type_counts()
        except Exception as e:  # noqa: BLE001 - any failure fails the self-test
            finish(1, f"the output does not open: {e}")
            return
        if n_in != n_out:
            finish(1, f"the output has {n_out} tensors, the input {n_in}")
            return
        wait_then_shoot(f"wrote {res.paths[0]}: {n_out} tensors ({types}), {res.size:,} bytes, "
                        f"{res.seconds:.1f} s")

    def wait_then_shoot(msg: str, since: Optional[float] = None) -> None:
        """Shoot once the selected tensor's statistics are in (and its first candidates, for a while)."""
        s = win.s
        since = since or time.monotonic()
        waited = time.monotonic() - since
        ready = win.current is None or (win.current in s.stats and (win.current in s.candidates or waited > 20))
        if not ready and time.monotonic() - t0 < timeout - 10:
            QTimer.singleShot(200, lambda: wait_then_shoot(msg, since))
            return
        app.processEvents()
        if not win.grab().save(shot, "PNG"):
            finish(1, f"cannot save the screenshot to {shot}")
            return
        finish(0, msg)

    win.s.modelOpened.connect(opened)
    win.quantize.done.connect(done)
    win.quantize.stopped.connect(lambda why: finish(1, f"quantization {why}"))
    QTimer.singleShot(int(timeout * 1000), lambda: finish(1, f"timed out after {timeout:.0f} s"))
    try:
        win.open_path(demo_model_path())
    except Exception as e:  # noqa: BLE001
        print(f"quant-studio self-test: FAILED: {e}", file=sys.stderr)
        return 1
    loop.exec()
    win.close()
    for p in (out, out + ".partial"):           # the quantized demo is not worth keeping
        if os.path.exists(p):
            os.remove(p)
    if state["rc"] == 0:
        print(f"quant-studio self-test: OK ({state['msg']}) in {time.monotonic() - t0:.1f} s")
        print(shot)
    else:
        print(f"quant-studio self-test: FAILED: {state['msg']}", file=sys.stderr)
    return int(state["rc"])


if __name__ == "__main__":
    sys.exit(run())
