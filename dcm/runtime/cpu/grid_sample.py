"""GridSample (opset 16: 2-D; 20: any number of spatial axes): X sampled at the normalized points of
``grid``, by ``nearest``, ``linear`` (bilinear, trilinear, ...) or ``cubic`` (Keys, a = -0.75)
interpolation, points outside X padded with ``zeros``, clamped to the ``border`` or mirrored
(``reflection``); the geometry of torch's ``grid_sample``, as onnx's reference gives it.

Each output point's taps along each axis (1, 2 or 4) and their weights are computed for all points
at once; the value is the sum, over every combination of one tap per axis, of the product of the
weights times X gathered there: 2^k gathers of [N, points, C] for linear, not a Python step per point.
Where onnx's reference and torch differ (cubic with border padding: the reference clamps the point,
torch and onnxruntime only the taps), this follows torch and onnxruntime.

AffineGrid (opset 20) makes the grid of an affine map, as torch's ``affine_grid``.
"""
from __future__ import annotations

import itertools

import numpy as np

from dcm.errors import UnsupportedOpError
from dcm.runtime.cpu.registry import register
from dcm.runtime.cpu.shape import check_elements
from dcm.runtime.kernel import Kernel

MODES = {"nearest": "nearest", "linear": "linear", "bilinear": "linear", "cubic": "cubic", "bicubic": "cubic"}
PADDINGS = ("zeros", "border", "reflection")
CUBIC_A = -0.75


def _reflect(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """x mirrored at low and high (repeatedly) until it lies between them."""
    span = high - low
    if span <= 0:
        return np.full_like(x, low)
    below, above = x < low, x > high
    dx = np.where(below, low - x, np.where(above, x - high, 0))
    turns = np.floor(dx / span)
    r = dx - turns * span
    even = turns % 2 == 0
    x = np.where(below, np.where(even, low + r, high - r), x)
    return np.where(above, np.where(even, high - r, low + r), x)


def _cubic_weights(t: np.ndarray) -> list[np.ndarray]:
    """Keys' weights of the taps at -1, 0, 1, 2 for a point t in [0, 1) past tap 0."""
    a = CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


@register("GridSample")
class GridSample(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        mode = self.attrs.get("mode", "linear")
        padding = self.attrs.get("padding_mode", "zeros")
        if mode not in MODES or padding not in PADDINGS:
            raise UnsupportedOpError(f"GridSample {node.name!r}: mode {mode!r} / padding_mode {padding!r} "
                                     f"(modes: {', '.join(MODES)}; paddings: {', '.join(PADDINGS)})")
        self.mode, self.padding = MODES[mode], padding
        self.align = bool(self.attrs.get("align_corners", 0))

    def __call__(self, x, grid):
        k = x.ndim - 2
        if k < 1 or grid.ndim != k + 2 or grid.shape[-1] != k or grid.shape[0] != x.shape[0]:
            raise ValueError(f"input {list(x.shape)} and grid {list(grid.shape)}: a grid [N, *out, {max(k, 1)}] "
                             "of points expected")
        n, c, dims = x.shape[0], x.shape[1], x.shape[2:]
        check_elements([n, c, *grid.shape[1:-1]], "GridSample output")
        points = grid.reshape(n, -1, k)[..., ::-1].astype(np.float32)  # [N, P, k], in X's axis order
        taps = [self._taps(points[..., i], d) for i, d in enumerate(dims)]  # per axis: [(index, weight)]
        xt = np.moveaxis(x, 1, -1)  # [N, *dims, C]: one gather takes every channel
        batch = np.arange(n)[:, None]
        y = np.zeros((n, points.shape[1], c), np.float32)
        for combo in itertools.product(*taps):
            weight = np.prod([w for _, w in combo], axis=0)  # [N, P]
            y += weight[..., None] * xt[(batch, *(i for i, _ in combo))]
        return (np.moveaxis(y, -1, 1).reshape(n, c, *grid.shape[1:-1]).astype(x.dtype, copy=False),)

    def _taps(self, v: np.ndarray, d: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """One axis of length d: (index, weight) per tap for the normalized coordinates v [N, P], the
        index valid for X, the weight 0 where zeros padding leaves a tap outside."""
        v = (v + 1) / 2 * (d - 1) if self.align else ((v + 1) * d - 1) / 2
        low, high = (0.0, d - 1.0) if self.align else (-0.5, d - 0.5)
        if self.mode == "nearest":
            v = np.rint(v)
        if self.padding == "border" and self.mode != "cubic":  # (cubic clamps only its taps, as torch and
            v = np.where((v < low) | (v > high), np.clip(v, 0, d - 1), v)  # onnxruntime do; onnx's reference differs)
        elif self.padding == "reflection":
            v = _reflect(v, low, high)
        if self.mode == "nearest":
            starts, weights = [v], [np.ones_like(v)]
        else:
            base = np.floor(v)
            t = v - base
            offsets = (0, 1) if self.mode == "linear" else (-1, 0, 1, 2)
            starts = [base + o for o in offsets]
            weights = [1 - t, t] if self.mode == "linear" else _cubic_weights(t)
        out = []
        for i, w in zip(starts, weights):
            if self.padding == "zeros":
                inside = (i >= 0) & (i < d)
                w = np.where(inside, w, 0)
            elif self.padding == "border":
                i = np.clip(i, 0, d - 1)
            else:
                i = np.trunc(_reflect(i, low, high))
            index = np.clip(np.nan_to_num(i), 0, d - 1).astype(np.intp)  # (a NaN point: any index, its weight NaN or 0)
            out.append((index, w.astype(np.float32)))
        return out


@register("AffineGrid")
class AffineGrid(Kernel):
    """The sampling grid of an affine map (opset 20; its ONNX function body needs If): ``theta``
    [N, 2, 3] or [N, 3, 4] times the normalized coordinates (x, y[, z], 1) of each output point of
    ``size`` [N, C, H, W] or [N, C, D, H, W]: a grid [N, H, W, 2] or [N, D, H, W, 3], as torch's
    ``affine_grid``. ``align_corners``: the first and last points at -1 and 1, else at the pixel centres."""

    def __call__(self, theta, size):
        size = [int(s) for s in np.asarray(size).reshape(-1)]
        k = len(size) - 2
        if k not in (2, 3) or theta.shape != (size[0], k, k + 1):
            raise ValueError(f"theta {list(theta.shape)} for size {size}: [N, 2, 3] with a 4-D size or [N, 3, 4] "
                             "with a 5-D one expected")
        check_elements([*size[:1], *size[2:], k], "AffineGrid output")
        align = bool(self.attrs.get("align_corners", 0))

        def axis(n: int) -> np.ndarray:
            if align:
                return np.linspace(-1, 1, n) if n > 1 else np.zeros(n)
            return (np.arange(n) * 2 + 1) / n - 1

        spatial = size[2:][::-1]  # W, H[, D]: x runs along the last axis
        mesh = np.meshgrid(*(axis(n) for n in spatial), indexing="ij")  # each [W, H(, D)]
        base = np.stack([*mesh, np.ones_like(mesh[0])], axis=-1)  # [W, H(, D), k + 1]
        base = base.transpose(*range(k)[::-1], k).reshape(-1, k + 1)  # points in (D,) H, W order
        grid = base.astype(theta.dtype) @ np.swapaxes(theta, 1, 2)  # [N, points, k]
        return (grid.reshape(size[0], *size[2:], k),)
