"""Normalizations, reductions, ArgMax/ArgMin, CumSum and TopK on the CPU runtime against onnx's
reference evaluator: attribute and input forms, constant and run-time axes, several dtypes."""
import numpy as np
import pytest

pytest.importorskip("onnx")

from dcm.converters import ConvertOptions, from_onnx  # noqa: E402
from dcm.errors import ExecutionError, UnsupportedOpError  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402
from tests.runtime.opcheck import check, one_node, rand  # noqa: E402

REDUCE = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"]


def _session(model):
    return InferenceSession(from_onnx(model, ConvertOptions(exact=True)))


# ---- normalization -------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [-1, 1, 0, -2])
@pytest.mark.parametrize("bias", [True, False])
def test_layer_normalization_with_mean_and_inv_std_outputs(axis, bias):
    x = rand((2, 3, 4), seed=1)
    shape = x.shape[axis:]
    consts = {"scale": rand(shape, seed=2)} | ({"b": rand(shape, seed=3)} if bias else {})
    check("LayerNormalization", {"x": x}, {"axis": axis}, opset=17, consts=consts, n_out=3, rtol=1e-5)
    check("LayerNormalization", {"x": x, **consts}, {"axis": axis, "epsilon": 0.1}, opset=17, rtol=1e-5)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_layer_normalization_other_dtypes(dtype):
    x = rand((3, 8), dtype)
    got = check("LayerNormalization", {"x": x, "s": rand((8,), dtype, seed=1), "b": rand((8,), dtype, seed=2)},
                opset=17, rtol=5e-3 if dtype == np.float16 else 1e-6)
    assert got[0].dtype == dtype


def test_layer_normalization_statistics_are_in_the_stash_type():
    feeds = {"x": rand((3, 8), np.float16), "s": rand((8,), np.float16, seed=1)}
    y, mean, inv = _session(one_node("LayerNormalization", feeds, opset=17, n_out=3)).run(None, feeds)
    assert y.dtype == np.float16 and mean.dtype == inv.dtype == np.float32  # stash_type 1: float32
    x = feeds["x"].astype(np.float32)
    np.testing.assert_allclose(mean[:, 0], x.mean(1), rtol=1e-6)
    np.testing.assert_allclose(inv[:, 0], 1 / np.sqrt(x.var(1) + 1e-5), rtol=1e-5)


def test_layer_normalization_kept_plan_follows_its_inputs():
    """After a float32 call the kernel keeps x's shape's plan and calls the compiled kernel straight away:
    the same bits again; scale fed at run time in another shape, a float64 x, a strided x, a new shape
    of x, all take the full path to the reference's values."""
    feeds = {"x": rand((2, 5, 8), seed=1), "s": rand((8,), seed=2), "b": rand((8,), seed=3)}
    sess = _session(one_node("LayerNormalization", feeds, opset=17))
    (kernel,) = [k for k in sess._kernels if type(k).__name__ == "LayerNormalization"]
    (first,) = sess.run(None, feeds)
    assert list(kernel._plans) == [(2, 5, 8)]
    np.testing.assert_array_equal(sess.run(None, feeds)[0], first)
    check("LayerNormalization", feeds, opset=17, rtol=1e-5)
    y = kernel(feeds["x"], feeds["s"].reshape(1, 8), feeds["b"])[0]  # scale [1, 8]: checked again
    np.testing.assert_array_equal(y, first)
    np.testing.assert_allclose(kernel(feeds["x"].astype(np.float64), feeds["s"], feeds["b"])[0], first, rtol=1e-6,
                               atol=1e-6)
    wide = np.repeat(feeds["x"], 2, axis=2)[:, :, ::2]
    np.testing.assert_allclose(kernel(wide, feeds["s"], feeds["b"])[0], first, rtol=1e-6, atol=1e-6)  # numpy
    np.testing.assert_array_equal(kernel(feeds["x"][:1], feeds["s"], feeds["b"])[0], first[:1])
    assert set(kernel._plans) == {(2, 5, 8), (1, 5, 8)}


@pytest.mark.parametrize("opset,groups", [(18, 2), (18, 4), (21, 2), (21, 1)])
def test_group_normalization_scale_per_group_then_per_channel(opset, groups):
    """Opset 18: scale and bias hold one value per group; opset 21: one per channel."""
    x = rand((2, 4, 3, 3), seed=1)
    n = groups if opset < 21 else 4
    check("GroupNormalization", {"x": x, "s": rand((n,), seed=2), "b": rand((n,), seed=3)},
          {"num_groups": groups}, opset=opset, rtol=1e-5)


