"""GGUF metadata entries (key, typed value) shared by sources and the writer."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from gguf.constants import GGUFValueType

_SCALAR_FMT = {
    GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1", GGUFValueType.UINT16: "<u2",
    GGUFValueType.INT16: "<i2", GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4",
    GGUFValueType.FLOAT32: "<f4", GGUFValueType.BOOL: "<u1", GGUFValueType.UINT64: "<u8",
    GGUFValueType.INT64: "<i8", GGUFValueType.FLOAT64: "<f8",
}


@dataclass
class KV:
    """One metadata entry. ``raw`` (when set) is its exact serialized value, copied as is."""

    key: str
    value: Any
    vtype: GGUFValueType
    subtype: Optional[GGUFValueType] = None   # element type of an ARRAY
    raw: Optional[bytes] = None               # serialized type + value (without the key)

    def encode(self) -> bytes:
        """Serialized entry: key string, value type, value."""
        return _str(self.key) + (self.raw if self.raw is not None else self._encode_value())

    def _encode_value(self) -> bytes:
        out = np.uint32(self.vtype).tobytes()
        if self.vtype == GGUFValueType.ARRAY:
            sub = self.subtype if self.subtype is not None else guess_type(self.value[0] if len(self.value) else 0)
            out += np.uint32(sub).tobytes() + np.uint64(len(self.value)).tobytes()
            if sub == GGUFValueType.STRING:
                return out + b"".join(_str(v) for v in self.value)
            if sub == GGUFValueType.ARRAY:
                raise ValueError(f"nested arrays are not supported ({self.key})")
            return out + np.asarray(self.value, dtype=_SCALAR_FMT[sub]).tobytes()
        if self.vtype == GGUFValueType.STRING:
            return out + _str(self.value)
        return out + np.asarray(self.value, dtype=_SCALAR_FMT[self.vtype]).tobytes()


def _str(s: "str | bytes") -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return np.uint64(len(b)).tobytes() + b


def guess_type(value: Any) -> GGUFValueType:
    if isinstance(value, bool):
        return GGUFValueType.BOOL
    if isinstance(value, (int, np.integer)):
        return GGUFValueType.INT32 if -2**31 <= int(value) < 2**31 else GGUFValueType.INT64
    if isinstance(value, (float, np.floating)):
        return GGUFValueType.FLOAT32
    if isinstance(value, (str, bytes)):
        return GGUFValueType.STRING
    if isinstance(value, (list, tuple, np.ndarray)):
        return GGUFValueType.ARRAY
    raise TypeError(f"cannot store {type(value).__name__} in GGUF metadata")


def make_kv(key: str, value: Any, vtype: Optional[GGUFValueType] = None,
            subtype: Optional[GGUFValueType] = None) -> KV:
    vtype = vtype if vtype is not None else guess_type(value)
    if vtype == GGUFValueType.ARRAY and subtype is None:
        subtype = guess_type(value[0]) if len(value) else GGUFValueType.INT32
    return KV(key, value, vtype, subtype)


_SEQUENCES = (list, tuple, np.ndarray)


def values_equal(a: Any, b: Any) -> bool:
    """Whether two metadata values are the same: arrays item by item, NaN equal to NaN, bytes read as
    UTF-8 text (readers differ in how they hand strings back)."""
    if isinstance(a, bytes):
        a = a.decode("utf-8", "replace")
    if isinstance(b, bytes):
        b = b.decode("utf-8", "replace")
    if isinstance(a, _SEQUENCES) or isinstance(b, _SEQUENCES):
        if not (isinstance(a, _SEQUENCES) and isinstance(b, _SEQUENCES)):
            return False
        return len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b))
    return bool(a == b) or (a != a and b != b)
