"""Elementwise math, comparisons and logic on the CPU runtime against onnx's reference evaluator:
several opsets and every dtype ONNX allows for the op that dcm stores."""
import numpy as np
import pytest

pytest.importorskip("onnx")

from dcm.converters import ConvertOptions, from_onnx  # noqa: E402
from dcm.errors import ExecutionError  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402
from tests.runtime.opcheck import check, one_node, rand  # noqa: E402

FLOATS = [np.float32, np.float16, np.float64]
SIGNED = [np.int8, np.int16, np.int32, np.int64]
INTS = SIGNED + [np.uint8]


@pytest.mark.parametrize("op,dtypes,low", [
    ("Abs", FLOATS + INTS, -100), ("Neg", FLOATS + SIGNED, -100), ("Sign", FLOATS + INTS, -3),
    ("Floor", FLOATS, -3), ("Ceil", FLOATS, -3), ("Round", FLOATS, -3),
    ("Exp", FLOATS, -3), ("Log", FLOATS, 0.1), ("Sqrt", FLOATS, 0), ("Reciprocal", FLOATS, 0.5), ("Erf", FLOATS, -3),
    ("Sin", FLOATS, -3), ("Cos", FLOATS, -3), ("Tan", FLOATS, -1), ("Asin", FLOATS, -0.9), ("Acos", FLOATS, -0.9),
    ("Atan", FLOATS, -3), ("Sinh", FLOATS, -3), ("Cosh", FLOATS, -3), ("Asinh", FLOATS, -3), ("Acosh", FLOATS, 1),
    ("Atanh", FLOATS, -0.9),
])
@pytest.mark.parametrize("opset", [7, 22])
def test_unary(op, dtypes, low, opset):
    since = {"Round": 11, "Sign": 9, "Erf": 9, "Sinh": 9, "Cosh": 9, "Asinh": 9, "Acosh": 9, "Atanh": 9}.get(op, 7)
    for dtype in dtypes:
        high = 0.9 if op in ("Asin", "Acos", "Atanh") else 100 if low == -100 else 3
        x = rand((3, 4), dtype, low=low, high=high)
        # The reference's Erf rounds to float32 (math.erf vectorized with otypes "f"), even for float64.
        check(op, {"x": x}, opset=max(opset, since), rtol=1e-7 if op == "Erf" and dtype == np.float64 else None)


def test_round_halves_go_to_even():
    x = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 2.4999, np.nan, np.inf], np.float32)
    got = check("Round", {"x": x}, opset=11)[0]
    np.testing.assert_array_equal(got[:6], [-2, -2, -0, 0, 2, 2])


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("dtype", FLOATS + INTS)
@pytest.mark.parametrize("opset", [7, 14])
def test_arithmetic_broadcasts_in_every_dtype(op, dtype, opset):
    a = rand((2, 3, 4), dtype, seed=1, low=-50 if dtype != np.uint8 else 0, high=50)
    b = rand((3, 1), dtype, seed=2, low=1, high=7)
    if op == "Div" and np.dtype(dtype).kind == "i":
        b[0, 0] = -3  # integer division truncates toward zero, for negative divisors too
    check(op, {"a": a, "b": b}, opset=opset)


def test_integer_division_is_exact_beyond_float64():
    a = np.array([2 ** 62 + 1, -(2 ** 62) - 3, 7, -7], np.int64)
    b = np.array([3, 5, -2, 2], np.int64)
    got = check("Div", {"a": a, "b": b}, opset=14)[0]
    assert got[0] == (2 ** 62 + 1) // 3 and got[2] == -3 and got[3] == -3


@pytest.mark.parametrize("op,what", [("Div", "division"), ("Mod", "modulo")])
def test_integer_division_by_zero_is_a_clear_error(op, what):
    feeds = {"a": np.array([1, 2], np.int32), "b": np.array([1, 0], np.int32)}
    sess = InferenceSession(from_onnx(one_node(op, feeds, opset=13), ConvertOptions(exact=True)))
    with pytest.raises(ExecutionError, match=f"{op}_0.*integer {what} by zero"):
        sess.run(None, feeds)


@pytest.mark.parametrize("base,exponent", [(np.float32, np.float32), (np.float32, np.int64), (np.float32, np.int32),
                                           (np.float64, np.float64), (np.float16, np.float16), (np.int32, np.int32),
                                           (np.int64, np.int64), (np.int32, np.float32), (np.int64, np.float64)])
