"""Small widgets the panels share."""
from __future__ import annotations

from PySide6.QtCore import QSize, Qt
from PySide6.QtWidgets import QSizePolicy, QStyle, QStyleOptionProgressBar, QStylePainter, QWidget


class ProgressBar(QWidget):
    """A progress bar drawn by the style like QProgressBar, but repainted through update().

    QProgressBar.setValue() calls repaint(), which paints every pending region of the window at
    once; during a job that is a whole-window paint per progress event on the GUI thread.
    """

    def __init__(self, parent=None, fmt: str = "%p%"):
        super().__init__(parent)
        self._value = 0
        self._min, self._max = 0, 100
        self._format = fmt
        self._text_visible = True
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def value(self) -> int:
        return self._value

    def setValue(self, v: int) -> None:
        v = max(self._min, min(self._max, int(v)))
        if v != self._value:
            self._value = v
            self.update()

    def setRange(self, lo: int, hi: int) -> None:
        self._min, self._max = lo, hi
        self.update()

    def setFormat(self, fmt: str) -> None:
        if fmt != self._format:
            self._format = fmt
            self.update()

    def setTextVisible(self, on: bool) -> None:
        self._text_visible = on
        self.update()

    def text(self) -> str:
        span = self._max - self._min
        pct = round(100 * (self._value - self._min) / span) if span else 100
        return self._format.replace("%p", str(pct)).replace("%v", str(self._value))

    def _option(self) -> QStyleOptionProgressBar:
        opt = QStyleOptionProgressBar()
        opt.initFrom(self)
        opt.minimum, opt.maximum, opt.progress = self._min, self._max, self._value
        opt.text = self.text()
        opt.textVisible = self._text_visible
        opt.textAlignment = Qt.AlignmentFlag.AlignCenter
        opt.state |= QStyle.StateFlag.State_Horizontal
        return opt

    def sizeHint(self) -> QSize:
        fm = self.fontMetrics()
        return QSize(120, max(fm.height() + 6, 20))

    def minimumSizeHint(self) -> QSize:
        return QSize(40, self.sizeHint().height())

    def paintEvent(self, _ev) -> None:
        p = QStylePainter(self)
        p.drawControl(QStyle.ControlElement.CE_ProgressBar, self._option())


class EventProgressBar(ProgressBar):
    """A ProgressBar (0..1000) fed core.progress events: "stage 42 %, 1 min left — item"."""

    def __init__(self, parent=None):
        super().__init__(parent, fmt="")
        self.setRange(0, 1000)

    def show_event(self, ev) -> None:
        from core.units import format_duration
        self.setValue(int(1000 * ev.fraction))
        eta = ev.eta
        self.setFormat(f"{ev.stage} {100 * ev.fraction:.0f} %" + (f", {format_duration(eta)} left" if eta else "")
                       + (f" — {ev.item}" if ev.item else ""))


def scrolled(w: QWidget):
    """``w`` inside a frameless scroll area that scrolls only when its dock is smaller than ``w``'s
    minimum size: a small window keeps every control reachable instead of overlapping them."""
    from PySide6.QtWidgets import QFrame, QScrollArea
    sa = QScrollArea()
    sa.setFrameShape(QFrame.Shape.NoFrame)
    sa.setWidgetResizable(True)
    sa.setWidget(w)
    sa.setMinimumSize(160, 90)
    return sa


DESCRIPTION_ROLE = Qt.ItemDataRole.UserRole + 20
UNAVAILABLE_BASE_ROLE = Qt.ItemDataRole.UserRole + 21


def describe_items(combo, describe) -> None:
    """Show ``describe(name)`` after each item's name in ``combo``'s list (the items' text stays the
    bare name: findText/setCurrentText and the closed combo see only the name)."""
    from PySide6.QtWidgets import QStyledItemDelegate

    class _Described(QStyledItemDelegate):
        def initStyleOption(self, option, index) -> None:
            super().initStyleOption(option, index)
            desc = index.data(DESCRIPTION_ROLE)
            if desc:
                option.text = f"{option.text}   —   {desc}"

    for i in range(combo.count()):
        name = combo.itemText(i)
        desc = describe(name) or ""
        if desc.startswith(name + ": "):
            desc = desc[len(name) + 2:]
        combo.setItemData(i, desc, DESCRIPTION_ROLE)
    view = combo.view()
    view.setItemDelegate(_Described(view))
    fm = combo.fontMetrics()
    widest = max((fm.horizontalAdvance(f"{combo.itemText(i)}   —   {combo.itemData(i, DESCRIPTION_ROLE)}")
                  for i in range(combo.count())), default=0)
    view.setMinimumWidth(widest + 40)
    view.setTextElideMode(Qt.TextElideMode.ElideNone)


def set_item_available(combo, index: int, available: bool, why: str = "") -> None:
    """Enable or disable one item of ``combo`` (a QStandardItemModel's), saying why in its tooltip; the
    item's own description stays in front of the reason."""
    item = combo.model().item(index)
    if item is None:
        return
    base = item.data(UNAVAILABLE_BASE_ROLE)
    if base is None:
        base = item.toolTip()
        item.setData(base, UNAVAILABLE_BASE_ROLE)
    item.setEnabled(available)
    item.setToolTip(base if available else (f"Unavailable: {why}" + (f"\n{base}" if base else "")))