def test_group_normalization_bad_groups_name_the_node():
    feeds = {"x": rand((1, 6, 2)), "s": rand((6,)), "b": rand((6,))}
    model = one_node("GroupNormalization", feeds, {"num_groups": 3}, opset=21)
    model.graph.output[0].type.tensor_type.elem_type = 1
    model = from_onnx(model, ConvertOptions(exact=True))
    model.nodes[0].attrs["num_groups"] = 4
    with pytest.raises(ExecutionError, match="GroupNormalization_0.*4 channel groups"):
        InferenceSession(model).run(None, feeds)


@pytest.mark.parametrize("shape", [(2, 3, 5), (1, 2, 4, 4), (2, 2, 2, 3, 2)])
@pytest.mark.parametrize("opset", [7, 22])
def test_instance_normalization(shape, opset):
    c = shape[1]
    check("InstanceNormalization", {"x": rand(shape, seed=1)}, {"epsilon": 1e-3}, opset=opset,
          consts={"s": rand((c,), seed=2), "b": rand((c,), seed=3)}, rtol=1e-5)


@pytest.mark.parametrize("opset", [7, 9, 14, 15])
@pytest.mark.parametrize("runtime", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_batch_normalization_constant_or_runtime_statistics(opset, runtime, dtype):
    c = 3
    stats = {"s": rand((c,), dtype, seed=2), "b": rand((c,), dtype, seed=3), "m": rand((c,), dtype, seed=4),
             "v": rand((c,), dtype, seed=5, low=0.1, high=2)}
    x = {"x": rand((2, c, 4, 4), dtype, seed=1)}
    # onnx's reference fails on opsets 7 and 9 (it returns a tuple): onnxruntime is the oracle there.
    check("BatchNormalization", x | stats if runtime else x, {"epsilon": 1e-3}, opset=opset,
          consts=None if runtime else stats, rtol=5e-3 if dtype == np.float16 else 1e-5,
          oracle="onnxruntime" if opset < 14 else "reference")


def test_batch_normalization_per_activation_statistics_at_opset_7():
    stats = {k: rand((3, 2), seed=i, low=0.1) for i, k in enumerate("sbmv")}
    check("BatchNormalization", {"x": rand((2, 3, 2))}, {"spatial": 0}, opset=7, consts=stats, rtol=1e-5,
          oracle="onnxruntime")


def test_batch_normalization_training_mode_is_refused_at_load():
    c = 2
    stats = {k: rand((c,), seed=i, low=0.1) for i, k in enumerate("sbmv")}
    model = one_node("BatchNormalization", {"x": rand((1, c, 2))}, {"training_mode": 1}, opset=15, consts=stats,
                     n_out=3)
    for out in model.graph.output:
        out.type.tensor_type.elem_type = 1
    with pytest.raises(UnsupportedOpError, match="BatchNormalization_0.*training mode"):
        _session(model)


# ---- reductions ----------------------------------------------------------------------------

def _reduce_axes_as_input(op: str, opset: int) -> bool:
    return opset >= (13 if op == "ReduceSum" else 18)


@pytest.mark.parametrize("op", REDUCE)
@pytest.mark.parametrize("opset", [11, 13, 18])
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("axes", [[1], [0, -1], None])
def test_reduce_axes_as_attribute_constant_or_runtime_input(op, opset, keepdims, axes):
    x = rand((2, 3, 4), seed=1, low=0.1, high=2)  # positive: ReduceLogSum is defined
    attrs = {"keepdims": keepdims}
    if not _reduce_axes_as_input(op, opset):
        check(op, {"x": x}, attrs | ({"axes": axes} if axes else {}), opset=opset, rtol=1e-5)
        return
    if axes is None:
        check(op, {"x": x}, attrs, opset=opset, rtol=1e-5)
        return
    a = np.array(axes, np.int64)
    check(op, {"x": x}, attrs, opset=opset, consts={"axes": a}, rtol=1e-5)
    check(op, {"x": x, "axes": a}, attrs, opset=opset, rtol=1e-5)  # computed at run time


@pytest.mark.parametrize("op", REDUCE)
@pytest.mark.parametrize("noop", [0, 1])
def test_reduce_empty_axes_input_reduces_all_or_nothing(op, noop):
    x = rand((2, 3), seed=1, low=0.1, high=2)
    opset = 13 if op == "ReduceSum" else 18
    check(op, {"x": x, "axes": np.zeros(0, np.int64)}, {"noop_with_empty_axes": noop}, opset=opset, rtol=1e-5)
    check(op, {"x": x}, {"noop_with_empty_axes": noop, "keepdims": 0}, opset=opset, rtol=1e-5)


@pytest.mark.parametrize("op", REDUCE)
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float64, np.float16])
def test_reduce_other_dtypes(op, dtype):
    if op in ("ReduceLogSum", "ReduceLogSumExp") and dtype in (np.int32, np.int64):
        pytest.skip("onnx's reference refuses integers here (no longer in the schema from opset 28)")
    x = rand((3, 4), dtype, seed=2, low=1, high=4)
    # The result keeps the input's type (the reference's ReduceSumSquare widens int32 to int64).
    got = check(op, {"x": x}, {"keepdims": 0}, opset=18, consts={"axes": np.array([1], np.int64)},
                rtol=2e-3 if dtype == np.float16 else 1e-6, dtypes=False)
    assert got[0].dtype == dtype


