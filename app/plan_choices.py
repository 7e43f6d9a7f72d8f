"""What the plan panel offers (presets, types and their descriptions) and the command lines it
copies. The user's choices are a :class:`core.rules.PlanRules`; ``core.plan.make_plan`` turns them
into a :class:`core.plan.Plan`, ``core.cli.quantize_argv`` and ``core.export`` into command lines."""
from __future__ import annotations

import shlex
from typing import Optional

from core.errors import PlanError
from core.plan import Plan, make_plan
from core.presets import PRESETS, allows_quantization, tensor_requires_imatrix
from core.qtypes import DESCRIPTIONS, parse_type, type_info, writable_types
from core.rules import PlanRules


# -- what core offers ----------------------------------------------------------------------
def preset_names() -> list[str]:
    """Every preset core offers (llama-quantize names, in its order)."""
    return list(PRESETS)


def preset_description(name: str) -> str:
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


NEEDS_IMATRIX = "needs an importance matrix (llama.cpp refuses it without one): load one or use Calibrate"


def preset_needs_imatrix(source, name: str) -> bool:
    """Whether llama-quantize refuses preset ``name`` on ``source`` without an imatrix (some tensor gets a type
    that requires one: the IQ1/IQ2/IQ3_XXS types, Q2_K in Q2_K_S)."""
    try:
        return make_plan(source.tensors, source.metadata, name).requires_imatrix
    except PlanError:
        return False


def type_needs_imatrix(name: str, tensor: str = "blk.0.ffn_down.weight", preset: str = "Q8_0") -> bool:
    """Whether type ``name`` needs an imatrix for ``tensor`` (llama.cpp's tensor_requires_imatrix)."""
    try:
        return tensor_requires_imatrix(tensor, parse_type(name), int(PRESETS[preset].ftype) if preset in PRESETS else 0)
    except PlanError:
        return False


def quantizable(source, name: str) -> bool:
    t = source.tensor(name)
    return allows_quantization(name, t.n_dims, source.architecture)


# -- building ------------------------------------------------------------------------------
def build_plan(source, rules: PlanRules) -> Plan:
    """The plan for ``source`` under ``rules`` (PlanError with a readable message when impossible)."""
    return make_plan(source.tensors, source.metadata, rules)


def cli_command(source_path: str, output: str, rules: PlanRules, threads: Optional[int] = None) -> str:
    """The ``quant-studio quantize`` command line that makes exactly the plan of ``rules``."""
    from core.cli import PROG, quantize_argv
    return shlex.join([PROG] + quantize_argv(source_path, output or "OUTPUT.gguf", rules, threads))


def llama_quantize_command(plan: Plan, source_path: str, output: str, imatrix_path: Optional[str] = None,
                           threads: Optional[int] = None) -> str:
    """``llama-quantize`` arguments that reproduce ``plan`` exactly (core's export; PlanError if none can)."""
    from core.export import llama_quantize_args
    return shlex.join(["llama-quantize"] + llama_quantize_args(plan, source_path, output or "OUTPUT.gguf",
                                                               imatrix=imatrix_path, threads=threads))
