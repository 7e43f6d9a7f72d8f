"""Round trip on a real model: the demo GGUF (SmolLM2-135M, llama) written out as a Hugging Face
folder by the test, converted back by core.convert, compared tensor by tensor, key by key, and run
in llama.cpp against the original."""
import os

import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as T

from tests.core.convert.hf_fixtures import open_hf, quantize_hf
from core.gguf_out import GGUFLayout, GGUFStreamWriter, OutTensor
from core.job import run_plan
from core.plan import pure_plan
from core.models import open_model

from .hf_fixtures import bf16_items, bf16_round, bpe_tokenizer_json, hf_from_gguf_qk, write_checkpoint, write_json

LAYER = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
         "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
         "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
BF16_MATRICES = ("blk.0.attn_q.weight", "blk.0.attn_k.weight")
TEXT = b"The capital of France is Paris, and 1234 apples cost"


def hf_name(gguf_name: str) -> str:
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output_norm.weight":
        return "model.norm.weight"
    _, i, kind, _ = gguf_name.split(".")
    return f"model.layers.{i}.{LAYER[kind]}.weight"


@pytest.fixture(scope="module")
def demo_hf(demo_path, tmp_path_factory):
    """The demo as a HF folder: three shards (norms and two attention matrices BF16, the rest F32),
    index, config.json, tokenizer.json, tokenizer_config.json, README.md. Returns (folder, expected
    GGUF-name -> float32 array, demo metadata, demo kv)."""
    folder = str(tmp_path_factory.mktemp("hf") / "SmolLM2-135M-Instruct")
    src = open_model(demo_path)
    md = src.metadata
    n_head, n_kv = md["llama.attention.head_count"], md["llama.attention.head_count_kv"]
    expected, shards = {}, [{}, {}, {}]
    for t in src.tensors:
        x = src.read(t.name)
        if t.name in BF16_MATRICES:
            x = bf16_round(x)
        expected[t.name] = x
        kind = t.name.split(".")[-2]
        if kind in ("attn_q", "attn_k"):
            x = hf_from_gguf_qk(x, n_head if kind == "attn_q" else n_kv)
        if t.n_dims == 1:
            assert np.array_equal(bf16_round(x), x)          # the demo's norms are bf16 values
            shards[0][hf_name(t.name)] = ("BF16", x)
        elif t.name in BF16_MATRICES:
            shards[0][hf_name(t.name)] = ("BF16", x)
        else:
            shards[1 if (t.layer or 0) < 15 else 2][hf_name(t.name)] = ("F32", x)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
              "hidden_size": md["llama.embedding_length"], "intermediate_size": md["llama.feed_forward_length"],
              "num_attention_heads": n_head, "num_key_value_heads": n_kv,
              "num_hidden_layers": md["llama.block_count"], "max_position_embeddings": md["llama.context_length"],
              "rms_norm_eps": float(md["llama.attention.layer_norm_rms_epsilon"]),
              "rope_theta": float(md["llama.rope.freq_base"]), "rope_scaling": None,
              "vocab_size": md["llama.vocab_size"], "tie_word_embeddings": True, "torch_dtype": "bfloat16",
              "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
    write_checkpoint(folder, shards, config)
    tokens = list(md["tokenizer.ggml.tokens"])
    types = np.asarray(md["tokenizer.ggml.token_type"])
    bpe_tokenizer_json(os.path.join(folder, "tokenizer.json"), tokens, list(md["tokenizer.ggml.merges"]),
                       [tokens[i] for i in np.nonzero(types == 3)[0]])
    tok = lambda key: tokens[md[key]]  # noqa: E731
    write_json(os.path.join(folder, "tokenizer_config.json"), {
        "add_prefix_space": False, "bos_token": tok("tokenizer.ggml.bos_token_id"),
        "eos_token": tok("tokenizer.ggml.eos_token_id"), "unk_token": tok("tokenizer.ggml.unknown_token_id"),
        "pad_token": tok("tokenizer.ggml.padding_token_id"), "chat_template": md["tokenizer.chat_template"],
        "tokenizer_class": "GPT2Tokenizer", "clean_up_tokenization_spaces": False, "model_max_length": 8192})
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write("---\nlicense: apache-2.0\nlanguage:\n- en\nlibrary_name: transformers\n---\n# SmolLM2\n")
    return folder, expected, md, src.kv


@pytest.fixture(scope="module")
def reference_f32(demo_hf, tmp_path_factory):
    """The demo with every tensor as float32 (the two BF16 matrices rounded the same way), written with
    the demo's own metadata: what the converted model must equal."""
    _, expected, _, kv = demo_hf
    path = str(tmp_path_factory.mktemp("ref") / "reference-f32.gguf")
    names = list(expected)
    layout = GGUFLayout(path, kv, [OutTensor(n, expected[n].shape, T.F32) for n in names])
    with GGUFStreamWriter(layout) as w:
        for n in names:
            w.write(n, expected[n].view(np.uint8))
    return path


