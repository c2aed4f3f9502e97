"""Where a pruned fully connected layer's sparse kernel stops beating dense BLAS, by row count.

    python -m benchmarks.matmul_choice [--quick] [--docs]

A transformer's or an LSTM's linear layer multiplies a [rows, in] activation (rows = batch x
sequence, or time steps x batch for the input projections) by a constant W [out, in]. The compiled
sparse kernel's cost grows with rows x nnz, BLAS's with rows x out x in at a much better rate per
multiply-add, so the break-even row count falls as density rises. Times ``WeightMatmul.right`` in
both modes (one thread) over densities and row counts, records for each density the largest row
count at which sparse still wins, and writes benchmarks/results/matmul_choice.json (``--docs``:
the table in docs/transformers.md). ``dcm.runtime.cpu.matmul.SPARSE_MAX_ROWS`` holds the rule the
kernels use; this benchmark is what it was read from.
"""
from __future__ import annotations

import argparse

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from benchmarks.common import save, timeit
from dcm.encoder.codec import CsrParts
from dcm.runtime.cpu.matmul import WeightMatmul

SHAPES = [(256, 1024), (1024, 256), (768, 256)]  # [out, in] of the zoo's 256-wide transformers
DENSITIES = [0.05, 0.1, 0.2, 0.3]
ROWS = [1, 2, 4, 8, 16, 32, 64, 128, 256]


def _weight(out: int, inp: int, density: float, rng: np.random.Generator) -> CsrParts:
    m = sp.random_array((out, inp), density=density, format="csr", dtype=np.float32, rng=rng)
    m.sort_indices()
    return CsrParts(m.shape, m.data, None, None, m.indices, m.indptr)


def measure(quick: bool) -> list[dict]:
    rng = np.random.default_rng(0)
    rows_list = ROWS[::2] + [ROWS[-1]] if quick else ROWS
    out = []
    with threadpool_limits(1):
        for shape in SHAPES[:1] if quick else SHAPES:
            for density in DENSITIES:
                w = _weight(*shape, density, rng)
                sparse = WeightMatmul("sparse", w, 1, prefer="right", vectors=True)
                dense = WeightMatmul("dense", w.to_scipy().toarray(), 1, prefer="right")
                for rows in rows_list:
                    x = rng.standard_normal((rows, shape[1]), dtype=np.float32)
                    t_s = timeit(lambda: sparse.right(x), min_time=0.1)
                    t_d = timeit(lambda: dense.right(x), min_time=0.1)
                    out.append({"shape": list(shape), "density": density, "rows": rows,
                                "sparse_us": round(t_s * 1e6, 1), "dense_us": round(t_d * 1e6, 1),
                                "sparse_over_dense": round(t_s / t_d, 2)})
                    print(out[-1], flush=True)
    return out


def break_even(rows: list[dict]) -> dict[str, int]:
    """Per density: the largest row count at which sparse was faster on every shape (0: never)."""
    result = {}
    for density in sorted({r["density"] for r in rows}):
        wins = [r for r in rows if r["density"] == density]
        limit = 0
        for n in sorted({r["rows"] for r in wins}):
            if all(r["sparse_over_dense"] < 1.0 for r in wins if r["rows"] == n):
                limit = n
            else:
                break
        result[str(density)] = limit
    return result


def table(rows: list[dict], limits: dict[str, int]) -> str:
    lines = ["| shape [out, in] | density | rows | sparse us | dense us | sparse / dense |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['shape']} | {r['density']} | {r['rows']} | {r['sparse_us']} | {r['dense_us']} | "
              f"{r['sparse_over_dense']} |" for r in rows]
    lines += ["", "| density | largest row count where sparse won on every shape |", "|---|---|"]
    lines += [f"| {d} | {n} |" for d, n in limits.items()]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one shape, half the row counts")
    ap.add_argument("--docs", action="store_true", help="print the markdown table")
    args = ap.parse_args()
    rows = measure(args.quick)
    limits = break_even(rows)
    path = save("matmul_choice", {"rows": rows, "break_even_rows": limits})
    print(path, limits)
    if args.docs:
        print(table(rows, limits))


if __name__ == "__main__":
    main()
