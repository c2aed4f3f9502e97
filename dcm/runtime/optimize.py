"""Graph rewrites a session applies when it loads, before any kernel is built.

Each pass is a small function that rewrites ``Graph.nodes`` in place and records what it removed in
``Graph.folded`` ({removed node name: the node that now does its work}), so that ``describe()``,
``dcm inspect --kernels`` and ``dcm bench`` can show it. The model itself is never changed:
``dcm export`` writes the graph as stored, which stays a standard ONNX graph.

Passes here only rewrite the graph; fusions that need a kernel's cooperation (a Relu computed by
the Conv that feeds it) stay with the session, which knows the kernels. A pass may write an internal
op (named ``dcm.*``, not ONNX) only when the backend runs it (``Graph.internal``): the CPU keeps
their kernels in a registry of their own that no file can reach.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from dcm.encoder.codec import decode_tensor
from dcm.format.model import Model, Node
from dcm.runtime.channel_scale import fuse_channel_scale
from dcm.runtime.channels_last import channels_last


@dataclass
class Graph:
    """The working copy of a model's node list while the passes run."""

    model: Model
    nodes: list[Node]
    folded: dict[str, str] = field(default_factory=dict)
    internal: frozenset[str] = frozenset()  # the internal ops the backend runs

    def const(self, name: str) -> np.ndarray | None:
        """The value of a constant input (None: a run-time value, or an absent optional input)."""
        rec = self.model.tensors.get(name) if name else None
        return None if rec is None else decode_tensor(rec)

    def consumers(self) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = {}
        for n in self.nodes:
            for x in n.inputs:
                out.setdefault(x, []).append(n)
        return out

    def protected(self) -> set[str]:
        """Values a rewrite may not remove: the model's outputs."""
        return {v.name for v in self.model.outputs}


def _name(node: Node) -> str:
    return node.name or node.outputs[0]


def _ints(graph: Graph, node: Node, i: int, attr: str) -> list[int] | None:
    """An int list given as constant input ``i`` (newer opsets) or as attribute ``attr``; None when it
    is computed at run time."""
    if i < len(node.inputs) and node.inputs[i]:
        v = graph.const(node.inputs[i])
        return None if v is None else [int(a) for a in np.asarray(v).ravel()]
    return list(node.attrs.get(attr, []))


def _zero_pad_value(graph: Graph, pad: Node) -> bool:
    if len(pad.inputs) > 2 and pad.inputs[2]:
        v = graph.const(pad.inputs[2])
        return v is not None and v.size == 1 and float(v.ravel()[0]) == 0.0
    return float(pad.attrs.get("value", 0.0)) == 0.0


def fold_pads(graph: Graph) -> None:
    """A zero constant-mode Pad of the spatial axes only, read only by a Conv or by an AveragePool that
    counts padding, becomes part of that node's own ``pads``.

    MobileNet-style graphs from some exporters carry one explicit Pad per convolution; as its own
    step each one copies the whole activation (about 50 us even for small ones).
    """
    consumers = graph.consumers()
    protected = graph.protected()
    removed: set[int] = set()
    for pad in graph.nodes:
        if pad.op != "Pad" or pad.attrs.get("mode", "constant") != "constant" or pad.outputs[0] in protected:
            continue
        users = consumers.get(pad.outputs[0], [])
        if len(users) != 1 or len(users[0].inputs) < 1 or users[0].inputs[0] != pad.outputs[0]:
            continue
        user = users[0]
        counts_pads = user.op == "AveragePool" and user.attrs.get("count_include_pad", 0) == 1
        if not (user.op == "Conv" or counts_pads) or user.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
            continue
        pads = _ints(graph, pad, 1, "pads")
        axes = _ints(graph, pad, 3, "axes") if len(pad.inputs) > 3 and pad.inputs[3] else None
        if pads is None or not _zero_pad_value(graph, pad) or any(p < 0 for p in pads) or len(pads) % 2:
            continue
        rank = len(pads) // 2
        if axes is not None:  # opset 18: pads for the listed axes only; rank unknown without a shape
            continue
        begin, end = pads[:rank], pads[rank:]
        if rank < 3 or any(begin[:2]) or any(end[:2]):
            continue  # batch or channel padding is not a convolution's
        nd = rank - 2
        own = list(user.attrs.get("pads", [0] * 2 * nd))
        if len(own) != 2 * nd:
            continue
        merged = [a + b for a, b in zip(own, begin[2:] + end[2:])]
        graph.nodes[graph.nodes.index(user)] = replace(user, inputs=[pad.inputs[0], *user.inputs[1:]],
                                                       attrs={**user.attrs, "pads": merged})
        removed.add(id(pad))
        graph.folded[_name(pad)] = _name(user)
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]


