"""Hugging Face folders written by the tests: safetensors shards (BF16 included) with an index,
config.json, tokenizer files, built without the code under test."""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

# --------------------------------------------------------------------------- safetensors
_ST = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "I32": "<i4", "I64": "<i8", "U8": "u1", "F8_E4M3": "u1"}


def bf16_items(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, round to nearest even (finite inputs)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_round(x: np.ndarray) -> np.ndarray:
    return (bf16_items(x).astype(np.uint32) << 16).view(np.float32)


def write_safetensors(path: str, tensors: dict[str, tuple[str, np.ndarray]]) -> None:
    """``{name: (dtype, array)}``; BF16 arrays are float32 values (rounded here) or uint16 items."""
    header, blobs, off = {}, [], 0
    for name, (dtype, arr) in tensors.items():
        if dtype == "BF16" and arr.dtype != np.uint16:
            arr = bf16_items(arr)
        b = np.ascontiguousarray(arr, dtype=_ST[dtype]).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h)
        for b in blobs:
            f.write(b)


def write_checkpoint(folder: str, shards: list[dict[str, tuple[str, np.ndarray]]], config: dict) -> None:
    """Shards ``model-0000i-of-0000n.safetensors`` with their index, and config.json."""
    os.makedirs(folder, exist_ok=True)
    weight_map, total = {}, 0
    n = len(shards)
    for i, tensors in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors" if n > 1 else "model.safetensors"
        write_safetensors(os.path.join(folder, fname), tensors)
        for name, (dtype, arr) in tensors.items():
            weight_map[name] = fname
            total += arr.size * np.dtype(_ST[dtype]).itemsize
    if n > 1:
        with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    write_json(os.path.join(folder, "config.json"), config)


def write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)


# --------------------------------------------------------------------------- rotary layout
def hf_from_gguf_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K permutation: GGUF (interleaved rotary pairs) -> HF (halves) row order."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_from_hf_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# --------------------------------------------------------------------------- tokenizers
def bpe_tokenizer_json(path: str, tokens: list[str], merges: list[str], special: list[str],
                       digits: bool = True) -> None:
    """A byte-level BPE tokenizer.json from a vocabulary and merges (tokens[i] has id i)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=[tuple(m.split(" ")) for m in merges],
                     fuse_unk=False, byte_fallback=False)
    tok = Tokenizer(bpe)
    level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), level]) \
        if digits else level
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    tok.save(path)


CORPUS = ("The quick brown fox jumps over the lazy dog. " * 3 +
          "Quantization maps floating point weights to small integers with a scale per block. "
          "Hello world, hello llama! Numbers 12345 and 678 appear here. "
          "A tokenizer splits text into pieces; pieces become ids. ") * 20


def trained_bpe(path: str, vocab_size: int, special: list[str]) -> int:
    """A small byte-level BPE trained on a fixed text; returns the vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS], trainer=trainer)
    tok.save(path)
    return tok.get_vocab_size()


