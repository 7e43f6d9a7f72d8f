"""Previews of the open model, part of the session: the predicted error of every planned tensor,
the candidate types of the selected tensor (sampled, then exact), the dequantized-histogram
overlay and the size-vs-error points of the presets. All numbers come from core.preview /
core.kernels / core.stats, run through the session's background loop."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import PlanError, QuantStudioError
from core.progress import Progress

from . import planning
from .workers import TaskContext, TaskHandle, void

PLAN_SAMPLE_ROWS = 64          # rows per tensor for the plan's predicted-error column
CANDIDATE_BUDGET = 0.06        # seconds per type for the first, sampled candidate preview
OVERLAY_ROWS = 256             # rows read for the dequantized-histogram overlay
BG_THREADS = 1                 # threads per background computation (the GUI thread needs the GIL too)


@dataclass
class PlannedError:
    """The sampled (or exact) error of a tensor in its planned type."""

    type: str
    metrics: Any                   # core.preview.ErrorMetrics


class PreviewsMixin:
    """Methods of :class:`app.session.Session` (its signals, caches and ``_loop``/``_run``)."""

    # -- previews ---------------------------------------------------------------------------
    def _start_plan_preview(self) -> None:
        """Predicted error of every quantized tensor in its planned type (sampled, cached)."""
        if self.source is None or self.plan is None:
            return
        src, plan, cache = self.source, self.plan, self.preview_cache
        imid = self.imatrix.id if self.imatrix is not None else None
        todo = [(e.name, e.type) for e in plan.entries if e.quantize
                and (e.name not in self.planned_errors or self.planned_errors[e.name].type != e.type)]
        importance = {n: self.importance(n) for n, _ in todo}

        def step(ctx: TaskContext, item) -> None:
            from core.preview import PreviewCache, estimate
            name, t = item
            imp = importance[name]
            key = PreviewCache.key(src, name, t, imid if imp is not None else None)
            m = cache.get(key)
            if m is None:
                m = estimate(src, t, imp, name=name, sample_rows=PLAN_SAMPLE_ROWS, threads=1)
                cache.put(key, m)
            ctx.post((name, t, m))

        def done() -> None:
            self.planPreviewDone.emit()
            self.start_frontier()

        self._loop("plan-preview", todo, step, on_post=lambda r, s=src: self._planned_error(s, *r), on_done=done)

    def _planned_error(self, src, name: str, t: str, m) -> None:
        if src is not self.source or self.plan is None:
            return
        try:
            if self.plan.entry(name).type != t:       # a late result of a superseded plan
                return
        except PlanError:
            return
        self.planned_errors[name] = PlannedError(t, m)
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
        cache = self.preview_cache

        types = self.candidate_types

        def work(ctx: TaskContext):
            from core import preview
            ts = preview.candidate_types(info.row_len) if types is None else \
                [t for t in preview.candidate_types(info.row_len) if t.name in types]
            ms: list = []
            for t in ts:                       # one type at a time: the table fills in as kernels load
                ctx.check()
                key = preview.PreviewCache.key(src, name, t, imid)
                m = cache.get(key) or preview.estimate(src, t, imp, name=name, time_budget=CANDIDATE_BUDGET,
                                                       threads=BG_THREADS)
                cache.put(key, m)
                ms.append(m)
                ctx.post(list(ms))
            if not exact:
                return ms
            for i, m in enumerate(ms):
                ctx.check()
                if m.exact:
                    continue
                key = preview.PreviewCache.key(src, name, m.type, imid)
                ms[i] = cache.get(key, exact=True) or preview.exact(
                    src, m.type, imp, name=name, threads=BG_THREADS, cancel=ctx.cancel,
                    progress=lambda ev, t=m.type: ctx.progress(Progress(ev.done, ev.total, t, name,
                                                                        elapsed=ev.elapsed)))
                cache.put(key, ms[i])
                ctx.post(list(ms))
            return ms

        h = self._run("candidates", work)
        h.posted.connect(lambda ms, s=src, n=name: self._candidates(s, n, ms))
        h.progress.connect(lambda ev, n=name: void(self.candidateProgress.emit, n, ev))
        return h

    def _candidates(self, src, name: str, ms) -> None:
        if src is not self.source:
            return
        self.candidates[name] = ms
        self.candidatesReady.emit(name, ms)

    def request_overlay(self, name: str, qtype: str) -> TaskHandle | None:
        """Histogram of ``name``'s rows after a round trip through ``qtype`` (a sample of rows)."""
        src = self.source
        if src is None:
            return None
        info = src.tensor(name)
        if info.ggml_type is None or info.row_len == 0:
            return None
        imp = self.importance(name)

        def work(ctx: TaskContext):
            from core.kernels import get_kernel
            from core.stats import compute_stats
            k = get_kernel(qtype)
            n = info.n_rows
            step = max(1, n // OVERLAY_ROWS)
            rows = np.concatenate([src.read_rows(name, a, a + 1) for a in range(0, n, step)][:OVERLAY_ROWS])
            ctx.check()
            w = None if imp is None or np.ndim(imp) != 1 else imp
            y = k.dequantize(k.quantize(rows, w), info.row_len)
            return compute_stats(f"{name}:{qtype}", y.shape, y, bins=128)

        h = self._run("overlay", work)
        h.succeeded.connect(lambda st, s=src, n=name, t=qtype: self._overlay(s, n, t, st))
        return h

    def _overlay(self, src, name: str, qtype: str, st) -> None:
        if src is self.source:
            self.overlayReady.emit(name, qtype, st)

    def start_frontier(self) -> TaskHandle | None:
        """Size vs error of every preset for this model (sampled, low priority)."""
        if self.source is None or self.frontier:
            return None
        src, cache = self.source, self.preview_cache
        imx = self.imatrix
        presets = self.frontier_presets or planning.preset_names()

        out: list = []

        def step(ctx: TaskContext, name: str) -> None:
            from core.preview import preview_plan
            try:
                plan = planning.build_plan(src, planning.PlanSpec(preset=name), imx is not None)
            except QuantStudioError:
                return
            pp = preview_plan(src, plan, imx, cache=cache, sample_rows=PLAN_SAMPLE_ROWS, threads=1,
                              cancel=ctx.cancel)
            out.append((name, planning.plan_bytes(plan, src), pp.rel_rmse, pp.bpw))

        # one post at the end: every redraw of the chart costs the GUI thread
        return self._loop("frontier", presets, step, priority=-2, on_done=lambda s=src: self._frontier(s, out))

    def _frontier(self, src, points) -> None:
        if src is not self.source:
            return
        self.frontier = points
        self.frontierReady.emit(points)
