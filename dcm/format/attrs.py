"""Tensor-valued node attributes (spec.md 4.3): numpy arrays in memory, small JSON objects in GRPH.

ONNX gives a few ops a tensor attribute (ConstantOfShape's fill ``value``, Constant's ``value``).
They are stored as ``{"dtype", "shape", "data"}`` with the little-endian bytes in base64, so that
every value, -inf and NaN included (attention masks fill with -inf), survives exactly; JSON numbers
cannot hold those.
"""
from __future__ import annotations

import base64
import binascii
import math
from typing import Any

import numpy as np

from dcm.format import constants as C

KEYS = frozenset(("dtype", "shape", "data"))


def tensor_to_json(value: np.ndarray) -> dict[str, Any]:
    """The GRPH form of a tensor attribute (deterministic: same array, same object)."""
    dtype = value.dtype.name
    if dtype not in C.DTYPES:
        raise ValueError(f"tensor attribute dtype {value.dtype} has no .dcm dtype")
    if value.ndim > C.MAX_RANK or value.size > C.MAX_ATTR_ELEMENTS:
        raise ValueError(f"tensor attribute of shape {list(value.shape)} exceeds the limits "
                         f"(rank {C.MAX_RANK}, {C.MAX_ATTR_ELEMENTS} elements)")
    data = np.ascontiguousarray(value, dtype=C.DTYPES[dtype]).tobytes()
    return {"dtype": dtype, "shape": [int(d) for d in value.shape], "data": base64.b64encode(data).decode("ascii")}


def tensor_from_json(obj: Any) -> np.ndarray:
    """The array a GRPH tensor attribute holds; ``ValueError`` saying what is wrong, checked before
    anything the size of the claimed shape is allocated."""
    if not isinstance(obj, dict) or set(obj) != KEYS:
        raise ValueError(f"a tensor attribute is an object with exactly the keys {sorted(KEYS)}")
    dtype, shape, data = obj["dtype"], obj["shape"], obj["data"]
    if not isinstance(dtype, str) or dtype not in C.DTYPES:
        raise ValueError(f"tensor attribute has unknown dtype {dtype!r:.40}")
    if (not isinstance(shape, list) or len(shape) > C.MAX_RANK
            or not all(type(d) is int and 0 <= d <= C.MAX_ATTR_ELEMENTS for d in shape)):
        raise ValueError(f"tensor attribute shape must be at most {C.MAX_RANK} ints 0..{C.MAX_ATTR_ELEMENTS}")
    numel = math.prod(shape)
    if numel > C.MAX_ATTR_ELEMENTS:
        raise ValueError(f"tensor attribute has {numel} elements, limit {C.MAX_ATTR_ELEMENTS}")
    want = numel * C.DTYPES[dtype].itemsize
    if not isinstance(data, str) or len(data) != 4 * -(-want // 3):
        raise ValueError(f"tensor attribute data must be the base64 of {want} bytes")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("tensor attribute data is not valid base64") from None
    if len(raw) != want:
        raise ValueError(f"tensor attribute data holds {len(raw)} bytes, dtype and shape need {want}")
    return np.frombuffer(raw, dtype=C.DTYPES[dtype]).reshape(shape).copy()


def attrs_to_json(attrs: dict[str, Any]) -> dict[str, Any]:
    """A node's attributes as GRPH stores them (tensor attributes become objects)."""
    return {k: tensor_to_json(v) if isinstance(v, np.ndarray) else v for k, v in attrs.items()}
