"""LSTM, GRU and RNN: the input projection of every time step is one product X [T * N, in] @ W^T up
front, so the loop over time steps does only the recurrent product H @ R^T and the gates.

W [directions, gates * hidden, in] and R [directions, gates * hidden, hidden] are weight tensors
coded like any fully connected layer's; a pruned one runs from CSR (``LoadContext.weight``), and
each direction gets its own product. ``sequence_lens`` freezes a sequence's state past its end and
zeroes its outputs there; a reverse direction reads each sequence backwards from its own end. Where
ONNX leaves details open (clip, activation_alpha/beta order, empty sequences) onnxruntime's
behaviour is followed.

The loop over the steps runs compiled (``native.recurrent_scan``, _recurrent.c) where the build has
it and the node keeps its op's default activations: R is then held only in the forms that loop takes,
per direction: dense as R^T in unit-major 16-column panels, CSR, or (a pruned R whose panels are small)
both, each call taking the faster for its batch (``ScanWeight``); each sequence's reverse order is
read in place. The session's threads share each step's units through the native pool
(docs/recurrent.md). Other activations, or a build without a C compiler, run the numpy loop below,
one product and a dozen array operations per step.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.special import expit

from dcm.encoder.codec import CsrParts
from dcm.errors import UnsupportedOpError
from dcm.runtime.cpu import memory, native
from dcm.runtime.cpu.shape import check_elements
from dcm.runtime.cpu.matmul import WeightMatmul
from dcm.runtime.cpu.registry import register
from dcm.runtime.kernel import LARGE_BATCH, Kernel

PANEL = 16  # units per panel of a dense R in the compiled loop (_recurrent.c's PANEL_W)

# A pruned R's steps on CSR against the dense panels' (one 256-unit LSTM layer, native.recurrent_scan
# on both forms of the same R in turns, 1 and 2 threads): at batch 1 CSR took 0.71-0.88x the panels'
# time at 5% kept, 1.09-1.16x at 10% (a 128-unit layer 1.29x), 1.6-1.8x at 20%; at batch 8
# 0.52-0.72x at 5%, 0.74-0.89x at 10%, 1.05-1.08x at 15%, 1.17-1.30x at 20%. Panels larger than this
# CPU's L2 lose at all of these (512 units, 4 MB read from L3 each step: CSR 0.24x at 10%, batch 1).
# So a pruned R whose panels take at most PANELS_MAX_BYTES keeps both forms, and a call takes the
# panels where R's density is past CSR_MAX_DENSITY_FEW (batch < 8) or CSR_MAX_DENSITY_MANY.
PANELS_MAX_BYTES = 1 << 20
CSR_MAX_DENSITY_FEW = 0.08
CSR_MAX_DENSITY_MANY = 0.13

# name -> (function of (x, alpha, beta), default alpha, default beta); alpha/beta None: not used.
ACTIVATIONS = {
    "relu": (lambda x, a, b: np.maximum(x, 0), None, None),
    "tanh": (lambda x, a, b: np.tanh(x), None, None),
    "sigmoid": (lambda x, a, b: expit(x), None, None),
    "affine": (lambda x, a, b: a * x + b, 1.0, 0.0),
    "leakyrelu": (lambda x, a, b: np.where(x >= 0, x, a * x), 0.01, None),
    "thresholdedrelu": (lambda x, a, b: np.where(x > a, x, 0), 1.0, None),
    "scaledtanh": (lambda x, a, b: a * np.tanh(b * x), 1.0, 1.0),
    "hardsigmoid": (lambda x, a, b: np.clip(a * x + b, 0, 1), 0.2, 0.5),
    "elu": (lambda x, a, b: np.where(x >= 0, x, a * np.expm1(np.minimum(x, 0))), 1.0, None),
    "softsign": (lambda x, a, b: x / (1 + np.abs(x)), None, None),
    "softplus": (lambda x, a, b: np.logaddexp(0, x), None, None),
}


def _activations(attrs: dict, defaults: tuple[str, ...], directions: int, where: str) -> list[list]:
    """Per direction, the activation callables; activation_alpha/beta are consumed in order by the
    activations that take them (as onnxruntime does), each falling back to its default."""
    names = list(attrs.get("activations", list(defaults) * directions))
    if len(names) != len(defaults) * directions:
        raise UnsupportedOpError(f"{where}: {len(names)} activations given, {len(defaults) * directions} expected")
    alphas, betas = list(attrs.get("activation_alpha", [])), list(attrs.get("activation_beta", []))
    funcs = []
    for name in names:
        entry = ACTIVATIONS.get(str(name).lower())
        if entry is None:
            raise UnsupportedOpError(f"{where}: activation {name!r} is not supported")
        f, alpha, beta = entry
        if alpha is not None and alphas:
            alpha = alphas.pop(0)
        if beta is not None and betas:
            beta = betas.pop(0)
        funcs.append(lambda x, f=f, a=np.float32(alpha or 0), b=np.float32(beta or 0): f(x, a, b))
    return [funcs[d * len(defaults) : (d + 1) * len(defaults)] for d in range(directions)]


def _split_directions(w: CsrParts | np.ndarray, shape: tuple[int, ...]) -> list:
    """A [directions, rows, cols] weight decoded as the matrix [directions, rows * cols] -> one
    [rows, cols] matrix (CSR or dense) per direction."""
    d, rows, cols = shape
    if isinstance(w, CsrParts):
        m = sp.csr_array(w.to_scipy().reshape((d * rows, cols)))
        return [m[i * rows : (i + 1) * rows] for i in range(d)]
    w = np.asarray(w, dtype=np.float32).reshape(shape)
    return [w[i] for i in range(d)]


class _Recurrent(Kernel):
    gates = 1
    input_forget = False  # LSTM's and GRU's attributes, read by the shared compiled call
    linear_before_reset = 0
    default_activations: tuple[str, ...] = ("Tanh",)
    weight_inputs = (1, 2)

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.where = f"{node.op} {node.name!r}"
        if len(node.inputs) < 3 or not node.inputs[1] or not node.inputs[2]:
            raise UnsupportedOpError(f"{self.where}: inputs X, W and R are required")
        direction = self.attrs.get("direction", "forward")
        if direction not in ("forward", "reverse", "bidirectional"):
            raise UnsupportedOpError(f"{self.where}: direction {direction!r} is not supported")
        self.reverse = direction == "reverse"
        self.directions = 2 if direction == "bidirectional" else 1
        self.layout = int(self.attrs.get("layout", 0))
        if self.layout not in (0, 1):
            raise UnsupportedOpError(f"{self.where}: layout {self.layout} is not supported")
        clip = self.attrs.get("clip")
        self.clip = None if clip is None else np.float32(clip)
        self.acts = _activations(self.attrs, self.default_activations, self.directions, self.where)
        defaults = [a.lower() for a in self.default_activations] * self.directions
        self.custom_activations = [str(a).lower() for a in self.attrs.get("activations", defaults)] != defaults
        self.compiled = (native.recurrent_scan is not None and not self.custom_activations
                         and (self.clip is None or self.clip >= 0))
        self.by_rows = ctx.requested_mode(node, node.inputs[1]) is None  # W's many-row product may go dense
        self.r_requested = ctx.requested_mode(node, node.inputs[2])
        self.modes, self.densities, self.shapes, self.products = {}, {}, {}, {}
        for i, columns in ((1, LARGE_BATCH), (2, 1)):  # W multiplies every step at once, R one step's batch
            name = node.inputs[i]
            if not ctx.is_const(name):
                continue
            shape = tuple(ctx.model.tensors[name].shape)
            self._check_weight(i, shape)
            mode, w, density = ctx.weight(node, name, columns_per_sample=columns)
            self.modes[i], self.densities[i], self.shapes[i] = mode, density, shape
            self.products[i] = self._products(i, mode, _split_directions(w, shape))
        self.weight_inputs = tuple(self.products)
        # a constant B (the model's own, the same array every run): its split biases are kept (_biases)
        self.constant_bias = len(node.inputs) > 3 and bool(node.inputs[3]) and ctx.is_const(node.inputs[3])
        self._split: tuple | None = None

    def _check_weight(self, i: int, shape: tuple[int, ...]) -> None:
        what = "W" if i == 1 else "R"
        if len(shape) != 3 or shape[0] != self.directions or shape[1] % self.gates or not shape[1]:
            raise UnsupportedOpError(f"{self.where}: {what} has shape {list(shape)}, expected "
                                     f"[{self.directions}, {self.gates} * hidden_size, ...]")
        hidden = shape[1] // self.gates
        given = self.attrs.get("hidden_size")
        if given is not None and given != hidden:
            raise UnsupportedOpError(f"{self.where}: hidden_size {given} but {what} has {shape[1]} rows "
                                     f"({self.gates} gates)")
        if i == 2 and shape[2] != hidden:
            raise UnsupportedOpError(f"{self.where}: R has shape {list(shape)}, expected "
                                     f"[{self.directions}, {shape[1]}, {hidden}]")

    def _products(self, i: int, mode: str, mats: list) -> list:
        """Per direction, the WeightMatmul(s) of input i: W's one, R's (subclasses split R); for the
        compiled loop, R's forms for it instead (a chosen sparse mode may keep the panels too; a
        requested one keeps what was asked for)."""
        if i == 2 and self.compiled:
            return [ScanWeight.of(m, self.gates, both=self.r_requested is None) for m in mats]
        return [[WeightMatmul(mode, m, self.threads, prefer="right", by_rows=i == 1 and self.by_rows)] for m in mats]

    def _weights(self, w, r) -> tuple[list, list, int, int]:
        """(W products, R products, hidden size, input size), building dense ones for weights fed at run time."""
        out = {}
        for i, value in ((1, w), (2, r)):
            if i in self.products:
                out[i] = (self.shapes[i], self.products[i])
                continue
            value = np.asarray(value, dtype=np.float32)
            self._check_weight(i, value.shape)
            out[i] = (value.shape, self._products(i, "dense", list(value)))
        (w_shape, wp), (r_shape, rp) = out[1], out[2]
        if w_shape[1] != r_shape[1]:
            raise ValueError(f"W has {w_shape[1]} rows, R has {r_shape[1]}")
        return wp, rp, r_shape[2], w_shape[2]

    def _run(self, x, w, r, b, seq, h0, c0=None, p=None) -> tuple:
        wp, rp, hidden, size_in = self._weights(w, r)
        x = np.asarray(x)
        if x.ndim != 3 or x.shape[2] != size_in:
            raise ValueError(f"X has shape {list(x.shape)}, expected rank 3 with {size_in} input features")
        given = x.dtype  # float16 and float64 are computed in float32 and given their own type back
        x = x.astype(np.float32, copy=False)
        if self.layout:
            x = x.swapaxes(0, 1)
        steps, batch = x.shape[:2]
        dirs, gh = self.directions, self.gates * hidden
        check_elements([steps, dirs, batch, gh], f"{self.node.op} gate inputs")
        bias = self._vector(b, (dirs, 2 * gh), "B")
        h = self._state(h0, (dirs, batch, hidden), "initial_h")
        c = self._state(c0, (dirs, batch, hidden), "initial_c")
        peep = None if p is None else self._vector(p, (dirs, 3 * hidden), "P")
        if seq is None:  # every sequence all the steps: nothing to check
            lens, valid = np.full(batch, steps, dtype=np.int64), None
        else:
            lens = np.asarray(seq).astype(np.int64).reshape(-1)
            if lens.shape != (batch,) or lens.min(initial=0) < 0 or lens.max(initial=0) > steps:
                raise ValueError(f"sequence_lens {lens.tolist()[:8]} does not fit batch {batch} and {steps} steps")
            valid = None if (lens == steps).all() else np.arange(steps)[:, None] < lens[None, :]  # [T, N]
        y = np.zeros((steps, dirs, batch, hidden), dtype=np.float32)
        hs, cs = np.empty(h.shape, np.float32), np.empty(c.shape, np.float32)  # C order, whatever h0 and c0 had
        for d in range(dirs):
            backwards = self.reverse or d == 1
            if self.compiled:
                xw = np.ascontiguousarray(wp[d][0].right(x.reshape(steps * batch, size_in))).reshape(steps, batch, gh)
                input_bias, recurrent_bias = self._biases(b, bias, d)  # added in the loop, not in a pass over xw
                hs[d], cs[d] = h[d], c[d]  # initial states in, final ones out
                native.recurrent_scan(self.node.op, xw, y, hs[d], cs[d] if self.gates == 4 else None, lens, d,
                                      backwards, **rp[d].arrays(batch), peephole=None if peep is None else peep[d],
                                      recurrent_bias=recurrent_bias, clip=self.clip, input_forget=self.input_forget,
                                      linear_before_reset=bool(self.linear_before_reset), threads=self.threads,
                                      input_bias=input_bias)
                continue
            order = None
            xs = x
            if backwards:  # each sequence read from its own last step
                t = np.arange(steps)[:, None]
                order = np.where(t < lens[None, :], lens[None, :] - 1 - t, t)  # [T, N], its own inverse
                xs = np.take_along_axis(x, order[:, :, None], axis=0)
            xw = wp[d][0].right(xs.reshape(steps * batch, size_in)).reshape(steps, batch, gh)
            xw += self._split_bias(bias[d])[0]
            ys, hs[d], cs[d] = self._scan(d, xw, rp[d], bias[d], None if peep is None else peep[d], h[d], c[d], valid)
            y[:, d] = ys if order is None else np.take_along_axis(ys, order[:, :, None], axis=0)
        empty = lens == 0
        if seq is not None and empty.any():  # no step at all: zero final states, as onnxruntime gives
            hs[:, empty] = 0
            cs[:, empty] = 0
        if self.layout:
            y, hs, cs = y.transpose(2, 0, 1, 3), hs.swapaxes(0, 1), cs.swapaxes(0, 1)
        if given in (np.float16, np.float64):
            return y.astype(given), hs.astype(given), cs.astype(given)
        return y, hs, cs

    def _vector(self, v, shape: tuple[int, int], what: str) -> np.ndarray:
        if v is None:
            return np.zeros(shape, dtype=np.float32)
        v = np.asarray(v, dtype=np.float32)
        if v.shape != shape:
            raise ValueError(f"{what} has shape {list(v.shape)}, expected {list(shape)}")
        return v

    def _state(self, v, shape: tuple[int, int, int], what: str) -> np.ndarray:
        if v is None:
            return np.zeros(shape, dtype=np.float32)
        v = np.asarray(v, dtype=np.float32)
        if self.layout:
            v = v.swapaxes(0, 1)
        if v.shape != shape:
            raise ValueError(f"{what} has shape {list(v.shape)}, expected {list(shape)} (directions, batch, hidden)")
        return v

    def _biases(self, b, bias: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray | None]:
        """``_split_bias`` of direction d, kept for a constant B while it is the same array (the one
        held keeps its identity from passing to another); a B fed at run time is split on every call."""
        if not self.constant_bias:
            return self._split_bias(bias[d])
        kept = self._split
        if kept is None or kept[0] is not b:
            kept = self._split = (b, [self._split_bias(bias[i]) for i in range(len(bias))])
        return kept[1][d]

    def _split_bias(self, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The biases W_b + R_b [2 * gates * hidden] as what adds to every step's input projection
        [gates * hidden], and the part that cannot (GRU's R_h bias under linear_before_reset), else None."""
        gh = bias.shape[0] // 2
        return bias[:gh] + bias[gh:], None

    def _clip(self, v: np.ndarray) -> np.ndarray:
        return v if self.clip is None else np.clip(v, -self.clip, self.clip)

    def _scan(self, d, xw, rp, bias, peep, h, c, valid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    @staticmethod
    def _keep(valid, t, new, old):
        """The new state where step t is inside the sequence, the old one past its end."""
        return new if valid is None else np.where(valid[t][:, None], new, old)

    def describe(self) -> dict:
        """W's kernel and density, R's as recurrent_*; no density for a weight fed at run time; where
        the step loop runs (compiled, or numpy and why)."""
        out = {"kernel": self.modes.get(1, "dense")}
        if 1 in self.densities:
            out["density"] = self.densities[1]
        forms = self.products.get(2)  # the compiled loop's ScanWeights (another backend's own products)
        out["recurrent_kernel"] = forms[0].kind if forms and isinstance(forms[0], ScanWeight) else \
            self.modes.get(2, "dense")
        if 2 in self.densities:
            out["recurrent_density"] = self.densities[2]
        if self.compiled:
            out["step_loop"] = "compiled"
        elif native.recurrent_scan is None:
            out["step_loop"] = "numpy (built without the compiled loop)"
        else:
            out["step_loop"] = "numpy (activations other than the defaults)" if self.custom_activations else \
                "numpy (negative clip)"
        return out


def _panels(m, gates: int) -> dict[str, np.ndarray]:
    """R [gates * hidden, hidden] (dense) as R^T packed once here (not per call) in unit-major panels of
    16 columns: panel (u // 16) * gates + g holds gate g's units u // 16 * 16 ... + 15 (zeros past
    hidden), so that a range of units (all their gates) is one run of panels."""
    hidden = m.shape[1]
    units = -(-hidden // PANEL) * PANEL
    padded = np.zeros((gates, units, hidden), dtype=np.float32)
    padded[:, :hidden] = np.asarray(m, dtype=np.float32).reshape(gates, hidden, hidden)
    panels = padded.reshape(gates, units // PANEL, PANEL, hidden).transpose(1, 0, 3, 2)
    return {"rt": memory.aligned(panels.reshape(gates * units // PANEL, hidden, PANEL))}


@dataclass
class ScanWeight:
    """One direction's R as native.recurrent_scan takes it: CSR arrays (pruned), the dense panels, or
    both, where each call takes the faster for its batch (see PANELS_MAX_BYTES)."""

    csr: dict[str, np.ndarray] | None
    panels: dict[str, np.ndarray] | None
    density: float

    @classmethod
    def of(cls, m, gates: int, both: bool = False) -> "ScanWeight":
        """m: R dense or scipy sparse; ``both``: a sparse m also keeps its panels where they are small."""
        if not sp.issparse(m):
            return cls(None, _panels(m, gates), 1.0)
        m = sp.csr_array(m)
        csr = {"indptr": m.indptr.astype(np.int64), "indices": m.indices.astype(np.int32),
               "values": m.data.astype(np.float32)}
        density = m.nnz / max(m.shape[0] * m.shape[1], 1)
        hidden = m.shape[1]
        small = gates * -(-hidden // PANEL) * PANEL * hidden * 4 <= PANELS_MAX_BYTES
        keep = both and small and density > CSR_MAX_DENSITY_FEW
        return cls(csr, _panels(m.toarray(), gates) if keep else None, density)

    @property
    def kind(self) -> str:
        """What describe() reports: "sparse", "dense", or "sparse+dense" (chosen per call)."""
        return "sparse+dense" if self.csr and self.panels else "sparse" if self.csr else "dense"

    def arrays(self, batch: int) -> dict[str, np.ndarray]:
        """The keyword arrays of native.recurrent_scan for a call on ``batch`` sequences."""
        if self.csr is None or self.panels is None:
            return self.csr or self.panels
        limit = CSR_MAX_DENSITY_MANY if batch >= 8 else CSR_MAX_DENSITY_FEW
        return self.panels if self.density > limit else self.csr


@register("RNN")
class RNN(_Recurrent):
    gates = 1
    default_activations = ("Tanh",)

    def __call__(self, x, w=None, r=None, b=None, sequence_lens=None, initial_h=None):
        y, h, _ = self._run(x, w, r, b, sequence_lens, initial_h)
        return y, h

    def _scan(self, d, xw, rp, bias, peep, h, c, valid):
        (f,) = self.acts[d]
        ys = np.zeros((xw.shape[0],) + h.shape, dtype=np.float32)
        for t in range(xw.shape[0]):
            new = f(self._clip(xw[t] + rp[0].right(h)))
            ys[t] = new if valid is None else np.where(valid[t][:, None], new, 0)
            h = self._keep(valid, t, new, h)
        return ys, h, c


@register("GRU")
class GRU(_Recurrent):
    """Gates z, r, h. linear_before_reset=0 (ONNX's default) multiplies R_h by r * H, a second
    product per step, so R is held as two products: R_zr [2 * hidden, hidden] and R_h."""

    gates = 3
    default_activations = ("Sigmoid", "Tanh")

    def __init__(self, node, ctx):
        self.linear_before_reset = int(node.attrs.get("linear_before_reset", 0))
        super().__init__(node, ctx)

    def _products(self, i, mode, mats):
        if i == 1 or self.linear_before_reset or self.compiled:
            return super()._products(i, mode, mats)
        hidden = mats[0].shape[0] // 3
        return [[WeightMatmul(mode, m[: 2 * hidden], self.threads, prefer="right"),
                 WeightMatmul(mode, m[2 * hidden :], self.threads, prefer="right")] for m in mats]

    def __call__(self, x, w=None, r=None, b=None, sequence_lens=None, initial_h=None):
        y, h, _ = self._run(x, w, r, b, sequence_lens, initial_h)
        return y, h

    def _split_bias(self, bias):
        hidden = bias.shape[0] // 6
        wb, rb = bias[: 3 * hidden], bias[3 * hidden :]
        if self.linear_before_reset:
            return np.concatenate([wb[: 2 * hidden] + rb[: 2 * hidden], wb[2 * hidden :]]), rb[2 * hidden :].copy()
        return wb + rb, None  # R_h's bias is outside the reset product: it adds to the input projection

    def _scan(self, d, xw, rp, bias, peep, h, c, valid):
        f, g = self.acts[d]
        hidden = h.shape[1]
        rb = bias[3 * hidden :]
        ys = np.zeros((xw.shape[0],) + h.shape, dtype=np.float32)
        for t in range(xw.shape[0]):
            x_t = xw[t]
            rh = rp[0].right(h)  # [N, 3 * hidden], or [N, 2 * hidden] when R_h waits for the reset gate
            zr = f(self._clip(x_t[:, : 2 * hidden] + rh[:, : 2 * hidden]))  # z and r in one call
            z, reset = zr[:, :hidden], zr[:, hidden:]
            if self.linear_before_reset:
                cand = g(self._clip(x_t[:, 2 * hidden :] + reset * (rh[:, 2 * hidden :] + rb[2 * hidden :])))
            else:
                cand = g(self._clip(x_t[:, 2 * hidden :] + rp[1].right(np.ascontiguousarray(reset * h))))
            new = (1 - z) * cand + z * h
            ys[t] = new if valid is None else np.where(valid[t][:, None], new, 0)
            h = self._keep(valid, t, new, h)
        return ys, h, c


@register("LSTM")
class LSTM(_Recurrent):
    """Gates i, o, f, c; peepholes P [i, o, f]; input_forget couples f = 1 - i."""

    gates = 4
    default_activations = ("Sigmoid", "Tanh", "Tanh")

    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.input_forget = bool(self.attrs.get("input_forget", 0))

    def __call__(self, x, w=None, r=None, b=None, sequence_lens=None, initial_h=None, initial_c=None, p=None):
        return self._run(x, w, r, b, sequence_lens, initial_h, initial_c, p)

    def _scan(self, d, xw, rp, bias, peep, h, c, valid):
        f, g, act_h = self.acts[d]
        hidden = h.shape[1]
        ys = np.zeros((xw.shape[0],) + h.shape, dtype=np.float32)
        for t in range(xw.shape[0]):
            gates = xw[t] + rp[0].right(h)
            if peep is None:  # i, o and f in one activation call
                iof = f(self._clip(gates[:, : 3 * hidden]))
                i, o = iof[:, :hidden], iof[:, hidden : 2 * hidden]
                forget = 1 - i if self.input_forget else iof[:, 2 * hidden :]
                cell = forget * c + i * g(self._clip(gates[:, 3 * hidden :]))
            else:
                p_i, p_o, p_f = peep[:hidden], peep[hidden : 2 * hidden], peep[2 * hidden :]
                i = f(self._clip(gates[:, :hidden] + p_i * c))
                forget = 1 - i if self.input_forget else f(self._clip(gates[:, 2 * hidden : 3 * hidden] + p_f * c))
                cell = forget * c + i * g(self._clip(gates[:, 3 * hidden :]))
                o = f(self._clip(gates[:, hidden : 2 * hidden] + p_o * cell))
            new = o * act_h(cell)  # clip bounds the gates' inputs, not the cell state (as onnxruntime)
            ys[t] = new if valid is None else np.where(valid[t][:, None], new, 0)
            h = self._keep(valid, t, new, h)
            c = self._keep(valid, t, cell, c)
        return ys, h, c
