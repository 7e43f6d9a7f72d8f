"""Q1_0 (type 41) and Q2_0 (type 42, which core._gguf_compat adds to gguf-py 0.19.0's enums): bytes
identical to llama.cpp's C quantizer, block by block; decoding identical to llama.cpp's
dequantize_row_q1_0 / _q2_0 (gguf-py has no decoder for either)."""
from __future__ import annotations

import ctypes
import importlib.util
import os
import pickle

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, LlamaFileType
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from gguf import quants as gq

from core.kernels.lowbit import KERNELS
from core.qtypes import KERNEL_FAMILIES, KERNEL_FAMILY
from tests.refs.ggml import ggml_base
from tests.refs.ggml import quantize as ggml_quantize
from tests.refs.ggml_dequant import dequantize as c_dequantize
from tests.refs.ggml_dequant import row_size
from tests.refs.tree import llama_cpp_tree

from . import assert_blocks_equal, assert_floats_identical, heavy_rows, imatrix_for, smollm2_gguf
from .test_kquants import heavy_imatrix
from .test_ternary import DATA
from .test_ternary import run_quantize as tq_quantize

# name -> (ggml type id, weights per block, bytes per block)
TYPES = {"Q1_0": (41, 128, 18), "Q2_0": (42, 64, 18)}
ALL_KERNELS = {int(k): v for k, v in KERNELS.items()}


