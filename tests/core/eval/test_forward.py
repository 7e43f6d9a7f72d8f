"""The studio's float32 forward pass gives llama.cpp's logits: every supported architecture (synthetic
checkpoints, read as the HF folder through the converter and as the converted F32 GGUF), and the demo
model (its Q4_1 file, and an F32 copy). Plus the hooks, the weight override, progress and cancel.

llama.cpp runs with an F32 KV cache and no flash attention, so that its attention is float32 as ours
(the default F16 cache rounds K and V, and Q with them, to half precision)."""

import numpy as np
import pytest

from core.errors import Cancelled, QuantStudioError, UnsupportedError
from core.eval.arch import hparams_from
from core.eval.forward import Forward
from core.models import open_model
from core.progress import CancelToken
from tests.core.convert.hf_fixtures import quantize_hf, synthetic_checkpoint

ARCHS = ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
         "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM"]
N_TOK = 96          # past the synthetic Gemma checkpoints' sliding window of 64
TOL = 1e-3          # max |ours - llama.cpp| / max |llama.cpp|


def llama_cpp_logits(path: str, tokens, n_ctx: int = 128) -> np.ndarray:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                          n_threads=2, verbose=False, flash_attn=False,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    try:
        llm.eval(list(map(int, tokens)))
        return np.array(llm.scores[: len(tokens)], dtype=np.float32)
    finally:
        llm.close()


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{hf_arch: (folder, F32 gguf path)} built once for the module."""
    out = {}
    root = tmp_path_factory.mktemp("fwd")
    for i, arch in enumerate(ARCHS):
        folder = str(root / arch)
        synthetic_checkpoint(folder, arch, seed=100 + i, dtype="F32")
        gguf = str(root / f"{arch}.gguf")
        quantize_hf(folder, gguf, "F32", threads=2)
        out[arch] = (folder, gguf)
    return out


def _tokens(n_vocab: int, n: int = N_TOK, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, n_vocab, size=n).astype(np.int32)


@pytest.mark.parametrize("hf_arch", ARCHS)
def test_logits_match_llama_cpp(hf_arch, checkpoints):
    folder, gguf = checkpoints[hf_arch]
    src = open_model(gguf)
    toks = _tokens(Forward(src).hp.n_vocab, seed=ARCHS.index(hf_arch))
    want = llama_cpp_logits(gguf, toks)
    got_gguf = Forward(src, threads=2).logits(toks)[0]
    got_hf = Forward(open_model(folder), threads=2).logits(toks)[0]
    d_gguf, d_hf = rel_diff(got_gguf, want), rel_diff(got_hf, want)
    print(f"{hf_arch}: gguf {d_gguf:.2e} hf {d_hf:.2e}")
    assert d_gguf <= TOL and d_hf <= TOL, (d_gguf, d_hf)


def test_sliding_window_matters(checkpoints):
    """The Gemma2 check above is not vacuous: without its window, the late positions change."""
    _, gguf = checkpoints["Gemma2ForCausalLM"]
    src = open_model(gguf)
    fw = Forward(src)
    toks = _tokens(fw.hp.n_vocab)
    assert fw.hp.n_swa == 64 and fw.hp.swa_layers[0] and not fw.hp.swa_layers[1] and N_TOK > 64
    a = fw.logits(toks)[0]
    import dataclasses
    fw.hp = dataclasses.replace(fw.hp, n_swa=0)
    b = fw.logits(toks)[0]
    assert np.array_equal(a[:64], b[:64]) and not np.allclose(a[64:], b[64:])


def test_batch_equals_single_sequences(checkpoints):
    _, gguf = checkpoints["Qwen2ForCausalLM"]
    fw = Forward(open_model(gguf))
    seqs = [_tokens(fw.hp.n_vocab, 40, seed=s) for s in range(3)]
    batch = fw.logits(np.stack(seqs))
    ragged = fw.logits([seqs[0], seqs[1][:17]])
    for s, lg in zip(seqs, batch):
        np.testing.assert_allclose(lg, fw.logits(s)[0], rtol=0, atol=1e-4)
    np.testing.assert_allclose(ragged[1], fw.logits(seqs[1][:17])[0], rtol=0, atol=1e-4)


def test_hooks_overrides_progress_cancel(checkpoints):
    _, gguf = checkpoints["Phi3ForCausalLM"]
    src = open_model(gguf)
    toks = _tokens(Forward(src).hp.n_vocab, 24)
    seen: dict[str, tuple] = {}
    events = []
    fw = Forward(src, on_linear_input=lambda n, x: seen.setdefault(n, x.shape))
    base = fw.logits(toks, progress=events.append)[0]
    assert seen == {**{f"blk.{i}.{t}.weight": s for i in range(2) for t, s in
                       (("attn_qkv", (24, 64)), ("attn_output", (24, 64)), ("ffn_up", (24, 64)),
                        ("ffn_down", (24, 128)))}, "output.weight": (24, 64)}
    assert [e.done for e in events] == [1, 2, 3, 4] and events[-1].total == 4
    assert events[-1].item_total == 24

    # dict override: the same tensors give the same logits; a changed one changes them
    same = Forward(src, weights={"blk.1.ffn_down.weight": src.read("blk.1.ffn_down.weight")}).logits(toks)[0]
    assert np.array_equal(same, base)
    calls = []

    def zero_down(name, w):
        calls.append(name)
        return np.zeros_like(w) if name == "blk.1.ffn_down.weight" else w

    changed = Forward(src, weights=zero_down).logits(toks)[0]
    assert not np.allclose(changed, base) and "blk.1.ffn_down.weight" in calls

    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(Cancelled):
        Forward(src).logits(toks, cancel=cancel)
    with pytest.raises(QuantStudioError):
        Forward(src).logits([10 ** 6])


def test_override_reproduces_a_quantized_file(checkpoints, tmp_path):
    """An F32 model run with a Q8_0 file's dequantized weights is the Q8_0 file's forward pass."""
    folder, gguf = checkpoints["LlamaForCausalLM"]
    q8 = str(tmp_path / "q8.gguf")
    quantize_hf(folder, q8, "Q8_0", threads=2)
    qsrc, fsrc = open_model(q8), open_model(gguf)
    toks = _tokens(Forward(qsrc).hp.n_vocab, 32)
    want = Forward(qsrc).logits(toks)[0]
    got = Forward(fsrc, weights=lambda name, w: qsrc.read(name)).logits(toks)[0]
    assert np.array_equal(got, want)


def test_unsupported_architecture():
    with pytest.raises(UnsupportedError):
        hparams_from({"general.architecture": "mamba"}, {})


# -- the demo model (SmolLM2-135M, Q4_1) ------------------------------------------------------------
DEMO_TOKENS = 128


@pytest.fixture(scope="module")
def demo_tokens(demo_path):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=demo_path, n_ctx=256, vocab_only=True, verbose=False)
    text = ("The quick brown fox jumps over the lazy dog. Quantization maps each block of weights to a "
            "few bits and a scale; the error it makes shows in the model's next-token distribution. ") * 4
    toks = llm.tokenize(text.encode(), add_bos=True)[:DEMO_TOKENS]
    assert len(toks) == DEMO_TOKENS
    return np.array(toks, np.int32)


def test_demo_q4_1_matches_llama_cpp(demo_path, demo_tokens):
    """llama.cpp quantizes activations to Q8_1 inside Q4_1 matmuls (and Q8_0 for the Q8_0 output), we
    use them in float32: a looser bound (measured 3.7e-02, which is exactly llama.cpp's own distance
    between this file and its F32 copy, see below), and the top token must mostly agree (0.977)."""
    want = llama_cpp_logits(demo_path, demo_tokens, n_ctx=256)
    got = Forward(open_model(demo_path), threads=2).logits(demo_tokens)[0]
    d = rel_diff(got, want)
    agree = float((got.argmax(1) == want.argmax(1)).mean())
    print(f"demo Q4_1: max rel diff {d:.2e}, top-1 agreement {agree:.3f}")
    assert d <= 0.05 and agree >= 0.9


def test_demo_f32_matches_llama_cpp(demo_path, demo_tokens, tmp_path):
    from core.job import run_plan
    from core.plan import pure_plan

    f32 = str(tmp_path / "demo-f32.gguf")
    src = open_model(demo_path)
    run_plan(src, pure_plan(src.tensors, "F32", src.architecture), f32, threads=2)
    want = llama_cpp_logits(f32, demo_tokens, n_ctx=256)
    got = Forward(open_model(f32), threads=2).logits(demo_tokens)[0]
    same = Forward(src, threads=2).logits(demo_tokens)[0]      # F32 copy holds the same dequantized values
    d = rel_diff(got, want)
    print(f"demo F32 copy: max rel diff {d:.2e}")
    assert np.array_equal(got, same)
    assert d <= TOL
    # the Q4_1 gap is llama.cpp's own: its Q4_1 run is as far from its run of the F32 copy (same weight
    # values, float32 activations) as ours is (measured 3.68e-02 both)
    want_q = llama_cpp_logits(demo_path, demo_tokens, n_ctx=256)
    ours_q, theirs_q = rel_diff(same, want_q), rel_diff(want, want_q)
    print(f"demo Q4_1 vs llama.cpp Q4_1: ours {ours_q:.3e}, llama.cpp F32 copy {theirs_q:.3e}")
    assert abs(ours_q - theirs_q) <= TOL


@pytest.mark.parametrize("neox", [True, False])
def test_rope_kernel_partial_rotary(neox):
    """RoPE against the formula, rotating only the first n_rot of 24 dims (Phi-style partial rotary);
    the rest pass through. NEOX pairs (i, i + n_rot/2), NORM pairs (2i, 2i + 1)."""
    from core.eval import kernels as K

    n_rot, hd, base = 16, 24, 10000.0
    x = np.random.default_rng(1).standard_normal((5, 2, hd)).astype(np.float32)
    pos = np.arange(5, dtype=np.int32)
    cache = K.rope_cache(5, n_rot, base, 1.0, np.zeros(0, np.float32), 0.0, 1.0, 0.0, 0.0)
    got = x.copy()
    K.rope_(got, pos, cache, n_rot, neox)
    want = x.astype(np.float64).copy()
    for p in range(5):
        for i in range(n_rot // 2):
            th = p * base ** (-2.0 * i / n_rot)
            a, b = (i, i + n_rot // 2) if neox else (2 * i, 2 * i + 1)
            x0, x1 = x[p, :, a].astype(np.float64), x[p, :, b].astype(np.float64)
            want[p, :, a] = x0 * np.cos(th) - x1 * np.sin(th)
            want[p, :, b] = x0 * np.sin(th) + x1 * np.cos(th)
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert np.array_equal(got[..., n_rot:], x[..., n_rot:])


def test_bad_tokens(checkpoints):
    fw = Forward(open_model(checkpoints["Qwen3ForCausalLM"][1]))
    for bad in ([], [[]], np.zeros((1, 0), np.int32), [-1]):
        with pytest.raises(QuantStudioError):
            fw.logits(bad)


def test_streamed_embedding_and_output_blocks(checkpoints, monkeypatch):
    """With a tiny budget, token_embd is read in row blocks (blocks without any of the tokens skipped)
    and the output matrix in vocabulary blocks (half the budget) per sequence: same logits as holding them whole."""
    import core.eval.forward as fwd

    src = open_model(checkpoints["LlamaForCausalLM"][1])
    toks = [_tokens(Forward(src).hp.n_vocab, 20, seed=5), np.array([3, 4, 5], np.int32)]
    whole = Forward(src).logits(toks)
    monkeypatch.setattr(fwd, "_MIN_OUTPUT_BUDGET", 4096)
    reads = []
    orig = src.read_rows
    monkeypatch.setattr(src, "read_rows", lambda n, a, b: (reads.append((n, a, b)), orig(n, a, b))[1])
    streamed = Forward(src).logits(toks)
    for a, b in zip(whole, streamed):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())
    embd = [r for r in reads if r[0] == "token_embd.weight"]
    outs = [r for r in reads if r[0] == "output.weight"]
    assert len(embd) == len(np.unique(np.concatenate(toks)))        # 1-row blocks: only the tokens'
    assert len(outs) == 2 * 7                                        # 7 vocabulary blocks per sequence


def test_head_positions_and_grouped_output_blocks(checkpoints, monkeypatch):
    """``head(positions=...)`` gives those rows of the full logits (the evaluation asks for the scored rows
    only, as llama-perplexity does); a streamed output matrix is read once for as many sequences as fit."""
    import core.eval.forward as fwd

    src = open_model(checkpoints["LlamaForCausalLM"][1])
    toks = [_tokens(Forward(src).hp.n_vocab, 20, seed=5), np.array([3, 4, 5], np.int32)]
    full = Forward(src).logits(toks)
    monkeypatch.setattr(fwd, "_MIN_OUTPUT_BUDGET", 80000)          # the output matrix (102400 bytes) streams
    reads = []
    orig = src.read_rows
    monkeypatch.setattr(src, "read_rows", lambda n, a, b: (reads.append((n, a, b)), orig(n, a, b))[1])
    fw = Forward(src)
    b = fw.embed(toks)
    for il in range(fw.hp.n_layer):
        fw.run_layer(il, b)
    got = list(fw.head(b, positions=slice(1, 6)))
    assert [i for i, _ in got] == [0, 1] and [lg.shape[0] for _, lg in got] == [5, 2]
    for (_, lg), f in zip(got, full):
        np.testing.assert_allclose(lg, f[1:6], rtol=0, atol=1e-5 * np.abs(f).max())
    outs = [r for r in reads if r[0] == "output.weight"]
    assert len(outs) == 3                    # one pass for both sequences: 3 blocks of 156 rows (40000 bytes)
