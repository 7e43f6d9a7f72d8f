"""Batch export: several presets or plans of one model in one run (``quant-studio batch``, the studio's
Quantize › Batch export…).

Each item -- a llama-quantize preset, or a plan (a :class:`~core.plan.Plan` or its saved JSON) -- is
written by :func:`core.job.run_plan` (``NAME.partial``, renamed at the end) to a name made from a
template, then checked by :func:`core.verify.verify` against the source, one item after another. One
progress stream covers the whole batch: its ``done``/``total`` count bytes of the predicted output files
(each item's share split between writing and verifying), ``stage`` says which of the two, ``item`` names
the batch item and the tensor, ``item_done``/``item_total`` the item's own share.

What is refused before anything is written: an unknown preset, an unreadable plan file, a template
that gives no file name, two items with the same file name, an existing file (unless ``overwrite``),
the input as an output. What fails one item -- a preset needing an importance matrix when none is given
(llama.cpp refuses it too), a type whose blocks the rows cannot take, a write error -- is reported on
that item and the batch goes on. A cancel stops at the next chunk: the file being written leaves no
``.partial`` behind, files finished before stay (the :class:`~core.errors.Cancelled` raised carries the
:class:`BatchResult` so far as ``.result``).
"""
from __future__ import annotations

import copy
import os
import string
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence, Union

from .errors import Cancelled, OutputError, PlanError, QuantStudioError
from .imatrix import imatrix_inputs
from .job import run_plan
from .plan import Plan, make_plan, predict_size
from .progress import CancelToken, Progress, ProgressCallback, no_progress
from .rules import PlanRules
from .verify import verify as verify_file

DEFAULT_TEMPLATE = "{model}-{preset}.gguf"
FIELDS = ("model", "preset", "type")
# of an item's progress, verifying's share: it decodes the file and the source and requantizes every tensor; on the
# demo (bench/bench_verify.py, 2 loaded cores) verify takes 1.5-3x run_plan's time for Q8_0/Q4_0/Q4_K_M/Q6_K
VERIFY_SHARE = 0.65


@dataclass
class BatchItem:
    """One file of a batch: ``label`` is the template's ``{preset}`` (a preset's name, a plan's name)."""

    label: str
    preset: Optional[str] = None           # a llama-quantize preset, planned for the model at run time
    plan: Optional[Plan] = None            # or a ready plan

    @property
    def kind(self) -> str:
        return "preset" if self.plan is None else "plan"


@dataclass
class ItemResult:
    """What became of one item. ``state``: waiting, quantizing, verifying, then verified, defects (the
    file was written and verify named defects), written (complete but not verified: cancelled meanwhile), failed
    (``error`` says why) or cancelled (nothing of it is left)."""

    index: int
    label: str
    kind: str
    path: str
    state: str = "waiting"
    predicted: int = 0                     # predicted file size, bytes (0 when the plan could not be made)
    size: int = 0                          # written file size, bytes
    bpw: float = 0.0                       # bits per weight of the tensors
    seconds: float = 0.0                   # writing and verifying
    error: str = ""
    defects: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)     # the plan's, the imatrix match's

    @property
    def ok(self) -> bool:
        return self.state == "verified"

    @property
    def verdict(self) -> str:
        """One phrase for a table: the verify verdict, or the error."""
        if self.state == "verified":
            return "sound"
        if self.state == "defects":
            return f"{len(self.defects)} defects: {self.defects[0]}" if self.defects else "defects"
        if self.state == "written":
            return "written, not verified (cancelled)"
        return self.error or self.state


@dataclass
class BatchResult:
    source: str
    folder: str
    template: str
    items: list[ItemResult]
    seconds: float = 0.0
    cancelled: bool = False

    @property
    def ok(self) -> bool:
        """Every file was written and verified sound."""
        return not self.cancelled and all(r.ok for r in self.items)

    def to_dict(self) -> dict:
        return {"source": self.source, "folder": self.folder, "template": self.template, "ok": self.ok,
                "cancelled": self.cancelled, "seconds": self.seconds,
                "items": [asdict(r) | {"ok": r.ok, "verdict": r.verdict} for r in self.items]}


# ----------------------------------------------------------------------------- items and names
def plan_label(plan: Plan) -> str:
    """A name for a plan with no file name: its preset, ``-custom`` when rules or edits change it."""
    r = plan.rules
    custom = (r.rules or r.keep or r.manual or r.token_embedding_type or r.output_tensor_type
              or r.leave_output_tensor)
    return plan.preset + ("-pure" if r.pure else "") + ("-custom" if custom else "")


