"""Graph pass: a Mul read only by a 1x1 convolution becomes one ``dcm.ScaledConv`` node.

EfficientNet's squeeze-and-excitation blocks end in ``Mul(x [N, C, H, W], s [N, C, 1, 1])`` whose
only reader is the block's 1x1 projection. As its own step that Mul is a broadcast pass over the
whole activation into a new array (16 of them in EfficientNet-B0); the convolution can instead take
the per-input-channel scale into its weight, ``W @ (s * x) = (W * s) @ x``, where the [C_out, C_in]
weight is smaller than the activation. The kernel (``dcm.runtime.cpu.scaled_conv``) decides per run,
from the shapes it gets: any other Mul (two full tensors, a scale over other axes) is computed as
the Mul would be, then convolved.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dcm.format.model import Node

if TYPE_CHECKING:
    from dcm.runtime.optimize import Graph

SCALED_CONV = "dcm.ScaledConv"  # Conv(a * b): inputs a, W, B ("" without), b; the Conv's attributes


def _silu(mul: Node, producer: dict[str, Node]) -> bool:
    """x * Sigmoid(x): the SiLU that its own producer applies (``dcm.runtime.fusion``)."""
    a, b = mul.inputs
    return any(s in producer and producer[s].op == "Sigmoid" and producer[s].inputs == [x] for s, x in ((a, b), (b, a)))


def fuse_channel_scale(graph: Graph) -> None:
    """Mul(a, b) of two run-time values whose product only a 1x1 Conv with one group reads (as its
    input, the weight a constant) becomes ``dcm.ScaledConv`` in that Conv's place."""
    if SCALED_CONV not in graph.internal:
        return
    tensors = graph.model.tensors
    consumers = graph.consumers()
    protected = graph.protected()
    producer = {o: n for n in graph.nodes for o in n.outputs}
    removed: set[int] = set()
    for i, conv in enumerate(graph.nodes):
        if conv.op != "Conv" or len(conv.inputs) < 2 or int(conv.attrs.get("group", 1)) != 1:
            continue
        w = tensors.get(conv.inputs[1])
        mul = producer.get(conv.inputs[0])
        if w is None or len(w.shape) != 4 or tuple(w.shape[2:]) != (1, 1) or mul is None or mul.op != "Mul":
            continue
        product = mul.outputs[0]
        if (product in protected or len(consumers.get(product, [])) != 1 or len(mul.inputs) != 2
                or any(not x or x in tensors for x in mul.inputs) or _silu(mul, producer)):
            continue
        bias = conv.inputs[2] if len(conv.inputs) > 2 else ""
        graph.nodes[i] = Node(SCALED_CONV, [mul.inputs[0], conv.inputs[1], bias, mul.inputs[1]], list(conv.outputs),
                              dict(conv.attrs), conv.name)
        removed.add(id(mul))
        graph.folded[mul.name or product] = conv.name or conv.outputs[0]
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]
