"""Presets against llama.cpp itself: for every preset and model, our per-tensor types equal what
``llama_model_quantize`` chooses (dry run through ctypes, tests/refs/llama.py).

Models: the demo (SmolLM2-135M, tied embeddings, rows of 576), synthetic llamas (GQA 2 and 4,
2/3/16 layers) and zero-weight shape models for the rules that need big or unusual models
(80 layers: the 70B rule; nextn layers, which count in the layer
total of ffn_down; 8 experts; falcon with attn_qkv; odd row lengths and
per_layer_token_embd).
"""
from __future__ import annotations

import pytest
from gguf.constants import LlamaFileType

from core.demo import make_synthetic_llama
from core.errors import PlanError
from core.plan import make_plan
from core.presets import tensor_spec as _spec
from core.presets import (ALIASES, PRESETS, ModelFacts, choose_types, default_type, get_preset,
                          tensor_category, use_more_bits)
from core.models import open_model
from tests.refs import llama as ref

STD = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]


def _odd_rows_tensors():
    out = [("token_embd.weight", (64, 100)), ("per_layer_token_embd.weight", (64, 256)),
           ("output_norm.weight", (100,))]
    for i in range(4):
        out += [(f"blk.{i}.attn_q.weight", (96, 96)), (f"blk.{i}.attn_v.weight", (32, 96)),
                (f"blk.{i}.ffn_down.weight", (96, 100)), (f"blk.{i}.ffn_up.weight", (100, 96))]
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory, demo_path, synthetic_path):
    d = tmp_path_factory.mktemp("preset-models")
    w = ref.write_shape_gguf
    paths = {
        "demo": demo_path,
        "synthetic": synthetic_path,
        "synthetic-gqa4": make_synthetic_llama(str(d / "gqa4.gguf"), n_layer=3, n_head=8, n_head_kv=2,
                                               n_ff=512, dtype="F16", seed=2),
        "synthetic-16-layers": make_synthetic_llama(str(d / "l16.gguf"), n_layer=16, n_ff=256, n_head=4,
                                                    n_head_kv=4, dtype="F16", seed=3),
        "llama-70b-nextn": w(str(d / "l70.gguf"), "llama", ref.layer_tensors(81, STD), n_layer=81, n_head=8,
                             n_head_kv=1, extra_u32={"llama.nextn_predict_layers": 1}),
        "llama-16-nextn": w(str(d / "l16n.gguf"), "llama", ref.layer_tensors(16, STD), n_layer=16,
                            extra_u32={"llama.nextn_predict_layers": 1}),
        "qwen2-80-tied": w(str(d / "q80.gguf"), "qwen2", ref.layer_tensors(80, STD, output=False), n_layer=80,
                           n_head=8, n_head_kv=8),
        "moe-8-experts": w(str(d / "moe.gguf"), "llama",
                           ref.layer_tensors(16, ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate_inp",
                                                  "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"], n_expert=8),
                           n_layer=16, n_head=8, n_head_kv=2, n_expert=8),
        "falcon-qkv": w(str(d / "falcon.gguf"), "falcon",
                        ref.layer_tensors(16, ["attn_qkv", "attn_output", "ffn_up", "ffn_down"]),
                        n_layer=16, n_head=8, n_head_kv=1),
        "odd-rows": w(str(d / "odd.gguf"), "llama", _odd_rows_tensors(), n_layer=4),
    }
    srcs = {k: open_model(p) for k, p in paths.items()}
    yield srcs
    for s in srcs.values():
        s.close()


@pytest.fixture(scope="module")
def llama(models):
    """llama.cpp's choice, computed once per (model, ftype, options)."""
    cache: dict = {}

    def run(model: str, ftype, **kw) -> ref.Result:
        ft = int(get_preset(ftype).ftype) if isinstance(ftype, str) else int(ftype)
        key = (model, ft, repr(sorted(kw.items())))
        if key not in cache:
            cache[key] = ref.quantize(models[model].path, ft, **kw)
        return cache[key]

    return run


