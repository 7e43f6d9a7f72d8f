"""pyqtgraph views of core results: weight histogram (with outliers, the dequantized
histogram of a type and the levels of a typical block), the error x - q(x) of every weight, per-channel abs-max, layer-by-layer heat map, size vs error of presets.
They only draw what core computed."""
from __future__ import annotations

import math
import re
from typing import Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QFont
from PySide6.QtWidgets import QCheckBox, QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from . import fmt

pg.setConfigOptions(antialias=True, imageAxisOrder="row-major")

ACCENT = "#3e8ef7"
OVERLAY = "#f5a524"
WARN = "#e5484d"
LEVELS = "#2f9e5f"
LEVEL_TICK = 0.18         # level ticks rise this fraction of the histogram's height (of its decades, in log)
_LAYER_PREFIX = re.compile(r"^.*?(?:blk|layers|h|block|blocks)\.\d+\.")


def style_plot(pw: pg.PlotWidget, dark: bool) -> None:
    pw.setBackground("#1e1f24" if dark else "#ffffff")
    fg = "#c9cbd1" if dark else "#33353d"
    for ax in ("left", "bottom", "right", "top"):
        a = pw.getPlotItem().getAxis(ax)
        a.setPen(pg.mkPen(fg))
        a.setTextPen(pg.mkPen(fg))
    pw.getPlotItem().titleLabel.setText(pw.getPlotItem().titleLabel.text, color=fg)


class DecadeAxis(pg.AxisItem):
    """An axis that, on a log scale spanning more than a decade, labels whole decades only (the 2..9 ticks
    stay, unlabelled: on a small chart their labels ran into each other), and never rescales its labels
    with an SI multiplier ("count (x1e+15)", "mean KLD (x0.001)" on a log axis only confused)."""

    def __init__(self, orientation: str, **kw):
        super().__init__(orientation, **kw)
        self.enableAutoSIPrefix(False)

    def logTickStrings(self, values, scale, spacing):
        strings = super().logTickStrings(values, scale, spacing)
        lo, hi = self.range
        if abs(hi - lo) <= 1.0:
            return strings
        return [t if abs(v - round(v)) < 1e-6 else "" for v, t in zip(values, strings)]


def decade_axis(plot, side: str = "left") -> None:
    """Give ``plot`` (a PlotWidget or PlotItem) a :class:`DecadeAxis` on ``side`` (before its label is set)."""
    pi = plot.getPlotItem() if hasattr(plot, "getPlotItem") else plot
    pi.setAxisItems({side: DecadeAxis(side)})


class _PlotPanel(QWidget):
    """A plot with a row of controls above it and a caption below."""

    def __init__(self, title: str, parent=None):
        super().__init__(parent)
        self.pw = pg.PlotWidget()
        decade_axis(self.pw)
        self.pw.setTitle(title)
        # two tick levels, labels on the first: the axes are redrawn on every new tensor, and
        # their drawing (with grid lines across the plot) is most of a plot's repaint
        for ax in ("left", "bottom"):
            self.pw.getPlotItem().getAxis(ax).setStyle(maxTickLevel=1, maxTextLevel=1)
        self.controls = QHBoxLayout()
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        # a fixed height, changed only when the text would not fit (_fit_caption): a new caption
        # rarely re-lays out (and so re-draws) the plot, and is never cut
        self.caption.setFixedHeight(2 * self.caption.fontMetrics().lineSpacing() + 6)
        self.caption.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addLayout(self.controls)
        lay.addWidget(self.pw, 1)
        lay.addWidget(self.caption)
        self.dark = False

    def set_dark(self, dark: bool) -> None:
        self.dark = dark
        style_plot(self.pw, dark)

    def set_caption(self, text: str) -> None:
        self.caption.setText(text)
        self._fit_caption()

    def _fit_caption(self) -> None:
        lab = self.caption
        width = self.width() - 8 if self.layout() is not None else lab.width()    # the margins are 4 + 4
        need = lab.heightForWidth(max(width, 50)) if lab.text() else 0
        h = max(2 * lab.fontMetrics().lineSpacing() + 6, need + 4)
        if h != lab.height() and h != lab.minimumHeight():
            lab.setFixedHeight(h)

    def resizeEvent(self, ev) -> None:
        super().resizeEvent(ev)
        self._fit_caption()


