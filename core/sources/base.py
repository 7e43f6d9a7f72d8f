"""The one model API every upstream consumer sees: tensors listed from headers, rows read lazily."""
from __future__ import annotations

import math
import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import numpy as np
from gguf.constants import GGMLQuantizationType

from ..errors import SourceError

_LAYER_RE = re.compile(r"(?:^|\.)(?:blk|layers|h|block|blocks)\.(\d+)\.")


def layer_of(name: str) -> Optional[int]:
    """Layer index in a GGUF (``blk.3.``) or HF (``model.layers.3.``) tensor name, else None."""
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as the file header describes it. ``shape`` is numpy order: the last dim is the row."""

    name: str
    shape: tuple[int, ...]
    dtype: str                      # GGUF type name ("Q4_1", "F32") or safetensors dtype ("BF16", "I64")
    nbytes: int
    ggml_type: Optional[GGMLQuantizationType] = None  # the GGUF type (None for integer safetensors)

    @property
    def n_elements(self) -> int:
        return int(math.prod(self.shape)) if self.shape else 1

    @property
    def row_len(self) -> int:
        return int(self.shape[-1]) if self.shape else 1

    @property
    def n_rows(self) -> int:
        return self.n_elements // self.row_len if self.row_len else 0

    @property
    def n_dims(self) -> int:
        return len(self.shape)

    @property
    def layer(self) -> Optional[int]:
        return layer_of(self.name)

    @property
    def bpw(self) -> float:
        return 8.0 * self.nbytes / self.n_elements if self.n_elements else 0.0


@dataclass
class ModelSource(ABC):
    """A model opened for reading: metadata and tensors from headers, data through memory maps."""

    path: str
    kind: str = ""                                   # "gguf" | "safetensors" | "hf"
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._by_name: dict[str, TensorInfo] = {}

    def _index(self) -> None:
        self._by_name = {t.name: t for t in self.tensors}

    # -- listing -----------------------------------------------------------------------
    @property
    def name(self) -> str:
        base = os.path.basename(os.path.normpath(self.path))
        return self.metadata.get("general.name") or base

    @property
    def architecture(self) -> Optional[str]:
        return None

    def tensor(self, name: str) -> TensorInfo:
        try:
            return self._by_name[name]
        except KeyError:
            raise SourceError(f"no tensor named '{name}'", self.path) from None

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[TensorInfo]:
        return iter(self.tensors)

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def n_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def n_layers(self) -> int:
        layers = [t.layer for t in self.tensors if t.layer is not None]
        return max(layers) + 1 if layers else 0

    def type_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tensors:
            out[t.dtype] = out.get(t.dtype, 0) + 1
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.kind,
            "name": self.name,
            "architecture": self.architecture,
            "n_tensors": len(self.tensors),
            "n_params": self.n_params,
            "n_layers": self.n_layers,
            "n_bytes": self.n_bytes,
            "bpw": 8.0 * self.n_bytes / self.n_params if self.n_params else 0.0,
            "types": self.type_counts(),
        }

    # -- data ----------------------------------------------------------------------------
    @abstractmethod
    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """float32 array (stop-start, row_len) of rows [start, stop) of the flattened tensor."""

    def read(self, name: str) -> np.ndarray:
        """The whole tensor as float32 in its shape."""
        t = self.tensor(name)
        return self.read_rows(name, 0, t.n_rows).reshape(t.shape)

    def raw(self, name: str) -> np.ndarray:
        """The stored bytes (uint8) of a tensor, for copying it unchanged."""
        raise SourceError(f"raw bytes of '{name}' are not available from a {self.kind} source", self.path)

    def release(self, name: str) -> None:
        """Drop the mapped pages of a tensor that is done with (keeps resident memory bounded)."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_rows(self, t: TensorInfo, start: int, stop: int) -> None:
        if not (0 <= start <= stop <= t.n_rows):
            raise SourceError(f"rows [{start}, {stop}) out of range for '{t.name}' ({t.n_rows} rows)", self.path)
