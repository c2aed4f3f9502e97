"""ConvertOptions(compact_graph=True) / ``dcm convert --compact-graph``: a smaller graph that computes
the same outputs, stays a valid file, and still exports to a working ONNX model."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from dcm.cli import main  # noqa: E402
from dcm.converters import ConvertOptions, from_onnx, to_onnx  # noqa: E402
from dcm.format.reader import read  # noqa: E402
from dcm.format.validate import validate  # noqa: E402
from dcm.format.writer import to_bytes, write  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402


def _model(opset: int = 17) -> bytes:
    """Conv -> Gemm -> LayerNormalization -> Softmax, with attributes at and away from their defaults."""
    rng = np.random.default_rng(0)
    init = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n) for n, s in
            [("conv.weight", (4, 1, 3, 3)), ("fc.weight", (8, 64)), ("fc.bias", (8,)), ("ln.scale", (8,)),
             ("ln.bias", (8,))]]
    init.append(numpy_helper.from_array(np.array([-1, 64], np.int64), "flat_shape"))
    nodes = [
        helper.make_node("Conv", ["input", "conv.weight"], ["/features/conv/Conv_output_0"], "/features/conv/Conv",
                         group=1, auto_pad="NOTSET", strides=[1, 1], kernel_shape=[3, 3]),
        helper.make_node("Reshape", ["/features/conv/Conv_output_0", "flat_shape"], ["/flatten/Reshape_output_0"],
                         "/flatten/Reshape", allowzero=0),
        helper.make_node("Gemm", ["/flatten/Reshape_output_0", "fc.weight", "fc.bias"], ["/fc/Gemm_output_0"],
                         "/fc/Gemm", alpha=1.0, beta=0.5, transA=0, transB=1),
        helper.make_node("LayerNormalization", ["/fc/Gemm_output_0", "ln.scale", "ln.bias"], ["/ln/out"], "/ln/LN",
                         axis=-1, epsilon=1e-5),
        helper.make_node("Softmax", ["/ln/out"], ["output"], "/softmax/Softmax", axis=-1),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 6, 6])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 8])], init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString()


def _run(path, x):
    return InferenceSession(path).run(None, {"input": x})[0]


def test_compact_graph_is_smaller_same_outputs_valid_and_exports(tmp_path):
    src = _model()
    plain, compact = (from_onnx(src, ConvertOptions(exact=True, compact_graph=c)) for c in (False, True))
    write(tmp_path / "plain.dcm", plain)
    write(tmp_path / "compact.dcm", compact)
    assert validate(tmp_path / "compact.dcm") == []
    assert len(to_bytes(compact)) < len(to_bytes(plain))

    attrs = {n.op: n.attrs for n in read(tmp_path / "compact.dcm").nodes}
    assert attrs["Gemm"] == {"beta": 0.5, "transB": 1}  # alpha and transA were at their defaults
    assert attrs["Conv"] == {"strides": [1, 1], "kernel_shape": [3, 3]}  # the schema gives no default for these
    assert "allowzero" not in attrs["Reshape"] and "axis" not in attrs["Softmax"]
    assert attrs["LayerNormalization"] == {}  # axis -1 and epsilon 1e-5 (stored as float32) are the defaults

    m = read(tmp_path / "compact.dcm")
    assert all(n.name == "" for n in m.nodes)
    assert max(len(x) for n in m.nodes for x in n.outputs if x != "output") <= 2
    assert [v.name for v in m.inputs] == ["input"] and [v.name for v in m.outputs] == ["output"]
    assert set(m.tensors) == set(plain.tensors)  # weights keep their names

    x = np.random.default_rng(1).normal(size=(3, 1, 6, 6)).astype(np.float32)
    want = _run(tmp_path / "plain.dcm", x)
    np.testing.assert_array_equal(_run(tmp_path / "compact.dcm", x), want)
    ort = pytest.importorskip("onnxruntime")
    exported = ort.InferenceSession(to_onnx(m).SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(exported.run(None, {"input": x})[0], want, rtol=1e-5, atol=1e-6)


def test_defaults_are_those_of_the_models_opset():
    """Softmax's default axis is 1 up to opset 12 and -1 from 13: an explicit -1 is kept at opset 11."""
    for opset, kept in ((11, {"axis": -1}), (13, {})):
        graph = helper.make_graph([helper.make_node("Softmax", ["input"], ["output"], "s", axis=-1)], "g",
                                  [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 4])],
                                  [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3, 4])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString()
        assert from_onnx(model, ConvertOptions(compact_graph=True)).nodes[0].attrs == kept, opset


def test_cli_convert_compact_graph(tmp_path, capsys):
    (tmp_path / "m.onnx").write_bytes(_model())
    sizes = {}
    for flag in ([], ["--compact-graph"]):
        out = tmp_path / f"m{len(flag)}.dcm"
        assert main(["convert", str(tmp_path / "m.onnx"), "-o", str(out), "--exact", "-q", *flag]) == 0
        sizes[bool(flag)] = out.stat().st_size
    assert sizes[True] < sizes[False]
    assert all(n.name == "" for n in read(tmp_path / "m1.dcm").nodes)
