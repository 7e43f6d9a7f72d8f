"""Single-thread throughput of the float and legacy kernels against gguf-py and llama.cpp.

Usage: python bench/bench_kernels.py [--rows 4096] [--cols 4096] [--im-rows 256] [--repeat 3]
Prints M weights/s for quantize (ours, gguf-py's numpy quantizer, llama.cpp's C
ggml_quantize_chunk), the imatrix path (ours vs llama.cpp, on the first --im-rows rows)
and dequantize (ours vs gguf-py), with ratios, all measured in this run on the same data
(best of --repeat, the contenders interleaved). Numba compilation is excluded (warm-up).
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

from core.kernels import get_kernel  # noqa: E402
from tests.refs.ggml import quantize as ggml_quantize  # noqa: E402
from bench._timing import best_times  # noqa: E402

TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]
IMATRIX_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--im-rows", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    warnings.simplefilter("ignore")

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((a.rows, a.cols), dtype=np.float32) * 0.02).astype(np.float32)
    xi = x[: a.im_rows]
    im = (rng.standard_normal(a.cols) ** 2 * rng.lognormal(0, 1, a.cols)).astype(np.float32)
    mw = x.size / 1e6
    mwi = xi.size / 1e6
    print(f"{a.rows}x{a.cols} float32 ({mw:.1f} M weights), imatrix on {a.im_rows} rows; "
          f"single thread, M weights/s, best of {a.repeat}")

    head = (f"{'type':5s} | {'ours':>7s} {'gguf-py':>8s} {'llama.c':>8s} {'/gguf':>6s} {'/C':>6s} | "
            f"{'im ours':>7s} {'im C':>6s} {'/C':>6s} | {'deq ours':>8s} {'deq gguf':>8s} {'/gguf':>6s}")
    print(head)
    print("-" * len(head))
    for name in TYPES:
        k = get_kernel(name)
        qt = T[name]
        k.quantize(x[:2]), k.quantize(x[:2], importance=im)  # warm up (compile or load the cache)
        q = k.quantize(x)
        k.dequantize(q[:2], a.cols)
        t = best_times({
            "ours": lambda: k.quantize(x),
            "gguf": lambda: gq.quantize(x, qt),
            "c": lambda: ggml_quantize(qt, x),
        }, a.repeat)
        line = (f"{name:5s} | {mw / t['ours']:7.1f} {mw / t['gguf']:8.1f} {mw / t['c']:8.1f} "
                f"{t['gguf'] / t['ours']:6.2f} {t['c'] / t['ours']:6.2f} | ")
        if name in IMATRIX_TYPES:
            ti = best_times({"ours": lambda: k.quantize(xi, importance=im),
                             "c": lambda: ggml_quantize(qt, xi, im)}, a.repeat)
            line += f"{mwi / ti['ours']:7.1f} {mwi / ti['c']:6.1f} {ti['c'] / ti['ours']:6.2f} | "
        else:
            line += f"{'':7s} {'':6s} {'':6s} | "
        td = best_times({"ours": lambda: k.dequantize(q, a.cols),
                         "gguf": lambda: gq.dequantize(q, qt)}, a.repeat)
        line += f"{mw / td['ours']:8.1f} {mw / td['gguf']:8.1f} {td['gguf'] / td['ours']:6.2f}"
        print(line, flush=True)
    print("ratios > 1: ours faster. gguf-py's F32 quantize/dequantize return their input as is "
          "(no copy), so its F32 figures are not conversions.")


if __name__ == "__main__":
    main()
