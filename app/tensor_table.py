"""The tensor table: a Qt model over the session (headers, stats as they arrive, the plan),
a filter/sort proxy (name regex, layer range, grouped by layer) and a type-combo delegate."""
from __future__ import annotations

import math
from typing import Optional

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QRegularExpression, QSortFilterProxyModel, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QPalette
from PySide6.QtWidgets import (QAbstractItemView, QApplication, QCheckBox, QComboBox, QHBoxLayout, QHeaderView, QLabel,
                               QLineEdit, QMenu, QSpinBox, QStyledItemDelegate, QTableView, QVBoxLayout,
                               QWidget)

from . import fmt, plan_choices
from .widgets import set_item_available
from .session import Session

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
_PLAIN = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
_EDITABLE = _PLAIN | Qt.ItemFlag.ItemIsEditable

TIPS = {
    C_STD: "standard deviation of the weights", C_KURT: "excess kurtosis (normal = 0): heavy tails are hard to quantize",
    C_ABSMAX: "largest |weight|", C_O3: "weights beyond mean ± 3σ", C_O6: "weights beyond mean ± 6σ",
    C_NONFINITE: "NaN and Inf values (llama.cpp rejects them)",
    C_SPREAD: "max / median of the per-input-channel |max|: large values mean outlier channels",
    C_PLANNED: "output type in the plan (double-click to change; applies to every selected row)",
    C_ERR: "relative RMSE of the planned type, estimated from a sample of rows",
}


