"""Small random checkpoints of every supported architecture (config.json and tokenizer written by the
test) convert to the tensors llama.cpp expects and load and run in llama.cpp."""
import os

import numpy as np
import pytest

from core.convert import SUPPORTED_ARCHITECTURES
from tests.core.convert.hf_fixtures import open_hf, quantize_hf
from core.models import open_model
from core.sources.safetensors_source import SafetensorsSource

from .hf_fixtures import CHAT, bf16_items, bf16_round, gguf_from_hf_qk, synthetic_checkpoint

ARCHS = ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
         "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM"]
GGUF_ARCH = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2",
             "Qwen3ForCausalLM": "qwen3", "Gemma2ForCausalLM": "gemma2", "Gemma3ForCausalLM": "gemma3",
             "Phi3ForCausalLM": "phi3"}
WORDS = "Hello world, the quick brown fox jumps over the lazy dog!"
FULL = WORDS + " Numbers 12345 and   spaces\nnew line \u00fcn\u00efcode \u4f60\u597d"


def expected_tensor(hf_arch, config, hf_name, x):
    """What llama.cpp's converter makes of checkpoint tensor ``hf_name`` (written independently)."""
    if hf_arch in ("LlamaForCausalLM", "MistralForCausalLM"):
        if "q_proj" in hf_name:
            return gguf_from_hf_qk(x, config["num_attention_heads"])
        if "k_proj" in hf_name:
            return gguf_from_hf_qk(x, config["num_key_value_heads"])
    if hf_arch.startswith("Gemma") and hf_name.endswith("norm.weight"):
        return x + np.float32(1)
    return x


def test_supported_list():
    assert sorted(SUPPORTED_ARCHITECTURES) == sorted(ARCHS)


@pytest.mark.parametrize("hf_arch", ARCHS)
def test_converts_loads_and_runs_in_llama_cpp(hf_arch, tmp_path):
    import llama_cpp

    folder = str(tmp_path / hf_arch)
    config = synthetic_checkpoint(folder, hf_arch, seed=ARCHS.index(hf_arch))
    src = open_hf(folder)
    assert src.architecture == GGUF_ARCH[hf_arch]
    ckpt = SafetensorsSource(folder)
    # every checkpoint tensor is accounted for; each GGUF tensor is its source, transformed as llama.cpp does
    used = {src.hf_name(t.name) for t in src.tensors} - {None}
    assert used == {t.name for t in ckpt.tensors} - ({"lm_head.weight"} if config["tie_word_embeddings"] else set())
    for t in src.tensors:
        name = src.hf_name(t.name)
        if name is None:
            continue
        want = expected_tensor(hf_arch, config, name, ckpt.read(name))
        assert np.array_equal(src.read(t.name), want), (t.name, name)
        assert t.dtype == "F32"
    names = {t.name for t in src.tensors}
    assert ("output.weight" in names) == (not config["tie_word_embeddings"])
    if hf_arch == "Phi3ForCausalLM":          # fused projections stay fused, as llama.cpp's phi3 expects
        assert src.tensor("blk.0.attn_qkv.weight").shape == (128, 64)
        assert src.tensor("blk.0.ffn_up.weight").shape == (256, 64) and "blk.0.ffn_gate.weight" not in names
    if hf_arch == "LlamaForCausalLM":          # llama3 rope scaling: rope_freqs computed from config.json
        assert src.tensor("rope_freqs.weight").shape == (8,)
    assert src.metadata["tokenizer.chat_template"] == CHAT

    out = str(tmp_path / "out.gguf")
    quantize_hf(folder, out, "Q8_0", threads=2)
    res = open_model(out)
    assert res.architecture == GGUF_ARCH[hf_arch]
    assert {t.name: t.dtype for t in res.tensors if t.dtype == "Q8_0"}
    llm = llama_cpp.Llama(model_path=out, n_ctx=64, n_threads=2, verbose=False, logits_all=True)
    spm = os.path.exists(os.path.join(folder, "tokenizer.model"))
    text = FULL if spm else WORDS              # an unknown BPE pre-tokenizer falls back to 'default'
    got = llm.tokenize(text.encode(), add_bos=False, special=False)
    if spm:
        import sentencepiece

        want = sentencepiece.SentencePieceProcessor(model_file=os.path.join(folder, "tokenizer.model")).encode(text)
    else:
        from tokenizers import Tokenizer

        want = Tokenizer.from_file(os.path.join(folder, "tokenizer.json")).encode(text, add_special_tokens=False).ids
    assert got == want
    toks = llm.tokenize(WORDS.encode())[:8]
    llm.eval(toks)
    logits = np.asarray(llm.scores[: len(toks)])
    assert logits.shape == (len(toks), config["vocab_size"])
    assert np.isfinite(logits).all() and logits.std() > 0.1


def test_bf16_checkpoint_stays_bf16(tmp_path):
    """BF16 matrices keep their type (Q/K rows reordered item by item); norms become F32; a BF16
    output copies them and llama.cpp runs it."""
    import llama_cpp

    folder = str(tmp_path / "llama-bf16")
    config = synthetic_checkpoint(folder, "LlamaForCausalLM", dtype="BF16", seed=11)
    src = open_hf(folder)
    ckpt = SafetensorsSource(folder)
    assert src.tensor("blk.1.attn_k.weight").dtype == "BF16"
    assert src.tensor("blk.1.attn_norm.weight").dtype == "F32"
    assert src.metadata["general.file_type"] == 32                      # MOSTLY_BF16
    k = ckpt.read("model.layers.1.self_attn.k_proj.weight")
    want = gguf_from_hf_qk(k, config["num_key_value_heads"])
    assert src.raw("blk.1.attn_k.weight").tobytes() == bf16_items(want).tobytes()
    assert np.array_equal(src.read("blk.1.attn_k.weight"), bf16_round(want))
    assert not src.is_transformed("blk.1.ffn_up.weight")
    out = str(tmp_path / "bf16.gguf")
    quantize_hf(folder, out, "BF16", threads=2)
    res = open_model(out)
    assert res.raw("blk.1.attn_k.weight").tobytes() == bf16_items(want).tobytes()
    assert res.tensor("blk.1.attn_norm.weight").dtype == "F32"
    llm = llama_cpp.Llama(model_path=out, n_ctx=64, n_threads=2, verbose=False, logits_all=True)
    toks = llm.tokenize(WORDS.encode())[:6]
    llm.eval(toks)
    assert np.isfinite(np.asarray(llm.scores[: len(toks)])).all()
