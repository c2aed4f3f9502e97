"""The GPU backend's CPU fallback (dcm/runtime/gpu/fallback.py) and its errors: an op without a torch
kernel runs its CPU kernel on host copies, constants read at load included, and says so in
describe(); bad inputs are DcmErrors naming the node, on torch kernels and fallback alike."""
from __future__ import annotations

import inspect

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

from dcm.converters.onnx_in import ConvertOptions, from_onnx  # noqa: E402
from dcm.errors import DcmError  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402
from tests.runtime import test_hostile_shapes as hostile  # noqa: E402
from tests.runtime import test_malformed_runs as malformed  # noqa: E402
from tests.runtime.opcheck import one_node  # noqa: E402


def _sessions(model):
    m = from_onnx(model, ConvertOptions(exact=True))
    return InferenceSession(m), InferenceSession(m, device="torch-cpu")


def test_fallback_of_an_op_without_torch_kernel():
    x, y = np.array([[1, 200], [7, 255]], np.uint8), np.array([1, 3], np.uint8)
    model = one_node("BitShift", {"x": x, "y": y}, {"direction": "LEFT"}, opset=11)
    cpu, gpu = _sessions(model)
    assert gpu.describe()[0]["backend"] == "cpu-fallback"
    want, got = cpu.run(None, {"x": x, "y": y})[0], gpu.run(None, {"x": x, "y": y})[0]
    assert got.dtype == want.dtype == np.uint8 and np.array_equal(got, want)


def test_fallback_kernel_reads_its_load_time_constants(monkeypatch):
    """Slice's starts, ends, axes and steps are initializers, which the CPU kernel consumes at load
    (its weight inputs): wrapped by the fallback (in place of the torch Slice), it is built the same
    way and run with only the data fed."""
    from dcm.runtime.cpu import REGISTRY as CPU
    from dcm.runtime.gpu import open_backend
    from dcm.runtime.gpu.fallback import on_cpu

    _, gpu_registry = open_backend("cpu")
    monkeypatch.setitem(gpu_registry, "Slice", on_cpu(CPU["Slice"]))
    x = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    model = one_node("Slice", {"x": x}, opset=13, consts={
        "starts": np.array([-1, 1], np.int64), "ends": np.array([-100, 4], np.int64),
        "axes": np.array([2, 0], np.int64), "steps": np.array([-2, 1], np.int64)})
    cpu, gpu = _sessions(model)
    assert gpu.describe()[0]["backend"] == "cpu-fallback"
    assert gpu._kernels[0].weight_inputs == cpu._kernels[0].weight_inputs == (1, 2, 3, 4)
    want, got = cpu.run(None, {"x": x})[0], gpu.run(None, {"x": x})[0]
    assert got.shape == (2, 4, 3) and np.array_equal(got, want)


def test_torch_kernels_say_no_fallback():
    x = np.ones((2, 3), np.float32)
    _, gpu = _sessions(one_node("Gelu", {"x": x}, opset=20))
    assert "backend" not in gpu.describe()[0]


@pytest.mark.parametrize("op, inputs, attrs, consts, opset", [
    ("GatherElements", {"x": np.ones((2, 3), np.float32), "i": np.array([[0, 3]], np.int64)}, {"axis": 1}, {}, 13),
    ("Gather", {"x": np.ones((2, 3), np.float32), "i": np.array([[0, -3]], np.int64)}, {"axis": 0}, {}, 13),
    ("GatherND", {"x": np.ones((2, 3), np.float32), "i": np.array([[2, 0]], np.int64)}, {}, {}, 13),
    ("ScatterElements", {"x": np.ones((2, 3), np.float32), "i": np.array([[-4]], np.int64),
                         "u": np.ones((1, 1), np.float32)}, {"axis": 1}, {}, 16),
    ("ScatterND", {"x": np.ones((2, 3), np.float32), "i": np.array([[5]], np.int64),
                   "u": np.ones((1, 3), np.float32)}, {}, {}, 16),
    ("Tile", {"x": np.ones((4, 4), np.float32), "r": np.array([1 << 20, 1 << 20], np.int64)}, {}, {}, 13),
    ("Expand", {"x": np.ones((1, 1), np.float32), "s": np.array([1 << 20, 1 << 20], np.int64)}, {}, {}, 13),
    ("Div", {"a": np.ones(3, np.int32), "b": np.array([1, 0, 2], np.int32)}, {}, {}, 13),
    ("LpPool", {"x": np.ones((1, 1, 2, 2), np.float32)}, {"kernel_shape": [3, 3]}, {}, 18),  # a fallback op
    ("OneHot", {"i": np.array([0, 1], np.int64), "d": np.array(-2, np.int64), "v": np.array([0, 1], np.float32)},
     {}, {}, 11),
])
def test_run_time_errors_name_the_node(op, inputs, attrs, consts, opset):
    _, gpu = _sessions(one_node(op, inputs, attrs, opset=opset, consts=consts))
    with pytest.raises(DcmError, match=f"{op}_0"):
        gpu.run(None, inputs)


def test_load_time_errors_name_the_node():
    x = np.ones((2, 3), np.float32)
    model = from_onnx(one_node("Gelu", {"x": x}, opset=20), ConvertOptions(exact=True))
    model.nodes[0].attrs["approximate"] = "cubic"
    with pytest.raises(DcmError, match="Gelu_0"):
        InferenceSession(model, device="torch-cpu")


def _torch_session(model, *args, **kwargs):
    return InferenceSession(model, *args, device="torch-cpu", **kwargs)


@pytest.mark.parametrize("message, call", hostile.REFUSED.values(), ids=hostile.REFUSED.keys())
def test_hostile_runs_are_refused_on_the_gpu_backend(message, call, monkeypatch):
    """tests/runtime/test_hostile_shapes.py's cases, their sessions on the GPU backend."""
    monkeypatch.setattr(hostile, "InferenceSession", _torch_session)
    with pytest.raises(DcmError, match=message):
        call()


CHECKS = [(module, f) for module in (malformed, hostile) for name, f in vars(module).items()
          if name.startswith("test_") and callable(f) and not inspect.signature(f).parameters]


@pytest.mark.parametrize("module, check", CHECKS, ids=[f.__name__ for _, f in CHECKS])
def test_malformed_runs_on_the_gpu_backend(module, check, monkeypatch):
    """The checks of tests/runtime/test_malformed_runs.py and test_hostile_shapes.py that take no
    parameters, their sessions on the GPU backend."""
    monkeypatch.setattr(module, "InferenceSession", _torch_session)
    check()
