"""``quant-studio``: command-line front end. Argument parsing and terminal output only;
everything it does is a call into ``core``."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Optional, Sequence

from . import __version__
from .errors import Cancelled, QuantStudioError
from .units import format_duration, human_bytes, human_count, parse_size

PROG = "quant-studio"


# ----------------------------------------------------------------------------- formatting
def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class ProgressBar:
    """A one-line progress bar with ETA on a terminal (stderr); silent otherwise."""

    def __init__(self, stream=None, enabled: Optional[bool] = None, width: int = 28):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.width = width
        self._last = 0.0

    def __call__(self, ev) -> None:
        if not self.enabled or (time.monotonic() - self._last < 0.1 and ev.done < ev.total):
            return
        self._last = time.monotonic()
        filled = int(self.width * ev.fraction)
        bar = "#" * filled + "." * (self.width - filled)
        item = (ev.item[:38] + "…") if len(ev.item) > 39 else ev.item
        self.stream.write(f"\r[{bar}] {100 * ev.fraction:5.1f}% {human_count(ev.done):>7}/"
                          f"{human_count(ev.total)} ETA {format_duration(ev.eta)} {item:<40}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * (self.width + 90) + "\r")
            self.stream.flush()


def _table(rows: list[list[str]], header: list[str], right: set[int]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)  # noqa: E731
                              for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows])


def _num(x: float, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-" if x is None else str(x)
    return f"{x:.{digits}g}"


# ----------------------------------------------------------------------------- commands
def cmd_inspect(args) -> int:
    from .models import open_model

    src = open_model(args.model)
    summary = src.summary()
    stats = {}
    if not args.no_stats:
        from .stats import model_stats

        bar = ProgressBar(enabled=None if not args.json else False)
        try:
            stats = model_stats(src, threads=args.threads, progress=bar)
        finally:
            bar.close()
    if args.json:
        out = {"summary": summary, "metadata": _jsonable(src.metadata, args.full),   # a vocabulary: summarized
               "tensors": [{"name": t.name, "shape": list(t.shape), "type": t.dtype, "nbytes": t.nbytes,
                            **({"stats": stats[t.name].to_dict()} if t.name in stats else {})}
                           for t in src.tensors]}
        json.dump(_jsonable(out, True), sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    shards = f", {summary['shards']} shards" if summary.get("shards") else ""
    print(f"{summary['name']}  ({summary['format']}, {summary['architecture'] or 'unknown architecture'}{shards})")
    print(f"  {summary['n_tensors']} tensors, {human_count(summary['n_params'])} parameters, "
          f"{summary['n_layers']} layers, {human_bytes(summary['n_bytes'])}, {summary['bpw']:.2f} bits/weight")
    print("  types: " + ", ".join(f"{k} x{v}" for k, v in sorted(summary["types"].items())))
    rows = []
    for t in src.tensors:
        r = [t.name, t.dtype, "x".join(map(str, t.shape)), human_bytes(t.nbytes)]
        s = stats.get(t.name)
        if s is not None:
            nonfinite = s.nan_count + s.inf_count
            r += [_num(s.std), _num(s.kurtosis, 3), _num(s.absmax), str(s.outliers_k.get(6, 0)),
                  str(nonfinite) if nonfinite else "", _num(s.col_absmax_ratio, 3)]
        rows.append(r)
    header = ["tensor", "type", "shape", "size"]
    if stats:
        header += ["std", "kurt", "absmax", ">6σ", "NaN/Inf", "col spread"]
    print(_table(rows, header, right={3, 4, 5, 6, 7, 8, 9}))
    bad = [s for s in stats.values() if s.nan_count or s.inf_count]
    if bad:
        print(f"warning: {len(bad)} tensors contain NaN or Inf values: "
              + ", ".join(f"{s.name} ({s.nan_count} NaN, {s.inf_count} Inf)" for s in bad[:5]), file=sys.stderr)
    return 0


SUMMARY_ITEMS = 16              # long arrays in --json output: their length and this many first items


def _jsonable(v, full: bool = False):
    """``v`` as JSON data: numpy arrays and scalars as lists and numbers, bytes as text, NaN/Inf as
    strings; arrays longer than SUMMARY_ITEMS summarized as {"length", "first"} unless ``full``."""
    import numpy as np

    if isinstance(v, np.ndarray):
        v = v.tolist()
    elif isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, dict):
        return {str(k): _jsonable(x, full) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        if not full and len(v) > SUMMARY_ITEMS:
            return {"length": len(v), "first": [_jsonable(x, full) for x in v[:SUMMARY_ITEMS]]}
        return [_jsonable(x, full) for x in v]
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def _load_imatrix(args, src):
    if not args.imatrix:
        return None
    from .imatrix import load_imatrix

    data = load_imatrix(args.imatrix)
    return data


def rules_from_args(args, has_imatrix: bool = False):
    """The :class:`~core.rules.PlanRules` that ``--preset`` / ``--type`` and the rule options say."""
    from .rules import PlanRules

    preset = args.preset
    if args.type:
        from .rules import writable
        preset = writable(args.type, "--type")
    manual = {}
    for item in args.manual or ():
        name, sep, t = item.rpartition("=")
        if not sep or not name:
            raise QuantStudioError(f"malformed --manual '{item}': use TENSOR=TYPE, e.g. blk.0.ffn_down.weight=Q6_K")
        manual[name] = t
    return PlanRules.make(preset, pure=bool(args.type) or args.pure, tensor_types=args.tensor_type or (),
                          layer_ranges=args.layer_type or (), keep=args.keep or (),
                          token_embedding_type=args.token_embedding_type, output_tensor_type=args.output_tensor_type,
                          leave_output_tensor=args.leave_output_tensor, manual=manual, has_imatrix=has_imatrix,
                          imatrix_path=args.imatrix or None)


def quantize_argv(input: str, output: str, rules, threads: Optional[int] = None) -> list[str]:
    """``quant-studio quantize`` arguments (without the program name) that make exactly ``rules``
    (a :class:`~core.rules.PlanRules`): :func:`rules_from_args` of them gives ``rules`` back."""
    argv = ["quantize", input, output]
    argv += ["--preset", rules.preset] + (["--pure"] if rules.pure else [])
    if rules.imatrix_path:
        argv += ["--imatrix", rules.imatrix_path]
    for r in rules.rules:
        if r.layered:
            argv += ["--layer-type", f"{r.first}-{r.last}" + (f":{r.pattern}" if r.pattern else "") + f"={r.type}"]
        else:
            argv += ["--tensor-type", f"{r.pattern}={r.type}"]
    for rx in rules.keep:
        argv += ["--keep", rx]
    if rules.token_embedding_type:
        argv += ["--token-embedding-type", rules.token_embedding_type]
    if rules.output_tensor_type:
        argv += ["--output-tensor-type", rules.output_tensor_type]
    if rules.leave_output_tensor:
        argv.append("--leave-output-tensor")
    for name, t in rules.manual:
        argv += ["--manual", f"{name}={t}"]
    if threads:
        argv += ["--threads", str(threads)]
    return argv


def build_plan(src, args, imatrix=None):
    """The plan from --plan, or --preset / --type with the rule options."""
    from .plan import Plan, make_plan

    modes = [m for m in ("preset", "type", "plan", "recipe_from") if getattr(args, m, None)]
    if len(modes) != 1:
        raise QuantStudioError("give exactly one of --preset, --type or --plan (or --recipe-from)"
                               + (f" (got {', '.join('--' + m.replace('_', '-') for m in modes)})" if modes else ""))
    if args.recipe_from:
        from .models import open_model
        from .recipe import recipe_plan
        with open_model(args.recipe_from) as other:
            return recipe_plan(src, other, has_imatrix=imatrix is not None).plan
    if args.plan:
        plan = Plan.read(args.plan)
        plan.check_fits(src.tensors, args.plan)
        return plan
    return make_plan(src.tensors, src.metadata, rules_from_args(args, imatrix is not None))


def cmd_quantize(args) -> int:
    from .models import open_model

    src = open_model(args.input, writable=True)
    for w in getattr(src, "warnings", ()):
        print(f"{PROG}: warning: {w}", file=sys.stderr)
    imatrix = _load_imatrix(args, src)
    plan_text = None
    if any(getattr(args, k, None) for k in ("target_size", "target_bpw", "target_memory")):   # core.budget
        from .budget import plan_from_args
        bar = ProgressBar(enabled=False if args.json else None)
        try:
            plan, imatrix, plan_text = plan_from_args(src, args, imatrix, progress=bar,
                                                      log=lambda m: print(f"{PROG}: {m}", file=sys.stderr))
            if not args.no_check and not args.fast:
                from .budget import check_against_preset
                from .eval.run import read_text
                c = check_against_preset(src, plan, imatrix, text=read_text(args.calibration_text)[0],
                                         threads=args.threads or 2, progress=bar)
                verdict = ("WORSE than" if c["worse"] else "better than")
                print(f"{PROG}: budget plan ({c['size']} bytes) KLD {c['plan_kld']:.5f} on held-out chunks: {verdict} "
                      f"{c['preset']} ({c['preset_size']} bytes) at {c['preset_kld']:.5f}", file=sys.stderr)
                if c["worse"]:
                    print(f"{PROG}: warning: the preset {c['preset']} measured better here; consider --preset "
                          f"{c['preset']}", file=sys.stderr)
        finally:
            bar.close()
    else:
        plan = build_plan(src, args, imatrix)
    plan.check_imatrix(imatrix is not None)
    for w in plan.warnings:
        print(f"{PROG}: warning: {w}", file=sys.stderr)
    if args.save_plan:
        _save_text(args.save_plan, plan_text or plan.to_json())
    if args.dry_run:
        return _dry_run(src, plan, args, imatrix)
    return _run(src, plan, args, imatrix)


def _save_text(path: str, text: str) -> None:
    tmp = path + ".partial"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise QuantStudioError(f"cannot write: {e.strerror or e}", path) from None


def _imatrix_inputs(src, plan, imatrix):
    from .imatrix import imatrix_inputs

    importances, extra, warnings = imatrix_inputs(src, plan, imatrix)
    for w in warnings:
        print(f"{PROG}: warning: {w}", file=sys.stderr)
    return importances, extra


def _dry_run(src, plan, args, imatrix) -> int:
    from .plan import predict_size

    _, extra = _imatrix_inputs(src, plan, imatrix)
    pred = predict_size(plan, src, args.split_max_size, extra_kv=extra)
    if args.json:
        json.dump(_jsonable({"input": src.path, "preset": plan.preset, "file_size": pred.total,
                   "shard_sizes": pred.shard_sizes, "bpw": pred.bpw, "tensor_bytes": pred.tensor_bytes,
                   "warnings": plan.warnings,
                   "tensors": [{"name": e.name, "type": e.type, "reason": e.reason, "nbytes": t.nbytes,
                                "bpw": t.bpw} for e, t in zip(plan.entries, pred.tensors)]}, True), sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    rows = [[e.name, e.src_type, e.type, human_bytes(t.nbytes), f"{t.bpw:.3f}", e.reason]
            for e, t in zip(plan.entries, pred.tensors)]
    print(_table(rows, ["tensor", "from", "to", "size", "bpw", "why"], right={3, 4}))
    shards = f" in {len(pred.shard_sizes)} files" if len(pred.shard_sizes) > 1 else ""
    print(f"\n{plan.preset or 'plan'}: predicted size {human_bytes(pred.total)} ({pred.total} bytes){shards}, "
          f"{pred.bpw:.3f} bits/weight; nothing written (--dry-run)")
    return 0


def _run(src, plan, args, imatrix=None) -> int:
    from .job import run_plan
    from .progress import CancelToken, sigint_cancels

    importances, extra = _imatrix_inputs(src, plan, imatrix)
    bar = ProgressBar(enabled=False if args.json else None)
    cancel = CancelToken()
    try:
        with sigint_cancels(cancel):
            result = run_plan(src, plan, args.output, threads=args.threads, split_max_size=args.split_max_size,
                              importances=importances, extra_kv=extra, progress=bar, cancel=cancel)
    except (KeyboardInterrupt, Cancelled):
        cancel.cancel()
        raise Cancelled("cancelled by the user; no output was written", args.output) from None
    finally:
        bar.close()
    if args.verify:
        from .verify import verify
        bad = [r for r in (verify(p, src, threads=args.threads, importances=importances) for p in result.paths)
               if not r.ok]
        for r in bad:
            _print_verify(r, False)
        if bad:
            return 2
    src_bytes = sum(src.tensor(e.name).nbytes for e in plan.entries)
    summary = {"input": src.path, "output": result.paths, "preset": plan.preset, "file_size": result.size,
               "tensor_bytes": result.tensor_bytes, "source_bytes": src_bytes, "n_elements": result.n_elements,
               "bpw": result.bpw, "seconds": result.seconds,
               "tensors": [{"name": t.name, "type": t.type, "nbytes": t.nbytes, "seconds": t.seconds}
                           for t in result.tensors]}
    if args.json:
        json.dump(_jsonable(summary, True), sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    counts: dict[str, int] = {}
    for e in plan.entries:
        counts[e.type] = counts.get(e.type, 0) + 1
    print(f"wrote {', '.join(result.paths)}" + (" (verified: sound)" if args.verify else ""))
    print(f"  {plan.preset}: {len(plan.entries)} tensors ("
          + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())) + ")")
    print(f"  size {human_bytes(result.size)} (tensors {human_bytes(src_bytes)} -> "
          f"{human_bytes(result.tensor_bytes)}), {result.bpw:.3f} bits/weight, "
          f"{result.seconds:.1f} s ({human_count(result.n_elements / max(result.seconds, 1e-9))} weights/s)")
    return 0


def cmd_batch(args) -> int:
    from .batch import DEFAULT_TEMPLATE, plan_item, preset_item, run_batch
    from .models import open_model
    from .progress import CancelToken, sigint_cancels

    items = [preset_item(name.strip()) if kind == "preset" else plan_item(v)
             for kind, v in args.items or () for name in (v.split(",") if kind == "preset" else [v])]
    src = open_model(args.input, writable=True)
    for w in getattr(src, "warnings", ()):
        print(f"{PROG}: warning: {w}", file=sys.stderr)
    imatrix = _load_imatrix(args, src)
    bar = ProgressBar(enabled=False if args.json else None)
    cancel = CancelToken()

    def item_over(r) -> None:
        if args.json or r.state in ("waiting", "quantizing", "verifying"):
            return
        bar.close()
        for w in r.warnings:
            print(f"{PROG}: warning: {r.label}: {w}", file=sys.stderr)
        print(f"{PROG}: {r.label}: {r.verdict}", file=sys.stderr)

    try:
        with sigint_cancels(cancel):
            res = run_batch(src, items, args.outdir, args.name_template or DEFAULT_TEMPLATE, imatrix=imatrix,
                            overwrite=args.overwrite, threads=args.threads, progress=bar, cancel=cancel,
                            on_item=item_over)
    except KeyboardInterrupt:
        cancel.cancel()
        raise Cancelled("cancelled by the user", args.outdir) from None
    finally:
        bar.close()
    if args.json:
        json.dump(_jsonable(res.to_dict(), True), sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0 if res.ok else 2
    rows = [[r.label, os.path.basename(r.path), human_bytes(r.size) if r.size else "-",
             f"{r.bpw:.3f}" if r.size else "-", f"{r.seconds:.1f} s" if r.seconds else "-",
             "sound" if r.ok else r.verdict if r.state == "defects" else f"FAILED: {r.verdict}"] for r in res.items]
    print(_table(rows, ["item", "file", "size", "bpw", "time", "verify"], right={2, 3, 4}))
    n_ok = sum(r.ok for r in res.items)
    print(f"\n{n_ok} of {len(res.items)} files written and verified in {res.folder} ({format_duration(res.seconds)})")
    return 0 if res.ok else 2


def _print_verify(report, as_json: bool) -> int:
    """The verify report on stdout (or stderr next to a quantize summary); 0 when sound, 2 otherwise."""
    if as_json:
        json.dump(_jsonable(report.to_dict(), True), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        measured = [t for t in report.tensors if t.rel_rmse is not None]
        vs = f"; error against {os.path.basename(report.source)} as each type gives ({len(measured)} tensors)" \
            if report.source else ""
        approx = sum("approximate" in t.check for t in report.tensors)
        loose = sum(t.check == "plausibility" for t in report.tensors)
        vs += f", {approx} of them approximately (requantized without the file's imatrix)" if approx else ""
        vs += f", {loose} only for a plausible error (types we cannot write)" if loose else ""
        if report.ok:
            print(f"{report.path}: sound -- {len(report.tensors)} tensors; header, metadata, offsets and sizes "
                  f"agree with gguf-py; every tensor decodes{vs}")
        else:
            print(f"{report.path}: {len(report.defects)} defects", file=sys.stderr)
            for d in report.defects[:20]:
                print(f"  {d}", file=sys.stderr)
    return 0 if report.ok else 2


def cmd_verify(args) -> int:
    from .models import open_model
    from .verify import verify

    if args.imatrix and not args.source:
        raise QuantStudioError("--imatrix needs --source (the weights are for requantizing it)", args.file)
    source = open_model(args.source) if args.source else None
    imatrix = _load_imatrix(args, source)
    importances = None if imatrix is None else imatrix.arrays_for(source.tensors)   # PlanError when mis-sized
    bar = ProgressBar(enabled=False if args.json else None)
    try:
        report = verify(args.file, source, threads=args.threads, progress=bar, importances=importances)
    finally:
        bar.close()
    return _print_verify(report, args.json)


def _short(v, limit: int = 60) -> str:
    v = _jsonable(v)
    text = json.dumps(v, ensure_ascii=False) if isinstance(v, list) else str(v)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def cmd_diff(args) -> int:
    from .compare import compare
    from .models import open_model

    if args.eval and not args.source:
        raise QuantStudioError("--eval needs --source: the model both files were made from, to evaluate them against")
    a, b = open_model(args.a), open_model(args.b)
    source = open_model(args.source) if args.source else None
    bar = ProgressBar(enabled=False if args.json else None)
    try:
        c = compare(a, b, source, threads=args.threads or 1, progress=bar)
    finally:
        bar.close()
    if args.eval:
        from .compare import EvalComparison
        from .eval.run import file_candidate

        chunks, _, name = _chunks_for(source, args)
        results = _evaluate(source, [file_candidate(args.a, a), file_candidate(args.b, b)], chunks, args)
        c.evaluation = EvalComparison(c.a, c.b, c.source, name, chunks.n_ctx, chunks.n_chunk, results)
    if args.json:
        d = c.to_dict()
        d["metadata"] = _jsonable(d["metadata"])              # a vocabulary: its length and first items
        if c.evaluation is not None:
            d["eval"] = eval_json(c.evaluation.results)
        json.dump(_jsonable(d, True), sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    err = source is not None
    head = ["", "tensor", "A type", "A bpw", "B type", "B bpw", "A size", "B size"] + (["A rel RMSE", "B rel RMSE"]
                                                                                   if err else [])
    rows, last = [], object()
    for t in c.tensors:
        if t.layer != last and (args.all or any(u.differs for u in c.tensors if u.layer == t.layer)):
            last = t.layer
            rows.append(["", "-- " + ("non-layer tensors" if t.layer is None else f"layer {t.layer}"), "", "", "", "",
                         "", ""] + (["", ""] if err else []))
        if not args.all and not t.differs:
            continue
        r = ["*" if t.differs else "", t.name, t.a_type or "-", f"{t.a_bpw:.3f}" if t.a_type else "-",
             t.b_type or "-", f"{t.b_bpw:.3f}" if t.b_type else "-", human_bytes(t.a_bytes), human_bytes(t.b_bytes)]
        if err:
            r += [_num(t.a_rel_rmse) if t.a_rel_rmse is not None else "-",
                  _num(t.b_rel_rmse) if t.b_rel_rmse is not None else "-"]
        rows.append(r)
    if rows:
        print(_table(rows, head, right={3, 5, 6, 7, 8, 9}))
    tot = c.totals()
    print(f"\nA {c.a}: {human_bytes(tot['a_file_size'])}, {tot['a_bpw']:.3f} bits/weight")
    print(f"B {c.b}: {human_bytes(tot['b_file_size'])}, {tot['b_bpw']:.3f} bits/weight")
    print(f"{tot['different']} of {tot['tensors']} tensors have different types"
          + ("" if args.all else " (listed; --all lists every tensor)"))
    ev = c.evaluation
    if ev is not None:
        print("\n" + eval_table(ev.results, ev.n_chunk, ev.n_ctx, ev.text, first=("", "A", "B")))
        closer = ev.closer
        print(f"{closer} is closer to the source (lower mean KLD)" if closer else
              "the mean KLDs of A and B are within their errors of each other")
    lines = c.metadata_lines(_short)
    print("metadata:" if lines else "metadata: identical")
    for line in lines:
        print(f"  {line}")
    return 0


def cmd_set_metadata(args) -> int:
    from .metadata_edit import parse_assignment, set_metadata
    from .models import open_model

    with open_model(args.input) as src:
        current = {k.key: k for k in src.kv} if getattr(src, "kv", None) else {}
        changes = [parse_assignment(a, current.get(a.partition("=")[0].partition(":")[0].strip()))
                   for a in args.changes]
        if not changes and not args.remove:
            raise QuantStudioError("nothing to change: give KEY=VALUE ... or --remove KEY")
        set_metadata(src, args.output, changes, args.remove or ())
    print(f"wrote {args.output}: {len(changes)} keys set, {len(args.remove or ())} removed, tensors copied as they are")
    return 0


def _chunks_for(src, args):
    from .eval.run import prepare_chunks, read_text

    text, name = read_text(args.text)
    if args.ctx < 16:
        raise QuantStudioError(f"--ctx {args.ctx}: use at least 16 tokens per chunk")
    return prepare_chunks(src, text, args.ctx, args.chunks), text, name


def cmd_imatrix(args) -> int:
    from .eval.run import compute_imatrix, imatrix_provenance
    from .models import open_model
    from .progress import CancelToken, sigint_cancels

    fmt = args.format or ("dat" if args.output.lower().endswith(".dat") else "gguf")
    src = open_model(args.model)
    chunks, text, name = _chunks_for(src, args)
    bar = ProgressBar(enabled=False if args.json else None)
    cancel = CancelToken()
    t0 = time.perf_counter()
    try:
        with sigint_cancels(cancel):
            col = compute_imatrix(src, chunks, threads=args.threads, process_output=args.process_output,
                                  progress=bar, cancel=cancel)
    except (KeyboardInterrupt, Cancelled):
        raise Cancelled("cancelled by the user; no output was written", args.output) from None
    finally:
        bar.close()
    prov = imatrix_provenance(src, chunks, text, name)
    path = col.write_dat(args.output, name) if fmt == "dat" else col.write_gguf(args.output, prov)
    summary = {"output": path, "format": fmt, "dataset": name, "chunks": chunks.n_chunk, "ctx": chunks.n_ctx,
               "tokens": chunks.n_chunk * chunks.n_ctx, "tensors": len(col.stats),
               "seconds": round(time.perf_counter() - t0, 3)}
    if args.json:
        json.dump(summary, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(f"wrote {path}\n  {summary['tensors']} tensors from {summary['chunks']} chunks of {summary['ctx']} "
              f"tokens ({name}), {format_duration(summary['seconds'])}")
    return 0


def _eval_candidates(src, args):
    from .eval.run import Candidate, file_candidate
    from .plan import Plan, make_plan, predict_size
    from .rules import PlanRules, writable

    imatrix = _load_imatrix(args, src)
    cands = []

    def add_plan(label, plan):
        plan.check_imatrix(imatrix is not None)
        importances = None
        if imatrix is not None:
            importances, _ = _imatrix_inputs(src, plan, imatrix)
        pred = predict_size(plan, src)
        cands.append(Candidate(label, plan=plan, importances=importances, size=pred.total, bpw=pred.bpw,
                               info={"kind": "plan"}))

    for path in args.candidates:
        cands.append(file_candidate(path))
    for p in args.preset:
        add_plan(p, make_plan(src.tensors, src.metadata, PlanRules.make(p, has_imatrix=imatrix is not None)))
    for t in args.type:
        add_plan(f"{writable(t, '--type')} (pure)",
                 make_plan(src.tensors, src.metadata, PlanRules.make(writable(t, "--type"), pure=True,
                                                                     has_imatrix=imatrix is not None)))
    for path in args.plan:
        add_plan(os.path.basename(path), Plan.read(path))
    if not cands:
        raise QuantStudioError("nothing to evaluate: give CANDIDATE.gguf files, --preset, --type or --plan")
    return cands


EVAL_KEYS = ("tokens", "ppl_base", "ppl", "kld_mean", "kld_percentiles", "delta_p_rms", "same_top_p")


def _evaluate(src, cands, chunks, args) -> list:
    """core.eval.run.evaluate with the terminal's progress bar; Ctrl-C cancels (``eval``, ``diff --eval``)."""
    from .eval.run import evaluate
    from .progress import CancelToken, sigint_cancels

    bar = ProgressBar(enabled=False if args.json else None)
    cancel = CancelToken()
    try:
        with sigint_cancels(cancel):
            return evaluate(src, cands, chunks, threads=args.threads, progress=bar, cancel=cancel)
    except (KeyboardInterrupt, Cancelled):
        raise Cancelled("cancelled by the user") from None
    finally:
        bar.close()


