"""One-node ONNX models run by dcm's CPU runtime and by onnx's reference evaluator, compared.

Shared by the op tests: inputs are graph inputs (run-time values) unless given as constants, so
nothing is folded away by the converter.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from dcm.converters import ConvertOptions, from_onnx
from dcm.runtime import InferenceSession

TOLERANCE = {np.dtype(np.float16): 2e-3, np.dtype(np.float32): 2e-6, np.dtype(np.float64): 1e-12}


def one_node(op: str, inputs: dict[str, np.ndarray], attrs: dict[str, Any] | None = None, opset: int = 18,
             consts: dict[str, np.ndarray] | None = None, n_out: int = 1, order: list[str] | None = None):
    """A model of one ``op`` node: ``inputs`` are fed at run time, ``consts`` are initializers;
    ``order`` lists the node's input names (\"\" for an absent one), by default inputs then consts."""
    consts = consts or {}
    names = order if order is not None else list(inputs) + list(consts)
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op, names, outs, **(attrs or {}))
    graph = helper.make_graph(
        [node], "t",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 21 else 10
    return model


def run_both(model, inputs: dict[str, np.ndarray], oracle: str = "reference") -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(dcm's outputs, the oracle's: onnx's reference evaluator, or "onnxruntime" where the reference
    does not follow an older opset). The outputs are declared with the reference's types (the
    converter reads them; shape inference may not know them)."""
    if oracle == "onnxruntime":  # (used for ops whose outputs have the first input's type)
        import onnxruntime as ort

        for out in model.graph.output:
            out.type.tensor_type.elem_type = model.graph.input[0].type.tensor_type.elem_type
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        want = sess.run(None, inputs)
    else:
        with np.errstate(all="ignore"), warnings.catch_warnings():  # the reference's own overflows, empty means
            warnings.simplefilter("ignore")
            want = [np.asarray(w) for w in ReferenceEvaluator(model).run(None, inputs)]
    for out, w in zip(model.graph.output, want):
        out.type.tensor_type.elem_type = helper.np_dtype_to_tensor_dtype(w.dtype)
    got = InferenceSession(from_onnx(model, ConvertOptions(exact=True))).run(None, inputs)
    return got, want


def check(op: str, inputs: dict[str, np.ndarray], attrs: dict[str, Any] | None = None, opset: int = 18,
          consts: dict[str, np.ndarray] | None = None, n_out: int = 1, order: list[str] | None = None,
          rtol: float | None = None, dtypes: bool = True, oracle: str = "reference") -> list[np.ndarray]:
    """Same dtype (unless ``dtypes`` is False), shape and values as the oracle; NaN where it has NaN."""
    got, want = run_both(one_node(op, inputs, attrs, opset, consts, n_out, order), inputs, oracle)
    for g, w in zip(got, want):
        if dtypes:
            assert g.dtype == w.dtype, f"{op}: dtype {g.dtype}, reference {w.dtype}"
        assert g.shape == w.shape, f"{op}: shape {g.shape}, reference {w.shape}"
        if w.dtype.kind == "f":
            tol = rtol if rtol is not None else TOLERANCE[w.dtype]
            np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=tol, atol=tol, err_msg=op)
        else:
            np.testing.assert_array_equal(g, w, err_msg=op)
    return got


def rand(shape, dtype=np.float32, seed: int = 0, low: float = -3, high: float = 3) -> np.ndarray:
    """Random values of ``dtype``: floats in [low, high), integers in [low, high] (never 0 when low > 0)."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        return rng.integers(max(low, np.iinfo(dtype).min), high, size=shape, endpoint=True).astype(dtype)
    return rng.uniform(low, high, size=shape).astype(dtype)