def preset_item(name: str) -> BatchItem:
    from .presets import PRESETS
    if name not in PRESETS:
        raise PlanError(f"unknown preset '{name}' (llama-quantize's: {', '.join(PRESETS)})")
    return BatchItem(name, preset=name)


def plan_item(path: str) -> BatchItem:
    """A plan saved as JSON, named by its file (``my.plan.json`` is ``my``)."""
    label = os.path.basename(path)
    for ext in (".json", ".plan"):
        if label.lower().endswith(ext):
            label = label[:-len(ext)]
    return BatchItem(label, plan=Plan.read(path))


def batch_item(spec: Union[str, Plan, BatchItem]) -> BatchItem:
    """A preset's name, a plan JSON's path (see :func:`plan_item`) or a Plan (see :func:`plan_label`)."""
    from .presets import PRESETS
    if isinstance(spec, BatchItem):
        return spec
    if isinstance(spec, Plan):
        return BatchItem(plan_label(spec), plan=spec)
    if spec not in PRESETS and (spec.lower().endswith(".json") or os.path.isfile(spec)):
        return plan_item(spec)
    return preset_item(spec)


def model_name(path: str) -> str:
    """The template's ``{model}``: the source's base name without its extension (a folder: its name)."""
    base = os.path.basename(os.path.normpath(path))
    for ext in (".gguf", ".safetensors"):
        if base.lower().endswith(ext):
            return base[:-len(ext)]
    return base


def file_name(template: str, model: str, item: BatchItem) -> str:
    """``template`` filled for ``item``; ``{type}`` is the plan's file type (its preset's name)."""
    fields = {"model": model, "preset": item.label,
              "type": item.plan.preset if item.plan is not None else item.preset}
    try:
        used = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise PlanError(f"bad file-name template '{template}': {e}") from None
    odd = sorted(used - set(FIELDS))
    if odd:
        raise PlanError(f"the file-name template '{template}' has unknown field {{{odd[0]}}} "
                        f"(use {', '.join('{' + f + '}' for f in FIELDS)})")
    name = template.format(**fields)
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise PlanError(f"the file-name template '{template}' must give a file name (got '{name}')")
    return name


def output_paths(source_path: str, items: Sequence[BatchItem], folder: str, template: str = DEFAULT_TEMPLATE,
                 overwrite: bool = False) -> list[str]:
    """Each item's output path; PlanError when two items get one name, OutputError for an existing file
    (unless ``overwrite``) or the input itself."""
    if not items:
        raise PlanError("nothing to export: give at least one preset or plan")
    model = model_name(source_path)
    paths = [os.path.join(folder, file_name(template, model, it)) for it in items]
    seen: dict[str, BatchItem] = {}
    for it, p in zip(items, paths):
        key = os.path.normcase(os.path.abspath(p))
        if key in seen:
            raise PlanError(f"'{seen[key].label}' and '{it.label}' would both be written to "
                            f"{os.path.basename(p)}: change the file-name template")
        seen[key] = it
        if key == os.path.normcase(os.path.abspath(source_path)):
            raise OutputError("the output would overwrite the input", p)
        if os.path.exists(p) and not overwrite:
            raise OutputError("exists (allow overwriting to replace it)", p)
    return paths


# ----------------------------------------------------------------------------- running
def _plan_for(source, item: BatchItem, imatrix) -> Plan:
    if item.plan is not None:
        plan = item.plan
        plan.check_fits(source.tensors)
    else:
        plan = make_plan(source.tensors, source.metadata,
                         PlanRules.make(item.preset, has_imatrix=imatrix is not None,
                                        imatrix_path=getattr(imatrix, "path", None)))
    plan.check_imatrix(imatrix is not None)
    return plan


class _Stream:
    """The batch's one progress stream: bytes of predicted output, each item's share split between
    writing and verifying."""

    def __init__(self, callback: ProgressCallback, weights: list[int]):
        self.callback, self.weights = callback, weights
        self.total = sum(weights)
        self.before = 0                   # units of the items already over
        self.start = time.perf_counter()

    def event(self, i: int, label: str, stage: str, fraction: float, what: str = "", message: str = "") -> None:
        w = self.weights[i]
        share = (1 - VERIFY_SHARE) * fraction if stage == "quantize" else (1 - VERIFY_SHARE) + VERIFY_SHARE * fraction
        own = int(round(w * min(1.0, share)))
        self.callback(Progress(self.before + own, self.total, stage, f"{label}: {what}" if what else label, own, w,
                               time.perf_counter() - self.start, message))

    def sub(self, i: int, label: str, stage: str) -> ProgressCallback:
        return lambda ev: self.event(i, label, stage, ev.fraction, ev.item)

    def close(self, i: int, label: str, message: str) -> None:
        """Item ``i`` is over (written and verified, or failed): its whole share is done."""
        self.before += self.weights[i]
        self.callback(Progress(self.before, self.total, "done", label, self.weights[i], self.weights[i],
                               time.perf_counter() - self.start, message))


