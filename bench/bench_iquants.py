"""Single-thread throughput of the IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S and IQ1_M kernels against llama.cpp.

Usage: python bench/bench_iquants.py [--rows 64] [--cols 4096] [--repeat 3] [--types IQ2_XXS,...]
Prints M weights/s for quantize with an importance matrix and, for the types llama.cpp also
runs without one (IQ2_S, IQ1_M), without (ours vs llama.cpp's ggml_quantize_chunk, one thread
each), and for dequantize (ours vs gguf-py), with ratios ours/reference, all measured in this run
on the same data (best of --repeat, the contenders interleaved). Numba compilation and the
one-off lattice tables are excluded (warm-up). The bytes are checked equal to llama.cpp's first.
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

from core.kernels import iq1, iq2  # noqa: E402
from core.kernels import Kernel  # noqa: E402
from core.qtypes import type_info  # noqa: E402
from tests.refs.ggml import quantize as ggml_quantize  # noqa: E402
from bench._timing import best_times  # noqa: E402

TYPES = ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M"]
WITHOUT_IMATRIX = {"IQ2_S", "IQ1_M"}  # the others need one (llama.cpp aborts without)


def kernel(name: str) -> Kernel:
    qt = T[name]
    table = iq2.KERNELS if qt in iq2.KERNELS else iq1.KERNELS
    return Kernel(type_info(qt), *table[qt])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--types", default=",".join(TYPES))
    a = ap.parse_args()
    warnings.simplefilter("ignore")

    rng = np.random.default_rng(0)
    x = (rng.standard_t(5, size=(a.rows, a.cols)) * 0.02).astype(np.float32)
    im = (rng.standard_normal(a.cols) ** 2 * rng.lognormal(0, 1, a.cols)).astype(np.float32)
    mw = x.size / 1e6
    print(f"{a.rows}x{a.cols} float32 ({mw:.2f} M weights); single thread, M weights/s, best of {a.repeat}")
    head = (f"{'type':7s} | {'im ours':>7s} {'im C':>6s} {'ratio':>6s} | {'ours':>6s} {'llama.c':>7s} {'ratio':>6s} | "
            f"{'deq ours':>8s} {'deq gguf':>8s} {'ratio':>6s}")
    print(head)
    print("-" * len(head))
    for name in a.types.split(","):
        k = kernel(name)
        qt = T[name]
        plain = name in WITHOUT_IMATRIX
        k.quantize(x[:1], importance=im)  # warm up (compile or load the cache, build the tables)
        ggml_quantize(qt, x[:1], im)
        qi = k.quantize(x, importance=im)
        same = np.array_equal(qi, ggml_quantize(qt, x, im))
        fns = {"im_ours": lambda: k.quantize(x, importance=im), "im_c": lambda: ggml_quantize(qt, x, im),
               "deq": lambda: k.dequantize(qi, a.cols), "deq_gguf": lambda: gq.dequantize(qi, qt)}
        if plain:
            k.quantize(x[:1])
            same = same and np.array_equal(k.quantize(x), ggml_quantize(qt, x))
            fns.update({"ours": lambda: k.quantize(x), "c": lambda: ggml_quantize(qt, x)})
        k.dequantize(qi[:1], a.cols)
        t = best_times(fns, a.repeat)
        plain_cols = (f"{mw / t['ours']:6.2f} {mw / t['c']:7.2f} {t['c'] / t['ours']:6.2f}" if plain
                      else f"{'-':>6s} {'-':>7s} {'-':>6s}")
        print(f"{name:7s} | {mw / t['im_ours']:7.2f} {mw / t['im_c']:6.2f} {t['im_c'] / t['im_ours']:6.2f} | "
              f"{plain_cols} | {mw / t['deq']:8.1f} {mw / t['deq_gguf']:8.1f} {t['deq_gguf'] / t['deq']:6.2f}"
              + ("" if same else "   BYTES DIFFER FROM llama.cpp"), flush=True)
    print("ratio = our throughput / the reference's (> 1: ours faster); references: llama.cpp's C "
          "ggml_quantize_chunk for quantize, gguf-py (numpy) for dequantize.")


if __name__ == "__main__":
    main()
