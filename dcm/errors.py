"""One exception family for everything dcm rejects, so callers need a single ``except``.

Messages name the rule that was broken (a spec.md section where one applies) and, for file
problems, the byte offset, because "invalid file" alone never tells a user what to fix.
"""
from __future__ import annotations


class DcmError(Exception):
    """Base class of every error dcm raises on bad input."""


class FormatError(DcmError):
    """A .dcm file (or byte string) breaks a rule of spec.md."""

    def __init__(self, message: str, offset: int | None = None, rule: str | None = None):
        self.message = message  # without the rule and offset, for an error that wraps this one
        self.offset = offset
        self.rule = rule
        parts = []
        if rule:
            parts.append(f"[spec {rule}]")
        parts.append(message)
        if offset is not None:
            parts.append(f"(at byte {offset})")
        super().__init__(" ".join(parts))


class EncodeError(DcmError):
    """A tensor cannot be encoded as asked (NaN/Inf, bit width out of range, ...)."""


class UnsupportedOpError(DcmError):
    """The graph uses an operator (or attribute) that the runtime or exporter does not implement."""


class InputError(DcmError):
    """A feed passed to ``InferenceSession.run`` does not match the model's declared inputs."""


class ExecutionError(DcmError):
    """A node failed while running (its inputs or the model's attributes make it impossible)."""


class ConversionError(DcmError):
    """A source model (ONNX, PyTorch) cannot be turned into a .dcm graph."""


class UnknownLayerError(DcmError, ValueError):
    """An option names a layer the model does not have (``InferenceSession(kernels={...})``)."""
