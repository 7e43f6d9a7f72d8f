"""Shared timing helper for the bench scripts."""
import time


def best_times(fns: dict, repeat: int) -> dict:
    """Best wall time of each callable over ``repeat`` interleaved rounds (contenders alternate, so a
    busy moment hurts them alike)."""
    best = {k: float("inf") for k in fns}
    for _ in range(repeat):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t)
    return best
