"""Where a pruned layer of few inputs or few outputs is faster on its dense form than on the sparse kernel.

    python -m benchmarks.narrow_matmul

The batched sparse kernel transposes every input row into its panels and every output out of its
tiles, so a W with few multiply-adds per packed input value (outputs x density) or few inputs spends
its time there: the MLP layers of ConvNeXt-style nets and the 1x1
expansions of MobileNet-style ones. Times ``WeightMatmul.fused_right`` (bias and ReLU fused) on the
sparse form and on the dense one (the packed kernel where the CPU has it), the two taking turns call
by call, at 1 and 2 threads, and prints which one ``prefers_dense`` picks. The limits
``SPARSE_MIN_OUTPUT_WEIGHTS`` and ``SPARSE_MIN_INPUTS`` in
dcm/runtime/cpu/matmul.py were read from this table. Writes benchmarks/results/narrow_matmul.json.
"""
from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp

from benchmarks.common import save
from dcm.runtime.cpu import blas, memory
from dcm.runtime.cpu.matmul import WeightMatmul, prefers_dense

# (rows, inputs, outputs): ConvNeXt-atto's MLP layers per stage, MobileNet-style 1x1 layers, two
# transformer layers for contrast
LAYERS = [(3136, 40, 160), (3136, 160, 40), (784, 80, 320), (784, 320, 80), (196, 160, 640), (49, 320, 1280),
          (12544, 32, 96), (3136, 64, 128), (197, 192, 576), (128, 256, 1024)]
DENSITIES = [0.2, 0.25, 0.3]
CALLS = 60


def _interleaved(fns: list) -> list[float]:
    """The least time of each function over CALLS rounds, the functions taking turns call by call."""
    best = [float("inf")] * len(fns)
    for _ in range(CALLS):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def measure() -> list[dict]:
    memory.keep_freed_buffers()
    blas.limit(1)
    rng = np.random.default_rng(0)
    rows = []
    for n, inputs, outputs in LAYERS:
        for density in DENSITIES:
            w = rng.standard_normal((outputs, inputs)).astype(np.float32)
            w[rng.random(w.shape) > density] = 0
            x = rng.standard_normal((n, inputs)).astype(np.float32)
            bias = np.zeros(outputs, np.float32)
            for threads in (1, 2):
                sparse = WeightMatmul("sparse", sp.csr_array(w), threads, prefer="right")
                dense = WeightMatmul("dense", w, threads, prefer="right")
                for mm in (sparse, dense):
                    mm.fused_right(x, bias, True)  # warm: panels, packed copies
                t_sparse, t_dense = _interleaved([lambda: sparse.fused_right(x, bias, True),
                                                  lambda: dense.fused_right(x, bias, True)])
                kept = float(np.count_nonzero(w)) / w.size
                rows.append({"rows": n, "inputs": inputs, "outputs": outputs, "density": round(kept, 3),
                             "threads": threads, "sparse_ms": 1e3 * t_sparse, "dense_ms": 1e3 * t_dense,
                             "per_input": outputs * kept, "per_output": inputs * kept,
                             "rule": "dense" if prefers_dense(kept, n, w.size, inputs, outputs) else "sparse"})
                r = rows[-1]
                print(f"[{outputs}, {inputs}] x {n} rows, {kept:.0%}, {threads} thread(s): sparse {r['sparse_ms']:.3f} "
                      f"dense {r['dense_ms']:.3f} ms ({r['per_input']:.1f} per input, {r['per_output']:.1f} per output)"
                      f" -> rule: {r['rule']}", flush=True)
    return rows


def main() -> None:
    rows = measure()
    right = sum((r["rule"] == "dense") == (r["dense_ms"] < r["sparse_ms"]) for r in rows)
    lost = [max(r["sparse_ms"], r["dense_ms"]) / min(r["sparse_ms"], r["dense_ms"]) - 1 for r in rows
            if (r["rule"] == "dense") != (r["dense_ms"] < r["sparse_ms"])]
    print(f"the rule picks the faster form in {right} of {len(rows)}; where it does not, the other is faster by "
          f"{max(lost, default=0):.0%} at most")
    print(f"wrote {save('narrow_matmul', {'layers': rows})}")


if __name__ == "__main__":
    main()
