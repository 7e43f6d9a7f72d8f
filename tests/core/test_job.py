import os
import threading

import numpy as np
import pytest
from gguf import GGUFReader
from gguf.constants import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

from core.errors import Cancelled, SourceError
from core.gguf_out import layout_for
from core.job import run_plan
from core.plan import pure_plan
from core.presets import llama_order_key
from core.progress import CancelToken
from core.models import open_model


def _reader_tensors(path):
    return {t.name: t for t in GGUFReader(path).tensors}


def _assert_matches_gguf_quantizer(src_path, out_path, qtype):
    """Every tensor of the output: quantized ones equal gguf-py's quantizer on the same float32 input,
    the others are byte copies of the source."""
    src = _reader_tensors(src_path)
    out = _reader_tensors(out_path)
    assert list(out) == sorted(src, key=llama_order_key)        # every tensor, in llama-quantize's order
    n_quantized = 0
    for name, t in out.items():
        s = src[name]
        if t.tensor_type == s.tensor_type:
            assert t.data.tobytes() == s.data.tobytes(), name
            continue
        assert t.tensor_type == qtype, name
        x = dequantize(s.data, s.tensor_type).astype(np.float32)
        expect = quantize(x, qtype)
        got = np.asarray(t.data).reshape(expect.shape)
        bad = np.count_nonzero((got != expect).reshape(got.shape[0], -1).any(axis=1))
        assert bad == 0, f"{name}: {bad} rows differ from gguf-py's {qtype.name}"
        n_quantized += 1
    return n_quantized


def test_demo_q8_0_identical_to_gguf_quantizer(demo_path, tmp_path):
    out = str(tmp_path / "demo-q8_0.gguf")
    src = open_model(demo_path)
    plan = pure_plan(src.tensors, "Q8_0", src.architecture)
    res = run_plan(src, plan, out, threads=2)
    assert os.path.getsize(out) == res.size == layout_for(src, plan, out).total_size
    # 210 Q4_1 matrices requantized; token_embd is already Q8_0 in the demo, so it is copied (as llama-quantize does)
    assert _assert_matches_gguf_quantizer(demo_path, out, T.Q8_0) == 210
    r = GGUFReader(out)
    assert r.fields["general.file_type"].contents() == 7
    assert r.fields["general.quantization_version"].contents() == 2
    assert r.fields["tokenizer.ggml.tokens"].contents()[:3] == open_model(demo_path).metadata["tokenizer.ggml.tokens"][:3]


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.F16, T.BF16])
def test_synthetic_every_legacy_type(synthetic_path, tmp_path, qtype):
    out = str(tmp_path / f"s-{qtype.name}.gguf")
    src = open_model(synthetic_path)
    run_plan(src, pure_plan(src.tensors, qtype, "llama"), out, threads=2)
    assert _assert_matches_gguf_quantizer(synthetic_path, out, qtype) == 16


def test_split_output_equals_single_file(synthetic_path, tmp_path):
    src = open_model(synthetic_path)
    plan = pure_plan(src.tensors, "Q8_0", "llama")
    one = run_plan(src, plan, str(tmp_path / "one.gguf"), threads=2)
    many = run_plan(src, plan, str(tmp_path / "many.gguf"), threads=2, split_max_size=400_000)
    assert len(many.paths) >= 3
    assert many.paths[0].endswith("many-00001-of-%05d.gguf" % len(many.paths))
    whole = _reader_tensors(one.paths[0])
    parts = {}
    for p in many.paths:
        parts.update(_reader_tensors(p))
    assert list(parts) == list(whole)
    for k in whole:
        assert parts[k].data.tobytes() == whole[k].data.tobytes()


def test_cancel_midway_leaves_nothing(synthetic_path, tmp_path):
    src = open_model(synthetic_path)
    plan = pure_plan(src.tensors, "Q4_0", "llama")
    cancel = CancelToken()
    seen = []

    def progress(ev):
        seen.append(ev.done)
        if ev.done > ev.total // 3:
            cancel.cancel()

    out = tmp_path / "c.gguf"
    with pytest.raises(Cancelled):
        run_plan(src, plan, str(out), threads=2, progress=progress, cancel=cancel)
    assert os.listdir(tmp_path) == []
    assert seen and seen[-1] < plan.n_elements


def test_progress_reaches_total_with_tensor_events(synthetic_path, tmp_path):
    src = open_model(synthetic_path)
    plan = pure_plan(src.tensors, "Q5_1", "llama")
    events = []
    lock = threading.Lock()

    def cb(ev):
        with lock:
            events.append(ev)

    run_plan(src, plan, str(tmp_path / "p.gguf"), threads=2, progress=cb)
    assert events[-1].done == events[-1].total == plan.n_elements
    assert [e.done for e in events] == sorted(e.done for e in events)
    assert {e.item for e in events} == {e.name for e in plan.entries}
    assert events[-1].eta == 0.0


def test_nan_weights_are_reported(tmp_path):
    from gguf import GGUFWriter

    p = str(tmp_path / "nan.gguf")
    w = GGUFWriter(p, "llama")
    x = np.ones((4, 64), np.float32)
    x[2, 5] = np.nan
    x[3, 7] = np.inf
    w.add_tensor("blk.0.ffn_up.weight", x)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    src = open_model(p)
    out = tmp_path / "out.gguf"
    with pytest.raises(SourceError, match=r"blk.0.ffn_up.weight' has 2 NaN/Inf") as e:
        run_plan(src, pure_plan(src.tensors, "Q8_0"), str(out))
    assert p in str(e.value)
    assert not out.exists() and not (tmp_path / "out.gguf.partial").exists()


def test_llama_cpp_loads_and_runs_the_output(demo_path, tmp_path):
    """llama.cpp itself loads our Q8_0 demo and a split Q4_0 synthetic model, and computes finite logits."""
    import llama_cpp

    src = open_model(demo_path)
    out = str(tmp_path / "demo-q8.gguf")
    run_plan(src, pure_plan(src.tensors, "Q8_0", "llama"), out, threads=2)
    llm = llama_cpp.Llama(model_path=out, n_ctx=64, n_threads=2, verbose=False, logits_all=True)
    toks = llm.tokenize(b"The capital of France is")
    llm.eval(toks)
    logits = np.asarray(llm.scores[: len(toks)])
    assert np.isfinite(logits).all() and logits.std() > 0.1
    ref = llama_cpp.Llama(model_path=demo_path, n_ctx=64, n_threads=2, verbose=False, logits_all=True)
    ref.eval(toks)
    # Q8_0 of a Q4_1 model: the next-token choice stays the same
    assert int(np.argmax(logits[-1])) == int(np.argmax(np.asarray(ref.scores[len(toks) - 1])))
