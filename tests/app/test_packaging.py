"""What the installed application relies on, checked in the source tree (the bundle itself is built
and smoke-tested by `make package`, packaging/check_package.py): the per-user kernel cache of a frozen
app, the demo model inside the bundle, the version and format versions in Help › About."""
from __future__ import annotations

import os
import sys


def test_frozen_app_caches_kernels_per_user(monkeypatch, tmp_path):
    from app import launcher

    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    launcher.configure_frozen()
    assert "NUMBA_CACHE_DIR" not in os.environ                     # a source checkout keeps Numba's default
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    launcher.configure_frozen()
    assert os.environ["NUMBA_CACHE_DIR"] == os.path.join(str(tmp_path), "quant-studio", "numba")


def test_frozen_app_finds_its_bundled_demo(monkeypatch, tmp_path):
    from core.demo import DEMO_FILE, demo_model_path

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / DEMO_FILE).write_bytes(b"GGUF")
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    assert demo_model_path() == str(tmp_path / "models" / DEMO_FILE)


def test_about_shows_the_package_version_and_formats(window):
    from importlib.metadata import version

    text = window.about_text()
    assert version("quant-studio") in text and "GGUF version 3" in text and "llama-cpp-python 0.3.36" in text
