"""The channels-last kernels on the layers they were made for, against the NCHW kernels and
onnxruntime, on 1 and 2 threads: ``native.depthwise_nhwc`` on MobileNetV2's and EfficientNet-B0's
depthwise layers (batch 1) against ``native.depthwise2d`` and onnxruntime's Conv (group = C); and
``native.conv_nhwc_out`` on the stems (3 input channels, 224 x 224, batch 1 and 8) against
``native.conv_lanes2d`` (the NCHW stem), that plus the ``transpose2d`` into NHWC it would need, and
onnxruntime's Conv with its activation.

    python -m benchmarks.nhwc [--rounds N] [--threads 1,2] [--only depthwise|stems] [--docs]

Each table's kernels take the same layer (random weights, bias, the activation fused in dcm's kernels;
onnxruntime runs the bare depthwise Conv, and the stem's Conv with its activation node, which it
fuses) in one process, interleaved: each round times a block of calls of each in turn, and the
minimum per call over the rounds is reported, since the machine may be shared; only ratios of calls
made side by side mean much. onnxruntime's single-layer time includes its conversion to and from its
blocked channel layout (NCHWc), which inside a model it does once per chain of layers. Writes
benchmarks/results/nhwc.json; ``--docs`` rewrites the tables in docs/nhwc-kernels.md.
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
# (output channels, kernel, stride, activation) of the stems at 224 x 224, 3 input channels: MobileNetV2's,
# EfficientNet-B0's, ResNet's, and a 24-channel one (a part vector).
STEMS = [(32, 3, 2, "clip"), (32, 3, 2, "silu"), (64, 7, 2, "relu"), (24, 3, 2, "clip")]
STEM_SIZE, STEM_BATCHES = 224, (1, 8)
RELU6 = ("clip", 0.0, 6.0)
ACTS = {"clip": RELU6, "relu": ("relu", 0.0, 0.0), "silu": ("silu", 1.0, 0.0)}
DOCS = Path(__file__).parent.parent / "docs" / "nhwc-kernels.md"
TABLE_START, TABLE_END = "<!-- nhwc table -->", "<!-- /table -->"
STEM_TABLE_START, STEM_TABLE_END = "<!-- nhwc stem table -->", "<!-- /stem table -->"


def conv_model(c_in: int, c_out: int, k: int, stride: int, size: int, group: int = 1, batch: int = 1,
               act: str | None = None) -> bytes:
    """One Conv with bias, pads k // 2, then the activation's nodes (ReLU6 as Clip, SiLU as Sigmoid and
    Mul): onnxruntime's side of the comparison."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((c_out, c_in // group, k, k)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(c_out).astype(np.float32), "b")]
    if act == "clip":
        inits += [numpy_helper.from_array(np.array(0, np.float32), "lo"),
                  numpy_helper.from_array(np.array(6, np.float32), "hi")]
    out = "y" if act is None else "c"
    nodes = [helper.make_node("Conv", ["x", "w", "b"], [out], group=group, strides=[stride] * 2, pads=[k // 2] * 4)]
    nodes += {None: [], "relu": [helper.make_node("Relu", ["c"], ["y"])],
              "clip": [helper.make_node("Clip", ["c", "lo", "hi"], ["y"])],
              "silu": [helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", ["c", "s"], ["y"])]}[act]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, c_in, size, size])
    g = helper.make_graph(nodes, "conv", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
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
    sess = onnxruntime_session(conv_model(c, c, k, stride, size, group=c), threads)
    return {"nhwc": lambda: native.depthwise_nhwc(xt, yt, wt, xt.shape, *geometry, bias, RELU6, threads),
            "nchw": lambda: native.depthwise2d(x, y, w, x.shape, *geometry, 1, bias, RELU6, threads=threads),
            "onnxruntime": lambda: sess.run(None, {"x": x})}


def stem_calls(c_out: int, k: int, stride: int, act: str, batch: int, threads: int) -> dict:
    """conv_nhwc_out, conv_lanes2d alone and with the transpose into NHWC, and onnxruntime on one stem
    (3 input channels), each writing into its own preallocated output. conv_lanes2d fuses a clamp only,
    so on a SiLU stem it runs the bare convolution."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, 3, STEM_SIZE, STEM_SIZE)).astype(np.float32)
    w = rng.standard_normal((c_out, 3, k, k)).astype(np.float32)
    padded = np.zeros((k, k, 3, -(-c_out // 16) * 16), np.float32)
    padded[..., :c_out] = w.transpose(2, 3, 1, 0)
    bias = rng.standard_normal(c_out).astype(np.float32)
    out = (STEM_SIZE + 2 * (k // 2) - k) // stride + 1
    y, nchw = np.empty((batch, out, out, c_out), np.float32), np.empty((batch, c_out, out, out), np.float32)
    nhwc = np.empty_like(y)
    geometry = ((k, k), (stride, stride), (1, 1), (k // 2,) * 4)
    clip = {"clip": (0.0, 6.0), "relu": (0.0, float("inf"))}.get(act)
    sess = onnxruntime_session(conv_model(3, c_out, k, stride, STEM_SIZE, batch=batch, act=act), threads)

    def lanes():
        native.conv_lanes2d(x, nchw, w, x.shape, *geometry, c_out, bias, clip, threads=threads)

    def lanes_transposed():
        lanes()
        native.transpose2d(nchw, nhwc, (batch, c_out, out * out), threads)

    return {"nhwc_out": lambda: native.conv_nhwc_out(x, y, padded, (*x.shape, c_out), *geometry, bias, ACTS[act],
                                                     threads),
            "lanes": lanes, "lanes_transposed": lanes_transposed, "onnxruntime": lambda: sess.run(None, {"x": x})}


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


def depthwise_table(rounds: int, threads_list: list[int]) -> tuple[list[str], list[dict]]:
    """The depthwise layers' table (markdown lines) and its rows for the JSON."""
    rows = []
    lines = ["| layer | threads | NHWC us | NCHW us | onnxruntime us | NCHW / NHWC | onnxruntime / NHWC |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    print("\n".join(lines))
    for threads in threads_list:
        for c, k, stride, size in LAYERS:
            us = {n: t * 1e6 for n, t in interleaved(layer_calls(c, k, stride, size, threads), rounds).items()}
            rows.append({"channels": c, "kernel": k, "stride": stride, "size": size, "threads": threads, "us": us})
            lines.append(f"| {c}ch {k}x{k}/{stride} @{size} | {threads} | {us['nhwc']:.1f} | {us['nchw']:.1f} | "
                         f"{us['onnxruntime']:.1f} | {us['nchw'] / us['nhwc']:.2f} | "
                         f"{us['onnxruntime'] / us['nhwc']:.2f} |")
            print(lines[-1], flush=True)
    return lines, rows


def stem_table(rounds: int, threads_list: list[int]) -> tuple[list[str], list[dict]]:
    """The stems' table (markdown lines) and its rows for the JSON."""
    rows = []
    lines = ["| stem (3 channels in, 224x224) | batch | threads | conv_nhwc_out us | conv_lanes2d us | "
             "+ transpose us | onnxruntime us | (lanes + transpose) / nhwc_out | onnxruntime / nhwc_out |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    print("\n".join(lines))
    for threads in threads_list:
        for batch in STEM_BATCHES:
            for c_out, k, stride, act in STEMS:
                calls = stem_calls(c_out, k, stride, act, batch, threads)
                us = {n: t * 1e6 for n, t in interleaved(calls, rounds).items()}
                rows.append({"stem": [3, c_out, k, stride, act], "batch": batch, "threads": threads, "us": us})
                lines.append(f"| 3->{c_out} {k}x{k}/{stride} {act} | {batch} | {threads} | {us['nhwc_out']:.1f} | "
                             f"{us['lanes']:.1f} | {us['lanes_transposed']:.1f} | {us['onnxruntime']:.1f} | "
                             f"{us['lanes_transposed'] / us['nhwc_out']:.2f} | "
                             f"{us['onnxruntime'] / us['nhwc_out']:.2f} |")
                print(lines[-1], flush=True)
    return lines, rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--only", choices=["depthwise", "stems"], help="one table (default: both)")
    p.add_argument("--docs", action="store_true", help="rewrite the tables in docs/nhwc-kernels.md")
    a = p.parse_args()
    threads_list = [int(t) for t in a.threads.split(",")]
    tables = {"depthwise": (depthwise_table, TABLE_START, TABLE_END),
              "stems": (stem_table, STEM_TABLE_START, STEM_TABLE_END)}
    results = {}
    with threadpool_limits(1):
        for name, (table, _, _) in tables.items():
            if a.only in (None, name):
                results[name] = table(a.rounds, threads_list)
    load = os.getloadavg()[0]
    print(f"load average (1 min) at the end: {load:.2f}")
    save("nhwc" if a.only is None else f"nhwc_{a.only}", {"rounds": a.rounds, "load_average": load,
                                                          **{name: rows for name, (_, rows) in results.items()}})
    if a.docs:
        for name, (lines, _) in results.items():
            _, start, end = tables[name]
            lines.append(f"\nCommand: `python -m benchmarks.nhwc --rounds {a.rounds} --threads {a.threads} "
                         f"--only {name} --docs`; {os.cpu_count()} cores, load average {load:.2f} when it finished.")
            replace_between(DOCS, start, end, "\n".join(lines))


if __name__ == "__main__":
    main()
