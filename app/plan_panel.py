"""The plan panel: preset, imatrix, token-embedding/output types, rules, type of the selection,
save/load, copy the CLI command. Every change goes to the session as a new PlanRules."""
from __future__ import annotations

from typing import Callable

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QFormLayout, QGridLayout, QGroupBox, QHBoxLayout, QHeaderView,
                               QLabel, QLineEdit, QPushButton, QSpinBox, QTableWidget, QTableWidgetItem,
                               QVBoxLayout, QWidget)

from . import plan_choices
from .session import Session
from .widgets import DESCRIPTION_ROLE, describe_items, set_item_available

DEFAULT = "(preset's choice)"


def type_combo(with_default: bool = False, row_len=None) -> QComboBox:
    c = QComboBox()
    if with_default:
        c.addItem(DEFAULT)
    for t in plan_choices.type_names(row_len):
        c.addItem(t)
        c.setItemData(c.count() - 1, plan_choices.type_description(t), Qt.ItemDataRole.ToolTipRole)
    describe_items(c, plan_choices.type_description)
    return c


class PlanPanel(QWidget):
    """Emits the user's requests; file dialogs live in the main window (``saveRequested`` etc.)."""

    saveRequested = Signal()
    loadRequested = Signal()
    imatrixRequested = Signal()
    copyRequested = Signal()
    copyLlamaRequested = Signal()

    def __init__(self, session: Session, selected: Callable[[], list[str]], parent=None):
        super().__init__(parent)
        self.s = session
        self.selected = selected
        self._updating = False

        self.preset = QComboBox()
        self.preset.setToolTip("llama-quantize file type: the type mix the plan starts from")
        for p in plan_choices.preset_names():
            self.preset.addItem(p)
            self.preset.setItemData(self.preset.count() - 1, plan_choices.preset_description(p),
                                    Qt.ItemDataRole.ToolTipRole)
        describe_items(self.preset, plan_choices.preset_description)     # size and quality in the list itself
        self.preset_info = QLabel()
        self.preset_info.setWordWrap(True)
        self.preset_info.setStyleSheet("color: palette(placeholder-text);")
        self.tok_type = type_combo(True)
        self.tok_type.setToolTip("Type of token_embd.weight (llama-quantize --token-embedding-type)")
        self.out_type = type_combo(True)
        self.out_type.setToolTip("Type of output.weight (llama-quantize --output-tensor-type)")
        self.imatrix_label = QLabel("none")
        self.imatrix_label.setWordWrap(True)
        self.imatrix_btn = QPushButton("Load imatrix…")
        self.imatrix_btn.setToolTip("Importance matrix from llama-imatrix (.gguf or legacy .dat)")
        self.imatrix_clear = QPushButton("Clear")
        im = QHBoxLayout()
        im.addWidget(self.imatrix_btn)
        im.addWidget(self.imatrix_clear)
        form = QFormLayout()
        form.addRow("Preset:", self.preset)
        form.addRow("", self.preset_info)
        form.addRow("Token embedding:", self.tok_type)
        form.addRow("Output:", self.out_type)
        form.addRow("imatrix:", self.imatrix_label)
        form.addRow("", im)

        # selection
        self.sel_type = type_combo()
        self.sel_type.setCurrentText("Q8_0")
        self.sel_apply = QPushButton("Set selected")
        self.sel_apply.setToolTip("Give every selected tensor in the table this type")
        self.manual = QLabel()
        self.manual_clear = QPushButton("Clear manual types")
        sel = QGroupBox("Selected tensors")
        sl = QVBoxLayout(sel)
        row = QHBoxLayout()
        row.addWidget(self.sel_type, 1)
        row.addWidget(self.sel_apply)
        sl.addLayout(row)
        row = QHBoxLayout()
        row.addWidget(self.manual, 1)
        row.addWidget(self.manual_clear)
        sl.addLayout(row)

        # rules
        rules = QGroupBox("Rules (first match wins)")
        rules.setToolTip("Each rule gives a type to the tensors whose name matches its regex (and whose layer is "
                         "in its range); the first matching rule wins")
        rl = QVBoxLayout(rules)
        self.rules = QTableWidget(0, 3)
        self.rules.setHorizontalHeaderLabels(["Pattern (regex)", "Layers", "Type"])
        self.rules.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.rules.verticalHeader().setVisible(False)
        self.rules.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.rules.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.rules.setTabKeyNavigation(False)         # Tab leaves the table; the arrows move in it
        self.rules.setMaximumHeight(120)
        self.rule_pat = QLineEdit(placeholderText="e.g. ffn_down|attn_v")
        self.rule_lo = QSpinBox(minimum=-1, maximum=9999, value=-1, specialValueText="all")
        self.rule_hi = QSpinBox(minimum=-1, maximum=9999, value=-1, specialValueText="–")
        self.rule_type = type_combo()
        self.rule_type.setCurrentText("Q6_K" if "Q6_K" in plan_choices.type_names() else "Q8_0")
        self.rule_add = QPushButton("Add")
        self.rule_del = QPushButton("Remove")
        r1 = QHBoxLayout()
        r1.addWidget(self.rule_pat, 1)
        r1.addWidget(QLabel("layers"))
        r1.addWidget(self.rule_lo)
        r1.addWidget(self.rule_hi)
        r2 = QHBoxLayout()
        r2.addWidget(self.rule_type, 1)
        r2.addWidget(self.rule_add)
        r2.addWidget(self.rule_del)
        rl.addWidget(self.rules)
        rl.addLayout(r1)
        rl.addLayout(r2)

        self.save_btn = QPushButton("Save plan…")
        self.load_btn = QPushButton("Load plan…")
        self.copy_btn = QPushButton("Copy CLI command")
        self.copy_btn.setToolTip("Copy the quant-studio command line that makes this plan")
        self.copy_llama_btn = QPushButton("Copy llama-quantize")
        self.copy_llama_btn.setToolTip("Copy llama-quantize arguments that reproduce this plan exactly")
        files = QGridLayout()
        files.addWidget(self.save_btn, 0, 0)
        files.addWidget(self.load_btn, 0, 1)
        files.addWidget(self.copy_btn, 1, 0)
        files.addWidget(self.copy_llama_btn, 1, 1)
        self.warnings = QLabel()
        self.warnings.setWordWrap(True)
        self.warnings.setStyleSheet("color: #d97706;")
        self.counts = QLabel()
        self.counts.setWordWrap(True)

        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.counts)
        lay.addWidget(self.warnings)
        lay.addWidget(sel)
        lay.addWidget(rules)
        lay.addLayout(files)
        lay.addStretch(1)

        self.preset.currentTextChanged.connect(self._preset)
        self.preset.currentIndexChanged.connect(
            lambda _: self.preset_info.setText(self.preset.currentData(DESCRIPTION_ROLE) or ""))
        self.tok_type.currentTextChanged.connect(self._special)
        self.out_type.currentTextChanged.connect(self._special)
        self.sel_apply.clicked.connect(self._apply_selection)
        self.manual_clear.clicked.connect(self._clear_manual)
        self.rule_add.clicked.connect(self._add_rule)
        self.rule_del.clicked.connect(self._del_rule)
        self.save_btn.clicked.connect(self.saveRequested)
        self.load_btn.clicked.connect(self.loadRequested)
        self.copy_btn.clicked.connect(self.copyRequested)
        self.copy_llama_btn.clicked.connect(self.copyLlamaRequested)
        self.imatrix_btn.clicked.connect(self.imatrixRequested)
        self.imatrix_clear.clicked.connect(lambda: self.s.load_imatrix(None))
        session.planChanged.connect(self.refresh)
        session.imatrixChanged.connect(self._imatrix)
        session.modelOpened.connect(self.refresh)
        session.modelOpened.connect(self._imatrix)             # the imatrix label always follows the open model
        self.refresh()

    # -- from the session -------------------------------------------------------------------
    def refresh(self) -> None:
        self._updating = True
        try:
            rules = self.s.rules
            i = self.preset.findText(rules.preset)
            if i >= 0:
                self.preset.setCurrentIndex(i)
            self.preset_info.setText(self.preset.currentData(DESCRIPTION_ROLE) or "")
            self.tok_type.setCurrentText(rules.token_embedding_type or DEFAULT)
            self.out_type.setCurrentText(rules.output_tensor_type or DEFAULT)
            self.rules.setRowCount(len(rules.rules))
            for r, rule in enumerate(rules.rules):
                layers = "all" if not rule.layered else f"{rule.first}–{rule.last}"
                for c, text in enumerate((rule.pattern, layers, rule.type)):
                    it = QTableWidgetItem(text)
                    it.setToolTip(rule.regex())
                    self.rules.setItem(r, c, it)
            plan = self.s.plan
            if plan is not None:
                counts = sorted(plan.type_counts().items(), key=lambda kv: -kv[1])
                self.counts.setText("Types: " + ", ".join(f"{t} ×{n}" for t, n in counts))
            self.counts.setVisible(plan is not None)
            warn = list(plan.warnings) if plan is not None else []
            self.warnings.setText("\n".join("⚠ " + w for w in warn))
            self.warnings.setVisible(bool(warn))
            n = len(rules.manual)
            self.manual.setText(f"{n} manual type{'s' if n != 1 else ''}")
            self.manual_clear.setEnabled(n > 0)
            enabled = self.s.source is not None
            for w in (self.preset, self.tok_type, self.out_type, self.sel_apply, self.rule_add, self.save_btn,
                      self.load_btn, self.copy_btn, self.copy_llama_btn, self.imatrix_btn):
                w.setEnabled(enabled)
        finally:
            self._updating = False

    def _availability(self) -> None:
        """Presets llama-quantize refuses on this model without an imatrix are shown unavailable (with the
        reason) until one is loaded."""
        s = self.s
        for i in range(self.preset.count()):
            name = self.preset.itemText(i)
            needs = s.source is not None and s.imatrix is None and plan_choices.preset_needs_imatrix(s.source, name)
            set_item_available(self.preset, i, not needs, plan_choices.NEEDS_IMATRIX)

    def _imatrix(self) -> None:
        s = self.s
        self._availability()
        if s.imatrix is None:
            self.imatrix_label.setText("none")
            self.imatrix_label.setToolTip("")
            return
        import os
        m = getattr(s, "imatrix_match", None)
        self.imatrix_label.setText(f"{os.path.basename(s.imatrix_path)} ({len(s.imatrix)} entries)"
                                   + (f"<br><small>{m.summary()}</small>" if m is not None else ""))
        self.imatrix_label.setToolTip("\n".join(m.errors[:10]) if m is not None and m.errors else s.imatrix_path)

    # -- to the session ---------------------------------------------------------------------
    def _preset(self, name: str) -> None:
        if not self._updating and name and self.s.source is not None and name != self.s.rules.preset:
            if not self.s.set_preset(name):
                self.refresh()

    def _special(self, *_) -> None:
        if self._updating or self.s.source is None:
            return
        tok, out = self.tok_type.currentText(), self.out_type.currentText()
        rules = self.s.rules.replace(token_embedding_type=None if tok == DEFAULT else tok,
                                     output_tensor_type=None if out == DEFAULT else out)
        if not self.s.set_rules(rules):
            self.refresh()

    def _apply_selection(self) -> None:
        names = self.selected()
        if names:
            self.s.set_types(names, self.sel_type.currentText())

    def _clear_manual(self) -> None:
        self.s.set_rules(self.s.rules.replace(manual=()))

    def _add_rule(self) -> None:
        from core.errors import PlanError
        from core.rules import Rule
        pat = self.rule_pat.text().strip()
        if not pat:
            return
        lo, hi = self.rule_lo.value(), self.rule_hi.value()
        try:
            rule = Rule.make(pat, self.rule_type.currentText(), None if lo < 0 else lo,
                             None if lo < 0 else (max(lo, hi) if hi >= 0 else lo))
        except PlanError as e:
            self.s.planFailed.emit(e)
            return
        if self.s.set_rules(self.s.rules.replace(rules=self.s.rules.rules + (rule,))):
            self.rule_pat.clear()

    def _del_rule(self) -> None:
        rows = sorted({i.row() for i in self.rules.selectedIndexes()}, reverse=True)
        if not rows:
            return
        keep = tuple(r for i, r in enumerate(self.s.rules.rules) if i not in rows)
        self.s.set_rules(self.s.rules.replace(rules=keep))
