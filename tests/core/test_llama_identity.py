"""`quant-studio quantize --type T` writes the same tensor data as `llama-quantize --pure` (llama.cpp's own
llama_model_quantize, called through llama-cpp-python), tensor by tensor."""
import os

import numpy as np
import pytest

from core.job import run_plan
from core.plan import pure_plan
from core.presets import file_type_of, get_preset
from core.qtypes import parse_type
from core.models import open_model
from tests.refs.llama import quantize as llama_quantize

LEGACY = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "F16", "BF16"]


def _compare(src_path, qtype, tmp_path):
    ours = str(tmp_path / f"ours-{qtype}.gguf")
    theirs = str(tmp_path / f"llama-{qtype}.gguf")
    src = open_model(src_path)
    run_plan(src, pure_plan(src.tensors, qtype, src.architecture), ours, threads=2)
    llama_quantize(src_path, file_type_of(parse_type(qtype)), pure=True, output=theirs, nthread=2)
    a, b = open_model(ours), open_model(theirs)
    assert sorted(t.name for t in a.tensors) == sorted(t.name for t in b.tensors)
    differing = []
    for t in a.tensors:
        u = b.tensor(t.name)
        assert t.dtype == u.dtype, f"{t.name}: ours {t.dtype}, llama.cpp {u.dtype}"
        x, y = a.raw(t.name), b.raw(t.name)
        if x.tobytes() != y.tobytes():
            rows = np.count_nonzero((x.reshape(t.n_rows, -1) != y.reshape(t.n_rows, -1)).any(axis=1))
            differing.append(f"{t.name}: {rows} of {t.n_rows} rows")
    assert not differing, f"{qtype}: tensors differ from llama-quantize --pure: {differing[:5]}"
    return a


@pytest.mark.parametrize("qtype", LEGACY)
def test_synthetic_f32_identical_to_llama_quantize(synthetic_path, tmp_path, qtype):
    _compare(synthetic_path, qtype, tmp_path)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q5_1", "BF16"])
def test_synthetic_f16_identical_to_llama_quantize(synthetic_f16_path, tmp_path, qtype):
    _compare(synthetic_f16_path, qtype, tmp_path)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q5_0"])
def test_demo_identical_to_llama_quantize(demo_path, tmp_path, qtype):
    out = _compare(demo_path, qtype, tmp_path)
    assert out.type_counts()[qtype] >= 210


def _compare_files(ours, theirs, whole: bool = True):
    a, b = open_model(ours), open_model(theirs)
    assert sorted(t.name for t in a.tensors) == sorted(t.name for t in b.tensors)
    bad = [t.name for t in a.tensors
           if t.dtype != b.tensor(t.name).dtype or a.raw(t.name).tobytes() != b.raw(t.name).tobytes()]
    assert not bad, f"{len(bad)} tensors differ from llama.cpp: {bad[:5]}"
    if not whole:
        return a
    with open(ours, "rb") as f, open(theirs, "rb") as g:      # and the whole file, header and order included
        x, y = f.read(), g.read()
    first = next((i for i in range(min(len(x), len(y))) if x[i] != y[i]), None) if x != y else None
    assert x == y, f"the files differ (sizes {len(x)}, {len(y)}; first difference at byte {first})"
    return a


