"""Which single-threaded sgemm the compiled kernels call: numpy's own OpenBLAS where it can be found,
else scipy's (``import_sgemm`` in _kernel_common.h reads ``ILP64_SGEMM`` once per module).

The kernels that split products over dcm's native pool (_gemm.c's gemm, the Winograd products in
_native.c, attention in _pointwise.c) call a Fortran sgemm from C, one range per call. scipy exports
one through ``scipy.linalg.cython_blas``; numpy's wheel bundles a newer OpenBLAS build (64-bit
integers, the symbol ``scipy_sgemm_64_``), which took 0.75-0.95 of the time of scipy's on the zoo's
products, one thread (128x256 @ 256x50257, GPT-2's output layer: 27.2 against 35.2 ms; 1024^3: 13.6
against 14.3; 128x256 @ 256x1024: 0.46 against 0.51). Its address is found here through ctypes in the
library numpy itself loaded (so the handle is numpy's own); ``DCM_SCIPY_SGEMM=1`` keeps scipy's.
Either library is held at one thread by the session (blas.py), so the calls from the pool's threads
never start threads of their own.
"""
from __future__ import annotations

import ctypes
import glob
import os

import numpy as np

SYMBOLS = ("scipy_sgemm_64_", "sgemm_64_")  # numpy 2.x wheels, then the older openblas64_ builds


def numpy_sgemm() -> int:
    """The address of the 64-bit-integer sgemm in the OpenBLAS numpy's wheel bundles, or 0 (a numpy
    built against another BLAS, another platform's layout)."""
    libs = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libs, "*openblas64*"))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in SYMBOLS:
            fn = getattr(lib, name, None)
            if fn is not None:
                return ctypes.cast(fn, ctypes.c_void_p).value or 0
    return 0


ILP64_SGEMM = 0 if os.environ.get("DCM_SCIPY_SGEMM") == "1" else numpy_sgemm()
