"""Bad input gives a dialog naming the problem and never takes the window down."""
from __future__ import annotations

import struct

from PySide6.QtWidgets import QMessageBox

from .conftest import open_model


def _dialogs(win):
    return [b for b in win.findChildren(QMessageBox) if b.isVisible()]


def test_corrupt_files_give_a_dialog(qtbot, window, synthetic_path, tmp_path):
    win = window
    open_model(qtbot, win, synthetic_path)
    name = win.s.source.name
    bad_gguf = tmp_path / "broken.gguf"
    bad_gguf.write_bytes(b"GGUF" + struct.pack("<I", 3) + b"\xff" * 40)
    bad_st = tmp_path / "broken.safetensors"
    bad_st.write_bytes(struct.pack("<Q", 10_000) + b"{}")
    not_model = tmp_path / "notes.txt"
    not_model.write_text("hello")
    for path in (bad_gguf, bad_st, not_model, tmp_path / "missing.gguf"):
        with qtbot.waitSignal(win.errorShown, timeout=10000) as sig:
            win.open_path(str(path))
        title, text = sig.args
        assert title == "Cannot open model" and str(path) in text
        assert win.last_error == (title, text)
        assert _dialogs(win) and _dialogs(win)[-1].text() == text      # shown, non-blocking
        for box in _dialogs(win):
            box.close()
    # the window still holds the model it had, and works
    assert win.s.source.name == name and win.windowTitle().startswith(name + " — ")
    assert win.table.model.rowCount() == len(win.s.source.tensors)


def test_drop_and_bad_imatrix(qtbot, window, synthetic_path, tmp_path):
    win = window
    open_model(qtbot, win, synthetic_path)
    bad = tmp_path / "imatrix.dat"
    bad.write_bytes(b"\x05\x00\x00\x00garbage")
    with qtbot.waitSignal(win.errorShown, timeout=10000) as sig:
        win.open_dropped(str(bad))                     # .dat dropped on the window: an imatrix
    assert sig.args[0] == "Cannot load imatrix" and str(bad) in sig.args[1]
    assert win.s.imatrix is None
    # a good imatrix (made by core for this model) loads, and the plan and previews use it
    from core.imatrix import ImatrixData
    good = str(tmp_path / "good.imatrix.gguf")
    ImatrixData.random_for(win.s.source.tensors).save(good)
    h = win.load_imatrix(good)
    with qtbot.waitSignal(h.finished, timeout=10000):
        pass
    assert win.s.imatrix is not None and "good.imatrix.gguf" in win.plan_panel.imatrix_label.text()
    assert win.s.plan.rules.has_imatrix is True
    name = "blk.0.attn_q.weight"
    win.table.select(name)
    qtbot.waitUntil(lambda: bool(win.preview.metrics) and win.preview.metrics[0].weighted, timeout=30000)
    assert win.preview.table.item(0, 8).text().endswith("%")         # imatrix-weighted error column


def _drop(win, path):
    """A drag entering the window, then the drop (what a file manager does)."""
    from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
    from PySide6.QtGui import QDragEnterEvent, QDropEvent
    from PySide6.QtWidgets import QApplication

    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(path)])
    args = (Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
    enter = QDragEnterEvent(QPoint(50, 50), *args)          # Qt: QDragEnterEvent takes a QPoint
    QApplication.sendEvent(win, enter)
    assert enter.isAccepted()
    QApplication.sendEvent(win, QDropEvent(QPointF(50, 50), *args))


def test_dropping_a_file_on_the_window(qtbot, window, synthetic_path, tmp_path):
    win = window
    with qtbot.waitSignal(win.s.modelOpened, timeout=20000):
        _drop(win, synthetic_path)
    assert win.s.path == synthetic_path
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00")
    with qtbot.waitSignal(win.errorShown, timeout=10000):
        _drop(win, str(bad))
    assert win.s.path == synthetic_path                  # the open model stays


def test_imatrix_follows_the_model_that_is_opened(qtbot, window, synthetic_path, synthetic_f16_path, demo_path,
                                                  tmp_path):
    """Opening another model re-matches the loaded imatrix: kept (and said so) when it fits, dropped
    visibly when it does not; the label, the plan, the copied command and the plan JSON agree."""
    import json

    from core.imatrix import ImatrixData

    win = window
    open_model(qtbot, win, synthetic_path)
    good = str(tmp_path / "syn.imatrix.gguf")
    ImatrixData.random_for(win.s.source.tensors).save(good)
    with qtbot.waitSignal(win.load_imatrix(good).finished, timeout=10000):
        pass
    with qtbot.waitSignal(win.s.imatrixCarried, timeout=20000) as sig:         # same tensors (F16 copy)
        win.open_path(synthetic_f16_path)
    assert sig.args[0] is True and "tensors matched" in sig.args[1]
    qtbot.waitUntil(lambda: win.s.path == synthetic_f16_path, timeout=20000)
    assert win.s.imatrix is not None and "syn.imatrix.gguf" in win.plan_panel.imatrix_label.text()
    assert "--imatrix" in win.cli_command() and win.s.plan.rules.has_imatrix
    plan_file = str(tmp_path / "plan.json")
    assert win.save_plan(plan_file)
    assert json.load(open(plan_file))["rules"]["imatrix_path"] == good
    with qtbot.waitSignal(win.s.imatrixCarried, timeout=20000) as sig:         # another model: dropped
        win.open_path(demo_path)
    assert sig.args[0] is False
    qtbot.waitUntil(lambda: win.s.path == demo_path, timeout=20000)
    assert win.s.imatrix is None and win.plan_panel.imatrix_label.text() == "none"
    assert "--imatrix" not in win.cli_command() and not win.s.plan.rules.has_imatrix


def test_a_shard_opens_the_whole_split_model(qtbot, window, demo_path, tmp_path):
    import subprocess
    import sys

    out = str(tmp_path / "demo.gguf")
    r = subprocess.run([sys.executable, "-m", "core.cli", "quantize", demo_path, out, "--type", "Q8_0",
                        "--split-max-size", "40M"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    shard = sorted(str(p) for p in tmp_path.iterdir() if p.name.endswith(".gguf"))[1]
    open_model(qtbot, window, shard)
    assert len(window.s.source.tensors) == 272 and window.s.source.n_layers == 30
    assert window.table.model.rowCount() >= 272
