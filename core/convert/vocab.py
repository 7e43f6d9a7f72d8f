"""Tokenizer metadata for GGUF, as llama.cpp's converter writes it.

- BPE (``tokenizer.json``, read with the ``tokenizers`` package): tokens padded to the model's vocab
  size, token types (added special tokens CONTROL, other added tokens USER_DEFINED), merges, and the
  pre-tokenizer name picked by hashing the token ids of a fixed text (:mod:`.pretok_hashes`).
- SentencePiece (``tokenizer.model``, read with ``sentencepiece``): tokens, scores and types,
  overridden by ``added_tokens.json`` and ``tokenizer_config.json``'s ``added_tokens_decoder``.
- Special token ids, add_bos/add_eos and the chat template come from gguf's ``SpecialVocab``.

Every function writes through a ``gguf.GGUFWriter`` used as an in-memory key/value recorder.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Callable, Optional

import gguf

from ..errors import SourceError, UnsupportedError
from .pretok_hashes import CHECK_TEXT, PRE_BY_HASH

log = logging.getLogger("quant_studio.convert")

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = (int(gguf.TokenType.NORMAL), int(gguf.TokenType.UNKNOWN),
                                                         int(gguf.TokenType.CONTROL), int(gguf.TokenType.USER_DEFINED),
                                                         int(gguf.TokenType.UNUSED), int(gguf.TokenType.BYTE))
SPACE_MARK = "\u2581"


def _json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise SourceError(f"cannot read {os.path.basename(path)}: {e}", path) from None


def looks_special(token: str) -> bool:
    """Added tokens that some models fail to flag as special (llama.cpp's does_token_look_special)."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))
            or (token.startswith("<unused") and token.endswith(">")))


def pre_tokenizer_name(tokenizer, warn: Callable[[str], None]) -> str:
    """``tokenizer.ggml.pre`` for a ``tokenizers.Tokenizer``; 'default' (with a warning) when unknown."""
    ids = tokenizer.encode(CHECK_TEXT).ids
    h = hashlib.sha256(str(ids).encode()).hexdigest()
    name = PRE_BY_HASH.get(h)
    if name is None:
        warn(f"BPE pre-tokenizer not recognized (hash {h[:16]}...); using 'default', which may "
             "tokenize some text differently from the original")
        return "default"
    return name


def _special_vocab(w: gguf.GGUFWriter, folder: str, **kw) -> None:
    try:
        sv = gguf.SpecialVocab(folder, **kw)
    except (ValueError, KeyError, TypeError) as e:
        raise SourceError(f"cannot read the special tokens: {e}", folder) from None
    sv.add_to_gguf(w, quiet=True)


def set_vocab_bpe(w: gguf.GGUFWriter, folder: str, vocab_size: Optional[int],
                  warn: Callable[[str], None]) -> int:
    """Byte-level BPE from tokenizer.json (llama.cpp's ``_set_vocab_gpt2``). Returns the token count."""
    from tokenizers import Tokenizer

    path = os.path.join(folder, "tokenizer.json")
    if not os.path.exists(path):
        raise SourceError("no tokenizer: expected tokenizer.json (BPE) or tokenizer.model (SentencePiece)", path)
    try:
        tok = Tokenizer.from_file(path)
    except Exception as e:  # noqa: BLE001 - tokenizers raises its own Exception type
        raise SourceError(f"cannot read tokenizer.json: {e}", path) from None
    vocab = tok.get_vocab(with_added_tokens=True)
    if not vocab:
        raise SourceError("tokenizer.json has an empty vocabulary", path)
    n = vocab_size or (max(vocab.values()) + 1)
    if max(vocab.values()) >= n:
        raise SourceError(f"tokenizer has token id {max(vocab.values())}, but config.json's vocab_size is {n}", path)
    added = tok.get_added_tokens_decoder()
    reverse = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(n):
        t = reverse.get(i)
        if t is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            continue
        a = added.get(i)
        if a is None:
            types.append(NORMAL)
        else:
            if not a.normalized:
                t = tok.decode(tok.encode(t, add_special_tokens=False).ids, skip_special_tokens=False)
            if a.special or looks_special(t):
                types.append(CONTROL)
            else:
                t = t.replace(SPACE_MARK, " ")
                types.append(USER_DEFINED)
        tokens.append(t)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre_tokenizer_name(tok, warn))
    w.add_token_list(tokens)
    w.add_token_types(types)
    _special_vocab(w, folder, load_merges=True)
    return n


