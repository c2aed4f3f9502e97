"""The GPU backend's fallback: a CPU kernel run on host copies of a node's inputs.

Ops rarely seen in a network (BitShift, LpPool, MaxUnpool) gain little
from a torch kernel of their own, as small shape computations gain nothing from the device
(onnxruntime's CUDA provider runs those on the CPU). So every op of the CPU registry without a
torch kernel is registered here through one wrapper, ``on_cpu``: the CPU kernel
is built exactly as on the CPU backend (it parses the same attributes and reads the same load-time
constants, so its ``weight_inputs`` are the wrapper's), it gets numpy copies of the run-time inputs,
and its results are moved back to the session's device. ``describe()`` says ``"backend":
"cpu-fallback"`` for such a node.

A torch kernel that cannot run some attribute combination exactly (Pad's wrap mode, MaxPool's
Indices output) subclasses ``Native`` and names its CPU kernel: the node is then built as ``on_cpu``
at load, decided per node by ``native(node, ctx)``.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from dcm.format.model import Node
from dcm.runtime.kernel import Kernel, LoadContext, Registry


def to_host(x: Any) -> Any:
    """A run-time value as numpy (None, an absent optional input, stays None)."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x


def on_host(fn, device: str | torch.device, *inputs: Any) -> tuple:
    """``fn`` (a CPU kernel's ``__call__``) on numpy copies of ``inputs``; its results on ``device``.
    Also what a torch kernel does with the rare input it has no exact torch form for (an empty
    reduction, an integer mean)."""
    with np.errstate(all="ignore"):  # IEEE results, silently, as the CPU session runs them
        results = fn(*map(to_host, inputs))
    return tuple(torch.as_tensor(np.array(y, copy=True), device=device) for y in results)


class CpuFallback(Kernel):
    """Runs ``cpu_kernel`` (set by ``on_cpu``) on host copies; results go back to the session's device."""

    cpu_kernel: type[Kernel] = Kernel

    def __init__(self, node: Node, ctx: LoadContext):
        super().__init__(node, ctx)
        self.inner = self.cpu_kernel(node, ctx)
        self.weight_inputs = self.inner.weight_inputs
        self.device = ctx.device

    def run_on_cpu(self, inputs: tuple) -> tuple:
        return on_host(self.inner, self.device, *inputs)

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "backend": "cpu-fallback"}


@functools.cache
def on_cpu(cpu_kernel: type[Kernel]) -> type[Kernel]:
    """The GPU registry's entry for ``cpu_kernel``. Its ``__call__`` carries the CPU kernel's
    signature, since the load-time checks read a kernel's input count from it."""
    def __call__(self, *inputs):
        return self.run_on_cpu(inputs)

    functools.update_wrapper(__call__, cpu_kernel.__call__)
    return type(f"{cpu_kernel.__name__}OnCpu", (CpuFallback,), {"cpu_kernel": cpu_kernel, "__call__": __call__})


class Native(Kernel):
    """Base of a torch kernel that hands some nodes to its CPU kernel: when ``native(node, ctx)`` is
    False the node is built as ``on_cpu(cpu_kernel)`` instead (decided once, at load)."""

    cpu_kernel: type[Kernel] = Kernel

    @classmethod
    def native(cls, node: Node, ctx: LoadContext) -> bool:
        return True

    def __new__(cls, node: Node, ctx: LoadContext):
        if cls.native(node, ctx):
            return super().__new__(cls)
        return on_cpu(cls.cpu_kernel)(node, ctx)  # not a cls instance: Python skips cls.__init__


def fill_from(cpu_registry: Registry, registry: Registry) -> None:
    """Register ``on_cpu`` for every CPU op the torch registry has no kernel for."""
    for op, kernel in cpu_registry.items():
        registry.setdefault(op, on_cpu(kernel))
