"""Layer names as users write them: the torch module path, the ONNX node name or the tensor name.

A torch model exported to ONNX names the node of ``self.fc1`` ``/fc1/Gemm`` and its weight
``fc1.weight``; a ``Sequential`` layer is ``/0/Gemm`` and ``0.weight``; a nested one
``/features/features.0/Conv`` with a weight called ``onnx::Conv_19``. Users write ``fc1``, ``0``
or ``features.0``, so options that take layer names (``--sparsity``, ``--code-bits``,
``InferenceSession(kernels=...)``) accept all three forms, and a name that matches no layer is an
error naming the closest valid ones instead of a silent no-op.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

from dcm.errors import DcmError

WEIGHT_SUFFIXES = (".weight", "_bnfolded")
KINDS = ("conv", "fc")  # setting keys that mean every layer of a kind, not one layer


def module_path(node_name: str) -> str | None:
    """``/features/features.0/Conv`` -> ``features.0``; ``/fc1/Gemm`` -> ``fc1``; None if unscoped."""
    parts = [p for p in node_name.split("/") if p]
    return parts[-2] if len(parts) >= 2 else None


def layer_aliases(node_name: str, weight_name: str) -> set[str]:
    """Every name that refers to the layer ``node_name`` whose weight tensor is ``weight_name``."""
    names = {node_name, weight_name}
    path = module_path(node_name)
    if path:
        names.add(path)
    stem = weight_name
    for suffix in reversed(WEIGHT_SUFFIXES):  # "fc1.weight_bnfolded" -> "fc1.weight" -> "fc1"
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            names.add(stem)
    return {n for n in names if n}


def resolve(keys: Iterable[str], layers: Mapping[str, set[str]], option: str,
            error: type[DcmError], reserved: Iterable[str] = ()) -> dict[str, list[str]]:
    """Map each key to the layers (keys of ``layers``) it names; ``reserved`` keys map to [].

    A key naming no layer raises ``error`` listing the closest valid names (or all, when few).
    """
    reserved = set(reserved)
    out: dict[str, list[str]] = {}
    for key in keys:
        if key in reserved:
            out[key] = []
            continue
        hits = [layer for layer, aliases in layers.items() if key in aliases]
        if not hits:
            raise error(unknown_name_message(key, layers, option, reserved))
        out[key] = hits
    return out


def unknown_name_message(key: str, layers: Mapping[str, set[str]], option: str, reserved: Iterable[str] = ()) -> str:
    everything = sorted({a for aliases in layers.values() for a in aliases} | set(reserved))
    close = difflib.get_close_matches(key, everything, n=5, cutoff=0.5)
    short = sorted(set(reserved) | {_shortest(a) for a in layers.values()})
    if close:
        hint = "closest: " + ", ".join(close)
    elif len(short) <= 12:
        hint = "valid names: " + ", ".join(short)
    else:
        hint = f"valid names include: {', '.join(short[:12])}, ... ({len(short)} layers)"
    return f"{option}: no layer named {key!r} ({hint})"


def _shortest(aliases: set[str]) -> str:
    return min(aliases, key=lambda a: (len(a), a))


def by_layer(setting, layers: Mapping[str, set[str]], option: str, error: type[DcmError],
             reserved: Iterable[str] = ()):
    """A per-name setting ({name: value}) re-keyed by the layers' keys; ``reserved`` keys (layer
    kinds such as "conv"/"fc") kept as they are; anything but a dict returned unchanged. One layer
    named through two aliases with different values is an error: which one was meant?"""
    if not isinstance(setting, Mapping):
        return setting
    hits = resolve(setting, layers, option, error, reserved)
    out = {k: v for k, v in setting.items() if k in set(reserved)}
    given_as: dict[str, str] = {}
    for key, value in setting.items():
        for layer in hits[key]:
            if layer in given_as and out[layer] != value:
                raise error(f"{option}: {given_as[layer]!r} and {key!r} name the same layer with different "
                            f"values ({out[layer]!r}, {value!r})")
            out[layer], given_as[layer] = value, key
    return out
