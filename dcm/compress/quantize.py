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
        """Bits per layer kind, as ``from_torch(code_bits=...)`` wants them (max over the kind's weights;
        the converter stores the "other" parameters raw: ``code_shared_tensors`` codes them)."""
        out: dict[str, int] = {}
        for n, ref in self.layers.items():
            if ref.kind == OTHER:
                continue
            out[ref.kind] = max(out.get(ref.kind, 1), self.bits[n])
        return out

    def finalize(self) -> None:
        """Replace each parametrization by a plain weight holding at most 2^bits distinct non-zeros."""
        for ref in self.layers.values():
            if parametrize.is_parametrized(ref.module, ref.param):
                parametrize.remove_parametrizations(ref.module, ref.param, leave_parametrized=True)
                ref.weight.requires_grad_(True)


OTHER = "other"  # the kind of a shared parameter that is not a weight matrix (bias, norm scale)


def _other_parameters(model: nn.Module, weights: dict[str, WeightRef]) -> dict[str, WeightRef]:
    """Every float parameter that is not a compressible weight, by its full name."""
    taken = {(id(r.module), r.param) for r in weights.values()}
    out = {}
    for mod_name, m in model.named_modules():
        for param, p in m.named_parameters(recurse=False):
            if (id(m), param) not in taken and p.is_floating_point():
                name = f"{mod_name}.{param}" if mod_name else param
                out[name] = WeightRef(m, param, OTHER, mod_name)
    return out


@torch.no_grad()
def share_weights(model: nn.Module, bits: int | dict = None, init: Init = "linear",
                  size_penalty: float | dict = 0.0, other_bits: int | None = None) -> WeightSharing:
    """Cluster each layer's non-zero weights into 2^bits centroids and tie them for fine-tuning.

    ``bits``: globally, per kind (default {"conv": 8, "fc": 5}, the paper's) or per layer name.
    ``size_penalty`` (same forms): > 0 clusters for the coded size too (entropy-constrained
    k-means, ``dcm.encoder.kmeans.entropy_constrained``): fewer bits per weight after Huffman
    coding, for more distortion that centroid fine-tuning then recovers.
    ``other_bits``: also share every other float parameter (biases, LayerNorm scales, position
    embeddings) over 2^other_bits values each, so that the file can code them
    (``dcm.compress.export.code_shared_tensors``) instead of storing float32. They are fine-tuned
    like the weights, and named by their full parameter name ("fc1.bias").
    Any pruning parametrization is baked in first; its zeros stay zeros (the mask).
    """
    layers = weight_layers(model)
    bits_per = {n: int(b) for n, b in per_layer(bits if bits is not None else {"conv": 8, "fc": 5}, layers).items()}
    penalty = per_layer(size_penalty, layers)
    layers = {n: layers[n] for n in bits_per}
    if other_bits is not None:
        for n, ref in _other_parameters(model, weight_layers(model)).items():
            layers[n], bits_per[n] = ref, int(other_bits)
    for n, ref in layers.items():
        if parametrize.is_parametrized(ref.module, ref.param):
            parametrize.remove_parametrizations(ref.module, ref.param, leave_parametrized=True)
        weight = ref.weight
        w = weight.detach().cpu().numpy()
        mask = w != 0
        codebook, labels = kmeans_1d(w[mask], 1 << bits_per[n], init=init,
                                     size_penalty=float(penalty.get(n, 0.0)))
        full = np.zeros(w.shape, dtype=np.int64)
        full[mask] = labels
        if not len(codebook):
            codebook = np.zeros(1, np.float32)
        weight.requires_grad_(False)
        shared = SharedWeights(codebook, full, mask, weight.dtype, weight.device)
        from_rank0(shared.codebook.data, shared.labels, shared.mask)
        parametrize.register_parametrization(ref.module, ref.param, shared, unsafe=True)
    return WeightSharing(layers, bits_per)
