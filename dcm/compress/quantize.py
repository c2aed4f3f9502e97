"""Trained quantization (paper section 3): k-means weight sharing, then centroid fine-tuning.

Each layer's weight becomes ``codebook[labels] * mask`` through a parametrization whose only
trainable tensor is the codebook. Autograd of that gather sums the gradients of every weight in a
cluster into its centroid, which is exactly the paper's update rule (section 3.3).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from dcm.compress.distributed import from_rank0
from dcm.compress.layers import WeightRef, per_layer, weight_layers
from dcm.encoder.kmeans import Init, kmeans_1d


class SharedWeights(nn.Module):
    def __init__(self, codebook: np.ndarray, labels: np.ndarray, mask: np.ndarray, dtype, device):
        super().__init__()
        self.codebook = nn.Parameter(torch.tensor(codebook, dtype=dtype, device=device))
        self.register_buffer("labels", torch.from_numpy(labels).to(device))
        self.register_buffer("mask", torch.from_numpy(mask).to(dtype).to(device))

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return self.codebook[self.labels] * self.mask


class WeightSharing:
    """Handle returned by ``share_weights``: the codebooks, and ``finalize()`` to bake them in."""

    def __init__(self, layers: dict[str, WeightRef], bits: dict[str, int]):
        self.layers = layers
        self.bits = bits

    def parameters(self) -> list[nn.Parameter]:
        """The trainable codebooks (give them to the optimizer; the tied weights are frozen)."""
        return [ref.module.parametrizations[ref.param][0].codebook for ref in self.layers.values()
                if parametrize.is_parametrized(ref.module, ref.param)]

    def codebooks(self) -> dict[str, np.ndarray]:
        return {n: ref.module.parametrizations[ref.param][0].codebook.detach().cpu().numpy()
                for n, ref in self.layers.items() if parametrize.is_parametrized(ref.module, ref.param)}

    def code_bits(self) -> dict[str, int]:
        """Bits per layer kind, as ``from_torch(code_bits=...)`` wants them (max over the kind's layers)."""
        out: dict[str, int] = {}
        for n, ref in self.layers.items():
            out[ref.kind] = max(out.get(ref.kind, 1), self.bits[n])
        return out

    def finalize(self) -> None:
        """Replace each parametrization by a plain weight holding at most 2^bits distinct non-zeros."""
        for ref in self.layers.values():
            if parametrize.is_parametrized(ref.module, ref.param):
                parametrize.remove_parametrizations(ref.module, ref.param, leave_parametrized=True)
                ref.weight.requires_grad_(True)


@torch.no_grad()
def share_weights(model: nn.Module, bits: int | dict = None, init: Init = "linear") -> WeightSharing:
    """Cluster each layer's non-zero weights into 2^bits centroids and tie them for fine-tuning.

    ``bits``: globally, per kind (default {"conv": 8, "fc": 5}, the paper's) or per layer name.
    Any pruning parametrization is baked in first; its zeros stay zeros (the mask).
    """
    layers = weight_layers(model)
    bits_per = per_layer(bits if bits is not None else {"conv": 8, "fc": 5}, layers)
    layers = {n: layers[n] for n in bits_per}
    for n, ref in layers.items():
        if parametrize.is_parametrized(ref.module, ref.param):
            parametrize.remove_parametrizations(ref.module, ref.param, leave_parametrized=True)
        weight = ref.weight
        w = weight.detach().cpu().numpy()
        mask = w != 0
        codebook, labels = kmeans_1d(w[mask], 1 << int(bits_per[n]), init=init)
        full = np.zeros(w.shape, dtype=np.int64)
        full[mask] = labels
        if not len(codebook):
            codebook = np.zeros(1, np.float32)
        weight.requires_grad_(False)
        shared = SharedWeights(codebook, full, mask, weight.dtype, weight.device)
        from_rank0(shared.codebook.data, shared.labels, shared.mask)
        parametrize.register_parametrization(ref.module, ref.param, shared, unsafe=True)
    return WeightSharing(layers, {n: int(b) for n, b in bits_per.items()})
