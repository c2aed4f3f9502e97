"""What the transformer rewrites and the per-call sparse/dense rule buy, measured in turn with onnxruntime.

    python -m benchmarks.transformer_passes [--models bert_4x256,gpt2_4x256,vit_tiny16,lstm_2x256] [--rounds 20]

For each zoo model (``benchmarks/zoo_models.py``, seed 0, dense and pruned as in ``benchmarks.zoo``)
three runners take turns, one call each per round, batch 1, one thread: dcm as it loads by default,
dcm without ``fuse_layer_norm``/``fuse_matmul_add``/``fuse_attention`` and without the row-count rule
(``WeightMatmul.by_rows``), and onnxruntime on the same dense ONNX file. Taking turns lets load on a
shared machine fall on all three alike; the medians are reported. Then dcm's per-op profile (the
ops that took the most time), which is where it loses to onnxruntime. Writes
benchmarks/results/transformer_passes.json.
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np
from threadpoolctl import threadpool_limits

from benchmarks.common import onnxruntime_session, save
from benchmarks.zoo import example, exported
from benchmarks.zoo_models import MODELS
from dcm.converters import ConvertOptions
from dcm.converters.onnx_in import from_onnx
from dcm.runtime import InferenceSession
from dcm.runtime import optimize as passes
from dcm.runtime.cpu.matmul import WeightMatmul

NEW_PASSES = ("fuse_layer_norm", "fuse_matmul_add", "fuse_attention")


def _without_new(model) -> InferenceSession:
    """A session as it loads without the transformer rewrites and with every sparse layer kept sparse."""
    saved = dict(passes.PASSES)
    try:
        for name in NEW_PASSES:
            del passes.PASSES[name]
        sess = InferenceSession(model, threads=1)
    finally:
        passes.PASSES.clear()
        passes.PASSES.update(saved)
    for k in sess._kernels:
        mms = [getattr(k, "mm", None)] + [m for ps in getattr(k, "products", {}).values() for d in ps for m in d]
        for mm in mms:
            if isinstance(mm, WeightMatmul):
                mm.by_rows = False
    return sess


def measure(name: str, pruned: bool, rounds: int) -> dict:
    kept = MODELS[name][1]
    _, names, onnx_bytes = exported(name, pruned)
    model = from_onnx(onnx_bytes, ConvertOptions(exact=True))
    feeds = example(name, 1, names)[1]
    ort_sess = onnxruntime_session(onnx_bytes)
    new, old = InferenceSession(model, threads=1), _without_new(model)
    runners = {"dcm": lambda: new.run(None, feeds), "dcm_before": lambda: old.run(None, feeds),
               "onnxruntime": lambda: ort_sess.run(None, feeds)}
    times: dict[str, list[float]] = {k: [] for k in runners}
    ops: dict[str, float] = defaultdict(float)
    with threadpool_limits(1):
        for fn in runners.values():
            fn()
        for _ in range(rounds):
            for k, fn in runners.items():
                start = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - start)
        for p in new.profile(feeds, runs=5):
            ops[p["op"]] += p["seconds"] * 1e3
    ms = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:6]
    return {"model": name, "weights": f"pruned {kept:.0%} kept" if pruned else "dense", **{f"{k}_ms": v for k, v in ms.items()},
            "before_vs_onnxruntime": ms["dcm_before"] / ms["onnxruntime"], "dcm_vs_onnxruntime": ms["dcm"] / ms["onnxruntime"],
            "profile_ms": {op: round(t, 2) for op, t in top}}


def table(rows: list[dict]) -> str:
    lines = ["| model | weights | dcm before ms | dcm ms | onnxruntime ms | before/ort | dcm/ort | dcm's top ops (ms, profiled) |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['weights']} | {r['dcm_before_ms']:.1f} | {r['dcm_ms']:.1f} | {r['onnxruntime_ms']:.1f} | "
              f"{r['before_vs_onnxruntime']:.2f} | {r['dcm_vs_onnxruntime']:.2f} | "
              + ", ".join(f"{op} {t:.1f}" for op, t in r["profile_ms"].items()) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="bert_4x256,gpt2_4x256,vit_tiny16,lstm_2x256")
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    rows = []
    for name in args.models.split(","):
        for pruned in (False, True):
            rows.append(measure(name, pruned, args.rounds))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    save("transformer_passes", {"rounds": args.rounds, "rows": rows})
    print(table(rows))


if __name__ == "__main__":
    main()
