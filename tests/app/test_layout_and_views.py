"""The studio at small sizes and what its views show (issue 16: layout, overlay, metadata, heat map,
columns, progress, presets)."""
from __future__ import annotations

from PySide6.QtCore import QPoint, QRect, Qt
from PySide6.QtWidgets import QAbstractButton, QScrollArea


def _visible_rect(w, top):
    """The part of ``w`` that is on screen inside ``top``: its rectangle clipped by every ancestor."""
    r = QRect(w.mapTo(top, QPoint(0, 0)), w.size())
    p = w.parentWidget()
    while p is not None and p is not top:
        r = r.intersected(QRect(p.mapTo(top, QPoint(0, 0)), p.size()))
        p = p.parentWidget()
    return r.intersected(top.rect())


def test_every_button_of_the_plan_and_quantize_docks_is_reachable_at_1024x640(qtbot, window):
    win = window
    assert win.minimumSizeHint().width() <= 1024 and win.minimumSizeHint().height() <= 640
    win.resize(1024, 640)
    qtbot.waitUntil(lambda: win.width() == 1024 and win.height() == 640, timeout=3000)
    win.docks["quantize"].raise_()
    win.docks["plan"].raise_()
    qtbot.wait(50)
    plan, quant = win.docks["plan"], win.docks["quantize"]
    assert not QRect(plan.mapTo(win, QPoint(0, 0)), plan.size()).intersects(
        QRect(quant.mapTo(win, QPoint(0, 0)), quant.size())), "the Plan dock covers the Quantize dock"
    for dock in (plan, quant):
        buttons = [b for b in dock.findChildren(QAbstractButton) if b.isVisibleTo(dock)
                   and b.parentWidget() is not dock and b.text()]
        assert len(buttons) >= 4
        scroll = dock.findChild(QScrollArea)
        for b in buttons:
            if scroll is not None:
                scroll.ensureWidgetVisible(b, 0, 0)
                qtbot.wait(1)
            vis = _visible_rect(b, win)
            assert vis.width() >= b.width() - 1 and vis.height() >= b.height() - 1, \
                f"{b.text()!r} is cut or hidden ({vis} of {b.size()})"
            # the window's own hit test finds the button (or a child of it) at its centre: nothing covers it
            at = win.childAt(vis.center())
            assert at is b or b.isAncestorOf(at), f"{b.text()!r} is covered by {at}"


def test_the_preset_list_shows_each_presets_size_and_quality(qtbot, window):
    from PySide6.QtWidgets import QStyleOptionViewItem
    combo = window.plan_panel.preset
    i = combo.findText("Q4_K_M")
    assert i >= 0 and combo.itemText(i) == "Q4_K_M"            # the item is still the bare name
    view = combo.view()
    opt = QStyleOptionViewItem()
    view.itemDelegate().initStyleOption(opt, combo.model().index(i, 0))
    shown = opt.text                                          # what the list paints for the item
    assert shown.startswith("Q4_K_M") and "ppl" in shown and "G" in shown, shown
    assert view.minimumWidth() >= combo.fontMetrics().horizontalAdvance(shown)
    # the chosen preset's description is on screen beside the closed combo too
    info = window.plan_panel.preset_info.text()
    assert info and info in combo.itemData(combo.currentIndex(), Qt.ItemDataRole.ToolTipRole)