def eval_json(results) -> list[dict]:
    """Evaluation results (core.eval.run.EvalResult) as ``eval --json`` writes them, one dict each (also
    ``diff --eval --json``'s "eval")."""
    rows = []
    for r in results:
        d = {"label": r.label, "size": r.size, "bpw": r.bpw}
        full = r.kld.to_dict()
        d.update({k: full[k] for k in EVAL_KEYS})
        d["kld_percentiles"] = {f"{p:g}": v for p, v in r.kld.kld_percentiles.items()}
        d.update({k: full[k] for k in ("ppl_err", "ppl_base_err", "kld_err", "delta_p_rms_err", "same_top_p_err",
                                       "kld_max")})
        rows.append(d)
    return rows


def eval_table(results, n_chunk: int, n_ctx: int, text: str, first: Optional[tuple] = None) -> str:
    """Evaluation results as ``eval`` prints them: a line on the text and the base, then a row per result
    (``first``: a leading column, its header then one cell per result, e.g. ``("", "A", "B")``)."""
    k0 = results[0].kld
    rows = [[r.label, human_bytes(r.size) if r.size else "", f"{r.bpw:.3f}" if r.bpw else "",
             f"{r.kld.ppl:.4f}", f"{r.kld.kld_mean:.5f} ± {r.kld.kld_err:.5f}", f"{r.kld.kld_percentiles[99.0]:.4f}",
             f"{100 * r.kld.delta_p_rms:.2f} %", f"{100 * r.kld.same_top_p:.2f} %"] for r in results]
    head = ["candidate", "size", "bpw", "PPL", "KLD mean", "KLD 99%", "RMS Δp", "same top"]
    right = {1, 2, 3, 4, 5, 6, 7}
    if first:
        rows = [[c] + r for c, r in zip(first[1:], rows)]
        head, right = [first[0]] + head, {i + 1 for i in right}
    return (f"{n_chunk} chunks of {n_ctx} tokens ({text}), {k0.tokens} tokens scored; "
            f"base PPL {k0.ppl_base:.4f} ± {k0.ppl_base_err:.4f}\n" + _table(rows, head, right=right))