@pytest.mark.parametrize("op", REDUCE)
def test_reduce_over_an_empty_set_gives_the_identity(op):
    x = np.zeros((2, 0, 3), np.float32)
    opset = 13 if op == "ReduceSum" else 18
    check(op, {"x": x}, {"keepdims": 1}, opset=opset, consts={"axes": np.array([1], np.int64)})


def test_reduce_max_min_on_bool():
    x = rand((3, 4), np.bool_)
    for op in ("ReduceMax", "ReduceMin"):
        check(op, {"x": x}, {"keepdims": 0}, opset=20, consts={"axes": np.array([1], np.int64)})


def test_reduce_log_sum_exp_does_not_overflow():
    x = np.array([[1000.0, 1000.0], [-1000.0, 0.0]], np.float32)
    got = check("ReduceLogSumExp", {"x": x}, {"keepdims": 0}, opset=18, consts={"axes": np.array([1], np.int64)})[0]
    np.testing.assert_allclose(got, [1000 + np.log(2), 0], rtol=1e-6)


def test_reduce_bad_axes_name_the_node():
    feeds = {"x": rand((2, 3)), "axes": np.array([0, 0], np.int64)}
    model = one_node("ReduceSum", feeds, opset=13)
    model.graph.input[1].type.tensor_type.shape.dim[0].dim_param = "n"
    sess = _session(model)
    with pytest.raises(ExecutionError, match="ReduceSum_0.*repeated axis"):
        sess.run(None, feeds)
    with pytest.raises(ExecutionError, match="ReduceSum_0.*axis 5 is out of bounds"):
        sess.run(None, {"x": feeds["x"], "axes": np.array([5], np.int64)})


# ---- ArgMax / ArgMin, CumSum, TopK ---------------------------------------------------------

@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("last", [0, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.uint8])
def test_argmax_argmin_with_ties(op, axis, keepdims, last, dtype):
    x = rand((3, 4, 5), dtype, low=0, high=3)  # few distinct values: many ties
    attrs = {"axis": axis, "keepdims": keepdims} | ({"select_last_index": last} if last else {})
    for opset in (12, 13) if last else (11, 13):
        assert check(op, {"x": x}, attrs, opset=opset)[0].dtype == np.int64


