"""Open the demo model, inspect a tensor, edit the plan, see the preview follow."""
from __future__ import annotations

import json
import shlex

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication

from app import tensor_table as tt

from .conftest import FAST_TYPES, open_model, wait_stats

NAME = "blk.0.ffn_down.weight"


def _cell(win, name, col):
    m = win.table.model
    return m.index(m.row_of(name), col)


def test_open_inspect_edit_preview(qtbot, window, demo_path):
    win = window
    open_model(qtbot, win, demo_path)
    src = win.s.source
    assert win.windowTitle() == f"{src.name} — Quant Studio"
    assert win.table.model.rowCount() == len(src.tensors) == 272
    assert win.summary.values["Architecture"].text() == "llama"
    assert win.summary.tree.topLevelItemCount() == len(src.metadata)
    assert win.recent_files()[0].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")

    # select a tensor: statistics (ahead of the background pass), histogram, candidates
    assert win.table.select(NAME)
    assert win.current == NAME
    wait_stats(qtbot, win, NAME)
    st = win.s.stats[NAME]
    assert _cell(win, NAME, tt.C_STD).data() == f"{st.std:.3g}"
    qtbot.waitUntil(lambda: win.hist.stats is st and win.channels.stats is st, timeout=5000)
    qtbot.waitUntil(lambda: win.preview.table.rowCount() == len(FAST_TYPES)
                    and all(m.exact for m in win.preview.metrics), timeout=60000)
    shown = [win.preview.table.item(r, 0).text() for r in range(win.preview.table.rowCount())]
    assert set(shown) == set(FAST_TYPES)
    assert all(win.preview.table.item(r, 9).text() == "all rows" for r in range(len(shown)))
    errs = {m.type: m.rel_rmse for m in win.preview.metrics}
    assert errs["Q4_0"] > errs["Q5_0"] > errs["Q8_0"] > errs["F16"] > 0      # fewer bits, more error
    qtbot.waitUntil(lambda: win.hist.overlay is not None, timeout=20000)     # dequantized histogram
    assert win.hist.overlay_type == win.s.plan.entry(NAME).type

    # the plan's predicted errors fill in; totals shown
    qtbot.waitUntil(lambda: NAME in win.s.planned_errors, timeout=60000)
    before_size = win.s.planned_bytes()
    before_err = win.s.planned_errors[NAME].metrics.rel_rmse
    qtbot.waitUntil(lambda: win.preview.t["Predicted size"].text() != "–", timeout=5000)   # totals: throttled
    qtbot.waitUntil(lambda: win.preview.t["Est. rel. RMSE"].text().endswith("%"), timeout=30000)
    n = sum(e.quantize for e in win.s.plan.entries)
    qtbot.waitUntil(lambda: win.preview.t["Estimated"].text() == f"{n} / {n} quantized tensors", timeout=60000)

    # change the type in the table (the combo delegate's path) -> plan, preview, totals follow
    idx = win.table.proxy.mapFromSource(_cell(win, NAME, tt.C_PLANNED))
    assert idx.flags() & Qt.ItemFlag.ItemIsEditable
    with qtbot.waitSignal(win.s.planChanged, timeout=5000):
        assert win.table.proxy.setData(idx, "Q4_0")
    e = win.s.plan.entry(NAME)
    assert (e.type, e.reason) == ("Q4_0", "manual edit")
    assert win.s.rules.manual_types == {NAME: "Q4_0"}
    assert idx.data() == "Q4_0"
    assert win.s.planned_bytes() < before_size
    qtbot.waitUntil(lambda: win.s.planned_errors[NAME].type == "Q4_0", timeout=30000)
    assert win.s.planned_errors[NAME].metrics.rel_rmse > before_err
    assert _cell(win, NAME, tt.C_ERR).data().endswith("%")
    bold = [win.preview.table.item(r, 0).text() for r in range(win.preview.table.rowCount())
            if win.preview.table.item(r, 0).font().bold()]
    assert bold == ["Q4_0"]                                                  # planned row highlighted
    qtbot.waitUntil(lambda: win.hist.overlay_type == "Q4_0", timeout=20000)

    # a norm cannot be edited
    assert not (win.table.proxy.mapFromSource(_cell(win, "blk.0.attn_norm.weight", tt.C_PLANNED)).flags()
                & Qt.ItemFlag.ItemIsEditable)


