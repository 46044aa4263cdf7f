"""Shared helpers for benchmarks: interleaved timing and a ratio report."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(fns: dict[str, Callable[[], object]], repeats: int = 30, warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved so drift hits all alike."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def report(title: str, medians: dict[str, float], baseline: str, target: float | None = None) -> None:
    base = medians[baseline]
    print(f"\n{title}")
    for k, v in medians.items():
        ratio = v / base
        mark = "" if target is None or k == baseline else f"  (target ≤ {target:.2f}x: {'met' if ratio <= target else 'NOT met'})"
        print(f"  {k:<48} {v * 1000:9.2f} ms   {ratio:5.3f}x{mark}")
