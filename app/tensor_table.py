"""The tensor table: a Qt model over the session (headers, stats as they arrive, the plan),
a filter/sort proxy (name regex, layer range, grouped by layer) and a type-combo delegate."""
from __future__ import annotations

import math
from typing import Optional

from PySide6.QtCore import QModelIndex, QRegularExpression, QSortFilterProxyModel, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QPalette, QStandardItem, QStandardItemModel
from PySide6.QtWidgets import (QAbstractItemView, QApplication, QCheckBox, QComboBox, QHBoxLayout, QHeaderView, QLabel,
                               QLineEdit, QMenu, QSpinBox, QStyledItemDelegate, QTableView, QVBoxLayout,
                               QWidget)

from . import fmt, planning
from .session import Session
from .workers import void

COLUMNS = ["Tensor", "Layer", "Shape", "Type", "Size", "Planned", "bpw", "Pred. error", "Planned size", "Std",
           "Kurtosis", ">6σ", "NaN/Inf", "Col spread", "Absmax", ">3σ", "Reason"]
(C_NAME, C_LAYER, C_SHAPE, C_TYPE, C_SIZE, C_PLANNED, C_BPW, C_ERR, C_PSIZE, C_STD, C_KURT, C_O6, C_NONFINITE,
 C_SPREAD, C_ABSMAX, C_O3, C_REASON) = range(len(COLUMNS))
STATS_COLS = (C_STD, C_KURT, C_O6, C_NONFINITE, C_SPREAD, C_ABSMAX, C_O3)      # contiguous
PLAN_COLS = (C_PLANNED, C_BPW, C_ERR, C_PSIZE, C_REASON)
SORT_ROLE = Qt.ItemDataRole.UserRole
NAME_ROLE = Qt.ItemDataRole.UserRole + 1
LAYER_ROLE = Qt.ItemDataRole.UserRole + 2
GROUP_ROLE = Qt.ItemDataRole.UserRole + 3       # layer, with unlayered tensors before/after by file position

_LEFT = (C_NAME, C_SHAPE, C_TYPE, C_PLANNED, C_REASON)
_RIGHT = int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
_RED, _GREY = QColor("#e5484d"), QColor("#8b8d98")
EDIT_ROLE = Qt.ItemDataRole.UserRole + 4        # the planned type (the combo's current text)
_ROLES = {"tip": Qt.ItemDataRole.ToolTipRole, "fg": Qt.ItemDataRole.ForegroundRole}

TIPS = {
    C_STD: "standard deviation of the weights", C_KURT: "excess kurtosis (normal = 0): heavy tails are hard to quantize",
    C_ABSMAX: "largest |weight|", C_O3: "weights beyond mean ± 3σ", C_O6: "weights beyond mean ± 6σ",
    C_NONFINITE: "NaN and Inf values (llama.cpp rejects them)",
    C_SPREAD: "max / median of the per-input-channel |max|: large values mean outlier channels",
    C_PLANNED: "output type in the plan (double-click to change; applies to every selected row)",
    C_ERR: "relative RMSE of the planned type, estimated from a sample of rows",
}


