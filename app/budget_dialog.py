"""Quantize › Fit a Budget…: the studio chooses a type per tensor for a target file size, bits per weight or
memory (core.budget: measured error per tensor × type, scaled by each tensor's measured KLD sensitivity, then
an exact allocation), in the worker processes.

The first fit measures the model (minutes; cached) and puts the solved plan in the session (undoable). From then
on the measurements are kept and every change of the target (the slider, the value), of the pins or of the
allowed types is solved again at once in the background (a tenth of a second, throttled, one solve in flight):
the chart shows predicted error against file size for every preset and for the solver across the sizes it can
reach, the heat map the bits per weight of the solved plan per layer and tensor kind; "Use this plan" puts it in
the session, "Evaluate vs nearest preset" simulates it and the preset nearest its size on held-out text. Pins
come from the tensor table's context menu too (Session.pin_budget)."""
from __future__ import annotations

import html
import math
from typing import Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QFormLayout, QHBoxLayout, QLabel,
                               QLineEdit, QPlainTextEdit, QPushButton, QSlider, QSpinBox, QSplitter, QVBoxLayout,
                               QWidget)

from core.budget import DEFAULT_TYPES, bpw_grid, parse_pin, parse_size_text
from core.errors import QuantStudioError

from . import fmt
from .widgets import EventProgressBar
from .plots import ACCENT, OVERLAY, WARN, FrontierPlot, _PlotPanel, style_plot
from .session import Session
from .workers import soon

KINDS = [("File size", "size", "e.g. 4.5G, 80M or a number of bytes"),
         ("Bits per weight", "bpw", "e.g. 4.5"),
         ("Memory (weights + KV cache + compute buffer)", "memory", "e.g. 8G, with the context below")]
STEPS = 1000                     # slider positions from the smallest plan the solver can make to the largest
PRESET_COLOUR = "#8e4ec6"


def _up(x: float, digits: int) -> float:
    """``x`` rounded up to ``digits`` decimals: a target from the slider is never below the plan it shows."""
    return math.ceil(x * 10 ** digits - 1e-9) / 10 ** digits


class BudgetChart(FrontierPlot):
    """Predicted error against file size: the presets (dots, named), the solver's plans across the sizes it can
    reach (line), the plan solved for the target (★) and the target (dashed line)."""

    Y_SCALE = 1.0
    LABEL_GAP = 0.12                         # the presets share the x axis with the solver's range: denser

    def __init__(self, parent=None):
        self.curve = pg.PlotDataItem(pen=pg.mkPen(ACCENT, width=2), symbol="o", symbolSize=4,
                                     symbolBrush=pg.mkBrush(ACCENT), symbolPen=None)
        super().__init__(parent)
        self.setMinimumHeight(220)
        self.curve.setZValue(-1)
        self.addItem(self.curve)
        self.dots.setSymbolBrush(pg.mkBrush(PRESET_COLOUR))
        self.dots.setToolTip("llama-quantize presets: their size and the error the same model predicts")
        self.target = pg.InfiniteLine(angle=90, pen=pg.mkPen(OVERLAY, width=1.5, style=Qt.PenStyle.DashLine))
        self.target.setVisible(False)
        self.addItem(self.target)
        self.chart: Optional[dict] = None

    def _axes(self, shown: bool) -> None:
        for ax in ("left", "bottom"):
            self.getPlotItem().showAxis(ax, shown)
        self.setTitle(None if shown else "Predicted error vs size: after the first fit (it measures the model)",
                      color="#8b8d98", size="9pt")

    def set_chart(self, chart: Optional[dict]) -> None:
        self.chart = chart
        if chart is None:
            self.set_points([])
            self.curve.setData([], [])
            self.target.setVisible(False)
            self.set_current(None, None)
            return
        self.setLabel("left", f"predicted {chart['unit']}")
        pts = [(b, e) for b, e, _ in chart["frontier"] if e > 0 and math.isfinite(e)]
        ys = [e for _, e in pts] + [e for _, _, e in chart["presets"] if e > 0]
        # a name is about 5 % of the plot's height: in decades of the y axis, whatever it spans
        self.LABEL_GAP_Y = 0.05 * max(1.0, math.log10(max(ys) / min(ys))) if ys else 0.35
        self.set_points(chart["presets"], force=True)
        self.curve.setData([b / 2**20 for b, _ in pts], [e for _, e in pts])
        self._axes(bool(pts or self.points))
        self.star.setVisible(True)

    def set_target(self, nbytes: Optional[float]) -> None:
        self.target.setVisible(nbytes is not None)
        if nbytes is not None:
            self.target.setValue(nbytes / 2**20)


