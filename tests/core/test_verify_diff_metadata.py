"""verify, diff and set-metadata on real files: a sound file passes; one flipped block or two swapped
tensors are caught and named (exit 2); two quants of one model compare tensor by tensor with their
metadata; metadata edits copy the tensors byte for byte and load in llama.cpp."""
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
    bad = str(tmp_path / "swapped.gguf")
    shutil.copy(src, bad)
    m = open_model(src)
    (oa, na), (ob, nb) = m.data_span("blk.0.ffn_up.weight"), m.data_span("blk.0.ffn_gate.weight")
    assert na == nb
    blob = open(src, "rb").read()
    with open(bad, "r+b") as f:
        f.seek(oa)
        f.write(blob[ob:ob + nb])
        f.seek(ob)
        f.write(blob[oa:oa + na])
    r = _cli("verify", bad, "--source", synthetic_path, "--json")
    rep = json.loads(r.stdout)
    assert r.returncode == 2 and not rep["ok"]
    named = {d.split(":")[0] for d in rep["defects"]}
    assert named == {"blk.0.ffn_up.weight", "blk.0.ffn_gate.weight"}


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
