"""Importance matrices: both llama.cpp formats, matching to tensors, metadata, bad files, kernels."""
from __future__ import annotations

import ctypes
import struct

import numpy as np
import pytest
from gguf.constants import GGUFValueType

from core.errors import PlanError, SourceError
from core.imatrix import (KEY_Q_CHUNKS, KEY_Q_DATASET, KEY_Q_ENTRIES, KEY_Q_FILE, ImatrixData, ImatrixEntry,
                          load_imatrix)
from core.kernels import get_kernel
from core.models import open_model
from core.sources import TensorInfo


# -- references -------------------------------------------------------------------------------
class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


def _ggml_lib():
    from tests.refs.ggml import ggml_base

    lib = ggml_base()
    v, p, c = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int64
    sigs = {"ggml_init": (v, [_InitParams]), "ggml_new_tensor_2d": (v, [v, ctypes.c_int, c, c]),
            "ggml_set_name": (v, [v, p]), "ggml_get_data": (v, [v]), "ggml_free": (None, [v]),
            "gguf_init_empty": (v, []), "gguf_set_val_str": (None, [v, p, p]),
            "gguf_set_val_u32": (None, [v, p, ctypes.c_uint32]),
            "gguf_set_arr_str": (None, [v, p, ctypes.POINTER(p), ctypes.c_size_t]),
            "gguf_add_tensor": (None, [v, v]), "gguf_write_to_file": (ctypes.c_bool, [v, p, ctypes.c_bool]),
            "gguf_free": (None, [v])}
    for name, (res, args) in sigs.items():
        f = getattr(lib, name)
        f.restype, f.argtypes = res, args
    return lib


def ggml_write_imatrix(path, entries, datasets, chunk_count, chunk_size):
    """llama-imatrix's save_imatrix, replayed through ggml's own gguf writer (ctypes)."""
    lib = _ggml_lib()
    ctx = lib.ggml_init(_InitParams(1 << 24, None, False))
    g = lib.gguf_init_empty()
    try:
        lib.gguf_set_val_str(g, b"general.type", b"imatrix")
        arr = (ctypes.c_char_p * max(1, len(datasets)))(*[d.encode() for d in datasets])
        lib.gguf_set_arr_str(g, b"imatrix.datasets", arr, len(datasets))
        lib.gguf_set_val_u32(g, b"imatrix.chunk_count", chunk_count)
        lib.gguf_set_val_u32(g, b"imatrix.chunk_size", chunk_size)
        for name in sorted(entries):
            sums, counts = entries[name]
            nmat = counts.size
            for suffix, data, ne0 in ((".in_sum2", sums, sums.size // nmat), (".counts", counts, 1)):
                t = lib.ggml_new_tensor_2d(ctx, 0, ne0, nmat)
                lib.ggml_set_name(t, (name + suffix).encode())
                buf = (ctypes.c_float * data.size).from_address(lib.ggml_get_data(t))
                np.ctypeslib.as_array(buf)[:] = np.asarray(data, dtype=np.float32).reshape(-1)
                lib.gguf_add_tensor(g, t)
        assert lib.gguf_write_to_file(g, str(path).encode(), False)
    finally:
        lib.gguf_free(g)
        lib.ggml_free(ctx)


def dat_bytes(entries, chunk_count=None, dataset=None):
    """A legacy .dat laid out by hand: entries name -> (ncall, values)."""
    out = struct.pack("<i", len(entries))
    for name, (ncall, vals) in entries.items():
        b = name.encode()
        out += struct.pack("<i", len(b)) + b + struct.pack("<ii", ncall, len(vals))
        out += np.asarray(vals, dtype="<f4").tobytes()
    if chunk_count is not None:
        out += struct.pack("<i", chunk_count)
        d = (dataset or "").encode()
        out += struct.pack("<i", len(d)) + d
    return out


def _raw_entries(rng):
    dense = (rng.random(64, dtype=np.float32) * 100).reshape(1, 64), np.array([1536.0], np.float32)
    experts = (rng.random(4 * 32, dtype=np.float32) * 100).reshape(4, 32), np.array([700, 0, 1536, 3], np.float32)
    return {"blk.0.ffn_up.weight": dense, "blk.0.ffn_up_exps.weight": experts,
            "blk.1.attn_q.weight": ((rng.random(64, dtype=np.float32) * 5).reshape(1, 64),
                                    np.array([1024.0], np.float32))}


# -- GGUF format ------------------------------------------------------------------------------
def test_gguf_written_by_ggml_reads_and_writes_back_identically(tmp_path):
    raw = _raw_entries(np.random.default_rng(0))
    ref = tmp_path / "ref.imatrix.gguf"
    ggml_write_imatrix(ref, raw, ["calib.txt", "more.txt"], 3, 512)
    im = load_imatrix(ref)
    assert im.format == "gguf" and im.datasets == ["calib.txt", "more.txt"]
    assert (im.chunk_count, im.chunk_size) == (3, 512)
    assert sorted(im.entries) == sorted(raw)
    for name, (sums, counts) in raw.items():
        e = im.entries[name]
        assert np.array_equal(e.sums, sums.reshape(-1)) and np.array_equal(e.counts, counts.astype(np.int64))
        # llama-quantize: in_sum2 / count per matrix, ones for a matrix never seen
        want = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None].astype(np.float32),
                        np.float32(1)).astype(np.float32).reshape(-1)
        assert np.array_equal(im.weights(name), want)
    mine = tmp_path / "mine.imatrix.gguf"
    im.write_gguf(mine)
    assert mine.read_bytes() == ref.read_bytes()


