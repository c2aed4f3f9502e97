"""NonZero, Compress, Unique (outputs sized by the data), ReverseSequence, EyeLike, Det and CumProd
against onnx's reference evaluator beyond the backend cases (other ranks, types and axes), a graph
whose later shapes follow a NonZero's count from run to run, and the errors bad inputs give."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from dcm.converters import ConvertOptions, from_onnx
from dcm.errors import ExecutionError, UnsupportedOpError
from dcm.runtime import InferenceSession
from tests.runtime.opcheck import check, one_node, rand

OPSET = 22


@pytest.mark.parametrize("x", [rand((3, 4, 5), np.float32) * (rand((3, 4, 5), bool)),
                               rand((7,), np.int64, low=0, high=1), np.zeros((2, 3), bool)])
def test_nonzero(x):
    check("NonZero", {"x": x}, opset=OPSET)


@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_compress(axis):
    x = rand((4, 5), np.float32)
    for condition in (np.array([1, 0, 1, 1], bool), np.array([0, 1], bool)):  # shorter than the axis: its first slices
        check("Compress", {"x": x, "c": condition}, {} if axis is None else {"axis": axis}, opset=OPSET)


def test_unique_sorted_and_in_order_of_appearance():
    x = np.array([[3, 1, 3], [2, 2, 2], [3, 1, 3]], np.int32)  # column 2 repeats column 0
    for attrs in ({}, {"axis": 0}, {"axis": -1}, {"axis": 0, "sorted": 0}):
        check("Unique", {"x": x}, attrs, opset=OPSET, n_out=4)

    def unsorted(attrs):  # (onnx's reference fails on these: index out of bounds)
        model = one_node("Unique", {"x": x}, {**attrs, "sorted": 0}, opset=OPSET, n_out=4)
        for i, out in enumerate(model.graph.output):
            out.type.tensor_type.elem_type = TensorProto.INT32 if i == 0 else TensorProto.INT64
        y, first, inverse, counts = InferenceSession(from_onnx(model)).run(None, {"x": x})
        return y, first.tolist(), inverse.tolist(), counts.tolist()

    y, first, inverse, counts = unsorted({})  # in order of first appearance: 3, 1, 2
    assert y.tolist() == [3, 1, 2] and first == [0, 1, 3] and inverse == [0, 1, 0, 2, 2, 2, 0, 1, 0]
    assert counts == [4, 2, 3]
    y, first, inverse, counts = unsorted({"axis": 1})
    np.testing.assert_array_equal(y, x[:, :2])  # columns 0 and 1; 2 is 0 again
    assert first == [0, 1] and inverse == [0, 1, 0] and counts == [2, 1]


@pytest.mark.parametrize("time_axis, batch_axis", [(0, 1), (1, 0), (2, 0)])
def test_reverse_sequence(time_axis, batch_axis):
    x = rand((3, 4, 5), np.float32)
    steps, batch = x.shape[time_axis], x.shape[batch_axis]
    lens = np.minimum(np.arange(batch, dtype=np.int64) + 1, steps)
    check("ReverseSequence", {"x": x, "lens": lens}, {"time_axis": time_axis, "batch_axis": batch_axis}, opset=OPSET)


def test_eye_like_det_and_cumprod():
    check("EyeLike", {"x": rand((3, 5), np.int32)}, {"k": -1}, opset=OPSET)
    check("EyeLike", {"x": rand((4, 2), np.float32)}, {"dtype": TensorProto.DOUBLE, "k": 1}, opset=OPSET)
    check("Det", {"x": rand((2, 3, 4, 4), np.float32)}, opset=OPSET, rtol=1e-4)
    for attrs in ({}, {"exclusive": 1}, {"reverse": 1, "exclusive": 1}):
        check("CumProd", {"x": rand((3, 4), np.float64, low=0.5, high=1.5)}, attrs, opset=26,
              consts={"axis": np.array(1, np.int64)})
        check("CumProd", {"x": rand((5,), np.int32, low=1, high=3)}, attrs, opset=26, consts={"axis": np.array(0, np.int64)})


def test_shapes_after_a_nonzero_follow_its_count():
    """Shape(NonZero(x)) changes with the data, not the input shape: the session's shape cache must not
    replay the first run's."""
    nodes = [helper.make_node("NonZero", ["x"], ["nz"]), helper.make_node("Shape", ["nz"], ["s"]),
             helper.make_node("Transpose", ["nz"], ["t"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info(n, TensorProto.INT64, None) for n in ("s", "t")])
    sess = InferenceSession(from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])))
    for x in ([0, 1, 0, 2], [1, 1, 1, 0], [0, 0, 0, 0], [0, 1, 0, 2]):
        s, t = sess.run(None, {"x": np.array(x, np.float32)})
        count = np.count_nonzero(x)
        assert s.tolist() == [1, count] and t.reshape(-1).tolist() == np.flatnonzero(x).tolist()


@pytest.mark.parametrize("op, inputs, attrs, message", [
    ("Compress", {"x": np.zeros((2, 3), np.float32), "c": np.ones(4, bool)}, {"axis": 1}, "condition of 4 values for an axis of 3"),
    ("Compress", {"x": np.zeros((2, 3), np.float32), "c": np.ones((1, 2), bool)}, {}, "a vector expected"),
    ("ReverseSequence", {"x": np.zeros((3, 2), np.float32), "lens": np.array([4, 1], np.int64)}, {},
     r"lengths in \[0, 3\]"),
    ("ReverseSequence", {"x": np.zeros((3, 2), np.float32), "lens": np.array([1, 1], np.int64)},
     {"time_axis": 1, "batch_axis": 1}, "two different axes"),
    ("EyeLike", {"x": np.zeros((2, 3, 4), np.float32)}, {}, "a matrix expected"),
    ("Det", {"x": np.zeros((2, 3), np.float32)}, {}, "no square matrices"),
])
def test_bad_inputs_name_the_problem(op, inputs, attrs, message):
    model = one_node(op, inputs, attrs, opset=OPSET)
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT
    sess = InferenceSession(from_onnx(model, ConvertOptions(exact=True)))
    with pytest.raises(ExecutionError, match=message):
        sess.run(None, inputs)


def test_eye_like_of_an_unknown_type_is_refused_at_load():
    model = from_onnx(one_node("EyeLike", {"x": np.zeros((2, 2), np.float32)}, {"dtype": 1}, opset=OPSET))
    model.nodes[0].attrs["dtype"] = 8  # strings
    with pytest.raises(UnsupportedOpError, match="element type 8"):
        InferenceSession(model)
