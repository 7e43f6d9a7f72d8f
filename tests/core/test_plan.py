"""The plan: rules and their reasons, manual edits and validation, JSON, llama-quantize export
(checked by running llama.cpp on the exported arguments) and exact size prediction (checked
against files written by core.job.run_plan and by llama.cpp)."""
from __future__ import annotations

import json
import os
import shlex

import pytest
from gguf import GGUFReader
from gguf.constants import LlamaFileType

from core.errors import PlanError
from core.job import run_plan
from core.export import llama_quantize_args, tensor_type_file
from core.plan import PLAN_VERSION, Plan, make_plan, predict_size, pure_plan
from core.presets import file_type_of
from core.rules import parse_layer_range, parse_tensor_type
from core.presets import get_preset
from core.qtypes import T
from core.models import open_model
from tests.refs import llama as ref


@pytest.fixture(scope="module")
def syn(synthetic_path):
    with open_model(synthetic_path) as s:
        yield s


@pytest.fixture(scope="module")
def demo(demo_path):
    with open_model(demo_path) as s:
        yield s


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    from core.demo import make_synthetic_llama

    p = make_synthetic_llama(str(tmp_path_factory.mktemp("deep") / "deep.gguf"), n_layer=12, n_ff=256,
                             n_head=8, n_head_kv=2, dtype="F16", seed=5)
    with open_model(p) as s:
        yield s


def _types(plan):
    return {e.name: e.type for e in plan.entries}


def _llama_from_args(args: list[str]) -> dict[str, str]:
    """Run llama.cpp's quantizer (dry run) with the options llama-quantize would parse from ``args``."""
    kw: dict = {"tensor_types": []}
    pos = []
    it = iter(args)
    for a in it:
        if a == "--allow-requantize":
            continue
        elif a == "--pure":
            kw["pure"] = True
        elif a == "--leave-output-tensor":
            kw["quantize_output_tensor"] = False
        elif a in ("--token-embedding-type", "--output-tensor-type"):
            kw[a[2:].replace("-", "_")] = next(it)
        elif a == "--tensor-type":
            kw["tensor_types"].append(next(it))
        elif a == "--tensor-type-file":
            with open(next(it)) as f:
                kw["tensor_types"] += f.read().split()
        else:
            pos.append(a)
    inp, _out, preset = pos
    kw["tensor_types"] = [(rx.lower(), t) for rx, _, t in (x.partition("=") for x in kw["tensor_types"])]
    return ref.quantize_types(inp, int(get_preset(preset).ftype), **kw)


# ----------------------------------------------------------------------------- reasons and rules
def test_reasons(demo):
    plan = make_plan(demo.tensors, demo.metadata, "Q4_K_M", tensor_types=["ffn_down=Q6_K"],
                     keep=[r"blk\.0\.attn_k\."])
    e = plan.entry("blk.3.attn_q.weight")
    assert (e.type, e.reason) == ("Q5_0", "preset Q4_K_M: default Q4_K; fallback: rows of 576 not a multiple "
                                          "of 256: Q4_K -> Q5_0")
    assert plan.entry("blk.3.ffn_down.weight").reason == "user rule 'ffn_down=Q6_K'"
    assert plan.entry("blk.3.ffn_down.weight").type == "Q6_K"            # rows of 1536 fit
    assert plan.entry("blk.0.attn_norm.weight").reason == "kept: norm"
    k = plan.entry("blk.0.attn_k.weight")
    assert (k.type, k.quantize, k.reason) == ("Q4_1", False, r"kept: user rule 'blk\.0\.attn_k\.'")
    assert "use_more_bits" in plan.entry("blk.0.attn_v.weight").reason
    assert "tied" in plan.entry("token_embd.weight").reason
    plan.set_type("blk.5.ffn_up.weight", "Q8_0")
    assert plan.entry("blk.5.ffn_up.weight").reason == "manual edit"


def test_precedence_first_match_and_layer_ranges(deep):
    plan = make_plan(deep.tensors, deep.metadata, "Q4_K_M",
                     tensor_types=[(r"blk\.1\.ffn_up", "Q8_0"), ("ffn_up", "Q5_K")],
                     layer_ranges=["0-2=Q6_K", (5, 6, "Q3_K", "attn_(q|k)")],
                     keep=["token_embd"], token_embedding_type="Q4_K", output_tensor_type="Q8_0")
    t = _types(plan)
    assert t["blk.1.ffn_up.weight"] == "Q8_0"                 # first matching rule wins
    assert t["blk.2.ffn_up.weight"] == "Q5_K"                 # tensor_types before layer ranges
    assert t["blk.2.attn_q.weight"] == t["blk.0.ffn_down.weight"] == "Q6_K"
    assert t["blk.5.attn_k.weight"] == t["blk.6.attn_q.weight"] == "Q3_K"
    assert t["blk.5.attn_v.weight"] != "Q3_K" and t["blk.7.attn_q.weight"] == "Q4_K"
    assert t["token_embd.weight"] == "F16" and "kept" in plan.entry("token_embd.weight").reason  # keep first
    assert t["output.weight"] == "Q8_0"
    assert plan.entry("output.weight").reason == "output tensor type Q8_0 (user option)"
    assert "layers 5-6 attn_(q|k)=Q3_K" in plan.entry("blk.5.attn_k.weight").reason