class BpwHeatmap(_PlotPanel):
    """Bits per weight of the solved plan for every (tensor kind, layer)."""

    def __init__(self, parent=None):
        super().__init__("Bits per weight of the solved plan", parent)
        self.img = pg.ImageItem()
        self.pw.addItem(self.img)
        self.pw.setLabel("bottom", "layer")
        self.pw.getPlotItem().invertY(True)
        self.pw.showGrid(x=False, y=False)
        self.pw.setMinimumHeight(170)
        self.bar = pg.ColorBarItem(colorMap=pg.colormap.get("viridis"), interactive=False, width=14)
        self.bar.setImageItem(self.img, insert_in=self.pw.getPlotItem())
        self.kinds: list[str] = []
        self.values: Optional[np.ndarray] = None

    def set_grid(self, grid: Optional[tuple], levels: Optional[tuple[float, float]] = None) -> None:
        """``grid``: core.budget.bpw_grid's (layers, kinds, kinds × layers array); ``levels``: the colour range
        (fixed while the target moves, so that colours compare)."""
        if grid is None or not np.isfinite(grid[2]).any():
            self.kinds, self.values = [], None
            self.img.clear()
            self.set_caption("")
            return
        layers, kinds, vals = grid
        self.kinds, self.values = list(kinds), vals
        lo, hi = levels or (float(np.nanmin(vals)), float(np.nanmax(vals)))
        hi = hi if hi > lo else lo + 1.0
        self.img.setImage(vals, levels=(lo, hi))
        self.img.setRect(0, 0, vals.shape[1], vals.shape[0])
        self.bar.setLevels((lo, hi))
        pi = self.pw.getPlotItem()
        pi.getAxis("left").setTicks([[(i + 0.5, k.replace(".weight", "")) for i, k in enumerate(kinds)]])
        step = next(k for k in (1, 2, 5, 10, 20, 50, 100) if len(layers) / k <= 16)
        pi.getAxis("bottom").setTicks([[(c + 0.5, str(c)) for c in layers[::step]], []])
        pi.setLimits(xMin=-0.5, xMax=vals.shape[1] + 0.5, yMin=-0.5, yMax=vals.shape[0] + 0.5)
        pi.autoRange(items=[self.img])
        self.set_caption(f"{len(kinds)} tensor kinds × {len(layers)} layers: {np.nanmin(vals):.2f} – "
                         f"{np.nanmax(vals):.2f} bpw (mean {np.nanmean(vals):.2f})")


