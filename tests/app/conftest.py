"""Studio test helpers: a window per test with its settings in a temporary file, and waits that
never block on a dialog (errors are observed through MainWindow.errorShown / last_error)."""
from __future__ import annotations

import gc
import os

import pytest

OUT_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "test-output", "app")
# Types previewed in these tests: every kernel family but the K-quants, whose first Numba
# compilation alone can take minutes on a cold cache (their own tests cover them).
FAST_TYPES = ["F16", "BF16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0"]
FAST_PRESETS = ["F16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0"]


@pytest.fixture(autouse=True)
def _collect_on_the_gui_thread():
    """Qt objects caught in reference cycles (a window and the lambdas connected to its signals) are
    freed here, on the GUI thread, right after the test. Left to the cyclic garbage collector they
    would be destroyed later on whichever thread happens to trigger a collection -- in a later core
    test, a worker thread of a chunk loop -- and Qt warns (or worse) about timers touched from
    another thread. (The studio itself runs no Python thread in the GUI process.)"""
    yield
    gc.collect()


@pytest.fixture(autouse=True)
def _settings(tmp_path):
    from app import theme
    theme.use_settings_file(str(tmp_path / "settings.ini"))
    yield
    theme.use_settings_file(None)


@pytest.fixture
def window(qtbot):
    from app.main_window import MainWindow

    win = MainWindow(follow_system_theme=False)
    win.s.candidate_types = FAST_TYPES
    win.s.frontier_presets = FAST_PRESETS
    # unsaved plan edits: tests that do not ask about it discard them (a modal question would wait forever)
    win.ask_unsaved = lambda action, can_carry=False: "discard"
    qtbot.addWidget(win)
    win.resize(1500, 940)
    win.show()
    yield win
    win.close()


def open_model(qtbot, win, path, timeout=20000):
    with qtbot.waitSignal(win.s.modelOpened, timeout=timeout):
        win.open_path(path)
    assert win.last_error is None, win.last_error


def wait_stats(qtbot, win, name, timeout=30000):
    qtbot.waitUntil(lambda: name in win.s.stats, timeout=timeout)


@pytest.fixture(scope="session")
def out_dir():
    os.makedirs(OUT_DIR, exist_ok=True)
    return os.path.abspath(OUT_DIR)
