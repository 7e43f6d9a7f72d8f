"""Calibration and evaluation runs end to end: the CLI commands, plans simulated without a file equal to the
written file, greedy continuations equal to llama.cpp's, and bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from core.cli import main
from core.eval.generate import greedy
from core.eval.run import Candidate, evaluate, prepare_chunks, read_text
from core.eval.tokenizer import load_tokenizer
from core.errors import SourceError
from core.models import open_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_simulated_plan_equals_its_written_file(demo_f32_path, prose_path, tmp_path):
    """A plan evaluated in memory (quantize -> dequantize per weight) gives exactly the figures of the file
    the same plan writes: the simulation is the file."""
    from core.job import run_plan
    from core.plan import make_plan

    base = open_model(demo_f32_path)
    plan = make_plan(base.tensors, base.metadata, "Q4_0")
    out = str(tmp_path / "q4_0.gguf")
    run_plan(base, plan, out, threads=2)
    text, _ = read_text(prose_path)
    chunks = prepare_chunks(base, text, n_ctx=64, n_chunks=3)
    sim, real = evaluate(base, [Candidate("plan", plan=plan), Candidate("file", source=open_model(out))], chunks,
                         threads=2)
    assert sim.kld.tokens == real.kld.tokens == 3 * (64 - 1 - 32)
    assert sim.kld.kld_mean == pytest.approx(real.kld.kld_mean, rel=1e-5)
    assert sim.kld.ppl == pytest.approx(real.kld.ppl, rel=1e-6)
    assert 0.01 < sim.kld.kld_mean < 2.0 and sim.kld.ppl > sim.kld.ppl_base * 0.9


def test_evaluation_does_not_depend_on_threads(demo_f32_path, prose_path):
    """The base and the candidates run side by side (one thread each) or one after the other: the same
    figures, to the bit, and the same per-token KLD."""
    from core.plan import make_plan

    base = open_model(demo_f32_path)
    text, _ = read_text(prose_path)
    chunks = prepare_chunks(base, text, n_ctx=64, n_chunks=2)
    cands = [Candidate(t, plan=make_plan(base.tensors, base.metadata, t)) for t in ("Q4_0", "Q8_0")]
    one = evaluate(base, cands, chunks, threads=1, keep_per_token=True)
    three = evaluate(base, cands, chunks, threads=3, keep_per_token=True)
    for a, b in zip(one, three):
        assert a.kld.to_dict() == b.kld.to_dict()
        np.testing.assert_array_equal(a.kld_per_token, b.kld_per_token)
        np.testing.assert_array_equal(a.top_base, b.top_base)
    assert one[0].kld.kld_mean > one[1].kld.kld_mean > 0


def test_eval_cli_json_and_table(demo_f32_path, prose_path, capsys):
    assert main(["eval", demo_f32_path, "--preset", "Q8_0", "--type", "Q4_0", "--text", prose_path,
                 "--ctx", "64", "--chunks", "2", "--json", "--threads", "2"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["label"] for r in rows] == ["Q8_0", "Q4_0 (pure)"]
    for r in rows:
        assert set(r) >= {"tokens", "ppl_base", "ppl", "kld_mean", "kld_percentiles", "delta_p_rms", "same_top_p"}
        assert set(r["kld_percentiles"]) == {"99.9", "99", "95", "90", "50", "10", "5", "1", "0.1"}
    q8, q4 = rows
    assert q8["kld_mean"] < q4["kld_mean"] and q8["same_top_p"] > q4["same_top_p"]
    assert q8["ppl_base"] == q4["ppl_base"]            # one base pass shared
    assert q8["size"] > q4["size"] > 0


def test_imatrix_cli_writes_a_file_llama_cpp_uses(demo_f32_path, prose_path, tmp_path, capsys):
    from core.imatrix import load_imatrix
    from tests.refs.llama import quantize as llama_quantize
    from core.presets import get_preset

    out = str(tmp_path / "im.gguf")
    assert main(["imatrix", demo_f32_path, "--text", prose_path, "--ctx", "64", "--chunks", "3", "-o", out,
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["chunks"] == 3 and summary["tensors"] == 30 * 7
    im = load_imatrix(out)
    w = im.weights("blk.0.attn_q.weight")
    assert w.shape == (576,) and np.all(w >= 0) and w.max() > 0
    assert not os.path.exists(out + ".partial")
    # llama.cpp's quantizer takes it (IQ4_XS uses the importance weights)
    llama_quantize(demo_f32_path, get_preset("IQ4_XS").ftype, output=str(tmp_path / "l.gguf"),
                   imatrix={n: im.weights(n) for n in im.entries})
    dat = str(tmp_path / "im.dat")
    assert main(["imatrix", demo_f32_path, "--text", prose_path, "--ctx", "64", "--chunks", "3", "-o", dat]) == 0
    d = load_imatrix(dat)
    assert np.allclose(d.weights("blk.0.attn_q.weight"), w, rtol=1e-6)


def test_greedy_continuation_equals_llama_cpp(demo_f32_path):
    import llama_cpp

    src = open_model(demo_f32_path)
    tok = load_tokenizer(src)
    prompt = "The three primary colours are"
    ours = greedy(src, tok.encode(prompt), 10, threads=2)
    llm = llama_cpp.Llama(model_path=demo_f32_path, n_ctx=128, n_threads=2, verbose=False)
    want = []
    for t in llm.generate(llm.tokenize(prompt.encode()), temp=0.0, top_k=1):
        want.append(t)
        if len(want) == len(ours):
            break
    llm.close()
    assert ours == want


@pytest.mark.parametrize("case", ["missing", "binary", "empty", "short"])
def test_bad_text_is_one_clear_line(demo_f32_path, tmp_path, case):
    p = tmp_path / "t.txt"
    if case == "binary":
        p.write_bytes(b"abc\xff\xfe\x00def")
    elif case == "empty":
        p.write_text("  \n")
    elif case == "short":
        p.write_text("A short text of a few words.")
    r = subprocess.run([sys.executable, "-m", "core.cli", "imatrix", demo_f32_path, "--text", str(p), "-o",
                        str(tmp_path / "o.gguf")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr
    want = {"missing": "no such text file", "binary": "not UTF-8", "empty": "empty",
            "short": "needs at least"}[case]
    assert want in err[0]
    if case != "short":
        assert str(p) in err[0]
    assert not os.path.exists(tmp_path / "o.gguf") and not os.path.exists(tmp_path / "o.gguf.partial")


def test_builtin_text_is_shipped():
    text, name = read_text(None)
    assert name == "quant-studio-calibration-v1" and len(text) > 100_000
    with pytest.raises(SourceError, match="no such text file"):
        read_text("/nonexistent/x.txt")
