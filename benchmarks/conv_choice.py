"""Break-even densities of Conv's kernels: direct sparse against Winograd and against im2col + BLAS,
per layer shape, at batch 1 on one thread; and (``--lanes``) where the compiled kernel for few
input channels (``conv_lanes2d``) beats im2col + BLAS on dense layers.

    python -m benchmarks.conv_choice [--quick] [--lanes | --stems | --pruned] [--docs]

Each layer (channels, kernel, input size) is pruned by magnitude to each density and timed with
every kernel forced: ``direct`` (kernels="sparse"), ``winograd`` (kernels="dense", 3x3 stride 1)
and ``gemm`` (im2col + BLAS, Winograd off), with onnxruntime on the same dense ONNX for scale.
The break-even density is the highest density at which direct is still the faster kernel.
Writes benchmarks/results/conv_choice.json; ``--docs`` also writes docs/kernel-choice.md's table.

``--lanes`` times dense layers of the stems and narrow 3x3 layers of the zoo's CNNs with
``conv_lanes2d`` forced on and off (``lanes.MAX_TAPS``, ``lanes.MAX_TAPS_3X3``), onnxruntime alongside, each call of the three
interleaved and timed by the thread's CPU clock, so that other processes on a shared machine move
all three alike. Writes benchmarks/results/conv_lanes.json and the table between the
``conv_lanes table`` markers.

``--stems`` times the strided stems pruned to 30-70% density with ``conv_lanes2d`` (kernels="dense")
and the direct sparse kernel (kernels="sparse") forced, the static choice and onnxruntime alongside,
interleaved by the thread's CPU clock as ``--lanes``: where the direct kernel runs strided layers
(AVX-512) the density from which lanes wins (``Conv._lanes_beats_rival``). Writes
benchmarks/results/conv_stems.json and the table between the ``conv_stems table`` markers.

``--pruned`` times ResNet-18's 3x3 stride-1 layers pruned to 20-50% density (the zoo prunes ResNets to
30%) at batch 1 and 8, on 1 and 2 threads: the direct sparse kernel, Winograd on the densified
weight, the kernel the static rule picks (dcm's three interleaved call by call), then onnxruntime on
the dense layer on its own, minimum of the calls. Writes benchmarks/results/conv_pruned.json and the
table between the ``conv_pruned table`` markers.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

import time

from benchmarks.common import onnxruntime_session, replace_between, save, timeit
from dcm.converters import ConvertOptions
from dcm.converters.onnx_in import from_onnx
from dcm.runtime import InferenceSession
from dcm.runtime.cpu import conv, lanes

DOCS = Path(__file__).parent.parent / "docs" / "kernel-choice.md"
TABLE_START, TABLE_END = "<!-- conv_choice table -->", "<!-- end conv_choice table -->"
LANES_START, LANES_END = "<!-- conv_lanes table -->", "<!-- end conv_lanes table -->"
PRUNED_START, PRUNED_END = "<!-- conv_pruned table -->", "<!-- end conv_pruned table -->"
STEMS_START, STEMS_END = "<!-- conv_stems table -->", "<!-- end conv_stems table -->"

# (in = out channels, kernel, input height = width): ResNet/MobileNet-like layers.
LAYERS = [(32, 3, 56), (64, 3, 56), (128, 3, 28), (256, 3, 14), (64, 1, 56), (256, 1, 14), (32, 1, 112)]
DENSITIES = [0.05, 0.1, 0.2, 0.3, 0.5, 1.0]
# (in channels, out channels, kernel, stride, input size): stems of MobileNetV2/EfficientNet, ResNet,
# ConvNeXt, U-Net, then narrow 3x3 layers and ConvNeXt's first 2x2 downsampling, by taps per output.
LANE_LAYERS = [(3, 32, 3, 2, 224), (3, 40, 4, 4, 224), (3, 32, 3, 1, 128), (3, 64, 7, 2, 224), (8, 16, 3, 1, 112),
               (16, 16, 3, 1, 112), (16, 32, 3, 2, 112), (40, 80, 2, 2, 56), (24, 24, 3, 1, 56), (32, 32, 3, 1, 56),
               (32, 32, 3, 1, 128), (24, 24, 3, 1, 128), (20, 32, 3, 1, 128), (32, 64, 3, 2, 112), (32, 64, 3, 1, 128),
               (32, 128, 3, 1, 56)]

# The strided stems of LANE_LAYERS (MobileNetV2/EfficientNet, ConvNeXt, ResNet), a narrow one, and the
# densities the zoo prunes them to.
STEM_LAYERS = [(3, 32, 3, 2, 224), (3, 40, 4, 4, 224), (3, 64, 7, 2, 224), (3, 16, 3, 2, 128)]
STEM_DENSITIES = [0.3, 0.5, 0.7]

# (channels, input size): ResNet-18's 3x3 stride-1 layers, one per stage.
PRUNED_LAYERS = [(64, 56), (128, 28), (256, 14), (512, 7)]
PRUNED_DENSITIES = [0.2, 0.3, 0.4, 0.5]


def _onnx(c: int, k: int, h: int, density: float, out: int | None = None, stride: int = 1,
          batch: int = 1) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((out or c, c, k, k)).astype(np.float32)
    w[np.abs(w) < np.quantile(np.abs(w), 1 - density)] = 0  # magnitude pruning
    pads = [(k - stride + 1) // 2] * 4  # "same" for odd kernels, none for patchify layers (k = stride)
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=pads, strides=[stride] * 2)], "layer",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, c, h, h])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def _time_kernel(model, x: np.ndarray, kernels: str | None, winograd: bool) -> tuple[float, str]:
    conv.Conv.allow_winograd = winograd
    try:
        sess = InferenceSession(model, kernels=kernels, threads=1)
    finally:
        conv.Conv.allow_winograd = True
    return timeit(lambda: sess.run(None, {"x": x}), min_time=0.3) * 1e3, sess.describe()[0]["kernel"]


def measure(layers, densities) -> list[dict]:
    import onnxruntime as ort

    rows = []
    for c, k, h in layers:
        x = np.random.default_rng(1).standard_normal((1, c, h, h)).astype(np.float32)
        for density in densities:
            data = _onnx(c, k, h, density)
            model = from_onnx(data, ConvertOptions(exact=True))
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            o = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
            row = {"channels": c, "kernel": k, "size": h, "density": density,
                   "onnxruntime_ms": timeit(lambda: o.run(None, {"x": x}), min_time=0.3) * 1e3}
            with threadpool_limits(1):
                for name, kernels, winograd in (("direct", "sparse", True), ("gemm", "dense", False),
                                                ("winograd", "dense", True), ("auto", None, True)):
                    if name == "winograd" and k != 3:
                        continue
                    ms, chosen = _time_kernel(model, x, kernels, winograd)
                    row[f"{name}_ms"] = ms
                    if name == "auto":
                        row["auto_kernel"] = chosen
            print(row, flush=True)
            rows.append(row)
    return rows


def measure_lanes(layers, reps: int = 40) -> list[dict]:
    """Per dense layer: conv_lanes2d, im2col + BLAS and onnxruntime, ms by the thread's CPU clock."""
    import onnxruntime as ort

    rows = []
    for c, k_out, k, stride, h in layers:
        x = np.random.default_rng(1).standard_normal((1, c, h, h)).astype(np.float32)
        data = _onnx(c, k, h, 1.0, out=k_out, stride=stride)
        model = from_onnx(data, ConvertOptions(exact=True))
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        runs = {"onnxruntime": ort.InferenceSession(data, so, providers=["CPUExecutionProvider"]),
                "auto": InferenceSession(model, threads=1)}
        for name, taps in (("lanes", 1 << 30), ("gemm", 0)):  # Winograd off: lanes and im2col as named
            previous = lanes.MAX_TAPS, lanes.MAX_TAPS_3X3
            lanes.MAX_TAPS = lanes.MAX_TAPS_3X3 = taps
            conv.Conv.allow_winograd = False
            try:
                runs[name] = InferenceSession(model, kernels="dense", threads=1)
            finally:
                lanes.MAX_TAPS, lanes.MAX_TAPS_3X3 = previous
                conv.Conv.allow_winograd = True
        row = {"in": c, "out": k_out, "kernel": k, "stride": stride, "size": h, "taps": c * k * k,
               **_interleaved_ms(runs, x, reps), "chosen": runs["auto"].describe()[0]["kernel"]}
        print(row, flush=True)
        rows.append(row)
    return rows


