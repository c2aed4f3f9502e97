"""LSTM, GRU and RNN on torch, step for step the CPU kernels' algorithm (``cpu/recurrent.py``): the
input projection of all time steps is one matmul up front, the loop over time does the recurrent
matmul and the gates. torch's fused nn.LSTM/nn.GRU are not used: they have no clip, peepholes,
input_forget, per-sequence lengths or ONNX's other activations, and their GRU is linear_before_reset=1
only. Weights are decoded dense once at load (a recurrent step's matmul is one small batch: a
sparse product would not win on a GPU). Attributes, checks and weight shapes are the CPU kernels'."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from dcm.runtime.cpu import recurrent as cpu
from dcm.runtime.cpu.shape import check_elements
from dcm.runtime.gpu.activation import softplus
from dcm.runtime.gpu.registry import register

# ONNX activation name -> torch function of (x, alpha, beta), as cpu.ACTIVATIONS
ACTIVATIONS = {
    "relu": lambda x, a, b: torch.relu(x),
    "tanh": lambda x, a, b: torch.tanh(x),
    "sigmoid": lambda x, a, b: torch.sigmoid(x),
    "affine": lambda x, a, b: a * x + b,
    "leakyrelu": lambda x, a, b: torch.where(x >= 0, x, a * x),
    "thresholdedrelu": lambda x, a, b: torch.where(x > a, x, torch.zeros_like(x)),
    "scaledtanh": lambda x, a, b: a * torch.tanh(b * x),
    "hardsigmoid": lambda x, a, b: torch.clamp(a * x + b, 0, 1),
    "elu": lambda x, a, b: torch.where(x >= 0, x, a * torch.expm1(torch.clamp_max(x, 0))),
    "softsign": lambda x, a, b: x / (1 + x.abs()),
    "softplus": lambda x, a, b: softplus(x),
}


def _torch_activations(attrs: dict, defaults: tuple[str, ...], directions: int) -> list[list]:
    """Per direction, torch callables with the alpha/beta the CPU kernel's ``_activations`` gives
    (consumed in order by the activations that take them)."""
    names = list(attrs.get("activations", list(defaults) * directions))
    alphas, betas = list(attrs.get("activation_alpha", [])), list(attrs.get("activation_beta", []))
    funcs = []
    for name in names:
        _, alpha, beta = cpu.ACTIVATIONS[str(name).lower()]
        if alpha is not None and alphas:
            alpha = alphas.pop(0)
        if beta is not None and betas:
            beta = betas.pop(0)
        f = ACTIVATIONS[str(name).lower()]
        funcs.append(lambda x, f=f, a=float(np.float32(alpha or 0)), b=float(np.float32(beta or 0)): f(x, a, b))
    n = len(defaults)
    return [funcs[d * n : (d + 1) * n] for d in range(directions)]


class _TorchRecurrent:
    """Mixed into a CPU recurrent kernel: ``products[i][d]`` is direction d's dense weight on the device."""

    def __init__(self, node, ctx):
        self.device = ctx.device
        super().__init__(node, ctx)
        self.torch_acts = _torch_activations(self.attrs, self.default_activations, self.directions)

    def _products(self, i, mode, mats) -> list:
        """Each direction's [rows, cols] matrix, dense (called by the CPU kernel's loader)."""
        return [torch.tensor(m.toarray() if sp.issparse(m) else np.asarray(m, dtype=np.float32), device=self.device)
                for m in mats]

    def _weights(self, w, r):
        out = {}
        for i, value in ((1, w), (2, r)):
            if i in self.products:
                out[i] = (self.shapes[i], self.products[i])
                continue
            value = value.float()
            self._check_weight(i, tuple(value.shape))
            out[i] = (tuple(value.shape), list(value))
        (w_shape, wp), (r_shape, rp) = out[1], out[2]
        if w_shape[1] != r_shape[1]:
            raise ValueError(f"W has {w_shape[1]} rows, R has {r_shape[1]}")
        return wp, rp, r_shape[2], w_shape[2]

    def _tensor(self, v, shape: tuple, what: str, state: bool = False) -> torch.Tensor:
        if v is None:
            return torch.zeros(shape, dtype=torch.float32, device=self.device)
        v = v.float()
        if state and self.layout:
            v = v.transpose(0, 1)
        if tuple(v.shape) != shape:
            raise ValueError(f"{what} has shape {list(v.shape)}, expected {list(shape)}")
        return v

    def _clip(self, v: torch.Tensor) -> torch.Tensor:
        return v if self.clip is None else torch.clamp(v, -float(self.clip), float(self.clip))

    def _run(self, x, w, r, b, seq, h0, c0=None, p=None) -> tuple:
        wp, rp, hidden, size_in = self._weights(w, r)
        if x.dim() != 3 or x.shape[2] != size_in:
            raise ValueError(f"X has shape {list(x.shape)}, expected rank 3 with {size_in} input features")
        given, x = x.dtype, x.float()  # float16 and float64 are computed in float32, as on the CPU
        if self.layout:
            x = x.transpose(0, 1)
        steps, batch = x.shape[:2]
        dirs, gh = self.directions, self.gates * hidden
        check_elements([steps, dirs, batch, gh], f"{self.node.op} gate inputs")
        bias = self._tensor(b, (dirs, 2 * gh), "B")
        h = self._tensor(h0, (dirs, batch, hidden), "initial_h", state=True)
        c = self._tensor(c0, (dirs, batch, hidden), "initial_c", state=True)
        peep = None if p is None else self._tensor(p, (dirs, 3 * hidden), "P")
        lens = (torch.full((batch,), steps, dtype=torch.int64, device=x.device) if seq is None
                else seq.long().reshape(-1))
        if tuple(lens.shape) != (batch,) or (batch and (int(lens.min()) < 0 or int(lens.max()) > steps)):
            raise ValueError(f"sequence_lens {lens.tolist()[:8]} does not fit batch {batch} and {steps} steps")
        t = torch.arange(steps, device=x.device)[:, None]
        valid = None if bool((lens == steps).all()) else t < lens[None, :]  # [T, N]
        ys, hs, cs = [], [], []
        for d in range(dirs):
            order, xs = None, x
            if self.reverse or d == 1:  # each sequence read from its own last step
                order = torch.where(t < lens[None, :], lens[None, :] - 1 - t, t)  # [T, N], its own inverse
                xs = torch.gather(x, 0, order[:, :, None].expand(-1, -1, size_in))
            xw = (xs.reshape(steps * batch, size_in) @ wp[d].T).reshape(steps, batch, gh)
            y_d, h_d, c_d = self._scan(d, xw, rp[d], bias[d], None if peep is None else peep[d], h[d], c[d], valid)
            if order is not None:
                y_d = torch.gather(y_d, 0, order[:, :, None].expand(-1, -1, hidden))
            ys.append(y_d)
            hs.append(h_d)
            cs.append(c_d)
        y, hs, cs = torch.stack(ys, 1), torch.stack(hs), torch.stack(cs)
        empty = lens == 0
        if bool(empty.any()):  # no step at all: zero final states, as onnxruntime gives
            hs, cs = hs.masked_fill(empty[None, :, None], 0), cs.masked_fill(empty[None, :, None], 0)
        if self.layout:
            y, hs, cs = y.permute(2, 0, 1, 3), hs.transpose(0, 1), cs.transpose(0, 1)
        return y.contiguous().to(given), hs.contiguous().to(given), cs.contiguous().to(given)

    def describe(self) -> dict:
        return {**super().describe(), "kernel": "dense", "recurrent_kernel": "dense"}  # decoded dense at load

    @staticmethod
    def _keep(valid, t, new, old):
        return new if valid is None else torch.where(valid[t][:, None], new, old)

    @staticmethod
    def _out(valid, t, new):
        return new if valid is None else torch.where(valid[t][:, None], new, torch.zeros_like(new))


