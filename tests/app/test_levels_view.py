"""The histogram's level ticks (a typical block's levels, core.levels) and the error tab (x - q(x) of
every weight): drawn from core's results, asked for when a tensor or a candidate type is chosen."""
from __future__ import annotations

import numpy as np

from .conftest import open_model, wait_stats

NAME = "blk.0.ffn_down.weight"


def _legend(plot, item):
    return [label.text for sample, label in plot.pw.getPlotItem().legend.items if sample.item is item]


def test_level_ticks_are_the_levels_and_say_what_they_are(qtbot):
    from app.plots import HistogramPlot
    from core.levels import tensor_levels
    from core.stats import compute_stats
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 512)) * 0.02).astype(np.float32)
    h = HistogramPlot()
    qtbot.addWidget(h)
    h.set_stats(compute_stats("w", x.shape, x))
    assert not h.level_ticks.isVisible()
    for t in ("Q4_K", "Q4_0"):
        lv = tensor_levels(x, t)
        h.set_levels(lv)
        xs, ys = h.level_ticks.getData()
        assert h.level_ticks.isVisible() and np.array_equal(xs[::2], lv.levels) and np.array_equal(xs[1::2], lv.levels)
        assert ys[0] == np.log10(0.5) and ys[1] > ys[0]           # from the floor up (drawn in log10)
        assert _legend(h, h.level_ticks) == [f"{t} levels: {lv.levels.size:,}"]
        assert f"values one block can take in {t}" in h.pw.toolTip()
    assert lv.levels.size == 16 and tensor_levels(x, "Q4_K").levels.size > 16
    h.show_levels.setChecked(False)
    assert not h.level_ticks.isVisible()
    h.show_levels.setChecked(True)
    h.set_levels(tensor_levels(x, "F16"))                         # a float type: no ticks, a note
    assert not h.level_ticks.isVisible() and "float type" in h.caption.text()
    h.set_stats(compute_stats("w2", x.shape, x))                  # another tensor: its levels are not these
    assert h.levels is None and not h.level_ticks.isVisible()


def test_error_plot_draws_the_histogram_its_rmse_and_its_state(qtbot):
    from app.plots import ErrorPlot
    from core.errors import PlanError
    from core.levels import error_histogram
    from core.progress import Progress
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((64, 256)) * 0.02).astype(np.float32)
    p = ErrorPlot()
    qtbot.addWidget(p)
    p.show()
    p.set_pending("w", "Q4_0")
    assert "Computing" in p.caption.text() and not p.curve.isVisible()
    p.set_progress(Progress(3, 4, "error histogram"))
    assert "75%" in p.caption.text()
    h = error_histogram(x, "Q4_0")
    p.set_result(h)
    xs, ys = p.curve.getData()
    assert np.array_equal(xs, h.edges) and np.allclose(ys, np.log10(np.maximum(h.counts, 0.5)))   # log counts
    p.log.setChecked(False)
    assert np.array_equal(p.curve.getData()[1], h.counts)
    assert [ln.value() for ln in p.rmse_lines] == [-h.rmse, h.rmse]
    assert f"{x.size:,} weights, every row, in Q4_0" in p.caption.text() and "RMSE" in p.caption.text()
    assert _legend(p, p.curve)[0].startswith("Q4_0: RMSE")
    p.set_result(PlanError("IQ2_XXS needs an importance matrix"))
    assert not p.curve.isVisible() and "not computed: IQ2_XXS needs" in p.caption.text()
    p.hide()                                                     # hidden: drawn when shown again
    p.set_result(h)
    assert not p.curve.isVisible()
    p.show()
    assert p.curve.isVisible() and "RMSE" in p.caption.text()


