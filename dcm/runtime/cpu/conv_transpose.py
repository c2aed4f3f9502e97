"""ConvTranspose in any number of spatial dimensions: one product W^T [C_out/g * k, C_in/g] @ X
[C_in/g, N * pixels] per group, then col2im, which adds each kernel tap's slab of the product into a
strided slice of the output (a loop over the taps, never over pixels). Col2Im (torch's fold) is that
last step alone.

The weight [C_in, C_out/g, k...] is stored as the matrix [C_in, C_out/g * k] (``matrix_shape``), so
W^T of a pruned layer is one CSR transpose per group at load time.

In two spatial dimensions col2im runs compiled where the build has it (``native.col2im2d``,
_upsample.c): taps, crop, bias and the [N, C_out, H, W] layout in one pass over the output.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from dcm.encoder.codec import CsrParts
from dcm.errors import UnsupportedOpError
from dcm.format import constants as C
from dcm.runtime.cpu import native
from dcm.runtime.cpu.matmul import WeightMatmul
from dcm.runtime.cpu.registry import register
from dcm.runtime.cpu.shape import check_elements
from dcm.runtime.cpu.windows import axis_ints
from dcm.runtime.kernel import LARGE_BATCH, Kernel


@register("ConvTranspose")
class ConvTranspose(Kernel):
    weight_inputs = (1,)

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.group = int(self.attrs.get("group", 1))
        name = node.inputs[1]
        self.mms: list[WeightMatmul] | None = None
        self.mode, self.density, self.weight_shape = "dense", None, None
        if ctx.is_const(name):
            self.weight_shape = tuple(ctx.model.tensors[name].shape)
            self._check_weight(self.weight_shape)
            self.mode, w, self.density = ctx.weight(node, name, columns_per_sample=LARGE_BATCH)
            self.mms = self._matmuls(w)
        else:  # a weight fed at run time: dense, transposed on every run
            self.weight_inputs = ()

    def _check_weight(self, shape: tuple[int, ...]) -> None:
        where = f"ConvTranspose {self.node.name!r}"
        if len(shape) < 3:
            raise UnsupportedOpError(f"{where}: the weight has rank {len(shape)}, at least 3 expected")
        if shape[0] % self.group:
            raise UnsupportedOpError(f"{where}: {shape[0]} input channels not divisible by group {self.group}")
        given = self.attrs.get("kernel_shape")
        if given is not None and list(given) != list(shape[2:]):
            raise UnsupportedOpError(f"{where}: kernel_shape {given} does not match the weight {list(shape)}")

    def _matmuls(self, w: CsrParts | np.ndarray) -> list[WeightMatmul]:
        """One W_g^T [C_out/g * k, C_in/g] product per group."""
        per = self.weight_shape[0] // self.group
        if isinstance(w, CsrParts):
            m = w.to_scipy()
            return [WeightMatmul("sparse", sp.csr_array(m[g * per : (g + 1) * per].T), self.threads)
                    for g in range(self.group)]
        w = np.asarray(w, dtype=np.float32).reshape(self.weight_shape[0], -1)
        return [WeightMatmul("dense", w[g * per : (g + 1) * per].T, self.threads) for g in range(self.group)]

    def __call__(self, x, w=None, b=None):
        mms, shape = self.mms, self.weight_shape
        if mms is None:
            w = np.asarray(w, dtype=np.float32)
            self._check_weight(w.shape)
            shape = w.shape
            self.weight_shape = shape
            mms = self._matmuls(w)
        nd = len(shape) - 2
        if x.ndim != nd + 2:
            raise ValueError(f"input of rank {x.ndim} for a weight of rank {nd + 2}")
        n, c = x.shape[:2]
        if c != shape[0]:
            raise ValueError(f"input has {c} channels, the weight expects {shape[0]}")
        spatial, kernel = x.shape[2:], tuple(shape[2:])
        strides = axis_ints(self.attrs, "strides", nd, 1)
        dilations = axis_ints(self.attrs, "dilations", nd, 1)
        begin, out = self._geometry(spatial, kernel, strides, dilations)
        full = [(d - 1) * s + (k - 1) * dl + 1 for d, s, k, dl in zip(spatial, strides, kernel, dilations)]
        buffer = [max(f, bg + o) for f, bg, o in zip(full, begin, out)]
        c_out = shape[1] * self.group
        check_elements([n, c_out, *buffer], "ConvTranspose output")
        check_elements([n, c_out, *kernel, *spatial], "ConvTranspose column matrix")
        pixels = math.prod(spatial)
        cg = c // self.group
        xg = x.astype(np.float32, copy=False).reshape(n, self.group, cg, pixels).transpose(1, 2, 0, 3)
        parts = [mm.left(np.ascontiguousarray(xg[g]).reshape(cg, n * pixels)) for g, mm in enumerate(mms)]
        cols = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
        cols = cols.reshape(c_out, *kernel, n, *spatial)
        if b is not None:
            b = np.asarray(b, dtype=np.float32)
            if b.shape != (c_out,):
                raise ValueError(f"bias of shape {b.shape}, expected ({c_out},)")
        if nd == 2 and native.col2im2d is not None:
            check_elements([n, c_out, *out], "ConvTranspose output")
            result = np.empty((n, c_out, *out), dtype=np.float32)
            native.col2im2d(np.ascontiguousarray(cols), result, tuple(strides), tuple(dilations), tuple(begin), b,
                            self.threads)
            return (result.astype(x.dtype) if x.dtype in (np.float16, np.float64) else result,)
        lead = (slice(None), slice(None))
        # Stride = kernel (U-Net's 2x2/2 up-convolutions): every output takes exactly one tap, so the
        # slabs are written, not added, into an uninitialized array (2.4x faster at 2x2/2).
        disjoint = list(strides) == list(kernel) and not any(dl - 1 for dl in dilations)
        y = (np.empty if disjoint and buffer == full else np.zeros)((c_out, n, *buffer), dtype=np.float32)
        for tap in np.ndindex(*kernel):  # col2im: each tap's slab lands on a strided slice
            at = lead + tuple(slice(t * dl, t * dl + (d - 1) * s + 1, s)
                              for t, dl, d, s in zip(tap, dilations, spatial, strides))
            slab = cols[(slice(None),) + tap]
            if disjoint:
                y[at] = slab
            else:
                y[at] += slab
        crop = tuple(slice(bg, bg + o) for bg, o in zip(begin, out))
        view = y[lead + crop].swapaxes(0, 1)  # [N, C_out, *out]
        if b is not None:
            b = b.reshape((1, c_out) + (1,) * nd)
        if view.flags.c_contiguous:  # batch 1, nothing cropped: y is already the result
            result = view
            if b is not None:
                result += b
        else:
            result = np.empty(view.shape, dtype=np.float32)
            if b is None:
                np.copyto(result, view)
            else:
                np.add(view, b, out=result)  # the bias in the layout copy
        return (result.astype(x.dtype) if x.dtype in (np.float16, np.float64) else result,)  # float32 work

    def _geometry(self, spatial, kernel, strides, dilations) -> tuple[list[int], list[int]]:
        """(begin crop, output size) per spatial axis: from ``output_shape`` or auto_pad SAME (ONNX's
        total padding: SAME_UPPER and an explicit output_shape crop the odd element at the end, as
        onnx's reference and onnxruntime do, SAME_LOWER at the start), else from ``pads``. Output
        larger than the full result (negative total padding) is zeros at the end."""
        nd = len(spatial)
        extra = axis_ints(self.attrs, "output_padding", nd, 0)
        if any(not 0 <= e <= C.MAX_ELEMENTS for e in extra):
            raise ValueError(f"output_padding {extra} is out of range")
        full = [(d - 1) * s + (k - 1) * dl + 1 + e
                for d, s, k, dl, e in zip(spatial, strides, kernel, dilations, extra)]
        auto = self.attrs.get("auto_pad", "NOTSET") or "NOTSET"
        target = self.attrs.get("output_shape")
        if auto not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
            raise UnsupportedOpError(f"auto_pad={auto!r} is not supported")
        if target is not None or auto in ("SAME_UPPER", "SAME_LOWER"):
            out = list(target)[-nd:] if target is not None else [d * s for d, s in zip(spatial, strides)]
            if len(out) != nd or any(not 1 <= o <= C.MAX_ELEMENTS for o in out):
                raise ValueError(f"output_shape {target} does not fit {nd} spatial axes")
            total = [max(0, f - o) for f, o in zip(full, out)]
            begin = [t - t // 2 if auto == "SAME_LOWER" else t // 2 for t in total]
            return begin, out
        pads = [0] * 2 * nd if auto == "VALID" else list(self.attrs.get("pads", [0] * 2 * nd))
        if len(pads) != 2 * nd:
            raise ValueError(f"pads has {len(pads)} values for {nd} spatial axes")
        out = [f - pads[i] - pads[nd + i] for i, f in enumerate(full)]
        if any(o < 1 for o in out):
            raise ValueError(f"pads {pads} leave no output for input {tuple(spatial)}")
        return pads[:nd], out

    def describe(self) -> dict:
        known = {"density": self.density} if self.density is not None else {}  # None: a weight fed at run time
        return {"kernel": self.mode, **known, "groups": self.group}


@register("Col2Im")
class Col2Im(Kernel):
    """Column blocks [N, C * prod(block_shape), L] summed back into images [N, C, *image_shape] (torch's
    ``fold``, opset 18): each kernel offset's L values go to a strided slice of the padded image."""

    def __call__(self, x, image_shape, block_shape):
        image = [int(v) for v in np.asarray(image_shape).reshape(-1)]
        block = [int(v) for v in np.asarray(block_shape).reshape(-1)]
        nd = len(image)
        if len(block) != nd or x.ndim != 3 or nd == 0:
            raise ValueError(f"input {list(x.shape)}, image_shape {image}, block_shape {block}: [N, C * prod(block), L] "
                             "and shapes of one length expected")
        strides, dilations = axis_ints(self.attrs, "strides", nd, 1), axis_ints(self.attrs, "dilations", nd, 1)
        pads = list(self.attrs.get("pads", [0] * 2 * nd))
        if len(pads) != 2 * nd:
            raise ValueError(f"pads has {len(pads)} values for {nd} spatial axes")
        padded = [i + pads[a] + pads[a + nd] for a, i in enumerate(image)]
        blocks = [(p - d * (k - 1) - 1) // s + 1 for p, k, s, d in zip(padded, block, strides, dilations)]
        kernel = math.prod(block)
        if min(blocks) < 1 or math.prod(blocks) != x.shape[2] or x.shape[1] % kernel:
            raise ValueError(f"input {list(x.shape)} does not hold {kernel}-value blocks at {blocks} positions of an "
                             f"image {image} (pads {pads}, strides {strides}, dilations {dilations})")
        n, c = x.shape[0], x.shape[1] // kernel
        check_elements([n, c, *padded], "Col2Im output")
        out = np.zeros((n, c, *padded), x.dtype)
        cols = x.reshape(n, c, *block, *blocks)
        for offset in np.ndindex(*block):
            window = tuple(slice(o * d, o * d + s * (b - 1) + 1, s)
                           for o, d, s, b in zip(offset, dilations, strides, blocks))
            out[(slice(None), slice(None), *window)] += cols[(slice(None), slice(None), *offset)]
        crop = tuple(slice(pads[a], pads[a] + image[a]) for a in range(nd))
        return (np.ascontiguousarray(out[(slice(None), slice(None), *crop)]),)
