"""Calibrate (Model › Calibrate…) and Evaluate (Model › Evaluate…): the model running inside the studio.

Calibrate runs a text through the open model and writes an importance matrix (core.eval, in the jobs
process), then loads it into the plan. Evaluate measures, against the open model, the current plan (simulated:
weights quantized and dequantized in memory, no file written), any presets and any GGUF files: a table (size,
bpw, PPL, KLD mean / 99 %, same top token), KLD against size for every candidate, the distribution of per-token
KLD, the text with the tokens where the selected candidate disagrees most highlighted, and a prompt box showing
the base's and the candidate's greedy continuations side by side."""
from __future__ import annotations

import html
import os
from typing import Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QAbstractItemView, QDialog, QDialogButtonBox, QFileDialog, QFormLayout,
                               QHBoxLayout, QHeaderView, QLabel, QLineEdit, QListWidget, QListWidgetItem,
                               QMessageBox, QPlainTextEdit, QPushButton, QSpinBox, QSplitter,
                               QTableWidget, QTableWidgetItem, QTabWidget, QTextBrowser, QVBoxLayout, QWidget)


from . import fmt, plan_choices
from .widgets import EventProgressBar
from .session import Session

BUILTIN = "Built-in text (prose, code, 16 languages)"
COLUMNS = ["Candidate", "Kind", "Size", "bpw", "PPL", "KLD mean", "KLD 99 %", "Same top"]
DEFAULT_PRESETS = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K")


class TextChooser(QWidget):
    """The built-in calibration text, or a text file the user picks."""

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(BUILTIN)
        self.edit.setToolTip("A UTF-8 text file; empty: the built-in text (original prose, code and 16 languages, CC0)")
        btn = QPushButton("Browse…")
        btn.clicked.connect(self._browse)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.edit, 1)
        lay.addWidget(btn)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a text", os.path.expanduser("~"),
                                              "Text files (*.txt *.md *.raw);;All files (*)")
        if path:
            self.edit.setText(path)

    def path(self) -> Optional[str]:
        return self.edit.text().strip() or None


class CalibrateDialog(QDialog):
    """Text, context and chunks in; an imatrix file out (loaded into the plan at the end)."""

    def __init__(self, session: Session, parent: Optional[QWidget] = None):
        super().__init__(parent)
        from .quantize_panel import default_output_folder
        self.setWindowTitle("Calibrate: compute an importance matrix")
        self.s = session
        self.handle = None
        self.text = TextChooser()
        self.ctx = QSpinBox(minimum=16, maximum=32768, value=512, singleStep=64)
        self.ctx.setToolTip("Tokens per chunk (llama-imatrix -c); 512 is llama.cpp's usual choice")
        self.chunks = QSpinBox(minimum=0, maximum=100000, value=64)
        self.chunks.setSpecialValueText("all")
        self.chunks.setToolTip("At most this many chunks of the text (0: the whole text)")
        base = os.path.splitext(os.path.basename(os.path.normpath(session.path or "model")))[0]
        self.output = QLineEdit(os.path.join(default_output_folder(session.path or os.path.expanduser("~")),
                                             f"{base}.imatrix.gguf"))
        form = QFormLayout()
        form.addRow("Text:", self.text)
        form.addRow("Context:", self.ctx)
        form.addRow("Chunks:", self.chunks)
        form.addRow("Output:", self.output)
        self.progress = EventProgressBar()
        self.status = QLabel("The text runs through the model layer by layer; the sums of squared activations of "
                             "every matrix's inputs are written as llama-imatrix writes them.")
        self.status.setWordWrap(True)
        self.buttons = QDialogButtonBox()
        self.run_btn = self.buttons.addButton("Calibrate", QDialogButtonBox.ButtonRole.AcceptRole)
        self.cancel_btn = self.buttons.addButton(QDialogButtonBox.StandardButton.Close)
        self.run_btn.clicked.connect(self.start)
        self.cancel_btn.clicked.connect(self._cancel_or_close)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        lay.addWidget(self.buttons)
        self.resize(640, 260)

    def start(self) -> None:
        out = self.output.text().strip()
        if not out:
            return
        if os.path.exists(out) and QMessageBox.question(self, "Replace file?", f"{out} exists. Replace it?") \
                != QMessageBox.StandardButton.Yes:
            return
        self.run_btn.setEnabled(False)
        self.cancel_btn.setText("Cancel")
        self.status.setText("Calibrating…")
        h = self.handle = self.s.calibrate(out, self.text.path(), self.ctx.value(), self.chunks.value() or -1)
        h.progress.connect(self.progress.show_event)
        h.succeeded.connect(self._done)
        h.failed.connect(self._failed)
        h.cancelled.connect(self._cancelled)
        h.finished.connect(self._finished)

    def _cancelled(self) -> None:
        self.progress.setValue(0)
        self.progress.setFormat("")
        self.status.setText("Cancelled; nothing was written.")

    def _done(self, summary: dict) -> None:
        self.progress.setValue(1000)
        self.progress.setFormat("done")
        self.status.setText(f"Wrote {summary['output']}: {summary['tensors']} tensors from {summary['chunks']} "
                            f"chunks of {summary['ctx']} tokens ({summary['dataset']}); loaded into the plan.")

    def _failed(self, e) -> None:
        self.status.setText(f"<b style='color:#e5484d'>Calibration failed</b>: {html.escape(str(e))}")
        win = self.parent()
        if hasattr(win, "show_error"):
            win.show_error("Calibration failed", e)

    def _finished(self) -> None:
        self.run_btn.setEnabled(True)
        self.cancel_btn.setText("Close")

    def _cancel_or_close(self) -> None:
        if self.handle is not None and self.handle.running:
            self.handle.cancel()
        else:
            self.close()


