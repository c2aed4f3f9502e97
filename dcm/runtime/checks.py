"""Load-time checks of every node's attributes and input count, shared by the CPU and GPU backends.

A .dcm may come from a stranger: an attribute of the wrong type or an absurd size must be a clear
error when the session loads, not a TypeError (or a terabyte allocation) in the middle of ``run``.
Ranges are generous: they exclude only values no real network uses.
"""
from __future__ import annotations

import inspect
from functools import cache
from typing import Any

import numpy as np

from dcm.errors import UnsupportedOpError
from dcm.format.model import Node
from dcm.runtime.kernel import Kernel

MAX_WINDOW = 1 << 12  # kernel sizes, strides, dilations
MAX_PAD = 1 << 12
MAX_GROUP = 1 << 20

# name -> (kind, lowest, highest); kinds: int, ints, float, floats, str, "float or tensor" (a numpy
# array: spec 4.3, bounded by the reader). None: unbounded.
ATTRIBUTES: dict[str, tuple[str, float | None, float | None]] = {
    "kernel_shape": ("ints", 1, MAX_WINDOW),
    "strides": ("ints", 1, MAX_WINDOW),
    "dilations": ("ints", 1, MAX_WINDOW),
    "group": ("int", 1, MAX_GROUP),
    "axis": ("int", -64, 64),
    "axes": ("ints", -64, 64),
    "perm": ("ints", 0, 64),
    "transA": ("int", 0, 1),
    "transB": ("int", 0, 1),
    "ceil_mode": ("int", 0, 1),
    "count_include_pad": ("int", 0, 1),
    "keepdims": ("int", 0, 1),
    "noop_with_empty_axes": ("int", 0, 1),
    "allowzero": ("int", 0, 1),
    "size": ("int", 1, 1 << 16),
    "to": ("int", 1, 64),
    "start": ("int", None, None),
    "end": ("int", None, None),
    "alpha": ("float", None, None),
    "beta": ("float", None, None),
    "bias": ("float", None, None),
    "epsilon": ("float", 0, None),
    "min": ("float", None, None),
    "max": ("float", None, None),
    "value": ("float or tensor", None, None),  # Pad's fill before opset 11; ConstantOfShape's tensor
    "value_float": ("float", None, None),
    "value_floats": ("floats", None, None),
    "value_int": ("int", None, None),
    "value_ints": ("ints", None, None),
    "starts": ("ints", None, None),
    "ends": ("ints", None, None),
    "split": ("ints", 0, None),
    "num_outputs": ("int", 1, 1 << 16),
    "batch_dims": ("int", 0, 64),
    "blocksize": ("int", 1, MAX_WINDOW),
    "upper": ("int", 0, 1),
    "reduction": ("str", None, None),
    "saturate": ("int", 0, 1),
    "auto_pad": ("str", None, None),
    "mode": ("str", None, None),
    "gamma": ("float", None, None),
    "approximate": ("str", None, None),
    "fmod": ("int", 0, 1),
    "detect_positive": ("int", 0, 1),
    "detect_negative": ("int", 0, 1),
    "select_last_index": ("int", 0, 1),
    "exclusive": ("int", 0, 1),
    "reverse": ("int", 0, 1),
    "largest": ("int", 0, 1),
    "sorted": ("int", 0, 1),
    "k": ("int", None, None),
    "training_mode": ("int", 0, 1),
    "spatial": ("int", 0, 1),
    "num_groups": ("int", 1, MAX_GROUP),
    "stash_type": ("int", None, None),
    "lambd": ("float", None, None),
    "output_padding": ("ints", 0, MAX_PAD),  # ConvTranspose
    "output_shape": ("ints", 1, None),  # bounded by the kernel against the element limit
    "storage_order": ("int", 0, 1),  # MaxPool
    "p": ("int", 1, None),  # LpPool, LpNormalization
    "hidden_size": ("int", 1, None),  # LSTM, GRU, RNN (checked against W and R at load)
    "direction": ("str", None, None),
    "layout": ("int", 0, 1),
    "clip": ("float", 0, None),
    "input_forget": ("int", 0, 1),
    "linear_before_reset": ("int", 0, 1),
    "activation_alpha": ("floats", None, None),
    "activation_beta": ("floats", None, None),
    "coordinate_transformation_mode": ("str", None, None),  # Resize
    "nearest_mode": ("str", None, None),
    "keep_aspect_ratio_policy": ("str", None, None),
    "cubic_coeff_a": ("float", None, None),
    "exclude_outside": ("int", 0, 1),
    "extrapolation_value": ("float", None, None),
    "antialias": ("int", 0, 1),
    "scales": ("floats", 0, None),  # Upsample-7
}
# pads are bounded everywhere, and may be negative only for Pad (which crops with them).
PADS = {"Pad": ("ints", -MAX_PAD, MAX_PAD)}
REQUIRED = {"MaxPool": ("kernel_shape",), "AveragePool": ("kernel_shape",), "LRN": ("size",),
            "Concat": ("axis",), "Cast": ("to",), "GroupNormalization": ("num_groups",)}


def _kind_ok(kind: str, value: Any) -> bool:
    if kind == "int":
        return type(value) is int
    if kind == "float":
        return type(value) in (int, float)
    if kind == "str":
        return isinstance(value, str)
    if kind == "float or tensor":
        return isinstance(value, np.ndarray) or _kind_ok("float", value)
    item = "int" if kind == "ints" else "float"
    return isinstance(value, list) and all(_kind_ok(item, v) for v in value)


@cache
def _arity(kernel: type[Kernel]) -> tuple[int, int | None]:
    """(fewest, most) inputs the kernel's ``__call__`` takes; None: any number."""
    params = list(inspect.signature(kernel.__call__).parameters.values())[1:]
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return sum(p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD for p in params), None
    return sum(p.default is p.empty for p in params), len(params)


def check_node(node: Node, kernel: type[Kernel]) -> None:
    """Raise ``UnsupportedOpError`` naming the node when an attribute or the input count is invalid."""
    where = f"node {node.name or node.outputs[0]!r} ({node.op})"
    for name in REQUIRED.get(node.op, ()):
        if name not in node.attrs:
            raise UnsupportedOpError(f"{where}: required attribute {name!r} is missing")
    for name, value in node.attrs.items():
        spec = PADS.get(node.op, ("ints", 0, MAX_PAD)) if name == "pads" else ATTRIBUTES.get(name)
        if spec is None:
            continue
        kind, lo, hi = spec
        if not _kind_ok(kind, value):
            raise UnsupportedOpError(f"{where}: attribute {name!r} must be {kind}, got {value!r:.60}")
        if (lo is not None or hi is not None) and not isinstance(value, np.ndarray):
            values = value if isinstance(value, list) else [value]
            if any((lo is not None and v < lo) or (hi is not None and v > hi) for v in values):
                raise UnsupportedOpError(f"{where}: attribute {name!r} = {value!r:.60} is outside {lo}..{hi}")
    fewest, most = _arity(kernel)
    given = len(node.inputs)
    present = sum(1 for x in node.inputs[:fewest] if x)
    if present < fewest or (most is not None and given > most):
        want = f"{fewest}" if most == fewest else f"{fewest}..{'any' if most is None else most}"
        raise UnsupportedOpError(f"{where}: takes {want} inputs, the graph gives {given}")
