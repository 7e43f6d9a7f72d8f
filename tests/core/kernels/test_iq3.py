"""IQ3_XXS and IQ3_S: bytes identical to llama.cpp's C quantizer, block by block; the tables
equal what iq3xs_init_impl builds; dequantize equal to gguf-py and llama.cpp."""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from gguf import quants as gq

from core.errors import PlanError
from core.kernels import Kernel, iq3
from core.kernels.iq3 import KERNELS
from core.qtypes import type_info
from tests.refs.ggml import ggml_base
from tests.refs.ggml import quantize as ggml_quantize

from . import (assert_blocks_equal, assert_floats_identical, heavy_rows, normal_rows,
               positive_rows, row_builder, smollm2_gguf)
from .test_kquants import heavy_imatrix, kquant_edge_rows, nonfinite_rows

TYPES = ["IQ3_XXS", "IQ3_S"]
QK_K = 256


def kernel(name: str) -> Kernel:
    return Kernel(type_info(name), *KERNELS[T[name]])


def iq3_edge_rows(n: int = 512) -> np.ndarray:
    """Sub-block corner cases of the IQ3 searches (each row is n // 32 sub-blocks)."""
    rng = np.random.default_rng(21)
    rows, row = row_builder(n)
    g = lambda scale=0.02: rng.standard_normal(n) * scale  # noqa: E731
    for z in (0, 3, 7):                        # one all-zero sub-block (IQ3_S: later ones move up)
        r = row(g()); r[32 * z:32 * z + 32] = 0.0
    r = row(g()); r[32:96] = -0.0; r[200:232] = 0.0     # two in a row, signed zeros
    r = row(g()); r[64:96] = 5e-9              # below IQ3_XXS's GROUP_MAX_EPS (1e-8)
    r = row(g()); r[64:96] = 2e-8
    r = row(0.0); r[::32] = 1.0                # one nonzero per sub-block
    r = row(0.0); r[3::32] = -1.0              # one negative: odd sign count
    row(-np.abs(g()))                          # all negative
    r = row(g()); r[::8] = -np.abs(r[::8]) - 0.01        # odd negatives in many groups of 8
    row(np.round(g(3.0)))                      # small integers: exact ties
    row(np.round(g(3.0)) * 0.25)
    r = row(g()); r[5::32] = 3.0               # one value dominates each sub-block
    row(np.abs(g()) + 1.0)                     # far from zero: high levels
    row(g(1e-20))                              # tiny: squares underflow
    row(g(1e8))                                # large, fourth powers still finite
    return np.stack(rows).astype(np.float32)


DATA = {
    "normal": lambda: normal_rows(rows=96, n=512),
    "heavy": lambda: heavy_rows(rows=96, n=1024),
    "positive": lambda: positive_rows(rows=32, n=256),
    "edge": kquant_edge_rows,
    "iq3_edge": iq3_edge_rows,
    "odd_rows": lambda: heavy_rows(seed=4, rows=37, n=768),
    "nonfinite": nonfinite_rows,
}


_ABORT_CHILD = r"""
import os, signal, sys
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from tests.refs.ggml import ggml_base, quantize
d = np.load(sys.argv[1])
x, im = d["x"], (d["im"] if d["im"].size else None)
ggml_base()
for r in range(x.shape[0]):
    pid = os.fork()
    if pid == 0:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        quantize(T[sys.argv[2]], x[r:r + 1], im)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    print(int(os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGABRT))
"""


def _c_aborts(name: str, x: np.ndarray, im, tmp_path) -> list[bool]:
    """For each row of x, whether llama.cpp's ggml_quantize_chunk aborts (GGML_ASSERT) on it: in a
    fresh interpreter (no threads) that forks one child per row."""
    path = os.path.join(tmp_path, "rows.npz")
    np.savez(path, x=x, im=np.zeros(0, np.float32) if im is None else im)
    env = dict(os.environ, GGML_NO_BACKTRACE="1")             # else ggml starts gdb
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    res = subprocess.run([sys.executable, "-c", _ABORT_CHILD, path, name], cwd=root, env=env,
                         capture_output=True, text=True, timeout=600, check=True)
    return [line == "1" for line in res.stdout.split()]


