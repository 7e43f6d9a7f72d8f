"""Broken Hugging Face folders: one clear core.errors message that names the file, and no output."""
import json
import os
import shutil

import numpy as np
import pytest

from tests.core.convert.hf_fixtures import quantize_hf
from core.errors import QuantStudioError, SourceError, UnsupportedError

from core.sources.safetensors_source import SafetensorsSource

from .hf_fixtures import synthetic_checkpoint, write_safetensors


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("good") / "llama")
    synthetic_checkpoint(folder, "LlamaForCausalLM", seed=3)
    return folder


@pytest.fixture
def folder(good, tmp_path):
    d = str(tmp_path / "model")
    shutil.copytree(good, d)
    return d


def edit_json(path, fn):
    with open(path) as f:
        d = json.load(f)
    fn(d)
    with open(path, "w") as f:
        json.dump(d, f)


def fails(folder, tmp_path, exc, match, names):
    """quantize_hf raises ``exc`` matching ``match``; the error's path ends with ``names``; no output."""
    out = str(tmp_path / "out.gguf")
    with pytest.raises(exc, match=match) as e:
        quantize_hf(folder, out, "Q8_0", threads=1)
    assert e.value.path is not None and e.value.path.endswith(names), e.value.path
    assert "\n" not in str(e.value)
    assert not os.path.exists(out) and not os.path.exists(out + ".partial")
    return e.value


def test_good_folder_converts(folder, tmp_path):
    quantize_hf(folder, str(tmp_path / "out.gguf"), "Q8_0", threads=1)
    assert os.path.getsize(tmp_path / "out.gguf") > 0


def test_missing_config(folder, tmp_path):
    os.remove(os.path.join(folder, "config.json"))
    fails(folder, tmp_path, SourceError, "no config.json", "config.json")


def test_missing_tokenizer(folder, tmp_path):
    os.remove(os.path.join(folder, "tokenizer.json"))
    fails(folder, tmp_path, SourceError, "no tokenizer: expected tokenizer.json", "model")


def test_missing_sentencepiece_model(tmp_path):
    d = str(tmp_path / "gemma")
    synthetic_checkpoint(d, "Gemma2ForCausalLM")
    os.remove(os.path.join(d, "tokenizer.model"))
    fails(d, tmp_path, SourceError, "needs tokenizer.model", "tokenizer.model")


def test_corrupt_tokenizer(folder, tmp_path):
    with open(os.path.join(folder, "tokenizer.json"), "w") as f:
        f.write("{ not json")
    fails(folder, tmp_path, SourceError, "cannot read tokenizer.json", "tokenizer.json")


def test_shard_in_index_but_absent(folder, tmp_path):
    os.remove(os.path.join(folder, "model-00002-of-00002.safetensors"))
    fails(folder, tmp_path, SourceError, "model-00002-of-00002.safetensors' listed in the index is missing",
          "model.safetensors.index.json")


def test_tensor_shape_mismatch(folder, tmp_path):
    edit_json(os.path.join(folder, "config.json"), lambda c: c.update(intermediate_size=96))
    e = fails(folder, tmp_path, SourceError, r"has shape \[.*config.json and the tokenizer imply", ".safetensors")
    assert "mlp" in str(e)


def test_missing_layer_tensor(folder, tmp_path):
    edit_json(os.path.join(folder, "config.json"), lambda c: c.update(num_hidden_layers=3))
    fails(folder, tmp_path, SourceError, r"no tensor for 'blk.2.attn_norm.weight'.*3 layers",
          "model.safetensors.index.json")


def test_unsupported_architecture(folder, tmp_path):
    edit_json(os.path.join(folder, "config.json"), lambda c: c.update(architectures=["MambaForCausalLM"]))
    e = fails(folder, tmp_path, UnsupportedError, "'MambaForCausalLM' cannot be converted", "config.json")
    for arch in ("LlamaForCausalLM", "Qwen3ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM"):
        assert arch in str(e)


def test_unsupported_dtype(folder, tmp_path):
    shard = os.path.join(folder, "model-00002-of-00002.safetensors")
    bad = np.zeros((128, 64), dtype=np.uint8)
    src = SafetensorsSource(shard)
    tensors = {}
    for t in src.tensors:
        tensors[t.name] = ("F32", src.read(t.name))
    src.close()
    victim = next(n for n in tensors if n.endswith("up_proj.weight"))
    tensors[victim] = ("F8_E4M3", bad)
    write_safetensors(shard, tensors)
    e = fails(folder, tmp_path, UnsupportedError, "dtype F8_E4M3, which cannot be converted",
              "model-00002-of-00002.safetensors")
    assert victim in str(e)


def test_unsupported_quantization(folder, tmp_path):
    edit_json(os.path.join(folder, "config.json"),
              lambda c: c.update(quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True}))
    fails(folder, tmp_path, UnsupportedError, "method 'bitsandbytes' are not supported", "config.json")


def test_output_is_not_the_input(folder):
    with pytest.raises(QuantStudioError, match="overwrite the input"):
        quantize_hf(folder, folder, "Q8_0")


def test_single_safetensors_file_is_not_a_folder(folder, tmp_path):
    with pytest.raises(QuantStudioError, match="not a folder"):
        quantize_hf(os.path.join(folder, "model-00001-of-00002.safetensors"), str(tmp_path / "o.gguf"), "Q8_0")


def test_vocabulary_and_embedding_disagree(folder, tmp_path):
    edit_json(os.path.join(folder, "config.json"), lambda c: c.update(vocab_size=c["vocab_size"] + 16))
    fails(folder, tmp_path, SourceError, r"(embed_tokens|lm_head).weight' has shape .*rows = tokens", ".safetensors")

