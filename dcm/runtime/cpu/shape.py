"""Layout ops: Identity, Flatten, Reshape, Transpose, Concat, Squeeze, Unsqueeze, Slice, Split, Pad,
DepthToSpace, SpaceToDepth, Shape, Size, Gather, Cast, CastLike.

Shapes, axes, pads and split sizes are read once at load when they are constants (the common case)
and on every run when the graph computes them (a shape taken from a symbolic batch or sequence
length). The GPU backend subclasses several of these kernels, so their ``__call__`` keeps to
operations numpy arrays and torch tensors share where the GPU reuses it (Reshape, Identity).
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from dcm.encoder.codec import decode_parts
from dcm.errors import UnsupportedOpError
from dcm.format import constants as C
from dcm.runtime.cpu import native
from dcm.runtime.cpu.registry import register
from dcm.runtime.kernel import Kernel, LoadContext
from dcm.runtime.optimize import ATTENTION

# An embedding table at least this large is gathered from its compressed (CSR) rows; a smaller one is
# decoded to a dense array once, which costs little memory and gathers faster.
SPARSE_GATHER_MIN_ELEMENTS = 1 << 16


def ints(v) -> list[int]:
    """A 1-D (or 0-d) int tensor, numpy array or torch tensor, as a list of Python ints."""
    if v.ndim > 1:
        raise ValueError(f"a shape, axes or pads input must be 1-D, got shape {list(v.shape)}")
    return [int(a) for a in v.reshape(-1).tolist()]


def load_ints(kernel: Kernel, ctx: LoadContext, i: int, attr: str | None = None) -> list[int] | None:
    """Constant input i as ints, else attribute ``attr`` when input i is absent (opsets before the
    attribute became an input); None: absent, or computed at run time (the kernel then reads its
    run-time argument with ``ints``)."""
    v = kernel.load_input(ctx, i)
    if v is not None:
        return ints(np.asarray(v))
    present = i < len(kernel.node.inputs) and kernel.node.inputs[i]
    return None if present or attr is None else kernel.node.attrs.get(attr)


def check_elements(shape, what: str) -> None:
    """Refuse, before allocating, an output larger than spec rule 8's per-tensor limit."""
    if any(int(d) < 0 for d in shape):
        raise ValueError(f"{what}: negative dimension in {list(shape)}")
    n = math.prod(int(d) for d in shape)
    if n > C.MAX_ELEMENTS:
        raise ValueError(f"{what}: {n} elements (shape {list(shape)}) exceeds the limit {C.MAX_ELEMENTS}")


def normal_axis(a: int, rank: int) -> int:
    """Axis ``a`` of a rank-``rank`` tensor counted from 0 (ONNX lets it count from the end)."""
    if not -rank <= a < rank:
        raise IndexError(f"axis {a} is out of range for rank {rank}")
    return a % rank


@register("Identity", "Dropout")
class Identity(Kernel):
    quiet = True

    def __call__(self, x, *_):
        return (x,) if len(self.node.outputs) == 1 else (x, np.ones(x.shape, dtype=bool))


@register("Flatten")
class Flatten(Kernel):
    quiet = True

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axis = int(self.attrs.get("axis", 1))

    def __call__(self, x):
        axis = self.axis + x.ndim if self.axis < 0 else self.axis  # in -rank..rank
        return (x.reshape(math.prod(x.shape[:axis]), -1),)


