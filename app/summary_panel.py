"""Model summary (architecture, parameters, layers, size, types) and a metadata browser."""
from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QFormLayout, QLabel, QLineEdit, QTreeWidget, QTreeWidgetItem, QVBoxLayout,
                               QWidget)

from . import fmt
from .session import Session


class SummaryPanel(QWidget):
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
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(QLabel("<b>Metadata</b>"))
        lay.addWidget(self.filter)
        lay.addWidget(self.tree, 1)
        session.modelOpened.connect(self.refresh)
        self.filter.textChanged.connect(self._filter)

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
        self.tree.clear()
        items = []
        for key, val in src.metadata.items():
            it = QTreeWidgetItem([str(key), fmt.short_value(val)])
            it.setToolTip(1, fmt.short_value(val, 2000))
            items.append(it)
        self.tree.addTopLevelItems(items)
        self._filter(self.filter.text())

    def _filter(self, text: str) -> None:
        t = text.lower()
        for i in range(self.tree.topLevelItemCount()):
            it = self.tree.topLevelItem(i)
            it.setHidden(bool(t) and t not in it.text(0).lower())
