"""The studio window: tensor table and plots in the middle, plan and model on the right,
preview and quantize below; menus, shortcuts, drag and drop, recent files, settings, errors."""
from __future__ import annotations

import os
import traceback
from typing import Optional

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QAction, QGuiApplication, QKeySequence
from PySide6.QtWidgets import (QApplication, QDockWidget, QFileDialog, QLabel, QMainWindow, QMessageBox,
                               QSplitter, QTabWidget)

from core.errors import QuantStudioError

from . import plan_choices, theme
from .plan_panel import PlanPanel
from .plots import ChannelPlot, ErrorPlot, HistogramPlot, LayerHeatmap
from .preview_panel import PreviewPanel
from .quantize_panel import QuantizePanel
from .session import Session
from .summary_panel import SummaryPanel
from .tensor_table import TensorTable
from .widgets import scrolled
from .workers import soon

MAX_RECENT = 10
DOCK_AREAS = {"plan": Qt.DockWidgetArea.RightDockWidgetArea, "model": Qt.DockWidgetArea.RightDockWidgetArea,
              "preview": Qt.DockWidgetArea.BottomDockWidgetArea, "quantize": Qt.DockWidgetArea.BottomDockWidgetArea}
MODEL_FILTER = "Models (*.gguf *.safetensors);;GGUF (*.gguf);;safetensors (*.safetensors);;All files (*)"


