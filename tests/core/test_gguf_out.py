import os

import numpy as np
import pytest
from gguf import GGUFReader
from gguf.constants import GGMLQuantizationType as T, GGUFValueType

from core.errors import OutputError
from core.gguf_meta import KV, make_kv
from core.gguf_out import GGUFLayout, GGUFStreamWriter, OutTensor, shard_path
from tests.badfiles import fill_disk_after


def _kv():
    return [make_kv("general.architecture", "llama"), make_kv("general.name", "tiny"),
            KV("llama.block_count", 2, GGUFValueType.UINT32),
            make_kv("tokenizer.ggml.tokens", ["a", "bb", "ccc"]),
            KV("tokenizer.ggml.scores", [0.5, -1.0, 2.0], GGUFValueType.ARRAY, GGUFValueType.FLOAT32),
            KV("flag", True, GGUFValueType.BOOL)]


def _tensors(rng, n=5):
    out = {}
    for i in range(n):
        out[f"blk.{i}.w"] = rng.standard_normal((3 + i, 32)).astype(np.float32)
    out["norm"] = rng.standard_normal(7).astype(np.float32)
    return out


def _write(path, arrays, split=None, chunked=False):
    tensors = [OutTensor(k, v.shape, T.F32) for k, v in arrays.items()]
    layout = GGUFLayout(str(path), _kv(), tensors, split)
    with GGUFStreamWriter(layout) as w:
        for k, v in arrays.items():
            if chunked and v.ndim == 2:
                for r in range(v.shape[0]):
                    w.write(k, v[r])
            else:
                w.write(k, v)
    return layout


@pytest.mark.parametrize("chunked", [False, True])
def test_roundtrip_with_gguf_reader(tmp_path, chunked):
    arrays = _tensors(np.random.default_rng(0))
    layout = _write(tmp_path / "m.gguf", arrays, chunked=chunked)
    assert os.path.getsize(tmp_path / "m.gguf") == layout.total_size
    r = GGUFReader(str(tmp_path / "m.gguf"))
    assert [t.name for t in r.tensors] == list(arrays)
    for t in r.tensors:
        np.testing.assert_array_equal(np.asarray(t.data).reshape(arrays[t.name].shape), arrays[t.name])
        assert t.data_offset % 32 == 0
    assert r.fields["tokenizer.ggml.tokens"].contents() == ["a", "bb", "ccc"]
    assert r.fields["llama.block_count"].contents() == 2
    assert r.fields["flag"].contents() is True
    assert not os.path.exists(str(tmp_path / "m.gguf") + ".partial")


def test_split_names_and_metadata(tmp_path):
    arrays = _tensors(np.random.default_rng(1), n=6)
    layout = _write(tmp_path / "m.gguf", arrays, split=1000)
    n = len(layout.shards)
    assert n > 2
    assert layout.paths == [str(tmp_path / f"m-{i:05d}-of-{n:05d}.gguf") for i in range(1, n + 1)]
    names = []
    for i, p in enumerate(layout.paths):
        assert os.path.getsize(p) == layout.shards[i].size
        r = GGUFReader(p)
        assert r.fields["split.no"].contents() == i
        assert r.fields["split.count"].contents() == n
        assert r.fields["split.tensors.count"].contents() == len(arrays)
        assert ("general.architecture" in r.fields) == (i == 0)
        names += [t.name for t in r.tensors]
        data = sum(((t.n_bytes + 31) // 32 * 32) for t in r.tensors)
        assert data <= 1000 or len(r.tensors) == 1
    assert names == list(arrays)
    assert shard_path("x/model.gguf", 1, 3) == "x/model-00002-of-00003.gguf"


def test_failure_leaves_no_file_and_keeps_existing(tmp_path):
    target = tmp_path / "m.gguf"
    target.write_bytes(b"precious")
    arrays = _tensors(np.random.default_rng(2))
    tensors = [OutTensor(k, v.shape, T.F32) for k, v in arrays.items()]
    layout = GGUFLayout(str(target), _kv(), tensors)
    with pytest.raises(RuntimeError):
        with GGUFStreamWriter(layout) as w:
            w.write("blk.0.w", arrays["blk.0.w"])
            raise RuntimeError("boom")
    assert target.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["m.gguf"]


def test_incomplete_or_wrong_order(tmp_path):
    arrays = _tensors(np.random.default_rng(3))
    tensors = [OutTensor(k, v.shape, T.F32) for k, v in arrays.items()]
    layout = GGUFLayout(str(tmp_path / "m.gguf"), _kv(), tensors)
    w = GGUFStreamWriter(layout)
    w.open()
    with pytest.raises(OutputError, match="out of order"):
        w.write("blk.1.w", arrays["blk.1.w"])
    w.write("blk.0.w", arrays["blk.0.w"])
    with pytest.raises(OutputError, match="never written"):
        w.finish()
    assert os.listdir(tmp_path) == []


def test_unwritable_location(tmp_path):
    arrays = _tensors(np.random.default_rng(4))
    layout = GGUFLayout(str(tmp_path / "missing" / "m.gguf"), _kv(), [OutTensor(k, v.shape, T.F32) for k, v in arrays.items()])
    with pytest.raises(OutputError, match="does not exist"):
        GGUFStreamWriter(layout).open()


def test_disk_full(tmp_path, monkeypatch):
    """A write that fails with ENOSPC gives one clear error and removes the partial file."""
    fill_disk_after(monkeypatch, 2000)
    arrays = _tensors(np.random.default_rng(5), n=8)
    with pytest.raises(OutputError, match="disk full") as e:
        _write(tmp_path / "m.gguf", arrays)
    assert "m.gguf" in str(e.value)
    assert os.listdir(tmp_path) == []


def test_kv_value_encoding_matches_gguf_writer(tmp_path):
    """Our metadata encoding equals gguf-py's GGUFWriter's, byte for byte."""
    from gguf import GGUFWriter

    p = tmp_path / "ref.gguf"
    w = GGUFWriter(str(p), "llama")
    w.add_name("tiny")
    w.add_uint32("llama.block_count", 2)
    w.add_array("tokenizer.ggml.tokens", ["a", "bb", "ccc"])
    w.add_array("tokenizer.ggml.scores", [0.5, -1.0, 2.0])
    w.add_bool("flag", True)
    w.add_tensor("t", np.ones((2, 32), np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    from core.models import open_model

    src = open_model(str(p))
    kv = [KV(k.key, k.value, k.vtype, k.subtype) for k in src.kv]   # re-encode from values
    layout = GGUFLayout(str(tmp_path / "ours.gguf"), kv, [OutTensor("t", (2, 32), T.F32)])
    with GGUFStreamWriter(layout) as ow:
        ow.write("t", np.ones((2, 32), np.float32))
    assert (tmp_path / "ours.gguf").read_bytes() == p.read_bytes()
