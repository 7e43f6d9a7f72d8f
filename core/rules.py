"""The user's choices that make a plan, as one typed value: :class:`PlanRules`.

The CLI builds it from its options, the studio's plan panel edits it, the plan JSON stores it,
the llama-quantize export reads it; :func:`core.plan.make_plan` turns it into per-tensor types.
It is frozen: an edit is a new value (``rules.replace(...)``, :meth:`PlanRules.with_manual`).

Precedence, first wins: tensors llama.cpp never quantizes > ``keep`` > token-embedding type >
output tensor type > ``rules`` (those without a layer range first, then the layer-range ones; in
order within each group) > the preset's rules (unless ``pure``) > row-length fallback; ``manual``
edits override the result.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from .errors import PlanError
from .qtypes import INTERMEDIATE_ONLY, KERNEL_FAMILY, parse_type, writable_type_names


def writable(t: Any, what: str) -> str:
    """The GGUF name of a type the user named: known, not intermediate-only, writable here."""
    qt = parse_type(t)
    if qt in INTERMEDIATE_ONLY:
        raise PlanError(f"{what}: {qt.name} is an intermediate type, not a weight type")
    if qt not in KERNEL_FAMILY:
        raise PlanError(f"{what}: Quant Studio cannot write {qt.name} (writable: {', '.join(writable_type_names())})")
    return qt.name


@dataclass(frozen=True)
class Rule:
    """Tensors whose name matches ``pattern`` (a regex, searched) get ``type``; with ``first``/``last``
    only in layers first..last (``blk.N.``), where an empty pattern means every tensor of them."""

    pattern: str
    type: str
    first: Optional[int] = None
    last: Optional[int] = None

    @property
    def layered(self) -> bool:
        return self.first is not None

    def regex(self) -> str:
        """The regex searched in tensor names (the one place a layer range becomes a regex)."""
        if not self.layered:
            return self.pattern
        layers = "|".join(str(i) for i in range(self.first, self.last + 1))
        return rf"^blk\.(?:{layers})\." + (f".*(?:{self.pattern})" if self.pattern else "")

    def label(self) -> str:
        """How reasons and warnings name the rule (``ffn_down=Q6_K``, ``layers 0-3 attn=Q8_0``)."""
        if not self.layered:
            return f"{self.pattern}={self.type}"
        return f"layers {self.first}-{self.last}" + (f" {self.pattern}" if self.pattern else "") + f"={self.type}"

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"pattern": self.pattern, "type": self.type}
        if self.layered:
            d["layers"] = [self.first, self.last]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Rule":
        layers = d.get("layers")
        first, last = (int(layers[0]), int(layers[1])) if layers else (None, None)
        return cls.make(str(d.get("pattern", "")), d["type"], first, last)

    @classmethod
    def make(cls, pattern: str, qtype: Any, first: Optional[int] = None, last: Optional[int] = None) -> "Rule":
        """A validated rule: a writable type, a layer range with 0 <= first <= last, a valid regex;
        patterns without layers are lowercased as llama-quantize does."""
        if first is None and last is not None:
            raise PlanError(f"bad layer range: a last layer ({last}) without a first one")
        if first is not None:
            last = first if last is None else int(last)
            if int(first) < 0 or int(first) > last:
                raise PlanError(f"bad layer range {first}-{last}: use FIRST-LAST with 0 <= FIRST <= LAST")
            first = int(first)
            what = f"layer range {first}-{last}"
            pattern = "" if pattern in ("", ".*") else str(pattern)
        else:
            what = f"tensor type rule '{pattern}'"
            if not pattern:
                raise PlanError("a rule needs a pattern or a layer range")
            pattern = str(pattern).lower()
        r = cls(pattern, writable(qtype, what), first, last)
        try:
            re.compile(r.regex())
        except re.error as e:
            raise PlanError(f"invalid regular expression '{r.pattern}': {e}") from None
        return r


def parse_tensor_type(text: str) -> tuple[str, str]:
    """``REGEX=TYPE`` as llama-quantize's ``--tensor-type`` (split at the first '='; syntax only)."""
    rx, sep, t = str(text).partition("=")
    if not sep or not rx or not t:
        raise PlanError(f"malformed tensor type '{text}': use REGEX=TYPE, e.g. attn_v=Q6_K")
    return rx, t