def _compose(first: list[int], second: list[int]) -> list[int]:
    """The permutation of Transpose(second) after Transpose(first)."""
    return [first[p] for p in second]


def merge_transposes(graph: Graph) -> None:
    """Transpose of a Transpose (the first read by nothing else) becomes one Transpose, or disappears
    when the two cancel (attention graphs permute heads back and forth; each step copies the tensor)."""
    uses = Counter(x for n in graph.nodes for x in n.inputs)
    protected = graph.protected()
    producer = {o: n for n in graph.nodes for o in n.outputs}
    removed: set[int] = set()
    rename: dict[str, str] = {}
    for i, node in enumerate(graph.nodes):
        first = producer.get(node.inputs[0]) if node.op == "Transpose" and node.inputs else None
        if (first is None or first.op != "Transpose" or id(first) in removed or uses[first.outputs[0]] != 1
                or first.outputs[0] in protected or "perm" not in first.attrs or "perm" not in node.attrs):
            continue
        perm = _compose(first.attrs["perm"], node.attrs["perm"])
        removed.add(id(first))
        graph.folded[_name(first)] = _name(node)
        if perm == sorted(perm) and node.outputs[0] not in protected:
            removed.add(id(node))
            rename[node.outputs[0]] = first.inputs[0]
            graph.folded[_name(node)] = "(cancelled)"
        else:
            graph.nodes[i] = replace(node, inputs=[first.inputs[0]], attrs={**node.attrs, "perm": perm})
            producer[node.outputs[0]] = graph.nodes[i]
    kept = [n for n in graph.nodes if id(n) not in removed]
    graph.nodes = [replace(n, inputs=[rename.get(x, x) for x in n.inputs]) if any(x in rename for x in n.inputs)
                   else n for n in kept]


VIEWS = ("Reshape", "Flatten", "Unsqueeze", "Identity")  # ops that only relabel the shape (Squeeze also checks sizes)


def collapse_reshapes(graph: Graph) -> None:
    """A Reshape to a fixed target (a constant with no 0 that would copy a dimension of its input, or
    ``allowzero``) of a chain of views (Reshape, Flatten, Unsqueeze, Identity) that nothing else reads
    reshapes the chain's input directly: the result depends only on the element order, which views
    keep, so each view in the chain is one step less per run."""
    uses = Counter(x for n in graph.nodes for x in n.inputs)
    protected = graph.protected()
    producer = {o: n for n in graph.nodes for o in n.outputs}
    removed: set[int] = set()
    for i, node in enumerate(graph.nodes):
        target = _ints(graph, node, 1, "shape") if node.op == "Reshape" and node.inputs else None
        if target is None or (0 in target and node.attrs.get("allowzero", 0) != 1):
            continue
        source = node.inputs[0]
        view = producer.get(source)
        while (view is not None and view.op in VIEWS and len(view.outputs) == 1 and view.inputs
               and uses[source] == 1 and source not in protected and id(view) not in removed):
            removed.add(id(view))
            graph.folded[_name(view)] = _name(node)
            source = view.inputs[0]
            view = producer.get(source)
        if source != node.inputs[0]:
            graph.nodes[i] = replace(node, inputs=[source, *node.inputs[1:]])
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]


