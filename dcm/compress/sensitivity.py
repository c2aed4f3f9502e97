"""Per-layer pruning sensitivity (paper Figure 5): prune one layer at a time and evaluate."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from dcm.compress.layers import weight_layers
from dcm.encoder.prune import mask_by_sparsity

# Sparsities a scan tries: coarse where every layer survives, fine where the pruned layers of the
# demo models sit (90-99.5%), so the chosen sparsity lands within a point of its limit.
GRID = (0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.96, 0.97, 0.98, 0.985, 0.99, 0.995)


@torch.no_grad()
def sensitivity(model: nn.Module, eval_fn: Callable[[nn.Module], float], sparsities: Sequence[float],
                layers: Sequence[str] | None = None) -> dict[str, dict[float, float]]:
    """{layer: {sparsity: eval_fn(model with only that layer pruned)}}; the model is restored after."""
    out: dict[str, dict[float, float]] = {}
    for name, ref in weight_layers(model, layers).items():
        saved = ref.weight.detach().clone()
        out[name] = {}
        for s in sparsities:
            keep = mask_by_sparsity(saved.cpu().numpy(), float(s))
            ref.weight.mul_(torch.from_numpy(keep).to(saved.dtype).to(saved.device))
            out[name][float(s)] = float(eval_fn(model))
            ref.weight.copy_(saved)
    return out


def sparsity_within(table: dict[str, dict[float, float]], reference: float, threshold: float) -> dict[str, float]:
    """Per layer, the largest scanned sparsity whose error (``table`` as :func:`sensitivity` returns
    it, lower is better) stays within ``threshold`` of ``reference``, the unpruned model's error;
    0.0 for a layer that fails at the lowest sparsity scanned.

    Every smaller sparsity must pass too: a noisy curve that dips back under the threshold past
    a failure would otherwise pick a sparsity that the scan itself says is too much.
    """
    out = {}
    for name, row in table.items():
        chosen = 0.0
        for s in sorted(row):
            if row[s] - reference > threshold:
                break
            chosen = s
        out[name] = chosen
    return out


def threshold_for(table: dict[str, dict[float, float]], reference: float, sizes: dict[str, int],
                  overall: float) -> float:
    """The smallest error-rise threshold at which :func:`sparsity_within` prunes at least ``overall``
    of all the weights (``sizes``: weights per layer). One bar for every layer: a budget of
    weights to remove goes to the layers that tolerate it best, instead of the same share of each."""
    total = sum(sizes.values())
    for t in sorted({max(row[s] - reference, 0.0) for row in table.values() for s in row}):
        chosen = sparsity_within(table, reference, t)
        if sum(sizes[n] * chosen[n] for n in sizes) >= overall * total:
            return t
    raise ValueError(f"no threshold prunes {overall:.2%} of the weights: the scan stops at {max(GRID):.1%} per layer")


def sparsity_from_scan(model: nn.Module, error_fn: Callable[[nn.Module], float], threshold: float | None = None,
                       overall: float | None = None, sparsities: Sequence[float] = GRID
                       ) -> tuple[dict[str, float], dict[str, dict[float, float]]]:
    """Per-layer sparsity for :class:`dcm.compress.Pruner` chosen by a one-layer-at-a-time scan of
    a trained model: each layer gets the largest sparsity whose one-shot pruning (no retraining)
    raises ``error_fn`` by at most ``threshold``, or, given ``overall`` instead, by at most the
    threshold that prunes that share of all the weights (:func:`threshold_for`). Layers that
    tolerate pruning are pruned hard, sensitive ones lightly, without hand-picking. ``error_fn``
    should score held-out training images: choosing sparsity on the test set would make the
    reported test error optimistic. Returns (sparsity per layer, the scan's table)."""
    if (threshold is None) == (overall is None):
        raise ValueError("give exactly one of threshold= or overall=")
    table = sensitivity(model, error_fn, sparsities)
    reference = float(error_fn(model))
    if overall is not None:
        sizes = {name: ref.weight.numel() for name, ref in weight_layers(model, list(table)).items()}
        threshold = threshold_for(table, reference, sizes, overall)
    return sparsity_within(table, reference, threshold), table


def format_table(table: dict[str, dict[float, float]]) -> str:
    sparsities = sorted({s for row in table.values() for s in row})
    lines = ["layer".ljust(12) + "".join(f"{100 * s:>7g}%" for s in sparsities)]
    for name, row in table.items():
        lines.append(name.ljust(12) + "".join(f"{row.get(s, np.nan):>8.4f}" for s in sparsities))
    return "\n".join(lines)


def plot(table: dict[str, dict[float, float]], path: str, ylabel: str = "eval_fn result"):
    """One curve per layer of ``eval_fn`` against the share pruned (the paper's Figure 5); needs the
    'plot' extra (matplotlib). ``ylabel`` names what ``eval_fn`` measured ("top-1 accuracy",
    "test error %"). Returns the (closed) figure."""
    from dcm.plot import pyplot, save

    fig, ax = pyplot().subplots(figsize=(6, 4))
    for name, row in table.items():
        xs = sorted(row)
        ax.plot([100 * x for x in xs], [row[x] for x in xs], marker="o", label=name)
    ax.set_xlabel("parameters pruned away (%)")
    ax.set_ylabel(ylabel)
    ax.legend()
    fig.tight_layout()
    save(fig, path)
    return fig
