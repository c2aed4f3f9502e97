"""Shape, indexing and generator ops against onnx's ReferenceEvaluator, at several opsets, in both
the attribute form (older opsets) and the input form, with the shape-like inputs constant (read at
load) and computed at run time (graph inputs); plus the errors bad indices and huge sizes give."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from dcm import InferenceSession  # noqa: E402
from dcm.converters.onnx_in import from_onnx, ConvertOptions  # noqa: E402
from dcm.errors import DcmError, ExecutionError  # noqa: E402
from dcm.format import reader, writer  # noqa: E402

RNG = np.random.default_rng(0)


def _model(op: str, inputs: dict, attrs: dict, opset: int, consts: tuple = (), n_out: int = 1):
    """One-node model: inputs named in ``consts`` are initializers, the others graph inputs."""
    names = list(inputs)
    node = helper.make_node(op, [n if inputs[n] is not None else "" for n in names],
                            [f"y{i}" for i in range(n_out)], **attrs)
    graph_inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
                    for n, v in inputs.items() if v is not None and n not in consts]
    inits = [numpy_helper.from_array(inputs[n], n) for n in consts]
    outs = [helper.make_tensor_value_info(f"y{i}", TensorProto.UNDEFINED, None) for i in range(n_out)]
    g = helper.make_graph([node], "t", graph_inputs, outs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def check(op: str, inputs: dict, attrs: dict | None = None, opset: int = 18, consts: tuple = (), n_out: int = 1):
    """dcm (through convert, write, read) equals the reference, dtype and shape included."""
    m = _model(op, inputs, attrs or {}, opset, consts, n_out)
    feeds = {n: v for n, v in inputs.items() if v is not None and n not in consts}
    want = ReferenceEvaluator(m).run(None, feeds)
    sess = InferenceSession(reader.read(writer.to_bytes(from_onnx(m, ConvertOptions(exact=True)))))
    got = sess.run(None, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        w = np.asarray(w)
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, w.shape, g.dtype, w.dtype)
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
    return sess


def i64(*v):
    return np.array(v, dtype=np.int64)


X = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)


@pytest.mark.parametrize("consts", [(), ("s",)])
@pytest.mark.parametrize("opset,shape,attrs", [(7, i64(2, 0, -1), {}), (13, i64(0, -1, 5), {}),
                                               (14, i64(6, 20), {"allowzero": 1}), (21, i64(-1), {})])
def test_reshape(consts, opset, shape, attrs):
    check("Reshape", {"x": X, "s": shape}, attrs, opset, consts)


@pytest.mark.parametrize("opset", [7, 9])
def test_slice_attributes(opset):
    check("Slice", {"x": X}, {"starts": [1, -3], "ends": [2, 1000], "axes": [0, 3]}, opset)


@pytest.mark.parametrize("consts", [(), ("b", "e", "a", "s")])
@pytest.mark.parametrize("opset", [10, 13, 28])
def test_slice_inputs(consts, opset):
    inputs = {"x": X, "b": i64(-1, 0, 3), "e": i64(-2**63, 3, 1), "a": i64(3, 1, -2), "s": i64(-2, 2, -1)}
    check("Slice", inputs, {}, opset, consts)


def test_slice_default_axes_and_steps():
    check("Slice", {"x": X, "b": i64(0, 1), "e": i64(1, 3)}, {}, 13)


@pytest.mark.parametrize("opset,attrs,split", [(7, {"axis": 1, "split": [1, 2]}, None), (13, {"axis": 1}, i64(2, 1)),
                                               (13, {"axis": -1}, None), (18, {"axis": 3, "num_outputs": 2}, None)])
def test_split(opset, attrs, split):
    n = 2 if split is not None or "split" in attrs or "num_outputs" in attrs else 5
    inputs = {"x": X} if split is None else {"x": X, "s": split}
    check("Split", inputs, attrs, opset, n_out=n)


@pytest.mark.parametrize("consts", [(), ("a",)])
def test_squeeze_unsqueeze_inputs(consts):
    x = RNG.standard_normal((1, 3, 1, 2)).astype(np.float32)
    check("Squeeze", {"x": x, "a": i64(-2, 0)}, {}, 13, consts)
    check("Unsqueeze", {"x": x, "a": i64(-1, 1)}, {}, 13, consts)
    check("Squeeze", {"x": x}, {}, 13)


@pytest.mark.parametrize("opset", [7, 11])
def test_squeeze_unsqueeze_attributes(opset):
    x = RNG.standard_normal((1, 3, 1, 2)).astype(np.float32)
    check("Squeeze", {"x": x}, {"axes": [0, 2]}, opset)
    check("Unsqueeze", {"x": x}, {"axes": [0, 5] if opset == 11 else [0, 5]}, opset)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad_attribute_form(mode):
    check("Pad", {"x": X}, {"pads": [0, 1, 0, 2, 0, 0, 1, 1], "mode": mode, "value": 1.5}, 7)


@pytest.mark.parametrize("consts", [(), ("p", "v", "a")])
@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad_input_form(consts, mode):
    inputs = {"x": X, "p": i64(2, 0, 1, 3), "v": np.array(-2.0, np.float32), "a": i64(1, -1)}
    check("Pad", inputs, {"mode": mode}, 19, consts)


def test_negative_pads_crop():
    """onnx's reference refuses negative pads (np.pad); ONNX defines them as removal."""
    sess, feeds = _session("Pad", {"x": X, "p": i64(-1, 2, 1, -3), "v": None, "a": i64(1, 3)}, {}, 18, ("p", "a"))
    want = np.pad(X[:, 1:, :, :2], [(0, 0), (0, 1), (0, 0), (2, 0)])
    np.testing.assert_array_equal(sess.run(None, feeds)[0], want)