class TensorTableModel(QStandardItemModel):
    """One row per tensor. Every cell's text, sort key, colours and tooltip are stored in Qt's own
    item model, so painting and scrolling never call into Python (a Python model's data() runs for
    every role of every visible cell on each repaint, and needs the GIL that workers share)."""

    def __init__(self, session: Session, parent=None):
        super().__init__(0, len(COLUMNS), parent)
        self.s = session
        self.tensors: list = []
        self._row: dict[str, int] = {}
        self._entries: dict[str, object] = {}
        self._group: list[int] = []
        self._layers: list[int] = []
        self._shade = QBrush()
        self._plan_for = None
        self.setHorizontalHeaderLabels(COLUMNS)
        for c, tip in TIPS.items():
            self.horizontalHeaderItem(c).setToolTip(tip)
        self.refresh_palette()
        session.modelOpened.connect(self.reset)
        session.statsReady.connect(self._stats)
        session.planChanged.connect(self._plan)
        session.planErrorReady.connect(self._err)

    # -- filling the cells -----------------------------------------------------------------
    def reset(self) -> None:
        self.beginResetModel()
        self.blockSignals(True)             # the reset above and below stands for every change here
        try:
            self.setRowCount(0)
            self.tensors = list(self.s.source.tensors) if self.s.source is not None else []
            self._row = {t.name: i for i, t in enumerate(self.tensors)}
            first = next((i for i, t in enumerate(self.tensors) if t.layer is not None), len(self.tensors))
            self._layers = [-1 if t.layer is None else t.layer for t in self.tensors]
            self._group = [la if la >= 0 else (-1 if i < first else 1 << 30) for i, la in enumerate(self._layers)]
            self._entries = {e.name: e for e in self.s.plan.entries} if self.s.plan is not None else {}
            self._plan_for = self.s.plan
            self.setRowCount(len(self.tensors))
            protos = [self._prototypes(False), self._prototypes(True)]
            for r, t in enumerate(self.tensors):
                for c, proto in enumerate(protos[self._layers[r] % 2]):
                    self.setItem(r, c, proto.clone())          # alignment, shade, tooltip in one call
                self._fill_static(r, t)
                if t.ggml_type is None or t.name in self.s.stats or t.name in self.s.stats_errors:
                    self._fill_stats(r, t)
                self._fill_plan(r, t)
        finally:
            self.blockSignals(False)
            self.endResetModel()

    def _prototypes(self, shaded: bool) -> list:
        out = []
        for c in range(len(COLUMNS)):
            it = QStandardItem()
            it.setEditable(False)
            if c not in _LEFT:
                it.setData(_RIGHT, Qt.ItemDataRole.TextAlignmentRole)
            if shaded:
                it.setData(self._shade, Qt.ItemDataRole.BackgroundRole)
            if TIPS.get(c):
                it.setData(TIPS[c], Qt.ItemDataRole.ToolTipRole)
            if c in STATS_COLS:                            # statistics still to come
                it.setData("…", Qt.ItemDataRole.DisplayRole)
                it.setData(-math.inf, SORT_ROLE)
            out.append(it)
        return out

    def _set(self, r: int, c: int, text, sort=None, **roles) -> None:
        it = self.item(r, c)
        it.setData(text, Qt.ItemDataRole.DisplayRole)
        it.setData(sort if sort is not None else text, SORT_ROLE)
        for key, value in roles.items():
            it.setData(value, _ROLES[key])

    def _fill_static(self, r: int, t) -> None:
        la = self._layers[r]
        name = self.item(r, C_NAME)
        name.setData(t.name, NAME_ROLE)
        name.setData(la, LAYER_ROLE)
        name.setData(self._group[r], GROUP_ROLE)
        self._set(r, C_NAME, t.name, tip=t.name)
        self._set(r, C_LAYER, "" if la < 0 else str(la), self._group[r])
        self._set(r, C_SHAPE, fmt.shape(t.shape), t.n_elements)
        self._set(r, C_TYPE, t.dtype, tip=planning.type_description(t.dtype))
        self._set(r, C_SIZE, fmt.human_bytes(t.nbytes), t.nbytes)

    def _fill_stats(self, r: int, t) -> None:
        st = self.s.stats.get(t.name)
        if st is None:
            failed = t.name in self.s.stats_errors
            for c in STATS_COLS:
                text = ("error" if c == C_STD else "") if failed else ("…" if t.ggml_type is not None else "")
                self._set(r, c, text, -math.inf)
            return
        bad = st.nan_count + st.inf_count
        vals = {C_STD: (fmt.num(st.std, 3), st.std), C_KURT: (fmt.num(st.kurtosis, 3), st.kurtosis),
                C_ABSMAX: (fmt.num(st.absmax, 3), st.absmax),
                C_O3: (f"{st.outliers_k.get(3, 0):,}", st.outliers_k.get(3, 0)),
                C_O6: (f"{st.outliers_k.get(6, 0):,}", st.outliers_k.get(6, 0)),
                C_NONFINITE: (f"{bad:,}" if bad else "0", bad),
                C_SPREAD: (fmt.num(st.col_absmax_ratio, 3), st.col_absmax_ratio)}
        for c, (text, v) in vals.items():
            key = -math.inf if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
            self._set(r, c, text, key)
        self.item(r, C_NONFINITE).setData(_RED if bad else None, Qt.ItemDataRole.ForegroundRole)

    def _fill_plan(self, r: int, t) -> None:
        e = self._entries.get(t.name)
        planned = self.item(r, C_PLANNED)
        editable = e is not None and self.s.source is not None and planning.quantizable(self.s.source, t.name)
        if planned.isEditable() != editable:
            planned.setEditable(editable)
        if e is None:
            for c in PLAN_COLS:
                self._set(r, c, "", "", tip=TIPS.get(c))
            planned.setData(None, EDIT_ROLE)
            return
        tip = planning.type_description(e.type) + (f"\n{e.reason}" if e.reason else "")
        self._set(r, C_PLANNED, e.type if e.quantize else f"{e.type} (copy)", e.type, tip=tip,
                  fg=None if e.quantize else _GREY)
        planned.setData(e.type, EDIT_ROLE)
        self._set(r, C_BPW, f"{e.bpw:.3g}", e.bpw)
        self._set(r, C_PSIZE, fmt.human_bytes(e.nbytes), e.nbytes)
        self._set(r, C_REASON, e.reason, e.reason)
        self._fill_err(r, t)

    def _fill_err(self, r: int, t) -> None:
        e = self._entries.get(t.name)
        pe = self.s.planned_errors.get(t.name)
        if e is None or not e.quantize:
            self._set(r, C_ERR, "", -1.0, tip=TIPS[C_ERR])
        elif pe is None or pe.type != e.type:
            self._set(r, C_ERR, "…", pe.metrics.rel_rmse if pe is not None else -1.0, tip=TIPS[C_ERR])
        else:
            m = pe.metrics
            how = "exact" if m.exact else f"sample of {m.rows} of {m.total_rows} rows"
            self._set(r, C_ERR, fmt.pct(m.rel_rmse), m.rel_rmse,
                      tip=f"{pe.type}: relative RMSE {fmt.pct(m.rel_rmse)}, SNR {fmt.db(m.snr_db)}, "
                          f"cosine {m.cosine:.6f} ({how})")

    def _update(self, rows, c0: int, c1: int, fill) -> None:
        """Refill columns c0..c1 of ``rows`` with ``fill(r, tensor)``, announced as one change: the
        view repaints only what it shows of that range, and the proxy does not re-sort (dynamic
        sorting is off)."""
        rows = [r for r in rows if r is not None]
        if not rows:
            return
        self.blockSignals(True)
        try:
            for r in rows:
                fill(r, self.tensors[r])
        finally:
            self.blockSignals(False)
        self.dataChanged.emit(self.index(min(rows), c0), self.index(max(rows), c1))

    # -- session signals ----------------------------------------------------------------------
    def _stats(self, name: str) -> None:
        self._update([self._row.get(name)], min(STATS_COLS), max(STATS_COLS), self._fill_stats)

    def _plan(self) -> None:
        if self.s.plan is self._plan_for:                 # already shown (the reset of a new model)
            return
        self._plan_for = self.s.plan
        self._entries = {e.name: e for e in self.s.plan.entries} if self.s.plan is not None else {}
        self._update(range(len(self.tensors)), min(PLAN_COLS), max(PLAN_COLS), self._fill_plan)

    def _err(self, name: str) -> None:
        self._update([self._row.get(name)], C_ERR, C_ERR, self._fill_err)

    def row_of(self, name: str) -> Optional[int]:
        return self._row.get(name)

    def group_of(self, row: int) -> int:
        return self._group[row]

    def refresh_palette(self) -> None:
        """The shade of odd layers follows the palette (light or dark)."""
        base = QApplication.palette().color(QPalette.ColorRole.Base)
        self._shade = QBrush(base.darker(105) if base.lightness() > 128 else base.lighter(135))

        def shade(r: int, _t) -> None:
            for c in range(len(COLUMNS)):
                self.item(r, c).setData(self._shade, Qt.ItemDataRole.BackgroundRole)

        self._update([r for r, la in enumerate(self._layers) if la % 2 == 1], 0, len(COLUMNS) - 1, shade)

    def setData(self, index, value, role=Qt.ItemDataRole.EditRole):
        """An edit of the Planned cell changes the plan (the cell then follows the plan)."""
        if role == Qt.ItemDataRole.EditRole and index.column() == C_PLANNED and value \
                and self.item(index.row(), C_PLANNED).isEditable():
            return self.s.set_types([self.tensors[index.row()].name], str(value))
        return False


