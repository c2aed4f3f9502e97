"""The shape subgraph (nodes computed from constants and input shapes only) run once per input-shape
signature, and constant-only nodes folded at load: results stay those of onnxruntime whatever the
order of shapes, a caller writing to an output cannot change the next run, a shape that turns out to
depend on data is caught, and the size checks still apply."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from dcm.converters import ConvertOptions, from_onnx  # noqa: E402
from dcm.encoder.codec import encode_raw  # noqa: E402
from dcm.errors import ExecutionError  # noqa: E402
from dcm.format.model import Model, Node, ValueInfo  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402
from dcm.runtime.shape_cache import CACHE_ENTRIES  # noqa: E402


def _model(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
                          [helper.make_empty_tensor_value_info(o) for o in outputs],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _int(name, *values):
    return name, np.array(values, dtype=np.int64)


def _head_split():
    """x [n, 6] -> y = reshape(x, [2 n, -1]) + 1, with the target shape computed from Shape(x) the way
    exporters write it; the shape vector itself ("size") is an output too."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0, name="gather"),
             helper.make_node("Mul", ["n", "two"], ["n2"], name="mul"),
             helper.make_node("Unsqueeze", ["n2", "axes"], ["n2u"], name="unsqueeze"),
             helper.make_node("Concat", ["n2u", "minus1"], ["size"], axis=0, name="concat"),
             helper.make_node("Reshape", ["x", "size"], ["r"], name="reshape"),
             helper.make_node("Add", ["r", "one"], ["y"], name="add")]
    return _model(nodes, [("x", TensorProto.FLOAT, ["n", 6])], ["y", "size"],
                  [("zero", np.array(0, np.int64)), ("two", np.array(2, np.int64)), _int("axes", 0), _int("minus1", -1),
                   ("one", np.float32(1))])


def _head_split_session(device="cpu", **options):
    if device != "cpu":
        pytest.importorskip("torch")
    m = _head_split()
    return m, InferenceSession(from_onnx(m, ConvertOptions(exact=True)), device=device, **options)


def _expected(m, feeds):
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-6)


@pytest.mark.parametrize("device", ["cpu", "torch-cpu"])
def test_shapes_run_alternately_give_their_own_results(device):
    m, sess = _head_split_session(device)
    described = {d["name"]: d for d in sess.describe()}
    assert all(described[n].get("shape_subgraph") for n in ("shape", "gather", "mul", "unsqueeze", "concat"))
    assert not any(described[n].get("shape_subgraph") for n in ("reshape", "add"))
    xs = {n: np.arange(6 * n, dtype=np.float32).reshape(n, 6) for n in (2, 3, 4)}
    for n in (2, 3, 2, 4, 3, 2, 2):
        _same(sess.run(None, {"x": xs[n]}), _expected(m, {"x": xs[n]}))


def test_cache_is_bounded():
    m, sess = _head_split_session()
    for n in range(1, CACHE_ENTRIES + 4):
        x = np.ones((n, 6), np.float32)
        _same(sess.run(None, {"x": x}), _expected(m, {"x": x}))
    assert len(sess._cache) == CACHE_ENTRIES
    x = np.ones((1, 6), np.float32)  # evicted long ago: computed again, still right
    _same(sess.run(None, {"x": x}), _expected(m, {"x": x}))


@pytest.mark.parametrize("device", ["cpu", "torch-cpu"])
def test_writing_to_a_cached_output_does_not_change_the_next_run(device):
    _, sess = _head_split_session(device)
    x = np.ones((3, 6), np.float32)
    for _ in range(3):
        y, size = sess.run(None, {"x": x})
        np.testing.assert_array_equal(size, [6, -1])
        size[:] = 99
        y[:] = 99


def _dcm_model(nodes, inputs, outputs, consts):
    """A .dcm model built directly: the ONNX converter folds constant-only nodes itself, a file from
    elsewhere may not."""
    return Model([ValueInfo(n, t, s) for n, t, s in inputs], [ValueInfo(o, "float32", []) for o in outputs],
                 nodes, {k: encode_raw(np.asarray(v), k) for k, v in consts.items()})


def test_folded_constant_output_is_a_copy():
    """Range and Shape of constants fold at load; the caller gets a copy it may write to."""
    nodes = [Node("Range", ["start", "limit", "delta"], ["r"], {}, "range"),
             Node("Shape", ["table"], ["ts"], {}, "table_shape"),
             Node("Concat", ["r", "ts"], ["c"], {"axis": 0}, "concat"),
             Node("Add", ["x", "c"], ["y"], {}, "add")]
    model = _dcm_model(nodes, [("x", "int64", [6])], ["y", "c"],
                       {"start": np.array(0, np.int64), "limit": np.array(4, np.int64), "delta": np.array(1, np.int64),
                        "table": np.zeros((5, 7), np.float32)})
    sess = InferenceSession(model)
    folded = {d["name"]: d.get("folded_into") for d in sess.describe()}
    assert folded["range"] == folded["table_shape"] == folded["concat"] == "(constant)"
    assert folded["add"] is None
    x = np.arange(6, dtype=np.int64)
    for _ in range(2):
        y, c = sess.run(None, {"x": x})
        np.testing.assert_array_equal(c, [0, 1, 2, 3, 5, 7])
        np.testing.assert_array_equal(y, x + c)
        c[:] = -1


