"""The plan: per tensor, the output type and why. Plain data that the CLI and the GUI edit.

``make_plan`` applies a preset (llama-quantize's file types and per-tensor rules, ported in
``core.presets``) and the user's rules; ``Plan.set_type`` records manual edits. A plan saves to
versioned JSON with everything needed to re-derive it, exports to ``llama-quantize`` arguments
(checked to reproduce the plan) and predicts the output file size to the byte
(``predict_size``). ``pure_plan`` mirrors ``llama-quantize --pure`` for a bare type.

Precedence, first wins: tensors llama.cpp never quantizes (norms, ...) > ``keep`` > token-embedding
type > output tensor type > ``tensor_types`` then ``layer_ranges`` (first match) > the preset's
rules (unless pure) > row-length fallback; manual edits override the result.
"""
from __future__ import annotations

import json
import math
import re
import types
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from .errors import PlanError, QuantStudioError
from .qtypes import INTERMEDIATE_ONLY, KERNEL_FAMILY, T, is_quantized, parse_type, writable_type_names

PLAN_VERSION = 2

# Substrings that keep a tensor unquantized in llama.cpp (any architecture).
_NEVER_QUANTIZE = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
    "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
    "indexer.q_proj.weight", "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight",
    "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight",
    "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight",
    "time_mix_g2.weight", "time_mix_decay_w1.weight", "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight", "attn_rel_b.weight", ".position_embd", "sam.pos_embd", "sam.neck.",
    "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger", "a.rvq.codebook", "mm.a.code_embd",
)
_NEVER_QUANTIZE_GLM5_NEXT = (
    "hc_", "indexer.attn_q_b", "indexer.attn_k", "indexer.proj", "indexer_compressor_gate",
    "indexer_compressor_ape", "ssm_f_a.weight", "ssm_f_b.weight", "ssm_g_a.weight", "ssm_g_b.weight",
    "ssm_beta.weight", "attn_kv_a_mqa.weight", "attn_k_b.weight", "attn_v_b.weight",
)
_NEVER_QUANTIZE_EXACT = ("position_embd.weight", "token_types.weight")
_NEVER_RE = re.compile("|".join(map(re.escape, _NEVER_QUANTIZE)))
_NEVER_GLM5_RE = re.compile("|".join(map(re.escape, _NEVER_QUANTIZE_GLM5_NEXT)))

# Fallbacks for rows a 256-block type cannot take (llama.cpp tensor_type_fallback).
_FALLBACK = {T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0,
             T.IQ1_S: T.IQ4_NL, T.IQ1_M: T.IQ4_NL, T.IQ2_XXS: T.IQ4_NL, T.IQ2_XS: T.IQ4_NL,
             T.IQ2_S: T.IQ4_NL, T.IQ3_XXS: T.IQ4_NL, T.IQ3_S: T.IQ4_NL, T.IQ4_XS: T.IQ4_NL,
             T.TQ1_0: T.Q4_0, T.TQ2_0: T.Q4_0}


def allows_quantization(name: str, n_dims: int, arch: Optional[str] = None,
                        quantize_output: bool = True) -> bool:
    """llama.cpp's tensor_allows_quantization: 2-D+ tensors named '*weight', minus norms and friends."""
    if n_dims < 2 or not name.endswith("weight"):
        return False
    if not quantize_output and name == "output.weight":
        return False
    if _NEVER_RE.search(name) or name in _NEVER_QUANTIZE_EXACT:
        return False
    if arch == "glm5-next" and _NEVER_GLM5_RE.search(name):
        return False
    return True


def kept_reason(name: str, n_dims: int, quantize_output: bool = True) -> str:
    """Why llama.cpp leaves a tensor as it is (for a tensor ``allows_quantization`` refuses)."""
    if "norm" in name and (n_dims < 2 or name.endswith("_norm.weight")):
        return "kept: norm"
    if n_dims < 2:
        return "kept: 1-D tensor"
    if not name.endswith("weight"):
        return "kept: not a weight"
    if not quantize_output and name == "output.weight":
        return "kept: output tensor left as is (--leave-output-tensor)"
    if "ffn_gate_inp.weight" in name:
        return "kept: expert router"
    if name in _NEVER_QUANTIZE_EXACT:
        return "kept: position/token-type embedding"
    hit = next((s for s in _NEVER_QUANTIZE + _NEVER_QUANTIZE_GLM5_NEXT if s in name), None)
    return f"kept: llama.cpp never quantizes '{hit}'" if hit else "kept"


