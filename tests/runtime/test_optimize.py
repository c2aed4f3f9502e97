"""Each graph pass of dcm/runtime/optimize.py: it fires where it should, not where it must not, and
the rewritten graph computes what the original did."""
from dataclasses import replace

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from dcm.converters import ConvertOptions  # noqa: E402
from dcm.converters.onnx_in import from_onnx  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402
from dcm.runtime.optimize import optimize  # noqa: E402


def _model(nodes, inits, shape, opset=17):
    rng = np.random.default_rng(0)
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(rng.standard_normal(v.shape).astype(np.float32) if k == "w" else v, k)
                           for k, v in inits.items()])  # "w": a random weight of that shape
    return from_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]), ConvertOptions(exact=True))


def _same_outputs(model, graph, shape):
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    want = InferenceSession(model).run(None, {"x": x})[0]
    got = InferenceSession(replace(model, nodes=graph.nodes)).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


PAD_CONV = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad"),
            helper.make_node("Conv", ["p", "w"], ["y"], name="conv", pads=[0, 1, 0, 1])]


def test_fold_pads_into_conv():
    inits = {"pads": np.array([0, 0, 1, 2, 0, 0, 1, 0], np.int64), "w": np.zeros((4, 3, 3, 3), np.float32)}
    model = _model(PAD_CONV, inits, [1, 3, 9, 9])
    graph = optimize(model, ["fold_pads"])
    assert [n.op for n in graph.nodes] == ["Conv"]
    assert graph.nodes[0].attrs["pads"] == [1, 3, 1, 1]
    assert graph.folded == {"pad": "conv"}
    assert [n.op for n in model.nodes] == ["Pad", "Conv"]  # the stored graph is untouched
    _same_outputs(model, graph, [1, 3, 9, 9])


@pytest.mark.parametrize("pads, value, mode", [
    ([0, 1, 1, 1, 0, 0, 1, 1], 0.0, "constant"),  # channel padding
    ([0, 0, 1, 1, 0, 0, 1, 1], 1.0, "constant"),  # not zeros
    ([0, 0, 1, 1, 0, 0, 1, 1], 0.0, "reflect"),
    ([0, 0, -1, 0, 0, 0, 0, 0], 0.0, "constant"),  # a crop
])
def test_fold_pads_leaves_other_pads(pads, value, mode):
    nodes = [helper.make_node("Pad", ["x", "pads", "v"], ["p"], name="pad", mode=mode),
             helper.make_node("Conv", ["p", "w"], ["y"], name="conv")]
    inits = {"pads": np.array(pads, np.int64), "v": np.array(value, np.float32),
             "w": np.zeros((4, 4, 3, 3), np.float32)}
    model = _model(nodes, inits, [1, 3, 9, 9])
    graph = optimize(model, ["fold_pads"])
    assert [n.op for n in graph.nodes] == ["Pad", "Conv"] and not graph.folded


def test_fold_pads_not_into_max_pool_or_shared_pad():
    inits = {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)}
    pool = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad"),
            helper.make_node("MaxPool", ["p"], ["y"], kernel_shape=[2, 2])]
    assert [n.op for n in optimize(_model(pool, inits, [1, 2, 6, 6]), ["fold_pads"]).nodes] == ["Pad", "MaxPool"]
    shared = [helper.make_node("Pad", ["x", "pads"], ["p"]),
              helper.make_node("Conv", ["p", "w"], ["c"]), helper.make_node("Add", ["c", "p"], ["y"])]
    inits["w"] = np.zeros((2, 2, 1, 1), np.float32)
    assert "Pad" in [n.op for n in optimize(_model(shared, inits, [1, 2, 6, 6]), ["fold_pads"]).nodes]


def test_fold_pads_into_average_pool_that_counts_padding():
    inits = {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)}
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad"),
             helper.make_node("AveragePool", ["p"], ["y"], kernel_shape=[3, 3], count_include_pad=1)]
    model = _model(nodes, inits, [1, 2, 7, 7])
    graph = optimize(model, ["fold_pads"])
    assert [n.op for n in graph.nodes] == ["AveragePool"]
    _same_outputs(model, graph, [1, 2, 7, 7])


def test_merge_transposes_composes_and_cancels():
    compose = [helper.make_node("Transpose", ["x"], ["t"], name="t1", perm=[0, 2, 1, 3]),
               helper.make_node("Transpose", ["t"], ["y"], name="t2", perm=[0, 1, 3, 2])]
    model = _model(compose, {}, [2, 3, 4, 5])
    graph = optimize(model, ["merge_transposes"])
    assert len(graph.nodes) == 1 and graph.nodes[0].attrs["perm"] == [0, 2, 3, 1]
    _same_outputs(model, graph, [2, 3, 4, 5])
    cancel = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1, 3]),
              helper.make_node("Transpose", ["t"], ["u"], perm=[0, 2, 1, 3]),
              helper.make_node("Relu", ["u"], ["y"])]
    model = _model(cancel, {}, [2, 3, 4, 5])
    graph = optimize(model, ["merge_transposes"])
    assert [n.op for n in graph.nodes] == ["Relu"] and graph.nodes[0].inputs == ["x"]
    _same_outputs(model, graph, [2, 3, 4, 5])


