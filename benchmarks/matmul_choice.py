"""Where a pruned fully connected layer's sparse kernel stops beating dense BLAS, by row count.

    python -m benchmarks.matmul_choice [--quick] [--docs]

A transformer's or an LSTM's linear layer multiplies a [rows, in] activation (rows = batch x
sequence, or time steps x batch for the input projections) by a constant W [out, in]. The compiled
sparse kernel's cost grows with rows x nnz, BLAS's with rows x out x in at a much better rate per
multiply-add, so the density up to which sparse wins depends on the row count. Times
``WeightMatmul.right`` in both modes (one thread) over densities and row counts, summarizes the
median sparse/dense ratio per density and row band, and writes benchmarks/results/matmul_choice.json
(``--docs`` prints the tables of docs/transformers.md). ``prefers_dense`` in
dcm/runtime/cpu/matmul.py holds the rule the kernels use; this benchmark is what it was read from.
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


BANDS = {"1 row": (1, 1), "2-7 rows": (2, 7), "8+ rows": (8, 1 << 30)}


def by_band(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Median sparse/dense time ratio per density and row band, over shapes and row counts: the
    figures ``SPARSE_MAX_DENSITY_FEW_ROWS`` / ``_MANY_ROWS`` in dcm/runtime/cpu/matmul.py are read from
    (sparse is kept where the median is below 1)."""
    out: dict[str, dict[str, float]] = {}
    for density in sorted({r["density"] for r in rows}):
        out[str(density)] = {band: float(np.median([r["sparse_over_dense"] for r in rows if r["density"] == density
                                                    and lo <= r["rows"] <= hi]))
                             for band, (lo, hi) in BANDS.items()}
    return out


def table(rows: list[dict], bands: dict[str, dict[str, float]]) -> str:
    lines = ["| density | " + " | ".join(f"sparse / dense, {b}" for b in BANDS) + " |", "|---" * (len(BANDS) + 1) + "|"]
    lines += [f"| {d} | " + " | ".join(f"{v[b]:.2f}" for b in BANDS) + " |" for d, v in bands.items()]
    lines += ["", "| shape [out, in] | density | rows | sparse us | dense us | sparse / dense |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['shape']} | {r['density']} | {r['rows']} | {r['sparse_us']} | {r['dense_us']} | "
              f"{r['sparse_over_dense']} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one shape, half the row counts")
    ap.add_argument("--docs", action="store_true", help="print the markdown table")
    args = ap.parse_args()
    rows = measure(args.quick)
    bands = by_band(rows)
    path = save("matmul_choice", {"rows": rows, "median_sparse_over_dense": bands})
    print(path, bands)
    if args.docs:
        print(table(rows, bands))


if __name__ == "__main__":
    main()
