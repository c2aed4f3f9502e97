"""Activations fused into the Conv or Gemm that feeds them (dcm/runtime/fusion.py): each fused
graph matches onnxruntime and describe() names the fusion; values with another reader, model
outputs and run-time Clip bounds are left as their own steps."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from dcm.converters import ConvertOptions, from_onnx  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402

RNG = np.random.default_rng(0)
W_CONV = RNG.standard_normal((6, 4, 3, 3)).astype(np.float32)
W_GEMM = RNG.standard_normal((5, 8)).astype(np.float32)
BIAS = RNG.standard_normal(6).astype(np.float32)


def _graph(layer, act_nodes, x_shape, inits=(), outputs=("y",), inputs=()):
    init = [numpy_helper.from_array(W_CONV, "wc"), numpy_helper.from_array(BIAS, "b"),
            numpy_helper.from_array(W_GEMM, "wg"), *inits]
    first = (helper.make_node("Conv", ["x", "wc", "b"], ["c"], pads=[1, 1, 1, 1]) if layer == "Conv"
             else helper.make_node("Gemm", ["x", "wg"], ["c"], transB=1))
    g = helper.make_graph([first, *act_nodes], "t",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape), *inputs],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], init)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])
    m.ir_version = 9
    return m


def _run(m, feeds):
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    sess = InferenceSession(from_onnx(m, ConvertOptions(exact=True)))
    got = sess.run(None, feeds)
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    return sess.describe()


def _x(layer):
    x = (RNG.standard_normal((2, 4, 7, 7) if layer == "Conv" else (3, 8)) * 3).astype(np.float32)
    x.flat[5] = np.nan
    return x


def _bounds(lo, hi):
    return [numpy_helper.from_array(np.float32(lo), "lo"), numpy_helper.from_array(np.float32(hi), "hi")]


ACTS = [
    ("Relu", [helper.make_node("Relu", ["c"], ["y"])], [], "Relu"),
    ("Clip", [helper.make_node("Clip", ["c", "lo", "hi"], ["y"])], _bounds(0, 6), "Clip"),
    ("Clip-min-only", [helper.make_node("Clip", ["c", "lo"], ["y"])], _bounds(-1, 0)[:1], "Clip"),
    ("HardSigmoid", [helper.make_node("HardSigmoid", ["c"], ["y"], alpha=0.3)], [], "HardSigmoid"),
    ("HardSwish", [helper.make_node("HardSwish", ["c"], ["y"])], [], "HardSwish"),
    ("Sigmoid", [helper.make_node("Sigmoid", ["c"], ["y"])], [], "Sigmoid"),
    ("Tanh", [helper.make_node("Tanh", ["c"], ["y"])], [], "Tanh"),
    ("LeakyRelu", [helper.make_node("LeakyRelu", ["c"], ["y"], alpha=0.1)], [], "LeakyRelu"),
    ("Gelu", [helper.make_node("Gelu", ["c"], ["y"])], [], "Gelu"),
    ("SiLU", [helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", ["c", "s"], ["y"])], [],
     "Sigmoid*Mul"),
    ("SiLU-swapped", [helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", ["s", "c"], ["y"])], [],
     "Sigmoid*Mul"),
]


@pytest.mark.parametrize("layer", ["Conv", "Gemm"])
@pytest.mark.parametrize("name, nodes, inits, fused", ACTS, ids=[a[0] for a in ACTS])
def test_fused_matches_onnxruntime(layer, name, nodes, inits, fused):
    x = _x(layer)
    d = _run(_graph(layer, nodes, list(x.shape), inits), {"x": x})
    assert d[0]["fused"] == fused
    assert all(e.get("fused_into") == d[0]["name"] for e in d[1:])


NORM_ACTS = [a for a in ACTS if a[0] in ("Relu", "Clip", "SiLU", "Tanh", "LeakyRelu")]


@pytest.mark.parametrize("name, nodes, inits, fused", NORM_ACTS, ids=[a[0] for a in NORM_ACTS])
def test_batch_norm_takes_the_activation_after_it(name, nodes, inits, fused):
    """A BatchNormalization after an Add (no Conv to fold it into: DenseNet's and pre-activation
    ResNets') applies the activation in its own pass."""
    stats = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in
             (("bn_s", RNG.standard_normal(6)), ("bn_t", RNG.standard_normal(6)), ("bn_m", RNG.standard_normal(6)),
              ("bn_v", RNG.random(6) + 0.5))]
    bn = [helper.make_node("Add", ["c", "c"], ["d"]),
          helper.make_node("BatchNormalization", ["d", "bn_s", "bn_t", "bn_m", "bn_v"], ["e"])]
    acts = [helper.make_node(n.op_type, ["e" if i == "c" else i for i in n.input], list(n.output), name=n.name,
                             **{a.name: helper.get_attribute_value(a) for a in n.attribute}) for n in nodes]
    x = _x("Conv")
    d = _run(_graph("Conv", bn + acts, list(x.shape), [*inits, *stats]), {"x": x})
    norm = next(e for e in d if e["op"] == "BatchNormalization")
    assert norm["fused"] == fused
    assert all(e.get("fused_into") == norm["name"] for e in d if e["op"] in (fused.split("*") + ["Mul"]))


