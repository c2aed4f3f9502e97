"""Activations and residual Adds fused into the kernel that produces their input (the CPU's Conv
and Gemm, and BatchNormalization).

A session folds a Relu, Clip, HardSigmoid, HardSwish, Sigmoid, Tanh, LeakyRelu or Gelu, and SiLU
written as Sigmoid then Mul, into the convolution, fully connected layer or batch normalization that
feeds it, when that value has no other use. The producer applies it to its own fresh output while it is in cache: no
step, no allocation of its own (MobileNetV2 has 35 ReLU6 Clips, EfficientNet 49 SiLUs), and the
compiled kernels clamp inside their loops (Relu, and Clip for depthwise convolutions). A Conv whose
output only feeds an Add (ResNet's residual connections) adds the other input in place, then applies
the activation after that Add, if any.

The fused nodes run the same arithmetic (the activation's own kernel, an in-place Add or Clip), so
the results are the ones the unfused graph gives. On float32 the activation is the compiled one of
``_pointwise.c`` (``dcm.runtime.cpu.pointwise``), which a producer also hands its bias and residual
(``add_and_activate``): bias, residual and activation in one pass over the output, where numpy made
one per step (BERT's bias + GELU: about 20). The model is not changed: ``dcm export`` writes the
nodes as stored.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from dcm.format.model import Node
from dcm.runtime.cpu import native
from dcm.runtime.cpu.pointwise import Act, compiled
from dcm.runtime.kernel import Kernel

CHUNK = 1 << 16  # values per piece of a large output the epilogue runs over (256 KiB of float32)

# One-input activations whose kernel is called as the epilogue (its result replaces the output).
ACTIVATIONS = ("HardSigmoid", "HardSwish", "Sigmoid", "Tanh", "LeakyRelu", "Gelu")


@dataclass
class Epilogue:
    """What a producer applies to its output: ``apply(y)`` returns the activation of y (in place
    where it can). ``clip``: the (lo, hi) bounds when the activation is a clamp, for kernels that
    clamp in their own loops. ``act``: its compiled form, if it has one. ``op``: what ``describe()``
    shows (``Sigmoid*Mul`` for SiLU)."""

    op: str
    apply: Callable[[np.ndarray], np.ndarray]
    clip: tuple[float, float] | None = None
    act: Act | None = None
    threads: int = 1  # the session's: the compiled activation splits large outputs over them

    def __call__(self, y: np.ndarray) -> np.ndarray:
        """The compiled activation in place; else large outputs go through in chunks that stay in
        cache across the activation's numpy passes (a SiLU is 5: 1.85 against 1.42 ms on
        MobileNet's 1.2M-value layers)."""
        flat = y if y.flags.c_contiguous else y.T  # fused_right's products are transposed views
        if self.act is not None and compiled(flat):
            native.activate(flat, flat, *self.act, threads=self.threads)
            return y
        if y.size <= CHUNK or not y.flags.c_contiguous:
            return self.apply(y)
        flat = y.reshape(-1)
        for start in range(0, flat.size, CHUNK):
            part = flat[start : start + CHUNK]
            done = self.apply(part)
            if done is not part:
                part[...] = done
        return y


def add_and_activate(y: np.ndarray, bias: np.ndarray | None, relu: bool, epilogue: Epilogue | None,
                     plane: int = 1, residual: np.ndarray | None = None, threads: int = 1) -> bool:
    """y = act(y + bias + residual) in place on a producer's fresh float32 output, in one compiled
    pass: act is the Relu (``relu``) or the epilogue's activation; bias (float32, contiguous) is per
    column (plane 1) or per channel of planes of ``plane`` values. False, y untouched, where the
    compiled kernel cannot take it (another type, no build, an epilogue it has no form of, a residual
    of another shape): the caller then runs its own steps. Large outputs split over ``threads``."""
    act = ("relu", 0.0, 0.0) if relu else ("none", 0.0, 0.0) if epilogue is None else epilogue.act
    if act is None or not y.size or not compiled(y) or (
            residual is not None and (residual.shape != y.shape or not compiled(residual))):
        return False
    native.activate(y, y, *act, bias=bias, plane=plane, residual=residual, threads=threads)
    return True


@dataclass
class Fusion:
    """One fused chain: the producer's node index, the indices of the nodes it absorbed, the values
    the producer now writes (the last absorbed node's outputs), and the residual it adds (the other
    input of a fused Add; None without one)."""

    producer: int
    absorbed: list[int]
    outputs: list[str]
    op: str
    residual: str | None = None

    def hidden(self, nodes: list[Node]) -> set[str]:
        """The values the fusion never stores (the producer's own output and those in the chain)."""
        inner = {o for i in [self.producer, *self.absorbed] for o in nodes[i].outputs}
        return inner - set(self.outputs)


def _clip_bounds(node: Node, consts: dict[str, Any]) -> tuple[float, float] | None:
    """A Clip's bounds when they are attributes or constants (None: one is computed at run time)."""
    bounds = []
    for i, attr, default in ((1, "min", -np.inf), (2, "max", np.inf)):
        name = node.inputs[i] if i < len(node.inputs) else ""
        if name:
            if name not in consts:
                return None
            v = np.asarray(consts[name])
            if v.size != 1:
                return None
            bounds.append(float(v.reshape(())))
        else:
            bounds.append(float(node.attrs.get(attr, default)))
    return bounds[0], bounds[1]


def _clip_epilogue(bounds: tuple[float, float], kernel: Kernel, node: Node, consts: dict[str, Any]) -> Epilogue:
    args = [consts.get(x) if x else None for x in node.inputs[1:]]

    def apply(y: np.ndarray) -> np.ndarray:
        if y.dtype == np.float32:  # what Clip's kernel computes, in place
            return np.clip(y, np.float32(bounds[0]), np.float32(bounds[1]), out=y)
        return kernel(y, *args)[0]

    return Epilogue("Clip", apply, bounds, ("clip", *bounds), kernel.threads)


