"""``quant-studio``: command-line front end. Argument parsing and terminal output only;
everything it does is a call into ``core``."""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from typing import Optional, Sequence

from . import __version__
from .errors import Cancelled, QuantStudioError

PROG = "quant-studio"


# ----------------------------------------------------------------------------- formatting
def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def human_count(n: float) -> str:
    for unit, k in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= k:
            return f"{n / k:.2f}{unit}"
    return f"{n:.0f}"


def parse_size(text: str) -> int:
    """gguf-split sizes: ``500M`` / ``2G`` (decimal units, as llama.cpp), ``K`` too, or plain bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)\s*", text.upper())
    if not m or int(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"invalid size '{text}': use a positive number with M or G (e.g. 500M)")
    return int(m.group(1)) * {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3}[m.group(2)]


class ProgressBar:
    """A one-line progress bar with ETA on a terminal (stderr); silent otherwise."""

    def __init__(self, stream=None, enabled: Optional[bool] = None, width: int = 28):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.width = width
        self._last = 0.0

    def __call__(self, ev) -> None:
        from .progress import format_duration

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
    from .sources import open_model

    src = open_model(args.model)
    summary = src.summary()
    stats = {}
    if not args.no_stats:
        from .inspect import model_stats

        bar = ProgressBar(enabled=None if not args.json else False)
        try:
            stats = model_stats(src, threads=args.threads, progress=bar)
        finally:
            bar.close()
    if args.json:
        out = {"summary": summary, "metadata": {k: _jsonable(v) for k, v in src.metadata.items()},
               "tensors": [{"name": t.name, "shape": list(t.shape), "type": t.dtype, "nbytes": t.nbytes,
                            **({"stats": stats[t.name].to_dict()} if t.name in stats else {})}
                           for t in src.tensors]}
        json.dump(out, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    print(f"{summary['name']}  ({summary['format']}, {summary['architecture'] or 'unknown architecture'})")
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


def _jsonable(v):
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v[:64]] + (["…"] if len(v) > 64 else [])
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def cmd_quantize(args) -> int:
    from .plan import pure_plan
    from .sources import open_model
    from .job import run_plan

    src = open_model(args.input)
    plan = pure_plan(src.tensors, args.type, src.architecture)
    if os.path.abspath(args.output) == os.path.abspath(args.input):
        raise QuantStudioError("output would overwrite the input", args.output)
    return _run(src, plan, args)


def _run(src, plan, args) -> int:
    from .job import run_plan
    from .progress import CancelToken

    bar = ProgressBar(enabled=False if args.json else None)
    cancel = CancelToken()
    try:
        result = run_plan(src, plan, args.output, threads=args.threads, split_max_size=args.split_max_size,
                          progress=bar, cancel=cancel)
    except KeyboardInterrupt:
        cancel.cancel()
        raise Cancelled("cancelled by the user; no output was written", args.output) from None
    finally:
        bar.close()
    src_bytes = sum(src.tensor(e.name).nbytes for e in plan.entries)
    summary = {"input": src.path, "output": result.paths, "preset": plan.preset, "file_size": result.size,
               "tensor_bytes": result.tensor_bytes, "source_bytes": src_bytes, "n_elements": result.n_elements,
               "bpw": result.bpw, "seconds": result.seconds,
               "tensors": [{"name": t.name, "type": t.type, "nbytes": t.nbytes, "seconds": t.seconds}
                           for t in result.tensors]}
    if args.json:
        json.dump(summary, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    counts: dict[str, int] = {}
    for e in plan.entries:
        counts[e.type] = counts.get(e.type, 0) + 1
    print(f"wrote {', '.join(result.paths)}")
    print(f"  {plan.preset}: {len(plan.entries)} tensors ("
          + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())) + ")")
    print(f"  size {human_bytes(result.size)} (tensors {human_bytes(src_bytes)} -> "
          f"{human_bytes(result.tensor_bytes)}), {result.bpw:.3f} bits/weight, "
          f"{result.seconds:.1f} s ({human_count(result.n_elements / max(result.seconds, 1e-9))} weights/s)")
    return 0


def cmd_demo(args) -> int:
    from .demo import demo_model_path

    args.input = demo_model_path()
    os.makedirs(args.output_dir, exist_ok=True)
    args.output = os.path.join(args.output_dir, f"SmolLM2-135M-Instruct.{args.type.upper()}.gguf")
    print(f"demo: quantizing {args.input} to {args.type.upper()}")
    rc = cmd_quantize(args)
    if rc == 0 and not args.json:
        from .sources import open_model
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

    pi = sub.add_parser("inspect", help="model summary and per-tensor statistics")
    pi.add_argument("model", help="GGUF file, .safetensors file or Hugging Face folder")
    pi.add_argument("--json", action="store_true", help="machine-readable output")
    pi.add_argument("--no-stats", action="store_true", help="list tensors from the headers only")
    pi.add_argument("--threads", type=int, default=None, help="worker threads (default: all cores)")

    def add_run_args(q):
        q.add_argument("--threads", type=int, default=None, help="worker threads (default: all cores)")
        q.add_argument("--split-max-size", type=parse_size, default=None, metavar="SIZE",
                       help="split the output into shards of at most SIZE (e.g. 500M, 2G), named like gguf-split")
        q.add_argument("--json", action="store_true", help="print the summary as JSON")

    pq = sub.add_parser("quantize", help="quantize a model to GGUF (like llama-quantize --pure)")
    pq.add_argument("input", help="source model")
    pq.add_argument("output", help="output .gguf path")
    pq.add_argument("--type", required=True, help="GGUF type for the quantizable weights, e.g. Q8_0, Q4_0, F16")
    add_run_args(pq)

    pd = sub.add_parser("demo", help="quantize the built-in demo model (SmolLM2-135M) and print the result")
    pd.add_argument("--type", default="Q8_0", help="GGUF type (default Q8_0)")
    pd.add_argument("--output-dir", default=os.path.join(os.getcwd(), "demo-output"))
    add_run_args(pd)
    return p


COMMANDS = ("inspect", "quantize", "demo")


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
    handler = {"inspect": cmd_inspect, "quantize": cmd_quantize, "demo": cmd_demo}[args.command]
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
