"""Reshape, Unsqueeze, Squeeze and Transpose check what they can once (at load, per input rank, per
distinct run-time shape): the results and the errors stay those of the plain definitions."""
import numpy as np
import pytest

from dcm.encoder.codec import encode_raw
from dcm.errors import ExecutionError
from dcm.format.model import Model, Node, ValueInfo
from dcm.runtime import InferenceSession


def _session(op, inputs, consts=None, attrs=None):
    nodes = [Node(op, [n for n, _, _ in inputs] + list(consts or {}), ["y"], attrs or {}, "n")]
    return InferenceSession(Model([ValueInfo(n, t, s) for n, t, s in inputs], [ValueInfo("y", "float32", [])], nodes,
                                  {k: encode_raw(np.asarray(v), k) for k, v in (consts or {}).items()}))


def test_reshape_run_time_shape_refilled_in_place():
    """The caller refills the shape array it feeds: the new values are used, not the last target."""
    sess = _session("Reshape", [("x", "float32", [6]), ("s", "int64", [2])])
    x = np.arange(6, dtype=np.float32)
    shape = np.array([2, 3], np.int64)
    assert sess.run(None, {"x": x, "s": shape})[0].shape == (2, 3)
    shape[:] = [3, 2]
    assert sess.run(None, {"x": x, "s": shape})[0].shape == (3, 2)
    shape[:] = [-2, 3]
    with pytest.raises(ExecutionError, match="'n' \\(Reshape\\).*sizes are >= 0"):
        sess.run(None, {"x": x, "s": shape})


def test_reshape_bad_constant_target_fails_at_run_naming_the_node():
    sess = _session("Reshape", [("x", "float32", [6])], {"s": np.array([-1, -1], np.int64)})
    with pytest.raises(ExecutionError, match="'n' \\(Reshape\\).*at most one -1"):
        sess.run(None, {"x": np.zeros(6, np.float32)})


@pytest.mark.parametrize("shape, axes", [((), [0]), ((3,), [-1]), ((2, 3), [0, 3]), ((2, 3), [-1, 1])])
def test_unsqueeze_matches_expand_dims_at_every_rank(shape, axes):
    sess = _session("Unsqueeze", [("x", "float32", list(shape))], {"a": np.array(axes, np.int64)})
    x = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    rank = len(shape) + len(axes)
    want = np.expand_dims(x, tuple(a % rank for a in axes))
    for _ in range(2):  # the second run takes the index cached for this rank
        got = sess.run(None, {"x": x})[0]
        assert got.shape == want.shape and isinstance(got, np.ndarray)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shape, axes", [((1,), [0]), ((2, 1, 3, 1), [1, -1]), ((1, 1), [-2])])
def test_squeeze_matches_numpy(shape, axes):
    sess = _session("Squeeze", [("x", "float32", ["a"] * len(shape))], {"a": np.array(axes, np.int64)})
    x = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    want = np.squeeze(x, tuple(axes))
    for _ in range(2):
        got = sess.run(None, {"x": x})[0]
        assert got.shape == want.shape and isinstance(got, np.ndarray)
        np.testing.assert_array_equal(got, want)
    bad = np.zeros([2 if d == 1 else d for d in shape], np.float32)  # same rank, the squeezed axes not 1
    with pytest.raises(ExecutionError, match="'n' \\(Squeeze\\).*size is not 1"):
        sess.run(None, {"x": bad})


@pytest.mark.parametrize("op, axes", [("Squeeze", [0, 0]), ("Unsqueeze", [1, 1]), ("Unsqueeze", [5])])
def test_bad_axes_fail_naming_the_node(op, axes):
    sess = _session(op, [("x", "float32", [1, 1])], {"a": np.array(axes, np.int64)})
    with pytest.raises(ExecutionError, match=f"'n' \\({op}\\)"):
        sess.run(None, {"x": np.zeros((1, 1), np.float32)})


@pytest.mark.parametrize("perm", [[0, 0, 1], [0, 1]])
def test_transpose_perm_that_does_not_fit_fails_naming_the_node(perm):
    sess = _session("Transpose", [("x", "float32", [1, 2, 3])], attrs={"perm": perm})
    with pytest.raises(ExecutionError, match="'n' \\(Transpose\\)"):
        sess.run(None, {"x": np.zeros((1, 2, 3), np.float32)})


@pytest.mark.parametrize("shape, perm", [((1, 5, 4), (1, 0, 2)), ((5, 1, 4), (1, 0, 2)), ((2, 1, 2), (2, 1, 0)),
                                         ((3, 1, 1, 2), (2, 0, 3, 1)), ((2, 2), (1, 0))])
