"""``InferenceSession``: load a .dcm once (decode weights, build kernels), then run it many times.

The shape of the API follows onnxruntime's so that users already know it.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from dcm.errors import DcmError, ExecutionError, InputError, UnsupportedOpError
from dcm.format import constants as C
from dcm.format.model import Model, Node
from dcm.format.reader import read
from dcm.progress import LARGE_FILE_BYTES, bar
from dcm.runtime.checks import check_node
from dcm.runtime.cpu import blas
from dcm.runtime.cpu.memory import buffer_arena
from dcm.runtime.cpu.shape import view_transposes
from dcm.runtime.cpu.windows import release_scratch
from dcm.runtime.fusion import fuse_activations
from dcm.runtime.kernel import Kernel, LoadContext
from dcm.runtime.channels_last import CHANNELS_LAST_OPS
from dcm.runtime.optimize import optimize as optimize_graph
from dcm.runtime.shape_cache import (ShapeCache, ShapeGuard, ShapeSubgraph, StaleShapes, find_shape_subgraph, nbytes,
                                     owner, owners)

# What a kernel raises when a (hostile or broken) model asks the impossible of it; they become a
# DcmError naming the node. MemoryError included: a model may ask for a huge intermediate.
KERNEL_FAILURES = (ArithmeticError, AttributeError, IndexError, KeyError, MemoryError, RuntimeError,
                   TypeError, ValueError)
# A node computed from constants alone is folded at load unless one of its results is larger than this
# (a ConstantOfShape of a constant shape would otherwise hold its memory for the session's lifetime).
FOLD_MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class NodeArg:
    """An input or output as onnxruntime describes it."""

    name: str
    shape: list[int | str]
    type: str


# One node's work in a planned run: (the kernel's bound ``__call__``, the names of its runtime
# arguments (None: absent, or consumed at load), the name of its one result or the list of its
# results (none: a guard), the values that die after it (None: none), its index in the session's
# node list, the node). A plain tuple: unpacking a NamedTuple in the executor's loop costs 0.05 us
# more per step (the fast path is for exact tuples).
Step = tuple[Callable[..., tuple], list[Any], str | list[str], list[str] | None, int, Node]


def _backend(device: str) -> tuple[str, dict, dict]:
    """(torch device or "cpu", kernel registry, registry of the internal ops the graph passes may write).
    "torch-cpu" runs the GPU kernels on the CPU (tests)."""
    if device == "cpu":
        from dcm.runtime.cpu import REGISTRY
        from dcm.runtime.cpu.fused import INTERNAL

        # an internal op whose compiled kernels this machine lacks is never written (channels-last)
        return "cpu", REGISTRY, {op: k for op, k in INTERNAL.items() if getattr(k, "available", lambda: True)()}
    if device == "gpu":
        device = "cuda"
    if device == "torch-cpu" or device == "cuda" or device.startswith("cuda:"):
        from dcm.runtime.gpu import open_backend

        return (*open_backend("cpu" if device == "torch-cpu" else device), {})
    raise DcmError(f"unknown device {device!r}: use 'cpu' or 'cuda'")


def _native_max_density() -> float | None:
    from dcm.runtime.cpu import native

    return native.SPARSE_MAX_DENSITY if native.available() else None


def _check_result_count(names: list[str], results: tuple) -> None:
    """A node may declare outputs its op does not make (a hostile file's Softplus with two)."""
    if len(results) < len(names):
        raise ValueError(f"the node declares {len(names)} outputs, the op makes {len(results)}")


class InferenceSession:
    """Run a .dcm model directly from its compressed form.

    ``kernels``: "sparse" or "dense" for every weight layer, or a dict {node or weight name: mode};
    by default each layer is chosen from its density and ``batch_hint``. ``progress``: a bar while
    decoding (None: for files over 16 MiB when stderr is a terminal; needs tqdm). ``threads``: the
    kernels' own pool, which also splits the large BLAS products (default: every core the process
    may run on). ``optimize``: run the graph
    passes of ``dcm.runtime.optimize`` at load (``describe()`` lists what they folded). ``tune``: a
    layer whose kernels are close times them on its first run and keeps the fastest, a decision kept
    for the process (``dcm.runtime.cpu.tune``; ``describe()`` shows ``tuned``); without it the measured
    break-even points decide.
    """

    def __init__(self, model: str | os.PathLike | bytes | Model, device: str = "cpu", *,
                 kernels: str | dict[str, str] | None = None, batch_hint: int = 1, threads: int | None = None,
                 progress: bool | None = None, optimize: bool = True, tune: bool = False):
        self.model = model if isinstance(model, Model) else read(model)
        self.device = device
        torch_device, registry, internal = _backend(device)
        self._torch = device != "cpu"
        # large activations reused, not faulted in again on every run, the most recently freed first
        self._arena = None if self._torch else buffer_arena()
        self._sync = None  # waits for the device; only profile() needs it
        if self._torch and torch_device.startswith("cuda"):
            import torch

            self._sync = torch.cuda.synchronize
        self._ctx = LoadContext(self.model, batch_hint=batch_hint, modes=kernels, device=torch_device,
                                threads=1 if self._torch else (threads if threads is not None else blas.cores()),
                                native_max_density=None if self._torch else _native_max_density(), tune=tune)
        missing = [n for n in self.model.nodes if n.op not in registry]
        if missing:
            n = missing[0]
            names = sorted({m.op for m in missing})
            raise UnsupportedOpError(f"unsupported op {n.op} in node {n.name or n.outputs[0]!r}"
                                     f" (all unsupported: {', '.join(names)})")
        for node in self.model.nodes:  # the graph passes read inputs and attributes: check them first
            check_node(node, registry[node.op])
        if kernels == "sparse" or isinstance(kernels, dict) and "sparse" in kernels.values():
            internal = {op: k for op, k in internal.items() if op not in CHANNELS_LAST_OPS}  # they run dense
        self._graph = optimize_graph(self.model, None if optimize else [], internal=frozenset(internal))
        self._nodes = self._graph.nodes
        registry = {**internal, **registry}  # the file's ops were checked against the registry alone
        self._kernels: list[Kernel] = []
        if progress is None and sum(len(t.payload) for t in self.model.tensors.values()) < LARGE_FILE_BYTES:
            progress = False
        for node in bar(self._nodes, "load", progress):
            check_node(node, registry[node.op])
            try:
                self._kernels.append(registry[node.op](node, self._ctx))
            except KERNEL_FAILURES as exc:
                raise UnsupportedOpError(f"node {node.name or node.outputs[0]!r} ({node.op}): {exc}") from None
        # Constants read at run time (not consumed by a kernel at load) are decoded once here;
        # every other decoded constant now lives inside its kernel only.
        self._consts = {x: self._to_array(self._ctx.const(x)) for n, k in zip(self._nodes, self._kernels)
                        for i, x in enumerate(n.inputs) if x in self.model.tensors and i not in k.weight_inputs}
        for o in self.model.outputs:  # a constant may itself be a model output
            if o.name in self.model.tensors and o.name not in self._consts:
                self._consts[o.name] = self._to_array(self._ctx.const(o.name))
        self._ctx._dense.clear()
        outputs = {o.name for o in self.model.outputs}
        self._constant_nodes = self._fold_constants(outputs) if optimize else []
        # Activations and residual Adds folded into the Conv/Gemm that feeds them (fusion.py):
        # {absorbed index: producer}
        self._fusions = fuse_activations(self._nodes, self._kernels, self._consts, outputs)
        self._fused = {i: f.producer for f in self._fusions for i in f.absorbed}
        if optimize and not self._torch:
            view_transposes(self._nodes, self._kernels, outputs, set(self._fused))
        self._inputs = {v.name: v for v in self.model.inputs}
        self._shapes = None
        if optimize:
            fused = set(self._fused) | {f.producer for f in self._fusions}
            self._shapes = find_shape_subgraph(self._nodes, {*self.model.tensors, *self._consts}, set(self._inputs),
                                               outputs, fused)
        self._cache = ShapeCache() if self._shapes is not None and self._shapes.nodes else None
        if self._cache is None:
            self._steps = self._plan_steps(outputs)
        else:  # an uncached run keeps the values it will cache, a cached one skips the shape subgraph
            guards = {o for i in self._shapes.guarded for o in self._nodes[i].outputs}
            self._steps = self._plan_steps(outputs | self._shapes.boundary | guards)
            self._cached_steps = self._plan_steps(outputs, self._shapes)
        self._checks = self._feed_checks()
        self._output_names = [o.name for o in self.model.outputs]
        self._scratch = not self._torch and any(k.uses_scratch for k in self._kernels)
        self._quiet = not self._torch and all(self._kernels[step[4]].quiet for step in self._steps)
        # Buffers of constants: an output that is one (or a view of one) is copied for the caller.
        self._const_owners = owners(self._consts.values())

    def _args(self, node: Node, kernel: Kernel) -> list[str | None]:
        """The names of a node's runtime arguments (None: absent, or consumed by its kernel at load)."""
        return [x if x and j not in kernel.weight_inputs else None for j, x in enumerate(node.inputs)]

    def _fold_constants(self, outputs: set[str]) -> list[dict[str, str]]:
        """Run once, now, every node computed from constants alone (shape arithmetic on fixed sizes,
        a Range of constant bounds), keep its results as constants and drop the node; ``describe()``
        entries for the nodes dropped. A node that fails or makes a large result is left to run (and
        fail, naming itself) as it would have."""
        env = {None: None, **self._consts}
        known = set(self.model.tensors)
        dropped: set[int] = set()
        for i, (node, kernel) in enumerate(zip(self._nodes, self._kernels)):
            if not all(x in known or not x for x in node.inputs):
                continue
            try:
                with np.errstate(all="ignore"):  # IEEE arithmetic, silently, as in a run
                    results = kernel(*map(env.__getitem__, self._args(node, kernel)))
                _check_result_count(node.outputs, results)
            except KERNEL_FAILURES:
                continue
            if any(nbytes(v) > FOLD_MAX_BYTES for v in results[:len(node.outputs)]):
                continue
            env.update(zip(node.outputs, results))
            known.update(node.outputs)
            dropped.add(i)
        if not dropped:
            return []
        entries = [{"op": n.op, "name": n.name or n.outputs[0], "folded_into": "(constant)"}
                   for i, n in enumerate(self._nodes) if i in dropped]
        self._nodes = [n for i, n in enumerate(self._nodes) if i not in dropped]
        self._kernels = [k for i, k in enumerate(self._kernels) if i not in dropped]
        read = {x for n, k in zip(self._nodes, self._kernels) for x in self._args(n, k)} | outputs
        self._consts = {x: v for x, v in env.items() if x in read and x is not None}
        return entries

    def _plan_steps(self, keep: set[str], shapes: ShapeSubgraph | None = None) -> list[Step]:
        """Per node that runs: (node index, node, kernel, the names of its runtime arguments (None:
        absent or consumed at load), of its results, and the values that die after it); the values in
        ``keep`` are never freed. Precomputed because small models spend as much time in this
        bookkeeping as in their kernels. A node absorbed by a fusion runs with its producer, so its
        reads count at the producer's step. With ``shapes`` (a run whose shape-subgraph values come
        from the cache) that subgraph's nodes do not run, except its guards."""
        skipped = shapes.nodes.difference(shapes.guarded) if shapes is not None else frozenset()
        last: dict[str, int] = {}
        for i, n in enumerate(self._nodes):
            if i not in skipped:
                step = self._fused.get(i, i)
                for x in n.inputs:
                    last[x] = max(last.get(x, -1), step)
        stored = {o for n in self._nodes for o in n.outputs} | {v.name for v in self.model.inputs}
        stored -= {x for f in self._fusions for x in f.hidden(self._nodes)}
        frees: list[list[str]] = [[] for _ in self._nodes]
        for name, i in last.items():
            if name not in keep and name in stored:  # not "" (an absent optional input) nor a constant
                frees[i].append(name)
        results = [list(n.outputs) for n in self._nodes]
        residuals: dict[int, str] = {}
        for f in self._fusions:  # the producer writes the activation's output itself
            results[f.producer] = f.outputs
            if f.residual is not None:
                residuals[f.producer] = f.residual
        steps = []
        for i, (node, kernel) in enumerate(zip(self._nodes, self._kernels)):
            if i in self._fused or i in skipped:
                continue  # run by its producer, or cached
            if shapes is not None and i in shapes.guarded:
                guard = ShapeGuard(node).__call__
                steps.append((guard, [shapes.guarded[i], shapes.guard_key(i)], [], frees[i] or None, i, node))
                continue
            args = self._args(node, kernel)
            if i in residuals:
                args += [None] * (kernel.residual_arg - len(args)) + [residuals[i]]
            while args and args[-1] is None:
                args.pop()
            result = results[i][0] if len(results[i]) == 1 else results[i]
            steps.append((kernel.__call__, args, result, frees[i] or None, i, node))
        return steps

    def _feed_checks(self) -> list[tuple[str, Any, str, int, list[tuple[int, int]]]]:
        """Per declared input: (name, numpy dtype, dtype name, rank, [(axis, fixed size)])."""
        return [(v.name, C.DTYPES.get(v.dtype), v.dtype, len(v.shape),
                 [(axis, d) for axis, d in enumerate(v.shape) if isinstance(d, int)]) for v in self.model.inputs]

    def get_inputs(self) -> list[NodeArg]:
        return [NodeArg(v.name, list(v.shape), f"tensor({v.dtype})") for v in self.model.inputs]

    def get_outputs(self) -> list[NodeArg]:
        return [NodeArg(v.name, list(v.shape), f"tensor({v.dtype})") for v in self.model.outputs]

    def get_modelmeta(self) -> dict[str, str]:
        return dict(self.model.metadata)

    def describe(self) -> list[dict[str, Any]]:
        """Per node that runs: op, name and the kernel chosen (sparse/dense, density) where one applies;
        an activation or residual Add folded into its producer says ``fused_into`` (the producer:
        ``fused: "Relu"``, ``"Clip"``, ``"Sigmoid*Mul"``, ``"Add+Relu"``...). Then one
        entry per node a graph pass removed, with ``folded_into``, and per node computed from
        constants at load (``folded_into: "(constant)"``). A node of the shape subgraph, run once per
        input-shape signature (``shape_cache.py``), says ``shape_subgraph: True``."""
        nodes = self._nodes
        out = [{"op": n.op, "name": n.name, **k.describe()} for n, k in zip(nodes, self._kernels)]
        for f in self._fusions:
            for i in f.absorbed:
                out[i]["fused_into"] = nodes[f.producer].name or nodes[f.producer].outputs[0]
            out[f.producer]["fused"] = f.op
        for i in self._shapes.nodes if self._shapes is not None else ():
            out[i]["shape_subgraph"] = True
        ops = {n.name or n.outputs[0]: n.op for n in self.model.nodes}
        return (out + [{"op": ops[name], "name": name, "folded_into": into} for name, into in self._graph.folded.items()]
                + self._constant_nodes)

    def _check_feeds(self, feeds: dict[str, Any]) -> tuple[dict[str, Any], tuple]:
        """The run's starting values: the feeds (checked against the declared inputs) and the constants;
        and the input shapes, the key of the shape cache. Kept lean: on small models it is a fair part
        of the whole run."""
        if not isinstance(feeds, dict):
            raise InputError("feeds must be a dict {input name: array}")
        declared = self._inputs
        if feeds.keys() != declared.keys():
            unknown = sorted(set(feeds) - set(declared))
            if unknown:
                raise InputError(f"unknown input {unknown[0]!r}; the model's inputs are {sorted(declared)}")
            v = next(v for name, v in declared.items() if name not in feeds)
            raise InputError(f"missing input {v.name!r} (dtype {v.dtype}, shape {v.shape})")
        env = self._consts.copy()
        env[None] = None  # the argument of an absent optional input
        shapes = []
        for name, dtype, dtype_name, rank, fixed in self._checks:
            x = feeds[name]
            if type(x) is not np.ndarray:
                x = x if hasattr(x, "detach") else np.asarray(x)
            if x.dtype != dtype and str(x.dtype).removeprefix("torch.") != dtype_name:
                raise InputError(f"input {name!r} has dtype {x.dtype}, the model expects {dtype_name}")
            shape = x.shape
            if len(shape) != rank:
                raise InputError(f"input {name!r} has rank {len(shape)} (shape {list(shape)}), the model expects "
                                 f"{declared[name].shape}")
            for axis, want in fixed:
                if shape[axis] != want:
                    raise InputError(f"input {name!r} has size {shape[axis]} on axis {axis}, the model expects "
                                     f"{want} (shape {declared[name].shape})")
            env[name] = self._to_array(x) if self._torch else x
            shapes.append(shape)
        return env, tuple(shapes)

    def _to_array(self, x: Any) -> Any:
        if self._torch:
            from dcm.runtime.gpu import to_device

            return to_device(x, self._ctx.device)
        return np.asarray(x)

    def run(self, output_names: Sequence[str] | None, feeds: dict[str, Any]) -> list[np.ndarray]:
        """Outputs in ``output_names`` order (all outputs for None), as numpy arrays."""
        names = self._output_names
        if output_names is not None:
            names = list(output_names)
            for n in names:
                if n not in self._output_names:
                    raise InputError(f"unknown output {n!r}; the model's outputs are {sorted(self._output_names)}")
        env, shared = self._run(feeds)
        if self._torch:  # .numpy() of a tensor on the CPU shares its memory: a cached one is copied
            ys = [env[n].detach().cpu().numpy() if hasattr(env[n], "detach") else np.asarray(env[n]) for n in names]
            return [y.copy() if n in shared else y for n, y in zip(names, ys)]
        # A fully connected layer's output may be a .T view, Expand's a broadcast one; ascontiguousarray
        # alone would turn a 0-d result (Size, a scalar MatMul) into shape (1,). A constant or cached
        # value (or a view of one) is copied: the caller may write to what it gets.
        consts = self._const_owners
        return [y.copy() if (o := owner(y)) in shared or o in consts else y if y.flags.c_contiguous
                else np.ascontiguousarray(y) for y in map(np.asarray, map(env.__getitem__, names))]

    def profile(self, feeds: dict[str, Any], runs: int = 10) -> list[dict[str, Any]]:
        """``describe()`` plus each node's mean ``seconds`` over ``runs`` runs of ``feeds``.

        On a GPU the device is synchronized after every node, so each node is charged its own work
        (which makes the total slower than ``run``).
        """
        if runs < 1:
            raise ValueError(f"runs must be at least 1, got {runs}")
        seconds = [0.0] * len(self._nodes)
        for _ in range(runs):
            self._run(feeds, seconds)
        seconds += [0.0] * (len(self._graph.folded) + len(self._constant_nodes))  # folded: no time of their own
        return [{**d, "seconds": t / runs} for d, t in zip(self.describe(), seconds)]

    def _run(self, feeds: dict[str, Any], seconds: list[float] | None = None) -> tuple[dict[str, Any], frozenset]:
        """Run the graph on ``feeds``: (the values, the buffers of cached values among them; on the GPU
        backend, their names). A shape signature seen before skips the shape subgraph."""
        env, key = self._check_feeds(feeds)
        if not self._torch:
            blas.limit(1)  # the kernels spread large products over the session's threads (blas.py)
        cache = self._cache  # read once: a run in another thread may turn caching off
        allocator = self._arena.use() if self._arena is not None else None
        try:
            cached = cache.get(key) if cache is not None else None
            if cached is not None:
                values, held = cached
                env.update(values)
                try:
                    self._execute_steps(env, self._cached_steps, seconds)
                    return env, (frozenset(values) if self._torch else held)
                except StaleShapes:  # shapes here depend on data: stop caching, run in full
                    self._cache = cache = None
                    env, key = self._check_feeds(feeds)
            self._execute_steps(env, self._steps, seconds)
            if cache is None:
                return env, frozenset()
            values = {name: env[name] for name in self._shapes.boundary}
            for i in self._shapes.guarded:
                values[self._shapes.guard_key(i)] = ShapeGuard(self._nodes[i]).expected(env[self._nodes[i].outputs[0]])
            held = cache.put(key, values)
            return env, (frozenset(values) if self._torch else held)
        finally:
            if allocator is not None:
                self._arena.restore(allocator)
            if self._scratch:
                release_scratch()

    def _execute_steps(self, env: dict[str, Any], steps: list[Step], seconds: list[float] | None) -> None:
        if self._quiet and seconds is None:
            self._execute(env, steps)
        else:
            with np.errstate(all="ignore"):  # Inf/NaN arithmetic follows IEEE, as in onnxruntime, silently
                if seconds is None:
                    self._execute(env, steps)
                else:
                    self._execute_timed(env, steps, seconds)

    def _execute(self, env: dict[str, Any], steps: list[Step]) -> None:
        """Run every step in order, freeing intermediates after their last use. Kept lean, since
        small models run a step in about 1 us: ``map`` over ``env.__getitem__``, a one-result fast
        path and one ``try`` around the loop (a failure names the step the loop was on). With
        kernels that do nothing it costs about 0.44 us per step, 0.34 of them the call and the store
        themselves (docs/transformers.md, "Per-node work")."""
        get = env.__getitem__
        try:
            for call, names, result, frees, _, node in steps:
                if type(result) is str:
                    env[result] = call(*map(get, names))[0]
                else:
                    values = call(*map(get, names))
                    _check_result_count(result, values)
                    env.update(zip(result, values))
                if frees:
                    for name in frees:
                        del env[name]
        except KERNEL_FAILURES as exc:
            raise self._failure(node, exc) from None

    def _execute_timed(self, env: dict[str, Any], steps: list[Step], seconds: list[float]) -> None:
        """``_execute`` that adds each node's time to ``seconds`` (after waiting for the GPU)."""
        for call, names, result, frees, k, node in steps:
            names_out = [result] if type(result) is str else result
            start = time.perf_counter()
            try:
                values = call(*map(env.__getitem__, names))
                _check_result_count(names_out, values)
            except KERNEL_FAILURES as exc:
                raise self._failure(node, exc) from None
            if self._sync is not None:
                self._sync()
            seconds[k] += time.perf_counter() - start
            env.update(zip(names_out, values))
            for name in frees or ():
                del env[name]

    @staticmethod
    def _failure(node: Node, exc: Exception) -> ExecutionError:
        return ExecutionError(f"node {node.name or node.outputs[0]!r} ({node.op}) failed on these inputs: "
                              f"{type(exc).__name__}: {exc}")
