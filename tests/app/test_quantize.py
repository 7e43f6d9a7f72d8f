"""Quantize from the studio: a run to the end, a cancelled run, a Hugging Face folder."""
from __future__ import annotations

import os

from core.models import open_model as core_open

from .conftest import open_model


def _no_output_left(path):
    folder = os.path.dirname(path)
    return not [f for f in os.listdir(folder) if f.startswith(os.path.basename(path))]


def test_quantize_to_the_end(qtbot, window, synthetic_path, tmp_path):
    win = window
    open_model(qtbot, win, synthetic_path)
    with qtbot.waitSignal(win.s.planChanged, timeout=5000):
        win.plan_panel.preset.setCurrentText("Q4_0")
    with qtbot.waitSignal(win.s.planChanged, timeout=5000):
        win.s.set_types(["blk.0.ffn_down.weight"], "Q8_0")
    out = str(tmp_path / "synthetic.Q4_0.gguf")
    win.quantize.set_output(out)
    seen = []
    h = win.run_quantize()
    assert h is not None and not win.quantize.run_btn.isEnabled() and win.quantize.cancel_btn.isEnabled()
    h.progress.connect(lambda ev: seen.append(ev.fraction))
    with qtbot.waitSignal(win.quantize.done, timeout=60000) as sig:
        pass
    res = sig.args[0]
    assert res.paths == [out] and os.path.getsize(out) == res.size == win.s.planned_bytes()
    with core_open(out) as q:
        types = {t.name: t.dtype for t in q.tensors}
    assert types == {e.name: e.type for e in win.s.plan.entries}
    assert types["blk.0.ffn_down.weight"] == "Q8_0" and types["blk.1.ffn_down.weight"] == "Q4_0"
    assert win.quantize.overall.value() == 100 and seen and all(0 <= f <= 1 for f in seen)
    assert "Done" in win.quantize.summary.text() and win.quantize.show_btn.isEnabled()
    log = win.quantize.log.toPlainText()
    assert "blk.1.ffn_down.weight" in log and "done:" in log
    qtbot.waitUntil(lambda: win.quantize.run_btn.isEnabled(), timeout=5000)
    assert win.last_error is None


def test_cancel_midway_leaves_nothing(qtbot, window, demo_path, tmp_path):
    win = window
    open_model(qtbot, win, demo_path)
    out = str(tmp_path / "demo.Q8_0.gguf")
    win.quantize.set_output(out)
    h = win.run_quantize()
    fractions = []

    def on_progress(ev):
        fractions.append(ev.fraction)
        if ev.fraction > 0.1:
            win.quantize.cancel_btn.click()

    h.progress.connect(on_progress)
    with qtbot.waitSignal(win.quantize.stopped, timeout=60000) as sig:
        pass
    assert sig.args == ["cancelled"]
    assert max(fractions) < 1.0                                  # stopped before the end
    assert _no_output_left(out)
    assert "Cancelled" in win.quantize.summary.text() and not win.quantize.show_btn.isEnabled()
    assert win.last_error is None                               # a cancel is not an error
    qtbot.waitUntil(lambda: win.quantize.run_btn.isEnabled(), timeout=5000)


def test_quantize_refuses_to_overwrite_the_input(qtbot, window, synthetic_path):
    win = window
    open_model(qtbot, win, synthetic_path)
    win.quantize.set_output(synthetic_path)
    with qtbot.waitSignal(win.errorShown, timeout=5000) as sig:
        assert win.run_quantize() is None
    assert "overwrite" in sig.args[1]
    assert os.path.getsize(synthetic_path) > 0


def test_hugging_face_folder(qtbot, window, tmp_path):
    from tests.core.convert.hf_fixtures import synthetic_checkpoint

    folder = str(tmp_path / "qwen2-tiny")
    synthetic_checkpoint(folder, "Qwen2ForCausalLM")
    win = window
    open_model(qtbot, win, folder)
    src = win.s.source
    assert win.s.note == ""                                     # converted: GGUF names and metadata
    assert "blk.0.attn_q.weight" in src and src.architecture == "qwen2"
    assert win.summary.values["Architecture"].text() == "qwen2"
    qtbot.waitUntil(lambda: len(win.s.stats) == len(src.tensors), timeout=30000)
    out = str(tmp_path / "qwen2-tiny.Q8_0.gguf")
    win.quantize.set_output(out)
    win.run_quantize()
    with qtbot.waitSignal(win.quantize.done, timeout=60000) as sig:
        pass
    with core_open(sig.args[0].paths[0]) as q:
        assert q.architecture == "qwen2" and len(q.tensors) == len(src.tensors)
        assert q.tensor("blk.0.attn_q.weight").dtype == "Q8_0"


def test_clicking_through_tensors_while_quantizing(qtbot, window, demo_path, tmp_path):
    """The bench's scenario as a test: statistics, previews and a quantization run in the worker
    processes while the user selects one tensor after another; every view follows, the job ends."""
    win = window
    open_model(qtbot, win, demo_path)
    out = str(tmp_path / "demo.Q8_0.gguf")
    win.quantize.set_output(out)
    win.run_quantize()
    names = [f"blk.{i}.{k}.weight" for i in range(0, 30, 5) for k in ("ffn_down", "attn_q")]
    for name in names:
        assert win.table.select(name)
        qtbot.wait(60)
    last = names[-1]
    assert win.current == last
    qtbot.waitUntil(lambda: win.hist.stats is win.s.stats.get(last) is not None, timeout=30000)
    qtbot.waitUntil(lambda: win.preview.name == last and win.preview.table.rowCount() > 0, timeout=30000)
    qtbot.waitUntil(lambda: win.quantize.result is not None, timeout=120000)
    assert os.path.getsize(out) == win.quantize.result.size == win.s.planned_bytes()


def test_an_existing_output_is_replaced_only_when_confirmed(qtbot, window, synthetic_path, tmp_path):
    win = window
    open_model(qtbot, win, synthetic_path)
    out = tmp_path / "exists.gguf"
    out.write_bytes(b"keep me")
    asked = []
    win.quantize.confirm_overwrite = lambda p: asked.append(p) or False
    win.quantize.set_output(str(out))
    assert win.run_quantize() is None and asked == [str(out)] and out.read_bytes() == b"keep me"
    win.quantize.confirm_overwrite = lambda p: True
    h = win.run_quantize()
    with qtbot.waitSignal(h.finished, timeout=120000):
        pass
    assert out.read_bytes()[:4] == b"GGUF"


def test_default_output_folder_is_the_users(qtbot, window, demo_path, synthetic_path):
    """Beside the model when that is the user's folder; never inside the Python environment (the demo
    model lives there) -- and it follows the model that is open."""
    import sys

    win = window
    open_model(qtbot, win, demo_path)
    out = win.quantize.output.text()
    assert not os.path.realpath(out).startswith(os.path.realpath(sys.prefix) + os.sep)
    assert os.path.dirname(out) in (os.path.expanduser("~"), os.path.join(os.path.expanduser("~"), "Documents"))
    open_model(qtbot, win, synthetic_path)
    assert os.path.dirname(win.quantize.output.text()) == os.path.dirname(synthetic_path)


def test_progress_labels_are_reset_after_a_run(qtbot, window, synthetic_path, tmp_path):
    win = window
    open_model(qtbot, win, synthetic_path)
    win.quantize.set_output(str(tmp_path / "labels.gguf"))
    h = win.run_quantize()
    with qtbot.waitSignal(h.finished, timeout=120000):
        pass
    assert win.quantize.tensor_label.text() == "" and win.quantize.eta.text() == ""
