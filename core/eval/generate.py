"""Greedy continuation of a prompt, for showing side by side what a base model and a quant say.

Each new token re-runs the whole (short) sequence through :class:`~core.eval.forward.Forward` — no KV cache:
the cost is ``n_new`` forward passes over at most ``len(prompt) + n_new`` tokens, a few seconds for a small
model and a few dozen tokens; meant for a prompt box, not for serving.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..progress import CancelToken
from ..sources.base import ModelSource
from .forward import Forward, WeightOverride


def greedy(source: ModelSource, prompt_ids, n_new: int = 32, *, weights: WeightOverride = None,
           threads: Optional[int] = None, eos: Optional[int] = None,
           cancel: Optional[CancelToken] = None) -> list[int]:
    """The ``n_new`` tokens (fewer when ``eos`` comes) that greedy decoding appends to ``prompt_ids``."""
    fw = Forward(source, weights=weights, threads=threads)
    if eos is None:
        v = source.metadata.get("tokenizer.ggml.eos_token_id")
        eos = int(v) if v is not None else None
    seq = [int(t) for t in np.asarray(prompt_ids).reshape(-1)]
    out: list[int] = []
    for _ in range(max(0, int(n_new))):
        if cancel is not None:
            cancel.check()
        logits = fw.logits([seq], cancel=cancel)[0]
        nxt = int(np.argmax(logits[-1]))
        out.append(nxt)
        if eos is not None and nxt == eos:
            break
        seq.append(nxt)
    return out
