"""The ``quant-studio`` entry point: a command goes to the headless CLI (core.cli), no command starts the
studio. Qt is imported only in the second case, so ``quant-studio --help`` and CLI runs stay fast and work
without a display."""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from core.cli import PROG, main as cli_main, wants_gui


def main(argv: Optional[Sequence[str]] = None) -> int:
    import multiprocessing
    multiprocessing.freeze_support()       # the studio's worker processes in a frozen (installer) build
    argv = list(sys.argv[1:] if argv is None else argv)
    if not wants_gui(argv):
        return cli_main(argv)
    try:
        from app.main import run
    except ImportError as e:
        print(f"{PROG}: error: the studio needs the GUI packages (PySide6, pyqtgraph): {e}", file=sys.stderr)
        return 2
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