class _Expr:
    """Reads a pointwise subgraph backwards from a value, through intermediates nobody else reads,
    collecting the nodes it passes (the ones a fusion removes)."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.producer = {o: n for n in graph.nodes for o in n.outputs}
        self.uses = Counter(x for n in graph.nodes for x in n.inputs)
        self.protected = graph.protected()

    def scalar(self, name: str) -> float | None:
        v = self.graph.const(name)
        return float(v.ravel()[0]) if v is not None and v.size == 1 and v.dtype.kind == "f" else None

    def private(self, name: str, op: str) -> Node | None:
        """The node of type ``op`` that makes ``name``, when nothing but the pattern reads ``name``."""
        n = self.producer.get(name)
        ok = n is not None and n.op == op and self.uses[name] == 1 and name not in self.protected
        return n if ok else None

    def product(self, name: str, taken: list[Node]) -> tuple[float, list[str]]:
        """``name`` as (constant coefficient, other factors), flattening private Mul and Div-by-constant
        nodes in any association; the nodes flattened are appended to ``taken``."""
        node = self.private(name, "Mul") or self.private(name, "Div")
        if node is None or len(node.inputs) != 2:
            c = self.scalar(name)
            return (1.0, [name]) if c is None else (c, [])
        if node.op == "Div":
            d = self.scalar(node.inputs[1])
            if d is None or d == 0:
                return 1.0, [name]
            taken.append(node)
            c, factors = self.product(node.inputs[0], taken)
            return c / d, factors
        taken.append(node)
        return self.mul_product(node, taken)

    def mul_product(self, mul: Node, taken: list[Node]) -> tuple[float, list[str]]:
        """The product a Mul node computes, its inputs flattened (its own output may be read by anyone)."""
        (ca, fa), (cb, fb) = self.product(mul.inputs[0], taken), self.product(mul.inputs[1], taken)
        return ca * cb, fa + fb

    def one_plus(self, name: str, taken: list[Node]) -> str | None:
        """x when ``name`` is a private Add(1, x) or Add(x, 1)."""
        add = self.private(name, "Add")
        if add is None or len(add.inputs) != 2:
            return None
        for one, other in (add.inputs, add.inputs[::-1]):
            if self.scalar(one) == 1.0:
                taken.append(add)
                return other
        return None


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-5 * abs(b)


def _gelu_input(expr: _Expr, inner: Node, taken: list[Node]) -> tuple[str, str] | None:
    """(x, approximate) when ``inner`` (an Erf or Tanh) computes GELU's inner function of one x."""
    if inner.op == "Erf":  # erf(x / sqrt 2)
        c, factors = expr.product(inner.inputs[0], taken)
        return (factors[0], "none") if len(factors) == 1 and _close(c, 0.5 ** 0.5) else None
    c, factors = expr.product(inner.inputs[0], taken)  # tanh(sqrt(2/pi) (x + 0.044715 x^3))
    if len(factors) != 1 or not _close(c, (2 / np.pi) ** 0.5):
        return None
    add = expr.private(factors[0], "Add")
    if add is None or len(add.inputs) != 2:
        return None
    taken.append(add)
    for x, cube in (add.inputs, add.inputs[::-1]):
        k, parts = expr.product(cube, taken)
        power = expr.private(parts[0], "Pow") if len(parts) == 1 else None
        if power is not None and expr.scalar(power.inputs[1]) == 3.0 and power.inputs[0] == x:
            taken.append(power)
            parts = [x] * 3
        if _close(k, 0.044715) and parts == [x] * 3:
            return x, "tanh"
    return None


def fuse_gelu(graph: Graph) -> None:
    """GELU written out as pointwise ops (what torch exports before opset 20, in either the erf or the
    tanh form, in any order of the products) becomes one Gelu node: five to ten steps, each a pass
    over the activation and a fresh array, become one."""
    expr = _Expr(graph)
    removed: set[int] = set()
    roots: set[int] = set()  # replaced in graph.nodes, though expr still knows them as Mul
    for i in range(len(graph.nodes) - 1, -1, -1):
        root = graph.nodes[i]
        if root.op != "Mul" or id(root) in removed:
            continue
        taken = [root]
        c, factors = expr.mul_product(root, taken)
        if len(factors) != 2 or not _close(c, 0.5):
            continue
        match = None
        for x, s in (factors, factors[::-1]):
            t_taken = list(taken)
            inner_name = expr.one_plus(s, t_taken)
            inner = expr.private(inner_name, "Erf") or expr.private(inner_name, "Tanh") if inner_name else None
            if inner is None:
                continue
            t_taken.append(inner)
            found = _gelu_input(expr, inner, t_taken)
            if found is not None and found[0] == x:
                match = found, t_taken
                break
        if match is None or any(id(n) in removed or id(n) in roots for n in match[1]):
            continue
        (x, approximate), nodes = match
        graph.nodes[i] = Node("Gelu", [x], list(root.outputs), {"approximate": approximate}, _name(root))
        roots.add(id(root))
        removed.update(id(n) for n in nodes if n is not root)
        for n in nodes:
            if n is not root:
                graph.folded[_name(n)] = _name(root)
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]



