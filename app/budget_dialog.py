"""Quantize › Fit a Budget…: the studio chooses a type per tensor for a target file size, bits per weight or
memory (core.budget: measured error per tensor × type, scaled by each tensor's measured KLD sensitivity, then
an exact allocation), in the jobs process; the result becomes the plan (one manual type per tensor, each with
its reason), editable and undoable like any plan."""
from __future__ import annotations

import html
from typing import Optional

from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QFormLayout, QLabel, QLineEdit,
                               QPlainTextEdit, QSpinBox, QVBoxLayout, QWidget)

from .eval_view import _Progress
from .session import Session

KINDS = [("File size", "size", "e.g. 4.5G, 80M or a number of bytes"),
         ("Bits per weight", "bpw", "e.g. 4.5"),
         ("Memory (weights + KV cache + compute buffer)", "memory", "e.g. 8G, with the context below")]


class BudgetDialog(QDialog):
    def __init__(self, session: Session, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setWindowTitle("Fit a budget: a type per tensor for a target")
        self.s = session
        self.handle = None
        self.result: Optional[dict] = None
        self.kind = QComboBox()
        for label, _, _ in KINDS:
            self.kind.addItem(label)
        self.kind.currentIndexChanged.connect(self._kind)
        size = self.s.planned_bytes() if self.s.plan is not None else 0
        self.value = QLineEdit(str(size) if size else "")     # the current plan's exact size, in bytes
        self.context = QSpinBox(minimum=256, maximum=1 << 20, value=4096, singleStep=1024)
        self.fast = QCheckBox("Fast: imatrix-weighted error only (no KLD sensitivity pass)")
        self.allow = QLineEdit()
        self.allow.setPlaceholderText("all types (or e.g. Q8_0,Q6_K,Q5_K,Q4_K,Q3_K,IQ4_XS)")
        form = QFormLayout()
        form.addRow("Target:", self.kind)
        form.addRow("Value:", self.value)
        form.addRow("Context:", self.context)
        form.addRow("Allowed types:", self.allow)
        form.addRow("", self.fast)
        self.progress = _Progress()
        self.status = QLabel("The first run measures the model (its imatrix from the built-in text when none is "
                             "loaded, each tensor's error per type and how much the output reacts to each layer "
                             "and kind): minutes. The measurements are cached: another target is then instant.")
        self.status.setWordWrap(True)
        self.log = QPlainTextEdit(readOnly=True)
        self.log.setMaximumHeight(110)
        self.buttons = QDialogButtonBox()
        self.run_btn = self.buttons.addButton("Fit", QDialogButtonBox.ButtonRole.AcceptRole)
        self.close_btn = self.buttons.addButton(QDialogButtonBox.StandardButton.Close)
        self.run_btn.clicked.connect(self.start)
        self.close_btn.clicked.connect(self._cancel_or_close)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        lay.addWidget(self.log)
        lay.addWidget(self.buttons)
        self._kind()
        self.resize(640, 380)

    def _kind(self) -> None:
        _, kind, hint = KINDS[self.kind.currentIndex()]
        self.value.setPlaceholderText(hint)
        self.value.setToolTip(hint)
        self.context.setEnabled(kind == "memory")

    def start(self) -> None:
        _, kind, _ = KINDS[self.kind.currentIndex()]
        value = self.value.text().strip()
        if not value:
            self.status.setText("Give a target value.")
            return
        self.run_btn.setEnabled(False)
        self.close_btn.setText("Cancel")
        self.status.setText("Measuring and solving…")
        h = self.handle = self.s.fit_budget(kind, value, self.context.value(), self.fast.isChecked(),
                                            self.allow.text().strip() or None)
        h.progress.connect(self.progress.show_event)
        h.succeeded.connect(self._done)
        h.failed.connect(lambda e: self.status.setText(
            f"<b style='color:#e5484d'>Cannot fit the budget</b>: {html.escape(str(e))}"))
        h.cancelled.connect(lambda: self.status.setText("Cancelled; the plan is unchanged."))
        h.finished.connect(self._finished)

    def _done(self, r: dict) -> None:
        self.result = r
        self.progress.setValue(1000)
        self.progress.setFormat("done")
        self.log.setPlainText("\n".join(r["log"]))
        counts = sorted(r["plan"].type_counts().items(), key=lambda kv: -kv[1])
        self.status.setText("The plan now has a type per tensor for the target (" + ", ".join(f"{t} ×{n}" for t, n in counts)
                            + "); each tensor's reason says why. Compare it with the presets in Quantize › Evaluate.")

    def _finished(self) -> None:
        self.run_btn.setEnabled(True)
        self.close_btn.setText("Close")

    def _cancel_or_close(self) -> None:
        if self.handle is not None and self.handle.running:
            self.handle.cancel()
        else:
            self.close()
