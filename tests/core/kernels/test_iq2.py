"""IQ2_XXS, IQ2_XS, IQ2_S: bytes identical to llama.cpp's C quantizer, block by block; the lattice
tables of iq2xs_init_impl rebuilt independently; decoders as gguf-py and llama.cpp.

llama.cpp aborts the process (GGML_ASSERT) on some inputs of these types (non-finite values,
weights whose squares overflow): the C oracle runs in forked children here, and rows where it
aborts are reported and left out of the byte comparison (ours must still quantize them).
"""
from __future__ import annotations

import faulthandler
import os

import numpy as np
import pytest
from gguf import quants as gq

from core.errors import PlanError
from core.kernels import Kernel
from core.kernels import _iqgrid
from core.kernels.iq2 import KERNELS
from tests.refs.ggml import ggml_base
from tests.refs.ggml import quantize as ggml_quantize

from . import (IQ_CHECKS, assert_blocks_equal, check_iq_kernel, heavy_rows, imatrix_for, kernel_of, normal_rows,
               row_builder)
from .test_kquants import heavy_imatrix, kquant_edge_rows, nonfinite_rows

TYPES = ["IQ2_XXS", "IQ2_XS", "IQ2_S"]
OPTIONAL_IMATRIX = {"IQ2_S", "IQ1_M"}  # the others need one (ggml_quantize_requires_imatrix)
QK_K = 256


# -- shared with test_iq1 ----------------------------------------------------------------------
def c_quantize_rows(qtype, x: np.ndarray, imatrix=None):
    """llama.cpp's ggml_quantize_chunk on ``x``, in forked children so that an abort kills only
    the child: returns (bytes, ok) where ok[r] is False for the rows on which llama.cpp aborts."""
    x = np.ascontiguousarray(x, np.float32)
    rb = ggml_base().ggml_row_size(int(qtype), x.shape[1])
    ggml_quantize(qtype, np.ones((1, x.shape[1]), np.float32), imatrix)  # tables built before the forks
    out = np.zeros((x.shape[0], rb), np.uint8)
    ok = np.zeros(x.shape[0], bool)

    def run(a: int, b: int) -> None:
        rd, wr = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: quantize, send the bytes, exit without cleanup
            try:
                os.close(rd)
                faulthandler.disable()  # pytest's handler would report the expected abort
                os.environ["GGML_NO_BACKTRACE"] = "1"
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, 1)
                os.dup2(null, 2)
                view = memoryview(ggml_quantize(qtype, x[a:b], imatrix).tobytes())
                while view:
                    view = view[os.write(wr, view):]
            finally:
                os._exit(0)
        os.close(wr)
        chunks = []
        while True:
            c = os.read(rd, 1 << 20)
            if not c:
                break
            chunks.append(c)
        os.close(rd)
        _, status = os.waitpid(pid, 0)
        data = b"".join(chunks)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and len(data) == (b - a) * rb:
            out[a:b] = np.frombuffer(data, np.uint8).reshape(b - a, rb)
            ok[a:b] = True
        elif b - a > 1:  # bisect down to the aborting rows
            m = (a + b) // 2
            run(a, m)
            run(m, b)

    run(0, x.shape[0])
    return out, ok


def check_nonfinite_rows(k: Kernel) -> None:
    """NaN / inf / near-limit rows: identical where llama.cpp survives them (at least 2 rows);
    where it aborts, ours still writes every block, deterministically."""
    x = nonfinite_rows(512)
    for im in (imatrix_for(512), np.ones(512, np.float32)):
        ours = k.quantize(x, importance=im)
        ref, ok = c_quantize_rows(k.qtype, x, im)
        assert ok.sum() >= 2, f"{k.qtype.name}: llama.cpp survived only rows {np.flatnonzero(ok).tolist()}"
        assert_blocks_equal(ours[ok], ref[ok], k.type_size, f"{k.qtype.name} non-finite vs llama.cpp")
        assert np.array_equal(ours, k.quantize(x, importance=im))


