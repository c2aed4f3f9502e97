"""Dense 3x3 stride-1 convolution by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, 2016).

Each 2x2 output tile costs 16 multiplies per (input, output) channel pair instead of 36, so the
GEMM, which dominates a wide convolution, shrinks 2.25x: 16 batched [tiles, C_in] @ [C_in, C_out]
products replace one [C_out, 9 C_in] @ [9 C_in, pixels] product. The tile transforms are additions
only and run as whole-array numpy ops on an NHWC copy of the input, with columns split by parity
so that every operand is a plain slice. Measured against im2col + GEMM on one VGG-16-shaped layer
each (2 threads): 128 ch 28x28 1.14 vs 1.60 ms, 512 ch 28x28 12.3 vs 21.5 ms, 64 ch 56x56 1.58 vs
1.70 ms. With the compiled transforms it also wins at 32 channels (one layer, batch 1, one thread:
32->32 at 128x128 4.4 ms against 8.9 for im2col + GEMM, 5.6 for conv_lanes2d and 8.5 for the direct
kernel; 32->32 at 14x14 0.17 against 0.30, 0.15 and 0.23); at 16 conv_lanes2d wins (1.18 against
1.56 ms at 112x112), so narrower layers are left to it and to im2col (``MIN_CHANNELS``).
"""
from __future__ import annotations

import numpy as np

from dcm.runtime.cpu import activation, blas, memory, native
from dcm.runtime.cpu.windows import scratch_arrays

MIN_CHANNELS = 32  # input and output channels; narrower layers run faster with conv_lanes2d or im2col + GEMM

# Filter transforms G of F(2x2, 3x3) (4x3) and F(4x4, 3x3) (6x3); the input and output transforms
# B^T and A^T are hard-coded (here and in _native.c) as the additions they amount to.
_G = {2: np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]]),
      4: np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                   [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])}


def eligible(kernel: tuple[int, int], strides: tuple[int, int], dilations: tuple[int, int], group: int,
             channels_in: int, channels_out: int) -> bool:
    return (kernel == (3, 3) and strides == (1, 1) and dilations == (1, 1) and group == 1
            and min(channels_in, channels_out) >= MIN_CHANNELS)


def transform_weight(w: np.ndarray, tile: int = 2) -> np.ndarray:
    """w [C_out, C_in, 3, 3] -> U^T [(tile + 2)^2, C_out, C_in], U = G w G^T per channel pair for
    F(tile x tile, 3x3) (in float64, then float32). Output channels before input channels: the compiled
    products read it untransposed (512 channels at 7x7: 116 against 158 us per product read transposed)."""
    c_out, c_in = w.shape[:2]
    g = _G[tile]
    u = np.einsum("ai,kcij,bj->abkc", g, w.astype(np.float64), g)  # [t, t, C_out, C_in], t = tile + 2
    return memory.aligned(u.reshape(len(g) ** 2, c_out, c_in).astype(np.float32))


# F(4x4, 3x3) tiles in one call from which their U, 2.25 times F(2x2)'s, pays for its reads: one layer,
# batch 1, one thread, against F(2x2) (min of 25 interleaved runs, onnxruntime's direct convolution in
# brackets, ms): 64 channels at 56x56 (196 tiles) 1.27 against 1.46 (1.55), 128 at 28x28 (49) 0.93
# against 1.48 (1.48), 32 at 128x128 2.93 against 3.46 (2.47); 256 at 14x14 (16) 1.98 against 1.72
# (1.64) and 512 at 7x7 (4) 11.5 against 3.4 (2.2), where the products only stream U. Since its
# transforms take vectors of tiles, F(4x4) also wins from 16 tiles where they cover the plane with little
# more waste than F(2x2)'s (F4_MAX_WASTE; batch 1, one thread, AVX-512 / AVX2 paths of one Zen 5, F(4x4)
# against F(2x2), ms): 256 channels at 16x16 0.79 / 1.53 against 0.97 / 2.06, 128 at 20x20 0.33 / 0.44
# against 0.47 / 0.68, 64 at 24x24 0.16 / 0.18 against 0.23 / 0.29; not at 14x14, whose 16 tiles cover
# 16x16 (1.31x its outputs, F(2x2)'s 1.0x): 256 channels 0.80 / 2.02 against 0.82 / 1.78.
F4_ANY_TILES = 48
F4_MIN_TILES = 16
F4_MAX_WASTE = 1.15


