"""verify against quantize: for a few presets, the demo (or ``--input``) is quantized with run_plan and the
file then checked with core.verify.verify against the same open source, in the same process and thread
count; the wall time of each (best of ``--repeat`` interleaved rounds) and their ratio are printed, with
the time of verify's parts (the structure check against gguf-py, the per-tensor checks).

    python bench/bench_verify.py [--presets Q8_0,Q4_0,Q4_K_M,Q6_K] [--threads 2] [--repeat 2] [--input GGUF]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="Q8_0,Q4_0,Q4_K_M,Q6_K")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--input", default=None, help="the model to quantize (default: the demo)")
    args = ap.parse_args()

    from core import verify as verify_mod
    from core.demo import demo_model_path
    from core.job import run_plan
    from core.models import open_model
    from core.plan import make_plan
    from core.rules import PlanRules

    src = open_model(args.input or demo_model_path())
    parts: dict[str, float] = {}
    inner = verify_mod._structure

    def timed_structure(*a, **k):
        t = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            parts["structure"] = time.perf_counter() - t

    verify_mod._structure = timed_structure
    print(f"{os.path.basename(src.path)}, {args.threads} threads, best of {args.repeat}")
    print(f"{'preset':<8} {'quantize':>9} {'verify':>8} {'ratio':>6} {'structure':>10}  verdict")
    with tempfile.TemporaryDirectory() as d:
        for preset in args.presets.split(","):
            plan = make_plan(src.tensors, src.metadata, PlanRules.make(preset))
            out = os.path.join(d, f"bench.{preset}.gguf")
            best_q = best_v = best_s = float("inf")
            ok = True
            for _ in range(args.repeat):
                t = time.perf_counter()
                run_plan(src, plan, out, threads=args.threads)
                best_q = min(best_q, time.perf_counter() - t)
                t = time.perf_counter()
                rep = verify_mod.verify(out, src, threads=args.threads)
                dt = time.perf_counter() - t
                if dt < best_v:
                    best_v, best_s = dt, parts.get("structure", 0.0)
                ok = ok and rep.ok
            print(f"{preset:<8} {best_q:8.2f}s {best_v:7.2f}s {best_v / best_q:5.2f}x {best_s:9.2f}s  "
                  f"{'sound' if ok else 'DEFECTS'}", flush=True)


if __name__ == "__main__":
    main()
