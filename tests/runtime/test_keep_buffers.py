"""dcm/runtime/cpu/memory.py: freed large buffers stay in the process (glibc), an unknown setting of
DCM_KEEP_BUFFERS is refused, and a process with it off keeps glibc's policy; while a session runs numpy
allocates from the arena (_arena.c: the most recently freed large buffer first, on a cache line); the
kernels' load-time weights start on a cache line (``aligned``)."""
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


arena = memory.buffer_arena()
needs_arena = pytest.mark.skipif(arena is None, reason="built without _arena.c or DCM_KEEP_BUFFERS=0")


@needs_arena
def test_the_arena_serves_a_run_and_hands_numpy_back():
    from dcm.runtime import InferenceSession
    from tests.runtime.test_memory import _conv

    sess = InferenceSession(_conv(8), kernels="dense")
    x = np.ones((1, 8, 96, 96), np.float32)  # 288 KiB activations: over LARGE_BYTES
    sess.run(None, {"x": x})
    before = arena.stats()
    (y,) = sess.run(None, {"x": x})
    after = arena.stats()
    assert np.core.multiarray.get_handler_name(y) == "dcm_arena" and y.ctypes.data % 64 == 0
    assert after["reused"] > before["reused"]  # the last run's buffers, not new ones
    assert np.core.multiarray.get_handler_name() != "dcm_arena"  # numpy's own allocator outside runs
    np.testing.assert_allclose(y, InferenceSession(_conv(8), kernels="dense").run(None, {"x": x})[0])


@needs_arena
def test_arena_blocks_are_zeroed_resized_and_freed_as_numpy_expects():
    previous = arena.use()
    try:
        a = np.empty(1 << 18, np.float32)
        a[...] = 7  # a dirty block, freed into its class's list...
        del a
        z = np.zeros(1 << 18, np.float32)  # ...and served again: calloc must clear it
        assert not z.any() and z.ctypes.data % 64 == 0
        r = np.arange(1 << 17, dtype=np.float32)
        r.resize(3 << 17, refcheck=False)  # realloc past the block's class: moved, contents kept, rest zeroed
        np.testing.assert_array_equal(r[: 1 << 17], np.arange(1 << 17, dtype=np.float32))
        assert not r[1 << 17 :].any()
        r.resize(100, refcheck=False)  # shrunk below LARGE_BYTES: a small block
        np.testing.assert_array_equal(r, np.arange(100, dtype=np.float32))
        small = np.arange(10, dtype=np.int64)
        assert small.sum() == 45
    finally:
        arena.restore(previous)
    stats = arena.stats()
    assert stats["cached_bytes"] <= arena.CACHE_LIMIT
    kept = stats["cached_bytes"]
    assert arena.trim() == kept and arena.stats()["cached_bytes"] == 0


@needs_arena
def test_a_request_takes_the_last_freed_block_of_up_to_8x_its_size():
    """Layers of different sizes take turns in one block (the most recently freed, in cache) rather than
    each size class keeping blocks of its own."""
    assert arena.REACH == 24  # classes: 3 octaves of 8
    arena.trim()  # the blocks earlier tests kept may fill the cache: then a freed block is not kept
    previous = arena.use()
    try:
        big = np.empty(1 << 18, np.float32)  # 1 MiB
        address = big.ctypes.data
        del big
        quarter = np.empty(1 << 16, np.float32)  # 256 KiB: the 1 MiB block, 4x its size
        assert quarter.ctypes.data == address
        del quarter
        sixteenth = np.empty(arena.LARGE_BYTES // 4, np.float32)  # 64 KiB: 16x, past the reach
        assert sixteenth.ctypes.data != address
        del sixteenth
    finally:
        arena.restore(previous)


@needs_arena
def test_restore_takes_only_a_handler():
    with pytest.raises(TypeError, match="use\\(\\) returned"):
        arena.restore(object())


def test_the_arena_is_off_with_keep_buffers_off(monkeypatch):
    monkeypatch.setattr(memory, "_done", None)
    monkeypatch.setenv(memory.ENV, "0")
    assert memory.buffer_arena() is None