class EvaluateDialog(QDialog):
    def __init__(self, session: Session, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setWindowTitle("Evaluate: PPL and KL-divergence against the open model")
        self.s = session
        self.handle = None
        self.gen_handle = None
        self.data: Optional[dict] = None
        self.dark = bool(getattr(parent, "dark", False))

        # -- what to evaluate
        self.presets = QListWidget()
        self.presets.setToolTip("Presets evaluated on the open model's weights, simulated (no file is written)")
        for name in plan_choices.preset_names():
            it = QListWidgetItem(name)
            it.setFlags(it.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            it.setCheckState(Qt.CheckState.Checked if name in DEFAULT_PRESETS else Qt.CheckState.Unchecked)
            it.setToolTip(plan_choices.preset_description(name))
            self.presets.addItem(it)
        self.files = QListWidget()
        self.files.setToolTip("GGUF files of the same model")
        add_file = QPushButton("Add GGUF…")
        add_file.clicked.connect(self._add_file)
        self.with_plan = QListWidgetItem("Current plan (simulated)")
        self.with_plan.setFlags(self.with_plan.flags() | Qt.ItemFlag.ItemIsUserCheckable)
        self.with_plan.setCheckState(Qt.CheckState.Checked)
        self.files.addItem(self.with_plan)
        self.text = TextChooser()
        self.ctx = QSpinBox(minimum=16, maximum=32768, value=512, singleStep=64)
        self.chunks = QSpinBox(minimum=1, maximum=100000, value=8)
        self.chunks.setToolTip("Chunks of the text evaluated (llama-perplexity --chunks)")
        self.run_btn = QPushButton("Evaluate")
        self.run_btn.setDefault(True)
        self.run_btn.clicked.connect(self.start)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel)
        self.progress = EventProgressBar()
        form = QFormLayout()
        form.addRow("Text:", self.text)
        row = QHBoxLayout()
        row.addWidget(QLabel("Context:"))
        row.addWidget(self.ctx)
        row.addWidget(QLabel("Chunks:"))
        row.addWidget(self.chunks)
        row.addStretch(1)
        row.addWidget(self.progress, 2)
        row.addWidget(self.cancel_btn)
        row.addWidget(self.run_btn)
        pick = QHBoxLayout()
        left = QVBoxLayout()
        left.addWidget(QLabel("<b>Presets</b> (simulated)"))
        left.addWidget(self.presets)
        right = QVBoxLayout()
        right.addWidget(QLabel("<b>Plan and files</b>"))
        right.addWidget(self.files)
        right.addWidget(add_file)
        pick.addLayout(left)
        pick.addLayout(right)

        # -- results
        self.summary = QLabel("Choose candidates and press Evaluate. The protocol is llama-perplexity "
                              "--kl-divergence's: chunks of the context size, BOS first, the second half scored.")
        self.summary.setWordWrap(True)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.itemSelectionChanged.connect(self._selected)
        from .plots import decade_axis, style_plot
        self.size_plot = pg.PlotWidget()
        decade_axis(self.size_plot)
        style_plot(self.size_plot, self.dark)
        self.size_plot.setLabel("bottom", "size (MiB)")
        self.size_plot.setLabel("left", "mean KLD")
        self.size_plot.setLogMode(y=True)
        self.dist_plot = pg.PlotWidget()
        style_plot(self.dist_plot, self.dark)
        self.dist_plot.setLabel("bottom", "per-token KLD (log10)")
        self.dist_plot.setLabel("left", "tokens")
        self.text_view = QTextBrowser()
        self.text_view.setPlaceholderText("The evaluated text, the tokens where the selected candidate disagrees "
                                          "with the base most highlighted")
        self.prompt = QLineEdit("The most important thing to know about")
        self.gen_tokens = QSpinBox(minimum=1, maximum=512, value=32, suffix=" tokens")
        self.gen_tokens.setToolTip("How many tokens each model appends (every token re-runs the whole model)")
        self.gen_btn = QPushButton("Continue")
        self.gen_btn.setToolTip("Greedy continuation by the base and the selected candidate")
        self.gen_btn.clicked.connect(self.generate)
        self.base_out = QPlainTextEdit(readOnly=True)
        self.base_out.setPlaceholderText("The open model's continuation")
        self.cand_out = QPlainTextEdit(readOnly=True)
        self.cand_out.setPlaceholderText("The selected candidate's continuation")
        gen = QWidget()
        gl = QVBoxLayout(gen)
        pr = QHBoxLayout()
        pr.addWidget(QLabel("Prompt:"))
        pr.addWidget(self.prompt, 1)
        pr.addWidget(self.gen_tokens)
        pr.addWidget(self.gen_btn)
        gl.addLayout(pr)
        outs = QSplitter()
        outs.addWidget(self.base_out)
        outs.addWidget(self.cand_out)
        gl.addWidget(outs, 1)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.size_plot, "KLD vs size")
        self.tabs.addTab(self.dist_plot, "KLD distribution")
        self.tabs.addTab(self.text_view, "Text")
        self.tabs.addTab(gen, "Prompt")
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.table)
        split.addWidget(self.tabs)
        split.setSizes([260, 420])

        lay = QVBoxLayout(self)
        lay.addLayout(pick, 1)
        lay.addLayout(form)
        lay.addLayout(row)
        lay.addWidget(self.summary)
        lay.addWidget(split, 3)
        self.resize(1200, 900)

    # -- candidates ----------------------------------------------------------------------------
    def _add_file(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "GGUF files of this model",
                                                os.path.dirname(self.s.path or "") or os.path.expanduser("~"),
                                                "GGUF files (*.gguf);;All files (*)")
        for p in paths:
            self.add_file(p)

    def add_file(self, path: str) -> None:
        it = QListWidgetItem(os.path.basename(path))
        it.setData(Qt.ItemDataRole.UserRole, path)
        it.setToolTip(path)
        it.setFlags(it.flags() | Qt.ItemFlag.ItemIsUserCheckable)
        it.setCheckState(Qt.CheckState.Checked)
        self.files.addItem(it)

    def set_presets(self, names) -> None:
        for i in range(self.presets.count()):
            it = self.presets.item(i)
            it.setCheckState(Qt.CheckState.Checked if it.text() in names else Qt.CheckState.Unchecked)

    def candidates(self) -> list[dict]:
        out = []
        if self.with_plan.checkState() == Qt.CheckState.Checked and self.s.plan is not None:
            out.append(self.s.plan_candidate())
        for i in range(self.presets.count()):
            it = self.presets.item(i)
            if it.checkState() == Qt.CheckState.Checked:
                out.append(self.s.preset_candidate(it.text()))
        for i in range(1, self.files.count()):
            it = self.files.item(i)
            if it.checkState() == Qt.CheckState.Checked:
                p = it.data(Qt.ItemDataRole.UserRole)
                out.append({"label": os.path.basename(p), "path": p})
        return out

    # -- running -------------------------------------------------------------------------------
    def start(self) -> None:
        try:
            cands = self.candidates()
        except Exception as e:  # noqa: BLE001 - a plan or preset that cannot run here (needs an imatrix)
            self._failed(e)
            return
        if not cands:
            self.summary.setText("Nothing to evaluate: check the plan, a preset or a file.")
            return
        self.run_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.summary.setText(f"Evaluating {len(cands)} candidates…")
        h = self.handle = self.s.evaluate(cands, self.text.path(), self.ctx.value(), self.chunks.value())
        h.progress.connect(self.progress.show_event)
        h.succeeded.connect(self.show_result)
        h.failed.connect(self._failed)
        h.cancelled.connect(self._cancelled)
        h.finished.connect(self._finished)

    def cancel(self) -> None:
        if self.handle is not None and self.handle.running:
            self.handle.cancel()

    def _finished(self) -> None:
        self.run_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)

    def _cancelled(self) -> None:
        self.progress.setValue(0)
        self.progress.setFormat("")
        self.summary.setText("Cancelled.")

    def _failed(self, e) -> None:
        self.summary.setText(f"<b style='color:#e5484d'>Cannot evaluate</b>: {html.escape(str(e))}")

    def show_result(self, data: dict) -> None:
        self.data = data
        self.progress.setValue(1000)
        self.progress.setFormat("done")
        res = data["results"]
        k0 = res[0].kld
        self.summary.setText(f"{k0.chunks} chunks of {data['n_ctx']} tokens of {html.escape(data['text'])}, "
                             f"{k0.tokens} tokens scored. Base (the open model) PPL {k0.ppl_base:.4f} ± "
                             f"{k0.ppl_base_err:.4f}. Select a row for its KLD distribution, text and continuation.")
        self.table.setRowCount(len(res))
        for r, e in enumerate(res):
            k = e.kld
            cells = [e.label, e.info.get("kind", ""), fmt.human_bytes(e.size) if e.size else "–",
                     f"{e.bpw:.3f}" if e.bpw else "–", f"{k.ppl:.4f}", f"{k.kld_mean:.5f} ± {k.kld_err:.5f}",
                     f"{k.kld_percentiles[99.0]:.4f}", f"{100 * k.same_top_p:.2f} %"]
            for c, text in enumerate(cells):
                it = QTableWidgetItem(text)
                if c >= 2:
                    it.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(r, c, it)
        self.table.resizeColumnsToContents()
        self._plot_sizes()
        self.table.selectRow(0)

    def _plot_sizes(self) -> None:
        p = self.size_plot
        p.clear()
        res = self.data["results"]
        spots: dict[tuple, list] = {}             # candidates at the same point share one label
        for kind, color, symbol in (("preset", (62, 142, 247), "o"), ("file", (245, 165, 36), "s"),
                                    ("current plan", (229, 72, 77), "star")):
            pts = [(e.size / 2 ** 20, max(e.kld.kld_mean, 1e-6), e.label) for e in res
                   if e.size and e.info.get("kind") == kind]
            if not pts:
                continue
            xs, ys, labels = zip(*pts)
            p.plot(xs, ys, pen=None, symbol=symbol, symbolSize=14 if kind == "current plan" else 9,
                   symbolBrush=color, name=kind)
            for x, y, lab in pts:
                spots.setdefault((round(x, 3), float(f"{y:.4g}")), []).append((x, y, lab, color))
        if not spots:
            return
        xmid = (min(k[0] for k in spots) + max(k[0] for k in spots)) / 2
        for group in spots.values():
            x, y, _, color = group[0]
            colors = {g[3] for g in group}
            # right of the point in the left half, left of it in the right half: never cut at the edge
            t = pg.TextItem(", ".join(g[2] for g in group), anchor=(0 if x <= xmid else 1, 1),
                            color=color if len(colors) == 1 else self.palette().text().color())
            t.setPos(x, np.log10(y))
            p.addItem(t)

    def selected(self) -> Optional[int]:
        rows = {i.row() for i in self.table.selectedIndexes()}
        return min(rows) if rows else None

    def _selected(self) -> None:
        r = self.selected()
        if r is None or self.data is None:
            return
        e = self.data["results"][r]
        kl = np.asarray(e.kld_per_token, dtype=np.float64)
        self.dist_plot.clear()
        v = np.log10(np.maximum(kl.ravel(), 1e-8))
        counts, edges = np.histogram(v, bins=60)
        self.dist_plot.plot(edges, counts, stepMode="center", fillLevel=0, brush=(62, 142, 247, 90),
                            pen=pg.mkPen((62, 142, 247), width=1.5))
        self.dist_plot.setTitle(f"{e.label}: {kl.size} tokens, mean {e.kld.kld_mean:.5f}, "
                                f"99 % {e.kld.kld_percentiles[99.0]:.4f}")
        self.text_view.setHtml(self.highlighted_text(r))

    def highlighted_text(self, r: int, max_chunks: int = 2) -> str:
        """The scored half of the first chunks, each token's background as strong as its KLD (the top 2 %
        marked red, with the KLD in its tooltip)."""
        e = self.data["results"][r]
        toks, pieces = self.data["tokens"], self.data["pieces"]
        kl = np.asarray(e.kld_per_token)
        n_ctx = self.data["n_ctx"]
        first = n_ctx // 2
        hi = float(np.quantile(kl, 0.98)) if kl.size else 1.0
        out = [f"<p><b>{html.escape(e.label)}</b>: the darker a token, the more the candidate's prediction of it "
               "differed from the base's (KL-divergence); red: the top 2 %.</p>"]
        for c in range(min(max_chunks, kl.shape[0])):
            spans = [html.escape(pieces.get(int(t), "")) for t in toks[c][:first + 1]]
            for j, t in enumerate(toks[c][first + 1:]):
                d = float(kl[c, j])
                alpha = min(1.0, d / hi) if hi > 0 else 0.0
                col = f"rgba(229,72,77,{0.25 + 0.6 * alpha:.2f})" if d >= hi else f"rgba(62,142,247,{0.6 * alpha:.2f})"
                spans.append(f"<span style='background:{col}' title='KLD {d:.4f}'>"
                             f"{html.escape(pieces.get(int(t), ''))}</span>")
            out.append("<p style='white-space:pre-wrap'>" + "".join(spans).replace("\u2581", " ") + "</p><hr>")
        return "".join(out)

    # -- prompt ---------------------------------------------------------------------------------
    def generate(self) -> None:
        r = self.selected()
        prompt = self.prompt.text()
        if not prompt.strip():
            return
        paths, plans, label = [], {}, None
        if r is not None and self.data is not None:
            e = self.data["results"][r]
            label = e.label
            cand = next((c for c in self._last_candidates() if c["label"] == label), None)
            if cand is not None and cand.get("path"):
                paths.append(cand["path"])
                label = os.path.basename(cand["path"])
            elif cand is not None:
                plans[label] = (cand["plan"], cand.get("importances"))
        self.gen_btn.setEnabled(False)
        self.base_out.setPlainText("…")
        self.cand_out.setPlainText("…" if label else "(select a candidate in the table)")
        h = self.gen_handle = self.s.generate(prompt, paths, plans, n_tokens=self.gen_tokens.value())
        base_label = os.path.basename(self.s.path)

        def show(out: dict, label=label) -> None:
            self.base_out.setPlainText(f"[{base_label}]\n{prompt}{out.get(base_label, '')}")
            if label:
                self.cand_out.setPlainText(f"[{label}]\n{prompt}{out.get(label, '')}")

        h.succeeded.connect(show)
        h.failed.connect(lambda e: self.base_out.setPlainText(f"Cannot continue: {e}"))
        h.finished.connect(lambda: self.gen_btn.setEnabled(True))

    def _last_candidates(self) -> list[dict]:
        try:
            return self.candidates()
        except Exception:  # noqa: BLE001
            return []
