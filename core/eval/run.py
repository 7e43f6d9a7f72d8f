"""Calibration and evaluation runs: text → tokens → llama.cpp's chunks → the forward pass → an imatrix, or
PPL/KLD of candidates against a base.

- :func:`read_text` / :func:`prepare_chunks`: a text file (or the built-in calibration text) tokenized as
  llama.cpp tokenizes it (core.eval.tokenizer) and cut as ``llama-imatrix`` / ``llama-perplexity`` cut it
  (core.eval.chunking).
- :func:`compute_imatrix`: every chunk through the model with :class:`~core.eval.calibrate.ImatrixCollector`
  on the linear-input hook (what ``llama-imatrix`` collects).
- :func:`evaluate`: a base model and any number of candidates, each a GGUF file or a *plan* evaluated without
  writing a file (each weight quantized → dequantized in memory with the plan's types and imatrix). The base
  and every candidate advance layer by layer in lockstep over a group of chunks, so the weights of each
  stream once per group, and each chunk's base logits are reduced against every candidate as soon as they
  exist: memory is one layer's weights per model + the activations of the group + O(vocab × n_ctx) logits,
  never a logits file. With several threads the models run side by side, each on its share of the threads
  (so each model's matmuls run on one BLAS thread when there are no more threads than models), and only
  the logits of the rows llama-perplexity scores are computed; the figures do not depend on the threads.

Chunks are processed in groups of about ``tokens_per_pass`` tokens (several chunks share one weight pass;
results do not depend on the grouping beyond float32 summation order).
"""
from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from ..errors import QuantStudioError, SourceError
from ..progress import CancelToken, ProgressCallback, ProgressTracker, no_progress
from ..sources.base import ModelSource
from .calibrate import ImatrixCollector, Provenance, text_sha256
from .chunking import Chunks, chunk_tokens
from .forward import Forward, blas_threads
from .metrics import KLDReducer, KLDResult, prepare_base

BUILTIN_TEXT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "calibration-v1.txt")
BUILTIN_NAME = "quant-studio-calibration-v1"
DEFAULT_TOKENS_PER_PASS = 4096


