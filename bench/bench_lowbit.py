"""Single-thread throughput of the ternary (TQ1_0, TQ2_0) and low-bit (Q1_0, Q2_0) kernels
against llama.cpp's C quantizer.

Usage: python bench/bench_lowbit.py [--rows 256] [--cols 4096] [--repeat 5]
Prints M weights/s for quantize without and with an importance matrix (ours vs llama.cpp's
ggml_quantize_chunk, one thread each; none of these types reads the weights, but llama.cpp
takes a row-by-row path for Q1_0/Q2_0 when given them) and for dequantize (ours vs
llama.cpp's dequantize_row_<t>, both into one preallocated array, so that page faults of
fresh output do not hide the kernels), with ratios ours/reference, all measured in this run on
the same data (best of --repeat, the contenders interleaved). Numba compilation is excluded
(warm-up). The bytes are checked equal to llama.cpp's before timing. Q2_0 is type id 42,
which gguf-py's enum does not name yet.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.kernels import lowbit, ternary  # noqa: E402
from tests.refs.ggml import quantize as ggml_quantize  # noqa: E402
from tests.refs.ggml_dequant import dequantize as ggml_dequantize  # noqa: E402
from tests.refs.ggml_dequant import dequantize_into as ggml_dequantize_into  # noqa: E402
from bench._timing import best_times  # noqa: E402

# name -> (ggml type id, weights per block, bytes per block, (quantize, dequantize))
TYPES = {
    "TQ1_0": (34, 256, 54, ternary.KERNELS[34]),
    "TQ2_0": (35, 256, 66, ternary.KERNELS[35]),
    "Q1_0": (41, 128, 18, lowbit.KERNELS[41]),
    "Q2_0": (42, 64, 18, lowbit.EXTRA_KERNELS[42]),
}
_NO_QW = np.zeros(0, dtype=np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    warnings.simplefilter("ignore")

    rng = np.random.default_rng(0)
    x = (rng.standard_t(5, size=(a.rows, a.cols)) * 0.02).astype(np.float32)
    im = (rng.standard_normal(a.cols) ** 2 * rng.lognormal(0, 1, a.cols)).astype(np.float32)
    mw = x.size / 1e6
    print(f"{a.rows}x{a.cols} float32 ({mw:.1f} M weights); single thread, M weights/s, best of {a.repeat}")
    head = (f"{'type':5s} | {'ours':>6s} {'llama.c':>7s} {'ratio':>6s} | {'im ours':>7s} {'im C':>6s} {'ratio':>6s} | "
            f"{'deq ours':>8s} {'deq C':>8s} {'ratio':>6s}")
    print(head)
    print("-" * len(head))
    for name, (tid, bs, ts, (qf, dqf)) in TYPES.items():
        rb = a.cols // bs * ts

        def ours(qw, qf=qf, rb=rb):
            out = np.empty((x.shape[0], rb), dtype=np.uint8)
            qf(x, qw, out)
            return out

        y = np.empty(x.shape, dtype=np.float32)

        def deq(q, dqf=dqf, y=y):
            dqf(q, y)
            return y

        q = ours(_NO_QW)  # warm up (compile or load the cache)
        deq(q)
        same = (np.array_equal(q, ggml_quantize(tid, x)) and np.array_equal(ours(im), ggml_quantize(tid, x, im))
                and np.array_equal(deq(q), ggml_dequantize(name.lower(), q, a.cols), equal_nan=True))
        t = best_times({"ours": lambda: ours(_NO_QW), "c": lambda: ggml_quantize(tid, x),
                        "im_ours": lambda: ours(im), "im_c": lambda: ggml_quantize(tid, x, im),
                        "deq": lambda: deq(q), "deq_c": lambda: ggml_dequantize_into(name.lower(), q, y)},
                       a.repeat)
        print(f"{name:5s} | {mw / t['ours']:6.1f} {mw / t['c']:7.1f} {t['c'] / t['ours']:6.2f} | "
              f"{mw / t['im_ours']:7.1f} {mw / t['im_c']:6.1f} {t['im_c'] / t['im_ours']:6.2f} | "
              f"{mw / t['deq']:8.1f} {mw / t['deq_c']:8.1f} {t['deq_c'] / t['deq']:6.2f}"
              + ("" if same else "   BYTES DIFFER FROM llama.cpp"), flush=True)
    print("ratio = our throughput / llama.cpp's (> 1: ours faster); references: ggml_quantize_chunk for "
          "quantize, dequantize_row_<t> for dequantize (both C, through ctypes).")


if __name__ == "__main__":
    main()
