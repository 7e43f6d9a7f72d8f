"""Importance matrices (llama.cpp ``--imatrix``): read, match to tensors, write, make.

Two file formats, both read the way llama.cpp's ``common_imatrix_load`` reads them:

- legacy ``.dat``: int32 entry count, then per entry int32 name length, the name,
  int32 ``ncall``, int32 ``nval``, ``nval`` float32 values (mean squared activation
  times ``ncall``); optional trailer: int32 chunk count, int32 length + dataset name.
- GGUF: per weight ``<name>.in_sum2`` (F32, ggml ne ``(row_len * n_mat / n_counts, n_counts)``:
  sums of squared activations) and ``<name>.counts`` (F32, ne ``(1, n_counts)``: tokens
  seen; one count for a dense weight, one per expert otherwise), metadata
  ``imatrix.datasets`` (string array), ``imatrix.chunk_count``, ``imatrix.chunk_size`` (u32).

The importance vector of a weight is what llama-quantize's ``load_imatrix`` derives:
GGUF ``in_sum2 / count`` per matrix (a matrix with count 0 gets ones), legacy
``values / ncall`` (values unchanged when ``ncall <= 0``), all float32. A 3-D (expert)
weight takes ``(n_expert, row_len)``: expert ``e`` quantizes with row ``e``.
"""
from __future__ import annotations

import hashlib
import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
from gguf.constants import GGMLQuantizationType, GGUFValueType

from .errors import PlanError, SourceError
from .gguf_meta import KV, make_kv

KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
# Written by llama-quantize into the quantized model (tools/quantize/quantize.cpp).
KEY_Q_FILE = "quantize.imatrix.file"
KEY_Q_DATASET = "quantize.imatrix.dataset"
KEY_Q_ENTRIES = "quantize.imatrix.entries_count"
KEY_Q_CHUNKS = "quantize.imatrix.chunks_count"

DEFAULT_CHUNK_SIZE = 512          # llama-imatrix's n_ctx / n_parallel by default
_MAX_NAME = 4096                  # longest plausible tensor name in a .dat file (ggml allows 64)
_SUM2, _COUNTS = ".in_sum2", ".counts"


@dataclass(eq=False)
class ImatrixEntry:
    """One weight's statistics as stored. ``sums`` float32 flat (``n_mat * row_len``);
    ``counts`` int64: per matrix token counts (GGUF) or ``[ncall]`` (legacy)."""

    name: str
    sums: np.ndarray
    counts: np.ndarray
    legacy: bool = False

    @property
    def size(self) -> int:
        return int(self.sums.size)

    @property
    def weights(self) -> np.ndarray:
        """The importance vector (float32, flat) exactly as llama-quantize computes it."""
        s = self.sums.astype(np.float32, copy=False)
        if self.legacy:
            ncall = int(self.counts[0]) if self.counts.size else 0
            return s.copy() if ncall <= 0 else s / np.float32(ncall)
        n = self.counts.size
        out = np.ones_like(s).reshape(n, -1)
        c = self.counts.astype(np.float32)
        ok = c > 0
        out[ok] = s.reshape(n, -1)[ok] / c[ok, None]
        return out.reshape(-1)


@dataclass
class MisSized:
    name: str
    expected: int       # row_len * n_expert of the tensor
    got: int            # values in the imatrix entry
    fatal: bool         # False for token_embd, which llama-quantize quantizes without it instead

    def __str__(self) -> str:
        return (f"imatrix entry '{self.name}' has {self.got} values, the tensor needs {self.expected}"
                + ("" if self.fatal else " (ignored for the token embedding, as llama-quantize does)"))


@dataclass
class ImatrixMatch:
    """How an imatrix fits a model: tensors with an entry, without one, entries of the wrong size,
    and entries that name no tensor of the model."""

    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    mis_sized: list[MisSized] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        return [str(m) for m in self.mis_sized if m.fatal]

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_for_errors(self) -> None:
        """PlanError for the first mis-sized entry llama-quantize would stop on."""
        if self.errors:
            more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
            raise PlanError(self.errors[0] + more)

    def summary(self) -> str:
        return (f"{len(self.matched)} tensors matched, {len(self.missing)} without an entry, "
                f"{len(self.mis_sized)} mis-sized, {len(self.unused)} entries unused")