def _interleaved_ms(runs: dict, x: np.ndarray, reps: int) -> dict[str, float]:
    """{"<name>_ms": median ms by the thread's CPU clock}, the sessions' calls interleaved one by one."""
    times = {name: [] for name in runs}
    with threadpool_limits(1):
        for _ in range(reps):
            for name, sess in runs.items():
                start = time.thread_time()
                sess.run(None, {"x": x})
                times[name].append(time.thread_time() - start)
    return {f"{name}_ms": float(np.median(t)) * 1e3 for name, t in times.items()}


def measure_stems(layers, densities, reps: int = 40) -> list[dict]:
    """Per pruned strided stem and density: conv_lanes2d, the direct sparse kernel, the static choice
    and onnxruntime, one thread."""
    rows = []
    for c, k_out, k, stride, h in layers:
        x = np.random.default_rng(1).standard_normal((1, c, h, h)).astype(np.float32)
        for density in densities:
            data = _onnx(c, k, h, density, out=k_out, stride=stride)
            model = from_onnx(data, ConvertOptions(exact=True))
            runs = {"onnxruntime": onnxruntime_session(data, 1), "auto": InferenceSession(model, threads=1),
                    "lanes": InferenceSession(model, kernels="dense", threads=1),
                    "direct": InferenceSession(model, kernels="sparse", threads=1)}
            kinds = {name: runs[name].describe()[0]["kernel"] for name in ("auto", "lanes", "direct")}
            row = {"in": c, "out": k_out, "kernel": k, "stride": stride, "size": h, "density": density,
                   **_interleaved_ms(runs, x, reps), "chosen": kinds["auto"], "lanes_kernel": kinds["lanes"],
                   "direct_kernel": kinds["direct"]}
            print(row, flush=True)
            rows.append(row)
    return rows