@register("Reshape")
class Reshape(Kernel):
    """Target shape from a constant, the ``shape`` attribute (opset < 5), or a run-time input.

    A constant target is checked once at load; a run-time one only when its values differ from the
    last run's (the shape subgraph gives the same shape run after run)."""

    quiet = True

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.shape = load_ints(self, ctx, 1, "shape")
        self.allowzero = bool(self.attrs.get("allowzero", 0))
        self.target = None if self.shape is None else self._checked(self.shape, strict=False)
        self._last: tuple = (None, None)  # (the last run-time shape's values, its checked target)

    def _checked(self, target: list[int], strict: bool = True) -> list[int] | None:
        """``target`` when it is a valid ONNX shape; else a ValueError (``strict``) or None (at load:
        the error is raised by the run that uses it, naming the node, as for a run-time shape)."""
        if any(d < -1 for d in target) or target.count(-1) > 1:
            if strict:
                raise ValueError(f"shape {target}: sizes are >= 0, with at most one -1")
            return None
        return target

    def __call__(self, x, shape=None):
        if shape is None:
            target = self.target
            if target is None:
                if self.shape is None:
                    raise ValueError("no target shape")
                target = self._checked(self.shape)
        else:
            last, target = self._last  # one read: another thread may replace the pair
            values = shape.tolist()  # compared by value: a caller may refill the array it feeds
            if values != last:
                target = self._checked(ints(shape))
                self._last = (values, target)
        if not self.allowzero and 0 in target:
            if len(target) > x.ndim and 0 in target[x.ndim:]:
                raise ValueError(f"shape {target} copies a dimension the input (rank {x.ndim}) lacks")
            target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
        return (x.reshape(target),)


def batched_2d(shape: tuple[int, ...], perm: tuple[int, ...]) -> tuple[int, int, int] | None:
    """(batch, rows, cols) where transposing ``shape`` by ``perm`` is y[b, j, i] = x[b, i, j] on the
    array seen as [batch, rows, cols]: the axes of size 1 dropped and those that move together merged,
    the permutation swaps two blocks of axes after a leading block that stays (NCHW -> NHWC is
    [1, C, H*W] -> [1, H*W, C]; keys [B, H, S, d] -> [B, H, d, S] are [B*H, S, d] -> [B*H, d, S]).
    None for any other permutation (one that keeps a trailing block, [B, S, H, d] -> [B, H, S, d],
    moves whole runs that numpy copies well)."""
    kept = [a for a in range(len(shape)) if shape[a] != 1]
    rank = {a: i for i, a in enumerate(kept)}
    groups: list[list[int]] = []  # runs of consecutive input axes, in output order
    for a in (rank[p] for p in perm if shape[p] != 1):
        if groups and groups[-1][-1] == a - 1:
            groups[-1].append(a)
        else:
            groups.append([a])
    sizes = [math.prod(shape[kept[a]] for a in g) for g in groups]
    if len(groups) == 2:  # [A, B] -> [B, A]
        return 1, sizes[1], sizes[0]
    if len(groups) == 3 and groups[0][0] == 0 and groups[2][0] < groups[1][0]:  # [L, A, B] -> [L, B, A]
        return sizes[0], sizes[2], sizes[1]
    return None


@register("Transpose")
class Transpose(Kernel):
    """A contiguous result, as the kernels after it expect. A permutation that keeps the order of the
    axes larger than 1 (attention's [S, 1, E] <-> [1, S, E] at batch 1) moves no data: a view. So
    is every result when ``copy`` is off (``view_transposes``: only views and Transposes read it).
    One that swaps two blocks of axes (``batched_2d``) of 4-byte values runs the compiled
    ``transpose2d`` (8x8 tiles in registers, 1.3-3.5x faster than numpy's strided copy)."""

    copy = True

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        perm = self.attrs.get("perm")
        # checked once here when it is a permutation; np.transpose still refuses the wrong rank
        self.perm = tuple(perm) if perm is not None and sorted(perm) == list(range(len(perm))) else None
        self._plan: dict = {}  # input shape -> batched_2d of it, for the last shape seen

    def describe(self) -> dict:
        return {} if self.copy else {"kernel": "view"}

    def __call__(self, x):
        perm = self.perm
        if perm is None:
            perm = self.attrs.get("perm")
            if perm is not None and sorted(perm) != list(range(x.ndim)):
                raise ValueError(f"perm {perm} is not a permutation of the input's {x.ndim} axes")
        elif len(perm) == x.ndim and x.flags.c_contiguous:
            shape = x.shape
            moved = [p for p in perm if shape[p] != 1]
            if moved == sorted(moved):
                return (x.reshape([shape[p] for p in perm]),)
            if self.copy and x.dtype.itemsize == 4 and native.transpose2d is not None:
                if shape not in self._plan:
                    self._plan = {shape: batched_2d(shape, perm)}
                if self._plan[shape] is not None:
                    y = np.empty([shape[p] for p in perm], x.dtype)
                    native.transpose2d(x.view(np.float32), y.view(np.float32), self._plan[shape], self.threads)
                    return (y,)
        y = np.transpose(x, perm)
        return (np.ascontiguousarray(y) if self.copy else y,)


