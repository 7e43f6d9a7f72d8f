"""GPTQ and AWQ checkpoints packed by the test from known integer weights, zero points and scales
dequantize to exactly those weights; a GPTQ model converts and runs in llama.cpp."""
import json
import os

import numpy as np
import pytest

from tests.core.convert.hf_fixtures import open_hf, quantize_hf
from core.convert.gptq_awq import DequantizedSource, maybe_dequantized
from core.errors import UnsupportedError
from core.stats import model_stats
from core.sources.safetensors_source import SafetensorsSource

from .hf_fixtures import gguf_from_hf_qk, synthetic_checkpoint, write_checkpoint, write_json

AWQ_PACK_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]     # AutoAWQ: nibble i of a word holds column AWQ_PACK_ORDER[i]


def pack_gptq(q, zeros, bits, v1=True):
    """AutoGPTQ layout: q (in, out) ints -> qweight (in*bits/32, out); zeros (groups, out) ->
    qzeros (groups, out*bits/32); the v1 format stores zero - 1."""
    per = 32 // bits
    n_in, n_out = q.shape
    qw = np.zeros((n_in // per, n_out), dtype=np.uint32)
    for k in range(per):
        qw |= q.reshape(n_in // per, per, n_out)[:, k, :].astype(np.uint32) << np.uint32(bits * k)
    z = (zeros - 1) & ((1 << bits) - 1) if v1 else zeros
    qz = np.zeros((zeros.shape[0], n_out // per), dtype=np.uint32)
    for k in range(per):
        qz |= z.reshape(zeros.shape[0], n_out // per, per)[:, :, k].astype(np.uint32) << np.uint32(bits * k)
    return qw.view(np.int32), qz.view(np.int32)


def pack_awq(q, zeros):
    """AutoAWQ GEMM layout: q (in, out) -> qweight (in, out/8); zeros (groups, out) -> (groups, out/8)."""
    def pack(v):
        words = np.zeros((v.shape[0], v.shape[1] // 8), dtype=np.uint32)
        for i, col in enumerate(AWQ_PACK_ORDER):
            words |= v.reshape(v.shape[0], -1, 8)[:, :, col].astype(np.uint32) << np.uint32(4 * i)
        return words.view(np.int32)
    return pack(q), pack(zeros)


def known_layer(rng, n_in, n_out, bits, group, act_order=False):
    """Integer weights, zero points, fp16 scales and the group of each input; the float32 weight
    (out, in) they stand for."""
    maxq = (1 << bits) - 1
    groups = n_in // group
    q = rng.integers(0, maxq + 1, size=(n_in, n_out))
    zeros = rng.integers(1, maxq + 1, size=(groups, n_out))
    scales = (rng.uniform(0.002, 0.02, size=(groups, n_out))).astype(np.float16)
    g_idx = np.arange(n_in) // group
    if act_order:
        g_idx = rng.permutation(g_idx)
    w = scales.astype(np.float32)[g_idx] * (q.astype(np.float32) - zeros.astype(np.float32)[g_idx])
    return q, zeros, scales, g_idx.astype(np.int32), np.ascontiguousarray(w.T)


def write_quantized(folder, layers, qconfig, where="config", extra=None):
    tensors = {"model.norm.weight": ("F32", np.ones(8, np.float32))}
    for base, parts in layers.items():
        for k, v in parts.items():
            tensors[f"{base}.{k}"] = ("F16" if k == "scales" else "I32", v)
    tensors.update(extra or {})
    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": 8}
    if where == "config":
        config["quantization_config"] = qconfig
    write_checkpoint(folder, [tensors], config)
    if where != "config":
        write_json(os.path.join(folder, where), qconfig)


@pytest.mark.parametrize("bits,fmt,act_order,g_idx_stored", [(4, "gptq", True, True), (8, "gptq_v2", False, True),
                                                            (2, "gptq", False, False)])
def test_gptq_dequantizes_to_the_known_weights(tmp_path, bits, fmt, act_order, g_idx_stored):
    rng = np.random.default_rng(bits)
    n_in, n_out, group = 128, 96, 32
    q, zeros, scales, g_idx, w = known_layer(rng, n_in, n_out, bits, group, act_order)
    qw, qz = pack_gptq(q, zeros, bits, v1=fmt == "gptq")
    parts = {"qweight": qw, "qzeros": qz, "scales": scales}
    if g_idx_stored:
        parts["g_idx"] = g_idx
    folder = str(tmp_path / "gptq")
    qc = {"quant_method": "gptq", "bits": bits, "group_size": group, "desc_act": act_order, "sym": False,
          "checkpoint_format": fmt}
    write_quantized(folder, {"model.layers.0.mlp.down_proj": parts}, qc,
                    where="config" if bits != 2 else "quantize_config.json")
    if bits == 2:      # AutoGPTQ's own quantize_config.json has no quant_method and no checkpoint_format
        write_json(os.path.join(folder, "quantize_config.json"), {"bits": 2, "group_size": group, "desc_act": False})
    src = maybe_dequantized(SafetensorsSource(folder))
    assert isinstance(src, DequantizedSource)
    assert sorted(t.name for t in src.tensors) == ["model.layers.0.mlp.down_proj.weight", "model.norm.weight"]
    t = src.tensor("model.layers.0.mlp.down_proj.weight")
    assert t.shape == (n_out, n_in) and t.dtype == "F16"
    assert np.array_equal(src.read(t.name), w)
    for a, b in ((0, 1), (3, 77), (90, 96)):            # row ranges that cut packed words
        assert np.array_equal(src.read_rows(t.name, a, b), w[a:b])
    assert np.array_equal(src.read("model.norm.weight"), np.ones(8, np.float32))
    stats = model_stats(src, threads=1)                  # inspection sees the dequantized weights
    assert stats[t.name].absmax == pytest.approx(float(np.abs(w).max()))


def test_awq_dequantizes_to_the_known_weights(tmp_path):
    rng = np.random.default_rng(7)
    n_in, n_out, group = 128, 64, 32
    q, zeros, scales, _, w = known_layer(rng, n_in, n_out, 4, group)
    qw, qz = pack_awq(q, zeros)
    folder = str(tmp_path / "awq")
    write_quantized(folder, {"model.layers.0.self_attn.o_proj": {"qweight": qw, "qzeros": qz, "scales": scales}},
                    {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True, "version": "gemm"})
    src = maybe_dequantized(SafetensorsSource(folder))
    t = src.tensor("model.layers.0.self_attn.o_proj.weight")
    assert t.shape == (n_out, n_in)
    assert np.array_equal(src.read(t.name), w)
    for a, b in ((0, 3), (5, 13), (60, 64)):
        assert np.array_equal(src.read_rows(t.name, a, b), w[a:b])
    assert src.raw(t.name).view(np.float16).reshape(n_out, n_in).astype(np.float32).tolist() == \
        w.astype(np.float16).astype(np.float32).tolist()


def test_unsupported_quantization_is_named(tmp_path):
    folder = str(tmp_path / "gemv")
    rng = np.random.default_rng(0)
    q, zeros, scales, _, _ = known_layer(rng, 64, 32, 4, 32)
    qw, qz = pack_awq(q, zeros)
    write_quantized(folder, {"model.layers.0.mlp.up_proj": {"qweight": qw, "qzeros": qz, "scales": scales}},
                    {"quant_method": "awq", "bits": 4, "group_size": 32, "version": "gemv"})
    plain = maybe_dequantized(SafetensorsSource(folder))       # inspection still opens it, as stored
    assert "model.layers.0.mlp.up_proj.qweight" in plain
    with pytest.raises(UnsupportedError, match="AWQ version 'gemv'") as e:
        maybe_dequantized(SafetensorsSource(folder), strict=True)
    assert e.value.path.endswith("config.json")


def test_gptq_model_converts_and_runs(tmp_path):
    """A llama checkpoint with GPTQ-packed projections converts (rotary permutation applied to the
    dequantized rows) and runs in llama.cpp."""
    import llama_cpp

    folder = str(tmp_path / "llama-gptq")
    config = synthetic_checkpoint(folder, "LlamaForCausalLM", seed=5)
    ckpt = SafetensorsSource(folder)
    rng = np.random.default_rng(3)
    shards = [{}]
    known = {}
    for t in ckpt.tensors:
        x = ckpt.read(t.name)
        if t.name.startswith("model.layers.") and t.n_dims == 2:
            n_out, n_in = x.shape
            q, zeros, scales, g_idx, w = known_layer(rng, n_in, n_out, 4, 32, act_order=True)
            qw, qz = pack_gptq(q, zeros, 4)
            base = t.name[: -len(".weight")]
            shards[0].update({f"{base}.qweight": ("I32", qw), f"{base}.qzeros": ("I32", qz),
                              f"{base}.scales": ("F16", scales), f"{base}.g_idx": ("I32", g_idx)})
            known[t.name] = w
        else:
            shards[0][t.name] = ("F32", x)
    ckpt.close()
    for f in os.listdir(folder):
        if f.endswith((".safetensors", ".index.json")):
            os.remove(os.path.join(folder, f))
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": True}
    write_checkpoint(folder, shards, config)
    src = open_hf(folder)
    assert np.array_equal(src.read("blk.1.attn_q.weight"),
                          gguf_from_hf_qk(known["model.layers.1.self_attn.q_proj.weight"], 4))
    assert np.array_equal(src.read("blk.0.ffn_down.weight"), known["model.layers.0.mlp.down_proj.weight"])
    assert src.tensor("blk.0.ffn_down.weight").dtype == "F16"
    out = str(tmp_path / "gptq.gguf")
    quantize_hf(folder, out, "Q8_0", threads=2)
    llm = llama_cpp.Llama(model_path=out, n_ctx=32, n_threads=2, verbose=False, logits_all=True)
    toks = llm.tokenize(b"Hello world, the quick brown fox")[:6]
    llm.eval(toks)
    assert np.isfinite(np.asarray(llm.scores[: len(toks)])).all()
    with open(os.path.join(folder, "config.json")) as f:
        assert json.load(f)["quantization_config"]["quant_method"] == "gptq"