def test_collapse_reshapes_skips_the_views_before_a_fixed_reshape():
    chain = [helper.make_node("Flatten", ["x"], ["f"], name="flat", axis=2),
             helper.make_node("Unsqueeze", ["f", "ax"], ["u"], name="unsq"),
             helper.make_node("Reshape", ["u", "s1"], ["r"], name="r1"),
             helper.make_node("Reshape", ["r", "s2"], ["y"], name="r2")]
    inits = {"ax": np.array([0], np.int64), "s1": np.array([0, 6, 4], np.int64), "s2": np.array([4, -1], np.int64)}
    model = _model(chain, inits, [2, 3, 4])
    graph = optimize(model, ["collapse_reshapes"])
    assert [n.name for n in graph.nodes] == ["r2"] and graph.nodes[0].inputs[0] == "x"
    assert graph.folded == {"flat": "r2", "unsq": "r2", "r1": "r2"}
    _same_outputs(model, graph, [2, 3, 4])


@pytest.mark.parametrize("case", ["zero copies a dimension", "view read twice", "squeeze checks sizes"])
def test_collapse_reshapes_leaves_what_it_must(case):
    """A 0 in the target copies a dimension of the view's output (not of the chain's input); a view
    read by another node must stay; Squeeze is not a view here (it refuses an axis not of size 1)."""
    first = helper.make_node("Squeeze" if case == "squeeze checks sizes" else "Reshape", ["x", "s1"], ["r"], name="r1")
    last = helper.make_node("Reshape", ["r", "s2"], ["t"], name="r2")
    tail = (helper.make_node("Add", ["t", "r"], ["y"]) if case == "view read twice"
            else helper.make_node("Identity", ["t"], ["y"]))
    s1 = [1] if case == "squeeze checks sizes" else [4, 6]
    s2 = [0, -1] if case == "zero copies a dimension" else [4, 6]
    model = _model([first, last, tail], {"s1": np.array(s1, np.int64), "s2": np.array(s2, np.int64)},
                   [4, 1, 6] if case == "squeeze checks sizes" else [2, 3, 4])
    graph = optimize(model, ["collapse_reshapes"])
    assert "r1" in [n.name for n in graph.nodes] and not graph.folded


def test_unknown_pass_is_an_error():
    model = _model([helper.make_node("Relu", ["x"], ["y"])], {}, [1])
    with pytest.raises(ValueError, match="unknown graph pass 'nope'"):
        optimize(model, ["nope"])


def test_session_runs_the_passes_and_shows_them():
    inits = {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "w": np.zeros((4, 3, 3, 3), np.float32)}
    model = _model(PAD_CONV, inits, [1, 3, 8, 8])
    sess = InferenceSession(model)
    rows = sess.describe()
    assert [r["op"] for r in rows] == ["Conv", "Pad"] and rows[1]["folded_into"] == "conv"
    assert [r["op"] for r in InferenceSession(model, optimize=False).describe()] == ["Pad", "Conv"]
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(sess.run(None, {"x": x})[0],
                               InferenceSession(model, optimize=False).run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)
    assert [r["op"] for r in sess.profile({"x": x}, runs=1)] == ["Conv", "Pad"]


class _Gelus:
    """The GELU forms users' exports contain."""

    @staticmethod
    def erf(x):
        import torch

        return torch.nn.functional.gelu(x)

    @staticmethod
    def tanh(x):
        import torch

        return torch.nn.functional.gelu(x, approximate="tanh")

    @staticmethod
    def gelu_new(x):  # GPT-2's, as Hugging Face writes it
        import math

        import torch

        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))

    @staticmethod
    def not_gelu(x):  # erf(x / 2), not erf(x / sqrt 2)
        import torch

        return 0.5 * x * (1.0 + torch.erf(x / 2.0))


@pytest.mark.parametrize("form, fused", [("erf", "none"), ("tanh", "tanh"), ("gelu_new", "tanh"), ("not_gelu", None)])
def test_fuse_gelu(form, fused):
    torch = pytest.importorskip("torch")
    from dcm.converters.torch_in import from_torch

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(16, 16)

        def forward(self, x):
            return getattr(_Gelus, form)(self.fc(x))

    torch.manual_seed(0)
    block = Block().eval()
    model = from_torch(block, torch.zeros(2, 16), options=ConvertOptions(exact=True), exporter="torchscript")
    graph = optimize(model, ["fuse_gelu"])
    gelus = [n for n in graph.nodes if n.op == "Gelu"]
    if fused is None:
        assert not gelus and not graph.folded
        return
    assert [n.op for n in graph.nodes] == ["Gemm", "Gelu"] and gelus[0].attrs["approximate"] == fused
    x = torch.randn(5, 16) * 3
    got = InferenceSession(model).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, block(x).detach().numpy(), rtol=1e-4, atol=1e-5)
