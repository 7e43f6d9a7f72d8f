"""Single-thread throughput of the IQ3_XXS / IQ3_S kernels against llama.cpp's C quantizer.

Usage: python bench/bench_iq3.py [--rows 64] [--cols 4096] [--repeat 3]
Prints M weights/s for quantize without and with an importance matrix (ours vs
llama.cpp's ggml_quantize_chunk, one thread each) and for dequantize (ours vs gguf-py),
with ratios ours/reference, all measured in this run on the same data (best of --repeat,
the contenders interleaved). Numba compilation and the one-off table builds are excluded
(warm-up). The bytes are checked equal to llama.cpp's before timing.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf import quants as gq  # noqa: E402

from core.kernels import Kernel  # noqa: E402
from core.kernels.iq3 import KERNELS  # noqa: E402
from core.qtypes import type_info  # noqa: E402
from tests.refs.ggml import quantize as ggml_quantize  # noqa: E402
from bench._timing import best_times  # noqa: E402

TYPES = ["IQ3_XXS", "IQ3_S"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    warnings.simplefilter("ignore")

    rng = np.random.default_rng(0)
    x = (rng.standard_t(5, size=(a.rows, a.cols)) * 0.02).astype(np.float32)
    im = (rng.standard_normal(a.cols) ** 2 * rng.lognormal(0, 1, a.cols)).astype(np.float32)
    mw = x.size / 1e6
    print(f"{a.rows}x{a.cols} float32 ({mw:.2f} M weights); single thread, M weights/s, best of {a.repeat}")
    head = (f"{'type':7s} | {'ours':>6s} {'llama.c':>7s} {'ratio':>6s} | {'im ours':>7s} {'im C':>6s} {'ratio':>6s} | "
            f"{'deq ours':>8s} {'deq gguf':>8s} {'ratio':>6s}")
    print(head)
    print("-" * len(head))
    for name in TYPES:
        qt = T[name]
        k = Kernel(type_info(qt), *KERNELS[qt])
        k.quantize(x[:1]), k.quantize(x[:1], importance=im)  # warm up (compile or load the cache, tables)
        q = k.quantize(x)
        qi = k.quantize(x, importance=im)
        same = np.array_equal(q, ggml_quantize(qt, x)) and np.array_equal(qi, ggml_quantize(qt, x, im))
        k.dequantize(q[:1], a.cols)
        t = best_times({"ours": lambda: k.quantize(x), "c": lambda: ggml_quantize(qt, x),
                        "im_ours": lambda: k.quantize(x, importance=im), "im_c": lambda: ggml_quantize(qt, x, im),
                        "deq": lambda: k.dequantize(q, a.cols), "deq_gguf": lambda: gq.dequantize(q, qt)},
                       a.repeat)
        print(f"{name:7s} | {mw / t['ours']:6.2f} {mw / t['c']:7.2f} {t['c'] / t['ours']:6.2f} | "
              f"{mw / t['im_ours']:7.2f} {mw / t['im_c']:6.2f} {t['im_c'] / t['im_ours']:6.2f} | "
              f"{mw / t['deq']:8.1f} {mw / t['deq_gguf']:8.1f} {t['deq_gguf'] / t['deq']:6.2f}"
              + ("" if same else "   BYTES DIFFER FROM llama.cpp"), flush=True)
    print("ratio = our throughput / the reference's (> 1: ours faster); references: llama.cpp's C "
          "ggml_quantize_chunk for quantize, gguf-py (numpy) for dequantize.")


if __name__ == "__main__":
    main()
