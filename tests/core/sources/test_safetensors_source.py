import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from core.errors import SourceError, UnsupportedError
from core.sources import open_file as open_model


def write_bf16_safetensors(path, tensors: dict):
    """safetensors with BF16 (which the numpy writer cannot produce): truncate float32 with rounding."""
    header, blobs, off = {}, [], 0
    for name, arr in tensors.items():
        u = np.ascontiguousarray(arr, dtype=np.float32).view(np.uint32)
        b16 = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(arr.shape), "data_offsets": [off, off + len(b16)]}
        blobs.append(b16)
        off += len(b16)
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h + b"".join(blobs))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_dtypes_read_as_float32(tmp_path, rng):
    arrays = {"a.f32": rng.standard_normal((4, 8)).astype(np.float32),
              "b.f16": rng.standard_normal((3, 16)).astype(np.float16),
              "c.f64": rng.standard_normal((2, 5)),
              "d.i64": np.arange(10, dtype=np.int64).reshape(2, 5),
              "e.i8": np.arange(-4, 4, dtype=np.int8), "f.i32": np.arange(6, dtype=np.int32)}
    p = tmp_path / "m.safetensors"
    save_file(arrays, str(p))
    src = open_model(str(p))
    assert src.kind == "safetensors"
    assert {t.name: t.dtype for t in src.tensors} == {"a.f32": "F32", "b.f16": "F16", "c.f64": "F64",
                                                      "d.i64": "I64", "e.i8": "I8", "f.i32": "I32"}
    for name, arr in arrays.items():
        np.testing.assert_array_equal(src.read(name), arr.astype(np.float32))
    np.testing.assert_array_equal(src.read_rows("a.f32", 1, 3), arrays["a.f32"][1:3])


def test_bf16(tmp_path, rng):
    x = rng.standard_normal((6, 32)).astype(np.float32)
    p = tmp_path / "bf.safetensors"
    write_bf16_safetensors(p, {"w": x})
    src = open_model(str(p))
    t = src.tensor("w")
    assert t.dtype == "BF16" and t.nbytes == x.size * 2
    got = src.read("w")
    u = x.view(np.uint32)
    expect = (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)
    np.testing.assert_array_equal(got, expect)
    assert np.abs(got - x).max() < 0.01 * np.abs(x).max()


def test_hf_folder_sharded(tmp_path, rng):
    a = {"model.layers.0.mlp.up_proj.weight": rng.standard_normal((8, 4)).astype(np.float32)}
    b = {"model.layers.1.mlp.up_proj.weight": rng.standard_normal((8, 4)).astype(np.float32),
         "model.norm.weight": np.ones(4, np.float32)}
    save_file(a, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file(b, str(tmp_path / "model-00002-of-00002.safetensors"))
    wm = {k: "model-00001-of-00002.safetensors" for k in a} | {k: "model-00002-of-00002.safetensors" for k in b}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 4}))
    src = open_model(str(tmp_path))
    assert src.kind == "hf" and src.architecture == "LlamaForCausalLM"
    assert src.n_layers == 2 and len(src.tensors) == 3
    np.testing.assert_array_equal(src.read("model.layers.1.mlp.up_proj.weight"), b["model.layers.1.mlp.up_proj.weight"])
    assert src.metadata["config.hidden_size"] == 4


def test_index_lists_absent_shard(tmp_path, rng):
    save_file({"x": np.zeros((2, 2), np.float32)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    wm = {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    with pytest.raises(SourceError, match="model-00002-of-00002.safetensors.*missing") as e:
        open_model(str(tmp_path))
    assert "index.json" in str(e.value)


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SourceError, match="no .safetensors weights") as e:
        open_model(str(tmp_path))
    assert str(tmp_path) in str(e.value)


def test_corrupt_and_truncated(tmp_path, rng):
    p = tmp_path / "m.safetensors"
    save_file({"w": rng.standard_normal((64, 64)).astype(np.float32)}, str(p))
    data = p.read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[:-100])
    with pytest.raises(SourceError, match="truncated"):
        open_model(str(tmp_path / "t.safetensors"))
    (tmp_path / "h.safetensors").write_bytes(data[:8] + b"{not json" + data[17:])
    with pytest.raises(SourceError, match="corrupt safetensors header"):
        open_model(str(tmp_path / "h.safetensors"))
    (tmp_path / "n.safetensors").write_bytes((10**12).to_bytes(8, "little") + data[8:])
    with pytest.raises(SourceError, match="header length"):
        open_model(str(tmp_path / "n.safetensors"))


def test_unsupported_dtype(tmp_path):
    h = json.dumps({"w": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}).encode()
    p = tmp_path / "f4.safetensors"
    p.write_bytes(len(h).to_bytes(8, "little") + h + b"\0")
    with pytest.raises(UnsupportedError, match="unsupported dtype F4"):
        open_model(str(p))
