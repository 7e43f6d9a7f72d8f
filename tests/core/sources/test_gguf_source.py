import numpy as np
import pytest
from gguf import GGUFReader
from gguf.quants import dequantize

from core.errors import SourceError, UnsupportedError
from core.sources import open_file as open_model
from tests.badfiles import make_bad_gguf


@pytest.fixture(scope="module")
def demo_reader(demo_path):
    """gguf-py's reader of the demo (slow on its 49k-token vocabulary: made once)."""
    return GGUFReader(demo_path)


def test_demo_lists_every_tensor_like_gguf_reader(demo_path, demo_reader):
    src = open_model(demo_path)
    ref = demo_reader
    assert [t.name for t in src.tensors] == [t.name for t in ref.tensors]
    for ours, theirs in zip(src.tensors, ref.tensors):
        assert ours.shape == tuple(int(d) for d in reversed(theirs.shape))
        assert ours.ggml_type == theirs.tensor_type
        assert ours.nbytes == theirs.n_bytes
        assert src.raw(ours.name).tobytes() == theirs.data.tobytes()
    assert src.architecture == "llama"
    assert src.n_layers == 30
    assert src.metadata["llama.embedding_length"] == 576
    assert len(src.metadata["tokenizer.ggml.tokens"]) == 49152


def test_metadata_raw_bytes_equal_the_file(demo_path, demo_reader):
    src = open_model(demo_path)
    ref = demo_reader
    for kv in src.kv:
        fld = ref.fields[kv.key]
        assert kv.raw == b"".join(bytes(p.tobytes()) for p in fld.parts[2:]), kv.key


@pytest.mark.parametrize("name", ["blk.0.ffn_down.weight", "token_embd.weight", "blk.0.attn_norm.weight"])
def test_read_rows_matches_gguf_decoder(demo_path, demo_reader, name):
    src = open_model(demo_path)
    t = src.tensor(name)
    ref = demo_reader
    rt = next(x for x in ref.tensors if x.name == name)
    full = dequantize(rt.data, rt.tensor_type).reshape(t.n_rows, t.row_len)
    np.testing.assert_array_equal(src.read(name).reshape(t.n_rows, t.row_len), full)
    a = t.n_rows // 3
    b = min(a + 7, t.n_rows)
    np.testing.assert_array_equal(src.read_rows(name, a, b), full[a:b])


def test_row_range_checked(demo_path):
    src = open_model(demo_path)
    with pytest.raises(SourceError, match="out of range"):
        src.read_rows("blk.0.ffn_down.weight", 0, 10**6)


@pytest.mark.parametrize("kind,pattern", [
    ("magic", "not a GGUF file"), ("truncated", "truncated"), ("tensor_count", "tensors cannot fit"),
    ("kv_count", "metadata entries cannot fit"), ("array_length", "tokenizer.ggml.tokens"),
    ("offset_past_end", "output.weight.*past the end of the file"),
    ("unknown_type", "blk.0.attn_q.weight.*unknown type id 99"), ("empty", "truncated")])
def test_corrupt_gguf(synthetic_path, tmp_path, kind, pattern):
    bad = make_bad_gguf(synthetic_path, str(tmp_path), kind)
    with pytest.raises((SourceError, UnsupportedError), match=pattern) as e:
        open_model(bad)
    assert str(e.value).startswith(bad)


def test_truncated_anywhere(synthetic_path, tmp_path):
    data = open(synthetic_path, "rb").read()
    for cut in (10, 200, 5000, len(data) - 1):
        p = tmp_path / f"cut{cut}.gguf"
        p.write_bytes(data[:cut])
        with pytest.raises(SourceError, match="truncated") as e:
            open_model(str(p))
        assert str(p) in str(e.value)


def test_missing_and_empty(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        open_model(str(tmp_path / "nope.gguf"))
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(SourceError, match="not a model file"):
        open_model(str(other))


def test_open_is_fast(demo_path):
    import time

    t = time.perf_counter()
    open_model(demo_path).close()
    # generous bound that only a pathological parser misses (GGUFReader takes ~6 s on this vocabulary)
    assert time.perf_counter() - t < 2.0
