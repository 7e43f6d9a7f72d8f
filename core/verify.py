"""Is a written GGUF sound? ``quant-studio verify FILE [--source SRC] [--imatrix F]``, ``quantize --verify``
and the studio's check after every run.

1. Structure, read by an independent reader (gguf-py's ``GGUFReader``) and by ours: the two must agree
   on every metadata key and value and on every tensor's name, type, shape, offset and size; every
   tensor's data is aligned, inside the file and overlaps no other.
2. Every tensor decodes; NaN/Inf values are a defect unless the source has them in that tensor.
3. With the source: each tensor's error against it, row by row, next to the error of the same type
   requantized from the source by our kernels (byte-identical to llama.cpp's). A row whose error is
   far above that (a flipped block, a tensor written in another's place) is a defect and names the
   tensor. The requantization uses the importance weights the file was made with when they are known:
   given (``importances``), or from an imatrix whose ``quantize.imatrix.*`` metadata the file carries
   (``imatrix``, or the file that metadata names, when it exists). A type whose quantizer needs them
   (IQ2_XXS, IQ2_XS, IQ1_S) is otherwise requantized with uniform weights -- an approximation of the
   file's error, so its rows are held to a looser factor. Types we cannot write are only checked for a
   plausible error. Each tensor's ``check`` says which of these it got.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
from numba import njit

from .chunks import row_chunks, run_chunks
from .errors import QuantStudioError, SourceError
from .gguf_meta import values_equal
from .kernels import default_threads, get_kernel
from .progress import CancelToken, ProgressCallback, ProgressTracker, no_progress
from .qtypes import FLOAT_TYPES, KERNEL_FAMILY, REQUIRES_IMATRIX

ROW_FACTOR = 4.0                 # a row whose squared error exceeds this many times the expected one is flagged
ROW_SLACK = 1e-6                 # ... plus this fraction of the row's energy (rounding of lossless copies)
# against a requantization with uniform weights (an approximation of an imatrix-made file's error): rows may
# have up to ~11x the squared error of it on the synthetic model with skewed weights, whole tensors ~1.2x the RMSE
APPROX_ROW_FACTOR = 32.0
APPROX_TENSOR_FACTOR = 1.5
IMPLAUSIBLE_REL_RMSE = 0.5       # without a kernel to compare with: more error than this is a defect
CHUNK = 1 << 20

CHECK_EXACT = "requantized"
CHECK_FILE_IMATRIX = "requantized (with the imatrix named in the file)"
CHECK_UNIFORM = "requantized (uniform weights, approximate)"
CHECK_NO_IMATRIX = "requantized (without the file's imatrix, approximate)"
CHECK_PLAUSIBLE = "plausibility"
CHECK_DECODE = "decode only"
IMATRIX_KEYS = ("quantize.imatrix.dataset", "quantize.imatrix.entries_count", "quantize.imatrix.chunks_count")


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
    check: str = ""                            # which check the error got (CHECK_*; "" for an unknown type)


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


def _fast_reader():
    """gguf-py's GGUFReader, parsing as it does but on a plain ndarray view of its memmap (slicing an
    np.memmap costs a Python-level ``__array_finalize__`` per value read) and with its ``_get`` cut to
    the same slice-and-view without per-call dtype construction, and an array of strings read string by
    string without a recursive call each: 5x faster on a 49k-token vocabulary, the same fields."""
    from gguf import GGUFReader, GGUFValueType

    ARRAY, STRING = int(GGUFValueType.ARRAY), int(GGUFValueType.STRING)
    dtypes: dict = {}

    class Reader(GGUFReader):
        @property
        def data(self):
            return self._plain

        @data.setter
        def data(self, v):
            self._plain = v.view(np.ndarray)

        def _get(self, offset, dtype, count=1, override_order=None):
            count = int(count)
            dt = dtypes.get(dtype)
            if dt is None:
                dt = dtypes[dtype] = np.dtype(dtype)
            arr = self._plain[offset:offset + dt.itemsize * count].view(dt)[:count]
            order = self.byte_order if override_order is None else override_order
            return arr if order == "I" else arr.view(arr.dtype.newbyteorder(order))

        def _get_field_parts(self, orig_offs, raw_type):
            # an array of strings (a vocabulary, merges): gguf-py's parts, each string by its own _get_str,
            # without its recursion per element
            if raw_type == ARRAY and self._get(orig_offs, np.uint32)[0] == STRING:
                raw_itype, alen = self._get(orig_offs, np.uint32), self._get(orig_offs + 4, np.uint64)
                n = int(alen[0])
                if n:
                    parts, offs = [raw_itype, alen], orig_offs + 12
                    for _ in range(n):
                        slen, sdata = self._get_str(offs)
                        parts += (slen, sdata)
                        offs += int(slen.nbytes + sdata.nbytes)
                    return offs - orig_offs, parts, list(range(3, 2 * n + 2, 2)), [GGUFValueType.ARRAY,
                                                                                   GGUFValueType.STRING]
            return super()._get_field_parts(orig_offs, raw_type)

    return Reader


def _structure(path: str, ours, file_size: int) -> list[str]:
    """gguf-py's view of the file against ours; alignment, bounds and overlaps of the tensor data."""
    problems: list[str] = []
    try:
        r = _fast_reader()(path, "r")
    except Exception as e:  # noqa: BLE001 - whatever the independent reader rejects is a defect
        return [f"gguf-py cannot read the file: {type(e).__name__}: {e}"]
    fields = {k: f for k, f in r.fields.items() if not k.startswith("GGUF.")}
    mine = {k.key: k.value for k in ours.kv}
    if set(fields) != set(mine):
        odd = sorted(set(fields) ^ set(mine))
        problems.append(f"metadata keys differ between gguf-py and our reader: {odd[:5]}")
    for k in sorted(set(fields) & set(mine)):
        if not values_equal(fields[k].contents(), mine[k]):
            problems.append(f"metadata '{k}' reads differently in gguf-py and our reader")
    theirs = {t.name: t for t in r.tensors}
    if set(theirs) != {t.name for t in ours.tensors} or len(r.tensors) != len(ours.tensors):
        problems.append("the tensor lists of gguf-py and our reader differ")
    align = int(ours.alignment)
    spans = []
    for t in ours.tensors:
        off, nbytes = ours.data_span(t.name)
        g = theirs.get(t.name)
        if g is None:
            continue
        if (g.tensor_type != t.ggml_type or tuple(int(x) for x in reversed(g.shape)) != tuple(t.shape)
                or int(g.data_offset) != off or int(g.n_bytes) != nbytes):
            problems.append(f"'{t.name}': gguf-py reads another type, shape, offset or size")
        if off % align:
            problems.append(f"'{t.name}': data at offset {off} is not aligned to {align}")
        if off + nbytes > file_size:
            problems.append(f"'{t.name}': data ends at {off + nbytes}, past the end of the file ({file_size})")
        spans.append((off, off + nbytes, t.name))
    spans.sort()
    for (a0, a1, an), (b0, _, bn) in zip(spans, spans[1:]):
        if b0 < a1:
            problems.append(f"the data of '{an}' and '{bn}' overlap")
    return problems


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _row_sums(x, y, err, energy):
    """Per row, in float64: ``err[r]`` = sum of (y - x)^2 where both are finite, ``energy[r]`` = sum of
    x^2 where x is finite. Returns (non-finite values in y, non-finite values in x). A row is summed
    first without tests (vectorized; float32 values squared cannot overflow a float64 sum), again with
    them only when that sum is not finite."""
    nf_y = 0
    nf_x = 0
    nrows, n = x.shape
    for r in range(nrows):
        se = 0.0
        sx = 0.0
        for j in range(n):
            xv = np.float64(x[r, j])
            d = np.float64(y[r, j]) - xv
            se += d * d
            sx += xv * xv
        if np.isfinite(se) and np.isfinite(sx):
            err[r] = se
            energy[r] = sx
            continue
        se = 0.0
        sx = 0.0
        for j in range(n):
            xv = np.float64(x[r, j])
            yv = np.float64(y[r, j])
            fx = np.isfinite(xv)
            fy = np.isfinite(yv)
            if not fx:
                nf_x += 1
            if not fy:
                nf_y += 1
            if fx:
                sx += xv * xv
                if fy:
                    d = yv - xv
                    se += d * d
        err[r] = se
        energy[r] = sx
    return nf_y, nf_x


