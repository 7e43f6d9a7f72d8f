"""Quant Studio core: GUI-free library and CLI.

Data flows one way: ``core.sources`` (read any model lazily as float32 rows) ->
``core.kernels`` (Numba quantize/dequantize per GGUF type) -> ``core.gguf_out``
(streaming GGUF writer), driven by ``core.job`` according to a ``core.plan``.
"""
# First: gguf-py's type enums completed with the llama.cpp types the installed gguf lacks (Q2_0),
# before any module of core reads them.
from ._gguf_compat import complete_gguf_enums

complete_gguf_enums()

# What Quant Studio's files and choices follow: byte-identity tests run against this llama.cpp.
LLAMA_CPP_REFERENCE = "llama.cpp as vendored in llama-cpp-python 0.3.36"


def package_version() -> str:
    """The installed package's version (pyproject.toml), also inside the packaged application."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("quant-studio")
    except PackageNotFoundError:            # a source tree that was never installed
        return "0.1.0+source"


def formats_followed() -> str:
    """The versions of llama.cpp's formats this build reads and writes (Help › About, --version)."""
    from gguf.constants import GGUF_VERSION

    from .gguf_out import QUANTIZATION_VERSION
    return (f"GGUF version {GGUF_VERSION}, GGML quantization version {QUANTIZATION_VERSION}; "
            f"quantizers, presets and per-tensor rules of {LLAMA_CPP_REFERENCE}")


__version__ = package_version()
