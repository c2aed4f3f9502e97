"""The compiled transpose (_layout.c) and the Transpose kernel that runs it."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dcm.runtime.cpu import native
from dcm.runtime.cpu.shape import Transpose, batched_2d
from tests.runtime.switches import switched

pytestmark = pytest.mark.skipif(native.transpose2d is None, reason="this build has no _layout")


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 3), st.integers(1, 40), st.integers(1, 40), st.booleans(), st.sampled_from([1, 2]))
def test_transpose2d_matches_numpy(batch, rows, cols, simd, threads):
    """Every tile edge (sizes not multiples of 8, under 8), both paths, split or not."""
    x = np.random.default_rng(rows * 41 + cols).standard_normal((batch, rows, cols)).astype(np.float32)
    y = np.full((batch, cols, rows), np.nan, np.float32)
    with switched(native.set_layout_simd, simd):
        native.transpose2d(x, y, x.shape, threads)
    np.testing.assert_array_equal(y, x.transpose(0, 2, 1))


def test_transpose2d_threads_split_large_inputs():
    x = np.arange(3 * 300 * 520, dtype=np.float32).reshape(3, 300, 520)  # rows past one block of 256
    y = np.empty((3, 520, 300), np.float32)
    native.transpose2d(x, y, x.shape, 2)
    np.testing.assert_array_equal(y, x.transpose(0, 2, 1))


def test_transpose2d_refuses_bad_calls():
    x, y = np.ones((2, 3, 4), np.float32), np.ones((2, 4, 3), np.float32)
    native.transpose2d(x, y, x.shape)
    native.transpose2d(x[:0], y[:0], (0, 3, 4))  # nothing to move
    for shape, message in [((2, 3, 5), "must have 30 values"), ((-1, 3, 4), "negative")]:
        with pytest.raises(ValueError, match=message):
            native.transpose2d(x, y, shape)
    with pytest.raises(TypeError, match="float"):
        native.transpose2d(x.astype(np.float64), y, x.shape)
    with pytest.raises(ValueError, match="contiguous"):
        native.transpose2d(x, y.transpose(0, 2, 1), x.shape)


@pytest.mark.parametrize("shape, perm, plan", [
    ((1, 40, 56, 56), (0, 2, 3, 1), (1, 40, 3136)),   # NCHW -> NHWC
    ((1, 56, 56, 40), (0, 3, 1, 2), (1, 3136, 40)),   # and back
    ((2, 3, 197, 64), (0, 1, 3, 2), (6, 197, 64)),    # attention's keys
    ((5, 7), (1, 0), (1, 5, 7)),
    ((2, 5, 7), (2, 0, 1), (1, 10, 7)),
    ((2, 5, 1, 7), (0, 3, 2, 1), (2, 5, 7)),          # a size-1 axis anywhere
    ((2, 3, 4, 5), (0, 2, 1, 3), None),               # a trailing block that stays: numpy
    ((2, 3, 4), (2, 1, 0), None),                     # three blocks reversed
])
def test_batched_2d_plans(shape, perm, plan):
    assert batched_2d(shape, perm) == plan
    if plan is not None:
        x = np.arange(np.prod(shape)).reshape(shape)
        b, r, c = plan
        np.testing.assert_array_equal(x.reshape(b, r, c).transpose(0, 2, 1).reshape(x.transpose(perm).shape),
                                      x.transpose(perm))


class _Node:
    def __init__(self, perm):
        self.name, self.op, self.inputs, self.outputs, self.attrs = "t", "Transpose", ["x"], ["y"], {"perm": perm}


class _Ctx:
    threads = 2


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.float64, np.uint8])
@pytest.mark.parametrize("shape, perm", [((1, 12, 9, 11), (0, 2, 3, 1)), ((3, 4, 13, 17), (0, 1, 3, 2)),
                                         ((2, 3, 4, 5), (0, 2, 1, 3)), ((6, 5), (1, 0))])
def test_transpose_kernel_gives_numpy_result(dtype, shape, perm):
    """The compiled path for 4-byte values (float32 and int32 bits alike), numpy for the others."""
    x = (np.random.default_rng(0).standard_normal(shape) * 100).astype(dtype)
    (y,) = Transpose(_Node(list(perm)), _Ctx())(x)
    assert y.flags.c_contiguous and y.dtype == dtype
    np.testing.assert_array_equal(y, x.transpose(perm))
    (again,) = Transpose(_Node(list(perm)), _Ctx())(x + 1)  # a second run at the same shape
    np.testing.assert_array_equal(again, (x + 1).transpose(perm))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shapes, axis", [
    ([(1, 32, 64, 64), (1, 16, 64, 64)], 1),  # a batch-1 channel concat: two blocks, cut into runs
    ([(3, 5, 7), (3, 0, 7), (3, 9, 7)], 1),  # an empty input
    ([(2, 3, 300), (2, 3, 1)], 2),  # many rows, blocks of unequal sizes
    ([(4, 5), (2, 5)], 0),
])
def test_concat_matches_numpy(shapes, axis, threads):
    rng = np.random.default_rng(len(shapes))
    xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    want = np.concatenate(xs, axis)
    y = np.full(want.shape, np.nan, np.float32)
    native.concat(xs, y, int(np.prod(shapes[0][:axis])), threads)
    np.testing.assert_array_equal(y, want)


def test_concat_refuses_bad_calls():
    x, y = np.ones((2, 3), np.float32), np.ones((2, 5), np.float32)
    with pytest.raises(ValueError, match="y must have 12 values"):
        native.concat([x, x], y, 2)
    with pytest.raises(ValueError, match="input 1 must be 4-byte items"):
        native.concat([x, np.ones(4, np.float64)], y, 2)
    with pytest.raises(ValueError, match="whole rows of outer 4"):
        native.concat([x, np.ones(2, np.float32)], y, 4)
    with pytest.raises(ValueError, match="outer must be"):
        native.concat([], y, 1)
    with pytest.raises(TypeError, match="4- or 8-byte"):
        native.concat([x], np.ones(6, np.int16), 1)
    objects = np.array(["a", "b"], dtype=object)  # pointers copied as bytes would hold no reference
    with pytest.raises(TypeError, match="not objects"):
        native.concat([objects], np.empty(2, object), 1)
    with pytest.raises(ValueError, match="input 0 must be"):
        native.concat([objects], np.empty(2, np.int64), 1)


class _ConcatNode:
    def __init__(self, axis):
        self.name, self.op, self.inputs, self.outputs, self.attrs = "c", "Concat", ["a", "b"], ["y"], {"axis": axis}


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.float16])
@pytest.mark.parametrize("shapes, axis", [([(1, 64, 32, 32), (1, 32, 32, 32)], 1),
                                          ([(1, 64, 32, 32), (1, 64, 32, 32)], -1),
                                          ([(2, 3), (2, 4)], 1)])  # small: numpy
def test_concat_kernel_gives_numpy_result(dtype, shapes, axis):
    """On two threads: the compiled copy for large 4- and 8-byte arrays, numpy for the rest."""
    xs = [(np.random.default_rng(1).standard_normal(s) * 50).astype(dtype) for s in shapes]
    from dcm.runtime.cpu.shape import Concat

    (y,) = Concat(_ConcatNode(axis), _Ctx())(*xs)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, np.concatenate(xs, axis))


def test_concat_kernel_leaves_object_arrays_to_numpy():
    """8-byte items that are object pointers are never copied as bytes (their references count)."""
    from dcm.runtime.cpu.shape import Concat

    xs = [np.array([[str(i)] * 300] * 300, dtype=object) for i in range(2)]
    (y,) = Concat(_ConcatNode(0), _Ctx())(*xs)
    assert y.dtype == object and y[299, 0] == "0" and y[300, 0] == "1"


def test_concat_kernel_refuses_mismatched_shapes_as_numpy_does():
    from dcm.runtime.cpu.shape import Concat

    a, b = np.ones((1, 64, 32, 32), np.float32), np.ones((1, 64, 32, 33), np.float32)
    with pytest.raises(ValueError):
        Concat(_ConcatNode(1), _Ctx())(a, b)


def _windows_numpy(x, kernel, strides, dilations, pads):
    """window_rows' reference: the numpy gather pixel_gemm used, from a zero-padded channels-last copy."""
    n, h, w, c = x.shape
    (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr) = kernel, strides, dilations, pads
    padded = np.zeros((n, h + pt + pb, w + pl + pr, c), np.float32)
    padded[:, pt : pt + h, pl : pl + w] = x
    view = np.lib.stride_tricks.sliding_window_view(padded, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(1, 2))
    view = view[:, ::sh, ::sw, :, ::dh, ::dw]  # [N, OH, OW, C, kh, kw]
    return np.ascontiguousarray(view.transpose(0, 1, 2, 4, 5, 3)).reshape(-1, kh * kw * c)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape, kernel, strides, dilations, pads", [
    ((1, 56, 56, 64), (3, 3), (2, 2), (1, 1), (1, 1, 1, 1)),  # ResNet's stride-2 layer
    ((2, 7, 7, 5), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),  # two samples, a 7x7 plane
    ((1, 9, 6, 3), (2, 4), (1, 3), (2, 1), (3, 0, 0, 3)),  # pads wider than the kernel, dilation
    ((1, 5, 5, 2), (5, 5), (1, 1), (1, 1), (0, 0, 0, 0)),  # one output pixel
])
def test_window_rows_matches_numpy_gather(shape, kernel, strides, dilations, pads, threads):
    x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    want = _windows_numpy(x, kernel, strides, dilations, pads)
    got = np.full(want.shape, np.nan, np.float32)  # every value must be written, the zeros too
    native.window_rows(x, got, shape, kernel, strides, dilations, pads, threads)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("args, message", [
    (((1, 4, 4, 2), (5, 5), (1, 1), (1, 1), (0, 0, 0, 0)), "smaller than the kernel"),
    (((1, 4, 4, 2), (3, 3), (0, 1), (1, 1), (0, 0, 0, 0)), "out of bounds"),
    (((1, 4, 4, 2), (3, 3), (1, 1), (1, 1), (-1, 0, 0, 0)), "out of bounds"),
    (((1, 4, 4, 3), (3, 3), (1, 1), (1, 1), (0, 0, 0, 0)), "x must have 48"),
])
def test_window_rows_refuses_bad_calls(args, message):
    x, y = np.ones((1, 4, 4, 2), np.float32), np.ones((4, 18), np.float32)
    with pytest.raises(ValueError, match=message):
        native.window_rows(x, y, *args)
