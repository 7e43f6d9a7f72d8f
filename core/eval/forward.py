"""The studio's own forward pass of a decoder-only LLM in float32: "activations stay, weights stream".

A batch of token sequences goes through ``token_embd``, then layer 0 for every sequence, then layer 1
(its weights read only now, one matrix at a time, and dropped after use), ... then the output head
one sequence at a time (a group of sequences when the output matrix is too big to hold whole and is
streamed). Peak memory is about the largest weight matrix in float32 plus the activations of the
tokens in flight; the logits come back per sequence, never all at once.

The graphs are llama.cpp's (``src/models/{llama,qwen2,qwen3,gemma2,gemma3,phi3}.cpp``); what differs
between architectures is the table in :mod:`core.eval.arch`. Matmuls are numpy float32 GEMMs over
all tokens of a layer (BLAS threads set by ``threads``); norms, RoPE and the attention softmax are
Numba kernels (:mod:`core.eval.kernels`).

Hooks: ``on_linear_input(name, x)`` sees the float32 input (n_tokens, n_in) of every matmul weight
(``blk.N.attn_q.weight`` ... ``output.weight``), for calibration (imatrix); ``weights`` replaces
tensors (a dict name -> array, or a callable ``(name, array) -> array``), to run a plan's
quantize->dequantize weights without writing a file.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from ..errors import QuantStudioError, SourceError
from ..progress import CancelToken, ProgressCallback, ProgressTracker, no_progress
from ..sources.base import ModelSource
from . import kernels as K
from .arch import Hparams, hparams_from

LinearHook = Callable[[str, np.ndarray], None]
WeightOverride = Union[Mapping[str, np.ndarray], Callable[[str, np.ndarray], np.ndarray], None]
Tokens = Union[np.ndarray, Sequence[Sequence[int]]]

_MIN_OUTPUT_BUDGET = 256 << 20      # an output matrix up to this size (f32) is held whole during the head
_ROW_GAP = 32                       # needed rows (embeddings) closer than this are read in one block
_ATTN_BLOCK_FLOATS = 1 << 24        # attention scores computed in query blocks of at most 64 MiB
_ATTN_QUERY_BLOCK = 256             # and at most this many queries: a block's keys stop at its last
                                    # query, so smaller blocks skip more of the masked half


@dataclass
class Batch:
    """Activations of a batch in flight: the residual stream of all tokens, sequence after sequence."""

    x: np.ndarray                   # (n_tokens, n_embd) float32
    pos: np.ndarray                 # (n_tokens,) int32 position of each token in its sequence
    starts: np.ndarray              # (n_seq,) first token of each sequence
    lengths: np.ndarray             # (n_seq,)

    @property
    def n_tokens(self) -> int:
        return int(self.x.shape[0])

    def copy(self) -> "Batch":
        """A batch with its own residual stream (``run_layer`` works in place)."""
        return Batch(self.x.copy(), self.pos, self.starts, self.lengths)

    def seq(self, i: int) -> slice:
        a = int(self.starts[i])
        return slice(a, a + int(self.lengths[i]))


class Forward:
    """Forward pass over ``source`` (any :class:`ModelSource` with GGUF names and metadata: a GGUF
    file, or a Hugging Face folder opened through the converter).

    ``run(tokens)`` yields ``(sequence index, logits (n_ctx, n_vocab) float32)``; ``embed``,
    ``run_layer`` and ``head`` are its steps, for callers that re-run single layers (wrap them in
    ``blas_threads(n)`` yourself; ``run`` does). Hook inputs are the arrays the matmuls use: read them,
    do not modify them.
    ``n_ctx`` plays llama.cpp's context size where it matters (Phi-3 longrope picks its long factors
    when n_ctx > rope.scaling.original_context_length); by default the longest sequence."""

    def __init__(self, source: ModelSource, *, weights: WeightOverride = None,
                 on_linear_input: Optional[LinearHook] = None, threads: Optional[int] = None,
                 n_ctx: Optional[int] = None):
        self.source = source
        self.hp: Hparams = hparams_from(source.metadata, {t.name: t.shape for t in source.tensors},
                                        source.path)
        self.weights = weights
        self.on_linear_input = on_linear_input
        self.threads = threads
        self.n_ctx = n_ctx
        for name in ("token_embd.weight", "output_norm.weight"):
            if name not in source:
                raise SourceError(f"cannot run the model: tensor '{name}' is missing", source.path)
        if self.hp.arch == "gemma2" or "output.weight" not in source:
            self.output_name = "token_embd.weight"       # tied (gemma2 always uses token_embd)
        else:
            self.output_name = "output.weight"
        self._rope: dict[tuple, np.ndarray] = {}

    # -- tensors -------------------------------------------------------------------------
    def has(self, name: str) -> bool:
        w = self.weights
        return name in self.source or (isinstance(w, Mapping) and name in w)

    def tensor(self, name: str) -> Optional[np.ndarray]:
        """float32 tensor ``name`` after the override, or None when the model has none."""
        w = self.weights
        if isinstance(w, Mapping) and name in w:
            return np.ascontiguousarray(w[name], dtype=np.float32)
        if name not in self.source:
            return None
        arr = self.source.read(name)
        self.source.release(name)
        if callable(w):
            arr = np.ascontiguousarray(w(name, arr), dtype=np.float32)
        return arr

    def required(self, name: str) -> np.ndarray:
        """Like :meth:`tensor`, for a tensor the graph cannot do without."""
        arr = self.tensor(name)
        if arr is None:
            raise SourceError(f"cannot run the model: tensor '{name}' is missing", self.source.path)
        return arr

    def _row_blocks(self, name: str, budget: int,
                    needed: Optional[np.ndarray] = None) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 rows) of a 2-D tensor in blocks of about ``budget`` bytes (whole when
        the override is a callable, which sees whole tensors); with ``needed`` (sorted unique row indices)
        only blocks around those rows are read: runs of needed rows closer than ``_ROW_GAP`` share a block."""
        w = self.weights
        overridden = name in w if isinstance(w, Mapping) else callable(w)
        if overridden or name not in self.source:
            yield 0, self.tensor(name)
            return
        t = self.source.tensor(name)
        step = max(1, budget // (4 * t.row_len))
        if needed is None:
            runs = [(0, t.n_rows)]
        else:
            cut = np.nonzero(np.diff(needed) > _ROW_GAP)[0] + 1
            runs = [(int(needed[a]), int(needed[z - 1]) + 1)
                    for a, z in zip(np.concatenate([[0], cut]), np.concatenate([cut, [needed.size]]))]
        for r0, r1 in runs:
            for a in range(r0, r1, step):
                stop = min(r1, a + step)
                if needed is not None and np.searchsorted(needed, a) == np.searchsorted(needed, stop):
                    continue
                yield a, self.source.read_rows(name, a, stop)
        self.source.release(name)

    def _linear(self, name: str, x: np.ndarray) -> np.ndarray:
        """x @ W.T (+ bias) for tensor ``name`` ('blk.0.attn_q'); the hook sees x first."""
        wname = name + ".weight"
        if self.on_linear_input is not None:
            self.on_linear_input(wname, x)
        w = self.required(wname)
        y = x @ w.T
        del w
        b = self.tensor(name + ".bias")
        if b is not None:
            y += b
        return y

    def _norm(self, x: np.ndarray, name: str) -> np.ndarray:
        return K.rms_norm(x, self.required(name), np.float32(self.hp.eps))

    # -- steps ---------------------------------------------------------------------------
    def embed(self, tokens: Tokens) -> Batch:
        """Token embeddings of a batch (int array (n_seq, n_ctx), or a list of token lists)."""
        seqs = _as_sequences(tokens)
        hp = self.hp
        if not seqs or any(sq.size == 0 for sq in seqs):
            raise QuantStudioError("no tokens to run: every sequence needs at least one token")
        ids = np.concatenate(seqs)
        bad = ids[(ids < 0) | (ids >= hp.n_vocab)]
        if bad.size:
            raise QuantStudioError(f"token id {int(bad[0])} is outside the vocabulary (0..{hp.n_vocab - 1})")
        x = np.empty((ids.size, hp.n_embd), np.float32)
        for a, rows in self._row_blocks("token_embd.weight", _MIN_OUTPUT_BUDGET // 16, np.unique(ids)):
            sel = np.nonzero((ids >= a) & (ids < a + rows.shape[0]))[0]
            if sel.size:
                x[sel] = rows[ids[sel] - a]
        if hp.spec.embd_scale:
            x *= np.float32(np.sqrt(np.float32(hp.n_embd)))
        lengths = np.array([s.size for s in seqs], np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        pos = np.concatenate([np.arange(n, dtype=np.int32) for n in lengths])
        return Batch(x, pos, starts, lengths)

    def _rope_cache(self, il: int, n_pos: int) -> np.ndarray:
        hp = self.hp
        base, scale = hp.rope_base_scale(il)
        factors = np.zeros(0, np.float32)
        if hp.arch in ("llama", "phi3"):                  # the graphs that call get_rope_factors
            n_ctx = self.n_ctx or n_pos
            for name in ("rope_freqs.weight",
                         "rope_factors_long.weight" if n_ctx > hp.n_ctx_orig else "rope_factors_short.weight"):
                if self.has(name):
                    factors = self.tensor(name).reshape(-1).astype(np.float32)
                    break
        key = (base, scale, factors.tobytes())           # rows do not depend on n_pos: grow, slice
        c = self._rope.get(key)
        if c is None or c.shape[0] < n_pos:
            corr = K.yarn_corr_dims(hp.n_rot, hp.n_ctx_orig or n_pos, base, hp.beta_fast, hp.beta_slow)
            c = K.rope_cache(n_pos, hp.n_rot, base, scale, factors, hp.ext_factor, hp.attn_factor,
                             corr[0], corr[1])
            self._rope[key] = c
        return c

    def run_layer(self, il: int, b: Batch) -> None:
        """Layer ``il`` over every token of the batch, in place on ``b.x``."""
        hp, spec, p = self.hp, self.hp.spec, f"blk.{il}."
        n = b.n_tokens
        h = self._norm(b.x, p + "attn_norm.weight")
        nq, nk, nv = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim, hp.n_head_kv * hp.head_dim_v
        if self.has(p + "attn_qkv.weight"):
            qkv = self._linear(p + "attn_qkv", h)
            q, k, v = qkv[:, :nq], qkv[:, nq:nq + nk], qkv[:, nq + nk:nq + nk + nv]
        else:
            q, k, v = (self._linear(p + "attn_q", h), self._linear(p + "attn_k", h),
                       self._linear(p + "attn_v", h))
        del h
        q = np.ascontiguousarray(q).reshape(n, hp.n_head, hp.head_dim)
        k = np.ascontiguousarray(k).reshape(n, hp.n_head_kv, hp.head_dim)
        v = np.ascontiguousarray(v).reshape(n, hp.n_head_kv, hp.head_dim_v)
        if spec.qk_norm:
            q = self._norm(q.reshape(-1, hp.head_dim), p + "attn_q_norm.weight").reshape(q.shape)
            k = self._norm(k.reshape(-1, hp.head_dim), p + "attn_k_norm.weight").reshape(k.shape)
        cache = self._rope_cache(il, int(b.lengths.max()))
        K.rope_(q, b.pos, cache, hp.n_rot, spec.rope_neox)
        K.rope_(k, b.pos, cache, hp.n_rot, spec.rope_neox)
        kq_scale = hp.attn_scale
        if spec.q_prescale:                               # gemma, phi3 scale Q before attention
            q *= np.float32(kq_scale)
            kq_scale = 1.0
        att = _attention(q, k, v, b, kq_scale, hp.attn_softcap, hp.n_swa if hp.is_swa(il) else 0,
                         self.threads or os.cpu_count() or 1)
        del q, k, v
        o = self._linear(p + "attn_output", att)
        del att
        if spec.post_norms:
            o = self._norm(o, p + "post_attention_norm.weight")
        b.x += o
        del o
        h = self._norm(b.x, p + "ffn_norm.weight")
        if self.has(p + "ffn_gate.weight"):
            g = self._linear(p + "ffn_gate", h)
            u = self._linear(p + "ffn_up", h)
        else:                                             # phi3: fused gate_up in ffn_up, gate first
            gu = self._linear(p + "ffn_up", h)
            half = gu.shape[1] // 2
            g, u = np.ascontiguousarray(gu[:, :half]), np.ascontiguousarray(gu[:, half:])
            del gu
        del h
        a = K.gelu_mul(g, u) if spec.ffn_act == "gelu" else K.silu_mul(g, u)
        del g, u
        f = self._linear(p + "ffn_down", a)
        del a
        if spec.post_norms:
            f = self._norm(f, p + "post_ffw_norm.weight")
        b.x += f

    def head(self, b: Batch, cancel: Optional[CancelToken] = None,
             positions: Optional[slice] = None) -> Iterator[tuple[int, np.ndarray]]:
        """Final norm and output matmul; yields (sequence index, logits (n_ctx, n_vocab)) in order.
        ``positions`` (a slice of each sequence's positions, e.g. the scored ones): logits of those rows
        only, as llama.cpp computes only the outputs it is asked for (a row's logits do not depend on
        the others')."""
        hp = self.hp
        x, seqs = b.x, [b.seq(i) for i in range(len(b.lengths))]
        if positions is not None:
            idx = [np.arange(sl.start, sl.stop)[positions] for sl in seqs]
            x = b.x[np.concatenate(idx)]
            ends = np.cumsum([len(r) for r in idx])
            seqs = [slice(int(e) - len(r), int(e)) for e, r in zip(ends, idx)]
        h = self._norm(x, "output_norm.weight")
        if self.on_linear_input is not None:
            self.on_linear_input(self.output_name, h)
        bias = self.tensor("output.bias")
        t = self.source.tensor(self.output_name) if self.output_name in self.source else None
        nbytes = 4 * (t.n_elements if t is not None else hp.n_vocab * hp.n_embd)
        budget = max(_MIN_OUTPUT_BUDGET, self._largest_layer_matrix())
        if nbytes <= budget:
            whole = self.required(self.output_name)
            for i, sl in enumerate(seqs):
                if cancel is not None:
                    cancel.check()
                yield i, self._finish_logits(h[sl] @ whole.T, bias)
            return
        # streamed in row blocks of half the budget, for as many sequences at once as half the budget of
        # logits holds: the matrix is read once per such group of sequences, not once per sequence
        per_seq = 4 * hp.n_vocab * max(1, max(sl.stop - sl.start for sl in seqs))
        step = max(1, (budget // 2) // per_seq)
        for g0 in range(0, len(seqs), step):
            group = seqs[g0:g0 + step]
            hs = h[group[0].start:group[-1].stop]
            logits = np.empty((hs.shape[0], hp.n_vocab), np.float32)
            for a, rows in self._row_blocks(self.output_name, budget // 2):
                if cancel is not None:
                    cancel.check()
                logits[:, a:a + rows.shape[0]] = hs @ rows.T
            o = group[0].start
            for i, sl in enumerate(group):
                yield g0 + i, self._finish_logits(logits[sl.start - o:sl.stop - o], bias)

    def _finish_logits(self, logits: np.ndarray, bias: Optional[np.ndarray]) -> np.ndarray:
        if bias is not None:
            logits += bias
        if self.hp.final_softcap:
            K.softcap_(logits, self.hp.final_softcap)
        return logits

    def _largest_layer_matrix(self) -> int:
        return max((4 * t.n_elements for t in self.source.tensors
                    if t.layer is not None and t.n_dims == 2), default=0)

    # -- the whole pass ------------------------------------------------------------------
    def run(self, tokens: Tokens, *, progress: ProgressCallback = no_progress,
            cancel: Optional[CancelToken] = None) -> Iterator[tuple[int, np.ndarray]]:
        """Run a batch; yields (sequence index, logits (n_ctx, n_vocab) float32) in order.
        Progress counts layers (token_embd, each block, the head) with the number of tokens as
        ``item_total``; ``cancel`` is checked between layers and between sequences of the head."""
        hp = self.hp
        tracker = ProgressTracker(progress, total=hp.n_layer + 2, stage="forward")
        with blas_threads(self.threads):
            b = self.embed(tokens)
            tracker.advance(1, item="token_embd", item_done=b.n_tokens, item_total=b.n_tokens)
            for il in range(hp.n_layer):
                if cancel is not None:
                    cancel.check()
                self.run_layer(il, b)
                tracker.advance(1, item=f"blk.{il}", item_done=b.n_tokens, item_total=b.n_tokens)
            if cancel is not None:
                cancel.check()
            n_seq = len(b.lengths)
            for i, logits in self.head(b, cancel):
                if i == n_seq - 1:
                    tracker.advance(1, item="output", item_done=b.n_tokens, item_total=b.n_tokens)
                yield i, logits

    def logits(self, tokens: Tokens, **kw) -> list[np.ndarray]:
        """All logits of a (small) batch as a list, one (n_ctx, n_vocab) array per sequence."""
        return [lg for _, lg in self.run(tokens, **kw)]


def _as_sequences(tokens: Tokens) -> list[np.ndarray]:
    if isinstance(tokens, np.ndarray):
        if tokens.ndim == 1:
            return [tokens.astype(np.int64)]
        if tokens.ndim == 2:
            return [row.astype(np.int64) for row in tokens]
        raise QuantStudioError(f"tokens must be 1-D or 2-D, not {tokens.ndim}-D")
    seqs = list(tokens)
    if seqs and np.ndim(seqs[0]) == 0:                    # one flat list of ids
        return [np.asarray(seqs, np.int64)]
    return [np.asarray(s, np.int64).reshape(-1) for s in seqs]


def _attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, b: Batch, scale: float,
               softcap: float, n_swa: int, threads: int = 1) -> np.ndarray:
    """Causal (sliding-window when n_swa > 0) softmax attention per sequence and KV head; the g query
    heads sharing a KV head (GQA: head h uses KV head h // g) are stacked into one GEMM. Queries go in
    blocks so that the scores stay near 64 MiB; keys stop at the block's last position.
    With ``threads`` > 1 the (sequence, KV head) pairs are shared by that many Python threads, each
    with single-threaded BLAS (these GEMMs are too small for BLAS's own threads to pay off: under
    load they cost ten times the work); results do not depend on ``threads``."""
    n, n_head, _ = q.shape
    n_kv, dv = v.shape[1], v.shape[2]
    g = n_head // n_kv
    out = np.empty((n, n_head, dv), np.float32)

    def unit(s: int, j: int) -> None:
        a = int(b.starts[s])
        L = int(b.lengths[s])
        qb = max(16, min(L, _ATTN_QUERY_BLOCK, _ATTN_BLOCK_FLOATS // max(1, g * L)))
        kh = np.ascontiguousarray(k[a:a + L, j, :])
        vh = np.ascontiguousarray(v[a:a + L, j, :])
        qh = q[a:a + L, j * g:(j + 1) * g, :]
        for q0 in range(0, L, qb):
            q1 = min(L, q0 + qb)
            k0 = max(0, q0 - n_swa + 1) if n_swa > 0 else 0
            blk = np.ascontiguousarray(qh[q0:q1].transpose(1, 0, 2)).reshape(g * (q1 - q0), -1)
            sc = blk @ kh[k0:q1].T
            K.softmax_rows_(sc, q1 - q0, q0, k0, np.float32(scale), np.float32(softcap), n_swa)
            o = (sc @ vh[k0:q1]).reshape(g, q1 - q0, dv)
            out[a + q0:a + q1, j * g:(j + 1) * g, :] = o.transpose(1, 0, 2)

    units = [(s, j) for s in range(len(b.lengths)) for j in range(n_kv)]
    if threads > 1 and len(units) > 1:
        with blas_threads(1), ThreadPoolExecutor(min(threads, len(units))) as ex:
            for f in [ex.submit(unit, s, j) for s, j in units]:
                f.result()
    else:
        for s, j in units:
            unit(s, j)
    return out.reshape(n, n_head * dv)


# -- BLAS threads ------------------------------------------------------------------------------
_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
            "openblas_set_num_threads64_", "openblas_set_num_threads", "MKL_Set_Num_Threads")
_GETTERS = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
            "openblas_get_num_threads64_", "openblas_get_num_threads", "MKL_Get_Max_Threads")


@functools.lru_cache(maxsize=None)
def _blas_lib():
    """(setter, getter) of the BLAS numpy loaded, found in /proc/self/maps; (None, None) elsewhere."""
    try:
        with open("/proc/self/maps") as f:
            paths = {ln.split()[-1] for ln in f
                     if ln.split()[-1].startswith("/") and re.search(r"blas|mkl", ln.split()[-1].lower())}
    except OSError:
        return None, None
    for p in sorted(paths):
        try:
            lib = ctypes.CDLL(p)
        except OSError:
            continue
        for s, g in zip(_SETTERS, _GETTERS):
            if hasattr(lib, s) and hasattr(lib, g):
                return getattr(lib, s), getattr(lib, g)
    return None, None


@contextlib.contextmanager
def blas_threads(n: Optional[int]):
    """Within the block, numpy's BLAS uses ``n`` threads (threadpoolctl when installed, else the
    OpenBLAS/MKL setter found by ctypes); None leaves it as it is."""
    if not n:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is not None:
        with threadpool_limits(limits=int(n), user_api="blas"):
            yield
        return
    setter, getter = _blas_lib()
    if setter is None:
        yield
        return
    before = int(getter())
    setter(ctypes.c_int(int(n)))
    try:
        yield
    finally:
        setter(ctypes.c_int(before))


def forward_logits(source: ModelSource, tokens: Tokens, **kw) -> list[np.ndarray]:
    """One-call form: ``Forward(source, **kw).logits(tokens)``."""
    return Forward(source, **kw).logits(tokens)


__all__ = ["Batch", "Forward", "LinearHook", "WeightOverride", "blas_threads", "forward_logits"]
