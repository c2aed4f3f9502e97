"""Latency spread of dcm and onnxruntime while another process keeps the machine busy.

    python -m benchmarks.busy [--models resnet18,bert_4x256] [--busy 1] [--seconds 20] [--docs]

Issue 17 asks that on a machine another process keeps busy, dcm's median stay within 1.5x of its
minimum, as onnxruntime's does. This starts ``--busy`` background processes, each a single-threaded
float32 matrix-product loop (one core each), then times dcm (``threads`` 1 and 2) and onnxruntime
(``intra_op_num_threads`` 1 and 2) on zoo models at batch 1, dense weights. The configurations take
turns in blocks of half a second (``BLOCK``), so each sees the same background and none runs beside
another's spinning workers; every configuration gets ``--seconds`` of calls in all. Reports min, median, p90 and median/min per configuration. Writes benchmarks/results/busy.json;
``--docs`` also writes docs/threads.md.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from benchmarks.common import save
from benchmarks.zoo import MODELS, add_output_options, example, exported, model_names, thread_counts
from dcm.converters import ConvertOptions
from dcm.converters.onnx_in import from_onnx
from dcm.runtime import InferenceSession

DOCS = Path(__file__).parent.parent / "docs" / "threads.md"
BOUND = 1.5  # issue 17: median within 1.5x of the minimum
# One core's worth of work that never sleeps: a 256x256 float32 product (~30 us) in a loop.
SPIN = ("import os; os.environ['OPENBLAS_NUM_THREADS'] = '1'; import numpy as np\n"
        "a = np.random.default_rng(0).random((256, 256), dtype=np.float32)\n"
        "while True:\n    a @ a\n")


WHY = """## How dcm's threads behave when the cores are taken

A session keeps numpy's and scipy's BLAS (OpenBLAS) at one thread. OpenBLAS gives each of its threads
a fixed share of a product and waits for all of them, so when another process holds a core, every
product waits until the scheduler brings the missing thread back: a 128x256 @ 256x1024 product that
takes about 0.5 ms on one thread took tens of milliseconds on two. Instead, every compiled kernel
splits its own work on dcm's native pool (`dcm/runtime/cpu/_pool.c`): it cuts the work into about
four ranges per thread (rows or columns of a product, each one a single-threaded sgemm call; bands
of Winograd tiles; output rows or planes of a convolution). Each of the session's threads, the calling
one included, owns a contiguous segment of them and takes its ranges in order, so that consecutive
kernels split the same rows the same way and each thread reads what it wrote itself (MobileNetV2 on
2 threads: 4.6 -> 3.9 ms against handing out every other range); a thread out of work takes the
last ranges of the others' segments. Once every range is taken the caller waits only for ranges that
running threads hold; a worker the scheduler wakes late finds nothing left. A thread kept off
the core then costs at most the range it holds. Idle workers watch for the next job for 0.2 ms,
then sleep; a hand-off costs 2-5 us, against 15-100 us through Python threads, so ranges of a few
tens of thousands of multiply-adds are worth splitting.

A job whose caller waited on a worker for more than twice its mean range time is a stall. Where the
wait is under a tenth of the time since the last stall or back-off (a quiet machine's daemons take a
core now and then, about twice a second here), nothing changes. Otherwise the pool backs off: the
next jobs run on the caller alone for 20 ms, twice as long after each further stall that is not
noise, up to 1.28 s. So on a busy machine a session runs at about its one-thread speed, and on a
quiet one it keeps both threads (backing off at every stall kept pruned ViT-Tiny's mean run on 2
threads at 1.17x its best; now 1.05x).
"""


def start_busy(count: int) -> list[subprocess.Popen]:
    """``count`` background processes, each keeping one core busy until stopped."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return [subprocess.Popen([sys.executable, "-c", SPIN], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL) for _ in range(count)]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=10)


def stats(seconds: list[float]) -> dict[str, float]:
    t = np.asarray(seconds) * 1e3
    lo, med, p90 = float(t.min()), float(np.median(t)), float(np.percentile(t, 90))
    return {"calls": len(t), "min_ms": lo, "median_ms": med, "p90_ms": p90, "median_over_min": med / lo}