def _last_axis_mean(graph: Graph, node: Node | None) -> bool:
    """``node`` is a ReduceMean over the last axis only, keeping it (axes as attribute or input)."""
    if node is None or node.op != "ReduceMean" or not node.inputs or node.attrs.get("keepdims", 1) != 1:
        return False
    return _ints(graph, node, 1, "axes") == [-1]


def _root_mean_square(graph: Graph, expr: _Expr, sqrt: Node, value: str) -> tuple[float, list[Node]] | None:
    """(epsilon, the nodes passed) when the Sqrt node reads mean(value^2 over the last axis) + a constant
    epsilon through private intermediates (the square a Pow by 2 or a Mul of value by itself)."""
    add_eps = expr.private(sqrt.inputs[0], "Add") if len(sqrt.inputs) == 1 else None
    if add_eps is None or len(add_eps.inputs) != 2:
        return None
    eps = [(v, expr.scalar(e)) for v, e in (add_eps.inputs, add_eps.inputs[::-1]) if expr.scalar(e) is not None]
    mean = expr.private(eps[0][0], "ReduceMean") if eps else None
    if not _last_axis_mean(graph, mean):
        return None
    square = expr.private(mean.inputs[0], "Pow") or expr.private(mean.inputs[0], "Mul")
    if square is None or len(square.inputs) != 2 or not (
            square.inputs == [value, value] if square.op == "Mul"
            else square.inputs[0] == value and expr.scalar(square.inputs[1]) == 2.0):
        return None
    return eps[0][1], [add_eps, mean, square]


def _replace_pattern(graph: Graph, expr: _Expr, taken: list[Node], out: str, op: str, inputs: list[str],
                     attrs: dict, removed: set[int]) -> None:
    """The node that makes ``out`` becomes one ``op`` node (keeping its name); the other nodes taken go."""
    last = expr.producer[out]
    graph.nodes[graph.nodes.index(last)] = Node(op, inputs, [out], attrs, _name(last))
    removed.update(id(n) for n in taken if n is not last)
    for n in taken:
        if n is not last:
            graph.folded[_name(n)] = _name(last)


def fuse_layer_norm(graph: Graph) -> None:
    """LayerNormalization written out (exports before opset 17, hand-written modules): x - mean over
    the last axis, its square's mean plus a constant epsilon, Sqrt, Div, times a constant [D] scale,
    plus an optional constant [D] bias, becomes one LayerNormalization node: nine passes over the
    activation, each with its own array, become one kernel."""
    expr = _Expr(graph)
    consumers = graph.consumers()
    removed: set[int] = set()
    for div in list(graph.nodes):
        if div.op != "Div" or len(div.inputs) != 2 or id(div) in removed:
            continue
        centred, taken = div.inputs[0], [div]
        sub, sqrt = expr.producer.get(centred), expr.private(div.inputs[1], "Sqrt")
        if sub is None or sub.op != "Sub" or len(sub.inputs) != 2 or centred in expr.protected or sqrt is None:
            continue
        x, mean = sub.inputs
        if not _last_axis_mean(graph, expr.private(mean, "ReduceMean")) or expr.producer[mean].inputs[0] != x:
            continue
        found = _root_mean_square(graph, expr, sqrt, centred)
        if found is None or expr.uses[centred] != 1 + found[1][-1].inputs.count(centred):  # read by these alone
            continue
        eps, nodes = found
        taken += [sub, expr.producer[mean], sqrt, *nodes]
        affine = _affine(graph, consumers, div.outputs[0], taken)
        if affine is None or any(id(n) in removed for n in taken):
            continue
        scale, bias, out = affine
        _replace_pattern(graph, expr, taken, out, "LayerNormalization", [x, scale, *([bias] if bias else [])],
                         {"axis": -1, "epsilon": eps}, removed)
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]


def _inverse_sqrt(expr: _Expr, node: Node, taken: list[Node]) -> tuple[str, Node] | None:
    """(x, the Sqrt) when ``node`` is x / Sqrt(s), or x times Reciprocal(Sqrt(s)) or Div(1, Sqrt(s)) (the
    forms torch's two exporters give ``torch.rsqrt``); the nodes passed go to ``taken``."""
    if node.op == "Div":
        sqrt = expr.private(node.inputs[1], "Sqrt")
        return None if sqrt is None else (node.inputs[0], sqrt)
    for x, inv_name in (node.inputs, node.inputs[::-1]):
        inv = expr.private(inv_name, "Reciprocal")
        root = inv.inputs[0] if inv is not None and len(inv.inputs) == 1 else None
        if inv is None:
            inv = expr.private(inv_name, "Div")
            one = inv is not None and len(inv.inputs) == 2 and expr.scalar(inv.inputs[0]) == 1.0
            root = inv.inputs[1] if one else None
        sqrt = expr.private(root, "Sqrt") if root else None
        if sqrt is not None:
            taken.append(inv)
            return x, sqrt
    return None


