"""An If whose condition folds at conversion (a test of a static shape, as exporters write them)
becomes the branch it takes, nested Ifs and branch constants included; control flow on run-time
values is refused with a line that says why."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from dcm.converters import from_onnx
from dcm.errors import ConversionError
from dcm.runtime import InferenceSession


def _branch(name, nodes, outputs, inits=()):
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                             list(inits))


def _model(width: int, nested: bool = False):
    """y = x + 1 if x has 3 columns (else x - 1); z passes x through; nested: then-branch is an If again."""
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    then_nodes = [helper.make_node("Add", ["x", "one"], ["t"])]
    if nested:
        inner = helper.make_node("If", ["cond"], ["t2"], then_branch=_branch("a", [helper.make_node("Mul", ["t", "two"], ["m"])], ["m"],
                                                                                [numpy_helper.from_array(np.array(2.0, np.float32), "two")]),
                                 else_branch=_branch("b", [helper.make_node("Neg", ["t"], ["n"])], ["n"]))
        then_nodes.append(inner)
    then_branch = _branch("then", then_nodes, ["t2" if nested else "t", "x"], [one])
    else_branch = _branch("else", [helper.make_node("Sub", ["x", "x"], ["e"])], ["e", "x"])
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "i1"], ["w"], axis=0),
             helper.make_node("Equal", ["w", "three"], ["cond"]),
             helper.make_node("If", ["cond"], ["y", "z"], then_branch=then_branch, else_branch=else_branch)]
    consts = [numpy_helper.from_array(np.array(1, np.int64), "i1"), numpy_helper.from_array(np.array(3, np.int64), "three")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, width])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, [2, width]) for o in ("y", "z")], consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("width, nested, expected", [(3, False, lambda x: x + 1), (4, False, lambda x: x * 0),
                                                     (3, True, lambda x: (x + 1) * 2)])
def test_a_constant_condition_takes_its_branch(width, nested, expected):
    model = from_onnx(_model(width, nested))
    assert "If" not in {n.op for n in model.nodes}
    x = np.random.default_rng(0).standard_normal((2, width)).astype(np.float32)
    y, z = InferenceSession(model).run(None, {"x": x})
    np.testing.assert_allclose(y, expected(x), rtol=1e-6)
    np.testing.assert_array_equal(z, x)


def test_a_run_time_condition_is_refused():
    branch = _branch("b", [helper.make_node("Identity", ["x"], ["o"])], ["o"])
    node = helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                                            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    with pytest.raises(ConversionError, match="control flow on values known only at run time"):
        from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
