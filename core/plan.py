"""The plan: per tensor, the output type and why. Plain data that the CLI and the GUI edit.

``make_plan`` applies the user's :class:`~core.rules.PlanRules` (a preset -- llama-quantize's file
types and per-tensor rules, ported in ``core.presets`` -- and the user's own rules) to a model's
tensors; ``Plan.set_type`` records manual edits. A plan saves to versioned JSON with its rules and
the model facts needed to re-derive it, and predicts the output file size to the byte
(``predict_size``). ``pure_plan`` mirrors ``llama-quantize --pure`` for a bare type. The export as
llama-quantize arguments is ``core.export``.
"""
from __future__ import annotations

import json
import math
import types
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from .errors import PlanError, QuantStudioError
from .gguf_out import layout_for, pad
from .presets import (ModelFacts, Pattern, allows_quantization, choose_types, fallback_type, file_type_of,
                      get_preset, kept_reason, llama_order_key, tensor_requires_imatrix, tensor_spec)
from .qtypes import is_quantized, parse_type
from .rules import PlanRules, writable

PLAN_VERSION = 3


# ----------------------------------------------------------------------------- plan data
@dataclass
class PlanEntry:
    name: str
    shape: tuple[int, ...]
    src_type: str
    type: str                       # GGUF type name of the output
    reason: str = ""
    quantize: bool = True           # False: copied unchanged from the source
    requires_imatrix: bool = False  # llama.cpp refuses this type here without an importance matrix

    @property
    def qtype(self) -> GGMLQuantizationType:
        return GGMLQuantizationType[self.type]

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape) if self.shape else 1

    @property
    def row_len(self) -> int:
        return int(self.shape[-1]) if self.shape else 1

    @property
    def nbytes(self) -> int:
        bs, ts = GGML_QUANT_SIZES[self.qtype]
        return self.n_elements // bs * ts

    @property
    def bpw(self) -> float:
        return 8.0 * self.nbytes / self.n_elements if self.n_elements else 0.0


