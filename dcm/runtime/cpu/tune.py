"""Kernel choice by timing, for ``InferenceSession(..., tune=True)``.

The static rules (``prefers_dense`` in matmul.py, the density limits in conv.py) are break-even
points read from benchmarks over many layers; a layer near one may go either way on a given
machine. With ``tune=True`` a kernel whose candidates are close times them on its first call, on
the real input, and keeps the fastest. The candidates are called in turn, round after round, so
that load from other processes hits all of them alike. Decisions are kept for the process, keyed by
what the times depend on (the layer's shape and density, the input's shape, the thread count):
a second session of the same model reuses them without timing anything.
"""
from __future__ import annotations

import time
from typing import Callable, Hashable

import numpy as np

DECISIONS: dict[Hashable, str] = {}
RACES = [0]  # how many times candidates were timed in this process (tests count them)


def race(candidates: dict[str, Callable[[], object]], min_time: float = 0.02, max_rounds: int = 50,
         summary: Callable[[list[float]], float] = np.median) -> dict[str, float]:
    """Seconds per call of each candidate (``summary`` of its calls' times: the median, or ``min``),
    after one warm-up call each: at least 3 rounds, then more until ``min_time`` has passed or
    ``max_rounds`` were run."""
    for fn in candidates.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    start = time.perf_counter()
    while len(times[next(iter(times))]) < 3 or (time.perf_counter() - start < min_time
                                                  and len(times[next(iter(times))]) < max_rounds):
        for name, fn in candidates.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: float(summary(ts)) for name, ts in times.items()}


def choose(key: Hashable, candidates: dict[str, Callable[[], object]]) -> str:
    """The name of the fastest candidate for ``key``: the process's earlier decision, or a race now,
    decided by each candidate's fastest call (another process taking the core only ever lengthens a
    call: on a loaded 2-core machine medians of a few calls of 2 ms ranged from 2 to 26 ms)."""
    if key not in DECISIONS:
        RACES[0] += 1
        times = race(candidates, summary=min)
        DECISIONS[key] = min(times, key=times.__getitem__)
    return DECISIONS[key]
