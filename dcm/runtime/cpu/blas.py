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
threadpoolctl's context managers included, changes it), and the kernels' large products go through
``matmul``, which spreads them over the session's threads itself: chunks (whole products of a
stack, else rows or columns) that each thread, the caller included, takes as it comes free; a chunk
no pool thread has started by the time the caller runs out of chunks is withdrawn. A thread off the
core then costs at most the one chunk it holds. ``share`` does the same for the compiled kernels'
splits (depthwise and lane convolutions, Winograd's transforms, pooling). The BLAS count stays set
after the run: numpy code outside the session sees it too.
"""
from __future__ import annotations

import itertools
import math
import os
from functools import cache
from typing import Callable

import numpy as np

# Below this many multiply-adds (about 0.5 ms on one core) handing chunks to a pool thread costs
# more than it saves: on a quiet 2-core machine a 128x256 @ 256x256 product took 0.12 ms on one
# thread and 0.22 split in two, Winograd's [16, 32, 32] @ [16, 32, 128] band 0.03 and 0.14 (which
# made a 32-channel 3x3 layer at 128x128 three times slower with threads=2); from about 32M
# multiply-adds the split gains (128x256 @ 256x1024: 0.87 of one thread's time, 512^3: 0.66).
SPLIT_MIN_MACS = 1 << 25
CHUNK_MIN = 32  # the fewest rows or columns in a chunk: narrower products run below BLAS's best speed
CHUNKS_PER_THREAD = 2  # how finely the rows are cut: a late thread leaves little undone


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


def current() -> list[int]:
    """The pool size of each loaded BLAS library (tests, ``dcm bench``)."""
    return [c.get_num_threads() for c in _controllers()]


def matmul(a: np.ndarray, b: np.ndarray, threads: int, out: np.ndarray | None = None) -> np.ndarray:
    """``np.matmul(a, b, out=out)`` on up to ``threads`` threads (see the module's docstring). A stack
    of products is cut into groups of whole products; one product along the longer of its rows and
    columns (each chunk's BLAS call packs the whole of the operand that is not cut, so the smaller
    one is the one read again). One plain call when the work is small."""
    if threads < 2 or a.ndim < 2 or b.ndim < 2:
        return np.matmul(a, b, out=out)
    lead = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    (m, k), n = a.shape[-2:], b.shape[-1]
    count = math.prod(lead)
    if count * m * k * n < SPLIT_MIN_MACS or (count == 1 and max(m, n) < 2 * CHUNK_MIN):
        return np.matmul(a, b, out=out)
    if out is None:
        out = np.empty(lead + (m, n), np.result_type(a, b))
    if count > 1:
        a, b = np.broadcast_to(a, lead + a.shape[-2:]), np.broadcast_to(b, lead + b.shape[-2:])
        items = list(np.ndindex(*lead))

        def product(lo: int, hi: int) -> None:
            for i in items[lo:hi]:
                np.matmul(a[i], b[i], out=out[i])

        share(product, count, threads)
    elif m > n:
        share(lambda lo, hi: np.matmul(a[..., lo:hi, :], b, out=out[..., lo:hi, :]), m, threads, m // CHUNK_MIN)
    else:
        share(lambda lo, hi: np.matmul(a, b[..., lo:hi], out=out[..., lo:hi]), n, threads, n // CHUNK_MIN)
    return out


def share(product: Callable[[int, int], object], count: int, threads: int, most: int | None = None,
          align: int = 1) -> None:
    """Run product(lo, hi) over [0, count) in ranges (whole multiples of ``align``, at most ``most``
    of them; by default ``CHUNKS_PER_THREAD`` per thread) that each of ``threads`` threads, the caller
    included, takes as it comes free; ranges no pool thread has started when the caller runs out are
    withdrawn, so a thread the scheduler keeps off the core delays the call by one range at most."""
    from dcm.runtime.cpu.matmul import even_ranges, thread_pool  # matmul.py imports this module

    units = -(-count // align)
    parts = max(1, min(units, threads * CHUNKS_PER_THREAD, most if most is not None else units))
    if threads < 2 or parts < 2:
        product(0, count)
        return
    cuts = [(lo * align, min(hi * align, count)) for lo, hi in even_ranges(units, parts)]
    taken = itertools.count()  # next() on it is atomic: each range goes to one thread

    def work() -> None:
        for i in taken:
            if i >= len(cuts):
                return
            product(*cuts[i])

    helpers = [thread_pool(threads).submit(work) for _ in range(threads - 1)]
    work()
    for h in helpers:
        if not h.cancel():
            h.result()