@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
@pytest.mark.parametrize("axis_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.int64, np.float64])
def test_cumsum_exclusive_reverse_runtime_axis(exclusive, reverse, axis_dtype, dtype):
    x = rand((3, 4), dtype, low=-5, high=5)
    for axis in (0, -1):
        check("CumSum", {"x": x, "axis": np.array(axis, axis_dtype)}, {"exclusive": exclusive, "reverse": reverse},
              opset=14, rtol=1e-6)
    check("CumSum", {"x": x}, {"exclusive": exclusive, "reverse": reverse}, opset=11,
          consts={"axis": np.array(1, axis_dtype)}, rtol=1e-6)


@pytest.mark.parametrize("largest", [1, 0])
@pytest.mark.parametrize("axis", [-1, 0, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.int32, np.uint8, np.float64])
def test_topk_ties_go_to_the_lower_index(largest, axis, dtype):
    x = rand((4, 6), dtype, low=0, high=3)  # many equal values
    k = 3
    check("TopK", {"x": x, "k": np.array([k], np.int64)}, {"axis": axis, "largest": largest, "sorted": 1},
          opset=11, n_out=2)
    check("TopK", {"x": x}, {"axis": axis, "largest": largest}, opset=11, consts={"k": np.array([k], np.int64)},
          n_out=2)
    if largest:
        check("TopK", {"x": x, "k": np.array([k], np.int64)}, {"axis": axis}, opset=10, n_out=2)
        check("TopK", {"x": x}, {"axis": axis, "k": k}, opset=9, n_out=2)  # k as an attribute before opset 10


@pytest.mark.parametrize("largest", [1, 0])
@pytest.mark.parametrize("k", [0, 1, 3, 9])
@pytest.mark.parametrize("dtype", [np.int32, np.float32, np.uint8])
def test_topk_small_k_of_long_rows_with_ties(largest, k, dtype):
    """Long rows take the partition path: its ties at the k-th value must still go to the lower index."""
    x = rand((5, 7, 40), dtype, low=0, high=4)
    for axis in (2, 0) if k <= 5 else (2,):
        check("TopK", {"x": x, "k": np.array([k], np.int64)}, {"axis": axis, "largest": largest}, opset=11, n_out=2)


@pytest.mark.parametrize("largest", [1, 0])
def test_topk_with_nan(largest):
    x = rand((3, 40), low=0, high=4).round()
    x[0, 5] = x[1, 0] = x[1, 7] = np.nan
    check("TopK", {"x": x, "k": np.array([4], np.int64)}, {"largest": largest}, opset=11, n_out=2)


def test_topk_lowest_integer_and_whole_axis():
    x = np.array([[np.iinfo(np.int64).min, 5, 5, np.iinfo(np.int64).min]], np.int64)
    for k in (0, 4):
        check("TopK", {"x": x, "k": np.array([k], np.int64)}, {}, opset=11, n_out=2)
        check("TopK", {"x": x, "k": np.array([k], np.int64)}, {"largest": 0}, opset=11, n_out=2)


def test_topk_k_beyond_the_axis_names_the_node():
    feeds = {"x": rand((2, 3)), "k": np.array([4], np.int64)}
    model = one_node("TopK", feeds, opset=11, n_out=2)
    for out in model.graph.output:
        out.type.tensor_type.elem_type = 1
    model.graph.output[1].type.tensor_type.elem_type = 7
    with pytest.raises(ExecutionError, match=r"TopK_0.*k = 4 is outside 0..3"):
        _session(model).run(None, feeds)


@pytest.mark.parametrize("op,attrs", [("ArgMax", {"axis": 2}), ("CumSum", {})])
def test_axis_out_of_range_names_the_node(op, attrs):
    feeds = {"x": rand((2, 3))} | ({"axis": np.array(2, np.int64)} if op == "CumSum" else {})
    model = from_onnx(one_node(op, feeds, {"axis": 1} if op == "ArgMax" else {}, opset=13), ConvertOptions(exact=True))
    model.nodes[0].attrs.update(attrs)
    with pytest.raises(ExecutionError, match=rf"{op}_0.*axis 2 is out of bounds"):
        InferenceSession(model).run(None, feeds)


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("opset", [7, 22])
def test_lp_normalization(p, axis, opset):
    x = rand((3, 4, 5), seed=1)
    x[0, 0] = x[:, 1, 2] = 0  # zero norms along every axis tried: 0, not NaN
    # onnx's reference takes x ** p for p = 1 (no absolute value): onnxruntime is the oracle.
    got = check("LpNormalization", {"x": x}, {"axis": axis, "p": p}, opset=opset, oracle="onnxruntime")[0]
    assert not np.isnan(got).any()


@pytest.mark.parametrize("axes", [None, [0, 2, 3], [1], [2, 3]])
@pytest.mark.parametrize("opset", [9, 13])
def test_mean_variance_normalization(axes, opset):
    """Against float64 arithmetic: the reference's E[x^2] - E[x]^2 in float32 loses digits (8e-5 on
    3-value groups), dcm's mean of squared deviations does not."""
    x = rand((2, 3, 4, 5), seed=1)
    got = check("MeanVarianceNormalization", {"x": x}, {} if axes is None else {"axes": axes}, opset=opset, rtol=2e-4)
    x = x.astype(np.float64)
    d = x - x.mean(axis=tuple(axes or (0, 2, 3)), keepdims=True)
    want = d / (np.sqrt(np.mean(d * d, axis=tuple(axes or (0, 2, 3)), keepdims=True)) + 1e-9)
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spatial", [(8, 8), (512, 512)])
def test_instance_normalization_keeps_float32_accuracy_on_large_maps(spatial):
    """Short rows sum their squares by einsum, long ones pairwise: both within 2e-6 of float64."""
    x = rand((1, 2) + spatial, seed=1) * 3 + 10  # an offset, as activations have
    ones, zeros = np.ones(2, np.float32), np.zeros(2, np.float32)
    got = check("InstanceNormalization", {"x": x}, opset=22, consts={"s": ones, "b": zeros},
                rtol=1e-4)[0]
    x64 = x.astype(np.float64)
    d = x64 - x64.mean(axis=(2, 3), keepdims=True)
    want = d / np.sqrt((d * d).mean(axis=(2, 3), keepdims=True) + 1e-5)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
