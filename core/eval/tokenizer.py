"""Text → token ids exactly as llama.cpp's ``llama_tokenize`` does it (``src/llama-vocab.cpp``), for the
forward pass (calibration, perplexity).

The vocabulary always comes from GGUF metadata (``tokenizer.ggml.*``); a Hugging Face folder is read
through :func:`core.models.open_model`, i.e. as the GGUF it converts to, so the ids are the ones
llama.cpp gives on the converted file. The merging itself runs in the ``tokenizers`` package (Rust):

- ``gpt2`` (byte-level BPE): llama.cpp's pre-tokenizer regexes for ``tokenizer.ggml.pre``
  (``llm_tokenizer_bpe``), each an isolating ``Split`` applied to the pieces of the one before, as
  ``unicode_regex_split`` does; then GPT-2's byte→unicode map and BPE by merge rank
  (``llm_tokenizer_bpe_session``), ``ignore_merges`` where llama.cpp sets it.
- ``llama`` (SentencePiece): ``llm_tokenizer_spm_session`` merges the adjacent pair whose
  concatenation is the highest-scoring token, leftmost first, and falls back to ``<0xXX>`` byte tokens.
  That is a BPE whose merges are every (left, right) split of every token, ranked by the merged token's
  score; we generate those merges once per vocabulary and let ``tokenizers`` run them (byte fallback on).
  Spaces become U+2581 and a space is prefixed after BOS/specials (``add_space_prefix``).
- ``gemma4``: SentencePiece-style BPE on raw UTF-8 (spaces → U+2581, split at newlines, ``<0xXX>``
  fallback).

Special tokens are cut out of the text first (``tokenizer_st_partition``): longest first, CONTROL and
UNKNOWN ones only with ``parse_special``, USER_DEFINED ones always, with llama.cpp's lstrip/rstrip
attributes (Phi-3). Not supported: WPM (BERT), UGM (T5), RWKV, PLaMo-2 vocabularies and the few
pre-tokenizers llama.cpp implements in custom C++ (kimi-k2, afmoe, superbpe, hybriddna, chameleon).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from ..errors import SourceError, UnsupportedError

# llama.cpp's token types (gguf.TokenType) and attributes (llama_token_attr)
T_NORMAL, T_UNKNOWN, T_CONTROL, T_USER_DEFINED, T_UNUSED, T_BYTE = 1, 2, 3, 4, 5, 6
A_UNKNOWN, A_UNUSED, A_NORMAL, A_CONTROL, A_USER_DEFINED, A_BYTE = 1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4, 1 << 5
A_LSTRIP, A_RSTRIP = 1 << 7, 1 << 8
_ATTR_OF_TYPE = {T_UNKNOWN: A_UNKNOWN, T_UNUSED: A_UNUSED, T_NORMAL: A_NORMAL, T_CONTROL: A_CONTROL,
                 T_USER_DEFINED: A_USER_DEFINED, T_BYTE: A_BYTE}
SPACE_MARK = "\u2581"

# -- pre-tokenizer regexes, as llm_tokenizer_bpe's constructor lists them -----------------------------
_CONTRACTIONS = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_GPT2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
_LLAMA3 = (_CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
           "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
_QWEN2 = (_CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
          "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
_QWEN35 = (_CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*"
           "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
_DEEPSEEK3 = ["\\p{N}{1,3}", "[一-龥\u3040-ゟ゠-ヿ]+",
              "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
              "| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"]
# llama.cpp runs regexes without \p{..} as std::wregex on text whose non-ASCII spaces are replaced by \v,
# so their explicit ranges never match a space: the ranges below skip U+1680, U+2000-200A, U+2028-2029,
# U+202F, U+205F and U+3000 (llama.cpp's unicode_set_whitespace).
_CJK = "[\u4e00-\u9fa5\u0800-\u167f\u1681-\u1fff\u200b-\u2027\u202a-\u202e\u2030-\u205e\u2060-\u2fff\u3001-\u4e00\uac00-\ud7ff]+"
_DEEPSEEK_LLM = [
    "[\r\n]",
    ("\\s?[A-Za-z\xb5\xc0-\xd6\xd8-\xf6\xf8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373"
     "\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481"
     "\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-"
     "\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57"
     "\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-"
     "\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-"
     "\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184"
     "\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-"
     "\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-"
     "\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2"
     "\U000118a0-\U000118df\U0001e900-\U0001e943]+"),
    "\\s?[!-/:-~！-／：-～‘-‟\u3001-。]+",
    "\\s+$",
    _CJK,
    "\\p{N}+",
]
_STARCODER = ["\\p{N}", _GPT2]
_FINNISH = " ?[^(\\s|.,!?…。，、।۔،)]+"
_TEKKEN = ("[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+|[^\\r\\n\\p{L}\\p{N}]?"
           "((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+"
           "|\\s+(?!\\S)|\\s+")
_LOWER_UPPER = ("[^\\r\\n\\p{{L}}\\p{{N}}]?((?=[{L}])([^a-z]))*((?=[{L}])([^A-Z]))+{C}?|[^\\r\\n\\p{{L}}\\p{{N}}]?"
                "((?=[{L}])([^a-z]))+((?=[{L}])([^A-Z]))*{C}?|\\p{{N}}{{1,3}}| ?[^\\s\\p{{L}}\\p{{N}}]+[\\r\\n/]*"
                "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
_GPT4O = _LOWER_UPPER.format(L="\\p{L}", C=_CONTRACTIONS)
_GRANITE_EMB_MULTI = _LOWER_UPPER.format(L="\\p{L}\\p{M}", C=_CONTRACTIONS)
_TINY_AYA = ["\\d{1,3}(?=(?:\\d{3})*\\b)",
             "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+" + _CONTRACTIONS
             + "?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*" + _CONTRACTIONS
             + "?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"]
_DEFAULT = ["[\\p{P}\\$\\+<=>\\^~\\|]+", _GPT2, "\\p{N}+", "[0-9][0-9][0-9]"]
_NEWLINES = ["[^\\n]+|[\\n]+"]


# Code points that Unicode 16.0 assigned (letters, digits, marks, punctuation, symbols): the Oniguruma
# inside ``tokenizers`` knows them, llama.cpp's unicode-data.cpp (Unicode 15) has them unassigned, so
# its \p{..} classes do not match them. Subtracted from every \p{..} below; remove when llama.cpp's
# tables reach Unicode 16 (found by comparing both over all code points).
_UNICODE16 = [
    (0x897, 0x897), (0x1B4E, 0x1B4F), (0x1B7F, 0x1B7F), (0x1C89, 0x1C8A), (0x2427, 0x2429), (0x31E4, 0x31E5),
    (0xA7CB, 0xA7CD), (0xA7DA, 0xA7DC), (0x105C0, 0x105F3), (0x10D40, 0x10D65), (0x10D69, 0x10D85),
    (0x10D8E, 0x10D8F), (0x10EC2, 0x10EC4), (0x10EFC, 0x10EFC), (0x11380, 0x11389), (0x1138B, 0x1138B),
    (0x1138E, 0x1138E), (0x11390, 0x113B5), (0x113B7, 0x113C0), (0x113C2, 0x113C2), (0x113C5, 0x113C5),
    (0x113C7, 0x113CA), (0x113CC, 0x113D5), (0x113D7, 0x113D8), (0x113E1, 0x113E2), (0x116D0, 0x116E3),
    (0x11BC0, 0x11BE1), (0x11BF0, 0x11BF9), (0x11F5A, 0x11F5A), (0x13460, 0x143FA), (0x16100, 0x16139),
    (0x16D40, 0x16D79), (0x18CFF, 0x18CFF), (0x1CC00, 0x1CCF9), (0x1CD00, 0x1CEB3), (0x1E5D0, 0x1E5FA),
    (0x1E5FF, 0x1E5FF), (0x1F8B2, 0x1F8BB), (0x1F8C0, 0x1F8C1), (0x1FA89, 0x1FA89), (0x1FA8F, 0x1FA8F),
    (0x1FABE, 0x1FABE), (0x1FAC6, 0x1FAC6), (0x1FADC, 0x1FADC), (0x1FADF, 0x1FADF), (0x1FAE9, 0x1FAE9),
    (0x1FBCB, 0x1FBEF),
]
_NOT_UNICODE16 = "[^" + "".join(f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in _UNICODE16) + "]"


def _as_llama_cpp(regex: str) -> str:
    r"""A llama.cpp pre-tokenizer regex as Oniguruma must read it to split the same way: llama.cpp
    collapses each non-ASCII code point to its general category, so \p{Lu}/\p{Ll}/... all mean any
    letter (unicode_regex_split's k_ucat_enum), and knows only Unicode 15."""
    if "\\p{" not in regex:
        return regex
    regex = re.sub(r"\\p\{L[ultmo]\}", r"\\p{L}", regex)
    return re.sub(r"\\p\{([LNMPS])\}", lambda m: f"[\\p{{{m.group(1)}}}&&{_NOT_UNICODE16}]", regex)


@dataclass(frozen=True)
class _Pre:
    regexes: tuple[str, ...]
    ignore_merges: bool = False
    add_bos: Optional[bool] = None       # llama.cpp's default before tokenizer.ggml.add_bos_token


def _pre(regexes, ignore_merges=False, add_bos=None) -> _Pre:
    return _Pre(tuple([regexes] if isinstance(regexes, str) else regexes), ignore_merges, add_bos)


# tokenizer.ggml.pre → regexes and flags (llama_vocab::impl::load, then llm_tokenizer_bpe)
PRE_TOKENIZERS: dict[str, _Pre] = {}
for _names, _p in [
    (("default",), _pre(_DEFAULT)),
    (("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"),
     _pre(_LLAMA3, ignore_merges=True, add_bos=True)),
    (("dbrx", "smaug-bpe"), _pre(_LLAMA3)),
    (("chatglm-bpe",), _pre(_LLAMA3)),
    (("glm4", "glm5"), _pre(_LLAMA3, ignore_merges=True)),
    (("deepseek-llm",), _pre(_DEEPSEEK_LLM)),
    (("deepseek-coder",), _pre(["[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", _CJK, "\\p{N}"])),
    (("deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"), _pre(_DEEPSEEK3)),
    (("falcon",), _pre(["[\\p{P}\\$\\+<=>\\^~\\|`]+", _GPT2, "[0-9][0-9][0-9]"])),
    (("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2"),
     _pre(_STARCODER)),
    (("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum",
      "modern-bert", "mpt", "olmo", "jais", "trillion", "granite-docling", "exaone4", "jina-v1-en",
      "jina-v2-code", "roberta-bpe"), _pre(_GPT2)),
    (("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "stablelm2", "megrez", "hunyuan", "solar-open", "grok-2"),
     _pre(_QWEN2)),
    (("qwen35",), _pre(_QWEN35)),
    (("poro-chat", "bloom", "gpt3-finnish"), _pre(_FINNISH)),
    (("viking",), _pre([_FINNISH, "\\p{N}"])),
    (("tekken",), _pre(_TEKKEN, ignore_merges=True, add_bos=True)),
    (("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), _pre(_GPT4O)),
    (("granite-embed-multi-97m",), _pre(_GRANITE_EMB_MULTI, ignore_merges=True)),
    (("tiny_aya", "cohere2moe"), _pre(_TINY_AYA)),
    (("seed-coder",), _pre(_CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}| ?[^\\s\\p{L}\\p{N}\\r\\n]+"
                                           "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")),
    (("bailingmoe", "bailingmoe2", "llada-moe"),
     _pre("'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+"
          "[\\r\\n]*|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+")),
    (("ufakzeka",), _pre("[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+"
                         "|\\s+(?!\\S)|\\s+")),
    (("jais-2",), _pre(_CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+"
                       + "".join(f"|\\s{{{k}}}(?!\\S)" for k in (512, 256, 128, 64, 32, 16, 8, 4))
                       + "|\\s{1,2}(?!\\S)|\\s{1}")),
    (("spark2_5",), _pre(["\\p{N}{1,3}", "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
                          "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
                          "| ?[\\p{P}\\p{S}]+|[\r\n]|\\s+(?!\\S)|\\s+", "\\p{N}"])),
    (("youtu",), _pre(["[\uac00-\ud7a3\u3131-\u318e]+|[\uff01\u2026\u201c\u201d\u2018\u2019\u2014\uff1a\uff1b"
                       "\uff0c\u3001-\u303f\ufe30-\ufe4f]+|[\u3105-\u312f]+|[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
                       _TINY_AYA[1].replace("\\p{N}{1,3}", "\\p{N}")], ignore_merges=True)),
    (("exaone-moe",), _pre(_CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?(?:\\p{L}\\p{M}*(?: \\p{L}\\p{M}*)*)+|\\p{N}"
                           "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]?|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+")),
    (("laguna",), _pre(_NEWLINES + [_QWEN2])),
    (("minicpm5",), _pre(["\\p{N}{1,3}", _CONTRACTIONS + "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}+"
                          "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"], ignore_merges=True)),
]:
    for _n in _names:
        PRE_TOKENIZERS[_n] = _p
# "SPM-style" BPE: raw UTF-8, spaces escaped to U+2581, only split at newlines
_SPM_STYLE_BPE = {"gemma4", "granite-embed-multi-311m", "sarvam-moe"}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character map (llama.cpp's unicode_byte_to_utf8)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


_BYTE_CHAR = _bytes_to_unicode()
_CHAR_BYTE = {c: b for b, c in _BYTE_CHAR.items()}

# token texts llama.cpp marks CONTROL by name (auto-detected EOT/EOM/FIM and EOG tokens)
_EOG_NAMES = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
              "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
              "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
              "<｜end▁of▁sentence｜>", "[e~["}
_FIM_NAMES = {
    "tokenizer.ggml.fim_pre_token_id": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>",
                                        "▁<PRE>", "<|code_prefix|>", "<|prefix|>"),
    "tokenizer.ggml.fim_suf_token_id": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>",
                                        "▁<SUF>", "<|code_suffix|>", "<|suffix|>"),
    "tokenizer.ggml.fim_mid_token_id": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>",
                                        "▁<MID>", "<|code_middle|>", "<|middle|>"),
    "tokenizer.ggml.fim_pad_token_id": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "tokenizer.ggml.fim_rep_token_id": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "tokenizer.ggml.fim_sep_token_id": ("<|file_sep|>",),
}


