"""The studio's background work as plain functions of core, run in worker processes
(:mod:`core.procpool`): statistics, predicted errors, candidate previews, the dequantized
histogram, a type's levels and exact error histogram (core.levels), the presets' size-vs-error
points, kernel warm-up and the quantization job.

Each takes a task context first (``progress``, ``post``, ``cancel``, ``check``) and names its
model by path; a worker process opens a model once and keeps it, with a preview cache, for the
calls that follow.
"""
from __future__ import annotations

import os
import threading
from typing import Optional, Sequence

import numpy as np

from .errors import QuantStudioError

_SOURCES: dict[str, tuple] = {}
_LOCK = threading.Lock()
_CACHE = None
MAX_OPEN = 4                     # models a worker keeps open


def _stamp(path: str) -> tuple:
    try:
        st = os.stat(path)
        return (st.st_size, st.st_mtime_ns)
    except OSError:
        return ()


def source(path: str):
    """This process's open copy of the model at ``path`` (re-opened when the file changed)."""
    path = os.path.abspath(path)
    stamp = _stamp(path)
    with _LOCK:
        hit = _SOURCES.get(path)
        if hit is not None and hit[0] == stamp:
            return hit[1]
    from .models import open_model
    src = open_model(path)
    with _LOCK:
        if len(_SOURCES) >= MAX_OPEN:
            _SOURCES.pop(next(iter(_SOURCES)))
        _SOURCES[path] = (stamp, src)
    return src


def preview_cache():
    global _CACHE
    if _CACHE is None:
        from .preview import PreviewCache
        _CACHE = PreviewCache()
    return _CACHE


def stats_item(ctx, name: str, path: str, threads: int = 1) -> None:
    """Posts ``(name, TensorStats)``, or ``(name, error)`` for a tensor that cannot be read."""
    try:
        ctx.post((name, stats(ctx, path, name, threads)))
    except QuantStudioError as e:
        if ctx.cancel.cancelled:
            raise
        ctx.post((name, e))


def stats(ctx, path: str, name: str, threads: int = 1):
    """TensorStats of ``name``."""
    from .stats import tensor_stats
    return tensor_stats(source(path), name, threads=threads, cancel=ctx.cancel)


def planned_error_item(ctx, item: tuple, path: str, sample_rows: int) -> None:
    """``item`` = (name, type, importance or None, imatrix id of that importance or None); posts
    (name, type, metrics)."""
    from .preview import PreviewCache, estimate
    name, qtype, imp, imid = item
    src, cache = source(path), preview_cache()
    key = PreviewCache.key(src, name, qtype, imid)
    m = cache.get(key)
    if m is None:
        m = estimate(src, qtype, imp, name=name, sample_rows=sample_rows, threads=1)
        cache.put(key, m)
    ctx.post((name, qtype, m))


def candidates(ctx, path: str, name: str, types: Optional[Sequence[str]], importance, imatrix_id,
               exact: bool = True, budget: float = 0.06, threads: int = 1) -> list:
    """Error metrics of every candidate type of ``name``: a sampled pass (posted type by type),
    then exact ones (progress per type); returns the final list."""
    from .preview import PreviewCache, candidate_types, estimate
    from .preview import exact as exact_metrics
    from .progress import Progress
    src, cache = source(path), preview_cache()
    info = src.tensor(name)
    ts = [t for t in candidate_types(info.row_len) if types is None or t.name in types]
    ms: list = []
    for t in ts:                       # one type at a time: the table fills in as kernels load
        ctx.check()
        key = PreviewCache.key(src, name, t, imatrix_id)
        m = cache.get(key) or estimate(src, t, importance, name=name, time_budget=budget, threads=threads)
        cache.put(key, m)
        ms.append(m)
        ctx.post(list(ms))
    if not exact:
        return ms
    for i, m in enumerate(ms):
        ctx.check()
        if m.exact:
            continue
        key = PreviewCache.key(src, name, m.type, imatrix_id)
        ms[i] = cache.get(key, exact=True) or exact_metrics(
            src, m.type, importance, name=name, threads=threads, cancel=ctx.cancel,
            progress=lambda ev, t=m.type: ctx.progress(Progress(ev.done, ev.total, t, name, elapsed=ev.elapsed)))
        cache.put(key, ms[i])
        ctx.post(list(ms))
    return ms


