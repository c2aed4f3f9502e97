"""Whole runs of zoo models, this checkout against a copy of dcm from another commit, in one process.

    python -m benchmarks.ab --baseline DIR [--models resnet18,regnetx_400mf] [--cells 1x1,8x1,1x2] [--pruned]

DIR holds a dcm package with its compiled extensions (``git worktree add DIR REV`` and ``python setup.py
build_ext --inplace`` there; or a copy of this checkout's ``dcm/`` with one extension swapped for an
older build, to time one kernel's change alone). Both sessions load the same converted model (dense,
``--exact``; ``--pruned``: the zoo's pruned weights too) and take turns run by run for about three
seconds a cell (batch x threads), so that a busy machine slows both alike: a change is read from the
ratio of the two, not from two pages of the zoo made minutes apart. Prints per cell both best times,
the ratio of the best and of the medians, and the largest difference of the first output relative to
its largest value (0 where the change keeps the bits). Writes benchmarks/results/ab.json.
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from benchmarks.common import save
from benchmarks.node_overhead import session_class
from benchmarks.zoo import example, exported
from dcm.converters import ConvertOptions
from dcm.converters.onnx_in import from_onnx
from dcm.format.writer import to_bytes

SECONDS = 3.0  # per cell, both sessions together


def cells(text: str) -> list[tuple[int, int]]:
    """"1x1,8x2" -> [(batch 1, threads 1), (batch 8, threads 2)]."""
    out = []
    for cell in text.split(","):
        batch, _, threads = cell.partition("x")
        if not (batch.isdigit() and threads.isdigit()) or int(batch) < 1 or int(threads) < 1:
            raise argparse.ArgumentTypeError(f"a cell is BATCHxTHREADS, e.g. 8x2; got {cell!r}")
        out.append((int(batch), int(threads)))
    return out


def compare(new, old, feeds: dict) -> dict:
    """Both sessions' runs in turns: best and median seconds each, and how far the outputs differ."""
    a, b = new.run(None, feeds)[0], old.run(None, feeds)[0]
    diff = float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))
    start = time.perf_counter()
    new.run(None, feeds)
    reps = int(min(60, max(5, SECONDS / 2 / max(time.perf_counter() - start, 1e-4))))
    times: dict[str, list[float]] = {"new": [], "baseline": []}
    for _ in range(reps):
        for key, sess in (("new", new), ("baseline", old)):
            start = time.perf_counter()
            sess.run(None, feeds)
            times[key].append(time.perf_counter() - start)
    return {"new_ms": min(times["new"]) * 1e3, "baseline_ms": min(times["baseline"]) * 1e3,
            "best_ratio": min(times["new"]) / min(times["baseline"]),
            "median_ratio": float(np.median(times["new"]) / np.median(times["baseline"])),
            "output_difference": diff, "runs": reps}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", required=True, help="a directory holding the other commit's dcm package, built")
    ap.add_argument("--models", default="resnet18,regnetx_400mf,mobilenet_v2,efficientnet_b0,convnext_atto")
    ap.add_argument("--cells", type=cells, default=cells("1x1,8x1,1x2"), help="BATCHxTHREADS,... (default 1x1,8x1,1x2)")
    ap.add_argument("--pruned", action="store_true", help="the pruned weights too")
    args = ap.parse_args(argv)
    from dcm.runtime import InferenceSession

    Baseline = session_class(args.baseline)
    rows = []
    for name in args.models.split(","):
        for pruned in (False, True) if args.pruned else (False,):
            _, names, onnx_bytes = exported(name, pruned)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                data = to_bytes(from_onnx(onnx_bytes, ConvertOptions(exact=True)))
            for batch, threads in args.cells:
                _, feeds = example(name, batch, names)
                new = InferenceSession(data, threads=threads, batch_hint=batch)
                old = Baseline(data, threads=threads, batch_hint=batch)
                row = {"model": name, "weights": "pruned" if pruned else "dense", "batch": batch, "threads": threads,
                       **compare(new, old, feeds)}
                rows.append(row)
                print(f"{name:22s} {row['weights']:6s} b{batch} t{threads}: new {row['new_ms']:8.3f} ms, baseline "
                      f"{row['baseline_ms']:8.3f} ms, best {row['best_ratio']:.2f}, median {row['median_ratio']:.2f}, "
                      f"output difference {row['output_difference']:.1e}", flush=True)
    save("ab", {"baseline": args.baseline, "rows": rows})


if __name__ == "__main__":
    main()