def _check_tensor(ours, name: str, source, threads: int, tracker, cancel, importance=None,
                  check: str = CHECK_EXACT) -> TensorCheck:
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
    kernel = get_kernel(info.ggml_type) if src is not None and info.ggml_type in KERNEL_FAMILY else None
    n_rows, row_len = info.n_rows, info.row_len
    factor = ROW_FACTOR
    if kernel is not None and importance is None and info.ggml_type in REQUIRES_IMATRIX:
        importance, check, factor = np.ones(row_len, np.float32), CHECK_UNIFORM, APPROX_ROW_FACTOR
    if info.ggml_type in FLOAT_TYPES:           # a float copy is the same with or without weights
        check = CHECK_EXACT
    tc.check = CHECK_DECODE if src is None else check if kernel is not None else CHECK_PLAUSIBLE
    rows_per = n_rows // info.shape[0] if info.n_dims == 3 else n_rows
    raw = ours.raw(name) if kernel is not None else None    # the written rows, to compare with the requantized
    raw = raw.reshape(n_rows, -1) if raw is not None and raw.size == info.nbytes and n_rows else None
    sums = np.zeros(4)                          # nonfinite, err, expected err, energy
    src_nonfinite = [0]
    bad = [0]

    def work(a: int, b: int):
        y = ours.read_rows(name, a, b)
        if src is None:
            return y.size - int(np.count_nonzero(np.isfinite(y))), 0.0, 0.0, 0.0, 0, 0
        x = np.ascontiguousarray(src.read_rows(name, a, b), dtype=np.float32)
        err, energy = np.empty(b - a), np.empty(b - a)
        nf, snf = _row_sums(x, np.ascontiguousarray(y, dtype=np.float32), err, energy)
        if kernel is None or snf:
            return nf, float(err.sum()), 0.0, float(energy.sum()), 0, snf
        qw = importance
        if qw is not None and qw.ndim == 2:         # per-expert importance weights: (n_expert, row_len)
            qw = qw[a // rows_per]
        q = kernel.quantize(x, qw).reshape(b - a, -1)
        exp = err.copy()                             # a row written as requantized has exactly its error
        differ = np.flatnonzero((q != raw[a:b]).any(axis=1)) if raw is not None else np.arange(b - a)
        if differ.size:
            z = kernel.dequantize(q[differ], row_len).reshape(differ.size, row_len)
            sub, scratch = np.empty(differ.size), np.empty(differ.size)
            _row_sums(x[differ], z, sub, scratch)
            exp[differ] = sub
        nbad = int(np.count_nonzero(err > factor * exp + ROW_SLACK * energy + 1e-30))
        return nf, float(err.sum()), float(exp.sum()), float(energy.sum()), nbad, snf

    def done(_i: int, r) -> None:
        nf, err, exp, energy, nbad, snf = r
        sums[:] += (nf, err, exp, energy)
        bad[0] += nbad
        src_nonfinite[0] += snf

    # at least two chunks per thread where the tensor allows: a model's matrices are often under CHUNK weights
    chunk = min(CHUNK, max(row_len, -(-info.n_elements // (2 * threads))))
    bounds = row_chunks(n_rows, row_len, chunk, rows_per)
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
    elif (tc.check == CHECK_UNIFORM and tc.rel_rmse is not None
          and tc.rel_rmse > APPROX_TENSOR_FACTOR * tc.expected_rel_rmse + 1e-12):
        tc.problem = (f"rel. RMSE {tc.rel_rmse:.3g} against the source, {info.dtype} gives about "
                      f"{tc.expected_rel_rmse:.3g}: not this tensor's data")
    elif kernel is None and tc.rel_rmse is not None and tc.rel_rmse > IMPLAUSIBLE_REL_RMSE:
        tc.problem = f"rel. RMSE {tc.rel_rmse:.3g} against the source: not this tensor's data"
    return tc


def _made_with(metadata: dict, imatrix) -> bool:
    """Whether a file's ``quantize.imatrix.*`` metadata is that ``imatrix`` writes (its file name aside)."""
    if imatrix is None or "quantize.imatrix.entries_count" not in metadata:
        return False
    theirs = {k.key: k.value for k in imatrix.metadata()}
    return all(metadata.get(k) == theirs.get(k) for k in IMATRIX_KEYS)


def _named_imatrix(path: str, metadata: dict):
    """The imatrix the file's ``quantize.imatrix.file`` names, when it exists (as given or next to the
    file) and its metadata is the file's; else None."""
    from .imatrix import load_imatrix
    name = metadata.get("quantize.imatrix.file")
    if not isinstance(name, str) or not name:
        return None
    for p in dict.fromkeys((name, os.path.join(os.path.dirname(os.path.abspath(path)), name))):
        if os.path.isfile(p):
            try:
                data = load_imatrix(p)
            except QuantStudioError:
                continue
            if _made_with(metadata, data):
                return data
    return None


def verify(path: str, source=None, *, threads: Optional[int] = None, progress: ProgressCallback = no_progress,
           cancel: Optional[CancelToken] = None, importances: Optional[dict] = None,
           imatrix=None) -> VerifyReport:
    """Check the GGUF file at ``path`` (and, with ``source`` -- a ModelSource -- its error per tensor).
    ``importances``: a tensor's name -> the importance weights it was quantized with (as core.job.run_plan).
    ``imatrix``: an ImatrixData that may have made the file; its weights are used when the file's
    ``quantize.imatrix.*`` metadata says so (and no ``importances`` are given)."""
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
        report.problems += _structure(path, ours, report.file_size)
        check = CHECK_EXACT
        if importances is None and source is not None and "quantize.imatrix.entries_count" in ours.metadata:
            data = imatrix if _made_with(ours.metadata, imatrix) else _named_imatrix(path, ours.metadata)
            check = CHECK_NO_IMATRIX
            try:
                if data is not None:
                    importances = data.arrays_for([source.tensor(t.name) for t in ours.tensors if t.name in source])
                    check = CHECK_EXACT if data is imatrix else CHECK_FILE_IMATRIX
            except QuantStudioError:            # a mis-sized entry: not the imatrix that made this file
                pass
        threads = threads or default_threads()
        tracker = ProgressTracker(progress, sum(t.n_elements for t in ours.tensors), "verify")
        for t in ours.tensors:
            (cancel or CancelToken()).check()
            w = (importances or {}).get(t.name)
            report.tensors.append(_check_tensor(ours, t.name, source, threads, tracker, cancel,
                                                None if w is None else np.ascontiguousarray(w, dtype=np.float32),
                                                check if w is not None or check == CHECK_NO_IMATRIX else CHECK_EXACT))
    return report