class HistogramPlot(_PlotPanel):
    """Weight histogram (linear or log counts), outlier thresholds and the largest values marked,
    the histogram of the same weights after a round trip through the selected type, and that type's
    levels: every value one typical block can represent (core.levels.Levels), as thin ticks rising
    from the axis. The plot items are made once and only their data change (cheap redraws while
    workers run)."""

    def __init__(self, parent=None):
        super().__init__("Weight histogram", parent)
        self.log = QCheckBox("Log counts", checked=True)
        self.show_overlay = QCheckBox("Dequantized overlay", checked=True)
        self.show_overlay.setToolTip("Histogram of a sample of rows after quantizing to the selected type "
                                     "and back (the sample's own counts, not scaled to the whole tensor)")
        self.show_levels = QCheckBox("Levels", checked=True)
        self.show_levels.setToolTip("Every value a typical block of this tensor can take in the selected type: "
                                    "the block whose largest |weight| is the median of a sample's blocks, its "
                                    "scales kept and every code dequantized by the type's own kernel")
        self.controls.addWidget(self.log)
        self.controls.addWidget(self.show_overlay)
        self.controls.addWidget(self.show_levels)
        self.controls.addStretch(1)
        self.pw.setLabel("bottom", "weight value")
        self.pw.setLabel("left", "count")
        pi = self.pw.getPlotItem()
        pi.addLegend(offset=(10, 10), colCount=2)      # two columns: half the height over the curve
        self.curve = pg.PlotDataItem(stepMode="center", pen=pg.mkPen(ACCENT, width=1.2),
                                     brush=pg.mkBrush(QColor(ACCENT).lighter(110).name() + "80"), name="weights")
        self.ov_curve = pg.PlotDataItem(stepMode="center", pen=pg.mkPen(OVERLAY, width=1.4), name="dequantized")
        self.top_marks = pg.PlotDataItem(pen=None, symbol="t1", symbolSize=9, symbolBrush=pg.mkBrush(WARN),
                                         symbolPen=None, name="largest |w|")
        self.sigma_lines = [pg.InfiniteLine(0.0, angle=90, pen=pg.mkPen(c, width=1, style=st))
                            for c, st in ((OVERLAY, Qt.PenStyle.DotLine),) * 2 + ((WARN, Qt.PenStyle.DashLine),) * 2]
        self.level_ticks = pg.PlotDataItem(connect="pairs", pen=pg.mkPen(LEVELS, width=1), name="levels")
        for it in [self.curve, self.ov_curve, self.level_ticks, self.top_marks] + self.sigma_lines:
            pi.addItem(it)
        self.stats = None
        self.overlay = None
        self.overlay_type = ""
        self.levels = None                   # core.levels.Levels of the selected type
        self.log.toggled.connect(self.redraw)
        self.show_overlay.toggled.connect(self.redraw)
        self.show_levels.toggled.connect(self.redraw)
        pi.vb.sigResized.connect(lambda *_: self._fit_y())
        self.redraw()

    def set_stats(self, st, keep: bool = False) -> None:
        """The statistics of a tensor; ``keep``: the same tensor's, its overlay and levels stay (one redraw)."""
        self.stats = st
        if not keep:
            self.overlay = self.levels = None
        self.redraw()

    def set_overlay(self, qtype: str, st) -> None:
        self.overlay, self.overlay_type = st, qtype
        self.redraw()

    def set_levels(self, levels) -> None:
        """core.levels.Levels (None, or a type without levels: none drawn). Only the ticks and the
        caption change (a cheap update, once per selected tensor and type)."""
        self.levels = levels
        if self.stats is None or self.stats.n_finite == 0:
            return
        self._draw_levels()
        self._fit_y()
        self._caption()

    def clear(self) -> None:
        self.stats = self.overlay = self.levels = None
        self.redraw()

    def redraw(self) -> None:
        pi = self.pw.getPlotItem()
        log = self.log.isChecked()
        if pi.ctrl.logYCheck.isChecked() != log:
            pi.setLogMode(False, log)
        st = self.stats
        if st is None or st.n_finite == 0:
            for it in [self.curve, self.ov_curve, self.level_ticks, self.top_marks] + self.sigma_lines:
                it.setVisible(False)
            self.set_caption("Statistics are being computed…" if st is None else "No finite values.")
            return
        floor = 0.5 if log else 0.0       # log axes cannot show empty bins: draw them at 1/2
        self.curve.setFillLevel(math.log10(floor) if log else 0.0)   # in view (log) coordinates
        self.curve.setData(st.hist_edges, np.maximum(st.hist_counts.astype(np.float64), floor))
        self.curve.setVisible(True)
        ov = self.overlay
        show_ov = ov is not None and self.show_overlay.isChecked() and ov.n_finite > 0
        if show_ov:
            # the sample's own counts, not scaled up to the tensor: one weight in a tail bin is drawn
            # as 1, so a type that adds no tails shows none (scaled, every lone sample value read ~500)
            self.ov_curve.setData(ov.hist_edges, np.maximum(ov.hist_counts.astype(np.float64), floor))
            self._legend_name(self.ov_curve, f"after {self.overlay_type} (sample)")     # the caption says more
        self.ov_curve.setVisible(show_ov)
        self._draw_levels()
        has_sigma = math.isfinite(st.std) and st.std > 0
        for line, k in zip(self.sigma_lines, (-3, 3, -6, 6)):
            if has_sigma:
                line.setValue(st.mean + k * st.std)
            line.setVisible(has_sigma)
        if st.top:
            xs = np.array([v for v, _, _ in st.top], dtype=np.float64)
            self.top_marks.setData(xs, np.full(xs.size, 1.0))
        self.top_marks.setVisible(bool(st.top))
        pi.enableAutoRange(axis="x")
        self._fit_y()
        self._caption()

    def _fit_y(self) -> None:
        """The count axis from the floor to above the peak, with room left at the top for the legend
        (top left, over the left tail): at narrow widths it used to cover the curve."""
        st = self.stats
        if st is None or st.n_finite == 0:
            return
        pi = self.pw.getPlotItem()
        log = self.log.isChecked()
        top = float(st.hist_counts.max())
        if self.ov_curve.isVisible() and self.overlay is not None:
            top = max(top, float(self.overlay.hist_counts.max()))
        legend_h = pi.legend.boundingRect().height() + 10 + 8 if pi.legend is not None else 0.0   # + offset, gap
        frac = min(0.5, legend_h / max(pi.vb.height(), 100.0))      # of the plot's height the legend takes
        if log:
            lo, hi = math.log10(0.5), math.log10(max(top, 1.0))
            pi.setYRange(lo, hi + (hi - lo) * frac / (1 - frac), padding=0.02)
        else:
            pi.setYRange(0.0, max(top, 1.0) / (1 - frac), padding=0.02)

    def _draw_levels(self) -> None:
        """The level ticks, from the log floor (or 0) up a fraction of the histogram's height."""
        st, lv = self.stats, self.levels
        show = lv is not None and self.show_levels.isChecked() and lv.levels.size > 0
        if show:
            log = self.log.isChecked()
            floor, top = (0.5 if log else 0.0), float(st.hist_counts.max())
            y1 = floor * (top / floor) ** LEVEL_TICK if log else LEVEL_TICK * top
            self.level_ticks.setData(np.repeat(lv.levels.astype(np.float64), 2), np.tile([floor, y1], lv.levels.size))
            self._legend_name(self.level_ticks, f"{lv.type} levels: {lv.levels.size:,}")   # the tooltip says more
        self.level_ticks.setVisible(show)
        # what the ticks are, in the plot's tooltip: a caption line more would re-lay out the plot twice
        # per selected tensor (the caption grows when they come, shrinks with the next tensor)
        self.pw.setToolTip(f"Green ticks: {self.levels_text()}" if show else "")

    def _caption(self) -> None:
        st, lv = self.stats, self.levels
        o3, o6 = st.outliers_k.get(3, 0), st.outliers_k.get(6, 0)
        self.set_caption(
            f"{st.n_finite:,} weights · mean {fmt.num(st.mean, 3)} · std {fmt.num(st.std, 3)} · kurtosis "
            f"{fmt.num(st.kurtosis, 3)} · beyond 3σ: {o3:,} · beyond 6σ: <span style='color:{WARN}'>{o6:,}</span>"
            + (f" · NaN {st.nan_count:,} · Inf {st.inf_count:,}" if st.nan_count or st.inf_count else "")
            + (f"<br><span style='color:{OVERLAY}'>orange</span>: {self.overlay_sample_text()}"
               if self.ov_curve.isVisible() else "")
            + (f"<br>{lv.note}" if lv is not None and lv.note else ""))

    def levels_text(self) -> str:
        """What the green ticks are: one block's level set, which block, and how it was chosen."""
        lv = self.levels
        if lv is None:
            return ""
        return (f"the {lv.levels.size:,} values one block can take in {lv.type} (row {lv.row:,}, block {lv.block}: "
                f"the median |max| of {lv.blocks_sampled:,} sampled blocks; other blocks scale them)")

    def overlay_sample_text(self) -> str:
        """What the orange curve is: exact counts of a sample of rows, said so with its size."""
        ov, st = self.overlay, self.stats
        if ov is None or st is None:
            return ""
        rows = ov.shape[0] if len(ov.shape) > 1 else 1
        total = st.shape[0] if len(st.shape) > 1 else 1
        return (f"after {self.overlay_type} and back, a sample's own counts: {ov.n_finite:,} weights "
                f"({rows:,} of {total:,} rows)")

    def _legend_name(self, item, text: str) -> None:
        legend = self.pw.getPlotItem().legend
        for sample, label in getattr(legend, "items", []):
            if sample.item is item:
                label.setText(text)


