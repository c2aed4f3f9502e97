"""Sliding windows for Conv and pooling: padding arithmetic (incl. auto_pad) and im2col views.

im2col and the compiled kernels work on 2-D spatial layouts (1-D ops are lifted to H = 1 by the
callers); the window view, output sizes and window reductions take any number of spatial axes
(3-D Conv and pooling).
"""
from __future__ import annotations

import math
import threading

import numpy as np

from dcm.errors import UnsupportedOpError
from dcm.runtime.cpu import native
from dcm.runtime.cpu.shape import check_elements


def resolve_pads(attrs: dict, spatial: tuple[int, ...], kernel: tuple[int, ...], strides: tuple[int, ...],
                 dilations: tuple[int, ...], ceil_mode: bool = False) -> tuple[list[int], list[int]]:
    """(begin pads, end pads) per spatial axis, following ONNX's auto_pad rules."""
    nd = len(spatial)
    auto = attrs.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = list(attrs.get("pads", [0] * 2 * nd))
        if len(pads) != 2 * nd:
            raise ValueError(f"pads has {len(pads)} values for {nd} spatial axes")
        begin, end = pads[:nd], pads[nd:]
    elif auto == "VALID":
        begin, end = [0] * nd, [0] * nd
    elif auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for i in range(nd):
            out = -(-spatial[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - spatial[i])
            small = total // 2
            begin.append(small if auto == "SAME_UPPER" else total - small)
            end.append(total - small if auto == "SAME_UPPER" else small)
    else:
        raise UnsupportedOpError(f"auto_pad={auto!r} is not supported")
    if ceil_mode:  # extra end padding so the last partial window is kept
        for i in range(nd):
            eff = (kernel[i] - 1) * dilations[i] + 1
            span = spatial[i] + begin[i] + end[i] - eff
            out = -(-span // strides[i]) + 1
            if (out - 1) * strides[i] >= spatial[i] + begin[i]:  # a window may not start in end padding
                out -= 1
            end[i] += max(0, (out - 1) * strides[i] + eff - (spatial[i] + begin[i] + end[i]))
    return begin, end


def windows(x: np.ndarray, kernel: tuple[int, ...], strides: tuple[int, ...], dilations: tuple[int, ...],
            begin: list[int], end: list[int], fill: float = 0.0) -> np.ndarray:
    """x [N, C, *spatial] -> read-only view [N, C, *out, *kernel] of the padded windows."""
    if any(begin) or any(end):
        x = np.pad(x, ((0, 0), (0, 0), *zip(begin, end)), constant_values=fill)
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    if any(size < e for size, e in zip(x.shape[2:], eff)):
        raise ValueError(f"input {x.shape[2:]} (padded) is smaller than the kernel window {tuple(eff)}")
    v = np.lib.stride_tricks.sliding_window_view(x, eff, axis=tuple(range(2, x.ndim)))
    return v[(slice(None), slice(None), *(slice(None, None, s) for s in strides),
              *(slice(None, None, d) for d in dilations))]


_SCRATCH = threading.local()


KEEP_SCRATCH_BYTES = 16 << 20  # kept between runs; larger buffers live for one run only


def release_scratch() -> None:
    """Drop this thread's work buffer if it is large (called at the end of each session run), so
    an idle process does not hold VGG-size column matrices."""
    buf = getattr(_SCRATCH, "buf", None)
    if buf is not None and buf.nbytes > KEEP_SCRATCH_BYTES:
        _SCRATCH.buf = None


def scratch_arrays(*shapes: tuple[int, ...]) -> list[np.ndarray]:
    """Float32 work arrays carved from this thread's reusable buffer (valid until the thread's next call).

    Column matrices reach 100+ MB (VGG-16's first layers); allocating them fresh for every layer
    costs as much in page faults as filling them, so one buffer serves all the layers of a run.
    """
    sizes = [math.prod(s) for s in shapes]
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.size < sum(sizes):
        buf = _SCRATCH.buf = np.empty(sum(sizes), dtype=np.float32)
    out, start = [], 0
    for shape, size in zip(shapes, sizes):
        out.append(buf[start : start + size].reshape(shape))
        start += size
    return out


RUN_MIN_ELEMENTS = 1 << 15  # per kernel offset; below this one gather is cheaper than a Python loop
RUN_MIN_USED = 0.85  # share of each run's columns that are real outputs (OW / padded width)


INDEX_MAX_ELEMENTS = 1 << 18  # column matrices up to this size gather through a cached index (2 MiB)
INDEX_CACHE_SHAPES = 4  # input shapes whose index one caller keeps


def im2col(x: np.ndarray, groups: int, kernel: tuple[int, int], strides: tuple[int, int],
           dilations: tuple[int, int], begin: list[int], end: list[int],
           index_cache: dict | None = None, threads: int = 1) -> tuple[np.ndarray, int, int, int]:
    """x [N, C, H, W] -> (columns [G, C/G, kh, kw, N, OH * row], OH, OW, row) for W_g @ columns[g].

    Large inputs: each kernel offset is one contiguous run of the flattened padded image (of one
    stride phase of it, ``_runs``), ``row`` = its width, and the outputs past OW in every row are
    garbage for the caller to crop; copying whole runs is about twice as fast as gathering windows,
    unless the garbage columns are many (LeNet-5's conv2, 8 of 12: 6.2 ms against 4.8 ms at batch 64 on one thread).
    Otherwise one gather of the window view (``row`` = OW), which costs less than a loop over
    offsets on small inputs; for small inputs (batch 1 LeNet) one ``np.take`` through a flat index
    kept in ``index_cache`` per input shape, which also skips the padding copy (LeNet-5's conv2:
    35 -> 26 us).
    """
    if native.im2col2d is not None and x.dtype == np.float32:
        return _compiled(x, groups, kernel, strides, dilations, begin, end, threads)
    n, c = x.shape[:2]
    cg = c // groups
    sh, sw = strides
    width = x.shape[3] + begin[1] + end[1]
    ow = (width - (kernel[1] - 1) * dilations[1] - 1) // sw + 1
    row = ow + (kernel[1] - 1) * dilations[1] // sw
    if n * c * x.shape[2] * x.shape[3] >= RUN_MIN_ELEMENTS and ow > 0 and ow / row >= RUN_MIN_USED:
        return _runs(x, groups, kernel, strides, dilations, begin, end)
    if index_cache is not None and (
            0 < _column_count(x.shape, kernel, strides, dilations, begin, end) <= INDEX_MAX_ELEMENTS):
        key = (x.shape, groups, kernel, strides, dilations, tuple(begin), tuple(end))
        if key not in index_cache:
            if len(index_cache) >= INDEX_CACHE_SHAPES:
                index_cache.clear()
            index_cache[key] = _gather_index(x.shape, groups, kernel, strides, dilations, begin, end)
        index, oh, ow = index_cache[key]
        flat, cols = scratch_arrays((x.size + 1,), (groups, cg, kernel[0], kernel[1], n, oh * ow))
        flat[:-1] = x.reshape(-1)
        flat[-1] = 0.0  # what the padding positions of the index point at
        np.take(flat, index, out=cols.reshape(-1))
        return cols, oh, ow, ow
    v = windows(x, kernel, strides, dilations, begin, end)  # [N, C, OH, OW, kh, kw] view
    oh, ow = v.shape[2:4]
    (cols,) = scratch_arrays((groups, cg, kernel[0], kernel[1], n, oh, ow))
    cols[...] = v.reshape(n, groups, cg, oh, ow, kernel[0], kernel[1]).transpose(1, 2, 5, 6, 0, 3, 4)
    return cols.reshape(groups, cg, kernel[0], kernel[1], n, oh * ow), oh, ow, ow


def _compiled(x: np.ndarray, groups: int, kernel: tuple[int, int], strides: tuple[int, int],
              dilations: tuple[int, int], begin: list[int], end: list[int],
              threads: int) -> tuple[np.ndarray, int, int, int]:
    """im2col's columns from the compiled ``im2col2d``: written once, padding included, ``row`` = OW
    (ResNet-18's 64->128 stride-2 3x3 layer: 1.2 ms with its product against 1.86 with the numpy
    columns of ``_runs``; onnxruntime 1.09), rows split over the native pool's ``threads``."""
    n, c = x.shape[:2]
    oh, ow = output_size(x.shape[2:], kernel, strides, dilations, begin, end)
    check_elements([n, c, *kernel, oh, ow], "Conv column matrix")
    (cols,) = scratch_arrays((groups, c // groups, kernel[0], kernel[1], n, oh * ow))
    native.im2col2d(np.ascontiguousarray(x), cols, x.shape, kernel, strides, dilations,
                    (begin[0], begin[1], end[0], end[1]), threads)
    return cols, oh, ow, ow


def _runs(x: np.ndarray, groups: int, kernel: tuple[int, int], strides: tuple[int, int],
          dilations: tuple[int, int], begin: list[int], end: list[int]) -> tuple[np.ndarray, int, int, int]:
    """im2col's contiguous runs. The zero-padded input is split by stride phase: phase (a, b) holds
    padded x[a + u * sh, b + v * sw] at [u, v], ``row`` columns wide and one row longer than the
    last run needs. A kernel offset (r, q) is then the run of phase (r % sh, q % sw) starting at
    row r // sh, column q // sw; with stride 1 the one phase is the padded input itself."""
    n, c, h, w = x.shape
    cg = c // groups
    (sh, sw), (dh, dw) = strides, dilations
    oh, ow = output_size((h, w), kernel, strides, dilations, begin, end)
    taps = [(i * dh, j * dw) for i in range(kernel[0]) for j in range(kernel[1])]
    row = ow + (kernel[1] - 1) * dw // sw
    rows = oh + (kernel[0] - 1) * dh // sh + 1
    phases = {}
    for a, b in sorted({(r % sh, q % sw) for r, q in taps}):
        img = np.zeros((n, c, rows, row), dtype=np.float32)
        u0, v0 = max(0, -(-(begin[0] - a) // sh)), max(0, -(-(begin[1] - b) // sw))  # first inside x
        u1 = min(rows, max(0, (h - 1 + begin[0] - a) // sh + 1))
        v1 = min(row, max(0, (w - 1 + begin[1] - b) // sw + 1))
        if u1 > u0 and v1 > v0:
            img[:, :, u0:u1, v0:v1] = x[:, :, a + u0 * sh - begin[0] : a + (u1 - 1) * sh - begin[0] + 1 : sh,
                                        b + v0 * sw - begin[1] : b + (v1 - 1) * sw - begin[1] + 1 : sw]
        phases[a, b] = img.reshape(n, groups, cg, -1)
    length = oh * row
    (cols,) = scratch_arrays((groups, cg, kernel[0], kernel[1], n, length))
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            r, q = i * dh, j * dw
            off = (r // sh) * row + q // sw
            cols[:, :, i, j] = phases[r % sh, q % sw][..., off : off + length].transpose(1, 2, 0, 3)
    return cols, oh, ow, row


def _column_count(shape: tuple[int, ...], kernel: tuple[int, int], strides: tuple[int, int],
                  dilations: tuple[int, int], begin: list[int], end: list[int]) -> int:
    """Entries of the column matrix: N * C * kh * kw * OH * OW (0 or less: the window does not fit)."""
    pixels = math.prod((size + b + e - (k - 1) * d - 1) // s + 1
                       for size, b, e, k, d, s in zip(shape[2:], begin, end, kernel, dilations, strides))
    return shape[0] * shape[1] * kernel[0] * kernel[1] * pixels


def _gather_index(shape: tuple[int, ...], groups: int, kernel: tuple[int, int], strides: tuple[int, int],
                  dilations: tuple[int, int], begin: list[int], end: list[int]) -> tuple[np.ndarray, int, int]:
    """(flat index of every column entry into x, with x.size for padding; OH; OW), in the column
    order of ``im2col``'s gather: [G, C/G, kh, kw, N, OH * OW]."""
    n, c = shape[:2]
    size = math.prod(shape)
    v = windows(np.arange(size).reshape(shape), kernel, strides, dilations, begin, end, fill=size)
    oh, ow = v.shape[2:4]
    index = v.reshape(n, groups, c // groups, oh, ow, kernel[0], kernel[1]).transpose(1, 2, 5, 6, 0, 3, 4)
    return np.ascontiguousarray(index).reshape(-1), oh, ow


def output_size(spatial: tuple[int, ...], kernel: tuple[int, ...], strides: tuple[int, ...],
                dilations: tuple[int, ...], begin: list[int], end: list[int]) -> tuple[int, ...]:
    """Output size per spatial axis of a window op over an input padded by begin/end; a ValueError
    when the padded input is smaller than the window."""
    out = tuple((size + b + e - (k - 1) * d - 1) // s + 1
                for size, k, s, d, b, e in zip(spatial, kernel, strides, dilations, begin, end))
    if any(o < 1 for o in out):
        raise ValueError(f"input {tuple(spatial)} (padded) is smaller than the kernel window")
    return out


def reduce_windows(x: np.ndarray, kernel: tuple[int, ...], strides: tuple[int, ...], dilations: tuple[int, ...],
                   begin: list[int], end: list[int], ufunc: np.ufunc, fill: float = 0.0) -> np.ndarray:
    """ufunc-reduce every window: x [N, C, *spatial] -> [N, C, *out].

    Separably, one spatial axis after the other: the kernel's offsets along an axis are strided
    slices of the previous result, kh + kw - 2 operations instead of kh * kw - 1 over the window
    view for 2-D. 2x2/2 pools: 1.2-1.6x faster than reducing the four offsets at once; the 3x3/2
    padded pool of ResNet's stem: several times faster.
    """
    out = output_size(x.shape[2:], kernel, strides, dilations, begin, end)
    if any(begin) or any(end):
        x = np.pad(x, ((0, 0), (0, 0), *zip(begin, end)), constant_values=fill)
    for axis, (k, s, d, o) in enumerate(zip(kernel, strides, dilations, out), start=2):
        lead = (slice(None),) * axis
        x = _fold(ufunc, [x[lead + (slice(i * d, i * d + (o - 1) * s + 1, s),)] for i in range(k)])
    return x


def _fold(ufunc: np.ufunc, parts: list[np.ndarray]) -> np.ndarray:
    """ufunc(parts[0], parts[1], ...) into a new array."""
    if len(parts) == 1:
        return np.array(parts[0])
    out = ufunc(parts[0], parts[1])
    for p in parts[2:]:
        ufunc(out, p, out=out)
    return out


def spatial_2d(x: np.ndarray) -> tuple[np.ndarray, bool]:
    """Lift a 1-D layout [N, C, L] to [N, C, 1, L]; returns (array, was_1d)."""
    if x.ndim == 3:
        return x[:, :, None, :], True
    if x.ndim != 4:
        raise UnsupportedOpError(f"only 1-D and 2-D spatial inputs are supported, got rank {x.ndim}")
    return x, False


def axis_ints(attrs: dict, key: str, nd: int, default: int) -> list[int]:
    """Attribute ``key`` with one value per spatial axis (``default`` everywhere when absent)."""
    value = list(attrs.get(key, [default] * nd))
    if len(value) != nd:
        raise ValueError(f"attribute {key!r} has {len(value)} values for {nd} spatial axes")
    return value


def ints2(attrs: dict, key: str, nd: int, default: int) -> tuple[int, int]:
    """Attribute for nd (1 or 2) spatial axes as a 2-tuple (1-D gets the H axis filled in)."""
    v = axis_ints(attrs, key, nd, default)
    return (default, v[0]) if nd == 1 else (v[0], v[1])


def pads2(attrs: dict, nd: int) -> dict:
    """Rewrite a 1-D ``pads`` attribute for the lifted 2-D layout."""
    if nd == 1 and "pads" in attrs:
        p = attrs["pads"]
        if len(p) != 2:
            raise ValueError(f"pads has {len(p)} values for 1 spatial axis")
        return {**attrs, "pads": [0, p[0], 0, p[1]]}
    return attrs
