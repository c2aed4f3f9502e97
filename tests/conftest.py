import numpy as np
import pytest

from dcm.encoder import encode_raw, encode_tensor
from dcm.format import Model, Node, ValueInfo, to_bytes


def small_model() -> Model:
    """A 2-layer MLP holding every tensor encoding."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(16, 12)).astype(np.float32)
    w1[np.abs(w1) < 1.0] = 0
    w2 = rng.normal(size=(4, 16)).astype(np.float32)
    w3 = rng.normal(size=(4, 4)).astype(np.float32)
    w3[0, 0] = 0
    tensors = {
        "w1": encode_tensor(w1, code_bits=3, index_bits=2, name="w1"),
        "b1": encode_raw(rng.normal(size=16).astype(np.float32), "b1"),
        "w2": encode_tensor(w2, code_bits=4, name="w2"),
        "w3": encode_tensor(w3, quantize=False, index_bits=3, name="w3"),
    }
    nodes = [Node("Gemm", ["x", "w1", "b1"], ["h"], {"transB": 1}, "fc1"),
             Node("Relu", ["h"], ["r"], {}, "relu"),
             Node("Gemm", ["r", "w2"], ["y0"], {"transB": 1}, "fc2"),
             Node("Gemm", ["y0", "w3"], ["y"], {"transB": 1}, "fc3")]
    return Model([ValueInfo("x", "float32", ["batch", 12])], [ValueInfo("y", "float32", ["batch", 4])],
                 nodes, tensors, {"producer": "tests"})


@pytest.fixture
def model() -> Model:
    return small_model()


@pytest.fixture
def model_bytes() -> bytes:
    return to_bytes(small_model())
