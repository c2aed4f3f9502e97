"""Hostile sizes, axes and shapes fed at run time to the kernels that tests/runtime/test_malformed_runs.py
does not cover: each ends in a DcmError (or, where ONNX defines a result, that result), never another
exception, and never allocates much (tracemalloc peak under 64 MiB for inputs of a few bytes).
The models are built as .dcm graphs directly, so this runs without onnx."""
import tracemalloc

import numpy as np
import pytest

from dcm.errors import DcmError
from dcm.format import Model, Node, ValueInfo
from dcm.encoder import encode_raw
from dcm.runtime import InferenceSession

PEAK_LIMIT = 64 << 20


def _run(op: str, feeds: dict, attrs: dict | None = None, outputs: int = 1, weights: dict | None = None):
    """One node over graph inputs named as ``feeds`` (then constant ``weights``); its outputs."""
    inputs = [ValueInfo(n, str(v.dtype), list(v.shape)) for n, v in feeds.items()]
    tensors = {n: encode_raw(v, n) for n, v in (weights or {}).items()}
    outs = [f"y{i}" for i in range(outputs)]
    node = Node(op, [*feeds, *(weights or {})], outs, attrs or {}, op.lower())
    model = Model(inputs, [ValueInfo(o, "float32", ["d"]) for o in outs], [node], tensors, {})
    return InferenceSession(model, threads=1).run(None, feeds)


def f32(*shape) -> np.ndarray:
    return np.ones(shape, np.float32)


def i64(*values) -> np.ndarray:
    return np.array(values, np.int64)


EMPTY = np.zeros(0, np.float32)  # an absent optional input (Resize's roi, or scales when sizes are given)

REFUSED = {  # case: (what the message must say, the run)
    "Resize NaN scale": ("positive finite", lambda: _run(
        "Resize", {"x": f32(1, 1, 2, 2), "r": EMPTY, "s": np.array([1, 1, np.nan, 1], np.float32)})),
    "Resize huge scale": ("exceeds the limit", lambda: _run(
        "Resize", {"x": f32(1, 1, 2, 2), "r": EMPTY, "s": np.array([1, 1, 1e6, 1e6], np.float32)})),
    "Resize negative sizes": ("non-negative", lambda: _run(
        "Resize", {"x": f32(1, 1, 2, 2), "r": EMPTY, "s": EMPTY, "z": i64(1, 1, -4, 2)})),
    "ConvTranspose huge stride": ("strides", lambda: _run(
        "ConvTranspose", {"x": f32(1, 2, 4, 4)}, {"strides": [1 << 20, 1 << 20]}, weights={"w": f32(2, 3, 3, 3)})),
    "TopK k past the axis": ("outside", lambda: _run("TopK", {"x": f32(3, 4), "k": i64(99)}, outputs=2)),
    "TopK negative k": ("outside", lambda: _run("TopK", {"x": f32(3, 4), "k": i64(-1)}, outputs=2)),
    "CumSum axis out of range": ("axis 5", lambda: _run("CumSum", {"x": f32(3, 4), "a": np.array(5, np.int64)})),
    "DepthToSpace blocksize 0": ("blocksize", lambda: _run("DepthToSpace", {"x": f32(1, 4, 2, 2)}, {"blocksize": 0})),
    "SpaceToDepth blocksize not dividing": ("does not divide", lambda: _run(
        "SpaceToDepth", {"x": f32(1, 4, 2, 2)}, {"blocksize": 3})),
    "Pad by 2^30": ("exceeds the limit", lambda: _run("Pad", {"x": f32(3, 4), "p": i64(1 << 30, 1 << 30, 0, 0)})),
    "Softmax axis out of range": ("axis 7", lambda: _run("Softmax", {"x": f32(3, 4)}, {"axis": 7})),
    "ReduceSum axis out of range": ("axis 9", lambda: _run("ReduceSum", {"x": f32(3, 4), "a": i64(9)})),
    "Transpose repeated axis": ("not a permutation", lambda: _run("Transpose", {"x": f32(3, 4)}, {"perm": [0, 0]})),
    "Split sizes past the axis": ("split sizes", lambda: _run(
        "Split", {"x": f32(3, 4), "s": i64(5, -1)}, {"axis": 1}, outputs=2)),
    "LSTM weight of another hidden size": ("hidden_size", lambda: _run(
        "LSTM", {"x": f32(2, 1, 3)}, {"hidden_size": 7}, weights={"w": f32(1, 20, 3), "r": f32(1, 20, 5)})),
    "MaxPool over an empty plane": ("smaller than the kernel", lambda: _run(
        "MaxPool", {"x": f32(1, 2, 0, 4)}, {"kernel_shape": [2, 2]})),
}


@pytest.mark.parametrize("message, call", REFUSED.values(), ids=REFUSED.keys())
def test_hostile_run_is_refused_with_a_dcm_error(message, call):
    tracemalloc.start()
    try:
        with pytest.raises(DcmError, match=message):
            call()
        assert tracemalloc.get_traced_memory()[1] < PEAK_LIMIT
    finally:
        tracemalloc.stop()


def test_zero_sample_batches_run():
    """A batch of zero samples is valid: an empty output of the right shape, through the compiled
    convolution and the sparse product too."""
    w = np.zeros((3, 2, 3, 3), np.float32)
    w[0, 0, 1, 1] = 1
    (y,) = _run("Conv", {"x": f32(0, 2, 5, 5)}, weights={"w": w})
    assert y.shape == (0, 3, 3, 3)
    (y,) = _run("Gemm", {"x": f32(0, 100)}, {"transB": 1}, weights={"w": np.eye(3, 100, dtype=np.float32)})
    assert y.shape == (0, 3)
