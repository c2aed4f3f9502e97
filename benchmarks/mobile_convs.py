"""MobileNetV2's and EfficientNet-B0's convolution layers one by one: the 1x1 layers (compiled
``pointwise_conv`` against BLAS) and the depthwise layers (``depthwise2d``: AVX-512 paths against the
AVX2 ones), each with the activation the model fuses into it, against onnxruntime on the same layer.

    python -m benchmarks.mobile_convs [--reps N] [--threads 1,2] [--batch 1] [--docs]

Each layer is a small ONNX graph (Conv, then Clip for MobileNetV2, Sigmoid and Mul for EfficientNet)
run three ways in one process, interleaved call by call: dcm as built, dcm's previous path (1x1:
``native.pointwise_conv`` off, so ``np.matmul`` and the compiled activation; depthwise:
``set_avx512(False)``, the AVX2 kernels), and onnxruntime on the same thread count. The machine may
be shared: the minimum over the rounds is reported (the median too, in the JSON), and only ratios of
calls made side by side mean much. onnxruntime's own time here includes converting each layer to and
from its blocked layout, which inside a model it does once. Writes
benchmarks/results/mobile_convs.json; ``--docs`` rewrites the table in docs/kernel-choice.md.
"""
from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from benchmarks.common import compiled_off, onnxruntime_session, replace_between, save
from dcm.converters import ConvertOptions
from dcm.converters.onnx_in import from_onnx
from dcm.runtime import InferenceSession
from dcm.runtime.cpu import native

DOCS = Path(__file__).parent.parent / "docs" / "kernel-choice.md"
TABLE_START, TABLE_END = "<!-- mobile_convs table -->", "<!-- end mobile_convs table -->"

# (model, C_in, C_out, kernel, stride, input size): each distinct 1x1 (kernel 1) and depthwise
# (C_in == C_out, kernel 3 or 5) layer of the two models at 224x224.
LAYERS = [("mobilenet_v2", *s) for s in [
    (16, 96, 1, 1, 112), (32, 16, 1, 1, 112), (96, 24, 1, 1, 56), (24, 144, 1, 1, 56), (144, 24, 1, 1, 56),
    (144, 32, 1, 1, 28), (32, 192, 1, 1, 28), (192, 32, 1, 1, 28), (192, 64, 1, 1, 14), (64, 384, 1, 1, 14),
    (384, 64, 1, 1, 14), (384, 96, 1, 1, 14), (96, 576, 1, 1, 14), (576, 96, 1, 1, 14), (576, 160, 1, 1, 7),
    (160, 960, 1, 1, 7), (960, 160, 1, 1, 7), (960, 320, 1, 1, 7), (320, 1280, 1, 1, 7),
    (32, 32, 3, 1, 112), (96, 96, 3, 2, 112), (144, 144, 3, 1, 56), (144, 144, 3, 2, 56), (192, 192, 3, 1, 28),
    (192, 192, 3, 2, 28), (384, 384, 3, 1, 14), (576, 576, 3, 1, 14), (576, 576, 3, 2, 14), (960, 960, 3, 1, 7)]
] + [("efficientnet_b0", *s) for s in [
    (16, 96, 1, 1, 112), (24, 144, 1, 1, 56), (40, 240, 1, 1, 28), (80, 480, 1, 1, 14), (112, 672, 1, 1, 14),
    (192, 1152, 1, 1, 7), (320, 1280, 1, 1, 7),
    (144, 144, 5, 2, 56), (240, 240, 5, 1, 28), (480, 480, 5, 1, 14), (672, 672, 5, 1, 14), (672, 672, 5, 2, 14),
    (1152, 1152, 5, 1, 7)]
]


