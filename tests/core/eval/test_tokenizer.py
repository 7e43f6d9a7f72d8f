"""core.eval.tokenizer against llama.cpp: its own vocabulary fixtures (models/ggml-vocab-*.gguf with the
expected ids of test-tokenizer-0), and llama-cpp-python's tokenizer on the same vocabularies, on the demo
model and on converted Hugging Face checkpoints, over prose, code, CJK and awkward Unicode."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest

import core.eval.tokenizer as tokmod
from core.errors import QuantStudioError, SourceError, UnsupportedError
from core.eval.tokenizer import load_tokenizer
from tests.refs.tree import vocab_fixture

# every vocabulary fixture of the pinned llama.cpp tree the studio supports (bert-bge: WPM, nomic-bert-moe:
# UGM are not; aquila, baichuan, gpt-neox have no .inp/.out)
FIXTURES = ["llama-spm", "phi-3", "llama-bpe", "qwen2", "qwen35", "gpt-2", "deepseek-coder", "deepseek-llm",
            "falcon", "mpt", "refact", "command-r", "starcoder", "gemma-4"]

PIECES = [
    "Hello world", " the quick brown fox", "It's", "we'll", "DON'T", "  ", "\t", "\n", "\r\n", "\n\n\n", "   \n  ",
    "def f(x):\n    return x**2 + 1  # comment\n", "for (int i = 0; i < 10; ++i) { a[i] = b[i]; }",
    "1234567890", "3.14159", "１２３", "你好，世界！", "我们今天去公园。", "こんにちは", "カタカナ", "안녕하세요",
    "Привет мир", "Ελληνικά", "مرحبا", "हिन्दी", "ภาษาไทย",
    "😀", "👨‍👩‍👧‍👦", "🇫🇷", "❤️",                                   # emoji, ZWJ sequence, flag, variation selector
    "e\u0301", "a\u0308\u0323",                                       # combining marks
    "\u200d", "\u200b", "\ufeff",                                     # zero-width joiner / space, BOM
    "\u00a0", "\u3000", "\u2028", "\u0085", "a\u2003b", "\u3000//", "\x1c",   # non-ASCII and odd whitespace
    "½", "²", "Ⅻ", "…", "—", "«»", "''", "'s", "'S", "\"", "$", "€", "ﬁ", "Å", "ß", "İ", "ǅ",
    "\U0001d400", "\U00010400", "\ue000", "\x7f", "\x01", "~~~", "===", "-->", "///", "▁", "<0x0A>",
    "<s>", "</s>", "<|endoftext|>", "<|im_start|>", "<unk>",
    "a\nb", "x\nY", ".\nZ", " \nq", "\n\nw", "1\nk", "é\nk",          # newline boundaries (chunking)
    # Unicode 16 letters, digits, marks, symbols: unassigned for llama.cpp (and split accordingly)
    "\U00013c57", "\U00016130", "\U00010d40\U00010d41", "x\u0897y", "\U0001fa89", "\U0001cc00", "\u1c89a",
]


def random_texts(seed, n: int) -> list[str]:
    rng = random.Random(seed)
    out = ["", " ", "Hello", " Hello", "\n", "   a   "]
    while len(out) < n:
        parts = []
        for _ in range(rng.randint(1, 12)):
            r = rng.random()
            if r < 0.8:
                parts.append(rng.choice(PIECES))
            elif r < 0.9:   # a random code point from the BMP or the SMP (no surrogates)
                parts.append(chr(rng.choice([rng.randint(0x20, 0x7e), rng.randint(0xa0, 0xd7ff),
                                             rng.randint(0xe000, 0xfffd), rng.randint(0x10000, 0x1f9ff)])))
            else:
                parts.append(" " * rng.randint(1, 5))
        out.append("".join(parts))
    return out


_TOKS: dict[str, tokmod.Tokenizer] = {}
_REFS: dict[str, object] = {}


@pytest.fixture(scope="module", autouse=True)
def _close_references():
    """llama-cpp-python's models are closed here, not by __del__ at interpreter exit (which fails)."""
    yield
    while _REFS:
        _REFS.popitem()[1].close()