ELEMENTWISE_MODULE = "dcm.runtime.cpu.elementwise"  # numpy's ufuncs: a strided input's order kept, compact

# Kernels that take an input of any memory layout and make views of it where they can (numpy's
# reshape and basic indexing; Gather's np.take copies), so a strided input costs them nothing.
LAYOUT_FREE = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Gather")


def view_transposes(nodes: list, kernels: list[Kernel], protected: set[str], skip: set[int]) -> None:
    """Turn off the copy of each Transpose whose result reaches, through the ``LAYOUT_FREE`` ops
    only, nothing but other Transposes (which copy it, or pass it on the same way), Shape or Size,
    and no model output, where these Transposes all keep the last axis last. torch's packed q, k, v projection is split that way (Transpose, Squeeze, Gather, Reshape,
    Transpose): its first copy of the whole projection is wasted. Where a product or an elementwise
    op would read the strided result it stays a copy: numpy's matmul of strided heads was measured
    slower than the copy that avoids it (docs/transformers.md). ``skip``: nodes fused into others.

    The fused attention (``dcm.Attention``) reads strided q, k and v itself (any leading strides, each
    matrix row- or column-major), so a Transpose that reaches it, directly or through a Mul or Div (a
    scale on q or k, whose numpy result keeps the view's order in a compact array), needs no copy,
    k's transposition included: torch's nn.MultiheadAttention permutes q, k and v in and out of
    [sequence, batch x heads, features], four copies a layer (ViT-Tiny: 0.6 ms of 23). An attention
    whose one reader is a Transpose that keeps the last axis writes its result in that Transpose's
    order (``Attention.out_perm``), so that the Transpose's copy finds it contiguous already."""
    readers: dict[str, list[int]] = {}
    for j, n in enumerate(nodes):
        for x in n.inputs:
            readers.setdefault(x, []).append(j)

    def attention_reads(j: int, value: str) -> bool:  # as its q, k or v
        return nodes[j].op == ATTENTION and j not in skip and value in nodes[j].inputs[:3]

    def scale_into_attention(j: int) -> bool:  # a Mul or Div read by attentions' q, k or v alone
        y = nodes[j].outputs[0] if nodes[j].op in ("Mul", "Div") and j not in skip else None
        return (y is not None and y not in protected and type(kernels[j]).__module__ == ELEMENTWISE_MODULE
                and bool(readers.get(y)) and all(attention_reads(r, y) for r in readers[y]))

    def only_views_then_copies(value: str, last_axis_kept: bool) -> bool:
        """Whether every path from value ends in a reader that takes the view; last_axis_kept: rows
        stay contiguous along the way (a Transpose that moves the last axis passes a view on only to
        the attention)."""
        stack, seen = [(value, last_axis_kept)], {value}
        while stack:
            x, kept = stack.pop()
            for j in readers.get(x, []):
                if j in skip:
                    return False
                if attention_reads(j, x) or scale_into_attention(j):
                    continue  # reads any strides
                if type(kernels[j]) in (Shape, Size) or (kept and type(kernels[j]) is Transpose
                                                         and _keeps_last_axis(kernels[j])):
                    continue  # reads the shape only, or copies what it reads (or passes it on, checked itself)
                if type(kernels[j]) is Transpose and kernels[j].perm is not None:
                    passed_on = False  # moves the last axis: on as a view, to the attention alone
                elif nodes[j].op in LAYOUT_FREE and type(kernels[j]).__module__ == __name__:
                    passed_on = kept
                else:
                    return False
                for o in nodes[j].outputs:
                    if o in protected:
                        return False
                    if o not in seen:
                        seen.add(o)
                        stack.append((o, passed_on))
        return True

    for i, (n, k) in enumerate(zip(nodes, kernels)):
        if (type(k) is Transpose and k.perm is not None and i not in skip and n.outputs[0] not in protected
                and readers.get(n.outputs[0])):
            k.copy = not only_views_then_copies(n.outputs[0], _keeps_last_axis(k))
        # an attention read only by a Transpose that keeps the last axis (the heads merged back: BERT's
        # [B, H, L, d] -> [B, L, H, d]) writes its output in that order: the Transpose then copies nothing
        y = n.outputs[0] if n.op == ATTENTION and i not in skip and n.outputs else None
        if y is not None and y not in protected and len(readers.get(y, [])) == 1:
            t = readers[y][0]
            if t not in skip and type(kernels[t]) is Transpose and _keeps_last_axis(kernels[t]):
                k.out_perm = kernels[t].perm


