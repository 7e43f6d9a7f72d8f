"""The studio's own calibration and evaluation against llama.cpp's tools on the same files and text:
`quant-studio imatrix` vs `llama-imatrix` (relative difference per tensor <= 1e-3) and `quant-studio eval` vs
`llama-perplexity --kl-divergence` (PPL within 1 %, mean KLD within 5 %)."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from core.cli import main
from core.imatrix import load_imatrix
from tests.refs.tools import run_tool

N_CTX, N_CHUNKS = 128, 4
# llama.cpp with the exact float path the studio computes: no flash attention (its "auto" turns it on for
# the CPU) and a float32 KV cache (the default F16 cache rounds K and V to half precision); one chunk per batch
EXACT = ["-fa", "off", "-ctk", "f32", "-ctv", "f32", "-b", str(N_CTX), "-t", "2"]


def test_imatrix_equals_llama_imatrix(demo_f32_path, prose_path, tmp_path, capsys):
    ours, theirs = str(tmp_path / "ours.gguf"), str(tmp_path / "theirs.gguf")
    assert main(["imatrix", demo_f32_path, "--text", prose_path, "--ctx", str(N_CTX), "--chunks", str(N_CHUNKS),
                 "-o", ours, "--json"]) == 0
    capsys.readouterr()
    run_tool("llama-imatrix", "-m", demo_f32_path, "-f", prose_path, "-c", str(N_CTX), "--chunks", str(N_CHUNKS),
             "-o", theirs, *EXACT)
    a, b = load_imatrix(ours), load_imatrix(theirs)
    assert set(a.entries) == set(b.entries) and len(a.entries) == 210
    worst = 0.0
    for name in b.entries:
        x, y = a.entries[name], b.entries[name]
        assert np.array_equal(x.counts, y.counts), name
        rel = float(np.max(np.abs(x.sums - y.sums)) / max(np.max(np.abs(y.sums)), 1e-30))
        worst = max(worst, rel)
    assert worst <= 1e-3, worst


_NUM = r"([-+]?[0-9.]+(?:e[-+]?\d+)?)"


def _ref(out: str) -> dict:
    got = {}
    for k, pat in {"ppl": rf"Mean PPL\(Q\)\s*:\s*{_NUM}", "ppl_base": rf"Mean PPL\(base\)\s*:\s*{_NUM}",
                   "kld_mean": rf"Mean    KLD:\s*{_NUM}", "same_top_p": rf"Same top p:\s*{_NUM}"}.items():
        m = re.search(pat, out)
        assert m, f"no {k} in llama-perplexity's output:\n{out[-2000:]}"
        got[k] = float(m.group(1))
    return got


@pytest.mark.parametrize("llama_options", ["exact", "defaults"])
def test_eval_agrees_with_llama_perplexity(demo_f32_path, prose_path, tmp_path, capsys, llama_options):
    cand = str(tmp_path / "q4_0.gguf")
    assert main(["quantize", demo_f32_path, cand, "--type", "Q4_0", "--json"]) == 0
    capsys.readouterr()
    assert main(["eval", demo_f32_path, cand, "--text", prose_path, "--ctx", str(N_CTX), "--chunks", str(N_CHUNKS),
                 "--json", "--threads", "2"]) == 0
    ours = json.loads(capsys.readouterr().out)
    opts = EXACT if llama_options == "exact" else ["-t", "2"]
    common = ["-f", prose_path, "-c", str(N_CTX), "--chunks", str(N_CHUNKS), *opts]
    kld = str(tmp_path / "base.kld")
    run_tool("llama-perplexity", "-m", demo_f32_path, "--kl-divergence-base", kld, *common)
    ref = _ref(run_tool("llama-perplexity", "-m", cand, "--kl-divergence-base", kld, "--kl-divergence", *common))
    assert ours["tokens"] == N_CHUNKS * (N_CTX - 1 - N_CTX // 2)
    assert ours["ppl_base"] == pytest.approx(ref["ppl_base"], rel=0.01)
    assert ours["ppl"] == pytest.approx(ref["ppl"], rel=0.01)
    assert ours["kld_mean"] == pytest.approx(ref["kld_mean"], rel=0.05)
    print(f"{llama_options}: ours PPL {ours['ppl']:.4f} base {ours['ppl_base']:.4f} KLD {ours['kld_mean']:.5f}; "
          f"llama-perplexity PPL {ref['ppl']:.4f} base {ref['ppl_base']:.4f} KLD {ref['kld_mean']:.5f}")