def test_pow_keeps_the_base_type(base, exponent):
    a = rand((2, 5), base, seed=3, low=1, high=4)
    b = rand((5,), exponent, seed=4, low=0, high=3)
    check("Pow", {"a": a, "b": b}, opset=15, rtol=1e-5 if base == np.float32 else None)


def test_pow_float_at_opset_7():
    check("Pow", {"a": rand((2, 3), low=0.5), "b": rand((3,), seed=1)}, opset=7)


@pytest.mark.parametrize("fmod", [0, 1])
@pytest.mark.parametrize("dtype", SIGNED + [np.uint8, np.float32, np.float64, np.float16])
def test_mod_python_and_c_style(fmod, dtype):
    if np.dtype(dtype).kind == "f" and fmod == 0:
        pytest.skip("ONNX requires fmod=1 for floats")
    unsigned = np.dtype(dtype).kind == "u"
    a = rand((4, 6), dtype, seed=5, low=0 if unsigned else -20, high=20)
    b = rand((6,), dtype, seed=6, low=1, high=7)
    if not unsigned:
        b[::2] *= -1  # signs differ: the two styles disagree
    check("Mod", {"a": a, "b": b}, {"fmod": fmod}, opset=13)


@pytest.mark.parametrize("op", ["Max", "Min", "Sum", "Mean"])
@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("opset", [8, 13])
def test_variadic_broadcast(op, n, opset):
    shapes = [(2, 3, 4), (3, 1), (4,)][:n]
    check(op, {f"x{i}": rand(s, seed=i) for i, s in enumerate(shapes)}, opset=opset)


@pytest.mark.parametrize("op", ["Max", "Min"])
@pytest.mark.parametrize("dtype", INTS + [np.float16, np.float64])
def test_min_max_integers(op, dtype):
    check(op, {"a": rand((3, 4), dtype, seed=1), "b": rand((4,), dtype, seed=2)}, opset=13)


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.bool_, np.uint8])
@pytest.mark.parametrize("opset", [9, 16])
def test_where_broadcasts_a_bool_condition(dtype, opset):
    check("Where", {"c": rand((3, 1, 4), np.bool_), "x": rand((2, 4), dtype, seed=1), "y": rand((1,), dtype, seed=2)},
          opset=opset)


@pytest.mark.parametrize("op,since", [("Equal", 7), ("Less", 7), ("Greater", 7), ("LessOrEqual", 12),
                                      ("GreaterOrEqual", 12)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int64, np.int32, np.int8, np.uint8])
def test_comparisons_give_bool(op, since, dtype):
    a = rand((3, 4), dtype, seed=1, low=-2, high=2)
    b = rand((4,), dtype, seed=2, low=-2, high=2)
    for opset in sorted({since, 13}):
        if opset < 11 and (dtype != np.float32 or op == "Equal"):
            continue  # older Equal took integers and bool only; older Less/Greater floats
        assert check(op, {"a": a, "b": b}, opset=opset)[0].dtype == np.bool_


def test_equal_on_int64_and_bool():
    check("Equal", {"a": np.array([1, 2, 3], np.int64), "b": np.array([[1], [3]], np.int64)}, opset=7)
    check("Equal", {"a": rand((2, 3), np.bool_), "b": rand((3,), np.bool_, seed=1)}, opset=11)


@pytest.mark.parametrize("op", ["And", "Or", "Xor"])
def test_boolean_logic_broadcasts(op):
    check(op, {"a": rand((2, 3, 4), np.bool_), "b": rand((3, 1), np.bool_, seed=1)}, opset=7)


def test_not():
    check("Not", {"x": rand((3, 4), np.bool_)}, opset=7)


@pytest.mark.parametrize("positive,negative", [(1, 1), (1, 0), (0, 1), (0, 0)])
def test_isinf_and_isnan(positive, negative):
    x = np.array([np.inf, -np.inf, np.nan, 0.0, 1e4], np.float32)
    check("IsInf", {"x": x}, {"detect_positive": positive, "detect_negative": negative}, opset=10)
    check("IsInf", {"x": x.astype(np.float64)}, {"detect_positive": positive, "detect_negative": negative}, opset=20)
    check("IsNaN", {"x": x}, opset=9)
    check("IsNaN", {"x": x.astype(np.float16)}, opset=20)