def test_metadata_numbers_are_never_cut_and_long_values_open_whole(qtbot, window, demo_path):
    from .conftest import open_model
    win = window
    open_model(qtbot, win, demo_path)
    win.resize(1024, 640)
    win.docks["model"].raise_()
    qtbot.wait(50)
    tree = win.summary.tree
    key = next(k for k, v in win.s.source.metadata.items() if isinstance(v, float) and abs(v) < 1e-3)
    item = next(tree.topLevelItem(i) for i in range(tree.topLevelItemCount()) if tree.topLevelItem(i).text(0) == key)
    text = item.text(1)
    assert text == "1e-05", text                               # float32, not 9.999999747378752e-06
    fm = tree.fontMetrics()
    room = tree.visualRect(tree.indexFromItem(item, 1)).width() - 8
    assert fm.elidedText(text, tree.textElideMode(), room) == text, f"{text!r} cut in {room} px"
    # a long array opens whole in a read-only viewer
    tokens = "tokenizer.ggml.tokens"
    n = len(win.s.source.metadata[tokens])
    d = win.summary.show_value(tokens)
    assert d.isVisible() and str(n) in d.windowTitle().replace(",", "")
    from PySide6.QtWidgets import QPlainTextEdit
    assert d.findChild(QPlainTextEdit).document().blockCount() == n
    d.close()


def test_heatmap_ticks_are_centred_on_cells_and_the_selected_tensor_is_marked(qtbot, window, synthetic_path):
    from .conftest import open_model
    win = window
    open_model(qtbot, win, synthetic_path)
    name = next(t.name for t in win.s.source.tensors if t.layer == 1 and t.n_dims >= 2)
    win.table.select(name)
    win.show_plot(2)
    hm = win.heatmap
    hm.redraw(force=True)
    for axis in ("bottom", "left"):
        ticks = hm.pw.getPlotItem().getAxis(axis)._tickLevels
        assert ticks and ticks[0], axis
        assert all(abs(pos % 1 - 0.5) < 1e-9 for pos, _ in ticks[0]), (axis, ticks[0][:5])   # cell centres
    bottom = dict(hm.pw.getPlotItem().getAxis("bottom")._tickLevels[0])
    assert bottom[1.5] == "1"
    r, c = hm.cell_of(name)
    assert hm.grid[(r, c)] == name and c == 1
    assert hm.mark.isVisible()
    xs, ys = hm.mark.getData()
    assert (xs[0], ys[0]) == (c + 0.5, r + 0.5)
    other = next(t.name for t in win.s.source.tensors if t.layer == 0 and t.n_dims >= 2 and "ffn" in t.name)
    win.table.select(other)
    xs, ys = hm.mark.getData()
    assert (xs[0], ys[0]) == (hm.cell_of(other)[1] + 0.5, hm.cell_of(other)[0] + 0.5)


def test_dequantized_overlay_shows_the_samples_own_counts_and_says_it_is_a_sample(qtbot):
    import numpy as np

    from app.plots import HistogramPlot
    from core.stats import compute_stats
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 256)).astype(np.float32)
    st = compute_stats("w", x.shape, x)
    sample = np.round(x[::16] * 16) / 16                       # 32 of 512 rows, on a grid (as a type gives)
    ov = compute_stats("w:Q8_0", sample.shape, sample.astype(np.float32))
    h = HistogramPlot()
    qtbot.addWidget(h)
    h.log.setChecked(False)
    h.set_stats(st)
    h.set_overlay("Q8_0", ov)
    xs, ys = h.ov_curve.getData()
    assert np.array_equal(ys, ov.hist_counts.astype(np.float64))          # not scaled up
    assert ys.max() < st.hist_counts.max() / 4
    text = h.caption.text()
    assert "sample" in text and f"{ov.n_finite:,} weights" in text and "32 of 512 rows" in text
    h.show()
    for width in (700, 420, 260):                            # a narrow plot pane: more lines, none cut
        h.resize(width, 380)
        qtbot.wait(30)
        assert h.caption.heightForWidth(h.caption.width()) <= h.caption.height() + 2, f"caption cut at {width}"
    legend = [label.text for sample_item, label in h.pw.getPlotItem().legend.items if sample_item.item is h.ov_curve]
    assert legend and "sample" in legend[0]