def _keeps_last_axis(k: Transpose) -> bool:
    """Rows stay contiguous through the permutation: a copy of the strided view is then row copies.
    (A Transpose that moves the last axis, k -> k^T, reading another one's strided view was measured
    2.6 times slower than the two copies it would save.) A scalar's empty permutation moves nothing."""
    return k.perm is not None and (not k.perm or k.perm[-1] == len(k.perm) - 1)


# Output values from which a Concat on two or more threads takes the compiled copy, which splits the
# output over the native pool in runs of 2^17 values (_layout.c's CONCAT_RUN); below, numpy's copy.
CONCAT_SPLIT_MIN = 1 << 17


@register("Concat")
class Concat(Kernel):
    """numpy's concatenate; on two or more threads a large one of 4- or 8-byte values (U-Net's skip
    connections: megabytes at batch 1) is copied by the compiled ``concat`` over the native pool."""

    def __call__(self, *xs):
        axis = int(self.attrs["axis"])
        first = xs[0] if xs else None
        if (self.threads > 1 and native.concat is not None and isinstance(first, np.ndarray) and first.ndim
                and first.dtype.itemsize in (4, 8) and first.dtype.kind in "biufc"):  # numbers: no object pointers
            axis = normal_axis(axis, first.ndim)
            rest = first.shape[:axis], first.shape[axis + 1 :]
            if all(type(x) is np.ndarray and x.dtype == first.dtype and x.flags.c_contiguous and x.ndim == first.ndim
                   and (x.shape[:axis], x.shape[axis + 1 :]) == rest for x in xs):
                shape = (*rest[0], sum(x.shape[axis] for x in xs), *rest[1])
                if math.prod(shape) >= CONCAT_SPLIT_MIN:
                    y = np.empty(shape, first.dtype)
                    native.concat(list(xs), y, math.prod(rest[0]), self.threads)
                    return (y,)
        return (np.concatenate(xs, axis=axis),)


def _axes_index(rank: int, axes: list[int], fill) -> tuple:
    """The basic index that puts ``fill`` at ``axes`` of ``rank`` (None: a new axis of size 1, for
    Unsqueeze; 0: drop that axis of size 1, for Squeeze) and keeps every other axis. The trailing
    Ellipsis keeps a 0-d result an array, never a numpy scalar. Indexing by a cached tuple is a view,
    about ten times cheaper than np.expand_dims or np.squeeze with their axis checks on every run."""
    axes = [normal_axis(a, rank) for a in axes]
    if len(set(axes)) != len(axes):
        raise ValueError(f"repeated axis in {axes}")
    return (*(fill if a in axes else slice(None) for a in range(rank)), Ellipsis)


