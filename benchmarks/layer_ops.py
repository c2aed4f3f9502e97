"""Recurrent and upsampling layers, dcm against onnxruntime at batch 1 on one thread: LSTM and GRU
(2 x 256 over 100 steps, dense and 10% kept), U-Net's ConvTranspose up-convolutions and Resize x2.

    python -m benchmarks.layer_ops [--clock cpu|wall] [--only TEXT]

Each case runs interleaved in one process: onnxruntime, dcm, and dcm with its compiled kernel set to
None (the numpy path a build without a C compiler runs). A round times each one 5 times (3 for the
numpy path) and keeps the minimum; the table shows the median over 7 rounds of each time and of the
per-round ratio to onnxruntime. ``--clock cpu`` (default) measures the calling thread's CPU time:
on a machine shared with other work the wall-clock time of one call varies several-fold with the
time it waits for a core, which CPU time leaves out (onnxruntime with one intra-op thread runs on
the calling thread, so it is measured the same way). Writes benchmarks/results/layer_ops.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from benchmarks.common import compiled_off, onnxruntime_session
from benchmarks.zoo import MODELS, export, prune_all
from dcm.converters import ConvertOptions, from_onnx
from dcm.runtime import InferenceSession
from tests.runtime.opcheck import one_node

COMPILED = ("recurrent_scan", "resize2d", "col2im2d")


class GRUStack(torch.nn.Module):
    """The zoo LSTM's shape with GRU cells: 2 x 256 over 128 features."""

    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.GRU(128, 256, num_layers=2, batch_first=True)

    def forward(self, x):
        return self.rnn(x)[0][:, -1]


def recurrent_cases():
    for pruned in (False, True):
        torch.manual_seed(0)
        model, inputs, names, axes = MODELS["lstm_2x256"][0](1)
        model.eval()
        if pruned:
            prune_all(model, 0.1)
        yield f"LSTM 2x256, 100 steps, {'10% kept' if pruned else 'dense'}", export(model, inputs, names, axes), \
            {n: t.numpy() for n, t in zip(names, inputs)}
    for pruned in (False, True):
        torch.manual_seed(0)
        model, x = GRUStack().eval(), torch.randn(1, 100, 128)
        if pruned:
            prune_all(model, 0.1)
        yield f"GRU 2x256, 100 steps, {'10% kept' if pruned else 'dense'}", export(model, (x,), ["x"], {}), \
            {"x": x.numpy()}


def upsample_cases():
    rng = np.random.default_rng(0)

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    def typed(model) -> bytes:  # onnxruntime wants the outputs' element type declared
        for out in model.graph.output:
            out.type.tensor_type.elem_type = 1
        return model.SerializeToString()

    for cin, cout, hw in ((256, 128, 16), (128, 64, 32), (64, 32, 64)):
        model = one_node("ConvTranspose", {"x": r(1, cin, hw, hw)}, {"strides": [2, 2]}, opset=17,
                         consts={"w": r(cin, cout, 2, 2), "b": r(cout)})
        yield f"ConvTranspose 2x2/2 {cin}->{cout} at {hw}x{hw}", typed(model), {"x": r(1, cin, hw, hw)}
    model = one_node("ConvTranspose", {"x": r(1, 32, 30, 30)},
                     {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}, opset=17,
                     consts={"w": r(32, 16, 3, 3)})
    yield "ConvTranspose 3x3/2 32->16 at 30x30, pads 1", typed(model), {"x": r(1, 32, 30, 30)}
    for mode, transform in (("linear", "half_pixel"), ("linear", "align_corners"), ("nearest", "asymmetric"),
                            ("cubic", "half_pixel")):
        attrs = {"mode": mode, "coordinate_transformation_mode": transform}
        consts = {"roi": np.zeros(0, np.float32), "scales": np.array([1, 1, 2, 2], np.float32)}
        model = one_node("Resize", {"x": r(1, 64, 64, 64)}, attrs, opset=19, consts=consts, order=["x", "roi", "scales"])
        yield f"Resize x2 {mode} {transform} 1x64x64x64", typed(model), {"x": r(1, 64, 64, 64)}


def measure(label: str, onnx_bytes: bytes, feeds: dict, clock, rounds: int = 7) -> dict:
    model = from_onnx(onnx_bytes, ConvertOptions(exact=True))
    compiled = InferenceSession(model, threads=1)
    with compiled_off(COMPILED):
        numpy_path = InferenceSession(model, threads=1)
    reference = onnxruntime_session(onnx_bytes)
    want = reference.run(None, feeds)[0]
    error = float(np.abs(compiled.run(None, feeds)[0] - want).max() / (np.abs(want).max() or 1.0))

    def best(fn, n):
        times = []
        for _ in range(n):
            start = clock()
            fn()
            times.append(clock() - start)
        return min(times)

    ort_t, dcm_t, numpy_t = [], [], []
    for _ in range(rounds):
        ort_t.append(best(lambda: reference.run(None, feeds), 5))
        dcm_t.append(best(lambda: compiled.run(None, feeds), 5))
        with compiled_off(COMPILED):
            numpy_t.append(best(lambda: numpy_path.run(None, feeds), 3))
    ort_t, dcm_t, numpy_t = (np.array(v) for v in (ort_t, dcm_t, numpy_t))
    return {"case": label, "onnxruntime_ms": float(np.median(ort_t) * 1e3), "dcm_ms": float(np.median(dcm_t) * 1e3),
            "numpy_path_ms": float(np.median(numpy_t) * 1e3), "dcm_ratio": float(np.median(dcm_t / ort_t)),
            "numpy_path_ratio": float(np.median(numpy_t / ort_t)), "max_relative_error": error,
            "kernels": [{k: v for k, v in d.items() if k in ("op", "kernel", "recurrent_kernel", "step_loop")}
                        for d in compiled.describe() if d["op"] in ("LSTM", "GRU", "ConvTranspose", "Resize")]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--only", default="", help="run the cases whose name holds this text")
    args = parser.parse_args(argv)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    rows = []
    with threadpool_limits(1):
        for label, onnx_bytes, feeds in (*recurrent_cases(), *upsample_cases()):
            if args.only in label:
                rows.append(measure(label, onnx_bytes, feeds, clock))
                r = rows[-1]
                print(f"{label:48s} onnxruntime {r['onnxruntime_ms']:7.3f} ms  dcm {r['dcm_ms']:7.3f} ms "
                      f"({r['dcm_ratio']:.2f}x)  numpy path {r['numpy_path_ms']:7.3f} ms ({r['numpy_path_ratio']:.2f}x)"
                      f"  max rel. error {r['max_relative_error']:.1e}", flush=True)
    result = {"clock": args.clock, "threads": 1, "load_average": [load_before, os.getloadavg()[0]], "cases": rows}
    out = Path(__file__).parent / "results" / "layer_ops.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}; wrote {out}")


if __name__ == "__main__":
    main()