class TensorFilterProxy(QSortFilterProxyModel):
    """Name filter (substring or regex), layer range, and sorting grouped by layer."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setSortRole(SORT_ROLE)
        # rows stay where they are while statistics and estimates arrive (no re-sort per update;
        # clicking a header sorts with the values known then)
        self.setDynamicSortFilter(False)
        self._rx = QRegularExpression()
        self.layer_lo: Optional[int] = None
        self.layer_hi: Optional[int] = None
        self.group_by_layer = True

    def set_pattern(self, text: str, regex: bool) -> bool:
        """True when the pattern is valid (an invalid regex filters nothing)."""
        pat = text if regex else QRegularExpression.escape(text)
        rx = QRegularExpression(pat, QRegularExpression.PatternOption.CaseInsensitiveOption)
        ok = rx.isValid()
        self._change(lambda: setattr(self, "_rx", rx if ok else QRegularExpression()))
        return ok

    def set_layers(self, lo: Optional[int], hi: Optional[int]) -> None:
        self._change(lambda: (setattr(self, "layer_lo", lo), setattr(self, "layer_hi", hi)))

    def _change(self, fn) -> None:
        """Apply a filter change (Qt 6.9+ brackets it; older Qt re-filters afterwards)."""
        if hasattr(self, "beginFilterChange"):
            self.beginFilterChange()
            fn()
            self.endFilterChange()
        else:
            fn()
            self.invalidateFilter()

    def set_grouped(self, on: bool) -> None:
        self.group_by_layer = on
        self.invalidate()

    def filterAcceptsRow(self, row, parent) -> bool:
        m = self.sourceModel()
        name = m.data(m.index(row, C_NAME, parent), NAME_ROLE)
        if self._rx.pattern() and not self._rx.match(name).hasMatch():
            return False
        if self.layer_lo is not None or self.layer_hi is not None:
            layer = m.data(m.index(row, C_NAME, parent), LAYER_ROLE)
            if layer < 0 or (self.layer_lo is not None and layer < self.layer_lo) or \
                    (self.layer_hi is not None and layer > self.layer_hi):
                return False
        return True

    def lessThan(self, left, right) -> bool:
        m = self.sourceModel()
        if self.group_by_layer and left.column() != C_LAYER:
            la, lb = m.group_of(left.row()), m.group_of(right.row())
            if la != lb:                       # layers stay ascending whatever the sort order
                asc = self.sortOrder() == Qt.SortOrder.AscendingOrder
                return (la < lb) == asc
        a, b = m.data(left, SORT_ROLE), m.data(right, SORT_ROLE)
        try:
            if a == b:
                return left.row() < right.row()
            return a < b
        except TypeError:
            return str(a) < str(b)


class TypeDelegate(QStyledItemDelegate):
    """A combo of the types a tensor's rows fit, with each type explained in its tooltip; the
    choice applies to every selected row."""

    def __init__(self, view: QTableView, session: Session):
        super().__init__(view)
        self.view, self.s = view, session

    def createEditor(self, parent, option, index):
        name = index.siblingAtColumn(C_NAME).data(NAME_ROLE)
        combo = QComboBox(parent)
        row_len = self.s.source.tensor(name).row_len
        for i, t in enumerate(planning.type_names(row_len)):
            combo.addItem(t)
            combo.setItemData(i, planning.type_description(t), Qt.ItemDataRole.ToolTipRole)
        combo.activated.connect(lambda _=0, c=combo: void(self.commitData.emit, c))
        return combo

    def setEditorData(self, editor, index):
        i = editor.findText(index.data(EDIT_ROLE) or "")
        if i >= 0:
            editor.setCurrentIndex(i)

    def setModelData(self, editor, model, index):
        t = editor.currentText()
        if not t or t == index.data(EDIT_ROLE):
            return
        names = selected_names(self.view)
        name = index.siblingAtColumn(C_NAME).data(NAME_ROLE)
        if name not in names:
            names = [name]
        self.s.set_types(names, t)


def selected_names(view: QTableView) -> list[str]:
    rows = view.selectionModel().selectedRows() if view.selectionModel() else []
    return [r.data(NAME_ROLE) for r in rows]


class TensorTable(QWidget):
    """Filter bar + table. ``tensorSelected(name)`` when the current row changes."""

    tensorSelected = Signal(str)

    def __init__(self, session: Session, parent=None):
        super().__init__(parent)
        self.s = session
        self.model = TensorTableModel(session, self)
        self.proxy = TensorFilterProxy(self)
        self.proxy.setSourceModel(self.model)

        self.filter = QLineEdit(placeholderText="Filter tensors by name…  (e.g. ffn_down or attn_(q|k))",
                                clearButtonEnabled=True)
        self.filter.setToolTip("Substring of tensor names; check 'Regex' for a regular expression")
        self.regex = QCheckBox("Regex")
        self.layer_lo = QSpinBox(minimum=-1, maximum=9999, value=-1, specialValueText="any")
        self.layer_hi = QSpinBox(minimum=-1, maximum=9999, value=-1, specialValueText="any")
        for sb in (self.layer_lo, self.layer_hi):
            sb.setToolTip("Show only tensors of layers in this range")
        self.grouped = QCheckBox("Group by layer", checked=True)
        self.count = QLabel()
        bar = QHBoxLayout()
        bar.addWidget(self.filter, 1)
        bar.addWidget(self.regex)
        bar.addWidget(QLabel("Layers"))
        bar.addWidget(self.layer_lo)
        bar.addWidget(QLabel("–"))
        bar.addWidget(self.layer_hi)
        bar.addWidget(self.grouped)
        bar.addWidget(self.count)

        self.view = QTableView()
        self.view.setModel(self.proxy)
        self.view.setSortingEnabled(True)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.view.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked
                                  | QAbstractItemView.EditTrigger.SelectedClicked
                                  | QAbstractItemView.EditTrigger.EditKeyPressed)
        self.view.setAlternatingRowColors(False)
        self.view.verticalHeader().setVisible(False)
        self.view.verticalHeader().setDefaultSectionSize(22)
        self.view.setWordWrap(False)
        self.view.setItemDelegateForColumn(C_PLANNED, TypeDelegate(self.view, session))
        h = self.view.horizontalHeader()
        h.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        h.setStretchLastSection(True)
        self.view.setColumnWidth(C_NAME, 190)
        for c, w in ((C_LAYER, 42), (C_SHAPE, 96), (C_TYPE, 50), (C_SIZE, 76), (C_PLANNED, 82), (C_BPW, 40),
                     (C_ERR, 76), (C_PSIZE, 84), (C_STD, 62), (C_KURT, 62), (C_O6, 44), (C_NONFINITE, 58),
                     (C_SPREAD, 70), (C_ABSMAX, 60), (C_O3, 60)):
            self.view.setColumnWidth(c, w)
        self.view.sortByColumn(C_LAYER, Qt.SortOrder.AscendingOrder)
        self.view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.view.customContextMenuRequested.connect(self._menu)

        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(bar)
        lay.addWidget(self.view)

        self.filter.textChanged.connect(self._refilter)
        self.regex.toggled.connect(self._refilter)
        self.layer_lo.valueChanged.connect(self._layers)
        self.layer_hi.valueChanged.connect(self._layers)
        self.grouped.toggled.connect(self.proxy.set_grouped)
        self.view.selectionModel().currentRowChanged.connect(self._current)
        self.proxy.rowsInserted.connect(self._count)
        self.proxy.rowsRemoved.connect(self._count)
        self.proxy.modelReset.connect(self._count)
        self.proxy.layoutChanged.connect(self._count)

    def _refilter(self) -> None:
        ok = self.proxy.set_pattern(self.filter.text(), self.regex.isChecked())
        self.filter.setStyleSheet("" if ok else "QLineEdit { color: #e5484d; }")
        self._count()

    def _layers(self) -> None:
        lo, hi = self.layer_lo.value(), self.layer_hi.value()
        self.proxy.set_layers(None if lo < 0 else lo, None if hi < 0 else hi)
        self._count()

    def _count(self, *_) -> None:
        self.count.setText(f"{self.proxy.rowCount()} / {self.model.rowCount()} tensors")

    def _current(self, cur: QModelIndex, _prev) -> None:
        if cur.isValid():
            self.tensorSelected.emit(cur.siblingAtColumn(C_NAME).data(NAME_ROLE))

    def select(self, name: str) -> bool:
        r = self.model.row_of(name)
        if r is None:
            return False
        idx = self.proxy.mapFromSource(self.model.index(r, 0))
        if not idx.isValid():
            self.filter.clear()
            self.layer_lo.setValue(-1)
            self.layer_hi.setValue(-1)
            idx = self.proxy.mapFromSource(self.model.index(r, 0))
        self.view.selectionModel().setCurrentIndex(
            idx, self.view.selectionModel().SelectionFlag.ClearAndSelect | self.view.selectionModel().SelectionFlag.Rows)
        self.view.scrollTo(idx, QAbstractItemView.ScrollHint.PositionAtCenter)
        return True

    def current_name(self) -> Optional[str]:
        idx = self.view.currentIndex()
        return idx.siblingAtColumn(C_NAME).data(NAME_ROLE) if idx.isValid() else None

    def selected(self) -> list[str]:
        return selected_names(self.view)

    def _menu(self, pos) -> None:
        names = [n for n in self.selected() if planning.quantizable(self.s.source, n)] if self.s.source else []
        if not names:
            return
        menu = QMenu(self)
        sub = menu.addMenu(f"Set type of {len(names)} tensor{'s' if len(names) > 1 else ''}")
        row_lens = {self.s.source.tensor(n).row_len for n in names}
        fits = [t for t in planning.type_names() if all(t in planning.type_names(r) for r in row_lens)]
        for t in fits:
            a = sub.addAction(t)
            a.setToolTip(planning.type_description(t))
            a.triggered.connect(lambda _=False, t=t, ns=names: void(self.s.set_types, ns, t))
        sub.setToolTipsVisible(True)
        clear = menu.addAction("Clear manual types")
        clear.triggered.connect(lambda _=False, ns=names: self._clear(ns))
        menu.exec(self.view.viewport().mapToGlobal(pos))

    def _clear(self, names) -> None:
        from .session import _copy_spec
        spec = _copy_spec(self.s.spec)
        for n in names:
            spec.overrides.pop(n, None)
        self.s.set_spec(spec)


__all__ = ["TensorTable", "TensorTableModel", "TensorFilterProxy", "TypeDelegate", "COLUMNS"]
