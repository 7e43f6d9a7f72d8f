"""Importance-matrix statistics collected exactly as ``llama-imatrix`` collects them, and written in its formats.

What llama.cpp collects (tools/imatrix/imatrix.cpp ``IMatrixCollector::collect_imatrix``), for every matrix
multiplication of a weight ``W`` (GGUF name, e.g. ``blk.3.ffn_down.weight``) by activations ``x``
(float32, one row of ``n_in`` values per token):

- which: every ``MUL_MAT`` whose weight name starts with ``blk.`` (plus ``output.weight`` with
  ``--process-output``) and whose activation batch has at least 16 rows ("small batches ignored"), and every
  ``MUL_MAT_ID`` (expert weights ``blk.N.ffn_*_exps.weight``, 3-D) whatever its name or size. The token
  embedding is a row lookup, not a matmul: it never has an entry.
- dense: ``values[j] += x[t, j]**2`` over the tokens, ``counts = [n_tokens]`` (one count per weight);
- experts: for every token ``t`` and every selected slot ``k`` with expert ``e = ids[t, k]``:
  ``values[e, j] += x[t, k, j]**2`` (``x[t, 0, j]`` when the input is shared by the slots, as for
  ``ffn_gate_exps``/``ffn_up_exps``) and ``counts[e] += 1``: one count per expert, ``n_expert`` rows of values;
- a non-finite sum stops the run (llama.cpp exits; here QuantStudioError naming the tensor);
- ``imatrix.chunk_count`` is the largest count divided by ``chunk_size`` (``n_ctx / n_parallel``), rounded
  down (``m_last_chunk``); ``imatrix.chunk_size`` is ``chunk_size``; ``imatrix.datasets`` the text files.

GGUF output (``save_imatrix``): ``general.type = "imatrix"``, the three ``imatrix.*`` keys, and per weight in
name order ``<name>.in_sum2`` (F32, ggml ne ``(n_in, n_mat)``: raw sums) and ``<name>.counts`` (F32, ne
``(1, n_mat)``: raw token counts, read back with ``lround``). Legacy ``.dat`` (``save_imatrix_legacy``): see
core/imatrix.py, whose ``ImatrixData.write_dat`` is reused here (written to ``NAME.partial``, then renamed).

Additions, ignored by llama.cpp's loader (it keeps only ``*.in_sum2``/``*.counts`` tensors and the three keys):

- ``<name>.in_sum``: Σx per input column, same shape as ``in_sum2`` (llama.cpp's open PR #14891 proposes it
  for activation statistics: ``in_sum / counts`` is the mean activation per channel);
- provenance keys ``quant_studio.imatrix.*``: dataset name, SHA-256 of the text, context, chunks, tokens,
  model. The ``.dat`` format has room for the dataset name only.

Precision: sums are accumulated in float64 and stored as float32 (llama.cpp accumulates in float32 in token
order; the two differ by float32 rounding only).
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Iterable, Optional

import numpy as np
from gguf.constants import GGMLQuantizationType, GGUFValueType

from ..errors import OutputError, QuantStudioError
from ..gguf_meta import KV, make_kv
from ..imatrix import KEY_CHUNK_COUNT, KEY_CHUNK_SIZE, KEY_DATASETS, ImatrixData, ImatrixEntry

MIN_ROWS = 16                       # collect_imatrix: "why are small batches ignored (<16 tokens)?"
SUFFIX_SUM2, SUFFIX_COUNTS, SUFFIX_SUM = ".in_sum2", ".counts", ".in_sum"
KEY_PREFIX = "quant_studio.imatrix."
_EXPERTS = re.compile(r"\.ffn_(gate|up|down|gate_up)_exps\.weight$")


def text_sha256(text: "str | bytes") -> str:
    return hashlib.sha256(text.encode("utf-8") if isinstance(text, str) else bytes(text)).hexdigest()


@dataclass
class Provenance:
    """Where the statistics came from; written as ``quant_studio.imatrix.*`` keys (and ``imatrix.datasets``)."""

    dataset: str = ""               # a file name or a data set's name
    text_sha256: str = ""           # of the text as tokenized (see text_sha256)
    n_ctx: int = 0
    n_chunks: int = 0               # chunks evaluated
    n_tokens: int = 0               # tokens evaluated (n_chunks * n_ctx)
    model: str = ""                 # the model's file name or id

    def kv(self) -> list[KV]:
        out = []
        for k, v in (("dataset", self.dataset), ("text_sha256", self.text_sha256), ("model", self.model)):
            if v:
                out.append(make_kv(KEY_PREFIX + k, str(v), GGUFValueType.STRING))
        for k, v in (("n_ctx", self.n_ctx), ("n_chunks", self.n_chunks)):
            out.append(make_kv(KEY_PREFIX + k, int(v), GGUFValueType.UINT32))
        out.append(make_kv(KEY_PREFIX + "n_tokens", int(self.n_tokens), GGUFValueType.UINT64))
        return out


@dataclass
class _Stat:
    sum2: np.ndarray                # float64 (n_mat, n_in)
    sum1: np.ndarray                # float64 (n_mat, n_in)
    counts: np.ndarray              # int64 (n_mat,)


@dataclass
class ImatrixCollector:
    """Accumulates Σx², Σx and token counts per weight. Feed it from the forward pass's hook:
    ``on_linear_input(name, x)`` for dense weights (``x`` float32 ``(n_tokens, n_in)``) and
    :meth:`add_experts` for ``MUL_MAT_ID`` weights.

    ``chunk_size``: llama-imatrix's ``n_ctx / n_parallel`` (the context of the chunks fed);
    ``process_output``: also collect ``output.weight`` (``--process-output``)."""

    chunk_size: int
    process_output: bool = False
    stats: dict[str, _Stat] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)     # from loaded files (llama-imatrix's m_datasets)

    # -- which tensors -------------------------------------------------------------------------
    def wants(self, name: str, n_rows: int = MIN_ROWS) -> bool:
        """Whether llama-imatrix collects a dense matmul of weight ``name`` over ``n_rows`` tokens."""
        if n_rows < MIN_ROWS:
            return False
        return name.startswith("blk.") or (self.process_output and name == "output.weight")

    @staticmethod
    def is_expert(name: str) -> bool:
        return bool(_EXPERTS.search(name))

    # -- feeding --------------------------------------------------------------------------------
    def on_linear_input(self, name: str, x: np.ndarray) -> None:
        """A dense matmul's input ``x`` (``(n_tokens, n_in)``; more leading dims are flattened into tokens,
        as llama.cpp flattens 3-D+ activations of a 2-D weight). Ignored when llama-imatrix would ignore it."""
        x = np.asarray(x)
        x2 = x.reshape(-1, x.shape[-1])
        if not self.wants(name, x2.shape[0]):
            return
        xd = x2.astype(np.float64)
        st = self._stat(name, 1, x2.shape[1])
        st.sum2[0] += np.einsum("ij,ij->j", xd, xd)
        st.sum1[0] += xd.sum(axis=0)
        st.counts[0] += x2.shape[0]
        self._check_finite(name, st)

    __call__ = on_linear_input

    def add_experts(self, name: str, x: np.ndarray, ids: np.ndarray, n_expert: int) -> None:
        """A ``MUL_MAT_ID`` input: ``ids`` int ``(n_tokens, n_used)`` the experts chosen per token; ``x``
        ``(n_tokens, n_used, n_in)`` (one input per slot, as for ``ffn_down_exps``) or ``(n_tokens, n_in)`` /
        ``(n_tokens, 1, n_in)`` (shared by the slots, as for ``ffn_gate_exps``/``ffn_up_exps``)."""
        ids = np.asarray(ids).astype(np.int64)
        if ids.ndim == 1:
            ids = ids[:, None]
        x = np.asarray(x)
        if x.ndim == 2:
            x = x[:, None, :]
        n_tok, n_used = ids.shape
        if x.shape[0] != n_tok or x.shape[1] not in (1, n_used):
            raise QuantStudioError(f"'{name}': expert inputs {x.shape} do not match routing ids {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= n_expert):
            raise QuantStudioError(f"'{name}': expert id out of range 0..{n_expert - 1}")
        st = self._stat(name, n_expert, x.shape[2])
        rows = np.broadcast_to(x, (n_tok, n_used, x.shape[2])).reshape(-1, x.shape[2]).astype(np.float64)
        flat = ids.reshape(-1)
        order = np.argsort(flat, kind="stable")
        experts, starts = np.unique(flat[order], return_index=True)
        if experts.size:
            r = rows[order]
            st.sum2[experts] += np.add.reduceat(r * r, starts, axis=0)
            st.sum1[experts] += np.add.reduceat(r, starts, axis=0)
            st.counts += np.bincount(flat, minlength=n_expert)
        self._check_finite(name, st)

    def _stat(self, name: str, n_mat: int, n_in: int) -> _Stat:
        st = self.stats.get(name)
        if st is None:
            st = self.stats[name] = _Stat(np.zeros((n_mat, n_in)), np.zeros((n_mat, n_in)),
                                          np.zeros(n_mat, dtype=np.int64))
        elif st.sum2.shape != (n_mat, n_in):
            raise QuantStudioError(f"inconsistent size for '{name}': {st.sum2.shape} then {(n_mat, n_in)}")
        return st

    @staticmethod
    def _check_finite(name: str, st: _Stat) -> None:
        if not np.isfinite(st.sum2).all():
            raise QuantStudioError(f"non-finite activations in '{name}'")

    def merge(self, other: "ImatrixCollector") -> None:
        """Add another collector's statistics (e.g. from a worker process)."""
        for name, o in other.stats.items():
            st = self._stat(name, *o.sum2.shape)
            st.sum2 += o.sum2
            st.sum1 += o.sum1
            st.counts += o.counts

    def load(self, path: "str | os.PathLike") -> None:
        """Add an imatrix file's statistics, as ``llama-imatrix --in-file`` does (``load_imatrix``): GGUF raw
        sums and counts (and ``in_sum`` when present); legacy ``.dat`` values and ``ncall`` times
        ``chunk_size``; the file's datasets are kept (written before the new one, as llama-imatrix does)."""
        from ..imatrix import load_imatrix

        data = load_imatrix(path)
        sums1 = read_in_sum(path) if data.format == "gguf" else {}
        for name, e in data.entries.items():
            if e.legacy:
                n_mat, n_in = 1, e.sums.size
                s2 = e.sums.astype(np.float64).reshape(1, -1) * self.chunk_size
                c = np.array([int(e.counts[0]) * self.chunk_size], dtype=np.int64)
            else:
                n_mat = e.counts.size
                n_in = e.sums.size // n_mat
                s2 = e.sums.astype(np.float64).reshape(n_mat, n_in)
                c = e.counts.astype(np.int64)
            old = self.stats.get(name)
            if old is not None and old.counts.size == 1 and n_mat > 1:   # broadcast an old single count
                old.counts = np.full(n_mat, old.counts[0], dtype=np.int64)
                if old.sum2.shape[0] == 1 and old.sum2.size == n_mat * n_in:
                    old.sum2, old.sum1 = old.sum2.reshape(n_mat, n_in), old.sum1.reshape(n_mat, n_in)
            st = self._stat(name, n_mat, n_in)
            st.sum2 += s2
            st.counts += c
            if name in sums1 and sums1[name].size == st.sum1.size:
                st.sum1 += sums1[name].astype(np.float64).reshape(st.sum1.shape)
        self.datasets += list(data.datasets)

    # -- results --------------------------------------------------------------------------------
    @property
    def chunk_count(self) -> int:
        """llama-imatrix's ``m_last_chunk``: the largest count over ``chunk_size``, rounded down."""
        m = max((int(s.counts.max()) for s in self.stats.values() if s.counts.size), default=0)
        return m // self.chunk_size if self.chunk_size > 0 else 0

    def mean(self, name: str) -> np.ndarray:
        """Mean activation per input channel (``in_sum / count``), ``(n_mat, n_in)``; NaN where no token."""
        st = self.stats[name]
        with np.errstate(invalid="ignore", divide="ignore"):
            return st.sum1 / st.counts[:, None]

    def to_imatrix(self, datasets: Iterable[str] = ()) -> ImatrixData:
        """The ``in_sum2``/``counts`` part as core.imatrix's object (what the quantizer consumes)."""
        entries = {n: ImatrixEntry(n, s.sum2.astype(np.float32).reshape(-1), s.counts.copy())
                   for n, s in sorted(self.stats.items())}
        return ImatrixData(entries, list(datasets), self.chunk_count, self.chunk_size, None, "gguf", True)

    # -- writers ----------------------------------------------------------------------------------
    def write_gguf(self, path: "str | os.PathLike", provenance: Optional[Provenance] = None,
                   datasets: Optional[Iterable[str]] = None, with_in_sum: bool = True) -> str:
        """llama-imatrix's GGUF (plus ``in_sum`` and provenance), written to ``NAME.partial`` then renamed.
        ``datasets``: ``imatrix.datasets`` (default: the provenance's dataset)."""
        from ..gguf_out import GGUFLayout, GGUFStreamWriter, OutTensor

        path = os.fspath(path)
        prov = provenance or Provenance()
        ds = list(datasets) if datasets is not None else self.datasets + ([prov.dataset] if prov.dataset else [])
        kv = [make_kv("general.type", "imatrix"),
              KV(KEY_DATASETS, ds, GGUFValueType.ARRAY, GGUFValueType.STRING),
              make_kv(KEY_CHUNK_COUNT, self.chunk_count, GGUFValueType.UINT32),
              make_kv(KEY_CHUNK_SIZE, int(self.chunk_size), GGUFValueType.UINT32)]
        kv += prov.kv()
        data: list[tuple[str, np.ndarray]] = []
        for name in sorted(self.stats):
            st = self.stats[name]
            data.append((name + SUFFIX_SUM2, _ggml_dims(st.sum2.astype(np.float32))))
            data.append((name + SUFFIX_COUNTS, _ggml_dims(st.counts.astype(np.float32).reshape(-1, 1))))
            if with_in_sum:
                data.append((name + SUFFIX_SUM, _ggml_dims(st.sum1.astype(np.float32))))
        if not data:
            raise QuantStudioError("no activations were collected: nothing to write")
        tensors = [OutTensor(n, tuple(a.shape), GGMLQuantizationType.F32) for n, a in data]
        with GGUFStreamWriter(GGUFLayout(path, kv, tensors)) as w:
            for n, a in data:
                w.write(n, a)
        return path

    def write_dat(self, path: "str | os.PathLike", dataset: str = "") -> str:
        """llama-imatrix's legacy ``.dat`` (``--output-format dat``), written to ``NAME.partial`` then renamed."""
        path = os.fspath(path)
        if not self.stats:
            raise QuantStudioError("no activations were collected: nothing to write")
        part = path + ".partial"
        try:
            self.to_imatrix(self.datasets + ([dataset] if dataset else [])).write_dat(part)
            os.replace(part, path)
        except OSError as e:
            raise OutputError(f"cannot write: {e.strerror or e}", path) from None
        finally:
            if os.path.exists(part):
                os.remove(part)
        return path

    def save(self, path: "str | os.PathLike", provenance: Optional[Provenance] = None) -> str:
        """GGUF for ``*.gguf``, else legacy ``.dat`` (llama-imatrix's own rule for its output)."""
        if os.fspath(path).lower().endswith(".gguf"):
            return self.write_gguf(path, provenance)
        return self.write_dat(path, provenance.dataset if provenance else "")


def _ggml_dims(a: np.ndarray) -> np.ndarray:
    """Drop leading size-1 dims (numpy order): ggml writes ``ggml_n_dims`` dimensions."""
    shape = list(a.shape)
    while len(shape) > 1 and shape[0] == 1:
        shape.pop(0)
    return np.ascontiguousarray(a.reshape(shape))


def read_in_sum(path: "str | os.PathLike") -> dict[str, np.ndarray]:
    """The ``<name>.in_sum`` tensors of an imatrix GGUF, ``{name: float32 (n_mat, n_in)}`` (empty if none)."""
    from gguf import GGUFReader

    out = {}
    for t in GGUFReader(os.fspath(path)).tensors:
        if t.name.endswith(SUFFIX_SUM):
            ne = [int(v) for v in t.shape]
            out[t.name[:-len(SUFFIX_SUM)]] = np.asarray(t.data, dtype=np.float32).reshape(-1, ne[0])
    return out

