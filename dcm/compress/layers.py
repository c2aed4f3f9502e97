"""Which weights of a user's model are compressible, and what kind they are.

A compressible weight is one parameter of one module: ``Linear``/``Conv`` weights, ``Embedding``
tables, the input/recurrent matrices of ``LSTM``/``GRU``/``RNN`` (``weight_ih_l0``, ...),
``MultiheadAttention``'s packed in-projection (its ``out_proj`` is a ``Linear``), and transposed-weight
linear layers such as Hugging Face's ``Conv1D`` (weight stored [in, out]). A weight is named after
its module when the parameter is the module's ``weight`` ("fc1"), else "module.param"
("lstm.weight_hh_l0"), and settings may name it, its module, or its kind.

Kinds follow the converter's: "conv" for convolutions, "fc" for every matrix multiplied with an
activation (linear, embedding, attention, recurrent), so ``code_bits()`` matches ``from_torch``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn as nn

from dcm.names import KINDS

_RNN_WEIGHT = re.compile(r"weight_(ih|hh|hr)_l\d+(_reverse)?$")


@dataclass(frozen=True)
class WeightRef:
    """One compressible parameter: ``getattr(module, param)``, seen through any parametrization."""

    module: nn.Module
    param: str
    kind: str
    module_name: str

    @property
    def weight(self) -> torch.Tensor:
        return getattr(self.module, self.param)


def _is_transposed_linear(m: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2 and kin): ``x @ weight + bias`` with weight [in, out]."""
    w = getattr(m, "weight", None)
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf") and isinstance(w, torch.Tensor) and w.dim() == 2


def _params_of(m: nn.Module) -> list[tuple[str, str]]:
    """(parameter name, kind) of each compressible weight that module ``m`` owns directly."""
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return [("weight", "conv")]
    if isinstance(m, (nn.Linear, nn.Embedding)) or _is_transposed_linear(m):
        return [("weight", "fc")]
    if isinstance(m, nn.RNNBase):
        return [(p, "fc") for p in m._flat_weights_names if _RNN_WEIGHT.match(p)]
    if isinstance(m, nn.MultiheadAttention):
        names = ["in_proj_weight"] if m._qkv_same_embed_dim else ["q_proj_weight", "k_proj_weight", "v_proj_weight"]
        return [(p, "fc") for p in names]
    return []


def weight_layers(model: nn.Module, names=None) -> dict[str, WeightRef]:
    """name -> WeightRef for every compressible weight (or only those ``names`` select: a weight's
    own name or its module's; an unknown name is an error)."""
    found: dict[str, WeightRef] = {}
    for mod_name, m in model.named_modules():
        for param, kind in _params_of(m):
            name = mod_name if param == "weight" else f"{mod_name}.{param}" if mod_name else param
            found[name] = WeightRef(m, param, kind, mod_name)
    if names is None:
        return found
    out: dict[str, WeightRef] = {}
    for key in names:
        hits = _select(key, found)
        if not hits:
            raise KeyError(f"no compressible weight named {key!r}; weights are {sorted(found)}")
        out.update(hits)
    return out


def _select(key: str, found: dict[str, WeightRef]) -> dict[str, WeightRef]:
    """The weights ``key`` names: itself, or every weight of the module called ``key``."""
    if key in found:
        return {key: found[key]}
    return {n: r for n, r in found.items() if r.module_name == key}


def per_layer(setting, layers: dict[str, WeightRef]) -> dict[str, object]:
    """Expand a setting given globally, per kind ({"conv": .., "fc": ..}), per module or per weight name.

    The most specific key wins: a weight's own name, then its module's, then its kind.
    """
    if not isinstance(setting, dict):
        return {n: setting for n in layers}
    out = {}
    for n, ref in layers.items():
        for key in (n, ref.module_name, ref.kind):
            if key in setting:
                out[n] = setting[key]
                break
    unknown = [k for k in setting if k not in KINDS and not _select(k, layers)]
    if unknown:
        raise KeyError(f"no compressible weight named {sorted(unknown)[0]!r}; weights are {sorted(layers)}")
    return out
