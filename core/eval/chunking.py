"""A token stream cut into chunks exactly as ``llama-imatrix`` and ``llama-perplexity`` cut it.

Both tools (tools/imatrix/imatrix.cpp ``compute_imatrix``, tools/perplexity/perplexity.cpp ``perplexity`` and
``kl_divergence``) do the same thing:

1. tokenize the whole text once with ``common_tokenize(ctx, text, add_special=true)``: one BOS at the very
   start when the vocabulary adds one (``tokenizer.ggml.add_bos_token``), no special-token parsing (imatrix:
   ``--parse-special`` turns it on); an EOS-adding vocabulary is refused (``GGML_ASSERT(!add_eos)``);
2. (imatrix only) drop the first ``--chunk i`` chunks; refuse if ``(i + 2) * n_ctx >= n_tokens``;
3. refuse fewer than ``2 * n_ctx`` tokens;
4. ``n_chunk = n_tokens // n_ctx`` (the tail is dropped), capped by ``--chunks``;
5. chunk ``c`` is ``tokens[c*n_ctx : (c+1)*n_ctx]`` and, when the vocabulary adds BOS, its *first token is
   replaced* by BOS (not prepended: a chunk is always exactly ``n_ctx`` tokens, and the token it overwrites is
   never a prediction target because scoring starts at ``n_ctx // 2``).

This module does steps 2-5 on a token array; step 1 is the tokenizer's (core.eval.tokenizer, or llama.cpp's
``llama_tokenize(text, add_special=True, parse_special=False)``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np

from ..errors import QuantStudioError


@dataclass(frozen=True)
class Chunks:
    """``tokens``: int32 ``(n_chunk, n_ctx)``, BOS already substituted; ``n_stream``: tokens in the whole
    stream (after any skipped chunks); ``bos``: the substituted id or None."""

    tokens: np.ndarray
    n_ctx: int
    n_stream: int
    bos: Optional[int]

    @property
    def n_chunk(self) -> int:
        return int(self.tokens.shape[0])

    def __len__(self) -> int:
        return self.n_chunk

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.tokens)

    @property
    def first(self) -> int:
        """The first position whose logits are scored (``n_ctx / 2``)."""
        return self.n_ctx // 2

    @property
    def scored_per_chunk(self) -> int:
        """Predictions scored per chunk: positions ``first .. n_ctx-2`` predict ``first+1 .. n_ctx-1``."""
        return self.n_ctx - 1 - self.n_ctx // 2


def chunk_tokens(tokens: Sequence[int] | np.ndarray, n_ctx: int, *, bos: Optional[int] = None,
                 n_chunks: int = -1, skip_chunks: int = 0) -> Chunks:
    """Cut ``tokens`` (the whole tokenized text, BOS included if the vocabulary adds one) into llama.cpp's
    chunks. ``bos``: the BOS id when the vocabulary adds BOS (``add_bos``), else None. ``n_chunks``: at most
    this many (``--chunks``; negative: all). ``skip_chunks``: llama-imatrix's ``--chunk`` (drop the first ones).

    Raises QuantStudioError with llama.cpp's own conditions (too few tokens)."""
    if n_ctx < 2:
        raise QuantStudioError(f"context size must be at least 2 tokens, got {n_ctx}")
    a = np.asarray(tokens, dtype=np.int64).reshape(-1)
    if skip_chunks > 0:
        if (skip_chunks + 2) * n_ctx >= a.size:
            raise QuantStudioError(f"not enough tokens left after removing {skip_chunks} chunks "
                                   f"({a.size} tokens, context {n_ctx})")
        a = a[skip_chunks * n_ctx:]
    if a.size < 2 * n_ctx:
        raise QuantStudioError(f"the text tokenizes to only {a.size} tokens; a context of {n_ctx} needs at "
                               f"least {2 * n_ctx}")
    n_chunk = a.size // n_ctx
    if n_chunks is not None and n_chunks >= 0:
        n_chunk = min(n_chunk, int(n_chunks))
    out = a[:n_chunk * n_ctx].reshape(n_chunk, n_ctx).astype(np.int32)   # a copy: the stream stays intact
    if bos is not None:
        out[:, 0] = int(bos)
    return Chunks(out, int(n_ctx), int(a.size), None if bos is None else int(bos))