def test_pad_opset11_int_data():
    x = RNG.integers(0, 9, (3, 4)).astype(np.int64)
    check("Pad", {"x": x, "p": i64(1, 0, 0, 2), "v": i64(7)}, {}, 11)


@pytest.mark.parametrize("consts", [(), ("s",)])
def test_expand_tile(consts):
    x = RNG.standard_normal((3, 1)).astype(np.float32)
    check("Expand", {"x": x, "s": i64(2, 1, 4)}, {}, 8, consts)
    check("Expand", {"x": x, "s": i64(1, 1)}, {}, 13, consts)
    check("Tile", {"x": x, "s": i64(2, 3)}, {}, 13, consts)


def test_expand_kept_view_is_numpys_broadcast():
    """A constant target keeps, per input shape and item size, the view's shape and strides: later calls
    give np.broadcast_to's read-only view of the same memory; a strided input, another dtype or a
    string tensor go through numpy each time."""
    from dcm.runtime.cpu.generate import Expand
    from dcm.format.model import Node

    class Ctx:
        threads = 1

        def is_const(self, name):
            return True

        def const(self, name):
            return np.array([2, 3, 1, 4], np.int64)

    kernel = Expand(Node("Expand", ["x", "s"], ["y"], {}, "e"), Ctx())
    for x in (RNG.standard_normal((3, 1, 4)).astype(np.float32), np.arange(12, dtype=np.int8).reshape(3, 1, 4),
              RNG.standard_normal((3, 1, 8)).astype(np.float32)[:, :, ::2], np.array([["a", "b", "c", "d"]] * 3)[:, None]):
        for _ in range(3):
            (y,) = kernel(x)
            want = np.broadcast_to(x, (2, 3, 1, 4))
            assert y.shape == want.shape and y.dtype == x.dtype and y.strides == want.strides
            assert not y.flags.writeable and np.shares_memory(y, x)
            np.testing.assert_array_equal(y, want)
    assert set(kernel._views) == {((3, 1, 4), 4), ((3, 1, 4), 1)}