def compare_with_c(k: Kernel, x: np.ndarray, im, what: str, min_ok: float = 1.0) -> int:
    """Our bytes vs llama.cpp's on every row where llama.cpp does not abort (at least
    ``min_ok`` of the rows); returns the number of blocks compared."""
    ours = k.quantize(x, importance=im)
    assert ours.dtype == np.uint8 and ours.shape == (x.shape[0], k.row_bytes(x.shape[1]))
    ref, ok = c_quantize_rows(k.qtype, x, im)
    assert ok.mean() >= min_ok, f"{what}: llama.cpp aborted on rows {np.flatnonzero(~ok).tolist()}"
    assert_blocks_equal(ours[ok], ref[ok], k.type_size, f"{what} vs llama.cpp")
    return int(ok.sum()) * x.shape[1] // QK_K


def iq_edge_rows(n: int = 512) -> np.ndarray:
    """kquant_edge_rows plus rows of repeated values (ties in the sorts and the searches) and
    groups whose sign count is odd with equal magnitudes."""
    rng = np.random.default_rng(21)
    rows, row = row_builder(n)
    row(np.round(rng.standard_normal(n) * 2.0) * 0.25)      # few distinct values
    row(np.where(rng.random(n) < 0.3, 0.0, 0.01))            # zeros and one value
    row(np.where(rng.random(n) < 0.5, -0.02, 0.02))          # +- one magnitude: every sort ties
    r = row(rng.standard_normal(n) * 0.02); r[::8] = -0.0   # negative zeros inside
    r = row(rng.standard_normal(n) * 0.02); r[::3] = r[1::3][:len(r[::3])]  # pairs of equal values
    r = row(0.0); r[::16] = 1.0; r[1::16] = -1.0             # sparse
    return np.concatenate([kquant_edge_rows(n), np.stack(rows).astype(np.float32)])


IMATRICES = {
    "imatrix": imatrix_for,
    "heavy_imatrix": heavy_imatrix,
    "ones": lambda n: np.ones(n, np.float32),
    "zeros": lambda n: np.zeros(n, np.float32),
}

DATA = {
    "normal": lambda: normal_rows(rows=96, n=512),
    "heavy": lambda: heavy_rows(rows=96, n=1024),
    "edge": iq_edge_rows,
    "odd_rows": lambda: heavy_rows(seed=4, rows=37, n=768),
}


# -- tests -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("data", list(DATA))
@pytest.mark.parametrize("imx", list(IMATRICES))
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_matches_llama_cpp(name, data, imx):
    x = DATA[data]()
    im = IMATRICES[imx](x.shape[1])
    k = kernel_of(KERNELS, name)
    # llama.cpp aborts on the edge rows near the float32 limit (x*x overflows): 1 or 2 of 27
    compare_with_c(k, x, im, f"{name} {data} {imx}", min_ok=0.9 if data == "edge" else 1.0)


@pytest.mark.parametrize("name", [t for t in TYPES if t in OPTIONAL_IMATRIX])
@pytest.mark.parametrize("data", list(DATA))
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_without_imatrix_matches_llama_cpp(name, data):
    x = DATA[data]()
    k = kernel_of(KERNELS, name)
    compare_with_c(k, x, None, f"{name} {data} no imatrix", min_ok=0.9 if data == "edge" else 1.0)
    if data in ("normal", "heavy"):
        assert not np.array_equal(k.quantize(x), k.quantize(x, importance=imatrix_for(x.shape[1]))), \
            "importance weights had no effect"


@pytest.mark.parametrize("name", [t for t in TYPES if t not in OPTIONAL_IMATRIX])
def test_imatrix_required(name):
    k = kernel_of(KERNELS, name)
    with pytest.raises(PlanError, match="importance matrix"):
        k.quantize(normal_rows(rows=2, n=256))


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nonfinite_rows(name):
    """NaN / inf / near-limit rows: identical where llama.cpp survives them; where it aborts,
    ours still writes every block (deterministically)."""
    check_nonfinite_rows(kernel_of(KERNELS, name))


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("check", IQ_CHECKS)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_decoders_and_threads(name, check):
    check_iq_kernel(kernel_of(KERNELS, name), check, rel_bound=0.6)