def test_reason_in_full_title_once_and_cells_that_do_not_fit_have_tooltips(qtbot, window, synthetic_path):
    from app import main as app_main
    from app import tensor_table as tt
    from PySide6.QtGui import QGuiApplication
    from .conftest import open_model
    win = window
    open_model(qtbot, win, synthetic_path)
    name = "blk.0.ffn_down.weight"
    win.s.set_preset("Q4_0")
    win.table.select(name)
    e = win.s.plan.entry(name)
    assert e.reason
    # the whole reason: in its cell's tooltip and in the details line under the table
    m = win.table.model
    assert m.index(m.row_of(name), tt.C_REASON).data(Qt.ItemDataRole.ToolTipRole) == e.reason
    assert m.index(m.row_of(name), tt.C_SHAPE).data(Qt.ItemDataRole.ToolTipRole)
    assert e.reason in win.table.details.text() and name in win.table.details.text()
    header = win.table.view.horizontalHeader()
    for c, title in enumerate(tt.COLUMNS):                    # no header cut at the default size
        if c != tt.C_REASON:
            assert win.table.view.columnWidth(c) >= header.fontMetrics().horizontalAdvance(title) + 16, title
    assert win.table.details.isVisible()
    # the title as X11/Windows show it: Qt appends the display name unless the title ends with it
    old = QGuiApplication.applicationDisplayName()
    app_main._application(offscreen=True)
    try:
        display = QGuiApplication.applicationDisplayName()
        title = win.windowTitle()
        shown = title if title.endswith(display) else f"{title} — {display}"
        assert shown.count("Quant Studio") == 1, shown
    finally:
        QGuiApplication.setApplicationDisplayName(old)


def test_progress_bars_are_reset_after_cancel(qtbot, window):
    q = window.quantize
    q.overall.setValue(40)
    q.tensor_bar.setValue(70)
    q._cancelled()
    assert q.overall.value() == 0 and q.tensor_bar.value() == 0


def test_no_empty_axes_while_the_presets_are_estimated(qtbot):
    from app.plots import FrontierPlot
    f = FrontierPlot()
    qtbot.addWidget(f)
    f.set_points([])
    pi = f.getPlotItem()
    assert not pi.getAxis("left").isVisible() and not pi.getAxis("bottom").isVisible()
    assert "estimating" in pi.titleLabel.text
    f.set_points([("Q8_0", 140 * 2**20, 0.004, 8.5), ("Q4_0", 80 * 2**20, 0.06, 4.5)])
    assert pi.getAxis("left").isVisible() and pi.getAxis("bottom").isVisible()
    assert not pi.titleLabel.isVisible() or not pi.titleLabel.text
    right = max(f.labels, key=lambda t: t.pos().x())
    assert tuple(right.anchor) == (1, 1)                      # the rightmost name is drawn to its left


def test_statistics_progress_status_bar_and_heat_map_say_the_same(qtbot, window, synthetic_path):
    from .conftest import open_model
    win = window
    seen = []

    def progress(done, total):
        if done < total and not seen:
            win.heatmap.redraw(force=True)
            seen.append((done, total, win.stats_label.text(), win.heatmap.caption.text()))

    win.s.statsProgress.connect(progress)
    open_model(qtbot, win, synthetic_path)
    qtbot.waitUntil(lambda: bool(seen), timeout=30000)
    win.s.statsProgress.disconnect(progress)
    done, total, label, caption = seen[0]
    assert f"{done}/{total} tensors" in label and f"{done}/{total} tensors" in caption
    qtbot.waitUntil(lambda: win.stats_label.text() == "statistics complete", timeout=60000)
    win.heatmap.redraw(force=True)
    assert "tensors (as in the status bar)" not in win.heatmap.caption.text()


def test_reset_layout_leaves_no_second_dock_tab_bar(qtbot, window):
    from PySide6.QtWidgets import QTabBar
    win = window
    for size in ((1024, 700), (1680, 1050)):
        win.resize(*size)
        qtbot.wait(50)
    win.reset_layout()
    qtbot.wait(50)
    win.docks["plan"].hide()
    win.docks["preview"].hide()
    qtbot.wait(20)
    win.reset_layout()
    qtbot.wait(50)
    plan_bars = [t for t in win.findChildren(QTabBar) if t.isVisible() and t.count() and t.tabText(0) == "Plan"]
    assert len(plan_bars) == 1, [t.geometry() for t in plan_bars]