class TensorTableModel(QAbstractTableModel):
    def __init__(self, session: Session, parent=None):
        super().__init__(parent)
        self.s = session
        self.tensors: list = []
        self._row: dict[str, int] = {}
        self._entries: dict[str, object] = {}
        self._editable: list[bool] = []
        self._group: list[int] = []
        self._layers: list[int] = []
        self._shade = QBrush()
        R = Qt.ItemDataRole
        self._roles = {R.DisplayRole: self._role_display, SORT_ROLE: self._role_sort,
                       NAME_ROLE: lambda r, c: self.tensors[r].name, LAYER_ROLE: lambda r, c: self._layers[r],
                       GROUP_ROLE: lambda r, c: self._group[r], R.EditRole: self._role_edit,
                       R.TextAlignmentRole: self._role_align, R.BackgroundRole: self._role_background,
                       R.ForegroundRole: self._role_foreground, R.ToolTipRole: self._role_tooltip}
        self.refresh_palette()
        session.modelOpened.connect(self.reset)
        session.statsReady.connect(self._stats)
        session.planChanged.connect(self._plan)
        session.planErrorReady.connect(self._err)

    # -- updates -----------------------------------------------------------------------
    def reset(self) -> None:
        self.beginResetModel()
        self.tensors = list(self.s.source.tensors) if self.s.source is not None else []
        self._row = {t.name: i for i, t in enumerate(self.tensors)}
        first = next((i for i, t in enumerate(self.tensors) if t.layer is not None), len(self.tensors))
        self._layers = [-1 if t.layer is None else t.layer for t in self.tensors]
        self._group = [la if la >= 0 else (-1 if i < first else 1 << 30) for i, la in enumerate(self._layers)]
        self._entries = {e.name: e for e in self.s.plan.entries} if self.s.plan is not None else {}
        self._editable = self._editable_rows()
        self.endResetModel()

    def _stats(self, name: str) -> None:
        self._touch(name, min(STATS_COLS), max(STATS_COLS))

    def _touch(self, name: str, c0: int, c1: int) -> None:
        """One row's cells changed. Emitted per row: the view repaints only the part of the
        viewport those cells cover (nothing for rows scrolled out of sight), and the proxy does
        not re-sort (dynamic sorting is off)."""
        r = self._row.get(name)
        if r is not None:
            self.dataChanged.emit(self.index(r, c0), self.index(r, c1))

    def _editable_rows(self) -> list[bool]:
        src = self.s.source
        return [src is not None and t.name in self._entries and plan_choices.quantizable(src, t.name)
                for t in self.tensors]

    def _plan(self) -> None:
        self._entries = {e.name: e for e in self.s.plan.entries} if self.s.plan is not None else {}
        self._editable = self._editable_rows()
        if self.tensors:
            self.dataChanged.emit(self.index(0, min(PLAN_COLS)), self.index(len(self.tensors) - 1, max(PLAN_COLS)))

    def _err(self, name: str) -> None:
        self._touch(name, C_ERR, C_ERR)

    def row_of(self, name: str) -> Optional[int]:
        return self._row.get(name)

    # -- Qt model API ------------------------------------------------------------------
    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.tensors)

    def columnCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if orientation == Qt.Orientation.Horizontal:
            if role == Qt.ItemDataRole.DisplayRole:
                return COLUMNS[section]
            if role == Qt.ItemDataRole.ToolTipRole:
                return TIPS.get(section)
        return None

    def flags(self, index):
        # called for every visible cell on each repaint: precomputed flags, no enum arithmetic
        if index.column() == C_PLANNED and self._editable[index.row()]:
            return _EDITABLE
        return _PLAIN

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        # called for every role of every visible cell on each repaint: unhandled roles leave first
        h = self._roles.get(role)
        if h is None or not index.isValid():
            return None
        return h(index.row(), index.column())

    def _role_display(self, r: int, c: int):
        return self._display(self.tensors[r], c)

    def _role_sort(self, r: int, c: int):
        return self._sort(self.tensors[r], c)

    def _role_edit(self, r: int, c: int):
        if c != C_PLANNED:
            return None
        e = self._entries.get(self.tensors[r].name)
        return e.type if e is not None else None

    def _role_align(self, r: int, c: int):
        return None if c in _LEFT else _RIGHT

    def _role_background(self, r: int, c: int):
        return self._shade if self._layers[r] % 2 == 1 else None

    def _role_foreground(self, r: int, c: int):
        if c == C_NONFINITE:
            st = self.s.stats.get(self.tensors[r].name)
            if st is not None and (st.nan_count or st.inf_count):
                return _RED
        elif c == C_PLANNED:
            e = self._entries.get(self.tensors[r].name)
            if e is not None and not e.quantize:
                return _GREY
        return None

    def _role_tooltip(self, r: int, c: int):
        t = self.tensors[r]
        if c in (C_PLANNED, C_TYPE):
            e = self._entries.get(t.name)
            tname = t.dtype if c == C_TYPE else (e.type if e else None)
            tip = plan_choices.type_description(tname) if tname else ""
            return tip + (f"\n{e.reason}" if c == C_PLANNED and e is not None and e.reason else "")
        if c == C_ERR:
            pe = self.s.planned_errors.get(t.name)
            if pe is not None:
                m = pe.metrics
                how = "exact" if m.exact else f"sample of {m.rows} of {m.total_rows} rows"
                return (f"{pe.type}: relative RMSE {fmt.pct(m.rel_rmse)}, SNR {fmt.db(m.snr_db)}, "
                        f"cosine {m.cosine:.6f} ({how})")
        if c == C_REASON:                      # the whole reason, however narrow its column
            e = self._entries.get(t.name)
            return e.reason if e is not None and e.reason else None
        if c == C_SHAPE:
            return fmt.shape(t.shape)
        return t.name if c == C_NAME else TIPS.get(c)

    def refresh_palette(self) -> None:
        """The shade of odd layers follows the palette (light or dark)."""
        base = QApplication.palette().color(QPalette.ColorRole.Base)
        self._shade = QBrush(base.darker(105) if base.lightness() > 128 else base.lighter(135))
        if self.tensors:
            self.dataChanged.emit(self.index(0, 0), self.index(len(self.tensors) - 1, len(COLUMNS) - 1))

    def _display(self, t, c):
        if c == C_NAME:
            return t.name
        if c == C_LAYER:
            la = self._layers[self._row[t.name]]
            return "" if la < 0 else str(la)
        if c == C_SHAPE:
            return fmt.shape(t.shape)
        if c == C_TYPE:
            return t.dtype
        if c == C_SIZE:
            return fmt.human_bytes(t.nbytes)
        if c in STATS_COLS:
            st = self.s.stats.get(t.name)
            if st is None:
                if t.name in self.s.stats_errors:
                    return "error" if c == C_STD else ""
                return "…" if t.ggml_type is not None else ""
            return {C_STD: fmt.num(st.std, 3), C_KURT: fmt.num(st.kurtosis, 3), C_ABSMAX: fmt.num(st.absmax, 3),
                    C_O3: f"{st.outliers_k.get(3, 0):,}", C_O6: f"{st.outliers_k.get(6, 0):,}",
                    C_NONFINITE: f"{st.nan_count + st.inf_count:,}" if (st.nan_count or st.inf_count) else "0",
                    C_SPREAD: fmt.num(st.col_absmax_ratio, 3)}[c]
        e = self._entries.get(t.name)
        if e is None:
            return ""
        if c == C_PLANNED:
            return e.type if e.quantize else f"{e.type} (copy)"
        if c == C_BPW:
            return f"{e.bpw:.3g}"
        if c == C_PSIZE:
            return fmt.human_bytes(e.nbytes)
        if c == C_ERR:
            if not e.quantize:
                return ""
            pe = self.s.planned_errors.get(t.name)
            return fmt.pct(pe.metrics.rel_rmse) if pe is not None and pe.type == e.type else "…"
        if c == C_REASON:
            return e.reason
        return None

    def _sort(self, t, c):
        if c == C_NAME:
            return t.name
        if c == C_LAYER:
            return self._group[self._row[t.name]]
        if c == C_SHAPE:
            return t.n_elements
        if c == C_SIZE:
            return t.nbytes
        if c == C_TYPE:
            return t.dtype
        if c in STATS_COLS:
            st = self.s.stats.get(t.name)
            if st is None:
                return -math.inf
            v = {C_STD: st.std, C_KURT: st.kurtosis, C_ABSMAX: st.absmax, C_O3: st.outliers_k.get(3, 0),
                 C_O6: st.outliers_k.get(6, 0), C_NONFINITE: st.nan_count + st.inf_count,
                 C_SPREAD: st.col_absmax_ratio}[c]
            return -math.inf if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
        e = self._entries.get(t.name)
        if e is None:
            return ""
        if c == C_PLANNED or c == C_REASON:
            return e.type if c == C_PLANNED else e.reason
        if c == C_BPW:
            return e.bpw
        if c == C_PSIZE:
            return e.nbytes
        if c == C_ERR:
            pe = self.s.planned_errors.get(t.name)
            return pe.metrics.rel_rmse if pe is not None and e.quantize else -1.0
        return ""

    def setData(self, index, value, role=Qt.ItemDataRole.EditRole):
        if role != Qt.ItemDataRole.EditRole or index.column() != C_PLANNED or not value:
            return False
        return self.s.set_types([self.tensors[index.row()].name], str(value))


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
            la, lb = m.data(left, GROUP_ROLE), m.data(right, GROUP_ROLE)
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
        name = index.data(NAME_ROLE)
        combo = QComboBox(parent)
        row_len = self.s.source.tensor(name).row_len
        for i, t in enumerate(plan_choices.type_names(row_len)):
            combo.addItem(t)
            combo.setItemData(i, plan_choices.type_description(t), Qt.ItemDataRole.ToolTipRole)
            if self.s.imatrix is None and plan_choices.type_needs_imatrix(t, name, self.s.rules.preset):
                set_item_available(combo, i, False, plan_choices.NEEDS_IMATRIX)
        combo.activated.connect(lambda _=0, c=combo: self.commitData.emit(c))
        return combo

    def setEditorData(self, editor, index):
        i = editor.findText(index.data(Qt.ItemDataRole.EditRole) or "")
        if i >= 0:
            editor.setCurrentIndex(i)

    def setModelData(self, editor, model, index):
        t = editor.currentText()
        if not t or t == index.data(Qt.ItemDataRole.EditRole):
            return
        names = selected_names(self.view)
        name = index.data(NAME_ROLE)
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

        self.view = QTableView()
        self.view.setModel(self.proxy)
        self.view.setSortingEnabled(True)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.view.setTabKeyNavigation(False)          # Tab leaves the table; the arrows move in it
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
        fm = h.fontMetrics()
        for c, title in enumerate(COLUMNS):                     # every header whole at the default size
            need = fm.horizontalAdvance(title) + 26             # margins and the sort arrow
            if c != C_REASON and self.view.columnWidth(c) < need:
                self.view.setColumnWidth(c, need)
        self.view.sortByColumn(C_LAYER, Qt.SortOrder.AscendingOrder)
        self.view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.view.customContextMenuRequested.connect(self._menu)

        self.view.setTextElideMode(Qt.TextElideMode.ElideMiddle)     # a tensor name keeps its start and end
        # the current tensor's plan in full (its Reason cell is often too narrow for it)
        self.details = QLabel()
        self.details.setWordWrap(True)
        self.details.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.details.setContentsMargins(4, 2, 4, 2)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(bar)
        lay.addWidget(self.view, 1)
        below = QHBoxLayout()                 # the count here, not in the filter bar: a narrower centre
        below.addWidget(self.details, 1)
        below.addWidget(self.count, 0, Qt.AlignmentFlag.AlignTop)
        self.count.setContentsMargins(4, 2, 4, 2)
        lay.addLayout(below)
        session.planChanged.connect(self._show_details)
        session.modelOpened.connect(self._show_details)

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
            self._show_details()
            self.tensorSelected.emit(cur.data(NAME_ROLE))

    def current_name(self) -> Optional[str]:
        cur = self.view.selectionModel().currentIndex()
        return cur.data(NAME_ROLE) if cur.isValid() else None

    def _show_details(self, *_) -> None:
        """One line under the table: the current tensor, its planned type and the whole reason."""
        import html
        name, plan = self.current_name(), self.s.plan
        e = None
        if name and plan is not None and self.s.source is not None and name in self.s.source:
            e = next((x for x in plan.entries if x.name == name), None)
        if e is None:
            self.details.setText(html.escape(name) if name else "")
            return
        what = e.type if e.quantize else f"{e.type} (kept)"
        self.details.setText(f"<b>{html.escape(name)}</b> → {html.escape(what)}"
                             + (f": {html.escape(e.reason)}" if e.reason else ""))

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

    def selected(self) -> list[str]:
        return selected_names(self.view)

    def _menu(self, pos) -> None:
        menu = self.context_menu()
        if menu is not None:
            menu.exec(self.view.viewport().mapToGlobal(pos))

    def context_menu(self) -> Optional[QMenu]:
        """The menu of the selected tensors (None when none can be quantized)."""
        names = [n for n in self.selected() if plan_choices.quantizable(self.s.source, n)] if self.s.source else []
        if not names:
            return None
        menu = QMenu(self)
        sub = menu.addMenu(f"Set type of {len(names)} tensor{'s' if len(names) > 1 else ''}")
        row_lens = {self.s.source.tensor(n).row_len for n in names}
        fits = [t for t in plan_choices.type_names() if all(t in plan_choices.type_names(r) for r in row_lens)]
        for t in fits:
            a = sub.addAction(t)
            a.setToolTip(plan_choices.type_description(t))
            if self.s.imatrix is None and any(plan_choices.type_needs_imatrix(t, n, self.s.rules.preset) for n in names):
                a.setEnabled(False)
                a.setToolTip(f"Unavailable: {plan_choices.NEEDS_IMATRIX}")
            a.triggered.connect(lambda _=False, t=t, ns=names: self.s.set_types(ns, t))
        sub.setToolTipsVisible(True)
        clear = menu.addAction("Clear manual types")
        clear.triggered.connect(lambda _=False, ns=names: self._clear(ns))
        menu.addSeparator()                   # Quantize › Fit a Budget… honours these (its pins list)
        for label, at_least in (("Pin in budget to type", False), ("Pin in budget to at least type", True)):
            pin = menu.addMenu(label)
            for t in fits:
                pin.addAction(t).triggered.connect(
                    lambda _=False, t=t, ns=names, a=at_least: self.s.pin_budget(ns, t, a))
        return menu

    def _clear(self, names) -> None:
        self.s.set_types(names, None)


__all__ = ["TensorTable", "TensorTableModel", "TensorFilterProxy", "TypeDelegate", "COLUMNS"]
