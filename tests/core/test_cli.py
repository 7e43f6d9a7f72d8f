import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from core.cli import main
from core.units import parse_size
from tests.badfiles import fill_disk_after, make_bad_gguf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "core.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def assert_one_line_error(r, path):
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("quant-studio: error: ")
    assert path in lines[0]
    assert "Traceback" not in r.stderr


def test_help_is_fast_and_lazy():
    t = time.perf_counter()
    r = cli("--help")
    assert r.returncode == 0 and "quantize" in r.stdout
    code = ("import sys, app.launcher, core.cli; core.cli.build_parser(); "
            "print('numba' in sys.modules, 'PySide6' in sys.modules)")
    r2 = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r2.stdout.split() == ["False", "False"]   # no kernel or Qt import just to parse arguments
    assert time.perf_counter() - t < 20


def test_launcher_routes_commands_to_the_cli():
    from core.cli import wants_gui

    assert not wants_gui(["inspect", "m.gguf"]) and not wants_gui(["--debug", "quantize", "a", "b", "--type", "Q8_0"])
    assert not wants_gui(["--help"]) and not wants_gui(["--version"])
    assert wants_gui([]) and wants_gui(["model.gguf"]) and wants_gui(["--self-test"])
    r = subprocess.run([sys.executable, "-m", "app.launcher", "inspect", "/nonexistent.gguf"], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 2 and "no such file" in r.stderr


def test_inspect_demo_headers(demo_path):
    r = cli("inspect", demo_path, "--no-stats")
    assert r.returncode == 0, r.stderr
    assert "llama" in r.stdout and "blk.29.ffn_down.weight" in r.stdout and "Q4_1 x210" in r.stdout


def test_quantize_json_summary(synthetic_path, tmp_path):
    out = tmp_path / "s.gguf"
    r = cli("quantize", synthetic_path, str(out), "--type", "Q5_0", "--threads", "2", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["output"] == [str(out)] and s["file_size"] == os.path.getsize(out)
    types = {t["name"]: t["type"] for t in s["tensors"]}
    assert types["blk.0.ffn_down.weight"] == "Q5_0" and types["blk.0.attn_norm.weight"] == "F32"
    assert 5.4 < s["bpw"] < 5.6


def test_quantize_split(synthetic_path, tmp_path):
    r = cli("quantize", synthetic_path, str(tmp_path / "m.gguf"), "--type", "Q8_0", "--split-max-size", "1M")
    assert r.returncode == 0, r.stderr
    shards = sorted(os.listdir(tmp_path))
    assert len(shards) >= 2 and shards[0] == f"m-00001-of-{len(shards):05d}.gguf"
    assert parse_size("2G") == 2 * 10**9 and parse_size("500M") == 500 * 10**6


@pytest.mark.parametrize("kind", ["magic", "truncated", "tensor_count", "kv_count", "array_length",
                                  "offset_past_end", "unknown_type", "empty"])
def test_bad_gguf_one_line_exit_2(synthetic_path, tmp_path, kind):
    bad = make_bad_gguf(synthetic_path, str(tmp_path), kind)
    for args in (["inspect", bad], ["quantize", bad, str(tmp_path / "o.gguf"), "--type", "Q8_0"]):
        assert_one_line_error(cli(*args), bad)
    assert not [f for f in os.listdir(tmp_path) if f.startswith("o.gguf")]


def test_missing_file_and_empty_folder(tmp_path):
    missing = str(tmp_path / "nothing.gguf")
    assert_one_line_error(cli("inspect", missing), missing)
    d = tmp_path / "folder"
    d.mkdir()
    assert_one_line_error(cli("quantize", str(d), str(tmp_path / "o.gguf"), "--type", "Q4_0"), str(d))


def test_nan_weights_reported(tmp_path):
    from gguf import GGUFWriter

    p = str(tmp_path / "nan.gguf")
    w = GGUFWriter(p, "llama")
    x = np.ones((4, 64), np.float32)
    x[1, 1] = np.nan
    w.add_tensor("blk.0.ffn_up.weight", x)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    r = cli("inspect", p)
    assert r.returncode == 0 and "1 NaN" in r.stderr
    r = cli("quantize", p, str(tmp_path / "o.gguf"), "--type", "Q8_0")
    assert_one_line_error(r, p)
    assert "NaN/Inf" in r.stderr and not (tmp_path / "o.gguf").exists()


def test_unwritable_output(synthetic_path, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = str(blocker / "o.gguf")
    r = cli("quantize", synthetic_path, out, "--type", "Q8_0")
    assert_one_line_error(r, str(blocker))


def test_unknown_type_and_bad_size(synthetic_path, tmp_path):
    r = cli("quantize", synthetic_path, str(tmp_path / "o.gguf"), "--type", "Q9_X")
    assert r.returncode == 2 and "unknown tensor type 'Q9_X'" in r.stderr and "Traceback" not in r.stderr
    r = cli("quantize", synthetic_path, str(tmp_path / "o.gguf"), "--type", "Q8_0", "--split-max-size", "12Q")
    assert r.returncode == 2 and "invalid size" in r.stderr


def test_disk_full_in_process(synthetic_path, tmp_path, monkeypatch, capsys):
    fill_disk_after(monkeypatch, 100_000)
    out = str(tmp_path / "o.gguf")
    assert main(["quantize", synthetic_path, out, "--type", "Q8_0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "disk full" in err[0] and out in err[0]
    assert os.listdir(tmp_path) == []


def test_ctrl_c_cancels_and_leaves_nothing(tmp_path):
    from core.demo import make_synthetic_llama

    src = make_synthetic_llama(str(tmp_path / "big.gguf"), n_layer=8, n_embd=1024, n_ff=2816, n_head=8,
                               n_head_kv=8, n_vocab=2048)
    out = tmp_path / "o.gguf"
    p = subprocess.Popen([sys.executable, "-m", "core.cli", "quantize", src, str(out), "--type", "Q3_K",
                          "--threads", "1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "o.gguf.partial").exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)
    assert p.poll() is None, "finished before it could be interrupted"
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2, err
    assert "cancelled" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == ["big.gguf"]


def test_dry_run_predicts_the_written_size(synthetic_path, tmp_path):
    out = tmp_path / "q.gguf"
    common = ["--preset", "Q5_1", "--tensor-type", "ffn_down=Q8_0", "--output-tensor-type", "Q4_0"]
    r = cli("quantize", synthetic_path, str(out), *common, "--dry-run", "--json",
            "--save-plan", str(tmp_path / "plan.json"))
    assert r.returncode == 0, r.stderr
    pred = json.loads(r.stdout)
    assert not out.exists()
    types = {t["name"]: t["type"] for t in pred["tensors"]}
    assert types["blk.1.ffn_down.weight"] == "Q8_0" and types["output.weight"] == "Q4_0"
    assert types["blk.0.attn_q.weight"] == "Q5_1" and "ffn_down=Q8_0" in next(
        t["reason"] for t in pred["tensors"] if t["name"] == "blk.0.ffn_down.weight")
    r = cli("quantize", synthetic_path, str(out), *common, "--json")
    assert r.returncode == 0, r.stderr
    assert os.path.getsize(out) == pred["file_size"] == json.loads(r.stdout)["file_size"]
    # the saved plan reproduces the same file
    r = cli("quantize", synthetic_path, str(tmp_path / "again.gguf"), "--plan", str(tmp_path / "plan.json"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "again.gguf").read_bytes() == out.read_bytes()


def test_dry_run_table(demo_path, tmp_path):
    r = cli("quantize", demo_path, str(tmp_path / "o.gguf"), "--preset", "Q4_0", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "predicted size" in r.stdout and "blk.0.attn_v.weight" in r.stdout
    assert os.listdir(tmp_path) == []


def test_plan_and_preset_conflict(synthetic_path, tmp_path):
    r = cli("quantize", synthetic_path, str(tmp_path / "o.gguf"), "--preset", "Q4_0", "--type", "Q8_0")
    assert r.returncode == 2 and "exactly one of --preset, --type or --plan" in r.stderr
    bad = tmp_path / "plan.json"
    bad.write_text("{\"version\": 99}")
    r = cli("quantize", synthetic_path, str(tmp_path / "o.gguf"), "--plan", str(bad))
    assert_one_line_error(r, str(bad))


def test_hf_folder_inspect_and_quantize_with_preset(tmp_path):
    """A Hugging Face folder goes through the same CLI: inspect as is, quantize converts on the fly."""
    from tests.core.convert.hf_fixtures import synthetic_checkpoint

    folder = str(tmp_path / "hf")
    synthetic_checkpoint(folder, "LlamaForCausalLM", dtype="BF16")
    r = cli("inspect", folder, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["summary"]["format"] == "hf" and any(t["type"] == "BF16" for t in info["tensors"])
    out = tmp_path / "o.gguf"
    r = cli("quantize", folder, str(out), "--preset", "Q8_0", "--json")
    assert r.returncode == 0, r.stderr
    from core.models import open_model

    m = open_model(str(out))
    assert m.architecture == "llama" and "Q8_0" in m.type_counts()
    assert "tokenizer.ggml.tokens" in m.metadata


def test_the_command_line_of_any_rules_makes_the_same_rules(synthetic_path):
    """core.cli.quantize_argv renders PlanRules as options that parse back to the same PlanRules (what
    the studio's "Copy command" relies on), layer ranges with a pattern and manual types included."""
    from core.cli import build_parser, quantize_argv, rules_from_args
    from core.models import open_model
    from core.plan import make_plan
    from core.rules import PlanRules, Rule

    rules = PlanRules.make("Q4_K_M", tensor_types=["ffn_up=Q8_0"], keep=["attn_k"], token_embedding_type="Q8_0",
                           manual={"blk.1.attn_v.weight": "Q6_K"}, imatrix_path="/data/m.gguf",
                           rules=[Rule.make("ffn_down", "Q5_0", 0, 1), Rule.make("", "Q6_K", 1, 1)])
    argv = quantize_argv("in.gguf", "out.gguf", rules, threads=3)
    ns = build_parser().parse_args(argv)
    assert rules_from_args(ns, has_imatrix=True) == rules and ns.threads == 3
    src = open_model(synthetic_path)
    ns.imatrix = None
    plan = make_plan(src.tensors, src.metadata, rules)
    assert make_plan(src.tensors, src.metadata, rules_from_args(ns, True)).entries == plan.entries
    assert plan.entry("blk.1.attn_v.weight").type == "Q6_K" and plan.entry("blk.0.ffn_down.weight").type == "Q5_0"
    pure = PlanRules.make("Q8_0", pure=True)
    assert rules_from_args(build_parser().parse_args(quantize_argv("a", "b", pure))) == pure
