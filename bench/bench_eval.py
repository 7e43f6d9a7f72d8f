"""Calibration and evaluation speed and memory: `quant-studio imatrix` vs `llama-imatrix`, and `quant-studio eval`
(base + one candidate file) vs `llama-perplexity --kl-divergence` (its base pass writing the logits file, then
the candidate pass), on the same model, text, context, chunks and threads, measured in the same run.

Usage: python bench/bench_eval.py [--model BASE.gguf] [--big] [--ctx 512] [--chunks 4] [--threads 2]
  default model: the demo dequantized to F32; --big: a synthetic llama of about 1.3 GB (F32, 4 layers of 2048
  wide, the demo's 49k-token vocabulary) — peak RSS then shows that memory follows one layer, not the model.
Prints wall seconds, peak RSS (MiB), CPU seconds (user + system of all threads: steadier than wall seconds
on a loaded machine) and the ratios ours / llama.cpp (below 1.0: we are faster / smaller).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(cmd: list[str]) -> tuple[float, float, float]:
    """(wall seconds, peak RSS MiB, CPU seconds (user + system, all threads)) of a command, failing loudly."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    out, err = p.stdout.read(), p.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{(out + err).decode(errors='replace')[-3000:]}")
    return wall, usage.ru_maxrss / 1024.0, usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--big", action="store_true")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    from core.eval.run import BUILTIN_TEXT
    from tests.refs.tools import llama_tool

    work = tempfile.mkdtemp(prefix="bench-eval-")
    py = [sys.executable, "-m", "core.cli"]
    if a.model:
        base = a.model
    elif a.big:
        # written by a child process: a child's peak RSS starts from its parent's at fork (Linux keeps the
        # high-water mark across exec), so this process must stay small for the figures below to mean anything
        base = os.path.join(work, "big-f32.gguf")
        timed([sys.executable, "-c", "from core.demo import demo_model_path, make_synthetic_llama; "
               f"make_synthetic_llama({base!r}, n_layer=4, n_embd=2048, n_ff=5632, n_head=16, n_head_kv=8, "
               "vocab_from=demo_model_path())"])
    else:
        from core.demo import demo_model_path
        base = os.path.join(work, "demo-f32.gguf")
        timed(py + ["quantize", demo_model_path(), base, "--type", "F32"])
    cand = os.path.join(work, "cand-q4_0.gguf")
    timed(py + ["quantize", base, cand, "--type", "Q4_0"])
    text = BUILTIN_TEXT
    print(f"model {os.path.basename(base)} ({os.path.getsize(base) / 2**20:.0f} MiB), ctx {a.ctx}, "
          f"{a.chunks} chunks, {a.threads} threads")
    common = ["--ctx", str(a.ctx), "--chunks", str(a.chunks), "--threads", str(a.threads)]
    lcommon = ["-f", text, "-c", str(a.ctx), "--chunks", str(a.chunks), "-t", str(a.threads)]
    rows = []
    ours = timed(py + ["imatrix", base, "--text", text, "-o", os.path.join(work, "ours.imatrix.gguf")] + common)
    theirs = timed([llama_tool("llama-imatrix"), "-m", base, "-o", os.path.join(work, "theirs.imatrix.gguf")]
                   + lcommon)
    rows.append(("imatrix", ours, theirs))
    ours = timed(py + ["eval", base, cand, "--text", text, "--json"] + common)
    kld = os.path.join(work, "base.kld")
    t1 = timed([llama_tool("llama-perplexity"), "-m", base, "--kl-divergence-base", kld] + lcommon)
    t2 = timed([llama_tool("llama-perplexity"), "-m", cand, "--kl-divergence-base", kld, "--kl-divergence"]
               + lcommon)
    rows.append(("eval (base + 1 file)", ours, (t1[0] + t2[0], max(t1[1], t2[1]), t1[2] + t2[2])))
    print(f"{'task':22} {'ours s':>8} {'llama s':>8} {'time ratio':>10} {'ours MiB':>9} {'llama MiB':>9} "
          f"{'RSS ratio':>9} {'ours cpu':>9} {'llama cpu':>9} {'cpu ratio':>9}")
    for name, (ws, ms, cs), (wl, ml, cl) in rows:
        print(f"{name:22} {ws:8.1f} {wl:8.1f} {ws / wl:10.2f} {ms:9.0f} {ml:9.0f} {ms / ml:9.2f} "
              f"{cs:9.1f} {cl:9.1f} {cs / cl:9.2f}")
    print(f"(llama.cpp's kl-divergence base file: {os.path.getsize(kld) / 2**20:.1f} MiB on disk; ours keeps "
          "one chunk's logits in memory)")


if __name__ == "__main__":
    main()