def candidate_exact_item(ctx, qtype: str, path: str, name: str, importance, imatrix_id, threads: int = 1) -> None:
    """The exact error metrics of ``name`` in ``qtype`` (every row), posted as ``(qtype, metrics)``:
    one item of the studio's exact candidate pass, run in slices so that other background work of the
    same priority (the statistics) goes on in between instead of waiting for every type."""
    from .preview import PreviewCache
    from .preview import exact as exact_metrics
    src, cache = source(path), preview_cache()
    key = PreviewCache.key(src, name, qtype, imatrix_id)
    m = cache.get(key, exact=True) or exact_metrics(src, qtype, importance, name=name, threads=threads,
                                                    cancel=ctx.cancel)
    cache.put(key, m)
    ctx.post((qtype, m))


def overlay(ctx, path: str, name: str, qtype: str, importance, rows: int = 256):
    """Statistics of a sample of ``rows`` rows of ``name`` after a round trip through ``qtype``."""
    from .kernels import get_kernel
    from .stats import compute_stats
    src = source(path)
    info = src.tensor(name)
    k = get_kernel(qtype)
    n = info.n_rows
    step = max(1, n // rows)
    x = np.concatenate([src.read_rows(name, a, a + 1) for a in range(0, n, step)][:rows])
    ctx.check()
    w = None if importance is None or np.ndim(importance) != 1 else importance
    y = k.dequantize(k.quantize(x, w), info.row_len)
    return compute_stats(f"{name}:{qtype}", y.shape, y, bins=128)


def levels(ctx, path: str, name: str, qtype: str, importance, rows: int = 256):
    """core.levels.Levels of ``name`` in ``qtype``: the values a typical block (of ``rows`` evenly
    spaced rows) can represent."""
    from .levels import tensor_levels
    return tensor_levels(source(path), qtype, importance, name=name, rows=rows)


_ERRORS: dict[tuple, object] = {}
MAX_ERRORS = 32                  # error histograms a worker keeps


def error_histogram(ctx, path: str, name: str, qtype: str, importance, imatrix_id=None, threads: int = 1):
    """core.levels.ErrorHistogram of ``x - q(x)`` over every row of ``name`` in ``qtype`` (progress
    counts weights; cancel between chunks); kept per (model, tensor, type, imatrix id of ``importance``)."""
    from .levels import error_histogram as run
    from .preview import PreviewCache
    src = source(path)
    key = PreviewCache.key(src, name, qtype, imatrix_id if importance is not None else None)
    with _LOCK:
        hit = _ERRORS.get(key)
    if hit is not None:
        return hit
    h = run(src, qtype, importance, name=name, threads=threads, progress=ctx.progress, cancel=ctx.cancel)
    with _LOCK:
        if len(_ERRORS) >= MAX_ERRORS:
            _ERRORS.pop(next(iter(_ERRORS)))
        _ERRORS[key] = h
    return h


def frontier_item(ctx, preset: str, path: str, imatrix, sample_rows: int) -> None:
    """Posts ``(preset, predicted bytes, relative RMSE, bpw)`` of ``preset`` on this model (nothing
    when the preset does not apply)."""
    from .plan import make_plan, planned_bytes
    from .preview import preview_plan
    src = source(path)
    try:
        plan = make_plan(src.tensors, src.metadata, preset, has_imatrix=imatrix is not None)
    except QuantStudioError:
        return
    if plan.requires_imatrix and imatrix is None:     # llama.cpp refuses it without one: no point to show
        return
    pp = preview_plan(src, plan, imatrix, cache=preview_cache(), sample_rows=sample_rows, threads=1,
                      cancel=ctx.cancel)
    ctx.post((preset, planned_bytes(plan, src), pp.rel_rmse, pp.bpw))


_WARMED: set = set()


def warm(ctx, what: str) -> None:
    """Load (or compile) the kernels of one type, or the statistics kernels (``"stats"``)."""
    if what == "stats":
        from .stats import compute_stats
        compute_stats("warm-up", (4, 256), np.ones((4, 256), np.float32))
    else:
        from .preview import warm_up
        warm_up([what])
    _WARMED.add(what)
    ctx.post(what)


def warmed(ctx) -> list:
    """What :func:`warm` has loaded in this process."""
    return sorted(_WARMED)


def quantize(ctx, path: str, plan, output: str, threads: Optional[int] = None,
             split_max_size: Optional[int] = None, importances: Optional[dict] = None, extra_kv=None):
    """The quantization job (core.job.run_plan); posts each TensorResult, returns the JobResult."""
    from .job import run_plan
    return run_plan(source(path), plan, output, threads=threads, split_max_size=split_max_size,
                    importances=importances,
                    extra_kv=extra_kv, progress=ctx.progress, cancel=ctx.cancel, on_tensor=ctx.post)


def compare(ctx, a: str, b: str, source_path: Optional[str] = None, threads: int = 1):
    """core.compare.compare of two GGUF files (with each file's error against ``source_path``)."""
    from .compare import compare as run
    return run(source(a), source(b), source(source_path) if source_path else None, threads=threads,
               progress=ctx.progress, cancel=ctx.cancel)


def compare_histograms(ctx, name: str, paths: Sequence[str], bins: int = 128, max_rows: int = 4096) -> dict:
    """Histograms of tensor ``name`` in each model of ``paths`` (decoded; up to ``max_rows`` evenly spaced
    rows), on common bins over the central 99.8 % (the tails are counted in the end bins):
    ``{"edges": array, "counts": [array per path or None], "rows": n}``."""
    models = [source(p) for p in paths]
    infos = [m.tensor(name) if name in m else None for m in models]
    n = next(i.n_rows for i in infos if i is not None)
    idx = np.unique(np.linspace(0, n - 1, min(n, max_rows)).astype(np.int64))
    xs = [None if i is None or i.n_rows != n else np.concatenate([m.read_rows(name, int(r), int(r) + 1) for r in idx])
          for m, i in zip(models, infos)]
    finite = np.concatenate([x[np.isfinite(x)].ravel() for x in xs if x is not None])
    lo, hi = (float(v) for v in np.quantile(finite, [0.001, 0.999])) if finite.size else (0.0, 1.0)
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    return {"edges": edges, "rows": int(idx.size), "clipped": True,
            "counts": [None if x is None else np.histogram(np.clip(x[np.isfinite(x)], edges[0], edges[-1]), edges)[0]
                       for x in xs]}


def verify(ctx, paths: Sequence[str], source_path: Optional[str] = None, threads: Optional[int] = None,
           imatrix=None) -> list:
    """core.verify.verify of each file (the shards of a split output), against ``source_path``; ``imatrix``
    (an ImatrixData) is used for the files whose metadata says they were made with it."""
    from .verify import verify as run
    src = source(source_path) if source_path else None
    return [run(p, src, threads=threads, progress=ctx.progress, cancel=ctx.cancel, imatrix=imatrix) for p in paths]


def set_metadata(ctx, path: str, output: str, changes: list, remove: Sequence[str] = ()) -> str:
    """core.metadata_edit.set_metadata: a copy of ``path`` with its metadata edited."""
    from .metadata_edit import set_metadata as run
    return run(source(path), output, changes, remove, progress=ctx.progress, cancel=ctx.cancel)


def calibrate(ctx, path: str, output: str, text_path: Optional[str] = None, n_ctx: int = 512, n_chunks: int = -1,
              threads: Optional[int] = None) -> dict:
    """core.eval: an importance matrix of the model at ``path`` from a text (the built-in one when None),
    written to ``output`` (GGUF imatrix, or legacy .dat by extension). Returns a summary."""
    from .eval.run import compute_imatrix, imatrix_provenance, prepare_chunks, read_text
    src = source(path)
    text, name = read_text(text_path)
    chunks = prepare_chunks(src, text, n_ctx, n_chunks)
    col = compute_imatrix(src, chunks, threads=threads, progress=ctx.progress, cancel=ctx.cancel)
    prov = imatrix_provenance(src, chunks, text, name)
    out = col.write_dat(output, name) if output.lower().endswith(".dat") else col.write_gguf(output, prov)
    return {"output": out, "dataset": name, "chunks": chunks.n_chunk, "ctx": chunks.n_ctx, "tensors": len(col.stats)}


def evaluate(ctx, base_path: str, candidates: Sequence[dict], text_path: Optional[str] = None, n_ctx: int = 512,
             n_chunks: int = 32, threads: Optional[int] = None) -> dict:
    """core.eval.run.evaluate of ``candidates`` against the model at ``base_path``: each a dict with ``label``
    and either ``path`` (a GGUF) or ``plan`` (a Plan, simulated; ``importances`` optional). Returns
    ``{"results": [EvalResult], "tokens": (n_chunk, n_ctx) ids, "pieces": token strings, "text": name}``."""
    from .eval.run import Candidate, evaluate as run, file_candidate, prepare_chunks, read_text
    from .eval.tokenizer import load_tokenizer
    from .plan import predict_size
    base = source(base_path)
    text, name = read_text(text_path)
    chunks = prepare_chunks(base, text, n_ctx, n_chunks)
    cands = []
    for c in candidates:
        if c.get("path"):
            cands.append(file_candidate(c["path"], source(c["path"])))
        else:
            pred = predict_size(c["plan"], base)
            cands.append(Candidate(c["label"], plan=c["plan"], importances=c.get("importances"), size=pred.total,
                                   bpw=pred.bpw, info={"kind": c.get("kind", "plan")}))
    results = run(base, cands, chunks, threads=threads, keep_per_token=True, progress=ctx.progress,
                  cancel=ctx.cancel)
    tok = load_tokenizer(base)
    used = np.unique(chunks.tokens)
    pieces = {}
    for i in used:
        p = tok.piece(int(i))
        pieces[int(i)] = p.decode("utf-8", "replace") if isinstance(p, bytes) else str(p)
    return {"results": results, "tokens": chunks.tokens, "pieces": pieces,
            "text": name, "n_ctx": chunks.n_ctx}


def generate(ctx, paths: Sequence[str], prompt: str, n_tokens: int = 32, plans: Optional[dict] = None,
             base_path: Optional[str] = None, threads: Optional[int] = None) -> dict:
    """Greedy continuations of ``prompt`` by each model of ``paths`` (and each simulated plan of ``plans``:
    label -> (plan, importances), on ``base_path``'s weights): ``{label: text}``. A plan is written once to a
    temporary GGUF (what quantizing would write; deleted afterwards) and generates from there: each new
    token re-runs the model, and re-quantizing every tensor per token would cost a whole quantization each."""
    import tempfile

    from .eval.generate import greedy
    from .eval.tokenizer import load_tokenizer
    from .job import run_plan
    from .models import open_model

    out = {}

    def run(label: str, src) -> None:
        ctx.check()
        tok = load_tokenizer(src)
        ids = greedy(src, tok.encode(prompt), n_tokens, threads=threads, cancel=ctx.cancel)
        out[label] = tok.decode(ids)

    for p in paths:
        run(os.path.basename(p), source(p))
    for label, (plan, imp) in (plans or {}).items():
        with tempfile.TemporaryDirectory(prefix="quant-studio-generate-") as tmp:
            path = os.path.join(tmp, "plan.gguf")
            run_plan(source(base_path), plan, path, threads=threads, importances=imp, cancel=ctx.cancel)
            with open_model(path) as src:
                run(label, src)
    return out


def budget(ctx, path: str, kind: str, value: str, n_ctx: int = 4096, imatrix_path: Optional[str] = None,
           fast: bool = False, pins: Sequence[str] = (), allow: Optional[str] = None,
           threads: Optional[int] = None) -> dict:
    """core.budget: a plan with a type per tensor for a target (``kind`` "size" / "bpw" / "memory"), from
    cached or fresh measurements. Returns :func:`budget_solve`'s dict plus ``{"plan", "imatrix_path",
    "measurements", "log"}`` (the measurements let :func:`budget_solve` try other targets at once)."""
    from .budget import measure_for
    lines: list[str] = []
    meas, im = measure_for(source(path), _imatrix(imatrix_path), fast=fast, threads=threads or 2, progress=ctx.progress,
                           log=lines.append, cancel=ctx.cancel)
    out = budget_solve(ctx, path, meas, im.path, kind, value, n_ctx, pins, allow, log=lines.append)
    return out | {"plan": out["result"].plan, "imatrix_path": im.path, "measurements": meas, "log": lines}


def compare_eval(ctx, source_path: str, a: str, b: str, text_path: Optional[str] = None, n_ctx: int = 512,
                 n_chunks: int = 32, threads: Optional[int] = None):
    """The Compare view's Evaluate: both GGUF files against the model at ``source_path`` in one lockstep
    forward pass (core.eval.run.evaluate) over a text (the built-in one when None): a core.compare
    EvalComparison."""
    from .compare import EvalComparison
    from .eval.run import evaluate as run, file_candidate, prepare_chunks, read_text
    base = source(source_path)
    text, name = read_text(text_path)
    chunks = prepare_chunks(base, text, n_ctx, n_chunks)
    results = run(base, [file_candidate(p, source(p)) for p in (a, b)], chunks, threads=threads,
                  progress=ctx.progress, cancel=ctx.cancel)
    return EvalComparison(a, b, source_path, name, chunks.n_ctx, chunks.n_chunk, results)


_IMATRICES: dict = {}


def _imatrix(path: Optional[str]):
    """This process's copy of the imatrix at ``path`` (read again when the file changed); None for None."""
    if not path:
        return None
    key = (path, _stamp(path))
    if key not in _IMATRICES:
        from .imatrix import load_imatrix
        _IMATRICES.clear()
        _IMATRICES[key] = load_imatrix(path)
    return _IMATRICES[key]


def budget_solve(ctx, path: str, meas, imatrix_path: str, kind: str, value: str, n_ctx: int = 4096,
                 pins: Sequence[str] = (), allow: Optional[str] = None, chart: bool = False, log=None) -> dict:
    """core.budget.solve from measurements already made (a tenth of a second), the size counted with the
    imatrix's metadata as the studio writes it::

        {"result": BudgetResult, "predicted": its error by the model the chart uses (core.budget.predicted_error),
         "grid": core.budget.bpw_grid of its plan, "memory_overhead": KV cache + compute bytes at n_ctx,
         "chart": core.budget.frontier (with ``chart``: seconds) or None, "error": None}

    With ``chart`` a target the solver cannot meet is no failure: ``result`` is None and ``error`` says why."""
    from types import SimpleNamespace

    from .budget import bpw_grid, frontier, memory_overhead, pins_and_allow, predicted_error, solve_from_args
    from .errors import PlanError
    src, im = source(path), _imatrix(imatrix_path)
    args = SimpleNamespace(target_size=value if kind == "size" else None,
                           target_bpw=value if kind == "bpw" else None,
                           target_memory=value if kind == "memory" else None, context=n_ctx, pin=list(pins),
                           allow_types=allow)
    pins_, allow_ = pins_and_allow(args)
    extra = im.metadata()
    out = {"result": None, "predicted": None, "grid": None, "chart": None, "error": None,
           "memory_overhead": sum(memory_overhead(src.metadata, n_ctx).values())}
    try:
        res = solve_from_args(src, meas, im, args, extra_kv=extra, log=log)
        err = predicted_error(meas, res.plan)
        out.update(result=res, grid=bpw_grid(res.plan), predicted=res.predicted_kld if err is None else err)
    except PlanError as e:
        if not chart:
            raise
        out["error"] = e
    if chart:
        out["chart"] = frontier(src, meas, pins=pins_, allow=allow_, has_imatrix=True, imatrix_path=im.path,
                                extra_kv=extra, cancel=ctx.cancel)
    return out


def budget_check(ctx, path: str, plan, imatrix_path: Optional[str] = None, threads: Optional[int] = None) -> dict:
    """core.budget.check_against_preset: the plan and the llama-quantize preset nearest its size, both
    simulated on held-out chunks of the built-in text."""
    from .budget import check_against_preset
    from .eval.run import read_text
    return check_against_preset(source(path), plan, _imatrix(imatrix_path),
                                text=read_text(None)[0], threads=threads or 2, progress=ctx.progress)


def batch(ctx, path: str, items: Sequence, folder: str, template: str, imatrix_path: Optional[str] = None,
          overwrite: bool = False, threads: Optional[int] = None):
    """core.batch.run_batch: several presets or plans (``items``) of the model at ``path`` written into
    ``folder`` and verified, one after another; posts each item's ItemResult as its state changes and
    returns the BatchResult."""
    from .batch import run_batch
    return run_batch(source(path), items, folder, template, imatrix=_imatrix(imatrix_path),
                     overwrite=overwrite, threads=threads, progress=ctx.progress, cancel=ctx.cancel, on_item=ctx.post)