def fallback_type(qtype: GGMLQuantizationType, row_len: int) -> tuple[GGMLQuantizationType, str]:
    """The type llama.cpp uses when ``row_len`` does not fit ``qtype``'s blocks; '' reason if it fits."""
    bs = GGML_QUANT_SIZES[qtype][0]
    if row_len % bs == 0:
        return qtype, ""
    new = _FALLBACK.get(qtype, qtype if bs <= 32 else None)
    if new is None:
        raise PlanError(f"no fallback is defined for type {qtype.name}")
    if row_len % GGML_QUANT_SIZES[new][0]:
        return T.F16, f"rows of {row_len} fit neither {qtype.name} nor {new.name}: F16"
    return new, f"rows of {row_len} not a multiple of {bs}: {qtype.name} -> {new.name}"


_FTYPE_ALIAS = {T.Q3_K: "MOSTLY_Q3_K_M", T.Q4_K: "MOSTLY_Q4_K_M", T.Q5_K: "MOSTLY_Q5_K_M", T.F32: "ALL_F32"}


def file_type_of(qtype: GGMLQuantizationType) -> int:
    """llama_ftype for a pure file of ``qtype`` (general.file_type; Q4_K is Q4_K_M as in llama-quantize)."""
    name = _FTYPE_ALIAS.get(qtype, f"MOSTLY_{qtype.name}")
    try:
        return int(LlamaFileType[name])
    except KeyError:
        raise PlanError(f"type {qtype.name} has no llama.cpp file type") from None


