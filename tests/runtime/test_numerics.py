"""NaN and Inf in inputs propagate as in onnxruntime running the dense model, and the runtime
never writes into the caller's arrays."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from dcm.converters import ConvertOptions, from_onnx, to_onnx  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402
from benchmarks.fuzz import _convnet, _mlp  # noqa: E402
from tests.runtime.test_kernels import DEVICES  # noqa: E402


def _reference(model, feeds):
    sess = ort.InferenceSession(to_onnx(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _poisoned(shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype(np.float32)
    flat = x[:-1].reshape(-1)  # the last sample stays finite
    flat[rng.choice(flat.size, size=3, replace=False)] = [np.nan, np.inf, -np.inf]
    x[:-1] = flat.reshape(x[:-1].shape)
    return x


MODELS = {"mlp": (_mlp, (3, 12)), "convnet": (_convnet, (2, 3, 9, 9))}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernels", ["sparse", "dense"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_nan_and_inf_propagate_like_onnxruntime(name, kernels, device):
    make, shape = MODELS[name]
    model = make()
    for seed in range(5):
        x = _poisoned(shape, seed)
        x.flags.writeable = False  # a write into the caller's array would raise
        before = x.copy()
        got = InferenceSession(model, device, kernels=kernels).run(None, {"x": x})
        want = _reference(model, {"x": x})
        np.testing.assert_array_equal(x, before)
        for g, w in zip(got, want):
            assert np.isnan(g).any()
            np.testing.assert_array_equal(np.isnan(g), np.isnan(w))  # no silent zeroing, no extra NaN
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)   # infinities match too
            assert np.isfinite(g[-1]).all()


def test_sparse_layer_does_not_drop_inf_at_a_pruned_weight():
    w = np.zeros((4, 6), np.float32)
    w[0, 0] = 1.0
    onnx_model = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 6])],
        [onnx.numpy_helper.from_array(w, "w")]), opset_imports=[onnx.helper.make_opsetid("", 17)])
    model = from_onnx(onnx_model.SerializeToString(), ConvertOptions(min_coded_elements=1))
    x = np.array([[np.inf, 1, 1, 1]], np.float32)
    (y,) = InferenceSession(model, kernels="sparse").run(None, {"x": x})
    assert y[0, 0] == np.inf and np.isnan(y[0, 1:]).all()  # inf * 1, then 0 * inf in every other column


def test_maxpool_propagates_nan_in_every_window_that_sees_it():
    """onnxruntime's MaxPool may return a NaN or skip it depending on where it sits in the window;
    dcm always propagates it (documented difference)."""
    from dcm.format import Model, Node, ValueInfo

    node = Node("MaxPool", ["x"], ["y"], {"kernel_shape": [2, 2], "strides": [2, 2]}, "pool")
    model = Model([ValueInfo("x", "float32", [1, 1, 2, 4])], [ValueInfo("y", "float32", [1, 1, 1, 2])], [node], {}, {})
    x = np.array([[[[np.nan, 1, 2, 3], [2, 3, 4, 5]]]], np.float32)
    (y,) = InferenceSession(model).run(None, {"x": x})
    assert np.isnan(y[0, 0, 0, 0]) and y[0, 0, 0, 1] == 5
