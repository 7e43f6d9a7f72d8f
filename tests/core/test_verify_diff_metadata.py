"""verify, diff and set-metadata on real files: a sound file passes; one flipped block or two swapped
tensors are caught and named (exit 2); two quants of one model compare tensor by tensor with their
metadata (and, with --eval, their PPL/KLD against the source, as `eval` gives them); metadata edits copy the
tensors byte for byte and load in llama.cpp."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from core.models import open_model


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "core.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def quants(tmp_path_factory, synthetic_path):
    d = tmp_path_factory.mktemp("quants")
    out = {}
    for preset in ("Q4_K_M", "Q6_K"):
        p = str(d / f"syn.{preset}.gguf")
        r = _cli("quantize", synthetic_path, p, "--preset", preset, "--verify")
        assert r.returncode == 0 and "verified: sound" in r.stdout, r.stderr
        out[preset] = p
    return out


def _flip_block(path: str, out: str, name: str) -> None:
    """``out``: ``path`` with every byte of one block of tensor ``name`` inverted."""
    shutil.copy(path, out)
    m = open_model(path)
    off, nbytes = m.data_span(name)
    with open(out, "r+b") as f:
        f.seek(off + nbytes // 2)
        block = f.read(144)
        f.seek(off + nbytes // 2)
        f.write(bytes(255 - b for b in block))



def _swapped_copy(path: str, out: str, a: str, b: str) -> str:
    """A copy of the GGUF at ``path`` with the data of tensors ``a`` and ``b`` (same size) swapped."""
    m = open_model(path)
    (oa, na), (ob, nb) = m.data_span(a), m.data_span(b)
    assert na == nb
    blob = open(path, "rb").read()
    shutil.copy(path, out)
    with open(out, "r+b") as f:
        f.seek(oa)
        f.write(blob[ob:ob + nb])
        f.seek(ob)
        f.write(blob[oa:oa + na])
    return out

def test_sound_file_passes_with_and_without_source(quants, synthetic_path):
    from core.verify import verify

    rep = verify(quants["Q4_K_M"], open_model(synthetic_path), threads=2)
    assert rep.ok, rep.defects
    measured = [t for t in rep.tensors if t.rel_rmse is not None]
    assert len(measured) == len(rep.tensors)
    assert all(t.rel_rmse <= t.expected_rel_rmse * 1.0001 + 1e-12 for t in measured if t.expected_rel_rmse)
    r = _cli("verify", quants["Q6_K"], "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["ok"] is True


def test_a_flipped_block_is_caught_and_named(quants, synthetic_path, tmp_path):
    bad = str(tmp_path / "flipped.gguf")
    _flip_block(quants["Q4_K_M"], bad, "blk.1.ffn_up.weight")
    r = _cli("verify", bad, "--source", synthetic_path)
    assert r.returncode == 2 and "blk.1.ffn_up.weight" in r.stderr and "Traceback" not in r.stderr
    assert sum("rows have far more error" in line for line in r.stderr.splitlines()) == 1


def test_swapped_tensors_are_caught(quants, synthetic_path, tmp_path):
    """Two tensors of the same shape and type written in each other's place."""
    src = quants["Q6_K"]
    bad = _swapped_copy(src, str(tmp_path / "swapped.gguf"), "blk.0.ffn_up.weight", "blk.0.ffn_gate.weight")
    r = _cli("verify", bad, "--source", synthetic_path, "--json")
    rep = json.loads(r.stdout)
    assert r.returncode == 2 and not rep["ok"]
    named = {d.split(":")[0] for d in rep["defects"]}
    assert named == {"blk.0.ffn_up.weight", "blk.0.ffn_gate.weight"}