def _unary_epilogue(op: str, kernel: Kernel) -> Epilogue:
    act = ("relu", 0.0, 0.0) if op == "Relu" else getattr(kernel, "act", None)
    return Epilogue(op, lambda y: kernel(y)[0], act=act, threads=kernel.threads)


def _silu_epilogue(sigmoid: Kernel) -> Epilogue:
    """x * Sigmoid(x): the Mul's product written over x (the same values as a new array)."""
    return Epilogue("Sigmoid*Mul", lambda y: np.multiply(y, sigmoid(y)[0], out=y), act=("silu", 1.0, 0.0),
                    threads=sigmoid.threads)


def fuse_activations(nodes: list[Node], kernels: list[Kernel], consts: dict[str, Any],
                     outputs: set[str]) -> list[Fusion]:
    """Set ``relu`` or ``epilogue`` on each producer (a kernel with ``fuses_relu``) whose single-use
    output feeds an activation, and ``residual_add`` where it feeds an Add (a residual connection,
    then maybe an activation) that a kernel with ``fuses_residual`` takes; the chains found, for the
    session to skip the absorbed nodes."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.outputs}
    users: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for x in set(n.inputs):
            users.setdefault(x, []).append(i)
    uses = Counter(x for n in nodes for x in n.inputs)
    fused = []
    for j, (node, k) in enumerate(zip(nodes, kernels)):
        if not k.fuses_relu or len(node.outputs) != 1:
            continue
        y = node.outputs[0]
        if y in outputs or len(users.get(y, [])) == 0:
            continue
        residual = _residual(nodes, consts, outputs, users, uses, producer, j, y) if k.fuses_residual else None
        if residual is not None:
            add, r = residual
            k.residual_add = kernels[add]
            z = nodes[add].outputs[0]
            found = _match(nodes, kernels, consts, outputs, users, uses, z) if z not in outputs and uses[z] else None
            absorbed, epilogue = found if found is not None else ([], None)
            if absorbed and epilogue is None:  # Relu comes after the Add here, so as an epilogue too
                epilogue = _unary_epilogue("Relu", kernels[absorbed[0]])
            k.epilogue = epilogue
            k.quiet = k.quiet and all(kernels[i].quiet for i in [add, *absorbed])
            op = "Add" + ("" if epilogue is None else "+" + epilogue.op)
            fused.append(Fusion(j, [add, *absorbed], list(nodes[([add, *absorbed])[-1]].outputs), op, r))
            continue
        found = _match(nodes, kernels, consts, outputs, users, uses, y)
        if found is None:
            continue
        absorbed, epilogue = found
        if epilogue is None:
            k.relu = True
        else:
            k.epilogue = epilogue
            k.quiet = k.quiet and all(kernels[i].quiet for i in absorbed)  # Sigmoid's exp may warn
        op = "Relu" if epilogue is None else epilogue.op
        fused.append(Fusion(j, absorbed, list(nodes[absorbed[-1]].outputs), op))
    return fused


def _match(nodes: list[Node], kernels: list[Kernel], consts: dict[str, Any], outputs: set[str],
           users: dict[str, list[int]], uses: Counter, y: str) -> tuple[list[int], Epilogue | None] | None:
    """The activation nodes that read only ``y`` (and constants): ([indices], its epilogue; None
    for Relu, which the kernels take as their ``relu`` flag)."""
    readers = users[y]
    if len(readers) == 1 and uses[y] == 1:
        i = readers[0]
        n = nodes[i]
        if n.inputs[0] != y or len(n.outputs) != 1:
            return None
        if n.op == "Relu" and len(n.inputs) == 1:
            return [i], None
        if n.op in ACTIVATIONS and len(n.inputs) == 1:
            return [i], _unary_epilogue(n.op, kernels[i])
        if n.op == "Clip" and all(x == "" or x in consts for x in n.inputs[1:]):
            bounds = _clip_bounds(n, consts)
            return None if bounds is None else ([i], _clip_epilogue(bounds, kernels[i], n, consts))
        return None
    # SiLU: s = Sigmoid(y); Mul(y, s) or Mul(s, y), y read by nothing else, s by the Mul only.
    if len(readers) != 2 or uses[y] != 2:
        return None
    a, b = sorted(readers, key=lambda i: nodes[i].op != "Sigmoid")
    sig, mul = nodes[a], nodes[b]
    if sig.op != "Sigmoid" or mul.op != "Mul" or len(sig.outputs) != 1 or sig.inputs != [y]:
        return None
    s = sig.outputs[0]
    if s in outputs or uses[s] != 1 or sorted(mul.inputs) != sorted([y, s]) or b < a:
        return None
    return [a, b], _silu_epilogue(kernels[a])


def _residual(nodes: list[Node], consts: dict[str, Any], outputs: set[str], users: dict[str, list[int]],
              uses: Counter, producer: dict[str, int], j: int, y: str) -> tuple[int, str] | None:
    """(the Add's index, its other input) where ``y`` feeds only an Add whose other input is a run-time
    value computed before node j (the producer reads it when it runs)."""
    readers = users[y]
    if len(readers) != 1 or uses[y] != 1 or nodes[readers[0]].op != "Add":
        return None
    add = nodes[readers[0]]
    if len(add.inputs) != 2 or len(add.outputs) != 1 or add.inputs[0] == add.inputs[1]:
        return None
    r = add.inputs[1] if add.inputs[0] == y else add.inputs[0]
    if not r or r in consts or producer.get(r, -1) >= j:
        return None
    return readers[0], r