def test_range_constant_of_shape():
    check("Range", {"a": i64(2), "b": i64(11), "c": i64(3)}, {}, 11, ("c",))
    check("Range", {"a": np.array(1.0, np.float32), "b": np.array(-2.0, np.float32),
                    "c": np.array(-0.75, np.float32)}, {}, 11)
    check("ConstantOfShape", {"s": i64(2, 3)}, {}, 9)
    check("ConstantOfShape", {"s": i64(2, 0, 3)}, {"value": numpy_helper.from_array(np.array([-np.inf], np.float32))}, 20)
    check("ConstantOfShape", {"s": i64(4)}, {"value": numpy_helper.from_array(np.array([True]))}, 21)
    check("ConstantOfShape", {"s": i64(3, 2)}, {"value": numpy_helper.from_array(i64(-7))}, 9)


def test_shape_size():
    check("Shape", {"x": X}, {}, 13)
    check("Shape", {"x": X}, {"start": 1, "end": -1}, 15)
    check("Shape", {"x": X}, {"start": -10, "end": 10}, 21)
    check("Size", {"x": X}, {}, 13)


@pytest.mark.parametrize("opset", [7, 13])
def test_gather(opset):
    check("Gather", {"x": X, "i": i64([-1, 0], [2, 1])}, {"axis": 1}, opset)
    check("Gather", {"x": X, "i": np.array(-2, np.int32)}, {}, opset)


def test_gather_elements_nd():
    check("GatherElements", {"x": X, "i": RNG.integers(-4, 4, (2, 3, 2, 5))}, {"axis": 2}, 13)
    check("GatherND", {"x": X, "i": i64([[1, -1], [0, 2]])}, {}, 11)
    check("GatherND", {"x": X, "i": RNG.integers(0, 3, (2, 4, 2))}, {"batch_dims": 1}, 13)


@pytest.mark.parametrize("opset,reduction", [(11, None), (16, "add"), (16, "mul"), (18, "max"), (18, "min")])
def test_scatter(opset, reduction):
    attrs = {} if reduction is None else {"reduction": reduction}
    idx = i64([0, 1, 2], [3, -1, 1]) if reduction is None else i64([0, 0, 2], [3, 3, 1])
    check("ScatterElements", {"x": X[0, 0], "i": idx, "u": RNG.standard_normal((2, 3)).astype(np.float32)},
          {"axis": 1, **attrs}, opset)
    check("ScatterND", {"x": X, "i": i64([1, 2], [0, -1]) if reduction is None else i64([1, 2], [1, 2]),
                        "u": RNG.standard_normal((2, 4, 5)).astype(np.float32)}, attrs, opset)


def test_one_hot_trilu_depth_space():
    check("OneHot", {"i": i64([1, -1, 9], [0, 2, -4]), "d": np.array(4), "v": np.array([-1.0, 3.0], np.float32)},
          {"axis": 1}, 11)
    check("OneHot", {"i": i64(0, 3), "d": np.array(5.0, np.float32), "v": i64(0, 1)}, {}, 11, ("d",))
    for k in (None, i64(-1), i64(2)):
        for upper in (0, 1):
            check("Trilu", {"x": X, "k": k}, {"upper": upper}, 14)
    y = RNG.standard_normal((2, 8, 3, 2)).astype(np.float32)
    for mode in ("DCR", "CRD"):
        check("DepthToSpace", {"x": y}, {"blocksize": 2, "mode": mode}, 13)
    check("DepthToSpace", {"x": y}, {"blocksize": 2}, 7)
    check("SpaceToDepth", {"x": X[:, :, :, :4]}, {"blocksize": 2}, 13)


@pytest.mark.parametrize("to", [TensorProto.INT32, TensorProto.INT64, TensorProto.BOOL, TensorProto.FLOAT16,
                                TensorProto.UINT8, TensorProto.DOUBLE])
def test_cast(to):
    x = (X * 3).astype(np.float32)
    check("Cast", {"x": x}, {"to": to}, 13)
    check("CastLike", {"x": x, "t": np.zeros(1, helper.tensor_dtype_to_np_dtype(to))}, {}, 15)


