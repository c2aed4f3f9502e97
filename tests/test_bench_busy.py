"""benchmarks/busy.py: the statistics, the turn-taking timer and the background load it starts."""
from __future__ import annotations

import time

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from benchmarks import busy  # noqa: E402


def test_stats_and_the_rows_over_the_bound():
    s = busy.stats([0.010, 0.011, 0.012, 0.030, 0.040])
    assert s["calls"] == 5 and s["min_ms"] == pytest.approx(10) and s["median_ms"] == pytest.approx(12)
    assert s["median_over_min"] == pytest.approx(1.2) and s["p90_ms"] == pytest.approx(36)
    rows = [{"model": "m", "runtime": "dcm", "threads": 2, **busy.stats([0.01, 0.02, 0.03])},
            {"model": "m", "runtime": "onnxruntime", "threads": 2, **s}]
    text = busy.table(rows)
    assert "| m | dcm | 2 | 3 | 10.00 | 20.00 |" in text
    assert text.endswith("Over issue 17's 1.5x bound: m dcm threads=2 (2.00).")


def test_interleaved_calls_every_configuration_in_turn():
    order = []
    runs = {"a": lambda: order.append("a"), "b": lambda: (order.append("b"), time.sleep(0.002))}
    times = busy.interleaved(runs, seconds=0.01, block=0)
    assert len(times["a"]) >= 10 and sum(times["b"]) >= 0.01
    assert order[:6] == ["a", "b"] * 3  # warm-up calls, then turns of one call


def test_interleaved_turns_are_blocks_of_calls():
    order = []
    runs = {"a": lambda: (order.append("a"), time.sleep(0.001)), "b": lambda: (order.append("b"), time.sleep(0.001))}
    times = busy.interleaved(runs, seconds=0.04, block=0.01)
    assert sum(times["a"]) >= 0.04 and sum(times["b"]) >= 0.04
    turns = [k for i, k in enumerate(order[2:]) if i == 0 or order[2 + i - 1] != k]  # after the warm-ups
    assert turns[:3] == ["a", "b", "a"] and len(order) - 2 > 2 * len(turns)  # several calls a turn


def test_background_processes_start_and_stop():
    procs = busy.start_busy(1)
    try:
        time.sleep(0.2)
        assert all(p.poll() is None for p in procs)  # still spinning
    finally:
        busy.stop(procs)
    assert all(p.returncode is not None for p in procs)
