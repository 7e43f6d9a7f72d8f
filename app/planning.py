"""What the plan panel decided, and the core calls that turn it into a :class:`core.plan.Plan`.

The user's choices are a :class:`PlanSpec`: a preset, regex rules (optionally limited to a
layer range), token-embedding/output types and manual per-tensor edits. ``core.plan.make_plan``
turns them into a plan (regex rules as ``tensor_types``, layer-range rules as ``layer_ranges``,
edits as ``manual``); the copied command lines come from the same spec.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Optional

from core import plan as cplan
from core.errors import PlanError, QuantStudioError
from core.qtypes import DESCRIPTIONS, parse_type, type_info, writable_types


@dataclass
class Rule:
    """``pattern`` (regex, searched in tensor names) -> ``type``, only in layers lo..hi when given."""

    pattern: str
    type: str
    layer_lo: Optional[int] = None
    layer_hi: Optional[int] = None

    def regex(self) -> str:
        if self.layer_lo is None and self.layer_hi is None:
            return self.pattern
        lo = 0 if self.layer_lo is None else self.layer_lo
        hi = lo if self.layer_hi is None else self.layer_hi
        layers = "|".join(str(i) for i in range(lo, hi + 1))
        return rf"^blk\.(?:{layers})\..*(?:{self.pattern or '.*'})"

    def label(self) -> str:
        where = "" if self.layer_lo is None else f" in layers {self.layer_lo}-{self.layer_hi}"
        return f"{self.pattern}{where} → {self.type}"


@dataclass
class PlanSpec:
    preset: str = "Q8_0"
    rules: list[Rule] = field(default_factory=list)
    token_embedding_type: Optional[str] = None
    output_tensor_type: Optional[str] = None
    overrides: dict[str, str] = field(default_factory=dict)     # tensor name -> type (manual edits)


# -- what core offers ----------------------------------------------------------------------
def preset_names() -> list[str]:
    """Every preset core offers (llama-quantize names, in its order)."""
    from core.presets import PRESETS
    return list(PRESETS)


def preset_description(name: str) -> str:
    from core.presets import PRESETS
    p = PRESETS.get(name)
    return f"{name}: {p.description}" if p is not None else type_description(name)


def type_names(row_len: Optional[int] = None) -> list[str]:
    """Writable types, most bits first; only those whose blocks fit ``row_len`` when given."""
    ts = [t for t in writable_types() if row_len is None or type_info(t).fits(row_len)]
    return [t.name for t in sorted(ts, key=lambda t: (-type_info(t).bpw, t.name))]


def type_description(name: str) -> str:
    try:
        t = parse_type(name)
    except PlanError:
        return ""
    return f"{t.name}: {DESCRIPTIONS.get(t, '')} ({type_info(t).bpw:.3g} bits/weight)"


def quantizable(source, name: str) -> bool:
    t = source.tensor(name)
    return cplan.allows_quantization(name, t.n_dims, source.architecture)


# -- building ------------------------------------------------------------------------------
def build_plan(source, spec: PlanSpec, has_imatrix: bool = False) -> cplan.Plan:
    """The plan for ``source`` under ``spec`` (PlanError with a readable message when impossible)."""
    tensor_types = [(r.pattern, r.type) for r in spec.rules if r.layer_lo is None]
    layer_ranges = [(r.layer_lo, r.layer_hi if r.layer_hi is not None else r.layer_lo, r.type)
                    + ((r.pattern,) if r.pattern not in ("", ".*") else ()) for r in spec.rules if r.layer_lo is not None]
    return cplan.make_plan(source.tensors, source.metadata, spec.preset, tensor_types=tensor_types,
                           layer_ranges=layer_ranges, token_embedding_type=spec.token_embedding_type,
                           output_tensor_type=spec.output_tensor_type, has_imatrix=has_imatrix,
                           manual=dict(spec.overrides))


def _cli_flags() -> set[str]:
    """Option strings of ``quant-studio quantize`` as core.cli defines them."""
    from core.cli import build_parser
    p = build_parser()
    for a in p._actions:                      # argparse keeps subparsers here
        choices = getattr(a, "choices", None)
        if isinstance(choices, dict) and "quantize" in choices:
            return set(choices["quantize"]._option_string_actions)
    return set()


def cli_command(source_path: str, output: str, spec: PlanSpec, imatrix_path: Optional[str] = None,
                threads: Optional[int] = None, *, source=None, plan: Optional[cplan.Plan] = None,
                imatrix=None) -> str:
    """The ``quant-studio quantize`` command line for ``spec``. With ``source`` and ``plan`` it is
    checked by building the plan the way the CLI does (``core.cli.build_plan``) and, where that
    differs (precedence of manual edits, rules the CLI has no option for), tensors are pinned with
    ``--tensor-type ^NAME$=TYPE`` so that the command makes exactly ``plan``."""
    flags = _cli_flags()
    head = ["quant-studio", "quantize", source_path, output or "OUTPUT.gguf"]
    opts = ["--preset", spec.preset]
    if imatrix_path:
        opts += ["--imatrix", imatrix_path]
    pins = [("^" + re.escape(n) + "$", t) for n, t in spec.overrides.items()]
    rules = []
    for r in spec.rules:
        if r.layer_lo is not None and r.pattern in ("", ".*") and "--layer-type" in flags:
            rules += ["--layer-type", f"{r.layer_lo}-{r.layer_hi}={r.type}"]
        else:
            rules += ["--tensor-type", f"{r.regex()}={r.type}"]
    tail = []
    if spec.token_embedding_type:
        tail += ["--token-embedding-type", spec.token_embedding_type]
    if spec.output_tensor_type:
        tail += ["--output-tensor-type", spec.output_tensor_type]
    if threads:
        tail += ["--threads", str(threads)]

    def command() -> list[str]:
        pinned = [x for rx, t in pins for x in ("--tensor-type", f"{rx}={t}")]
        return head + opts + pinned + rules + tail

    if source is not None and plan is not None:
        want = {e.name: e.type for e in plan.entries}
        for _ in range(3):
            got = _cli_types(source, command(), imatrix)
            bad = [n for n, t in want.items() if got.get(n) != t]
            if not bad:
                break
            known = {rx for rx, _ in pins}
            pins = [("^" + re.escape(n) + "$", want[n]) for n in bad if "^" + re.escape(n) + "$" not in known] + pins
    return shlex.join(command())


def _cli_types(source, argv: list[str], imatrix) -> dict[str, str]:
    """{tensor: type} of the plan ``core.cli`` builds from ``argv`` (without the program name)."""
    from core.cli import build_parser, build_plan
    try:
        ns = build_parser().parse_args(argv[1:])
        return {e.name: e.type for e in build_plan(source, ns, imatrix).entries}
    except (QuantStudioError, SystemExit):
        return {}


def llama_quantize_command(plan: cplan.Plan, source_path: str, output: str, imatrix_path: Optional[str] = None,
                           threads: Optional[int] = None) -> str:
    """``llama-quantize`` arguments that reproduce ``plan`` exactly (core's export; PlanError if none can)."""
    return shlex.join(["llama-quantize"] + plan.llama_quantize_args(source_path, output or "OUTPUT.gguf",
                                                                     imatrix=imatrix_path, threads=threads))
