"""DFT and STFT, the spectral front ends of audio models (a spectrogram computed in the graph), on
numpy's FFT. A complex tensor is ONNX's real form: a last axis of 2 (real, imaginary), or of 1 for a
real signal. DFT's axis is an attribute up to opset 19 (default 1) and an input from opset 20
(default -2); ``onesided`` keeps the n // 2 + 1 non-redundant bins, and with ``inverse`` takes them
back to a real signal (numpy's irfft), as onnx's reference does.
"""
from __future__ import annotations

import numpy as np

from dcm.runtime.cpu.registry import register
from dcm.runtime.cpu.shape import check_elements, normal_axis
from dcm.runtime.kernel import Kernel


def _complex(x: np.ndarray) -> np.ndarray:
    """ONNX's real form [..., 1 or 2] as a complex (or real) numpy array [...]."""
    if x.ndim < 2 or x.shape[-1] not in (1, 2):
        raise ValueError(f"input of shape {list(x.shape)}: a last axis of 1 (real) or 2 (complex) expected")
    return x[..., 0] if x.shape[-1] == 1 else x[..., 0] + 1j * x[..., 1]


def _real_form(y: np.ndarray, dtype) -> np.ndarray:
    parts = (y.real, y.imag) if np.iscomplexobj(y) else (y, np.zeros_like(y))
    return np.stack(parts, axis=-1).astype(dtype)


def _int(value, what: str) -> int:
    value = np.asarray(value).reshape(-1)
    if value.size != 1:
        raise ValueError(f"{what} of {value.size} values, one expected")
    return int(value[0])


@register("DFT")
class DFT(Kernel):
    def __init__(self, node, ctx):
        super().__init__(node, ctx)
        self.axis_default = -2 if ctx is not None and ctx.model.opset >= 20 else int(self.attrs.get("axis", 1))

    def __call__(self, x, dft_length=None, axis=None):
        axis = normal_axis(self.axis_default if axis is None else _int(axis, "axis"), x.ndim)
        if axis == x.ndim - 1:
            raise ValueError("axis is the last one, which holds the real and imaginary parts")
        inverse, onesided = bool(self.attrs.get("inverse", 0)), bool(self.attrs.get("onesided", 0))
        if dft_length is not None:
            n = _int(dft_length, "dft_length")
        else:
            n = 2 * (x.shape[axis] - 1) if inverse and onesided else x.shape[axis]
        if n < 1:
            raise ValueError(f"dft_length {n}: at least 1 expected")
        check_elements([*x.shape[:axis], n, *x.shape[axis + 1 :], 2], "DFT output")
        signal = _complex(x)
        if inverse:
            y = np.fft.irfft(signal, n=n, axis=axis)[..., None] if onesided else _real_form(
                np.fft.ifft(signal, n=n, axis=axis), x.dtype)
            return (y.astype(x.dtype),)
        y = np.fft.fft(signal, n=n, axis=axis)
        if onesided:
            y = np.take(y, range(n // 2 + 1), axis=axis)
        return (_real_form(y, x.dtype),)


@register("STFT")
class STFT(Kernel):
    """Frames of ``frame_length`` values ``frame_step`` apart (as many as fit), each times ``window``,
    then the DFT of each: [batch, frames, bins, 2]; ``onesided`` (the default) keeps n // 2 + 1 bins."""

    def __call__(self, signal, frame_step, window=None, frame_length=None):
        step = _int(frame_step, "frame_step")
        length = _int(frame_length, "frame_length") if frame_length is not None else None
        if window is not None and length is not None and window.shape != (length,):
            raise ValueError(f"window of shape {list(window.shape)} for frames of {length}")
        length = length if length is not None else (window.shape[0] if window is not None else None)
        if length is None or step < 1 or length < 1:
            raise ValueError("frame_length (or a window) and a frame_step of at least 1 are needed")
        x = _complex(signal)  # [batch, samples]
        if x.ndim != 2:
            raise ValueError(f"signal of shape {list(signal.shape)}: [batch, samples, 1 or 2] expected")
        frames = 1 + (x.shape[1] - length) // step if x.shape[1] >= length else 0
        check_elements([x.shape[0], frames, length, 2], "STFT output")
        starts = np.arange(frames)[:, None] * step + np.arange(length)[None, :]
        framed = x[:, starts]  # [batch, frames, length]
        if window is not None:
            framed = framed * window.astype(np.float64)
        y = np.fft.fft(framed, axis=-1)
        if self.attrs.get("onesided", 1):
            y = y[..., : length // 2 + 1]
        return (_real_form(y, signal.dtype),)
