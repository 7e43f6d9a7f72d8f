"""core.tasks run in a worker process give what the same core calls give in this process."""
from __future__ import annotations

import numpy as np
import pytest

from core.errors import Cancelled
from core.procpool import ProcessPool
from core.progress import CancelToken


class Ctx:
    """An in-process task context."""

    def __init__(self):
        self.posts, self.events, self.cancel = [], [], CancelToken()

    def post(self, obj):
        self.posts.append(obj)

    def progress(self, ev):
        self.events.append(ev)

    def check(self):
        self.cancel.check()


@pytest.fixture(scope="module")
def pool():
    p = ProcessPool(1, "test-tasks", nice=0)
    yield p
    p.close()


def _same_stats(a, b):
    assert (a.name, a.shape, a.n_finite, a.nan_count) == (b.name, b.shape, b.n_finite, b.nan_count)
    assert a.std == b.std and a.kurtosis == b.kurtosis and a.absmax == b.absmax
    assert np.array_equal(a.hist_counts, b.hist_counts) and np.array_equal(a.col_absmax, b.col_absmax)


def test_stats_overlay_and_candidates_match_in_process_calls(pool, synthetic_path):
    from core import tasks
    from core.stats import tensor_stats
    from core.preview import estimate
    from core.models import open_model

    src = open_model(synthetic_path)
    name = "blk.0.ffn_down.weight"
    posts = []
    assert pool.call("core.procpool:run_slice", "core.tasks:stats_item", [name, "blk.1.attn_q.weight"], 60.0,
                     synthetic_path, 1, post=posts.append) == 2
    assert [n for n, _ in posts] == [name, "blk.1.attn_q.weight"]
    _same_stats(posts[0][1], tensor_stats(src, name))

    ov = pool.call("core.tasks:overlay", synthetic_path, name, "Q4_0", None, 64)
    _same_stats(ov, tasks.overlay(Ctx(), synthetic_path, name, "Q4_0", None, 64))
    assert len(np.unique(ov.hist_counts > 0)) == 2           # a quantized histogram has empty bins

    seen = []
    ms = pool.call("core.tasks:candidates", synthetic_path, name, ["Q8_0", "Q4_0"], None, None, False,
                   post=seen.append)
    assert [m.type for m in ms] == ["Q8_0", "Q4_0"] and len(seen) == 2
    assert ms[1].rel_rmse > ms[0].rel_rmse > 0
    ref = estimate(src, "Q4_0", None, name=name, time_budget=0.06, threads=1)
    assert ms[1].rows == ref.rows and ms[1].rel_rmse == pytest.approx(ref.rel_rmse, rel=1e-6)


def test_quantize_in_a_worker_writes_the_same_file(pool, synthetic_path, tmp_path):
    from core.job import run_plan
    from core.plan import pure_plan
    from core.models import open_model

    src = open_model(synthetic_path)
    plan = pure_plan(src, "Q4_0")
    here, there = tmp_path / "here.gguf", tmp_path / "there.gguf"
    run_plan(src, plan, str(here), threads=1)
    done = []
    res = pool.call("core.tasks:quantize", synthetic_path, plan, str(there), 1, post=done.append)
    assert here.read_bytes() == there.read_bytes()
    assert res.size == there.stat().st_size and len(done) == len(plan.entries)


def test_cancelled_quantize_leaves_nothing(pool, synthetic_path, tmp_path):
    from core.plan import pure_plan
    from core.models import open_model

    plan = pure_plan(open_model(synthetic_path), "Q8_0")
    token = CancelToken()
    out = tmp_path / "cancelled.gguf"
    with pytest.raises(Cancelled):
        pool.call("core.tasks:quantize", synthetic_path, plan, str(out), 1,
                  progress=lambda ev: token.cancel(), cancel=token)
    assert list(tmp_path.iterdir()) == []


def test_frontier_point_and_warm_up(pool, synthetic_path):
    from core.plan import make_plan, planned_bytes
    from core.preview import preview_plan
    from core.models import open_model

    src = open_model(synthetic_path)
    posts = []
    pool.call("core.tasks:frontier_item", "Q8_0", synthetic_path, None, 16, post=posts.append)
    (preset, nbytes, rel_rmse, bpw), = posts
    plan = make_plan(src.tensors, src.metadata, "Q8_0")
    ref = preview_plan(src, plan, None, sample_rows=16, threads=1)
    assert preset == "Q8_0" and nbytes == planned_bytes(plan, src)
    # the worker's preview cache may hold a larger sample of a tensor estimated before (candidates above)
    assert rel_rmse == pytest.approx(ref.rel_rmse, rel=1e-2) and bpw == pytest.approx(ref.bpw)
    assert 0 < rel_rmse < 0.05
    pool.call("core.tasks:warm", "Q5_1")
    assert "Q5_1" in pool.call("core.tasks:warmed")


def test_worker_reopens_a_changed_file(tmp_path, synthetic_path):
    import os
    import shutil

    from core import tasks
    p = tmp_path / "m.gguf"
    shutil.copy(synthetic_path, p)
    a = tasks.source(str(p))
    assert tasks.source(str(p)) is a
    os.utime(p, ns=(1, 1))                   # same content, another modification time
    assert tasks.source(str(p)) is not a


def test_generate_task_writes_a_plan_once_and_leaves_nothing(demo_f32_path, tmp_path, monkeypatch):
    """The prompt box's task: a simulated plan continues exactly as the file quantizing writes, and its
    temporary file is gone afterwards."""
    import os
    import tempfile

    from core import tasks
    from core.eval.generate import greedy
    from core.eval.tokenizer import load_tokenizer
    from core.job import run_plan
    from core.models import open_model
    from core.plan import pure_plan

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    os.makedirs(tempfile.tempdir)
    src = open_model(demo_f32_path)
    plan = pure_plan(src.tensors, "Q4_0", "llama")
    prompt = "The three primary colours are"
    out = tasks.generate(Ctx(), [demo_f32_path], prompt, 6, {"Q4_0": (plan, None)}, demo_f32_path, threads=2)
    assert os.listdir(tempfile.tempdir) == []
    q4 = str(tmp_path / "q4.gguf")
    run_plan(src, plan, q4, threads=2)
    tok = load_tokenizer(src)
    with open_model(q4) as m:
        want = tok.decode(greedy(m, tok.encode(prompt), 6, threads=2))
    assert out["Q4_0"] == want and out[os.path.basename(demo_f32_path)] != ""