def fuse_rms_norm(graph: Graph) -> None:
    """RMSNormalization written out (LLaMA's, Mistral's, T5's; ONNX has the op from opset 23): x times
    1 / Sqrt(mean of x^2 over the last axis + a constant epsilon), then times a constant [D] scale,
    becomes one RMSNormalization node: Pow, ReduceMean, Add, Sqrt, Reciprocal and two Muls, each a pass
    over the activation with its own array, become one kernel."""
    expr = _Expr(graph)
    consumers = graph.consumers()
    removed: set[int] = set()
    for node in list(graph.nodes):
        if node.op not in ("Mul", "Div") or len(node.inputs) != 2 or id(node) in removed:
            continue
        taken = [node]
        inverse = _inverse_sqrt(expr, node, taken)
        found = None if inverse is None else _root_mean_square(graph, expr, inverse[1], inverse[0])
        if found is None:
            continue
        (x, sqrt), (eps, nodes) = inverse, found
        taken += [sqrt, *nodes]
        affine = _affine(graph, consumers, node.outputs[0], taken)
        if affine is None or affine[1] or any(id(n) in removed for n in taken):  # a bias: not this op
            continue
        _replace_pattern(graph, expr, taken, affine[2], "RMSNormalization", [x, affine[0]],
                         {"axis": -1, "epsilon": eps}, removed)
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]


def _affine(graph: Graph, consumers: dict[str, list[Node]], name: str, taken: list[Node]) -> tuple[str, str, str] | None:
    """(scale, bias or "", the output) when ``name``, read by nothing else, is multiplied by a constant
    [D] vector and then, optionally, a constant [D] vector is added; the Mul (and Add) go to ``taken``."""
    def only_reader(value: str, op: str) -> Node | None:
        users = consumers.get(value, [])
        ok = len(users) == 1 and users[0].op == op and len(users[0].inputs) == 2 and value not in graph.protected()
        return users[0] if ok and users[0].inputs[0] != users[0].inputs[1] else None

    mul = only_reader(name, "Mul")
    scale = None if mul is None else mul.inputs[1] if mul.inputs[0] == name else mul.inputs[0]
    rec = graph.model.tensors.get(scale) if scale else None
    if rec is None or len(rec.shape) != 1:
        return None
    taken.append(mul)
    add = only_reader(mul.outputs[0], "Add")
    bias = None if add is None else add.inputs[1] if add.inputs[0] == mul.outputs[0] else add.inputs[0]
    b = graph.model.tensors.get(bias) if bias else None
    if b is not None and tuple(b.shape) == tuple(rec.shape):
        taken.append(add)
        return scale, bias, add.outputs[0]
    return scale, "", mul.outputs[0]


MATMUL_ADD = "dcm.MatMulAdd"  # (MatMul(x, W) + b) [* s]: inputs x, W [in, out], b [out], optionally s [out]


def _absorb_constant(graph: Graph, producer: Callable[[Node], bool], op: str,
                     accept: Callable[[Node, tuple[int, ...]], bool], make: Callable[[Node, str, Node], Node]) -> None:
    """Each node ``producer`` takes whose output only one ``op`` node reads, the other input of that
    node a float32 constant of a shape ``accept`` takes (given the producer and the constant's shape),
    becomes ``make(producer node, constant's name, reader)`` in the producer's place; the reader goes."""
    tensors = graph.model.tensors
    consumers = graph.consumers()
    protected = graph.protected()
    removed: set[int] = set()
    for i, node in enumerate(graph.nodes):
        if not producer(node) or node.outputs[0] in protected:
            continue
        users = consumers.get(node.outputs[0], [])
        reader = users[0] if len(users) == 1 else None
        if reader is None or reader.op != op or len(reader.inputs) != 2 or reader.inputs[0] == reader.inputs[1]:
            continue
        const = reader.inputs[1] if reader.inputs[0] == node.outputs[0] else reader.inputs[0]
        rec = tensors.get(const)
        if rec is None or rec.dtype != "float32" or not accept(node, tuple(rec.shape)):
            continue
        graph.nodes[i] = make(node, const, reader)
        removed.add(id(reader))
        graph.folded[_name(reader)] = _name(node)
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]


