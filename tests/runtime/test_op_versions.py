"""Each math, activation, normalization and reduction op at every opset version onnx defines for it
from 7 on (each version where its definition changed, and the newest opset), against onnx's
reference evaluator, or onnxruntime where the reference does not follow an older version."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
import onnx.defs  # noqa: E402

from tests.runtime.opcheck import check, rand  # noqa: E402

UNARY = {  # op -> lowest input value
    "Abs": -3, "Neg": -3, "Exp": -3, "Log": 0.1, "Sqrt": 0, "Reciprocal": 0.5, "Erf": -3, "Floor": -3, "Ceil": -3,
    "Round": -3, "Sign": -3, "Elu": -3, "Selu": -3, "Celu": -3, "Softplus": -3, "Softsign": -3, "HardSigmoid": -3,
    "HardSwish": -3, "Gelu": -3, "Mish": -3, "ThresholdedRelu": -3, "Relu": -3, "LeakyRelu": -3, "Sigmoid": -3,
    "Tanh": -3, "Swish": -3, "Shrink": -3, "Sin": -3, "Cos": -3, "Tan": -1, "Asin": -0.9, "Acos": -0.9, "Atan": -3,
    "Sinh": -3, "Cosh": -3, "Asinh": -3, "Acosh": 1, "Atanh": -0.9,
}
BINARY = ["Add", "Sub", "Mul", "Div", "Pow", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"]
VARIADIC = ["Min", "Max", "Sum", "Mean"]
LOGIC = ["And", "Or", "Xor", "BitwiseAnd", "BitwiseOr", "BitwiseXor"]
REDUCE = ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"]
OTHERS = ["Not", "Where", "IsNaN", "IsInf", "Mod", "PRelu", "Clip", "Softmax", "LogSoftmax", "LayerNormalization",
          "RMSNormalization",
          "GroupNormalization", "InstanceNormalization", "BatchNormalization", "ArgMax", "ArgMin", "CumSum", "TopK",
          "Hardmax", "LpNormalization", "MeanVarianceNormalization", "BitwiseNot", "BitShift"]
NEWEST = onnx.defs.onnx_opset_version()


def _versions(op: str) -> list[int]:
    changed = {s.since_version for s in onnx.defs.get_all_schemas_with_history() if s.domain == "" and s.name == op}
    return sorted({max(v, 7) for v in changed} | {NEWEST})


CASES = [(op, v) for op in list(UNARY) + BINARY + VARIADIC + LOGIC + REDUCE + OTHERS for v in _versions(op)]


def _case(op: str, v: int) -> dict:
    """check()'s arguments for ``op`` at opset ``v``."""
    x = rand((2, 3, 4), seed=1)
    if op in UNARY:
        return {"inputs": {"x": rand((2, 3, 4), low=UNARY[op], high=0.9 if UNARY[op] == -0.9 else 3)}}
    if op in BINARY:
        return {"inputs": {"a": rand((2, 3, 4), low=0.5 if op == "Pow" else -3), "b": rand((3, 1), seed=2, low=0.5)}}
    if op in VARIADIC:
        return {"inputs": {"a": x, "b": rand((4,), seed=2), "c": rand((3, 1), seed=3)}}
    if op in LOGIC:
        dtype = np.int32 if op.startswith("Bitwise") else np.bool_
        return {"inputs": {"a": rand((2, 3), dtype, low=-50, high=50), "b": rand((3,), dtype, seed=2, low=-50, high=50)}}
    if op in REDUCE:
        positive = {"x": rand((2, 3, 4), low=0.1)}
        if v < (13 if op == "ReduceSum" else 18):
            return {"inputs": positive, "attrs": {"axes": [1], "keepdims": 0}}
        return {"inputs": positive, "consts": {"axes": np.array([1], np.int64)}, "attrs": {"keepdims": 0}}
    c = 3
    stats = {"s": rand((c,), seed=2), "b": rand((c,), seed=3), "m": rand((c,), seed=4), "v": rand((c,), seed=5, low=0.5)}
    return {
        "Not": {"inputs": {"x": rand((2, 3), np.bool_)}},
        "Where": {"inputs": {"c": rand((2, 1, 4), np.bool_), "x": x, "y": rand((4,), seed=2)}},
        "IsNaN": {"inputs": {"x": np.array([np.nan, 1, np.inf], np.float32)}},
        "IsInf": {"inputs": {"x": np.array([np.nan, 1, np.inf, -np.inf], np.float32)}},
        "Mod": {"inputs": {"a": rand((3, 4), np.int32, low=-20, high=20), "b": rand((4,), np.int32, seed=2, low=1, high=7)}},
        "PRelu": {"inputs": {"x": x}, "consts": {"slope": rand((4,), seed=2, low=0)}},
        "Clip": ({"inputs": {"x": x}, "attrs": {"min": -1.0, "max": 2.0}} if v < 11 else
                 {"inputs": {"x": x}, "consts": {"lo": np.array(-1, np.float32), "hi": np.array(2, np.float32)}}),
        "Softmax": {"inputs": {"x": x}, "attrs": {"axis": 1}, "oracle": "onnxruntime" if v < 13 else "reference"},
        "LogSoftmax": {"inputs": {"x": x}, "attrs": {"axis": 1}, "oracle": "onnxruntime" if v < 13 else "reference"},
        "LayerNormalization": {"inputs": {"x": x}, "consts": {"s": rand((4,), seed=2)}, "attrs": {"axis": -1}},
        "RMSNormalization": {"inputs": {"x": x}, "consts": {"s": rand((3, 4), seed=2)}, "attrs": {"axis": 1}},
        "GroupNormalization": {"inputs": {"x": rand((2, 4, 3), seed=1)}, "attrs": {"num_groups": 2},
                               "consts": {"s": rand((2 if v < 21 else 4,), seed=2),
                                          "b": rand((2 if v < 21 else 4,), seed=3)}},
        "InstanceNormalization": {"inputs": {"x": x}, "consts": {"s": stats["s"], "b": stats["b"]}},
        "BatchNormalization": {"inputs": {"x": x}, "consts": stats, "oracle": "onnxruntime" if v < 14 else "reference"},
        "Hardmax": {"inputs": {"x": x}, "attrs": {"axis": 1}, "oracle": "onnxruntime" if v < 13 else "reference"},
        # onnx's reference LpNormalization forgets |x| for p = 1 (see test_norm_reduce_ops).
        "LpNormalization": {"inputs": {"x": x}, "attrs": {"axis": 1, "p": 1}, "oracle": "onnxruntime"},
        "MeanVarianceNormalization": {"inputs": {"x": rand((2, 3, 4, 5), seed=1)}},
        "BitwiseNot": {"inputs": {"x": rand((2, 3), np.int16, low=-50, high=50)}},
        "BitShift": {"inputs": {"x": rand((2, 3), np.uint8, low=0, high=200), "y": np.array([0, 3, 7], np.uint8)},
                     "attrs": {"direction": "RIGHT"}},
        "ArgMax": {"inputs": {"x": x}, "attrs": {"axis": 1}},
        "ArgMin": {"inputs": {"x": x}, "attrs": {"axis": 1}},
        "CumSum": {"inputs": {"x": x}, "consts": {"axis": np.array(1, np.int64)}},
        "TopK": ({"inputs": {"x": x}, "attrs": {"k": 2, "axis": 1}, "n_out": 2} if v < 10 else
                 {"inputs": {"x": x}, "consts": {"k": np.array([2], np.int64)}, "attrs": {"axis": 1}, "n_out": 2}),
    }[op]


@pytest.mark.parametrize("op,opset", CASES, ids=[f"{op}-{v}" for op, v in CASES])
def test_op_at_every_version(op, opset):
    args = _case(op, opset)
    check(op, args["inputs"], args.get("attrs"), opset=opset, consts=args.get("consts"), n_out=args.get("n_out", 1),
          rtol=1e-5, oracle=args.get("oracle", "reference"))
