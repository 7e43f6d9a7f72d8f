"""Quant Studio desktop GUI (Qt). Views and controllers only; all work is done by core."""