def _is_token_embd(name: str) -> bool:
    return name in ("token_embd.weight", "per_layer_token_embd.weight")


def expected_size(shape: Sequence[int]) -> int:
    """Values an imatrix entry needs for a tensor of numpy ``shape``: row length x experts (ne0*ne2)."""
    shape = tuple(shape)
    n_mat = shape[-3] if len(shape) >= 3 else 1
    return int(shape[-1]) * int(n_mat)


@dataclass(eq=False)
class ImatrixData:
    """A loaded importance matrix. ``chunk_count`` is what llama-quantize reports as chunks;
    ``chunk_size`` is 0 for legacy files (they do not store it)."""

    entries: dict[str, ImatrixEntry]
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    path: Optional[str] = None
    format: str = "gguf"               # "gguf" | "dat"
    has_metadata: bool = True
    _id: Optional[str] = field(default=None, repr=False)

    # -- lookup -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def weights(self, name: str) -> Optional[np.ndarray]:
        e = self.entries.get(name)
        return None if e is None else e.weights

    def for_tensor(self, name: str, shape: Sequence[int]) -> Optional[np.ndarray]:
        """Importance for a tensor: ``(row_len,)`` for 2-D, ``(n_expert, row_len)`` for 3-D; None if
        absent or mis-sized for the token embedding (as llama-quantize); PlanError if mis-sized."""
        e = self.entries.get(name)
        if e is None:
            return None
        need = expected_size(shape)
        if e.size != need:
            m = MisSized(name, need, e.size, not _is_token_embd(name))
            if m.fatal:
                raise PlanError(str(m))
            return None
        w = e.weights
        return w.reshape(shape[-3], shape[-1]) if len(shape) >= 3 else w

    def arrays_for(self, tensors: Iterable, names: Optional[Iterable[str]] = None) -> dict[str, np.ndarray]:
        """``{name: importance}`` (shaped as :meth:`for_tensor`) for the tensors that have a usable
        entry, as core.job.run_plan takes it; PlanError on the first fatally mis-sized entry."""
        want = set(names) if names is not None else None
        out = {}
        for t in tensors:
            if want is not None and t.name not in want:
                continue
            w = self.for_tensor(t.name, t.shape)
            if w is not None:
                out[t.name] = w
        return out

    @property
    def id(self) -> str:
        """Content hash (names, sums, counts): a cache key that changes when the data does."""
        if self._id is None:
            h = hashlib.blake2b(digest_size=12)
            for name in sorted(self.entries):
                e = self.entries[name]
                h.update(name.encode() + b"\0" + bytes([e.legacy]))
                h.update(np.ascontiguousarray(e.sums, dtype=np.float32).tobytes())
                h.update(np.ascontiguousarray(e.counts, dtype=np.int64).tobytes())
            self._id = h.hexdigest()
        return self._id

    def select(self, include: Iterable[str] = (), exclude: Iterable[str] = ()) -> "ImatrixData":
        """Entries kept as llama-quantize's ``--include-weights``/``--exclude-weights`` (substrings)."""
        names = [n for n in self.entries if not any(s in n for s in exclude)]
        include = list(include)
        if include:
            names = [n for n in names if any(s in n for s in include)]
        return ImatrixData({n: self.entries[n] for n in names}, list(self.datasets), self.chunk_count,
                           self.chunk_size, self.path, self.format, self.has_metadata)

    # -- matching -------------------------------------------------------------------------
    def match(self, tensors: Iterable, names: Optional[Iterable[str]] = None,
              rename: Optional[Callable[[str], str]] = None) -> ImatrixMatch:
        """Check entries against a model's tensors (a ModelSource or TensorInfo list).

        ``names``: the tensors that will be quantized (default: every tensor llama.cpp would
        quantize); ``rename``: maps a tensor name to its GGUF name (for Hugging Face sources)."""
        from .presets import allows_quantization

        infos = list(tensors)
        arch = getattr(tensors, "architecture", None)
        if names is None:
            want = {t.name for t in infos if allows_quantization(t.name, t.n_dims, arch)}
        else:
            want = set(names)
        rep = ImatrixMatch()
        used = set()
        for t in infos:
            key = rename(t.name) if rename else t.name
            if key in self.entries:
                used.add(key)
            if t.name not in want:
                continue
            e = self.entries.get(key)
            if e is None:
                rep.missing.append(t.name)
                continue
            need = expected_size(t.shape)
            if e.size != need:
                rep.mis_sized.append(MisSized(t.name, need, e.size, not _is_token_embd(key)))
            else:
                rep.matched.append(t.name)
        rep.unused = sorted(set(self.entries) - used)
        return rep

    # -- output metadata ------------------------------------------------------------------
    def metadata(self, file_name: Optional[str] = None) -> list[KV]:
        """The ``quantize.imatrix.*`` entries llama-quantize adds to its output (strings cut to 127
        bytes as its strncpy does; counts as UINT32)."""
        fname = file_name if file_name is not None else (self.path or "")
        kv = [_str_kv(KEY_Q_FILE, fname)]
        if self.datasets:
            kv.append(_str_kv(KEY_Q_DATASET, self.datasets[0]))
        kv.append(make_kv(KEY_Q_ENTRIES, len(self.entries), GGUFValueType.UINT32))
        if self.chunk_count > 0:
            kv.append(make_kv(KEY_Q_CHUNKS, int(self.chunk_count), GGUFValueType.UINT32))
        return kv

    # -- conversions between the two stored forms -----------------------------------------
    def _raw_gguf(self, e: ImatrixEntry) -> tuple[np.ndarray, np.ndarray]:
        """(sums, counts) as llama-imatrix holds them after loading ``e`` (legacy x chunk_size)."""
        if not e.legacy:
            return e.sums.astype(np.float32), e.counts.astype(np.int64)
        cs = self.chunk_size or DEFAULT_CHUNK_SIZE
        ncall = int(e.counts[0]) if e.counts.size else 0
        return e.sums.astype(np.float32) * np.float32(cs), np.array([ncall * cs], dtype=np.int64)

    def _legacy_values(self, e: ImatrixEntry) -> Optional[tuple[int, np.ndarray]]:
        """(ncall, values) as llama-imatrix's save_imatrix_legacy writes ``e``; None: no data."""
        if e.legacy:
            return int(e.counts[0]), e.sums.astype(np.float32)
        counts = e.counts.astype(np.int64)
        if counts.size == 0 or not counts.any():
            return None
        cs = self.chunk_size or DEFAULT_CHUNK_SIZE
        ncall = int((counts.max() + cs - 1) // cs)
        vals = e.sums.astype(np.float32).reshape(counts.size, -1).copy()
        c = np.broadcast_to(counts.astype(np.float32)[:, None], vals.shape).copy()
        zero = c == 0
        vals[zero], c[zero] = 1.0, 1.0
        return ncall, ((vals / c) * np.float32(ncall)).astype(np.float32).reshape(-1)

    # -- writers --------------------------------------------------------------------------
    def write_gguf(self, path: "str | os.PathLike") -> str:
        """Write llama-imatrix's GGUF format (tensors in name order, in_sum2 then counts)."""
        from .gguf_out import GGUFLayout, GGUFStreamWriter, OutTensor

        path = os.fspath(path)
        kv = [make_kv("general.type", "imatrix"),
              KV(KEY_DATASETS, list(self.datasets), GGUFValueType.ARRAY, GGUFValueType.STRING),
              make_kv(KEY_CHUNK_COUNT, int(self.chunk_count), GGUFValueType.UINT32),
              make_kv(KEY_CHUNK_SIZE, int(self.chunk_size or DEFAULT_CHUNK_SIZE), GGUFValueType.UINT32)]
        data: list[tuple[str, np.ndarray]] = []
        for name in sorted(self.entries):
            sums, counts = self._raw_gguf(self.entries[name])
            if sums.size == 0 or counts.size == 0:
                continue
            data.append((name + _SUM2, _ggml_dims(sums.reshape(counts.size, -1))))
            data.append((name + _COUNTS, _ggml_dims(counts.astype(np.float32).reshape(-1, 1))))
        tensors = [OutTensor(n, tuple(a.shape), GGMLQuantizationType.F32) for n, a in data]
        with GGUFStreamWriter(GGUFLayout(path, kv, tensors)) as w:
            for n, a in data:
                w.write(n, a)
        return path

    def write_dat(self, path: "str | os.PathLike") -> str:
        """Write the legacy ``.dat`` format (entries without data skipped, as llama-imatrix does)."""
        path = os.fspath(path)
        parts = []
        n = 0
        for name in sorted(self.entries):
            lv = self._legacy_values(self.entries[name])
            if lv is None:
                continue
            ncall, vals = lv
            b = name.encode("utf-8")
            parts.append(struct.pack("<i", len(b)) + b + struct.pack("<ii", ncall, vals.size)
                         + vals.astype("<f4").tobytes())
            n += 1
        ds = (self.datasets[-1] if self.datasets else "").encode("utf-8")
        blob = (struct.pack("<i", n) + b"".join(parts) + struct.pack("<i", int(self.chunk_count))
                + struct.pack("<i", len(ds)) + ds)
        try:
            with open(path, "wb") as f:
                f.write(blob)
        except OSError as e:
            from .errors import OutputError
            raise OutputError(f"cannot write: {e.strerror or e}", path) from None
        return path

    def save(self, path: "str | os.PathLike") -> str:
        """Write GGUF for ``*.gguf``, else legacy ``.dat`` (llama-imatrix's own rule for the output)."""
        return self.write_gguf(path) if os.fspath(path).lower().endswith(".gguf") else self.write_dat(path)

    # -- making one -----------------------------------------------------------------------
    @classmethod
    def from_activations(cls, acts: Mapping[str, np.ndarray], datasets: Sequence[str] = ("synthetic",),
                         chunk_size: int = DEFAULT_CHUNK_SIZE) -> "ImatrixData":
        """Sums of squared activations per input column, as llama-imatrix collects them.

        ``acts[name]``: ``(n_tokens, row_len)`` for a dense weight, ``(n_expert, n_tokens, row_len)``
        for an expert weight (one count per expert)."""
        entries = {}
        max_count = 0
        for name, a in acts.items():
            a = np.asarray(a, dtype=np.float64)
            if a.ndim == 2:
                sums, counts = (a * a).sum(axis=0), np.array([a.shape[0]], dtype=np.int64)
            elif a.ndim == 3:
                sums, counts = (a * a).sum(axis=1), np.full(a.shape[0], a.shape[1], dtype=np.int64)
            else:
                raise ValueError(f"activations for '{name}' must be 2-D or 3-D, got shape {a.shape}")
            entries[name] = ImatrixEntry(name, sums.astype(np.float32).reshape(-1), counts)
            max_count = max(max_count, int(counts.max()))
        return cls(entries, list(datasets), max_count // chunk_size, chunk_size, None, "gguf", True)

    @classmethod
    def random_for(cls, tensors: Iterable, n_tokens: int = 64, seed: int = 0,
                   names: Optional[Iterable[str]] = None) -> "ImatrixData":
        """A small imatrix from random heavy-tailed activations for every quantizable weight of a
        model (tests, demos): per column a log-normal scale, a few outlier columns."""
        from .presets import allows_quantization

        infos = list(tensors)
        arch = getattr(tensors, "architecture", None)
        want = set(names) if names is not None else {t.name for t in infos
                                                     if allows_quantization(t.name, t.n_dims, arch)}
        rng = np.random.default_rng(seed)
        acts = {}
        for t in infos:
            if t.name not in want or _is_token_embd(t.name):
                continue
            n = t.row_len
            scale = np.exp(rng.normal(0.0, 0.5, n))
            scale[rng.choice(n, max(1, n // 100), replace=False)] *= 10.0
            lead = (t.shape[-3],) if t.n_dims >= 3 else ()
            acts[t.name] = rng.standard_normal(lead + (n_tokens, n)) * scale
        return cls.from_activations(acts, datasets=(f"random(seed={seed}, tokens={n_tokens})",),
                                    chunk_size=n_tokens)


def _ggml_dims(a: np.ndarray) -> np.ndarray:
    """Drop leading size-1 dims (numpy order), as ggml writes ``ggml_n_dims`` dimensions."""
    shape = list(a.shape)
    while len(shape) > 1 and shape[0] == 1:
        shape.pop(0)
    return a.reshape(shape)


def _str_kv(key: str, value: str) -> KV:
    b = value.encode("utf-8")[:127]
    raw = struct.pack("<IQ", int(GGUFValueType.STRING), len(b)) + b
    return KV(key, b.decode("utf-8", errors="replace"), GGUFValueType.STRING, raw=raw)


# -- reading ------------------------------------------------------------------------------
def imatrix_inputs(source, plan, imatrix: Optional[ImatrixData]) -> tuple[Optional[dict], Optional[list], list[str]]:
    """What a run of ``plan`` (a core.plan.Plan) over ``source`` takes from ``imatrix``, as ``quantize --imatrix``
    passes it: (the importance weights per quantized tensor, the ``quantize.imatrix.*`` metadata, warnings);
    PlanError for a mis-sized entry; (None, None, []) without an imatrix."""
    if imatrix is None:
        return None, None, []
    names = [e.name for e in plan.entries if e.quantize]
    match = imatrix.match(source.tensors, names)
    match.raise_for_errors()
    # llama-imatrix never records the token embedding (a lookup, not a matrix product): not worth a warning
    missing = [n for n in match.missing if not _is_token_embd(n)]
    warn = [f"imatrix has no entry for {len(missing)} quantized tensors (first: {missing[0]})"] if missing else []
    return (imatrix.arrays_for(source.tensors, names), imatrix.metadata(os.path.basename(imatrix.path or "")),
            warn)


def load_imatrix(path: "str | os.PathLike") -> ImatrixData:
    """Read a GGUF or legacy ``.dat`` imatrix; SourceError (naming the file) when it cannot."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise SourceError("no such imatrix file", path)
    if os.path.isdir(path):
        raise SourceError("is a folder, not an imatrix file", path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            blob = None if head == b"GGUF" else head + f.read()
    except OSError as e:
        raise SourceError(f"cannot open imatrix: {e.strerror or e}", path) from None
    data = _read_gguf(path) if blob is None else _read_dat(path, blob)
    for e in data.entries.values():
        if not np.all(np.isfinite(e.weights)):
            raise SourceError(f"imatrix entry '{e.name}' contains non-finite values", path)
    return data


def _read_gguf(path: str) -> ImatrixData:
    from .sources.gguf_header import parse_header

    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        h = parse_header(path, mm)
        meta = {k.key: k for k in h.kv}
        pairs: dict[str, list] = {}
        for t in h.tensors:
            for suffix, slot in ((_SUM2, 0), (_COUNTS, 1)):
                if t.name.endswith(suffix) and len(t.name) > len(suffix):
                    pairs.setdefault(t.name[:-len(suffix)], [None, None])[slot] = t
        if not pairs:
            raise SourceError(f"GGUF file has no imatrix entries (no '*{_SUM2}'/'*{_COUNTS}' tensors; "
                              f"{len(h.tensors)} other tensors): not an imatrix", path)
        entries = {}
        for name in sorted(pairs):
            s, c = pairs[name]
            if s is None or c is None:
                raise SourceError(f"imatrix entry '{name}' has {'no ' + _SUM2 if s is None else 'no ' + _COUNTS}"
                                  f" tensor", path)
            for t in (s, c):
                if t.qtype != GGMLQuantizationType.F32:
                    raise SourceError(f"imatrix tensor '{t.name}' is {t.qtype.name}, expected F32", path)
            sums = np.frombuffer(mm, dtype="<f4", count=s.nbytes // 4, offset=s.offset).astype(np.float32)
            counts = np.frombuffer(mm, dtype="<f4", count=c.nbytes // 4, offset=c.offset)
            c64 = counts.astype(np.float64)          # std::lround: half away from zero
            counts = np.where(c64 >= 0, np.floor(c64 + 0.5), np.ceil(c64 - 0.5)).astype(np.int64)
            if counts.size == 0 or sums.size % counts.size:
                raise SourceError(f"imatrix entry '{name}': {sums.size} sums do not split into "
                                  f"{counts.size} matrices", path)
            entries[name] = ImatrixEntry(name, sums, counts, legacy=False)
        ds_kv = meta.get(KEY_DATASETS)
        datasets = ([str(v) for v in ds_kv.value] if ds_kv is not None and ds_kv.vtype == GGUFValueType.ARRAY
                    and ds_kv.subtype == GGUFValueType.STRING else [])
        has_meta = all(k in meta for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE))
        if not has_meta:
            lacking = [k for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE) if k not in meta]
            raise SourceError(f"imatrix GGUF lacks metadata {', '.join(lacking)} (llama-quantize refuses it)", path)
        cc = int(meta[KEY_CHUNK_COUNT].value)
        cs = int(meta[KEY_CHUNK_SIZE].value)
        return ImatrixData(entries, datasets, cc, cs, path, "gguf", has_meta)
    finally:
        mm.close()


def _read_dat(path: str, blob: bytes) -> ImatrixData:
    size = len(blob)
    pos = 0

    def bad(msg: str) -> SourceError:
        return SourceError(msg, path)

    if size < 4:
        raise bad(f"not an imatrix file: {size} bytes (neither GGUF nor a legacy .dat)")
    (n_entries,) = struct.unpack_from("<i", blob, 0)
    pos = 4
    if n_entries < 1:
        raise bad(f"not an imatrix file: entry count {n_entries} (neither GGUF nor a legacy .dat)")
    entries: dict[str, ImatrixEntry] = {}
    for i in range(n_entries):
        where = f"entry {i + 1} of {n_entries}"
        first = i == 0
        if pos + 4 > size:
            raise bad(f"truncated imatrix: {where} starts past the end of the file ({size} bytes)")
        (ln,) = struct.unpack_from("<i", blob, pos)
        pos += 4
        if ln < 0 or ln > _MAX_NAME or (first and not 0 < ln <= 512):
            if first:
                raise bad("not an imatrix file (neither GGUF nor a legacy .dat: implausible first entry)")
            raise bad(f"corrupt imatrix: {where} has name length {ln}")
        if pos + ln > size:
            raise bad(f"truncated imatrix: name of {where} runs past the end of the file ({size} bytes)")
        raw_name = blob[pos:pos + ln].split(b"\0", 1)[0]
        pos += ln
        try:
            name = raw_name.decode("utf-8")
            if first and not name.isprintable():
                raise UnicodeDecodeError("utf-8", raw_name, 0, 1, "unprintable")
        except UnicodeDecodeError:
            if first:
                raise bad("not an imatrix file (neither GGUF nor a legacy .dat: binary entry name)") from None
            raise bad(f"corrupt imatrix: name of {where} is not UTF-8") from None
        if pos + 8 > size:
            raise bad(f"truncated imatrix: '{name}' ({where}) is cut after its name")
        ncall, nval = struct.unpack_from("<ii", blob, pos)
        pos += 8
        if nval < 1:
            if first:
                raise bad(f"not an imatrix file (neither GGUF nor a legacy .dat: first entry has {nval} values)")
            raise bad(f"corrupt imatrix: '{name}' ({where}) has {nval} values")
        if pos + 4 * nval > size:
            raise bad(f"truncated imatrix: '{name}' ({where}) needs {4 * nval} bytes of values, "
                      f"{size - pos} remain")
        sums = np.frombuffer(blob, dtype="<f4", count=nval, offset=pos).astype(np.float32)
        pos += 4 * nval
        entries[name] = ImatrixEntry(name, sums, np.array([ncall], dtype=np.int64), legacy=True)
    chunk_count, datasets = 0, []
    if size - pos >= 4:                       # optional trailer, read leniently as llama.cpp does
        (chunk_count,) = struct.unpack_from("<i", blob, pos)
        pos += 4
        if size - pos >= 4:
            (ln,) = struct.unpack_from("<i", blob, pos)
            pos += 4
            if 0 < ln <= size - pos:
                datasets.append(blob[pos:pos + ln].split(b"\0", 1)[0].decode("utf-8", errors="replace"))
    return ImatrixData(entries, datasets, int(chunk_count), 0, path, "dat", False)


def summarize(data: ImatrixData) -> dict:
    """Plain-data summary (CLI ``--json``, GUI)."""
    sizes = [e.size for e in data.entries.values()]
    return {"path": data.path, "format": data.format, "entries": len(data.entries),
            "datasets": list(data.datasets), "chunk_count": data.chunk_count, "chunk_size": data.chunk_size,
            "values": int(sum(sizes)), "experts": sum(1 for e in data.entries.values() if e.counts.size > 1)}
