"""Kernels marked ``quiet`` let a session skip np.errstate: none may raise a numpy warning on any
input. Each runs here, alone in its session, on Inf, NaN and extreme values with warnings as errors."""
import warnings

import numpy as np
import pytest

pytest.importorskip("onnx")

from dcm.converters import ConvertOptions, from_onnx  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402
from dcm.runtime.cpu import REGISTRY  # noqa: E402
from tests.runtime.opcheck import one_node  # noqa: E402

F = np.array([[np.inf, -np.inf, np.nan, 3e38, -3e38, 0.0, -0.0, 1e-45]], np.float32)
I8 = np.array([[-128, 127, 0, -1, 1, 5, -5, 2]], np.int8)
B = np.array([[True, False, True, True, False, False, True, False]])

# op -> (inputs, attributes, opset, outputs)
CASES = {
    "Abs": ([F], {}, 13, 1), "Neg": ([I8], {}, 13, 1), "Floor": ([F], {}, 13, 1), "Ceil": ([F], {}, 13, 1),
    "Round": ([F], {}, 13, 1), "Sign": ([F], {}, 13, 1), "Relu": ([F], {}, 14, 1),
    "Max": ([F, F[:, ::-1].copy()], {}, 13, 1), "Min": ([F, F[:, ::-1].copy()], {}, 13, 1),
    "Where": ([B, F, F[:, ::-1].copy()], {}, 16, 1), "Equal": ([F, F], {}, 13, 1), "Less": ([F, F], {}, 13, 1),
    "LessOrEqual": ([F, F], {}, 16, 1), "Greater": ([F, F], {}, 13, 1), "GreaterOrEqual": ([F, F], {}, 16, 1),
    "And": ([B, B[:, ::-1].copy()], {}, 7, 1), "Or": ([B, B], {}, 7, 1), "Xor": ([B, B], {}, 7, 1),
    "Not": ([B], {}, 7, 1), "IsNaN": ([F], {}, 13, 1), "IsInf": ([F], {"detect_negative": 0}, 10, 1),
    "ThresholdedRelu": ([F], {}, 10, 1), "ReduceMax": ([F], {"keepdims": 0}, 13, 1),
    "ReduceMin": ([F], {"keepdims": 0}, 13, 1), "ArgMax": ([F], {"axis": 1}, 13, 1),
    "ArgMin": ([F], {"axis": 1}, 13, 1), "TopK": ([F, np.array([3], np.int64)], {}, 11, 2),
    "Hardmax": ([F], {}, 13, 1), "BitwiseAnd": ([I8, I8], {}, 18, 1), "BitwiseOr": ([I8, I8], {}, 18, 1),
    "BitwiseXor": ([I8, I8], {}, 18, 1), "BitwiseNot": ([I8], {}, 18, 1),
    "BitShift": ([I8, I8], {"direction": "LEFT"}, 28, 1),
}


def test_the_cases_are_quiet_kernels():
    """(So that each case below checks what a quiet session skips.)"""
    loud = sorted(op for op in CASES if not REGISTRY[op].quiet)
    assert not loud, f"not quiet: {loud}"


@pytest.mark.parametrize("op", sorted(CASES))
def test_quiet_kernel_never_warns(op):
    inputs, attrs, opset, n_out = CASES[op]
    feeds = {f"x{i}": x for i, x in enumerate(inputs)}
    model = one_node(op, feeds, attrs, opset=opset, n_out=n_out)
    for out in model.graph.output:  # declared for the converter; the values are compared with numpy below
        out.type.tensor_type.elem_type = 1
    sess = InferenceSession(from_onnx(model, ConvertOptions(exact=True)))
    assert sess._quiet
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        sess.run(None, feeds)