def test_pure_and_float_presets(syn):
    pure = make_plan(syn.tensors, syn.metadata, "Q4_K_M", pure=True)
    assert {e.type for e in pure.entries if e.quantize} == {"Q4_K"}
    assert pure.file_type == LlamaFileType.MOSTLY_Q4_K_M
    f16 = make_plan(syn.tensors, syn.metadata, "F16", tensor_types=["ffn_down=Q8_0"])
    assert {f16.entry(f"blk.{i}.ffn_down.weight").type for i in range(2)} == {"Q8_0"}
    assert any("ignores --tensor-type" in w for w in f16.warnings)
    with pytest.raises(PlanError, match="ignores --tensor-type when the file type is not quantized"):
        llama_quantize_args(f16, "in.gguf", "out.gguf")


def test_warnings_for_rules_that_do_nothing(syn):
    plan = make_plan(syn.tensors, syn.metadata, "Q4_K_M",
                     tensor_types=[("attn_zzz", "Q8_0"), ("ffn", "Q5_K"), ("ffn_up", "Q6_K")], keep=["nothing"])
    w = "\n".join(plan.warnings)
    assert "rule 'attn_zzz=Q8_0' matches no quantizable tensor" in w
    assert "rule 'ffn_up=Q6_K' is overridden by earlier rules" in w
    assert "keep 'nothing' matches no quantizable tensor" in w
    assert "ffn=Q5_K" not in w
    q2ks = make_plan(syn.tensors, syn.metadata, "Q2_K_S")
    assert q2ks.requires_imatrix and any("importance matrix" in x for x in q2ks.warnings)
    with pytest.raises(PlanError, match="requires an importance matrix"):
        q2ks.check_imatrix(False)
    q2ks.check_imatrix(True)
    assert not make_plan(syn.tensors, syn.metadata, "Q2_K").requires_imatrix


# ----------------------------------------------------------------------------- validation
def test_validation_errors(syn, demo):
    with pytest.raises(PlanError, match="unknown tensor type 'Q9_9'"):
        make_plan(syn.tensors, syn.metadata, "Q4_K_M", tensor_types=[("attn", "Q9_9")])
    with pytest.raises(PlanError, match="unknown tensor type 'bogus'"):
        make_plan(syn.tensors, syn.metadata, "Q4_K_M", token_embedding_type="bogus")
    with pytest.raises(PlanError, match="intermediate type"):
        make_plan(syn.tensors, syn.metadata, "Q4_K_M", output_tensor_type="Q8_K")
    with pytest.raises(PlanError, match="cannot write Q8_1"):
        make_plan(syn.tensors, syn.metadata, "Q4_K_M", layer_ranges=["0-1=Q8_1"])
    with pytest.raises(PlanError, match="invalid regular expression"):
        make_plan(syn.tensors, syn.metadata, "Q4_K_M", tensor_types=[("attn(", "Q8_0")])
    with pytest.raises(PlanError, match="malformed tensor type 'attn'"):
        make_plan(syn.tensors, syn.metadata, "Q4_K_M", tensor_types=["attn"])
    with pytest.raises(PlanError, match="malformed layer range"):
        parse_layer_range("a-b=Q8_0")
    with pytest.raises(PlanError, match="bad layer range"):
        make_plan(syn.tensors, syn.metadata, "Q4_K_M", layer_ranges=[(3, 1, "Q8_0")])
    with pytest.raises(PlanError, match="unknown preset"):
        make_plan(syn.tensors, syn.metadata, "Q4_K_Z")
    with pytest.raises(PlanError, match="rows of 576 are not a multiple of 256"):
        make_plan(demo.tensors, demo.metadata, "Q4_K_M", token_embedding_type="Q4_K")
    assert parse_tensor_type("a=b=c") == ("a", "b=c") and parse_layer_range("7=Q8_0") == (7, 7, "Q8_0")

    plan = make_plan(demo.tensors, demo.metadata, "Q8_0")
    with pytest.raises(PlanError, match="rows of 576, which Q4_K cannot take"):
        plan.set_type("blk.0.attn_q.weight", "Q4_K")
    with pytest.raises(PlanError, match="unknown tensor type 'Q3'"):
        plan.set_type("blk.0.attn_q.weight", "Q3")
    with pytest.raises(PlanError, match="no tensor 'nope'"):
        plan.set_type("nope", "Q8_0")
    with pytest.raises(PlanError, match="never quantized"):
        plan.set_type("blk.0.attn_norm.weight", "F16")
    e = plan.set_type("blk.0.ffn_down.weight", "q4_k")           # rows of 1536 fit
    assert (e.type, e.quantize) == ("Q4_K", True)
    assert plan.rules.manual_types == {"blk.0.ffn_down.weight": "Q4_K"}


