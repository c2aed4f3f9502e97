"""Magnitude pruning with retraining (paper section 2) that plugs into any training loop.

Masks are torch parametrizations: the layer's effective weight is ``original * mask``, so a pruned
weight is exactly zero in every forward pass and gets zero gradient, whatever the optimizer does
(momentum, weight decay) to the hidden original.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from dcm.compress.distributed import from_rank0
from dcm.compress.layers import WeightRef, per_layer, weight_layers
from dcm.compress.schedule import OneShot
from dcm.encoder.prune import mask_by_quality, mask_by_sparsity


class Mask(nn.Module):
    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def _mask_of(ref: WeightRef) -> Mask | None:
    if parametrize.is_parametrized(ref.module, ref.param):
        return next((p for p in ref.module.parametrizations[ref.param] if isinstance(p, Mask)), None)
    return None


class Pruner:
    """Prune ``model`` towards per-layer targets; call ``step()`` at each pruning point of your loop.

    ``sparsity``: fraction removed, globally, per kind ({"conv": .5, "fc": .9}), per module or per
    weight name (``dcm.compress.layers``: Linear, Conv, Embedding, LSTM/GRU, MultiheadAttention...).
    ``quality``: instead, the paper's rule (threshold = quality x std of the layer's weights),
    applied once at the first step.
    """

    def __init__(self, model: nn.Module, sparsity: float | dict | None = None, *, quality: float | dict | None = None,
                 schedule=None):
        if (sparsity is None) == (quality is None):
            raise ValueError("give exactly one of sparsity= or quality=")
        self.model = model
        self.layers = weight_layers(model)
        self.targets = per_layer(sparsity, self.layers) if sparsity is not None else {}
        self.quality = per_layer(quality, self.layers) if quality is not None else {}
        self.layers = {n: self.layers[n] for n in (self.targets or self.quality)}
        self.schedule = schedule or OneShot()
        self.steps_done = 0

    def current_sparsity(self) -> dict[str, float]:
        return {n: float((m.weight == 0).float().mean()) for n, m in self.layers.items()}

    @torch.no_grad()
    def step(self) -> dict[str, float]:
        """Recompute masks from the surviving weights' magnitudes; returns the sparsity reached per layer."""
        frac = self.schedule.fraction(self.steps_done)
        for name, ref in self.layers.items():
            weight = ref.weight
            w = weight.detach().cpu().numpy()  # effective weight: already masked
            if name in self.quality:
                keep = mask_by_quality(w, float(self.quality[name])) & (w != 0)
            else:
                keep = mask_by_sparsity(w, float(self.targets[name]) * frac)
                keep &= w != 0  # a pruned weight never comes back
            mask = torch.from_numpy(np.ascontiguousarray(keep)).to(weight.dtype).to(weight.device)
            from_rank0(mask)
            existing = _mask_of(ref)
            if existing is None:
                parametrize.register_parametrization(ref.module, ref.param, Mask(mask))
            else:
                existing.mask.copy_(mask)
        self.steps_done += 1
        return self.current_sparsity()

    def finalize(self) -> None:
        """Bake the masks into plain weights (zeros stay zeros) and remove the parametrizations."""
        for ref in self.layers.values():
            if parametrize.is_parametrized(ref.module, ref.param):
                parametrize.remove_parametrizations(ref.module, ref.param, leave_parametrized=True)
