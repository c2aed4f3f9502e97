"""The channels-last depthwise kernel (``native.depthwise_nhwc``) on MobileNetV2's and
EfficientNet-B0's depthwise layers, against the NCHW kernel (``native.depthwise2d``) on the same layer
and against onnxruntime's Conv (group = C) on 1 and 2 threads.

    python -m benchmarks.nhwc [--rounds N] [--threads 1,2] [--docs]

All three take the same layer (batch 1, random weights, bias, ReLU6 fused in dcm's kernels; onnxruntime
runs the bare Conv) in one process, interleaved: each round times a block of calls of each in turn,
and the minimum per call over the rounds is reported, since the machine may be shared; only ratios of
calls made side by side mean much. onnxruntime's single-layer time includes its conversion to and
from its blocked channel layout (NCHWc), which inside a model it does once per chain of layers.
Writes benchmarks/results/nhwc.json; ``--docs`` rewrites the table in docs/nhwc-kernels.md.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from benchmarks.common import onnxruntime_session, replace_between, save
from dcm.runtime.cpu import native

# (channels, kernel, stride, input size): the depthwise layers of the two models at 224 x 224.
LAYERS = [(32, 3, 1, 112), (144, 3, 1, 56), (192, 3, 1, 28), (384, 3, 1, 14), (576, 3, 1, 14), (960, 3, 1, 7),
          (96, 3, 2, 112), (144, 3, 2, 56), (192, 3, 2, 28), (576, 3, 2, 14),
          (240, 5, 1, 28), (480, 5, 1, 14), (672, 5, 1, 14), (1152, 5, 1, 7), (144, 5, 2, 56), (672, 5, 2, 14)]
RELU6 = ("clip", 0.0, 6.0)
DOCS = Path(__file__).parent.parent / "docs" / "nhwc-kernels.md"
TABLE_START, TABLE_END = "<!-- nhwc table -->", "<!-- /table -->"


def conv_model(c: int, k: int, stride: int, size: int) -> bytes:
    """One depthwise Conv with bias, pads k // 2: onnxruntime's side of the comparison."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((c, 1, k, k)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "b")]
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=c, strides=[stride] * 2, pads=[k // 2] * 4)
    g = helper.make_graph([node], "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, size, size])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def layer_calls(c: int, k: int, stride: int, size: int, threads: int) -> dict:
    """The three calls on one layer, each writing into its own preallocated output."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, c, size, size)).astype(np.float32)
    xt = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    w = rng.standard_normal((c, k, k)).astype(np.float32)
    wt = np.ascontiguousarray(w.transpose(1, 2, 0))
    bias = rng.standard_normal(c).astype(np.float32)
    out = (size + 2 * (k // 2) - k) // stride + 1
    y, yt = np.empty((1, c, out, out), np.float32), np.empty((1, out, out, c), np.float32)
    geometry = ((k, k), (stride, stride), (1, 1), (k // 2,) * 4)
    sess = onnxruntime_session(conv_model(c, k, stride, size), threads)
    return {"nhwc": lambda: native.depthwise_nhwc(xt, yt, wt, xt.shape, *geometry, bias, RELU6, threads),
            "nchw": lambda: native.depthwise2d(x, y, w, x.shape, *geometry, 1, bias, RELU6, threads=threads),
            "onnxruntime": lambda: sess.run(None, {"x": x})}


def interleaved(calls: dict, rounds: int, block_s: float = 0.02, pause_s: float = 0.01) -> dict[str, float]:
    """Minimum seconds per call of each, over rounds in which each runs a block of ~block_s in turn,
    pause_s apart: onnxruntime's workers spin after its calls, and beside them the native pool finds
    its worker off the core and runs on the caller alone."""
    counts = {}
    for name, fn in calls.items():
        fn()
        t = time.perf_counter()
        fn()
        counts[name] = max(1, int(block_s / max(time.perf_counter() - t, 1e-7)))
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(rounds):
        for name, fn in calls.items():
            t = time.perf_counter()
            for _ in range(counts[name]):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t) / counts[name])
            time.sleep(pause_s)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--docs", action="store_true", help="rewrite the table in docs/nhwc-kernels.md")
    a = p.parse_args()
    rows = []
    lines = ["| layer | threads | NHWC us | NCHW us | onnxruntime us | NCHW / NHWC | onnxruntime / NHWC |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    print("\n".join(lines))
    with threadpool_limits(1):
        for threads in (int(t) for t in a.threads.split(",")):
            for c, k, stride, size in LAYERS:
                us = {n: t * 1e6 for n, t in interleaved(layer_calls(c, k, stride, size, threads), a.rounds).items()}
                rows.append({"channels": c, "kernel": k, "stride": stride, "size": size, "threads": threads, "us": us})
                lines.append(f"| {c}ch {k}x{k}/{stride} @{size} | {threads} | {us['nhwc']:.1f} | {us['nchw']:.1f} | "
                             f"{us['onnxruntime']:.1f} | {us['nchw'] / us['nhwc']:.2f} | "
                             f"{us['onnxruntime'] / us['nhwc']:.2f} |")
                print(lines[-1], flush=True)
    load = os.getloadavg()[0]
    print(f"load average (1 min) at the end: {load:.2f}")
    save("nhwc", {"rounds": a.rounds, "load_average": load, "rows": rows})
    if a.docs:
        lines.append(f"\nCommand: `python -m benchmarks.nhwc --rounds {a.rounds} --threads {a.threads} --docs`; "
                     f"{os.cpu_count()} cores, load average {load:.2f} when it finished.")
        replace_between(DOCS, TABLE_START, TABLE_END, "\n".join(lines))


if __name__ == "__main__":
    main()
