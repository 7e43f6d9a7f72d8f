"""Error preview on a 50 M-weight tensor: sampled first estimate vs the exact all-rows figure.

Per type: time of the sampled estimate (default time budget), time of the exact figure
(same threads), the speed-up, the sample size, how far the estimate is from the exact
relative RMSE and whether the exact value lies in the stated 95% interval.

    python bench/bench_preview.py [--threads 2] [--imatrix] [--types all|Q4_0,Q4_K] [--rows 4096 --cols 12288]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from core import preview as P  # noqa: E402
from core.demo import synthetic_weights  # noqa: E402
from core.qtypes import parse_type  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=12288)
    ap.add_argument("--imatrix", action="store_true", help="quantize and weigh with a random importance vector")
    ap.add_argument("--types", default="F16,Q8_0,Q4_0,Q4_1,Q3_K,Q4_K,Q6_K",
                    help="comma-separated, or 'all' for every candidate type")
    ap.add_argument("--budget", type=float, default=P.DEFAULT_BUDGET)
    args = ap.parse_args()

    t0 = time.perf_counter()
    x = synthetic_weights(np.random.default_rng(0), args.rows, args.cols)
    imp = np.random.default_rng(1).lognormal(0.0, 1.0, args.cols).astype(np.float32) if args.imatrix else None
    print(f"tensor {args.rows} x {args.cols} = {x.size / 1e6:.1f} M weights (Student-t, outlier columns), "
          f"made in {time.perf_counter() - t0:.1f} s; threads {args.threads}; imatrix {'yes' if args.imatrix else 'no'}; "
          f"budget {args.budget * 1e3:.0f} ms")
    types = (P.candidate_types(args.cols) if args.types == "all"
             else [parse_type(t) for t in args.types.split(",") if t])
    t0 = time.perf_counter()
    P.warm_up(types)
    print(f"kernels loaded in {time.perf_counter() - t0:.2f} s (not counted below)\n")

    head = (f"{'type':6} {'sample ms':>9} {'design':>6} {'rows':>5} {'M w':>5} {'exact ms':>9} {'speed-up':>8} "
            f"{'rel RMSE exact':>14} {'estimate':>10} {'rel diff':>9} {'±95% (rel)':>10} {'in CI':>5}")
    print(head)
    print("-" * len(head))
    worst, slowest, inside = 0.0, 0.0, 0
    for t in types:
        s = P.estimate(x, t, imp, threads=args.threads, time_budget=args.budget)
        e = P.exact(x, t, imp, threads=args.threads)
        diff = abs(s.rel_rmse - e.rel_rmse) / e.rel_rmse if e.rel_rmse else 0.0
        half = (s.rel_rmse_ci[1] - s.rel_rmse_ci[0]) / 2 / s.rel_rmse if s.rel_rmse else 0.0
        ok = s.in_interval(e.rel_rmse)
        inside += ok
        worst, slowest = max(worst, diff), max(slowest, s.seconds)
        print(f"{t.name:6} {s.seconds * 1e3:9.0f} {s.design:>6} {s.rows:5d} {s.sample_elements / 1e6:5.1f} "
              f"{e.seconds * 1e3:9.0f} {e.seconds / s.seconds:7.1f}x {e.rel_rmse:14.6f} {s.rel_rmse:10.6f} "
              f"{diff:9.2%} {half:10.2%} {'yes' if ok else 'NO':>5}")
    print(f"\nslowest first estimate {slowest * 1e3:.0f} ms (goal 300 ms); largest relative difference "
          f"{worst:.2%}; exact value inside the stated interval for {inside}/{len(types)} types")


if __name__ == "__main__":
    main()