def tok_of(path: str) -> tokmod.Tokenizer:
    if path not in _TOKS:
        _TOKS[path] = load_tokenizer(path)
    return _TOKS[path]


def ref_of(path: str):
    import llama_cpp

    if path not in _REFS:
        _REFS[path] = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    return _REFS[path]


def fixture_cases(name: str) -> list[tuple[str, list[int]]]:
    """The (text, ids) pairs, read as test-tokenizer-0.cpp's read_tests does."""
    p = vocab_fixture(name)
    with open(p + ".inp", encoding="utf-8", newline="") as f:
        raw = f.read()
    with open(p + ".out", encoding="utf-8", newline="") as f:
        out = f.read().splitlines()
    sep, inp, pos = "\n__ggml_vocab_test__\n", [], 0
    while pos < len(raw):
        nxt = raw.find(sep, pos)
        if nxt < 0:
            inp.append(raw[pos:])
            break
        inp.append(raw[pos:nxt])
        pos = nxt + len(sep)
    assert len(inp) == len(out) > 20, name
    return [(x, [int(v) for v in y.split()]) for x, y in zip(inp, out)]


def mismatches(tok, ref, texts, *, add_bos: bool, special: bool) -> list[str]:
    bad = []
    for x in texts:
        want = ref.tokenize(x.encode("utf-8"), add_bos=add_bos, special=special)
        got = tok.encode(x, add_bos=None if add_bos else False, parse_special=special)
        assert got.dtype == np.int32
        if got.tolist() != want:
            bad.append(f"{x!a}: llama.cpp {want[:16]} ours {got.tolist()[:16]}")
    return bad


# -- llama.cpp's own fixtures --------------------------------------------------------------------------
@pytest.mark.parametrize("name", FIXTURES)
def test_vocab_fixture_ids(name):
    """test-tokenizer-0's expected ids (add_special=false, parse_special=false) for every input."""
    tok = tok_of(vocab_fixture(name))
    cases = fixture_cases(name)
    bad = [f"{x!a}: want {want} got {tok.encode(x, add_bos=False).tolist()}"
           for x, want in cases if tok.encode(x, add_bos=False).tolist() != want]
    assert not bad, f"{len(bad)} of {len(cases)} differ, first: {bad[0]}"


@pytest.mark.parametrize("name", FIXTURES)
def test_matches_llama_cpp_on_random_text(name):
    """300 mixed texts, with and without BOS, then with special-token parsing and special token texts
    inserted (Phi-3's rstrip, Llama 3's reserved tokens, DeepSeek's 2400 user-defined tokens)."""
    path = vocab_fixture(name)
    tok, ref = tok_of(path), ref_of(path)
    texts = random_texts(name, 150)
    assert tok.bos_id == ref.token_bos() and tok.eos_id == ref.token_eos()
    assert tok.n_vocab == ref.n_vocab()
    assert tok.add_bos == ref._model.add_bos_token()
    bad = mismatches(tok, ref, texts, add_bos=False, special=False)
    bad += mismatches(tok, ref, texts[::2], add_bos=True, special=False)
    rng = random.Random(1)
    specials = [tok.tokens[i] for i in tok._special]
    with_special = []
    for x in texts[::2]:
        for _ in range(rng.randint(1, 3)):
            k = rng.randint(0, len(x))
            x = x[:k] + rng.choice(specials) + rng.choice(["", " ", "  \n", "\t"]) + x[k:]
        with_special.append(x)
    bad += mismatches(tok, ref, with_special, add_bos=True, special=True)
    bad += mismatches(tok, ref, with_special, add_bos=False, special=False)
    assert not bad, f"{len(bad)} differ, first: {bad[0]}"


