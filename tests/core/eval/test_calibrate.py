"""The imatrix accumulator (core.eval.calibrate) and the chunking shared with evaluation (core.eval.chunking):
hand-computed statistics, both file formats read back by core.imatrix, and llama.cpp's own loader/saver
(``llama-imatrix --in-file``) and quantizer accepting the files; the collected tensor set against a real
``llama-imatrix`` run on the demo model."""
from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from gguf import GGUFReader

from core.errors import QuantStudioError
from core.eval.calibrate import ImatrixCollector, Provenance, read_in_sum, text_sha256
from core.eval.chunking import chunk_tokens
from core.imatrix import load_imatrix


def _rng(seed=0):
    return np.random.default_rng(seed)


# -- chunking ---------------------------------------------------------------------------------------
def test_chunks_cut_and_bos_substituted_as_llama_cpp():
    toks = np.arange(1000, 1000 + 70)
    c = chunk_tokens(toks, 16, bos=1)
    assert c.tokens.shape == (4, 16)                          # 70 // 16, the tail of 6 dropped
    assert (c.tokens[:, 0] == 1).all()                        # replaced, not prepended
    assert (c.tokens[:, 1:] == toks[:64].reshape(4, 16)[:, 1:]).all()
    assert toks[0] == 1000                                    # the stream is not touched
    assert chunk_tokens(toks, 16).tokens[2, 0] == 1032        # no BOS: plain slices
    assert chunk_tokens(toks, 16, n_chunks=2).n_chunk == 2
    assert chunk_tokens(toks, 16, skip_chunks=1).tokens[0, 1] == 1017
    assert c.first == 8 and c.scored_per_chunk == 7


def test_chunks_refuse_short_texts_as_llama_cpp():
    with pytest.raises(QuantStudioError, match="at least 32"):
        chunk_tokens(np.arange(31), 16)
    with pytest.raises(QuantStudioError, match="after removing 1"):
        chunk_tokens(np.arange(48), 16, skip_chunks=1)        # (1 + 2) * 16 >= 48


# -- accumulation by hand ---------------------------------------------------------------------------
def test_dense_sums_counts_and_filters():
    col = ImatrixCollector(chunk_size=16)
    x1 = _rng().standard_normal((20, 8)).astype(np.float32)
    x2 = _rng(1).standard_normal((16, 8)).astype(np.float32)
    col.on_linear_input("blk.0.attn_q.weight", x1)
    col.on_linear_input("blk.0.attn_q.weight", x2)
    col.on_linear_input("blk.0.attn_q.weight", x2[:15])           # < 16 rows: llama-imatrix ignores it
    col.on_linear_input("output.weight", x1)                       # only with --process-output
    col.on_linear_input("token_embd.weight", x1)                   # not blk.*
    assert set(col.stats) == {"blk.0.attn_q.weight"}
    st = col.stats["blk.0.attn_q.weight"]
    x = np.concatenate([x1, x2]).astype(np.float64)
    np.testing.assert_allclose(st.sum2[0], (x ** 2).sum(0), rtol=1e-12)
    np.testing.assert_allclose(st.sum1[0], x.sum(0), rtol=1e-12, atol=1e-12)
    assert st.counts.tolist() == [36]
    assert col.chunk_count == 2                                     # 36 // 16
    np.testing.assert_allclose(col.mean("blk.0.attn_q.weight")[0], x.mean(0), atol=1e-12)
    out = ImatrixCollector(chunk_size=16, process_output=True)
    out.on_linear_input("output.weight", x1)
    assert set(out.stats) == {"output.weight"}
    with pytest.raises(QuantStudioError, match="non-finite"):
        bad = x1.copy()
        bad[3, 3] = np.inf
        col.on_linear_input("blk.1.attn_q.weight", bad)


def test_experts_one_count_per_expert():
    col = ImatrixCollector(chunk_size=4)
    n_tok, n_used, n_exp, n_in = 6, 2, 4, 5
    ids = np.array([[0, 2], [2, 3], [0, 1], [3, 2], [0, 2], [1, 0]])
    xs = _rng(2).standard_normal((n_tok, n_in)).astype(np.float32)           # shared by the slots (gate/up)
    xd = _rng(3).standard_normal((n_tok, n_used, n_in)).astype(np.float32)   # one per slot (down)
    col.add_experts("blk.0.ffn_up_exps.weight", xs, ids, n_exp)
    col.add_experts("blk.0.ffn_down_exps.weight", xd, ids, n_exp)
    want_up, want_down = np.zeros((n_exp, n_in)), np.zeros((n_exp, n_in))
    counts = np.zeros(n_exp, dtype=np.int64)
    for t in range(n_tok):                       # imatrix.cpp's loop, literally
        for k in range(n_used):
            e = ids[t, k]
            counts[e] += 1
            want_up[e] += xs[t].astype(np.float64) ** 2
            want_down[e] += xd[t, k].astype(np.float64) ** 2
    np.testing.assert_allclose(col.stats["blk.0.ffn_up_exps.weight"].sum2, want_up, rtol=1e-12)
    np.testing.assert_allclose(col.stats["blk.0.ffn_down_exps.weight"].sum2, want_down, rtol=1e-12)
    assert col.stats["blk.0.ffn_up_exps.weight"].counts.tolist() == counts.tolist() == [4, 2, 4, 2]
    assert col.chunk_count == 1                                      # max count 4 // chunk 4
    assert ImatrixCollector.is_expert("blk.0.ffn_up_exps.weight")