def test_selection_rules_plan_files_cli(qtbot, window, demo_path, tmp_path):
    win = window
    open_model(qtbot, win, demo_path)
    pp = win.plan_panel

    # preset selector offers every core preset; choosing one rebuilds the plan
    from core.presets import PRESETS
    assert [pp.preset.itemText(i) for i in range(pp.preset.count())] == list(PRESETS)
    with qtbot.waitSignal(win.s.planChanged, timeout=5000):
        pp.preset.setCurrentText("Q4_0")
    assert win.s.plan.preset == "Q4_0" and win.s.plan.entry("blk.3.attn_q.weight").type == "Q4_0"

    # multi-selection type change
    win.table.filter.setText("blk.1.attn_")
    assert win.table.proxy.rowCount() == 5
    win.table.view.selectAll()
    sel = win.table.selected()
    assert len(sel) == 5
    pp.sel_type.setCurrentText("Q5_1")
    with qtbot.waitSignal(win.s.planChanged, timeout=5000):
        pp.sel_apply.click()
    assert all(win.s.plan.entry(n).type == "Q5_1" for n in sel if "norm" not in n)
    assert win.s.plan.entry("blk.1.attn_norm.weight").type == "F32"        # never quantized

    # rules: regex, then layer range
    win.table.filter.clear()
    pp.rule_pat.setText("ffn_up")
    pp.rule_type.setCurrentText("Q8_0")
    with qtbot.waitSignal(win.s.planChanged, timeout=5000):
        pp.rule_add.click()
    pp.rule_pat.setText("ffn_down")
    pp.rule_lo.setValue(2)
    pp.rule_hi.setValue(3)
    pp.rule_type.setCurrentText("Q5_0")
    with qtbot.waitSignal(win.s.planChanged, timeout=5000):
        pp.rule_add.click()
    assert pp.rules.rowCount() == 2
    plan = win.s.plan
    assert all(plan.entry(f"blk.{i}.ffn_up.weight").type == "Q8_0" for i in range(30))
    assert [plan.entry(f"blk.{i}.ffn_down.weight").type for i in (1, 2, 3, 4)] == ["Q4_0", "Q5_0", "Q5_0", "Q4_0"]
    # token embedding / output types
    with qtbot.waitSignal(win.s.planChanged, timeout=5000):
        pp.tok_type.setCurrentText("Q8_0")
    assert win.s.plan.entry("token_embd.weight").type == "Q8_0"

    # a bad regex is refused with a dialog, the plan is unchanged
    types_before = {e.name: e.type for e in win.s.plan.entries}
    pp.rule_pat.setText("ffn_(")
    with qtbot.waitSignal(win.errorShown, timeout=5000):
        pp.rule_add.click()
    assert {e.name: e.type for e in win.s.plan.entries} == types_before

    # save -> change -> load gives the same plan back (the CLI's JSON)
    path = str(tmp_path / "plan.json")
    assert win.save_plan(path)
    assert json.load(open(path))["tensors"][0]["name"] == "token_embd.weight"
    with qtbot.waitSignal(win.s.planChanged, timeout=5000):
        pp.preset.setCurrentText("Q8_0")
    assert win.s.plan.entry("blk.3.attn_q.weight").type == "Q8_0"
    assert win.load_plan(path)
    assert {e.name: e.type for e in win.s.plan.entries} == types_before
    assert pp.preset.currentText() == "Q4_0" and pp.rules.rowCount() == 2
    assert win.s.rules.manual and win.s.rules.token_embedding_type == "Q8_0"

    # the CLI command is on the clipboard, and the CLI makes exactly this plan from it
    win.copy_cli()
    cmd = QGuiApplication.clipboard().text()
    assert cmd.startswith("quant-studio quantize ") and "--preset Q4_0" in cmd and "ffn_up=Q8_0" in cmd
    assert cmd == win.cli_command()
    from core.cli import build_parser, build_plan
    ns = build_parser().parse_args(shlex.split(cmd)[1:])
    assert {e.name: e.type for e in build_plan(win.s.source, ns).entries} == types_before

    # a plan for another model is refused
    bad = tmp_path / "other.json"
    d = json.load(open(path))
    d["tensors"][0]["name"] = "nope.weight"
    bad.write_text(json.dumps(d))
    with qtbot.waitSignal(win.errorShown, timeout=5000) as sig:
        assert not win.load_plan(str(bad))
    assert sig.args[0] == "Cannot load plan" and "nope.weight" not in win.s.plan.entries[0].name