class BudgetDialog(QDialog):
    def __init__(self, session: Session, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setWindowTitle("Fit a budget: a type per tensor for a target")
        self.s = session
        self.dark = bool(getattr(parent, "dark", False))
        self.handle = None               # the measuring fit (jobs process)
        self.solver = None               # the live solve in flight (analysis process)
        self.checker = None              # the evaluation against the nearest preset
        self.result: Optional[dict] = None    # what the last fit or "Use this plan" put in the session
        self.live: Optional[dict] = None      # the last solve: core.tasks.budget_solve's dict
        self.chart: Optional[dict] = None     # core.budget.frontier of the measurements, pins and allowed types
        self.overhead = 0                     # KV cache + compute buffer bytes at the context (memory targets)
        imp = self.s.imatrix_path          # measurements made with another imatrix than the loaded one are stale
        self.meas: dict[bool, tuple] = {k: v for k, v in self.s.model.budget_meas.items() if imp in (None, v[1])}
        self._again = False                   # inputs changed while a solve was in flight
        self._want_chart = True
        self._apply_when_solved = False
        self._solving_chart = False
        self._fit_fast = False
        self.check_result: Optional[dict] = None
        self._syncing = False                 # the value and the slider follow each other, not loop
        self._timer = QTimer(self, singleShot=True, interval=120)
        self._timer.timeout.connect(self._solve_now)

        self.kind = QComboBox()
        for label, _, _ in KINDS:
            self.kind.addItem(label)
        size = self.s.planned_bytes() if self.s.plan is not None else 0
        self.value = QLineEdit(str(size) if size else "")     # the current plan's exact size, in bytes
        self.slider = QSlider(Qt.Orientation.Horizontal, minimum=0, maximum=STEPS, enabled=False)
        self.slider.setToolTip("From the smallest plan the allowed types make to the largest; solved as you move it")
        self.context = QSpinBox(minimum=256, maximum=1 << 20, value=4096, singleStep=1024)
        self.fast = QCheckBox("Fast: imatrix-weighted error, no KLD pass")
        self.fast.setToolTip("Skip the forward passes that measure how much the output reacts to each layer and "
                             "tensor kind: seconds instead of minutes, a cruder error model")
        self.allow = QLineEdit()
        self.allow.setPlaceholderText("all (or e.g. Q8_0,Q6_K,Q4_K,IQ4_XS)")
        self.pins = QPlainTextEdit()
        self.pins.setPlaceholderText("One per line: REGEX=TYPE (exactly) or REGEX=>=TYPE (at least as many bits),\n"
                                     "e.g. ffn_down=>=Q5_0 -- or right-click tensors in the table")
        self.pins.setFixedHeight(4 * self.pins.fontMetrics().lineSpacing() + 12)
        self.pins.setPlainText("\n".join(self.s.model.budget_pins))
        self._prefill()
        form = QFormLayout()
        form.addRow("Target:", self.kind)
        form.addRow("Value:", self.value)
        form.addRow("", self.slider)
        form.addRow("Context:", self.context)
        form.addRow("Allowed types:", self.allow)
        form.addRow("Pins:", self.pins)
        form.addRow("", self.fast)
        self.summary = QLabel()                 # the solved plan: size, bpw, predicted error, against the target
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.check_btn = QPushButton("Evaluate vs nearest preset")
        self.check_btn.setToolTip("Simulate the solved plan and the llama-quantize preset nearest its size on "
                                  "held-out chunks of the built-in text and compare their KL-divergence")
        self.check_btn.setEnabled(False)
        self.check_btn.clicked.connect(self.evaluate)
        self.check = QLabel()
        self.check.setWordWrap(True)
        self.progress = EventProgressBar()
        self.status = QLabel("The first fit measures the model (its imatrix from the built-in text when none is "
                             "loaded, each tensor's error per type and how much the output reacts to each layer "
                             "and kind): minutes. The measurements are kept: any other target is then solved as "
                             "you change it.")
        self.status.setWordWrap(True)
        self.log = QPlainTextEdit(readOnly=True)
        self.log.setMinimumHeight(60)
        left = QVBoxLayout()
        left.addLayout(form)
        left.addWidget(self.summary)
        left.addWidget(self.check_btn, 0, Qt.AlignmentFlag.AlignLeft)
        left.addWidget(self.check)
        left.addWidget(self.progress)
        left.addWidget(self.status)
        left.addWidget(self.log, 1)
        side = QWidget()
        side.setLayout(left)
        side.setMinimumWidth(380)
        side.setMaximumWidth(460)
        self.chart_view = BudgetChart()
        self.heat = BpwHeatmap()
        style_plot(self.chart_view, self.dark)
        self.heat.set_dark(self.dark)
        self.chart_view.set_dark(self.dark)
        plots = QSplitter(Qt.Orientation.Vertical)
        plots.addWidget(self.chart_view)
        plots.addWidget(self.heat)
        plots.setSizes([330, 290])
        self.buttons = QDialogButtonBox()
        self.run_btn = self.buttons.addButton("Measure && fit", QDialogButtonBox.ButtonRole.AcceptRole)
        self.close_btn = self.buttons.addButton(QDialogButtonBox.StandardButton.Close)
        self.run_btn.clicked.connect(self.start)
        self.close_btn.clicked.connect(self._cancel_or_close)
        top = QHBoxLayout()
        top.addWidget(side)
        top.addWidget(plots, 1)
        lay = QVBoxLayout(self)
        lay.addLayout(top, 1)
        lay.addWidget(self.buttons)

        self.kind.currentIndexChanged.connect(self._kind)
        self.value.textChanged.connect(self._value_edited)
        self.slider.valueChanged.connect(self._slid)
        self.context.valueChanged.connect(lambda _v: self._schedule())
        self.allow.textChanged.connect(lambda _t: self._schedule(chart=True))
        self.fast.toggled.connect(self._fast)
        self.pins.textChanged.connect(self._pins_edited)
        self.s.budgetPinsChanged.connect(self._pins_changed)
        self._kind_ui()
        self._fast()
        self.resize(1100, 720)

    # -- inputs ---------------------------------------------------------------------------------
    def _prefill(self) -> None:
        """A plan the solver made opens with its target, allowed types and pins."""
        b = getattr(self.s.plan, "budget", None) if self.s.plan is not None else None
        if not b:
            return
        t = b.get("target", {})
        kinds = [k for _, k, _ in KINDS]
        if t.get("kind") in kinds:
            self.kind.setCurrentIndex(kinds.index(t["kind"]))
            v = t.get("value", 0)
            self.value.setText(f"{v:g}" if t["kind"] == "bpw" else str(int(v)))
            if t["kind"] == "memory" and t.get("n_ctx"):
                self.context.setValue(int(t["n_ctx"]))
        allowed = list(b.get("allowed_types") or ())
        if allowed and set(allowed) != set(DEFAULT_TYPES):
            self.allow.setText(",".join(allowed))
        if b.get("pins") and not self.s.model.budget_pins:
            self.s.set_budget_pins(list(b["pins"]))
            self.pins.setPlainText("\n".join(self.s.model.budget_pins))

    def kind_key(self) -> str:
        return KINDS[self.kind.currentIndex()][1]

    def _kind_ui(self) -> None:
        _, kind, hint = KINDS[self.kind.currentIndex()]
        self.value.setPlaceholderText(hint)
        self.value.setToolTip(hint)
        self.context.setEnabled(kind == "memory")

    def _kind(self) -> None:
        """Another kind of target: the value becomes the solved plan's in the new unit."""
        self._kind_ui()
        r = self.live["result"] if self.live else None
        if r is not None:
            self._set_value(self._value_of(r.size, r.bpw))
        self._schedule()

    def _value_of(self, size: int, bpw: float) -> float:
        kind = self.kind_key()
        return bpw if kind == "bpw" else size + (self.overhead if kind == "memory" else 0)

    def _text_of(self, v: float) -> str:
        return f"{_up(v, 3):.3f}" if self.kind_key() == "bpw" else f"{_up(v / 1e6, 2):.2f}M"

    def _parse(self, text: str) -> Optional[float]:
        try:
            return float(text) if self.kind_key() == "bpw" else float(parse_size_text(text))
        except (ValueError, QuantStudioError):
            return None

    def _range(self) -> Optional[tuple[float, float]]:
        """The slider's ends in the target's unit: the smallest and the largest plan the solver can make."""
        c = self.chart
        if c is None:
            return None
        return self._value_of(c["lo"].size, c["lo"].bpw), self._value_of(c["hi"].size, c["hi"].bpw)

    def _set_value(self, v: float) -> None:
        self.value.setText(self._text_of(v))

    def _value_edited(self, text: str) -> None:
        if self._syncing:
            return
        v, rng = self._parse(text.strip()), self._range()
        if v is not None and rng is not None:
            self._place_slider(v, rng)
        self._schedule()

    def _place_slider(self, v: float, rng: tuple[float, float]) -> None:
        lo, hi = rng
        pos = 0 if hi <= lo else round(STEPS * (v - lo) / (hi - lo))
        self._syncing = True
        self.slider.setValue(min(max(pos, 0), STEPS))
        self._syncing = False

    def _slid(self, pos: int) -> None:
        rng = self._range()
        if self._syncing or rng is None:
            return
        lo, hi = rng
        self._syncing = True
        self._set_value(lo + (hi - lo) * pos / STEPS)
        self._syncing = False
        self._schedule()

    def _pins_edited(self) -> None:
        lines = [x.strip() for x in self.pins.toPlainText().splitlines() if x.strip()]
        for line in lines:
            try:
                parse_pin(line)
            except QuantStudioError as e:
                self.pins.setStyleSheet("QPlainTextEdit { color: #e5484d; }")
                self.status.setText(html.escape(str(e)))
                return
        self.pins.setStyleSheet("")
        self.s.set_budget_pins(lines)          # budgetPinsChanged: solved again (_pins_changed)

    def _pins_changed(self) -> None:
        pins = self.s.model.budget_pins
        if [x.strip() for x in self.pins.toPlainText().splitlines() if x.strip()] != pins:
            self.pins.blockSignals(True)
            self.pins.setPlainText("\n".join(pins))
            self.pins.blockSignals(False)
        self._schedule(chart=True)

    def _fast(self) -> None:
        """Fast and full measurements are kept apart: the live view shows the ones of the checkbox."""
        measured = self.fast.isChecked() in self.meas
        self.run_btn.setText("Use this plan" if measured else "Measure && fit")
        self.run_btn.setToolTip("Put the solved plan in the session (Edit › Undo brings the old one back)" if measured
                                else "Measure the model (minutes the first time; cached), then solve and use the plan")
        if measured:
            self._schedule(chart=True)
        else:
            self.chart, self.live = None, None
            self.chart_view.set_chart(None)
            self.heat.set_grid(None)
            self.slider.setEnabled(False)
            self.check_btn.setEnabled(False)
            self.summary.setText("")

    # -- live solving -----------------------------------------------------------------------------
    def _schedule(self, chart: bool = False) -> None:
        """Solve again soon (throttled: one solve in flight, the latest inputs next)."""
        self._want_chart = self._want_chart or chart
        if self.fast.isChecked() in self.meas:
            soon(self._timer)

    def solving(self) -> bool:
        return self._timer.isActive() or self._again or (self.solver is not None and self.solver.running)

    def _solve_now(self) -> None:
        if self.solver is not None and self.solver.running:
            self._again = True
            return
        value = self.value.text().strip()
        fast = self.fast.isChecked()
        if not value or fast not in self.meas:
            return
        meas, imatrix_path = self.meas[fast]
        chart, self._want_chart = self._want_chart, False
        h = self.solver = self.s.solve_budget(meas, imatrix_path, self.kind_key(), value, self.context.value(),
                                              None, self.allow.text().strip() or None, chart=chart)
        self._solving_chart = chart
        # bound methods only: a late signal of a closed (deleted) dialog's task then reaches nobody
        h.succeeded.connect(self._solved)
        h.failed.connect(self._solve_failed)
        h.finished.connect(self._solve_finished)

    def _solve_failed(self, e) -> None:
        self._want_chart = self._want_chart or self._solving_chart
        self.live = None
        self.check_btn.setEnabled(False)
        self.chart_view.set_current(None, None)
        self.summary.setText(f"<b style='color:{WARN}'>Cannot solve</b>: {html.escape(str(e))}")

    def _solve_finished(self) -> None:
        if self._again:
            self._again = False
            self._solve_now()
        elif self._apply_when_solved and not self.solving():
            self._apply_when_solved = False
            self._apply()

    def _solved(self, out: dict) -> None:
        self.live = out
        self.overhead = out.get("memory_overhead", self.overhead)
        if out.get("chart") is not None:
            self.chart = out["chart"]
            self._heat_levels = self._levels(self.chart)
            self.chart_view.set_chart(self.chart)
            self.slider.setEnabled(True)
        r = out["result"]
        if r is None:
            self._solving_chart = False
            self._solve_failed(out["error"])
            return
        if self.chart is not None:
            v = self._parse(self.value.text().strip())
            if v is not None:
                self._place_slider(v, self._range())
        unit = self.chart["unit"] if self.chart else ("weighted error" if self.fast.isChecked() else "KLD")
        self.chart_view.set_current(r.size, out["predicted"])
        fixed = r.size - r.plan.tensor_bytes      # headers and padding: the bpw bound counts tensor data only
        self.chart_view.set_target(r.target_bytes + (fixed if r.target.kind == "bpw" else 0))
        self.heat.set_grid(out["grid"], self._heat_levels if self.chart is not None else None)
        counts = sorted(r.plan.type_counts().items(), key=lambda kv: -kv[1])
        what = {"size": "file size", "bpw": "bits per weight", "memory": "memory"}[r.target.kind]
        bound = (f"{r.target.value:g} bpw" if r.target.kind == "bpw" else
                 f"{fmt.human_bytes(int(r.target.value))} ({int(r.target.value):,} bytes)")
        self.summary.setText(
            f"<b>Solved plan: {fmt.human_bytes(r.size)}</b> ({r.size:,} bytes) · {r.bpw:.3f} bpw · predicted "
            f"{unit} {fmt.num(out['predicted'], 4)}<br>target {what} {html.escape(bound)}"
            + (f", context {r.target.n_ctx:,}: {fmt.human_bytes(r.target_bytes)} left for the file"
               if r.target.kind == "memory" else "")
            + f"<br><small>{html.escape(', '.join(f'{t} ×{n}' for t, n in counts))}</small>")
        self.check_btn.setEnabled(self.checker is None or not self.checker.running)

    @staticmethod
    def _levels(chart: dict) -> Optional[tuple[float, float]]:
        """The heat map's colour range: from the smallest plan's lowest bpw to the largest plan's highest, at most
        Q8_0's 8.5 (above it, F16 and the like, the top colour: the differences that matter stay visible)."""
        lo, hi = (bpw_grid(chart[k].plan)[2] for k in ("lo", "hi"))
        if not (np.isfinite(lo).any() and np.isfinite(hi).any()):
            return None
        a = float(np.nanmin(lo))
        return a, max(min(float(np.nanmax(hi)), 8.5), a + 0.5)

    # -- actions ------------------------------------------------------------------------------------
    def start(self) -> None:
        """Measure and fit (the first time), or put the solved plan in the session."""
        if self.fast.isChecked() in self.meas:
            if self.solving():
                self._apply_when_solved = True
            else:
                self._apply()
            return
        kind, value = self.kind_key(), self.value.text().strip()
        if not value:
            self.status.setText("Give a target value.")
            return
        self.run_btn.setEnabled(False)
        self.close_btn.setText("Cancel")
        self.status.setText("Measuring and solving…")
        h = self.handle = self.s.fit_budget(kind, value, self.context.value(), self.fast.isChecked(),
                                            self.allow.text().strip() or None)
        self._fit_fast = self.fast.isChecked()
        h.progress.connect(self.progress.show_event)
        h.succeeded.connect(self._done)
        h.failed.connect(self._fit_failed)
        h.cancelled.connect(self._fit_cancelled)
        h.finished.connect(self._finished)

    def _fit_failed(self, e) -> None:
        self.status.setText(f"<b style='color:{WARN}'>Cannot fit the budget</b>: {html.escape(str(e))}")

    def _fit_cancelled(self) -> None:
        self.status.setText("Cancelled; the plan is unchanged.")

    def _done(self, r: dict) -> None:
        self.result = r
        fast = self._fit_fast
        self.meas[fast] = self.s.model.budget_meas[fast] = (r["measurements"], r["imatrix_path"])
        self.progress.setValue(1000)
        self.progress.setFormat("done")
        self.log.setPlainText("\n".join(r["log"]))
        self._plan_used(r["plan"])
        self._fast()                           # "Use this plan"; the chart is computed next
        self._solved(r)

    def _apply(self) -> None:
        r = self.live["result"] if self.live else None
        if r is None:
            self.status.setText("Nothing solved to use: change the target.")
            return
        self.s.use_budget_plan(r.plan, self.meas[self.fast.isChecked()][1])
        self.result = {"plan": r.plan, "result": r}
        self._plan_used(r.plan)

    def _plan_used(self, plan) -> None:
        self.status.setText("The plan now has a type per tensor for the target; each tensor's reason says why "
                            "(Edit › Undo brings the previous plan back).")

    def evaluate(self) -> None:
        """The solved plan and the preset nearest its size, simulated on held-out text (core.budget)."""
        r = self.live["result"] if self.live else None
        if r is None:
            return
        self.check_btn.setEnabled(False)
        self.check.setText(f"Evaluating the {fmt.human_bytes(r.size)} plan and the nearest preset on held-out "
                           "text…")
        h = self.checker = self.s.check_budget(r.plan, self.meas[self.fast.isChecked()][1])
        h.progress.connect(self.progress.show_event)
        h.succeeded.connect(self._checked)
        h.failed.connect(self._check_failed)
        h.finished.connect(self._check_finished)

    def _check_failed(self, e) -> None:
        self.check.setText(f"<b style='color:{WARN}'>Cannot evaluate</b>: {html.escape(str(e))}")

    def _check_finished(self) -> None:
        self.check_btn.setEnabled(self.live is not None and self.live["result"] is not None)

    def _checked(self, c: dict) -> None:
        self.check_result = c
        self.progress.setValue(1000)
        self.progress.setFormat("evaluated")
        verdict = (f"<b style='color:{WARN}'>worse</b> than" if c["worse"] else "<b>better</b> than")
        self.check.setText(
            f"On held-out text, mean KLD: solved plan ({fmt.human_bytes(c['size'])}) <b>{c['plan_kld']:.5f}</b>, "
            f"{verdict} {html.escape(c['preset'])} ({fmt.human_bytes(c['preset_size'])}) "
            f"<b>{c['preset_kld']:.5f}</b>")

    def _finished(self) -> None:
        self.run_btn.setEnabled(True)
        self.close_btn.setText("Close")

    def _cancel_or_close(self) -> None:
        if self.handle is not None and self.handle.running:
            self.handle.cancel()
        else:
            self.close()
