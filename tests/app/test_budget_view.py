"""Quantize › Fit a Budget… live: after the first (fast) fit the dialog solves again as the slider moves, draws
predicted error against size for the presets and the solver's plans, a layer × kind heat map of the solved plan's
bits per weight, takes pins from the tensor table's context menu, compares the solved plan with the nearest preset,
and a budget plan saved from the studio keeps its budget block (demo model; measurements cached)."""
from __future__ import annotations

import json
import os

import numpy as np

from core.budget import parse_size_text
from core.qtypes import type_info

from .conftest import open_model as open_in_studio

LONG = 600000                     # the first fit measures the model (cached in the user's cache afterwards)


def _fit(qtbot, win, fraction=0.9):
    d = win.budget_dialog()
    d.fast.setChecked(True)
    d.value.setText(str(int(win.s.planned_bytes() * fraction)))
    d.start()
    qtbot.waitUntil(lambda: d.result is not None and win.s.plan is d.result["plan"], timeout=LONG)
    qtbot.waitUntil(lambda: d.chart is not None and not d.solving(), timeout=LONG)
    return d


def _settled(qtbot, d):
    qtbot.waitUntil(lambda: not d.solving() and d.live is not None, timeout=60000)
    return d.live["result"]


def test_slider_resolves_chart_and_heat_map(qtbot, window, demo_path, out_dir):
    win = window
    open_in_studio(qtbot, win, demo_path)
    d = _fit(qtbot, win)
    assert d.run_btn.text() == "Use this plan" and d.slider.isEnabled()
    # the chart: every preset the measurements cover, and the solver's curve across what it can reach
    chart = d.chart
    names = [p[0] for p in chart["presets"]]
    assert {"Q4_K_M", "Q8_0", "Q2_K"} <= set(names)
    assert [p[0] for p in d.chart_view.points] == names
    xs, ys = d.chart_view.curve.getData()
    assert len(xs) >= 10 and np.all(np.diff(xs) >= 0) and np.all(np.diff(ys) <= 1e-9 * ys.max())
    assert xs[0] == chart["lo"].size / 2**20 and d.chart_view.getPlotItem().getAxis("left").isVisible()
    # the heat map: tensor kinds × layers of the solved plan
    src = win.s.source
    kinds = {n.split(".", 2)[2] for n in (t.name for t in src.tensors if t.name.startswith("blk.") and t.n_dims >= 2)}
    assert d.heat.values.shape == (len(kinds), src.n_layers) == (7, 30)
    r = d.live["result"]
    e = r.plan.entry("blk.3.ffn_down.weight")
    assert d.heat.values[d.heat.kinds.index("ffn_down.weight"), 3] == e.bpw
    # the slider: solved again, the summary follows, never above the target
    sizes = []
    for pos in (200, 700):
        d.slider.setValue(pos)
        target = parse_size_text(d.value.text())
        qtbot.waitUntil(lambda: not d.solving() and d.live["result"] is not None
                        and d.live["result"].target.value == target, timeout=60000)
        r = d.live["result"]
        assert 0.99 * target <= r.size <= target, (target, r.size)
        assert f"{r.size:,} bytes" in d.summary.text()
        assert d.chart_view.star.getData()[0][0] == r.size / 2**20
        sizes.append(r.size)
    assert sizes[0] < sizes[1]
    assert d.grab().save(os.path.join(out_dir, "budget_dialog.png"))
    # "Use this plan": the solved plan becomes the session's, with its budget block
    d.start()
    qtbot.waitUntil(lambda: win.s.plan is r.plan, timeout=20000)
    assert win.s.plan.budget["target"] == {"kind": "size", "value": float(target), "n_ctx": 0}
    d.close()


def test_pins_from_the_table_reach_the_solver(qtbot, window, demo_path):
    win = window
    open_in_studio(qtbot, win, demo_path)
    d = _fit(qtbot, win)

    def pin(name, label, qtype):
        assert win.table.select(name)
        menu = win.table.context_menu()
        sub = next(a.menu() for a in menu.actions() if a.text() == label)
        next(a for a in sub.actions() if a.text() == qtype).trigger()

    pin("blk.2.ffn_down.weight", "Pin in budget to type", "Q8_0")
    pin("blk.5.attn_v.weight", "Pin in budget to at least type", "Q5_0")      # rows of 576: no K-quant
    pins = [r"^blk\.2\.ffn_down\.weight$=Q8_0", r"^blk\.5\.attn_v\.weight$=>=Q5_0"]
    assert win.s.model.budget_pins == pins
    assert d.pins.toPlainText().splitlines() == pins            # shown in the open dialog
    qtbot.waitUntil(lambda: not d.solving() and d.live is not None and d.live["result"] is not None
                    and [p.label() for p in d.live["result"].pins] == pins, timeout=60000)
    plan = d.live["result"].plan
    assert plan.entry("blk.2.ffn_down.weight").type == "Q8_0" and "pinned" in plan.entry("blk.2.ffn_down.weight").reason
    assert plan.entry("blk.5.attn_v.weight").bpw >= type_info("Q5_0").bpw
    # editing the list: a pin removed there is gone from the session and from the next solve
    d.pins.setPlainText(pins[1])
    assert win.s.model.budget_pins == [pins[1]]
    qtbot.waitUntil(lambda: not d.solving() and [p.label() for p in d.live["result"].pins] == [pins[1]],
                    timeout=60000)
    d.close()


def test_evaluate_against_the_nearest_preset(qtbot, window, demo_path):
    win = window
    open_in_studio(qtbot, win, demo_path)
    d = _fit(qtbot, win, 0.8)
    r = _settled(qtbot, d)
    d.evaluate()
    qtbot.waitUntil(lambda: getattr(d, "check_result", None) is not None, timeout=LONG)
    c = d.check_result
    # the same plan (its size counted with the imatrix's file name, not path), and the preset nearest it
    assert abs(c["size"] - r.size) < 1024 and abs(c["preset_size"] - c["size"]) < 0.3 * c["size"]
    assert c["plan_kld"] > 0 and c["preset_kld"] > 0
    assert f"{c['plan_kld']:.5f}" in d.check.text() and c["preset"] in d.check.text()
    d.close()


def test_a_budget_plan_keeps_its_budget_block_when_saved(qtbot, window, demo_path, tmp_path):
    win = window
    open_in_studio(qtbot, win, demo_path)
    d = _fit(qtbot, win)
    d.close()
    block = win.s.plan.budget
    assert block["target"]["kind"] == "size" and block["measurements"]
    path = str(tmp_path / "budget-plan.json")
    win.s.save_plan(path)
    assert json.load(open(path))["budget"] == block
    win.s.set_preset("Q8_0")                     # another plan, then the saved one back
    assert win.s.plan.budget is None
    win.s.load_plan(path)
    assert win.s.plan.budget == block
    d2 = win.budget_dialog()                     # the dialog opens on the plan's target
    assert d2.kind_key() == "size" and int(d2.value.text()) == int(block["target"]["value"])
    d2.close()