def cmd_eval(args) -> int:
    from .models import open_model

    src = open_model(args.base)
    cands = _eval_candidates(src, args)
    chunks, _, name = _chunks_for(src, args)
    results = _evaluate(src, cands, chunks, args)
    if args.json:
        rows = eval_json(results)
        json.dump(rows[0] if len(rows) == 1 else rows, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    print(eval_table(results, chunks.n_chunk, chunks.n_ctx, name))
    return 0


def cmd_demo(args) -> int:
    from .demo import demo_model_path

    args.input = demo_model_path()
    for k in ("preset", "plan", "imatrix", "tensor_type", "layer_type", "keep", "token_embedding_type",
              "output_tensor_type", "save_plan", "manual", "recipe_from"):
        setattr(args, k, None)
    args.pure = args.dry_run = args.leave_output_tensor = args.verify = False
    os.makedirs(args.output_dir, exist_ok=True)
    args.output = os.path.join(args.output_dir, f"SmolLM2-135M-Instruct.{args.type.upper()}.gguf")
    print(f"demo: quantizing {args.input} to {args.type.upper()}")
    rc = cmd_quantize(args)
    if rc == 0 and not args.json:
        from .models import open_model
        with open_model(args.output) as out:
            rows = [[t.name, t.dtype, "x".join(map(str, t.shape)), human_bytes(t.nbytes), f"{t.bpw:.2f}"]
                    for t in out.tensors]
            print(_table(rows, ["tensor", "type", "shape", "size", "bpw"], right={3, 4}))
    return rc


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Inspect language-model checkpoints and quantize them "
                                "to GGUF for llama.cpp. With no command, starts the studio.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)          # also after the command: `inspect X --debug`
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")

    pi = sub.add_parser("inspect", parents=[common], help="model summary and per-tensor statistics")
    pi.add_argument("model", help="GGUF file, .safetensors file or Hugging Face folder")
    pi.add_argument("--json", action="store_true", help="machine-readable output")
    pi.add_argument("--no-stats", action="store_true", help="list tensors from the headers only")
    pi.add_argument("--full", action="store_true", help="with --json: every array in full (a vocabulary too); "
                    f"by default arrays longer than {SUMMARY_ITEMS} give their length and first items")
    pi.add_argument("--threads", type=int, default=None, help="worker threads (default: all cores)")

    def add_run_args(q):
        q.add_argument("--threads", type=int, default=None, help="worker threads (default: all cores)")
        q.add_argument("--split-max-size", type=_size_arg, default=None, metavar="SIZE",
                       help="split the output into shards of at most SIZE (e.g. 500M, 2G), named like gguf-split")
        q.add_argument("--json", action="store_true", help="print the summary as JSON")

    pq = sub.add_parser("quantize", parents=[common], help="quantize a model to GGUF with a llama-quantize preset, a type, a plan "
                        "or another file's recipe",
                        description="Quantize a GGUF, safetensors file or Hugging Face folder to GGUF. Give one of "
                        "--preset (llama-quantize's file types and per-tensor rules), --type (every quantizable "
                        "tensor to one type, as llama-quantize --pure), --plan or --recipe-from.")
    pq.add_argument("input", help="source model")
    pq.add_argument("output", help="output .gguf path")
    from .presets import PRESETS
    pq.add_argument("--preset", help="llama-quantize file type: " + ", ".join(PRESETS))
    from .qtypes import writable_type_names
    pq.add_argument("--type", help="one GGUF type for every quantizable tensor (llama-quantize --pure): "
                    + ", ".join(writable_type_names()))
    pq.add_argument("--plan", help="a plan saved as JSON (by --save-plan or the studio)")
    pq.add_argument("--recipe-from", metavar="OTHER.gguf",
                    help="every tensor gets the type it has in OTHER.gguf (its mix, order and file type); "
                    "tensors whose rows cannot take it fall back as llama.cpp does")
    pq.add_argument("--pure", action="store_true", help="with --preset: no per-tensor rules, one type")
    pq.add_argument("--imatrix", help="importance matrix (llama-imatrix .gguf or legacy .dat)")
    pq.add_argument("--tensor-type", action="append", metavar="REGEX=TYPE",
                    help="type for tensors whose name matches REGEX (first match wins; repeatable)")
    pq.add_argument("--layer-type", action="append", metavar="FIRST-LAST[:REGEX]=TYPE",
                    help="type for the tensors of layers FIRST..LAST (only those matching REGEX when given; "
                    "after every --tensor-type; repeatable)")
    pq.add_argument("--keep", action="append", metavar="REGEX", help="leave matching tensors unquantized")
    pq.add_argument("--token-embedding-type", metavar="TYPE", help="type of token_embd.weight")
    pq.add_argument("--output-tensor-type", metavar="TYPE", help="type of output.weight")
    pq.add_argument("--leave-output-tensor", action="store_true", help="do not quantize output.weight")
    pq.add_argument("--manual", action="append", metavar="TENSOR=TYPE",
                    help="type of one tensor by name, over every other rule (repeatable)")
    pq.add_argument("--no-check", action="store_true", help="with a target: skip evaluating the solver's plan "
                    "against the nearest llama-quantize preset on held-out text")
    pq.add_argument("--target-size", metavar="SIZE", help="choose a type per tensor (core.budget) for a file of at "
                    "most SIZE (4.5G, 700M, 3.2GiB or bytes), from measured error and sensitivity")
    pq.add_argument("--target-bpw", type=float, metavar="X", help="as --target-size, for X bits per weight")
    pq.add_argument("--target-memory", metavar="SIZE", help="as --target-size, for weights + KV cache (F16) + "
                    "compute buffer of --context tokens to fit in SIZE")
    pq.add_argument("--context", type=int, metavar="N", help="with --target-memory: context length")
    pq.add_argument("--calibration-text", metavar="FILE", help="with a target: text for the imatrix (when no "
                    "--imatrix) and the sensitivity measurement (default: the built-in text)")
    pq.add_argument("--pin", action="append", metavar="REGEX=TYPE", help="with a target: tensors matching REGEX "
                    "get TYPE (REGEX=>=TYPE: at least TYPE's bits per weight); repeatable")
    pq.add_argument("--allow-types", metavar="T,T,...", help="with a target: the candidate types")
    pq.add_argument("--fast", action="store_true", help="with a target: imatrix-weighted error only, no "
                    "sensitivity measurement with the forward pass")
    pq.add_argument("--save-plan", metavar="FILE", help="write the plan as JSON")
    pq.add_argument("--dry-run", action="store_true", help="print the per-tensor plan, predicted size and bpw; "
                    "write nothing")
    pq.add_argument("--verify", action="store_true", help="check the written file (as `verify FILE --source INPUT`); "
                    "exit 2 when it has a defect")
    add_run_args(pq)

    pb = sub.add_parser("batch", parents=[common], help="several presets or plans of one model in one run, each "
                        "file verified",
                        description="Writes one GGUF per --preset / --plan (in the order given) into OUTDIR, named by "
                        "--name-template, one after another, and checks each against INPUT as `verify FILE --source "
                        "INPUT` does. An item that fails (e.g. a preset that needs an importance matrix when none is "
                        "given) is reported and the others go on; a name given twice or an existing file is refused "
                        "before anything is written. Exit status 0 when every file was written and verified, 2 "
                        "otherwise. Ctrl-C stops at the next chunk: no partial file is left, finished files stay.")
    pb.add_argument("input", help="source model")
    pb.add_argument("outdir", help="output folder (made when missing)")
    pb.add_argument("--preset", dest="items", action="append", metavar="PRESET[,PRESET...]",
                    type=lambda v: ("preset", v),
                    help="a llama-quantize preset (repeatable; or several separated by commas)")
    pb.add_argument("--plan", dest="items", action="append", metavar="PLAN.json", type=lambda v: ("plan", v),
                    help="a plan saved as JSON (repeatable); its {preset} is the file's name without .json/.plan.json")
    pb.add_argument("--name-template", metavar="TEMPLATE", help="output file name from {model} (the input's base "
                    "name without extension), {preset} (the preset's or plan's name) and {type} (the plan's "
                    "llama-quantize file type); default: {model}-{preset}.gguf")
    pb.add_argument("--imatrix", help="importance matrix for every item (llama-imatrix .gguf or legacy .dat)")
    pb.add_argument("--overwrite", action="store_true", help="replace existing files")
    pb.add_argument("--threads", type=int, default=None, help="worker threads (default: all cores)")
    pb.add_argument("--json", action="store_true", help="print the per-item results as JSON")

    pv = sub.add_parser("verify", parents=[common], help="check a GGUF: structure against gguf-py, every tensor decodes, and "
                        "with --source each tensor's error is what its type gives",
                        description="Exit status 0 for a sound file, 2 for a defect (each one named).")
    pv.add_argument("file", help="the GGUF to check")
    pv.add_argument("--source", help="the model it was made from (GGUF, safetensors or Hugging Face folder)")
    pv.add_argument("--imatrix", help="with --source: the importance matrix the file was made with (llama-imatrix "
                    ".gguf or legacy .dat); its weights make the requantization exact for every type (without it, "
                    "the imatrix the file's metadata names is used when it exists, else IQ2_XXS/IQ2_XS/IQ1_S are "
                    "compared with a requantization with uniform weights, approximately)")
    pv.add_argument("--json", action="store_true", help="machine-readable report")
    pv.add_argument("--threads", type=int, default=None, help="worker threads (default: all cores)")

    def add_text_args(q, chunks_default, run_opts=True):
        q.add_argument("--text", metavar="FILE", help="UTF-8 text (default: the built-in calibration text: prose, "
                       "code and several languages)")
        q.add_argument("--ctx", type=int, default=512, help="tokens per chunk (default 512)")
        q.add_argument("--chunks", type=int, default=chunks_default,
                       help=f"at most this many chunks (default {chunks_default}; -1: the whole text)")
        if run_opts:
            q.add_argument("--threads", type=int, default=None, help="BLAS threads (default: all cores)")
            q.add_argument("--json", action="store_true", help="machine-readable output")

    pf = sub.add_parser("diff", parents=[common], help="two GGUF quants side by side: per-tensor types, sizes, metadata "
                        "(each file's error with --source; PPL/KLD with --eval)")
    pf.add_argument("a", help="first GGUF")
    pf.add_argument("b", help="second GGUF")
    pf.add_argument("--source", help="the model both were made from: adds each file's error per tensor")
    pf.add_argument("--all", action="store_true", help="list every tensor, not only those whose types differ")
    pf.add_argument("--json", action="store_true", help="machine-readable output")
    pf.add_argument("--threads", type=int, default=None, help="worker threads (with --eval also BLAS threads)")
    pf.add_argument("--eval", action="store_true", help="with --source: also run both files against it through the "
                    "forward pass (as `eval SOURCE A B`: PPL, KLD, same top token)")
    add_text_args(pf, 32, run_opts=False)

    pm = sub.add_parser("set-metadata", parents=[common], help="write a copy of a GGUF with metadata changed (tensors copied "
                        "as they are, no requantization)",
                        description="KEY=VALUE keeps the type the key has (else infers it); KEY:TYPE=VALUE sets "
                        "it (u8 i8 u16 i16 u32 i32 u64 i64 f32 f64 bool str, arr[T] with a JSON list); "
                        "KEY=@FILE takes a file's text, e.g. tokenizer.chat_template=@template.jinja.")
    pm.add_argument("input", help="GGUF to read")
    pm.add_argument("output", help="GGUF to write")
    pm.add_argument("changes", nargs="*", metavar="KEY=VALUE")
    pm.add_argument("--remove", action="append", metavar="KEY", help="drop this key (repeatable)")

    pc = sub.add_parser("imatrix", parents=[common], help="compute an importance matrix (as llama-imatrix does) by "
                        "running text through the model",
                        description="Runs the text through the model in chunks of --ctx tokens (BOS first, as "
                        "llama-imatrix) and writes the sum of squared activations per input channel of every "
                        "matrix, in llama.cpp's GGUF imatrix format (or the legacy .dat).")
    pc.add_argument("model", help="GGUF file, .safetensors file or Hugging Face folder")
    pc.add_argument("-o", "--output", required=True, help="output imatrix (.gguf, or .dat for the legacy format)")
    pc.add_argument("--format", choices=("gguf", "dat"), default=None, help="default: from the output's extension")
    pc.add_argument("--process-output", action="store_true", help="also collect output.weight (llama-imatrix "
                    "--process-output)")
    add_text_args(pc, -1)

    pe = sub.add_parser("eval", parents=[common], help="perplexity and KL-divergence of quants against the source "
                        "(as llama-perplexity --kl-divergence), files or plans without writing them",
                        description="Candidates: GGUF files of the same model, and/or plans evaluated without "
                        "writing a file (--preset, --type, --plan, each repeatable; with --imatrix for their "
                        "importance weights). Same protocol as llama-perplexity --kl-divergence: chunks of --ctx "
                        "tokens, BOS first, the second half of each chunk scored.")
    pe.add_argument("base", help="the reference model (the source: GGUF, safetensors or Hugging Face folder)")
    pe.add_argument("candidates", nargs="*", metavar="CANDIDATE.gguf", help="quantized files to compare")
    pe.add_argument("--preset", action="append", default=[], help="a llama-quantize preset, simulated")
    pe.add_argument("--type", action="append", default=[], help="one type for every quantizable tensor, simulated")
    pe.add_argument("--plan", action="append", default=[], help="a plan JSON, simulated")
    pe.add_argument("--imatrix", help="importance matrix for the simulated plans")
    add_text_args(pe, 32)

    pd = sub.add_parser("demo", parents=[common], help="quantize the built-in demo model (SmolLM2-135M) and print the result")
    pd.add_argument("--type", default="Q8_0", help="GGUF type (default Q8_0)")
    pd.add_argument("--output-dir", default=os.path.join(os.getcwd(), "demo-output"))
    add_run_args(pd)
    return p


COMMANDS = ("inspect", "quantize", "batch", "verify", "diff", "set-metadata", "imatrix", "eval", "demo")


def wants_gui(argv: Sequence[str]) -> bool:
    """No command (``quant-studio``, ``quant-studio MODEL``, ``quant-studio --self-test``) starts the studio."""
    positional = [a for a in argv if not a.startswith("-")]
    if positional and positional[0] in COMMANDS:
        return False
    return not any(a in ("-h", "--help", "--version") for a in argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The headless CLI. (The ``quant-studio`` launcher in ``app.launcher`` sends command-less calls to
    the studio and everything else here.)"""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    handler = {"inspect": cmd_inspect, "quantize": cmd_quantize, "verify": cmd_verify, "diff": cmd_diff,
               "batch": cmd_batch, "set-metadata": cmd_set_metadata, "imatrix": cmd_imatrix, "eval": cmd_eval,
               "demo": cmd_demo}[args.command]
    try:
        return handler(args)
    except QuantStudioError as e:
        if args.debug:
            raise
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"{PROG}: error: cancelled by the user", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"{PROG}: error: out of memory", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a bug: one line unless --debug
        if args.debug:
            raise
        print(f"{PROG}: internal error: {type(e).__name__}: {e} (run with --debug for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
