"""Batch export (core.batch, ``quant-studio batch``): several presets or plans of one model in one run, each
file the same as a single ``quantize`` and verified; name collisions refused; one failing item reported
while the others go on; a cancel leaves no partial file."""
from __future__ import annotations

import contextlib
import filecmp
import io
import json
import os

import pytest

from core.batch import BatchItem, file_name, model_name, output_paths, plan_label, run_batch
from core.cli import main
from core.errors import Cancelled, OutputError, PlanError
from core.models import open_model
from core.progress import CancelToken


def run_cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def leftovers(folder) -> list[str]:
    return sorted(f for f in os.listdir(folder) if f.endswith(".partial"))


@pytest.fixture(scope="module")
def demo_batch(demo_path, tmp_path_factory):
    """``batch DEMO OUT --preset Q8_0,Q4_0 --json`` (one run shared by the tests below)."""
    out = tmp_path_factory.mktemp("batch")
    rc, stdout, stderr = run_cli("batch", demo_path, str(out / "files"), "--preset", "Q8_0,Q4_0", "--json")
    return rc, json.loads(stdout), stderr, out


def test_two_presets_of_the_demo_match_single_quantize_runs(demo_batch, demo_path):
    rc, res, stderr, out = demo_batch
    assert rc == 0, stderr
    assert res["ok"] and not res["cancelled"] and [r["label"] for r in res["items"]] == ["Q8_0", "Q4_0"]
    stem = model_name(demo_path)
    assert stem == "SmolLM2-135M-Instruct.Q4_1"
    for r, preset in zip(res["items"], ("Q8_0", "Q4_0")):
        path = str(out / "files" / f"{stem}-{preset}.gguf")
        assert r["path"] == path and r["state"] == "verified" and r["verdict"] == "sound" and not r["defects"]
        assert os.path.getsize(path) == r["size"] == r["predicted"]
        single = str(out / f"single-{preset}.gguf")
        rc1, _, err1 = run_cli("quantize", demo_path, single, "--preset", preset)
        assert rc1 == 0, err1
        assert filecmp.cmp(path, single, shallow=False), f"{preset}: the batch's file differs from quantize's"
        with open_model(path) as q:
            assert abs(r["bpw"] - 8.0 * sum(t.nbytes for t in q.tensors) / sum(t.n_elements for t in q.tensors)) < 1e-9
    q8, q4 = res["items"]
    assert q8["bpw"] > 8.0 > 5.0 < q4["bpw"] < q8["bpw"]
    assert leftovers(out / "files") == []


def test_collisions_and_existing_files_refused(demo_batch, demo_path, tmp_path):
    rc, res, _, out = demo_batch
    folder = out / "files"
    before = sorted(os.listdir(folder))
    # the files of the first run exist: refused without --overwrite, before anything is written
    rc2, _, err = run_cli("batch", demo_path, str(folder), "--preset", "Q4_0")
    assert rc2 == 2 and "exists" in err and "Q4_0.gguf" in err
    # a Q4_0 plan file and the preset Q4_0 both give {type} Q4_0
    plan = tmp_path / "mine.plan.json"
    assert run_cli("quantize", demo_path, str(tmp_path / "x.gguf"), "--preset", "Q4_0", "--save-plan", str(plan),
                   "--dry-run")[0] == 0
    rc3, _, err = run_cli("batch", demo_path, str(tmp_path / "new"), "--preset", "Q4_0", "--plan", str(plan),
                          "--name-template", "{model}-{type}.gguf")
    assert rc3 == 2 and "'Q4_0' and 'mine' would both be written to" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "new").exists() and sorted(os.listdir(folder)) == before
    with open_model(demo_path) as src:
        items = [BatchItem("a", preset="Q8_0"), BatchItem("A", preset="Q4_0")]
        assert [os.path.basename(p) for p in output_paths(src.path, items, str(tmp_path))] == \
            ["SmolLM2-135M-Instruct.Q4_1-a.gguf", "SmolLM2-135M-Instruct.Q4_1-A.gguf"]
        with pytest.raises(PlanError, match="unknown field {size}"):
            output_paths(src.path, items, str(tmp_path), "{model}-{size}.gguf")
        with pytest.raises(PlanError, match="must give a file name"):
            output_paths(src.path, items, str(tmp_path), "{preset}/x.gguf")
        with pytest.raises(PlanError, match="would both be written"):
            output_paths(src.path, items, str(tmp_path), "{model}.gguf")
        with pytest.raises(OutputError, match="overwrite the input"):
            output_paths(src.path, [BatchItem("x", preset="Q8_0")], os.path.dirname(src.path),
                         os.path.basename(src.path))


