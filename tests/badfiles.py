"""Corrupt model files made from a good one, shared by the source and CLI tests."""
from __future__ import annotations

import os


def _array_count_offset(data: bytes, key: str) -> int:
    k = key.encode()
    return data.index(len(k).to_bytes(8, "little") + k) + 8 + len(k) + 4 + 4


def _tensor_info_offset(data: bytes, name: str) -> int:
    k = name.encode()
    return data.index(len(k).to_bytes(8, "little") + k) + 8 + len(k)


def _patch(data: bytearray, at: int, value: int, size: int) -> None:
    data[at:at + size] = value.to_bytes(size, "little")


def make_bad_gguf(good: str, directory: str, kind: str) -> str:
    """A copy of GGUF ``good`` broken in one way: magic, truncated, tensor_count, kv_count, array_length,
    offset_past_end, unknown_type, empty."""
    data = bytearray(open(good, "rb").read())
    if kind == "magic":
        data[0:4] = b"GGUX"
    elif kind == "truncated":
        data = data[: len(data) // 2]
    elif kind == "tensor_count":
        _patch(data, 8, 2**60, 8)
    elif kind == "kv_count":
        _patch(data, 16, 2**62, 8)
    elif kind == "array_length":
        _patch(data, _array_count_offset(data, "tokenizer.ggml.tokens"), 2**61, 8)
    elif kind in ("offset_past_end", "unknown_type"):
        name = "output.weight" if kind == "offset_past_end" else "blk.0.attn_q.weight"
        i = _tensor_info_offset(data, name)
        nd = int.from_bytes(data[i:i + 4], "little")
        if kind == "offset_past_end":
            _patch(data, i + 4 + 8 * nd + 4, len(data), 8)
        else:
            _patch(data, i + 4 + 8 * nd, 99, 4)
    elif kind == "empty":
        data = bytearray()
    else:
        raise ValueError(kind)
    path = os.path.join(directory, f"bad-{kind}.gguf")
    with open(path, "wb") as f:
        f.write(bytes(data))
    return path


def fill_disk_after(monkeypatch, nbytes: int) -> None:
    """Make core.gguf_out's files fail with ENOSPC ("No space left on device") after ``nbytes``."""
    import errno

    import core.gguf_out as mod

    real_open = open

    class Full:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            self.n += len(b)
            if self.n > nbytes:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(b)

        def __getattr__(self, k):
            return getattr(self.f, k)

    monkeypatch.setattr(mod, "open", lambda p, m="r": Full(real_open(p, m)), raising=False)