def test_layout_ops_with_ints():
    a = RNG.integers(-5, 5, (2, 3)).astype(np.int64)
    check("Concat", {"a": a, "b": a[:, :1]}, {"axis": -1}, 13)
    check("Transpose", {"x": X}, {"perm": [2, 0, 3, 1]}, 13)
    check("Transpose", {"x": X}, {}, 7)
    check("Flatten", {"x": X}, {"axis": -3}, 13)
    check("Identity", {"x": np.array([True, False])}, {}, 16)


def test_matmul_two_runtime_inputs():
    a = RNG.standard_normal((2, 4, 3, 5)).astype(np.float32)
    b = RNG.standard_normal((4, 5, 6)).astype(np.float32)
    check("MatMul", {"a": a, "b": b}, {}, 13)
    check("MatMul", {"a": a[0, 0, 0], "b": a[0, 0, 1]}, {}, 13)  # 1-D x 1-D: a 0-d result


@pytest.mark.parametrize("attrs", [{}, {"transA": 1}, {"transB": 1, "alpha": 0.5, "beta": 2.0}])
@pytest.mark.parametrize("consts", [(), ("c",)])
def test_gemm_runtime_b(attrs, consts):
    a = RNG.standard_normal((3, 4) if not attrs.get("transA") else (4, 3)).astype(np.float32)
    b = RNG.standard_normal((4, 5) if not attrs.get("transB") else (5, 4)).astype(np.float32)
    check("Gemm", {"a": a, "b": b, "c": RNG.standard_normal((1, 5)).astype(np.float32)}, attrs, 13, consts)
    check("Gemm", {"a": a, "b": b}, attrs, 13)


def _session(op, inputs, attrs=None, opset=18, consts=()):
    m = _model(op, inputs, attrs or {}, opset, consts)
    return InferenceSession(from_onnx(m, ConvertOptions(exact=True))), {n: v for n, v in inputs.items()
                                                                         if n not in consts and v is not None}


@pytest.mark.parametrize("op,inputs,attrs", [
    ("Gather", {"x": X, "i": i64(0, 2)}, {}),
    ("Gather", {"x": X, "i": i64(-3)}, {}),
    ("GatherElements", {"x": X, "i": np.full((2, 3, 4, 5), 5, np.int64)}, {"axis": 3}),
    ("GatherND", {"x": X, "i": i64([0, 3])}, {}),
    ("ScatterND", {"x": X, "i": i64([-3]), "u": X[:1]}, {}),
    ("ScatterElements", {"x": X, "i": np.full((1, 1, 1, 1), 4, np.int64), "u": X[:1, :1, :1, :1]}, {"axis": 2}),
])
def test_out_of_range_indices_name_the_node(op, inputs, attrs):
    sess, feeds = _session(op, inputs, attrs)
    with pytest.raises(ExecutionError, match=rf"\({op}\).*out of (range|bounds)"):
        sess.run(None, feeds)


@pytest.mark.parametrize("op,inputs", [
    ("Expand", {"x": X[0, 0], "s": i64(1 << 20, 1 << 12, 1, 1)}),
    ("Tile", {"x": X, "s": i64(1 << 20, 1 << 12, 1, 1)}),
    ("ConstantOfShape", {"s": i64(1 << 40)}),
    ("Range", {"a": i64(0), "b": i64(1 << 40), "c": i64(1)}),
])
def test_huge_sizes_refused_before_allocating(op, inputs):
    sess, feeds = _session(op, inputs)
    with pytest.raises(ExecutionError, match="exceeds the limit"):
        sess.run(None, feeds)


@pytest.mark.parametrize("op,inputs,attrs", [
    ("Reshape", {"x": X, "s": i64(7, -1)}, {}),
    ("Squeeze", {"x": X, "a": i64(1)}, {}),
    ("Unsqueeze", {"x": X, "a": i64(9)}, {}),
    ("Slice", {"x": X, "b": i64(0), "e": i64(1), "a": i64(0), "s": i64(0)}, {}),
    ("Split", {"x": X, "s": i64(1, 1)}, {"axis": 1}),
    ("Range", {"a": i64(0), "b": i64(5), "c": i64(0)}, {}),
    ("Tile", {"x": X, "s": i64(1, 2)}, {}),
])
def test_bad_shapes_at_run_time(op, inputs, attrs):
    sess, feeds = _session(op, inputs, attrs)
    with pytest.raises(ExecutionError, match=rf"\({op}\)"):
        sess.run(None, feeds)


