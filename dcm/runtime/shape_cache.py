"""Shape subgraphs: the nodes of a graph that compute only from constants and from the *shapes* of
run-time values, found when a session loads and computed once per distinct input-shape signature.

Exporters write a transformer's reshapes as arithmetic on shapes (Shape, Gather, Unsqueeze, Concat,
Cast, Div, Sqrt...): hundreds of nodes, each a few microseconds of Python, none of it touching the
activations. A session runs them once per signature (the tuple of its input shapes) and keeps the
values the rest of the graph reads in a small LRU cache.

Whether a Shape node's input has a shape fixed by the input shapes depends on every op before it (a
NonZero's does not), so the cache is never trusted blindly: a Shape or Size node whose input is not a
model input becomes a ``ShapeGuard`` on a cached run, which checks the shape it sees against the one
recorded. A guard that fails means this model's shapes depend on data; the session then stops
caching for good.
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable

from dcm.format.model import Node

SHAPE_OPS = ("Shape", "Size")
CACHE_ENTRIES = 8  # input-shape signatures remembered (LRU)
# A signature's cached values larger than this in all (a causal mask over a long sequence) are
# recomputed on every run instead of being held.
CACHE_ENTRY_BYTES = 16 << 20


class StaleShapes(Exception):
    """A guard saw a shape other than the one its cached values were computed from. Not one of the
    session's kernel failures: it must reach the session, which reruns without the cache."""


@dataclass(frozen=True)
class ShapeSubgraph:
    """``nodes``: indices of the nodes computed from constants and shapes only. ``guarded``: the
    Shape/Size nodes among them whose input is a computed value ({node index: its input}).
    ``boundary``: the values of those nodes that the rest of the graph (or the caller) reads."""

    nodes: frozenset[int]
    guarded: dict[int, str]
    boundary: frozenset[str]

    def guard_key(self, i: int) -> tuple[str, int]:
        """The name under which a cached run's values hold guard ``i``'s expected shape."""
        return ("shape guard", i)


def find_shape_subgraph(nodes: list[Node], consts: set[str], inputs: set[str], outputs: set[str],
                        excluded: set[int]) -> ShapeSubgraph:
    """The shape subgraph of ``nodes``. ``excluded``: nodes that must run every time (fused into, or
    fusing, a node that reads data). A node of constants alone is not part of it: the session folds
    those at load, and one it left (too large, or failing) would otherwise be held once per signature."""
    derived: set[str] = set()  # values the subgraph computes
    members: set[int] = set()
    guarded: dict[int, str] = {}
    checks: set[tuple] = set()  # one guard per distinct check (exporters take a value's shape 4 times)
    for i, n in enumerate(nodes):
        if i in excluded:
            continue
        args = [x for x in n.inputs if x]
        if n.op in SHAPE_OPS and len(args) == 1:
            check = (args[0], n.op, n.attrs.get("start", 0), n.attrs.get("end"))
            if args[0] not in inputs and args[0] not in derived and args[0] not in consts and check not in checks:
                guarded[i] = args[0]
                checks.add(check)
        elif not any(x in derived for x in args) or not all(x in derived or x in consts for x in args):
            continue
        members.add(i)
        derived.update(n.outputs)
    produced = {o for i in members for o in nodes[i].outputs}
    read_outside = {x for i, n in enumerate(nodes) if i not in members for x in n.inputs}
    boundary = produced & (read_outside | outputs)
    return ShapeSubgraph(frozenset(members), guarded, frozenset(boundary))


class ShapeGuard:
    """Stands in for a guarded Shape or Size node on a cached run: no result, only the check that
    its input still has the shape the cached values were computed from."""

    quiet = True

    def __init__(self, node: Node):
        self.node = node
        self.size = node.op == "Size"
        self.start = int(node.attrs.get("start", 0))
        self.end = node.attrs.get("end")

    def expected(self, value: Any) -> tuple[int, ...] | int:
        """What the guard compares against, from the node's own result on an uncached run."""
        return int(value) if self.size else tuple(value.tolist())

    def __call__(self, x: Any, expected: tuple[int, ...] | int) -> tuple:
        seen = math.prod(x.shape) if self.size else tuple(x.shape[self.start:self.end])
        if seen != expected:
            raise StaleShapes(f"node {self.node.name or self.node.outputs[0]!r}: shape {seen}, cached for {expected}")
        return ()


def nbytes(value: Any) -> int:
    """Bytes held by a numpy array or torch tensor (0 for a guard's expected shape)."""
    return int(getattr(value, "nbytes", 0))


def owner(value: Any) -> int:
    """Identity of the buffer a numpy array views (itself when it owns its data): an output that
    is a cached value, or a view of one, must be copied before a caller can write to it."""
    base = getattr(value, "base", None)
    return id(value if base is None else base)


def owners(values: Iterable[Any]) -> frozenset[int]:
    """The buffers of ``values`` (see ``owner``)."""
    return frozenset(owner(v) for v in values if nbytes(v))


class ShapeCache:
    """An LRU dict {input shapes: the shape subgraph's boundary values and guard expectations}."""

    def __init__(self, entries: int = CACHE_ENTRIES, max_bytes: int = CACHE_ENTRY_BYTES):
        self.entries = entries
        self.max_bytes = max_bytes
        self._data: OrderedDict[tuple, tuple[dict, frozenset[int]]] = OrderedDict()
        self._lock = threading.Lock()  # threads may share a session

    def get(self, key: tuple) -> tuple[dict, frozenset[int]] | None:
        """(values, the buffers they own) for ``key``, None when not cached."""
        with self._lock:
            hit = self._data.get(key)
            if hit is not None:
                self._data.move_to_end(key)
            return hit

    def put(self, key: tuple, values: dict) -> frozenset[int]:
        """Remember ``values`` for ``key`` unless they are too large; the buffers they own."""
        held = owners(values.values())
        if sum(map(nbytes, values.values())) <= self.max_bytes:
            with self._lock:
                self._data[key] = values, held
                self._data.move_to_end(key)
                while len(self._data) > self.entries:
                    self._data.popitem(last=False)
        return held

    def __len__(self) -> int:
        return len(self._data)
