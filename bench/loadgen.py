"""A load generator: N processes that keep one CPU core each busy (pure Python arithmetic), to
see how the studio and its tests behave on a shared, busy machine.

    python bench/loadgen.py 2 [--seconds S]      # until Ctrl-C, or for S seconds
    with busy(2): ...                            # from another bench script
"""
from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import signal
import sys
import time


def _spin(seconds: float, parent: int) -> None:
    end = time.monotonic() + seconds
    x = 0
    while time.monotonic() < end and os.getppid() == parent:     # ends with its parent, however it ended
        for i in range(100000):
            x = (x * 31 + i) & 0xFFFFFFFF


@contextlib.contextmanager
def busy(n: int, seconds: float = 3600.0):
    """``n`` busy processes at normal priority while the block runs."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_spin, args=(seconds, os.getpid()), daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("n", type=int, nargs="?", default=2)
    ap.add_argument("--seconds", type=float, default=3600.0)
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))     # `kill` ends the busy processes too
    with busy(a.n, a.seconds) as procs:
        print(f"{a.n} busy processes: {' '.join(str(p.pid) for p in procs)}", flush=True)
        try:
            for p in procs:
                p.join()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
