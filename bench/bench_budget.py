"""The budget solver against llama.cpp's presets at equal size: KLD of both on held-out text (simulated).

Usage: python bench/bench_budget.py [--model demo|synthetic|PATH] [--presets Q2_K,...,Q6_K] [--fast]
       [--cal-chunks 8] [--eval-chunks 8] [--ctx 256] [--types T,T,...] [--threads 2]
       python bench/bench_budget.py --llama [--model ...] [--presets P,...] [--text CAL.txt --eval-text HELD.txt]
       [--ctx 512] [--eval-chunks 32] [--png chart.png]

--llama: the proof by llama.cpp's own tools. The imatrix is computed by the studio on the calibration text; at
the predicted size of Q4_K_M and Q3_K_M (and any --presets) the solver's plan and the preset are both WRITTEN
(`quant-studio quantize --plan ... --imatrix` and `--preset ... --imatrix`, the latter byte-identical to
llama-quantize), then `llama-perplexity --kl-divergence-base` runs on the float source and `--kl-divergence` on
each file over the held-out text (llama.cpp's defaults otherwise: F16 KV cache, flash attention auto; the tools
built by packaging/build_llama_tools.sh, found by tests/refs/tools.py). Prints file bytes, llama-perplexity's
mean KLD, PPL and same-top-token rate of each, and the KLD ratio solver / preset.

The built-in calibration text is cut in two: the first half calibrates (imatrix, sensitivities), the second
is only evaluated. For each preset, the solver gets the preset's exact predicted file size as its target;
both plans use the same imatrix; KLD is core.eval.run.evaluate's (llama-perplexity's protocol) on the held-out
half. Prints a table with the ratio solver/preset and the measurement/solve timings.
The demo model (SmolLM2-135M) ships as Q4_1: its F32 copy re-quantizes losslessly to Q4_1 and Q5_1, so those two
types are left out of the candidates there (with them the solver reaches KLD ~0, which says nothing). The
presets are not restricted: Q5_K falls back to Q5_1 on the demo's 576-wide rows, so Q5_K_S/Q5_K_M are
near-lossless there and beat the solver -- an artifact of the demo, not a property of either.

Measured (2 cores, 2026-11-30; demo: 8 x 128 calibration tokens, 4 x 256 held-out; ratio = solver / preset):

    demo       Q2_K 0.205  Q3_K_S 0.205  Q3_K_M 0.502  Q3_K_L 0.546  Q4_K_S 0.869  Q4_K_M 0.735
               Q5_K_S 9.43*  Q5_K_M 6.06*  Q6_K 0.844     (* the Q5_1 artifact above)
               measurements 332 s (error table 39 s, sensitivity 293 s), solve <= 0.11 s, evaluation 216 s
    synthetic  Q2_K 0.091  Q3_K_S 0.050  Q3_K_M 0.050  Q3_K_L 0.052  Q4_K_S 0.157  Q4_K_M 0.101
               Q5_K_S 0.402  Q5_K_M 0.347  Q6_K 0.307   (random weights: a toy; its tied 49k x 256 embedding dominates)

Measured with --llama (2 loaded cores, 2026-11-30; written files, llama-perplexity's own numbers on the held-out
second half, -c 512 --chunks 32 for the demo, -c 256 --chunks 16 for the synthetic; same-top = "Same top p"):

    python bench/bench_budget.py --llama --ctx 512 --eval-chunks 32           (demo F32, base PPL 16.194)
    preset   bytes (both)  KLD preset  KLD solver  PPL preset  PPL solver  same-top preset/solver  KLD ratio
    Q4_K_M      105454368    0.051895    0.037035     16.7936     16.7338        86.21 % / 88.37 %      0.714
    Q3_K_M       93510432    0.133968    0.062649     18.1170     17.2596        79.12 % / 83.44 %      0.468
    python bench/bench_budget.py --llama --model synthetic --ctx 256 --eval-chunks 16   (random weights: base PPL
    555001: the KLDs say little about real models)
    Q4_K_M    21068448 / 21065632 (solver)   KLD 0.424812 vs 0.050949   ratio 0.120
    Q3_K_M    19026080 / 19026080            KLD 1.270150 vs 0.086520   ratio 0.068
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core import budget as B  # noqa: E402
from core.eval.run import (Candidate, compute_imatrix, evaluate, imatrix_provenance, prepare_chunks,  # noqa: E402
                           read_text)
from core.models import open_model  # noqa: E402
from core.plan import make_plan, predict_size  # noqa: E402

PRESETS = "Q2_K,Q3_K_S,Q3_K_M,Q3_K_L,Q4_K_S,Q4_K_M,Q5_K_S,Q5_K_M,Q6_K"
LLAMA_PRESETS = "Q4_K_M,Q3_K_M"
DEMO_TYPES = "Q2_K,Q3_K,IQ4_XS,Q4_K,Q5_K,Q6_K,Q4_0,IQ4_NL,Q5_0,Q8_0,F16"


def model_path(which: str, tmp: str) -> str:
    from core.demo import demo_model_path, make_synthetic_llama
    from core.job import run_plan
    from core.plan import pure_plan

    if which == "synthetic":
        out = os.path.join(tmp, "synthetic-f32.gguf")
        return out if os.path.exists(out) else make_synthetic_llama(out, n_layer=4, vocab_from=demo_model_path())
    if which == "demo":
        out = os.path.join(tmp, "demo-f32.gguf")
        if os.path.exists(out):           # --work: kept from an earlier run (its path and mtime key the cache)
            return out
        with open_model(demo_model_path()) as demo:
            run_plan(demo, pure_plan(demo.tensors, "F32", "llama"), out, threads=2)
        return out
    return which


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo", help="demo, synthetic or a GGUF/safetensors path (a float model)")
    ap.add_argument("--presets", help=f"default {PRESETS}; with --llama: {LLAMA_PRESETS} plus these")
    ap.add_argument("--types", default=DEMO_TYPES, help="candidate types")
    ap.add_argument("--fast", action="store_true", help="imatrix-weighted error only (no sensitivity pass)")
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--cal-chunks", type=int, default=8, help="calibration chunks of 128 tokens")
    ap.add_argument("--eval-chunks", type=int, default=8, help="held-out chunks of --ctx tokens")
    ap.add_argument("--sample-rows", type=int, default=B.DEFAULT_SAMPLE_ROWS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--llama", action="store_true", help="write the files and measure them with llama-perplexity")
    ap.add_argument("--text", help="calibration text (default: the first half of the built-in text)")
    ap.add_argument("--eval-text", help="held-out text (default: the second half of the built-in text)")
    ap.add_argument("--work", help="--llama: keep the files in this folder and reuse what an earlier run left "
                    "there (model, imatrix, written files, llama-perplexity's base logits)")
    ap.add_argument("--png", help="--llama: also write a bar chart of the KLDs (pyqtgraph, offscreen)")
    a = ap.parse_args()
    if a.llama:
        return llama_main(a)
    a.presets = a.presets or PRESETS
    with tempfile.TemporaryDirectory() as tmp:
        src = open_model(model_path(a.model, tmp))
        cal, held, _ = texts(a)
        t0 = time.perf_counter()
        cal_chunks = prepare_chunks(src, cal, 128, a.cal_chunks)
        im = compute_imatrix(src, cal_chunks, threads=a.threads).to_imatrix(["calibration half"])
        imp = im.arrays_for(src.tensors)
        t_im = time.perf_counter() - t0
        t0 = time.perf_counter()
        meas = B.measure(src, imp, imatrix_id=im.id, chunks=cal_chunks, text_hash="bench-half", fast=a.fast,
                         types=a.types.split(","), sample_rows=a.sample_rows, threads=a.threads, use_cache=False)
        t_meas = time.perf_counter() - t0
        cands, sizes, t_solve = [], {}, 0.0
        for q in a.presets.split(","):
            preset = make_plan(src.tensors, src.metadata, q, has_imatrix=True)
            size = predict_size(preset, src).total
            t0 = time.perf_counter()
            r = B.solve(src, meas, B.Target("size", size), has_imatrix=True)
            t_solve = max(t_solve, time.perf_counter() - t0)
            sizes[q] = (size, r.size)
            cands += [Candidate(q, plan=preset, importances=imp), Candidate("budget@" + q, plan=r.plan,
                                                                            importances=imp)]
        t0 = time.perf_counter()
        res = {x.label: x.kld for x in evaluate(src, cands, prepare_chunks(src, held, a.ctx, a.eval_chunks),
                                                threads=a.threads)}
        t_eval = time.perf_counter() - t0
    print(f"model {a.model}: {'fast (imatrix-weighted error only)' if a.fast else 'measured sensitivity'}; "
          f"imatrix {t_im:.1f} s, measurements {t_meas:.1f} s ({meas.info}), slowest solve {t_solve:.2f} s, "
          f"evaluation {t_eval:.1f} s ({a.eval_chunks} held-out chunks of {a.ctx})")
    print(f"{'preset':8} {'size':>11} {'solver size':>11} {'KLD preset':>12} {'KLD solver':>12} {'ratio':>7}")
    for q in a.presets.split(","):
        kp, ks = res[q], res["budget@" + q]
        print(f"{q:8} {sizes[q][0]:11d} {sizes[q][1]:11d} {kp.kld_mean:12.5f} {ks.kld_mean:12.5f} "
              f"{ks.kld_mean / kp.kld_mean:7.3f}")


def texts(a) -> tuple[str, str, str]:
    """(calibration text, held-out text, a name for the split): the files given, else the built-in text's halves."""
    if a.text or a.eval_text:
        if not (a.text and a.eval_text):
            raise SystemExit("give both --text and --eval-text (or neither: the built-in text's two halves)")
        return read_text(a.text)[0], read_text(a.eval_text)[0], f"{a.text} / {a.eval_text}"
    text, name = read_text(None)
    return text[:len(text) // 2], text[len(text) // 2:], f"{name}: first half / second half"


def llama_main(a) -> None:
    from core.cli import main as cli
    from core.eval.calibrate import text_sha256
    from core.imatrix import load_imatrix
    from tests.core.eval.test_vs_llama_tools import _ref as perplexity_stats    # ppl, kld_mean, same_top_p
    from tests.refs.tools import run_tool

    presets = list(dict.fromkeys(LLAMA_PRESETS.split(",") + (a.presets.split(",") if a.presets else [])))
    tmp = a.work or tempfile.mkdtemp(prefix="bench-budget-llama-")
    os.makedirs(tmp, exist_ok=True)
    src_path = model_path(a.model, tmp)
    src = open_model(src_path)
    cal, held, split = texts(a)
    held_path = os.path.join(tmp, "held-out.txt")
    with open(held_path, "w", encoding="utf-8") as f:
        f.write(held)
    t0 = time.perf_counter()
    cal_chunks = prepare_chunks(src, cal, 128, a.cal_chunks)
    im_path = os.path.join(tmp, "calibration.imatrix.gguf")
    if not os.path.exists(im_path):
        compute_imatrix(src, cal_chunks, threads=a.threads).write_gguf(
            im_path, imatrix_provenance(src, cal_chunks, cal, "calibration"))
    im = load_imatrix(im_path)
    imp = im.arrays_for(src.tensors)
    extra = im.metadata(os.path.basename(im_path))
    t_im = time.perf_counter() - t0
    t0 = time.perf_counter()
    meas = B.measure(src, imp, imatrix_id=im.id, chunks=cal_chunks, text_hash=text_sha256(cal), fast=a.fast,
                     types=a.types.split(","), sample_rows=a.sample_rows, threads=a.threads)
    t_meas = time.perf_counter() - t0
    files = {}
    for q in presets:
        preset = make_plan(src.tensors, src.metadata, q, has_imatrix=True)
        size = predict_size(preset, src, extra_kv=extra).total
        r = B.solve(src, meas, B.Target("size", size), has_imatrix=True, imatrix_path=im_path, extra_kv=extra)
        plan_path = os.path.join(tmp, f"budget-{q}.plan.json")
        with open(plan_path, "w", encoding="utf-8") as f:
            f.write(B.plan_json(r))
        out_p, out_s = os.path.join(tmp, f"{q}.gguf"), os.path.join(tmp, f"budget-{q}.gguf")
        for args in (["--preset", q], ["--plan", plan_path]):
            out = out_p if args[0] == "--preset" else out_s
            if os.path.exists(out):
                continue                                            # --work: written by an earlier run
            with contextlib.redirect_stdout(io.StringIO()):          # the --json report of each file
                rc = cli(["quantize", src_path, out, *args, "--imatrix", im_path, "--threads", str(a.threads),
                          "--json"])
            if rc != 0:
                raise SystemExit(f"quantize {' '.join(args)} failed")
        if os.path.getsize(out_p) != size or os.path.getsize(out_s) != r.size or r.size > size:
            raise SystemExit(f"{q}: written sizes {os.path.getsize(out_p)} / {os.path.getsize(out_s)} differ from "
                             f"the predicted {size} / {r.size}")
        files[q] = (out_p, out_s)
    common = ["-f", held_path, "-c", str(a.ctx), "--chunks", str(a.eval_chunks), "-t", str(a.threads)]
    kld_base = os.path.join(tmp, "base.kld")
    t0 = time.perf_counter()
    if not os.path.exists(kld_base):
        run_tool("llama-perplexity", "-m", src_path, "--kl-divergence-base", kld_base + ".partial", *common,
                 timeout=7200)
        os.replace(kld_base + ".partial", kld_base)
    res = {}
    for q, (out_p, out_s) in files.items():
        for label, path in ((q, out_p), ("budget@" + q, out_s)):
            res[label] = perplexity_stats(run_tool("llama-perplexity", "-m", path, "--kl-divergence-base", kld_base,
                                                   "--kl-divergence", *common, timeout=7200))
            res[label]["bytes"] = os.path.getsize(path)
            print(f"{label}: {res[label]}", flush=True)
    t_eval = time.perf_counter() - t0
    print(f"model {a.model} ({os.path.basename(src_path)}); texts: {split}; imatrix {t_im:.1f} s on "
          f"{cal_chunks.n_chunk} x {cal_chunks.n_ctx} tokens; measurements {t_meas:.1f} s "
          f"({'fast' if a.fast else 'measured sensitivity'}; candidates {a.types}); llama-perplexity "
          f"{t_eval:.1f} s (-c {a.ctx} --chunks {a.eval_chunks}, base PPL {next(iter(res.values()))['ppl_base']:.4f})")
    print(f"{'preset':8} {'bytes preset':>12} {'bytes solver':>12} {'KLD preset':>11} {'KLD solver':>11} "
          f"{'PPL preset':>10} {'PPL solver':>10} {'top preset':>10} {'top solver':>10} {'KLD ratio':>9}")
    for q in files:
        p, s_ = res[q], res["budget@" + q]
        print(f"{q:8} {p['bytes']:12d} {s_['bytes']:12d} {p['kld_mean']:11.6f} {s_['kld_mean']:11.6f} "
              f"{p['ppl']:10.4f} {s_['ppl']:10.4f} {p['same_top_p']:9.3f}% {s_['same_top_p']:9.3f}% "
              f"{s_['kld_mean'] / p['kld_mean']:9.3f}")
    if a.png:
        write_chart(a.png, [(q, res[q]["kld_mean"], res["budget@" + q]["kld_mean"]) for q in files])
    print(f"(files kept in {tmp})")


def write_chart(path: str, rows: list) -> None:
    """Bars of llama-perplexity's mean KLD, preset vs solver, per preset size (pyqtgraph, offscreen)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import pyqtgraph as pg
    import pyqtgraph.exporters as pge

    app = pg.mkQApp()
    w = pg.PlotWidget(background="w")
    w.resize(800, 480)
    x = list(range(len(rows)))
    w.addItem(pg.BarGraphItem(x=[i - 0.2 for i in x], height=[r[1] for r in rows], width=0.38, brush="#9a9a9a",
                              name="preset"))
    w.addItem(pg.BarGraphItem(x=[i + 0.2 for i in x], height=[r[2] for r in rows], width=0.38, brush="#2b6cb0",
                              name="solver"))
    w.getAxis("bottom").setTicks([[(i, r[0]) for i, r in zip(x, rows)]])
    w.setLabel("left", "mean KLD (llama-perplexity)")
    w.setLabel("bottom", "grey: llama-quantize preset, blue: budget solver at the preset's size")
    w.show()                                          # lays the plot out at its size (offscreen)
    app.processEvents()
    pge.ImageExporter(w.getPlotItem()).export(path)
    print(f"chart: {path}")


if __name__ == "__main__":
    main()