def _diff(ours: dict, theirs: dict) -> list:
    assert set(ours) == set(theirs)
    return [(n, ours[n], theirs[n]) for n in ours if ours[n] != theirs[n]]


def _types(plan) -> dict:
    return {e.name: e.type for e in plan.entries}


MODELS = ["demo", "synthetic", "synthetic-gqa4", "synthetic-16-layers", "llama-70b-nextn", "llama-16-nextn",
          "qwen2-80-tied", "moe-8-experts", "falcon-qkv", "odd-rows"]


@pytest.mark.parametrize("model", MODELS)
def test_every_preset_matches_llama_cpp(models, llama, model):
    src = models[model]
    bad = {}
    for name in PRESETS:
        try:
            r = llama(model, name)
        except RuntimeError as e:          # llama-quantize refuses (Q1_0 blocks of 128 on rows of 576)
            assert "no tensor type fallback" in str(e), (name, str(e)[-300:])
            with pytest.raises(PlanError, match="no fallback"):
                make_plan(src.tensors, src.metadata, name)
            continue
        plan = make_plan(src.tensors, src.metadata, name)
        d = _diff(_types(plan), r.types)
        if d:
            bad[name] = (len(d), d[:3])
        assert plan.requires_imatrix == r.needs_imatrix, name
        assert plan.file_type == int(PRESETS[name].ftype)
    assert not bad, f"{model}: presets differing from llama.cpp: {bad}"


def test_the_models_exercise_the_rules(llama):
    """Guards that the comparison above is not vacuous: llama.cpp's own choices on these models
    hit use_more_bits, the GQA, 70B, 8-expert and falcon rules, tied output, the fallbacks and the
    ternary/Q2_0 token_embd rule."""
    def kinds(model, preset, part):
        return {t for n, t in llama(model, preset).types.items() if part in n}

    assert len(kinds("synthetic-16-layers", "Q4_K_M", "attn_v")) == 2            # use_more_bits
    assert len(kinds("synthetic-16-layers", "Q4_K_M", "ffn_down")) == 2
    assert len(kinds("synthetic-16-layers", "Q3_K_M", "ffn_down")) == 2           # first 1/16: Q5_K
    assert len(kinds("demo", "Q3_K_M", "attn_v")) == 2                            # first two attn_v
    assert kinds("synthetic-gqa4", "Q2_K_S", "attn_v") != {"Q2_K"}                # n_gqa >= 4
    assert kinds("synthetic", "Q2_K_S", "attn_v") == {"Q2_K"}
    assert kinds("llama-70b-nextn", "Q3_K_S", "attn_v") != {"Q3_K"}               # 70B
    assert kinds("qwen2-80-tied", "Q3_K_S", "attn_v") != {"Q3_K"}
    assert kinds("moe-8-experts", "Q4_K_M", "attn_k") != {"Q4_K"}                 # 8 experts
    assert len(kinds("falcon-qkv", "Q4_K_M", "ffn_down")) == 3                    # falcon
    assert kinds("demo", "Q4_K_M", "token_embd") != {"Q4_K"}                      # tied embeddings
    assert "F16" in kinds("odd-rows", "Q4_K_M", "ffn_down")                        # fallback to F16
    assert kinds("odd-rows", "Q4_K_M", "attn_q") == {"Q5_0"}                       # fallback 256 -> 32
    assert kinds("odd-rows", "Q2_0", "attn_q") == {"Q4_0"}                         # fallback 64 -> 32
    assert kinds("synthetic", "Q2_0", "token_embd") == {"Q4_K"}                    # Q2_0's token_embd rule


