"""Throughput of core.stats.compute_stats against a numpy reference of the same statistics.

Usage: python bench/bench_stats.py [--rows 12288] [--cols 4096] [--repeat 3]
Prints elements/s for threads=1 and threads=2 (in-memory array and a streamed callable
source) and the ratio to numpy, measured in the same run on the same data.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.stats import compute_stats  # noqa: E402


def numpy_stats(x: np.ndarray, bins: int = 128, top_n: int = 16, chunk_rows: int = 256) -> dict:
    """The same statistics with plain numpy, in two passes over chunks of rows (float64
    moments over finite values), as a fair single-threaded reference."""
    x2 = x.reshape(-1, x.shape[-1])
    n = n_nan = n_inf = 0
    s = 0.0
    mn, mx = np.inf, -np.inf
    rows, cols, cand = [], np.zeros(x2.shape[1], np.float32), []
    for a in range(0, x2.shape[0], chunk_rows):
        c = x2[a:a + chunk_rows]
        fin = np.isfinite(c)
        f = c if fin.all() else c[fin]
        n_nan += int(np.isnan(c).sum())
        n_inf += int(np.isinf(c).sum())
        n += f.size
        s += float(f.sum(dtype=np.float64))
        mn, mx = min(mn, float(f.min())), max(mx, float(f.max()))
        ab = np.where(fin, np.abs(c), np.float32(0))
        rows.append(ab.max(axis=1))
        np.maximum(cols, ab.max(axis=0), out=cols)
        flat = ab.ravel()
        k = np.argpartition(flat, -top_n)[-top_n:]
        cand.append((flat[k], k + a * x2.shape[1]))
    mean = s / n
    s2 = s4 = 0.0
    hist = np.zeros(bins, np.int64)
    d2s = []
    for a in range(0, x2.shape[0], chunk_rows):
        c = x2[a:a + chunk_rows]
        fin = np.isfinite(c)
        d = (c if fin.all() else c[fin]).astype(np.float64).ravel() - mean
        d2 = d * d
        s2 += float(d2.sum())
        s4 += float((d2 * d2).sum())
        hist += np.histogram(d + mean, bins=bins, range=(mn, mx))[0]
        d2s.append(np.abs(d))
    std = np.sqrt(s2 / n)
    outl = {k: int(sum((ad > k * std).sum() for ad in d2s)) for k in (3, 6, 10)}
    return dict(min=mn, max=mx, mean=mean, std=std, kurt=n * s4 / s2 ** 2 - 3, hist=hist,
                outl=outl, top=cand, row=np.concatenate(rows), col=cols, nan=n_nan, inf=n_inf)


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=12288)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    x = rng.standard_t(5, size=(args.rows, args.cols)).astype(np.float32)
    x[:, 17] *= 40.0
    n = x.size
    print(f"tensor {args.rows} x {args.cols} = {n / 1e6:.1f} M float32 elements (student-t, one outlier column)")

    compute_stats("warmup", (64, 256), x[:64, :256])   # JIT compile / cache load
    ref = {}
    t_np = best_of(lambda: ref.update(numpy_stats(x)), 1)
    print(f"numpy reference          : {t_np * 1e3:8.1f} ms  {n / t_np / 1e6:8.1f} M elem/s")

    def reader(a, b):
        return x[a:b]

    for label, src in (("array", x), ("callable", reader)):
        for th in (1, 2):
            t = best_of(lambda: compute_stats("x", x.shape, src, threads=th), args.repeat)
            print(f"compute_stats {label:8s} t={th}: {t * 1e3:8.1f} ms  {n / t / 1e6:8.1f} M elem/s"
                  f"  ({t_np / t:5.1f}x numpy)")

    s = compute_stats("x", x.shape, x, threads=2)
    agree = (np.array_equal(s.hist_counts, ref["hist"]) and s.outliers_k == ref["outl"]
             and np.array_equal(s.row_absmax, ref["row"]) and np.array_equal(s.col_absmax, ref["col"])
             and abs(s.std / ref["std"] - 1) < 1e-12 and abs(s.kurtosis / ref["kurt"] - 1) < 1e-9)
    print(f"agrees with numpy: {agree}; std {s.std:.6f} kurtosis {s.kurtosis:.3f} "
          f"col_absmax_ratio {s.col_absmax_ratio:.1f} (planted column 17, found {s.top[0][2]})")


if __name__ == "__main__":
    main()