@pytest.mark.parametrize("name", ["llama-spm", "gpt-2", "llama-bpe", "qwen2", "deepseek-llm", "falcon", "gemma-4"])
def test_cutting_long_text_keeps_ids(name, monkeypatch):
    """Long fragments are cut at newlines and encoded in parallel: with pieces of 3 characters (every
    allowed cut taken) the ids equal llama.cpp's."""
    path = vocab_fixture(name)
    tok, ref = tok_of(path), ref_of(path)
    monkeypatch.setattr(tokmod, "_CHUNK", 3)
    texts = ["\n".join(random_texts(f"{name}-cut-{k}", 16)[6:]) for k in range(25)]
    assert sum(len(tokmod._chunks(x)) > 1 for x in texts) > 20
    bad = mismatches(tok, ref, texts, add_bos=False, special=False)
    assert not bad, f"{len(bad)} differ, first: {bad[0]}"


def test_chunks_cover_text():
    text = "".join(random_texts("chunks", 400)) * 20
    pieces = tokmod._chunks(text)
    assert "".join(pieces) == text and len(pieces) > 3
    for a in pieces[:-1]:
        assert a.endswith("\n") and not a[-2].isspace()


@pytest.mark.parametrize("name", ["llama-spm", "phi-3", "llama-bpe", "qwen2", "gemma-4", "deepseek-coder"])
def test_decode_as_llama_cpp(name):
    """decode(ids) is llama_detokenize: the pieces of llama_token_to_piece, one prefixed space removed."""
    path = vocab_fixture(name)
    tok, ref = tok_of(path), ref_of(path)
    for x in random_texts(name + "-decode", 80):
        ids = tok.encode(x, add_bos=False)
        want = b"".join(ref.detokenize([int(i)]) for i in ids)
        if len(ids) and tok.add_space_prefix and want.startswith(b" "):
            want = want[1:]
        assert tok.decode(ids) == want.decode("utf-8", errors="replace"), x
        # no round trip for Phi-3 (spaces after its special tokens are stripped) or for a literal U+2581
        # in SentencePiece text (it is the escaped space)
        if name != "phi-3" and not (tok.escape_whitespaces and "\u2581" in x):
            assert tok.decode(ids) == x


