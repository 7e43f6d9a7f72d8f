"""Compare two GGUF quants of one model (File › Compare GGUF Files…): per tensor the type, bpw, size and --
against the open model, when it has the same tensors -- each file's error, grouped by layer with the
differences marked; totals and metadata differences; for the selected tensor both decoded histograms
over the source's; and (Evaluate) both files run against the open model through the forward pass, their PPL
and KL-divergence beside the totals. The numbers come from core.compare and core.eval, run in worker
processes."""
from __future__ import annotations

import html
import os
from typing import Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QDialog, QFileDialog, QGridLayout, QHBoxLayout,
                               QHeaderView, QLabel, QLineEdit, QPlainTextEdit, QProgressBar, QPushButton, QSpinBox,
                               QSplitter, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from . import fmt
from .eval_view import TextChooser
from .widgets import EventProgressBar
from .session import Session

COLUMNS = ["Layer", "Tensor", "A type", "A bpw", "B type", "B bpw", "A size", "B size", "A rel. RMSE", "B rel. RMSE"]
DIFF_BRUSH = QBrush(QColor(229, 72, 77, 60))         # rows whose types differ
EVAL_TIP = ("Run the open model and both files over the text in one pass: each file's perplexity and "
            "KL-divergence against the open model (as llama-perplexity --kl-divergence)")
PENS = {"source": (150, 150, 150), "A": (62, 142, 247), "B": (245, 165, 36)}