def _token_attrs(tokens: Sequence[str], types: Optional[Sequence[int]], md: dict[str, Any],
                 pre: str) -> np.ndarray:
    """Per-token attributes after llama.cpp's load-time fix-ups (the ones that change tokenization)."""
    n = len(tokens)
    attr = np.full(n, A_NORMAL, dtype=np.int32)
    if types is not None:
        attr[:] = [_ATTR_OF_TYPE.get(int(t), 0) for t in types]     # 0: LLAMA_TOKEN_ATTR_UNDEFINED
    index = {t: i for i, t in enumerate(tokens)}
    for name in _EOG_NAMES:
        if name in index:
            attr[index[name]] |= A_CONTROL
    for key, names in _FIM_NAMES.items():
        if key not in md:
            for name in names:
                if name in index:
                    attr[index[name]] |= A_CONTROL
                    break
    for name in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):   # gpt-oss
        if name in index:
            attr[index[name]] = A_USER_DEFINED
    eog = {t for t in _EOG_NAMES if t in index}
    if "<|end|>" in eog and (("<|return|>" in eog and "<|call|>" in eog)
                             or ("<|calls|>" in eog and "<|flush|>" in eog)):
        attr[index["<|end|>"]] = A_USER_DEFINED                          # o200k_harmony, solar-open
    if "</s>" in eog and ("<|tool_response>" in eog or "<|plamo:eos|>" in index):
        attr[index["</s>"]] = A_NORMAL                                    # gemma4, plamo
    # per-model lstrip/rstrip (the part after the special-token cache in llama_vocab::impl::load)
    model_name = str(md.get("general.name", "")).lower()
    arch = str(md.get("general.architecture", ""))
    special = (attr & (A_CONTROL | A_USER_DEFINED | A_UNKNOWN)) != 0
    if any(s in pre for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or \
            any(s in arch for s in ("nomic-bert-moe", "jina-bert-v3")):
        if "<mask>" in index:
            attr[index["<mask>"]] |= A_LSTRIP
    elif "phi-3" in model_name or "phi3" in model_name:
        attr[special] |= A_RSTRIP
        for name, on in (("</s>", True), ("<unk>", False), ("<s>", False), ("<|endoftext|>", False)):
            if name in index:
                attr[index[name]] = (attr[index[name]] | A_RSTRIP) if on else (attr[index[name]] & ~A_RSTRIP)
    elif "modern-bert" in model_name and "[MASK]" in index:
        attr[index["[MASK]"]] |= A_LSTRIP
    return attr


def _spm_merges(tokens: Sequence[str], scores: np.ndarray) -> list[tuple[str, str]]:
    """Every (left, right) split of every token into two tokens, best merged score first: with these
    ranks, BPE performs llm_tokenizer_spm's merges (highest score, then leftmost)."""
    index = {t: i for i, t in enumerate(tokens)}
    found: list[tuple[float, int, int, str, str]] = []
    for i, t in enumerate(tokens):
        for k in range(1, len(t)):
            a, b = t[:k], t[k:]
            if a in index and b in index:
                found.append((-float(scores[i]), i, k, a, b))
    found.sort()
    return [(a, b) for _, _, _, a, b in found]


@dataclass
class Tokenizer:
    """A llama.cpp vocabulary ready to tokenize. Build with :func:`load_tokenizer`."""

    kind: str                          # "spm" | "bpe"
    pre: str                           # tokenizer.ggml.pre ("" for SentencePiece)
    tokens: list[str]
    attrs: np.ndarray
    bos_id: int                        # -1 when none
    eos_id: int
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool
    escape_whitespaces: bool
    byte_encode: bool
    _hf: Any = field(repr=False, default=None)
    _special: list[int] = field(repr=False, default_factory=list)
    _pieces: Optional[list[bytes]] = field(repr=False, default=None)
    _can_cut: bool = field(repr=False, default=True)
    _finders: dict = field(repr=False, default_factory=dict)

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    # -- encoding ------------------------------------------------------------------------
    def _present(self, text: str, parse_special: bool) -> list[int]:
        """The special tokens (in cache order) whose text occurs in ``text``: one regex pass finds the
        longest special token starting at each position; its special prefixes occur there too."""
        key = bool(parse_special)
        if key not in self._finders:
            active = [i for i in self._special
                      if parse_special or not int(self.attrs[i]) & (A_CONTROL | A_UNKNOWN)]
            texts = sorted({self.tokens[i] for i in active}, key=len, reverse=True)
            finder = re.compile("(?=(" + _trie_regex(texts) + "))") if texts else None
            by_text = {self.tokens[i]: i for i in active}
            prefixes = {t: [by_text[t[:k]] for k in range(1, len(t) + 1) if t[:k] in by_text] for t in texts}
            self._finders[key] = (finder, prefixes, {i: n for n, i in enumerate(active)})
        finder, prefixes, order = self._finders[key]
        if finder is None:
            return []
        found: set[int] = set()
        for t in set(finder.findall(text)):
            found.update(prefixes[t])
        return sorted(found, key=order.__getitem__)

    def _partition(self, text: str, parse_special: bool) -> list:
        """tokenizer_st_partition: a list of str (raw text) and int (special token id). Special tokens
        are cut out longest first (ties by id), each from every raw fragment left by the longer ones."""
        frags: list = [text]
        for tid in self._present(text, parse_special):
            a = int(self.attrs[tid])
            s = self.tokens[tid]
            out: list = []
            for f in frags:
                if not isinstance(f, str) or s not in f:
                    out.append(f)
                    continue
                pos = 0
                while True:
                    m = f.find(s, pos)
                    if m < 0:
                        break
                    left = f[pos:m]
                    if a & A_LSTRIP:
                        left = left.rstrip(_C_SPACE)
                    if left:
                        out.append(left)
                    out.append(tid)
                    pos = m + len(s)
                    if a & A_RSTRIP:
                        while pos < len(f) and f[pos] in _C_SPACE:
                            pos += 1
                rest = f[pos:]
                if rest:
                    out.append(rest)
            frags = out
        return frags

    def _encode_raw(self, text: str, ids: list[int]) -> None:
        if self.escape_whitespaces:
            text = text.replace(" ", SPACE_MARK)
        if len(text) < 2 * _CHUNK or not self._can_cut:
            ids.extend(self._hf.encode(text, add_special_tokens=False).ids)
            return
        batch = getattr(self._hf, "encode_batch_fast", None) or self._hf.encode_batch
        for enc in batch(_chunks(text), add_special_tokens=False):
            ids.extend(enc.ids)

    def encode(self, text: str, add_bos: Optional[bool] = None, *, add_eos: Optional[bool] = None,
               parse_special: bool = False) -> np.ndarray:
        """Token ids (int32) of ``text``, as ``llama_tokenize(vocab, text, add_special, parse_special)``.
        ``add_bos``/``add_eos`` default to the model's own (``tokenizer.ggml.add_bos_token`` ...);
        ``parse_special`` also turns the text of CONTROL tokens (``<|im_start|>``) into their ids."""
        add_bos = self.add_bos if add_bos is None else add_bos
        add_eos = self.add_eos if add_eos is None else add_eos
        ids: list[int] = []
        if add_bos:
            if self.bos_id < 0:
                raise UnsupportedError("this vocabulary has no BOS token to add")
            ids.append(self.bos_id)
        frags = self._partition(text, parse_special) if text else []
        if self.kind == "spm":
            prev_special = True
            for f in frags:
                if isinstance(f, str):
                    self._encode_raw(" " + f if self.add_space_prefix and prev_special else f, ids)
                    prev_special = False
                else:
                    ids.append(f)
                    prev_special = True
        else:
            for f in frags:
                if isinstance(f, str):
                    self._encode_raw(f, ids)
                else:
                    ids.append(f)
        if add_eos:
            if self.eos_id < 0:
                raise UnsupportedError("this vocabulary has no EOS token to add")
            ids.append(self.eos_id)
        return np.asarray(ids, dtype=np.int32)

    # -- decoding ------------------------------------------------------------------------
    def piece(self, tid: int, special: bool = False) -> bytes:
        """The bytes of one token, as llama_token_to_piece: CONTROL and UNKNOWN tokens are empty unless
        ``special``; USER_DEFINED ones are their text; UNUSED and undefined ones are empty."""
        a = int(self.attrs[tid])
        t = self.tokens[tid]
        if a & (A_CONTROL | A_UNKNOWN) and not special:
            return b""
        if a & (A_CONTROL | A_UNKNOWN | A_USER_DEFINED):
            return t.encode("utf-8")
        if a & A_NORMAL:
            if self.escape_whitespaces:
                return t.replace(SPACE_MARK, " ").encode("utf-8")
            try:
                return bytes(_CHAR_BYTE[c] for c in t)            # GPT-2's unicode → byte map
            except KeyError:
                return t.encode("utf-8")
        if a & A_BYTE and len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            return bytes([int(t[3:5], 16)])
        return b""

    def decode(self, ids: Iterable[int], *, special: bool = False) -> str:
        """Text of ``ids``: their llama_token_to_piece bytes joined, the first losing one leading space
        where the vocabulary prefixes one (llama_detokenize without its ``clean_spaces`` pass, which
        would drop the space before ``?!.,``); invalid UTF-8 becomes U+FFFD."""
        if self._pieces is None:
            self._pieces = [self.piece(i) for i in range(self.n_vocab)]
        pieces = [self.piece(int(i), True) if special else self._pieces[int(i)] for i in ids]
        if pieces and self.add_space_prefix and pieces[0].startswith(b" "):
            pieces[0] = pieces[0][1:]
        return b"".join(pieces).decode("utf-8", errors="replace")


_C_SPACE = " \t\n\v\f\r"     # C isspace(): what llama.cpp's lstrip/rstrip remove
_CHUNK = 1 << 15


def _trie_regex(texts: Sequence[str]) -> str:
    """A regex matching the longest of ``texts`` at a position, as a character trie (Python's ``re``
    tries a plain alternation of thousands of literals one by one at every position)."""
    trie: dict = {}
    for t in texts:
        node = trie
        for c in t:
            node = node.setdefault(c, {})
        node[""] = {}

    def emit(node: dict) -> str:
        branches = [re.escape(c) + emit(child) for c, child in sorted(node.items()) if c]
        if not branches:
            return ""
        alt = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{alt})?" if "" in node else alt

    return emit(trie)