def test_second_reader_keeps_the_activation_separate():
    nodes = [helper.make_node("Clip", ["c", "lo", "hi"], ["y"]), helper.make_node("Neg", ["c"], ["z"])]
    x = _x("Conv")
    d = _run(_graph("Conv", nodes, list(x.shape), _bounds(0, 6), outputs=("y", "z")), {"x": x})
    assert "fused" not in d[0] and "fused_into" not in d[1]


def test_model_output_is_not_fused_away():
    x = _x("Conv")
    d = _run(_graph("Conv", [helper.make_node("Relu", ["c"], ["y"])], list(x.shape), outputs=("y", "c")), {"x": x})
    assert "fused" not in d[0]


def test_runtime_clip_bound_is_not_fused():
    x = _x("Conv")
    hi = helper.make_tensor_value_info("hi", TensorProto.FLOAT, [])
    m = _graph("Conv", [helper.make_node("Clip", ["c", "lo", "hi"], ["y"])], list(x.shape), _bounds(0, 6)[:1],
               inputs=[hi])
    d = _run(m, {"x": x, "hi": np.array(2.5, np.float32)})
    assert "fused" not in d[0]


def test_silu_with_sigmoid_read_elsewhere_is_not_fused():
    nodes = [helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", ["c", "s"], ["y"]),
             helper.make_node("Neg", ["s"], ["z"])]
    x = _x("Conv")
    d = _run(_graph("Conv", nodes, list(x.shape), outputs=("y", "z")), {"x": x})
    assert "fused" not in d[0]


def _residual_graph(add_inputs, after, r_node, extra=(), outputs=("y",)):
    """x -> r_node -> r; Conv(x) -> c; Add(add_inputs) -> a; ``after`` nodes -> y."""
    conv = helper.make_node("Conv", ["x", "wr", "b"], ["c"], pads=[1, 1, 1, 1])
    nodes = [r_node, conv] if r_node is not None else [conv]
    nodes += [helper.make_node("Add", add_inputs, ["a" if after else "y"]), *after, *extra]
    w = RNG.standard_normal((6, 6, 3, 3)).astype(np.float32)
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6, 5, 5])],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                          [numpy_helper.from_array(w, "wr"), numpy_helper.from_array(BIAS, "b"),
                           numpy_helper.from_array(RNG.standard_normal((1, 6, 1, 1)).astype(np.float32), "bc"),
                           *_bounds(0, 6)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])
    m.ir_version = 9
    return m


def _residual_x():
    return RNG.standard_normal((2, 6, 5, 5)).astype(np.float32)


RELU = [helper.make_node("Relu", ["a"], ["y"])]


@pytest.mark.parametrize("add_inputs, after, r_node, fused", [
    (["c", "x"], RELU, None, "Add+Relu"),  # the skip is the model input
    (["r", "c"], RELU, helper.make_node("Neg", ["x"], ["r"]), "Add+Relu"),  # computed before, either order
    (["c", "r"], [], helper.make_node("Neg", ["x"], ["r"]), "Add"),  # no activation after
    (["c", "r"], [helper.make_node("Clip", ["a", "lo", "hi"], ["y"])], helper.make_node("Neg", ["x"], ["r"]),
     "Add+Clip"),
    (["c", "r"], RELU, helper.make_node("Mul", ["x", "bc"], ["r"]), "Add+Relu"),
    (["c", "r"], RELU, helper.make_node("GlobalAveragePool", ["x"], ["r"]), "Add+Relu"),  # broadcast
])
def test_residual_add_matches_onnxruntime(add_inputs, after, r_node, fused):
    d = _run(_residual_graph(add_inputs, after, r_node), {"x": _residual_x()})
    conv = next(e for e in d if e["op"] == "Conv")
    assert conv["fused"] == fused
    assert all(e.get("fused_into") == conv["name"] for e in d if e["op"] in ("Add", "Relu", "Clip"))


def test_residual_read_later_stays_alive():
    extra = [helper.make_node("Neg", ["r"], ["z"])]
    d = _run(_residual_graph(["c", "r"], RELU, helper.make_node("Neg", ["x"], ["r"]), extra, ("y", "z")),
             {"x": _residual_x()})
    assert next(e for e in d if e["op"] == "Conv")["fused"] == "Add+Relu"


def test_residual_computed_after_the_conv_is_not_fused():
    m = _residual_graph(["c", "r"], RELU, helper.make_node("Neg", ["x"], ["r"]))
    neg, conv = (type(n)() for n in m.graph.node[:2])
    neg.CopyFrom(m.graph.node[0])
    conv.CopyFrom(m.graph.node[1])
    m.graph.node[0].CopyFrom(conv)  # Conv, then Neg: r does not exist yet when the Conv runs
    m.graph.node[1].CopyFrom(neg)
    d = _run(m, {"x": _residual_x()})
    assert "fused" not in next(e for e in d if e["op"] == "Conv")  # the Add and its Relu run as their own steps


def test_large_outputs_run_the_epilogue_in_chunks(monkeypatch):
    from dcm.runtime import fusion

    monkeypatch.setattr(fusion, "CHUNK", 50)  # 2*6*7*7 = 588 values: 12 chunks, the last one short
    x = _x("Conv")
    d = _run(_graph("Conv", ACTS[9][1], list(x.shape)), {"x": x})  # SiLU: a new array per chunk
    assert d[0]["fused"] == "Sigmoid*Mul"
    d = _run(_graph("Conv", ACTS[8][1], list(x.shape)), {"x": x})  # Gelu
    assert d[0]["fused"] == "Gelu"
