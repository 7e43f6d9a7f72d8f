"""The studio's Compare view, "Use the mix of a GGUF", the automatic check after a run and the editable
metadata browser, on real files."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from PySide6.QtCore import Qt

from core.models import open_model

from .conftest import open_model as open_in_studio


def _quants(folder, source: str, stem: str, option: str, choices) -> list[str]:
    """``quant-studio quantize source folder/stem.C.gguf option C`` for each choice C; the files' paths."""
    out = []
    for c in choices:
        p = str(folder / f"{stem}.{c}.gguf")
        r = subprocess.run([sys.executable, "-m", "core.cli", "quantize", source, p, option, c],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        out.append(p)
    return out


@pytest.fixture(scope="module")
def two_quants(tmp_path_factory, synthetic_path):
    return _quants(tmp_path_factory.mktemp("two"), synthetic_path, "syn", "--preset", ("Q4_K_M", "Q6_K"))


def test_compare_view(qtbot, window, synthetic_path, two_quants, out_dir):
    win = window
    open_in_studio(qtbot, win, synthetic_path)
    d = win.compare_dialog(*two_quants)
    assert d.with_source.isChecked()
    d.start()
    qtbot.waitUntil(lambda: d.result is not None, timeout=60000)
    a, b = open_model(two_quants[0]), open_model(two_quants[1])
    want = sorted(t.name for t in a.tensors if t.dtype != b.tensor(t.name).dtype)
    rows = d.differing_rows()
    assert sorted(d.table.item(r, 1).text() for r in rows) == want
    assert d.table.item(rows[0], 1).background().color().alpha() > 0            # highlighted
    assert "general.file_type" in d.meta.toPlainText()
    assert all(t.a_rel_rmse is not None and t.b_rel_rmse is not None for t in d.result.tensors)
    d.table.selectRow(rows[0])
    qtbot.waitUntil(lambda: d.histograms is not None, timeout=30000)
    assert d.histograms["name"] == d.table.item(rows[0], 1).text() and len(d.histograms["counts"]) == 3
    assert all(c is not None and c.sum() > 0 for c in d.histograms["counts"])
    d.only_diff.setChecked(True)
    assert sum(not d.table.isRowHidden(r) for r in range(d.table.rowCount())) == len(want)
    d.only_diff.setChecked(False)
    assert d.grab().save(os.path.join(out_dir, "compare.png"))
    d.close()


@pytest.fixture(scope="module")
def demo_quants(tmp_path_factory, demo_path):
    """Q8_0 and Q4_0 of the demo model (a model with a vocabulary: the forward pass runs on it)."""
    return _quants(tmp_path_factory.mktemp("demo-two"), demo_path, "demo", "--type", ("Q8_0", "Q4_0"))


def test_compare_view_evaluates_both_files(qtbot, window, demo_path, demo_quants, out_dir):
    """Evaluate: a cancel leaves the view usable; then both files' PPL/KLD against the open model beside the
    totals, the Q8_0 file closer to it than the Q4_0; a Compare afterwards carries the figures."""
    win = window
    open_in_studio(qtbot, win, demo_path)
    d = win.compare_dialog(*demo_quants)
    assert d.eval_btn.isEnabled() and not d.eval_cancel.isEnabled()
    d.with_source.setChecked(False)                     # no source: nothing to evaluate against
    assert not d.eval_btn.isEnabled()
    d.with_source.setChecked(True)
    d.eval_ctx.setValue(256)
    d.eval_chunks.setValue(8)
    qtbot.mouseClick(d.eval_btn, Qt.MouseButton.LeftButton)
    assert not d.eval_btn.isEnabled() and d.eval_cancel.isEnabled()
    qtbot.waitUntil(lambda: d.eval_progress.value() > 0, timeout=300000)
    qtbot.mouseClick(d.eval_cancel, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: d.eval_btn.isEnabled(), timeout=120000)
    assert "cancelled" in d.eval_figures.text() and d.evaluation is None and not d.eval_cancel.isEnabled()

    d.eval_ctx.setValue(64)
    d.eval_chunks.setValue(2)
    qtbot.mouseClick(d.eval_btn, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: d.evaluation is not None, timeout=600000)
    ev = d.evaluation
    assert (ev.a, ev.b, ev.n_ctx, ev.n_chunk) == (demo_quants[0], demo_quants[1], 64, 2)
    assert [r.label for r in ev.results] == ["demo.Q8_0.gguf", "demo.Q4_0.gguf"]
    ka, kb = ev.result("A").kld, ev.result("B").kld
    assert 0 < ka.kld_mean < kb.kld_mean and ka.same_top_p > kb.same_top_p and ev.closer == "A"
    assert ka.ppl_base == kb.ppl_base == ev.base[0]                 # one pass: one base
    text = d.eval_figures.text()
    for k in (ka, kb):
        assert f"{k.ppl:.4f}" in text and f"{k.kld_mean:.5f} ± {k.kld_err:.5f}" in text
    assert f"{ev.base[0]:.4f}" in text and "<b>A</b> is closer" in text

    d.start()                                                          # the view still compares
    qtbot.waitUntil(lambda: d.result is not None, timeout=120000)
    assert d.result.evaluation is ev and d.eval_figures.text() == text
    assert d.grab().save(os.path.join(out_dir, "compare-eval.png"))
    d.close()


def test_use_the_mix_of_a_gguf(qtbot, window, synthetic_path, two_quants):
    win = window
    open_in_studio(qtbot, win, synthetic_path)
    with qtbot.waitSignal(win.s.planChanged, timeout=20000):
        win.use_recipe(two_quants[0])
    want = {t.name: t.dtype for t in open_model(two_quants[0]).tensors}
    assert {e.name: e.type for e in win.s.plan.entries} == want
    assert all("recipe" in e.reason for e in win.s.plan.entries if e.quantize)
    with qtbot.waitSignal(win.errorShown, timeout=20000) as sig:
        win.use_recipe(synthetic_path + ".missing")
    assert sig.args[0] == "Cannot use that file's mix"


def test_every_run_is_verified(qtbot, window, synthetic_path, tmp_path):
    win = window
    open_in_studio(qtbot, win, synthetic_path)
    win.s.set_preset("Q5_0")
    out = str(tmp_path / "run.gguf")
    win.quantize.set_output(out)
    with qtbot.waitSignal(win.s.verified, timeout=120000) as sig:
        win.run_quantize()
    (report,) = sig.args[0]
    assert report.ok and report.path == out and len(report.tensors) == len(win.s.source.tensors)
    assert "verified: sound" in win.quantize.log.toPlainText()


def test_edit_metadata_and_save_as(qtbot, window, two_quants, tmp_path):
    win = window
    open_in_studio(qtbot, win, two_quants[1])
    p = win.summary
    assert not p.save_btn.isEnabled()
    p.set_value("general.name", "Renamed in the studio")
    p.set_value("llama.context_length", "2048")
    assert p.save_btn.isEnabled() and "2 edited keys" in p.edits_label.text()
    out = str(tmp_path / "edited.gguf")
    with qtbot.waitSignal(p.saved, timeout=60000):
        p.save_as(out)
    a, b = open_model(two_quants[1]), open_model(out)
    assert b.metadata["general.name"] == "Renamed in the studio" and b.metadata["llama.context_length"] == 2048
    assert all(a.raw(t.name).tobytes() == b.raw(t.name).tobytes() for t in a.tensors)
    p.set_value("llama.context_length", "many")                      # wrong type: a dialog, nothing written
    with qtbot.waitSignal(win.errorShown, timeout=10000) as sig:
        assert p.save_as(str(tmp_path / "bad.gguf")) is None
    assert "not a uint32" in sig.args[1] and not os.path.exists(tmp_path / "bad.gguf")
