"""Two quants of one model side by side (``quant-studio diff A.gguf B.gguf [--source SRC]``, the studio's
Compare view): per tensor the type, bpw and size in each file, grouped by layer, with the differences
marked; totals; metadata keys added, removed and changed; with the source model, each file's weight error
per tensor against it; and, when both were run through the forward pass against the source
(``--eval``, the view's Evaluate button), each file's PPL and KL-divergence (:class:`EvalComparison`)."""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from .chunks import row_chunks, run_chunks
from .gguf_meta import values_equal
from .progress import CancelToken, ProgressCallback, ProgressTracker, no_progress
from .sources.base import layer_of


@dataclass
class TensorDiff:
    name: str
    layer: Optional[int]
    shape: tuple
    a_type: Optional[str]                  # None: not in A
    b_type: Optional[str]
    a_bytes: int = 0
    b_bytes: int = 0
    a_rel_rmse: Optional[float] = None     # against the source
    b_rel_rmse: Optional[float] = None

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape) if self.shape else 1

    @property
    def a_bpw(self) -> Optional[float]:
        return 8.0 * self.a_bytes / self.n_elements if self.a_type else None

    @property
    def b_bpw(self) -> Optional[float]:
        return 8.0 * self.b_bytes / self.n_elements if self.b_type else None

    @property
    def differs(self) -> bool:
        return self.a_type != self.b_type


@dataclass
class Comparison:
    a: str
    b: str
    source: Optional[str]
    tensors: list[TensorDiff] = field(default_factory=list)
    added: dict = field(default_factory=dict)          # metadata keys only in B: value
    removed: dict = field(default_factory=dict)        # only in A
    changed: dict = field(default_factory=dict)        # key: (A's value, B's value)
    a_size: int = 0
    b_size: int = 0
    evaluation: Optional["EvalComparison"] = None

    @property
    def n_different(self) -> int:
        return sum(t.differs for t in self.tensors)

    def totals(self) -> dict:
        n = sum(t.n_elements for t in self.tensors)
        ab, bb = sum(t.a_bytes for t in self.tensors), sum(t.b_bytes for t in self.tensors)
        return {"tensors": len(self.tensors), "different": self.n_different, "a_tensor_bytes": ab,
                "b_tensor_bytes": bb, "a_bpw": 8.0 * ab / n if n else 0.0, "b_bpw": 8.0 * bb / n if n else 0.0,
                "a_file_size": self.a_size, "b_file_size": self.b_size}

    def metadata_lines(self, show: Callable[[Any], str]) -> list[str]:
        """The metadata differences as lines (``- key = value`` removed, ``+`` added, ``~ key: A → B``
        changed), each value written by ``show``; what the CLI prints and the Compare view shows."""
        return ([f"- {k} = {show(v)}" for k, v in self.removed.items()]
                + [f"+ {k} = {show(v)}" for k, v in self.added.items()]
                + [f"~ {k}: {show(x)} → {show(y)}" for k, (x, y) in self.changed.items()])

    def to_dict(self) -> dict:
        """Plain data (metadata values as stored: the CLI's JSON converter summarizes long arrays)."""
        return {"a": self.a, "b": self.b, "source": self.source, "totals": self.totals(),
                "metadata": {"added": self.added, "removed": self.removed,
                             "changed": {k: list(xy) for k, xy in self.changed.items()}},
                "tensors": [asdict(t) | {"shape": list(t.shape), "a_bpw": t.a_bpw, "b_bpw": t.b_bpw,
                                         "differs": t.differs} for t in self.tensors]}


@dataclass
class EvalComparison:
    """Both files evaluated against the source in one lockstep forward pass (``core.eval.run.evaluate``, run
    by the CLI and ``core.tasks.compare_eval``: core.eval sits above this module): ``results`` are its
    EvalResults, A's then B's, over ``n_chunk`` chunks of ``n_ctx`` tokens of the text named ``text``."""

    a: str
    b: str
    source: str
    text: str
    n_ctx: int
    n_chunk: int
    results: list = field(default_factory=list)

    def result(self, which: str):
        """The EvalResult of file ``"A"`` or ``"B"``."""
        return self.results["AB".index(which)]

    @property
    def base(self) -> tuple[float, float]:
        """(PPL, its error) of the source over the same tokens."""
        k = self.results[0].kld
        return k.ppl_base, k.ppl_base_err

    @property
    def closer(self) -> Optional[str]:
        """``"A"`` or ``"B"``: the file whose mean KLD against the source is lower, when the intervals
        (± one standard error) do not overlap; None when they do."""
        ka, kb = (r.kld for r in self.results)
        if abs(ka.kld_mean - kb.kld_mean) <= ka.kld_err + kb.kld_err:
            return None
        return "A" if ka.kld_mean < kb.kld_mean else "B"


def rel_rmse(model, source, name: str, threads: int = 1, cancel: Optional[CancelToken] = None) -> Optional[float]:
    """Relative RMSE of ``model``'s tensor ``name`` (decoded) against ``source``'s, in row chunks;
    None where the source lacks it or its shape differs."""
    if name not in source or tuple(source.tensor(name).shape) != tuple(model.tensor(name).shape):
        return None
    t = model.tensor(name)
    acc = np.zeros(2)

    def work(a: int, b: int):
        x = source.read_rows(name, a, b).astype(np.float64)
        d = model.read_rows(name, a, b).astype(np.float64) - x
        ok = np.isfinite(d) & np.isfinite(x)
        return float(np.where(ok, d * d, 0).sum()), float(np.where(ok, x * x, 0).sum())

    def done(_i, r) -> None:
        acc[:] += r

    run_chunks(work, row_chunks(t.n_rows, t.row_len), threads=threads, cancel=cancel, done=done)
    return float(math.sqrt(acc[0] / acc[1])) if acc[1] > 0 else 0.0


def compare(a, b, source=None, *, threads: int = 1, progress: ProgressCallback = no_progress,
            cancel: Optional[CancelToken] = None) -> Comparison:
    """Compare two opened GGUF models (``core.models.open_model``), optionally against their source."""
    out = Comparison(a.path, b.path, getattr(source, "path", None),
                     a_size=_file_size(a.path), b_size=_file_size(b.path))
    ma = {k.key: k.value for k in a.kv}
    mb = {k.key: k.value for k in b.kv}
    out.added = {k: mb[k] for k in mb if k not in ma}
    out.removed = {k: ma[k] for k in ma if k not in mb}
    out.changed = {k: (ma[k], mb[k]) for k in ma if k in mb and not values_equal(ma[k], mb[k])}
    names = [t.name for t in a.tensors] + [t.name for t in b.tensors if t.name not in a]
    tracker = ProgressTracker(progress, len(names), "compare")
    for n in names:
        ta = a.tensor(n) if n in a else None
        tb = b.tensor(n) if n in b else None
        shape = tuple((ta or tb).shape)
        d = TensorDiff(n, layer_of(n), shape, ta.dtype if ta else None, tb.dtype if tb else None,
                       ta.nbytes if ta else 0, tb.nbytes if tb else 0)
        if source is not None:
            if ta is not None and ta.ggml_type is not None:
                d.a_rel_rmse = rel_rmse(a, source, n, threads, cancel)
            if tb is not None and tb.ggml_type is not None:
                d.b_rel_rmse = rel_rmse(b, source, n, threads, cancel)
        out.tensors.append(d)
        tracker.advance(1, n)
    out.tensors.sort(key=lambda t: (-1 if t.layer is None else t.layer, t.name))
    return out


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