class ErrorPlot(_PlotPanel):
    """The error ``x - q(x)`` of every weight of the selected tensor in the selected type (a
    core.levels.ErrorHistogram computed over all rows in a worker), with ±RMSE marked; while it is
    computed, its progress. ``key``: the (tensor, type) shown or being computed. Hidden, it only
    remembers what to draw (drawn when shown)."""

    def __init__(self, parent=None):
        super().__init__("Error x − q(x) of every weight", parent)
        self.log = QCheckBox("Log counts", checked=True)
        self.controls.addWidget(self.log)
        self.controls.addStretch(1)
        self.pw.setLabel("bottom", "x − q(x)")
        self.pw.setLabel("left", "count")
        pi = self.pw.getPlotItem()
        pi.addLegend(offset=(-10, 10))           # top right: the peak is in the middle
        self.curve = pg.PlotDataItem(stepMode="center", pen=pg.mkPen(WARN, width=1.2),
                                     brush=pg.mkBrush(QColor(WARN).name() + "50"), name="x − q(x)")
        self.rmse_lines = [pg.InfiniteLine(0.0, angle=90, pen=pg.mkPen(ACCENT, width=1, style=Qt.PenStyle.DashLine))
                           for _ in range(2)]
        for it in [self.curve] + self.rmse_lines:
            pi.addItem(it)
        self.result = None                   # core.levels.ErrorHistogram, or the exception of a failed one
        self.pending: Optional[tuple[str, str]] = None      # (tensor, type) being computed
        self.key: Optional[tuple[str, str]] = None          # (tensor, type) shown or being computed
        self._dirty = False
        self.log.toggled.connect(self.redraw)
        self.redraw()

    def set_pending(self, name: str, qtype: str) -> None:
        self.result, self.pending = None, (name, qtype)
        self.key = self.pending
        self.redraw()

    def set_progress(self, ev) -> None:
        if self.pending is not None and self.result is None and self.isVisible():
            self.set_caption(f"Computing x − q(x) of every weight in {self.pending[1]}… {ev.fraction:.0%}")

    def set_result(self, result) -> None:
        self.result, self.pending = result, None
        self.redraw()

    def clear(self) -> None:
        self.result = self.pending = self.key = None
        self.redraw()

    def showEvent(self, ev) -> None:
        super().showEvent(ev)
        if self._dirty:
            self.redraw()

    def redraw(self) -> None:
        self._dirty = not self.isVisible()
        if self._dirty:
            return
        pi = self.pw.getPlotItem()
        log = self.log.isChecked()
        if pi.ctrl.logYCheck.isChecked() != log:
            pi.setLogMode(False, log)
        h = self.result
        if h is None or isinstance(h, BaseException) or h.n == 0:
            for it in [self.curve] + self.rmse_lines:
                it.setVisible(False)
            self.set_caption(f"x − q(x) not computed: {h}" if isinstance(h, BaseException) else
                             f"Computing x − q(x) of every weight in {self.pending[1]}…" if self.pending else
                             "Select a quantized tensor." if h is None else "No finite errors.")
            return
        floor = 0.5 if log else 0.0
        self.curve.setFillLevel(math.log10(floor) if log else 0.0)
        self.curve.setData(h.edges, np.maximum(h.counts.astype(np.float64), floor))
        self.curve.setVisible(True)
        for line, sign in zip(self.rmse_lines, (-1, 1)):
            line.setValue(sign * h.rmse)
            line.setVisible(h.rmse > 0)
        legend = self.pw.getPlotItem().legend
        for sample, label in getattr(legend, "items", []):
            if sample.item is self.curve:
                label.setText(f"{h.type}: RMSE {fmt.num(h.rmse, 3)}")
        pi.enableAutoRange()
        clipped = h.below + h.above
        self.set_caption(
            f"{h.n:,} weights, every row, in {h.type} · RMSE {fmt.num(h.rmse, 4)} "
            f"(<span style='color:{ACCENT}'>dashed: ±RMSE</span>) · max |x − q(x)| {fmt.num(h.max_abs_err, 3)}"
            + (f" · {clipped:,} beyond ±{fmt.num(h.edges[-1], 3)} counted in the end bins" if clipped else "")
            + (f" · non-finite {h.n_nonfinite:,}" if h.n_nonfinite else ""))


