"""Keep freed activation buffers in the process instead of returning them to the OS; reuse the most
recently freed ones first while a session runs (``buffer_arena``); give the compiled kernels' packed
weights a cache line to start on (``aligned``).

glibc serves every allocation over its mmap threshold (at most 32 MiB) with a fresh mmap and unmaps
it on free, so an activation that large (EfficientNet-B0's 96 x 112 x 112 layers at batch 8: 38.5
MiB) is new memory on every run: each page faults on its first write, the kernel zeroes it, and two
threads writing one such buffer wait for each other on the process's memory map. On 2 threads
EfficientNet-B0 at batch 8 ran in 100-105 ms (median; its best run 75) against 61 with the buffers
kept, onnxruntime (whose arena keeps its buffers) 47. With ``keep_freed_buffers()`` glibc takes
every allocation from its heap and keeps up to ``TRIM_BYTES`` of freed memory for the next run, as an
arena does: the process's resident size stays at its peak instead of shrinking after each run.

It changes the process's allocator (glibc's ``mallopt``), so ``InferenceSession`` calls it only for
the CPU backend, once per process, unless ``DCM_KEEP_BUFFERS=0`` is set; elsewhere (no glibc) it does
nothing.

glibc still serves a large request from the best-fitting free chunk anywhere in its heap, so a fresh
output is often memory last touched a run earlier and gone from the caches. While a CPU session runs,
numpy allocates through ``_arena.c`` instead (``buffer_arena``): large buffers by size class, the most
recently freed first, each on a 64-byte line (the module's comment has the measurements).
``DCM_KEEP_BUFFERS=0`` turns it off as well.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from types import ModuleType

import numpy as np

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
TRIM_BYTES = 1 << 30  # freed memory at the heap's top kept for reuse before any goes back to the OS
ENV = "DCM_KEEP_BUFFERS"

_done: bool | None = None


def keep_freed_buffers() -> bool:
    """Make glibc keep freed large buffers for reuse (see the module docstring); True where it did.
    Once per process; ``DCM_KEEP_BUFFERS=0`` turns it off, any other value than 0 or 1 is an error."""
    global _done
    if _done is not None:
        return _done
    setting = os.environ.get(ENV, "1")
    if setting not in ("0", "1"):
        raise ValueError(f"{ENV}={setting!r}: use 1 (keep freed buffers, the default) or 0 (glibc's own policy)")
    _done = False
    if setting == "1" and sys.platform.startswith("linux"):
        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)  # musl has none
        if mallopt is not None:
            _done = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_BYTES))
    return _done


def buffer_arena() -> ModuleType | None:
    """The compiled arena (``_arena``: ``use()`` before a run, ``restore(previous)`` after), or None
    where it was not built or ``DCM_KEEP_BUFFERS=0`` says to keep the allocator as it is."""
    keep_freed_buffers()  # checks DCM_KEEP_BUFFERS
    if os.environ.get(ENV, "1") == "0":
        return None
    try:
        from dcm.runtime.cpu import _arena
    except ImportError:  # built without numpy's headers or a C compiler: numpy's own allocator
        return None
    return _arena


LINE = 64  # bytes: a cache line, and one AVX-512 register


def aligned(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of ``a`` whose data starts on a 64-byte boundary (a itself where it already
    is one), for the weights the compiled kernels read as vectors, made once at load. numpy's and
    Python's allocations start 16 or 48 bytes into a line as often as not, and then every vector
    load spans two lines: an LSTM's recurrent panels (256 units) took 1.59 against 0.90 ms per 100
    steps at batch 1 (1.05x at batch 8), so that the same model's time moved between sessions with
    where the allocator had put them. The packed GEMM's weights showed no difference past noise
    (<= 1.03x); they are aligned all the same, as the kernels' other weights."""
    a = np.ascontiguousarray(a)
    if a.ctypes.data % LINE == 0:
        return a
    raw = np.empty(a.nbytes + LINE, dtype=np.uint8)
    start = -raw.ctypes.data % LINE
    out = raw[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out
