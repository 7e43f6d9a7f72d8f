"""gguf-py's enums completed with what llama.cpp knows and the installed gguf release does not.

The whole code base takes tensor and file types from gguf-py (``GGMLQuantizationType``,
``GGML_QUANT_SIZES``, ``LlamaFileType``). gguf 0.19.0 on PyPI lacks type Q2_0 (ggml id 42,
blocks of 64 in 18 bytes) and file type MOSTLY_Q2_0 (41), which llama.cpp's own gguf-py
(``gguf-py/gguf/constants.py`` of the reference) defines. This module adds the missing members
to gguf-py's enum classes (the same class objects everyone imports, so ``GGMLQuantizationType(42)``,
``GGMLQuantizationType["Q2_0"]``, iteration and pickling all work, and gguf's GGUFReader reads
such files). It is idempotent and does nothing where gguf already has the names.

``core/__init__.py`` calls :func:`complete_gguf_enums` before anything else, so every module of
``core`` (and ``app``, the CLI, the worker processes and the packaged application, which all import
``core`` first) sees the completed enums.

Remove when a gguf release on PyPI has Q2_0 (llama.cpp's vendored gguf-py already does).
"""
from __future__ import annotations

from enum import IntEnum

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

# (enum, name, value) and block geometry exactly as llama.cpp's gguf-py has them.
_MISSING_MEMBERS: tuple[tuple[type[IntEnum], str, int], ...] = (
    (GGMLQuantizationType, "Q2_0", 42),
    (LlamaFileType, "MOSTLY_Q2_0", 41),
)
_MISSING_SIZES = {"Q2_0": (64, 2 + 16)}


def _add_member(cls: type[IntEnum], name: str, value: int) -> IntEnum:
    """Add ``name = value`` to the IntEnum ``cls`` as if it had been declared (kept in value order)."""
    if name in cls.__members__:
        if int(cls[name]) != value:
            raise RuntimeError(f"gguf's {cls.__name__}.{name} is {int(cls[name])}, llama.cpp's is {value}")
        return cls[name]
    if value in cls._value2member_map_:
        raise RuntimeError(f"gguf's {cls.__name__} already uses {value} for "
                           f"{cls._value2member_map_[value].name}, llama.cpp uses it for {name}")
    member = int.__new__(cls, value)
    member._name_ = name
    member._value_ = value
    member.__objclass__ = cls
    member._sort_order_ = len(cls._member_names_)
    type.__setattr__(cls, name, member)       # EnumType.__setattr__ refuses new members
    cls._member_map_[name] = member
    cls._value2member_map_[value] = member
    names = cls._member_names_
    at = next((i for i, n in enumerate(names) if int(cls._member_map_[n]) > value), len(names))
    names.insert(at, name)
    return member


def complete_gguf_enums() -> None:
    """Add the members and quant sizes listed above where gguf lacks them (safe to call again)."""
    for cls, name, value in _MISSING_MEMBERS:
        _add_member(cls, name, value)
    for name, sizes in _MISSING_SIZES.items():
        GGML_QUANT_SIZES.setdefault(GGMLQuantizationType[name], sizes)