class ChannelPlot(_PlotPanel):
    """Abs-max per input channel (column) or per output row; outlier channels highlighted."""

    FACTOR = 4.0       # a channel is marked when its |max| exceeds FACTOR x the median

    def __init__(self, parent=None):
        super().__init__("Per-channel |max|", parent)
        self.axis = QComboBox()
        self.axis.addItems(["Input channels (columns)", "Output rows"])
        self.controls.addWidget(self.axis)
        self.controls.addStretch(1)
        self.pw.setLabel("left", "|max|")
        pi = self.pw.getPlotItem()
        self.curve = pg.PlotDataItem(pen=pg.mkPen(ACCENT, width=1), fillLevel=0,
                                     brush=pg.mkBrush(QColor(ACCENT).name() + "40"))
        self.median = pg.InfiniteLine(0.0, angle=0, pen=pg.mkPen("#8b8d98", style=Qt.PenStyle.DashLine),
                                      label="median", labelOpts={"position": 0.05, "color": "#8b8d98"})
        self.marks = pg.ScatterPlotItem(size=7, brush=pg.mkBrush(WARN), pen=pg.mkPen(None))
        for it in (self.curve, self.median, self.marks):
            pi.addItem(it)
        self.stats = None
        self.axis.currentIndexChanged.connect(self.redraw)
        self.redraw()

    def set_stats(self, st) -> None:
        self.stats = st
        self.redraw()

    def clear(self) -> None:
        self.stats = None
        self.redraw()

    def redraw(self) -> None:
        st = self.stats
        if st is None or st.n_finite == 0:
            for it in (self.curve, self.median, self.marks):
                it.setVisible(False)
            self.set_caption("")
            return
        cols = self.axis.currentIndex() == 0
        vals = st.col_absmax if cols else st.row_absmax
        ratio = st.col_absmax_ratio if cols else st.row_absmax_ratio
        self.pw.setLabel("bottom", "input channel" if cols else "output row")
        x = np.arange(vals.size)
        self.curve.setData(x, vals)
        self.curve.setVisible(True)
        median = float(vals.max()) / ratio if ratio and math.isfinite(ratio) and ratio > 0 else None
        n_out = 0
        if median:
            self.median.setValue(median)
            mask = vals > self.FACTOR * median
            n_out = int(mask.sum())
            self.marks.setData(x[mask], vals[mask])
        self.median.setVisible(bool(median))
        self.marks.setVisible(n_out > 0)
        self.pw.getPlotItem().enableAutoRange()
        what = "channels" if cols else "rows"
        self.set_caption(f"{vals.size:,} {what} · max/median {fmt.num(ratio, 3)} · "
                             f"{n_out} {what} above {self.FACTOR:g}× the median (red)")


