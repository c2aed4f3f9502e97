"""Graphs with hundreds of tensors (ResNet-50-size) convert and load, with costs linear in the
number of layers."""
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from dcm import zoo  # noqa: E402
from dcm.converters import ConvertOptions, from_onnx, from_torch  # noqa: E402
from dcm.format import read, to_bytes  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402


def test_resnet50_graph_converts_loads_and_matches_torch():
    torch.manual_seed(0)
    net = zoo.resnet50(num_classes=10, base=8).eval()  # the full ResNet-50 graph, 1/8 of the width
    x = torch.randn(2, 3, 64, 64)
    # TorchScript: its graph keeps the 53 BatchNormalizations for dcm's converter to fold (the dynamo
    # exporter folds them itself)
    model = from_torch(net, x, options=ConvertOptions(exact=True, min_coded_elements=1), exporter="torchscript")
    data = to_bytes(model)
    assert len(read(data).tensors) >= 100
    assert sum(n.op == "Conv" for n in model.nodes) == 53
    assert not any(n.op == "BatchNormalization" for n in model.nodes)  # all 53 folded
    (y,) = InferenceSession(data).run(None, {"input": x.numpy()})
    np.testing.assert_allclose(y, net(x).detach().numpy(), rtol=1e-3, atol=1e-4)


def _chain(blocks: int) -> bytes:
    """Conv + BatchNorm + Relu (+ Identity) repeated: the node patterns of a deep CNN."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(blocks):
        w = rng.normal(size=(4, 4, 3, 3)).astype(np.float32)
        w[np.abs(w) < 0.7] = 0
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        for k, v in {"s": 1.0, "b": 0.0, "m": 0.1, "v": 1.0}.items():
            inits.append(numpy_helper.from_array(np.full(4, v, np.float32), f"{k}{i}"))
        nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("BatchNormalization", [f"c{i}", f"s{i}", f"b{i}", f"m{i}", f"v{i}"], [f"n{i}"]),
                  helper.make_node("Relu", [f"n{i}"], [f"r{i}"]),
                  helper.make_node("Identity", [f"r{i}"], [f"i{i}"])]
        x = f"i{i}"
    nodes.append(helper.make_node("Relu", [x], ["y"]))
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _convert_and_load(source: bytes) -> float:
    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        data = to_bytes(from_onnx(source, ConvertOptions(min_coded_elements=1)))
        InferenceSession(data).run(None, {"x": np.ones((1, 4, 8, 8), np.float32)})
        best = min(best, time.perf_counter() - t)
    return best


def test_costs_grow_linearly_with_the_number_of_layers():
    small, large = _chain(60), _chain(480)  # 300 and 2,400 tensors
    ratio = _convert_and_load(large) / _convert_and_load(small)
    assert ratio < 24, ratio  # 8x the layers: linear ~8x, quadratic ~64x
