"""A split GGUF opens as one model from any shard (as llama.cpp loads it); a missing shard is a clear
error naming it; inspect, --dry-run and quantize see the whole model."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from core.models import open_model
from core.sources import open_file


def cli(*args):
    return subprocess.run([sys.executable, "-m", "core.cli", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def split(tmp_path_factory, demo_path):
    d = tmp_path_factory.mktemp("split")
    out = str(d / "demo.gguf")
    r = cli("quantize", demo_path, out, "--type", "Q8_0", "--split-max-size", "40M")
    assert r.returncode == 0, r.stderr
    shards = sorted(str(d / f) for f in os.listdir(d) if f.endswith(".gguf"))
    assert len(shards) >= 3
    return shards


def test_any_shard_opens_the_whole_model(split, demo_path):
    whole = open_model(demo_path)
    for shard in (split[0], split[-1]):
        m = open_model(shard)
        assert sorted(t.name for t in m.tensors) == sorted(t.name for t in whole.tensors)   # (written in
        # llama.cpp's order, the demo file lists them in its converter's)
        assert m.n_layers == whole.n_layers == 30 and m.summary()["shards"] == len(split)
        assert m.read_rows("blk.29.ffn_down.weight", 0, 2).shape == (2, 1536)
        assert m.architecture == "llama"
    one = open_file(split[1], whole_split=False)                  # one file, for verify
    assert 0 < len(one.tensors) < len(whole.tensors)


def test_a_missing_shard_is_named(split, tmp_path):
    import shutil
    for p in split:
        shutil.copy(p, tmp_path / os.path.basename(p))
    gone = tmp_path / os.path.basename(split[1])
    os.remove(gone)
    r = cli("inspect", str(tmp_path / os.path.basename(split[0])), "--no-stats")
    assert r.returncode == 2 and str(gone) in r.stderr and "missing" in r.stderr and "Traceback" not in r.stderr


def test_cli_sees_the_whole_split(split, demo_path, tmp_path):
    r = cli("inspect", split[-1], "--no-stats", "--json")
    d = json.loads(r.stdout)
    assert d["summary"]["shards"] == len(split) and d["summary"]["n_tensors"] == len(open_model(demo_path).tensors)
    assert f"{len(split)} shards" in cli("inspect", split[0], "--no-stats").stdout
    r = cli("quantize", split[1], str(tmp_path / "one.gguf"), "--type", "Q8_0", "--dry-run", "--json")
    ref = cli("quantize", demo_path, str(tmp_path / "ref.gguf"), "--type", "Q8_0", "--dry-run", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["file_size"] == json.loads(ref.stdout)["file_size"]
    out = str(tmp_path / "joined.gguf")
    assert cli("quantize", split[0], out, "--type", "Q8_0").returncode == 0
    a = open_model(out)
    assert len(a.tensors) == len(open_model(demo_path).tensors) and "split.count" not in a.metadata
    for shard in split:
        assert cli("verify", shard).returncode == 0                 # each shard is a sound file of its own