@pytest.mark.parametrize("preset", ["Q4_0", "Q5_1"])
def test_preset_with_imatrix_identical_to_llama_quantize(synthetic_path, tmp_path, preset):
    """The CLI with --imatrix writes what llama_model_quantize writes given the same importance vectors,
    and records the imatrix in the metadata as llama-quantize does."""
    import subprocess
    import sys

    from core.imatrix import ImatrixData, load_imatrix
    from core.presets import get_preset

    src = open_model(synthetic_path)
    im_path = str(tmp_path / "im.gguf")
    ImatrixData.random_for(src, n_tokens=64, seed=3).save(im_path)
    ours = str(tmp_path / "ours.gguf")
    r = subprocess.run([sys.executable, "-m", "core.cli", "quantize", synthetic_path, ours, "--preset", preset,
                        "--imatrix", im_path], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    data = load_imatrix(im_path)
    theirs = str(tmp_path / "theirs.gguf")
    llama_quantize(synthetic_path, get_preset(preset).ftype, output=theirs, nthread=2,
                   imatrix={n: data.weights(n) for n in data.entries})
    # the llama-quantize tool adds the quantize.imatrix.* keys through kv overrides, which the C API called
    # here does not: every tensor is compared (the whole-file comparisons are the other tests)
    out = _compare_files(ours, theirs, whole=False)
    assert out.metadata["quantize.imatrix.file"] == "im.gguf"
    assert out.metadata["quantize.imatrix.entries_count"] == len(data.entries)
    # and the importance weights did change the result
    plain = str(tmp_path / "plain.gguf")
    run_plan(src, pure_plan(src.tensors, preset, "llama"), plain, threads=2)
    assert open_model(plain).raw("blk.0.attn_q.weight").tobytes() != out.raw("blk.0.attn_q.weight").tobytes()


K_PRESETS = ["Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K"]


def _preset_vs_llama(src_path, preset, tmp_path, with_imatrix):
    from core.imatrix import ImatrixData
    from core.plan import make_plan
    from core.presets import get_preset

    src = open_model(src_path)
    imatrix = arrays = None
    if with_imatrix:
        imatrix = ImatrixData.random_for(src, n_tokens=64, seed=5)
    plan = make_plan(src.tensors, src.metadata, preset, has_imatrix=with_imatrix)
    if imatrix is not None:
        arrays = imatrix.arrays_for(src.tensors, [e.name for e in plan.entries if e.quantize])
    ours = str(tmp_path / "ours.gguf")
    run_plan(src, plan, ours, threads=2, importances=arrays)
    theirs = str(tmp_path / "theirs.gguf")
    llama_quantize(src_path, get_preset(preset).ftype, output=theirs, nthread=2,
                   imatrix=None if imatrix is None else {n: imatrix.weights(n) for n in imatrix.entries})
    return _compare_files(ours, theirs)


@pytest.mark.parametrize("preset", K_PRESETS + ["Q2_K_S"])
def test_k_preset_file_identical_to_llama_quantize_with_imatrix(synthetic_path, tmp_path, preset):
    out = _preset_vs_llama(synthetic_path, preset, tmp_path, with_imatrix=True)
    assert any(t.dtype.endswith("_K") for t in out.tensors)


@pytest.mark.parametrize("preset", K_PRESETS)
def test_k_preset_file_identical_to_llama_quantize(synthetic_path, tmp_path, preset):
    _preset_vs_llama(synthetic_path, preset, tmp_path, with_imatrix=False)


@pytest.mark.parametrize("preset", ["Q4_K_M", "Q2_K_S"])
def test_demo_k_preset_identical_to_llama_quantize(demo_path, tmp_path, preset):
    _preset_vs_llama(demo_path, preset, tmp_path, with_imatrix=preset == "Q2_K_S")


# The presets of the i-quant, ternary, FP4 and 1-bit types: the whole file byte-identical to llama-quantize's
# on the synthetic model (rows of 256-multiples, so no fallback hides a type), with an imatrix, and without
# one where llama-quantize accepts that.
OTHER_PRESETS = ["IQ4_NL", "IQ4_XS", "MXFP4_MOE", "TQ1_0", "TQ2_0", "Q1_0", "Q2_0", "IQ3_XXS", "IQ3_S", "IQ3_M",
                 "IQ3_XS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_S", "IQ1_M"]


@pytest.mark.parametrize("preset", OTHER_PRESETS)
def test_other_preset_file_identical_to_llama_quantize(synthetic_path, tmp_path, preset):
    from core.plan import make_plan

    src = open_model(synthetic_path)
    needs = make_plan(src.tensors, src.metadata, preset).requires_imatrix
    modes = [True] if needs else [True, False]
    for with_imatrix in modes:
        d = tmp_path / str(with_imatrix)
        d.mkdir()
        out = _preset_vs_llama(synthetic_path, preset, d, with_imatrix=with_imatrix)
        want = get_preset(preset).default_type.name if preset != "MXFP4_MOE" else "Q8_0"
        assert any(t.dtype == want for t in out.tensors), (preset, {t.dtype for t in out.tensors})


def test_demo_q2_0_preset_identical_to_llama_quantize(demo_path, tmp_path):
    """Q2_0 (a type gguf-py 0.19.0 does not name; core._gguf_compat adds it) on the demo: rows of 576 are
    9 blocks of 64, the tied token_embd takes the output rule (Q6_K, which falls back to Q8_0 on those rows);
    the whole file is llama-quantize's, gguf-py's GGUFReader reads it, our reader decodes it as llama.cpp
    does, and the dry run predicted its size to the byte."""
    import json
    import subprocess
    import sys

    from gguf import GGUFReader

    from core.qtypes import type_info

    out = _preset_vs_llama(demo_path, "Q2_0", tmp_path, with_imatrix=False)
    counts = out.type_counts()
    assert counts["Q2_0"] == 210 and counts["Q8_0"] == 1, counts
    assert out.metadata["general.file_type"] == 41
    reader = GGUFReader(str(tmp_path / "ours.gguf"))
    q2 = [t for t in reader.tensors if t.tensor_type.name == "Q2_0"]
    assert len(q2) == 210
    t = next(t for t in q2 if t.name == "blk.0.ffn_down.weight")
    assert t.n_bytes == t.n_elements // 64 * 18 == type_info("Q2_0").row_bytes(1536) * 576
    assert np.array_equal(np.asarray(t.data).reshape(-1), out.raw(t.name))
    # read back as float32 by our own decoder (gguf-py has none for Q2_0), as llama.cpp decodes it
    from tests.refs.ggml_dequant import dequantize as c_dequantize
    rows = out.read_rows(t.name, 0, 576)
    assert np.array_equal(rows, c_dequantize("q2_0", out.raw(t.name).reshape(576, -1), 1536))
    blocks = np.abs(rows.reshape(-1, 64))
    d = blocks.max(axis=1, keepdims=True)            # each block: its max |x| and zeros (no block is empty)
    assert (d > 0).all() and np.all((blocks == 0) | (blocks == d))
    r = subprocess.run([sys.executable, "-m", "core.cli", "quantize", demo_path, str(tmp_path / "dry.gguf"),
                        "--preset", "Q2_0", "--dry-run", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    pred = json.loads(r.stdout)
    assert pred["file_size"] == os.path.getsize(tmp_path / "theirs.gguf")
    assert {t["name"]: t["type"] for t in pred["tensors"]} == {t.name: t.dtype for t in out.tensors}


def test_q2_0_is_offered_by_the_cli():
    """--help lists Q2_0 among the presets (in llama-quantize's place, after Q1_0) and the types."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "core.cli", "quantize", "--help"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert "file type: Q1_0, Q2_0, Q4_0," in text and "TQ2_0, Q1_0, Q2_0, IQ3_XXS" in text