def _sentencepiece(path: str):
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(path)
    except (OSError, RuntimeError) as e:
        raise SourceError(f"cannot read tokenizer.model: {e}", path) from None
    return sp


def set_vocab_spm(w: gguf.GGUFWriter, folder: str, vocab_size: Optional[int], *, phi3: bool = False) -> int:
    """SentencePiece from tokenizer.model (llama.cpp's ``_set_vocab_sentencepiece``; with ``phi3``,
    its Phi-3 variant that also takes tokenizer.json's added tokens). Returns the token count."""
    path = os.path.join(folder, "tokenizer.model")
    if not os.path.exists(path):
        raise SourceError("no tokenizer: this architecture needs tokenizer.model (SentencePiece)", path)
    sp = _sentencepiece(path)
    n = vocab_size or sp.vocab_size()
    tokens = [f"[PAD{i}]" for i in range(n)]
    scores = [-10000.0] * n
    types = [UNUSED] * n
    for i in range(min(n, sp.vocab_size())):
        tokens[i] = sp.IdToPiece(i)
        scores[i] = sp.GetScore(i)
        types[i] = (UNKNOWN if sp.IsUnknown(i) else CONTROL if sp.IsControl(i) else UNUSED if sp.IsUnused(i)
                    else BYTE if sp.IsByte(i) else NORMAL)

    def put(i: int, text: str, typ: int) -> None:
        if 0 <= i < n:
            tokens[i], scores[i], types[i] = text, -1000.0, typ

    added_file = os.path.join(folder, "added_tokens.json")
    if os.path.exists(added_file):
        for text, i in dict(_json(added_file)).items():
            put(int(i), text, USER_DEFINED)
    cfg_file = os.path.join(folder, "tokenizer_config.json")
    if os.path.exists(cfg_file):
        for i, d in (_json(cfg_file).get("added_tokens_decoder") or {}).items():
            text = d["content"]
            if phi3:
                put(int(i), text, CONTROL if d.get("special") else USER_DEFINED)
            elif d.get("special") or looks_special(text):
                put(int(i), text, CONTROL)
            else:
                put(int(i), text.replace(SPACE_MARK, " "), USER_DEFINED)
    tj = os.path.join(folder, "tokenizer.json")
    if phi3 and os.path.exists(tj):
        for d in _json(tj).get("added_tokens", []):
            put(int(d["id"]), d["content"], CONTROL if d.get("special") else USER_DEFINED)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    _special_vocab(w, folder, n_vocab=n)
    return n


def tokenizer_config(folder: str) -> dict[str, Any]:
    p = os.path.join(folder, "tokenizer_config.json")
    return dict(_json(p)) if os.path.exists(p) else {}


def has_spm(folder: str) -> bool:
    return os.path.exists(os.path.join(folder, "tokenizer.model"))


def require_tokenizer(folder: str) -> None:
    if not (has_spm(folder) or os.path.exists(os.path.join(folder, "tokenizer.json"))):
        raise SourceError("no tokenizer: expected tokenizer.json (BPE) or tokenizer.model (SentencePiece)", folder)


def check_llama_hf_bpe(folder: str) -> None:
    """A SentencePiece-style BPE in tokenizer.json (byte fallback) without tokenizer.model: llama.cpp
    converts it through transformers; not supported here."""
    p = os.path.join(folder, "tokenizer.json")
    if os.path.exists(p):
        model = _json(p).get("model", {})
        if model.get("type") == "BPE" and model.get("byte_fallback") and not model.get("ignore_merges"):
            raise UnsupportedError("tokenizer.json is a SentencePiece-style BPE (byte fallback); "
                                   "add the model's tokenizer.model to convert it", p)


__all__ = ["set_vocab_bpe", "set_vocab_spm", "pre_tokenizer_name", "tokenizer_config", "has_spm",
           "require_tokenizer", "looks_special"]
