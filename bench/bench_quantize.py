"""Whole-model quantization: wall time, throughput and peak memory, ours against llama.cpp's
llama_model_quantize (the engine of llama-quantize) on the same input and thread count, each in a
fresh process so peak RSS is its own.

    python bench/bench_quantize.py [--types Q8_0,Q4_0] [--threads 2] [--layers 4]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, {root!r})
def peak_mib():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) / 1024
engine, src, out, qtype, threads = sys.argv[1:6]
threads = int(threads)
if engine == 'ours':
    from core.models import open_model
    from core.plan import pure_plan
    from core.job import run_plan
    from core.kernels import get_kernel
    get_kernel(qtype).quantize(__import__('numpy').zeros((1, 256), 'float32'))  # load the compiled kernel
    base = peak_mib()
    s = open_model(src)
    t = time.perf_counter()
    run_plan(s, pure_plan(s.tensors, qtype, s.architecture), out, threads=threads)
    dt = time.perf_counter() - t
else:
    from tests.refs.llama import quantize
    from core.presets import file_type_of
    from core.qtypes import parse_type
    import llama_cpp
    base = peak_mib()
    t = time.perf_counter()
    quantize(src, file_type_of(parse_type(qtype)), pure=True, output=out, nthread=threads)
    dt = time.perf_counter() - t
print(json.dumps({{'seconds': dt, 'peak_mib': peak_mib(), 'base_mib': base}}))
"""


def run(engine, src, out, qtype, threads):
    code = CHILD.format(root=ROOT)
    r = subprocess.run([sys.executable, "-c", code, engine, src, out, qtype, str(threads)],
                       capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--types", default="Q8_0,Q4_0,Q5_1")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args()
    from core.demo import make_synthetic_llama
    from core.models import open_model

    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "bench-f32.gguf")
        make_synthetic_llama(src, n_layer=args.layers, n_embd=2048, n_ff=5632, n_head=16, n_head_kv=4,
                             n_vocab=16384)
        m = open_model(src)
        n = m.n_params
        biggest = max(t.n_elements for t in m.tensors) * 4 / 2**20
        print(f"model: {n / 1e6:.0f} M weights, F32 file {os.path.getsize(src) / 2**20:.0f} MiB, "
              f"largest tensor {biggest:.0f} MiB (as float32); {args.threads} threads")
        print(f"{'type':6} {'engine':9} {'seconds':>8} {'Mw/s':>8} {'peak RSS':>9} {'over base':>10} "
              f"{'/largest':>9}")
        for qt in args.types.split(","):
            res = {}
            for engine in ("ours", "llama.cpp"):
                out = os.path.join(d, f"{engine}-{qt}.gguf")
                r = res[engine] = run(engine, src, out, qt, args.threads)
                if "error" in r:
                    print(f"{qt:6} {engine:9} error: {r['error']}")
                    continue
                over = r["peak_mib"] - r["base_mib"]
                print(f"{qt:6} {engine:9} {r['seconds']:8.2f} {n / r['seconds'] / 1e6:8.1f} "
                      f"{r['peak_mib']:7.0f}Mi {over:8.0f}Mi {over / biggest:9.2f}")
            if all("error" not in r for r in res.values()):
                same = _same_tensor_data(os.path.join(d, f"ours-{qt}.gguf"), os.path.join(d, f"llama.cpp-{qt}.gguf"))
                print(f"{qt:6} speed ours/llama.cpp = {res['llama.cpp']['seconds'] / res['ours']['seconds']:.2f}x, "
                      f"tensor data identical: {same}")
            for engine in res:
                p = os.path.join(d, f"{engine}-{qt}.gguf")
                if os.path.exists(p):
                    os.remove(p)


def _same_tensor_data(a: str, b: str) -> bool:
    from core.models import open_model

    ma, mb = open_model(a), open_model(b)
    names = {t.name for t in ma.tensors}
    return names == {t.name for t in mb.tensors} and all(
        ma.tensor(n).dtype == mb.tensor(n).dtype and ma.raw(n).tobytes() == mb.raw(n).tobytes() for n in names)


if __name__ == "__main__":
    main()