def test_from_activations_is_sum_of_squares_and_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    dense = rng.standard_normal((50, 64))
    exps = rng.standard_normal((3, 20, 32))
    im = ImatrixData.from_activations({"a.weight": dense, "e.weight": exps}, datasets=["d"], chunk_size=16)
    assert np.allclose(im.entries["a.weight"].sums, (dense ** 2).sum(0), rtol=1e-6)
    assert np.array_equal(im.entries["e.weight"].counts, [20, 20, 20])
    assert np.allclose(im.weights("e.weight"), ((exps ** 2).sum(1) / 20).reshape(-1), rtol=1e-6)
    assert im.chunk_count == 50 // 16
    back = load_imatrix(im.write_gguf(tmp_path / "x.gguf"))
    for n in im.entries:
        assert np.array_equal(back.weights(n), im.weights(n))
    assert back.id == im.id
    back.entries["a.weight"].sums[0] += 1
    back._id = None
    assert back.id != im.id


# -- legacy .dat ------------------------------------------------------------------------------
def test_dat_read_by_layout(tmp_path):
    rng = np.random.default_rng(2)
    v1, v2, v3 = (rng.random(n, dtype=np.float32) for n in (64, 128, 32))
    p = tmp_path / "old.dat"
    p.write_bytes(dat_bytes({"blk.0.attn_k.weight": (4, v1), "blk.0.ffn_down_exps.weight": (7, v2),
                             "blk.0.zero.weight": (0, v3)}, chunk_count=9, dataset="wiki.txt"))
    im = load_imatrix(p)
    assert im.format == "dat" and im.chunk_count == 9 and im.datasets == ["wiki.txt"]
    assert np.array_equal(im.weights("blk.0.attn_k.weight"), v1 / np.float32(4))
    assert np.array_equal(im.weights("blk.0.ffn_down_exps.weight"), v2 / np.float32(7))
    assert np.array_equal(im.weights("blk.0.zero.weight"), v3)          # ncall 0: values as stored
    # the trailer is optional
    q = tmp_path / "notrailer.dat"
    q.write_bytes(dat_bytes({"blk.0.attn_k.weight": (4, v1)}))
    im2 = load_imatrix(q)
    assert im2.chunk_count == 0 and im2.datasets == []
    assert im2.metadata("x.dat")[-1].key == KEY_Q_ENTRIES             # no chunks_count without chunks