def _small_collector(chunk_size=16):
    col = ImatrixCollector(chunk_size=chunk_size)
    r = _rng(4)
    for c in range(3):
        col.on_linear_input("blk.0.attn_k.weight", r.standard_normal((16, 32)).astype(np.float32) * 3)
        col.on_linear_input("blk.1.ffn_down.weight", r.standard_normal((16, 64)).astype(np.float32))
        ids = r.integers(0, 4, (16, 2))
        col.add_experts("blk.1.ffn_gate_exps.weight", r.standard_normal((16, 32)).astype(np.float32), ids, 4)
    return col


# -- files ------------------------------------------------------------------------------------------
def test_gguf_round_trip_through_core_imatrix(tmp_path):
    col = _small_collector()
    prov = Provenance("wiki.test.raw", text_sha256("hello"), n_ctx=16, n_chunks=3, n_tokens=48, model="m.gguf")
    p = col.write_gguf(tmp_path / "i.gguf", prov)
    assert not os.path.exists(p + ".partial")
    data = load_imatrix(p)
    assert data.datasets == ["wiki.test.raw"] and data.chunk_size == 16 and data.chunk_count == 3
    for name, st in col.stats.items():
        e = data.entries[name]
        np.testing.assert_array_equal(e.sums, st.sum2.astype(np.float32).reshape(-1))
        assert e.counts.tolist() == st.counts.tolist()
    np.testing.assert_allclose(data.weights("blk.0.attn_k.weight"),
                               col.stats["blk.0.attn_k.weight"].sum2[0] / 48, rtol=1e-6)
    ins = read_in_sum(p)
    np.testing.assert_array_equal(ins["blk.1.ffn_gate_exps.weight"],
                                  col.stats["blk.1.ffn_gate_exps.weight"].sum1.astype(np.float32))
    kv = {f.name: f for f in GGUFReader(p).fields.values()}
    assert kv["general.type"].contents() == "imatrix"
    assert kv["quant_studio.imatrix.text_sha256"].contents() == text_sha256("hello")
    assert kv["quant_studio.imatrix.n_ctx"].contents() == 16
    shapes = {t.name: [int(v) for v in t.shape] for t in GGUFReader(p).tensors}
    assert shapes["blk.0.attn_k.weight.in_sum2"] == [32] and shapes["blk.0.attn_k.weight.counts"] == [1]
    assert shapes["blk.1.ffn_gate_exps.weight.in_sum2"] == [32, 4]
    assert shapes["blk.1.ffn_gate_exps.weight.counts"] == [1, 4]
    again = ImatrixCollector(chunk_size=16)
    again.load(p)                                                    # llama-imatrix --in-file
    for name, st in col.stats.items():
        np.testing.assert_allclose(again.stats[name].sum2, st.sum2, rtol=1e-6)
        np.testing.assert_allclose(again.stats[name].sum1, st.sum1, rtol=1e-6, atol=1e-5)


