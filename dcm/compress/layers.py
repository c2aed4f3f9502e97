"""Which modules of a user's model hold compressible weights, and what kind they are."""
from __future__ import annotations

import torch.nn as nn

COMPRESSIBLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


def kind(module: nn.Module) -> str:
    return "fc" if isinstance(module, nn.Linear) else "conv"


def weight_layers(model: nn.Module, names=None) -> dict[str, nn.Module]:
    """name -> module for every Linear/Conv (or only those in ``names``; unknown names are an error)."""
    found = {n: m for n, m in model.named_modules() if isinstance(m, COMPRESSIBLE)}
    if names is None:
        return found
    missing = [n for n in names if n not in found]
    if missing:
        raise KeyError(f"no Linear/Conv layer named {missing[0]!r}; layers are {sorted(found)}")
    return {n: found[n] for n in names}


def per_layer(setting, layers: dict[str, nn.Module]) -> dict[str, object]:
    """Expand a setting given globally, per kind ({"conv": .., "fc": ..}) or per layer name."""
    if not isinstance(setting, dict):
        return {n: setting for n in layers}
    out = {}
    for n, m in layers.items():
        if n in setting:
            out[n] = setting[n]
        elif kind(m) in setting:
            out[n] = setting[kind(m)]
    unknown = set(setting) - set(layers) - {"conv", "fc"}
    if unknown:
        raise KeyError(f"no Linear/Conv layer named {sorted(unknown)[0]!r}; layers are {sorted(layers)}")
    return out