def test_dat_writer_matches_layout_and_converts_like_llama_imatrix(tmp_path):
    rng = np.random.default_rng(3)
    v = rng.random(64, dtype=np.float32)
    src = tmp_path / "a.dat"
    src.write_bytes(dat_bytes({"b.weight": (5, v), "a.weight": (2, v[:32])}, chunk_count=5, dataset="t.txt"))
    im = load_imatrix(src)
    out = tmp_path / "b.dat"
    im.write_dat(out)
    # entries sorted by name, as llama-imatrix stores them
    assert out.read_bytes() == dat_bytes({"a.weight": (2, v[:32]), "b.weight": (5, v)}, 5, "t.txt")
    # dat -> GGUF (values x chunk_size, counts ncall x chunk_size) keeps the weights exactly
    g = load_imatrix(im.write_gguf(tmp_path / "c.gguf"))
    assert g.entries["b.weight"].counts.tolist() == [5 * 512]
    for n in im.entries:
        assert np.array_equal(g.weights(n), im.weights(n))
    # GGUF -> dat: ncall = ceil(max count / chunk_size), values (sum / count) * ncall, 1 for unseen experts
    raw = _raw_entries(rng)
    ref = tmp_path / "r.gguf"
    ggml_write_imatrix(ref, raw, ["x"], 2, 512)
    d = load_imatrix(load_imatrix(ref).write_dat(tmp_path / "r.dat"))
    sums, counts = raw["blk.0.ffn_up_exps.weight"]
    ncall = int(np.ceil(counts.max() / 512))
    c = np.where(counts == 0, 1, counts).astype(np.float32)[:, None]
    s = np.where(counts[:, None] == 0, np.float32(1), sums)
    want = ((s / c) * np.float32(ncall)).astype(np.float32)
    assert d.entries["blk.0.ffn_up_exps.weight"].counts.tolist() == [ncall]
    assert np.array_equal(d.entries["blk.0.ffn_up_exps.weight"].sums, want.reshape(-1))
    gw = load_imatrix(ref)
    for n in raw:
        assert np.allclose(d.weights(n), gw.weights(n), rtol=1e-6)


# -- matching ---------------------------------------------------------------------------------
def test_match_demo_model(demo_path, tmp_path):
    src = open_model(demo_path)
    im = load_imatrix(ImatrixData.random_for(src, n_tokens=8).write_dat(tmp_path / "demo.dat"))
    rep = im.match(src)
    assert rep.ok and not rep.mis_sized and not rep.unused
    assert rep.missing == ["token_embd.weight"]                # random_for leaves it out, like llama-imatrix
    assert len(rep.matched) == len(im)
    # one entry dropped, one of the wrong size, one for a tensor the model lacks
    name = "blk.3.ffn_down.weight"
    right = src.tensor(name).row_len
    im.entries.pop("blk.0.attn_q.weight")
    im.entries[name] = ImatrixEntry(name, np.ones(right + 32, np.float32), np.array([1]), legacy=True)
    im.entries["blk.99.attn_q.weight"] = ImatrixEntry("blk.99.attn_q.weight", np.ones(8, np.float32),
                                                      np.array([1]), legacy=True)
    im.entries["token_embd.weight"] = ImatrixEntry("token_embd.weight", np.ones(8, np.float32), np.array([1]), True)
    rep = im.match(src)
    assert "blk.0.attn_q.weight" in rep.missing
    assert rep.unused == ["blk.99.attn_q.weight"]
    fatal = [m for m in rep.mis_sized if m.fatal]
    assert [(m.name, m.expected, m.got) for m in fatal] == [(name, right, right + 32)]
    assert [m.name for m in rep.mis_sized if not m.fatal] == ["token_embd.weight"]
    assert not rep.ok and name in rep.errors[0] and str(right) in rep.errors[0] and str(right + 32) in rep.errors[0]
    with pytest.raises(PlanError, match=name):
        rep.raise_for_errors()
    with pytest.raises(PlanError, match=str(right + 32)):
        im.for_tensor(name, src.tensor(name).shape)
    assert im.for_tensor("token_embd.weight", src.tensor("token_embd.weight").shape) is None
    with pytest.raises(PlanError, match=name):
        im.arrays_for(src)
    arrays = im.arrays_for(src, names=["blk.1.attn_q.weight", "token_embd.weight", "blk.0.attn_q.weight"])
    assert list(arrays) == ["blk.1.attn_q.weight"]
    assert np.array_equal(arrays["blk.1.attn_q.weight"], im.weights("blk.1.attn_q.weight"))


