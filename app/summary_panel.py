"""Model summary (architecture, parameters, layers, size, types) and a metadata browser whose values
can be edited (double-click) and saved as a new GGUF without requantizing (core.metadata_edit)."""
from __future__ import annotations

import os

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor, QFont
from PySide6.QtWidgets import (QFileDialog, QFormLayout, QHBoxLayout, QInputDialog, QLabel, QLineEdit,
                               QPushButton, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget)

from core.errors import QuantStudioError

from . import fmt
from .session import Session


EDITED = QBrush(QColor(255, 191, 0, 70))


class SummaryPanel(QWidget):
    errorRaised = Signal(str, object)
    saved = Signal(str)                            # path of the file written with the edited metadata

    FIELDS = ("Name", "Architecture", "Format", "Parameters", "Layers", "Tensors", "Size", "Bits/weight",
              "Types", "Path")

    def __init__(self, session: Session, parent=None):
        super().__init__(parent)
        self.s = session
        form = QFormLayout()
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight)
        self.values: dict[str, QLabel] = {}
        for f in self.FIELDS:
            lab = QLabel("–")
            lab.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            lab.setWordWrap(True)
            self.values[f] = lab
            form.addRow(f + ":", lab)
        self.filter = QLineEdit(placeholderText="Filter metadata keys…", clearButtonEnabled=True)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Key", "Value"])
        self.tree.setRootIsDecorated(False)
        self.tree.setUniformRowHeights(True)
        self.tree.setColumnWidth(0, 230)
        # keys lose their middle ("llama.att…_epsilon"); a number is never cut (see _fit_columns)
        self.tree.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.tree.header().setStretchLastSection(True)
        self._viewport = self.tree.viewport()
        self._viewport.installEventFilter(self)
        self._value_need = 0                       # pixels the widest number or short value needs
        self.viewer = None
        self.tree.setToolTip("Double-click a value to edit it; Save As writes a new GGUF with the tensors copied")
        self.tree.itemDoubleClicked.connect(self._edit)
        self.changes: dict[str, str] = {}          # key -> the new value as typed (parsed on save)
        self.save_btn = QPushButton("Save As…")
        self.save_btn.setToolTip("Write a copy of this GGUF with the edited metadata (no requantization)")
        self.revert_btn = QPushButton("Revert")
        self.edits_label = QLabel("")
        self.save_btn.clicked.connect(self.save_dialog)
        self.revert_btn.clicked.connect(self.revert)
        bar = QHBoxLayout()
        bar.addWidget(self.edits_label, 1)
        bar.addWidget(self.revert_btn)
        bar.addWidget(self.save_btn)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(QLabel("<b>Metadata</b>"))
        lay.addWidget(self.filter)
        lay.addWidget(self.tree, 1)
        lay.addLayout(bar)
        session.modelOpened.connect(self.refresh)
        self.filter.textChanged.connect(self._filter)
        self._update_edits()

    def refresh(self) -> None:
        src = self.s.source
        if src is None:
            return
        sm = src.summary()
        v = self.values
        v["Name"].setText(str(sm["name"]))
        v["Architecture"].setText(str(sm["architecture"] or "unknown"))
        v["Format"].setText({"gguf": "GGUF", "safetensors": "safetensors", "hf": "Hugging Face folder"}
                            .get(sm["format"], str(sm["format"])))
        v["Parameters"].setText(f"{fmt.human_count(sm['n_params'])}  ({sm['n_params']:,})")
        v["Layers"].setText(str(sm["n_layers"]))
        v["Tensors"].setText(str(sm["n_tensors"]))
        v["Size"].setText(fmt.human_bytes(sm["n_bytes"]))
        v["Bits/weight"].setText(f"{sm['bpw']:.3f}")
        v["Types"].setText(", ".join(f"{k} ×{n}" for k, n in sorted(sm["types"].items(), key=lambda kv: -kv[1])))
        v["Path"].setText(str(sm["path"]))
        v["Path"].setToolTip(str(sm["path"]))
        self.changes = {}
        self._update_edits()
        self.tree.clear()
        items = []
        for key, val in src.metadata.items():
            it = QTreeWidgetItem([str(key), fmt.short_value(val)])
            it.setToolTip(1, fmt.short_value(val, 2000))
            items.append(it)
        self.tree.addTopLevelItems(items)
        fm = self.tree.fontMetrics()
        short = [it.text(1) for it in items if len(it.text(1)) <= 24]
        self._value_need = max((fm.horizontalAdvance(t) for t in short), default=0) + 24
        self._fit_columns()
        self._filter(self.filter.text())

    def eventFilter(self, obj, ev) -> bool:
        from PySide6.QtCore import QEvent
        # (no call into the tree here: while the window is torn down it may be gone already)
        if ev.type() == QEvent.Type.Resize and obj is self._viewport:
            self._fit_columns()
        return super().eventFilter(obj, ev)

    def _fit_columns(self) -> None:
        """The key column gives way so that every number and short value shows whole."""
        room = self.tree.viewport().width() - self._value_need
        self.tree.setColumnWidth(0, max(90, min(260, room)))

    def show_value(self, key: str):
        """A read-only viewer with the whole of a (long) value."""
        from PySide6.QtWidgets import QDialog, QDialogButtonBox, QPlainTextEdit
        val = self.changes.get(key, self.s.source.metadata.get(key) if self.s.source is not None else None)
        if isinstance(val, (list, tuple)):
            text = "\n".join(fmt.short_value(x, 10 ** 6) for x in val)
            title = f"{key} ({len(val):,} items)"
        else:
            text, title = fmt.short_value(val, 10 ** 7).replace("⏎", "\n"), key
        d = QDialog(self)
        d.setWindowTitle(title)
        d.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        view = QPlainTextEdit(text, readOnly=True)
        view.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(d.reject)
        lay = QVBoxLayout(d)
        lay.addWidget(QLabel(f"<b>{title}</b>"))
        lay.addWidget(view, 1)
        lay.addWidget(buttons)
        d.resize(640, 420)
        d.show()
        self.viewer = d
        return d

    # -- editing ------------------------------------------------------------------------------
    def editable(self) -> bool:
        return self.s.source is not None and getattr(self.s.source, "kind", "") == "gguf"

    def _edit(self, item: QTreeWidgetItem, _column: int) -> None:
        key = item.text(0)
        current = self.changes.get(key, self.s.source.metadata.get(key))
        if not self.editable() or isinstance(current, (list, tuple)) or hasattr(current, "shape"):
            self.show_value(key)                  # read-only: the whole value (arrays: set-metadata on the CLI)
            return
        text, ok = QInputDialog.getMultiLineText(self, "Edit metadata", key, str(current))
        if ok:
            self.set_value(key, text)

    def set_value(self, key: str, text: str) -> None:
        """Record an edit of ``key`` (shown at once, written by :meth:`save_as`)."""
        self.changes[key] = text
        for i in range(self.tree.topLevelItemCount()):
            it = self.tree.topLevelItem(i)
            if it.text(0) == key:
                break
        else:
            it = QTreeWidgetItem([key, ""])
            self.tree.addTopLevelItem(it)
        it.setText(1, fmt.short_value(text))
        it.setToolTip(1, fmt.short_value(text, 2000))
        for c in (0, 1):
            it.setBackground(c, EDITED)
        f = QFont(it.font(0))
        f.setBold(True)
        it.setFont(0, f)
        self._update_edits()

    def revert(self) -> None:
        self.refresh()

    def _update_edits(self) -> None:
        n = len(self.changes)
        self.edits_label.setText(f"{n} edited key{'s' if n != 1 else ''}" if n else "")
        self.save_btn.setEnabled(bool(n) and self.editable())
        self.revert_btn.setEnabled(bool(n))

    def parsed_changes(self) -> list:
        from core.metadata_edit import parse_assignment
        current = {k.key: k for k in self.s.source.kv}
        return [parse_assignment(f"{k}={v}", current.get(k)) for k, v in self.changes.items()]

    def save_dialog(self) -> None:
        src = self.s.source
        stem, ext = os.path.splitext(src.path)
        path, _ = QFileDialog.getSaveFileName(self, "Save with edited metadata", f"{stem}.edited{ext}",
                                              "GGUF files (*.gguf)")
        if path:
            self.save_as(path)

    def save_as(self, path: str):
        try:
            changes = self.parsed_changes()
        except QuantStudioError as e:
            self.errorRaised.emit("Cannot save the metadata", e)
            return None
        h = self.s.save_metadata_as(path, changes, [])
        h.failed.connect(lambda e: self.errorRaised.emit("Cannot save the metadata", e))
        h.succeeded.connect(self.saved.emit)
        return h

    def _filter(self, text: str) -> None:
        t = text.lower()
        for i in range(self.tree.topLevelItemCount()):
            it = self.tree.topLevelItem(i)
            it.setHidden(bool(t) and t not in it.text(0).lower())