@pytest.fixture(scope="module")
def iq2(tmp_path_factory, synthetic_path):
    """The synthetic model as IQ2_XXS (needs an imatrix: a random one, saved next to the file)."""
    from core.imatrix import ImatrixData

    d = tmp_path_factory.mktemp("iq2")
    im = str(d / "syn.imatrix.gguf")
    ImatrixData.random_for(open_model(synthetic_path).tensors).save(im)
    p = str(d / "syn.IQ2_XXS.gguf")
    r = _cli("quantize", synthetic_path, p, "--preset", "IQ2_XXS", "--imatrix", im, "--verify")
    assert r.returncode == 0 and "verified: sound" in r.stdout, r.stderr
    iq = [t.name for t in open_model(p).tensors if t.dtype == "IQ2_XXS"]
    assert len(iq) > 4
    return p, im, iq


def _checks(r) -> dict:
    return {t["name"]: t["check"] for t in json.loads(r.stdout)["tensors"]}


def test_sound_iq2_xxs_passes_with_and_without_its_imatrix(iq2, synthetic_path, tmp_path):
    """With the weights it was made with, every tensor is requantized exactly (the same error); without
    them (the imatrix the file names moved away) IQ2_XXS is compared, approximately, with a requantization
    with uniform weights -- not flagged for its error (rel. RMSE above 0.5 on this model)."""
    path, im, iq = iq2
    r = _cli("verify", path, "--source", synthetic_path, "--imatrix", im, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout)
    assert set(_checks(r).values()) == {"requantized"}
    by_name = {t["name"]: t for t in rep["tensors"]}
    assert all(abs(by_name[n]["rel_rmse"] - by_name[n]["expected_rel_rmse"]) <= 1e-9 for n in iq)
    assert max(by_name[n]["rel_rmse"] for n in iq) > 0.5            # what the plausibility bound flagged
    r = _cli("verify", path, "--source", synthetic_path, "--json")      # the imatrix named in the file, found
    assert r.returncode == 0 and {_checks(r)[n] for n in iq} == {"requantized (with the imatrix named in the file)"}
    lone = str(tmp_path / os.path.basename(path))
    shutil.copy(path, lone)
    r = _cli("verify", lone, "--source", synthetic_path, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert {_checks(r)[n] for n in iq} == {"requantized (uniform weights, approximate)"}
    n_approx = sum("approximate" in c for c in _checks(r).values())
    r = _cli("verify", lone, "--source", synthetic_path)
    assert r.returncode == 0 and f"{n_approx} of them approximately" in r.stdout, r.stdout
    assert set(_checks(_cli("verify", lone, "--json")).values()) == {"decode only"}
    r = _cli("verify", lone, "--imatrix", im)
    assert r.returncode == 2 and "--imatrix needs --source" in r.stderr


def test_iq2_xxs_defects_are_caught_with_and_without_weights(iq2, synthetic_path, tmp_path):
    path, im, iq = iq2
    bad = str(tmp_path / "flipped.gguf")                 # no imatrix next to it: uniform weights
    _flip_block(path, bad, iq[2])
    for extra in ((), ("--imatrix", im)):
        r = _cli("verify", bad, "--source", synthetic_path, *extra)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        named = [line.split(":")[0].strip() for line in r.stderr.splitlines()[1:]]
        assert named == [iq[2]], r.stderr
    m = open_model(path)                                 # two IQ2_XXS tensors of one shape in each other's place
    a, b = next((x, y) for i, x in enumerate(iq) for y in iq[i + 1:]
                if m.tensor(x).shape == m.tensor(y).shape)
    swapped = _swapped_copy(path, str(tmp_path / "swapped.gguf"), a, b)
    r = _cli("verify", swapped, "--source", synthetic_path, "--json")
    assert r.returncode == 2 and {d.split(":")[0] for d in json.loads(r.stdout)["defects"]} == {a, b}


def test_structure_reader_reads_what_gguf_py_reads(quants, tmp_path):
    """verify's faster GGUFReader gives every field (parts, types, values) and tensor as gguf-py's own,
    string arrays (the vocabulary, an empty one) included."""
    from gguf import GGUFReader, GGUFWriter

    from core.verify import _fast_reader

    extra = str(tmp_path / "arrays.gguf")
    w = GGUFWriter(extra, "llama")
    w.add_array("x.empty", [])
    w.add_array("x.words", ["a", "", "ünï", "b" * 300])
    w.add_array("x.ints", [1, 2, 3])
    w.add_string("x.s", "s")
    w.add_tensor("t", np.arange(8, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    for path in (quants["Q4_K_M"], extra):
        a, b = _fast_reader()(path, "r"), GGUFReader(path, "r")
        assert list(a.fields) == list(b.fields) and any(len(f.data) > 100 for f in b.fields.values()) == (path != extra)
        for k, f in b.fields.items():
            g = a.fields[k]
            assert (g.offset, g.types, g.data, g.contents()) == (f.offset, f.types, f.data, f.contents()), k
            assert len(g.parts) == len(f.parts) and all(
                u.dtype == v.dtype and np.array_equal(u, v) for u, v in zip(g.parts, f.parts)), k
        assert [(t.name, t.tensor_type, t.data_offset, t.n_bytes, list(t.shape)) for t in a.tensors] == \
            [(t.name, t.tensor_type, t.data_offset, t.n_bytes, list(t.shape)) for t in b.tensors]


def test_truncated_file_is_a_defect_not_a_traceback(quants, tmp_path):
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(open(quants["Q6_K"], "rb").read()[:-5000])
    r = _cli("verify", str(bad))
    assert r.returncode == 2 and "cut.gguf" in r.stderr and "Traceback" not in r.stderr
    r = _cli("verify", str(tmp_path / "none.gguf"))
    assert r.returncode == 2 and "none.gguf" in r.stderr


def test_diff_of_two_quants(quants, synthetic_path):
    r = _cli("diff", quants["Q4_K_M"], quants["Q6_K"], "--source", synthetic_path, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    a, b = open_model(quants["Q4_K_M"]), open_model(quants["Q6_K"])
    want = {t.name for t in a.tensors if t.dtype != b.tensor(t.name).dtype}
    assert {t["name"] for t in d["tensors"] if t["differs"]} == want and want
    assert d["totals"]["different"] == len(want) and d["totals"]["a_bpw"] < d["totals"]["b_bpw"]
    assert d["metadata"]["changed"]["general.file_type"] == [a.metadata["general.file_type"],
                                                             b.metadata["general.file_type"]]
    for t in d["tensors"]:
        if t["a_type"] in ("Q4_K",) and t["b_type"] == "Q6_K":
            assert t["a_rel_rmse"] > t["b_rel_rmse"] > 0
    text = _cli("diff", quants["Q4_K_M"], quants["Q6_K"]).stdout
    assert "* " in text and "general.file_type" in text and "layer 0" in text


def test_diff_eval_gives_eval_figures(demo_f32_path, tmp_path):
    """diff --eval: both files through the forward pass against the source, the figures `eval` gives for the
    same files and text (same numbers), Q8_0 closer than Q4_0; --eval without --source is an error."""
    paths = []
    for t in ("Q8_0", "Q4_0"):
        paths.append(str(tmp_path / f"demo.{t}.gguf"))
        r = _cli("quantize", demo_f32_path, paths[-1], "--type", t)
        assert r.returncode == 0, r.stderr
    small = ("--ctx", "64", "--chunks", "2", "--threads", "2")
    r = _cli("diff", *paths, "--source", demo_f32_path, "--eval", *small, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    r = _cli("eval", demo_f32_path, *paths, *small, "--json")
    assert r.returncode == 0, r.stderr
    want = json.loads(r.stdout)
    assert d["eval"] == want and [e["label"] for e in want] == ["demo.Q8_0.gguf", "demo.Q4_0.gguf"]
    q8, q4 = want
    assert 0 < q8["kld_mean"] < q4["kld_mean"] and q8["tokens"] == q4["tokens"] == 2 * (64 - 1 - 32)
    assert d["totals"]["different"] > 0 and all(t["b_rel_rmse"] is not None for t in d["tensors"] if t["differs"])

    r = _cli("diff", *paths, "--source", demo_f32_path, "--eval", *small)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for which, e in zip("AB", want):                   # the table's row of each file: eval's figures
        row = next(line for line in lines if line.startswith(f"{which}  {e['label']}"))
        assert f"{e['ppl']:.4f}" in row and f"{e['kld_mean']:.5f} ± {e['kld_err']:.5f}" in row
        assert f"{100 * e['same_top_p']:.2f} %" in row
    assert f"base PPL {q8['ppl_base']:.4f}" in r.stdout and "A is closer to the source" in r.stdout

    r = _cli("diff", *paths, "--eval")
    assert r.returncode == 2 and "--eval needs --source" in r.stderr and len(r.stderr.splitlines()) == 1
    assert r.stdout == ""


def test_set_metadata_copies_tensors_verbatim_and_llama_cpp_loads_it(quants, tmp_path):
    import llama_cpp

    tpl = tmp_path / "t.jinja"
    tpl.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    out = str(tmp_path / "edited.gguf")
    r = _cli("set-metadata", quants["Q6_K"], out, "general.name=Edited name", f"tokenizer.chat_template=@{tpl}",
             "llama.context_length=1024", "my.flag:bool=true", "my.list:arr[i32]=[1, 2, 3]",
             "--remove", "general.quantization_version")
    assert r.returncode == 0, r.stderr
    a, b = open_model(quants["Q6_K"]), open_model(out)
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    assert all(a.raw(t.name).tobytes() == b.raw(t.name).tobytes() for t in a.tensors)
    md = b.metadata
    assert md["general.name"] == "Edited name" and md["tokenizer.chat_template"] == tpl.read_text()
    assert md["llama.context_length"] == 1024 and md["my.flag"] is True and list(md["my.list"]) == [1, 2, 3]
    assert "general.quantization_version" not in md
    keys_a = [k.key for k in a.kv if k.key != "general.quantization_version"]
    assert [k.key for k in b.kv][:len(keys_a)] == keys_a                     # edited keys keep their place
    assert {k.key: k.vtype for k in b.kv}["llama.context_length"] == {k.key: k.vtype for k in a.kv}["llama.context_length"]
    logits = []
    for path in (quants["Q6_K"], out):                                       # llama.cpp runs both alike
        llm = llama_cpp.Llama(model_path=path, n_ctx=64, n_threads=2, verbose=False, logits_all=True)
        llm.eval([1, 5, 9, 13])
        logits.append(np.array(llm.scores[:4]))
        llm.close()
    assert np.isfinite(logits[0]).all() and np.array_equal(logits[0], logits[1])
    for bad, msg in ((["llama.context_length=lots"], "not a uint32"), (["nokey"], "malformed"),
                     (["x:q9=1"], "unknown type")):
        r = _cli("set-metadata", quants["Q6_K"], str(tmp_path / "x.gguf"), *bad)
        assert r.returncode == 2 and msg in r.stderr and not os.path.exists(tmp_path / "x.gguf")
    r = _cli("set-metadata", quants["Q6_K"], str(tmp_path / "x.gguf"), "--remove", "general.architecture")
    assert r.returncode == 2 and not os.path.exists(tmp_path / "x.gguf")


def test_set_metadata_copies_types_we_cannot_write(synthetic_path, tmp_path):
    """An IQ4_NL file (llama-quantize's) is copied byte for byte: the copy never decodes a tensor."""
    from gguf.constants import LlamaFileType

    from tests.refs.llama import quantize as llama_quantize

    iq = str(tmp_path / "iq4nl.gguf")
    llama_quantize(synthetic_path, int(LlamaFileType.MOSTLY_IQ4_NL), output=iq, nthread=2)
    assert "IQ4_NL" in open_model(iq).type_counts()
    out = str(tmp_path / "iq4nl.named.gguf")
    r = _cli("set-metadata", iq, out, "general.name=renamed")
    assert r.returncode == 0, r.stderr
    a, b = open_model(iq), open_model(out)
    assert b.metadata["general.name"] == "renamed"
    assert all(a.raw(t.name).tobytes() == b.raw(t.name).tobytes() for t in a.tensors)
    assert _cli("verify", out).returncode == 0                   # gguf-py decodes IQ4_NL: sound