def layer_model(model: str, c_in: int, c_out: int, k: int, stride: int, size: int, batch: int) -> bytes:
    """Conv (+ bias) and the model's activation: ReLU6 (MobileNetV2) or SiLU (EfficientNet-B0)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    group = c_in if k > 1 else 1
    w = (rng.standard_normal((c_out, c_in // group, k, k)) / np.sqrt(c_in // group * k * k)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(rng.standard_normal(c_out).astype(np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], group=group, strides=[stride] * 2, pads=[k // 2] * 4)]
    if model == "mobilenet_v2":
        inits += [numpy_helper.from_array(np.float32(0), "lo"), numpy_helper.from_array(np.float32(6), "hi")]
        nodes.append(helper.make_node("Clip", ["c", "lo", "hi"], ["y"]))
    else:
        nodes += [helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", ["c", "s"], ["y"])]
    g = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, c_in, size, size])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def previous_path(pointwise: bool):
    """The path the layer took before its AVX-512 kernel: BLAS for 1x1 layers, AVX2 for depthwise."""
    if pointwise:
        return compiled_off(["pointwise_conv"])
    return _avx2_only()


@contextlib.contextmanager
def _avx2_only():
    previous = native.set_avx512(False)
    try:
        yield
    finally:
        native.set_avx512(previous)


def measure(layer: tuple, batch: int, threads: int, reps: int) -> dict:
    model, c_in, c_out, k, stride, size = layer
    data = layer_model(model, c_in, c_out, k, stride, size, batch)
    x = np.random.default_rng(1).standard_normal((batch, c_in, size, size)).astype(np.float32)
    dcm_model = from_onnx(data, ConvertOptions(exact=True))
    now = InferenceSession(dcm_model, threads=threads)
    with previous_path(k == 1):
        before = InferenceSession(dcm_model, threads=threads)
    ort = onnxruntime_session(data, threads)
    want = ort.run(None, {"x": x})[0]
    error = float(np.abs(now.run(None, {"x": x})[0] - want).max() / max(np.abs(want).max(), 1.0))

    def run_before():  # the 1x1 switch is read at load, the depthwise one at each call
        with contextlib.nullcontext() if k == 1 else _avx2_only():
            before.run(None, {"x": x})

    runners = {"dcm": lambda: now.run(None, {"x": x}), "before": run_before, "onnxruntime": lambda: ort.run(None, {"x": x})}
    times: dict[str, list[float]] = {name: [] for name in runners}
    with threadpool_limits(threads):
        for fn in runners.values():
            fn()
        for _ in range(reps):
            for name, fn in runners.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    kind = "1x1" if k == 1 else f"dw {k}x{k}/{stride}"
    row = {"model": model, "layer": f"{kind} {c_in}->{c_out} at {size}x{size}", "batch": batch, "threads": threads,
           "max_rel_error": error}
    for name, ts in times.items():
        row[f"{name}_ms"] = 1e3 * min(ts)
        row[f"{name}_median_ms"] = 1e3 * float(np.median(ts))
    row["dcm_vs_onnxruntime"] = row["dcm_ms"] / row["onnxruntime_ms"]
    return row


def table(rows: list[dict]) -> str:
    lines = ["| model | layer | batch | threads | dcm ms | previous path ms | onnxruntime ms | dcm/ort |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['layer']} | {r['batch']} | {r['threads']} | {r['dcm_ms']:.3f} | "
                     f"{r['before_ms']:.3f} | {r['onnxruntime_ms']:.3f} | {r['dcm_vs_onnxruntime']:.2f} |")
    for model in dict.fromkeys(r["model"] for r in rows):
        for threads in dict.fromkeys(r["threads"] for r in rows):
            mine = [r for r in rows if r["model"] == model and r["threads"] == threads]
            total = {k: sum(r[f"{k}_ms"] for r in mine) for k in ("dcm", "before", "onnxruntime")}
            lines.append(f"| {model} | all {len(mine)} layers | | {threads} | {total['dcm']:.2f} | {total['before']:.2f} | "
                         f"{total['onnxruntime']:.2f} | {total['dcm'] / total['onnxruntime']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--threads", default="1")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--docs", action="store_true", help="rewrite the table in docs/kernel-choice.md")
    args = ap.parse_args()
    rows = [measure(layer, args.batch, int(t), args.reps) for t in args.threads.split(",") for layer in LAYERS]
    text = table(rows)
    print(text)
    path = save("mobile_convs", {"batch": args.batch, "reps": args.reps, "rows": rows})
    print(f"wrote {path}")
    if args.docs:
        replace_between(DOCS, TABLE_START, TABLE_END, text)


if __name__ == "__main__":
    main()
