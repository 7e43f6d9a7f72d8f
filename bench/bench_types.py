"""Single-thread throughput of the quantization kernels against llama.cpp's C quantizer, for every type (or
--types): K-quants, i-quants, ternary, 1-bit and FP4 types.

Usage: python bench/bench_types.py [--types Q4_K IQ2_XXS ...] [--rows 64] [--cols 4096] [--repeat 3] [--wall]
Prints M weights/s for quantize without and with an importance matrix (ours vs llama.cpp's ggml_quantize_chunk,
one thread each; "–" where llama.cpp refuses a type without one) and for dequantize (ours vs gguf-py's numpy
decoder, or llama.cpp's C dequantize_row_* where gguf-py has none), with ratios ours/reference, measured in this
run on the same data (best of --repeat, the contenders interleaved). Numba compilation is excluded (warm-up).
The bytes are checked equal to llama.cpp's before timing. Times are the calling thread's CPU time (every
contender runs on it), which other processes on a busy machine disturb far less than wall time; --wall
times the wall clock instead.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf import quants as gq  # noqa: E402

from core.kernels import get_kernel  # noqa: E402
from core.qtypes import FLOAT_TYPES, REQUIRES_IMATRIX, writable_types  # noqa: E402
from tests.refs.ggml import quantize as ggml_quantize  # noqa: E402
from tests.refs.ggml_dequant import dequantize as c_dequantize  # noqa: E402
from bench._timing import best_times  # noqa: E402

LEGACY = {"Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"}       # bench/bench_kernels.py covers these and the floats
TYPES = [t.name for t in writable_types() if t not in FLOAT_TYPES and t.name not in LEGACY]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", nargs="+", default=TYPES)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--wall", action="store_true", help="time the wall clock, not the thread's CPU time")
    a = ap.parse_args()
    warnings.simplefilter("ignore")

    rng = np.random.default_rng(0)
    x = (rng.standard_t(5, size=(a.rows, a.cols)) * 0.02).astype(np.float32)
    im = (rng.standard_normal(a.cols) ** 2 * rng.lognormal(0, 1, a.cols)).astype(np.float32)
    mw = x.size / 1e6
    clock = time.perf_counter if a.wall else time.thread_time
    print(f"{a.rows}x{a.cols} float32 ({mw:.1f} M weights); single thread, M weights/s "
          f"({'wall' if a.wall else 'thread CPU'} time), best of {a.repeat}")
    head = (f"{'type':7s} | {'ours':>6s} {'llama.c':>7s} {'ratio':>6s} | {'im ours':>7s} {'im C':>6s} {'ratio':>6s} | "
            f"{'deq ours':>8s} {'deq ref':>8s} {'ratio':>6s}")
    print(head)
    print("-" * len(head))
    for name in a.types:
        k = get_kernel(name)
        qt = T[name]
        plain = qt not in REQUIRES_IMATRIX              # llama.cpp aborts on these without importance weights
        k.quantize(x[:1], importance=im)                 # warm up (compile or load the cache)
        if plain:
            k.quantize(x[:1])
        qi = k.quantize(x, importance=im)
        q = k.quantize(x) if plain else qi
        same = np.array_equal(qi, ggml_quantize(qt, x, im)) and (not plain or np.array_equal(q, ggml_quantize(qt, x)))
        k.dequantize(q[:1], a.cols)
        try:
            gq.dequantize(q[:1], qt)
            ref_deq = lambda: gq.dequantize(q, qt)  # noqa: E731
        except (NotImplementedError, KeyError, ValueError):
            cname = name.lower().replace("_k", "_K")            # ggml spells types q1_0, iq2_xxs, q4_K
            ref_deq = lambda: c_dequantize(cname, q, a.cols)  # noqa: E731
        runs = {"im_ours": lambda: k.quantize(x, importance=im), "im_c": lambda: ggml_quantize(qt, x, im),
                "deq": lambda: k.dequantize(q, a.cols), "deq_ref": ref_deq}
        if plain:
            runs.update({"ours": lambda: k.quantize(x), "c": lambda: ggml_quantize(qt, x)})
        t = best_times(runs, a.repeat, clock)
        first = (f"{mw / t['ours']:6.1f} {mw / t['c']:7.1f} {t['c'] / t['ours']:6.2f}" if plain
                 else f"{'–':>6s} {'–':>7s} {'–':>6s}")
        print(f"{name:7s} | {first} | "
              f"{mw / t['im_ours']:7.1f} {mw / t['im_c']:6.1f} {t['im_c'] / t['im_ours']:6.2f} | "
              f"{mw / t['deq']:8.1f} {mw / t['deq_ref']:8.1f} {t['deq_ref'] / t['deq']:6.2f}"
              + ("" if same else "   BYTES DIFFER FROM llama.cpp"), flush=True)
    print("ratio = our throughput / the reference's (> 1: ours faster); references: llama.cpp's C "
          "ggml_quantize_chunk for quantize, gguf-py (numpy; llama.cpp's C where gguf-py has no decoder) for dequantize.")


if __name__ == "__main__":
    main()