def _outputs(graph: Graph, node: Node) -> int:
    """The outputs of a MatMul's (or dcm.MatMulAdd's) constant [in, out] weight."""
    return graph.model.tensors[node.inputs[1]].shape[1]


def fuse_matmul_add(graph: Graph) -> None:
    """MatMul by a constant [in, out] weight whose product only an Add of a constant [out] bias reads
    becomes one ``dcm.MatMulAdd`` node (what Gemm is for matrices, at any rank of x): the bias goes
    into the product's own fresh output, saving the Add's pass over the activation and its array.
    Transformer exports write every projection with a bias this way."""
    if MATMUL_ADD not in graph.internal:
        return
    tensors = graph.model.tensors

    def matmul(mm: Node) -> bool:
        w = tensors.get(mm.inputs[1]) if mm.op == "MatMul" and len(mm.inputs) == 2 else None
        return w is not None and len(w.shape) == 2 and w.dtype == "float32"

    _absorb_constant(graph, matmul, "Add", lambda mm, shape: shape == (_outputs(graph, mm),),
                     lambda mm, bias, add: Node(MATMUL_ADD, [*mm.inputs, bias], list(add.outputs), {}, mm.name))


def fuse_matmul_scale(graph: Graph) -> None:
    """A ``dcm.MatMulAdd`` whose product only a Mul by a constant of one value per output reads
    (ConvNeXt's and CaiT's layer scale, ``gamma * x``) takes that constant as a fourth input: its kernel
    scales the weight's columns and the bias once at load, (x @ W + b) * s = x @ (W * s) + b * s, and
    the Mul's pass over the activation is gone (ConvNeXt-atto's first stage: 70-80 us a block)."""
    if MATMUL_ADD not in graph.internal:
        return

    def per_output(mm: Node, shape: tuple[int, ...]) -> bool:
        return bool(shape) and shape[-1] == _outputs(graph, mm) and all(d == 1 for d in shape[:-1])

    _absorb_constant(graph, lambda mm: mm.op == MATMUL_ADD and len(mm.inputs) == 3, "Mul", per_output,
                     lambda mm, scale, mul: Node(MATMUL_ADD, [*mm.inputs, scale], list(mul.outputs), {}, mm.name))


# softmax(scale(q @ k) + mask) @ v: inputs q, k, v, mask, scale; attrs scale_op, nan_to. With scaled_qk, no
# scale but (q * q_factor) @ (k * k_factor): inputs 0 and 5 are q's Mul's operands, 1 and 6 k's
ATTENTION = "dcm.Attention"


def _scores(expr: _Expr, name: str, taken: list[Node]) -> tuple[Node, str, str] | None:
    """(the q @ k MatMul, the scale's input, "Mul"/"Div"/"") when private value ``name`` is that
    product, possibly multiplied or divided by a second value; the nodes passed go to ``taken``."""
    mm = expr.private(name, "MatMul")
    if mm is not None and len(mm.inputs) == 2:
        taken.append(mm)
        return mm, "", ""
    node = expr.private(name, "Mul") or expr.private(name, "Div")
    if node is None or len(node.inputs) != 2 or node.inputs[0] == node.inputs[1]:
        return None
    sides = [node.inputs] if node.op == "Div" else [node.inputs, node.inputs[::-1]]
    for product, scale in sides:
        mm = expr.private(product, "MatMul")
        if mm is not None and len(mm.inputs) == 2:
            taken += [node, mm]
            return mm, scale, node.op
    return None


def _probabilities(expr: _Expr, name: str, taken: list[Node]) -> tuple[Node, float | None] | None:
    """(the Softmax, the NaN fill) when private value ``name`` is a Softmax, or Where(IsNaN(p), c, p)
    of one with c a constant: scaled_dot_product_attention's boolean mask exports as the latter (a
    row masked everywhere is all NaN after the Softmax and becomes c). The nodes go to ``taken``."""
    sm = expr.private(name, "Softmax")
    if sm is not None:
        taken.append(sm)
        return sm, None
    where = expr.private(name, "Where")
    if where is None or len(where.inputs) != 3:
        return None
    nan = expr.private(where.inputs[0], "IsNaN")
    fill = expr.scalar(where.inputs[1])
    p = where.inputs[2]
    sm = expr.producer.get(p)
    if nan is None or fill is None or nan.inputs != [p] or sm is None or sm.op != "Softmax":
        return None
    if expr.uses[p] != 2 or p in expr.protected:  # read by the IsNaN and the Where only
        return None
    taken += [sm, nan, where]
    return sm, fill


