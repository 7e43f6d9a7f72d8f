"""Quant Studio core: GUI-free library and CLI.

Data flows one way: ``core.sources`` (read any model lazily as float32 rows) ->
``core.kernels`` (Numba quantize/dequantize per GGUF type) -> ``core.gguf_out``
(streaming GGUF writer), driven by ``core.job`` according to a ``core.plan``.
"""

__version__ = "0.1.0"
