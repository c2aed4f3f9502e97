"""benchmarks/ab.py: the cells it reads and one side-by-side comparison of two sessions."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import ab  # noqa: E402
from tests.test_bench_zoo import tiny  # noqa: E402,F401  (the fixture)


def test_cells_read_batch_by_threads_and_refuse_anything_else():
    assert ab.cells("1x1,8x2") == [(1, 1), (8, 2)]
    for bad in ("8", "0x1", "1x", "ax2", "1x1,"):
        with pytest.raises(argparse.ArgumentTypeError, match="BATCHxTHREADS"):
            ab.cells(bad)


def test_this_checkout_against_itself_keeps_the_bits(tiny, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setattr(ab, "SECONDS", 0.05)
    monkeypatch.setattr("benchmarks.common.RESULTS", tmp_path)
    root = str(Path(__file__).resolve().parents[1])  # the checkout as its own baseline
    ab.main(["--baseline", root, "--models", tiny, "--cells", "2x1"])
    import json

    rows = json.loads((tmp_path / "ab.json").read_text())["rows"]
    assert [(r["model"], r["batch"], r["threads"]) for r in rows] == [(tiny, 2, 1)]
    assert rows[0]["output_difference"] == 0 and rows[0]["runs"] >= 5
    assert np.isfinite(rows[0]["best_ratio"]) and rows[0]["best_ratio"] > 0