def uses_f4(n: int, oh: int, ow: int) -> bool:
    """Whether F(4x4, 3x3) takes a call of n samples of oh x ow outputs: F4_ANY_TILES tiles, or
    F4_MIN_TILES whose 4x4 tiles cover at most F4_MAX_WASTE times the outputs F(2x2)'s 2x2 ones cover."""
    cells4, cells2 = -(-oh // 4) * -(-ow // 4), -(-oh // 2) * -(-ow // 2)  # 4x4 and 2x2 tiles a sample
    tiles = n * cells4
    return tiles >= F4_ANY_TILES or (tiles >= F4_MIN_TILES and 16 * cells4 <= F4_MAX_WASTE * 4 * cells2)


class WinogradWeight:
    """A dense 3x3 layer's transformed weight: F(2x2, 3x3)'s U from the start, F(4x4, 3x3)'s (4x the
    weight, against F(2x2)'s 1.78x; 36 products of a quarter of the pixels each) made the first time a
    call takes it (``uses_f4``), from F(2x2)'s U (G has a left inverse), so that layers whose planes
    stay small (ResNet's 7x7 ones) never hold it."""

    def __init__(self, w: np.ndarray):
        self.u = transform_weight(w)
        self.u4: np.ndarray | None = None

    def conv(self, x: np.ndarray, begin: list[int], end: list[int], bias: np.ndarray | None, relu: bool,
             threads: int) -> np.ndarray:
        """conv3x3 with the tile size that suits x's planes (``uses_f4``)."""
        oh, ow = x.shape[2] + begin[0] + end[0] - 2, x.shape[3] + begin[1] + end[1] - 2
        if native.winograd_conv is None or not uses_f4(x.shape[0], oh, ow):
            return conv3x3(x, self.u, begin, end, bias, relu, threads)
        if self.u4 is None:
            g = np.linalg.pinv(_G[2])  # [3, 4]: G^+ G = I, so w = G^+ U G^+^T
            k, c = self.u.shape[1:]
            w = np.einsum("ai,ijkc,bj->kcab", g, self.u.reshape(4, 4, k, c).astype(np.float64), g)
            self.u4 = transform_weight(w, 4)
        return conv3x3(x, self.u4, begin, end, bias, relu, threads, 4)


def _input_transform(d0: np.ndarray, d1: np.ndarray, d2: np.ndarray, d3: np.ndarray, out: np.ndarray) -> None:
    """B^T applied along one axis: the four rows (or columns) of every tile -> out[0..3]."""
    np.subtract(d0, d2, out=out[0])
    np.add(d1, d2, out=out[1])
    np.subtract(d2, d1, out=out[2])
    np.subtract(d1, d3, out=out[3])


BAND_TILES = 512  # tiles per band: the band's buffers stay in cache and the GEMMs stay efficient
# Tiles per band of the compiled path (at least one tile row). Measured on 64-512 channel layers,
# 1 and 2 threads: 128 was best or within noise of it; a band's V and M then take 0.5-4 MB.
NATIVE_BAND_TILES = 128


def conv3x3(x: np.ndarray, u: np.ndarray, begin: list[int], end: list[int], bias: np.ndarray | None,
            relu: bool = False, threads: int = 1, tile: int = 2) -> np.ndarray:
    """x [N, C_in, H, W], U^T from ``transform_weight`` for F(tile x tile, 3x3) -> [N, C_out, OH, OW]
    float32 (then max(0, .) with ``relu``, band by band while it is in cache). tile 4 needs the
    compiled kernel.

    Works in bands of tile rows, so the work buffers are a few MB even for VGG-16's 224x224 layers.
    The tile transforms run on the compiled kernels where they were built (``_conv3x3_native``),
    else as numpy passes on one thread: splitting those over two threads made the VGG block slower
    (1.28 -> 2.1 ms per layer), as OpenBLAS's workers still spin after the GEMM.
    """
    n, c, h, w = x.shape
    oh, ow = h + begin[0] + end[0] - 2, w + begin[1] + end[1] - 2
    if oh < 1 or ow < 1:
        raise ValueError(f"input {x.shape[2:]} (padded) is smaller than the 3x3 kernel")
    th, tw = -(-oh // 2), -(-ow // 2)  # tiles; the last may hang over the bottom/right edge (zeros)
    out = np.empty((n, u.shape[1], oh, ow), dtype=np.float32)
    band = max(1, BAND_TILES // (n * tw))
    if native.winograd_conv is not None:
        return _conv3x3_native(np.ascontiguousarray(x, dtype=np.float32), u, begin, out,
                               None if bias is None else np.ascontiguousarray(bias.reshape(-1)), relu, threads, tile)
    if tile != 2:
        raise ValueError("F(4x4, 3x3) needs the compiled winograd_conv")
    for t0 in range(0, th, band):
        t1 = min(t0 + band, th)
        v = _transform_in(x, begin, t0, t1, tw, c)
        # [16, tiles, C_in] @ [16, C_in, C_out]
        m = blas.matmul(v.reshape(16, -1, c), u.transpose(0, 2, 1), threads)
        _transform_out(m, out, t0, t1, tw, bias)
        if relu:
            done = out[:, :, 2 * t0 : 2 * t1]
            activation.relu(done, out=done)
    return out


def _conv3x3_native(x: np.ndarray, u: np.ndarray, begin: list[int], out: np.ndarray, bias: np.ndarray | None,
                    relu: bool, threads: int, tile: int) -> np.ndarray:
    """The compiled convolution (``winograd_conv``): tiles innermost, V [(tile + 2)^2, C_in, tiles] and
    M = U^T V [(tile + 2)^2, C_out, tiles] per band of samples x tile rows (``NATIVE_BAND_TILES``), small
    enough for V and M to stay in cache; the native pool's threads take whole bands, and a single band
    splits its transforms and products instead."""
    n, c, h, w = x.shape
    k, oh, ow = out.shape[1:]
    native.winograd_conv(x, u, out, (n, c, h, w, k, oh, ow), (begin[0], begin[1]),
                         NATIVE_BAND_TILES, bias, relu, threads, tile)
    return out


def _transform_in(x: np.ndarray, begin: list[int], t0: int, t1: int, tw: int, c: int) -> np.ndarray:
    """V = B^T d B [4, 4, N, t1 - t0, tw, C_in] for tile rows [t0, t1), from padded rows [2 t0, 2 t1 + 2)."""
    n, _, h, w = x.shape
    bt, lo_row, hi_row = t1 - t0, 2 * t0, 2 * t1 + 2
    # The band of the padded input, NHWC, columns split by parity: [N, row, col % 2, col // 2, C].
    xs, rows, v = scratch_arrays((n, hi_row - lo_row, 2, tw + 1, c), (4, n, bt, 2, tw + 1, c), (4, 4, n, bt, tw, c))
    start = min(max(begin[0] - lo_row, 0), hi_row - lo_row)  # the band's rows that hold input rows
    inside = slice(start, max(min(begin[0] + h - lo_row, hi_row - lo_row), start))
    xs[:, : inside.start] = 0
    xs[:, inside.stop :] = 0
    src = x[:, :, lo_row + inside.start - begin[0] : lo_row + inside.stop - begin[0]].transpose(0, 2, 3, 1)
    for parity in range(2):
        first = (parity - begin[1]) % 2  # first input column that lands on this parity
        lo, count = (begin[1] + first) // 2, len(range(first, w, 2))
        dst = xs[:, inside, parity]
        dst[:, :, :lo] = 0
        dst[:, :, lo + count :] = 0
        dst[:, :, lo : lo + count] = src[:, :, first::2]
    _input_transform(*(xs[:, i : i + 2 * bt : 2] for i in range(4)), rows)  # B^T along rows
    for i in range(4):
        r = rows[i]  # [N, bt, parity, tw + 1, C]: tile columns 2t, 2t+1, 2t+2, 2t+3
        _input_transform(r[:, :, 0, :tw], r[:, :, 1, :tw], r[:, :, 0, 1:], r[:, :, 1, 1:], v[i])
    return v


def _transform_out(m: np.ndarray, out: np.ndarray, t0: int, t1: int, tw: int, bias: np.ndarray | None) -> None:
    """Y = A^T M A for tile rows [t0, t1) -> out[:, :, 2 t0 : 2 t1] (cropped at the edges), bias added."""
    n, k, oh, ow = out.shape
    bt = t1 - t0
    m = m.reshape(4, 4, n, bt, tw, k)
    s, tiles = scratch_arrays((2, 4, n, bt, tw, k), (n, bt, 2, tw, 2, k))
    np.add(m[0], m[1], out=s[0])  # A^T along rows
    s[0] += m[2]
    np.subtract(m[1], m[2], out=s[1])
    s[1] -= m[3]
    for r in range(2):  # ... and along columns, into the 2x2 output tiles
        left, right = tiles[:, :, r, :, 0], tiles[:, :, r, :, 1]
        np.add(s[r, 0], s[r, 1], out=left)
        left += s[r, 2]
        np.subtract(s[r, 1], s[r, 2], out=right)
        right -= s[r, 3]
    r0, r1 = 2 * t0, min(2 * t1, oh)
    y = tiles.reshape(n, 2 * bt, 2 * tw, k)[:, : r1 - r0, :ow].transpose(0, 3, 1, 2)
    if bias is not None:
        np.add(y, bias, out=out[:, :, r0:r1])
    else:
        np.copyto(out[:, :, r0:r1], y)
