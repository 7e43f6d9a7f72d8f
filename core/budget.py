"""The budget solver: a type per tensor for a target size, bpw or memory, chosen from measured error.

Two steps, the first cached (:class:`Measurements`), the second instant (:func:`solve`):

1. **Error model** (:func:`measure`). For each quantizable tensor ``t`` and candidate type ``T``:
   ``E[t][T] = Σ_rows Σ_j w_j (x_ij − q_ij)²`` -- the imatrix-weighted squared error of
   quantize→dequantize (``w_j``: the imatrix's mean squared activation of input column ``j``; unweighted
   when the tensor has none), i.e. the expected change of that tensor's output energy on calibration
   activations. It comes from :func:`core.preview.estimate` on a fixed, seeded sample of rows
   (``sample_rows``, reproducible). Then a **sensitivity** ``s[t]`` (KLD per unit of ``E``) is measured
   once per model with the forward pass: each *group* -- every layer (all its matrices), every tensor kind
   (``attn_q`` … over all layers), ``token_embd`` and ``output`` -- is quantized alone to a probe type
   (Q4_0) as a weight override, and the change of the mean KL-divergence over a few calibration chunks is
   divided by the group's ``E``. Layers re-run from the base's cached activations at that layer, so a
   layer group costs the remaining layers plus the head. A tensor of layer ``l`` and kind ``k`` gets
   ``s = a[k] · b[l]``, fitted (iterative proportional fitting) so that the predicted ΔKLD of every layer
   group and every kind group equals the measured one; a tensor in no layer gets its group's ``ΔKLD / E``.
   The predicted KLD of a plan is ``Σ_t s[t] · E[t][type_t]`` (on the demo it lands within ~10-25 % of the
   simulated KLD of the presets' and the solver's plans).
   Cost on the demo (SmolLM2-135M, 2 cores): the base pass plus 38 group passes (8 kinds in full, 30
   layers from their own layer on) over the sensitivity chunks -- ~5.5 min for the default 8 × 128 tokens,
   ~2 min for 3 × 128 -- plus the error table (~45 s for 13 types at 512 sampled rows per tensor).
   ``fast=True`` skips the forward pass: ``s = 1`` for imatrix-weighted tensors, and for the rest the
   mean imatrix weight of the model (their error counted as if their inputs had the model's typical
   activation power).
   Measurements are cached as JSON under ``~/.cache/quant-studio/budget/`` (``QUANT_STUDIO_CACHE``
   overrides the root) keyed by the model file's path/size/mtime, the imatrix content id, the calibration
   text's hash, the chunking, the candidate types and the sample size.

2. **Solver** (:func:`solve`). Per tensor the lower convex frontier of (bytes, predicted KLD) over the
   allowed candidates (types whose blocks fit the rows, that need no imatrix when there is none); a
   greedy Lagrangian allocation from the cheapest frontier point takes the step with the best KLD
   reduction per extra byte until the next one would overshoot; a final fill spends what is left on the
   best single upgrades (any candidate, not only the frontier) that still fit. Sizes are exact: the
   file's header (metadata, tensor infos) is the same for any choice of types, each tensor costs its
   data padded to the alignment, and the result is checked with :func:`core.plan.predict_size`.
   Deterministic (ties broken by tensor order and type name).

Targets (:class:`Target`): ``size`` (file bytes), ``bpw`` (tensor data bits per weight, as
llama-quantize and ``--dry-run`` report it), ``memory`` with a context ``n_ctx``::

    memory = file size                       (weights: llama.cpp maps the file; headers included, so conservative)
           + KV cache    n_layer · n_kv · n_head_kv · (head_dim_k + head_dim_v) · 2 bytes   (F16 K and V)
           + compute     4 bytes · n_ub · max(n_vocab + 6 · n_embd,                                  (logits)
                                              (n_head + 1) · n_kv + 2 · n_ff + 3 · n_embd + 2 · n_embd_kv)
           + output      4 bytes · n_vocab                                         (the logits buffer)
    n_kv = n_ctx padded to a multiple of 256 (llama_context does), n_ub = min(512, n_kv) (the default
    n_ubatch), n_embd_kv = n_head_kv · head_dim.

The compute buffer is ggml-alloc's high-water mark over the worst-case graph (n_ub tokens, all with
logits): either the logits phase (the n_vocab × n_ub logits plus a few rows of activations) or, without
flash attention, one layer's attention phase (the n_head × n_kv × n_ub KQ scores, softmaxed in place, plus the
n_kv × n_ub F32 mask plus the activations the allocator keeps below them); the activation terms are upper
bounds fitted to what llama.cpp reports. Checked against llama-cpp-python 0.3.36 (the pinned llama.cpp,
CPU, one sequence) loading the demo, three synthetic llamas (2-3 layers; 256/512/1024 wide, MHA and GQA,
vocabularies of 512 and 49k) and two shape-only llamas (Qwen2.5-0.5B's and Llama-3-8B's widths and
vocabularies, 2-3 layers) at n_ctx 256, 512, 1000, 2048, 4096 and 8192 (tests/core/test_budget_memory.py,
run as a script it prints the table): the KV cache and output buffer are exact; with flash attention off
(llama-cpp-python's default) the compute estimate is 1.7-13 % over what llama.cpp reports when the buffer
is 50 MiB or more, up to 25 % over on the toy models' smaller buffers (3-43 MiB), never under; with flash
attention on it is never under either (0.2 % over in the tightest case, the demo's logits phase at n_ctx
2048) and much larger than needed at long contexts (no KQ matrix then). Weights + KV + compute + output:
1.2-13 % over llama.cpp's total without flash attention (at most 3.5 % when that total is over 100 MiB),
never under.
Not counted: on CPUs where llama.cpp repacks Q4_0/Q4_K/IQ4_NL/Q8_0 matrices for faster kernels it allocates
a CPU_REPACK buffer about as large as those tensors, whose mapped pages then are only page cache; other
n_ubatch/n_seq settings, quantized KV caches and GPU offload change the figures.

Pins (``REGEX=TYPE``: exactly that type, with llama.cpp's row-length fallback; ``REGEX=>=TYPE``: any
candidate with at least that many bits per weight) and ``allow`` (the candidate set) shape the solve;
exactly pinned tensors are out of it. The result is an ordinary :class:`~core.plan.Plan` whose
``rules.manual`` holds every choice (it round-trips through the plan JSON and ``--plan``), each entry's
reason saying why; :func:`plan_json` adds the target, pins, allowed types and measurements' hash.
"""
from __future__ import annotations