def fuse_attention(graph: Graph) -> None:
    """MatMul(q, k), optionally scaled (Mul or Div), plus an optional mask (Add), Softmax over the last
    axis, MatMul by v: one ``dcm.Attention`` node, whose kernel updates the scores in place and
    computes them one head at a time when all heads' scores at once would be large (long sequences).
    An unscaled product of q and k that are each a Mul (torch's nn.MultiheadAttention multiplies both
    by the square root of the scale) takes the two Muls' operands (``scaled_qk``): the kernel applies
    them as one scale of the scores when they are single values, saving two passes over q and k.
    The intermediates must be read by nothing else."""
    if ATTENTION not in graph.internal:
        return
    expr = _Expr(graph)
    legacy = graph.model.opset < 13
    removed: set[int] = set()
    for i, pv in enumerate(graph.nodes):
        if pv.op != "MatMul" or len(pv.inputs) != 2 or pv.inputs[1] == pv.inputs[0]:
            continue
        probabilities: list[Node] = []
        head = _probabilities(expr, pv.inputs[0], probabilities)
        if head is None:
            continue
        sm, nan_to = head
        if sm.attrs.get("axis", 1 if legacy else -1) != -1 or len(sm.inputs) != 1:
            continue
        taken = list(probabilities)
        found, mask = _scores(expr, sm.inputs[0], taken), ""
        add = expr.private(sm.inputs[0], "Add") if found is None else None
        if add is not None and len(add.inputs) == 2 and add.inputs[0] != add.inputs[1]:
            for scores, other in (add.inputs, add.inputs[::-1]):
                trial = [*probabilities, add]
                found = _scores(expr, scores, trial)
                if found is not None:
                    taken, mask = trial, other
                    break
        if found is None or any(id(n) in removed for n in taken):
            continue
        mm, scale, scale_op = found
        inputs = [mm.inputs[0], mm.inputs[1], pv.inputs[1], mask, scale]
        attrs = {"scale_op": scale_op} if nan_to is None else {"scale_op": scale_op, "nan_to": nan_to}
        if not scale_op:  # q and k each scaled by a Mul instead (torch's export of its attention)
            sides = [expr.private(x, "Mul") for x in mm.inputs]
            sides = [n if n is not None and len(n.inputs) == 2 and id(n) not in removed else None for n in sides]
            if any(sides):
                taken += [n for n in sides if n is not None]
                inputs[:2] = [mm.inputs[a] if n is None else n.inputs[0] for a, n in enumerate(sides)]
                inputs += ["" if n is None else n.inputs[1] for n in sides]
                attrs.update(scale_op="Mul", scaled_qk=1)
        while not inputs[-1]:
            inputs.pop()
        graph.nodes[i] = Node(ATTENTION, inputs, list(pv.outputs), attrs, _name(pv))
        removed.update(id(n) for n in taken)
        for n in taken:
            graph.folded[_name(n)] = _name(pv)
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]


PASSES: dict[str, Callable[[Graph], None]] = {
    "fold_pads": fold_pads,
    "merge_transposes": merge_transposes,
    "collapse_reshapes": collapse_reshapes,
    "fuse_gelu": fuse_gelu,
    "fuse_layer_norm": fuse_layer_norm,
    "fuse_rms_norm": fuse_rms_norm,
    "fuse_matmul_add": fuse_matmul_add,
    "fuse_matmul_scale": fuse_matmul_scale,
    "fuse_attention": fuse_attention,
    "fuse_channel_scale": fuse_channel_scale,
    "channels_last": channels_last,
}


def optimize(model: Model, passes: list[str] | None = None, internal: frozenset[str] = frozenset()) -> Graph:
    """Run ``passes`` (default: all, in order) over a copy of the model's node list. ``internal``: the
    internal ops the backend runs (passes that would write others leave the graph as it is)."""
    graph = Graph(model, list(model.nodes), internal=internal)
    for name in PASSES if passes is None else passes:
        if name not in PASSES:
            raise ValueError(f"unknown graph pass {name!r}; the passes are {', '.join(PASSES)}")
        PASSES[name](graph)
    return graph
