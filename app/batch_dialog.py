"""Quantize › Batch Export…: several presets (and the current plan) of the open model in one run (core.batch in
the jobs process): a file per item named by a template, one progress bar with ETA over the whole batch, a table
filling in with each item's state, size and verify verdict, Cancel (no partial file is left; finished files
stay)."""
from __future__ import annotations

import html
import os
from typing import Optional

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QColor, QStandardItem, QStandardItemModel
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QDialog, QDialogButtonBox, QFileDialog, QFormLayout,
                               QHBoxLayout, QHeaderView, QLabel, QLineEdit, QListView, QPushButton, QTableWidget,
                               QTableWidgetItem, QVBoxLayout, QWidget)

from core.batch import DEFAULT_TEMPLATE, BatchItem, output_paths, plan_label
from core.errors import QuantStudioError

from . import fmt, plan_choices
from .quantize_panel import default_output_folder
from .session import Session
from .widgets import EventProgressBar, set_item_available

COLUMNS = ["Item", "File", "State", "Size", "bpw", "Time", "Verify"]
STATE_COLORS = {"verified": "#30a46c", "defects": "#e5484d", "failed": "#e5484d"}
CURRENT = "current plan"


class BatchDialog(QDialog):
    def __init__(self, session: Session, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setWindowTitle("Batch export: several presets or plans in one run")
        self.s = session
        self.handle = None
        self.result = None
        self.items: list[BatchItem] = []        # of the run under way (or the last one)
        self._pending = None
        self._timer = QTimer(self, singleShot=True, interval=200)
        self._timer.timeout.connect(self._flush_progress)

        self.model = QStandardItemModel(self)
        self.list = QListView()
        self.list.setModel(self.model)
        self.list.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.list.setMinimumWidth(230)
        self._fill_items()
        self.folder = QLineEdit(default_output_folder(session.path))
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.folder, 1)
        folder_row.addWidget(browse)
        self.template = QLineEdit(DEFAULT_TEMPLATE)
        self.template.setToolTip("{model}: the model's file name without extension; {preset}: the preset's name "
                                 "(the current plan: its preset, -custom when edited); {type}: the plan's preset")
        self.overwrite = QCheckBox("Replace existing files")
        self.preview = QLabel()
        self.preview.setWordWrap(True)
        self.preview.setTextFormat(Qt.TextFormat.RichText)
        self.preview.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        form = QFormLayout()
        form.addRow("Folder:", folder_row)
        form.addRow("File names:", self.template)
        form.addRow("", self.overwrite)
        form.addRow("Files:", self.preview)
        left = QVBoxLayout()
        left.addWidget(QLabel("Presets and plans:"))
        left.addWidget(self.list, 1)
        top = QHBoxLayout()
        top.addLayout(left)
        top.addLayout(form, 1)

        self.progress = EventProgressBar()
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        head = self.table.horizontalHeader()
        head.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        head.setStretchLastSection(True)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.buttons = QDialogButtonBox()
        self.run_btn = self.buttons.addButton("Export", QDialogButtonBox.ButtonRole.AcceptRole)
        self.cancel_btn = self.buttons.addButton("Cancel", QDialogButtonBox.ButtonRole.ActionRole)
        self.close_btn = self.buttons.addButton(QDialogButtonBox.StandardButton.Close)
        self.cancel_btn.setEnabled(False)
        self.run_btn.clicked.connect(self.start)
        self.cancel_btn.clicked.connect(self.cancel)
        self.close_btn.clicked.connect(self.close)

        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.progress)
        lay.addWidget(self.table, 1)
        lay.addWidget(self.status)
        lay.addWidget(self.buttons)
        for w in (self.folder, self.template):
            w.textChanged.connect(self._update_preview)
        self.overwrite.toggled.connect(self._update_preview)
        self.model.itemChanged.connect(self._update_preview)
        session.imatrixChanged.connect(self._availability)
        session.planChanged.connect(self._plan_changed)
        self._update_preview()
        self.resize(900, 600)

    # -- the items ---------------------------------------------------------------------------
    def _fill_items(self) -> None:
        if self.s.plan is not None:
            it = QStandardItem(f"{CURRENT} ({plan_label(self.s.plan)})")
            it.setData(CURRENT, Qt.ItemDataRole.UserRole)
            it.setToolTip("The plan as it stands in the studio, with every edit")
            it.setCheckable(True)
            self.model.appendRow(it)
        for name in plan_choices.preset_names():
            it = QStandardItem(name)
            it.setData(name, Qt.ItemDataRole.UserRole)
            it.setToolTip(plan_choices.preset_description(name))
            it.setCheckable(True)
            self.model.appendRow(it)
        self._availability()

    def _plan_changed(self) -> None:
        it = self.model.item(0)
        if it is not None and it.data(Qt.ItemDataRole.UserRole) == CURRENT and self.s.plan is not None:
            it.setText(f"{CURRENT} ({plan_label(self.s.plan)})")

    def _availability(self) -> None:
        """Presets llama.cpp refuses without an importance matrix are unavailable until one is loaded."""
        s = self.s
        for row in range(self.model.rowCount()):
            it = self.model.item(row)
            name = it.data(Qt.ItemDataRole.UserRole)
            needs = name != CURRENT and s.imatrix is None and plan_choices.preset_needs_imatrix(s.source, name)
            set_item_available(self.list, row, not needs, plan_choices.NEEDS_IMATRIX)
            if needs:
                it.setCheckState(Qt.CheckState.Unchecked)

    def check(self, names: list[str]) -> None:
        """Check exactly the presets ``names`` (``"current plan"`` for the plan)."""
        for row in range(self.model.rowCount()):
            it = self.model.item(row)
            on = it.data(Qt.ItemDataRole.UserRole) in names and it.isEnabled()
            it.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)

    def chosen(self) -> list[BatchItem]:
        out = []
        for row in range(self.model.rowCount()):
            it = self.model.item(row)
            if it.checkState() != Qt.CheckState.Checked or not it.isEnabled():
                continue
            name = it.data(Qt.ItemDataRole.UserRole)
            out.append(BatchItem(plan_label(self.s.plan), plan=self.s.plan) if name == CURRENT
                       else BatchItem(name, preset=name))
        return out

    def paths(self) -> list[str]:
        """The output paths of the checked items (QuantStudioError: a collision, an existing file, a bad
        template, nothing checked)."""
        return output_paths(self.s.source.path, self.chosen(), self.folder.text().strip(),
                            self.template.text().strip(), self.overwrite.isChecked())

    def _update_preview(self, *_) -> None:
        if self.running:
            return
        try:
            names = [os.path.basename(p) for p in self.paths()]
        except QuantStudioError as e:
            self.preview.setText(f"<span style='color:#e5484d'>{html.escape(e.message)}"
                                 f"{html.escape(': ' + os.path.basename(e.path)) if e.path else ''}</span>")
            self.run_btn.setEnabled(False)
            return
        self.preview.setText("<br>".join(html.escape(n) for n in names))
        self.run_btn.setEnabled(True)

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Output folder", self.folder.text())
        if path:
            self.folder.setText(path)

    # -- running -----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.handle is not None and self.handle.running

    def start(self):
        if self.running:
            return None
        try:
            paths = self.paths()
        except QuantStudioError as e:
            self.status.setText(f"<b style='color:#e5484d'>Cannot export</b>: {html.escape(str(e))}")
            return None
        self.items = self.chosen()
        self.table.setRowCount(len(self.items))
        for row, (it, p) in enumerate(zip(self.items, paths)):
            for col, text in enumerate([it.label, os.path.basename(p), "waiting", "", "", "", ""]):
                self.table.setItem(row, col, QTableWidgetItem(text))
        self.progress.setValue(0)
        self.progress.setFormat("starting…")
        self.status.setText(f"Writing {len(self.items)} files into {self.folder.text().strip()}, each verified "
                            "against the model…")
        h = self.handle = self.s.workers.submit(
            "core.tasks:batch", self.s.path, self.items, self.folder.text().strip(), self.template.text().strip(),
            self.s.imatrix_path if self.s.imatrix is not None else None, self.overwrite.isChecked(),
            name="batch", user=True)
        h.progress.connect(self._progress_later)
        h.posted.connect(self._item)
        h.succeeded.connect(self._done)
        h.failed.connect(self._failed)
        h.cancelled.connect(self._cancelled)
        h.finished.connect(self._finished)
        for w in (self.run_btn, self.list, self.folder, self.template, self.overwrite):
            w.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        return h

    def cancel(self) -> None:
        if self.running:
            self.handle.cancel()
            self.cancel_btn.setEnabled(False)
            self.status.setText("Cancelling at the next chunk…")

    def _progress_later(self, ev) -> None:
        """Keep the newest event; shown at most 5 times a second."""
        self._pending = ev
        if not self._timer.isActive():
            self._timer.start()

    def _flush_progress(self) -> None:
        ev, self._pending = self._pending, None
        if ev is not None and self.running:
            self.progress.show_event(ev)

    def _item(self, r) -> None:
        """An item's state changed (a core.batch.ItemResult)."""
        cells = [r.state, fmt.human_bytes(r.size) if r.size else (f"≈ {fmt.human_bytes(r.predicted)}"
                                                                      if r.predicted else ""),
                 f"{r.bpw:.3f}" if r.size else "", f"{r.seconds:.1f} s" if r.seconds else "",
                 r.verdict if r.state in ("verified", "defects", "failed", "written") else ""]
        for col, text in enumerate(cells, start=2):
            cell = self.table.item(r.index, col)
            if cell is None:
                continue
            cell.setText(text)
            if col == 2 and r.state in STATE_COLORS:
                cell.setForeground(QColor(STATE_COLORS[r.state]))
        self.table.item(r.index, 6).setToolTip("\n".join(r.defects or r.warnings) or r.error)

    def _done(self, res) -> None:
        self.result = res
        self.progress.setValue(1000)
        self.progress.setFormat("done")
        n = sum(r.ok for r in res.items)
        self.status.setText(f"{n} of {len(res.items)} files written and verified in {html.escape(res.folder)} "
                            f"({fmt.format_duration(res.seconds)})" + ("" if res.ok else
                                                                       ": see the table for the others"))

    def _failed(self, e) -> None:
        self.status.setText(f"<b style='color:#e5484d'>Batch export failed</b>: {html.escape(str(e))}")

    def _cancelled(self) -> None:
        self.progress.setValue(0)
        self.progress.setFormat("cancelled")
        self.status.setText("Cancelled: no partial file is left; the files finished before stay.")

    def _finished(self) -> None:
        for w in (self.run_btn, self.list, self.folder, self.template, self.overwrite):
            w.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        self._update_preview()

    def closeEvent(self, ev) -> None:
        self.cancel()
        super().closeEvent(ev)