# ------------------------------------------------------------------------------------------- text
def read_text(path: Optional[str] = None) -> tuple[str, str]:
    """(text, dataset name) of a UTF-8 text file, or of the built-in calibration text when ``path`` is None.
    SourceError naming the file when it is missing, unreadable, not UTF-8 or empty."""
    p = BUILTIN_TEXT if path is None else os.fspath(path)
    name = BUILTIN_NAME if path is None else os.path.basename(p)
    try:
        with open(p, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise SourceError("no such text file", p) from None
    except IsADirectoryError:
        raise SourceError("is a folder, not a text file", p) from None
    except OSError as e:
        raise SourceError(f"cannot read: {e.strerror or e}", p) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SourceError(f"not UTF-8 text (invalid byte at offset {e.start})", p) from None
    if not text.strip():
        raise SourceError("the text file is empty", p)
    if text.endswith("\n"):            # llama.cpp's -f drops one trailing newline (common/arg.cpp)
        text = text[:-1]
    return text, name


def prepare_chunks(source: ModelSource, text: str, n_ctx: int = 512, n_chunks: int = -1,
                   skip_chunks: int = 0) -> Chunks:
    """The text tokenized with the model's own tokenizer (BOS as its metadata says) and cut into llama.cpp's
    chunks of ``n_ctx`` tokens (at most ``n_chunks``; negative: all)."""
    from .tokenizer import load_tokenizer

    tok = load_tokenizer(source)
    if tok.add_eos:
        raise QuantStudioError("the model's vocabulary appends EOS to every text; llama.cpp's imatrix and "
                               "perplexity tools refuse such models, and so does Quant Studio")
    ids = tok.encode(text)
    return chunk_tokens(ids, n_ctx, bos=tok.bos_id if tok.add_bos else None, n_chunks=n_chunks,
                        skip_chunks=skip_chunks)


def _groups(chunks: Chunks, tokens_per_pass: int) -> list[np.ndarray]:
    per = max(1, int(tokens_per_pass) // chunks.n_ctx)
    return [chunks.tokens[a:a + per] for a in range(0, chunks.n_chunk, per)]


# ------------------------------------------------------------------------------------------- imatrix
def compute_imatrix(source: ModelSource, chunks: Chunks, *, threads: Optional[int] = None,
                    process_output: bool = False, tokens_per_pass: int = DEFAULT_TOKENS_PER_PASS,
                    collector: Optional[ImatrixCollector] = None,
                    progress: ProgressCallback = no_progress,
                    cancel: Optional[CancelToken] = None) -> ImatrixCollector:
    """The statistics ``llama-imatrix`` collects over ``chunks`` (Σx², Σx and counts per weight). Progress
    counts layers × chunk groups; the cancel token is checked between layers."""
    col = collector or ImatrixCollector(chunk_size=chunks.n_ctx, process_output=process_output)
    fw = Forward(source, on_linear_input=col.on_linear_input, threads=threads, n_ctx=chunks.n_ctx)
    groups = _groups(chunks, tokens_per_pass)
    steps = fw.hp.n_layer + (2 if process_output else 1)
    tracker = ProgressTracker(progress, total=steps * len(groups), stage="calibrating")
    cancel = cancel or CancelToken()
    with blas_threads(threads):
        for g, toks in enumerate(groups):
            label = f"chunks {g * len(groups[0]) + 1}-{g * len(groups[0]) + len(toks)} of {chunks.n_chunk}"
            cancel.check()
            b = fw.embed(toks)
            tracker.advance(1, item=label)
            for il in range(fw.hp.n_layer):
                cancel.check()
                fw.run_layer(il, b)
                tracker.advance(1, item=f"{label}: blk.{il}")
            if process_output:
                for _ in fw.head(b, cancel):
                    pass
                tracker.advance(1, item=f"{label}: output")
    return col


def imatrix_provenance(source: ModelSource, chunks: Chunks, text: str, dataset: str) -> Provenance:
    return Provenance(dataset=dataset, text_sha256=text_sha256(text), n_ctx=chunks.n_ctx, n_chunks=chunks.n_chunk,
                      n_tokens=chunks.n_chunk * chunks.n_ctx, model=os.path.basename(source.path or ""))


# ------------------------------------------------------------------------------------------- candidates
def plan_weights(plan, importances: Optional[Mapping[str, np.ndarray]] = None,
                 threads: int = 1) -> Callable[[str, np.ndarray], np.ndarray]:
    """A weight override for :class:`Forward`: every tensor the plan quantizes is quantized with the plan's
    type (and the tensor's importance weights, as the job would) and dequantized back, in memory."""
    from ..kernels import get_kernel

    entries = {e.name: e for e in plan.entries}
    imp = dict(importances or {})

    def override(name: str, arr: np.ndarray) -> np.ndarray:
        e = entries.get(name)
        if e is None or not e.quantize:
            return arr
        kernel = get_kernel(e.qtype)
        row_len = arr.shape[-1]
        x = np.ascontiguousarray(arr, dtype=np.float32).reshape(-1, row_len)
        w = imp.get(name)
        if w is not None:
            w = np.ascontiguousarray(w, dtype=np.float32)
        if w is not None and w.ndim == 2:            # per-expert weights: one slice per expert
            per = x.shape[0] // w.shape[0]
            out = np.empty_like(x)
            for i in range(w.shape[0]):
                q = kernel.quantize(x[i * per:(i + 1) * per], w[i], threads=threads)
                out[i * per:(i + 1) * per] = kernel.dequantize(q, row_len, threads=threads)
            return out.reshape(arr.shape)
        q = kernel.quantize(x, w, threads=threads)
        return kernel.dequantize(q, row_len, threads=threads).reshape(arr.shape)

    return override


@dataclass
class Candidate:
    """What is evaluated against the base: a model (``source``: a GGUF of the same model) or a plan
    simulated on the base's weights (``plan`` + its ``importances``). ``label`` names it in results."""

    label: str
    source: Optional[ModelSource] = None
    plan: object = None
    importances: Optional[Mapping[str, np.ndarray]] = None
    size: Optional[int] = None           # file bytes (a file) or predicted bytes (a plan), for tables
    bpw: Optional[float] = None
    info: dict = field(default_factory=dict)

    def forward(self, base: ModelSource, threads: Optional[int], n_ctx: int) -> Forward:
        if self.source is not None:
            return Forward(self.source, threads=threads, n_ctx=n_ctx)
        if self.plan is None:
            raise QuantStudioError(f"candidate {self.label}: neither a model nor a plan")
        return Forward(base, weights=plan_weights(self.plan, self.importances, threads or 1), threads=threads,
                       n_ctx=n_ctx)


def file_candidate(path: str, source: Optional[ModelSource] = None) -> Candidate:
    """A GGUF file as a candidate (``source``: it already opened), labelled with its file name."""
    if source is None:
        from ..models import open_model
        source = open_model(path)
    return Candidate(os.path.basename(path), source=source, size=os.path.getsize(path),
                     bpw=8.0 * source.n_bytes / max(1, source.n_params), info={"kind": "file"})


@dataclass
class EvalResult:
    label: str
    kld: KLDResult
    size: Optional[int] = None
    bpw: Optional[float] = None
    kld_per_token: Optional[np.ndarray] = None      # float32 (n_chunk, scored) in chunk order, for pictures
    top_base: Optional[np.ndarray] = None           # int32 (n_chunk, scored): the base's argmax per position
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {"label": self.label, "size": self.size, "bpw": self.bpw}
        d.update(self.kld.to_dict())
        return d


class _Lanes:
    """``map(fn, items)`` → ``[fn(x) for x in items]``, run by ``n`` threads when n > 1 (the models of an
    evaluation side by side: the matmuls release the GIL and the Numba kernels are nogil); the first
    exception is raised in the caller."""

    def __init__(self, n: int):
        self.pool = ThreadPoolExecutor(n) if n > 1 else None

    def __enter__(self) -> "_Lanes":
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def map(self, fn: Callable, items) -> list:
        if self.pool is None:
            return [fn(x) for x in items]
        futures = [self.pool.submit(fn, x) for x in items]
        try:
            return [f.result() for f in futures]
        finally:
            for f in futures:                      # none left running when the first one failed
                f.cancel()
            wait(futures)


def _check_compatible(base: Forward, other: Forward, label: str) -> None:
    if base.hp.n_vocab != other.hp.n_vocab:
        raise QuantStudioError(f"{label}: its vocabulary has {other.hp.n_vocab} tokens, the base's "
                               f"{base.hp.n_vocab}: not the same model")


def evaluate(base: ModelSource, candidates: Sequence[Candidate], chunks: Chunks, *,
             threads: Optional[int] = None, tokens_per_pass: int = DEFAULT_TOKENS_PER_PASS,
             keep_per_token: bool = False, progress: ProgressCallback = no_progress,
             cancel: Optional[CancelToken] = None) -> list[EvalResult]:
    """PPL of the base and PPL/KLD/Δp/same-top of every candidate against it over ``chunks``, as
    ``llama-perplexity --kl-divergence`` computes them (core.eval.metrics). ``keep_per_token``: also return
    each candidate's per-token KLD (for the distribution and the text view)."""
    if not candidates:
        raise QuantStudioError("nothing to evaluate: give at least one candidate")
    n_ctx = chunks.n_ctx
    fb = Forward(base, threads=threads, n_ctx=n_ctx)
    fcs = [c.forward(base, threads, n_ctx) for c in candidates]
    for c, f in zip(candidates, fcs):
        _check_compatible(fb, f, c.label)
        if f.hp.n_layer != fb.hp.n_layer:
            raise QuantStudioError(f"{c.label}: {f.hp.n_layer} layers, the base has {fb.hp.n_layer}: "
                                   "not the same model")
    reducers = [KLDReducer(n_ctx) for _ in candidates]
    per_token: list[list[np.ndarray]] = [[] for _ in candidates]
    tops: list[np.ndarray] = []
    groups = _groups(chunks, tokens_per_pass)
    models = (fb, *fcs)
    n_models = len(models)
    tracker = ProgressTracker(progress, total=len(groups) * (fb.hp.n_layer + 2) * n_models, stage="evaluating")
    cancel = cancel or CancelToken()
    scored = slice(n_ctx // 2, n_ctx - 1)             # the rows llama-perplexity scores
    n_threads = threads or os.cpu_count() or 1
    workers = min(n_threads, n_models)
    if workers > 1:                                   # the models run side by side, each on its share
        for f in models:
            f.threads = max(1, n_threads // workers)
    done_chunks = 0
    with blas_threads(threads if workers == 1 else max(1, n_threads // workers)), \
            _Lanes(workers) as lanes:
        for toks in groups:
            label = f"chunks {done_chunks + 1}-{done_chunks + len(toks)} of {chunks.n_chunk}"
            cancel.check()
            batches = lanes.map(lambda f: f.embed(toks), models)
            tracker.advance(n_models, item=label)
            for il in range(fb.hp.n_layer):
                def layer(k: int, il: int = il) -> None:
                    cancel.check()
                    models[k].run_layer(il, batches[k])
                lanes.map(layer, range(n_models))
                tracker.advance(n_models, item=f"{label}: blk.{il}")
            heads = [f.head(b, cancel, positions=scored) for f, b in zip(models, batches)]

            for i in range(len(toks)):
                # chunk i: the base's logits → its uint16 table (base_out); each candidate's logits, reduced
                # against that table as soon as it exists; at most `workers` models' logits at a time
                base_out: Future = Future()

                def chunk(k: int, i: int = i, base_out: Future = base_out):
                    if k == 0:
                        try:
                            bc = prepare_base(next(heads[0])[1], n_ctx)
                        except BaseException as e:
                            base_out.set_exception(e)
                            raise
                        base_out.set_result(bc)
                        return bc
                    lg = next(heads[k])[1]
                    return reducers[k - 1].add(base_out.result(), lg, toks[i])

                bc, *kls = lanes.map(chunk, range(n_models))
                if keep_per_token:
                    tops.append(bc.q.argmax(axis=1).astype(np.int32))
                    for k, kl in enumerate(kls):
                        per_token[k].append(kl)
            batches = heads = None              # this group's activations go before the next's come
            tracker.advance(n_models, item=f"{label}: output")
            done_chunks += len(toks)
    out = []
    for k, c in enumerate(candidates):
        out.append(EvalResult(c.label, reducers[k].result(), c.size, c.bpw,
                              np.stack(per_token[k]) if keep_per_token else None,
                              np.stack(tops) if keep_per_token else None, dict(c.info)))
    return out

