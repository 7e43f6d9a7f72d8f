"""A plan as ``llama-quantize`` arguments: the preset, the user's rules, and exact-name pins for
every tensor whose type would otherwise differ, checked by running the port (``core.presets``)
with llama.cpp's semantics (``strict``) until it reproduces the plan."""
from __future__ import annotations

import re
from typing import Optional

from gguf.constants import GGMLQuantizationType

from .errors import PlanError
from .plan import Plan, rule_patterns
from .presets import Pattern, choose_types, counter_group, get_preset, llama_order_key, tensor_spec
from .qtypes import is_quantized


def _exact(name: str) -> str:
    return "^" + re.sub(r"([.^$|?*+()\[\]{}\\])", r"\\\1", name) + "$"


def _opt_type(t: Optional[str]) -> Optional[GGMLQuantizationType]:
    return None if t is None else GGMLQuantizationType[t]


def llama_patterns(plan: Plan) -> list[tuple[str, str]]:
    """``--tensor-type`` patterns that make llama-quantize choose exactly ``plan``'s types: the
    user's rules, plus exact-name pins for tensors that differ (kept, edited, or whose counters a
    pin shifts). PlanError when no set of arguments can reproduce the plan."""
    r, facts = plan.rules, plan.model
    if facts is None:
        raise PlanError("this plan has no rules to export (it was not made by make_plan)")
    preset = get_preset(r.preset)
    base = rule_patterns(r)
    specs = [tensor_spec(e) for e in plan.entries]
    order = sorted(plan.entries, key=lambda e: llama_order_key(e.name))
    order_pos = {e.name: i for i, e in enumerate(order)}
    pins: dict[str, str] = {}
    while True:
        pats = [Pattern(_exact(n), GGMLQuantizationType[t], "pin") for n, t in pins.items()] + base
        pats = [Pattern(p.regex.lower(), p.type, p.label) for p in pats]   # llama-quantize lowercases
        sim = choose_types(specs, facts, preset, pure=r.pure, patterns=pats,
                           token_embedding_type=_opt_type(r.token_embedding_type),
                           output_tensor_type=_opt_type(r.output_tensor_type), has_imatrix=r.has_imatrix,
                           quantize_output_tensor=not r.leave_output_tensor, strict=True)
        bad = [e for e in plan.entries if sim[e.name].type.name != e.type]
        if not bad:
            break
        new = [e for e in bad if e.name not in pins]
        if not new:
            e = bad[0]
            hint = ("llama-quantize ignores --tensor-type when the file type is not quantized"
                    if not is_quantized(preset.default_type) else sim[e.name].reason)
            raise PlanError(f"llama-quantize cannot reproduce this plan: '{e.name}' would be "
                            f"{sim[e.name].type.name}, not {e.type} ({hint})")
        for e in new:
            pins[e.name] = e.type
            # a pinned tensor no longer advances llama.cpp's counter of its category, which
            # shifts every later tensor of it: pin those too (one round instead of a cascade)
            group = counter_group(e.name, facts.n_expert)
            if group:
                base_rx = [p.compiled() for p in base]
                for later in order[order_pos[e.name] + 1:]:
                    if (counter_group(later.name, facts.n_expert) == group
                            and sim[later.name].origin != "kept"
                            and not any(rx.search(later.name.lower()) for rx in base_rx)):
                        pins.setdefault(later.name, later.type)
    out = [(p.regex, p.type.name) for p in pats]
    for rx, _ in out:
        if "=" in rx or re.search(r"\s", rx):
            raise PlanError(f"pattern '{rx}' cannot be passed to llama-quantize (it contains '=' or a space)")
    return out


def tensor_type_file(plan: Plan) -> str:
    """Text for ``llama-quantize --tensor-type-file``: ``REGEX=TYPE`` tokens, one per line."""
    return "".join(f"{rx}={t}\n" for rx, t in llama_patterns(plan))


def llama_quantize_args(plan: Plan, input: str, output: str, *, tensor_type_file: Optional[str] = None,
                        imatrix: Optional[str] = None, threads: Optional[int] = None) -> list[str]:
    """Arguments (without the program name) for ``llama-quantize`` to write ``plan``.

    With ``tensor_type_file`` the patterns go to that path as ``--tensor-type-file`` (write
    :func:`tensor_type_file` there); otherwise as ``--tensor-type`` arguments.
    """
    r = plan.rules
    pats = llama_patterns(plan)
    if r.has_imatrix and not imatrix:
        raise PlanError("this plan was made for an importance matrix: give its path (imatrix=...)")
    args: list[str] = []
    if any(e.src_type != e.type and is_quantized(GGMLQuantizationType[e.src_type])
           for e in plan.entries if e.src_type in GGMLQuantizationType.__members__):
        args.append("--allow-requantize")
    if r.leave_output_tensor:
        args.append("--leave-output-tensor")
    if r.pure:
        args.append("--pure")
    if imatrix:
        args += ["--imatrix", imatrix]
    if r.token_embedding_type:
        args += ["--token-embedding-type", r.token_embedding_type]
    if r.output_tensor_type:
        args += ["--output-tensor-type", r.output_tensor_type]
    if tensor_type_file and pats:
        args += ["--tensor-type-file", tensor_type_file]
    else:
        for rx, t in pats:
            args += ["--tensor-type", f"{rx}={t}"]
    args += [input, output, r.preset]
    if threads:
        args.append(str(threads))
    return args
