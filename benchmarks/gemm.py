"""Dense products on the zoo's shapes: numpy, the native gemm and the packed-weight kernel, onnxruntime.

    python -m benchmarks.gemm [--quick] [--seconds S]
    python -m benchmarks.gemm --models vit_tiny16,bert_4x256 [--runs N]

Every float32 product a zoo model sends through ``blas.matmul`` or ``WeightMatmul`` at batch 1 (the
convolutions' im2col products, Winograd's 16 batched products, the transformers' linear layers and
attention), plus a few small ones around ``blas.SPLIT_MIN_MACS``, timed as numpy's ``np.matmul`` on
one OpenBLAS thread, ``_gemm.gemm`` (scipy's OpenBLAS) on 1 and 2 threads of the native pool, the packed-weight kernel
``gemm_packed`` on 1 and 2 threads (single products; where the CPU has AVX-512), and onnxruntime's
MatMul (B constant, as a weight is, so that MLAS packs it at load) on 1 and 2 intra-op threads. Each
candidate cycles through COPIES copies of the weight, so that, as in a run, the weight it reads was
not used by the call before. The candidates take turns call by call (``tune.race``, fastest call:
other processes only ever lengthen one), and the load average is printed with the table. Writes benchmarks/results/gemm.json.
``--models``: whole runs of zoo models instead, the packed kernel on and off (``in_runs``), written
to benchmarks/results/gemm_runs.json. This is
where ``blas.SPLIT_MIN_MACS`` and the packed kernel's use (``matmul._packed``) were read from
(docs/gemm.md).
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import time
from typing import Callable

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from threadpoolctl import threadpool_limits

from benchmarks.common import onnxruntime_session, save
from dcm.runtime.cpu import native
from dcm.runtime.cpu.tune import race

# (model, stack, m, k, n): a [*stack, m, k] @ b [*stack, k, n]
SHAPES = [
    ("resnet18 winograd 64ch", (16,), 64, 64, 112), ("resnet18 winograd 128ch", (16,), 128, 128, 126),
    ("resnet18 winograd 256ch", (16,), 256, 256, 49), ("resnet18 stride-2 conv", (), 128, 576, 784),
    ("resnet18 stride-2 conv", (), 512, 2304, 49), ("unet winograd", (16,), 32, 32, 128),
    ("unet winograd", (16,), 64, 64, 128), ("unet winograd", (16,), 128, 128, 128),
    ("unet up-conv", (), 128, 64, 4096), ("vit qkv", (), 197, 192, 576), ("vit mlp", (), 197, 192, 768),
    ("vit mlp", (), 197, 768, 192), ("vit attention", (3,), 197, 64, 197), ("vit patches", (), 192, 768, 196),
    ("bert/gpt qkv", (), 128, 256, 768), ("bert/gpt mlp", (), 128, 256, 1024), ("bert/gpt mlp", (), 128, 1024, 256),
    ("bert/gpt proj", (), 128, 256, 256), ("bert/gpt attention", (4,), 128, 64, 128),
    ("gpt2 lm head", (), 128, 256, 50257), ("convnext mlp", (), 196, 160, 640), ("convnext mlp", (), 196, 640, 160),
    ("convnext stage 1", (), 3136, 40, 160), ("convnext stage 1", (), 3136, 160, 40),
    ("small", (), 16, 64, 256), ("small", (), 32, 128, 256), ("small", (), 64, 128, 256),
    ("resnet18 fc", (), 1, 512, 1000), ("one row", (), 1, 1024, 1024), ("two rows", (), 2, 1024, 1024),
    ("16 MB weight", (), 128, 256, 16384), ("64 MB weight", (), 8, 4096, 4096),
]
COPIES = 3  # weights each candidate cycles through
QUICK = {"resnet18 winograd 64ch", "unet winograd", "vit qkv", "bert/gpt mlp", "convnext stage 1", "small"}


def _onnxruntime(b: np.ndarray, a_shape: tuple, threads: int):
    """onnxruntime's MatMul of a run-time a by the constant b."""
    x = helper.make_tensor_value_info("a", TensorProto.FLOAT, list(a_shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "matmul", [x], [y],
                              [numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnxruntime_session(model.SerializeToString(), threads)


def _rotating(call: Callable[[int], object]) -> Callable[[], object]:
    """call(i) with i = 0, 1, ..., COPIES - 1, 0, ...: each call on a copy of the weight not used by the
    last COPIES - 1 calls, so that it comes from memory or L3, as each layer's weight does in a run."""
    turn = itertools.count()
    return lambda: call(next(turn) % COPIES)


def measure(quick: bool, seconds: float) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    with threadpool_limits(1):
        for model, stack, m, k, n in SHAPES:
            if quick and model not in QUICK:
                continue
            a = rng.standard_normal((*stack, m, k), dtype=np.float32)
            bs = [rng.standard_normal((*stack, k, n), dtype=np.float32) for _ in range(COPIES)]
            out = np.empty((*stack, m, n), np.float32)
            ort1, ort2 = ([_onnxruntime(b, a.shape, t) for b in bs] for t in (1, 2))
            candidates = {"numpy": _rotating(lambda i: np.matmul(a, bs[i], out=out)),
                          "gemm1": _rotating(lambda i: native.gemm(a, bs[i], out, 1)),
                          "gemm2": _rotating(lambda i: native.gemm(a, bs[i], out, 2)),
                          "ort1": _rotating(lambda i: ort1[i].run(None, {"a": a})),
                          "ort2": _rotating(lambda i: ort2[i].run(None, {"a": a}))}
            if not stack and native.packed_simd() is not None:
                packed = [np.frombuffer(native.pack_weight(b), np.float32) for b in bs]
                candidates["packed1"] = _rotating(lambda i: native.gemm_packed(a, packed[i], out, 1))
                candidates["packed2"] = _rotating(lambda i: native.gemm_packed(a, packed[i], out, 2))
            t = race(candidates, min_time=seconds, max_rounds=1000, summary=min)
            ratios = {"numpy_over_ort1": t["numpy"] / t["ort1"], "gemm1_over_numpy": t["gemm1"] / t["numpy"],
                      "gemm2_over_numpy": t["gemm2"] / t["numpy"], "gemm2_over_ort2": t["gemm2"] / t["ort2"]}
            if "packed1" in t:
                ratios.update({"packed1_over_numpy": t["packed1"] / t["numpy"],
                               "packed1_over_ort1": t["packed1"] / t["ort1"],
                               "packed2_over_packed1": t["packed2"] / t["packed1"],
                               "packed2_over_ort2": t["packed2"] / t["ort2"]})
            rows.append({"model": model, "stack": list(stack), "m": m, "k": k, "n": n,
                         "macs": math.prod(stack) * m * k * n, **{f"{c}_us": round(v * 1e6, 1) for c, v in t.items()},
                         **{name: round(v, 2) for name, v in ratios.items()}})
            print(f"{model:24s} {str(stack):6s} {m:5d} {k:5d} {n:6d} {rows[-1]['macs'] / 1e6:8.1f}M  numpy "
                  f"{t['numpy'] * 1e6:8.1f} us  " + "  ".join(f"{name} {v:.2f}" for name, v in ratios.items()),
                  flush=True)
    return rows


def in_runs(models: list[str], runs: int) -> list[dict]:
    """Per zoo model (batch 1, dense, one thread): the thread CPU time of a whole run with the packed
    kernel and without it (its layers on OpenBLAS), the two sessions taking turns run by run. CPU time,
    not wall time: a run that waits for the core while other processes hold it is not charged for it."""
    from benchmarks import zoo
    from dcm.converters import ConvertOptions, from_onnx
    from dcm.runtime import InferenceSession

    out = []
    for name in models:
        _, names, data = zoo.exported(name, False)
        model = from_onnx(data, ConvertOptions(exact=True))
        feeds = zoo.example(name, 1, names)[1]
        packed = InferenceSession(model, threads=1)
        simd, native.packed_simd = native.packed_simd, lambda: None  # as on a CPU without AVX-512
        try:
            blas_only = InferenceSession(model, threads=1)
        finally:
            native.packed_simd = simd
        times: dict[str, list[float]] = {"packed": [], "openblas": []}
        with threadpool_limits(1):
            for _ in range(runs):
                for label, session in (("packed", packed), ("openblas", blas_only)):
                    start = time.thread_time()
                    session.run(None, feeds)
                    times[label].append(time.thread_time() - start)
        row = {"model": name, **{f"{k}_ms": round(min(v) * 1e3, 2) for k, v in times.items()}}
        row["packed_over_openblas"] = round(row["packed_ms"] / row["openblas_ms"], 3)
        out.append(row)
        print(f"{name:16s} run (thread CPU time, fastest of {runs}): packed {row['packed_ms']:.2f} ms, "
              f"OpenBLAS {row['openblas_ms']:.2f} ms, ratio {row['packed_over_openblas']:.3f}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few shapes only")
    ap.add_argument("--seconds", type=float, default=0.5, help="time per shape (default 0.5)")
    ap.add_argument("--models", default="", help="instead: whole runs of these zoo models, packed kernel on and off")
    ap.add_argument("--runs", type=int, default=20, help="runs per session with --models (default 20)")
    args = ap.parse_args()
    if native.gemm is None:
        raise SystemExit("this build has no compiled gemm (dcm.runtime.cpu._gemm)")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if args.models:
        rows, name = in_runs(args.models.split(","), args.runs), "gemm_runs"
    else:
        rows, name = measure(args.quick, args.seconds), "gemm"
    print(f"load average {os.getloadavg()[0]:.1f} when done")
    save(name, {"load_average": os.getloadavg()[0], "rows": rows})


if __name__ == "__main__":
    main()