import hashlib
import heapq
import json
import math
import os
import re
import time
import types as _types
from dataclasses import asdict, dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np
from gguf.constants import GGMLQuantizationType

from .errors import PlanError, QuantStudioError
from .gguf_out import pad
from .plan import Plan, make_plan, predict_size
from .presets import PRESETS, allows_quantization, fallback_type, tensor_requires_imatrix
from .progress import CancelToken, ProgressCallback, ProgressTracker, no_progress
from .qtypes import parse_type, type_info
from .rules import PlanRules, writable

MEASURE_VERSION = 1
PROBE_TYPE = "Q4_0"
DEFAULT_TYPES = ("Q2_K", "Q3_K", "IQ4_XS", "Q4_K", "Q5_K", "Q6_K", "Q4_0", "Q4_1", "IQ4_NL", "Q5_0", "Q5_1",
                 "Q8_0", "F16")
DEFAULT_SAMPLE_ROWS = 512
DEFAULT_SENS_CTX = 128
DEFAULT_SENS_CHUNKS = 8
KIND_RE = re.compile(r"^blk\.(\d+)\.(.+)$")


# ----------------------------------------------------------------------------- targets
def parse_size_text(text: str) -> int:
    """``4.5G``, ``500M``, ``4.5GiB``, ``123456`` -> bytes (K/M/G/T decimal, KiB/MiB/GiB/TiB binary)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(I?B?)\s*", str(text).upper())
    if not m or float(m.group(1)) <= 0:
        raise QuantStudioError(f"invalid size '{text}': use e.g. 4.5G, 700M, 3.2GiB or bytes")
    base = 1024 if m.group(3).startswith("I") else 1000
    return int(float(m.group(1)) * base ** "_KMGT".index(m.group(2) or "_"))


@dataclass(frozen=True)
class Target:
    kind: str                         # "size" | "bpw" | "memory"
    value: float                      # bytes, bits per weight, or bytes of memory
    n_ctx: int = 0                    # memory: context length

    def to_dict(self) -> dict:
        return asdict(self)


def kv_cells(n_ctx: int) -> int:
    """The KV cache's cells for a context of ``n_ctx`` tokens: llama_context pads it to a multiple of 256."""
    return -(-max(1, int(n_ctx)) // 256) * 256


def memory_overhead(metadata: Mapping, n_ctx: int, n_ubatch: int = 512) -> dict:
    """What llama.cpp allocates besides the weights for a context of ``n_ctx`` tokens (CPU, one sequence,
    F16 KV cache, n_ubatch 512; see the module docstring), in bytes: ``kv_cache``, ``compute`` (an upper
    bound of the compute buffer, with flash attention off or on) and ``output`` (the logits buffer); the
    values sum to the whole overhead."""
    arch = str(metadata.get("general.architecture", "llama"))

    def g(key, default=0):
        v = metadata.get(f"{arch}.{key}", default)
        v = np.asarray(v).reshape(-1)
        return int(v.max()) if v.size else int(default)

    n_layer, n_embd = g("block_count"), g("embedding_length")
    n_head = g("attention.head_count", 1)
    n_head_kv = g("attention.head_count_kv", n_head)
    head_k = g("attention.key_length", n_embd // max(1, n_head))
    head_v = g("attention.value_length", head_k)
    n_ff = g("feed_forward_length")
    vocab = metadata.get("tokenizer.ggml.tokens")
    n_vocab = g("vocab_size", len(vocab) if vocab is not None else 32000)
    n_kv = kv_cells(n_ctx)
    kv = n_layer * n_kv * n_head_kv * (head_k + head_v) * 2     # K and V, F16
    ub = min(int(n_ubatch), n_kv)
    n_embd_kv = n_head_kv * max(head_k, head_v)
    per_token = max(n_vocab + 6 * n_embd,                                         # logits phase
                    (n_head + 1) * n_kv + 2 * n_ff + 3 * n_embd + 2 * n_embd_kv)  # attention: KQ + mask
    compute = 4 * ub * per_token
    output = 4 * n_vocab
    return {"kv_cache": kv, "compute": compute, "output": output}


# ----------------------------------------------------------------------------- measurements
@dataclass
class Measurements:
    key: str
    types: list[str]                             # the candidates (errors also hold the probe type)
    errors: dict[str, dict[str, float]]          # tensor -> type -> E (weighted squared error)
    sensitivity: dict[str, float]                # tensor -> predicted KLD per unit of E
    groups: dict[str, dict] = field(default_factory=dict)   # group -> {"dkld", "error", "s"}
    info: dict = field(default_factory=dict)

    def predicted(self, name: str, t: str) -> float:
        return self.sensitivity[name] * self.errors[name][t]

    def to_json(self) -> str:
        return json.dumps({"version": MEASURE_VERSION, **asdict(self)})

    @classmethod
    def from_json(cls, text: str) -> "Measurements":
        d = json.loads(text)
        if d.pop("version", None) != MEASURE_VERSION:
            raise ValueError("old measurement cache")
        return cls(**d)


def cache_dir() -> str:
    root = os.environ.get("QUANT_STUDIO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "quant-studio")
    return os.path.join(root, "budget")


def measurement_key(source, imatrix_id: Optional[str], text_hash: Optional[str], types: Sequence[str],
                    sample_rows: int, n_ctx: int, n_chunks: int, fast: bool) -> str:
    path = os.path.realpath(source.path or "")
    try:
        st = os.stat(path)
        stat = (st.st_size, st.st_mtime_ns)
    except OSError:
        stat = (0, 0)
    parts = [MEASURE_VERSION, path, stat, imatrix_id, text_hash, sorted(types), sample_rows, n_ctx, n_chunks, fast]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:24]


def _quantizable(source) -> list:
    arch = source.metadata.get("general.architecture")
    return [t for t in source.tensors if allows_quantization(t.name, t.n_dims, arch)]


def _group_of(name: str) -> tuple[Optional[int], str]:
    m = KIND_RE.match(name)
    if m:
        return int(m.group(1)), m.group(2)
    return None, name


def _weighted_error(m, imp: Optional[np.ndarray]) -> float:
    if imp is None or m.weighted_rmse is None:
        return float(m.sum_sq_err)
    n_rows = m.total_rows
    n_mat = imp.shape[0] if imp.ndim == 2 else 1
    total_w = float(np.asarray(imp, np.float64).sum()) * (n_rows // n_mat)
    return float(m.weighted_rmse) ** 2 * total_w


def measure(source, importances: Optional[Mapping[str, np.ndarray]] = None, *, imatrix_id: Optional[str] = None,
            chunks=None, text_hash: Optional[str] = None, types: Optional[Sequence[str]] = None,
            fast: bool = False, sample_rows: int = DEFAULT_SAMPLE_ROWS, threads: int = 2,
            use_cache: bool = True, cache: Optional[str] = None, progress: ProgressCallback = no_progress,
            cancel: Optional[CancelToken] = None) -> Measurements:
    """The error table and sensitivities of ``source`` (see the module docstring); ``chunks``
    (core.eval.chunking.Chunks) are the calibration chunks of the sensitivity step (needed unless ``fast``)."""
    from .preview import estimate

    imp = dict(importances or {})
    types = [writable(t, "candidate type") for t in (types or DEFAULT_TYPES)]
    all_types = sorted(set(types) | {PROBE_TYPE})
    n_ctx, n_chunks = (chunks.n_ctx, chunks.n_chunk) if chunks is not None else (0, 0)
    if not fast and chunks is None:
        raise QuantStudioError("measuring sensitivities needs calibration chunks (or use fast mode)")
    key = measurement_key(source, imatrix_id, text_hash, all_types, sample_rows, n_ctx, n_chunks, fast)
    path = os.path.join(cache or cache_dir(), key + ".json")
    if use_cache and os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                return Measurements.from_json(f.read())
        except (OSError, ValueError, TypeError, KeyError):
            pass
    cancel = cancel or CancelToken()
    tensors = _quantizable(source)
    t0 = time.perf_counter()
    errors: dict[str, dict[str, float]] = {}
    tracker = ProgressTracker(progress, total=len(tensors), stage="measuring error")
    for t in tensors:
        cancel.check()
        w = imp.get(t.name)
        row = {}
        for name in all_types:
            if not type_info(name).fits(t.row_len):
                continue
            m = estimate((source, t.name), name, w, sample_rows=sample_rows, seed=0, threads=threads)
            row[name] = _weighted_error(m, w)
        errors[t.name] = row
        tracker.advance(1, item=t.name)
    t_err = time.perf_counter() - t0
    if fast:
        ws = [float(np.mean(w)) for w in imp.values()]
        s_unw = float(np.mean(ws)) if ws else 1.0
        sens = {t.name: (1.0 if t.name in imp else s_unw) for t in tensors}
        groups: dict = {}
    else:
        sens, groups = _sensitivities(source, tensors, errors, imp, chunks, threads, progress, cancel)
    meas = Measurements(key, sorted(types), errors, sens, groups,
                        {"error_seconds": round(t_err, 2),
                         "sensitivity_seconds": round(time.perf_counter() - t0 - t_err, 2),
                         "fast": fast, "sample_rows": sample_rows, "n_ctx": n_ctx, "n_chunks": n_chunks})
    if use_cache:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path + ".partial", "w", encoding="utf-8") as f:
                f.write(meas.to_json())
            os.replace(path + ".partial", path)
        except OSError:
            pass
    return meas


def _sensitivities(source, tensors, errors, imp, chunks, threads, progress, cancel):
    """ΔKLD / E of every group quantized alone to the probe type (see the module docstring)."""
    from .eval.forward import Forward, blas_threads
    from .eval.metrics import KLDReducer, prepare_base
    from .eval.run import plan_weights

    groups: dict[str, list] = {}
    for t in tensors:
        layer, kind = _group_of(t.name)
        if PROBE_TYPE not in errors[t.name]:
            continue
        if layer is None:
            groups.setdefault(kind, []).append(t.name)
        else:
            groups.setdefault(f"layer {layer}", []).append(t.name)
            groups.setdefault(f"kind {kind}", []).append(t.name)
    toks = chunks.tokens
    n_ctx = chunks.n_ctx
    fb = Forward(source, threads=threads, n_ctx=n_ctx)
    n_layer = fb.hp.n_layer
    tracker = ProgressTracker(progress, total=len(groups) + 1, stage="measuring sensitivity")
    out: dict[str, dict] = {}
    with blas_threads(threads):
        b = fb.embed(toks)
        snaps = [b.copy()]
        for il in range(n_layer):
            cancel.check()
            fb.run_layer(il, b)
            snaps.append(b.copy())
        bases = [prepare_base(lg, n_ctx) for _, lg in fb.head(b, cancel)]
        tracker.advance(1, item="base")
        for g, names in groups.items():
            cancel.check()
            entries = [_types.SimpleNamespace(name=n, quantize=True, qtype=GGMLQuantizationType[PROBE_TYPE])
                       for n in names]
            f = Forward(source, weights=plan_weights(_types.SimpleNamespace(entries=entries), imp, threads),
                        threads=threads, n_ctx=n_ctx)
            layers = [_group_of(n)[0] for n in names]
            if g.startswith("layer ") or g.startswith("kind "):
                start = min(layers)
                x = snaps[start].copy()
            elif any(n == "token_embd.weight" or "embd" in n for n in names):
                start, x = 0, f.embed(toks)
            elif g in ("output.weight",):
                start, x = n_layer, snaps[n_layer].copy()
            else:
                start, x = 0, f.embed(toks)
            for il in range(start, n_layer):
                f.run_layer(il, x)
            red = KLDReducer(n_ctx)
            for i, lg in f.head(x, cancel):
                red.add(bases[i], lg, toks[i])
            dkld = float(red.result().kld_mean)
            e = float(sum(errors[n][PROBE_TYPE] for n in names))
            out[g] = {"dkld": dkld, "error": e, "s": max(dkld, 0.0) / e if e > 0 else 0.0, "n": len(names)}
            tracker.advance(1, item=g)
    sens = _fit_sensitivity(tensors, errors, out)
    return sens, out


# ----------------------------------------------------------------------------- pins
@dataclass(frozen=True)
class Pin:
    pattern: str
    type: str
    at_least: bool = False

    def label(self) -> str:
        return f"{self.pattern}={'>=' if self.at_least else ''}{self.type}"


def parse_pin(text: str) -> Pin:
    """``REGEX=TYPE`` (exactly) or ``REGEX=>=TYPE`` (at least as many bits per weight)."""
    rx, sep, t = str(text).partition("=")
    at_least = t.startswith(">=")
    t = t[2:] if at_least else t
    if not sep or not rx or not t:
        raise PlanError(f"malformed pin '{text}': use REGEX=TYPE or REGEX=>=TYPE, e.g. ffn_down=>=Q5_0")
    try:
        re.compile(rx)
    except re.error as e:
        raise PlanError(f"invalid regular expression '{rx}' in pin '{text}': {e}") from None
    return Pin(rx, writable(t, f"pin '{text}'"), at_least)


# ----------------------------------------------------------------------------- solver
@dataclass
class _Opt:
    type: str
    cost: int            # bytes counted against the target
    err: float           # predicted KLD


def _frontier(opts: list[_Opt]) -> list[_Opt]:
    """Lower convex hull of (cost, err), cost ascending and err strictly descending."""
    opts = sorted(opts, key=lambda o: (o.cost, o.err, o.type))
    mono: list[_Opt] = []
    for o in opts:
        if mono and o.cost == mono[-1].cost:
            continue
        if not mono or o.err < mono[-1].err:
            mono.append(o)
    hull: list[_Opt] = []
    for o in mono:
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b is above the segment a-o: drop it
            if (b.err - a.err) * (o.cost - a.cost) >= (o.err - a.err) * (b.cost - a.cost):
                hull.pop()
            else:
                break
        hull.append(o)
    return hull


@dataclass
class BudgetResult:
    plan: Plan
    target: Target
    target_bytes: int             # the bound checked against predicted size (file bytes, or tensor bytes for bpw)
    size: int                     # predicted file size
    bpw: float
    predicted_kld: float
    pins: list = field(default_factory=list)
    allowed: list = field(default_factory=list)
    measurements: str = ""
    seconds: float = 0.0

    def info(self) -> dict:
        return {"target": self.target.to_dict(), "target_bytes": self.target_bytes,
                "pins": [p.label() for p in self.pins],
                "allowed_types": self.allowed, "measurements": self.measurements,
                "predicted_kld": self.predicted_kld, "size": self.size}


def _tensor_cost(nbytes: int, by_file: bool, alignment: int = 32) -> int:
    return pad(nbytes, alignment) if by_file else nbytes


def solve(source, meas: Measurements, target: Target, *, pins: Sequence[Pin] = (),
          allow: Optional[Sequence[str]] = None, has_imatrix: bool = False, imatrix_path: Optional[str] = None,
          extra_kv: Optional[list] = None) -> BudgetResult:
    """A plan for ``target`` from the measurements (see the module docstring). ``extra_kv``: metadata the
    written file adds (the imatrix's), so that the predicted size is the written file's."""
    t0 = time.perf_counter()
    allowed = sorted({writable(t, "allowed type") for t in (allow or meas.types)})
    tensors = {t.name: t for t in _quantizable(source)}
    order = [t.name for t in source.tensors if t.name in tensors]
    by_file = target.kind != "bpw"
    # a plan with every quantizable tensor at F16 (or its own float type) gives the fixed part of the size
    rules0 = PlanRules.make("F16", pure=True, has_imatrix=has_imatrix, imatrix_path=imatrix_path)
    plan0 = make_plan(source.tensors, source.metadata, rules0)
    pred0 = predict_size(plan0, source, extra_kv=extra_kv)
    alignment = 32
    try:
        alignment = int(source.metadata.get("general.alignment", 32))
    except (TypeError, ValueError):
        pass
    var0 = {e.name: _tensor_cost(e.nbytes, by_file, alignment) for e in plan0.entries if e.name in tensors}
    fixed = (pred0.total if by_file else pred0.tensor_bytes) - sum(var0.values())
    n_elements = pred0.n_elements
    if target.kind == "size":
        bound = int(target.value)
    elif target.kind == "bpw":
        bound = int(math.floor(target.value * n_elements / 8))
    elif target.kind == "memory":
        bound = int(target.value) - sum(memory_overhead(source.metadata, target.n_ctx).values())
    else:
        raise PlanError(f"unknown target kind '{target.kind}'")
    ftype = PRESETS["Q4_K_M"].ftype
    fixed_choice: dict[str, tuple[str, str]] = {}
    options: dict[str, list[_Opt]] = {}
    for name in order:
        t = tensors[name]
        exact = next((p for p in pins if not p.at_least and re.search(p.pattern, name)), None)
        if exact is not None:
            qt, why = fallback_type(parse_type(exact.type), t.row_len)
            fixed_choice[name] = (qt.name, f"pinned: {exact.label()}" + (f"; fallback: {why}" if why else ""))
            continue
        floor = max((type_info(p.type).bpw for p in pins if p.at_least and re.search(p.pattern, name)), default=0.0)
        opts = []
        for tn, e in meas.errors.get(name, {}).items():
            if tn not in allowed or type_info(tn).bpw < floor - 1e-9 or not type_info(tn).fits(t.row_len):
                continue
            if not has_imatrix and tensor_requires_imatrix(name, GGMLQuantizationType[tn], ftype):
                continue
            nbytes = type_info(tn).row_bytes(t.row_len) * (t.n_elements // t.row_len)
            opts.append(_Opt(tn, _tensor_cost(nbytes, by_file, alignment), meas.sensitivity[name] * e))
        if not opts:
            raise PlanError(f"no allowed candidate type fits '{name}' (rows of {t.row_len}; allowed: "
                            f"{', '.join(allowed)}{f'; at least {floor:.2f} bpw' if floor else ''})")
        options[name] = opts

    def cost_of(name, tn):
        t = tensors[name]
        return _tensor_cost(type_info(tn).row_bytes(t.row_len) * (t.n_elements // t.row_len), by_file, alignment)

    budget = bound - fixed - sum(cost_of(n, tn) for n, (tn, _) in fixed_choice.items())
    hulls = {n: _frontier(o) for n, o in options.items()}
    idx = {n: 0 for n in hulls}
    spent = sum(h[0].cost for h in hulls.values())
    if spent > budget:
        err = PlanError(f"the target is too small: even the smallest allowed types need "
                        f"{spent + (bound - budget)} bytes, the target allows {bound}")
        err.min_bytes = spent + (bound - budget)       # read by size_range (it crosses processes intact)
        raise err
    # greedy on the hulls: best KLD reduction per extra byte first
    rank = {n: i for i, n in enumerate(order)}
    heap = []

    def push(n):
        h, i = hulls[n], idx[n]
        if i + 1 < len(h):
            d_cost, d_err = h[i + 1].cost - h[i].cost, h[i].err - h[i + 1].err
            heapq.heappush(heap, (-d_err / d_cost, rank[n], n))

    for n in hulls:
        push(n)
    while heap:
        _, _, n = heapq.heappop(heap)
        h, i = hulls[n], idx[n]
        step = h[i + 1].cost - h[i].cost
        if spent + step > budget:
            continue                        # too big now; smaller steps elsewhere may still fit
        spent += step
        idx[n] = i + 1
        push(n)
    chosen = {n: hulls[n][idx[n]] for n in hulls}
    # final fill: any single upgrade (frontier or not) that still fits, best KLD reduction per byte
    while True:
        best = None
        for n in order:
            if n not in chosen:
                continue
            cur = chosen[n]
            for o in options[n]:
                d_cost, d_err = o.cost - cur.cost, cur.err - o.err
                if d_err <= 0 or spent + d_cost > budget:
                    continue
                score = d_err / d_cost if d_cost > 0 else math.inf
                if best is None or score > best[0]:
                    best = (score, n, o)
        if best is None:
            break
        _, n, o = best
        spent += o.cost - chosen[n].cost
        chosen[n] = o
    # the plan
    types_all = {n: o.type for n, o in chosen.items()} | {n: tn for n, (tn, _) in fixed_choice.items()}
    by_bytes: dict[str, int] = {}
    for n, tn in types_all.items():
        by_bytes[tn] = by_bytes.get(tn, 0) + cost_of(n, tn)
    main = max(sorted(by_bytes), key=lambda k: by_bytes[k]) if by_bytes else "F16"
    preset = main if main in PRESETS else "Q8_0"
    rules = PlanRules.make(preset, pure=True, manual={n: types_all[n] for n in order},
                           has_imatrix=has_imatrix, imatrix_path=imatrix_path)
    plan = make_plan(source.tensors, source.metadata, rules)
    s_rank = sorted(chosen, key=lambda n: (-meas.sensitivity[n] * meas.errors[n].get(PROBE_TYPE, 0.0), rank[n]))
    srank = {n: i + 1 for i, n in enumerate(s_rank)}
    unit = "weighted error" if meas.info.get("fast") else "KLD"
    for e in plan.entries:
        if e.name in fixed_choice:
            e.reason = "budget: " + fixed_choice[e.name][1]
        elif e.name in chosen:
            o, low = chosen[e.name], hulls[e.name][0]
            mib = (o.cost - low.cost) / (1 << 20)
            e.reason = (f"budget: {o.type}, sensitivity rank {srank[e.name]} of {len(chosen)}, "
                        + (f"+{mib:.2f} MiB over {low.type} buys −{low.err - o.err:.4g} {unit} (predicted)"
                           if o.type != low.type else f"the smallest allowed type (predicted {unit} {o.err:.4g})"))
    pred = predict_size(plan, source, extra_kv=extra_kv)
    got = pred.total if by_file else pred.tensor_bytes
    if got > bound:
        raise QuantStudioError(f"internal: solved plan predicts {got} bytes over the bound {bound}")
    if got < 0.995 * bound:
        plan.warnings.append(f"the target allows {bound} bytes but the plan needs only {got}: no allowed type "
                             "upgrade reduces the predicted error further")
    pk = sum(o.err for o in chosen.values())
    res = BudgetResult(plan, target, bound, pred.total, pred.bpw, pk, list(pins), allowed, meas.key,
                       time.perf_counter() - t0)
    plan.budget = res.info()                  # saved with the plan (Plan.to_json)
    return res


def plan_json(result: BudgetResult) -> str:
    """The plan JSON with a ``budget`` object (target, pins, allowed types, measurements' hash); readers
    that do not know it ignore it (:meth:`Plan.from_json` reads only its own keys)."""
    d = json.loads(result.plan.to_json())
    d["budget"] = result.info()
    return json.dumps(d, indent=1)


def read_budget_info(text: str) -> Optional[dict]:
    """The ``budget`` object of a plan JSON, or None."""
    try:
        return json.loads(text).get("budget")
    except (ValueError, AttributeError):
        return None


# ----------------------------------------------------------------------------- the CLI's entry
def target_from_args(args) -> Optional[Target]:
    """The target that ``--target-size`` / ``--target-bpw`` / ``--target-memory --context`` say, or None."""
    given = [k for k in ("target_size", "target_bpw", "target_memory") if getattr(args, k, None)]
    if not given:
        return None
    if len(given) > 1:
        raise QuantStudioError("give one of --target-size, --target-bpw and --target-memory")
    others = [m for m in ("preset", "type", "plan", "recipe_from") if getattr(args, m, None)]
    if others:
        raise QuantStudioError(f"--{given[0].replace('_', '-')} chooses the types itself: drop "
                               + ", ".join("--" + m.replace("_", "-") for m in others))
    if given[0] == "target_size":
        return Target("size", parse_size_text(args.target_size))
    if given[0] == "target_bpw":
        if not 0 < float(args.target_bpw) <= 32:
            raise QuantStudioError(f"--target-bpw {args.target_bpw}: use a value between 0 and 32")
        return Target("bpw", float(args.target_bpw))
    if not getattr(args, "context", None):
        raise QuantStudioError("--target-memory needs --context N (tokens of KV cache to leave room for)")
    return Target("memory", parse_size_text(args.target_memory), int(args.context))


def plan_from_args(source, args, imatrix=None, *, progress: ProgressCallback = no_progress, log=print):
    """(plan, imatrix, plan JSON) for ``quant-studio quantize --target-...``: measures (or reads the cached
    measurements), computes an imatrix on the calibration text when none is given (written to the cache,
    its path in the plan's rules: ``--plan`` needs it back as ``--imatrix``), and solves."""
    target_from_args(args)                    # a wrong target fails before minutes of measuring
    t0 = time.perf_counter()
    meas, imatrix = measure_for(source, imatrix, fast=bool(getattr(args, "fast", False)),
                                calibration_text=getattr(args, "calibration_text", None),
                                threads=getattr(args, "threads", None) or 2, progress=progress, log=log)
    res = solve_from_args(source, meas, imatrix, args, log=log, t0=t0)
    return res.plan, imatrix, plan_json(res)


def _fit_sensitivity(tensors, errors, out: dict, iterations: int = 50) -> dict[str, float]:
    """Per-tensor sensitivity from the group measurements: ``s[t] = a[kind] · b[layer]`` fitted so that
    every layer group's and every kind group's predicted ΔKLD (``Σ s[t] · E[t][probe]``) equals the
    measured one (iterative proportional fitting; the kind totals are first scaled to the layer totals,
    which differ by the non-additivity of KLD). A tensor in no layer gets its own group's ``ΔKLD / E``."""
    floor_pos = [v["s"] for v in out.values() if v["s"] > 0]
    floor = 1e-3 * float(np.median(floor_pos)) if floor_pos else 1.0
    cells: dict[tuple, float] = {}                      # (layer, kind) -> E at the probe type
    for t in tensors:
        layer, kind = _group_of(t.name)
        if layer is not None and f"layer {layer}" in out and f"kind {kind}" in out:
            cells[(layer, kind)] = cells.get((layer, kind), 0.0) + errors[t.name][PROBE_TYPE]
    layers = sorted({c[0] for c in cells})
    kinds = sorted({c[1] for c in cells})
    d_layer = {l_: max(out[f"layer {l_}"]["dkld"], 0.0) for l_ in layers}
    d_kind = {k: max(out[f"kind {k}"]["dkld"], 0.0) for k in kinds}
    tot_l, tot_k = sum(d_layer.values()), sum(d_kind.values())
    if tot_k > 0:
        d_kind = {k: v * tot_l / tot_k for k, v in d_kind.items()}
    a = {k: out[f"kind {k}"]["s"] or floor for k in kinds}
    b = {l_: 1.0 for l_ in layers}
    for _ in range(iterations):
        for l_ in layers:
            den = sum(a[k] * cells.get((l_, k), 0.0) for k in kinds)
            b[l_] = d_layer[l_] / den if den > 0 else 0.0
        for k in kinds:
            den = sum(b[l_] * cells.get((l_, k), 0.0) for l_ in layers)
            a[k] = d_kind[k] / den if den > 0 else 0.0
    sens = {}
    for t in tensors:
        layer, kind = _group_of(t.name)
        if (layer, kind) in cells:
            sens[t.name] = max(a[kind] * b[layer], floor)
        elif layer is None and kind in out:
            sens[t.name] = max(out[kind]["s"], floor)
        else:
            sens[t.name] = floor
    return sens


def nearest_preset(source, size: int, *, has_imatrix: bool = True, extra_kv: Optional[list] = None) -> tuple[str, int]:
    """(llama-quantize preset, its predicted file size) nearest to ``size`` bytes among Q2_K … Q8_0, for the
    "never worse than the preset" comparison (evaluate both with :func:`core.eval.run.evaluate`)."""
    best = None
    for name in PRESET_LADDER:
        try:
            plan = make_plan(source.tensors, source.metadata, name, has_imatrix=has_imatrix)
            total = predict_size(plan, source, extra_kv=extra_kv).total
        except QuantStudioError:
            continue
        if best is None or abs(total - size) < abs(best[1] - size):
            best = (name, total)
    if best is None:
        raise PlanError("no llama-quantize preset applies to this model")
    return best


def check_against_preset(source, plan, imatrix, *, text: str, threads: int = 2, n_ctx: int = DEFAULT_SENS_CTX,
                         n_chunks: int = 4, skip_chunks: int = DEFAULT_SENS_CHUNKS,
                         progress: ProgressCallback = no_progress) -> dict:
    """"Never worse than the preset": the solver's plan and the llama-quantize preset nearest its size,
    both simulated (core.eval.run.evaluate) on chunks of ``text`` the measurements did not use (the ones after
    the first ``skip_chunks``; the text's start when it is too short). Returns ``{"preset", "preset_size",
    "preset_kld", "plan_kld", "worse"}``."""
    from .eval.run import Candidate, evaluate, prepare_chunks

    extra = imatrix.metadata(os.path.basename(imatrix.path or "")) if imatrix is not None else None
    size = predict_size(plan, source, extra_kv=extra).total
    name, psize = nearest_preset(source, size, has_imatrix=imatrix is not None, extra_kv=extra)
    preset = make_plan(source.tensors, source.metadata, name, has_imatrix=imatrix is not None)
    try:
        chunks = prepare_chunks(source, text, n_ctx, n_chunks, skip_chunks=skip_chunks)
    except QuantStudioError:
        chunks = prepare_chunks(source, text, n_ctx, n_chunks)
    imp = None
    if imatrix is not None:
        names = [e.name for e in plan.entries if e.quantize] + [e.name for e in preset.entries if e.quantize]
        imp = imatrix.arrays_for(source.tensors, sorted(set(names)))
    ours, theirs = evaluate(source, [Candidate("budget", plan=plan, importances=imp),
                                     Candidate(name, plan=preset, importances=imp)], chunks, threads=threads,
                            progress=progress)
    return {"preset": name, "preset_size": psize, "size": size, "preset_kld": theirs.kld.kld_mean,
            "plan_kld": ours.kld.kld_mean, "worse": ours.kld.kld_mean > theirs.kld.kld_mean}


# ----------------------------------------------------------------------------- measure once, solve often
PRESET_LADDER = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "IQ4_XS", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K",
                 "Q8_0")                 # the llama-quantize presets a budget plan is compared with
FRONTIER_POINTS = 20


def measure_for(source, imatrix=None, *, fast: bool = False, calibration_text: Optional[str] = None,
                threads: int = 2, progress: ProgressCallback = no_progress, log=print,
                cancel: Optional[CancelToken] = None):
    """(measurements, imatrix) as ``--target-...`` uses them: an imatrix computed on the calibration text
    (the built-in one when None) when none is given -- written to the cache, reused next time -- then
    :func:`measure` with it (cached too). The slow step; :func:`solve` is instant after it."""
    from .eval.calibrate import text_sha256
    from .eval.run import compute_imatrix, imatrix_provenance, prepare_chunks, read_text
    from .imatrix import load_imatrix

    text, name = read_text(calibration_text)
    chunks = prepare_chunks(source, text, DEFAULT_SENS_CTX, DEFAULT_SENS_CHUNKS)
    if imatrix is None:
        key = measurement_key(source, None, text_sha256(text), [], 0, chunks.n_ctx, chunks.n_chunk, False)
        path = os.path.join(cache_dir(), f"{key}.imatrix.gguf")
        if not os.path.exists(path):
            log(f"computing an importance matrix on {name} ({chunks.n_chunk} chunks of {chunks.n_ctx} tokens)")
            col = compute_imatrix(source, chunks, threads=threads, progress=progress, cancel=cancel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            col.write_gguf(path, imatrix_provenance(source, chunks, text, name))
        imatrix = load_imatrix(path)
        log(f"importance matrix: {path} (give it as --imatrix to reproduce the plan with --plan)")
    imp = imatrix.arrays_for(source.tensors, [t.name for t in _quantizable(source)])
    meas = measure(source, imp, imatrix_id=imatrix.id, chunks=None if fast else chunks, text_hash=text_sha256(text),
                   fast=fast, threads=threads, progress=progress, cancel=cancel)
    return meas, imatrix


def error_unit(meas: Measurements) -> str:
    """What the predicted error counts: KLD, or (fast measurements) the imatrix-weighted squared error."""
    return "weighted error" if meas.info.get("fast") else "KLD"


def solve_from_args(source, meas: Measurements, imatrix, args, *, extra_kv: Optional[list] = None, log=None,
                    t0: Optional[float] = None) -> BudgetResult:
    """:func:`solve` for the target, ``pin`` list and ``allow_types`` text of ``args`` (the CLI's names),
    with ``imatrix``'s metadata counted in the size (``extra_kv``: as the caller will write it; by default
    with the file's base name, as the CLI writes it)."""
    target = target_from_args(args)
    pins, allow = pins_and_allow(args)
    if extra_kv is None:
        extra_kv = imatrix.metadata(os.path.basename(imatrix.path or ""))
    res = solve(source, meas, target, pins=pins, allow=allow, has_imatrix=True, imatrix_path=imatrix.path,
                extra_kv=extra_kv)
    if log is not None:
        log(f"budget: {target.kind} target -> bound {res.target_bytes} bytes; predicted file {res.size} bytes, "
            f"{res.bpw:.3f} bpw, predicted {error_unit(meas)} {res.predicted_kld:.4g} (measurements {meas.key}, "
            f"{time.perf_counter() - t0 if t0 is not None else res.seconds:.1f} s)")
    return res


def pins_and_allow(args) -> tuple[list[Pin], Optional[list[str]]]:
    """The ``pin`` list and the ``allow_types`` text ("Q4_K,Q6_K") of ``args``, parsed (None: every type)."""
    pins = [parse_pin(p) for p in (getattr(args, "pin", None) or ())]
    allow = None
    if getattr(args, "allow_types", None):
        allow = [writable(t.strip(), "--allow-types") for t in args.allow_types.split(",") if t.strip()]
    return pins, allow


def predicted_error(meas: Measurements, plan) -> Optional[float]:
    """The error model's prediction for any plan, ``Σ s[t] · E[t][type]`` over the measured tensors (0 for a
    tensor the plan keeps as it is); None when the plan gives a tensor a type that was not measured."""
    total = 0.0
    for e in plan.entries:
        row = meas.errors.get(e.name)
        if row is None or not e.quantize:
            continue
        if e.type not in row:
            return None
        total += meas.sensitivity[e.name] * row[e.type]
    return total


def preset_points(source, meas: Measurements, *, has_imatrix: bool = True, extra_kv: Optional[list] = None,
                  presets: Sequence[str] = PRESET_LADDER) -> list[tuple[str, int, float]]:
    """(preset, predicted file size, predicted error) of each llama-quantize preset that applies to the model
    and whose types were all measured, by the same error model as the solver's plans."""
    out = []
    for name in presets:
        try:
            plan = make_plan(source.tensors, source.metadata, name, has_imatrix=has_imatrix)
        except QuantStudioError:
            continue
        err = predicted_error(meas, plan)
        if err is not None and not (plan.requires_imatrix and not has_imatrix):
            out.append((name, predict_size(plan, source, extra_kv=extra_kv).total, err))
    return out


def size_range(source, meas: Measurements, **solve_kw) -> tuple[BudgetResult, BudgetResult]:
    """The solver's smallest and largest plans (file size) under ``solve_kw`` (pins, allow, has_imatrix,
    extra_kv): every tensor at its cheapest allowed type, and at its least-error one."""
    try:
        solve(source, meas, Target("size", 1), **solve_kw)
        raise QuantStudioError("internal: a one-byte target was met")
    except PlanError as e:
        if not hasattr(e, "min_bytes"):
            raise
        lo = solve(source, meas, Target("size", e.min_bytes), **solve_kw)
    hi = solve(source, meas, Target("size", 1 << 60), **solve_kw)
    hi.plan.warnings = [w for w in hi.plan.warnings if not w.startswith("the target allows")]
    return lo, hi


def frontier(source, meas: Measurements, n: int = FRONTIER_POINTS, *, presets: Sequence[str] = PRESET_LADDER,
             cancel: Optional[CancelToken] = None, **solve_kw) -> dict:
    """What the studio's size-vs-error chart draws: the solver's plans at ``n`` file sizes evenly across what
    it can reach, and the presets' points (:func:`preset_points`), all by the same error model::

        {"unit": "KLD" | "weighted error", "lo": BudgetResult, "hi": BudgetResult,
         "frontier": [(file bytes, predicted error, bpw)], "presets": [(name, file bytes, predicted error)]}

    A plan's error counts every measured tensor (pinned ones too, when their type was measured)."""
    cancel = cancel or CancelToken()
    lo, hi = size_range(source, meas, **solve_kw)
    pts = []
    for size in np.linspace(lo.size, hi.size, max(2, n)):
        cancel.check()
        r = lo if size <= lo.size else hi if size >= hi.size else solve(source, meas, Target("size", int(size)),
                                                                       **solve_kw)
        err = predicted_error(meas, r.plan)
        pts.append((r.size, r.predicted_kld if err is None else err, r.bpw))
    return {"unit": error_unit(meas), "lo": lo, "hi": hi, "frontier": pts,
            "presets": preset_points(source, meas, has_imatrix=bool(solve_kw.get("has_imatrix")),
                                     extra_kv=solve_kw.get("extra_kv"), presets=presets)}


def bpw_grid(plan) -> tuple[list[int], list[str], np.ndarray]:
    """(layers, kinds, bits per weight as a kinds × layers array, NaN where a layer has no such tensor) of the
    plan's matrices in ``blk.N.*``: the studio's heat map of a budget plan."""
    cells = {}
    for e in plan.entries:
        layer, kind = _group_of(e.name)
        if layer is not None and len(e.shape) >= 2:
            cells[(layer, kind)] = e.bpw
    kinds = list(dict.fromkeys(k for _, k in cells))
    layers = list(range(max((l_ for l_, _ in cells), default=-1) + 1))
    grid = np.full((len(kinds), len(layers)), np.nan)
    for (l_, k), v in cells.items():
        grid[kinds.index(k), l_] = v
    return layers, kinds, grid
