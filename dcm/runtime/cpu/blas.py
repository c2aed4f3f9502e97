"""The BLAS thread pool under a session's ``threads``.

Dense layers run on numpy's BLAS (OpenBLAS in the numpy wheel), whose pool ignores the session's
own thread count. Its workers spin while they wait: with another process busy on a 2-core machine,
a 70%-pruned ResNet-18 with ``threads=1`` took 100 ms against 47 ms with ``OPENBLAS_NUM_THREADS=1``.
So a session sets the pool of every BLAS library loaded in the process to its own count before each
run: one C call per library, about 2 us. (Skipping the call when the count looks unchanged would go
wrong after code outside the session, threadpoolctl's context managers included, changes it.) The
count stays set after the run: numpy code outside the session sees it too.
"""
from __future__ import annotations

from functools import cache


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


def limit(threads: int) -> None:
    """Give every loaded BLAS library a pool of ``threads``."""
    for c in _controllers():
        c.set_num_threads(threads)


def current() -> list[int]:
    """The pool size of each loaded BLAS library (tests, ``dcm bench``)."""
    return [c.get_num_threads() for c in _controllers()]
