"""--json of every command that has it, on the demo, an F32 GGUF written by gguf-py and a Hugging Face
folder: valid JSON, long arrays summarized unless --full, and --debug accepted after the command."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.core.convert.hf_fixtures import synthetic_checkpoint


def cli(*args):
    return subprocess.run([sys.executable, "-m", "core.cli", *args], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def models(tmp_path_factory, demo_path, synthetic_path):
    folder = str(tmp_path_factory.mktemp("hfjson") / "hf")
    synthetic_checkpoint(folder, "LlamaForCausalLM", dtype="BF16")
    return {"demo": demo_path, "f32-gguf-py": synthetic_path, "hf": folder}


@pytest.mark.parametrize("which", ["demo", "f32-gguf-py", "hf"])
def test_inspect_json(models, which):
    args = ["inspect", models[which], "--json"] + (["--no-stats"] if which == "demo" else [])
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["summary"]["n_tensors"] == len(d["tensors"]) > 0
    tokens = d["metadata"].get("tokenizer.ggml.tokens")
    if tokens is not None:                                       # a vocabulary: its length and first items
        assert set(tokens) == {"length", "first"} and tokens["length"] > 16 and len(tokens["first"]) == 16
    if which != "demo":
        assert all("stats" in t for t in d["tensors"] if t["type"] in ("F32", "BF16", "F16"))
        assert all(isinstance(t["stats"]["hist_counts"], (list, dict)) for t in d["tensors"] if "stats" in t)


def test_inspect_json_full_gives_every_item(models):
    r = cli("inspect", models["demo"], "--json", "--no-stats", "--full")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["metadata"]["tokenizer.ggml.tokens"]) == 49152


@pytest.mark.parametrize("which", ["demo", "f32-gguf-py", "hf"])
def test_quantize_verify_and_diff_json(models, which, tmp_path):
    r = cli("quantize", models[which], str(tmp_path / "dry.gguf"), "--type", "Q8_0", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["file_size"] > 0
    out = str(tmp_path / "q8.gguf")
    r = cli("quantize", models[which], out, "--type", "Q8_0", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["output"] == [out]
    r = cli("verify", out, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["ok"] is True, r.stderr
    r = cli("diff", out, out, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["totals"]["different"] == 0, r.stderr


def test_debug_is_accepted_after_the_command(tmp_path):
    missing = str(tmp_path / "missing.gguf")
    r = cli("inspect", missing, "--debug")
    assert r.returncode != 2 or "unrecognized arguments" not in r.stderr
    assert "Traceback" in r.stderr and missing in r.stderr           # --debug: the traceback is shown
    r = cli("inspect", missing)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
