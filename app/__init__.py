"""Quant Studio desktop GUI (Qt). Views and controllers only; all work is done by core."""

from ._compat import immortalize_singletons as _immortalize

_immortalize()