class CompareDialog(QDialog):
    def __init__(self, session: Session, parent: Optional[QWidget] = None, a: str = "", b: str = ""):
        super().__init__(parent)
        self.setWindowTitle("Compare GGUF files")
        self.s = session
        self.result = None
        self.histograms: Optional[dict] = None
        self.evaluation = None                 # core.compare.EvalComparison of the last Evaluate
        self._handle = None
        self._hist_handle = None
        self._eval_handle = None
        self.a_edit, self.b_edit = QLineEdit(a), QLineEdit(b)
        grid = QGridLayout()
        for row, (label, edit) in enumerate((("A:", self.a_edit), ("B:", self.b_edit))):
            btn = QPushButton("Browse…")
            btn.clicked.connect(lambda _=False, e=edit: self._browse(e))
            grid.addWidget(QLabel(label), row, 0)
            grid.addWidget(edit, row, 1)
            grid.addWidget(btn, row, 2)
        self.with_source = QCheckBox("Errors against the open model")
        self.with_source.setToolTip("Each file's relative RMSE per tensor against the model open in the studio "
                                    "(it must have the same tensors)")
        self.with_source.setChecked(session.source is not None)
        self.with_source.setEnabled(session.source is not None)
        self.with_source.toggled.connect(self._eval_enable)
        self.run_btn = QPushButton("Compare")
        self.run_btn.setDefault(True)
        self.run_btn.clicked.connect(self.start)
        self.progress = QProgressBar(maximum=100, textVisible=False, maximumHeight=10)
        self.only_diff = QCheckBox("Only tensors whose types differ")
        self.only_diff.toggled.connect(self._filter)
        top = QHBoxLayout()
        top.addWidget(self.with_source)
        top.addWidget(self.only_diff)
        top.addStretch(1)
        top.addWidget(self.progress)
        top.addWidget(self.run_btn)

        # -- the forward pass: both files against the open model (PPL, KLD)
        self.eval_text = TextChooser()
        self.eval_ctx = QSpinBox(minimum=16, maximum=32768, value=512, singleStep=64)
        self.eval_ctx.setToolTip("Tokens per chunk (llama-perplexity -c)")
        self.eval_chunks = QSpinBox(minimum=1, maximum=100000, value=8)
        self.eval_chunks.setToolTip("Chunks of the text evaluated (llama-perplexity --chunks)")
        self.eval_progress = EventProgressBar()
        self.eval_btn = QPushButton("Evaluate")
        self.eval_btn.clicked.connect(self.evaluate)
        self.eval_cancel = QPushButton("Cancel")
        self.eval_cancel.setEnabled(False)
        self.eval_cancel.clicked.connect(self.cancel_evaluation)
        ev = QHBoxLayout()
        ev.addWidget(QLabel("Forward pass on:"))
        ev.addWidget(self.eval_text, 2)
        ev.addWidget(QLabel("Context:"))
        ev.addWidget(self.eval_ctx)
        ev.addWidget(QLabel("Chunks:"))
        ev.addWidget(self.eval_chunks)
        ev.addWidget(self.eval_progress, 2)
        ev.addWidget(self.eval_cancel)
        ev.addWidget(self.eval_btn)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.table.itemSelectionChanged.connect(self._selected)
        self.totals = QLabel("Choose two GGUF files of the same model.")
        self.totals.setWordWrap(True)
        self.totals.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.eval_figures = QLabel()
        self.eval_figures.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.eval_figures.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        figures = QHBoxLayout()
        figures.addWidget(self.totals, 1)
        figures.addWidget(self.eval_figures)
        self.meta = QPlainTextEdit(readOnly=True)
        self.meta.setPlaceholderText("Metadata differences")
        self.plot = pg.PlotWidget()
        from .plots import style_plot
        style_plot(self.plot, bool(getattr(parent, "dark", False)))
        self.plot.setLabel("bottom", "weight")
        self.plot.setLabel("left", "count")
        self.plot.addLegend(offset=(-10, 10))
        self.plot_title = QLabel("Select a tensor for its histograms")

        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addWidget(self.plot_title)
        rl.addWidget(self.plot, 2)
        rl.addWidget(QLabel("<b>Metadata</b>"))
        rl.addWidget(self.meta, 1)
        split = QSplitter()
        split.addWidget(self.table)
        split.addWidget(right)
        split.setSizes([880, 520])
        lay = QVBoxLayout(self)
        lay.addLayout(grid)
        lay.addLayout(top)
        lay.addLayout(ev)
        lay.addLayout(figures)
        lay.addWidget(split, 1)
        self.resize(1400, 800)
        self._eval_enable()

    def _browse(self, edit: QLineEdit) -> None:
        start = os.path.dirname(edit.text()) or os.path.dirname(self.s.path or "") or os.path.expanduser("~")
        path, _ = QFileDialog.getOpenFileName(self, "Choose a GGUF file", start, "GGUF files (*.gguf);;All files (*)")
        if path:
            edit.setText(path)

    # -- running ------------------------------------------------------------------------------
    def start(self) -> None:
        a, b = self.a_edit.text().strip(), self.b_edit.text().strip()
        if not a or not b:
            self.totals.setText("Choose two GGUF files.")
            return
        source = self.s.path if self.with_source.isChecked() and self.s.source is not None else None
        if self.evaluation is not None and (self.evaluation.a, self.evaluation.b) != (a, b):
            self.evaluation = None                       # figures of other files: gone with them
            self.eval_figures.clear()
        self.run_btn.setEnabled(False)
        self.progress.setValue(0)
        self.totals.setText("Comparing…")
        h = self._handle = self.s.workers.submit("core.tasks:compare", a, b, source, name="compare", user=True)
        h.progress.connect(lambda ev: self.progress.setValue(int(100 * ev.fraction)))
        h.succeeded.connect(self.show_result)
        h.failed.connect(self._failed)
        h.finished.connect(lambda: self.run_btn.setEnabled(True))

    def _failed(self, e) -> None:
        self.totals.setText(f"<b style='color:#e5484d'>Cannot compare</b>: {e}")
        win = self.parent()
        if hasattr(win, "show_error"):
            win.show_error("Cannot compare", e)

    def show_result(self, c) -> None:
        self.result = c
        if self.evaluation is not None and (self.evaluation.a, self.evaluation.b) == (c.a, c.b):
            c.evaluation = self.evaluation
        self.progress.setValue(100)
        tot = c.totals()
        self.totals.setText(
            f"<b>A</b> {os.path.basename(c.a)}: {fmt.human_bytes(tot['a_file_size'])}, {tot['a_bpw']:.3f} bpw &nbsp; "
            f"<b>B</b> {os.path.basename(c.b)}: {fmt.human_bytes(tot['b_file_size'])}, {tot['b_bpw']:.3f} bpw &nbsp; "
            f"<b>{tot['different']}</b> of {tot['tensors']} tensors have different types"
            + (" (highlighted)" if tot["different"] else ""))
        self.table.setRowCount(len(c.tensors))
        for r, t in enumerate(c.tensors):
            cells = ["–" if t.layer is None else str(t.layer), t.name, t.a_type or "–",
                     f"{t.a_bpw:.3f}" if t.a_type else "–", t.b_type or "–", f"{t.b_bpw:.3f}" if t.b_type else "–",
                     fmt.human_bytes(t.a_bytes), fmt.human_bytes(t.b_bytes), fmt.pct(t.a_rel_rmse),
                     fmt.pct(t.b_rel_rmse)]
            for col, text in enumerate(cells):
                it = QTableWidgetItem(text)
                if col in (0, 3, 5, 6, 7, 8, 9):
                    it.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if t.differs:
                    it.setBackground(DIFF_BRUSH)
                self.table.setItem(r, col, it)
        self.table.resizeColumnsToContents()
        lines = c.metadata_lines(lambda v: fmt.short_value(v, 60))
        self.meta.setPlainText("\n".join(lines) if lines else "identical")
        self._filter()

    # -- evaluation (the forward pass) -----------------------------------------------------------
    def _eval_enable(self) -> None:
        running = self._eval_handle is not None and self._eval_handle.running
        ok = self.s.source is not None and self.with_source.isChecked()
        self.eval_btn.setEnabled(ok and not running)
        self.eval_cancel.setEnabled(running)
        self.eval_btn.setToolTip(EVAL_TIP if ok else "Open the files' source model in the studio and check "
                                 "'Errors against the open model' to evaluate them against it")

    def evaluate(self) -> None:
        """Both files against the open model in one lockstep forward pass (core.tasks.compare_eval)."""
        a, b = self.a_edit.text().strip(), self.b_edit.text().strip()
        if not a or not b:
            self.eval_figures.setText("Choose two GGUF files.")
            return
        if self.s.source is None or not self.with_source.isChecked():
            return
        self.evaluation = None
        self.eval_figures.setText("Evaluating A and B against the open model…")
        self.eval_progress.setValue(0)
        h = self._eval_handle = self.s.workers.submit(
            "core.tasks:compare_eval", self.s.path, a, b, self.eval_text.path(), self.eval_ctx.value(),
            self.eval_chunks.value(), name="compare-eval", user=True)
        h.progress.connect(self.eval_progress.show_event)
        h.succeeded.connect(self.show_evaluation)
        h.failed.connect(self._eval_failed)
        h.cancelled.connect(self._eval_cancelled)
        h.finished.connect(self._eval_enable)
        self._eval_enable()

    def cancel_evaluation(self) -> None:
        if self._eval_handle is not None and self._eval_handle.running:
            self._eval_handle.cancel()

    def _eval_cancelled(self) -> None:
        self.eval_progress.setValue(0)
        self.eval_progress.setFormat("")
        self.eval_figures.setText("Evaluation cancelled.")

    def _eval_failed(self, e) -> None:
        self.eval_progress.setValue(0)
        self.eval_progress.setFormat("")
        self.eval_figures.setText(f"<b style='color:#e5484d'>Cannot evaluate</b>: {html.escape(str(e))}")

    def show_evaluation(self, ev) -> None:
        """``ev``: core.compare.EvalComparison. A small table (PPL, KLD mean ± error, KLD 99 %, same top
        token) per file, under the source's PPL and the text."""
        self.evaluation = ev
        if self.result is not None and (self.result.a, self.result.b) == (ev.a, ev.b):
            self.result.evaluation = ev
        self.eval_progress.setValue(1000)
        self.eval_progress.setFormat("done")
        ppl, err = ev.base
        cell = "<td align='right' style='padding:0 6px'>{}</td>"
        rows = ["<tr><th></th>" + "".join(f"<th align='right' style='padding:0 6px'>{h}</th>" for h in
                                          ("PPL", "KLD mean", "KLD 99 %", "same top")) + "</tr>"]
        for which in "AB":
            k = ev.result(which).kld
            rows.append(f"<tr><td><b>{which}</b></td>" + "".join(cell.format(x) for x in (
                f"{k.ppl:.4f}", f"{k.kld_mean:.5f} ± {k.kld_err:.5f}", f"{k.kld_percentiles[99.0]:.4f}",
                f"{100 * k.same_top_p:.2f} %")) + "</tr>")
        closer = ev.closer
        verdict = f"<b>{closer}</b> is closer to the source" if closer else "A and B within their errors"
        self.eval_figures.setText(
            f"<table cellspacing='0'>{''.join(rows)}</table>"
            f"<span style='color:gray'>source PPL {ppl:.4f} ± {err:.4f}; {ev.n_chunk} chunks of {ev.n_ctx} tokens "
            f"of {html.escape(ev.text)}; {verdict}</span>")

    def closeEvent(self, event) -> None:      # noqa: N802 - Qt's name
        self.cancel_evaluation()
        super().closeEvent(event)

    def differing_rows(self) -> list[int]:
        return [r for r, t in enumerate(self.result.tensors) if t.differs] if self.result else []

    def _filter(self) -> None:
        if self.result is None:
            return
        only = self.only_diff.isChecked()
        for r, t in enumerate(self.result.tensors):
            self.table.setRowHidden(r, only and not t.differs)

    # -- histograms ---------------------------------------------------------------------------
    def _selected(self) -> None:
        rows = {i.row() for i in self.table.selectedIndexes()}
        if not rows or self.result is None:
            return
        t = self.result.tensors[min(rows)]
        c = self.result
        paths = [c.a, c.b] + ([c.source] if c.source else [])
        self.plot_title.setText(f"{t.name}: decoded weights of A, B and the source (up to 4096 rows; "
                                "the outer 0.2 % in the end bins)")
        if self._hist_handle is not None and self._hist_handle.running:
            self._hist_handle.cancel()
        h = self._hist_handle = self.s.workers.submit("core.tasks:compare_histograms", t.name, paths,
                                                      name="compare-hist", priority=2)
        h.succeeded.connect(lambda d, n=t.name: self._show_hist(n, d))

    def _show_hist(self, name: str, d: dict) -> None:
        self.histograms = {"name": name, **d}
        self.plot.clear()
        edges = np.asarray(d["edges"])
        curves = list(zip(["A", "B", "source"], d["counts"]))
        for label, counts in curves[2:] + curves[:2]:          # the source underneath, A and B over it
            if counts is None:
                continue
            style = Qt.PenStyle.DashLine if label == "B" else Qt.PenStyle.SolidLine
            self.plot.plot(edges, np.asarray(counts), stepMode="center", name=label,
                           pen=pg.mkPen(PENS[label], width=4 if label == "source" else 1.6, style=style))