def test_filter_regex_layers_and_heatmap(qtbot, window, demo_path):
    win = window
    open_model(qtbot, win, demo_path)
    t = win.table
    t.regex.setChecked(True)
    t.filter.setText(r"attn_(q|k)\.")
    assert t.proxy.rowCount() == 60
    t.filter.setText("attn_(")                               # invalid regex: flagged, filters nothing
    assert t.proxy.rowCount() == 272 and "color" in t.filter.styleSheet()
    t.filter.clear()
    t.layer_lo.setValue(3)
    t.layer_hi.setValue(4)
    assert t.proxy.rowCount() == 18
    t.layer_lo.setValue(-1)
    t.layer_hi.setValue(-1)
    # grouped by layer: blk.2 rows come before blk.10 rows whatever the sort column
    t.view.sortByColumn(tt.C_SIZE, Qt.SortOrder.DescendingOrder)
    layers = [t.proxy.index(r, 0).data(tt.LAYER_ROLE) for r in range(t.proxy.rowCount())]
    inner = [x for x in layers if x >= 0]
    assert inner == sorted(inner)
    # the heat map fills as statistics arrive; clicking a cell selects that tensor
    qtbot.waitUntil(lambda: len(win.s.stats) >= 40, timeout=60000)
    win.heatmap.redraw(force=True)
    assert win.heatmap.values.shape == (7, 30)          # 7 matrices per layer (norms are 1-D)
    name = win.heatmap.grid[(win.heatmap.kinds.index("ffn_down.weight"), 1)]
    assert name == "blk.1.ffn_down.weight"
    win.table.select(name)
    assert win.current == name


def test_start_with_a_model_and_recent_files(qtbot, synthetic_path, demo_path):
    from app.main import start

    app, win = start(synthetic_path, warm_up=False)
    qtbot.addWidget(win)
    try:
        qtbot.waitUntil(lambda: win.s.source is not None, timeout=20000)
        assert win.windowTitle() == f"{win.s.source.name} — Quant Studio"
        assert win.recent_files()[0] == synthetic_path
        with qtbot.waitSignal(win.s.modelOpened, timeout=20000):
            win.open_demo()
        assert [a.toolTip() for a in win.recent_menu.actions()][:2] == [demo_path, synthetic_path]
    finally:
        win.close()
    # the next start (no model given, not the first start) reopens the most recent file
    app, win2 = start(None, warm_up=False)
    qtbot.addWidget(win2)
    try:
        qtbot.waitUntil(lambda: win2.s.source is not None, timeout=20000)
        assert win2.s.path == demo_path
    finally:
        win2.close()