def _compare(name: str, x: np.ndarray, im, what: str, tmp_path) -> tuple[np.ndarray, int]:
    """Our bytes against llama.cpp's. Rows where ours raises (llama.cpp's GGML_ASSERT conditions)
    must be rows on which llama.cpp aborts; every other row must be identical. Returns our bytes
    (aborting rows zero) and the number of aborting rows."""
    k = kernel(name)
    try:
        ours = k.quantize(x, importance=im)
        bad_rows = []
    except PlanError:
        ours = np.zeros((x.shape[0], k.row_bytes(x.shape[1])), np.uint8)
        bad_rows = []
        for r in range(x.shape[0]):
            try:
                ours[r] = k.quantize(x[r:r + 1], importance=im)[0]
            except PlanError:
                bad_rows.append(r)
    if bad_rows:
        aborts = _c_aborts(name, x[bad_rows], im, tmp_path)
        assert all(aborts), f"{what}: ours raises on rows {bad_rows}, llama.cpp aborts on {aborts}"
    good = np.setdiff1d(np.arange(x.shape[0]), bad_rows)
    assert_blocks_equal(ours[good], ggml_quantize(T[name], x[good], im), k.type_size, what)
    return ours, len(bad_rows)


def _gguf_dequant(q: np.ndarray, name: str) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return gq.dequantize(q, T[name])


def _c_dequantize(name: str, q: np.ndarray, n: int) -> np.ndarray:
    fn = getattr(ggml_base(), "dequantize_row_" + name.lower())
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    q = np.ascontiguousarray(q)
    out = np.empty((q.shape[0], n), dtype=np.float32)
    fn(q.ctypes.data, out.ctypes.data, q.shape[0] * n)
    return out


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("data", list(DATA))
@pytest.mark.parametrize("with_im", [False, True], ids=["plain", "imatrix"])
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_matches_llama_cpp(name, data, with_im, tmp_path):
    x = DATA[data]()
    im = heavy_imatrix(x.shape[1]) if with_im else None
    ours, nbad = _compare(name, x, im, f"{name} {data} {'imatrix' if with_im else 'plain'} vs llama.cpp",
                          tmp_path)
    if data not in ("edge", "nonfinite"):
        assert nbad == 0
    elif data == "edge":
        assert nbad == 1                       # the 1e30 row: every distance is inf
    else:
        assert 1 <= nbad < x.shape[0]
    if data in ("normal", "heavy") and with_im:
        assert not np.array_equal(ours, kernel(name).quantize(x)), "importance weights had no effect"
    if nbad == 0:
        k = kernel(name)
        deq = k.dequantize(ours, x.shape[1])
        assert_floats_identical(deq, _gguf_dequant(ours, name), f"{name} {data} dequantize vs gguf-py")
        assert_floats_identical(deq, _c_dequantize(name, ours, x.shape[1]), f"{name} {data} dequantize vs C")


@pytest.mark.parametrize("name", TYPES)
def test_uniform_importance_weights(name, tmp_path):
    """All-ones and all-zero importance weights (zero: no trial scale is ever accepted)."""
    x = heavy_rows(seed=6, rows=32, n=512)
    for im in (np.ones(x.shape[1], np.float32), np.zeros(x.shape[1], np.float32)):
        _compare(name, x, im, f"{name} imatrix={im[0]} vs llama.cpp", tmp_path)


@pytest.mark.parametrize("name", TYPES)
def test_raises_where_llama_cpp_aborts(name, tmp_path):
    x = normal_rows(seed=3, rows=1, n=256)
    x[0, :] = np.nan
    with pytest.raises(PlanError, match="llama.cpp aborts"):
        kernel(name).quantize(x)
    assert _c_aborts(name, x, None, tmp_path) == [True]


@pytest.mark.parametrize("name", TYPES)
def test_dequantize_arbitrary_blocks(name):
    """Random block bytes (any fp16 scale, infinities and NaNs included) decode as gguf-py and llama.cpp."""
    k = kernel(name)
    rng = np.random.default_rng(7)
    q = rng.integers(0, 256, size=(48, 3 * k.type_size), dtype=np.uint8)
    ours = k.dequantize(q, 3 * QK_K)
    assert_floats_identical(ours, _gguf_dequant(q, name), f"{name} random blocks vs gguf-py")
    assert_floats_identical(ours, _c_dequantize(name, q, 3 * QK_K), f"{name} random blocks vs llama.cpp")


@pytest.mark.parametrize("name", TYPES)
def test_threads_give_the_same_bytes(name):
    x = heavy_rows(seed=8, rows=21, n=512)
    im = heavy_imatrix(x.shape[1])
    k = kernel(name)
    assert np.array_equal(k.quantize(x, threads=2, chunk_weights=3 * x.shape[1]), k.quantize(x, threads=1))
    assert np.array_equal(k.quantize(x, im, threads=2, chunk_weights=5 * x.shape[1]), k.quantize(x, im, threads=1))


