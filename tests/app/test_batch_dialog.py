"""Quantize › Batch Export…: two presets of the demo written and verified from the studio; a cancel leaves
no partial file; presets that need an importance matrix are unavailable without one."""
from __future__ import annotations

import os

from PySide6.QtCore import Qt

from .conftest import open_model

STATE, VERIFY = 2, 6


def _rows(d) -> list[list[str]]:
    return [[d.table.item(r, c).text() for c in range(d.table.columnCount())] for r in range(d.table.rowCount())]


def _item(d, name):
    return next(d.model.item(r) for r in range(d.model.rowCount())
                if d.model.item(r).data(Qt.ItemDataRole.UserRole) == name)


def test_two_presets_written_and_verified(qtbot, window, demo_path, tmp_path, out_dir):
    win = window
    tmp_path = tmp_path / "out"                                 # made by the batch (settings.ini lives above)
    open_model(qtbot, win, demo_path)
    d = win.batch_dialog()
    qtbot.addWidget(d)
    assert not _item(d, "IQ2_XXS").isEnabled() and "importance matrix" in _item(d, "IQ2_XXS").toolTip()
    assert _item(d, "Q4_K_M").isEnabled() and _item(d, "current plan").isEnabled()
    d.folder.setText(str(tmp_path))
    d.check(["Q8_0", "Q4_0", "IQ2_XXS"])                      # IQ2_XXS stays unchecked: unavailable
    names = ["SmolLM2-135M-Instruct.Q4_1-Q4_0.gguf", "SmolLM2-135M-Instruct.Q4_1-Q8_0.gguf"]   # the list's order
    assert d.preview.text().split("<br>") == names and d.run_btn.isEnabled()
    d.template.setText("{model}.gguf")                        # both items would get one name
    assert "would both be written" in d.preview.text() and not d.run_btn.isEnabled()
    d.template.setText("{preset}.{type}.gguf")
    assert d.preview.text().split("<br>") == ["Q4_0.Q4_0.gguf", "Q8_0.Q8_0.gguf"]
    d.template.setText("{model}-{preset}.gguf")
    h = d.start()
    assert h is not None and not d.run_btn.isEnabled() and d.cancel_btn.isEnabled()
    fractions = []
    h.progress.connect(lambda ev: fractions.append(ev.fraction))
    qtbot.waitUntil(lambda: not d.running, timeout=600000)
    assert d.result is not None and d.result.ok, d.status.text()
    rows = _rows(d)
    assert [r[STATE] for r in rows] == ["verified", "verified"] and [r[VERIFY] for r in rows] == ["sound", "sound"]
    assert [r[1] for r in rows] == names
    for r, name in zip(d.result.items, names):
        path = os.path.join(str(tmp_path), name)
        assert r.path == path and os.path.getsize(path) == r.size == r.predicted
    assert sorted(os.listdir(tmp_path)) == sorted(names)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and d.progress.value() == 1000
    assert "2 of 2 files written and verified" in d.status.text()
    assert "exists" in d.preview.text() and not d.run_btn.isEnabled()       # a second run would overwrite
    d.overwrite.setChecked(True)
    assert d.run_btn.isEnabled()
    d.grab().save(os.path.join(out_dir, "batch_dialog.png"))
    assert win.last_error is None


def test_cancel_leaves_no_partial(qtbot, window, demo_path, tmp_path):
    win = window
    tmp_path = tmp_path / "out"
    open_model(qtbot, win, demo_path)
    d = win.batch_dialog()
    qtbot.addWidget(d)
    d.folder.setText(str(tmp_path))
    d.check(["Q8_0", "Q4_0"])
    h = d.start()
    seen = []
    h.progress.connect(lambda ev: seen.append(ev))
    qtbot.waitUntil(lambda: any(ev.stage == "quantize" for ev in seen), timeout=120000)
    d.cancel()                                                  # while the first file is being written
    qtbot.waitUntil(lambda: not d.running, timeout=60000)
    assert h.was_cancelled and d.result is None and max(ev.fraction for ev in seen) < 1.0
    folder = os.listdir(tmp_path)
    assert not [f for f in folder if f.endswith(".partial")]
    states = [r[STATE] for r in _rows(d)]
    assert states[-1] == "cancelled" and set(states) <= {"cancelled", "written", "verified"}
    # what stays is exactly the files finished (or written, then cancelled while verifying) before the cancel
    assert sorted(folder) == sorted(r[1] for r in _rows(d) if r[STATE] != "cancelled")
    assert "no partial file" in d.status.text()
    assert d.run_btn.isEnabled() and not d.cancel_btn.isEnabled()
    assert win.last_error is None


def test_presets_needing_an_imatrix_become_available_with_one(qtbot, window, demo_path, tmp_path):
    from core.imatrix import ImatrixData
    win = window
    open_model(qtbot, win, demo_path)
    d = win.batch_dialog()
    qtbot.addWidget(d)
    needs = [n for n in ("IQ2_XXS", "IQ1_S", "Q2_K_S") if not _item(d, n).isEnabled()]
    assert needs == ["IQ2_XXS", "IQ1_S", "Q2_K_S"]
    im = ImatrixData.random_for(win.s.source.tensors).save(str(tmp_path / "random.imatrix.gguf"))
    with qtbot.waitSignal(win.s.imatrixChanged, timeout=20000):
        win.load_imatrix(im)
    assert all(_item(d, n).isEnabled() and "Unavailable" not in _item(d, n).toolTip() for n in needs)
    d.check(["IQ2_XXS", "current plan"])
    assert [it.label for it in d.chosen()] == [win.s.plan.preset, "IQ2_XXS"]