def test_optimize_false_runs_every_node():
    m, sess = _head_split_session(optimize=False)
    assert not any(d.get("shape_subgraph") or d.get("folded_into") for d in sess.describe())
    x = np.ones((2, 6), np.float32)
    _same(sess.run(None, {"x": x}), _expected(m, {"x": x}))


def test_shape_that_depends_on_data_is_caught_by_its_guard():
    """Shape of a Range whose limit is an input: the same input shape, another length. The guard on
    that Shape node sees it and the session stops caching."""
    nodes = [helper.make_node("Range", ["zero", "limit", "one"], ["r"], name="range"),
             helper.make_node("Shape", ["r"], ["s"], name="shape"),
             helper.make_node("Mul", ["s", "two"], ["s2"], name="double"),
             helper.make_node("ConstantOfShape", ["s2"], ["y"], name="fill"),
             helper.make_node("Shape", ["r"], ["again"], name="shape_again")]  # same check: no second guard
    m = _model(nodes, [("limit", TensorProto.INT64, [])], ["y", "s2", "again"],
               [("zero", np.array(0, np.int64)), ("one", np.array(1, np.int64)), ("two", np.array([2], np.int64))])
    sess = InferenceSession(from_onnx(m, ConvertOptions(exact=True)))
    described = {d["name"]: d for d in sess.describe()}
    assert described["double"].get("shape_subgraph") and not described["range"].get("shape_subgraph")
    assert len(sess._shapes.guarded) == 1
    for limit in (3, 3, 5, 3, 5):
        feeds = {"limit": np.array(limit, np.int64)}
        _same(sess.run(None, feeds), _expected(m, feeds))
    assert sess._cache is None


def test_size_limits_apply_on_every_run():
    """A shape subgraph asking ConstantOfShape for 2^62 elements fails before allocating, on the
    uncached run and again on the next one (a failed run caches nothing)."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Mul", ["s", "big"], ["huge"], name="grow"),
             helper.make_node("ConstantOfShape", ["huge"], ["y"], name="fill")]
    m = _model(nodes, [("x", TensorProto.FLOAT, ["n", 2])], ["y"], [("big", np.array([1 << 31, 1 << 30], np.int64))])
    sess = InferenceSession(from_onnx(m, ConvertOptions(exact=True)))
    for _ in range(2):
        with pytest.raises(ExecutionError, match="fill.*ConstantOfShape"):
            sess.run(None, {"x": np.ones((2, 2), np.float32)})
    assert len(sess._cache) == 0


def test_large_constant_is_not_folded():
    """A constant-only ConstantOfShape bigger than the folding limit stays a node run every time (its
    memory is not held for the session's lifetime), and a failing one still fails at run time, naming
    itself."""
    nodes = [Node("ConstantOfShape", ["shape"], ["big"], {}, "fill"),
             Node("ConstantOfShape", ["bad"], ["worse"], {}, "fail"),
             Node("Shape", ["big"], ["y"], {}, "shape")]
    model = _dcm_model(nodes, [], ["y", "worse"], {"shape": np.array([1024, 1024], np.int64),
                                                   "bad": np.array([1 << 40, 1 << 40], np.int64)})
    sess = InferenceSession(model)
    described = {d["name"]: d for d in sess.describe()}
    assert not any(described[n].get("folded_into") for n in ("fill", "fail", "shape"))
    assert not described["fill"].get("shape_subgraph")  # not held once per input shape either
    with pytest.raises(ExecutionError, match="fail.*ConstantOfShape"):
        sess.run(None, {})


def test_inspect_kernels_counts_the_shape_subgraph(tmp_path, capsys):
    from dcm.cli import main
    from dcm.format.writer import write

    write(tmp_path / "m.dcm", from_onnx(_head_split(), ConvertOptions(exact=True)))
    assert main(["inspect", str(tmp_path / "m.dcm"), "--kernels"]) == 0
    assert "  5 nodes of shape arithmetic run once per input shape" in capsys.readouterr().out


def test_threads_sharing_a_session_with_different_shapes():
    from concurrent.futures import ThreadPoolExecutor

    m, sess = _head_split_session()
    xs = [np.arange(6 * n, dtype=np.float32).reshape(n, 6) for n in (1, 2, 3, 4)]
    wants = [_expected(m, {"x": x}) for x in xs]

    def runs(k: int) -> bool:
        for i in range(40):
            j = (i + k) % len(xs)
            got = sess.run(None, {"x": xs[j]})
            if not all(np.array_equal(g, w) for g, w in zip(got, wants[j])):
                return False
        return True

    with ThreadPoolExecutor(3) as pool:
        assert all(pool.map(runs, range(3)))
