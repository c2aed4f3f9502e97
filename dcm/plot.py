"""Pictures of a .dcm (``dcm inspect FILE --plot OUT.png``): where the bytes go, and the weights.

Left: per tensor, a 100% stacked bar of its stored bytes (index stream, code stream, codebook,
Huffman and block tables, header; raw tensors as one part), labelled on the right with its bytes
and compression ratio. A large model has hundreds of tiny tensors (biases, shapes, 4-byte
constants): beyond ``MAX_BARS`` bars the smallest are drawn as one bar. Right: per coded layer,
the histogram of the decoded non-zero weights with the codebook's centroids marked (the paper's
Figure 4). Needs the ``plot`` extra (matplotlib).
"""
from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from dcm.format import constants as C
from dcm.format.model import Model

MAX_HISTOGRAMS = 8  # the largest layers; a 50-layer network would give unreadable panels
MAX_BARS = 24  # the largest tensors get a bar each; the rest share one
KINDS = ["index stream", "code stream", "codebook", "Huffman + block tables", "float32 values", "header",
         "raw tensor"]


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


def bars(rows: list[dict[str, Any]], limit: int = MAX_BARS) -> list[tuple[str, dict[str, int], int, float]]:
    """(label, bytes per part, stored bytes, ratio) per bar, in file order; when there are more than
    ``limit`` tensors, the ``limit - 1`` largest keep their own bar and the others share the last."""
    keep = {id(r) for r in sorted(rows, key=lambda r: -r["payload_bytes"])[: limit - 1]} if len(rows) > limit \
        else {id(r) for r in rows}
    out = [(r["name"], _byte_parts(r), r["payload_bytes"], r["ratio"]) for r in rows if id(r) in keep]
    rest = [r for r in rows if id(r) not in keep]
    if rest:
        parts: dict[str, int] = {}
        for r in rest:
            for k, v in _byte_parts(r).items():
                parts[k] = parts.get(k, 0) + v
        stored = sum(r["payload_bytes"] for r in rest)
        largest = max(r["payload_bytes"] for r in rest)
        float32 = sum(4 * r["elements"] for r in rest)
        out.append((f"{len(rest)} tensors of <= {largest:,} B", parts, stored, float32 / max(stored, 1)))
    return out


def figure(model: Model, stats: dict[str, Any]):
    """The two-panel matplotlib figure for ``model`` (with ``dcm.format.stats.model_stats``)."""
    from dcm.encoder.codec import decode_parts

    plt = pyplot()
    rows = stats["tensors"]
    coded = sorted((r for r in rows if r["encoding"] != C.ENC_RAW), key=lambda r: -r["elements"])[:MAX_HISTOGRAMS]
    shown = bars(rows)
    n_hist = max(len(coded), 1)
    fig = plt.figure(figsize=(13, max(4.5, 1.6 * n_hist, 0.28 * len(shown) + 2)))
    grid = fig.add_gridspec(n_hist, 2, width_ratios=[1.3, 1])

    ax = fig.add_subplot(grid[:, 0])
    colors = dict(zip(KINDS, plt.get_cmap("tab10").colors))
    y = np.arange(len(shown))
    left = np.zeros(len(shown))
    totals = np.array([max(stored, 1) for _, _, stored, _ in shown], dtype=float)
    for k in KINDS:  # each bar is one tensor's payload (or a group's), split 100% into its parts
        widths = np.array([parts.get(k, 0) for _, parts, _, _ in shown], dtype=float) / totals
        if widths.any():
            ax.barh(y, widths, left=left, color=colors[k], label=k)
            left += widths
    ax.set_yticks(y, [label for label, _, _, _ in shown], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(len(shown) - 0.5, -0.5)  # file order, top to bottom
    right = ax.twinx()  # the labels sit outside the share axis, which runs 0..1
    right.set_ylim(ax.get_ylim())
    right.set_yticks(y, [f"{stored:,} B, {ratio:.1f}x" for _, _, stored, ratio in shown], fontsize=8)
    ax.set_xlabel("share of the tensor's stored bytes (right: stored bytes, float32 size / stored size)")
    ax.set_title(f"where the bytes go: {stats['totals']['file_bytes']:,} B, {stats['totals']['ratio']:.1f}x overall")

    for i, r in enumerate(coded):
        hist = fig.add_subplot(grid[i, 1])
        parts = decode_parts(model.tensors[r["name"]])
        hist.hist(parts.values, bins=100, color="0.6")
        if parts.codebook is not None:
            for c in parts.codebook:
                hist.axvline(float(c), color="tab:red", linewidth=0.6, alpha=0.8)
        hist.set_title(f"{r['name']}: {r['nnz']:,} non-zero, {r['density']:.1%} kept", fontsize=9)
        hist.tick_params(labelsize=7)
    if not coded:
        fig.add_subplot(grid[0, 1]).text(0.5, 0.5, "no coded tensors", ha="center")
    fig.suptitle("non-zero weights (grey) and codebook centroids (red)", x=0.78, fontsize=9)
    # The legend goes in a strip of its own under the figure, so it never covers the axis label.
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower left", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.045 * 4.5 / fig.get_figheight(), 1, 1))
    return fig


def plot_file(model: Model, stats: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``figure(model, stats)`` to ``path``."""
    save(figure(model, stats), path)


def save(fig, path: str | os.PathLike) -> None:
    """Render to memory, then write atomically like every dcm output; the format follows the suffix."""
    from dcm.format.writer import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format=os.path.splitext(str(path))[1][1:] or "png")
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