def trained_spm(folder: str, vocab_size: int, dummy_prefix: bool = True) -> int:
    """tokenizer.model: a small SentencePiece BPE with byte fallback trained on a fixed text."""
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS.split(". ")), model_writer=buf,
                                   vocab_size=vocab_size, model_type="bpe", byte_fallback=True,
                                   character_coverage=1.0, minloglevel=2, num_threads=1,
                                   hard_vocab_limit=False, add_dummy_prefix=dummy_prefix,
                                   normalization_rule_name="identity", remove_extra_whitespaces=False)
    with open(os.path.join(folder, "tokenizer.model"), "wb") as f:
        f.write(buf.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    return sp.vocab_size()


# --------------------------------------------------------------------------- synthetic checkpoints
CHAT = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"


def synthetic_checkpoint(folder: str, hf_arch: str, *, seed: int = 0, dtype: str = "F32",
                         tied: Optional[bool] = None) -> dict:
    """A tiny random model of ``hf_arch`` with a real-looking config.json and a tokenizer written here.
    Returns the config."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    n_embd, n_head, n_kv, hd, n_ff, n_layer = 64, 4, 2, 16, 128, 2
    gemma = hf_arch.startswith("Gemma")
    spm_tok = gemma or hf_arch in ("MistralForCausalLM", "Phi3ForCausalLM")
    if spm_tok:
        n_vocab = trained_spm(folder, 320, dummy_prefix=not gemma)   # Gemma's tokenizer adds no space
        if hf_arch == "Phi3ForCausalLM":     # added chat tokens past the SentencePiece vocabulary
            extra = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>"]
            write_json(os.path.join(folder, "tokenizer_config.json"), {
                "chat_template": CHAT, "bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<unk>",
                "add_bos_token": False, "add_eos_token": False, "tokenizer_class": "LlamaTokenizer",
                "added_tokens_decoder": {str(n_vocab + i): {"content": t, "special": True}
                                         for i, t in enumerate(extra)}})
            n_vocab += len(extra) + 4        # 4 padding ids, as Phi-3's 32064
        else:
            write_json(os.path.join(folder, "tokenizer_config.json"), {
                "chat_template": CHAT, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                "add_bos_token": True, "add_eos_token": False})
    else:
        special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        n_vocab = trained_bpe(os.path.join(folder, "tokenizer.json"), 400, special)
        write_json(os.path.join(folder, "tokenizer_config.json"), {
            "chat_template": CHAT, "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>", "add_prefix_space": False})
    if tied is None:
        tied = gemma
    config = {"architectures": [hf_arch], "hidden_size": n_embd, "intermediate_size": n_ff,
              "num_attention_heads": n_head, "num_key_value_heads": n_kv, "num_hidden_layers": n_layer,
              "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
              "vocab_size": n_vocab, "tie_word_embeddings": tied, "torch_dtype": "bfloat16",
              "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu"}
    if gemma:
        config.update(head_dim=hd, query_pre_attn_scalar=hd, sliding_window=64, hidden_activation="gelu_pytorch_tanh",
                      model_type=hf_arch[:6].lower())
    if hf_arch == "Gemma2ForCausalLM":
        config.update(attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
    if hf_arch == "Gemma3ForCausalLM":
        config.update(rope_local_base_freq=10000.0, rope_theta=1000000.0, sliding_window_pattern=6,
                      rope_scaling={"rope_type": "linear", "factor": 8.0})
    if hf_arch == "Qwen3ForCausalLM":
        config["head_dim"] = hd
    if hf_arch == "Phi3ForCausalLM":
        config.update(original_max_position_embeddings=2048, sliding_window=None, rope_scaling=None,
                      bos_token_id=1, eos_token_id=n_vocab - 8)
    if hf_arch == "LlamaForCausalLM":
        config["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 512}

    def mat(rows, cols, std=0.05):
        return (rng.standard_normal((rows, cols)) * std).astype(np.float32)

    def vec(n, base):
        return (base + 0.05 * rng.standard_normal(n)).astype(np.float32)

    norm_base = 0.0 if gemma else 1.0
    t: dict[str, np.ndarray] = {"model.embed_tokens.weight": mat(n_vocab, n_embd, 0.5)}
    for i in range(n_layer):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = vec(n_embd, norm_base)
        t[p + "post_attention_layernorm.weight"] = vec(n_embd, norm_base)
        if hf_arch == "Phi3ForCausalLM":
            t[p + "self_attn.qkv_proj.weight"] = mat((n_head + 2 * n_kv) * hd, n_embd)
            t[p + "mlp.gate_up_proj.weight"] = mat(2 * n_ff, n_embd)
        else:
            t[p + "self_attn.q_proj.weight"] = mat(n_head * hd, n_embd)
            t[p + "self_attn.k_proj.weight"] = mat(n_kv * hd, n_embd)
            t[p + "self_attn.v_proj.weight"] = mat(n_kv * hd, n_embd)
            t[p + "mlp.gate_proj.weight"] = mat(n_ff, n_embd)
            t[p + "mlp.up_proj.weight"] = mat(n_ff, n_embd)
        t[p + "self_attn.o_proj.weight"] = mat(n_embd, n_head * hd)
        t[p + "mlp.down_proj.weight"] = mat(n_embd, n_ff)
        if hf_arch == "Qwen2ForCausalLM":
            for k, rows in (("q", n_head * hd), ("k", n_kv * hd), ("v", n_kv * hd)):
                t[p + f"self_attn.{k}_proj.bias"] = vec(rows, 0.0)
        if hf_arch in ("Qwen3ForCausalLM", "Gemma3ForCausalLM"):
            t[p + "self_attn.q_norm.weight"] = vec(hd, norm_base)
            t[p + "self_attn.k_norm.weight"] = vec(hd, norm_base)
        if gemma:
            t[p + "pre_feedforward_layernorm.weight"] = vec(n_embd, norm_base)
            t[p + "post_feedforward_layernorm.weight"] = vec(n_embd, norm_base)
    t["model.norm.weight"] = vec(n_embd, norm_base)
    if not tied:
        t["lm_head.weight"] = mat(n_vocab, n_embd, 0.5)
    names = sorted(t)
    half = len(names) // 2
    shards = [{n: (dtype, t[n]) for n in names[:half]}, {n: (dtype, t[n]) for n in names[half:]}]
    write_checkpoint(folder, shards, config)
    return config


def open_hf(folder: str):
    """A Hugging Face folder opened for writing (core.models.open_model; conversion errors raised)."""
    from core.models import open_model
    return open_model(folder, writable=True)


def quantize_hf(folder: str, output: str, qtype: str, *, threads: Optional[int] = None, **kwargs):
    """``quant-studio quantize FOLDER OUTPUT --type T`` as calls: open (converted), plan, run."""
    from core.job import run_plan
    from core.plan import pure_plan

    src = open_hf(folder)
    try:
        return run_plan(src, pure_plan(src.tensors, qtype, src.architecture), output, threads=threads, **kwargs)
    finally:
        src.close()