def test_statistics_go_on_while_the_selected_tensors_exact_candidates_are_computed(qtbot, window, demo_path,
                                                                                  tmp_path):
    """The exact candidate pass of the selected tensor (seconds: every type over every row) used to hold
    the single analysis process, so the statistics stood still for 7-13 s after the first tensor. Now the
    pass runs one type per slice at the statistics' priority: both advance in turn."""
    import shutil
    import time
    from core.preview import candidate_types
    from .conftest import open_model
    win = window
    # a copy of the demo: the worker processes outlive a test and key their preview cache by file, so the
    # demo's own path may already have exact figures cached (then there is no exact pass to watch)
    path = str(tmp_path / "demo-copy.gguf")
    shutil.copy(demo_path, path)
    marks = []                                     # (time, exact types, types, statistics done)

    def arrived(n, ms):
        # the sampled pass posts its list type by type: count only whole lists with exact figures in them
        if n == win.current and len(ms) == n_types(n) and any(m.exact for m in ms):
            marks.append((time.monotonic(), sum(m.exact for m in ms), len(ms), win.s.stats_progress()[0]))

    def n_types(n):
        wanted = win.s.candidate_types
        return sum(1 for t in candidate_types(win.s.source.tensor(n).row_len) if wanted is None or t.name in wanted)

    win.s.candidatesReady.connect(arrived)
    open_model(qtbot, win, path)                   # selects the first tensor, the token embedding (28 M weights)
    qtbot.waitUntil(lambda: bool(marks) and marks[-1][1] == marks[-1][2], timeout=600000)
    win.s.candidatesReady.disconnect(arrived)
    total = win.s.stats_progress()[1]
    assert marks[-1][2] >= 5 and len(marks) > 1, marks
    # while statistics were still running, they advanced between (most) exact results, not only at the end
    running = [(a, b) for a, b in zip(marks, marks[1:]) if a[3] < total]
    if running:                                    # (always on 2 cores: the exact pass takes seconds)
        advanced = sum(b[3] > a[3] for a, b in running)
        assert advanced >= max(1, len(running) // 2), f"statistics stood still during the exact pass: {marks}"


def test_log_axes_label_decades_only_and_never_rescale(qtbot):
    """On the small log charts (plan totals at 1024x700, Evaluate's KLD vs size, the histogram's counts) the
    2..9 tick labels ran into each other and an SI multiplier turned the axis into 'count (x1e+15)'."""
    import numpy as np
    from app.plots import FrontierPlot, HistogramPlot
    from core.stats import compute_stats
    f = FrontierPlot()
    qtbot.addWidget(f)
    f.resize(300, 200)
    f.show()
    f.plot([80.0, 100.0, 140.0], [0.3, 3.0, 40.0])
    qtbot.wait(50)
    ax = f.getPlotItem().getAxis("left")
    lo, hi = ax.range
    assert hi - lo > 1.0
    levels = ax.tickValues(lo, hi, ax.height())
    shown = [(v, t) for _, vs in levels for v, t in zip(vs, ax.tickStrings(vs, ax.scale, 1.0))]
    assert shown and all((t == "") != (abs(v - round(v)) < 1e-6) for v, t in shown), shown
    h = HistogramPlot()
    qtbot.addWidget(h)
    h.resize(330, 260)
    h.show()
    x = np.random.default_rng(3).standard_normal((512, 512)).astype(np.float32)
    h.set_stats(compute_stats("w", x.shape, x))
    qtbot.wait(50)
    for axis in (h.pw.getPlotItem().getAxis("left"), ax):
        assert not axis.autoSIPrefix and axis.autoSIPrefixScale == 1.0