def _chunks(text: str) -> list[str]:
    """``text`` cut into pieces of about ``_CHUNK`` characters, only right after a newline that follows a
    non-space and precedes an ASCII letter. Every pre-tokenizer regex here ends a piece there and none
    starts one before it that runs past it, so encoding the pieces apart gives the same ids; they are
    then encoded in parallel."""
    out, start, n = [], 0, len(text)
    while start < n:
        p = start + _CHUNK
        while True:
            p = text.find("\n", p)
            if p < 0 or p + 1 >= n:
                out.append(text[start:])
                return out
            c = text[p + 1]
            if not text[p - 1].isspace() and ("a" <= c <= "z" or "A" <= c <= "Z"):
                out.append(text[start:p + 1])
                start = p + 1
                break
            p += 1
    return out


def _build_hf(kind: str, tokens: list[str], scores: Optional[np.ndarray], merges: Optional[list[str]],
              pre: Optional[_Pre], path: str):
    from tokenizers import Regex, Tokenizer as HFTokenizer, pre_tokenizers
    from tokenizers.models import BPE

    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise SourceError("the vocabulary has duplicate token texts", path)
    if kind == "spm":
        pairs = _spm_merges(tokens, scores if scores is not None else np.zeros(len(tokens), np.float32))
        model = BPE(vocab=vocab, merges=pairs, byte_fallback=True, fuse_unk=False)
        hf = HFTokenizer(model)
        return hf
    pairs = []
    for m in merges or []:
        p = m.find(" ", 1)
        a, b = (m[:p], m[p + 1:]) if p >= 0 else ("", "")
        if not (a in vocab and b in vocab and a + b in vocab):
            # llama.cpp would still merge and then emit the bytes; tokenizers' BPE cannot express that
            raise UnsupportedError(f"the BPE merge {m!r} does not join two tokens into a token; the studio's "
                                   "tokenizer cannot reproduce llama.cpp on it", path or None)
        pairs.append((a, b))
    model = BPE(vocab=vocab, merges=pairs, byte_fallback=kind == "bpe-raw", ignore_merges=pre.ignore_merges,
                fuse_unk=False)
    hf = HFTokenizer(model)
    steps = [pre_tokenizers.Split(Regex(_as_llama_cpp(r)), behavior="isolated") for r in pre.regexes]
    if kind == "bpe":
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    hf.pre_tokenizer = pre_tokenizers.Sequence(steps)
    return hf


