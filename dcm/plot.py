"""Pictures of a .dcm (``dcm inspect FILE --plot OUT.png``): where the bytes go, and the weights.

Left: per coded layer, a stacked bar of its bytes (index stream, code stream, codebook, Huffman
and block tables, other) with the layer's compression ratio written on it; raw tensors as one bar.
Right: per coded layer, the histogram of the decoded non-zero weights with the codebook's
centroids marked (the paper's Figure 4). Needs the ``plot`` extra (matplotlib).
"""
from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from dcm.format import constants as C
from dcm.format.model import Model

MAX_HISTOGRAMS = 8  # the largest layers; a 50-layer network would give unreadable panels


def pyplot():
    """matplotlib.pyplot on a file-only backend, or an ImportError that names the extra to install."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'dcm[plot]'") from None
    return plt


def _byte_parts(row: dict[str, Any]) -> dict[str, int]:
    if row["encoding"] == C.ENC_RAW:
        return {"raw tensor": row["payload_bytes"]}
    parts = {"index stream": row["index_stream_bytes"], "code stream": row["code_stream_bytes"],
             "codebook": row["codebook_bytes"], "Huffman + block tables": row["table_bytes"],
             "float32 values": row.get("values_bytes", 0)}
    parts["header"] = row["payload_bytes"] - sum(parts.values())
    return parts


def plot_file(model: Model, stats: dict[str, Any], path: str | os.PathLike) -> None:
    """Write the two-panel figure for ``model`` (with ``dcm.format.stats.model_stats``) to ``path``."""
    from dcm.encoder.codec import decode_parts

    plt = pyplot()
    rows = stats["tensors"]
    coded = sorted((r for r in rows if r["encoding"] != C.ENC_RAW), key=lambda r: -r["elements"])[:MAX_HISTOGRAMS]
    n_hist = max(len(coded), 1)
    fig = plt.figure(figsize=(13, max(4.0, 1.6 * n_hist)))
    grid = fig.add_gridspec(n_hist, 2, width_ratios=[1.3, 1])

    ax = fig.add_subplot(grid[:, 0])
    kinds = ["index stream", "code stream", "codebook", "Huffman + block tables", "float32 values", "header",
             "raw tensor"]
    colors = dict(zip(kinds, plt.get_cmap("tab10").colors))
    names = [r["name"] for r in rows]
    totals = np.array([max(r["payload_bytes"], 1) for r in rows], dtype=float)
    left = np.zeros(len(rows))
    for k in kinds:  # each bar is one tensor's payload, split 100% into its parts
        widths = np.array([_byte_parts(r).get(k, 0) for r in rows], dtype=float) / totals
        if widths.any():
            ax.barh(names, widths, left=left, color=colors[k], label=k)
            left += widths
    for i, r in enumerate(rows):
        ax.text(1.01, i, f"{r['payload_bytes']:,} B, {r['ratio']:.1f}x", va="center", fontsize=8)
    ax.set_xlim(0, 1.35)
    ax.invert_yaxis()
    ax.set_xlabel("share of the tensor's stored bytes (label: stored bytes, float32 size / stored size)")
    ax.set_title(f"where the bytes go: {stats['totals']['file_bytes']:,} B, {stats['totals']['ratio']:.1f}x overall")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=4)

    for i, r in enumerate(coded):
        ax = fig.add_subplot(grid[i, 1])
        parts = decode_parts(model.tensors[r["name"]])
        ax.hist(parts.values, bins=100, color="0.6")
        if parts.codebook is not None:
            for c in parts.codebook:
                ax.axvline(float(c), color="tab:red", linewidth=0.6, alpha=0.8)
        ax.set_title(f"{r['name']}: {r['nnz']:,} non-zero, {r['density']:.1%} kept", fontsize=9)
        ax.tick_params(labelsize=7)
    if not coded:
        fig.add_subplot(grid[0, 1]).text(0.5, 0.5, "no coded tensors", ha="center")
    fig.suptitle("non-zero weights (grey) and codebook centroids (red)", x=0.78, fontsize=9)
    fig.tight_layout()
    save(fig, path)


def save(fig, path: str | os.PathLike) -> None:
    """Render to memory, then write atomically like every dcm output; the format follows the suffix."""
    from dcm.format.writer import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format=os.path.splitext(str(path))[1][1:] or "png")
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
