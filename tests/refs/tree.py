"""llama.cpp's source tree of the release the tests pin (llama-cpp-python 0.3.36's vendored copy), which
packaging/bootstrap.sh downloads and unpacks into the cache: vocabulary fixtures, and the sources of the
reference tools the tests build."""
from __future__ import annotations

import os

LLAMA_CPP_PYTHON_VERSION = "0.3.36"


def llama_cpp_tree() -> str:
    """The vendored llama.cpp directory; raises (an error in CI, never a skip) when bootstrap did not
    provide it."""
    cache = os.environ.get("QUANT_STUDIO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "quant-studio")
    d = os.path.join(cache, "src", f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}", "vendor", "llama.cpp")
    if not os.path.isdir(os.path.join(d, "ggml")):
        raise RuntimeError(f"llama.cpp's source tree is missing at {d}: run bash packaging/bootstrap.sh --test")
    return d


def vocab_fixture(name: str) -> str:
    """``models/ggml-vocab-<name>.gguf`` of the tree (a vocabulary-only GGUF, with .inp/.out test texts)."""
    return os.path.join(llama_cpp_tree(), "models", f"ggml-vocab-{name}.gguf")
