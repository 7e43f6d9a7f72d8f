"""Background work on a busy machine: how long a small studio task (the statistics of the demo's
token embedding, 28 M weights, as the studio computes them when the tensor is selected) takes in a
worker process of each niceness, with the machine idle and with N other busy processes
(bench/loadgen.py) competing.

The studio's choice (core.procpool.ANALYSIS_NICE / JOBS_NICE) is the row marked '*'. A worker's
niceness only decides how it shares the CPU with *other programs*: the window runs in its own
process at normal priority whatever the workers' value (bench_gui.py --load measures the window).
Run: ``python bench/bench_load.py [--load 2] [--repeat 3]`` (about a minute).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from bench.loadgen import busy  # noqa: E402


def timed(pool, path: str, name: str, repeat: int) -> float:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        pool.call("core.tasks:stats", path, name, 1)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main() -> int:
    from core import procpool
    from core.demo import demo_model_path

    ap = argparse.ArgumentParser()
    ap.add_argument("--load", type=int, default=2, help="busy processes competing (default 2)")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    path, name = demo_model_path(), "token_embd.weight"
    chosen = {procpool.ANALYSIS_NICE: "analysis", procpool.JOBS_NICE: "jobs"}
    rows = []
    for nice in sorted({0, procpool.ANALYSIS_NICE, 5, 10}):
        pool = procpool.ProcessPool(1, f"bench-nice{nice}", nice=nice)
        try:
            pool.call("core.tasks:warm", "stats")
            timed(pool, path, name, 1)                   # model opened, kernels loaded
            idle = timed(pool, path, name, a.repeat)
            with busy(a.load):
                time.sleep(0.5)
                loaded = timed(pool, path, name, a.repeat)
        finally:
            pool.close()
        rows.append((nice, idle, loaded))
    print(f"Statistics of {name} ({os.path.basename(path)}), median of {a.repeat}, "
          f"{os.cpu_count()} cores, {a.load} busy processes competing")
    print(f"  {'worker nice':>11} {'idle':>9} {'under load':>11} {'ratio':>7}")
    for nice, idle, loaded in rows:
        mark = f" * {chosen[nice]}" if nice in chosen else ""
        print(f"  {nice:>11} {idle * 1000:7.0f}ms {loaded * 1000:9.0f}ms {loaded / idle:6.1f}x{mark}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
