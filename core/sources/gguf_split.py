"""A model split into GGUF shards (gguf-split / ``--split-max-size``: ``NAME-00001-of-00004.gguf`` ...)
opened as one model from any of its shards, as llama.cpp's loader does. Every shard must be there: a
missing one is an error naming it."""
from __future__ import annotations

import os
import re
from typing import Optional

import numpy as np

from ..errors import SourceError
from .base import ModelSource
from .gguf_source import GGUFSource

SPLIT_COUNT, SPLIT_NO, SPLIT_TENSORS = "split.count", "split.no", "split.tensors.count"
_SHARD = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<n>\d{5})\.gguf$", re.IGNORECASE)


def is_split(src: GGUFSource) -> bool:
    return int(src.metadata.get(SPLIT_COUNT, 1) or 1) > 1


def shard_paths(path: str, n: int) -> list[str]:
    m = _SHARD.match(os.path.basename(path))
    if m is None:
        raise SourceError(f"a shard of a {n}-file split, but not named NAME-00001-of-{n:05d}.gguf: the other "
                          "shards cannot be found", path)
    prefix = os.path.join(os.path.dirname(path), m.group("prefix"))
    return [f"{prefix}-{i + 1:05d}-of-{n:05d}.gguf" for i in range(n)]


class SplitGGUFSource(ModelSource):
    """All shards of a split GGUF as one model; metadata from the first shard (which carries it)."""

    def __init__(self, path: str, first: Optional[GGUFSource] = None):
        first = first or GGUFSource(path)
        n = int(first.metadata.get(SPLIT_COUNT, 1))
        paths = shard_paths(os.fspath(path), n)
        for i, p in enumerate(paths):
            if not os.path.exists(p):
                first.close()
                raise SourceError(f"shard {i + 1} of {n} of this split model is missing", p)
        self.shards: list[GGUFSource] = []
        try:
            for p in paths:
                s = first if os.path.abspath(p) == os.path.abspath(first.path) else GGUFSource(p)
                if int(s.metadata.get(SPLIT_COUNT, 1)) != n:
                    raise SourceError(f"not a shard of the same {n}-file split", p)
                self.shards.append(s)
        except BaseException:
            for s in self.shards + [first]:
                s.close()
            raise
        head = self.shards[0]
        super().__init__(path=head.path, kind="gguf", metadata=dict(head.metadata))
        self.kv = head.kv
        self.version, self.alignment = head.version, head.alignment
        self.tensors = [t for s in self.shards for t in s.tensors]
        self._shard_of = {t.name: s for s in self.shards for t in s.tensors}
        self._index()
        want = int(head.metadata.get(SPLIT_TENSORS, len(self.tensors)))
        if want != len(self.tensors) or len(self._shard_of) != len(self.tensors):
            self.close()
            raise SourceError(f"the {n} shards hold {len(self.tensors)} tensors, the split says {want}", head.path)

    @property
    def shard_files(self) -> list[str]:
        return [s.path for s in self.shards]

    @property
    def architecture(self) -> Optional[str]:
        return self.metadata.get("general.architecture")

    def summary(self) -> dict:
        return super().summary() | {"shards": len(self.shards)}

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        self.tensor(name)
        return self._shard_of[name].read_rows(name, start, stop)

    def raw(self, name: str) -> np.ndarray:
        self.tensor(name)
        return self._shard_of[name].raw(name)

    def release(self, name: str) -> None:
        s = self._shard_of.get(name)
        if s is not None:
            s.release(name)

    def close(self) -> None:
        for s in getattr(self, "shards", []):
            s.close()