def test_every_tensor_equals_the_original(demo_hf):
    folder, expected, md, _ = demo_hf
    src = open_hf(folder)
    assert src.kind == "hf" and src.architecture == "llama"
    assert sorted(t.name for t in src.tensors) == sorted(expected)      # tied: no output.weight
    for t in src.tensors:
        assert t.shape == expected[t.name].shape, t.name
        want_type = "BF16" if t.name in BF16_MATRICES else "F32"
        assert t.dtype == want_type, t.name
        got = src.read(t.name)
        assert np.array_equal(got, expected[t.name]), t.name
    # odd row ranges of a permuted tensor map to the right rows
    q = expected["blk.3.attn_q.weight"]
    for a, b in ((0, 1), (5, 70), (63, 65), (500, 576)):
        assert np.array_equal(src.read_rows("blk.3.attn_q.weight", a, b), q[a:b])
    # raw bytes: a BF16 matrix keeps its items in GGUF row order; an untouched F32 matrix is the stored bytes
    for n in BF16_MATRICES:
        assert src.raw(n).tobytes() == bf16_items(expected[n]).tobytes()
    assert not src.is_transformed("blk.7.ffn_down.weight")
    assert src.raw("blk.7.ffn_down.weight").tobytes() == expected["blk.7.ffn_down.weight"].tobytes()
    assert src.is_transformed("blk.7.attn_norm.weight")               # BF16 -> F32
    assert src.raw("blk.7.attn_norm.weight").tobytes() == expected["blk.7.attn_norm.weight"].tobytes()


def test_metadata_equals_the_original(demo_hf):
    folder, _, md, demo_kv = demo_hf
    src = open_hf(folder)
    assert src.warnings == []
    keys = [k for k in md if k.startswith(("tokenizer.", "llama."))]
    assert len(keys) == 22
    for k in keys:
        got, want = src.metadata.get(k), md[k]
        if isinstance(want, (list, np.ndarray)):
            assert list(got) == list(want), k
        elif isinstance(want, float):
            assert np.float32(got) == np.float32(want), k
        else:
            assert got == want, k
    assert set(keys) <= set(src.metadata)
    types = {k.key: (k.vtype, k.subtype) for k in src.kv}
    for k in demo_kv:                                  # same GGUF value types as llama.cpp's converter wrote
        if k.key in keys:
            assert types[k.key] == (k.vtype, k.subtype), k.key
    assert src.metadata["tokenizer.ggml.pre"] == "smollm"               # found by the token-id hash
    assert src.metadata["general.architecture"] == "llama"
    assert src.metadata["general.license"] == md["general.license"]
    assert list(src.metadata["general.languages"]) == list(md["general.languages"])
    assert src.metadata["general.size_label"] == md["general.size_label"]
    assert src.metadata["general.name"]


def test_llama_cpp_runs_the_conversion_like_the_original(demo_hf, reference_f32, demo_path, tmp_path):
    import llama_cpp

    folder = demo_hf[0]
    out = str(tmp_path / "converted-f32.gguf")
    res = quantize_hf(folder, out, "F32", threads=2)
    assert os.path.getsize(out) == res.size

    def logits(path):
        llm = llama_cpp.Llama(model_path=path, n_ctx=64, n_threads=2, verbose=False, logits_all=True)
        toks = llm.tokenize(TEXT)
        llm.eval(toks)
        return toks, np.asarray(llm.scores[: len(toks)], dtype=np.float32).copy()

    toks, got = logits(out)
    ref_toks, ref = logits(reference_f32)
    orig_toks, orig = logits(demo_path)
    assert toks == ref_toks == orig_toks
    assert np.isfinite(got).all() and got.std() > 0.5
    diff_ref = float(np.abs(got - ref).max())
    diff_orig = float(np.abs(got - orig).max())
    print(f"\nmax |logit difference|: vs float32 original {diff_ref:.3g}, vs Q4_1 original {diff_orig:.3g} "
          f"(logit range {float(np.abs(orig).max()):.3g})")
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)
    # the original computes with Q4_1 weights (and Q8 activations): close, same next tokens
    np.testing.assert_allclose(got, orig, rtol=0, atol=0.1 * float(np.abs(orig).max()))
    assert np.corrcoef(got.ravel(), orig.ravel())[0, 1] > 0.99
    assert (got.argmax(axis=1) == orig.argmax(axis=1)).mean() >= 0.8


def test_one_pass_q8_0_equals_quantizing_the_gguf(demo_hf, reference_f32, tmp_path):
    """HF folder -> Q8_0 in one streaming pass gives the bytes of GGUF -> Q8_0 on the same weights."""
    a = str(tmp_path / "from-hf.gguf")
    b = str(tmp_path / "from-gguf.gguf")
    quantize_hf(demo_hf[0], a, "Q8_0", threads=2)
    ref = open_model(reference_f32)
    run_plan(ref, pure_plan(ref.tensors, "Q8_0", "llama"), b, threads=2)
    ga, gb = open_model(a), open_model(b)
    assert sorted(t.name for t in ga.tensors) == sorted(t.name for t in gb.tensors)
    for t in gb.tensors:
        assert ga.tensor(t.name).dtype == t.dtype, t.name
        assert ga.raw(t.name).tobytes() == gb.raw(t.name).tobytes(), t.name
    assert sum(t.dtype == "Q8_0" for t in ga.tensors) == 211
    assert ga.metadata["general.file_type"] == 7
    assert not os.path.exists(a + ".partial")

