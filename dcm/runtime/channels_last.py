"""Graph pass: chains of depthwise, grouped and 1x1 convolutions run channels-last (NHWC).

A depthwise convolution on NCHW planes works on rows of one channel: narrow planes (14x14, 7x7) fill
a fraction of a vector and strided ones need gathers, so the compiled NCHW kernel transposes groups
of 16 planes in and out around each layer (MobileNetV2's depthwise layers took 2-3x onnxruntime's
time in the model, whose kernels run channels-blocked). Channels-last, each output pixel is kh*kw
multiply-adds of whole channel vectors, at any stride or plane size, and a 1x1 convolution is a
row-major product [pixels, C_in] @ [C_in, C_out], which the packed GEMM (``_gemm.c``) splits over
threads by rows (0.7-0.8x of the NCHW 1x1 kernel's time on the 7x7 and 14x14 layers). A grouped
convolution of a few channels a group (ResNeXt's, RegNet's) is, per output pixel and group, a sum of
input values times vectors of the group's output weights, each weight vector serving a run of pixels;
on NCHW it took im2col and one small product per group (1.5-3x onnxruntime's time).

The pass finds regions: each depthwise or grouped convolution, then, in graph order, every 1x1 convolution (and
``dcm.ScaledConv``) whose input is in a region, every elementwise op whose run-time inputs all are
(with scalar constants), and backwards the 1x1 convolutions (with the activations after them) read
only by a region. A region with more Transposes in and out than convolutions is left NCHW. Their
values hold NHWC arrays under new names; a ``Transpose`` enters a region (the input of its first convolutions;
none where the model's own Transpose made that value NCHW from an NHWC one: the region reads the NHWC
one, and that Transpose, read by nothing else, goes. ConvNeXt's blocks end so, in a residual Add that
joins the region with it) and one leaves it wherever a value is read outside or is a model output. A global average pool
(GlobalAveragePool, or ReduceMean over the two spatial axes keeping them) of a region value reads it
as it is: its [N, C, 1, 1] result is the same array in either layout, and so are the values region
nodes compute from such values alone (a squeeze-and-excitation branch's 1x1 convolutions, which then
run on the packed GEMM with their activation fused, and its elementwise ops). Elementwise ops need no change:
both layouts are one axis permutation of every operand, and broadcasting between 4-D operands
commutes with it.

Taken only where the CPU backend runs the channels-last kernels (their ops in ``Graph.internal``).
The model is not changed: ``dcm export`` writes the graph as stored.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from dcm.format.model import Node

if TYPE_CHECKING:
    from dcm.runtime.optimize import Graph

NHWC_CONV = "dcm.NhwcConv"  # Conv on NHWC x and y: inputs x, W, B; the Conv's attributes
NHWC_SCALED_CONV = "dcm.NhwcScaledConv"  # dcm.ScaledConv with x (input 0) NHWC, the scale (input 3) NCHW
NHWC_MEAN = "dcm.NhwcGlobalAveragePool"  # the mean over H, W of NHWC x: y [N, C, 1, 1]
NHWC_STEM = "dcm.NhwcStemConv"  # Conv of an NCHW x (few channels) into an NHWC y: inputs x, W, B
CHANNELS_LAST_OPS = (NHWC_CONV, NHWC_SCALED_CONV, NHWC_MEAN, NHWC_STEM)
STEM_MAX_INPUTS = 8  # input channels of a stem, which reads NCHW and writes into a region
TO_NHWC, TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]
SUFFIX = "/nhwc"

# Ops that compute each output element from the same element of their inputs.
UNARY = ("Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "LeakyRelu", "Gelu", "Elu", "Selu",
         "Softplus", "Identity", "Erf", "Abs", "Neg", "Exp", "Sqrt", "Mish")
BINARY = ("Add", "Sub", "Mul", "Div", "Max", "Min")
# A 1x1 layer this sparse keeps the NCHW direct sparse kernel (dcm.runtime.cpu.conv's
# DIRECT_MAX_DENSITY_POINTWISE); the channels-last product is dense. A stem this sparse keeps the NCHW
# kernels (the direct sparse kernel, then a Transpose into the region): a stem, a depthwise and a 1x1 layer
# after it, batch 1, one thread, stem taken against NCHW: 3->32 3x3/2 at 224 1.25-1.34 against 1.48-1.66 ms
# at every density from 5% to 50% kept; 3->64 7x7/2 3.5-3.6 against 2.9-3.1 at 5-10%, 3.4-3.5 against
# 3.8-3.9 at 20-50%.
SPARSE_POINTWISE = 0.07
SPARSE_STEM = 0.15
# A grouped layer this sparse keeps the NCHW direct sparse kernel: RegNetX-400MF pruned, batch 1, one thread,
# its grouped layers NCHW direct against channels-last dense: 9.5 against 10.4 ms at 10% kept, 9.8 against
# 9.4 at 20%, 10.4 against 9.7 at 30% (onnxruntime 6.5-6.8).
SPARSE_GROUPED = 0.15
# A dense convolution of one group and a window larger than 1x1 joins a region where it has at most this
# many input and output channels: conv_nhwc_out, output channels in vectors, against the NCHW kernels'
# best (Winograd, lanes), one thread, batch 1 unless shown: 16 -> 16 3x3 at 16x16 14 against 35-41 us,
# at 56x56 104-109 against 230-236; 32 -> 32 at 8x8 12 against 57-65, at 28x28 104-107 against 125-131,
# at 128x128 2960 against 3130; 48 -> 48 at 28x28 221 against 210-378; batch 4 32 -> 32 at 32x32 476-641
# against 720-1007. From 64 channels Winograd wins on large planes (64 -> 64 at 56x56: 1960 against
# 1190; 128 -> 128 at 28x28: 2260 against 1440), where the plane size is not known here.
DENSE_MAX_CHANNELS = 48
# ... or, of any width, a patch layer: window = stride, no padding (ConvNeXt's 2x2/2 downsampling, a
# 4x4/4 stem): one layer alone, batch 1, one thread, its NHWC kernel (nhwc.py) against the NCHW one's
# best: 40 -> 80 at 56x56 161 against 424 us (onnxruntime 221), 80 -> 160 at 28x28 169 / 221 (151),
# 160 -> 320 at 14x14 182 / 293 (235), 256 -> 512 at 14x14 446 / 567 (502), 48 -> 96 4x4/4 at 56x56
# 313 / 438 (374); batch 8, 2 threads, 80 -> 160: 899 / 1594 (969).
# ... and holds more than this fraction of nonzero weights: a pruned one keeps the NCHW direct sparse kernel.
SPARSE_DENSE = 0.5


def _weight_shape(graph: Graph, node: Node) -> tuple[int, ...] | None:
    rec = graph.model.tensors.get(node.inputs[1]) if len(node.inputs) > 1 else None
    return None if rec is None else tuple(rec.shape)


def _depthwise(graph: Graph, node: Node) -> bool:
    """A 2-D Conv with one input channel per output channel (multiplier 1) and a constant weight."""
    shape = _weight_shape(graph, node)
    return (node.op == "Conv" and shape is not None and len(shape) == 4 and shape[1] == 1
            and int(node.attrs.get("group", 1)) == shape[0] and _const_bias(graph, node))


def _const_bias(graph: Graph, node: Node) -> bool:
    return len(node.inputs) < 3 or not node.inputs[2] or node.inputs[2] in graph.model.tensors


def _grouped(graph: Graph, node: Node) -> bool:
    """A dense enough 2-D Conv of several groups of more than one input channel, with a constant weight."""
    shape = _weight_shape(graph, node)
    if (node.op != "Conv" or shape is None or len(shape) != 4 or shape[1] < 2 or int(node.attrs.get("group", 1)) < 2
            or not _const_bias(graph, node)):
        return False
    w = graph.const(node.inputs[1])
    return w is not None and np.count_nonzero(w) > SPARSE_GROUPED * w.size


def _pointwise(graph: Graph, node: Node) -> bool:
    """A dense enough 2-D 1x1 Conv (or dcm.ScaledConv) of one group and no padding (any strides)."""
    from dcm.runtime.channel_scale import SCALED_CONV

    shape = _weight_shape(graph, node)
    if (node.op not in ("Conv", SCALED_CONV) or shape is None or len(shape) != 4 or shape[2:] != (1, 1)
            or int(node.attrs.get("group", 1)) != 1 or any(node.attrs.get("pads", [0]))
            or not _const_bias(graph, node)):
        return False
    w = graph.const(node.inputs[1])
    return w is not None and np.count_nonzero(w) > SPARSE_POINTWISE * w.size


def patch_layer(attrs: dict, kernel: tuple[int, ...]) -> bool:
    """A convolution whose windows tile the input: window = stride, no padding, no dilation."""
    return (list(attrs.get("strides", [1] * len(kernel))) == list(kernel) and not any(attrs.get("pads", [0]))
            and all(d == 1 for d in attrs.get("dilations", [1])) and attrs.get("auto_pad", "NOTSET") in ("NOTSET", "VALID", ""))


def _dense(graph: Graph, node: Node) -> bool:
    """A dense 2-D Conv of one group and a window larger than 1x1: of few channels (DENSE_MAX_CHANNELS),
    or a patch layer."""
    shape = _weight_shape(graph, node)
    if (node.op != "Conv" or shape is None or len(shape) != 4 or shape[2:] == (1, 1)
            or int(node.attrs.get("group", 1)) != 1 or not _const_bias(graph, node)
            or (max(shape[:2]) > DENSE_MAX_CHANNELS and not patch_layer(node.attrs, shape[2:]))):
        return False
    w = graph.const(node.inputs[1])
    return w is not None and np.count_nonzero(w) > SPARSE_DENSE * w.size


def _stem(graph: Graph, node: Node) -> bool:
    """A dense 2-D Conv of one group with few input channels (a network's first layer)."""
    shape = _weight_shape(graph, node)
    if (NHWC_STEM not in graph.internal or node.op != "Conv" or shape is None or len(shape) != 4
            or shape[1] > STEM_MAX_INPUTS or int(node.attrs.get("group", 1)) != 1 or not _const_bias(graph, node)):
        return False
    w = graph.const(node.inputs[1])
    return w is not None and np.count_nonzero(w) > SPARSE_STEM * w.size


def _conv_kind(graph: Graph, node: Node) -> str | None:
    """"depthwise", "grouped", "pointwise", "stem" or "dense" for a convolution the regions can take,
    else None. Grouped, stem and dense layers run on conv_nhwc_out, so they join only where the backend
    offers its op (``NHWC_STEM``)."""
    windows = NHWC_STEM in graph.internal
    if _depthwise(graph, node):
        return "depthwise"
    if windows and _grouped(graph, node):
        return "grouped"
    if node.inputs and _pointwise(graph, node):
        return "pointwise"
    if _stem(graph, node):
        return "stem"
    return "dense" if windows and node.inputs and _dense(graph, node) else None


def _spatial_mean(graph: Graph, node: Node) -> bool:
    """GlobalAveragePool, or ReduceMean over axes 2 and 3 (of 4) keeping them."""
    if node.op == "GlobalAveragePool":
        return True
    if node.op != "ReduceMean" or int(node.attrs.get("keepdims", 1)) != 1:
        return False
    from dcm.runtime.optimize import _ints

    axes = _ints(graph, node, 1, "axes")  # input 1 from opset 18, the attribute before
    return axes is not None and sorted(a % 4 for a in axes) == [2, 3] and all(-4 <= a < 4 for a in axes)


def _scalar(graph: Graph, name: str) -> bool:
    rec = graph.model.tensors.get(name)
    return rec is not None and int(np.prod(rec.shape)) == 1


class _Regions:
    """The nodes that run channels-last: ``region`` (indices), ``x_index`` (a convolution's NHWC input:
    ScaledConv's either factor), ``held`` (values held NHWC: the outputs of region nodes but the
    means'), ``neutral`` ([N, C, 1, 1] values, the same array in either layout: the means' outputs and
    what region nodes compute from them alone, a squeeze-and-excitation branch) and ``entering``
    (NCHW values a region convolution reads: entered once, NHWC after that)."""

    def __init__(self, graph: Graph):
        self.graph, self.nodes = graph, graph.nodes
        self.protected = graph.protected()
        self.region: set[int] = set()
        self.x_index: dict[int, int] = {}
        self.held: set[str] = set()
        self.neutral: set[str] = set()
        self.entering: set[str] = set()
        self.stems: set[int] = set()  # convolutions that read NCHW and write NHWC
        # each convolution's form, judged once (the 1x1 and stem tests decode the weight)
        self.kind = {i: kind for i, n in enumerate(self.nodes) if (kind := _conv_kind(graph, n)) is not None}
        self.readers: dict[str, list[int]] = {}
        for i, n in enumerate(self.nodes):
            for x in n.inputs:
                self.readers.setdefault(x, []).append(i)
        # values a Transpose made NCHW from NHWC (ConvNeXt's blocks end so): {value: its NHWC input}
        self.made_nchw = {n.outputs[0]: n.inputs[0] for n in self.nodes
                          if n.op == "Transpose" and n.attrs.get("perm") == TO_NCHW and n.inputs}
        while self._forward() | self._backward():
            pass
        self.entering -= self.held  # a value whose producer joined later is NHWC already
        self._drop_costly()

    def _drop_costly(self) -> None:
        """Give back each connected region with more Transposes in and out than convolutions other than
        small dense ones (a lone depthwise layer: its NCHW kernel transposes itself, and only where it
        needs to). A way out into the model's own NCHW -> NHWC Transpose costs nothing: the two cancel."""
        producer = {o: i for i in self.region for o in self.nodes[i].outputs}
        parent = {i: i for i in self.region}

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for i in self.region:
            for x in self.nodes[i].inputs:
                if (x in self.held or x in self.neutral) and x in producer:
                    parent[root(i)] = root(producer[x])
        for x in self.entering:  # one Transpose enters x for all its region readers: they share its cost
            inside = [j for j in self.readers.get(x, []) if j in self.region]
            for j in inside[1:]:
                parent[root(j)] = root(inside[0])
        cost: dict[int, int] = {}
        for i in self.region:
            node, r = self.nodes[i], root(i)
            # a small dense layer pays for no Transpose: on large planes it runs no faster channels-last
            # (32 -> 32 3x3 at 128x128: 2960 against Winograd's 3130 us; U-Net's first level lost 1.06x)
            cost[r] = cost.get(r, 0) - ((i in self.x_index and self.kind.get(i) != "dense") or i in self.stems)
            for y in node.outputs:
                outside = [j for j in self.readers.get(y, []) if j not in self.region]
                if y in self.held and (y in self.protected or any(self.nodes[j].op != "Transpose"
                                                                  or self.nodes[j].attrs.get("perm") != TO_NHWC
                                                                  for j in outside)):
                    cost[r] += 1
        for x in self.entering - set(self.made_nchw):
            for r in {root(j) for j in self.readers.get(x, []) if j in self.region}:
                cost[r] += 1
        dropped = {i for i in self.region if cost[root(i)] > 0}
        self.region -= dropped
        self.stems -= dropped
        for i in dropped:
            self.x_index.pop(i, None)
            self.held.difference_update(self.nodes[i].outputs)
            self.neutral.difference_update(self.nodes[i].outputs)
        self.entering = {x for x in self.entering if any(j in self.region for j in self.readers.get(x, []))}

    def _join(self, i: int, x_index: int | None = None, neutral: bool = False) -> None:
        node = self.nodes[i]
        self.region.add(i)
        if x_index is not None:
            self.x_index[i] = x_index
            if node.inputs[x_index] not in self.held and not neutral:
                self.entering.add(node.inputs[x_index])
        (self.neutral if neutral or _spatial_mean(self.graph, node) else self.held).update(node.outputs)

    def _forward(self) -> bool:
        """In graph order: depthwise, grouped and small dense convolutions, and what reads only region values."""
        from dcm.runtime.channel_scale import SCALED_CONV

        graph, held, joined = self.graph, self.held, False
        for i, node in enumerate(self.nodes):
            if i in self.region:
                continue
            kind = self.kind.get(i)
            if kind in ("depthwise", "grouped", "dense"):
                self._join(i, 0)
            elif node.op in UNARY or node.op in BINARY:
                live = [x for x in node.inputs[: 1 if node.op in UNARY else 2] if x]
                rest = node.inputs[1:] if node.op in UNARY else node.inputs[2:]
                if not live or not all(not x or _scalar(graph, x) for x in rest):
                    continue
                if all(x in self.neutral for x in live):
                    self._join(i, neutral=True)
                elif all(x in held or x in self.entering or x in self.made_nchw for x in live):
                    self._join(i)  # ConvNeXt's residual Add: the block input and its branch made NCHW
                    self.entering.update(x for x in live if x in self.made_nchw and x not in held)
                else:
                    continue
            elif _spatial_mean(graph, node) and node.inputs[0] in held:
                self._join(i)
            elif kind == "pointwise":  # reading a region value, or an NCHW value a region node enters anyway
                inside = [j for j in ([0, 3] if node.op == SCALED_CONV else [0])
                          if node.inputs[j] in held or node.inputs[j] in self.entering]
                if node.op == "Conv" and node.inputs[0] in self.neutral:  # a squeeze-and-excitation layer
                    self._join(i, 0, neutral=True)
                elif len(inside) == 1:
                    self._join(i, inside[0])
                else:
                    continue
            else:
                continue
            joined = True
        return joined

    def _activation(self, y: str, unary) -> list[int] | None:
        """The nodes of the activation that alone reads y: one unary op, or SiLU's Sigmoid and Mul."""
        readers = self.readers.get(y, [])
        if len(readers) == 1 and unary(readers[0]):
            return readers
        if len(readers) != 2:
            return None
        sig, mul = sorted(readers, key=lambda j: self.nodes[j].op != "Sigmoid")
        s = self.nodes[sig].outputs[0]
        if (self.nodes[sig].op != "Sigmoid" or not unary(sig) or self.nodes[mul].op != "Mul" or sig in self.region
                or mul in self.region or sorted(self.nodes[mul].inputs) != sorted([y, s]) or s in self.protected
                or self.readers.get(s) != [mul]):
            return None
        return [sig, mul]

    def _backward(self) -> bool:
        """1x1 convolutions and stems, with the activations after them, whose every reader runs
        channels-last (MobileNet's expansion right after its stem, then the stem)."""
        nodes, joined = self.nodes, False

        def unary(j: int) -> bool:
            n = nodes[j]
            return (n.op in UNARY and len(n.outputs) == 1 and j not in self.region
                    and all(not x or _scalar(self.graph, x) for x in n.inputs[1:]))

        def reads_nhwc(r: int, y: str) -> bool:  # not a ScaledConv's NCHW scale, nor a stem's input
            return r in self.region and r not in self.stems and (
                r not in self.x_index or nodes[r].inputs[self.x_index[r]] == y or nodes[r].op == "Conv")

        for i in range(len(nodes) - 1, -1, -1):
            kind = self.kind.get(i)
            if i in self.region or nodes[i].op != "Conv" or kind not in ("pointwise", "stem"):
                continue
            stem = kind == "stem"
            chain, y = [i], nodes[i].outputs[0]
            while y not in self.protected:
                step = self._activation(y, unary)
                if step is None:
                    break
                chain += step
                y = nodes[step[-1]].outputs[0]
            if y in self.protected or not self.readers.get(y) or not all(reads_nhwc(r, y) for r in self.readers[y]):
                continue
            if stem:  # reads its NCHW input as it is
                self._join(i)
                self.stems.add(i)
            else:
                self._join(i, 0)
            for j in chain[1:]:
                self._join(j)
            joined = True
        return joined


def channels_last(graph: Graph) -> None:
    """Rewrite the regions (see the module docstring) to the channels-last internal ops."""
    if NHWC_CONV not in graph.internal:
        return
    from dcm.runtime.optimize import _name, merge_transposes

    found = _Regions(graph)
    nodes, protected, region, x_index = graph.nodes, found.protected, found.region, found.x_index
    held, readers = found.held, found.readers
    if not region:
        return
    names = {x for n in nodes for x in (*n.inputs, *n.outputs)} | {v.name for v in graph.model.inputs}

    def fresh(base: str) -> str:
        name, k = base + SUFFIX, 1
        while name in names:
            name, k = f"{base}{SUFFIX}{k}", k + 1
        names.add(name)
        return name

    nhwc = {v: fresh(v) for v in sorted(held)}
    entered: dict[str, str] = {}
    out: list[Node] = []
    for i, node in enumerate(nodes):
        if i not in region:
            out.append(node)
            continue
        for x in node.inputs:  # an NCHW value enters the region before its first reader there
            if x in found.entering and x not in entered:
                if x in found.made_nchw:  # the model's own NHWC -> NCHW Transpose: its input is the value
                    entered[x] = found.made_nchw[x]
                    continue
                entered[x] = fresh(x)
                out.append(Node("Transpose", [x], [entered[x]], {"perm": TO_NHWC}, f"{x}{SUFFIX}/enter"))
        inputs = [nhwc.get(x, entered.get(x, x)) for x in node.inputs]
        if i in x_index:  # a convolution
            j = x_index[i]
            if j == 3:  # ScaledConv: the NHWC factor first, the scale last
                inputs[0], inputs[3] = inputs[3], inputs[0]
            op = NHWC_CONV if node.op == "Conv" else NHWC_SCALED_CONV
            out.append(Node(op, inputs, [nhwc.get(y, y) for y in node.outputs], dict(node.attrs), node.name))
        elif _spatial_mean(graph, node):
            out.append(Node(NHWC_MEAN, inputs[:1], list(node.outputs), {}, node.name))
        elif i in found.stems:
            out.append(Node(NHWC_STEM, inputs, [nhwc[y] for y in node.outputs], dict(node.attrs), node.name))
        else:
            out.append(Node(node.op, inputs, [nhwc.get(y, y) for y in node.outputs], dict(node.attrs), node.name))
        for y in node.outputs:  # the region leaves here for readers outside it and model outputs
            if y in nhwc and (y in protected or any(r not in region for r in readers.get(y, []))):
                out.append(Node("Transpose", [nhwc[y]], [y], {"perm": TO_NCHW}, f"{y}{SUFFIX}/leave"))
    # the model's NHWC -> NCHW Transposes whose every reader now reads their NHWC input: no step of their own
    read = {x for n in out for x in n.inputs}
    unread = {i for i, n in enumerate(out) if n.op == "Transpose" and n.outputs[0] in found.made_nchw
              and n.outputs[0] not in read and n.outputs[0] not in protected}
    for i in unread:
        graph.folded[_name(out[i])] = "(channels-last)"
    graph.nodes = [n for i, n in enumerate(out) if i not in unread]
    made = {n.name for n in graph.nodes if n.name.endswith((f"{SUFFIX}/enter", f"{SUFFIX}/leave"))}
    merge_transposes(graph)  # a region's exit straight into the model's own NCHW -> NHWC Transpose
    for name in made & set(graph.folded):  # describe() lists the model's nodes only
        del graph.folded[name]