def run_quantize(name: str, x: np.ndarray, qw: np.ndarray | None = None) -> np.ndarray:
    tid, bs, ts = TYPES[name]
    out = np.full((x.shape[0], x.shape[1] // bs * ts), 0xAA, dtype=np.uint8)
    ALL_KERNELS[tid][0](np.ascontiguousarray(x), np.zeros(0, np.float32) if qw is None else qw, out)
    return out


def run_dequantize(name: str, q: np.ndarray, n: int) -> np.ndarray:
    out = np.full((q.shape[0], n), np.float32(7.0), dtype=np.float32)
    ALL_KERNELS[TYPES[name][0]][1](np.ascontiguousarray(q), out)
    return out


def q1_tie_rows(rows: int = 24, n: int = 2560) -> np.ndarray:
    """Q1_0 blocks whose sequential float32 sum of |x| divided by 128 falls exactly halfway
    between two fp16 values: a sum in any other order (a last-bit difference) rounds the
    stored scale to the other neighbour about half the time, so these catch order changes
    that ordinary data hides under fp16's rounding."""
    rng = np.random.default_rng(31)
    x = rng.standard_normal((rows, n)).astype(np.float32)
    blocks = x.reshape(-1, 128)
    for blk in blocks:
        s = np.float32(0.0)
        for v in blk[:127]:
            s = np.float32(s + np.abs(v))
        lo = np.float16((s + np.float32(1.0)) / np.float32(128.0))
        if np.float32(lo) * 128 < s + 1:
            lo = np.nextafter(lo, np.float16(np.inf))
        hi = np.nextafter(lo, np.float16(np.inf))
        target = (np.float32(lo) + np.float32(hi)) / np.float32(2.0) * np.float32(128.0)
        last = np.float32(target - s)
        assert np.float32(s + last) == target
        blk[127] = last if rng.random() < 0.5 else -last
    return x


def test_q1_0_sum_order():
    """Scales on fp16 rounding ties: byte-identical only if every block sums in C order."""
    x = q1_tie_rows()
    assert_blocks_equal(run_quantize("Q1_0", x), ggml_quantize(41, x), 18, "Q1_0 tie sums vs llama.cpp")


def test_tables():
    """Both types under their enum members, registered as the lowbit family; ids and block sizes
    as llama.cpp's ggml (ggml_type_name, ggml_row_size)."""
    lib = ggml_base()
    lib.ggml_type_name.restype = ctypes.c_char_p
    lib.ggml_type_name.argtypes = [ctypes.c_int]
    assert set(KERNELS) == set(KERNEL_FAMILIES["lowbit"]) == {T.Q1_0, T.Q2_0}
    for name, (tid, bs, ts) in TYPES.items():
        assert T[name] == T(tid) == tid and lib.ggml_type_name(tid).decode() == name.lower()
        assert GGML_QUANT_SIZES[T[name]] == (bs, ts) and row_size(tid, 4 * bs) == 4 * ts


def _vendored_gguf_constants():
    """llama.cpp's own gguf-py constants (the pinned source tree), loaded apart from the installed gguf."""
    spec = importlib.util.spec_from_file_location(
        "llama_cpp_gguf_constants", os.path.join(llama_cpp_tree(), "gguf-py", "gguf", "constants.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gguf_enums_completed_as_llama_cpp_has_them():
    """core._gguf_compat gives the installed gguf-py every type and file type llama.cpp's gguf-py names,
    with the same values, and the block sizes of every type Quant Studio writes; calling it again
    changes nothing, and the added members behave as declared ones (lookup, order, pickling)."""
    from core import _gguf_compat

    ref = _vendored_gguf_constants()
    for ours, theirs in ((T, ref.GGMLQuantizationType), (LlamaFileType, ref.LlamaFileType)):
        assert {n: int(v) for n, v in theirs.__members__.items()}.items() <= \
            {n: int(v) for n, v in ours.__members__.items()}.items()
        assert [int(v) for v in ours] == sorted(int(v) for v in ours)
    for t in KERNEL_FAMILY:
        assert GGML_QUANT_SIZES[t] == ref.GGML_QUANT_SIZES[ref.GGMLQuantizationType(int(t))], t.name
    before = (list(T), list(LlamaFileType), dict(GGML_QUANT_SIZES))
    _gguf_compat.complete_gguf_enums()
    assert (list(T), list(LlamaFileType), dict(GGML_QUANT_SIZES)) == before
    assert LlamaFileType(41) is LlamaFileType["MOSTLY_Q2_0"] is LlamaFileType.MOSTLY_Q2_0
    assert pickle.loads(pickle.dumps(T.Q2_0)) is T.Q2_0 and isinstance(T.Q2_0, T)


@pytest.mark.parametrize("name", list(TYPES))
@pytest.mark.parametrize("data", list(DATA))
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_matches_llama_cpp(name, data):
    x = DATA[data]()
    tid, _, ts = TYPES[name]
    ours = run_quantize(name, x)
    assert_blocks_equal(ours, ggml_quantize(tid, x), ts, f"{name} {data} vs llama.cpp")
    assert_floats_identical(run_dequantize(name, ours, x.shape[1]),
                            c_dequantize(name.lower(), ours, x.shape[1]), f"{name} {data} dequantize vs llama.cpp")


@pytest.mark.parametrize("name", list(TYPES))
@pytest.mark.parametrize("data", list(DATA))
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_importance_weights_match_llama_cpp(name, data):
    """With an imatrix llama.cpp runs quantize_row_q*_0_ref row by row and never reads the
    weights: the bytes equal llama.cpp's with the imatrix, and ours without."""
    x = DATA[data]()
    tid, _, ts = TYPES[name]
    for im in (heavy_imatrix(x.shape[1]), imatrix_for(x.shape[1]), np.zeros(x.shape[1], np.float32)):
        ours = run_quantize(name, x, im)
        assert_blocks_equal(ours, ggml_quantize(tid, x, im), ts, f"{name} {data} imatrix vs llama.cpp")
        assert np.array_equal(ours, run_quantize(name, x))


@pytest.mark.parametrize("name", list(TYPES))
def test_dequantize_arbitrary_blocks(name):
    """Random block bytes (any fp16 scale: subnormal, infinite, NaN) decode as llama.cpp."""
    tid, bs, ts = TYPES[name]
    rng = np.random.default_rng(7)
    q = rng.integers(0, 256, size=(64, 5 * ts), dtype=np.uint8)
    q[0, :2] = (0x00, 0x7C)  # +inf
    q[1, :2] = (0x00, 0xFC)  # -inf
    q[2, :2] = (0x01, 0x7E)  # NaN
    q[3, :2] = (0x01, 0x00)  # smallest subnormal
    q[4, :2] = (0x00, 0x80)  # -0
    ours = run_dequantize(name, q, 5 * bs)
    assert_floats_identical(ours, c_dequantize(name.lower(), q, 5 * bs), f"{name} random blocks vs llama.cpp")


@pytest.mark.parametrize("name", list(TYPES))
def test_row_chunks_give_the_same_bytes(name):
    """Rows quantized in uneven chunks (as the threads split them) give the same bytes: Q1_0's
    blocks are summed in lanes across rows, so this checks the lanes' edges too."""
    x = heavy_rows(seed=8, rows=37, n=768)
    whole = run_quantize(name, x)
    for a, b in ((0, 1), (1, 4), (4, 13), (13, 37)):
        assert np.array_equal(run_quantize(name, x[a:b]), whole[a:b])
    deq = run_dequantize(name, whole, x.shape[1])
    assert np.array_equal(run_dequantize(name, whole[5:9], x.shape[1]), deq[5:9])


def test_round_trip_values():
    """What each type keeps: Q1_0 the signs with the mean |x| as magnitude; Q2_0 the grid
    {-d, 0, d, 2d} (2d never written) with d = max |x|, the nearest point to each weight."""
    x = heavy_rows(seed=12, rows=32, n=1024)
    y1 = run_dequantize("Q1_0", run_quantize("Q1_0", x), x.shape[1])
    assert np.array_equal(np.signbit(y1), x < 0)
    mean_abs = np.abs(x.reshape(-1, 128).astype(np.float64)).mean(axis=1)
    assert np.allclose(np.abs(y1.reshape(-1, 128))[:, 0], mean_abs, rtol=1e-3)
    y2 = run_dequantize("Q2_0", run_quantize("Q2_0", x), x.shape[1]).reshape(-1, 64)
    d = np.abs(y2).max(axis=1, keepdims=True)
    amax = np.abs(x.reshape(-1, 64)).max(axis=1, keepdims=True)
    assert np.allclose(d, amax, rtol=1e-3)
    assert np.all(np.isin(np.round(y2 / d), [-1.0, 0.0, 1.0]))
    assert np.all(np.abs(y2 - x.reshape(-1, 64)) <= 0.5 * d * (1 + 1e-3))


def test_real_weights_smollm2():
    """SmolLM2-135M weights (decoded from the shipped Q4_1 file) in all four types, vs llama.cpp."""
    reader = GGUFReader(smollm2_gguf())
    t = {t.name: t for t in reader.tensors}["blk.0.ffn_down.weight"]
    x = np.ascontiguousarray(gq.dequantize(np.asarray(t.data)[:96], T.Q4_1), dtype=np.float32)
    assert x.shape[1] % 256 == 0
    for name, (tid, _, ts) in TYPES.items():
        assert_blocks_equal(run_quantize(name, x), ggml_quantize(tid, x), ts, f"SmolLM2 {name} vs llama.cpp")
    for name in ("TQ1_0", "TQ2_0"):
        assert_blocks_equal(tq_quantize(name, x), ggml_quantize(T[name], x), 54 if name == "TQ1_0" else 66,
                            f"SmolLM2 {name} vs llama.cpp")