def test_error_ordering_and_importance():
    """IQ3_S (more bits) beats IQ3_XXS, and importance weights lower the weighted error."""
    x = heavy_rows(seed=12, rows=48, n=1024)
    im = (np.random.default_rng(13).lognormal(0.0, 1.5, x.shape[1]) ** 2).astype(np.float32)
    rel = {}
    for name in TYPES:
        k = kernel(name)
        err = (k.dequantize(k.quantize(x), x.shape[1]) - x).astype(np.float64)
        erri = (k.dequantize(k.quantize(x, importance=im), x.shape[1]) - x).astype(np.float64)
        rel[name] = float(np.sqrt((err ** 2).mean() / np.mean(x.astype(np.float64) ** 2)))
        assert np.sum(im * erri ** 2) < np.sum(im * err ** 2), name
    assert rel["IQ3_S"] < rel["IQ3_XXS"] < 0.5, rel


def test_real_weights_smollm2(tmp_path):
    """SmolLM2-135M weights (decoded from the shipped Q4_1 file) re-quantized, with and without an imatrix."""
    reader = GGUFReader(smollm2_gguf())
    t = {t.name: t for t in reader.tensors}["blk.0.ffn_down.weight"]
    x = np.ascontiguousarray(_gguf_dequant(np.asarray(t.data)[:48], "Q4_1"), dtype=np.float32)
    assert x.shape[1] % QK_K == 0
    im = (np.random.default_rng(0).standard_normal((64, x.shape[1])) ** 2).mean(axis=0).astype(np.float32)
    for name in TYPES:
        for w in (None, im):
            _, nbad = _compare(name, x, w, f"SmolLM2 {name} imatrix={w is not None} vs llama.cpp", tmp_path)
            assert nbad == 0


# -- tables ------------------------------------------------------------------------------------
def _iq3xs_init_straight(grid_size: int):
    """iq3xs_init_impl re-done one point at a time, as the C loops read (independent of iq3.tables)."""
    kgrid = iq3.grid_points(grid_size)
    nwant = 2 if grid_size == 256 else 3
    pos = lambda p: np.array([2 * ((int(p) >> 3 * i) & 7) + 1 for i in range(4)])  # noqa: E731
    grid = np.array([pos(p) for p in kgrid])
    kmap = [-1] * 4096
    for j, p in enumerate(kgrid):
        kmap[int(p)] = j
    nbr: list[int] = []
    for i in range(4096):
        if kmap[i] >= 0:
            continue
        dist = ((grid - pos(i)) ** 2).sum(axis=1)
        order = np.lexsort((np.arange(grid_size), dist))      # qsort by (distance, index)
        chosen, d2, nhave = [], dist[order[0]], 1
        for j in order:
            if dist[j] > d2:
                if nhave == nwant:
                    break
                d2 = dist[j]
                nhave += 1
            chosen.append(int(j))
        kmap[i] = -(len(nbr) + 1)
        nbr += [len(chosen)] + chosen
    return np.array(kmap), np.array(nbr), grid


@pytest.mark.parametrize("grid_size", [256, 512])
def test_tables_equal_iq3xs_init(grid_size):
    kmap, nbr, gridf, gridl, dgrid = iq3.tables(grid_size)
    skmap, snbr, sgrid = _iq3xs_init_straight(grid_size)
    assert np.array_equal(kmap, skmap)
    assert np.array_equal(nbr, snbr)
    assert np.array_equal(gridf, sgrid) and gridf.dtype == np.float32
    assert np.array_equal(gridl, (sgrid - 1) // 2)
    assert iq3.tables(grid_size) is iq3.tables(grid_size)  # built once per process
    # llama.cpp's own sizes: 256 points on 3840 missing tuples (2 distances), 512 on 3584 (3)
    assert (kmap >= 0).sum() == grid_size and len(np.unique(kmap[kmap >= 0])) == grid_size


def test_decoder_grids_equal_gguf():
    """The decoder grids and sign table equal gguf-py's (iq3xxs_grid, iq3s_grid, ksigns_iq2xs)."""
    for name, size in (("IQ3_XXS", 256), ("IQ3_S", 512)):
        cls = getattr(gq, name)
        cls.init_grid()
        assert np.array_equal(iq3.tables(size)[4].astype(np.float32), cls.grid.reshape(size, 4)), name
    assert iq3.ksigns_iq2xs().tobytes() == gq.IQ2_XXS.ksigns