@dataclass
class Plan:
    entries: list[PlanEntry]
    file_type: int                  # general.file_type of the output
    rules: PlanRules = field(default_factory=PlanRules)     # what the user chose (see make_plan)
    model: Optional[ModelFacts] = None                      # the facts the choice read, to re-derive
    warnings: list[str] = field(default_factory=list)
    # how core.budget chose the types (target, pins, allowed types, measurements' hash): kept by the JSON;
    # a plan re-derived from edited rules is no longer the solver's and has none
    budget: Optional[dict] = None

    @property
    def preset(self) -> str:
        """llama-quantize name of the preset ("Q4_K_M") or the pure type."""
        return self.rules.preset

    @property
    def pure(self) -> bool:
        return self.rules.pure

    def entry(self, name: str) -> PlanEntry:
        for e in self.entries:
            if e.name == name:
                return e
        raise PlanError(f"the plan has no tensor '{name}'")

    @property
    def n_elements(self) -> int:
        return sum(e.n_elements for e in self.entries)

    def write_order(self) -> list:
        """The entries in the order a file is written: llama-quantize's (its tensors sit in a std::map with
        weight_name_comparer: by ``blk.N``, non-layer tensors first, then by name), so that the same plan
        gives the same file as llama-quantize whatever order the source lists its tensors in."""
        return sorted(self.entries, key=lambda e: llama_order_key(e.name))

    @property
    def tensor_bytes(self) -> int:
        return sum(e.nbytes for e in self.entries)

    @property
    def bpw(self) -> float:
        n = self.n_elements
        return 8.0 * self.tensor_bytes / n if n else 0.0

    def type_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.entries:
            out[e.type] = out.get(e.type, 0) + 1
        return out

    # -- imatrix ------------------------------------------------------------------------
    @property
    def requires_imatrix(self) -> bool:
        return any(e.requires_imatrix for e in self.entries)

    def check_imatrix(self, has_imatrix: bool) -> None:
        """PlanError, as llama-quantize refuses, when a tensor's type needs an importance matrix."""
        if has_imatrix:
            return
        for e in self.entries:
            if e.requires_imatrix:
                raise PlanError(f"this quantization requires an importance matrix: '{e.name}' gets "
                                f"{e.type} in a {self.preset} file (give --imatrix, or choose another type)")

    # -- edits --------------------------------------------------------------------------
    def set_type(self, name: str, qtype: "GGMLQuantizationType | str", reason: str = "manual edit") -> PlanEntry:
        """Set one tensor's type by hand (validated; kept in ``rules.manual`` for re-deriving)."""
        e = self.entry(name)
        qt = parse_type(writable(qtype, f"type for '{name}'"))
        arch = self.model.arch if self.model is not None else None
        if not allows_quantization(name, len(e.shape), arch, not self.rules.leave_output_tensor):
            raise PlanError(f"'{name}' is never quantized ({kept_reason(name, len(e.shape))})")
        bs = GGML_QUANT_SIZES[qt][0]
        if e.row_len % bs:
            raise PlanError(f"'{name}' has rows of {e.row_len}, which {qt.name} cannot take (blocks of {bs})")
        e.type, e.reason, e.quantize = qt.name, reason, qt.name != e.src_type
        e.requires_imatrix = tensor_requires_imatrix(name, qt, self.file_type)
        self.rules = self.rules.with_manual([name], qt.name)
        return e

    def rederive(self, **changes: Any) -> "Plan":
        """A new plan from the same tensors and rules, with ``changes`` to the rules (``preset``,
        ``pure``, ``manual``, ... as :class:`~core.rules.PlanRules` fields)."""
        if self.model is None:
            raise PlanError("this plan has no rules to re-derive from (it was not made by make_plan)")
        return make_plan(self.entries, self.model, self.rules.replace(**changes))

    # -- JSON ---------------------------------------------------------------------------
    def to_json(self) -> str:
        d = {"version": PLAN_VERSION, "file_type": self.file_type, "rules": self.rules.to_dict(),
             "model": self.model.to_dict() if self.model is not None else None, "warnings": self.warnings,
             "tensors": [asdict(e) | {"shape": list(e.shape)} for e in self.entries]}
        if self.budget is not None:
            d["budget"] = self.budget
        return json.dumps(d, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        try:
            d = json.loads(text)
            version = d.get("version")
            if version not in (1, 2, PLAN_VERSION):
                raise PlanError(f"plan version {version} is not supported (expected {PLAN_VERSION})")
            entries = [PlanEntry(e["name"], tuple(int(x) for x in e["shape"]), e["src_type"],
                                 parse_type(e["type"]).name, e.get("reason", ""), bool(e.get("quantize", True)),
                                 bool(e.get("requires_imatrix", False))) for e in d["tensors"]]
            if version == PLAN_VERSION:
                rules, model = PlanRules.from_dict(d["rules"]), d.get("model")
            else:                           # versions 1 and 2 kept the rules in an untyped dict
                o = dict(d.get("options", {}))
                rules = PlanRules.from_v2_options(d.get("preset", ""), bool(d.get("pure", False)), o)
                model = o.get("model")
            budget = d.get("budget")
            return cls(entries, int(d["file_type"]), rules, ModelFacts(**model) if model else None,
                       list(d.get("warnings", [])), dict(budget) if isinstance(budget, dict) else None)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise PlanError(f"not a valid plan file: {e}") from None

    @classmethod
    def read(cls, path: str) -> "Plan":
        """A plan saved as JSON; a QuantStudioError naming the file when it cannot be read or parsed."""
        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_json(f.read())
        except OSError as e:
            raise QuantStudioError(f"cannot read the plan: {e.strerror or e}", path) from None
        except QuantStudioError as e:
            raise QuantStudioError(e.message, path) from None

    def check_fits(self, tensors, path: Optional[str] = None) -> None:
        """PlanError (naming ``path``, the plan's file) unless the plan lists exactly these tensors."""
        names, planned = {t.name for t in tensors}, {e.name for e in self.entries}
        if names != planned:
            odd = sorted(names ^ planned)
            raise PlanError(f"the plan does not fit this model: {len(odd)} tensors differ (first: '{odd[0]}')", path)


# ----------------------------------------------------------------------------- building
def rule_patterns(rules: PlanRules) -> list[Pattern]:
    """The user's rules as the port's patterns, in the order they are tried."""
    return [Pattern(r.regex(), GGMLQuantizationType[r.type], r.label()) for r in rules.rules]


def make_plan(tensors: Iterable[Any], metadata: Any, rules: "PlanRules | str | int", **fields: Any) -> Plan:
    """The plan for ``tensors`` (TensorInfo list, or plan entries) under the user's ``rules``.

    - ``metadata``: the model's GGUF metadata dict (``source.metadata``) or a ``ModelFacts``.
    - ``rules``: a :class:`~core.rules.PlanRules`, or a preset (llama-quantize name -- ``Q4_K_M``,
      alias ``Q4_K`` -- or llama_ftype id) with ``fields`` for :meth:`PlanRules.make`
      (``tensor_types=["ffn_down=Q6_K"]``, ``layer_ranges=["0-3=Q8_0"]``, ``keep``, ``pure``, ...).
      Unlike llama.cpp, rules also apply with the F16/BF16/F32 presets (then the plan cannot be
      exported as llama-quantize arguments).
    """
    if not isinstance(rules, PlanRules):
        rules = PlanRules.make(rules, **fields)
    elif fields:
        rules = rules.replace(**fields)
    p = get_preset(rules.preset)
    facts = metadata if isinstance(metadata, ModelFacts) else ModelFacts.from_metadata(metadata or {})
    specs = [tensor_spec(t) for t in tensors]
    patterns = rule_patterns(rules)
    keeps = [Pattern(rx, None, rx) for rx in rules.keep]
    opt = (lambda t: None if t is None else GGMLQuantizationType[t])
    chosen = choose_types(specs, facts, p, pure=rules.pure, patterns=patterns, keep=keeps,
                          token_embedding_type=opt(rules.token_embedding_type),
                          output_tensor_type=opt(rules.output_tensor_type), has_imatrix=rules.has_imatrix,
                          quantize_output_tensor=not rules.leave_output_tensor)
    entries = [PlanEntry(s.name, s.shape, s.src.name, chosen[s.name].type.name, chosen[s.name].reason,
                         chosen[s.name].type != s.src, chosen[s.name].requires_imatrix) for s in specs]
    manual = rules.manual
    plan = Plan(entries, int(p.ftype), rules.replace(preset=p.name, manual=()), facts)
    for name, t in manual:
        plan.set_type(name, t)
    plan.warnings = _warnings(plan, specs, facts, patterns, keeps, chosen, p, rules.has_imatrix)
    return plan


def _warnings(plan, specs, facts, patterns, keeps, chosen, preset, has_imatrix) -> list[str]:
    q = [s for s in specs if allows_quantization(s.name, s.n_dims, facts.arch)]
    out = []
    for p in keeps + patterns:
        rx = p.compiled()
        hits = [s.name for s in q if rx.search(s.name)]
        label = f"keep '{p.label}'" if p.type is None else f"rule '{p.label}'"
        if not hits:
            out.append(f"{label} matches no quantizable tensor")
        elif not any(f"'{p.label}'" in chosen[n].reason for n in hits):
            out.append(f"{label} is overridden by earlier rules for every tensor it matches")
    if patterns and not is_quantized(preset.default_type) and any(c.origin == "user" for c in chosen.values()):
        out.append(f"llama-quantize ignores --tensor-type for {preset.name} files; this plan applies the rules, "
                   "but cannot be exported as llama-quantize arguments")
    n = sum(e.requires_imatrix for e in plan.entries)
    if n and not has_imatrix:
        out.append(f"{n} tensors get types that need an importance matrix in a {preset.name} file; "
                   "llama-quantize refuses to write them without --imatrix")
    return out


def pure_plan(tensors: Iterable, qtype: "GGMLQuantizationType | str", arch: Optional[str] = None) -> Plan:
    """Every quantizable tensor to ``qtype`` (with llama.cpp's fallbacks), the rest copied."""
    qtype = parse_type(qtype)
    entries = []
    for t in tensors:
        src = t.ggml_type
        if src is None:
            raise PlanError(f"tensor '{t.name}' has dtype {t.dtype}, which GGUF cannot hold")
        if allows_quantization(t.name, t.n_dims, arch):
            new, why = (fallback_type(qtype, t.row_len) if is_quantized(qtype) else (qtype, ""))
            reason = f"pure {qtype.name}; fallback: {why}" if why else f"pure {qtype.name}"
        else:
            new, reason = src, kept_reason(t.name, t.n_dims)
        entries.append(PlanEntry(t.name, tuple(t.shape), t.dtype, new.name, reason, new != src))
    return Plan(entries, file_type_of(qtype), PlanRules(preset=qtype.name, pure=True))


# ----------------------------------------------------------------------------- size
@dataclass
class TensorSize:
    name: str
    type: str
    n_elements: int
    nbytes: int                     # data bytes
    padded: int                     # bytes taken in the file (data + alignment padding)

    @property
    def bpw(self) -> float:
        return 8.0 * self.nbytes / self.n_elements if self.n_elements else 0.0


@dataclass
class SizePrediction:
    total: int                      # bytes of all output files
    shard_sizes: list[int]
    header_bytes: int               # headers (metadata, tensor infos, padding) of all shards
    tensors: list[TensorSize]

    @property
    def n_elements(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def bpw(self) -> float:
        """Bits per weight of the tensor data (as llama-quantize reports it)."""
        n = self.n_elements
        return 8.0 * self.tensor_bytes / n if n else 0.0

    @property
    def file_bpw(self) -> float:
        """Bits per weight of the whole file(s), headers and padding included."""
        n = self.n_elements
        return 8.0 * self.total / n if n else 0.0


def predict_size(plan: Plan, kv: Any, split_max_size: Optional[int] = None, *,
                 extra_kv: Optional[list] = None) -> SizePrediction:
    """Exact output size of ``plan``: ``kv`` is the source (a ModelSource) or its metadata list
    (``source.kv``); the output metadata is derived from it as ``core.job.run_plan`` does, so the
    prediction equals what ``run_plan(..., split_max_size=..., extra_kv=...)`` writes."""
    source = kv if hasattr(kv, "kv") else types.SimpleNamespace(kv=list(kv), path="")
    layout = layout_for(source, plan, "predicted.gguf", split_max_size, extra_kv)
    sizes = [TensorSize(e.name, e.type, e.n_elements, e.nbytes, pad(e.nbytes, layout.alignment))
             for e in plan.entries]
    return SizePrediction(layout.total_size, [s.size for s in layout.shards],
                          sum(len(s.header) for s in layout.shards), sizes)


def planned_bytes(plan: Plan, source=None) -> int:
    """Predicted output size to the byte (:func:`predict_size`) for a source with GGUF metadata,
    else the tensors' bytes (a checkpoint seen for inspection only)."""
    if source is not None and getattr(source, "kv", None) is not None:
        try:
            return predict_size(plan, source).total
        except QuantStudioError:
            pass
    return plan.tensor_bytes