def test_dat_as_save_imatrix_legacy(tmp_path):
    col = _small_collector()
    p = col.write_dat(tmp_path / "i.dat", dataset="wiki.test.raw")
    assert not os.path.exists(p + ".partial")
    blob = open(p, "rb").read()
    n, = struct.unpack_from("<i", blob, 0)
    assert n == 3
    data = load_imatrix(p)
    assert data.format == "dat" and data.datasets == ["wiki.test.raw"] and data.chunk_count == 3
    for name, st in col.stats.items():
        e = data.entries[name]
        ncall = -(-int(st.counts.max()) // 16)
        assert e.counts.tolist() == [ncall]
        c = st.counts.astype(np.float32)[:, None]
        want = (st.sum2.astype(np.float32) / c) * np.float32(ncall)       # save_imatrix_legacy, in float32
        np.testing.assert_array_equal(e.sums, want.reshape(-1).astype(np.float32))


# -- llama.cpp's own loader, saver and quantizer ----------------------------------------------------
def _llama_reload(model, src, out, *extra):
    """llama-imatrix without a text: loads the --in-file and saves it again (the model is required on the
    command line but never loaded on this path)."""
    from tests.refs.tools import run_tool

    run_tool("llama-imatrix", "-m", model, "--in-file", str(src), "-o", str(out), "-c", "16", *extra)
    return load_imatrix(out)


@pytest.mark.parametrize("fmt", ["gguf", "dat"])
def test_llama_imatrix_loads_and_resaves_our_files(tmp_path, fmt, demo_path):
    col = _small_collector()
    src = col.save(tmp_path / f"ours.{fmt}", Provenance("wiki.test.raw", n_ctx=16, n_chunks=3, n_tokens=48))
    theirs = _llama_reload(demo_path, src, tmp_path / "theirs.gguf")
    ours = load_imatrix(src)
    assert set(theirs.entries) == set(ours.entries)
    assert theirs.chunk_count == 3 and theirs.chunk_size == 16
    assert theirs.datasets == ["wiki.test.raw"]
    for name in ours.entries:
        np.testing.assert_allclose(theirs.entries[name].weights, ours.entries[name].weights, rtol=2e-6)
    if fmt == "gguf":                      # raw sums and counts survive llama.cpp's load + save exactly
        for name, st in col.stats.items():
            np.testing.assert_array_equal(theirs.entries[name].sums, st.sum2.astype(np.float32).reshape(-1))
            assert theirs.entries[name].counts.tolist() == st.counts.tolist()
        dat = _llama_reload(demo_path, src, tmp_path / "theirs.dat", "--output-format", "dat")
        mine = load_imatrix(col.write_dat(tmp_path / "mine.dat", "wiki.test.raw"))
        assert open(tmp_path / "theirs.dat", "rb").read() == open(tmp_path / "mine.dat", "rb").read()
        assert dat.chunk_count == mine.chunk_count


def test_llama_quantizer_takes_our_imatrix(tmp_path, synthetic_path):
    from core.models import open_model
    from tests.refs.llama import quantize

    col = ImatrixCollector(chunk_size=64)
    r = _rng(5)
    with open_model(synthetic_path) as m:
        infos = [t for t in m.tensors if t.n_dims == 2 and col.wants(t.name)]
        for t in infos:
            scale = np.exp(r.normal(0, 1, t.row_len)).astype(np.float32)
            col.on_linear_input(t.name, r.standard_normal((64, t.row_len)).astype(np.float32) * scale)
    p = col.write_gguf(tmp_path / "i.gguf", Provenance("random", n_ctx=64, n_chunks=1, n_tokens=64))
    data = load_imatrix(p)
    with open_model(synthetic_path) as m:
        match = data.match(m)
        assert not match.mis_sized and not match.unused
        arrays = data.arrays_for(m)
    assert len(arrays) == len(infos)
    with_im = quantize(synthetic_path, 15, output=str(tmp_path / "q_im.gguf"), imatrix=arrays)     # Q4_K_M
    plain = quantize(synthetic_path, 15, output=str(tmp_path / "q.gguf"))
    assert with_im.types == plain.types
    assert open(tmp_path / "q_im.gguf", "rb").read() != open(tmp_path / "q.gguf", "rb").read()  # it was used


def test_collected_tensors_match_a_real_llama_imatrix_run(tmp_path, demo_path):
    """llama-imatrix on the demo model: the weights it collects are exactly the 2-D weights our filter wants
    (the forward pass calls the hook for every matmul weight), counted in tokens, n_chunk * n_ctx each."""
    from core.models import open_model
    from tests.refs.tools import run_tool
    from tests.refs.tree import llama_cpp_tree

    text = open(os.path.join(llama_cpp_tree(), "README.md"), encoding="utf-8").read()[:6000]
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    out = tmp_path / "ref.gguf"
    run_tool("llama-imatrix", "-m", demo_path, "-f", str(tmp_path / "t.txt"), "-o", str(out), "-c", "64",
             "--chunks", "2", "-t", "2", "--no-ppl")
    ref = load_imatrix(out)
    col = ImatrixCollector(chunk_size=64)
    with open_model(demo_path) as m:
        want = {t.name for t in m.tensors if t.n_dims == 2 and col.wants(t.name)}
    assert set(ref.entries) == want
    assert {int(e.counts[0]) for e in ref.entries.values()} == {128}
    assert ref.chunk_count == 2 and ref.chunk_size == 64
    mine = ImatrixCollector(chunk_size=64)                 # our loader + writers keep llama.cpp's data intact
    mine.load(out)
    again = load_imatrix(mine.write_gguf(tmp_path / "again.gguf", datasets=ref.datasets, with_in_sum=False))
    for name, e in ref.entries.items():
        np.testing.assert_array_equal(again.entries[name].sums, e.sums)
        assert again.entries[name].counts.tolist() == e.counts.tolist()
    assert again.datasets == ref.datasets and again.chunk_count == ref.chunk_count
