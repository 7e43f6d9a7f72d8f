"""Tooltips and keyboard focus in a real X window under a real window manager.

The rest of the suite runs on Qt's offscreen platform, where no window manager gives focus and no pointer
moves. Here the studio runs in a child process on a fresh Xvfb screen managed by openbox (the X server
helper bench/screenshots.py uses for the README's pictures, ``x_display``), on Qt's xcb platform, with
the demo model open, and is driven the way a user's devices drive it: every key press and pointer move
is sent to the X server through the XTEST extension (libXtst, which Xvfb supports), so the server routes
it to whichever window openbox gave the focus -- nothing is handed to a Qt widget directly.

The child checks, and prints as one JSON line that the test asserts on:

* the window is shown, framed by openbox (its frame is larger than its client area) and active;
* tooltips: the pointer is moved onto a widget that has a tooltip (the tensor filter, the Plan dock's
  preset combo); the tooltip shows that widget's text within seconds. The pointer really has to move
  *onto* the widget: X sends Enter/Motion events only for a change of position, so the pointer is first
  parked elsewhere, then moved in two steps onto the widget (QCursor.setPos -- XWarpPointer -- works
  as well; XTestFakeMotionEvent is what a mouse does). Qt then waits its tooltip delay (~700 ms);
* keyboard focus: with the tensor table focused, Tab moves the focus through the window and comes back
  to the table; every widget it reaches is visible, enabled and on the screen, and the cycle reaches
  the main controls (tensor table, tensor filter, the Plan dock's preset combo, the Quantize button);
  Shift+Tab goes back the same way. (Two defects this found: a table with rows kept Tab for moving
  between its cells -- QTableView's tabKeyNavigation, now off in the studio's tables -- and the focus
  went into the panels of docks hidden behind another dock's tab, which Qt keeps "visible" outside
  the window -- MainWindow.focusNextPrevChild now skips them);
* shortcuts arrive through the window manager: Ctrl+F focuses the tensor filter; F1 opens the user
  guide, which openbox activates, Escape closes it and the main window is active again.

A missing Xvfb or openbox fails the test (CI installs them: packaging/bootstrap.sh); it is not skipped.
Waits are for events, with generous limits (a loaded two-core machine; the first show of the window can
take tens of seconds); the kernel warm-up is not started.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MARK = "REAL-WINDOW-RESULT "
CHILD_TIMEOUT = 400          # seconds for the whole child run


def _run_child(settings: str) -> subprocess.CompletedProcess:
    from bench.screenshots import XServerMissing, x_display

    try:
        with x_display(1600, 1000) as env:
            return subprocess.run([sys.executable, os.path.abspath(__file__)], cwd=ROOT, capture_output=True,
                                  text=True, timeout=CHILD_TIMEOUT, env=dict(env, QS_SETTINGS=settings))
    except XServerMissing as e:
        pytest.fail(f"this test needs a real X server: {e}")


def test_tooltips_and_keyboard_focus_under_a_window_manager(tmp_path):
    t0 = time.monotonic()
    proc = _run_child(str(tmp_path / "settings.ini"))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    assert proc.returncode == 0 and lines, (f"child exited {proc.returncode} after {time.monotonic() - t0:.0f} s"
                                            f"\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}")
    r = json.loads(lines[-1][len(MARK):])
    info = json.dumps(r, indent=1)
    assert r["platform"] == "xcb", info
    assert r["window_manager"], info                   # openbox framed the window
    assert r["active"], info
    assert r["model"], info                            # the table has rows (a table keeps Tab only then)
    for name, tip in r["tooltips"].items():
        assert tip["shown"] == tip["expected"], f"tooltip of {name}: {info}"
    focus = r["focus"]
    assert focus["cycle_closed"], info                   # Tab came back to the table
    assert not focus["bad"], info                          # every focused widget visible, enabled, on screen
    assert {"table", "filter", "preset", "quantize"} <= set(focus["reached"]), info
    assert focus["shift_tab_goes_back"], info
    assert r["shortcuts"]["ctrl_f_focuses_filter"], info
    g = r["shortcuts"]["f1_guide"]
    assert g["opened"] and g["active"] and g["closed_by_escape"] and g["main_active_again"], info


# -- the child: the studio on the X display ------------------------------------------------------------
class _XTest:
    """Key presses and pointer moves sent to the X server (XTEST), as a keyboard and a mouse send them."""
    KEYSYMS = {"Tab": 0xFF09, "Escape": 0xFF1B, "F1": 0xFFBE, "Control_L": 0xFFE3, "Shift_L": 0xFFE1,
               "f": 0x66}

    def __init__(self):
        import ctypes
        self.x11 = x11 = ctypes.CDLL("libX11.so.6")
        self.xtst = xtst = ctypes.CDLL("libXtst.so.6")
        x11.XOpenDisplay.restype = ctypes.c_void_p
        x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
        x11.XKeysymToKeycode.restype = ctypes.c_ubyte
        x11.XKeysymToKeycode.argtypes = [ctypes.c_void_p, ctypes.c_ulong]
        x11.XFlush.argtypes = [ctypes.c_void_p]
        xtst.XTestFakeKeyEvent.argtypes = [ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_ulong]
        xtst.XTestFakeMotionEvent.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                              ctypes.c_ulong]
        self.dpy = x11.XOpenDisplay(None)
        if not self.dpy:
            raise RuntimeError(f"cannot open X display {os.environ.get('DISPLAY')}")

    def key(self, *names: str) -> None:
        """Press the keys in order, release them in reverse (a chord such as Control_L + f)."""
        codes = [self.x11.XKeysymToKeycode(self.dpy, self.KEYSYMS[n]) for n in names]
        for c in codes:
            self.xtst.XTestFakeKeyEvent(self.dpy, c, 1, 0)
        for c in reversed(codes):
            self.xtst.XTestFakeKeyEvent(self.dpy, c, 0, 0)
        self.x11.XFlush(self.dpy)

    def move(self, x: int, y: int) -> None:
        self.xtst.XTestFakeMotionEvent(self.dpy, -1, x, y, 0)
        self.x11.XFlush(self.dpy)


def _child() -> int:
    sys.path.insert(0, ROOT)
    import shiboken6
    from PySide6.QtCore import QEventLoop, QPoint, QRect
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QApplication, QToolTip

    from app import theme
    from app.main import _application
    from app.main_window import MainWindow
    from core.demo import demo_model_path

    app = _application(offscreen=False)
    theme.use_settings_file(os.environ["QS_SETTINGS"])          # a first start, not the user's layout
    xt = _XTest()
    r: dict = {"platform": QGuiApplication.platformName()}

    def wait_until(pred, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > end:
                return False
            app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
            time.sleep(0.01)
        return True

    def settle(ms: int = 150) -> None:
        wait_until(lambda: False, ms / 1000)

    win = MainWindow(follow_system_theme=False)
    win.ask_unsaved = lambda *a, **k: "discard"
    win.resize(1400, 900)
    win.show()
    win.open_path(demo_model_path())
    r["active"] = wait_until(lambda: win.isVisible() and win.isActiveWindow(), 120)
    r["model"] = wait_until(lambda: win.s.source is not None and win.table.model.rowCount() > 0, 120)
    fg, g = win.frameGeometry(), win.geometry()
    r["window_manager"] = fg.height() > g.height() and fg.contains(g)
    r["frame"] = [fg.x(), fg.y(), fg.width(), fg.height(), g.x(), g.y(), g.width(), g.height()]
    win.docks["plan"].raise_()
    win.docks["quantize"].raise_()                  # the Quantize button is on the screen, in the Tab cycle
    settle(500)
    screen = QGuiApplication.primaryScreen().geometry()

    # tooltips: park the pointer on the status bar, then move it onto the widget
    r["tooltips"] = {}
    for name, w in (("filter", win.table.filter), ("preset", win.plan_panel.preset)):
        park = win.statusBar().mapToGlobal(QPoint(5, 5))
        xt.move(park.x(), park.y())
        wait_until(lambda: not QToolTip.isVisible(), 5)
        settle(300)
        c = w.mapToGlobal(w.rect().center())
        xt.move(c.x() - 3, c.y() - 2)
        settle(50)
        xt.move(c.x(), c.y())
        shown = wait_until(lambda w=w: QToolTip.isVisible() and QToolTip.text() == w.toolTip(), 10)
        r["tooltips"][name] = {"expected": w.toolTip(), "shown": QToolTip.text() if shown else None,
                               "under_pointer": type(QApplication.widgetAt(c)).__name__}
    xt.move(park.x(), park.y())
    settle(300)

    def on_screen(w) -> QRect:
        """The part of ``w`` inside each widget that contains it and inside the screen, in global
        coordinates (empty: the user cannot see it, e.g. in a dock hidden behind another dock's tab)."""
        rect, p = QRect(w.mapToGlobal(QPoint(0, 0)), w.size()), w.parentWidget()
        while p is not None:
            rect = rect.intersected(QRect(p.mapToGlobal(QPoint(0, 0)), p.size()))
            p = p.parentWidget()
        return rect.intersected(screen)

    # keyboard focus: Tab from the tensor table round the window
    names = {id(win.table.view): "table", id(win.table.filter): "filter", id(win.plan_panel.preset): "preset",
             id(win.quantize.run_btn): "quantize"}

    def name_of(w) -> str:
        return names.get(id(w), f"{type(w).__name__}:{w.objectName() or w.toolTip()[:30]}")

    win.activateWindow()
    win.table.view.setFocus()
    wait_until(lambda: app.focusWidget() is win.table.view, 10)
    seen, bad, reached, closed, last = [], [], set(), False, None
    for _ in range(200):
        before = app.focusWidget()
        xt.key("Tab")
        if not wait_until(lambda: app.focusWidget() is not before, 10):
            bad.append(f"Tab left the focus on {name_of(before)}")
            break
        w = app.focusWidget()
        label = name_of(w)
        seen.append(label)
        reached.add(label)
        shown = on_screen(w)
        if not (w.isVisible() and w.isEnabled() and shown.width() >= 4 and shown.height() >= 4):
            bad.append(f"{label}: visible {w.isVisible()}, enabled {w.isEnabled()}, on the screen "
                       f"{shown.getRect()} of {QRect(w.mapToGlobal(QPoint(0, 0)), w.size()).getRect()}")
        if w is win.table.view:
            closed, last = True, before
            break
    back = False
    if closed:                                     # Shift+Tab goes back the same way
        xt.key("Shift_L", "Tab")
        back = wait_until(lambda: app.focusWidget() is last, 10)
    r["focus"] = {"cycle_closed": closed, "bad": bad, "reached": sorted(reached), "order": seen,
                  "shift_tab_goes_back": back, "shift_tab_reached": name_of(app.focusWidget())}

    # shortcuts through the window manager
    win.table.view.setFocus()
    wait_until(lambda: app.focusWidget() is win.table.view, 10)
    xt.key("Control_L", "f")
    r["shortcuts"] = {"ctrl_f_focuses_filter": wait_until(lambda: app.focusWidget() is win.table.filter, 10)}
    xt.key("F1")
    opened = wait_until(lambda: getattr(win, "guide", None) is not None and win.guide.isVisible(), 60)
    guide = win.guide if opened else None
    active = opened and wait_until(lambda: guide.isActiveWindow(), 30)
    if active:
        xt.key("Escape")
    closed_esc = active and wait_until(lambda: not shiboken6.isValid(guide) or not guide.isVisible(), 30)
    r["shortcuts"]["f1_guide"] = {"opened": opened, "active": active, "closed_by_escape": closed_esc,
                                  "main_active_again": closed_esc and wait_until(win.isActiveWindow, 30)}
    print(MARK + json.dumps(r), flush=True)
    win.close()
    app.processEvents()
    return 0


if __name__ == "__main__":
    sys.exit(_child())