def test_one_megabyte_is_exact():
    """1 MB of source code (cut into pieces encoded in parallel): the same ids as llama.cpp. The speed is
    bench/bench_tokenizer.py's to measure."""
    with open(os.path.join(os.path.dirname(tokmod.__file__), "tokenizer.py"), encoding="utf-8") as f:
        base = f.read()
    text = (base * (1_000_000 // len(base) + 1))[:1_000_000]
    for name in ("llama-spm", "qwen2"):
        path = vocab_fixture(name)
        tok, ref = tok_of(path), ref_of(path)
        assert tok.encode(text).tolist() == ref.tokenize(text.encode("utf-8"), add_bos=True, special=False), name


# -- models the studio opens ----------------------------------------------------------------------------
def test_demo_model(demo_path):
    tok, ref = tok_of(demo_path), ref_of(demo_path)
    assert (tok.kind, tok.pre) == ("bpe", "smollm")
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (ref.token_bos(), ref.token_eos(), ref._model.add_bos_token())
    texts = random_texts("demo", 120) + ["<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"]
    bad = mismatches(tok, ref, texts, add_bos=True, special=False)
    bad += mismatches(tok, ref, texts, add_bos=True, special=True)
    assert not bad, f"{len(bad)} differ, first: {bad[0]}"
    ids = tok.encode("<|im_start|>user", parse_special=True)
    assert ids[0] == tok.tokens.index("<|im_start|>")


HF_ARCHS = ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
            "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM"]


@pytest.mark.parametrize("hf_arch", HF_ARCHS)
def test_hf_folder_tokenizes_as_its_converted_gguf(hf_arch, tmp_path):
    """An HF folder's tokenizer gives the ids llama.cpp gives on the GGUF the studio converts it to."""
    from tests.core.convert.hf_fixtures import quantize_hf, synthetic_checkpoint

    folder = str(tmp_path / hf_arch)
    synthetic_checkpoint(folder, hf_arch, seed=HF_ARCHS.index(hf_arch))
    out = str(tmp_path / "out.gguf")
    quantize_hf(folder, out, "Q8_0", threads=2)
    tok = load_tokenizer(folder)
    ref = ref_of(out)
    spm = os.path.exists(os.path.join(folder, "tokenizer.model"))
    assert tok.kind == ("spm" if spm else "bpe")
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (ref.token_bos(), ref.token_eos(), ref._model.add_bos_token())
    texts = random_texts(hf_arch, 100) + ["<|im_start|>user\nhi<|im_end|>", "<s>x</s>", "<|user|>\n hi <|end|>"]
    bad = mismatches(tok, ref, texts, add_bos=True, special=False)
    bad += mismatches(tok, ref, texts, add_bos=False, special=True)
    assert not bad, f"{len(bad)} differ, first: {bad[0]}"


def test_opened_source_is_accepted(demo_path):
    from core.models import open_model

    src = open_model(demo_path)
    try:
        tok = load_tokenizer(src)
    finally:
        src.close()
    assert tok.encode("Hello world", add_bos=False).tolist() == tok_of(demo_path).encode("Hello world",
                                                                                         add_bos=False).tolist()


# -- errors ---------------------------------------------------------------------------------------------
def write_vocab_gguf(path: str, *, model: str | None, pre: str | None = None) -> str:
    """A vocabulary-only GGUF: gpt-2's tokens and merges (or none) with the given model and pre names."""
    import gguf

    src = tok_of(vocab_fixture("gpt-2"))
    w = gguf.GGUFWriter(path, "gpt2")
    if model is not None:
        w.add_tokenizer_model(model)
        if pre is not None:
            w.add_tokenizer_pre(pre)
        w.add_token_list(src.tokens)
        w.add_token_merges(["\u0120 t", "h e"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_unknown_pre_tokenizer_is_a_clear_error(tmp_path):
    p = write_vocab_gguf(str(tmp_path / "odd.gguf"), model="gpt2", pre="no-such-pre")
    with pytest.raises(UnsupportedError) as e:
        load_tokenizer(p)
    assert "no-such-pre" in str(e.value) and p in str(e.value) and "\n" not in str(e.value)


def test_unsupported_vocab_type_is_a_clear_error():
    p = vocab_fixture("bert-bge")
    with pytest.raises(UnsupportedError) as e:
        load_tokenizer(p)
    assert "bert" in str(e.value) and p in str(e.value)


def test_missing_tokenizer_is_a_source_error(tmp_path):
    p = write_vocab_gguf(str(tmp_path / "none.gguf"), model=None)
    with pytest.raises(SourceError) as e:
        load_tokenizer(p)
    assert isinstance(e.value, QuantStudioError) and p in str(e.value)


def test_hf_folder_that_cannot_convert_says_why(tmp_path):
    import json

    from tests.core.convert.hf_fixtures import synthetic_checkpoint

    folder = str(tmp_path / "odd")
    synthetic_checkpoint(folder, "LlamaForCausalLM")
    cfg_path = os.path.join(folder, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["architectures"] = ["NoSuchForCausalLM"]
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    with pytest.raises(SourceError) as e:
        load_tokenizer(folder)
    assert "NoSuchForCausalLM" in str(e.value) and folder in str(e.value) and "\n" not in str(e.value)


def test_missing_pre_uses_llama_cpp_default(tmp_path):
    """No tokenizer.ggml.pre: llama.cpp warns and uses its 'default' regexes; so do we."""
    p = write_vocab_gguf(str(tmp_path / "nopre.gguf"), model="gpt2")
    tok, ref = load_tokenizer(p), ref_of(p)
    assert tok.pre == ""
    bad = mismatches(tok, ref, random_texts("nopre", 40), add_bos=False, special=False)
    assert not bad, bad[0]