# Seconds of calls a configuration gets per turn. Whole blocks, not single calls, take turns:
# onnxruntime's workers spin for a while after each of its calls, so the call after it shares the
# cores with them on top of the background load (call by call, dcm's BERT on 2 threads had a median
# of 14.1 ms; in blocks 8.5, its one-thread median 8.7).
BLOCK = 0.5


def interleaved(runs: dict[str, Callable[[], object]], seconds: float, block: float = BLOCK) -> dict[str, list[float]]:
    """Per configuration, the seconds of each call: the configurations take turns (after one warm-up
    call each), each turn a run of calls lasting about ``block`` seconds (one call with ``block`` 0),
    until each has had about ``seconds`` of calls, and at least 10 calls."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    for fn in runs.values():
        fn()
    done = lambda t: len(t) >= 10 and sum(t) >= seconds  # noqa: E731
    while not all(done(t) for t in times.values()):
        for key, fn in runs.items():
            turn_start = time.perf_counter()
            while not done(times[key]):
                start = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - start)
                if time.perf_counter() - turn_start >= block:
                    break
    return times


def measure(name: str, thread_counts: tuple[int, ...], seconds: float) -> list[dict]:
    """One row per runtime and thread count for the dense zoo model ``name`` at batch 1."""
    import onnxruntime as ort

    _, names, onnx_bytes = exported(name, False)
    model = from_onnx(onnx_bytes, ConvertOptions(exact=True))
    feeds = example(name, 1, names)[1]
    runs: dict[tuple[str, int], Callable[[], object]] = {}
    for threads in thread_counts:
        sess = InferenceSession(model, threads=threads)
        runs["dcm", threads] = lambda sess=sess: sess.run(None, feeds)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        ort_sess = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
        runs["onnxruntime", threads] = lambda s=ort_sess: s.run(None, feeds)
    times = interleaved(runs, seconds)
    return [{"model": name, "runtime": rt, "threads": th, **stats(times[rt, th])} for rt, th in runs]


def table(rows: list[dict]) -> str:
    lines = ["| model | runtime | threads | calls | min ms | median ms | p90 ms | median/min |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['runtime']} | {r['threads']} | {r['calls']} | {r['min_ms']:.2f} | "
              f"{r['median_ms']:.2f} | {r['p90_ms']:.2f} | {r['median_over_min']:.2f} |" for r in rows]
    over = [r for r in rows if r["median_over_min"] > BOUND]
    lines += ["", f"Over issue 17's {BOUND}x bound: "
              + (", ".join(f"{r['model']} {r['runtime']} threads={r['threads']} ({r['median_over_min']:.2f})"
                           for r in over) or "none") + "."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18,bert_4x256", help="comma-separated zoo models: " + ", ".join(MODELS))
    ap.add_argument("--busy", type=int, default=1, help="background processes, one busy core each (default 1)")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds of calls per configuration (default 20)")
    add_output_options(ap, DOCS)
    args = ap.parse_args()
    names = model_names(ap, args.models)
    procs = start_busy(args.busy)
    try:
        time.sleep(1.0)  # the background loops are running before the first timed call
        load = os.getloadavg()[0]
        rows = [r for name in names for r in measure(name, thread_counts(), args.seconds)]
    finally:
        stop(procs)
    text = table(rows)
    print(text)
    print(f"wrote {save('busy', {'busy_processes': args.busy, 'rows': rows})}")
    if args.docs:
        command = " ".join(["python -m benchmarks.busy", *sys.argv[1:]])
        args.docs_path.parent.mkdir(parents=True, exist_ok=True)
        args.docs_path.write_text(
            "# Threads on a busy machine\n\n"
            f"Made by `{command}`: {args.busy} background process(es) each keeping one core busy with a "
            f"single-threaded matrix-product loop, on {os.cpu_count()} cores (load average {load:.1f} when the "
            "timing began). dcm and onnxruntime take turns, in blocks of half a second of calls, on the same dense zoo "
            "models at batch 1. "
            f"Issue 17's bound: median/min at most {BOUND}.\n\n" + text + "\n\n" + WHY)


if __name__ == "__main__":
    main()
