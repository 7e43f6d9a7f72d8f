"""Is a written GGUF sound? ``quant-studio verify FILE [--source SRC]``, ``quantize --verify`` and the
studio's check after every run.

1. Structure, read by an independent reader (gguf-py's ``GGUFReader``) and by ours: the two must agree
   on every metadata key and value and on every tensor's name, type, shape, offset and size; every
   tensor's data is aligned, inside the file and overlaps no other.
2. Every tensor decodes; NaN/Inf values are a defect unless the source has them in that tensor.
3. With the source: each tensor's error against it, row by row, next to the error of the same type
   requantized from the source by our kernels (byte-identical to llama.cpp's). A row whose error is
   far above that (a flipped block, a tensor written in another's place) is a defect and names the
   tensor. Types we cannot write are only checked for a plausible error.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from .chunks import row_chunks, run_chunks
from .errors import QuantStudioError, SourceError
from .gguf_meta import values_equal
from .kernels import default_threads, get_kernel
from .progress import CancelToken, ProgressCallback, ProgressTracker, no_progress
from .qtypes import KERNEL_FAMILY

ROW_FACTOR = 4.0                 # a row whose squared error exceeds this many times the expected one is flagged
ROW_SLACK = 1e-6                 # ... plus this fraction of the row's energy (rounding of lossless copies)
IMPLAUSIBLE_REL_RMSE = 0.5       # without a kernel to compare with: more error than this is a defect
CHUNK = 1 << 20


@dataclass
class TensorCheck:
    name: str
    type: str
    shape: tuple
    offset: int
    nbytes: int
    nonfinite: int = 0
    rel_rmse: Optional[float] = None          # against the source
    expected_rel_rmse: Optional[float] = None  # the same type requantized from the source
    bad_rows: int = 0
    problem: str = ""


@dataclass
class VerifyReport:
    path: str
    file_size: int
    source: Optional[str] = None
    problems: list[str] = field(default_factory=list)        # file-level defects
    tensors: list[TensorCheck] = field(default_factory=list)

    @property
    def defects(self) -> list[str]:
        return self.problems + [f"{t.name}: {t.problem}" for t in self.tensors if t.problem]

    @property
    def ok(self) -> bool:
        return not self.defects

    def to_dict(self) -> dict:
        return {"path": self.path, "file_size": self.file_size, "source": self.source, "ok": self.ok,
                "defects": self.defects, "tensors": [asdict(t) | {"shape": list(t.shape)} for t in self.tensors]}


def _structure(path: str, ours, report: VerifyReport) -> None:
    """gguf-py's view of the file against ours; alignment, bounds and overlaps of the tensor data."""
    from gguf import GGUFReader
    try:
        r = GGUFReader(path, "r")
    except Exception as e:  # noqa: BLE001 - whatever the independent reader rejects is a defect
        report.problems.append(f"gguf-py cannot read the file: {type(e).__name__}: {e}")
        return
    fields = {k: f for k, f in r.fields.items() if not k.startswith("GGUF.")}
    mine = {k.key: k.value for k in ours.kv}
    if set(fields) != set(mine):
        odd = sorted(set(fields) ^ set(mine))
        report.problems.append(f"metadata keys differ between gguf-py and our reader: {odd[:5]}")
    for k in sorted(set(fields) & set(mine)):
        if not values_equal(fields[k].contents(), mine[k]):
            report.problems.append(f"metadata '{k}' reads differently in gguf-py and our reader")
    theirs = {t.name: t for t in r.tensors}
    if set(theirs) != {t.name for t in ours.tensors} or len(r.tensors) != len(ours.tensors):
        report.problems.append("the tensor lists of gguf-py and our reader differ")
    align = int(ours.alignment)
    spans = []
    for t in ours.tensors:
        off, nbytes = ours.data_span(t.name)
        g = theirs.get(t.name)
        if g is None:
            continue
        if (g.tensor_type != t.ggml_type or tuple(int(x) for x in reversed(g.shape)) != tuple(t.shape)
                or int(g.data_offset) != off or int(g.n_bytes) != nbytes):
            report.problems.append(f"'{t.name}': gguf-py reads another type, shape, offset or size")
        if off % align:
            report.problems.append(f"'{t.name}': data at offset {off} is not aligned to {align}")
        if off + nbytes > report.file_size:
            report.problems.append(f"'{t.name}': data ends at {off + nbytes}, past the end of the file "
                                   f"({report.file_size})")
        spans.append((off, off + nbytes, t.name))
    spans.sort()
    for (a0, a1, an), (b0, _, bn) in zip(spans, spans[1:]):
        if b0 < a1:
            report.problems.append(f"the data of '{an}' and '{bn}' overlap")