def test_names_and_labels(demo_path):
    with open_model(demo_path) as src:
        from core.plan import make_plan
        from core.rules import PlanRules
        plan = make_plan(src.tensors, src.metadata, "Q5_0")
        assert plan_label(plan) == "Q5_0"
        plan.set_type("blk.0.ffn_down.weight", "Q8_0")
        assert plan_label(plan) == "Q5_0-custom"
        assert plan_label(make_plan(src.tensors, src.metadata, PlanRules.make("Q4_0", pure=True))) == "Q4_0-pure"
        assert file_name("{model}.{preset}.{type}.gguf", "m", BatchItem("mine", plan=plan)) == "m.mine.Q5_0.gguf"


def test_a_failing_item_is_reported_and_the_others_go_on(synthetic_path, tmp_path):
    rc, stdout, stderr = run_cli("batch", synthetic_path, str(tmp_path), "--preset", "IQ2_XXS", "--preset", "Q4_0")
    assert rc == 2
    assert "IQ2_XXS: this quantization requires an importance matrix" in stderr and "Q4_0: sound" in stderr
    lines = stdout.splitlines()
    assert lines[0].split() == ["item", "file", "size", "bpw", "time", "verify"]
    assert "FAILED: this quantization requires an importance matrix" in lines[2]
    assert lines[3].startswith("Q4_0") and lines[3].rstrip().endswith("sound")
    assert "1 of 2 files written and verified" in stdout
    assert sorted(os.listdir(tmp_path)) == ["synthetic-f32-Q4_0.gguf"]


def test_a_shared_imatrix_gives_quantize_imatrix_files(synthetic_path, tmp_path):
    from core.imatrix import ImatrixData
    with open_model(synthetic_path) as src:
        im = ImatrixData.random_for(src.tensors).save(str(tmp_path / "random.imatrix.gguf"))
    rc, stdout, stderr = run_cli("batch", synthetic_path, str(tmp_path / "out"), "--preset", "IQ2_XXS,Q4_0",
                                 "--imatrix", im, "--name-template", "{preset}.gguf", "--json")
    assert rc == 0, stderr
    assert [r["state"] for r in json.loads(stdout)["items"]] == ["verified", "verified"]
    for preset in ("IQ2_XXS", "Q4_0"):
        single = str(tmp_path / f"single-{preset}.gguf")
        assert run_cli("quantize", synthetic_path, single, "--preset", preset, "--imatrix", im)[0] == 0
        assert filecmp.cmp(str(tmp_path / "out" / f"{preset}.gguf"), single, shallow=False)


def test_one_progress_stream_over_the_batch(synthetic_path, tmp_path):
    events, states = [], []
    with open_model(synthetic_path) as src:
        res = run_batch(src, ["Q8_0", "Q4_0"], str(tmp_path), progress=events.append,
                        on_item=lambda r: states.append((r.label, r.state)))
    assert res.ok and [r.size for r in res.items] == [r.predicted for r in res.items]
    total = sum(r.size for r in res.items)
    assert {e.total for e in events} == {total}
    dones = [e.done for e in events]
    assert dones == sorted(dones) and dones[-1] == total and 0 < dones[0] < total
    first_q4 = next(i for i, e in enumerate(events) if e.item.startswith("Q4_0"))
    assert events[first_q4 - 1].done == res.items[0].size           # Q8_0's share, weighted by its size
    assert {e.stage for e in events} == {"quantize", "verify", "done"}
    assert [e.item_total for e in events if e.item.startswith("Q8_0")][0] == res.items[0].size
    assert states == [("Q8_0", "waiting"), ("Q4_0", "waiting"), ("Q8_0", "quantizing"), ("Q8_0", "verifying"),
                      ("Q8_0", "verified"), ("Q4_0", "quantizing"), ("Q4_0", "verifying"), ("Q4_0", "verified")]


@pytest.mark.parametrize("stage", ["quantize", "verify"])
def test_cancel_mid_batch_leaves_no_partial(synthetic_path, tmp_path, stage):
    """Cancelled while writing the second file: the first stays, nothing of the second. Cancelled while
    verifying the first: it stays (complete, reported as not verified), the second is never started."""
    cancel = CancelToken()
    target = "Q4_0" if stage == "quantize" else "Q8_0"

    def progress(ev):
        if ev.stage == stage and ev.item.startswith(target):
            cancel.cancel()

    with open_model(synthetic_path) as src, pytest.raises(Cancelled) as exc:
        run_batch(src, ["Q8_0", "Q4_0"], str(tmp_path), progress=progress, cancel=cancel)
    res = exc.value.result
    assert res.cancelled and not res.ok
    assert leftovers(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == ["synthetic-f32-Q8_0.gguf"]
    assert "synthetic-f32-Q8_0.gguf" in str(exc.value) and "no partial file" in str(exc.value)
    expect = ["verified", "cancelled"] if stage == "quantize" else ["written", "cancelled"]
    assert [r.state for r in res.items] == expect
    assert os.path.getsize(tmp_path / "synthetic-f32-Q8_0.gguf") == res.items[0].predicted
