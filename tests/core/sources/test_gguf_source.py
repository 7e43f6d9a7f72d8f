import numpy as np
import pytest
from gguf import GGUFReader
from gguf.quants import dequantize

from core.errors import SourceError, UnsupportedError
from core.sources import open_model


def test_demo_lists_every_tensor_like_gguf_reader(demo_path):
    src = open_model(demo_path)
    ref = GGUFReader(demo_path)
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


def test_metadata_raw_bytes_equal_the_file(demo_path):
    src = open_model(demo_path)
    ref = GGUFReader(demo_path)
    for kv in src.kv:
        fld = ref.fields[kv.key]
        assert kv.raw == b"".join(bytes(p.tobytes()) for p in fld.parts[2:]), kv.key


@pytest.mark.parametrize("name", ["blk.0.ffn_down.weight", "token_embd.weight", "blk.0.attn_norm.weight"])
def test_read_rows_matches_gguf_decoder(demo_path, name):
    src = open_model(demo_path)
    t = src.tensor(name)
    ref = GGUFReader(demo_path)
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


def _copy_with(path, tmp_path, edit):
    data = bytearray(open(path, "rb").read())
    edit(data)
    out = tmp_path / "bad.gguf"
    out.write_bytes(bytes(data))
    return str(out)


def test_wrong_magic(synthetic_path, tmp_path):
    bad = _copy_with(synthetic_path, tmp_path, lambda d: d.__setitem__(slice(0, 4), b"GGUX"))
    with pytest.raises(SourceError, match="not a GGUF file") as e:
        open_model(bad)
    assert "bad.gguf" in str(e.value)


def test_truncated(synthetic_path, tmp_path):
    data = open(synthetic_path, "rb").read()
    for cut in (10, 200, len(data) // 2, len(data) - 1):
        p = tmp_path / f"cut{cut}.gguf"
        p.write_bytes(data[:cut])
        with pytest.raises(SourceError, match="truncated") as e:
            open_model(str(p))
        assert str(p) in str(e.value)


def test_absurd_tensor_count(synthetic_path, tmp_path):
    bad = _copy_with(synthetic_path, tmp_path, lambda d: d.__setitem__(slice(8, 16), (2**60).to_bytes(8, "little")))
    with pytest.raises(SourceError, match="tensors cannot fit"):
        open_model(bad)


def test_absurd_kv_count(synthetic_path, tmp_path):
    bad = _copy_with(synthetic_path, tmp_path, lambda d: d.__setitem__(slice(16, 24), (2**62).to_bytes(8, "little")))
    with pytest.raises(SourceError, match="metadata entries cannot fit"):
        open_model(bad)


def _find_array_count(data: bytes, key: str) -> int:
    """Offset of the element count of array metadata ``key``."""
    k = key.encode()
    i = data.index(len(k).to_bytes(8, "little") + k)
    return i + 8 + len(k) + 4 + 4


def test_absurd_array_length(synthetic_path, tmp_path):
    data = open(synthetic_path, "rb").read()
    off = _find_array_count(data, "tokenizer.ggml.tokens")
    bad = _copy_with(synthetic_path, tmp_path, lambda d: d.__setitem__(slice(off, off + 8), (2**61).to_bytes(8, "little")))
    with pytest.raises(SourceError, match="tokenizer.ggml.tokens"):
        open_model(bad)


def _tensor_info_offset(data: bytes, name: str) -> int:
    k = name.encode()
    return data.index(len(k).to_bytes(8, "little") + k) + 8 + len(k)


def test_tensor_offset_past_end(synthetic_path, tmp_path):
    data = open(synthetic_path, "rb").read()
    i = _tensor_info_offset(data, "output.weight")
    nd = int.from_bytes(data[i:i + 4], "little")
    off_at = i + 4 + 8 * nd + 4
    bad = _copy_with(synthetic_path, tmp_path, lambda d: d.__setitem__(slice(off_at, off_at + 8), (len(data)).to_bytes(8, "little")))
    with pytest.raises(SourceError, match="past the end of the file") as e:
        open_model(bad)
    assert "output.weight" in str(e.value)


def test_unknown_tensor_type(synthetic_path, tmp_path):
    data = open(synthetic_path, "rb").read()
    i = _tensor_info_offset(data, "blk.0.attn_q.weight")
    nd = int.from_bytes(data[i:i + 4], "little")
    t_at = i + 4 + 8 * nd
    bad = _copy_with(synthetic_path, tmp_path, lambda d: d.__setitem__(slice(t_at, t_at + 4), (99).to_bytes(4, "little")))
    with pytest.raises(UnsupportedError, match="unknown type id 99") as e:
        open_model(bad)
    assert "blk.0.attn_q.weight" in str(e.value)


def test_missing_and_empty(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        open_model(str(tmp_path / "nope.gguf"))
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(SourceError, match="truncated"):
        open_model(str(empty))
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