def _writable(t: Any, what: str) -> GGMLQuantizationType:
    """A type the user named: known, not intermediate-only, and one Quant Studio can write."""
    qt = parse_type(t)
    if qt in INTERMEDIATE_ONLY:
        raise PlanError(f"{what}: {qt.name} is an intermediate type, not a weight type")
    if qt not in KERNEL_FAMILY:
        raise PlanError(f"{what}: Quant Studio cannot write {qt.name} (writable: {', '.join(writable_type_names())})")
    return qt


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
    preset: str = ""                # llama-quantize name of the preset ("Q4_K_M") or the pure type
    pure: bool = False
    options: dict[str, Any] = field(default_factory=dict)   # the rules, to re-derive (see make_plan)
    warnings: list[str] = field(default_factory=list)

    def entry(self, name: str) -> PlanEntry:
        for e in self.entries:
            if e.name == name:
                return e
        raise PlanError(f"the plan has no tensor '{name}'")

    @property
    def n_elements(self) -> int:
        return sum(e.n_elements for e in self.entries)

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
        """Set one tensor's type by hand (validated; kept in ``options['manual']`` for re-deriving)."""
        from .presets import tensor_requires_imatrix

        e = self.entry(name)
        qt = _writable(qtype, f"type for '{name}'")
        model = self.options.get("model", {})
        if not allows_quantization(name, len(e.shape), model.get("arch"),
                                   not self.options.get("leave_output_tensor", False)):
            raise PlanError(f"'{name}' is never quantized ({kept_reason(name, len(e.shape))})")
        bs = GGML_QUANT_SIZES[qt][0]
        if e.row_len % bs:
            raise PlanError(f"'{name}' has rows of {e.row_len}, which {qt.name} cannot take (blocks of {bs})")
        e.type, e.reason, e.quantize = qt.name, reason, qt.name != e.src_type
        e.requires_imatrix = tensor_requires_imatrix(name, qt, self.file_type)
        self.options.setdefault("manual", {})[name] = qt.name
        return e

    def rederive(self, **changes: Any) -> "Plan":
        """A new plan from the same tensors and rules, with ``changes`` to make_plan's arguments
        (``preset``, ``pure``, ``tensor_types``, ``manual``, ...)."""
        o = self.options
        if "model" not in o:
            raise PlanError("this plan has no rules to re-derive from (it was not made by make_plan)")
        from .presets import ModelFacts

        kw: dict[str, Any] = dict(
            pure=self.pure, tensor_types=[tuple(x) for x in o.get("tensor_types", [])],
            token_embedding_type=o.get("token_embedding_type"), output_tensor_type=o.get("output_tensor_type"),
            layer_ranges=[tuple(x) for x in o.get("layer_ranges", [])], keep=list(o.get("keep", [])),
            has_imatrix=bool(o.get("has_imatrix", False)), leave_output_tensor=bool(o.get("leave_output_tensor")),
            manual=dict(o.get("manual", {})))
        preset = changes.pop("preset", self.preset)
        kw.update(changes)
        return make_plan(self.entries, ModelFacts(**o["model"]), preset, **kw)

    # -- llama-quantize export ----------------------------------------------------------
    def _patterns_for_llama(self) -> list[tuple[str, str]]:
        """``--tensor-type`` patterns that make llama-quantize choose exactly this plan's types:
        the user's rules, plus exact-name pins for tensors that differ (kept, edited, or whose
        counters a pin shifts). PlanError when no set of arguments can reproduce the plan."""
        from .presets import ModelFacts, Pattern, choose_types, get_preset, llama_order_key

        o = self.options
        if "model" not in o:
            raise PlanError("this plan has no rules to export (it was not made by make_plan)")
        preset = get_preset(self.preset)
        base = _user_patterns(o)
        specs = [_spec(e) for e in self.entries]
        order = sorted(self.entries, key=lambda e: llama_order_key(e.name))
        order_pos = {e.name: i for i, e in enumerate(order)}
        pins: dict[str, str] = {}
        while True:
            pats = [Pattern(_exact(n), GGMLQuantizationType[t], "pin") for n, t in pins.items()] + base
            pats = [Pattern(p.regex.lower(), p.type, p.label) for p in pats]   # llama-quantize lowercases
            sim = choose_types(specs, ModelFacts(**o["model"]), preset, pure=self.pure, patterns=pats,
                               token_embedding_type=_opt_type(o.get("token_embedding_type")),
                               output_tensor_type=_opt_type(o.get("output_tensor_type")),
                               has_imatrix=bool(o.get("has_imatrix")),
                               quantize_output_tensor=not o.get("leave_output_tensor", False), strict=True)
            bad = [e for e in self.entries if sim[e.name].type.name != e.type]
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
                group = _counter_group(e.name, o["model"].get("n_expert", 0))
                if group:
                    base_rx = [p.compiled() for p in base]
                    for later in order[order_pos[e.name] + 1:]:
                        if (_counter_group(later.name, o["model"].get("n_expert", 0)) == group
                                and sim[later.name].origin != "kept"
                                and not any(rx.search(later.name.lower()) for rx in base_rx)):
                            pins.setdefault(later.name, later.type)
        out = [(p.regex, p.type.name) for p in pats]
        for rx, _ in out:
            if "=" in rx or re.search(r"\s", rx):
                raise PlanError(f"pattern '{rx}' cannot be passed to llama-quantize (it contains '=' or a space)")
        return out

    def tensor_type_file(self) -> str:
        """Text for ``llama-quantize --tensor-type-file``: ``REGEX=TYPE`` tokens, one per line."""
        return "".join(f"{rx}={t}\n" for rx, t in self._patterns_for_llama())

    def llama_quantize_args(self, input: str, output: str, *, tensor_type_file: Optional[str] = None,
                            imatrix: Optional[str] = None, threads: Optional[int] = None) -> list[str]:
        """Arguments (without the program name) for ``llama-quantize`` to write this plan.

        With ``tensor_type_file`` the patterns go to that path as ``--tensor-type-file`` (write
        :meth:`tensor_type_file` there); otherwise as ``--tensor-type`` arguments.
        """
        o = self.options
        pats = self._patterns_for_llama()
        if o.get("has_imatrix") and not imatrix:
            raise PlanError("this plan was made for an importance matrix: give its path (imatrix=...)")
        args: list[str] = []
        if any(e.src_type != e.type and is_quantized(GGMLQuantizationType[e.src_type])
               for e in self.entries if e.src_type in GGMLQuantizationType.__members__):
            args.append("--allow-requantize")
        if o.get("leave_output_tensor"):
            args.append("--leave-output-tensor")
        if self.pure:
            args.append("--pure")
        if imatrix:
            args += ["--imatrix", imatrix]
        if o.get("token_embedding_type"):
            args += ["--token-embedding-type", o["token_embedding_type"]]
        if o.get("output_tensor_type"):
            args += ["--output-tensor-type", o["output_tensor_type"]]
        if tensor_type_file and pats:
            args += ["--tensor-type-file", tensor_type_file]
        else:
            for rx, t in pats:
                args += ["--tensor-type", f"{rx}={t}"]
        args += [input, output, self.preset]
        if threads:
            args.append(str(threads))
        return args

    # -- JSON ---------------------------------------------------------------------------
    def to_json(self) -> str:
        d = {"version": PLAN_VERSION, "file_type": self.file_type, "preset": self.preset, "pure": self.pure,
             "options": self.options, "warnings": self.warnings,
             "tensors": [asdict(e) | {"shape": list(e.shape)} for e in self.entries]}
        return json.dumps(d, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        try:
            d = json.loads(text)
            if d.get("version") not in (1, PLAN_VERSION):
                raise PlanError(f"plan version {d.get('version')} is not supported (expected {PLAN_VERSION})")
            entries = [PlanEntry(e["name"], tuple(int(x) for x in e["shape"]), e["src_type"],
                                 parse_type(e["type"]).name, e.get("reason", ""), bool(e.get("quantize", True)),
                                 bool(e.get("requires_imatrix", False))) for e in d["tensors"]]
            return cls(entries, int(d["file_type"]), d.get("preset", ""), bool(d.get("pure", False)),
                       dict(d.get("options", {})), list(d.get("warnings", [])))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise PlanError(f"not a valid plan file: {e}") from None


# ----------------------------------------------------------------------------- building
TypeLike = Union[GGMLQuantizationType, str]


def parse_tensor_type(text: str) -> tuple[str, str]:
    """``REGEX=TYPE`` as llama-quantize's ``--tensor-type`` (split at the first '=')."""
    rx, sep, t = str(text).partition("=")
    if not sep or not rx or not t:
        raise PlanError(f"malformed tensor type '{text}': use REGEX=TYPE, e.g. attn_v=Q6_K")
    return rx, t


def parse_layer_range(text: str) -> tuple[int, int, str]:
    """``A-B=TYPE`` or ``A=TYPE`` (layers A..B inclusive)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+))?\s*=\s*(\S+)\s*", str(text))
    if not m:
        raise PlanError(f"malformed layer range '{text}': use FIRST-LAST=TYPE, e.g. 0-3=Q6_K")
    a = int(m.group(1))
    return a, int(m.group(2) or a), m.group(3)


def _exact(name: str) -> str:
    return "^" + re.sub(r"([.^$|?*+()\[\]{}\\])", r"\\\1", name) + "$"


def _counter_group(name: str, n_expert: int) -> Optional[str]:
    """The llama.cpp counter a tensor advances (attn_v-like always; ffn_* only without experts)."""
    from .presets import ATTN_KV_B, ATTN_QKV, ATTN_V, FFN_DOWN, FFN_GATE, FFN_UP, tensor_category

    c = tensor_category(name)
    if c in (ATTN_V, ATTN_QKV, ATTN_KV_B):
        return ATTN_V
    return c if c in (FFN_DOWN, FFN_GATE, FFN_UP) and n_expert <= 1 else None


def _opt_type(t: Optional[str]) -> Optional[GGMLQuantizationType]:
    return None if t is None else GGMLQuantizationType[t]


def _layer_regex(a: int, b: int, rx: Optional[str]) -> str:
    layers = "|".join(str(i) for i in range(a, b + 1))
    return rf"^blk\.(?:{layers})\." + (f".*(?:{rx})" if rx else "")


def _user_patterns(o: Mapping[str, Any]) -> list:
    from .presets import Pattern

    pats = [Pattern(rx, GGMLQuantizationType[t], f"{rx}={t}") for rx, t in o.get("tensor_types", [])]
    for r in o.get("layer_ranges", []):
        a, b, t = int(r[0]), int(r[1]), r[2]
        rx = r[3] if len(r) > 3 else None
        label = f"layers {a}-{b}" + (f" {rx}" if rx else "") + f"={t}"
        pats.append(Pattern(_layer_regex(a, b, rx), GGMLQuantizationType[t], label))
    return pats


def _spec(t: Any):
    """A TensorSpec from a TensorInfo, a PlanEntry or anything with name/shape and a type."""
    from .presets import TensorSpec

    if hasattr(t, "ggml_type"):
        src = t.ggml_type
        if src is None:
            raise PlanError(f"tensor '{t.name}' has dtype {t.dtype}, which GGUF cannot hold")
    else:
        name = getattr(t, "src_type", None)
        if name not in GGMLQuantizationType.__members__:
            raise PlanError(f"tensor '{t.name}' has type {name}, which GGUF cannot hold")
        src = GGMLQuantizationType[name]
    return TensorSpec(t.name, tuple(int(x) for x in t.shape), src)


def make_plan(tensors: Iterable[Any], metadata: Any, preset: "str | int", *, pure: bool = False,
              tensor_types: Sequence[Union[str, tuple[str, TypeLike]]] = (),
              token_embedding_type: Optional[TypeLike] = None, output_tensor_type: Optional[TypeLike] = None,
              layer_ranges: Sequence[Union[str, tuple]] = (), keep: Sequence[str] = (),
              has_imatrix: bool = False, leave_output_tensor: bool = False,
              manual: Optional[Mapping[str, TypeLike]] = None) -> Plan:
    """The plan for ``tensors`` (TensorInfo list) under a llama-quantize preset and the user's rules.

    - ``metadata``: the model's GGUF metadata dict (``source.metadata``) or a ``ModelFacts``.
    - ``preset``: llama-quantize name (``Q4_K_M``, alias ``Q4_K``) or llama_ftype id.
    - ``tensor_types``: ``(regex, type)`` or ``"regex=type"``, searched in tensor names, first match
      wins (``--tensor-type``; the regex is lowercased as llama-quantize does). Unlike llama.cpp
      they also apply with the F16/BF16/F32 presets (then the plan cannot be exported).
    - ``layer_ranges``: ``(first, last, type[, regex])`` or ``"first-last=type"``: tensors of layers
      first..last (``blk.N.``), optionally only those matching ``regex``; after ``tensor_types``.
    - ``keep``: regexes of tensors copied unchanged (before every other rule).
    - ``token_embedding_type`` / ``output_tensor_type``, ``pure``, ``leave_output_tensor``: as
      llama-quantize's options. ``has_imatrix``: the choice as llama.cpp makes it with an imatrix.
    - ``manual``: ``{tensor: type}`` edits applied last (as :meth:`Plan.set_type`).
    """
    from .presets import ModelFacts, Pattern, choose_types, get_preset

    p = get_preset(preset)
    facts = metadata if isinstance(metadata, ModelFacts) else ModelFacts.from_metadata(metadata or {})
    specs = [_spec(t) for t in tensors]
    tt = []
    for item in tensor_types:
        rx, t = parse_tensor_type(item) if isinstance(item, str) else item
        tt.append((str(rx).lower(), _writable(t, f"tensor type rule '{rx}'").name))
    lr = []
    for item in layer_ranges:
        r = parse_layer_range(item) if isinstance(item, str) else tuple(item)
        if len(r) not in (3, 4) or int(r[0]) > int(r[1]) or int(r[0]) < 0:
            raise PlanError(f"bad layer range {item!r}: use (first, last, type[, regex]) with first <= last")
        lr.append([int(r[0]), int(r[1]), _writable(r[2], f"layer range {r[0]}-{r[1]}").name]
                  + ([str(r[3])] if len(r) == 4 and r[3] else []))
    tok = _writable(token_embedding_type, "token-embedding type").name if token_embedding_type else None
    out = _writable(output_tensor_type, "output tensor type").name if output_tensor_type else None
    options: dict[str, Any] = {
        "tensor_types": [list(x) for x in tt], "layer_ranges": lr, "keep": list(keep),
        "token_embedding_type": tok, "output_tensor_type": out, "has_imatrix": bool(has_imatrix),
        "leave_output_tensor": bool(leave_output_tensor), "manual": {}, "model": facts.to_dict()}
    patterns = _user_patterns(options)
    keeps = [Pattern(rx, None, rx) for rx in keep]
    chosen = choose_types(specs, facts, p, pure=pure, patterns=patterns, keep=keeps,
                          token_embedding_type=_opt_type(tok), output_tensor_type=_opt_type(out),
                          has_imatrix=has_imatrix, quantize_output_tensor=not leave_output_tensor)
    entries = [PlanEntry(s.name, s.shape, s.src.name, chosen[s.name].type.name, chosen[s.name].reason,
                         chosen[s.name].type != s.src, chosen[s.name].requires_imatrix) for s in specs]
    plan = Plan(entries, int(p.ftype), p.name, bool(pure), options)
    for name, t in (manual or {}).items():
        plan.set_type(name, t)
    plan.warnings = _warnings(plan, specs, facts, patterns, keeps, chosen, p, has_imatrix)
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
    return Plan(entries, file_type_of(qtype), qtype.name, True)


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
    def size(self) -> int:
        return self.total

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
    from .gguf_out import pad
    from .job import layout_for

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
