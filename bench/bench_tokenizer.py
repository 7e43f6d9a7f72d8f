"""Tokenizer speed: ours (core.eval.tokenizer, on HF `tokenizers`) against llama.cpp's (llama-cpp-python,
vocab only) on 1 MB of text per vocabulary of llama.cpp's fixtures, measured in the same run; the ids are
checked equal first.

Usage: python bench/bench_tokenizer.py [--mb 1] [--vocab llama-spm qwen2 llama-bpe gpt-2]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.eval.tokenizer import load_tokenizer  # noqa: E402
from tests.refs.tree import vocab_fixture  # noqa: E402


def _text(n: int) -> str:
    parts = []
    for f in ("README.md", "core/eval/tokenizer.py", "core/cli.py"):
        with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), f), encoding="utf-8") as fh:
            parts.append(fh.read())
    base = "\n".join(parts)
    return (base * (n // len(base) + 1))[:n]


def main() -> None:
    import llama_cpp

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=1.0)
    ap.add_argument("--vocab", nargs="+", default=["llama-spm", "qwen2", "llama-bpe", "gpt-2", "gemma-4"])
    a = ap.parse_args()
    text = _text(int(a.mb * 1_000_000))
    print(f"{'vocab':12} {'ours s':>8} {'llama.cpp s':>12} {'ratio':>6}")
    for name in a.vocab:
        path = vocab_fixture(name)
        tok = load_tokenizer(path)
        ref = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
        tok.encode(text[:1000])
        t0 = time.perf_counter()
        ids = tok.encode(text)
        ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        want = ref.tokenize(text.encode("utf-8"), add_bos=tok.add_bos, special=False)
        theirs = time.perf_counter() - t0
        assert ids.tolist() == want, name
        print(f"{name:12} {ours:8.2f} {theirs:12.2f} {ours / theirs:6.2f}")


if __name__ == "__main__":
    main()
