"""Which stored form of a pruned layer a batch-1 product should read: CSR or CSC.

    python -m benchmarks.matvec_form

``SparseMatrix.matvec`` holds a layer as CSR (one gather-and-sum per output) and, for layers that
mostly run at batch 1, as CSC too (one scatter per input, skipping the inputs that are zero). Its
'auto' form takes CSC from two thirds zero inputs or 2M stored weights; this table is where those
limits were read. Each
layer at each fraction of zero inputs, the two forms one thread, with the weights in cache ("warm":
the call repeated) and out of it ("cold": 64 MiB written between calls, as a batch-1 run finds a
layer's weights after the layers before it). Medians of CALLS calls each; prints a table and which
form 'auto' takes; writes benchmarks/results/matvec_form.json.
"""
from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp

from benchmarks.common import cpu_model, save
from dcm.runtime.cpu import native
from dcm.runtime.cpu.matmul import WeightMatmul

# (inputs, outputs, density): classifiers (ResNet-18's, RegNetX's, MobileNetV2's), AlexNet's fc6 and fc7
LAYERS = [(400, 1000, 0.3), (512, 1000, 0.3), (1280, 1000, 0.5), (2048, 1000, 0.3), (4096, 4096, 0.09),
          (6144, 4096, 0.09), (9216, 4096, 0.09)]
ZEROS = [0.0, 0.5, 0.6, 0.75, 0.9]
CALLS = 25
# _native.c's matvec 'auto' takes CSC from this fraction of zero inputs, or from this many stored weights
CSC_FROM_ZEROS, CSC_ALWAYS_NNZ = 2 / 3, 1 << 21


def _median_us(fn, flush: np.ndarray | None) -> float:
    times = []
    for _ in range(CALLS):
        if flush is not None:
            flush[::16] += 1.0  # a line in every 64 bytes: the caches hold the flush, not the weights
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e6 * float(np.median(times))


def measure() -> list[dict]:
    rng = np.random.default_rng(0)
    flush = np.ones(16 << 20, np.float32)
    rows = []
    for inputs, outputs, density in LAYERS:
        w = sp.random(outputs, inputs, density=density, format="csr", dtype=np.float32, random_state=0)
        m = WeightMatmul("sparse", sp.csr_array(w), 1, prefer="right", vectors=True).native
        y = np.empty(outputs, np.float32)
        for zeros in ZEROS:
            x = rng.random(inputs).astype(np.float32)
            x[rng.random(inputs) < zeros] = 0
            row = {"inputs": inputs, "outputs": outputs, "density": density, "zeros": zeros}
            for form in ("csr", "csc"):
                call = lambda: m.matvec(x, y, None, False, form)  # noqa: E731 - form is this loop's
                call()
                row[f"{form}_warm_us"] = _median_us(call, None)
                row[f"{form}_cold_us"] = _median_us(call, flush)
            row["auto"] = "csc" if int((x == 0).sum()) > CSC_FROM_ZEROS * inputs or w.nnz >= CSC_ALWAYS_NNZ else "csr"
            rows.append(row)
            print(f"[{outputs}, {inputs}] at {density:.0%}, {zeros:.0%} zero inputs: CSR {row['csr_warm_us']:.0f} / "
                  f"{row['csr_cold_us']:.0f} us, CSC {row['csc_warm_us']:.0f} / {row['csc_cold_us']:.0f} us (warm / cold)"
                  f" -> auto: {row['auto']}", flush=True)
    return rows


def main() -> None:
    if native.SparseMatrix is None:
        raise SystemExit("matvec_form: the compiled kernels are not built (pip install -e . builds them)")
    rows = measure()
    right = sum((r["auto"] == "csc") == (r["csc_cold_us"] < r["csr_cold_us"]) for r in rows)
    print(f"'auto' takes the faster form with the weights out of cache in {right} of {len(rows)} cases")
    print("wrote", save("matvec_form", {"cpu": cpu_model(), "rows": rows}))


if __name__ == "__main__":
    main()
