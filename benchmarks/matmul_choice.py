"""Where a pruned fully connected layer's sparse kernel stops beating dense BLAS, by row count.

    python -m benchmarks.matmul_choice [--quick] [--docs]

A transformer's or an LSTM's linear layer multiplies a [rows, in] activation (rows = batch x
sequence, or time steps x batch for the input projections) by a constant W [out, in]. The compiled
sparse kernel's cost grows with rows x nnz, BLAS's with rows x out x in at a better rate per
multiply-add, so the density up to which sparse wins depends on the row count (and on the layer's
width: a panel of 1024 inputs no longer fits in L1). Times ``WeightMatmul.right`` in both modes and
onnxruntime's MatMul on the dense weight (one thread, the three taking turns call by call, so that
load from other processes hits all of them alike) over densities and row counts, finds the
break-even density per layer and row count (interpolated between the measured densities), and
writes benchmarks/results/matmul_choice.json (``--docs`` prints the tables of
docs/kernel-choice.md). ``prefers_dense`` in dcm/runtime/cpu/matmul.py holds the rule the kernels
use; this benchmark is what it was read from.
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import onnxruntime as ort
import scipy.sparse as sp
from onnx import TensorProto, helper, numpy_helper
from threadpoolctl import threadpool_limits

from benchmarks.common import onnxruntime_session, save
from dcm.encoder.codec import CsrParts
from dcm.runtime.cpu import native
from dcm.runtime.cpu.matmul import WeightMatmul, prefers_dense
from dcm.runtime.cpu.tune import race

SHAPES = [(256, 1024), (1024, 256), (768, 256), (256, 256)]  # [out, in] of the zoo's transformers
DENSITIES = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5]
ROWS = [1, 2, 4, 8, 16, 32, 64, 128, 197, 256]


def _weight(out: int, inp: int, density: float, rng: np.random.Generator) -> CsrParts:
    m = sp.random_array((out, inp), density=density, format="csr", dtype=np.float32, rng=rng)
    m.sort_indices()
    return CsrParts(m.shape, m.data, None, None, m.indices, m.indptr)


def _onnxruntime(w_t: np.ndarray, rows: int) -> ort.InferenceSession:
    """onnxruntime's MatMul of x [rows, in] by the dense W.T [in, out], one thread."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, w_t.shape[0]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, w_t.shape[1]])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul", [x], [y],
                              [numpy_helper.from_array(w_t, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnxruntime_session(model.SerializeToString())


def measure(quick: bool) -> list[dict]:
    rng = np.random.default_rng(0)
    rows_list = [1, 4, 8, 32, 128, 197] if quick else ROWS
    out = []
    with threadpool_limits(1):
        for shape in SHAPES[:2] if quick else SHAPES:
            for density in DENSITIES:
                w = _weight(*shape, density, rng)
                sparse = WeightMatmul("sparse", w, 1, prefer="right", vectors=True)
                dense = WeightMatmul("dense", w.to_scipy().toarray(), 1, prefer="right")
                for rows in rows_list:
                    x = rng.standard_normal((rows, shape[1]), dtype=np.float32)
                    ort_session = _onnxruntime(dense.wt, rows)
                    t = race({"sparse": lambda: sparse.right(x), "dense": lambda: dense.right(x),
                              "onnxruntime": lambda: ort_session.run(None, {"x": x})}, min_time=0.15)
                    out.append({"shape": list(shape), "density": density, "rows": rows,
                                **{f"{k}_us": round(v * 1e6, 1) for k, v in t.items()},
                                "sparse_over_dense": round(t["sparse"] / t["dense"], 2),
                                "sparse_over_onnxruntime": round(t["sparse"] / t["onnxruntime"], 2)})
                    print(out[-1], flush=True)
    return out


def break_even(rows: list[dict]) -> list[dict]:
    """Per layer shape and row count: the density at which sparse/dense crosses 1, linear between
    the measured densities (">max" where sparse won at every density, "<min" where it never did)."""
    out = []
    for shape in sorted({tuple(r["shape"]) for r in rows}):
        for n in sorted({r["rows"] for r in rows}):
            pts = sorted((r["density"], r["sparse_over_dense"]) for r in rows
                         if tuple(r["shape"]) == shape and r["rows"] == n)
            found: float | str = f">{pts[-1][0]}" if pts[-1][1] < 1 else f"<{pts[0][0]}"
            for (d0, r0), (d1, r1) in zip(pts, pts[1:]):
                if r0 < 1 <= r1:
                    found = round(d0 + (1 - r0) * (d1 - d0) / (r1 - r0), 3)
                    break
            if pts[0][1] >= 1 and not isinstance(found, float):
                found = f"<{pts[0][0]}"
            out.append({"shape": list(shape), "rows": n, "break_even_density": found,
                        "rule_keeps_sparse_up_to": _rule_limit(shape, n)})
    return out


def _rule_limit(shape: tuple[int, int], rows: int) -> float:
    """The highest measured density the runtime keeps sparse (0 where it keeps none): a layer is sparse
    at load up to ``native.SPARSE_MAX_DENSITY``, then ``prefers_dense`` decides per row count."""
    kept = [d for d in DENSITIES if d <= native.SPARSE_MAX_DENSITY
            and not prefers_dense(d, rows, shape[0] * shape[1], shape[1])]
    return max(kept, default=0.0)


def table(rows: list[dict], even: list[dict]) -> str:
    lines = ["| shape [out, in] | rows | break-even density | rule keeps sparse up to |", "|---|---|---|---|"]
    lines += [f"| {e['shape']} | {e['rows']} | {e['break_even_density']} | {e['rule_keeps_sparse_up_to']} |"
              for e in even]
    lines += ["", "| shape [out, in] | density | rows | sparse us | dense us | onnxruntime us | sparse / dense "
              "| sparse / onnxruntime |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['shape']} | {r['density']} | {r['rows']} | {r['sparse_us']} | {r['dense_us']} | "
              f"{r['onnxruntime_us']} | {r['sparse_over_dense']} | {r['sparse_over_onnxruntime']} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two shapes, six row counts")
    ap.add_argument("--docs", action="store_true", help="print the markdown tables")
    args = ap.parse_args()
    rows = measure(args.quick)
    even = break_even(rows)
    path = save("matmul_choice", {"load_average": os.getloadavg(), "batched_simd": native.batched_simd(), "rows": rows,
                                  "break_even": even})
    print(path)
    for e in even:
        print(e)
    if args.docs:
        print(table(rows, even))


if __name__ == "__main__":
    main()