def _check_tensor(ours, name: str, source, threads: int, tracker, cancel) -> TensorCheck:
    info = ours.tensor(name)
    tc = TensorCheck(name, info.dtype, tuple(info.shape), *ours.data_span(name))
    if info.ggml_type is None:
        return tc
    src = None
    if source is not None:
        if name not in source:
            tc.problem = "not in the source"
        elif tuple(source.tensor(name).shape) != tuple(info.shape):
            tc.problem = f"shape {list(info.shape)} differs from the source's {list(source.tensor(name).shape)}"
        else:
            src = source
    kernel = get_kernel(info.ggml_type) if (src is not None and info.ggml_type in KERNEL_FAMILY) else None
    n_rows, row_len = info.n_rows, info.row_len
    rows_per = n_rows // info.shape[0] if info.n_dims == 3 else n_rows
    sums = np.zeros(4)                          # nonfinite, err, expected err, energy
    src_nonfinite = [0]
    bad = [0]

    def work(a: int, b: int):
        y = ours.read_rows(name, a, b)
        finite = np.isfinite(y)
        nf = y.size - int(np.count_nonzero(finite))
        if src is None:
            return nf, 0.0, 0.0, 0.0, 0, 0
        x = np.ascontiguousarray(src.read_rows(name, a, b), dtype=np.float32)
        xf = np.isfinite(x)
        snf = x.size - int(np.count_nonzero(xf))
        x64 = np.where(xf, x, 0).astype(np.float64)
        d = np.where(finite & xf, y.astype(np.float64) - x64, 0.0)
        err = (d * d).sum(axis=1)
        energy = (x64 * x64).sum(axis=1)
        if kernel is not None and snf == 0:
            q = kernel.quantize(x)
            z = kernel.dequantize(q, row_len).reshape(x.shape).astype(np.float64) - x64
            exp = (z * z).sum(axis=1)
            nbad = int(np.count_nonzero(err > ROW_FACTOR * exp + ROW_SLACK * energy + 1e-30))
        else:
            exp = np.zeros_like(err)
            nbad = 0
        return nf, float(err.sum()), float(exp.sum()), float(energy.sum()), nbad, snf

    def done(_i: int, r) -> None:
        nf, err, exp, energy, nbad, snf = r
        sums[:] += (nf, err, exp, energy)
        bad[0] += nbad
        src_nonfinite[0] += snf

    bounds = row_chunks(n_rows, row_len, CHUNK, rows_per)
    try:
        run_chunks(work, bounds, threads=threads, cancel=cancel, done=done)
    except QuantStudioError as ex:
        tc.problem = f"cannot be decoded: {ex.message}"
        return tc
    tracker.advance(info.n_elements, name, info.n_elements, info.n_elements)
    tc.nonfinite, tc.bad_rows = int(sums[0]), bad[0]
    if src is not None and sums[3] > 0:
        tc.rel_rmse = float(np.sqrt(sums[1] / sums[3]))
        tc.expected_rel_rmse = float(np.sqrt(sums[2] / sums[3])) if kernel is not None else None
    if tc.problem:
        return tc
    if tc.nonfinite and (src is None or src_nonfinite[0] == 0):
        tc.problem = f"{tc.nonfinite} NaN/Inf values" + (" the source does not have" if src is not None else "")
    elif tc.bad_rows:
        tc.problem = (f"{tc.bad_rows} of {n_rows} rows have far more error than {info.dtype} gives "
                      f"(rel. RMSE {tc.rel_rmse:.4g}, expected {tc.expected_rel_rmse:.4g}): corrupted or misplaced data")
    elif kernel is None and tc.rel_rmse is not None and tc.rel_rmse > IMPLAUSIBLE_REL_RMSE:
        tc.problem = f"rel. RMSE {tc.rel_rmse:.3g} against the source: not this tensor's data"
    return tc


def verify(path: str, source=None, *, threads: Optional[int] = None, progress: ProgressCallback = no_progress,
           cancel: Optional[CancelToken] = None) -> VerifyReport:
    """Check the GGUF file at ``path`` (and, with ``source`` -- a ModelSource -- its error per tensor)."""
    from .sources import open_file
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SourceError("no such file", path)
    report = VerifyReport(path, os.path.getsize(path), getattr(source, "path", None))
    try:
        ours = open_file(path, whole_split=False)          # this one file, even a shard of a split
    except QuantStudioError as e:
        report.problems.append(f"cannot be read: {e.message}")
        return report
    with ours:
        if getattr(ours, "kind", "") != "gguf":
            raise SourceError("not a GGUF file", path)
        _structure(path, ours, report)
        threads = threads or default_threads()
        tracker = ProgressTracker(progress, sum(t.n_elements for t in ours.tensors), "verify")
        for t in ours.tensors:
            (cancel or CancelToken()).check()
            report.tensors.append(_check_tensor(ours, t.name, source, threads, tracker, cancel))
    return report