def test_experts_get_one_vector_per_expert():
    infos = [TensorInfo("blk.0.ffn_up_exps.weight", (4, 16, 32), "F32", 4 * 16 * 32 * 4),
             TensorInfo("blk.0.ffn_gate_inp.weight", (4, 32), "F32", 4 * 32 * 4)]
    rng = np.random.default_rng(4)
    acts = rng.standard_normal((4, 10, 32))
    im = ImatrixData.from_activations({"blk.0.ffn_up_exps.weight": acts})
    w = im.for_tensor("blk.0.ffn_up_exps.weight", infos[0].shape)
    assert w.shape == (4, 32)
    assert np.allclose(w, (acts ** 2).mean(1), rtol=1e-6)
    rep = im.match(infos)
    assert rep.matched == ["blk.0.ffn_up_exps.weight"] and rep.missing == []   # gate_inp is never quantized
    # a dense-sized entry for an expert tensor is mis-sized: 32 values, 4 x 32 needed
    im2 = ImatrixData.from_activations({"blk.0.ffn_up_exps.weight": acts[0]})
    assert [(m.expected, m.got) for m in im2.match(infos).mis_sized] == [(128, 32)]


def test_select_include_exclude():
    im = ImatrixData.from_activations({n: np.ones((2, 8)) for n in ("blk.0.attn_q.weight", "blk.0.ffn_up.weight",
                                                                     "blk.1.attn_q.weight")})
    assert sorted(im.select(exclude=["ffn"]).entries) == ["blk.0.attn_q.weight", "blk.1.attn_q.weight"]
    assert sorted(im.select(include=["blk.1."]).entries) == ["blk.1.attn_q.weight"]


# -- output metadata -----------------------------------------------------------------------------
def test_quantize_metadata(tmp_path):
    raw = _raw_entries(np.random.default_rng(5))
    ref = tmp_path / "m.gguf"
    ggml_write_imatrix(ref, raw, ["first.txt", "second.txt"], 7, 512)
    im = load_imatrix(ref)
    kv = {k.key: k for k in im.metadata("imatrix.gguf")}
    assert list(kv) == [KEY_Q_FILE, KEY_Q_DATASET, KEY_Q_ENTRIES, KEY_Q_CHUNKS]
    assert kv[KEY_Q_FILE].value == "imatrix.gguf" and kv[KEY_Q_FILE].vtype == GGUFValueType.STRING
    assert kv[KEY_Q_DATASET].value == "first.txt"
    assert (kv[KEY_Q_ENTRIES].value, kv[KEY_Q_ENTRIES].vtype) == (3, GGUFValueType.UINT32)
    assert (kv[KEY_Q_CHUNKS].value, kv[KEY_Q_CHUNKS].vtype) == (7, GGUFValueType.UINT32)
    enc = kv[KEY_Q_ENTRIES].encode()
    assert enc[-8:] == struct.pack("<II", int(GGUFValueType.UINT32), 3)
    long = "/some/dir/" + "é" * 100 + ".gguf"                 # cut to 127 bytes as strncpy does
    f = im.metadata(long)[0]
    assert f.encode()[-127 - 8 - 4:] == struct.pack("<IQ", int(GGUFValueType.STRING), 127) + long.encode()[:127]


