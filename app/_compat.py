"""Work-around for PySide6 6.12 on CPython < 3.12.

Measured here (PySide6 6.12.0, Python 3.11.7): every call of a C++ method returning void or a null
pointer hands back ``None`` without a new reference, and ``Signal.emit()`` does the same with
``True``; slots returning ``True`` lose one too. CPython 3.12+ makes these singletons immortal, so
the bug is invisible there; on 3.11 their counts fall by one per call until the interpreter aborts
("none_dealloc"/"bool_dealloc: deallocating None/True"), at the latest at exit. PySide6 6.11.3 does
not have the bug. Where it can occur, :func:`immortalize_singletons` does what 3.12 does: gives
None, True and False a reference count no program can exhaust (they are static objects, never freed).
"""
from __future__ import annotations

import ctypes
import sys

_BIG = 1 << 60


def affected() -> bool:
    if sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return False
    from importlib.metadata import PackageNotFoundError, version
    try:                                   # without importing Qt (the CLI imports app.launcher)
        major, minor = (int(x) for x in version("PySide6").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (6, 12)


def immortalize_singletons() -> bool:
    """Raise the reference counts of None, True and False out of reach; True when done."""
    if not affected():
        return False
    for obj in (None, True, False):
        ctypes.c_ssize_t.from_address(id(obj)).value += _BIG
    return True
