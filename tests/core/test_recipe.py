"""--recipe-from: a GGUF file's per-tensor types reused. Applied to the source llama-quantize made the
file from, the output is that file byte for byte; applied to a fine-tune of the same shapes it takes
the same types; tensors whose rows cannot take a type fall back and are listed."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from core.demo import make_synthetic_llama
from core.job import run_plan
from core.models import open_model
from core.presets import get_preset
from core.recipe import recipe_plan
from tests.refs.llama import quantize as llama_quantize


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "core.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("preset", ["Q4_K_M", "Q3_K_S", "Q5_1"])
def test_clone_of_a_llama_quantize_file_is_byte_identical(synthetic_path, tmp_path, preset):
    other = str(tmp_path / f"llama-{preset}.gguf")
    llama_quantize(synthetic_path, get_preset(preset).ftype, output=other, nthread=2)
    out = str(tmp_path / "clone.gguf")
    r = _cli("quantize", synthetic_path, out, "--recipe-from", other)
    assert r.returncode == 0, r.stderr
    assert open(out, "rb").read() == open(other, "rb").read()


def test_clone_of_the_demo_with_its_imatrix_is_byte_identical(demo_path, tmp_path):
    """A requantized file (demo: Q4_1 source), made with an importance matrix: the same matrix gives
    the same bytes (here through the API: llama_model_quantize writes no imatrix metadata)."""
    from core.imatrix import ImatrixData

    src = open_model(demo_path)
    im = ImatrixData.random_for(src, n_tokens=64, seed=7)
    other = str(tmp_path / "llama-Q2_K_S.gguf")
    llama_quantize(demo_path, get_preset("Q2_K_S").ftype, output=other, nthread=2,
                   imatrix={n: im.weights(n) for n in im.entries})
    rec = recipe_plan(src, open_model(other), has_imatrix=True)
    assert not rec.fallbacks and not rec.only_in_other and not rec.only_in_source
    plan = rec.plan
    out = str(tmp_path / "clone.gguf")
    run_plan(src, plan, out, threads=2, importances=im.arrays_for(src.tensors, [e.name for e in plan.entries
                                                                                 if e.quantize]))
    assert open(out, "rb").read() == open(other, "rb").read()


def test_recipe_on_a_fine_tune_and_on_other_shapes(tmp_path):
    base = make_synthetic_llama(str(tmp_path / "base.gguf"), seed=0)
    tune = make_synthetic_llama(str(tmp_path / "tune.gguf"), seed=5)           # same names and shapes
    odd = make_synthetic_llama(str(tmp_path / "odd.gguf"), n_ff=704, seed=6)  # ffn rows 704: not a K-quant fit
    other = str(tmp_path / "base.Q4_K_M.gguf")
    assert _cli("quantize", base, other, "--preset", "Q4_K_M").returncode == 0
    want = {t.name: t.dtype for t in open_model(other).tensors}

    out = str(tmp_path / "tune.gguf.out.gguf")
    r = _cli("quantize", tune, out, "--recipe-from", other)
    assert r.returncode == 0, r.stderr
    assert {t.name: t.dtype for t in open_model(out).tensors} == want

    rec = recipe_plan(open_model(odd), open_model(other))
    fell = {f.split(":")[0] for f in rec.fallbacks}
    assert fell == {f"blk.{i}.ffn_down.weight" for i in range(2)}               # rows of 704 (ffn_down only)
    for name in fell:
        e = rec.plan.entry(name)
        assert e.type != want[name] and "fallback" in e.reason
    assert any("fallback" in w for w in rec.plan.warnings)
    r = _cli("quantize", odd, str(tmp_path / "odd.out.gguf"), "--recipe-from", other)
    assert r.returncode == 0 and "fallback: blk.0.ffn_down.weight" in r.stderr


def test_recipe_errors(synthetic_path, tmp_path):
    r = _cli("quantize", synthetic_path, str(tmp_path / "o.gguf"), "--recipe-from", str(tmp_path / "missing.gguf"))
    assert r.returncode == 2 and "missing.gguf" in r.stderr and "Traceback" not in r.stderr
    r = _cli("quantize", synthetic_path, str(tmp_path / "o.gguf"), "--recipe-from", synthetic_path, "--preset", "Q8_0")
    assert r.returncode == 2 and "exactly one of" in r.stderr
    assert not os.path.exists(tmp_path / "o.gguf")
