"""core.budget.memory_overhead against what llama.cpp itself allocates when it loads a GGUF (llama-cpp-python,
the pinned llama.cpp, CPU): the KV cache and the logits buffer exactly, the compute buffer as an upper bound
within a stated margin, the total (model + KV + compute + output buffers) as an upper bound within 15 %; and
a ``--target-memory`` file that, loaded at its context, fits the target.

Run as a script (``python tests/core/test_budget_memory.py [GGUF ...]``) it prints the comparison table that
core/budget.py's docstring quotes."""
import os
import re
import subprocess
import sys

import pytest

from core import budget as B
from core.cli import main
from core.models import open_model

MIB = 1 << 20
ROUND = 0.006 * MIB          # llama.cpp prints MiB with two decimals
COMPUTE_MARGIN = 1.30        # estimate <= 1.30 x reported (toy models; >= 50 MiB buffers: <= 1.13 x)
TOTAL_MARGIN = 1.15          # weights + KV + compute + output: estimate <= 1.15 x reported

_LOAD = ("import sys, llama_cpp; llama_cpp.Llama(sys.argv[1], n_ctx=int(sys.argv[2]), n_batch=512, n_ubatch=512, "
         "flash_attn=sys.argv[3] == '1', verbose=True, n_threads=1)")


def llama_reported(path: str, n_ctx: int, flash_attn: bool = False) -> dict:
    """The buffer sizes (bytes) llama.cpp prints when it loads ``path`` with a context of ``n_ctx`` tokens
    (a subprocess: the C library writes to the process's stderr)."""
    p = subprocess.run([sys.executable, "-c", _LOAD, path, str(n_ctx), "1" if flash_attn else "0"],
                       capture_output=True, text=True, timeout=600)
    err = p.stderr
    if p.returncode:
        raise RuntimeError(f"llama.cpp failed to load {path}:\n{err[-3000:]}")

    def mib(rx):
        return [float(x) * MIB for x in re.findall(rx, err)]

    out = {"n_ctx": int(re.search(r"llama_context: n_ctx\s+=\s+(\d+)", err).group(1)),
           "model": sum(mib(r"\S+ model buffer size =\s+([\d.]+) MiB")),
           "kv_cache": mib(r"llama_kv_cache: size =\s+([\d.]+) MiB")[0],
           "compute": sum(mib(r"sched_reserve:\s+\S+ compute buffer size =\s+([\d.]+) MiB")),
           "output": sum(mib(r"\S+\s+output buffer size =\s+([\d.]+) MiB"))}
    out["total"] = out["model"] + out["kv_cache"] + out["compute"] + out["output"]
    return out


def compare(path: str, n_ctx: int, flash_attn: bool = False) -> tuple[dict, dict]:
    with open_model(path) as m:
        est = B.memory_overhead(m.metadata, n_ctx)
    est = dict(est, n_ctx=B.kv_cells(n_ctx), total=os.path.getsize(path) + sum(est.values()))
    return est, llama_reported(path, n_ctx, flash_attn)


def check(est: dict, got: dict, flash_attn: bool) -> None:
    assert est["n_ctx"] == got["n_ctx"]                                    # padded to 256 as llama.cpp does
    assert abs(est["kv_cache"] - got["kv_cache"]) <= ROUND                 # exact (F16 K and V)
    assert abs(est["output"] - got["output"]) <= ROUND or got["output"] == 0   # (under 0.005 MiB: not printed)
    assert est["compute"] >= got["compute"] - ROUND                        # an upper bound, flash attention or not
    assert est["total"] >= got["total"]
    if not flash_attn:         # with flash attention llama.cpp needs less (no KQ matrix): a looser bound there
        assert est["compute"] <= COMPUTE_MARGIN * got["compute"]
        assert est["total"] <= TOTAL_MARGIN * got["total"]


@pytest.mark.parametrize("n_ctx,flash_attn", [(512, False), (1000, False), (2048, True), (8192, False)])
def test_demo_memory_estimate_vs_llama_cpp(demo_path, n_ctx, flash_attn):
    est, got = compare(demo_path, n_ctx, flash_attn)
    check(est, got, flash_attn)
    assert got["model"] <= os.path.getsize(demo_path) <= got["model"] * 1.1   # weights: the file, headers included


@pytest.mark.parametrize("n_ctx,flash_attn", [(256, False), (1000, False), (4096, False), (4096, True)])
def test_synthetic_memory_estimate_vs_llama_cpp(synthetic_path, n_ctx, flash_attn):
    est, got = compare(synthetic_path, n_ctx, flash_attn)
    check(est, got, flash_attn)


def test_memory_target_file_fits_when_llama_cpp_loads_it(synthetic_path, tmp_path, monkeypatch):
    """``quantize --target-memory M --context N``: the written file, loaded by llama.cpp with that context,
    needs at most M (and not much less: the estimate is close)."""
    monkeypatch.setenv("QUANT_STUDIO_CACHE", str(tmp_path / "cache"))
    n_ctx = 1000
    with open_model(synthetic_path) as m:
        overhead = sum(B.memory_overhead(m.metadata, n_ctx).values())
    target = overhead + 1_500_000                     # 1.5 MB of weights: the 7.3 MB F32 model at ~6.5 bits
    out = str(tmp_path / "m.gguf")
    assert main(["quantize", synthetic_path, out, "--target-memory", str(target), "--context", str(n_ctx),
                 "--fast"]) == 0
    assert 0.99 * 1_500_000 <= os.path.getsize(out) <= 1_500_000
    got = llama_reported(out, n_ctx)
    assert got["total"] <= target
    assert got["total"] >= target / TOTAL_MARGIN


if __name__ == "__main__":
    from core.demo import demo_model_path

    paths = sys.argv[1:] or [demo_model_path()]
    print(f"{'model':24} {'n_ctx':>5} {'FA':>3} {'KV MiB':>15} {'compute MiB':>17} {'est/got':>8} "
          f"{'total MiB':>17} {'est/got':>8}")
    for path in paths:
        for c in (256, 512, 1000, 2048, 4096, 8192):
            for fa in (False, True):
                e, g = compare(path, c, fa)
                print(f"{os.path.basename(path)[:24]:24} {c:5d} {'on' if fa else 'off':>3} "
                      f"{g['kv_cache'] / MIB:7.2f}/{e['kv_cache'] / MIB:7.2f} "
                      f"{g['compute'] / MIB:8.2f}/{e['compute'] / MIB:8.2f} {e['compute'] / g['compute']:8.3f} "
                      f"{g['total'] / MIB:8.2f}/{e['total'] / MIB:8.2f} {e['total'] / g['total']:8.3f}", flush=True)
