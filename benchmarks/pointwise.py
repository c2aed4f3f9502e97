"""The compiled pointwise kernels (_pointwise.c) against dcm's numpy paths and onnxruntime, on the
shapes where the zoo's models spend their pointwise time, at batch 1 on one thread.

    python -m benchmarks.pointwise [--reps N] [--models bert_4x256,...] [--docs]

Each case is a small ONNX graph run three ways in the same process, interleaved call by call (the
machine may be shared, so only ratios of calls made side by side mean much): dcm with the compiled
kernels, dcm with them switched off (``native.activate``, ``layer_norm`` and ``softmax`` set to
None: the numpy paths), and onnxruntime (``intra_op_num_threads=1``). ``--models`` times whole zoo
models (benchmarks/zoo_models.py, dense, batch 1) the same three ways. Writes
benchmarks/results/pointwise.json; ``--docs`` also rewrites the tables in docs/pointwise-kernels.md.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from benchmarks.common import compiled_off, onnxruntime_session, replace_between, save
from dcm.converters import ConvertOptions
from dcm.converters.onnx_in import from_onnx
from dcm.runtime import InferenceSession

DOCS = Path(__file__).parent.parent / "docs" / "pointwise-kernels.md"
TABLE_START, TABLE_END = "<!-- pointwise table -->", "<!-- end pointwise table -->"
COMPILED = ("activate", "layer_norm", "softmax")


def _graph(nodes, x_shape: list[int], inits: dict[str, np.ndarray], opset: int = 20) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(nodes, "case", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 9
    return m.SerializeToString()


def cases() -> list[tuple[str, bytes, list[int]]]:
    """(name, ONNX bytes, input shape): the shapes of BERT, ViT, MobileNetV2 and EfficientNet's layers."""
    from onnx import helper

    rng = np.random.default_rng(0)

    def rand(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    def node(op, inputs, output, **attrs):
        return helper.make_node(op, inputs, [output], **attrs)

    norms = [node("LayerNormalization", ["x" if i == 0 else f"h{i}", "s", "b"], "y" if i == 8 else f"h{i + 1}",
                  axis=-1) for i in range(9)]
    return [
        ("Gelu 128x1024", _graph([node("Gelu", ["x"], "y")], [128, 1024], {}), [128, 1024]),
        ("BERT linear1: 128x256 @ 256x1024 + bias, Gelu", _graph(
            [node("MatMul", ["x", "w"], "m"), node("Add", ["m", "b"], "a"), node("Gelu", ["a"], "y")],
            [128, 256], {"w": rand(256, 1024) * 0.06, "b": rand(1024)}), [128, 256]),
        ("9 LayerNorms of 128x256", _graph(norms, [128, 256], {"s": rand(256), "b": rand(256)}), [128, 256]),
        ("LayerNorm 197x192", _graph([node("LayerNormalization", ["x", "s", "b"], "y", axis=-1)], [197, 192],
                                     {"s": rand(192), "b": rand(192)}), [197, 192]),
        ("Softmax 4x128x128", _graph([node("Softmax", ["x"], "y", axis=-1)], [4, 128, 128], {}), [4, 128, 128]),
        ("Softmax 4x128x128 after a causal mask (-inf lanes)", _graph(
            [node("Add", ["x", "m"], "a"), node("Softmax", ["a"], "y", axis=-1)], [4, 128, 128],
            {"m": np.triu(np.full((128, 128), -np.inf, np.float32), 1)}), [4, 128, 128]),
        ("Conv 1x1 16->96 at 112x112 + bias, Clip 0..6 (96x12544)", _graph(
            [node("Conv", ["x", "w", "b"], "c"), node("Clip", ["c", "lo", "hi"], "y")], [1, 16, 112, 112],
            {"w": rand(96, 16, 1, 1) * 0.3, "b": rand(96), "lo": np.float32(0), "hi": np.float32(6)}), [1, 16, 112, 112]),
        ("Conv 1x1 16->96 at 112x112 + bias, SiLU", _graph(
            [node("Conv", ["x", "w", "b"], "c"), node("Sigmoid", ["c"], "s"), node("Mul", ["c", "s"], "y")],
            [1, 16, 112, 112], {"w": rand(96, 16, 1, 1) * 0.3, "b": rand(96)}), [1, 16, 112, 112]),
    ]


def compare(name: str, data: bytes, feeds: dict[str, np.ndarray], reps: int) -> dict:
    """One model run the three ways, interleaved: median ms of each, their ratios, and how far dcm's
    first output is from onnxruntime's."""
    model = from_onnx(data, ConvertOptions(exact=True))
    o = onnxruntime_session(data)
    compiled = InferenceSession(model, threads=1)
    with compiled_off(COMPILED):
        plain = InferenceSession(model, threads=1)
    err = float(np.abs(compiled.run(None, feeds)[0] - o.run(None, feeds)[0]).max())
    times: dict[str, list[float]] = {"compiled": [], "numpy": [], "onnxruntime": []}
    for _ in range(reps):  # interleaved: each way once per round
        for way in times:
            t = time.perf_counter()
            if way == "numpy":
                with compiled_off(COMPILED):
                    plain.run(None, feeds)
            else:
                (compiled if way == "compiled" else o).run(None, feeds)
            times[way].append(time.perf_counter() - t)
    ms = {way: float(np.median(v[1:])) * 1e3 for way, v in times.items()}  # the first round warms up
    row = {"case": name, "compiled_ms": ms["compiled"], "numpy_ms": ms["numpy"], "onnxruntime_ms": ms["onnxruntime"],
           "speedup_over_numpy": ms["numpy"] / ms["compiled"], "dcm_over_onnxruntime": ms["compiled"] / ms["onnxruntime"],
           "max_abs_diff_vs_onnxruntime": err}
    print(row, flush=True)
    return row


def measure(reps: int) -> list[dict]:
    return [compare(name, data, {"x": np.random.default_rng(1).standard_normal(shape).astype(np.float32)}, reps)
            for name, data, shape in cases()]


def measure_models(names: list[str], reps: int) -> list[dict]:
    """Whole zoo models, dense, batch 1 (torch exports them)."""
    import torch

    from benchmarks.zoo import MODELS, export

    rows = []
    for name in names:
        torch.manual_seed(0)
        module, inputs, input_names, axes = MODELS[name][0](1)
        module.eval()
        data = export(module, inputs, input_names, axes)
        rows.append(compare(name, data, {n: t.numpy() for n, t in zip(input_names, inputs)}, reps))
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| case | compiled ms | numpy path ms | onnxruntime ms | numpy / compiled | dcm / onnxruntime | max abs diff |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['compiled_ms']:.3f} | {r['numpy_ms']:.3f} | {r['onnxruntime_ms']:.3f} | "
                     f"{r['speedup_over_numpy']:.1f}x | {r['dcm_over_onnxruntime']:.2f} | "
                     f"{r['max_abs_diff_vs_onnxruntime']:.1e} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=60, help="interleaved rounds per case (default 60)")
    ap.add_argument("--models", default="", help="comma-separated zoo models to time whole (default none)")
    ap.add_argument("--docs", action="store_true", help="rewrite the table in docs/pointwise-kernels.md")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    with threadpool_limits(1):
        rows = measure(args.reps)
        rows += measure_models([m for m in args.models.split(",") if m], max(args.reps // 3, 5))
    path = save("pointwise", {"batch": 1, "threads": 1, "reps": args.reps, "load_average_at_start": round(load, 1),
                              "rows": rows})
    text = table(rows)
    print(text)
    print(f"wrote {path} (load average {load:.1f} at the start)")
    if args.docs:
        note = f"`python -m benchmarks.pointwise --docs`, load average {load:.1f} at the start:\n\n"
        replace_between(DOCS, TABLE_START, TABLE_END, note + text)


if __name__ == "__main__":
    main()
