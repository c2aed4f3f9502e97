"""Reproduce the paper's Table 1 rows on MNIST (standard split) with `dcm demo`'s pipeline.

    python benchmarks/compression.py [--models lenet300 lenet5] [--out benchmarks/results]

Prints Table 1 and the per-layer tables for each model and writes benchmarks/results/compression.json.
The bar (issue 7): error <= dense baseline + 0.1 pp; ratio >= 40x (LeNet-300-100), >= 39x (LeNet-5).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from dcm import demo

PAPER = {"lenet300": 40.0, "lenet5": 39.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["lenet300", "lenet5"], choices=sorted(demo.RECIPES))
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    out = Path(args.out)
    rows = []
    for name in args.models:
        r = demo.run(demo.RECIPES[name], out, quiet=True)
        print(demo.format_tables(r))
        r["meets_bar"] = r["error_file"] <= r["error_dense"] + 0.001 and r["ratio"] >= PAPER[name]
        rows.append(r)
    print(f"\n{'model':<10}{'dense err':>10}{'file err':>10}{'ratio':>8}{'paper':>8}{'bar met':>9}{'seconds':>9}")
    for r in rows:
        print(f"{r['model']:<10}{r['error_dense']:>10.2%}{r['error_file']:>10.2%}{r['ratio']:>7.1f}x"
              f"{PAPER[r['model']]:>7.0f}x{str(r['meets_bar']):>9}{r['seconds']:>9.0f}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "compression.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
