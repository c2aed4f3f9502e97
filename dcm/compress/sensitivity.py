"""Per-layer pruning sensitivity (paper Figure 5): prune one layer at a time and evaluate."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from dcm.compress.layers import weight_layers
from dcm.encoder.prune import mask_by_sparsity


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


def format_table(table: dict[str, dict[float, float]]) -> str:
    sparsities = sorted({s for row in table.values() for s in row})
    lines = ["layer".ljust(12) + "".join(f"{s:>8.0%}" for s in sparsities)]
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