def test_transpose_that_moves_only_unit_axes_is_a_view_and_right(shape, perm):
    """Axes of size 1 moved alone need no copy; axes of equal size swapped ((2, 2)) still do."""
    sess = _session("Transpose", [("x", "float32", list(shape))], attrs={"perm": list(perm)})
    x = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    got = sess.run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, np.transpose(x, perm))
    assert got.flags.c_contiguous


@pytest.mark.parametrize("shape, axis, index", [((3, 4, 5), 0, 1), ((3, 4, 5), -1, -2), ((3, 4, 5), 1, 3), ((4,), 0, -4)])
def test_gather_of_one_index_is_a_view_and_right(shape, axis, index):
    sess = _session("Gather", [("x", "float32", list(shape))], {"i": np.array(index, np.int64)}, {"axis": axis})
    x = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    got = sess.run(None, {"x": x})[0]
    want = np.take(x, np.array(index), axis=axis)
    assert isinstance(got, np.ndarray) and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("index", [3, -4])
def test_gather_of_one_index_out_of_range_names_the_node(index):
    sess = _session("Gather", [("x", "float32", [3, 2])], {"i": np.array(index, np.int64)})
    with pytest.raises(ExecutionError, match="'n' \\(Gather\\).*out of"):
        sess.run(None, {"x": np.zeros((3, 2), np.float32)})


def _packed_qkv(sink_perm, tail="Transpose"):
    """torch's split of a packed [S, 1, 3 E] projection: Unsqueeze, Transpose, Squeeze, one Gather
    per part, each reshaped into heads and permuted (``tail``: what reads the heads instead)."""
    nodes = [Node("Unsqueeze", ["x", "zero"], ["u"], {}, "unsqueeze"),
             Node("Transpose", ["u"], ["t"], {"perm": [3, 1, 2, 0, 4]}, "split"),
             Node("Squeeze", ["t", "three"], ["s"], {}, "squeeze")]
    for i in range(3):
        nodes += [Node("Gather", ["s", f"i{i}"], [f"g{i}"], {"axis": 0}, f"gather{i}"),
                  Node("Reshape", [f"g{i}", "heads"], [f"h{i}"], {}, f"heads{i}"),
                  Node(tail, [f"h{i}"] + (["two"] if tail == "Mul" else []), [f"y{i}"],
                       {"perm": sink_perm} if tail == "Transpose" else {}, f"out{i}")]
    consts = {"zero": np.array([0], np.int64), "three": np.array([3], np.int64), "heads": np.array([4, 2, 3], np.int64),
              "two": np.array(2, np.float32), **{f"i{i}": np.array(i, np.int64) for i in range(3)}}
    return Model([ValueInfo("x", "float32", [4, 1, 3, 6])], [ValueInfo(f"y{i}", "float32", []) for i in range(3)],
                 nodes, {k: encode_raw(v, k) for k, v in consts.items()})


def _packed_qkv_reference(x, sink_perm, tail):
    t = np.transpose(x[None], (3, 1, 2, 0, 4))[:, :, :, 0]
    heads = [t[i].reshape(4, 2, 3) for i in range(3)]
    return [np.transpose(h, sink_perm) if tail == "Transpose" else h * 2 for h in heads]


@pytest.mark.parametrize("sink_perm, tail, view", [([1, 0, 2], "Transpose", True), ([0, 2, 1], "Transpose", False),
                                                   (None, "Mul", False)])
def test_transpose_read_only_through_views_by_row_keeping_transposes_is_a_view(sink_perm, tail, view):
    """The split's Transpose copies nothing when only views lead to Transposes that keep rows whole;
    a Transpose moving the last axis, or a Mul, after it keeps the copy."""
    model = _packed_qkv(sink_perm, tail)
    x = np.arange(72, dtype=np.float32).reshape(4, 1, 3, 6)
    want = _packed_qkv_reference(x, sink_perm, tail)
    for optimize in (True, False):
        sess = InferenceSession(model, optimize=optimize)
        split = next(d for d in sess.describe() if d["name"] == "split")
        assert (split.get("kernel") == "view") == (view and optimize)
        for got, w in zip(sess.run(None, {"x": x}), want):
            np.testing.assert_array_equal(got, w)
            assert got.flags.c_contiguous


def test_a_transpose_of_a_scalar_loads_and_runs():
    """A Transpose of a 0-d value (perm []) read by an elementwise op: the view pass once indexed the
    empty permutation's last axis, an IndexError at load (the fuzzer found it)."""
    nodes = [Node("Transpose", ["x"], ["t"], {"perm": []}, "transpose"), Node("Neg", ["t"], ["y"], {}, "neg")]
    sess = InferenceSession(Model([ValueInfo("x", "float32", [])], [ValueInfo("y", "float32", [])], nodes, {}))
    (y,) = sess.run(None, {"x": np.array(2.5, np.float32)})
    assert y.shape == () and y == -2.5
