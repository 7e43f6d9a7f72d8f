"""Previews of the open model, part of the session: the predicted error of every planned tensor,
the candidate types of the selected tensor (sampled, then exact), the dequantized-histogram
overlay, a type's levels and exact error histogram, and the size-vs-error points of the presets. All
numbers come from core.tasks (core.preview, core.kernels, core.stats, core.levels), run in the session's
worker processes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.errors import PlanError

from . import plan_choices
from .workers import TaskHandle

PLAN_SAMPLE_ROWS = 64          # rows per tensor for the plan's predicted-error column
CANDIDATE_BUDGET = 0.06        # seconds per type for the first, sampled candidate preview
OVERLAY_ROWS = 256             # rows read for the dequantized-histogram overlay
BG_THREADS = 1                 # threads per background computation (they share the cores with the quantizer)


@dataclass
class PlannedError:
    """The sampled (or exact) error of a tensor in its planned type."""

    type: str
    metrics: Any                   # core.preview.ErrorMetrics


class PreviewsMixin:
    """Methods of :class:`app.session.Session` (its signals, caches and ``_loop``/``_call``)."""

    # -- previews ---------------------------------------------------------------------------
    def _start_plan_preview(self) -> None:
        """Predicted error of every quantized tensor in its planned type (sampled, cached)."""
        if self.source is None or self.plan is None:
            return
        path, plan = self.path, self.plan
        imid = self.imatrix.id if self.imatrix is not None else None
        todo = []
        for e in plan.entries:
            if e.quantize and (e.name not in self.planned_errors or self.planned_errors[e.name].type != e.type):
                imp = self.importance(e.name)
                todo.append((e.name, e.type, imp, imid if imp is not None else None))

        def done() -> None:
            self.planPreviewDone.emit()
            self.start_frontier()

        self._loop("plan-preview", "core.tasks:planned_error_item", todo, path, PLAN_SAMPLE_ROWS,
                   on_post=self._bind(lambda st, r: self._planned_error(st, *r)), on_done=self._bind(lambda st: done()))

    def _planned_error(self, state, name: str, t: str, m) -> None:
        try:
            if state.plan is None or state.plan.entry(name).type != t:       # a late result of a superseded plan
                return
        except PlanError:
            return
        state.planned_errors[name] = PlannedError(t, m)
        self.planErrorReady.emit(name)

    def plan_preview(self):
        """core.preview.PlanPreview of the current plan from what is known so far."""
        from core.preview import PlanPreview, TensorPreview
        from core.qtypes import type_info
        out = PlanPreview()
        if self.plan is None:
            return out
        for e in self.plan.entries:
            ti = type_info(e.type)
            pe = self.planned_errors.get(e.name)
            m = pe.metrics if pe is not None and pe.type == e.type and e.quantize else None
            out.tensors.append(TensorPreview(e.name, e.type, tuple(e.shape), e.nbytes, ti.bpw, e.quantize,
                                             metrics=m))
        return out

    def request_candidates(self, name: str, exact: bool = True) -> TaskHandle | None:
        """Every candidate type for ``name``: a sampled pass (posted at once), then exact ones."""
        src = self.source
        if src is None:
            return None
        info = src.tensor(name)
        if info.ggml_type is None or info.n_dims < 1:
            return None
        imp = self.importance(name)
        imid = self.imatrix.id if (self.imatrix is not None and imp is not None) else None
        self._replace("candidates-exact")
        # the sampled pass at once (a fraction of a second); the exact pass afterwards, one type per item
        # in slices at the statistics' priority, so both advance in turn instead of the statistics
        # waiting seconds for every type of the selected tensor
        h = self._call("candidates", "core.tasks:candidates", self.path, name, self.candidate_types, imp, imid,
                       False, CANDIDATE_BUDGET, BG_THREADS)
        h.posted.connect(self._bind(lambda st, ms, n=name: self._candidates(st, n, ms)))
        if exact:
            h.succeeded.connect(self._bind(lambda st, ms, n=name: self._exact_candidates(st, n, ms, imp, imid)))
        return h

    def _exact_candidates(self, state, name: str, ms, importance, imatrix_id) -> None:
        from core.progress import Progress
        todo = [m.type for m in ms if not m.exact]
        if not todo:
            return
        n = len(todo)

        def arrived(st, item, n_types=n) -> None:
            qtype, m = item
            ms = list(st.candidates.get(name) or [])
            for i, old in enumerate(ms):
                if old.type == qtype:
                    ms[i] = m
            done = n_types - sum(not x.exact for x in ms)
            self.candidateProgress.emit(name, Progress(done, n_types, qtype, name))
            self._candidates(st, name, ms)

        self._loop("candidates-exact", "core.tasks:candidate_exact_item", todo, self.path, name, importance,
                   imatrix_id, BG_THREADS, on_post=self._bind(arrived))

    def _candidates(self, state, name: str, ms) -> None:
        state.candidates[name] = ms
        self.candidatesReady.emit(name, ms)

    def request_overlay(self, name: str, qtype: str) -> TaskHandle | None:
        """Histogram of ``name``'s rows after a round trip through ``qtype`` (a sample of rows), then the
        levels of a typical block (core.levels)."""
        src = self.source
        if src is None:
            return None
        info = src.tensor(name)
        if info.ggml_type is None or info.row_len == 0:
            return None
        imp = self.importance(name)
        h = self._call("overlay", "core.tasks:overlay", self.path, name, qtype, imp, OVERLAY_ROWS)
        h.succeeded.connect(self._bind(lambda state, st, n=name, t=qtype: self.overlayReady.emit(n, t, st)))
        # after the overlay, between the statistics' slices (a click every few tenths of a second must not
        # hold them back)
        lv = self._call("levels", "core.tasks:levels", self.path, name, qtype, imp, OVERLAY_ROWS, priority=-1)
        lv.succeeded.connect(self._bind(lambda state, r, n=name, t=qtype: self.levelsReady.emit(n, t, r)))
        return h

    def request_errors(self, name: str, qtype: str) -> TaskHandle | None:
        """The error ``x - q(x)`` of every weight of ``name`` in ``qtype`` (core.levels.ErrorHistogram), at
        the statistics' priority; replaces the one asked before. Emits errorsReady (with the exception
        when it fails) and errorsProgress."""
        src = self.source
        if src is None or src.tensor(name).ggml_type is None:
            return None
        imp = self.importance(name)
        imid = self.imatrix.id if (self.imatrix is not None and imp is not None) else None
        er = self._call("errors", "core.tasks:error_histogram", self.path, name, qtype, imp, imid, BG_THREADS,
                        priority=-1, report=False)
        er.succeeded.connect(self._bind(lambda state, r, n=name, t=qtype: self.errorsReady.emit(n, t, r)))
        er.failed.connect(self._bind(lambda state, e, n=name, t=qtype: self.errorsReady.emit(n, t, e)))
        er.progress.connect(self._bind(lambda state, ev, n=name, t=qtype: self.errorsProgress.emit(n, t, ev)))
        return er

    def start_frontier(self) -> TaskHandle | None:
        """Size vs error of every preset for this model (sampled, low priority)."""
        if self.source is None or self.frontier:
            return None
        presets = self.frontier_presets or plan_choices.preset_names()
        out: list = []
        # gathered here, shown once at the end: every redraw of the chart costs the GUI thread
        return self._loop("frontier", "core.tasks:frontier_item", presets, self.path, self.imatrix, PLAN_SAMPLE_ROWS,
                          priority=-2, on_post=out.append, on_done=self._bind(lambda st: self._frontier(st, out)))

    def _frontier(self, state, points) -> None:
        state.frontier = points
        self.frontierReady.emit(points)
