"""dcm/runtime/cpu/memory.py: freed large buffers stay in the process (glibc), an unknown setting of
DCM_KEEP_BUFFERS is refused, and a process with it off keeps glibc's policy; the kernels' load-time
weights start on a cache line (``aligned``)."""
import os
import subprocess
import sys

import numpy as np
import pytest

from dcm.runtime.cpu import matmul, memory, native, nhwc, pointconv, winograd
from dcm.runtime.cpu.recurrent import _panels

# A child process: the setting is once per process.
CHILD = """
import time, numpy as np
from dcm.runtime.cpu.memory import keep_freed_buffers
kept = keep_freed_buffers()
def faults():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
np.empty(48 << 20, np.uint8)[::4096] = 1  # a 48 MiB buffer, over glibc's largest mmap threshold
before = faults()
for _ in range(5):
    np.empty(48 << 20, np.uint8)[::4096] = 1  # freed and allocated again
print(kept, faults() - before)
"""


def _child(setting: str | None) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if k != memory.ENV}
    if setting is not None:
        env[memory.ENV] = setting
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True).stdout
    kept, faults = out.split()
    return kept == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_large_buffers_are_reused_without_page_faults():
    kept, faults = _child(None)
    if not kept:
        pytest.skip("this libc has no mallopt (not glibc)")
    assert faults < 20  # each buffer is the last one's memory, its pages already there
    off, faults_off = _child("0")
    assert not off and faults_off >= 5 * 24  # a fresh mmap each time: 24 huge pages or 12288 small ones


def test_an_unknown_setting_is_an_error(monkeypatch):
    monkeypatch.setattr(memory, "_done", None)
    monkeypatch.setenv(memory.ENV, "yes")
    with pytest.raises(ValueError, match="DCM_KEEP_BUFFERS='yes'"):
        memory.keep_freed_buffers()


def _off_line(a: np.ndarray, offset: int) -> np.ndarray:
    """A copy of a whose data starts offset bytes into a 64-byte line."""
    raw = np.empty(a.nbytes + 128, np.uint8)
    start = -raw.ctypes.data % 64 + offset
    out = raw[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


@pytest.mark.parametrize("offset", [0, 16, 48])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_aligned_copies_only_what_is_off_a_line(offset, dtype):
    a = _off_line(np.arange(6 * 7, dtype=dtype).reshape(6, 7), offset)
    b = memory.aligned(a)
    assert b.ctypes.data % 64 == 0 and b.flags.c_contiguous and b.dtype == dtype
    np.testing.assert_array_equal(b, a)
    assert (b is a) == (offset == 0)
    t = memory.aligned(a.T)  # a strided view: a contiguous aligned copy
    assert t.ctypes.data % 64 == 0 and t.flags.c_contiguous
    np.testing.assert_array_equal(t, a.T)


WEIGHTS = {
    "recurrent panels": lambda w: _panels(w[:80, :20], 4)["rt"],
    "pointconv": lambda w: pointconv.pack(w[:20, :9]),
    "channels-last window": lambda w: nhwc._window_weight(w[:24, :18].reshape(24, 2, 3, 3), 2),
    "winograd": lambda w: winograd.transform_weight(w[:8, :18].reshape(8, 2, 3, 3)),
    "packed GEMM": lambda w: matmul._packed(np.ascontiguousarray(w[:30, :40].T)),
}


@pytest.mark.parametrize("make", WEIGHTS.values(), ids=WEIGHTS.keys())
def test_load_time_weights_start_on_a_line(make):
    w = np.random.default_rng(0).standard_normal((100, 40)).astype(np.float32)
    packed = make(w)
    if packed is None:  # the packed GEMM runs on AVX-512 only
        assert native.gemm_packed is None or native.packed_simd() != "avx512"
        return
    assert packed.ctypes.data % 64 == 0
