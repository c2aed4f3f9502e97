"""The in-memory form of a .dcm file: a graph of ONNX-named nodes plus a table of tensor records.

This is what ``dcm.format.read`` returns and ``dcm.format.write`` takes. Tensor payloads stay as
bytes here; turning them into arrays is the encoder's job (``dcm.encoder.decode_tensor``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

Dim = int | str  # a fixed size, or a symbolic one such as "batch"


@dataclass
class ValueInfo:
    """A model input or output: name, element type and shape (str entries are symbolic)."""

    name: str
    dtype: str
    shape: list[Dim]


@dataclass
class Node:
    """One operator application, named and attributed exactly as in ONNX."""

    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""


@dataclass
class TensorRecord:
    """A named constant tensor and its encoded payload (spec.md section 5)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    encoding: str
    payload: bytes | memoryview

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class Model:
    """Graph, tensors and free-form metadata: everything a .dcm file holds."""

    inputs: list[ValueInfo]
    outputs: list[ValueInfo]
    nodes: list[Node]
    tensors: dict[str, TensorRecord]
    metadata: dict[str, str] = field(default_factory=dict)
    opset: int = 17