class MainWindow(QMainWindow):
    errorShown = Signal(str, str)           # title, message (every error dialog goes through show_error)

    def __init__(self, session: Optional[Session] = None, follow_system_theme: bool = True):
        super().__init__()
        self.s = session or Session(parent=self)
        self.last_error: Optional[tuple[str, str]] = None
        self.background_errors: list = []
        self.current: Optional[str] = None
        self._boxes: list[QMessageBox] = []
        self.setWindowTitle("Quant Studio")
        self.setWindowIcon(theme.app_icon())
        self.setAcceptDrops(True)
        self.setDockNestingEnabled(True)

        # centre: table | plots
        self.table = TensorTable(self.s)
        self.hist = HistogramPlot()
        self.channels = ChannelPlot()
        self.heatmap = LayerHeatmap()
        self.heatmap.set_session(self.s)
        self.plots = QTabWidget()
        self.plots.addTab(self.hist, "Histogram")
        self.plots.addTab(self.channels, "Channels")
        self.plots.addTab(self.heatmap, "Layers")
        self.errors = ErrorPlot()             # computed over every row only while its tab is shown
        self.plots.addTab(self.errors, "Error x−q(x)")
        self._errors_want: Optional[tuple[str, str]] = None      # (tensor, type) the error tab should show
        self.plots.currentChanged.connect(lambda _: self._request_errors())
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.table)
        split.addWidget(self.plots)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        split.setSizes([820, 520])
        self.splitter = split
        self.setCentralWidget(split)

        # docks
        self.summary = SummaryPanel(self.s)
        self.plan_panel = PlanPanel(self.s, self.table.selected)
        self.preview = PreviewPanel(self.s)
        self.quantize = QuantizePanel(self.s)
        self.docks = {}
        self._dock_shown: dict = {}           # dock -> shown (False behind another dock's tab: see focusNextPrevChild)
        for key, title, w, area in (("plan", "Plan", self.plan_panel, Qt.DockWidgetArea.RightDockWidgetArea),
                                    ("model", "Model", self.summary, Qt.DockWidgetArea.RightDockWidgetArea),
                                    ("preview", "Preview", self.preview, Qt.DockWidgetArea.BottomDockWidgetArea),
                                    ("quantize", "Quantize", self.quantize, Qt.DockWidgetArea.BottomDockWidgetArea)):
            d = QDockWidget(title, self)
            d.setObjectName(f"dock-{key}")
            d.setWidget(scrolled(w))
            self.addDockWidget(area, d)
            self.docks[key] = d
            d.visibilityChanged.connect(lambda shown, d=d: self._dock_shown.__setitem__(d, shown))
        self.tabifyDockWidget(self.docks["plan"], self.docks["model"])
        self.tabifyDockWidget(self.docks["preview"], self.docks["quantize"])
        self.docks["plan"].raise_()
        self.docks["preview"].raise_()
        self._default_sizes = True            # dock sizes for a first start (see showEvent)

        # status bar
        self.stats_label = QLabel("")
        self.warm_label = QLabel("")
        self.statusBar().addPermanentWidget(self.stats_label)
        self.statusBar().addPermanentWidget(self.warm_label)

        self._make_menus()
        self._heat_timer = QTimer(self, singleShot=True, interval=400)
        self._heat_timer.timeout.connect(self.heatmap.redraw)

        s = self.s
        s.modelOpening.connect(lambda p: self.status(f"Opening {p}…"))
        s.modelOpened.connect(self._opened)
        s.openFailed.connect(lambda p, e: self.show_error("Cannot open model", e))
        s.planFailed.connect(lambda e: self.show_error("Plan not changed", e))
        s.statsReady.connect(self._stats_ready)
        s.statsProgress.connect(self._stats_progress)
        s.planErrorReady.connect(lambda _: soon(self._heat_timer))
        s.planChanged.connect(self._plan_changed)
        s.planChanged.connect(self._update_title)
        s.overlayReady.connect(self._overlay)
        s.levelsReady.connect(self._levels)
        s.errorsReady.connect(lambda name, t, r: self.errors.set_result(r) if (name, t) == self.errors.key else None)
        s.errorsProgress.connect(lambda name, t, ev: self.errors.set_progress(ev)
                                 if (name, t) == self.errors.key else None)
        s.warmupDone.connect(lambda: self.warm_label.setText("kernels ready"))
        s.warmupProgress.connect(lambda what, n, total: self.warm_label.setText(
            f"preparing kernels {n}/{total} ({what}); compiled once, then cached"))
        s.backgroundError.connect(self._background_error)
        self.table.tensorSelected.connect(self.select_tensor)
        self.heatmap.tensorClicked.connect(lambda name: self.table.select(name))
        self.preview.typeChosen.connect(self._overlay_type)
        self.plan_panel.saveRequested.connect(self.save_plan_dialog)
        self.plan_panel.loadRequested.connect(self.load_plan_dialog)
        self.plan_panel.imatrixRequested.connect(self.imatrix_dialog)
        self.plan_panel.copyRequested.connect(self.copy_cli)
        self.plan_panel.copyLlamaRequested.connect(self.copy_llama)
        self.quantize.errorRaised.connect(self.show_error)
        self.summary.errorRaised.connect(self.show_error)
        self.summary.saved.connect(lambda p: self.status(f"Wrote {p} (metadata edited, tensors copied)", 10000))
        self.s.verified.connect(self._verified)
        self.s.imatrixCarried.connect(lambda kept, how: self.status(
            f"imatrix {'kept' if kept else 'dropped'} for this model: {how}", 15000))
        self.quantize.started.connect(self._job_started)
        self.quantize.done.connect(lambda r: self.status(f"Wrote {r.paths[0]}", 10000))
        self.quantize.stopped.connect(lambda why: self.status(f"Quantization {why}; no output was written", 10000))

        self.dark = False
        if follow_system_theme:
            app = QApplication.instance()
            self.set_dark(theme.system_is_dark(app))
            if hasattr(app.styleHints(), "colorSchemeChanged"):
                app.styleHints().colorSchemeChanged.connect(
                    lambda scheme: self.set_dark(scheme == Qt.ColorScheme.Dark))
        self._restore()

    def _job_started(self) -> None:
        self.docks["quantize"].raise_()
        self.status("Quantizing…")

    # -- menus --------------------------------------------------------------------------------
    def _action(self, menu, text: str, slot, shortcut=None, tip: str = "") -> QAction:
        a = QAction(text, self)
        if shortcut is not None:
            a.setShortcut(QKeySequence(shortcut))
        if tip:
            a.setStatusTip(tip)
        a.triggered.connect(lambda _=False: slot())
        menu.addAction(a)
        return a

    def _make_menus(self) -> None:
        mb = self.menuBar()
        f = mb.addMenu("&File")
        self._action(f, "&Open Model…", self.open_dialog, QKeySequence.StandardKey.Open,
                     "Open a GGUF or .safetensors file")
        self._action(f, "Open Hugging Face &Folder…", self.open_folder_dialog, "Ctrl+Shift+O",
                     "Open a folder with config.json and safetensors shards")
        self._action(f, "Open &Demo Model", self.open_demo, None, "SmolLM2-135M-Instruct (GGUF, Q4_1)")
        self.recent_menu = f.addMenu("Open &Recent")
        f.addSeparator()
        self._action(f, "&Load Plan…", self.load_plan_dialog, "Ctrl+L")
        self._action(f, "&Save Plan…", self.save_plan_dialog, QKeySequence.StandardKey.Save)
        self._action(f, "Load &imatrix…", self.imatrix_dialog, "Ctrl+I")
        f.addSeparator()
        self._action(f, "&Compare GGUF Files…", self.compare_dialog, "Ctrl+Shift+D",
                     "Two quants side by side: per-tensor types, sizes, errors and metadata")
        self._action(f, "Use the &Mix of a GGUF…", self.recipe_dialog, None,
                     "Give every tensor the type it has in another GGUF (its recipe)")
        f.addSeparator()
        self._action(f, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        e = mb.addMenu("&Edit")
        self.undo_action = self._action(e, "&Undo Plan Edit", self.s.undo, QKeySequence.StandardKey.Undo)
        self.redo_action = self._action(e, "&Redo Plan Edit", self.s.redo, "Ctrl+Shift+Z")
        self.s.historyChanged.connect(self._history)
        self._history()
        e.addSeparator()
        self._action(e, "&Find Tensor", self._focus_filter, QKeySequence.StandardKey.Find)
        self._action(e, "&Copy CLI Command", self.copy_cli, "Ctrl+Shift+C")
        v = mb.addMenu("&View")
        for d in self.docks.values():
            v.addAction(d.toggleViewAction())
        v.addSeparator()
        for i, name in enumerate(("Histogram", "Channels", "Layers")):
            self._action(v, name, lambda i=i: self.show_plot(i), f"Ctrl+{i + 1}")
        v.addSeparator()
        self._action(v, "&Reset Layout", self.reset_layout, None, "Every panel back where it starts")
        q = mb.addMenu("&Quantize")
        self.run_action = self._action(q, "&Run", self.run_quantize, "Ctrl+R", "Quantize with the current plan")
        self._action(q, "&Cancel", self.quantize.cancel, "Ctrl+.")
        self._action(q, "&Batch Export…", self.batch_dialog, None,
                     "Several presets (and the current plan) in one run, named by a template, each file verified")
        q.addSeparator()
        self._action(q, "Ca&librate (imatrix)…", self.calibrate_dialog, "Ctrl+Shift+I",
                     "Run a text through the model and compute an importance matrix for the plan")
        self._action(q, "&Fit a Budget…", self.budget_dialog, "Ctrl+B",
                     "A type per tensor for a target file size, bits per weight or memory (measured, exact size)")
        self._action(q, "&Evaluate…", self.evaluate_dialog, "Ctrl+E",
                     "PPL and KL-divergence of the plan, presets and GGUF files against the open model")
        q.addSeparator()
        self._action(q, "&Verify a GGUF…", self.verify_dialog, None,
                     "Check a GGUF's structure and every tensor (against the open model's weights)")
        h = mb.addMenu("&Help")
        self._action(h, "&User Guide", self.show_guide, QKeySequence.StandardKey.HelpContents)
        self._action(h, "&Glossary", lambda: self.show_guide("glossary"))
        self._action(h, "&About Quant Studio", self._about)
        self._refresh_recent()

    def _history(self) -> None:
        m = self.s.model
        self.undo_action.setEnabled(bool(m.undo))
        self.redo_action.setEnabled(bool(m.redo))
        self._update_title()

    def _update_title(self) -> None:
        """"MODEL — Quant Studio", with " *" after MODEL while the plan has unsaved edits. The application's
        name comes last: Qt appends the display name to a title that does not end with it (X11,
        Windows), which made "Quant Studio — MODEL — Quant Studio"."""
        src = self.s.source
        self.setWindowTitle((f"{src.name}{' *' if self.s.dirty else ''} — " if src else "") + "Quant Studio")

    def _focus_filter(self) -> None:
        self.table.filter.setFocus()
        self.table.filter.selectAll()

    def show_guide(self, anchor: str = ""):
        from .help import GuideDialog
        d = GuideDialog(self, anchor)
        d.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        d.show()
        self.guide = d
        return d

    def show_first_run_hint(self) -> None:
        from .help import FIRST_RUN_HINT
        self.status(FIRST_RUN_HINT, 60000)

    def _about(self) -> None:
        QMessageBox.about(self, "About Quant Studio", self.about_text())

    def about_text(self) -> str:
        from core import formats_followed, package_version
        return (f"<b>Quant Studio</b> {package_version()}<br>Inspect, plan, preview and quantize language "
                f"models to GGUF for llama.cpp.<br><br>Follows: {formats_followed()}")

    # -- feedback -----------------------------------------------------------------------------
    def status(self, text: str, ms: int = 5000) -> None:
        self.statusBar().showMessage(text, ms)

    def _background_error(self, what: str, error) -> None:
        """A background computation failed: say so in the status bar (no dialog for work the user did
        not ask for explicitly)."""
        self.background_errors.append((what, error))
        text = str(error) if isinstance(error, QuantStudioError) else f"{type(error).__name__}: {error}"
        self.status(f"{what} failed: {text}", 15000)

    def show_error(self, title: str, error) -> None:
        """Every error dialog passes here: non-blocking (``open()``), recorded in ``last_error``."""
        detail = None
        if isinstance(error, QuantStudioError) or isinstance(error, str):
            text = str(error)
        elif isinstance(error, MemoryError):
            text = "out of memory"
        else:
            text = f"internal error: {type(error).__name__}: {error}"
            detail = getattr(error, "traceback_text", None) or "".join(
                traceback.format_exception(type(error), error, error.__traceback__))
        self.last_error = (title, text)
        self.status(f"{title}: {text}", 10000)
        box = QMessageBox(QMessageBox.Icon.Critical, title, text, QMessageBox.StandardButton.Ok, self)
        if detail:
            box.setDetailedText(detail)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self._boxes.append(box)
        box.finished.connect(lambda _=0, b=box: self._boxes.remove(b) if b in self._boxes else None)
        box.open()
        self.errorShown.emit(title, text)

    # -- opening ------------------------------------------------------------------------------
    def open_path(self, path: str) -> None:
        if self.s.dirty:
            choice = self.ask_unsaved("Open another model", self._same_arch(path))
            if choice == "cancel":
                return
            if choice == "save" and not self.save_plan_dialog():
                return
            self.s.carry_rules = choice == "carry"
        self.s.open(path)

    def _same_arch(self, path: str) -> bool:
        """Whether ``path`` (a GGUF) has the open model's architecture (then the rules may carry over)."""
        try:
            from core.sources import open_file
            with open_file(path) as other:
                return other.architecture == self.s.source.architecture
        except (QuantStudioError, OSError):
            return False

    def ask_unsaved(self, action: str, can_carry: bool = False) -> str:
        """The plan has unsaved edits: "save", "discard", "carry" (keep the rules for the next model, which
        has the same architecture) or "cancel". Tests replace this method."""
        box = QMessageBox(QMessageBox.Icon.Question, action, "The plan has edits that are not saved.", parent=self)
        box.setInformativeText("Save the plan first, discard the edits"
                               + (", or keep the rules for the next model (same architecture)?" if can_carry else "?"))
        buttons = {box.addButton("Save Plan…", QMessageBox.ButtonRole.AcceptRole): "save",
                   box.addButton("Discard", QMessageBox.ButtonRole.DestructiveRole): "discard",
                   box.addButton(QMessageBox.StandardButton.Cancel): "cancel"}
        if can_carry:
            buttons[box.addButton("Keep Rules", QMessageBox.ButtonRole.YesRole)] = "carry"
        box.exec()
        return buttons.get(box.clickedButton(), "cancel")

    def open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open model", self._last_dir(), MODEL_FILTER)
        if path:
            self.open_path(path)

    def open_folder_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open Hugging Face folder", self._last_dir())
        if path:
            self.open_path(path)

    def open_demo(self) -> None:
        from core.demo import demo_model_path
        try:
            self.open_path(demo_model_path())
        except QuantStudioError as e:
            self.show_error("Demo model unavailable", e)

    def _last_dir(self) -> str:
        recent = self.recent_files()
        return os.path.dirname(recent[0]) if recent else os.path.expanduser("~")

    def _opened(self) -> None:
        src = self.s.source
        self._update_title()
        self._add_recent(self.s.path)
        self.hist.clear()
        self.channels.clear()
        self.errors.clear()
        self.current = None
        self.heatmap.redraw()
        sm = src.summary()
        self.status(f"Opened {src.name}: {sm['n_tensors']} tensors, {sm['n_params']:,} parameters"
                    + (f" — {self.s.note}" if self.s.note else ""), 10000)
        first = next((t.name for t in src.tensors if plan_choices.quantizable(src, t.name)), None)
        if first is None and src.tensors:
            first = src.tensors[0].name
        if first:
            self.table.select(first)

    # -- selection ------------------------------------------------------------------------------
    def select_tensor(self, name: str) -> None:
        if self.s.source is None or name not in self.s.source:
            return
        self.current = name
        self.heatmap.set_selected(name)
        st = self.s.stats.get(name)
        self.hist.set_stats(st)
        self.channels.set_stats(st)
        if st is None:
            self.s.ensure_stats(name)
        self.preview.show_tensor(name)
        self.errors.clear()
        self._errors_want = None
        self._request_overlay()

    def _overlay_type(self, t: str) -> None:
        if self.current and self.s.request_overlay(self.current, t) is not None:
            self._want_errors(self.current, t)

    def _request_overlay(self) -> None:
        name = self.current
        if name is None or self.s.plan is None or not plan_choices.quantizable(self.s.source, name):
            return
        t = self.preview.selected_type() or self.s.plan.entry(name).type
        if self.s.request_overlay(name, t) is not None:
            self._want_errors(name, t)

    def _want_errors(self, name: str, t: str) -> None:
        """The error tab should show ``name`` in ``t``: asked for now if the tab is shown, else when it is."""
        self._errors_want = (name, t)
        self._request_errors()

    def _request_errors(self) -> None:
        w = self._errors_want
        if w is None or self.plots.currentWidget() is not self.errors or self.errors.key == w:
            return
        if self.s.request_errors(*w) is not None:
            self.errors.set_pending(*w)

    def _overlay(self, name: str, t: str, st) -> None:
        if name == self.current:
            self.hist.set_overlay(t, st)

    def _levels(self, name: str, t: str, lv) -> None:
        if name == self.current:
            self.hist.set_levels(lv)

    def _stats_ready(self, name: str) -> None:
        if name == self.current:
            st = self.s.stats[name]
            self.hist.set_stats(st, keep=True)
            self.channels.set_stats(st)
        soon(self._heat_timer)

    def _stats_progress(self, done: int, total: int) -> None:
        self.stats_label.setText("statistics complete" if done >= total else f"statistics {done}/{total} tensors")

    def _plan_changed(self) -> None:
        soon(self._heat_timer)
        if self.current and self.s.plan is not None and self.preview.selected_type() is None:
            if self.hist.overlay_type != self.s.plan.entry(self.current).type:
                self._request_overlay()

    # -- plan files, imatrix, CLI ---------------------------------------------------------------
    def save_plan_dialog(self) -> bool:
        if self.s.plan is None:
            return False
        path, _ = QFileDialog.getSaveFileName(self, "Save plan", self._plan_name(), "Plan (*.json)")
        return bool(path) and self.save_plan(path)

    def _plan_name(self) -> str:
        return os.path.join(self._last_dir(), f"{self.s.source.name}.{self.s.rules.preset}.plan.json")

    def save_plan(self, path: str) -> bool:
        try:
            self.s.save_plan(path)
        except QuantStudioError as e:
            self.show_error("Cannot save plan", e)
            return False
        self.status(f"Plan saved to {path}")
        return True

    def load_plan_dialog(self) -> None:
        if self.s.source is None:
            return
        path, _ = QFileDialog.getOpenFileName(self, "Load plan", self._last_dir(), "Plan (*.json);;All files (*)")
        if path:
            self.load_plan(path)

    def load_plan(self, path: str) -> bool:
        try:
            self.s.load_plan(path)
        except QuantStudioError as e:                 # Plan.read names the file
            self.show_error("Cannot load plan", e)
            return False
        self.status(f"Plan loaded from {path}")
        return True

    def imatrix_dialog(self) -> None:
        if self.s.source is None:
            return
        path, _ = QFileDialog.getOpenFileName(self, "Load imatrix", self._last_dir(),
                                              "imatrix (*.gguf *.dat);;All files (*)")
        if path:
            self.load_imatrix(path)

    def load_imatrix(self, path: str):
        h = self.s.load_imatrix(path)
        if h is not None:
            h.failed.connect(lambda e: self.show_error("Cannot load imatrix", e))
            h.succeeded.connect(lambda _: self.status(f"imatrix loaded: {os.path.basename(path)}"))
        return h

    def cli_command(self) -> str:
        if self.s.source is None:
            return ""
        return plan_choices.cli_command(self.s.source.path, self.quantize.output.text(), self.s.rules,
                                        self.quantize.threads.value())

    def copy_cli(self) -> None:
        cmd = self.cli_command()
        if cmd:
            QGuiApplication.clipboard().setText(cmd)
            self.status("Copied: " + cmd, 8000)

    def copy_llama(self) -> None:
        if self.s.plan is None:
            return
        try:
            cmd = plan_choices.llama_quantize_command(self.s.plan, self.s.source.path, self.quantize.output.text(),
                                                      self.s.imatrix_path, self.quantize.threads.value())
        except QuantStudioError as e:
            self.show_error("No llama-quantize equivalent", e)
            return
        QGuiApplication.clipboard().setText(cmd)
        self.status("Copied: " + cmd, 8000)

    def run_quantize(self):
        return self.quantize.start()

    # -- compare, recipes, verify ---------------------------------------------------------------
    def _show(self, attr: str, d):
        """Show ``d`` (deleted when closed), kept as ``self.<attr>`` (tests and the screenshot script reach it)."""
        d.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        d.show()
        setattr(self, attr, d)
        return d

    def _model_open(self) -> bool:
        if self.s.source is None:
            self.status("Open a model first", 5000)
        return self.s.source is not None

    def compare_dialog(self, a: str = "", b: str = ""):
        from .compare_view import CompareDialog
        if not a and self.s.source is not None and getattr(self.s.source, "kind", "") == "gguf":
            a = self.s.path
        return self._show("compare_view", CompareDialog(self.s, self, a, b))

    def calibrate_dialog(self):
        from .eval_view import CalibrateDialog
        return self._show("calibrate_view", CalibrateDialog(self.s, self)) if self._model_open() else None

    def budget_dialog(self):
        from .budget_dialog import BudgetDialog
        return self._show("budget_view", BudgetDialog(self.s, self)) if self._model_open() else None

    def batch_dialog(self):
        from .batch_dialog import BatchDialog
        return self._show("batch_view", BatchDialog(self.s, self)) if self._model_open() else None

    def evaluate_dialog(self):
        from .eval_view import EvaluateDialog
        return self._show("evaluate_view", EvaluateDialog(self.s, self)) if self._model_open() else None

    def _choose_gguf(self, title: str) -> str:
        path, _ = QFileDialog.getOpenFileName(self, title, self._last_dir(), "GGUF files (*.gguf);;All files (*)")
        return path

    def recipe_dialog(self) -> None:
        path = self._choose_gguf("Use the mix of a GGUF")
        if path:
            self.use_recipe(path)

    def use_recipe(self, path: str):
        h = self.s.use_recipe(path)
        h.failed.connect(lambda e: self.show_error("Cannot use that file's mix", e))
        h.succeeded.connect(lambda rec, p=path: self.status(
            f"Plan: the mix of {os.path.basename(p)}" + (f" ({'; '.join(rec.notes()[:3])})" if rec.notes() else ""),
            15000))
        return h

    def verify_dialog(self) -> None:
        path = self._choose_gguf("Verify a GGUF")
        if path:
            self.status(f"Verifying {os.path.basename(path)}…", 0)
            self.s.verify([path]).failed.connect(lambda e: self.show_error("Cannot verify", e))

    def _verified(self, reports) -> None:
        bad = [d for r in reports for d in r.defects]
        names = ", ".join(os.path.basename(r.path) for r in reports)
        self.status(f"{names}: {len(bad)} defects" if bad else f"{names}: sound", 15000)

    # -- recent files and settings ------------------------------------------------------------
    def recent_files(self) -> list[str]:
        v = theme.settings().value("recentFiles", [])
        if isinstance(v, str):
            v = [v]
        return [p for p in (v or []) if isinstance(p, str)]

    def _add_recent(self, path: str) -> None:
        path = os.path.abspath(path)
        files = [path] + [p for p in self.recent_files() if p != path]
        theme.settings().setValue("recentFiles", files[:MAX_RECENT])
        self._refresh_recent()

    def _refresh_recent(self) -> None:
        self.recent_menu.clear()
        files = self.recent_files()
        for i, p in enumerate(files):
            a = self.recent_menu.addAction(f"&{i + 1} {os.path.basename(os.path.normpath(p))}")
            a.setToolTip(p)
            a.setStatusTip(p)
            a.triggered.connect(lambda _=False, p=p: self.open_path(p))
        self.recent_menu.setEnabled(bool(files))

    def show_plot(self, i: int) -> None:
        """Show plot tab ``i``, bringing the plot pane back if it was dragged shut."""
        self.plots.setCurrentIndex(i)
        sizes = self.splitter.sizes()
        if sizes[1] < 80:
            total = sum(sizes)
            self.splitter.setSizes([total * 3 // 5, total - total * 3 // 5])

    def reset_layout(self) -> None:
        """Docks shown and placed as on a first start, the plot pane at its first size."""
        # the docks placed anew, not restoreState(): that leaves the old dock tab bars on screen (a second
        # "Plan | Model" bar over the Preview dock)
        # (and only the docks that moved: re-adding a dock in place makes a new tab bar too)
        for key, area in DOCK_AREAS.items():
            d = self.docks[key]
            d.setFloating(False)
            if self.dockWidgetArea(d) != area:
                self.addDockWidget(area, d)
            d.show()
        for a, b in (("plan", "model"), ("preview", "quantize")):
            if self.docks[b] not in self.tabifiedDockWidgets(self.docks[a]):
                self.tabifyDockWidget(self.docks[a], self.docks[b])
        self.docks["plan"].raise_()
        self.docks["preview"].raise_()
        total = sum(self.splitter.sizes()) or 1340
        self.splitter.setSizes([total * 3 // 5, total - total * 3 // 5])
        self._default_dock_sizes()
        QTimer.singleShot(0, self._default_dock_sizes)        # again once the docks moved back have a size

    def _restore(self) -> None:
        self._initial_state = self.saveState()            # the layout as built (View › Reset Layout)
        st = theme.settings()
        geo, state = st.value("window/geometry"), st.value("window/state")
        if geo is not None:
            self.restoreGeometry(geo)
        else:
            self.resize(1500, 940)
        if state is not None:
            self._default_sizes = not self.restoreState(state)

    def focusNextPrevChild(self, next: bool) -> bool:
        """Tab and Shift+Tab skip the panels of docks hidden behind another dock's tab: Qt keeps those
        'visible' (moved out of the window), and the focus would vanish into them."""
        start = QApplication.focusWidget()
        for _ in range(1000):
            if not super().focusNextPrevChild(next):
                return False
            w = QApplication.focusWidget()
            if w is start or w is None or not any(d.isAncestorOf(w) for d, shown in self._dock_shown.items()
                                                  if not shown):
                return True
        return True

    def showEvent(self, ev) -> None:
        super().showEvent(ev)
        if self._default_sizes:              # only a shown window can share its space among docks
            self._default_sizes = False
            self._default_dock_sizes()

    def _default_dock_sizes(self) -> None:
        """The Plan dock as wide as its panel wants (a fifth of a large window), the Preview dock 3/8 of
        the height; in a small window each gets what the centre leaves (then they scroll)."""
        plan_w = max(self.plan_panel.minimumSizeHint().width() + 24, self.width() // 5)
        room = self.width() - self.centralWidget().minimumSizeHint().width() - 16
        self.resizeDocks([self.docks["plan"]], [max(160, min(plan_w, room))], Qt.Orientation.Horizontal)
        self.resizeDocks([self.docks["preview"]], [max(min(300, self.height() // 3), self.height() * 3 // 8)],
                         Qt.Orientation.Vertical)

    def first_start(self) -> bool:
        return not theme.settings().value("started", False, type=bool)

    def set_dark(self, dark: bool) -> None:
        self.dark = dark
        theme.apply(QApplication.instance(), dark)
        for p in (self.hist, self.channels, self.heatmap, self.errors, self.preview.frontier):
            p.set_dark(dark)
        self.table.model.refresh_palette()

    # -- drag and drop, closing -------------------------------------------------------------------
    def dragEnterEvent(self, ev) -> None:
        if ev.mimeData().hasUrls() and any(u.isLocalFile() for u in ev.mimeData().urls()):
            ev.acceptProposedAction()

    def dropEvent(self, ev) -> None:
        paths = [u.toLocalFile() for u in ev.mimeData().urls() if u.isLocalFile()]
        if not paths:
            return
        ev.acceptProposedAction()
        self.open_dropped(paths[0])

    def open_dropped(self, path: str) -> None:
        low = path.lower()
        if low.endswith(".json") and self.s.source is not None:
            self.load_plan(path)
        elif low.endswith(".dat") and self.s.source is not None:
            self.load_imatrix(path)
        else:
            self.open_path(path)

    def closeEvent(self, ev) -> None:
        if self.s.dirty:
            choice = self.ask_unsaved("Quit Quant Studio")
            if choice == "cancel" or (choice == "save" and not self.save_plan_dialog()):
                ev.ignore()
                return
        st = theme.settings()
        st.setValue("window/geometry", self.saveGeometry())
        st.setValue("window/state", self.saveState())
        st.setValue("started", True)
        st.sync()
        self.s.shutdown()
        super().closeEvent(ev)