def tokenizer_from_metadata(md: dict[str, Any], path: str = "") -> Tokenizer:
    """A :class:`Tokenizer` from GGUF key/values (``tokenizer.ggml.*``)."""
    model = md.get("tokenizer.ggml.model")
    if model is None:
        raise SourceError("no tokenizer in the metadata (tokenizer.ggml.model)", path or None)
    tokens = md.get("tokenizer.ggml.tokens")
    if tokens is None or len(tokens) == 0:
        raise SourceError("no token list in the metadata (tokenizer.ggml.tokens)", path or None)
    tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
    types = md.get("tokenizer.ggml.token_type")
    scores = md.get("tokenizer.ggml.scores")
    scores = None if scores is None else np.asarray(scores, dtype=np.float32)
    pre_name = md.get("tokenizer.ggml.pre") or ""
    escape, byte_encode, add_space_prefix = False, True, False
    if model == "llama":
        kind, pre, add_bos, add_eos, bos, eos = "spm", None, True, False, 1, 2
        pre_name = ""
        add_space_prefix, escape = True, True
    elif model in ("gpt2", "gemma4"):
        if model == "gemma4":
            pre_name = "gemma4"
        bos = eos = 11 if model == "gpt2" else -1
        add_bos, add_eos = False, False
        if pre_name in _SPM_STYLE_BPE:
            kind, pre, escape, byte_encode = "bpe-raw", _pre(_NEWLINES), True, False
        else:
            pre = PRE_TOKENIZERS.get(pre_name or "default")
            if pre is None:
                raise UnsupportedError(f"the pre-tokenizer '{pre_name}' (tokenizer.ggml.pre) is not supported "
                                       "by the studio's tokenizer", path or None)
            kind = "bpe"
            if pre.add_bos is not None:
                add_bos = pre.add_bos
        if "tokenizer.ggml.merges" not in md:
            raise SourceError("the BPE vocabulary has no merges (tokenizer.ggml.merges)", path or None)
    else:
        raise UnsupportedError(f"the '{model}' vocabulary (tokenizer.ggml.model) is not supported by the "
                               "studio's tokenizer (only llama/SentencePiece and gpt2/BPE)", path or None)
    n = len(tokens)
    add_space_prefix = bool(md.get("tokenizer.ggml.add_space_prefix", add_space_prefix))
    bos = int(md.get("tokenizer.ggml.bos_token_id", bos))
    eos = int(md.get("tokenizer.ggml.eos_token_id", eos))
    bos = bos if 0 <= bos < n else -1
    eos = eos if 0 <= eos < n else -1
    if pre_name in ("chatglm-bpe", "glm4", "glm5") and "tokenizer.ggml.bos_token_id" not in md:
        bos = -1
    add_bos = bool(md.get("tokenizer.ggml.add_bos_token", add_bos))
    add_eos = bool(md.get("tokenizer.ggml.add_eos_token", add_eos))
    if pre_name in ("gemma4", "granite-embed-multi-311m"):
        add_bos = True                                    # llama.cpp's Gemma 4 override
    attrs = _token_attrs(tokens, types, md, pre_name)
    hf = _build_hf(kind, tokens, scores, md.get("tokenizer.ggml.merges"), pre, path)
    special = [i for i in range(n) if attrs[i] & (A_CONTROL | A_USER_DEFINED | A_UNKNOWN)]
    special.sort(key=lambda i: -len(tokens[i].encode("utf-8")))
    # SentencePiece merges run over a whole fragment; cutting at a newline is safe only when no token
    # joins a newline to anything else
    can_cut = kind != "spm" or not any(len(t) > 1 and "\n" in t for t in tokens)
    return Tokenizer(kind="spm" if kind == "spm" else "bpe", pre=pre_name, tokens=tokens, attrs=attrs,
                     bos_id=bos, eos_id=eos, add_bos=add_bos, add_eos=add_eos, add_space_prefix=add_space_prefix,
                     escape_whitespaces=escape, byte_encode=byte_encode, _hf=hf, _special=special,
                     _can_cut=can_cut)


def load_tokenizer(source_or_path: Any) -> Tokenizer:
    """The tokenizer of a model: a GGUF file, a Hugging Face folder (as the GGUF it converts to) or an
    already opened :class:`core.sources.ModelSource`."""
    if isinstance(source_or_path, (str, os.PathLike)):
        from ..models import open_model
        src = open_model(source_or_path)
        try:
            if getattr(src, "note", "") and "tokenizer.ggml.model" not in src.metadata:
                raise SourceError(f"no tokenizer: {src.note}", src.path)
            return tokenizer_from_metadata(src.metadata, src.path)
        finally:
            close = getattr(src, "close", None)
            if close is not None:
                close()
    return tokenizer_from_metadata(source_or_path.metadata, getattr(source_or_path, "path", ""))


__all__ = ["Tokenizer", "load_tokenizer", "tokenizer_from_metadata", "PRE_TOKENIZERS"]