def run_batch(source, items: Sequence[Union[str, Plan, BatchItem]], folder: str, template: str = DEFAULT_TEMPLATE, *,
              imatrix=None, overwrite: bool = False, threads: Optional[int] = None,
              progress: ProgressCallback = no_progress, cancel: Optional[CancelToken] = None,
              on_item: Optional[Callable[[ItemResult], None]] = None) -> BatchResult:
    """Write every item of ``items`` for ``source`` (a ModelSource) into ``folder`` (made when missing), named
    by ``template``, and verify each file against ``source``. ``imatrix``: an ImatrixData shared by every item.
    ``on_item`` gets a copy of an item's :class:`ItemResult` whenever its state changes."""
    cancel = cancel or CancelToken()
    folder = os.fspath(folder)
    its = [batch_item(s) for s in items]
    paths = output_paths(source.path, its, folder, template, overwrite)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise OutputError("the output folder is a file", folder)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot make the output folder: {e.strerror or e}", folder) from None
    extra = imatrix.metadata(os.path.basename(imatrix.path or "")) if imatrix is not None else None
    results = [ItemResult(i, it.label, it.kind, p) for i, (it, p) in enumerate(zip(its, paths))]
    plans: list[Optional[Plan]] = []
    for it, r in zip(its, results):                     # every plan first: the sizes weigh the progress
        try:
            plan = _plan_for(source, it, imatrix)
            r.predicted = predict_size(plan, source, extra_kv=extra).total
        except QuantStudioError as e:
            plan, r.state, r.error = None, "failed", e.message
        plans.append(plan)
    stream = _Stream(progress, [max(r.predicted, 1) for r in results])
    batch = BatchResult(source.path, folder, template, results)
    t0 = time.perf_counter()

    def tell(r: ItemResult) -> None:
        if on_item is not None:
            on_item(copy.deepcopy(r))

    for r in results:
        tell(r)
    for i, (plan, r) in enumerate(zip(plans, results)):
        if plan is not None:
            try:
                _run_item(source, plan, r, imatrix, stream, threads, cancel, tell)
            except Cancelled:
                r.state = "written" if r.state == "verifying" else "cancelled"
                for later in results[i + 1:]:
                    later.state = later.state if later.state == "failed" else "cancelled"
                batch.cancelled, batch.seconds = True, time.perf_counter() - t0
                for x in results[i:]:
                    tell(x)
                kept = [os.path.basename(x.path) for x in results if x.state in ("verified", "defects", "written")]
                err = Cancelled("cancelled by the user; no partial file is left"
                                + (f"; the files finished before stay: {', '.join(kept)}" if kept else ""), folder)
                err.result = batch
                raise err from None
        stream.close(i, r.label, f"{r.label}: {r.verdict}")
        if plan is not None:                            # one that failed to plan was told so at the start
            tell(r)
    batch.seconds = time.perf_counter() - t0
    return batch


def _run_item(source, plan, r: ItemResult, imatrix, stream: _Stream, threads, cancel, tell) -> None:
    t0 = time.perf_counter()
    try:
        importances, extra, warnings = imatrix_inputs(source, plan, imatrix)
        r.warnings = list(plan.warnings) + warnings
        r.state = "quantizing"
        tell(r)
        job = run_plan(source, plan, r.path, threads=threads, importances=importances, extra_kv=extra,
                       progress=stream.sub(r.index, r.label, "quantize"), cancel=cancel)
        r.size, r.bpw = job.size, job.bpw
        r.state = "verifying"
        tell(r)
        report = verify_file(r.path, source, threads=threads, progress=stream.sub(r.index, r.label, "verify"),
                             cancel=cancel, importances=importances)
        r.defects = report.defects
        r.state = "verified" if report.ok else "defects"
    except Cancelled:
        raise
    except QuantStudioError as e:
        r.state, r.error = "failed", e.message
    finally:
        r.seconds = time.perf_counter() - t0


__all__ = ["BatchItem", "BatchResult", "ItemResult", "DEFAULT_TEMPLATE", "batch_item", "file_name",
           "model_name", "output_paths", "plan_item", "plan_label", "preset_item", "run_batch"]