@register("RNN")
class RNN(_TorchRecurrent, cpu.RNN):
    def _scan(self, d, xw, r, bias, peep, h, c, valid):
        (f,) = self.torch_acts[d]
        xw = xw + bias[: xw.shape[2]] + bias[xw.shape[2] :]
        ys = []
        for t in range(xw.shape[0]):
            new = f(self._clip(xw[t] + h @ r.T))
            ys.append(self._out(valid, t, new))
            h = self._keep(valid, t, new, h)
        return _stack(ys, xw, h), h, c


@register("GRU")
class GRU(_TorchRecurrent, cpu.GRU):
    def _scan(self, d, xw, r, bias, peep, h, c, valid):
        f, g = self.torch_acts[d]
        hidden = h.shape[1]
        wb, rb = bias[: 3 * hidden], bias[3 * hidden :]
        xw = xw + wb
        if self.linear_before_reset:
            xw = torch.cat([xw[..., : 2 * hidden] + rb[: 2 * hidden], xw[..., 2 * hidden :]], -1)
            r_all = r
        else:
            xw = xw + rb  # R_h's bias is outside the reset product: it folds into the input projection
            r_all, r_h = r[: 2 * hidden], r[2 * hidden :]
        ys = []
        for t in range(xw.shape[0]):
            x_t = xw[t]
            rh = h @ r_all.T
            zr = f(self._clip(x_t[:, : 2 * hidden] + rh[:, : 2 * hidden]))
            z, reset = zr[:, :hidden], zr[:, hidden:]
            if self.linear_before_reset:
                cand = g(self._clip(x_t[:, 2 * hidden :] + reset * (rh[:, 2 * hidden :] + rb[2 * hidden :])))
            else:
                cand = g(self._clip(x_t[:, 2 * hidden :] + (reset * h) @ r_h.T))
            new = (1 - z) * cand + z * h
            ys.append(self._out(valid, t, new))
            h = self._keep(valid, t, new, h)
        return _stack(ys, xw, h), h, c


@register("LSTM")
class LSTM(_TorchRecurrent, cpu.LSTM):
    def _scan(self, d, xw, r, bias, peep, h, c, valid):
        f, g, act_h = self.torch_acts[d]
        hidden = h.shape[1]
        xw = xw + bias[: 4 * hidden] + bias[4 * hidden :]
        ys = []
        for t in range(xw.shape[0]):
            gates = xw[t] + h @ r.T
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
            ys.append(self._out(valid, t, new))
            h = self._keep(valid, t, new, h)
            c = self._keep(valid, t, cell, c)
        return _stack(ys, xw, h), h, c


def _stack(ys: list, xw: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The steps' outputs as [T, N, hidden] (a sequence of no steps too)."""
    return torch.stack(ys) if ys else xw.new_zeros((0, *h.shape))
