"""Edit a GGUF's metadata without requantizing (``quant-studio set-metadata IN OUT KEY=VALUE ...``, the
studio's editable metadata browser): a new file by a streaming copy -- metadata changed, every tensor's
bytes copied verbatim in their order -- written to ``OUT.partial`` and renamed at the end.

A change is ``KEY=VALUE`` (the key's present type when it exists, else inferred: true/false, an integer,
a float, else a string), ``KEY:TYPE=VALUE`` with TYPE one of u8 i8 u16 i16 u32 i32 u64 i64 f32 f64 bool
str (``arr[T]`` with a JSON list for arrays), ``KEY=@FILE`` for a file's text (a chat template), and
``--remove KEY`` (CLI) / ``remove=`` drops a key.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable, Optional, Sequence

from gguf.constants import GGUFValueType

from .errors import PlanError, SourceError
from .gguf_meta import KV
from .gguf_out import GGUFLayout, GGUFStreamWriter, OutTensor
from .progress import CancelToken, ProgressCallback, ProgressTracker, no_progress

V = GGUFValueType
TYPES = {"u8": V.UINT8, "i8": V.INT8, "u16": V.UINT16, "i16": V.INT16, "u32": V.UINT32, "i32": V.INT32,
         "u64": V.UINT64, "i64": V.INT64, "f32": V.FLOAT32, "f64": V.FLOAT64, "bool": V.BOOL, "str": V.STRING}
_INTS = {V.UINT8: (0, 2**8), V.INT8: (-2**7, 2**7), V.UINT16: (0, 2**16), V.INT16: (-2**15, 2**15),
         V.UINT32: (0, 2**32), V.INT32: (-2**31, 2**31), V.UINT64: (0, 2**64), V.INT64: (-2**63, 2**63)}
COPY_BYTES = 64 << 20


def _scalar(text: str, vtype: GGUFValueType, key: str) -> Any:
    try:
        if vtype in _INTS:
            v = int(text, 0)
            lo, hi = _INTS[vtype]
            if not lo <= v < hi:
                raise ValueError(f"{v} is out of range for {vtype.name}")
            return v
        if vtype in (V.FLOAT32, V.FLOAT64):
            return float(text)
        if vtype == V.BOOL:
            low = text.strip().lower()
            if low not in ("true", "false", "1", "0"):
                raise ValueError("use true or false")
            return low in ("true", "1")
        return text
    except ValueError as e:
        raise PlanError(f"'{key}': '{text}' is not a {vtype.name.lower()}: {e}") from None


def _infer(text: str) -> tuple[Any, GGUFValueType]:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true", V.BOOL
    try:
        v = int(text, 10)
        return v, (V.INT32 if -2**31 <= v < 2**31 else V.INT64)
    except ValueError:
        pass
    try:
        return float(text), V.FLOAT32
    except ValueError:
        return text, V.STRING


def parse_assignment(text: str, current: Optional[KV] = None) -> KV:
    """``KEY[:TYPE]=VALUE`` as a metadata entry; ``current`` is the entry the file has under KEY."""
    head, sep, value = str(text).partition("=")
    if not sep or not head.strip():
        raise PlanError(f"malformed metadata change '{text}': use KEY=VALUE, KEY:TYPE=VALUE or KEY=@FILE")
    key, _, tname = head.strip().partition(":")
    if value.startswith("@"):
        try:
            with open(value[1:], encoding="utf-8") as f:
                value = f.read()
        except OSError as e:
            raise SourceError(f"cannot read the value of '{key}': {e.strerror or e}", value[1:]) from None
    if tname:
        t = tname.strip().lower()
        if t.startswith("arr[") and t.endswith("]"):
            sub = TYPES.get(t[4:-1])
            if sub is None:
                raise PlanError(f"'{key}': unknown element type '{t[4:-1]}' (one of {', '.join(TYPES)})")
            return KV(key, _array(key, value, sub), V.ARRAY, sub)
        if t not in TYPES:
            raise PlanError(f"'{key}': unknown type '{tname}' (one of {', '.join(TYPES)}, arr[T])")
        return KV(key, _scalar(value, TYPES[t], key), TYPES[t])
    if current is not None:
        if current.vtype == V.ARRAY:
            return KV(key, _array(key, value, current.subtype), V.ARRAY, current.subtype)
        return KV(key, _scalar(value, current.vtype, key), current.vtype)
    v, vt = _infer(value)
    return KV(key, v, vt)


def _array(key: str, text: str, sub: GGUFValueType) -> list:
    try:
        items = json.loads(text)
    except ValueError as e:
        raise PlanError(f"'{key}': an array value is a JSON list: {e}") from None
    if not isinstance(items, list):
        raise PlanError(f"'{key}': an array value is a JSON list")
    return [_scalar(str(x) if not isinstance(x, str) else x, sub, key) for x in items]


def edited_kv(kv: Sequence[KV], changes: Iterable[KV] = (), remove: Iterable[str] = ()) -> list[KV]:
    """``kv`` with ``changes`` applied (an existing key keeps its place) and ``remove``d keys dropped."""
    by_key = {c.key: c for c in changes}
    gone = set(remove)
    missing = gone - {k.key for k in kv}
    if missing:
        raise PlanError(f"cannot remove '{sorted(missing)[0]}': the file has no such key")
    if "general.architecture" in gone:
        raise PlanError("general.architecture cannot be removed: llama.cpp needs it")
    out = [by_key.pop(k.key, k) for k in kv if k.key not in gone]
    return out + list(by_key.values())


def set_metadata(src, output: str, changes: Iterable[KV] = (), remove: Iterable[str] = (), *,
                 progress: ProgressCallback = no_progress, cancel: Optional[CancelToken] = None) -> str:
    """Write ``src`` (an opened GGUF) to ``output`` with its metadata edited and its tensors copied
    verbatim. Returns the output path."""
    if getattr(src, "kind", "") != "gguf":
        raise SourceError("metadata can be edited in GGUF files only", src.path)
    if os.path.abspath(output) == os.path.abspath(src.path):
        raise PlanError("write the edited file under another name (the input is read while it is written)",
                        output)
    if src.metadata.get("split.count", 1) not in (0, 1):
        raise SourceError("this is one shard of a split model; edit the metadata of a single-file GGUF", src.path)
    kv = edited_kv(src.kv, changes, remove)
    tensors = [OutTensor(t.name, tuple(t.shape), t.ggml_type) for t in src.tensors]
    layout = GGUFLayout(output, kv, tensors)
    cancel = cancel or CancelToken()
    tracker = ProgressTracker(progress, sum(t.nbytes for t in src.tensors), "copy")
    with GGUFStreamWriter(layout) as w:
        for t in src.tensors:
            raw = src.raw(t.name)
            for a in range(0, len(raw), COPY_BYTES):
                cancel.check()
                w.write(t.name, raw[a:a + COPY_BYTES])
                tracker.advance(min(COPY_BYTES, len(raw) - a), t.name)
    return output