# -- bad files --------------------------------------------------------------------------------------
def _one_line_error(path, match):
    with pytest.raises(SourceError, match=match) as ei:
        load_imatrix(path)
    msg = str(ei.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_bad_files(tmp_path, synthetic_path):
    v = np.ones(64, np.float32)
    good = dat_bytes({"blk.0.attn_k.weight": (2, v), "blk.0.attn_q.weight": (2, v)}, 1, "d")
    _one_line_error(tmp_path / "missing.dat", "no such")
    _one_line_error(tmp_path, "folder")
    (tmp_path / "empty.dat").write_bytes(b"")
    _one_line_error(tmp_path / "empty.dat", "not an imatrix")
    (tmp_path / "cut.dat").write_bytes(good[:100])
    _one_line_error(tmp_path / "cut.dat", "truncated")
    (tmp_path / "text.dat").write_bytes(b"this is not an importance matrix at all\n" * 4)
    _one_line_error(tmp_path / "text.dat", "not an imatrix")
    (tmp_path / "zero.dat").write_bytes(struct.pack("<i", 0))
    _one_line_error(tmp_path / "zero.dat", "not an imatrix")
    (tmp_path / "nan.dat").write_bytes(dat_bytes({"blk.0.x.weight": (1, np.full(8, np.nan, np.float32))}))
    _one_line_error(tmp_path / "nan.dat", "non-finite")
    # GGUF: truncated, a model instead of an imatrix, an imatrix without its metadata
    ref = tmp_path / "ok.gguf"
    ggml_write_imatrix(ref, _raw_entries(np.random.default_rng(6)), ["x"], 1, 512)
    data = ref.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[:len(data) - 40])
    _one_line_error(tmp_path / "cut.gguf", "truncated")
    _one_line_error(synthetic_path, "no imatrix entries")
    from core.gguf_out import GGUFLayout, GGUFStreamWriter, OutTensor
    from gguf.constants import GGMLQuantizationType as Q
    nometa = tmp_path / "nometa.gguf"
    with GGUFStreamWriter(GGUFLayout(str(nometa), [], [OutTensor("a.weight.in_sum2", (8,), Q.F32),
                                                       OutTensor("a.weight.counts", (1,), Q.F32)])) as w:
        w.write("a.weight.in_sum2", np.ones(8, np.float32))
        w.write("a.weight.counts", np.ones(1, np.float32))
    _one_line_error(nometa, "metadata")
    halves = tmp_path / "half.gguf"
    with GGUFStreamWriter(GGUFLayout(str(halves), [], [OutTensor("a.weight.in_sum2", (8,), Q.F32)])) as w:
        w.write("a.weight.in_sum2", np.ones(8, np.float32))
    _one_line_error(halves, "no .counts")


# -- the kernels use it ----------------------------------------------------------------------------
def test_imatrix_changes_q4_0_bytes_like_llama_cpp(demo_path, tmp_path):
    from tests.refs.ggml import quantize as ggml_quantize

    src = open_model(demo_path)
    name = "blk.2.ffn_up.weight"
    x = np.ascontiguousarray(src.read_rows(name, 0, 96))
    im = load_imatrix(ImatrixData.random_for(src, n_tokens=16, seed=3).write_gguf(tmp_path / "i.gguf"))
    w = im.for_tensor(name, src.tensor(name).shape)
    k = get_kernel("Q4_0")
    plain, weighted = k.quantize(x), k.quantize(x, w)
    assert np.array_equal(plain, ggml_quantize(k.qtype, x))
    assert np.array_equal(weighted, ggml_quantize(k.qtype, x, w))
    changed = np.any(plain.reshape(-1, 18) != weighted.reshape(-1, 18), axis=1).mean()
    assert changed > 0.5, f"only {changed:.0%} of Q4_0 blocks changed with an imatrix"
