"""Malformed runs get one clear DcmError naming the problem: never a crash, a silent wrap or a huge
allocation.

Every shape, index and size here arrives at run time (a graph input), so nothing is caught at
conversion: the kernels themselves must check. Huge requests are astronomically large (2^40
elements and more): a kernel that does not bound them before allocating fails with numpy's own
MemoryError/ValueError, which the session would also wrap, so the tests require the message of a
bound (the element count and the limit), not just any DcmError.
"""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from dcm.converters import ConvertOptions, from_onnx  # noqa: E402
from dcm.errors import ExecutionError, InputError  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402

F, I64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
HUGE = 1 << 40
BOUND = r"(?i)(limit|too large|exceed)"


def session(op: str, inputs: list[tuple[str, int, list]], attrs: dict | None = None, n_out: int = 1,
            opset: int = 18, out_type: int = F) -> InferenceSession:
    """A one-node model whose inputs are all graph inputs (run-time values). Outputs are declared
    with their type, since ONNX shape inference gives up on graphs built to be wrong."""
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op, [n for n, _, _ in inputs], outs, **(attrs or {}))
    graph = helper.make_graph([node], op, [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                              [helper.make_tensor_value_info(o, out_type, None) for o in outs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return InferenceSession(from_onnx(model, ConvertOptions(exact=True)))


def i64(*values) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def f32(*shape) -> np.ndarray:
    return np.ones(shape, dtype=np.float32)


# -- rank and shape mismatches at run time ------------------------------------------------------------

def test_feed_of_the_wrong_rank_is_an_input_error():
    s = session("Relu", [("x", F, ["n", 4])])
    with pytest.raises(InputError, match="rank 3"):
        s.run(None, {"x": f32(2, 4, 1)})


def test_matmul_of_mismatched_inner_sizes_names_the_node():
    s = session("MatMul", [("a", F, ["n", "k"]), ("b", F, ["m", "p"])])
    with pytest.raises(ExecutionError, match="MatMul"):
        s.run(None, {"a": f32(2, 3), "b": f32(4, 5)})


def test_add_of_shapes_that_do_not_broadcast_names_the_node():
    s = session("Add", [("a", F, ["n", "k"]), ("b", F, ["m", "p"])])
    with pytest.raises(ExecutionError, match="Add"):
        s.run(None, {"a": f32(2, 3), "b": f32(4, 5)})


def test_concat_of_different_ranks_names_the_node():
    s = session("Concat", [("a", F, ["n", "k"]), ("b", F, ["n", "k", "j"])], {"axis": 0})
    with pytest.raises(ExecutionError, match="Concat"):
        s.run(None, {"a": f32(2, 3), "b": f32(2, 3, 1)})


@pytest.mark.parametrize("shape", [i64(5, 5), i64(-1, -1), i64(-3, 2), i64(0, 7)])
def test_reshape_to_an_impossible_run_time_shape(shape):
    s = session("Reshape", [("x", F, ["n", 6]), ("shape", I64, [2])])
    with pytest.raises(ExecutionError, match="Reshape"):
        s.run(None, {"x": f32(2, 6), "shape": shape})


def test_reshape_shape_of_the_wrong_rank():
    s = session("Reshape", [("x", F, ["n", 6]), ("shape", I64, ["r", "c"])])
    with pytest.raises(ExecutionError, match="Reshape"):
        s.run(None, {"x": f32(2, 6), "shape": np.array([[2, 6]], dtype=np.int64)})


def test_slice_with_an_axis_out_of_range():
    s = session("Slice", [("x", F, ["n", 6]), ("starts", I64, [1]), ("ends", I64, [1]), ("axes", I64, [1])])
    with pytest.raises(ExecutionError, match="Slice"):
        s.run(None, {"x": f32(2, 6), "starts": i64(0), "ends": i64(1), "axes": i64(5)})


def test_expand_to_a_shape_that_does_not_broadcast():
    s = session("Expand", [("x", F, [3]), ("shape", I64, [1])])
    with pytest.raises(ExecutionError, match="Expand"):
        s.run(None, {"x": f32(3), "shape": i64(4)})


# -- indices out of range: an error, never a wrap ----------------------------------------------------

@pytest.mark.parametrize("index", [3, -4, 1 << 40])
def test_gather_index_out_of_range(index):
    s = session("Gather", [("x", F, [3, 2]), ("i", I64, [1])], {"axis": 0})
    with pytest.raises(ExecutionError, match="Gather"):
        s.run(None, {"x": f32(3, 2), "i": i64(index)})


def test_gather_negative_index_in_range_counts_from_the_end():
    s = session("Gather", [("x", F, [3]), ("i", I64, [1])], {"axis": 0})
    (y,) = s.run(None, {"x": np.array([1, 2, 3], np.float32), "i": i64(-1)})
    assert y.tolist() == [3.0]


def test_gather_elements_index_out_of_range():
    s = session("GatherElements", [("x", F, [2, 2]), ("i", I64, [2, 2])], {"axis": 1})
    with pytest.raises(ExecutionError, match="GatherElements"):
        s.run(None, {"x": f32(2, 2), "i": np.array([[0, 1], [2, 0]], np.int64)})


def test_gather_nd_index_out_of_range():
    s = session("GatherND", [("x", F, [2, 2]), ("i", I64, [1, 2])])
    with pytest.raises(ExecutionError, match="GatherND"):
        s.run(None, {"x": f32(2, 2), "i": np.array([[0, 2]], np.int64)})


def test_scatter_nd_index_out_of_range():
    s = session("ScatterND", [("x", F, [4]), ("i", I64, [1, 1]), ("u", F, [1])])
    with pytest.raises(ExecutionError, match="ScatterND"):
        s.run(None, {"x": f32(4), "i": np.array([[4]], np.int64), "u": f32(1)})


def test_scatter_elements_index_out_of_range():
    s = session("ScatterElements", [("x", F, [2, 3]), ("i", I64, [1, 2]), ("u", F, [1, 2])], {"axis": 1})
    with pytest.raises(ExecutionError, match="ScatterElements"):
        s.run(None, {"x": f32(2, 3), "i": np.array([[0, -4]], np.int64), "u": f32(1, 2)})


def test_one_hot_out_of_range_index_is_a_row_of_off_values_and_bad_depth_an_error():
    """ONNX specifies OneHot's out-of-range indices (all off values); a depth below 1 is impossible."""
    s = session("OneHot", [("i", I64, [2]), ("depth", I64, [1]), ("values", F, [2])])
    (y,) = s.run(None, {"i": i64(1, 7), "depth": i64(3), "values": np.array([0, 1], np.float32)})
    assert y.tolist() == [[0, 1, 0], [0, 0, 0]]
    with pytest.raises(ExecutionError, match="OneHot"):
        s.run(None, {"i": i64(1, 7), "depth": i64(0), "values": np.array([0, 1], np.float32)})


# -- huge requests: bounded before allocating --------------------------------------------------------

def test_huge_expand_is_refused_before_allocating():
    s = session("Expand", [("x", F, [1]), ("shape", I64, [2])])
    with pytest.raises(ExecutionError, match=BOUND):
        s.run(None, {"x": f32(1), "shape": i64(HUGE, HUGE)})


def test_huge_tile_is_refused_before_allocating():
    s = session("Tile", [("x", F, [2]), ("repeats", I64, [1])])
    with pytest.raises(ExecutionError, match=BOUND):
        s.run(None, {"x": f32(2), "repeats": i64(HUGE)})


def test_huge_range_is_refused_before_allocating():
    s = session("Range", [("start", I64, []), ("limit", I64, []), ("delta", I64, [])], out_type=I64)
    with pytest.raises(ExecutionError, match=BOUND):
        s.run(None, {"start": np.array(0, np.int64), "limit": np.array(HUGE, np.int64), "delta": np.array(1, np.int64)})


def test_huge_constant_of_shape_is_refused_before_allocating():
    s = session("ConstantOfShape", [("shape", I64, [3])])
    with pytest.raises(ExecutionError, match=BOUND):
        s.run(None, {"shape": i64(HUGE, HUGE, 2)})


def test_huge_one_hot_depth_is_refused_before_allocating():
    s = session("OneHot", [("i", I64, [2]), ("depth", I64, [1]), ("values", F, [2])])
    with pytest.raises(ExecutionError, match=BOUND):
        s.run(None, {"i": i64(1, 7), "depth": i64(HUGE), "values": np.array([0, 1], np.float32)})



def test_node_declaring_more_outputs_than_its_op_makes():
    from dcm.format.model import Model, Node, ValueInfo

    model = Model([ValueInfo("x", "float32", [2])], [ValueInfo("z", "float32", [2])],
                  [Node("Softplus", ["x"], ["y", "z"], {}, "soft")], {})
    for timed in (False, True):
        sess = InferenceSession(model)
        with pytest.raises(ExecutionError, match="'soft'.*declares 2 outputs, the op makes 1"):
            sess.profile({"x": np.ones(2, np.float32)}, runs=1) if timed else sess.run(None, {"x": np.ones(2, np.float32)})


def test_node_with_too_few_inputs_is_refused_before_the_graph_passes_read_it():
    """A one-input Mul reached fuse_gelu, which read its second input (an IndexError the fuzzer
    found): every node is checked before the passes run."""
    from dcm.format.model import Model, Node, ValueInfo
    from dcm.errors import UnsupportedOpError

    model = Model([ValueInfo("x", "float32", [2])], [ValueInfo("y", "float32", [2])],
                  [Node("Mul", ["x"], ["y"], {}, "mul")], {})
    with pytest.raises(UnsupportedOpError, match="'mul' \\(Mul\\): takes 2 inputs, the graph gives 1"):
        InferenceSession(model)
