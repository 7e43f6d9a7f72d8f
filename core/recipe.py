"""A GGUF file's recipe reused: the plan that gives every tensor of a source the type it has in
another GGUF file (``quant-studio quantize IN OUT --recipe-from OTHER.gguf``).

The plan takes OTHER's per-tensor types, its tensor order and its ``general.file_type``, so that
applied to the very source OTHER was made from (with the same importance matrix, or none) it writes
OTHER byte for byte -- as llama-quantize wrote it. Applied to another source with the same tensor
names (a fine-tune of the same base), a tensor whose rows do not fit OTHER's type falls back as
llama.cpp's rules say; such tensors, and names found in only one of the two, are listed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from .errors import PlanError, UnsupportedError
from .plan import Plan, make_plan
from .presets import PRESETS, allows_quantization, fallback_type
from .qtypes import KERNEL_FAMILY, is_quantized
from .rules import PlanRules


@dataclass
class Recipe:
    plan: Plan
    fallbacks: list[str] = field(default_factory=list)         # "name: Q4_K -> Q5_0 (rows of 576 ...)"
    only_in_source: list[str] = field(default_factory=list)    # tensors OTHER does not have (preset types)
    only_in_other: list[str] = field(default_factory=list)     # OTHER's tensors this source lacks

    def notes(self) -> list[str]:
        out = [f"fallback: {f}" for f in self.fallbacks]
        if self.only_in_source:
            out.append(f"{len(self.only_in_source)} tensors are not in the recipe's file and keep the "
                       f"{self.plan.preset} preset's type (first: {self.only_in_source[0]})")
        if self.only_in_other:
            out.append(f"{len(self.only_in_other)} tensors of the recipe's file are not in this model "
                       f"(first: {self.only_in_other[0]})")
        return out


def recipe_plan(source, other, *, has_imatrix: bool = False) -> Recipe:
    """The plan for ``source`` (a ModelSource) that reuses the per-tensor types of ``other`` (a GGUF
    ModelSource). UnsupportedError for types Quant Studio cannot write; PlanError when the two
    models share no tensor."""
    label = os.path.basename(getattr(other, "path", "") or "the recipe file")
    if getattr(other, "kv", None) is None or getattr(other, "kind", "") != "gguf":
        raise PlanError("a recipe comes from a GGUF file", getattr(other, "path", None))
    names = {t.name for t in source.tensors}
    theirs = {t.name: t for t in other.tensors}
    shared = [n for n in theirs if n in names]
    if not shared:
        raise PlanError(f"the model and {label} have no tensor name in common", other.path)
    ftype = other.metadata.get("general.file_type")
    preset = next((p.name for p in PRESETS.values() if ftype is not None and int(p.ftype) == int(ftype)), "Q8_0")
    plan = make_plan(source.tensors, source.metadata, PlanRules(preset=preset, has_imatrix=has_imatrix))
    if ftype is not None:
        plan.file_type = int(ftype)
    out = Recipe(plan)
    for name in shared:
        t, o = source.tensor(name), theirs[name]
        qt = o.ggml_type
        if qt is None:
            continue
        if not allows_quantization(name, t.n_dims, source.architecture):
            continue                                         # copied as it is, as llama.cpp does
        if qt not in KERNEL_FAMILY:
            raise UnsupportedError(f"{label} gives '{name}' type {qt.name}, which Quant Studio cannot write yet",
                                   other.path)
        reason = f"recipe {label}: {qt.name}"
        if tuple(t.shape) != tuple(o.shape) and is_quantized(qt):
            fb, why = fallback_type(qt, t.row_len)
            if fb != qt:
                out.fallbacks.append(f"{name}: {why}")
                qt, reason = fb, f"{reason}; fallback: {why}"
        plan.set_type(name, qt, reason)
    out.only_in_source = [t.name for t in source.tensors if t.name not in theirs]
    out.only_in_other = [n for n in theirs if n not in names]
    order = {n: i for i, n in enumerate(theirs)}
    plan.entries.sort(key=lambda e: order.get(e.name, len(order)))     # OTHER's order, the rest after it
    plan.warnings = out.notes()
    return out
