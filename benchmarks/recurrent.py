"""LSTM, GRU and RNN stacks (2 layers, hidden 256, 128 features, 100 steps), dense and 10% kept, at
batch 1 and 8 on 1 and 2 threads: dcm against onnxruntime on the same ONNX file and thread budget.

    python -m benchmarks.recurrent [--only TEXT] [--rounds N] [--docs]

Each configuration runs dcm and onnxruntime interleaved in one process: a round takes the best call
of a block of at least BLOCK_SECONDS of each (so that a block's later calls do not run beside the
other runtime's threads, which spin for a while after its calls; dcm's step loop probes its thread
split again every 1024 steps), and the table shows the median over the rounds of each time and of
the per-round ratio. Wall-clock time (a second thread's work does not show in the calling thread's CPU time), so
the load average is printed and saved with the figures: on a machine shared with other work the
ratios at 2 threads move most. Writes benchmarks/results/recurrent.json; ``--docs`` also rewrites
the table of docs/recurrent.md.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import onnxruntime_session, replace_between, save
from benchmarks.zoo import export, prune_all
from dcm.converters import ConvertOptions, from_onnx
from dcm.runtime import InferenceSession

DOC = Path(__file__).parent.parent / "docs" / "recurrent.md"
CELLS = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU, "RNN": torch.nn.RNN}
BLOCK_SECONDS = 0.25  # per runtime and round


class Stack(torch.nn.Module):
    """Two recurrent layers of 256 units over 128 features (the zoo's lstm_2x256 without its head);
    the output is the last step's hidden state."""

    def __init__(self, cell: str):
        super().__init__()
        self.rnn = CELLS[cell](128, 256, num_layers=2, batch_first=True)

    def forward(self, x):
        return self.rnn(x)[0][:, -1]


def exported(cell: str, pruned: bool) -> bytes:
    """The stack with seed-0 weights (10% kept when pruned), exported with a symbolic batch."""
    torch.manual_seed(0)
    model = Stack(cell).eval()
    if pruned:
        prune_all(model, 0.1)
    return export(model, (torch.randn(1, 100, 128),), ["x"], {"x": {0: "batch"}, "output": {0: "batch"}})


def measure(onnx_bytes: bytes, batch: int, threads: int, rounds: int) -> dict:
    feeds = {"x": np.random.default_rng(1).standard_normal((batch, 100, 128)).astype(np.float32)}
    sess = InferenceSession(from_onnx(onnx_bytes, ConvertOptions(exact=True)), threads=threads, batch_hint=batch)
    reference = onnxruntime_session(onnx_bytes, threads)
    want = reference.run(None, feeds)[0]
    error = float(np.abs(sess.run(None, feeds)[0] - want).max() / (np.abs(want).max() or 1.0))

    def best(fn) -> float:
        times, start = [], time.perf_counter()
        while len(times) < 3 or time.perf_counter() - start < BLOCK_SECONDS:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    dcm_t, ort_t = [], []
    for _ in range(rounds):
        dcm_t.append(best(lambda: sess.run(None, feeds)))
        ort_t.append(best(lambda: reference.run(None, feeds)))
    dcm_t, ort_t = np.array(dcm_t), np.array(ort_t)
    node = sess.describe()[0]
    return {"dcm_ms": float(np.median(dcm_t) * 1e3), "onnxruntime_ms": float(np.median(ort_t) * 1e3),
            "dcm_vs_onnxruntime": float(np.median(dcm_t / ort_t)), "max_relative_error": error,
            "step_loop": node.get("step_loop"), "recurrent_kernel": node.get("recurrent_kernel")}


def table(rows: list[dict]) -> str:
    lines = ["| layers | weights | batch | threads | dcm ms | onnxruntime ms | dcm / onnxruntime | load |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['cell']} 2x256 | {r['weights']} | {r['batch']} | {r['threads']} | {r['dcm_ms']:.2f} | "
                     f"{r['onnxruntime_ms']:.2f} | {r['dcm_vs_onnxruntime']:.2f} | {r['load']:.1f} |")
    loads = [r["load"] for r in rows]
    lines.append(f"\nLoad average {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores during this run: a load "
                 "above the core count\nslows both runtimes by whatever the scheduler gives the other processes, "
                 "and moves the ratios\nmost at 2 threads.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="run the configurations whose label holds this text")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--docs", action="store_true", help="also rewrite the table of docs/recurrent.md")
    args = parser.parse_args(argv)
    rows = []
    for cell in CELLS:
        for pruned in (False, True):
            weights = "10% kept" if pruned else "dense"
            onnx_bytes = None
            for batch in (1, 8):
                for threads in (1, 2):
                    label = f"{cell} {weights} batch {batch} threads {threads}"
                    if args.only not in label:
                        continue
                    onnx_bytes = onnx_bytes or exported(cell, pruned)
                    row = {"cell": cell, "weights": weights, "batch": batch, "threads": threads,
                           **measure(onnx_bytes, batch, threads, args.rounds), "load": os.getloadavg()[0]}
                    rows.append(row)
                    print(f"{label:36s} dcm {row['dcm_ms']:7.2f} ms  onnxruntime {row['onnxruntime_ms']:7.2f} ms  "
                          f"{row['dcm_vs_onnxruntime']:.2f}x  (load {row['load']:.1f}, error "
                          f"{row['max_relative_error']:.1e})", flush=True)
    path = save("recurrent", {"rounds": args.rounds, "rows": rows})
    print(f"wrote {path}")
    if args.docs:
        replace_between(DOC, "<!-- recurrent table -->", "<!-- end recurrent table -->", table(rows))


if __name__ == "__main__":
    main()