def tensor_kind(name: str) -> str:
    return _LAYER_PREFIX.sub("", name)


class LayerHeatmap(_PlotPanel):
    """One metric for every (tensor kind, layer); click a cell to select that tensor."""

    tensorClicked = Signal(str)
    METRICS = ["Kurtosis", "Std", "Absmax", "Col spread", "Beyond 6σ", "Predicted error"]

    def __init__(self, parent=None):
        super().__init__("Layer by layer", parent)
        self.metric = QComboBox()
        self.metric.addItems(self.METRICS)
        self.metric.setToolTip("What the colour shows: a statistic, or the predicted error of the planned type")
        self.controls.addWidget(QLabel("Colour:"))
        self.controls.addWidget(self.metric)
        self.controls.addStretch(1)
        self.img = pg.ImageItem()
        self.pw.addItem(self.img)
        self.pw.setLabel("bottom", "layer")
        self.pw.getPlotItem().invertY(True)
        self.pw.showGrid(x=False, y=False)
        self.bar = pg.ColorBarItem(colorMap=pg.colormap.get("viridis"), interactive=False, width=14)
        self.bar.setImageItem(self.img, insert_in=self.pw.getPlotItem())
        # the selected tensor: a frame around its cell
        self.mark = pg.PlotDataItem(pen=None, symbol="s", symbolSize=1, symbolBrush=pg.mkBrush(None),
                                    symbolPen=pg.mkPen(WARN, width=2.5), pxMode=False)
        self.mark.setZValue(10)
        self.pw.addItem(self.mark)
        self.selected: Optional[str] = None
        self.session = None
        self._dirty = True
        self.kinds: list[str] = []
        self.grid: dict[tuple[int, int], str] = {}
        self.values: Optional[np.ndarray] = None
        self.metric.currentIndexChanged.connect(self.redraw)
        self.img.mouseClickEvent = self._click

    def set_session(self, session) -> None:
        self.session = session

    def set_selected(self, name: Optional[str]) -> None:
        """Frame the cell of ``name`` (nothing when it has none)."""
        self.selected = name
        self._place_mark()

    def cell_of(self, name: Optional[str]) -> Optional[tuple[int, int]]:
        return next((rc for rc, n in self.grid.items() if n == name), None) if name else None

    def _place_mark(self) -> None:
        rc = self.cell_of(self.selected)
        if rc is None or self.values is None:
            self.mark.setData([], [])
            self.mark.setVisible(False)
            return
        r, c = rc
        self.mark.setData([c + 0.5], [r + 0.5])          # cell (r, c) spans [c, c+1] x [r, r+1]
        self.mark.setVisible(True)

    def value(self, name: str) -> Optional[float]:
        s = self.session
        m = self.metric.currentText()
        if m == "Predicted error":
            pe = s.planned_errors.get(name)
            return None if pe is None else pe.metrics.rel_rmse * 100
        st = s.stats.get(name)
        if st is None:
            return None
        return {"Kurtosis": st.kurtosis, "Std": st.std, "Absmax": st.absmax, "Col spread": st.col_absmax_ratio,
                "Beyond 6σ": float(st.outliers_k.get(6, 0))}[m]

    def showEvent(self, ev) -> None:
        super().showEvent(ev)
        if self._dirty:
            self.redraw()

    def resizeEvent(self, ev) -> None:
        super().resizeEvent(ev)
        if self.values is not None:
            self._dirty = True                      # the layer labels' spacing follows the width
            from .workers import soon
            if not hasattr(self, "_resize_timer"):
                from PySide6.QtCore import QTimer
                self._resize_timer = QTimer(self, singleShot=True, interval=150)
                self._resize_timer.timeout.connect(self.redraw)
            soon(self._resize_timer)

    def redraw(self, force: bool = False) -> None:
        """Redraw now if visible (or ``force``), else when next shown."""
        if not (force or self.isVisible()):
            self._dirty = True
            return
        self._dirty = False
        s = self.session
        if s is None or s.source is None:
            self.img.clear()
            return
        layered = [t for t in s.source.tensors if t.layer is not None and t.n_dims >= 2]
        kinds: list[str] = []
        for t in layered:
            k = tensor_kind(t.name)
            if k not in kinds:
                kinds.append(k)
        n_layers = s.source.n_layers
        vals = np.full((len(kinds), max(n_layers, 1)), np.nan)
        self.grid = {}
        for t in layered:
            r, c = kinds.index(tensor_kind(t.name)), t.layer
            self.grid[(r, c)] = t.name
            v = self.value(t.name)
            if v is not None and math.isfinite(v):
                vals[r, c] = v
        self.kinds, self.values = kinds, vals
        ax = self.pw.getPlotItem().getAxis("left")
        ax.setTicks([[(i + 0.5, k.replace(".weight", "")) for i, k in enumerate(kinds)]])
        # layer numbers under the middle of their column (every n-th when there are many)
        width = self.pw.getPlotItem().getViewBox().width() or self.pw.width()
        step = max(1, math.ceil(n_layers / max(2, width // 26)))              # a label per 26 px at most
        step = next(k for k in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, step) if k >= step)
        self.pw.getPlotItem().getAxis("bottom").setTicks(
            [[(c + 0.5, str(c)) for c in range(0, max(n_layers, 1), step)], []])
        finite = vals[np.isfinite(vals)]
        if finite.size == 0:
            self.img.clear()
            self._place_mark()
            done, total = s.stats_progress() if hasattr(s, "stats_progress") else (0, 0)
            self.set_caption(f"Waiting for statistics… ({done}/{total} tensors)")
            return
        lo, hi = float(finite.min()), float(finite.max())
        if hi <= lo:
            hi = lo + 1e-12
        self.img.setImage(vals, levels=(lo, hi))
        self.img.setRect(0, 0, vals.shape[1], vals.shape[0])
        self.bar.setLevels((lo, hi))
        self.pw.getPlotItem().setLimits(xMin=-0.5, xMax=vals.shape[1] + 0.5, yMin=-0.5, yMax=vals.shape[0] + 0.5)
        self._place_mark()
        self.pw.getPlotItem().autoRange(items=[self.img])
        have = int(np.isfinite(vals).sum())
        done, total = s.stats_progress() if hasattr(s, "stats_progress") else (0, 0)
        self.set_caption(f"{self.metric.currentText()} of {have} / {len(self.grid)} layer tensors "
                             f"(range {fmt.num(lo, 3)} – {fmt.num(hi, 3)}); click a cell to select the tensor"
                             + (f"<br>statistics {done}/{total} tensors (as in the status bar)" if done < total else ""))

    def _click(self, ev) -> None:
        p = ev.pos()
        key = (int(p.y()), int(p.x()))
        name = self.grid.get(key)
        if name:
            self.tensorClicked.emit(name)
            ev.accept()


class FrontierPlot(pg.PlotWidget):
    """Size vs estimated relative error of every preset, and the current plan (★)."""

    Y_SCALE = 100.0                          # the error as drawn: a percentage (a subclass may draw it as is)
    LABEL_GAP = 0.07                         # a dot's name is left out this near (fraction of the x span) another's
    LABEL_GAP_Y = 0.35                       # ... and this near in decades of the (log) y axis

    def __init__(self, parent=None):
        super().__init__(parent)
        decade_axis(self)
        self.setLabel("bottom", "size (MiB)")
        self.setLabel("left", "rel. RMSE (%)")
        self.setLogMode(False, True)
        self.showGrid(x=True, y=True, alpha=0.15)
        self.setMinimumHeight(150)
        self.setMinimumWidth(240)            # narrower, its axis labels overlap (the dock scrolls instead)
        self.points: list = []
        self.current: Optional[tuple[float, float]] = None
        self.dark = False
        self.dots = pg.PlotDataItem(pen=None, symbol="o", symbolSize=8, symbolBrush=pg.mkBrush(ACCENT), symbolPen=None)
        self.dots.setToolTip("presets: size and estimated error")
        self.star = pg.PlotDataItem(pen=None, symbol="star", symbolSize=16, symbolBrush=pg.mkBrush(OVERLAY))
        self.labels: list = []
        self.addItem(self.dots)
        self.addItem(self.star)
        self.getPlotItem().getViewBox().setDefaultPadding(0.08)     # room for the names of the outer dots
        self._axes(False)

    def _axes(self, shown: bool) -> None:
        """No empty axes while the points are being estimated: a line that says so instead."""
        for ax in ("left", "bottom"):
            self.getPlotItem().showAxis(ax, shown)
        self.setTitle(None if shown else "Size vs error of the presets: estimating…",
                      color="#8b8d98", size="9pt")

    def set_dark(self, dark: bool) -> None:
        self.dark = dark
        style_plot(self, dark)
        self.star.setSymbolPen(pg.mkPen("#c9cbd1" if dark else "#33353d"))
        self.set_points(self.points, force=True)

    def set_points(self, points, force: bool = False) -> None:
        points = list(points)
        if points == self.points and not force:
            return
        self.points = points
        for t in self.labels:
            self.removeItem(t)
        self.labels = []
        pts = [(n, b, r) for n, b, r, *_ in points if r and r > 0 and math.isfinite(r)]
        self._axes(bool(pts))
        self.star.setVisible(bool(pts))                  # no lone star on a chart without axes
        if not pts:
            self.dots.setData([], [])
            return
        xs = np.array([b / 2**20 for _, b, _ in pts])
        ys = np.array([r * self.Y_SCALE for _, _, r in pts])
        self.dots.setData(xs, ys)
        font = QFont()
        font.setPointSizeF(7.5)
        fg = "#c9cbd1" if self.dark else "#33353d"
        span = max(float(xs.max() - xs.min()), 1e-9)
        placed: list[tuple[float, float]] = []
        for (n, _, _), x, y in zip(pts, xs, ys):
            ly = math.log10(y)
            if any(abs(x - px) < self.LABEL_GAP * span and abs(ly - py) < self.LABEL_GAP_Y for px, py in placed):
                continue                            # crowded: the dot stays, its name does not
            placed.append((x, ly))
            right = x > xs.min() + 0.6 * span       # names of the right-hand dots go to their left: never clipped
            t = pg.TextItem(n, color=fg, anchor=(1, 1) if right else (0, 1))
            t.setFont(font)
            t.setPos(x, ly)
            self.addItem(t)
            self.labels.append(t)

    def set_current(self, nbytes: Optional[int], rel: Optional[float]) -> None:
        cur = None if nbytes is None or rel is None or not rel > 0 else (nbytes, rel)
        if cur == self.current:
            return
        self.current = cur
        if cur is None:
            self.star.setData([], [])
        else:
            self.star.setData([cur[0] / 2**20], [cur[1] * self.Y_SCALE])