def test_undo_redo_and_unsaved_edits_are_not_lost(qtbot, window, synthetic_path, synthetic_f16_path, tmp_path):
    """Every plan edit can be undone and redone; opening another model or closing the window with
    unsaved edits asks first (cancel keeps everything; "keep rules" carries them to a model of the same
    architecture)."""
    from .conftest import open_model as open_in

    win = window
    open_in(qtbot, win, synthetic_path)
    s = win.s
    assert not s.dirty and not win.undo_action.isEnabled()
    first = {e.name: e.type for e in s.plan.entries}
    s.set_preset("Q5_0")
    s.set_types(["blk.0.ffn_down.weight"], "Q8_0")
    assert s.dirty and win.windowTitle().endswith(" * — Quant Studio") and win.undo_action.isEnabled()
    edited = {e.name: e.type for e in s.plan.entries}
    win.undo_action.trigger()
    assert s.plan.entry("blk.0.ffn_down.weight").type == "Q5_0"
    win.undo_action.trigger()
    assert {e.name: e.type for e in s.plan.entries} == first and not s.dirty
    win.redo_action.trigger()
    win.redo_action.trigger()
    assert {e.name: e.type for e in s.plan.entries} == edited and not win.redo_action.isEnabled()

    asked = []
    win.ask_unsaved = lambda action, can_carry=False: asked.append((action, can_carry)) or "cancel"
    win.open_path(synthetic_f16_path)
    qtbot.wait(200)                                        # (nothing may happen: the open was cancelled)
    assert asked == [("Open another model", True)] and s.path == synthetic_path and s.dirty
    win.ask_unsaved = lambda action, can_carry=False: "carry"
    with qtbot.waitSignal(s.modelOpened, timeout=20000):
        win.open_path(synthetic_f16_path)
    assert s.path == synthetic_f16_path and s.rules.preset == "Q5_0" and not s.rules.manual
    s.set_preset("Q8_0")
    closing = []
    win.ask_unsaved = lambda action, can_carry=False: closing.append(action) or "cancel"
    win.close()
    assert closing == ["Quit Quant Studio"] and win.isVisible()
    plan_file = str(tmp_path / "p.json")
    assert win.save_plan(plan_file) and not s.dirty


def test_plan_totals_say_what_the_figures_mean(qtbot, window, demo_path, synthetic_path):
    """On the demo (a Q4_1 model whose rows of 576 fit no K-quant) the totals say the source is already
    quantized and that most tensors fall back; on an F32 model with 256-wide rows, neither."""
    from .conftest import open_model as open_in

    win = window
    open_in(qtbot, win, demo_path)
    with qtbot.waitSignal(win.s.planChanged, timeout=10000):
        win.s.set_preset("Q4_K_M")
    qtbot.waitUntil(lambda: "fall back" in win.preview.notes.text(), timeout=10000)
    assert "already quantized (Q4_1, Q8_0)" in win.preview.notes.text()           # token_embd is Q8_0
    open_in(qtbot, win, synthetic_path)
    qtbot.waitUntil(lambda: win.preview.notes.text() == "", timeout=10000)      # totals refresh (throttled)
    assert win.s.path == synthetic_path and win.preview.t["Predicted size"].text() != "–"


def test_user_guide_glossary_and_first_run_hint(qtbot, window):
    from app.help import GLOSSARY

    win = window
    d = win.show_guide("glossary")
    text = d.text.toPlainText()
    for term in ("bpw", "rel. RMSE", "SNR", "imatrix-weighted error", "fallback", "PPL / KLD"):
        assert term in GLOSSARY and term in text
    assert "Open a model" in text and "Quantize" in text
    d.close()
    win.show_first_run_hint()
    assert "open a model" in win.statusBar().currentMessage() and "Quantize" in win.statusBar().currentMessage()


def test_reset_layout_and_a_collapsed_plot_pane_comes_back(qtbot, window):
    win = window
    total = sum(win.splitter.sizes())
    win.splitter.setSizes([total, 0])                          # the user dragged the plots shut
    assert win.splitter.sizes()[1] == 0
    win.show_plot(0)                                           # View › Histogram
    assert win.splitter.sizes()[1] > 100 and win.plots.currentIndex() == 0
    win.docks["plan"].hide()
    win.docks["preview"].hide()
    win.splitter.setSizes([total, 0])
    win.reset_layout()                                         # View › Reset Layout
    assert win.docks["plan"].isVisible() and win.docks["preview"].isVisible() and win.splitter.sizes()[1] > 100
