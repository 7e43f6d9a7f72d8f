"""The studio's document: the open model, its statistics, the plan and the previews.

Everything known about one opened model is a :class:`ModelState`, replaced as a whole when another
model is opened; results of background work are delivered only while the state they were asked
for is current (:meth:`Session._bind`). Every piece of work is a core call run through
:mod:`app.workers`; results come back as signals and are cached here. Views read the caches and
listen to the signals.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from PySide6.QtCore import QObject, QTimer, Signal

# core's modules are imported here, at start-up, so that no first import (Numba, gguf) ever
# happens on the GUI thread in the middle of work
import core.imatrix  # noqa: E402,F401
import core.job  # noqa: E402,F401
import core.plan  # noqa: E402,F401
import core.presets  # noqa: E402,F401
import core.preview  # noqa: E402,F401
import core.stats  # noqa: E402,F401
from core.errors import OutputError, PlanError, QuantStudioError
from core.procpool import SLICE_SECONDS
from core.rules import PlanRules

from . import plan_choices
from .session_previews import BG_THREADS, PlannedError, PreviewsMixin
from .workers import TaskHandle, Workers


@dataclass(eq=False)
class ModelState:
    """Everything known about one opened model (and the user's choices for it)."""

    source: Any = None
    path: Optional[str] = None
    note: str = ""                                   # why the model can only be inspected, if it can
    rules: PlanRules = field(default_factory=PlanRules)
    plan: Any = None                                 # core.plan.Plan
    stats: dict[str, Any] = field(default_factory=dict)
    stats_errors: dict[str, BaseException] = field(default_factory=dict)
    stats_inflight: set[str] = field(default_factory=set)
    planned_errors: dict[str, PlannedError] = field(default_factory=dict)
    candidates: dict[str, list] = field(default_factory=dict)
    frontier: list = field(default_factory=list)
    imatrix: Any = None                              # core.imatrix.ImatrixData
    imatrix_path: Optional[str] = None
    imatrix_match: Any = None
    size: Optional[tuple] = None                     # (plan, its predicted output bytes)
    undo: list = field(default_factory=list)         # earlier (rules, plan), the latest last
    redo: list = field(default_factory=list)
    saved_rules: Optional[PlanRules] = None          # the rules as opened, loaded or last saved
    budget_pins: list = field(default_factory=list)  # core.budget pins (REGEX=TYPE, REGEX=>=TYPE) for Fit a Budget
    budget_meas: dict = field(default_factory=dict)  # fast? -> (core.budget.Measurements, the imatrix they used)

    def forget_previews(self) -> None:
        """Previews depend on the importance matrix: drop them when it changes."""
        self.planned_errors, self.candidates, self.frontier = {}, {}, []


# read-only views of the current ModelState on the Session (``session.plan`` is ``session.model.plan``)
STATE_VIEWS = ("source", "path", "note", "rules", "plan", "stats", "stats_errors", "planned_errors", "candidates",
               "frontier", "imatrix", "imatrix_path", "imatrix_match")


class Session(QObject, PreviewsMixin):
    """The open model and everything known about it; previews come from :class:`PreviewsMixin`."""

    modelOpening = Signal(str)
    modelOpened = Signal()
    openFailed = Signal(str, object)            # path, exception
    statsReady = Signal(str)                    # tensor name
    statsProgress = Signal(int, int)            # tensors with stats, total
    planChanged = Signal()
    planFailed = Signal(object)                 # exception
    planErrorReady = Signal(str)                # tensor name (predicted error of its planned type)
    planPreviewDone = Signal()
    candidatesReady = Signal(str, object)       # name, list[ErrorMetrics] (sampled, then exact ones)
    candidateProgress = Signal(str, object)     # name, Progress of the exact pass
    overlayReady = Signal(str, str, object)     # name, type, TensorStats of the dequantized sample
    levelsReady = Signal(str, str, object)      # name, type, core.levels.Levels (a typical block's levels)
    errorsReady = Signal(str, str, object)      # name, type, core.levels.ErrorHistogram (every weight) or the error
    errorsProgress = Signal(str, str, object)   # name, type, Progress of that histogram
    frontierReady = Signal(object)              # list of (label, nbytes, rel_rmse)
    imatrixChanged = Signal()
    imatrixCarried = Signal(bool, str)
    historyChanged = Signal()                   # undo/redo availability changed           # on opening a model: the imatrix was kept (or dropped), its match
    warmupDone = Signal()
    warmupProgress = Signal(str, int, int)      # what was just loaded or compiled, how many, of how many
    verified = Signal(object)                   # list of core.verify.VerifyReport (one per file written)
    backgroundError = Signal(str, object)      # what was being done, exception (shown in the status bar)
    budgetPinsChanged = Signal()                # the pins of Fit a Budget changed (the tensor table's menu)

    def __init__(self, workers: Optional[Workers] = None, parent: Optional[QObject] = None):
        super().__init__(parent)
        self.workers = workers or Workers(parent=self)
        self.model = ModelState()
        self.carry_rules = False                # the next model opened starts from the current rules
        self.warmed = False
        self.candidate_types: Optional[list[str]] = None     # None: every type core offers for a tensor
        self.frontier_presets: Optional[list[str]] = None    # None: every preset
        self._tasks: dict[str, TaskHandle] = {}
        self._plan_timer = QTimer(self, singleShot=True, interval=150)
        self._plan_timer.timeout.connect(self._start_plan_preview)

    def _bind(self, fn: Callable) -> Callable:
        """``fn(model_state, *args)`` for a result of background work, called only while the model it
        was asked for is still the open one (a late result of a closed model is dropped here)."""
        m = self.model
        return lambda *args: fn(m, *args) if m is self.model else None

    # -- background helpers --------------------------------------------------------------
    def _track(self, key: str, h: TaskHandle, report: bool) -> TaskHandle:
        """Keep ``h`` under ``key``; a failure of background work goes to the status bar."""
        if report:
            h.failed.connect(lambda e, k=key: self.backgroundError.emit(k, e))
        self._tasks[key] = h
        return h

    def _replace(self, key: str) -> None:
        old = self._tasks.get(key)
        if old is not None and old.running:
            old.cancel()

    def _loop(self, key: str, target: str, items: list, *args, priority: int = -1, on_post=None, on_done=None,
              pending=None, budget: float = SLICE_SECONDS) -> TaskHandle:
        """``target(ctx, item, *args)`` (a core function, run in a worker process) over ``items``
        in slices of about ``budget`` seconds (core.procpool's submit_each), replacing the previous
        loop of ``key``. ``pending(item)`` drops items done meanwhile."""
        self._replace(key)
        h = self.workers.submit_each(target, items, *args, name=key, priority=priority, budget=budget,
                                     pending=pending)
        if on_post is not None:
            h.posted.connect(on_post)
        if on_done is not None:
            h.succeeded.connect(lambda _: on_done())
        return self._track(key, h, True)

    def _call(self, key: str, target: str, *args, replace: bool = True, priority: int = 0,
              user: bool = False, report: bool = True, **kwargs) -> TaskHandle:
        """A core function in a worker process (``user``: an action the user waits for, its own pool,
        reporting its own failures), replacing the running task of ``key`` when ``replace``."""
        if replace:
            self._replace(key)
        h = self.workers.submit(target, *args, name=key, priority=priority, user=user, **kwargs)
        return self._track(key, h, report and not user)

    def _here(self, key: str, fn: Callable[[], Any]) -> TaskHandle:
        """``fn()`` on the GUI thread at the next turn of the event loop (Workers.run_here), replacing
        the task of ``key``; the caller reports its failure."""
        self._replace(key)
        return self._track(key, self.workers.run_here(fn, key), False)

    def cancel_model_tasks(self) -> None:
        for key in ("stats", "plan-preview", "candidates", "candidates-exact", "overlay", "levels", "errors",
                    "frontier"):
            h = self._tasks.get(key)
            if h is not None:
                h.cancel()

    def warm_up(self, types: Optional[list[str]] = None) -> Optional[TaskHandle]:
        """Start the worker processes and load (or compile) the Numba kernels of ``types`` (every
        writable type by default) in the background, one type per slice, the types of the current
        plan first, so that the first action is not slow."""
        from core.qtypes import writable_types
        self.workers.start_processes()
        first = {e.type for e in self.plan.entries} if self.plan is not None else set()
        names = [t.name for t in writable_types()] if types is None else list(types)
        todo = ["stats"] + sorted(names, key=lambda n: n not in first)
        done: list = []

        def loaded(what: str) -> None:
            done.append(what)
            self.warmupProgress.emit(what, len(done), len(todo))

        return self._loop("warm-up", "core.tasks:warm", todo, priority=-1, budget=0.0, on_done=self._warm_done,
                          on_post=loaded)

    def _warm_done(self) -> None:
        self.warmed = True
        self.warmupDone.emit()

    # -- opening ------------------------------------------------------------------------
    def open(self, path: str) -> TaskHandle:
        path = os.fspath(path)
        self.modelOpening.emit(path)

        def work():
            from core.models import open_model           # a Hugging Face checkpoint is seen as its GGUF
            return open_model(path)

        # in this process: the plan and the table need the model's header here (reading it takes
        # ~0.1 s); its tensors are read by the worker processes
        h = self._here("open", work)
        h.succeeded.connect(lambda src, p=path: self._opened(p, src))
        h.failed.connect(lambda e, p=path: self.openFailed.emit(p, e))
        return h

    def _opened(self, path: str, src) -> None:
        self.cancel_model_tasks()
        old = self.model
        carry = self.carry_rules
        self.carry_rules = False
        start = old.rules.replace(manual=()) if carry else PlanRules(preset=self.rules.preset)
        self.model = m = ModelState(src, path, getattr(src, "note", ""), start)
        if old.imatrix is not None:              # the loaded imatrix is re-matched against the new model
            match = old.imatrix.match(src)
            if match.matched and match.ok:
                m.imatrix, m.imatrix_path, m.imatrix_match = old.imatrix, old.imatrix_path, match
                m.rules = m.rules.replace(has_imatrix=True, imatrix_path=old.imatrix_path)
            self.imatrixCarried.emit(bool(m.imatrix), match.summary())
        names = plan_choices.preset_names()
        fallbacks = [m.rules, PlanRules(preset=m.rules.preset, has_imatrix=m.rules.has_imatrix,
                                        imatrix_path=m.rules.imatrix_path),
                     PlanRules(preset="Q8_0" if "Q8_0" in names else names[0])]
        for i, rules in enumerate(fallbacks):     # the rules as carried, the preset alone, Q8_0
            try:
                m.rules, m.plan = rules, plan_choices.build_plan(src, rules)
                break
            except QuantStudioError as e:
                if i == len(fallbacks) - 1:       # e.g. integer safetensors a GGUF cannot hold
                    self.backgroundError.emit("planning", e)
        m.saved_rules = m.rules
        self.historyChanged.emit()
        self.modelOpened.emit()
        self.start_stats()
        if m.plan is not None:
            self.planChanged.emit()
            self._plan_timer.start()

    # -- statistics -----------------------------------------------------------------------
    def start_stats(self) -> Optional[TaskHandle]:
        """Statistics of every tensor, in file order, in slices (see _loop)."""
        m = self.model
        names = [t.name for t in m.source.tensors if t.ggml_type is not None]
        return self._loop("stats", "core.tasks:stats_item", names, m.path, BG_THREADS,
                          pending=lambda n: n not in m.stats and n not in m.stats_inflight,
                          on_post=self._bind(lambda m, r: self._stats_arrived(m, *r)))

    def ensure_stats(self, name: str) -> None:
        """Compute ``name``'s statistics now, ahead of the background pass, if not cached."""
        m = self.model
        if m.source is None or name in m.stats or name in m.stats_inflight:
            return
        if m.source.tensor(name).ggml_type is None:
            return
        m.stats_inflight.add(name)
        h = self._call(f"stats:{name}", "core.tasks:stats", m.path, name, BG_THREADS, priority=1, report=False)
        h.failed.connect(self._bind(lambda m, e, n=name: self._stats_arrived(m, n, e)))
        h.succeeded.connect(self._bind(lambda m, st, n=name: self._stats_arrived(m, n, st)))
        h.finished.connect(lambda n=name: m.stats_inflight.discard(n))

    def _stats_arrived(self, m: ModelState, name: str, st) -> None:
        if isinstance(st, BaseException):
            m.stats_errors[name] = st
            self.backgroundError.emit(f"statistics of {name}", st)
        else:
            m.stats[name] = st
            self.statsReady.emit(name)
        if m is self.model:
            self.statsProgress.emit(*self.stats_progress())

    def stats_progress(self) -> tuple[int, int]:
        """(tensors whose statistics are known or failed, tensors that have statistics): the one count
        the status bar and the heat map both show."""
        m = self.model
        if m.source is None:
            return 0, 0
        total = sum(1 for t in m.source.tensors if t.ggml_type is not None)
        return len(m.stats) + len(m.stats_errors), total

    # -- the plan ---------------------------------------------------------------------------
    def set_rules(self, rules: PlanRules) -> bool:
        """Rebuild the plan from ``rules``; on PlanError keep the old one and emit planFailed."""
        m = self.model
        if m.source is None:
            m.rules = rules
            return False
        try:
            plan = plan_choices.build_plan(m.source, rules)
        except QuantStudioError as e:
            self.planFailed.emit(e)
            return False
        self._replace_plan(rules, plan)
        return True

    def _replace_plan(self, rules: PlanRules, plan, record: bool = True) -> None:
        """The one way a plan edit lands: the previous (rules, plan) goes on the undo stack."""
        m = self.model
        if record and m.plan is not None:
            m.undo.append((m.rules, m.plan))
            m.redo.clear()
        m.rules, m.plan = rules, plan
        self.historyChanged.emit()
        self.planChanged.emit()
        self._plan_timer.start()

    def undo(self) -> bool:
        return self._step(self.model.undo, self.model.redo)

    def redo(self) -> bool:
        return self._step(self.model.redo, self.model.undo)

    def _step(self, take: list, keep: list) -> bool:
        """Back (undo) or forward (redo): the current plan goes on ``keep``, ``take``'s last comes back."""
        if not take:
            return False
        keep.append((self.rules, self.plan))
        self._replace_plan(*take.pop(), record=False)
        return True

    @property
    def dirty(self) -> bool:
        """The plan was edited since the model was opened or the plan loaded or saved."""
        m = self.model
        return m.plan is not None and m.saved_rules is not None and m.rules != m.saved_rules

    def set_types(self, names: list[str], qtype: Optional[str]) -> bool:
        """Manual edit: ``names`` to ``qtype`` (only tensors llama.cpp would quantize); None clears
        the manual types of ``names``."""
        if qtype is not None:
            names = [n for n in names if plan_choices.quantizable(self.source, n)]
        return self.set_rules(self.rules.with_manual(names, qtype))

    def set_preset(self, preset: str) -> bool:
        return self.set_rules(self.rules.replace(preset=preset))

    def load_plan(self, path: str) -> None:
        """Load a plan JSON (the CLI's format); it must list this model's tensors."""
        from core.plan import Plan
        plan = Plan.read(path)
        m = self.model
        names = {t.name for t in m.source.tensors}
        missing = [e.name for e in plan.entries if e.name not in names]
        if missing:
            raise PlanError(f"the plan names {len(missing)} tensors this model does not have "
                            f"(first: {missing[0]})", path)
        for e in plan.entries:
            if tuple(m.source.tensor(e.name).shape) != tuple(e.shape):
                raise PlanError(f"the plan's shape of '{e.name}' differs from the model's", path)
        self._replace_plan(plan.rules, plan)
        m.saved_rules = plan.rules

    def save_plan(self, path: str) -> None:
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(self.plan.to_json())
        except OSError as e:
            raise OutputError(f"cannot write: {e.strerror or e}", path) from None
        self.model.saved_rules = self.rules

    def planned_bytes(self) -> int:
        """Predicted output size of the current plan (computed once per plan)."""
        m = self.model
        if m.plan is None:
            return 0
        if m.size is None or m.size[0] is not m.plan:
            m.size = (m.plan, core.plan.planned_bytes(m.plan, m.source))
        return m.size[1]

    # -- imatrix ----------------------------------------------------------------------------
    def load_imatrix(self, path: Optional[str]) -> TaskHandle | None:
        if not path:
            m = self.model
            m.imatrix, m.imatrix_path, m.imatrix_match = None, None, None
            self._imatrix_changed()
            return None
        src = self.source

        def work():
            from core.imatrix import load_imatrix
            data = load_imatrix(path)
            return data, data.match(src)

        h = self._here("imatrix", work)
        h.succeeded.connect(self._bind(lambda m, r, p=path: self._imatrix_loaded(m, p, *r)))
        return h

    def _imatrix_loaded(self, m: ModelState, path: str, data, match) -> None:
        m.imatrix, m.imatrix_path, m.imatrix_match = data, path, match
        self._imatrix_changed()

    def _imatrix_changed(self) -> None:
        m = self.model
        m.forget_previews()
        self.imatrixChanged.emit()
        # has_imatrix changes llama.cpp's choices; the path is saved with the plan
        if not self.set_rules(m.rules.replace(has_imatrix=m.imatrix is not None, imatrix_path=m.imatrix_path)):
            self.planChanged.emit()
            self._plan_timer.start()

    def importance(self, name: str):
        """``name``'s importance weights from the loaded imatrix, or None."""
        if self.imatrix is None:
            return None
        try:
            return self.imatrix.for_tensor(name, tuple(self.source.tensor(name).shape))
        except PlanError:
            return None

    # -- recipes, verification, metadata -----------------------------------------------------
    def use_recipe(self, path: str) -> TaskHandle:
        """Give every tensor the type it has in the GGUF at ``path`` (core.recipe); ``succeeded``
        carries the recipe's notes (fallbacks, tensors found in only one of the two)."""
        src = self.source

        def work():
            from core.models import open_model
            from core.recipe import recipe_plan
            if src is None:
                raise PlanError("open a model first")
            with open_model(path) as other:
                return recipe_plan(src, other, has_imatrix=self.imatrix is not None)

        h = self._here("recipe", work)
        h.succeeded.connect(self._bind(lambda m, rec: self._recipe_applied(m, rec)))
        return h

    def _recipe_applied(self, m: ModelState, rec) -> None:
        self._replace_plan(rec.plan.rules, rec.plan)

    def verify(self, paths: list[str]) -> TaskHandle:
        """Check written files (core.verify) against the open model, in the background; ``verified``
        then carries the reports. The loaded imatrix goes along: its weights are used for a file whose
        ``quantize.imatrix.*`` metadata says it was made with it."""
        h = self._call("verify", "core.tasks:verify", list(paths), self.path, imatrix=self.imatrix, user=True)
        h.succeeded.connect(self._bind(lambda m, reports: self.verified.emit(reports)))
        return h

    def save_metadata_as(self, output: str, changes: list, remove: list[str]) -> TaskHandle:
        """A copy of the open GGUF with its metadata edited (core.metadata_edit), in the background."""
        return self._call("metadata", "core.tasks:set_metadata", self.path, output, changes, remove, user=True)

    # -- calibration and evaluation (core.eval, in the jobs pool) ---------------------------
    def calibrate(self, output: str, text_path: Optional[str] = None, n_ctx: int = 512, n_chunks: int = -1,
                  threads: Optional[int] = None) -> TaskHandle:
        """An importance matrix of the open model from a text (the built-in one when None), written to
        ``output``; loaded into the plan when it is done."""
        if self.source is None:
            raise PlanError("open a model first")
        h = self._call("calibrate", "core.tasks:calibrate", self.path, output, text_path, n_ctx, n_chunks, threads,
                       user=True)
        h.succeeded.connect(self._bind(lambda m, summary: self.load_imatrix(summary["output"])))
        return h

    def plan_candidate(self, label: str = "current plan") -> dict:
        """The current plan as an evaluation candidate (simulated on the open model's weights)."""
        m = self.model
        if m.plan is None:
            raise PlanError("open a model and choose a plan first")
        m.plan.check_imatrix(m.imatrix is not None)
        imp = None
        if m.imatrix is not None:
            imp = {e.name: w for e in m.plan.entries if e.quantize and (w := self.importance(e.name)) is not None}
        return {"label": label, "plan": m.plan, "importances": imp, "kind": "current plan"}

    def preset_candidate(self, preset: str) -> dict:
        """A llama-quantize preset on the open model (with the loaded imatrix), simulated."""
        m = self.model
        plan = core.plan.make_plan(m.source.tensors, m.source.metadata,
                                   PlanRules.make(preset, has_imatrix=m.imatrix is not None))
        plan.check_imatrix(m.imatrix is not None)
        imp = None
        if m.imatrix is not None:
            imp = {e.name: w for e in plan.entries if e.quantize and (w := self.importance(e.name)) is not None}
        return {"label": preset, "plan": plan, "importances": imp, "kind": "preset"}

    def evaluate(self, candidates: list[dict], text_path: Optional[str] = None, n_ctx: int = 512,
                 n_chunks: int = 16, threads: Optional[int] = None) -> TaskHandle:
        """PPL/KLD of ``candidates`` (see core.tasks.evaluate) against the open model, in the background."""
        if self.source is None:
            raise PlanError("open a model first")
        return self._call("evaluate", "core.tasks:evaluate", self.path, candidates, text_path, n_ctx, n_chunks,
                          threads, user=True)

    def generate(self, prompt: str, paths: list[str], plans: dict, n_tokens: int = 32) -> TaskHandle:
        """Greedy continuations of ``prompt`` by the open model, the files ``paths`` and simulated ``plans``."""
        return self._call("generate", "core.tasks:generate", [self.path] + list(paths), prompt, n_tokens, plans,
                          self.path, user=True)

    def fit_budget(self, kind: str, value: str, n_ctx: int = 4096, fast: bool = False,
                   allow: Optional[str] = None, pins: Optional[list[str]] = None) -> TaskHandle:
        """core.budget in the jobs process: a type per tensor for a target (``pins``: the session's budget pins
        by default); the result replaces the plan (undoable) and the imatrix it used is loaded. The result
        (core.tasks.budget) carries the measurements for :meth:`solve_budget`."""
        if self.source is None:
            raise PlanError("open a model first")
        pins = self.model.budget_pins if pins is None else pins
        h = self._call("budget", "core.tasks:budget", self.path, kind, value, n_ctx, self.imatrix_path, fast,
                       list(pins), allow, user=True)
        h.succeeded.connect(self._bind(lambda m, r: self.use_budget_plan(r["plan"], r["imatrix_path"])))
        return h

    def solve_budget(self, meas, imatrix_path: str, kind: str, value: str, n_ctx: int = 4096,
                     pins: Optional[list[str]] = None, allow: Optional[str] = None, chart: bool = False) -> TaskHandle:
        """Another target from measurements already made (core.tasks.budget_solve: instant; ``chart``: the
        size-vs-error chart too, seconds), in the background; the plan is not changed (see use_budget_plan)."""
        pins = self.model.budget_pins if pins is None else pins
        return self._call("budget-solve", "core.tasks:budget_solve", self.path, meas, imatrix_path, kind, value,
                          n_ctx, list(pins), allow, chart, priority=2, report=False)

    def check_budget(self, plan, imatrix_path: Optional[str]) -> TaskHandle:
        """A budget plan and the nearest llama-quantize preset, both simulated on held-out text
        (core.tasks.budget_check), in the jobs process."""
        return self._call("budget-check", "core.tasks:budget_check", self.path, plan, imatrix_path, user=True)

    def use_budget_plan(self, plan, imatrix_path: Optional[str]) -> None:
        """A solved plan replaces the plan (undoable), after the imatrix it was solved with is loaded."""
        m = self.model
        if imatrix_path and imatrix_path != m.imatrix_path:     # the imatrix first, then the plan
            h = self.load_imatrix(imatrix_path)
            h.succeeded.connect(self._bind(lambda m2, _r: self._replace_plan(plan.rules, plan)))
        else:
            self._replace_plan(plan.rules, plan)

    def set_budget_pins(self, pins: list[str]) -> None:
        if list(pins) != self.model.budget_pins:
            self.model.budget_pins = list(pins)
            self.budgetPinsChanged.emit()

    def pin_budget(self, names: list[str], qtype: str, at_least: bool = False) -> None:
        """Pin tensors for Fit a Budget: exactly ``qtype``, or (``at_least``) a type of at least its bits per
        weight; a tensor's earlier pin is replaced."""
        import re
        new = {f"^{re.escape(n)}$": f"^{re.escape(n)}$={'>=' if at_least else ''}{qtype}" for n in names}
        kept = [p for p in self.model.budget_pins if p.partition("=")[0] not in new]
        self.set_budget_pins(kept + list(new.values()))

    # -- quantizing -------------------------------------------------------------------------
    def quantize(self, output: str, threads: Optional[int] = None,
                 split_max_size: Optional[int] = None) -> TaskHandle:
        """Run the plan to ``output`` in the background (signals: progress, posted TensorResult)."""
        m = self.model
        if m.source is None or m.plan is None:
            raise PlanError("open a model and choose a plan first")
        if os.path.abspath(output) == os.path.abspath(m.source.path):
            raise OutputError("the output would overwrite the input", output)   # at once, not from a worker
        m.plan.check_imatrix(m.imatrix is not None)
        importances, extra = None, None
        if m.imatrix is not None:
            importances = {e.name: w for e in m.plan.entries if e.quantize and (w := self.importance(e.name)) is not None}
            extra = m.imatrix.metadata(m.imatrix_path)
        return self._call("quantize", "core.tasks:quantize", m.path, m.plan, output, threads, split_max_size,
                          importances, extra, replace=False, user=True)

    def shutdown(self) -> None:
        self._plan_timer.stop()
        self.workers.shutdown()


for _name in STATE_VIEWS:
    setattr(Session, _name, property(lambda self, n=_name: getattr(self.model, n), doc=f"The open model's ``{_name}``."))
