"""The studio's document: the open model, its statistics, the plan and the previews.

Every piece of work is a core call run through :mod:`app.workers`; results come back as
signals and are cached here. Views read the caches and listen to the signals.
"""
from __future__ import annotations

import os
from typing import Any, Optional

from PySide6.QtCore import QObject, QTimer, Signal

# core's modules are imported here, at start-up, so that no first import (Numba, gguf) ever
# happens on the GUI thread in the middle of work, or contends for the import lock with a worker
import core.imatrix  # noqa: E402,F401
import core.inspect  # noqa: E402,F401
import core.job  # noqa: E402,F401
import core.plan  # noqa: E402,F401
import core.presets  # noqa: E402,F401
import core.preview  # noqa: E402,F401
import core.sources  # noqa: E402,F401
import core.stats  # noqa: E402,F401
from core.errors import PlanError, QuantStudioError
from core.procpool import SLICE_SECONDS

from . import planning
from .previews import BG_THREADS, PlannedError, PreviewsMixin
from .workers import TaskHandle, Workers, void



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
    frontierReady = Signal(object)              # list of (label, nbytes, rel_rmse)
    imatrixChanged = Signal()
    warmupDone = Signal()
    backgroundError = Signal(str, object)      # what was being done, exception (shown in the status bar)

    def __init__(self, workers: Optional[Workers] = None, parent: Optional[QObject] = None):
        super().__init__(parent)
        self.workers = workers or Workers(parent=self)
        self.source = None
        self.path: Optional[str] = None
        self.stats: dict[str, Any] = {}
        self.stats_errors: dict[str, BaseException] = {}
        self.planned_errors: dict[str, PlannedError] = {}
        self.candidates: dict[str, list] = {}
        self.spec = planning.PlanSpec()
        self.plan = None
        self.imatrix = None
        self.imatrix_path: Optional[str] = None
        self.imatrix_match = None
        self.note = ""                      # why a model can only be inspected, if it can
        self.frontier: list = []
        self.warmed = False
        self.candidate_types: Optional[list[str]] = None     # None: every type core offers for a tensor
        self.frontier_presets: Optional[list[str]] = None    # None: every preset
        self._tasks: dict[str, TaskHandle] = {}
        self._size, self._size_for = 0, None
        self._stats_inflight: set[str] = set()
        self._plan_timer = QTimer(self, singleShot=True, interval=150)
        self._plan_timer.timeout.connect(self._start_plan_preview)

    # -- background helpers --------------------------------------------------------------
    def _track(self, key: str, h: TaskHandle, report: bool) -> TaskHandle:
        """Keep ``h`` under ``key``; a failure of background work goes to the status bar."""
        if report:
            h.failed.connect(lambda e, k=key: void(self.backgroundError.emit, k, e))
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

    def cancel_model_tasks(self) -> None:
        for key in ("stats", "plan-preview", "candidates", "overlay", "frontier"):
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
        return self._loop("warm-up", "core.tasks:warm", todo, priority=-1, budget=0.0, on_done=self._warm_done)

    def _warm_done(self) -> None:
        self.warmed = True
        self.warmupDone.emit()

    # -- opening ------------------------------------------------------------------------
    def open(self, path: str) -> TaskHandle:
        path = os.fspath(path)
        self.modelOpening.emit(path)

        def work():
            from core.tasks import open_for_studio       # a Hugging Face checkpoint is seen as its GGUF
            return open_for_studio(path)

        # in this process: the plan and the table need the model's header here (reading it takes
        # ~0.1 s); its tensors are read by the worker processes
        self._replace("open")
        h = self._track("open", self.workers.run_here(work, "open"), False)
        h.succeeded.connect(lambda r, p=path: self._opened(p, *r))
        h.failed.connect(lambda e, p=path: void(self.openFailed.emit, p, e))
        return h

    def _opened(self, path: str, src, note: str = "") -> None:
        self.cancel_model_tasks()
        self.source, self.path, self.note = src, path, note
        self.stats, self.planned_errors, self.candidates, self.frontier = {}, {}, {}, []
        self.stats_errors = {}
        self._stats_inflight.clear()
        self.imatrix, self.imatrix_path, self.imatrix_match = None, None, None
        self.spec = planning.PlanSpec(preset=self.spec.preset)
        self.plan = None
        try:
            self.plan = planning.build_plan(src, self.spec, self.imatrix is not None)
        except QuantStudioError:
            names = planning.preset_names()
            self.spec.preset = "Q8_0" if "Q8_0" in names else names[0]
            try:
                self.plan = planning.build_plan(src, self.spec, self.imatrix is not None)
            except QuantStudioError as e:     # e.g. integer safetensors a GGUF cannot hold
                self.backgroundError.emit("planning", e)
        self.modelOpened.emit()
        self.start_stats()
        if self.plan is not None:
            self.planChanged.emit()
            self._plan_timer.start()

    # -- statistics -----------------------------------------------------------------------
    def start_stats(self) -> Optional[TaskHandle]:
        """Statistics of every tensor, in file order, in slices (see _loop)."""
        src, path = self.source, self.path
        names = [t.name for t in src.tensors if t.ggml_type is not None]
        return self._loop("stats", "core.tasks:stats_item", names, path, BG_THREADS,
                          pending=lambda n: n not in self.stats and n not in self._stats_inflight,
                          on_post=lambda r, s=src: self._stats_arrived(s, *r))

    def ensure_stats(self, name: str) -> None:
        """Compute ``name``'s statistics now, ahead of the background pass, if not cached."""
        src = self.source
        if src is None or name in self.stats or name in self._stats_inflight:
            return
        if src.tensor(name).ggml_type is None:
            return
        self._stats_inflight.add(name)
        h = self._call(f"stats:{name}", "core.tasks:stats", self.path, name, BG_THREADS, priority=1,
                       report=False)
        h.failed.connect(lambda e, s=src, n=name: self._stats_arrived(s, n, e))
        h.succeeded.connect(lambda st, s=src, n=name: self._stats_arrived(s, n, st))
        h.finished.connect(lambda n=name: self._stats_inflight.discard(n))

    def _stats_arrived(self, src, name: str, st) -> None:
        if src is not self.source:
            return
        if isinstance(st, BaseException):
            self.stats_errors[name] = st
            self.backgroundError.emit(f"statistics of {name}", st)
            return
        self.stats[name] = st
        self.statsReady.emit(name)
        total = sum(1 for t in src.tensors if t.ggml_type is not None)
        self.statsProgress.emit(len(self.stats), total)

    # -- the plan ---------------------------------------------------------------------------
    def set_spec(self, spec: planning.PlanSpec) -> bool:
        """Rebuild the plan from ``spec``; on PlanError keep the old one and emit planFailed."""
        if self.source is None:
            self.spec = spec
            return False
        try:
            plan = planning.build_plan(self.source, spec, self.imatrix is not None)
        except QuantStudioError as e:
            self.planFailed.emit(e)
            return False
        self.spec, self.plan = spec, plan
        self.planChanged.emit()
        self._plan_timer.start()
        return True

    def set_types(self, names: list[str], qtype: str) -> bool:
        """Manual edit: ``names`` to ``qtype`` (only tensors llama.cpp would quantize)."""
        spec = _copy_spec(self.spec)
        for n in names:
            if planning.quantizable(self.source, n):
                spec.overrides[n] = qtype
        return self.set_spec(spec)

    def set_preset(self, preset: str) -> bool:
        spec = _copy_spec(self.spec)
        spec.preset = preset
        return self.set_spec(spec)

    def load_plan(self, path: str) -> None:
        """Load a plan JSON (the CLI's format); it must list this model's tensors."""
        from core.plan import Plan
        with open(path, encoding="utf-8") as f:
            plan = Plan.from_json(f.read())
        names = {t.name for t in self.source.tensors}
        missing = [e.name for e in plan.entries if e.name not in names]
        if missing:
            raise PlanError(f"the plan names {len(missing)} tensors this model does not have "
                            f"(first: {missing[0]})", path)
        for e in plan.entries:
            if tuple(self.source.tensor(e.name).shape) != tuple(e.shape):
                raise PlanError(f"the plan's shape of '{e.name}' differs from the model's", path)
        self.spec, self.plan = self._spec_of(plan), plan
        self.planChanged.emit()
        self._plan_timer.start()

    def _spec_of(self, plan) -> planning.PlanSpec:
        """The panel's choices that re-derive ``plan`` (from its options; else by difference)."""
        o = plan.options or {}
        spec = planning.PlanSpec(preset=plan.preset or self.spec.preset)
        if "model" in o:
            spec.rules = [planning.Rule(rx, t) for rx, t in o.get("tensor_types", [])]
            spec.rules += [planning.Rule(r[3] if len(r) > 3 else "", r[2], int(r[0]), int(r[1]))
                           for r in o.get("layer_ranges", [])]
            spec.token_embedding_type = o.get("token_embedding_type")
            spec.output_tensor_type = o.get("output_tensor_type")
            spec.overrides = dict(o.get("manual", {}))
            return spec
        try:
            base = {e.name: e.type for e in planning.build_plan(self.source, spec).entries}
        except QuantStudioError:
            base = {}
        spec.overrides = {e.name: e.type for e in plan.entries
                          if base.get(e.name) != e.type and planning.quantizable(self.source, e.name)}
        return spec

    def save_plan(self, path: str) -> None:
        from core.errors import OutputError
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(self.plan.to_json())
        except OSError as e:
            raise OutputError(f"cannot write: {e.strerror or e}", path) from None

    def planned_bytes(self) -> int:
        """Predicted output size of the current plan (computed once per plan)."""
        if self.plan is None:
            return 0
        if self._size_for is not self.plan:
            self._size, self._size_for = core.plan.planned_bytes(self.plan, self.source), self.plan
        return self._size

    # -- imatrix ----------------------------------------------------------------------------
    def load_imatrix(self, path: Optional[str]) -> TaskHandle | None:
        if not path:
            self.imatrix, self.imatrix_path = None, None
            self._imatrix_changed()
            return None

        src = self.source

        def work():
            from core.imatrix import load_imatrix
            data = load_imatrix(path)
            return data, data.match(src)

        self._replace("imatrix")
        h = self._track("imatrix", self.workers.run_here(work, "imatrix"), False)
        h.succeeded.connect(lambda r, p=path: self._imatrix_loaded(p, *r))
        return h

    def _imatrix_loaded(self, path: str, data, match) -> None:
        self.imatrix, self.imatrix_path, self.imatrix_match = data, path, match
        self._imatrix_changed()

    def _imatrix_changed(self) -> None:
        self.planned_errors, self.candidates, self.frontier = {}, {}, []
        self.imatrixChanged.emit()
        if not self.set_spec(self.spec):        # has_imatrix changes llama.cpp's choices
            self.planChanged.emit()
            self._plan_timer.start()

    def importance(self, name: str):
        if self.imatrix is None:
            return None
        try:
            return self.imatrix.for_tensor(name, tuple(self.source.tensor(name).shape))
        except PlanError:
            return None

    # -- quantizing -------------------------------------------------------------------------
    def quantize(self, output: str, threads: Optional[int] = None,
                 split_max_size: Optional[int] = None) -> TaskHandle:
        """Run the plan to ``output`` in the background (signals: progress, posted TensorResult)."""
        from core.errors import OutputError
        src, plan = self.source, self.plan
        if src is None or plan is None:
            raise PlanError("open a model and choose a plan first")
        if os.path.abspath(output) == os.path.abspath(src.path):
            raise OutputError("the output would overwrite the input", output)
        plan.check_imatrix(self.imatrix is not None)
        imx = self.imatrix
        imat = None
        if imx is not None:
            imat = {e.name: w for e in plan.entries if e.quantize and (w := self.importance(e.name)) is not None}

        extra = imx.metadata(self.imatrix_path) if imx is not None else None
        return self._call("quantize", "core.tasks:quantize", self.path, plan, output, threads, split_max_size,
                          imat, extra, replace=False, user=True)

    def shutdown(self) -> None:
        self._plan_timer.stop()
        self.workers.shutdown()


def _copy_spec(spec: planning.PlanSpec) -> planning.PlanSpec:
    return planning.PlanSpec(spec.preset, list(spec.rules), spec.token_embedding_type, spec.output_tensor_type,
                             dict(spec.overrides))
