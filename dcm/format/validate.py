"""Full validation: every rule of spec.md, collecting all violations instead of stopping at one.

Beyond ``read`` this decodes every coded stream, which is where Huffman data, fillers and index
positions are checked.
"""
from __future__ import annotations

import os

from dcm.errors import DcmError, FormatError
from dcm.format import constants as C
from dcm.format.reader import load_bytes, parse


def validate(source: str | os.PathLike | bytes) -> list[FormatError]:
    """Return every violation found (empty list: the file is valid)."""
    from dcm.encoder.codec import decode_parts  # stream decoding lives with the codecs

    problems: list[FormatError] = []
    try:
        model = parse(load_bytes(source), problems.append)
    except FormatError as exc:
        return problems + [exc]
    for rec in model.tensors.values():
        if rec.encoding in C.CODED_ENCODINGS:
            try:
                decode_parts(rec)
            except DcmError as exc:
                problems.append(exc if isinstance(exc, FormatError) else FormatError(str(exc)))
    return problems
