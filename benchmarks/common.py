"""Helpers shared by the benchmarks: timing, pruned reference models, the onnxruntime reference, the
numpy paths, result files."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Callable, Iterable
from unittest import mock

import numpy as np

RESULTS = Path(__file__).parent / "results"


def timeit(fn: Callable[[], object], min_time: float = 0.5, max_reps: int = 200, warm: bool = False) -> float:
    """Median seconds per call after one warm-up call (none when the caller has ``warm``ed it up
    already), over at least 3 calls or ``min_time``."""
    if not warm:
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def timeit_in_turns(fns: list[Callable[[], object]], rounds: int = 3, min_time: float = 0.6,
                    pause: float = 0.2) -> list[float]:
    """Median seconds per call of each (warmed-up) function, timed in turns: ``rounds`` blocks of
    ``min_time / rounds`` seconds each, a pause before each block so that a thread pool that spins
    after its runs (onnxruntime's) is idle again. A drift of the machine's load falls on every
    function alike, where back-to-back windows gave one of them the quiet moment: MobileNetV2 at
    batch 8 read onnxruntime at 38.6 ms in one run of the zoo and 49.8 in another."""
    times: list[list[float]] = [[] for _ in fns]
    for done in range(1, rounds + 1):
        for fn, own in zip(fns, times):
            time.sleep(pause)
            start = time.perf_counter()
            while len(own) < 3 * done or time.perf_counter() - start < min_time / rounds:
                t = time.perf_counter()
                fn()
                own.append(time.perf_counter() - t)
    return [float(np.median(t)) for t in times]


def onnxruntime_session(model: bytes | str, threads: int = 1, optimize: bool = True):
    """onnxruntime on the CPU with ``threads`` intra-op threads, the reference each benchmark times dcm
    against on the same thread budget; ``optimize=False`` turns its graph optimizations off."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def compiled_off(names: Iterable[str]):
    """A context in which the named compiled kernels of ``dcm.runtime.cpu.native`` are None: sessions
    made and run inside take the numpy paths (kernels read them at load or at each call), the paths a
    build without a C compiler runs."""
    from dcm.runtime.cpu import native

    return mock.patch.multiple(native, **dict.fromkeys(names))


def prune_module(module, density: dict[str, float], seed: int = 0) -> None:
    """Keep the largest-magnitude ``density`` fraction of each named layer's weights (paper Tables 2-5)."""
    import torch

    from dcm.encoder.prune import mask_by_sparsity

    torch.manual_seed(seed)
    layers = dict(module.named_modules())
    with torch.no_grad():
        for name, d in density.items():
            w = layers[name].weight
            keep = mask_by_sparsity(w.numpy(), 1.0 - d)
            w.mul_(torch.from_numpy(keep).to(w.dtype))


def cpu_model() -> str:
    """The CPU's name as Linux reports it ("model name" in /proc/cpuinfo), with the widest vector
    extension it has of those dcm's kernels use (AVX-512, AVX2), else platform's guess: the ratios to
    onnxruntime move with both (dcm's products, channels-last regions and strided direct kernels run
    only with AVX-512; OpenBLAS runs its AVX2 kernels on CPUs it does not recognize, onnxruntime's MLAS
    its AVX-512 ones)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    flags = next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), set())
    if not names:
        return platform.processor() or platform.machine()
    simd = "AVX-512" if "avx512f" in flags else "AVX2, no AVX-512" if "avx2" in flags else "no AVX2"
    return f"{names[0]} ({simd})"


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"machine": {"cpu": cpu_model(), "python": platform.python_version(),
                           "cores": os.cpu_count(), "load_average": round(os.getloadavg()[0], 1)},
               **payload}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


def replace_between(path: Path, start_marker: str, end_marker: str, text: str) -> None:
    """Rewrite the part of a docs page between two marker lines with ``text`` (the markers stay), so
    a benchmark refreshes its own table and leaves the prose around it alone."""
    doc = path.read_text()
    start, end = doc.index(start_marker) + len(start_marker), doc.index(end_marker)
    path.write_text(doc[:start] + "\n" + text + "\n" + doc[end:])
