"""EfficientNet-B0's squeeze-and-excitation scale and 1x1 projection shapes: dcm with the
``fuse_channel_scale`` pass, dcm without graph passes, and onnxruntime, at batch 1 on one thread.

    python -m benchmarks.se_block [--reps N]

Each layer is two small ONNX graphs: the SE tail (GlobalAveragePool, Sigmoid, Mul, then the 1x1
Conv with bias) and the projection Conv alone. Each is run by the three sessions in the same
process, interleaved call by call (on a shared machine only calls made side by side compare), and
the minimum of ``--reps`` calls is kept. Prints a table and writes benchmarks/results/se_block.json.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from threadpoolctl import threadpool_limits

from benchmarks.common import onnxruntime_session, save
from dcm.converters import ConvertOptions
from dcm.converters.onnx_in import from_onnx
from dcm.runtime import InferenceSession

# (input channels, output channels, height = width): EfficientNet-B0's SE blocks, by stage.
LAYERS = [(32, 16, 112), (96, 24, 56), (144, 24, 56), (240, 40, 28), (480, 80, 14), (672, 112, 14), (1152, 192, 7)]


def _graph(c: int, c_out: int, size: int, se: bool) -> bytes:
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["m" if se else "x", "w", "b"], ["y"])]
    if se:
        nodes[:0] = [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Sigmoid", ["p"], ["s"]),
                     helper.make_node("Mul", ["x", "s"], ["m"])]
    inits = [numpy_helper.from_array((rng.standard_normal((c_out, c, 1, 1)) * 0.1).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(c_out).astype(np.float32), "b")]
    g = helper.make_graph(nodes, "se", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, size, size])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m.SerializeToString()


def _time(model: bytes, x: np.ndarray, reps: int) -> dict[str, float]:
    dcm_model = from_onnx(model, ConvertOptions(exact=True))
    fused, plain = InferenceSession(dcm_model, threads=1), InferenceSession(dcm_model, threads=1, optimize=False)
    ort = onnxruntime_session(model)
    runs = {"dcm_ms": lambda: fused.run(None, {"x": x}), "dcm_no_passes_ms": lambda: plain.run(None, {"x": x}),
            "onnxruntime_ms": lambda: ort.run(None, {"x": x})}
    np.testing.assert_allclose(runs["dcm_ms"]()[0], runs["onnxruntime_ms"]()[0], rtol=1e-4, atol=1e-4)
    best = dict.fromkeys(runs, float("inf"))
    with threadpool_limits(1):
        for rep in range(reps):
            order = list(runs)[rep % 3:] + list(runs)[:rep % 3]  # each goes first, after another's run, in turn
            for k in order:
                t = time.perf_counter()
                runs[k]()
                best[k] = min(best[k], time.perf_counter() - t)
    return {k: round(v * 1e3, 4) for k, v in best.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    rows = []
    print(f"load average {os.getloadavg()[0]:.1f}")
    print("| layer | graph | dcm ms | dcm, no passes ms | onnxruntime ms | dcm / onnxruntime |\n|---|---|---:|---:|---:|---:|")
    for c, c_out, size in LAYERS:
        x = np.random.default_rng(1).standard_normal((1, c, size, size)).astype(np.float32)
        for se in (True, False):
            t = _time(_graph(c, c_out, size, se), x, args.reps)
            rows.append({"layer": [c, c_out, size], "graph": "se" if se else "conv", **t})
            print(f"| {c} -> {c_out} at {size}x{size} | {'SE + Conv' if se else 'Conv'} | {t['dcm_ms']:.3f} | "
                  f"{t['dcm_no_passes_ms']:.3f} | {t['onnxruntime_ms']:.3f} | {t['dcm_ms'] / t['onnxruntime_ms']:.2f} |")
    save("se_block", {"reps": args.reps, "rows": rows})


if __name__ == "__main__":
    main()