# ----------------------------------------------------------------------------- JSON
def test_json_round_trip_and_rederive(deep):
    plan = make_plan(deep.tensors, deep.metadata, "Q4_K_M", tensor_types=["attn_output=Q6_K"],
                     layer_ranges=["10-11=Q8_0"], keep=["ffn_gate"], token_embedding_type="Q8_0")
    plan.set_type("blk.3.ffn_up.weight", "F16")
    text = plan.to_json()
    d = json.loads(text)
    assert d["version"] == PLAN_VERSION and d["rules"]["rules"][0] == {"pattern": "attn_output", "type": "Q6_K"}
    assert d["rules"]["rules"][1] == {"pattern": "", "type": "Q8_0", "layers": [10, 11]}
    back = Plan.from_json(text)
    assert back == plan
    again = back.rederive()
    assert again.entries == plan.entries and again.rules == plan.rules
    other = back.rederive(preset="Q5_K_M")
    fresh = make_plan(deep.tensors, deep.metadata, "Q5_K_M", tensor_types=["attn_output=Q6_K"],
                      layer_ranges=["10-11=Q8_0"], keep=["ffn_gate"], token_embedding_type="Q8_0",
                      manual={"blk.3.ffn_up.weight": "F16"})
    assert other.entries == fresh.entries and other.entry("blk.3.ffn_up.weight").type == "F16"
    with pytest.raises(PlanError, match="plan version 99 is not supported"):
        Plan.from_json(text.replace(f'"version": {PLAN_VERSION}', '"version": 99'))
    with pytest.raises(PlanError, match="not a valid plan file"):
        Plan.from_json("{\"version\": 2}")
    with pytest.raises(PlanError, match="not a valid plan file"):
        Plan.from_json("not json")


def test_version_2_plan_files_still_load(deep):
    """Plans saved before the rules had a type of their own (an untyped "options" dict) load with
    the same rules and re-derive to the same types."""
    plan = make_plan(deep.tensors, deep.metadata, "Q4_K_M", tensor_types=["attn_output=Q6_K"],
                     layer_ranges=["10-11=Q8_0"], keep=["ffn_gate"], token_embedding_type="Q8_0",
                     manual={"blk.3.ffn_up.weight": "F16"})
    d = json.loads(plan.to_json())
    r = d.pop("rules")
    d.pop("model")
    d.update(version=2, preset=r["preset"], pure=r["pure"], options={
        "tensor_types": [["attn_output", "Q6_K"]], "layer_ranges": [[10, 11, "Q8_0"]], "keep": ["ffn_gate"],
        "token_embedding_type": "Q8_0", "output_tensor_type": None, "has_imatrix": False,
        "leave_output_tensor": False, "manual": {"blk.3.ffn_up.weight": "F16"}, "model": plan.model.to_dict()})
    old = Plan.from_json(json.dumps(d))
    assert old.rules == plan.rules and old.model == plan.model
    assert old.rederive().entries == plan.entries


# ----------------------------------------------------------------------------- llama-quantize export
def test_exported_arguments_make_llama_cpp_choose_the_plan(deep, demo, tmp_path):
    plans = [
        make_plan(deep.tensors, deep.metadata, "Q4_K_M", tensor_types=[(r"blk\.[0-2]\.attn_v", "Q8_0")],
                  layer_ranges=["9-11=Q5_K", (4, 5, "Q6_K", "ffn_down")], keep=[r"blk\.7\.attn_q"],
                  output_tensor_type="Q8_0"),
        make_plan(deep.tensors, deep.metadata, "Q3_K_M", token_embedding_type="Q4_K", leave_output_tensor=True,
                  manual={"blk.0.attn_v.weight": "Q4_0", "blk.3.ffn_down.weight": "Q8_0"}),
        make_plan(demo.tensors, demo.metadata, "Q5_K_S", pure=True, keep=["ffn_down"]),
        make_plan(demo.tensors, demo.metadata, "Q2_K", manual={"blk.0.attn_v.weight": "Q8_0"}),
    ]
    for i, plan in enumerate(plans):
        src = deep if i < 2 else demo
        args = llama_quantize_args(plan, src.path, "out.gguf")
        assert _llama_from_args(args) == _types(plan), args
        f = tmp_path / f"types{i}.txt"
        f.write_text(tensor_type_file(plan))
        args_f = llama_quantize_args(plan, src.path, "out.gguf", tensor_type_file=str(f))
        assert "--tensor-type" not in args_f
        assert _llama_from_args(args_f) == _types(plan)
    # a manual edit of one attn_v shifts llama.cpp's attn_v counter: the export pins what it must
    assert sum(a == "--tensor-type" for a in llama_quantize_args(plans[1], "i", "o")) >= 2