def parse_layer_range(text: str) -> tuple:
    """``A-B=TYPE``, ``A=TYPE`` (layers A..B inclusive) or ``A-B:REGEX=TYPE`` (only the tensors of
    those layers matching REGEX): ``(A, B, TYPE)`` or ``(A, B, TYPE, REGEX)``; syntax only."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+))?\s*(?::(.*))?=\s*(\S+)\s*", str(text))
    if not m:
        raise PlanError(f"malformed layer range '{text}': use FIRST-LAST=TYPE, e.g. 0-3=Q6_K")
    a = int(m.group(1))
    out = (a, int(m.group(2) or a), m.group(4))
    return out + (m.group(3),) if m.group(3) else out


RuleLike = Union[Rule, str, Sequence]


def _rule(item: RuleLike, layered: bool) -> Rule:
    """A Rule from ``"regex=type"`` / ``(regex, type)``, or ``"first-last=type"`` /
    ``(first, last, type[, regex])`` when ``layered``."""
    if isinstance(item, Rule):
        return item
    if isinstance(item, str):
        item = parse_layer_range(item) if layered else parse_tensor_type(item)
    if layered:
        if len(item) not in (3, 4):
            raise PlanError(f"bad layer range {item!r}: use (first, last, type[, regex])")
        return Rule.make(item[3] if len(item) == 4 and item[3] else "", item[2], int(item[0]), int(item[1]))
    if len(item) != 2:
        raise PlanError(f"bad tensor type rule {item!r}: use (regex, type)")
    return Rule.make(str(item[0]), item[1])


@dataclass(frozen=True)
class PlanRules:
    """Everything the user chose; :func:`core.plan.make_plan` derives the per-tensor types from it."""

    preset: str = "Q8_0"                        # llama-quantize preset name, or a type name when pure
    pure: bool = False                          # llama-quantize --pure: the preset's default type everywhere
    rules: tuple[Rule, ...] = ()                # in the order they are tried (see __post_init__)
    keep: tuple[str, ...] = ()                  # regexes of tensors copied unchanged
    token_embedding_type: Optional[str] = None
    output_tensor_type: Optional[str] = None
    leave_output_tensor: bool = False
    manual: tuple[tuple[str, str], ...] = ()    # (tensor, type) edits, applied last
    has_imatrix: bool = False                   # choose as llama.cpp does with an importance matrix
    imatrix_path: Optional[str] = None          # that matrix's file, when known (saved with the plan)

    @classmethod
    def make(cls, preset: "str | int" = "Q8_0", *, pure: bool = False, tensor_types: Iterable[RuleLike] = (),
             layer_ranges: Iterable[RuleLike] = (), rules: Iterable[Rule] = (), keep: Iterable[str] = (),
             token_embedding_type: Optional[Any] = None, output_tensor_type: Optional[Any] = None,
             leave_output_tensor: bool = False, manual: Optional[Mapping[str, Any]] = None,
             has_imatrix: bool = False, imatrix_path: Optional[str] = None) -> "PlanRules":
        """Validated rules from loose values: ``tensor_types`` as ``"regex=type"`` or ``(regex, type)``
        (llama-quantize's --tensor-type), ``layer_ranges`` as ``"first-last=type"`` or
        ``(first, last, type[, regex])``, types by any name or id."""
        rs = tuple(rules) + tuple(_rule(x, False) for x in tensor_types) + tuple(_rule(x, True) for x in layer_ranges)
        tok = writable(token_embedding_type, "token-embedding type") if token_embedding_type else None
        out = writable(output_tensor_type, "output tensor type") if output_tensor_type else None
        for rx in keep:
            try:
                re.compile(rx)
            except re.error as e:
                raise PlanError(f"invalid regular expression '{rx}': {e}") from None
        man = tuple((str(n), parse_type(t).name) for n, t in (manual or {}).items())
        return cls(str(preset), bool(pure), rs, tuple(keep), tok, out, bool(leave_output_tensor), man,
                   bool(has_imatrix or imatrix_path), imatrix_path)

    def replace(self, **changes: Any) -> "PlanRules":
        return dataclasses.replace(self, **changes)

    def __post_init__(self) -> None:
        # kept in the order they are tried: rules without layers first, then layer ranges
        rs = tuple(self.rules)
        object.__setattr__(self, "rules", tuple(r for r in rs if not r.layered) + tuple(r for r in rs if r.layered))

    # -- views ------------------------------------------------------------------------------

    @property
    def manual_types(self) -> dict[str, str]:
        return dict(self.manual)

    def with_manual(self, names: Iterable[str], qtype: Optional[str]) -> "PlanRules":
        """Manual edits of ``names`` set to ``qtype`` (``None``: the edits removed)."""
        m = self.manual_types
        for n in names:
            if qtype is None:
                m.pop(n, None)
            else:
                m[n] = parse_type(qtype).name
        return self.replace(manual=tuple(m.items()))

    # -- JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"preset": self.preset, "pure": self.pure, "rules": [r.to_dict() for r in self.rules],
                "keep": list(self.keep), "token_embedding_type": self.token_embedding_type,
                "output_tensor_type": self.output_tensor_type, "leave_output_tensor": self.leave_output_tensor,
                "manual": self.manual_types, "has_imatrix": self.has_imatrix, "imatrix_path": self.imatrix_path}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PlanRules":
        return cls.make(d.get("preset", "Q8_0"), pure=bool(d.get("pure", False)),
                        rules=[Rule.from_dict(r) for r in d.get("rules", [])], keep=d.get("keep", []),
                        token_embedding_type=d.get("token_embedding_type"),
                        output_tensor_type=d.get("output_tensor_type"),
                        leave_output_tensor=bool(d.get("leave_output_tensor", False)), manual=d.get("manual") or {},
                        has_imatrix=bool(d.get("has_imatrix", False)), imatrix_path=d.get("imatrix_path"))

    @classmethod
    def from_v2_options(cls, preset: str, pure: bool, o: Mapping[str, Any]) -> "PlanRules":
        """The rules of a version 1/2 plan file (an untyped ``options`` dict)."""
        return cls.make(preset, pure=pure, tensor_types=[tuple(x) for x in o.get("tensor_types", [])],
                        layer_ranges=[tuple(x) for x in o.get("layer_ranges", [])], keep=o.get("keep", []),
                        token_embedding_type=o.get("token_embedding_type"),
                        output_tensor_type=o.get("output_tensor_type"),
                        leave_output_tensor=bool(o.get("leave_output_tensor", False)), manual=o.get("manual") or {},
                        has_imatrix=bool(o.get("has_imatrix", False)))