def test_runtime_shape_follows_symbolic_batch_and_sequence():
    """Reshape to a shape built from Shape/Gather/Concat of the input, fed two different sizes."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
             helper.make_node("Unsqueeze", ["b", "axes"], ["b1"]),
             helper.make_node("Concat", ["b1", "minus1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"])]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n"])],
                          [numpy_helper.from_array(np.array(0), "zero"), numpy_helper.from_array(i64(0), "axes"),
                           numpy_helper.from_array(i64(-1), "minus1")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    sess = InferenceSession(from_onnx(m, ConvertOptions(exact=True)))
    for shape in ((1, 3, 4), (5, 7, 4)):
        x = RNG.standard_normal(shape).astype(np.float32)
        np.testing.assert_array_equal(sess.run(None, {"x": x})[0], x.reshape(shape[0], -1))


def test_int_and_bool_feeds_are_checked():
    sess, feeds = _session("Gather", {"x": X, "i": i64(0, 1)})
    with pytest.raises(DcmError, match="dtype int32"):
        sess.run(None, {"x": X, "i": np.array([0, 1], np.int32)})
    sess, feeds = _session("Identity", {"m": np.array([True, False])}, {}, 16)
    assert sess.run(None, feeds)[0].dtype == np.bool_


@pytest.mark.parametrize("attrs,want", [({"value": np.array([[1, -2]], np.int32)}, np.array([[1, -2]], np.int32)),
                                        ({"value_floats": [0.5, 2.0]}, np.array([0.5, 2.0], np.float32)),
                                        ({"value_int": 7}, np.array(7, np.int64))])
def test_constant_node_in_a_file(attrs, want):
    """The converter folds Constant nodes; a .dcm written by another tool may still hold one."""
    from dcm.format import Model, Node, ValueInfo

    model = Model([ValueInfo("x", "float32", [1])], [ValueInfo("y", want.dtype.name, list(want.shape))],
                  [Node("Constant", [], ["y"], attrs, "c")], {})
    got = InferenceSession(writer.to_bytes(model)).run(None, {"x": np.zeros(1, np.float32)})[0]
    assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)


@pytest.mark.parametrize("op,inputs", [
    ("Squeeze", {"x": X[:, :1], "a": i64(1)}),
    ("Unsqueeze", {"x": X, "a": i64(0, -1)}),
    ("Pad", {"x": X, "p": i64(0, 1, 0, 0, 0, 2, 0, 0), "v": np.array(3.0, np.float32)}),
    ("Reshape", {"x": X, "s": i64(0, -1)}),
])
def test_torch_backend_takes_run_time_shape_inputs(op, inputs):
    """The GPU kernels (run here on torch's CPU) subclass these and read the same run-time inputs."""
    pytest.importorskip("torch")
    m = _model(op, inputs, {}, 18)
    model = from_onnx(m, ConvertOptions(exact=True))
    want = InferenceSession(model).run(None, inputs)[0]
    got = InferenceSession(model, device="torch-cpu").run(None, inputs)[0]
    assert got.shape == want.shape and np.array_equal(got, want)


def _case_at(op: str, opset: int):
    """(inputs, attrs, outputs) exercising ``op`` in the form its version at ``opset`` defines."""
    v = onnx.defs.get_schema(op, opset).since_version
    x2 = RNG.standard_normal((3, 4)).astype(np.float32)
    if op == "Slice":
        return ({"x": X}, {"starts": [1], "ends": [-1], "axes": [3]}, 1) if v < 10 else \
            ({"x": X, "b": i64(1), "e": i64(-1), "a": i64(3), "s": i64(2)}, {}, 1)
    if op == "Split":
        return ({"x": X}, {"axis": 1, "split": [1, 2]}, 2) if v < 13 else ({"x": X, "s": i64(1, 2)}, {"axis": 1}, 2)
    if op in ("Squeeze", "Unsqueeze"):
        x = X[:, :1] if op == "Squeeze" else X
        return ({"x": x}, {"axes": [1]}, 1) if v < 13 else ({"x": x, "a": i64(1)}, {}, 1)
    if op == "Pad":
        return ({"x": X}, {"pads": [0, 1, 0, 0, 0, 2, 0, 0], "value": 2.0}, 1) if v < 11 else \
            ({"x": X, "p": i64(0, 1, 0, 0, 0, 2, 0, 0), "v": np.array(2.0, np.float32)}, {}, 1)
    table = {
        "Reshape": ({"x": X, "s": i64(6, -1)}, {}), "Gather": ({"x": X, "i": i64(-1, 0)}, {"axis": 1}),
        "Concat": ({"a": x2, "b": x2}, {"axis": 1}), "Transpose": ({"x": X}, {"perm": [3, 1, 0, 2]}),
        "Flatten": ({"x": X}, {"axis": 2}), "Tile": ({"x": x2, "r": i64(2, 1)}, {}),
        "Expand": ({"x": x2[:1], "s": i64(2, 3, 4)}, {}), "Cast": ({"x": x2}, {"to": TensorProto.INT64}),
        "Shape": ({"x": X}, {}), "Size": ({"x": X}, {}), "ConstantOfShape": ({"s": i64(2, 3)}, {}),
        "Range": ({"a": i64(1), "b": i64(9), "c": i64(2)}, {}), "Identity": ({"x": x2}, {}),
        "GatherElements": ({"x": x2, "i": i64([0, -1, 1, 2], [2, 1, 0, 0])}, {"axis": 0}),
        "GatherND": ({"x": x2, "i": i64([0, 1], [2, -1])}, {}),
        "ScatterND": ({"x": x2, "i": i64([1], [0]), "u": x2[:2]}, {}),
        "ScatterElements": ({"x": x2, "i": i64([0, 2]), "u": x2[:1, :2]}, {"axis": 0}),
        "OneHot": ({"i": i64(0, 2), "d": np.array(3), "v": np.array([0.0, 1.0], np.float32)}, {}),
        "Trilu": ({"x": X}, {}), "DepthToSpace": ({"x": X[:, :, :, :4].reshape(2, 4, 4, 3)}, {"blocksize": 2}),
        "SpaceToDepth": ({"x": X[:, :, :, :4]}, {"blocksize": 2}), "CastLike": ({"x": x2, "t": i64(1)}, {}),
        "MatMul": ({"a": X, "b": X[0, 0].T.copy()}, {}), "Gemm": ({"a": x2, "b": x2.T.copy(), "c": x2[:, :1] @ x2[:1, :3]}, {}),
    }
    inputs, attrs = table[op]
    return inputs, attrs, 1


SWEEP_OPS = ["Slice", "Split", "Squeeze", "Unsqueeze", "Pad", "Reshape", "Gather", "Concat", "Transpose", "Flatten",
             "Tile", "Expand", "Cast", "Shape", "Size", "ConstantOfShape", "Range", "Identity", "GatherElements",
             "GatherND", "ScatterND", "ScatterElements", "OneHot", "Trilu", "DepthToSpace", "SpaceToDepth",
             "CastLike", "MatMul", "Gemm"]


@pytest.mark.parametrize("op", SWEEP_OPS)
def test_every_opset_from_7_to_28(op):
    """Each op at every opset where onnx defines it (7..28), in the form that version takes."""
    ran = 0
    for opset in range(7, 29):
        try:
            onnx.defs.get_schema(op, opset)
        except onnx.defs.SchemaError:
            continue  # not defined yet at this opset
        inputs, attrs, n_out = _case_at(op, opset)
        check(op, inputs, attrs, opset, n_out=n_out)
        ran += 1
    assert ran >= 1
