"""The BLAS thread pool under a session's ``threads``, and dense products split across them.

Dense layers run on numpy's BLAS (OpenBLAS in the numpy wheel), whose pool ignores the session's
own thread count. Its workers spin while they wait: with another process busy on a 2-core machine,
a 70%-pruned ResNet-18 with ``threads=1`` took 100 ms against 47 ms with ``OPENBLAS_NUM_THREADS=1``.
And OpenBLAS splits each product into one fixed share per thread, then waits for all of them: when
the machine is busy and one of its threads is off the core, every product waits for the scheduler
to bring it back. At load average 18 on 2 cores a 128x256 @ 256x1024 product took 0.46 ms on one
OpenBLAS thread and 32-60 ms on two (onnxruntime, whose threads take work as they come free: 0.40).

So a session keeps every BLAS library at one thread (one C call per library before each run, about
2 us; skipping it when the count looks unchanged would go wrong after code outside the session,
threadpoolctl's context managers included, changes it), and the kernels' products go through
``matmul``, which spreads the large float32 ones over the session's threads with the compiled
``gemm`` (_gemm.c): chunks (whole products of a stack, else rows or columns) of single-threaded
sgemm calls that the native pool's threads, the caller included, share out as they come free. A thread
off the core then costs at most the one chunk it holds, and a hand-off costs microseconds where a
Python thread's cost 15-100 us. The BLAS count stays set after the run: numpy code outside the
session sees it too.
"""
from __future__ import annotations

import math
import os
from functools import cache

import numpy as np

from dcm.runtime.cpu import native

# Below this many multiply-adds (about 4 us on one core) a product runs on one thread: the native
# hand-off costs about as much as a second thread saves. Measured on 2 cores (min of interleaved
# calls, load average 5 from other processes): 2 threads took 0.78 of one thread's time at 0.26M
# multiply-adds (16x64 @ 64x256 on the packed kernel, 4.5 us), 0.66 at 2M, 0.59-0.73 at 8-34M
# (benchmarks/gemm.py). One thread keeps numpy's own call (its OpenBLAS is 0.3.31 in numpy's wheel,
# scipy's 0.3.30): the native gemm on one thread took 0.91-1.20 of its time on the zoo's shapes.
SPLIT_MIN_MACS = 1 << 18


@cache
def _controllers() -> tuple:
    """threadpoolctl's handles on the BLAS libraries numpy and scipy loaded (found once per process:
    the scan of loaded libraries takes milliseconds). Empty without threadpoolctl."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return ()
    import scipy.linalg  # noqa: F401  (scipy's own BLAS, loaded now so that it is found too)

    return tuple(c for c in ThreadpoolController().lib_controllers if c.user_api == "blas")


def cores() -> int:
    """The cores this process may run on: a session's default ``threads``. Its CPU affinity where
    the system has one (a container or ``taskset`` may allow fewer than the machine has; a pool
    larger than that only makes threads wait for each other), else every core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def limit(threads: int = 1) -> None:
    """Give every loaded BLAS library a pool of ``threads`` (a session: 1, see above)."""
    for c in _controllers():
        c.set_num_threads(threads)


# OpenBLAS's names (threadpoolctl's "architecture") of the cores whose kernels use AVX-512.
AVX512_CORES = frozenset({"skylakex", "cooperlake", "sapphirerapids"})


def runs_avx2_only() -> bool:
    """Whether every loaded OpenBLAS runs kernels without AVX-512 while dcm's packed GEMM runs its
    AVX-512 path. OpenBLAS picks its kernels by the CPUs it knows and takes a newer one for an older
    core: a 2-core Zen 5 ran numpy's and scipy's OpenBLAS as a Haswell (AVX2), at about half the speed
    of the packed GEMM, so ``matmul.WeightMatmul.left`` then takes the packed GEMM. The packed GEMM's
    path is asked on every call (``set_simd`` may switch it off after load)."""
    return native.packed_simd is not None and native.packed_simd() == "avx512" and _blas_avx2_only()


@cache
def _blas_avx2_only() -> bool:
    """Whether threadpoolctl found OpenBLAS loaded and none of it on AVX-512 kernels (once per process)."""
    cores = [str(getattr(c, "architecture", "") or "").lower() for c in _controllers()]
    return bool(cores) and not any(core in AVX512_CORES for core in cores)


def current() -> list[int]:
    """The pool size of each loaded BLAS library (tests, ``dcm bench``)."""
    return [c.get_num_threads() for c in _controllers()]


def matmul(a: np.ndarray, b: np.ndarray, threads: int, out: np.ndarray | None = None) -> np.ndarray:
    """``np.matmul(a, b, out=out)`` on up to ``threads`` threads (see the module's docstring): a float32
    product of at least ``SPLIT_MIN_MACS`` multiply-adds on the native gemm, anything else (one thread,
    other types, vectors, small products) as one numpy call. A product of one row or one column is a
    vector too: numpy's call is OpenBLAS's matrix-vector kernel, where the native gemm's sgemm on half
    of it took twice numpy's one-thread time on two threads (1 x 1280 @ 1280 x 1000, MobileNetV2's
    classifier: 87 against 183 us; 1000 x 1280 @ 1280 x 1 80 against 159; from 2 rows the split wins:
    0.53-0.76 of numpy's time)."""
    if (threads < 2 or native.gemm is None or a.ndim < 2 or b.ndim < 2 or a.dtype != np.float32
            or b.dtype != np.float32 or (out is not None and out.dtype != np.float32)):
        return np.matmul(a, b, out=out)
    lead = a.shape[:-2] if a.shape[:-2] == b.shape[:-2] else np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    (m, k), n = a.shape[-2:], b.shape[-1]
    if m == 1 or n == 1 or math.prod(lead) * m * k * n < SPLIT_MIN_MACS:
        return np.matmul(a, b, out=out)
    if out is None:
        out = np.empty(lead + (m, n), np.float32)
    try:
        native.gemm(np.broadcast_to(a, lead + a.shape[-2:]), np.broadcast_to(b, lead + b.shape[-2:]), out, threads)
    except ValueError:  # strides sgemm cannot read, out overlapping an input, or shapes numpy reports
        np.matmul(a, b, out=out)
    return out
