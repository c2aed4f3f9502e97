"""Work buffers: reused across the layers of a run, private to each thread, and not kept by an idle
process when large."""
import numpy as np

from dcm.encoder import encode_raw
from dcm.format import Model, Node, ValueInfo
from dcm.runtime import InferenceSession
from dcm.runtime.cpu import windows


def _conv(channels: int) -> Model:
    w = np.random.default_rng(0).normal(size=(channels, channels, 3, 3)).astype(np.float32)
    node = Node("Conv", ["x", "w"], ["y"], {"pads": [1, 1, 1, 1]}, "conv")
    return Model([ValueInfo("x", "float32", ["n", channels, "h", "w"])], [ValueInfo("y", "float32", ["n", channels, "h", "w"])],
                 [node], {"w": encode_raw(w, "w")}, {})


def test_large_column_buffer_is_released_after_run():
    sess = InferenceSession(_conv(16))
    (y,) = sess.run(None, {"x": np.ones((1, 16, 256, 256), np.float32)})  # columns: ~38 MB
    assert y.shape == (1, 16, 256, 256)
    buf = getattr(windows._SCRATCH, "buf", None)
    assert buf is None or buf.nbytes <= windows.KEEP_SCRATCH_BYTES


def test_small_column_buffer_is_kept_for_the_next_run():
    sess = InferenceSession(_conv(8))
    sess.run(None, {"x": np.ones((1, 8, 64, 64), np.float32)})  # columns: ~1.2 MB
    buf = windows._SCRATCH.buf
    sess.run(None, {"x": np.ones((1, 8, 64, 64), np.float32)})
    assert windows._SCRATCH.buf is buf


def test_concurrent_runs_from_threads_agree():
    from concurrent.futures import ThreadPoolExecutor

    sess = InferenceSession(_conv(8), threads=2)
    xs = [np.random.default_rng(i).normal(size=(1, 8, 96, 96)).astype(np.float32) for i in range(6)]
    want = [sess.run(None, {"x": x})[0] for x in xs]
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda x: sess.run(None, {"x": x})[0], xs * 3))
    for i, y in enumerate(got):
        np.testing.assert_array_equal(y, want[i % len(xs)])
