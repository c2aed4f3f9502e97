"""What a node costs beyond its arithmetic: trivial-node chains, and the shape and layout ops of the
zoo's transformers, per op type.

    python -m benchmarks.node_overhead [--models bert_4x256,gpt2_4x256,vit_tiny16] [--reps 12] [--baseline DIR]

1. Chains of 201 ``Abs`` and of 401 ``Unsqueeze``/``Squeeze`` nodes on a [4, 8] tensor: microseconds
   per node, dcm against onnxruntime (graph optimizations off, so it runs every node), in turn,
   best of 40.
2. Each zoo model (``benchmarks/zoo_models.py``, seed 0, dense, batch 1), per op type: the sum over
   its nodes of each node's best time over ``--reps`` single-run profiles
   (``InferenceSession.profile``), the runners taking turns. ``--baseline DIR``: also a copy of dcm
   from another commit (``git archive REV dcm | tar -x -C DIR``, with the compiled extensions copied
   in), loaded in the same process, to compare before and after a change.

One thread everywhere. Writes benchmarks/results/node_overhead.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper
from threadpoolctl import threadpool_limits

from benchmarks.common import onnxruntime_session, save
from benchmarks.zoo import export
from benchmarks.zoo_models import MODELS
from dcm.converters import ConvertOptions
from dcm.converters.onnx_in import from_onnx
from dcm.format.writer import to_bytes

CHAIN = 200


def chain(kind: str):
    """x [4, 8] through CHAIN Abs nodes, or CHAIN Unsqueeze/Squeeze pairs; then an Identity."""
    nodes, prev = [], "x"
    for i in range(CHAIN):
        if kind == "abs":
            nodes.append(helper.make_node("Abs", [prev], [f"v{i}"]))
        else:
            nodes += [helper.make_node("Unsqueeze", [prev, "ax"], [f"u{i}"]),
                      helper.make_node("Squeeze", [f"u{i}", "ax"], [f"v{i}"])]
        prev = f"v{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.array([0], np.int64), "ax")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _dcm_modules() -> dict:
    return {k: sys.modules.pop(k) for k in [k for k in sys.modules if k == "dcm" or k.startswith("dcm.")]}


def session_class(root: str | None):
    """``InferenceSession`` of this checkout, or a maker of sessions of the dcm copy under ``root``:
    that copy's modules stand in for this one's in ``sys.modules`` while it loads a session (its
    imports at load time must find the copy), and stay bound to the objects they made."""
    if root is None:
        from dcm.runtime import InferenceSession

        return InferenceSession
    ours = _dcm_modules()
    sys.path.insert(0, root)
    try:
        from dcm.runtime import InferenceSession as Baseline
    finally:
        sys.path.remove(root)
        theirs = _dcm_modules()
        sys.modules.update(ours)

    def make(*args, **kwargs):
        mine = _dcm_modules()
        sys.modules.update(theirs)
        try:
            return Baseline(*args, **kwargs)
        finally:
            theirs.update(_dcm_modules())
            sys.modules.update(mine)

    return make


def best_per_node(runners: dict, feeds: dict, reps: int) -> dict[str, Counter]:
    """{runner: Counter {op type: sum over its nodes of each node's best seconds}}."""
    best: dict[str, dict[tuple[str, str], float]] = {k: {} for k in runners}
    for _ in range(reps):
        for k, sess in runners.items():
            for p in sess.profile(feeds, runs=1):
                key = (p["name"], p["op"])
                best[k][key] = min(best[k].get(key, 1e9), p["seconds"])
    sums = {k: Counter() for k in runners}
    for k, times in best.items():
        for (_, op), t in times.items():
            sums[k][op] += t
    return sums


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="bert_4x256,gpt2_4x256,vit_tiny16")
    ap.add_argument("--reps", type=int, default=12)
    ap.add_argument("--baseline", help="a dcm copy from another commit, compared side by side")
    args = ap.parse_args(argv)
    classes = {"dcm": session_class(None)}
    if args.baseline:
        classes = {"baseline": session_class(args.baseline), **classes}
    results: dict = {"chains": {}, "models": {}}
    x = np.ones((4, 8), np.float32)
    with threadpool_limits(1):
        torch.set_num_threads(1)
        for kind in ("abs", "unsqueeze_squeeze"):
            m = chain(kind)
            model = to_bytes(from_onnx(m, ConvertOptions(exact=True)))  # bytes: each copy reads them itself
            runs = {k: c(model, threads=1).run for k, c in classes.items()}
            runs["onnxruntime"] = onnxruntime_session(m.SerializeToString(), optimize=False).run
            best = dict.fromkeys(runs, 1e9)
            for _ in range(40):
                for k, f in runs.items():
                    t = time.perf_counter()
                    for _ in range(10):
                        f(None, {"x": x})
                    best[k] = min(best[k], (time.perf_counter() - t) / 10)
            n = len(m.graph.node)
            results["chains"][kind] = {k: v / n * 1e6 for k, v in best.items()}
            print(f"{kind}: {n} nodes, us per node: " + ", ".join(f"{k} {v / n * 1e6:.2f}" for k, v in best.items()))
        for name in args.models.split(","):
            torch.manual_seed(0)
            module, inputs, names, axes = MODELS[name][0](1)
            module.eval()
            model = to_bytes(from_onnx(export(module, inputs, names, axes), ConvertOptions(exact=True)))
            feeds = {n: t.numpy() for n, t in zip(names, inputs)}
            runners = {k: c(model, threads=1) for k, c in classes.items()}
            for sess in runners.values():
                sess.run(None, feeds)
            sums = best_per_node(runners, feeds, args.reps)
            results["models"][name] = {k: dict(v) for k, v in sums.items()}
            print(f"{name}: ms per op type, each node's best of {args.reps}")
            for op, _ in sums[next(iter(sums))].most_common():
                print(f"  {op:20s} " + "  ".join(f"{k} {sums[k][op] * 1e3:7.3f}" for k in sums))
    save("node_overhead", results)


if __name__ == "__main__":
    main()