def stems_table(rows: list[dict]) -> str:
    lines = ["| stem (C_in->C_out, k, stride, H) | density | lanes ms | direct ms | chosen | its ms | onnxruntime ms |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        layer = f"{r['in']}->{r['out']}, {r['kernel']}x{r['kernel']}, /{r['stride']}, {r['size']}"
        lanes_ms = f"{r['lanes_ms']:.3f}" + ("" if r["lanes_kernel"] == "lanes" else f" ({r['lanes_kernel']})")
        direct_ms = f"{r['direct_ms']:.3f}" + ("" if r["direct_kernel"] == "direct" else f" ({r['direct_kernel']})")
        lines.append(f"| {layer} | {r['density']:.2f} | {lanes_ms} | {direct_ms} | {r['chosen']} | "
                     f"{r['auto_ms']:.3f} | {r['onnxruntime_ms']:.3f} |")
    return "\n".join(lines)


def measure_pruned(layers, densities, batches=(1, 8), threads=(1, 2), reps: int = 15) -> list[dict]:
    """Per pruned layer, batch and thread count: direct, Winograd, the static choice and onnxruntime,
    minimum ms over ``reps`` calls. dcm's three are interleaved call by call; onnxruntime is timed after
    them, on its own: interleaved with it, dcm's pool ran beside onnxruntime's threads still spinning
    from its last call, took that for a busy machine and backed off to one thread, and its 2-thread
    times came out at up to twice those of the layer run alone."""
    rows = []
    for c, h in layers:
        for density in densities:
            for batch in batches:
                data = _onnx(c, 3, h, density, batch=batch)
                model = from_onnx(data, ConvertOptions(exact=True))
                x = np.random.default_rng(1).standard_normal((batch, c, h, h)).astype(np.float32)
                for t in threads:
                    runs = {"onnxruntime": onnxruntime_session(data, t)}
                    for name, kernels in (("direct", "sparse"), ("winograd", "dense"), ("auto", None)):
                        runs[name] = InferenceSession(model, kernels=kernels, threads=t)
                    times = {name: [] for name in runs}
                    with threadpool_limits(t):
                        for sess in runs.values():
                            sess.run(None, {"x": x})
                        for names in ([n for n in runs if n != "onnxruntime"], ["onnxruntime"]):
                            for _ in range(reps):
                                for name in names:
                                    start = time.perf_counter()
                                    runs[name].run(None, {"x": x})
                                    times[name].append(time.perf_counter() - start)
                    row = {"channels": c, "size": h, "density": density, "batch": batch, "threads": t,
                           **{f"{name}_ms": min(ts) * 1e3 for name, ts in times.items()},
                           "chosen": runs["auto"].describe()[0]["kernel"]}
                    print(row, flush=True)
                    rows.append(row)
    return rows


def pruned_table(rows: list[dict]) -> str:
    lines = ["| layer (C, H) | density | batch | threads | direct ms | winograd ms | chosen | its ms | onnxruntime ms "
             "| chosen / onnxruntime |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['channels']}, {r['size']} | {r['density']:.2f} | {r['batch']} | {r['threads']} | "
                     f"{r['direct_ms']:.2f} | {r['winograd_ms']:.2f} | {r['chosen']} | {r['auto_ms']:.2f} | "
                     f"{r['onnxruntime_ms']:.2f} | {r['auto_ms'] / r['onnxruntime_ms']:.2f} |")
    return "\n".join(lines)


def lanes_table(rows: list[dict]) -> str:
    lines = ["| layer (C_in->C_out, k, stride, H) | taps | lanes ms | im2col + gemm ms | chosen | its ms "
             "| onnxruntime ms |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        layer = f"{r['in']}->{r['out']}, {r['kernel']}x{r['kernel']}, /{r['stride']}, {r['size']}"
        lines.append(f"| {layer} | {r['taps']} | {r['lanes_ms']:.3f} | {r['gemm_ms']:.3f} | {r['chosen']} | "
                     f"{r['auto_ms']:.3f} | {r['onnxruntime_ms']:.3f} |")
    return "\n".join(lines)


def break_even(rows: list[dict]) -> list[dict]:
    """Per layer: the highest density where direct beats the best dense kernel."""
    out = []
    for key in sorted({(r["channels"], r["kernel"], r["size"]) for r in rows}):
        mine = [r for r in rows if (r["channels"], r["kernel"], r["size"]) == key]
        wins = [r["density"] for r in mine if r["direct_ms"] < min(r["gemm_ms"], r.get("winograd_ms", np.inf))]
        out.append({"channels": key[0], "kernel": key[1], "size": key[2], "direct_wins_up_to": max(wins, default=0.0)})
    return out


def table(rows: list[dict]) -> str:
    lines = ["| layer (C, k, H) | density | direct ms | gemm ms | winograd ms | chosen | its ms | onnxruntime ms |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        wino = f"{r['winograd_ms']:.2f}" if "winograd_ms" in r else "-"
        lines.append(f"| {r['channels']}, {r['kernel']}x{r['kernel']}, {r['size']} | {r['density']:.2f} | "
                     f"{r['direct_ms']:.2f} | {r['gemm_ms']:.2f} | {wino} | {r['auto_kernel']} | {r['auto_ms']:.2f} | "
                     f"{r['onnxruntime_ms']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="three layers, three densities")
    ap.add_argument("--lanes", action="store_true", help="few-input-channel dense layers: conv_lanes2d against gemm")
    ap.add_argument("--stems", action="store_true", help="pruned strided stems: conv_lanes2d against direct")
    ap.add_argument("--pruned", action="store_true", help="ResNet-18's pruned 3x3 layers: direct against Winograd")
    ap.add_argument("--docs", action="store_true", help="rewrite the table in docs/kernel-choice.md")
    args = ap.parse_args()
    if args.pruned:
        rows = (measure_pruned(PRUNED_LAYERS, [0.3], batches=(1,), threads=(1,)) if args.quick
                else measure_pruned(PRUNED_LAYERS, PRUNED_DENSITIES))
        path = save("conv_pruned", {"rows": rows})
        print(pruned_table(rows))
        print(f"wrote {path}")
        if args.docs:
            replace_between(DOCS, PRUNED_START, PRUNED_END, pruned_table(rows))
        return
    if args.stems:
        rows = measure_stems(STEM_LAYERS[2:3] if args.quick else STEM_LAYERS, STEM_DENSITIES)
        path = save("conv_stems", {"batch": 1, "threads": 1, "rows": rows})
        print(stems_table(rows))
        print(f"wrote {path}")
        if args.docs:
            replace_between(DOCS, STEMS_START, STEMS_END, stems_table(rows))
        return
    if args.lanes:
        rows = measure_lanes(LANE_LAYERS[::2] if args.quick else LANE_LAYERS)
        path = save("conv_lanes", {"batch": 1, "threads": 1, "max_taps": lanes.MAX_TAPS, "rows": rows})
        print(lanes_table(rows))
        print(f"wrote {path}")
        if args.docs:
            replace_between(DOCS, LANES_START, LANES_END, lanes_table(rows))
        return
    layers = LAYERS[::3] if args.quick else LAYERS
    densities = [0.1, 0.3, 1.0] if args.quick else DENSITIES
    rows = measure(layers, densities)
    path = save("conv_choice", {"batch": 1, "threads": 1, "rows": rows, "break_even": break_even(rows)})
    print(table(rows))
    print(f"wrote {path}")
    if args.docs:
        replace_between(DOCS, TABLE_START, TABLE_END, table(rows))


if __name__ == "__main__":
    main()
