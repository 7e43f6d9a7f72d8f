"""Live preview: every candidate type of the selected tensor side by side (sampled first, then
exact), and the plan's totals with a size-vs-error chart of the presets."""
from __future__ import annotations

from typing import Optional

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (QAbstractItemView, QGridLayout, QGroupBox, QHBoxLayout, QHeaderView, QLabel,
                               QSplitter, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from . import fmt, plan_choices
from .plots import FrontierPlot
from .session import Session
from .widgets import ProgressBar
from .workers import soon

HEADERS = ["Type", "bpw", "Size", "Rel. RMSE", "95% interval", "SNR", "Max |err|", "Cosine", "imatrix-wtd",
           "Measured"]


class PreviewPanel(QWidget):
    typeChosen = Signal(str)        # a candidate row was clicked (for the histogram overlay)

    def __init__(self, session: Session, parent=None):
        super().__init__(parent)
        self.s = session
        self.name: Optional[str] = None
        self.metrics: list = []
        self.title = QLabel("Select a tensor to compare its candidate types.")
        self.title.setTextFormat(Qt.TextFormat.RichText)
        self.progress = ProgressBar(fmt="exact: %p%")
        self.progress.setMaximumWidth(160)
        self.progress.hide()
        self.table = QTableWidget(0, len(HEADERS))
        self.table.setHorizontalHeaderLabels(HEADERS)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(21)
        self.table.setTabKeyNavigation(False)         # Tab leaves the table; the arrows move in it
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        self.table.horizontalHeader().setStretchLastSection(True)
        for c, w in enumerate((56, 44, 84, 80, 124, 64, 76, 80, 86)):
            self.table.setColumnWidth(c, w)
        self.table.setToolTip("Double-click a type to use it for this tensor")

        head = QHBoxLayout()
        head.addWidget(self.title, 1)
        head.addWidget(self.progress)
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addLayout(head)
        ll.addWidget(self.table)

        totals = QGroupBox("Plan totals")
        g = QGridLayout(totals)
        self.t = {}
        for i, key in enumerate(("Predicted size", "Avg bits/weight", "Vs. source", "Est. rel. RMSE",
                                 "Estimated")):
            lab = QLabel("–")
            f = lab.font()
            f.setBold(True)
            lab.setFont(f)
            self.t[key] = lab
            g.addWidget(QLabel(key + ":"), i, 0)
            g.addWidget(lab, i, 1)
        self.notes = QLabel("")                    # what the figures mean for this model (fallbacks, a quantized source)
        self.notes.setWordWrap(True)
        g.addWidget(self.notes, 5, 0, 1, 2)
        self.frontier = FrontierPlot()
        self.frontier.setToolTip("Size and estimated error of every preset for this model (★ = this plan)")
        g.addWidget(self.frontier, 0, 2, 7, 1)
        g.setColumnStretch(2, 1)

        split = QSplitter()
        split.addWidget(left)
        split.addWidget(totals)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        split.setSizes([720, 480])
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(split)

        self.table.itemSelectionChanged.connect(self._chosen)
        self.table.cellDoubleClicked.connect(self._use)
        session.candidatesReady.connect(self._candidates)
        session.candidateProgress.connect(self._progress)
        session.planChanged.connect(self._plan_changed)
        self._totals_timer = QTimer(self, singleShot=True, interval=500)     # coalesce bursts of results
        self._totals_timer.timeout.connect(self.update_totals)
        session.planErrorReady.connect(lambda _: soon(self._totals_timer))
        session.planPreviewDone.connect(self.update_totals)
        session.frontierReady.connect(lambda pts: self.frontier.set_points(pts))
        session.modelOpened.connect(self._reset)

    def _reset(self) -> None:
        self.name, self.metrics = None, []
        self.table.setRowCount(0)
        self.title.setText("Select a tensor to compare its candidate types.")
        self.frontier.set_points([])
        soon(self._totals_timer)

    def show_tensor(self, name: str) -> None:
        self.name = name
        self.metrics = []
        self.table.setRowCount(0)
        src = self.s.source
        if src is None:
            return
        info = src.tensor(name)
        if not plan_choices.quantizable(src, name):
            self.title.setText(f"<b>{name}</b> — kept in {info.dtype}: llama.cpp does not quantize this tensor")
            self.progress.hide()
            return
        self.title.setText(f"<b>{name}</b> — {fmt.shape(info.shape)}, sampling…")
        cached = self.s.candidates.get(name)
        if cached:
            self._candidates(name, cached)
        self.s.request_candidates(name)          # cached figures come back at once; the rest follows

    # -- results -----------------------------------------------------------------------
    def _candidates(self, name: str, ms) -> None:
        if name != self.name:
            return
        sel = self.selected_type()
        self.metrics = list(ms)
        planned = self._planned_type()
        self.table.setUpdatesEnabled(False)            # one repaint for the whole table
        self.table.setRowCount(len(ms))
        bold = QFont()
        bold.setBold(True)
        for r, m in enumerate(ms):
            ci = "" if m.exact else f"{fmt.pct(m.rel_rmse_ci[0])} – {fmt.pct(m.rel_rmse_ci[1])}"
            wtd = fmt.pct(m.weighted_rel_rmse) if m.weighted_rel_rmse is not None else ""
            meas = "all rows" if m.exact else f"{m.rows:,} / {m.total_rows:,} rows"
            cells = [m.type, f"{m.bpw:.3g}", fmt.human_bytes(m.nbytes), fmt.pct(m.rel_rmse), ci, fmt.db(m.snr_db),
                     fmt.num(m.max_abs_err, 3), f"{m.cosine:.6f}", wtd, meas]
            for c, text in enumerate(cells):
                # items are updated in place (results arrive in bursts): no churn of wrapped items
                it = self.table.item(r, c)
                if it is None:
                    it = QTableWidgetItem()
                    if c:
                        it.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                    self.table.setItem(r, c, it)
                it.setText(text)
                it.setFont(bold if m.type == planned else QFont())
                if c == 0:
                    it.setToolTip(plan_choices.type_description(m.type))
        self.table.setUpdatesEnabled(True)
        n_exact = sum(m.exact for m in ms)
        info = self.s.source.tensor(name)
        state = "exact" if n_exact == len(ms) else f"sampled; exact {n_exact}/{len(ms)}"
        self.title.setText(f"<b>{name}</b> — {fmt.shape(info.shape)}, {len(ms)} candidate types ({state}); "
                           f"<b>bold</b> = planned")
        if n_exact == len(ms):
            self.progress.hide()
        if sel:
            self.select_type(sel)

    def _progress(self, name: str, ev) -> None:
        if name != self.name:
            return
        self.progress.show()
        self.progress.setFormat(f"exact {ev.stage}: %p%")
        self.progress.setValue(int(100 * ev.fraction))

    def _planned_type(self) -> Optional[str]:
        if self.s.plan is None or self.name is None:
            return None
        try:
            return self.s.plan.entry(self.name).type
        except Exception:  # noqa: BLE001 - tensor not in the plan
            return None

    def _plan_changed(self) -> None:
        if self.name and self.metrics:
            self._candidates(self.name, self.metrics)
        soon(self._totals_timer)

    def selected_type(self) -> Optional[str]:
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        return self.table.item(rows[0].row(), 0).text() if rows else None

    def select_type(self, t: str) -> None:
        for r in range(self.table.rowCount()):
            if self.table.item(r, 0).text() == t:
                self.table.blockSignals(True)
                self.table.selectRow(r)
                self.table.blockSignals(False)
                return

    def _chosen(self) -> None:
        t = self.selected_type()
        if t:
            self.typeChosen.emit(t)

    def _use(self, row: int, _col: int) -> None:
        if self.name:
            self.s.set_types([self.name], self.table.item(row, 0).text())

    # -- totals ------------------------------------------------------------------------
    def update_totals(self) -> None:
        s = self.s
        if s.plan is None or s.source is None:
            for lab in self.t.values():
                lab.setText("–")
            self.notes.setText("")
            self.frontier.set_current(None, None)
            return
        pp = s.plan_preview()
        size = s.planned_bytes()
        src_bytes = s.source.n_bytes
        n_q = sum(1 for t in pp.tensors if t.quantized)
        n_m = sum(1 for t in pp.tensors if t.metrics is not None)
        self.t["Predicted size"].setText(fmt.human_bytes(size))
        self.t["Avg bits/weight"].setText(f"{pp.bpw:.3f}")
        self.t["Vs. source"].setText(f"{fmt.human_bytes(src_bytes)} → {100 * pp.nbytes / max(src_bytes, 1):.0f} %")
        rel = pp.rel_rmse if n_m else None
        self.t["Est. rel. RMSE"].setText(fmt.pct(rel) if rel is not None else "…")
        self.t["Estimated"].setText(f"{n_m} / {n_q} quantized tensors")
        self.notes.setText(plan_notes(s.source, s.plan))
        self.frontier.set_current(size, rel if n_m == n_q else None)


def plan_notes(source, plan) -> str:
    """What a user must know to read the plan's figures: a source that is itself quantized (errors are
    measured against its already-quantized weights), and a preset whose type most rows cannot take."""
    notes = []
    src_types = {t.dtype for t in source.tensors if t.ggml_type is not None and t.n_dims >= 2}
    quantized = sorted(t for t in src_types if t not in ("F32", "F16", "BF16", "F64"))
    if quantized:
        notes.append(f"The source is already quantized ({', '.join(quantized)}): errors are measured against "
                     "those weights, not the original ones.")
    q = [e for e in plan.entries if e.quantize]
    fell = [e for e in q if "fallback" in e.reason]
    if q and len(fell) * 2 > len(q):
        notes.append(f"{len(fell)} of {len(q)} tensors fall back to another type: their rows do not fit the "
                     "preset's blocks (see the Reason column).")
    return " ".join(notes)