def test_exported_argument_layout(demo, syn):
    plan = make_plan(demo.tensors, demo.metadata, "Q4_K", pure=True, output_tensor_type="Q8_0")
    args = llama_quantize_args(plan, "in model.gguf", "out.gguf", threads=4)
    assert args[0] == "--allow-requantize"                      # the demo is Q4_1
    assert args[-4:] == ["in model.gguf", "out.gguf", "Q4_K_M", "4"]
    assert "--pure" in args and args[args.index("--output-tensor-type") + 1] == "Q8_0"
    assert shlex.split(shlex.join(args)) == args
    plain = llama_quantize_args(make_plan(syn.tensors, syn.metadata, "Q8_0"), "a.gguf", "b.gguf")
    assert plain == ["a.gguf", "b.gguf", "Q8_0"]
    with pytest.raises(PlanError, match="importance matrix"):
        llama_quantize_args(make_plan(syn.tensors, syn.metadata, "Q4_0", has_imatrix=True), "a", "b")
    args = llama_quantize_args(make_plan(syn.tensors, syn.metadata, "Q4_0", has_imatrix=True), 
        "a", "b", imatrix="m.gguf")
    assert args[:2] == ["--imatrix", "m.gguf"]
    with pytest.raises(PlanError, match="no rules"):
        llama_quantize_args(pure_plan(syn.tensors, "Q8_0", "llama"), "a", "b")


# ----------------------------------------------------------------------------- size
def test_predicted_size_equals_written_file(syn, tmp_path):
    plan = make_plan(syn.tensors, syn.metadata, "Q4_0", output_tensor_type="Q8_0",
                     tensor_types=["ffn_down=Q5_1"], layer_ranges=[(1, 1, "Q4_1", "attn")], keep=["attn_k"])
    plan.set_type("blk.0.ffn_gate.weight", "F16")
    plan.set_type("blk.0.attn_q.weight", "BF16")
    assert {"Q4_0", "Q8_0", "Q5_1", "Q4_1", "F16", "BF16", "F32"} <= set(plan.type_counts())
    for split in (None, 1_500_000):
        out = str(tmp_path / f"out{split}.gguf")
        res = run_plan(syn, plan, out, threads=2, split_max_size=split)
        pred = predict_size(plan, syn, split)
        assert [os.path.getsize(p) for p in res.paths] == pred.shard_sizes
        assert pred.total == res.size == sum(pred.shard_sizes)
        assert (len(pred.shard_sizes) > 1) == (split is not None)
        assert pred.tensor_bytes == plan.tensor_bytes and pred.n_elements == plan.n_elements
    r = GGUFReader(str(tmp_path / "outNone.gguf"))
    assert {t.name: t.tensor_type.name for t in r.tensors} == _types(plan)
    pred = predict_size(plan, syn.kv)          # the metadata list predicts as the source does
    assert pred.total == os.path.getsize(tmp_path / "outNone.gguf")
    byname = {t.name: t for t in pred.tensors}
    e = plan.entry("blk.1.ffn_down.weight")
    assert byname[e.name].bpw == pytest.approx(6.0) and byname[e.name].nbytes == e.nbytes
    assert pred.bpw == pytest.approx(8 * plan.tensor_bytes / plan.n_elements)
    assert pred.file_bpw > pred.bpw and pred.header_bytes > 0


@pytest.mark.parametrize("preset", ["Q4_K_M", "Q3_K_S"])
def test_predicted_size_equals_llama_cpp_output(syn, tmp_path, preset):
    """llama.cpp really quantizes the synthetic model; our prediction is its file size to the byte."""
    out = str(tmp_path / f"{preset}.gguf")
    written = ref.quantize_types(syn.path, int(get_preset(preset).ftype), output=out)
    plan = make_plan(syn.tensors, syn.metadata, preset)
    assert written == _types(plan)
    assert predict_size(plan, syn).total == os.path.getsize(out)


def test_pure_plan_and_file_types(syn):
    p = pure_plan(syn.tensors, "Q8_0", "llama")
    assert p.entry("blk.0.attn_q.weight").type == "Q8_0" and p.entry("output_norm.weight").type == "F32"
    assert file_type_of(T.Q4_K) == LlamaFileType.MOSTLY_Q4_K_M         # llama-quantize's Q4_K alias
    assert file_type_of(T.F32) == LlamaFileType.ALL_F32
    assert file_type_of(T.Q6_K) == LlamaFileType.MOSTLY_Q6_K
