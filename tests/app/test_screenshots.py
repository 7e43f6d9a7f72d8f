"""Screenshots of the main views (PNG artifacts under test-output/app/), light and dark."""
from __future__ import annotations

import os

from PySide6.QtGui import QImage

from .conftest import FAST_TYPES, open_model, wait_stats

NAME = "blk.0.ffn_down.weight"


def _distinct_colours(path: str) -> int:
    img = QImage(path)
    assert not img.isNull() and img.width() > 100 and img.height() > 100
    step = max(1, img.width() // 120)
    return len({img.pixel(x, y) for x in range(0, img.width(), step) for y in range(0, img.height(), step)})


def test_screenshots_of_the_main_views(qtbot, window, demo_path, out_dir):
    win = window
    open_model(qtbot, win, demo_path)
    win.table.select(NAME)
    wait_stats(qtbot, win, NAME)
    qtbot.waitUntil(lambda: len(win.preview.metrics) == len(FAST_TYPES), timeout=60000)
    qtbot.waitUntil(lambda: win.hist.overlay is not None, timeout=30000)
    qtbot.waitUntil(lambda: len(win.s.stats) >= 120, timeout=60000)
    win.heatmap.redraw(force=True)
    win.docks["preview"].raise_()
    shots = {}
    for dark in (False, True):
        win.set_dark(dark)
        suffix = "-dark" if dark else ""
        for i, tab in enumerate(("histogram", "channels", "layers")):
            win.plots.setCurrentIndex(i)
            qtbot.wait(50)
            shots[f"window-{tab}{suffix}"] = win
        for key in ("plan", "model", "preview", "quantize"):
            win.docks[key].raise_()
            qtbot.wait(20)
            shots[f"dock-{key}{suffix}"] = win.docks[key].widget()
            path = os.path.join(out_dir, f"dock-{key}{suffix}.png")
            assert win.docks[key].widget().grab().save(path)
        win.docks["preview"].raise_()
        for i, tab in enumerate(("histogram", "channels", "layers")):
            win.plots.setCurrentIndex(i)
            qtbot.wait(50)
            path = os.path.join(out_dir, f"window-{tab}{suffix}.png")
            assert win.grab().save(path)
    for name in shots:
        path = os.path.join(out_dir, name + ".png")
        assert os.path.getsize(path) > 5000
        assert _distinct_colours(path) > 20, name            # a real picture, not a blank surface
    win.set_dark(False)