def test_choosing_a_tensor_and_a_type_shows_its_levels_and_errors(qtbot, window, synthetic_path):
    win = window
    open_model(qtbot, win, synthetic_path)
    assert win.table.select(NAME)
    wait_stats(qtbot, win, NAME)
    planned = win.s.plan.entry(NAME).type
    qtbot.waitUntil(lambda: win.hist.levels is not None, timeout=60000)
    lv = win.hist.levels
    assert lv.name == NAME and lv.type == planned and win.hist.level_ticks.isVisible()
    assert win.errors.key is None                      # every row is read only for the error tab, when shown
    assert win.plots.tabText(win.plots.indexOf(win.errors)) == "Error x−q(x)"
    win.plots.setCurrentWidget(win.errors)
    assert win.errors.key == (NAME, planned)
    qtbot.waitUntil(lambda: isinstance(getattr(win.errors.result, "n", None), int), timeout=60000)
    er = win.errors.result
    info = win.s.source.tensor(NAME)
    assert er.type == planned and er.n == info.n_elements and win.errors.curve.isVisible()
    assert f"{info.n_elements:,} weights, every row, in {planned}" in win.errors.caption.text()
    # a candidate row chosen in the preview: the levels and the errors follow that type
    qtbot.waitUntil(lambda: win.preview.table.rowCount() > 2, timeout=60000)
    rows = [win.preview.table.item(r, 0).text() for r in range(win.preview.table.rowCount())]
    other = next(t for t in ("Q8_0", "Q4_0", "Q5_1") if t in rows and t != planned)
    win.preview.table.selectRow(rows.index(other))
    qtbot.waitUntil(lambda: win.hist.levels.type == other and getattr(win.errors.result, "type", "") == other,
                    timeout=60000)
    assert win.hist.levels.levels.size != lv.levels.size or not np.allclose(win.hist.levels.levels, lv.levels)
    assert win.errors.result.rmse != er.rmse and win.errors.result.n == er.n
    # back on the histogram, another type: the error tab catches up when shown again
    win.plots.setCurrentWidget(win.hist)
    third = next(t for t in ("Q4_0", "Q5_1", "Q8_0") if t in rows and t not in (planned, other))
    win.preview.table.selectRow(rows.index(third))
    qtbot.waitUntil(lambda: win.hist.levels.type == third, timeout=60000)
    assert win.errors.result.type == other
    win.plots.setCurrentWidget(win.errors)
    qtbot.waitUntil(lambda: getattr(win.errors.result, "type", "") == third, timeout=60000)


def test_the_legend_never_covers_the_histogram(qtbot):
    """At 1024x700 the histogram pane is narrow: the legend (top left, up to four lines) covered the left
    slope of the curve. The count axis now leaves room above the peak for it, at every size."""
    from app.plots import HistogramPlot
    from core.levels import tensor_levels
    from core.stats import compute_stats
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((256, 512)) * 0.02).astype(np.float32)
    sample = np.ascontiguousarray(x[::8])
    h = HistogramPlot()
    qtbot.addWidget(h)
    h.show()
    h.set_stats(compute_stats("w", x.shape, x))
    h.set_overlay("Q4_0", compute_stats("w:Q4_0", sample.shape, np.round(sample * 64) / 64))
    h.set_levels(tensor_levels(x, "Q4_0"))
    pi = h.pw.getPlotItem()
    for log in (True, False):
        h.log.setChecked(log)
        for w, ht in ((700, 520), (440, 420), (400, 360)):
            h.resize(w, ht)
            qtbot.wait(60)
            legend = pi.legend.sceneBoundingRect()
            xs, ys = h.curve.getData()
            centers = (xs[:-1] + xs[1:]) / 2
            # getData() gives what is drawn: counts, or their log10 on the log axis
            tops = [pi.vb.mapViewToScene(pg_point(cx, cy)) for cx, cy in zip(centers, ys)]
            under = [p for p in tops if legend.left() <= p.x() <= legend.right()]
            assert under, "the legend is over the plotted range"
            assert all(p.y() > legend.bottom() for p in under), f"legend covers the curve at {w}x{ht}, log={log}"


def pg_point(x, y):
    from PySide6.QtCore import QPointF
    return QPointF(float(x), float(y))
