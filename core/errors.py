"""The exceptions core raises. Every message is fit to show a user as one line."""
from __future__ import annotations

import os


class QuantStudioError(Exception):
    """Base class: a problem the user can understand and act on."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.path = os.fspath(path) if path is not None else None
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)

    def __reduce__(self):
        # travels between processes (core.procpool) as itself, message and path intact
        return (type(self), (self.message, self.path), {k: v for k, v in self.__dict__.items()
                                                          if k not in ("message", "path")})


class SourceError(QuantStudioError):
    """A model file cannot be opened or read (missing, truncated, corrupt, unsupported)."""


class UnsupportedError(QuantStudioError):
    """A dtype, tensor type, architecture or shape that Quant Studio does not handle."""


class PlanError(QuantStudioError):
    """A plan that cannot be carried out (unknown type, incompatible row length, bad rule)."""


class OutputError(QuantStudioError):
    """The output cannot be written (unwritable location, disk full)."""


class Cancelled(QuantStudioError):
    """The user cancelled a long operation."""

    def __init__(self, message: str = "cancelled", path=None):
        super().__init__(message, path)