@pytest.mark.parametrize("model", ["demo", "synthetic-16-layers"])
def test_imatrix_dependent_choices_match_llama_cpp(models, llama, model):
    src = models[model]
    changed = False
    for name in ("Q4_0", "Q5_0", "Q2_K_S", "Q4_K_M"):
        plan = make_plan(src.tensors, src.metadata, name, has_imatrix=True)
        r = llama(model, name, has_imatrix=True)
        assert not _diff(_types(plan), r.types), name
        changed |= r.types != llama(model, name).types
    assert changed      # the imatrix rule (ffn_down Q4_1/Q5_1 in the first layers) was exercised


OPTION_CASES = [
    ("synthetic-16-layers", "Q4_K_M", dict(tensor_types=[(r"blk\.[0-3]\.attn_v", "Q8_0"), ("ffn_down", "Q5_K")])),
    ("synthetic-16-layers", "Q3_K_M", dict(tensor_types=[(r"blk\.1[0-5]\.", "Q6_K"), ("attn", "Q4_0")])),
    ("synthetic-16-layers", "Q5_K_M", dict(tensor_types=[("attn_q", "F16")], token_embedding_type="Q8_0")),
    ("demo", "Q4_K_M", dict(output_tensor_type="Q5_0")),           # tied: reaches token_embd via the rules
    ("demo", "Q4_K_M", dict(token_embedding_type="Q4_0", output_tensor_type="Q6_K")),
    ("demo", "Q5_K_M", dict(pure=True)),
    ("demo", "Q3_K_L", dict(tensor_types=[("ffn", "Q4_K")])),     # a user type falls back too
    ("synthetic", "Q2_K", dict(pure=True, output_tensor_type="Q8_0", token_embedding_type="Q4_K")),
    ("synthetic", "Q4_K_S", dict(quantize_output_tensor=False)),
    ("odd-rows", "Q4_K_M", dict(token_embedding_type="F16", tensor_types=[("per_layer", "Q4_0")])),
    ("odd-rows", "Q6_K", dict(tensor_types=[("attn", "Q4_K")])),
    ("moe-8-experts", "Q3_K_M", dict(tensor_types=[(r"blk\.0\.", "Q8_0")])),
    ("llama-70b-nextn", "Q4_K_M", dict(tensor_types=[(r"blk\.(1|2|3)\.attn_v", "Q4_K")], pure=False)),
]


@pytest.mark.parametrize("model,preset,kw", OPTION_CASES)
def test_user_options_match_llama_cpp(models, llama, model, preset, kw):
    src = models[model]
    kw = dict(kw)
    lkw = dict(kw)
    if "quantize_output_tensor" in kw:
        kw["leave_output_tensor"] = not kw.pop("quantize_output_tensor")
    if "tensor_types" in lkw:
        lkw["tensor_types"] = tuple((rx.lower(), t) for rx, t in lkw["tensor_types"])
    plan = make_plan(src.tensors, src.metadata, preset, **kw)
    r = llama(model, preset, **lkw)
    assert not _diff(_types(plan), r.types)
    assert r.types != llama(model, preset).types          # the options changed something


OTHER_FTYPES = [LlamaFileType[n] for n in (
    "MOSTLY_IQ2_XXS", "MOSTLY_IQ2_XS", "MOSTLY_IQ2_S", "MOSTLY_IQ2_M", "MOSTLY_IQ1_S", "MOSTLY_IQ1_M",
    "MOSTLY_IQ3_XXS", "MOSTLY_IQ3_XS", "MOSTLY_IQ3_S", "MOSTLY_IQ3_M", "MOSTLY_IQ4_NL", "MOSTLY_IQ4_XS",
    "MOSTLY_TQ1_0", "MOSTLY_TQ2_0", "MOSTLY_MXFP4_MOE")]