# -- tables ------------------------------------------------------------------------------------
def reference_tables(name: str):
    """iq2xs_init_impl written plainly with numpy: a full (distance, index) sort per code."""
    nwant = {"iq2xxs": 2, "iq2xs": 2, "iq2s": 1, "iq1s": 3}[name]
    codes = _iqgrid.kgrid(name).astype(np.int64)
    pos = 2 * ((codes[:, None] >> (2 * np.arange(8))) & 3) + 1               # the_grid
    kmap = np.full(_iqgrid.KMAP_SIZE, -1, np.int64)
    for i, c in enumerate(codes):
        kmap[c] = i
    ng = len(codes)
    out: list[int] = []
    off = np.flatnonzero(kmap < 0)
    for a in range(0, len(off), 2048):
        u = off[a:a + 2048]
        p = 2 * ((u[:, None] >> (2 * np.arange(8))) & 3) + 1
        d2 = ((pos[None, :, :] - p[:, None, :]) ** 2).sum(-1)                 # (codes, grid)
        order = np.sort(d2 * ng + np.arange(ng), axis=1)                     # qsort by (d2, index)
        sd2, sj = order // ng, order % ng
        level = np.concatenate([np.zeros((len(u), 1), np.int64),
                                np.cumsum(sd2[:, 1:] != sd2[:, :-1], axis=1)], axis=1)
        for r, code in enumerate(u):
            keep = sj[r][level[r] < nwant]
            kmap[code] = -(len(out) + 1)
            out.append(len(keep))
            out.extend(keep.tolist())
    return pos.astype(np.int8), kmap.astype(np.int32), np.array(out, np.uint16)


@pytest.mark.parametrize("grid", ["iq2xxs", "iq2xs", "iq2s", "iq1s"])
def test_tables_equal_an_independent_build(grid):
    g, kmap, nb = _iqgrid.iq2_tables(grid)
    rg, rkmap, rnb = reference_tables(grid)
    assert np.array_equal(g, rg)
    assert np.array_equal(kmap, rkmap)
    assert np.array_equal(nb, rnb)
    assert _iqgrid.iq2_tables(grid)[2] is nb  # built once per process
    # the search records the kernels read: the same lists, padded with copies of the last entry
    _, rec_off, rec = _iqgrid.encoder_tables(grid)
    on = kmap >= 0
    assert np.array_equal(rec_off[on], -(kmap[on].astype(np.int64) + 1))
    for u in np.flatnonzero(~on):
        o, b = int(-kmap[u] - 1), int(rec_off[u])
        n = int(nb[o])
        m = int(rec[b]) | int(rec[b + 1]) << 8
        assert m == -(-n // 8) * 8
        assert int(rec[b + 2]) | int(rec[b + 3]) << 8 == n  # the true count, which the searches scan
        entries = np.concatenate([nb[o + 1:o + 1 + n], np.repeat(nb[o + n], m - n)]).astype(np.int64)
        assert np.array_equal(rec[b + 8 + 8 * m:b + 8 + 10 * m].view("<u2"), entries), u
        assert np.array_equal(rec[b + 8:b + 8 + 8 * m].reshape(8, m).T, g[entries].astype(np.uint8)), u


def test_grids_equal_gguf_py():
    """The stored codes decode to ggml-common.h's grids as gguf-py copies them, and ksigns_iq2xs."""
    for cls, grid in ((gq.IQ2_XXS, "iq2xxs"), (gq.IQ2_XS, "iq2xs"), (gq.IQ2_S, "iq2s"), (gq.IQ1_S, "iq1s")):
        cls.init_grid()
        assert np.array_equal(_iqgrid.decode_grid(grid), np.asarray(cls.grid, np.float32).reshape(-1, 8)), grid
    assert np.array_equal(_iqgrid.ksigns(), np.frombuffer(gq.IQ2_XXS.ksigns, np.uint8))
