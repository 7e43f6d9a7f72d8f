"""``quant-studio --self-test`` through the real launcher, in a fresh process."""
from __future__ import annotations

import os
import subprocess
import sys

from PySide6.QtGui import QImage

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_self_test_entry_point(tmp_path, out_dir):
    shot = os.path.join(out_dir, "self-test.png")
    if os.path.exists(shot):
        os.remove(shot)
    env = dict(os.environ)
    env.pop("QT_QPA_PLATFORM", None)                      # the self-test goes offscreen by itself
    r = subprocess.run([sys.executable, "-m", "app.launcher", "--self-test", "--screenshot", shot],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == shot and "self-test: OK" in lines[-2] and "272 tensors" in lines[-2]
    img = QImage(shot)
    assert not img.isNull() and img.width() >= 1000
