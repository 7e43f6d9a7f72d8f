"""Throughput of core.eval.forward (float32, weights streamed) against llama-cpp-python's ``eval`` on the
demo model, same tokens, same thread count, in the same run.

Usage: python bench/bench_forward.py [--tokens 512] [--seqs 1] [--threads 2] [--repeat 3] [--model PATH]
Prints tokens/s of both and the ratio ours/llama.cpp. llama.cpp runs the file as stored (quantized
matmuls with Q8 activations; F16 KV cache, its default); ours dequantizes each weight to float32 as it
streams it, which is part of the measured time. Model loading is outside both timings.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._timing import best_times  # noqa: E402
from core.eval.forward import Forward  # noqa: E402
from core.models import open_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=512, help="tokens per sequence")
    ap.add_argument("--seqs", type=int, default=1, help="sequences per batch (ours); llama.cpp evals each")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--model", default=None, help="a GGUF (default: the demo model)")
    a = ap.parse_args()
    import llama_cpp

    if a.model is None:
        from core.demo import demo_model_path
        a.model = demo_model_path()
    src = open_model(a.model)
    fw = Forward(src, threads=a.threads)
    rng = np.random.default_rng(0)
    toks = rng.integers(0, fw.hp.n_vocab, size=(a.seqs, a.tokens)).astype(np.int32)
    fw.logits(toks[:1, :8])                               # Numba compile / cache load, outside timing
    llm = llama_cpp.Llama(model_path=a.model, n_ctx=a.tokens, n_batch=a.tokens, n_ubatch=a.tokens,
                          logits_all=True, n_threads=a.threads, n_threads_batch=a.threads, verbose=False)

    def ours():
        for _, lg in fw.run(toks):
            pass

    def theirs():
        for row in toks:
            llm.reset()
            llm.eval(row.tolist())

    best = best_times({"ours": ours, "llama.cpp": theirs}, a.repeat)
    n = toks.size
    print(f"model {os.path.basename(a.model)}  tokens {a.seqs}x{a.tokens}  threads {a.threads}")
    for k, t in best.items():
        print(f"  {k:10s} {n / t:10.1f} tok/s  ({t:.3f} s)")
    print(f"  ratio ours/llama.cpp: {best['llama.cpp'] / best['ours']:.3f}")
    llm.close()


if __name__ == "__main__":
    main()