def test_broadcast_mismatch_names_the_node():
    feeds = {"a": rand((2, 3)), "b": rand((4,))}
    model = one_node("Add", feeds, opset=13)
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "n"  # declared dynamic: fails at run time
    sess = InferenceSession(from_onnx(model, ConvertOptions(exact=True)))
    with pytest.raises(ExecutionError, match=r"Add_0.*could not be broadcast"):
        sess.run(None, feeds)


@pytest.mark.parametrize("exponent", [2.0, 3.0, 0.5, 1.5])
@pytest.mark.parametrize("dtype", FLOATS)
def test_pow_common_exponents_match_np_power(exponent, dtype):
    """2, 3 and 0.5 skip np.power's slow path: same results, Inf, NaN, -0 and rank growth included."""
    a = np.concatenate([rand((20,), dtype, low=-3, high=3),
                        np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e4], dtype)]).reshape(2, 13)
    for b in (np.array(exponent, dtype), np.full((1, 1), exponent, dtype), np.full((1, 1, 1), exponent, dtype)):
        check("Pow", {"a": a, "b": b}, opset=15, rtol=1e-6 if dtype == np.float32 else None)
        check("Pow", {"a": a}, consts={"b": b}, opset=15, rtol=1e-6 if dtype == np.float32 else None)


@pytest.mark.parametrize("op", ["BitwiseAnd", "BitwiseOr", "BitwiseXor"])
@pytest.mark.parametrize("dtype", INTS)
def test_bitwise_broadcasts(op, dtype):
    low = 0 if dtype == np.uint8 else -100
    check(op, {"a": rand((2, 3, 4), dtype, seed=1, low=low, high=100), "b": rand((3, 1), dtype, seed=2, low=low, high=100)},
          opset=18)


@pytest.mark.parametrize("dtype", INTS)
def test_bitwise_not(dtype):
    check("BitwiseNot", {"x": rand((3, 4), dtype, low=0 if dtype == np.uint8 else -100, high=100)}, opset=18)


@pytest.mark.parametrize("op,feeds", [
    ("Add", {"a": np.zeros((100_000, 1), np.float32), "b": np.zeros((1, 100_000), np.float32)}),
    ("Max", {"a": np.zeros((100_000, 1), np.float32), "b": np.zeros((1, 100_000), np.float32)}),
    ("Equal", {"a": np.zeros((100_000, 1), np.int64), "b": np.zeros((1, 100_000), np.int64)}),
    ("Where", {"c": np.zeros((100_000, 1), bool), "x": np.zeros((1, 100_000), np.float32),
               "y": np.zeros((1,), np.float32)}),
])
def test_huge_broadcast_is_refused_before_allocating(op, feeds):
    """10^5 x 10^5 values (40 GB) would be an allocation failure or worse: a clear error instead."""
    model = one_node(op, feeds, opset=16)
    model.graph.output[0].type.tensor_type.elem_type = 9 if op == "Equal" else 1
    with pytest.raises(ExecutionError, match=rf"{op}_0.*exceeds the limit"):
        InferenceSession(from_onnx(model, ConvertOptions(exact=True))).run(None, feeds)


@pytest.mark.parametrize("direction", ["LEFT", "RIGHT"])
@pytest.mark.parametrize("dtype", INTS)
def test_bitshift_including_shifts_out_of_range(direction, dtype):
    """Signed types (opset 28): arithmetic right shifts, left shifts past the sign bit, and shifts
    that are negative or at least the width (0, or -1 for a negative x shifted right)."""
    bits = 8 * np.dtype(dtype).itemsize
    low = 0 if dtype == np.uint8 else -100
    x = rand((3, 6), dtype, low=low, high=100)
    y = np.array([0, 1, 3, bits - 1, bits, bits + 3] if dtype == np.uint8 else [0, 1, bits - 1, bits, -1, -bits], dtype)
    check("BitShift", {"x": x, "y": y}, {"direction": direction}, opset=28)
    if dtype == np.uint8:
        check("BitShift", {"x": x, "y": np.array([0, 1, 2, 3, 4, 7], dtype)}, {"direction": direction}, opset=11)
