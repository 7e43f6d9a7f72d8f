"""The ``quant-studio`` entry point: a command goes to the headless CLI (core.cli), no command starts the
studio. Qt is imported only in the second case, so ``quant-studio --help`` and CLI runs stay fast and work
without a display."""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence


def user_cache_dir() -> str:
    """Where the installed application keeps its compiled kernels (per user, per platform)."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser("~\\AppData\\Local")
    elif sys.platform == "darwin":
        base = os.path.expanduser("~/Library/Caches")
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "quant-studio")


def configure_frozen() -> None:
    """In the installed (PyInstaller) application: Numba's kernel cache goes to a per-user folder, so
    kernels compile once per installation and user (the kernel modules are shipped as source files,
    see packaging/quant-studio.spec: Numba caches only functions whose source file it can stat).
    Must run before Numba is imported; worker processes inherit the environment."""
    if getattr(sys, "frozen", False):
        os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(user_cache_dir(), "numba"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    import multiprocessing
    multiprocessing.freeze_support()       # the studio's worker processes in a frozen (installer) build
    configure_frozen()
    from core.cli import PROG, main as cli_main, wants_gui
    argv = list(sys.argv[1:] if argv is None else argv)
    if not wants_gui(argv):
        return cli_main(argv)
    try:
        from app.main import run
    except ImportError as e:  # pragma: no cover - a broken install
        print(f"{PROG}: error: the studio needs the GUI packages (PySide6, pyqtgraph): {e}", file=sys.stderr)
        return 2
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
