"""Run the plan: output chooser, overall and per-tensor progress, ETA, log, cancel, summary."""
from __future__ import annotations

import os
import time
from typing import Optional

from PySide6.QtCore import Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QFontDatabase
from PySide6.QtWidgets import (QFileDialog, QGridLayout, QHBoxLayout, QLabel, QLineEdit, QPlainTextEdit,
                               QPushButton, QSpinBox, QVBoxLayout, QWidget)

from core.errors import QuantStudioError

from . import fmt
from .session import Session
from .widgets import ProgressBar
from .workers import TaskHandle


class QuantizePanel(QWidget):
    started = Signal()
    done = Signal(object)          # JobResult
    stopped = Signal(str)          # "cancelled" | "failed"
    errorRaised = Signal(str, object)

    def __init__(self, session: Session, parent=None):
        super().__init__(parent)
        self.s = session
        self.handle: Optional[TaskHandle] = None
        self.result = None
        self.verdict = None                      # the verify reports of the last file written
        self.output_path: Optional[str] = None
        self._t0 = 0.0
        self._pending = None
        self._log_lines: list[str] = []
        self._ui_timer = QTimer(self, singleShot=True, interval=200)
        self._ui_timer.timeout.connect(self._flush_progress)
        session.verified.connect(self._verified)

        self.output = QLineEdit(placeholderText="output .gguf")
        self.browse = QPushButton("Browse…")
        from core.kernels import default_threads
        self.threads = QSpinBox(minimum=1, maximum=256, value=default_threads())
        self.threads.setToolTip("Worker threads for quantization")
        self.split = QLineEdit(placeholderText="no split", maximumWidth=90)
        self.split.setToolTip("Split the output into shards of at most this size (e.g. 2G, 500M)")
        self.run_btn = QPushButton("Quantize")
        self.run_btn.setDefault(True)
        self.run_btn.setToolTip("Write the plan to the output file in the background (Ctrl+R)")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        top = QHBoxLayout()
        top.addWidget(QLabel("Output:"))
        top.addWidget(self.output, 1)
        top.addWidget(self.browse)
        top.addWidget(QLabel("Threads:"))
        top.addWidget(self.threads)
        top.addWidget(QLabel("Split:"))
        top.addWidget(self.split)
        top.addWidget(self.run_btn)
        top.addWidget(self.cancel_btn)

        self.overall = ProgressBar()
        self.tensor_bar = ProgressBar()
        self.tensor_label = QLabel("")
        self.eta = QLabel("")
        grid = QGridLayout()
        grid.addWidget(QLabel("Overall:"), 0, 0)
        grid.addWidget(self.overall, 0, 1)
        grid.addWidget(self.eta, 0, 2)
        grid.addWidget(QLabel("Tensor:"), 1, 0)
        grid.addWidget(self.tensor_bar, 1, 1)
        grid.addWidget(self.tensor_label, 1, 2)
        grid.setColumnStretch(1, 1)

        self.log = QPlainTextEdit(readOnly=True)
        self.log.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.log.setMaximumBlockCount(5000)
        self.summary = QLabel("")
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.summary.setWordWrap(True)
        self.show_btn = QPushButton("Show in folder")
        self.show_btn.setEnabled(False)
        bottom = QHBoxLayout()
        bottom.addWidget(self.summary, 1)
        bottom.addWidget(self.show_btn, 0, Qt.AlignmentFlag.AlignTop)

        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addLayout(top)
        lay.addLayout(grid)
        lay.addWidget(self.log, 1)
        lay.addLayout(bottom)

        self.output.textEdited.connect(lambda _: self.output.setProperty("auto", False))
        self.browse.clicked.connect(self._browse)
        self.run_btn.clicked.connect(self.start)
        self.cancel_btn.clicked.connect(self.cancel)
        self.show_btn.clicked.connect(self.show_in_folder)
        session.modelOpened.connect(self._suggest)
        session.planChanged.connect(self._suggest)

    # -- output ------------------------------------------------------------------------------
    def _suggest(self) -> None:
        """Propose NAME.PRESET.gguf beside the model until the user types a path."""
        s = self.s
        if s.source is None or (self.output.text() and not self.output.property("auto")):
            return
        base = os.path.basename(os.path.normpath(s.source.path))
        stem = base[:-5] if base.lower().endswith(".gguf") else base.rsplit(".safetensors", 1)[0]
        stem = stem.split(".")[0] if "." in stem else stem
        self.output.setText(os.path.join(default_output_folder(s.source.path), f"{stem}.{s.rules.preset}.gguf"))
        self.output.setProperty("auto", True)

    def set_output(self, path: str) -> None:
        """Use ``path`` for the output (no longer following the model and preset)."""
        self.output.setText(path)
        self.output.setProperty("auto", False)

    def _browse(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Quantized model", self.output.text(), "GGUF (*.gguf)")
        if path:
            if not path.lower().endswith(".gguf"):
                path += ".gguf"
            self.set_output(path)

    # -- running -----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.handle is not None and self.handle.running

    def start(self) -> Optional[TaskHandle]:
        if self.running:
            return None
        path = self.output.text().strip()
        split = None
        try:
            if not path:
                from core.errors import OutputError
                raise OutputError("choose an output file first")
            if self.split.text().strip():
                from core.units import parse_size
                try:
                    split = parse_size(self.split.text())
                except ValueError as e:
                    from core.errors import PlanError
                    raise PlanError(str(e)) from None
            src = self.s.source
            is_input = src is not None and os.path.abspath(path) == os.path.abspath(src.path)   # refused below
            if os.path.exists(path) and not is_input and not self.confirm_overwrite(path):
                return None
            h = self.s.quantize(path, self.threads.value(), split)
        except QuantStudioError as e:
            self.errorRaised.emit("Cannot quantize", e)
            return None
        self.handle, self.output_path, self.result = h, path, None
        self._t0 = time.monotonic()
        _set(self.overall, 0)
        _set(self.tensor_bar, 0)
        self.summary.setText("")
        self.show_btn.setEnabled(False)
        self.log.clear()
        plan = self.s.plan
        self.log.appendPlainText(f"{self.s.source.path}\n  → {path}\n  plan {plan.preset}: {len(plan.entries)} "
                                 f"tensors, {self.threads.value()} threads")
        self.run_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        h.progress.connect(self._progress_later)
        h.posted.connect(self._tensor_done)
        h.succeeded.connect(self._succeeded)
        h.failed.connect(self._failed)
        h.cancelled.connect(self._cancelled)
        h.finished.connect(self._finished)
        self.started.emit()
        return h

    def confirm_overwrite(self, path: str) -> bool:
        """Ask before an existing file is replaced (tests replace this method)."""
        from PySide6.QtWidgets import QMessageBox
        answer = QMessageBox.question(self, "Replace the file?", f"{path} exists. Replace it with the new output?",
                                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
                                      QMessageBox.StandardButton.Cancel)
        return answer == QMessageBox.StandardButton.Yes

    def cancel(self) -> None:
        if self.running:
            self.handle.cancel()
            self.cancel_btn.setEnabled(False)
            self.log.appendPlainText("cancelling…")

    def _progress_later(self, ev) -> None:
        """Keep the newest event; the panel shows it at most 5 times a second."""
        self._pending = ev
        if not self._ui_timer.isActive():
            self._ui_timer.start()

    def _flush_progress(self) -> None:
        self._flush_log()
        ev, self._pending = self._pending, None
        if ev is not None and self.running:
            self._progress(ev)

    def _progress(self, ev) -> None:
        _set(self.overall, int(100 * ev.fraction))
        if ev.item_total:
            _set(self.tensor_bar, int(100 * ev.item_done / ev.item_total))
        if self.tensor_label.text() != ev.item:
            self.tensor_label.setText(ev.item)
        self.eta.setText(f"{fmt.format_duration(ev.elapsed)} elapsed · ETA {fmt.format_duration(ev.eta)}")
        if ev.message:
            self.log.appendPlainText(ev.message)

    def _tensor_done(self, r) -> None:
        self._log_lines.append(f"{r.name:<40} {r.type:<6} {fmt.human_bytes(r.nbytes):>11} {r.seconds:7.2f} s")
        if not self._ui_timer.isActive():
            self._ui_timer.start()

    def _flush_log(self) -> None:
        if self._log_lines:
            self.log.appendPlainText("\n".join(self._log_lines))
            self._log_lines = []

    def _succeeded(self, res) -> None:
        self._flush_log()
        self.result = res
        self.overall.setValue(100)
        self.tensor_bar.setValue(100)
        pp = self.s.plan_preview()
        ms = [t for t in pp.tensors if t.metrics is not None]
        worst = sorted(ms, key=lambda t: -t.metrics.rel_rmse)[:3]
        files = "<br>".join(res.paths)
        self.summary.setText(
            f"<b>Done</b> in {res.seconds:.1f} s: {files}<br>{fmt.human_bytes(res.size)}, "
            f"{res.bpw:.3f} bits/weight, {len(res.tensors)} tensors"
            + (f"; est. rel. RMSE {fmt.pct(pp.rel_rmse)} overall; largest: "
               + ", ".join(f"{t.name} {fmt.pct(t.metrics.rel_rmse)}" for t in worst) if ms else ""))
        self.log.appendPlainText(f"done: {fmt.human_bytes(res.size)} in {res.seconds:.1f} s; verifying…")
        self.show_btn.setEnabled(True)
        self.verdict = None
        h = self.s.verify(res.paths)              # every written file is checked (core.verify)
        h.failed.connect(lambda e: self.errorRaised.emit("Verification failed", e))
        self.done.emit(res)

    def _verified(self, reports) -> None:
        bad = [d for r in reports for d in r.defects]
        self.verdict = reports
        if bad:
            self.log.appendPlainText("VERIFY: " + "; ".join(bad[:10]))
            self.summary.setText(self.summary.text() + f"<br><b style='color:#e5484d'>Verification found "
                                 f"{len(bad)} defects</b>: {bad[0]}")
            self.errorRaised.emit("The written file has defects", "; ".join(bad[:5]))
        else:
            n = sum(len(r.tensors) for r in reports)
            self.log.appendPlainText(f"verified: sound ({n} tensors decode; structure agrees with gguf-py; "
                                     "each tensor's error is what its type gives)")
            self.summary.setText(self.summary.text() + "<br>Verified: <b>sound</b>")

    def _failed(self, e) -> None:
        self._flush_log()
        self.log.appendPlainText(f"failed: {e}")
        self.summary.setText(f"<b style='color:#e5484d'>Failed</b>: {e}. No output was written.")
        _set(self.overall, 0)
        _set(self.tensor_bar, 0)
        self.stopped.emit("failed")
        self.errorRaised.emit("Quantization failed", e)

    def _cancelled(self) -> None:
        self._flush_log()
        self.log.appendPlainText("cancelled; no output was written")
        self.summary.setText("<b>Cancelled</b>. No output was written.")
        _set(self.overall, 0)                    # nothing was written: no bar stays half full
        _set(self.tensor_bar, 0)
        self.stopped.emit("cancelled")

    def _finished(self) -> None:
        self.run_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        self.tensor_label.setText("")            # the run is over: no current tensor, no ETA
        self.eta.setText("")

    def show_in_folder(self) -> None:
        if self.result is not None and self.result.paths:
            QDesktopServices.openUrl(QUrl.fromLocalFile(os.path.dirname(os.path.abspath(self.result.paths[0]))))


def default_output_folder(source_path: str) -> str:
    """The user's folder for an output: beside the source model when that folder is writable and not
    inside the Python environment (the demo model lives there), else Documents, else home."""
    import sys
    folder = os.path.dirname(os.path.abspath(source_path))
    envs = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, getattr(sys, "_MEIPASS", sys.prefix))}
    inside_env = any(os.path.realpath(folder).startswith(e + os.sep) or os.path.realpath(folder) == e for e in envs)
    if os.access(folder, os.W_OK) and not inside_env:
        return folder
    docs = os.path.join(os.path.expanduser("~"), "Documents")
    return docs if os.path.isdir(docs) and os.access(docs, os.W_OK) else os.path.expanduser("~")


def _set(bar: ProgressBar, value: int) -> None:
    if bar.value() != value:
        bar.setValue(value)
