"""Work buffers: reused across the layers of a run, private to each thread, and not kept by an idle
process when large; and runs from several threads at once agree (the compiled kernels release the
GIL and share their weights)."""
import numpy as np
import pytest

from dcm.encoder import encode_raw
from dcm.format import Model, Node, ValueInfo
from dcm.runtime import InferenceSession
from dcm.runtime.cpu import windows


def _conv(channels: int, kernel: int = 3) -> Model:
    w = np.random.default_rng(0).normal(size=(channels, channels, kernel, kernel)).astype(np.float32)
    node = Node("Conv", ["x", "w"], ["y"], {"pads": [kernel // 2] * 4}, "conv")
    return Model([ValueInfo("x", "float32", ["n", channels, "h", "w"])], [ValueInfo("y", "float32", ["n", channels, "h", "w"])],
                 [node], {"w": encode_raw(w, "w")}, {})


def _fc(rows: int = 300, cols: int = 784) -> Model:
    rng = np.random.default_rng(1)
    w = (rng.normal(size=(rows, cols)) * (rng.random((rows, cols)) < 0.1)).astype(np.float32)
    node = Node("Gemm", ["x", "w"], ["y"], {"transB": 1}, "fc")
    return Model([ValueInfo("x", "float32", ["n", cols])], [ValueInfo("y", "float32", ["n", rows])],
                 [node], {"w": encode_raw(w, "w")}, {})


def test_large_column_buffer_is_released_after_run():
    # 5x5: im2col (direct, lanes and Winograd need no columns; lanes takes 3x3 layers of 24 channels)
    sess = InferenceSession(_conv(24, 5), kernels="dense")
    (y,) = sess.run(None, {"x": np.ones((1, 24, 256, 256), np.float32)})  # columns: ~157 MB
    assert y.shape == (1, 24, 256, 256)
    buf = getattr(windows._SCRATCH, "buf", None)
    assert buf is None or buf.nbytes <= windows.KEEP_SCRATCH_BYTES


def test_small_column_buffer_is_kept_for_the_next_run():
    sess = InferenceSession(_conv(24, 5), kernels="dense")  # 600 taps per output: im2col, not lanes
    sess.run(None, {"x": np.ones((1, 24, 64, 64), np.float32)})  # columns: ~9.8 MB
    buf = windows._SCRATCH.buf
    assert buf is not None and buf.nbytes >= 24 * 25 * 64 * 64 * 4
    sess.run(None, {"x": np.ones((1, 24, 64, 64), np.float32)})
    assert windows._SCRATCH.buf is buf


@pytest.mark.parametrize("model, shape, kernels", [
    ("conv", (1, 8, 96, 96), "dense"),  # the compiled lanes kernel (72 taps per output)
    ("conv", (1, 8, 96, 96), None),  # the direct sparse convolution
    ("conv", (2, 8, 40, 40), None),
    ("fc", (1, 784), None),  # the batch-1 sparse matvec
    ("fc", (5, 784), None),  # the batched sparse product
])
def test_concurrent_runs_from_threads_agree(model, shape, kernels):
    from concurrent.futures import ThreadPoolExecutor

    sess = InferenceSession(_conv(8) if model == "conv" else _fc(), threads=2, kernels=kernels)
    xs = [np.random.default_rng(i).normal(size=shape).astype(np.float32) for i in range(6)]
    want = [sess.run(None, {"x": x})[0] for x in xs]
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda x: sess.run(None, {"x": x})[0], xs * 3))
    for i, y in enumerate(got):
        np.testing.assert_array_equal(y, want[i % len(xs)])