@pytest.mark.parametrize("model", ["demo", "synthetic-gqa4", "moe-8-experts"])
def test_ported_rules_of_other_file_types_match_llama_cpp(models, llama, model):
    """The IQ/TQ/MXFP4 branches (no preset offers them) are ported faithfully as well."""
    src = models[model]
    specs = [_spec(t) for t in src.tensors]
    facts = ModelFacts.from_metadata(src.metadata)
    bad = []
    for ft in OTHER_FTYPES:
        for im in ((False, True) if ft.name in ("MOSTLY_IQ3_XXS", "MOSTLY_IQ4_NL") else (False,)):
            ours = {n: c.type.name for n, c in choose_types(specs, facts, int(ft), has_imatrix=im,
                                                            strict=True).items()}
            d = _diff(ours, llama(model, int(ft), has_imatrix=im).types)
            if d:
                bad.append((ft.name, im, d[:3]))
    assert not bad


def test_default_types_are_llama_cpp_pure_types(models, llama):
    """With --pure every quantizable tensor gets the file type's default type (rows of 256)."""
    for name, p in PRESETS.items():
        got = {t for n, t in llama("synthetic", name, pure=True).types.items() if "norm" not in n}
        assert got == {p.default_type.name}, name
        assert default_type(p.ftype) == p.default_type


def test_preset_lookup():
    assert get_preset("q4_k_m") is PRESETS["Q4_K_M"]
    for alias, target in ALIASES.items():
        assert get_preset(alias) is PRESETS[target]
    assert get_preset(int(LlamaFileType.MOSTLY_Q5_K_S)).name == "Q5_K_S"
    assert get_preset("15").name == "Q4_K_M"
    with pytest.raises(PlanError, match="unknown preset 'Q4_K_X'"):
        get_preset("Q4_K_X")
    with pytest.raises(PlanError, match="unknown file type id 99"):
        get_preset(99)
    assert all(p.description for p in PRESETS.values())


def test_presets_are_llama_quantize_list():
    """Every file type llama-quantize lists (its QUANT_OPTIONS, read from the pinned source tree), in its
    order, minus its aliases and COPY (Q2_0 included: core._gguf_compat adds it to gguf-py's enums)."""
    import re

    from tests.refs.tree import llama_cpp_tree

    with open(f"{llama_cpp_tree()}/tools/quantize/quantize.cpp") as f:
        names = re.findall(r"\{ \"(\w+)\",\s*LLAMA_FTYPE_", f.read())
    assert len(names) > 30
    names = [n for n in names if n not in ALIASES and n != "COPY"]
    assert names == list(PRESETS)


def test_model_facts_from_metadata():
    md = {"general.architecture": "llama", "llama.block_count": 80, "llama.attention.head_count": [64] * 80,
          "llama.attention.head_count_kv": [8] * 80}
    f = ModelFacts.from_metadata(md)
    assert (f.n_layer, f.n_head, f.n_head_kv, f.n_gqa, f.is_70b) == (80, 64, 8, 8, True)
    no_kv = ModelFacts.from_metadata({"general.architecture": "llama", "llama.attention.head_count": 32})
    assert no_kv.n_head_kv == 32 and no_kv.n_gqa == 1          # head_count_kv defaults to head_count
    assert ModelFacts("llama", 80, 0, 8, 0).n_gqa == 0
    assert not ModelFacts("llama", 80, 0, 64, 64).is_70b        # MHA 80 layers is the 65B
    assert ModelFacts("llama", 81, 1, 64, 8).is_70b             # nextn layers do not count


def test_categories_and_use_more_bits():
    assert tensor_category("blk.3.attn_v.weight") == "attn_v"
    assert tensor_category("blk.3.ffn_down_exps.weight") == "ffn_down"
    assert tensor_category("blk.3.ffn_gate_inp.weight") == "ffn_gate"
    assert tensor_category("per_layer_token_embd.weight") == "token_embd"
    assert tensor_category("output.weight") == "output"
    assert tensor_category("blk.0.attn_qkv.weight") == "attn_qkv"
    picked = [i for i in range(32) if use_more_bits(i, 32)]
    assert picked[:4] == [0, 1, 2, 3] and picked[-4:] == [28, 29, 30, 31] and 6 in picked and 5 not in picked