@register("Squeeze")
class Squeeze(Kernel):
    """Axes: attribute before opset 13, input from 13; none given: every axis of size 1."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axes = load_ints(self, ctx, 1, "axes")
        self._by_rank: dict[int, tuple[tuple, tuple[int, ...]]] = {}  # rank -> (index, axes dropped)

    def __call__(self, x, axes=None):
        if axes is None and self.axes is not None:
            plan = self._by_rank.get(x.ndim)
            if plan is None:
                index = _axes_index(x.ndim, self.axes, 0)
                plan = self._by_rank[x.ndim] = index, tuple(a for a, i in enumerate(index[:-1]) if i == 0)
            index, dropped = plan
        else:
            axes = self.axes if axes is None else ints(axes)
            if axes is None:
                return (np.squeeze(x),)
            index = _axes_index(x.ndim, axes, 0)
            dropped = tuple(a for a, i in enumerate(index[:-1]) if i == 0)
        shape = x.shape
        for a in dropped:
            if shape[a] != 1:
                raise ValueError(f"cannot squeeze axes {list(dropped)} of shape {list(shape)}: size is not 1")
        return (x[index],)


@register("Unsqueeze")
class Unsqueeze(Kernel):
    """Axes: attribute before opset 13, input from 13 (counted in the output's rank)."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axes = load_ints(self, ctx, 1, "axes")
        self._by_rank: dict[int, tuple] = {}  # input rank -> index

    def __call__(self, x, axes=None):
        if axes is None and self.axes is not None:
            index = self._by_rank.get(x.ndim)
            if index is None:
                index = self._by_rank[x.ndim] = _axes_index(x.ndim + len(self.axes), self.axes, None)
            return (x[index],)
        axes = self.axes if axes is None else ints(axes)
        if axes is None:
            raise ValueError("no axes")
        return (x[_axes_index(x.ndim + len(axes), axes, None)],)


@register("Slice")
class Slice(Kernel):
    """Starts/ends/axes: attributes before opset 10, inputs (with steps) from 10."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.params = [load_ints(self, ctx, i, attr) for i, attr in enumerate(("starts", "ends", "axes", "steps"), 1)]
        self._index: tuple[int, tuple] | None = None  # (rank, index) from constant parameters alone

    def __call__(self, x, starts=None, ends=None, axes=None, steps=None):
        constant = starts is None and ends is None and axes is None and steps is None
        if constant and self._index is not None and self._index[0] == x.ndim:
            return (x[self._index[1]],)  # the checks below passed for this rank: 0.4 us a call, not 2.4
        starts, ends, axes, steps = (p if g is None else ints(g)
                                     for p, g in zip(self.params, (starts, ends, axes, steps)))
        if starts is None or ends is None or len(starts) != len(ends):
            raise ValueError("starts and ends must be given, of equal length")
        axes = list(range(len(starts))) if axes is None else [normal_axis(a, x.ndim) for a in axes]
        steps = [1] * len(starts) if steps is None else steps
        if not len(axes) == len(steps) == len(starts) or len(set(axes)) != len(axes):
            raise ValueError(f"starts, ends, axes and steps must match ({starts}, {ends}, {axes}, {steps})")
        if 0 in steps:
            raise ValueError("a step is 0")
        index = [slice(None)] * x.ndim
        for a, b, e, s in zip(axes, starts, ends, steps):
            index[a] = slice(b, e, s)  # Python clamps out-of-range bounds the way ONNX specifies
        if constant:
            self._index = (x.ndim, tuple(index))
        return (x[tuple(index)],)


@register("Split")
class Split(Kernel):
    """Sizes: attribute before opset 13, input from 13; else equal parts (``num_outputs`` from 18:
    the last part may be smaller)."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.split = load_ints(self, ctx, 1, "split")
        self.axis = int(self.attrs.get("axis", 0))

    def __call__(self, x, split=None):
        sizes = self.split if split is None else ints(split)
        axis = normal_axis(self.axis, x.ndim)
        n, parts = x.shape[axis], len(self.node.outputs)
        if sizes is None:
            step = -(-n // parts)
            sizes = [min(step, max(n - i * step, 0)) for i in range(parts)]
            if "num_outputs" not in self.attrs and n % parts:
                raise ValueError(f"axis of size {n} does not split into {parts} equal parts")
        if len(sizes) != parts or sum(sizes) != n or min(sizes) < 0:
            raise ValueError(f"split sizes {sizes} do not cut an axis of size {n} into {parts} outputs")
        return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


@register("Pad")
class Pad(Kernel):
    """Pads and value are attributes before opset 11 and inputs from 11 (axes from 18); modes
    constant, reflect, edge and (opset 19) wrap; negative pads crop."""

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.pads = load_ints(self, ctx, 1, "pads")
        value = self.load_input(ctx, 2)
        self.value = float(self.attrs.get("value", 0.0)) if value is None else np.asarray(value).ravel()[0].item()
        self.axes = load_ints(self, ctx, 3)
        self.mode = self.attrs.get("mode", "constant")
        if self.mode not in ("constant", "reflect", "edge", "wrap"):
            raise UnsupportedOpError(f"Pad {node.name!r}: mode {self.mode!r} is not supported")
        if self.mode == "wrap" and type(self).__call__ is not Pad.__call__:
            raise UnsupportedOpError(f"Pad {node.name!r}: wrap padding runs on the CPU backend only")

    def __call__(self, x, pads=None, value=None, axes=None):
        pads = self.pads if pads is None else ints(pads)
        axes = self.axes if axes is None else ints(axes)
        axes = [normal_axis(a, x.ndim) for a in axes] if axes else list(range(x.ndim))
        k = len(axes)
        if pads is None or len(pads) != 2 * k:
            raise ValueError(f"pads {pads} must hold 2 values per padded axis ({k})")
        widths = [(0, 0)] * x.ndim
        for j, a in enumerate(axes):
            widths[a] = (pads[j], pads[j + k])
        if any(b < 0 or e < 0 for b, e in widths):  # crop first, then pad what is positive
            x = x[tuple(slice(-min(b, 0), x.shape[i] + min(e, 0)) for i, (b, e) in enumerate(widths))]
            widths = [(max(b, 0), max(e, 0)) for b, e in widths]
        check_elements([d + b + e for d, (b, e) in zip(x.shape, widths)], "Pad")
        if self.mode == "constant":
            fill = self.value if value is None or value.size == 0 else value.reshape(-1)[0]
            return (np.pad(x, widths, constant_values=fill),)
        if x.size == 0:
            raise ValueError(f"{self.mode} padding of an empty tensor")
        return (np.pad(x, widths, mode=self.mode),)


@register("DepthToSpace")
class DepthToSpace(Kernel):
    """[N, C, H, W] -> [N, C / b^2, H b, W b]; mode DCR (depth-column-row, the default) or CRD."""

    def __call__(self, x):
        b = int(self.attrs.get("blocksize", 0))
        n, c, h, w = x.shape
        if b < 1 or c % (b * b):
            raise ValueError(f"blocksize {b} does not divide {c} channels into b^2 groups")
        if self.attrs.get("mode", "DCR") == "CRD":
            y = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
        else:
            y = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
        return (np.ascontiguousarray(y.reshape(n, c // (b * b), h * b, w * b)),)


@register("SpaceToDepth")
class SpaceToDepth(Kernel):
    """[N, C, H, W] -> [N, C b^2, H / b, W / b]; mode DCR (the default) or CRD (opset 25)."""

    def __call__(self, x):
        b = int(self.attrs.get("blocksize", 0))
        n, c, h, w = x.shape
        if b < 1 or h % b or w % b:
            raise ValueError(f"blocksize {b} does not divide the spatial size {h}x{w}")
        perm = (0, 1, 3, 5, 2, 4) if self.attrs.get("mode", "DCR") == "CRD" else (0, 3, 5, 1, 2, 4)
        y = x.reshape(n, c, h // b, b, w // b, b).transpose(perm)
        return (np.ascontiguousarray(y.reshape(n, c * b * b, h // b, w // b)),)


@register("Shape")
class Shape(Kernel):
    quiet = True

    def __call__(self, x):
        start = int(self.attrs.get("start", 0))
        end = self.attrs.get("end")
        return (np.array(x.shape[start:end], dtype=np.int64),)


@register("Size")
class Size(Kernel):
    quiet = True

    def __call__(self, x):
        return (np.array(x.size, dtype=np.int64),)


@register("Gather")
class Gather(Kernel):
    """``np.take`` along ``axis`` (negative indices count from the end; out of range is an error).

    A large constant table on axis 0 (an embedding) is kept in its compressed form: rows are
    gathered straight from CSR, never decoded to one dense copy.
    """

    quiet = True

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axis = int(self.attrs.get("axis", 0))
        self.table = None  # (kind, compressed table, row shape) for a large coded constant table
        name = node.inputs[0]
        rec = ctx.model.tensors.get(name)
        # Only this class's own __call__ reads the compressed table; the GPU's subclass takes it dense.
        if (type(self).__call__ is Gather.__call__ and self.axis == 0 and rec is not None
                and rec.encoding != C.ENC_RAW and rec.numel >= SPARSE_GATHER_MIN_ELEMENTS and rec.shape):
            parts = decode_parts(rec)
            if parts.codes is not None and len(parts.codes) == rec.numel:  # every entry has a code:
                # gather the 1-2 byte codes, then look them up
                codes = parts.codes.astype(np.uint8 if len(parts.codebook) <= 256 else np.uint16)
                self.table = ("codes", (codes.reshape(parts.shape2d), parts.codebook), rec.shape)
            else:
                self.table = ("csr", sp.csr_matrix(parts.to_scipy()), rec.shape)
            self.weight_inputs = (0,)

    def __call__(self, x, idx):
        if self.table is None:
            if idx.ndim == 0 and idx.dtype.kind in "iu":
                # one slab of x (torch's packed q, k, v split three ways): a view, not np.take's
                # copy; Python's indexing counts a negative index from the end and refuses one out
                # of range, as ONNX says
                return (x[(slice(None),) * normal_axis(self.axis, x.ndim) + (int(idx), Ellipsis)],)
            return (np.take(x, idx, axis=self.axis),)
        kind, table, shape = self.table
        n = shape[0]
        flat = idx.reshape(-1).astype(np.int64)
        if flat.size and (flat.min() < -n or flat.max() >= n):
            raise IndexError(f"index out of range for a table of {n} rows")
        flat = np.where(flat < 0, flat + n, flat)
        if kind == "codes":
            codes, codebook = table
            out = codebook[codes[flat]]
        else:
            out = table[flat].toarray()
        return (out.reshape(*idx.shape, *shape[1:]),)

    def describe(self) -> dict:
        return {} if self.table is None else {"kernel": f"rows from {self.table[0]}", "rows": self.table[2][0]}


# ONNX TensorProto element types -> numpy (bfloat16, strings and 4/8-bit floats have no numpy type).
ONNX_NUMPY = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
              9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}


@register("Cast")
class Cast(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        to = int(self.attrs["to"])
        if to not in ONNX_NUMPY:
            raise UnsupportedOpError(f"{node.op} {node.name!r}: target type {to} is not supported")
        self.to = np.dtype(ONNX_NUMPY[to])

    def __call__(self, x):
        return (np.asarray(x).astype(self.to),)


@register("BitCast")
class BitCast(Cast):
    """The same bits read as another type of the same width (opset 26): float32 <-> int32, ..."""

    def __call__(self, x):
        if x.dtype.itemsize != self.to.itemsize:
            raise ValueError(f"{x.dtype} ({8 * x.dtype.itemsize} bits) and {self.to} ({8 * self.to.itemsize} bits) "
                             "differ in width")
        return (np.require(x, requirements="C").view(self.to).copy(),)  # (a copy: the input may be written after)


@register("CastLike")
class CastLike(Kernel):
    def __call__(self, x, like):
        return (x.astype(like.dtype),)
