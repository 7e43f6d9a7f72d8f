"""Shared timing helper for the bench scripts."""
import time


def best_times(fns: dict, repeat: int, clock=time.perf_counter) -> dict:
    """Best time (wall, or ``clock``) of each callable over ``repeat`` interleaved rounds (contenders
    alternate, so a busy moment hurts them alike)."""
    best = {k: float("inf") for k in fns}
    for _ in range(repeat):
        for k, f in fns.items():
            t = clock()
            f()
            best[k] = min(best[k], clock() - t)
    return best
