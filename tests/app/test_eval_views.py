"""Calibrate and Evaluate in the studio, on the demo model: an imatrix computed and loaded into the plan;
the current plan (simulated), presets and a GGUF file measured against the open model, with the pictures
and the prompt box."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from PySide6.QtCore import Qt

from .conftest import open_model as open_in_studio


def test_calibrate_loads_the_imatrix(qtbot, window, demo_path, prose_path, tmp_path):
    win = window
    open_in_studio(qtbot, win, demo_path)
    d = win.calibrate_dialog()
    d.text.edit.setText(prose_path)
    d.ctx.setValue(64)
    d.chunks.setValue(2)
    out = str(tmp_path / "demo.imatrix.gguf")
    d.output.setText(out)
    d.start()
    qtbot.waitUntil(lambda: win.s.imatrix_path == out, timeout=300000)
    assert os.path.exists(out) and win.s.imatrix is not None
    assert win.s.rules.has_imatrix and win.s.rules.imatrix_path == out
    assert "210 tensors" in d.status.text() and d.run_btn.isEnabled()
    w = win.s.importance("blk.0.ffn_down.weight")
    assert w is not None and w.shape == (1536,) and np.all(w >= 0)
    d.close()


def test_evaluate_plan_presets_and_a_file(qtbot, window, demo_path, prose_path, tmp_path, out_dir):
    win = window
    open_in_studio(qtbot, win, demo_path)
    q8 = str(tmp_path / "demo-q8_0.gguf")
    r = subprocess.run([sys.executable, "-m", "core.cli", "quantize", demo_path, q8, "--type", "Q8_0"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    d = win.evaluate_dialog()
    d.text.edit.setText(prose_path)
    d.ctx.setValue(64)
    d.chunks.setValue(2)
    d.set_presets({"Q4_0", "Q8_0"})
    d.add_file(q8)
    d.start()
    qtbot.waitUntil(lambda: d.data is not None, timeout=600000)
    labels = [d.table.item(r, 0).text() for r in range(d.table.rowCount())]
    assert labels == ["current plan", "Q4_0", "Q8_0", "demo-q8_0.gguf"]
    res = {e.label: e for e in d.data["results"]}
    # the Q8_0 preset simulated on the open model and the Q8_0 file written from it are the same weights
    assert res["Q8_0"].kld.kld_mean == np.float64(res["demo-q8_0.gguf"].kld.kld_mean) or \
        abs(res["Q8_0"].kld.kld_mean - res["demo-q8_0.gguf"].kld.kld_mean) < 1e-6
    assert res["Q4_0"].kld.kld_mean > res["Q8_0"].kld.kld_mean
    assert all(e.kld_per_token.shape == (2, 64 - 1 - 32) for e in res.values())
    d.table.selectRow(1)
    assert "<span" in d.text_view.toHtml() and "Q4_0" in d.dist_plot.getPlotItem().titleLabel.text
    assert len(d.size_plot.getPlotItem().listDataItems()) >= 3        # presets, file, current plan
    # the Q8_0 preset and the Q8_0 file sit on one point: one label names both, none is drawn over another
    import pyqtgraph as pg
    texts = [i.toPlainText() for i in d.size_plot.getPlotItem().items if isinstance(i, pg.TextItem)]
    assert sum("Q8_0" in t.split(", ") for t in texts) == 1
    assert any("Q8_0" in t.split(", ") and "demo-q8_0.gguf" in t.split(", ") for t in texts), texts
    d.prompt.setText("The capital of France is")
    d.gen_tokens.setValue(6)
    d.generate()
    qtbot.waitUntil(lambda: d.gen_btn.isEnabled(), timeout=300000)
    assert not d.base_out.toPlainText().startswith("Cannot continue"), d.base_out.toPlainText()
    assert d.base_out.toPlainText().count("The capital of France is") == 1
    assert d.cand_out.toPlainText().startswith("[Q4_0]")
    assert d.grab().save(os.path.join(out_dir, "evaluate.png"))
    d.close()


def test_evaluate_cancel(qtbot, window, demo_path, prose_path):
    win = window
    open_in_studio(qtbot, win, demo_path)
    d = win.evaluate_dialog()
    d.text.edit.setText(prose_path)
    d.ctx.setValue(256)
    d.chunks.setValue(8)
    d.start()
    qtbot.waitUntil(lambda: d.progress.value() > 0, timeout=120000)
    d.cancel()
    qtbot.waitUntil(lambda: d.run_btn.isEnabled(), timeout=60000)
    assert d.summary.text() == "Cancelled." and d.data is None
    d.close()


def test_types_and_presets_needing_an_imatrix_are_unavailable_until_one_is_loaded(qtbot, window, synthetic_path,
                                                                                tmp_path):
    """IQ2_XXS & co. (and presets that use them, and Q2_K_S) are refused by llama.cpp without an imatrix:
    the studio shows them disabled, saying why, and enables them once an imatrix is loaded."""
    from core.imatrix import ImatrixData
    from core.models import open_model as core_open

    win = window
    open_in_studio(qtbot, win, synthetic_path)
    combo = win.plan_panel.preset
    item = combo.model().item(combo.findText("Q2_K_S"))
    assert not item.isEnabled() and "importance matrix" in item.toolTip()
    assert combo.model().item(combo.findText("Q4_K_M")).isEnabled()
    assert not combo.model().item(combo.findText("IQ3_XXS")).isEnabled()
    # the per-tensor type editor
    from app.tensor_table import TypeDelegate
    delegate = TypeDelegate(win.table.view, win.s)
    t = win.table
    type_col = next(c for c in range(t.model.columnCount()) if t.model.headerData(c, Qt.Orientation.Horizontal) == "Type")
    idx = t.model.index(t.model.row_of("blk.0.ffn_down.weight"), type_col)
    editor = delegate.createEditor(win.table.view.viewport(), None, idx)
    states = {editor.itemText(i): editor.model().item(i).isEnabled() for i in range(editor.count())}
    assert states["IQ3_XXS"] is False and states["IQ4_XS"] is True and states["Q4_K"] is True
    # with an imatrix everything is available
    im = ImatrixData.random_for(core_open(synthetic_path).tensors, n_tokens=64, seed=1)
    path = im.write_gguf(str(tmp_path / "im.gguf"))
    with qtbot.waitSignal(win.s.imatrixChanged, timeout=20000):
        win.s.load_imatrix(path)
    assert combo.model().item(combo.findText("Q2_K_S")).isEnabled()
    editor = delegate.createEditor(win.table.view.viewport(), None, idx)
    assert all(editor.model().item(i).isEnabled() for i in range(editor.count()))


def test_fit_a_budget_replaces_the_plan(qtbot, window, synthetic_path):
    """Quantize › Fit a Budget… (fast mode on the synthetic model): the plan gets a type per tensor whose
    predicted size is within the target, each reason saying why; Undo brings the preset's plan back."""
    win = window
    open_in_studio(qtbot, win, synthetic_path)
    before = win.s.planned_bytes()
    d = win.budget_dialog()
    target = int(before * 0.8)
    d.value.setText(str(target))
    d.fast.setChecked(True)
    with qtbot.waitSignal(win.s.planChanged, timeout=600000):
        d.start()
    qtbot.waitUntil(lambda: d.result is not None and win.s.plan is d.result["plan"], timeout=600000)
    size = win.s.planned_bytes()
    assert 0.99 * target <= size <= target
    assert all(e.reason.startswith("budget") for e in win.s.plan.entries if e.quantize)
    assert win.s.imatrix is not None
    win.s.undo()
    assert win.s.planned_bytes() == before
    d.close()
