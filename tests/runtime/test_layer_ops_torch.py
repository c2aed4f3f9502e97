"""Decoder and recurrent layers exported from PyTorch (``torch.onnx.export``), converted with --exact
and run by dcm: outputs within 1e-4 of torch's (relative to the largest output), at a second batch
size and sequence length where the export declared them symbolic; pruned recurrent weights run as
sparse products."""
import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from dcm.converters import ConvertOptions, from_onnx  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402
from dcm.runtime.cpu import pixel_gemm  # noqa: E402

REL_ERROR = 1e-4


def _export(module: nn.Module, args: tuple, names: list[str], dynamic: dict | None = None,
            dynamo: bool = False) -> bytes:
    buf = io.BytesIO()
    if dynamo:
        torch.onnx.export(module, args, buf, dynamo=True, input_names=names, dynamic_shapes=dynamic)
    else:
        torch.onnx.export(module, args, buf, dynamo=False, input_names=names, dynamic_axes=dynamic)
    return buf.getvalue()


def _outputs(module: nn.Module, args: tuple) -> list[np.ndarray]:
    with torch.no_grad():
        out = module(*args)
    flat = []
    for o in out if isinstance(out, tuple) else (out,):
        flat.extend(o if isinstance(o, tuple) else (o,))
    return [o.numpy() for o in flat]


def _check(sess: InferenceSession, module: nn.Module, args: tuple, names: list[str]) -> None:
    got = sess.run(None, {n: a.numpy() for n, a in zip(names, args)})
    want = _outputs(module, args)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert np.abs(g - w).max() <= REL_ERROR * max(np.abs(w).max(), 1e-6)


class _Decoder(nn.Module):
    """A U-Net decoder's layers: transposed convolutions, upsampling, pixel shuffle."""

    def __init__(self, up: nn.Module):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.up = up

    def forward(self, x):
        return self.up(torch.relu(self.conv(x)))


class _Interpolate(nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs

    def forward(self, x):
        return F.interpolate(x, **self.kwargs)


LAYERS_2D = {
    "convtranspose2d": nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1),
    "convtranspose2d-groups-dilation": nn.ConvTranspose2d(8, 4, 3, stride=(2, 3), padding=(2, 1), output_padding=(1, 2),
                                                          groups=2, dilation=2),
    "upsample-nearest": nn.Upsample(scale_factor=2, mode="nearest"),
    "upsample-bilinear": nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
    "upsample-bilinear-align": nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
    "upsample-bicubic": nn.Upsample(scale_factor=1.5, mode="bicubic", align_corners=False),
    "interpolate-size": _Interpolate(size=(13, 7), mode="bilinear", align_corners=True),
    "interpolate-nearest": _Interpolate(scale_factor=1.7, mode="nearest"),
    "pixelshuffle": nn.PixelShuffle(2),
}


@pytest.mark.parametrize("name", list(LAYERS_2D))
def test_decoder_layers_match_torch(name):
    torch.manual_seed(0)
    model = _Decoder(LAYERS_2D[name]).eval()
    x = torch.randn(2, 3, 12, 10)
    sess = InferenceSession(from_onnx(_export(model, (x,), ["x"], {"x": {0: "batch"}}), ConvertOptions(exact=True)))
    _check(sess, model, (x,), ["x"])
    _check(sess, model, (torch.randn(3, 3, 12, 10),), ["x"])


class _Volume(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(2, 6, (3, 2, 3), stride=(1, 2, 1), padding=(1, 0, 1), dilation=(2, 1, 1), groups=2)
        self.pool = nn.MaxPool3d(2, stride=2, ceil_mode=True)
        self.avg = nn.AvgPool3d((1, 2, 2), padding=(0, 1, 1), count_include_pad=False)
        self.up = nn.ConvTranspose3d(6, 3, 2, stride=2)
        self.conv1d = nn.ConvTranspose1d(3, 4, 4, stride=3, padding=1, output_padding=2)

    def forward(self, x):
        y = self.up(self.avg(self.pool(torch.relu(self.conv(x)))))
        y = F.interpolate(y, scale_factor=(1.0, 2.0, 0.5), mode="trilinear")
        return y, self.conv1d(y.flatten(2))


def test_volumetric_layers_match_torch():
    torch.manual_seed(0)
    model = _Volume().eval()
    x = torch.randn(1, 2, 7, 9, 8)
    sess = InferenceSession(from_onnx(_export(model, (x,), ["x"], {"x": {0: "batch"}}), ConvertOptions(exact=True)))
    _check(sess, model, (x,), ["x"])
    _check(sess, model, (torch.randn(2, 2, 7, 9, 8),), ["x"])


class _Temporal(nn.Module):
    """A speech / TCN stack of 1-D layers: strided, dilated (a residual), depthwise with SiLU, grouped,
    pooled, 1x1 and transposed."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv1d(48, 64, 11, stride=2, padding=5), nn.BatchNorm1d(64), nn.ReLU())
        self.dilated = nn.Conv1d(64, 64, 3, padding=4, dilation=4)
        self.depthwise = nn.Conv1d(64, 64, 5, padding=2, groups=64)
        self.grouped = nn.Conv1d(64, 64, 3, padding=1, groups=4)
        self.pool, self.avg = nn.MaxPool1d(3, 2, 1), nn.AvgPool1d(2)
        self.pointwise = nn.Conv1d(64, 32, 1)
        self.up = nn.ConvTranspose1d(32, 16, 4, stride=2, padding=1)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.dilated(x)) + x
        x = self.grouped(F.silu(self.depthwise(x)))
        return self.up(torch.relu(self.pointwise(self.avg(self.pool(x)))))


@pytest.mark.parametrize("kept", [1.0, 0.3])
def test_temporal_convolutions_match_torch(kept):
    """Dense (the stem: the packed GEMM over output pixels, 48 x 11 deep) and pruned (the
    direct sparse kernel), at two lengths and batch sizes."""
    torch.manual_seed(0)
    model = _Temporal().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 3:
                p.mul_(torch.rand_like(p) < kept)
    x = torch.randn(1, 48, 200)
    sess = InferenceSession(from_onnx(_export(model, (x,), ["x"], {"x": {0: "batch", 2: "time"}}),
                                      ConvertOptions(exact=True)))
    convs = [d for d in sess.describe() if d["op"] == "Conv"]
    assert len(convs) == 5
    if kept < 1:
        assert any(d["kernel"] == "direct" for d in convs)
    else:  # the packed GEMM over output pixels where the CPU has AVX-512, im2col + BLAS elsewhere
        assert any("few_pixels" in d for d in convs) == pixel_gemm.available()
    _check(sess, model, (x,), ["x"])
    _check(sess, model, (torch.randn(3, 48, 77),), ["x"])


class _Recurrent(nn.Module):
    """A recurrent layer, returning the output sequence and the final states."""

    def __init__(self, layer: nn.Module, states: bool):
        super().__init__()
        self.layer = layer
        self.states = states

    def forward(self, x, *state):
        if not self.states:
            return self.layer(x)
        return self.layer(x, state if len(state) > 1 else state[0])


RECURRENT = {
    "lstm": (nn.LSTM, {"num_layers": 2}),
    "lstm-bidirectional-batch-first": (nn.LSTM, {"num_layers": 2, "bidirectional": True, "batch_first": True}),
    "gru": (nn.GRU, {"num_layers": 2, "bidirectional": True}),
    "gru-batch-first": (nn.GRU, {"batch_first": True}),
    "rnn-relu": (nn.RNN, {"num_layers": 2, "nonlinearity": "relu", "bidirectional": True}),
    "rnn": (nn.RNN, {"batch_first": True}),
}


def _recurrent(name: str, states: bool, hidden: int = 8, size: int = 6):
    cls, kwargs = RECURRENT[name]
    layer = cls(size, hidden, **kwargs)
    model = _Recurrent(layer, states).eval()
    first = kwargs.get("batch_first", False)
    layers = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)

    def inputs(batch, steps):
        x = torch.randn(batch, steps, size) if first else torch.randn(steps, batch, size)
        if not states:
            return (x,)
        h = torch.randn(layers, batch, hidden)
        return (x, h, torch.randn(layers, batch, hidden)) if cls is nn.LSTM else (x, h)

    names = ["x", "h0", "c0"][: len(inputs(1, 1))]
    batch_axis, seq_axis = (0, 1) if first else (1, 0)
    dynamic = {"x": {batch_axis: "batch", seq_axis: "seq"}, "h0": {1: "batch"}, "c0": {1: "batch"}}
    return model, inputs, names, {n: dynamic[n] for n in names}


@pytest.mark.parametrize("states", [False, True], ids=["zero-states", "initial-states"])
@pytest.mark.parametrize("name", list(RECURRENT))
def test_recurrent_layers_match_torch(name, states):
    torch.manual_seed(0)
    model, inputs, names, dynamic = _recurrent(name, states)
    args = inputs(3, 5)
    sess = InferenceSession(from_onnx(_export(model, args, names, dynamic), ConvertOptions(exact=True)))
    _check(sess, model, args, names)
    _check(sess, model, inputs(2, 9), names)  # symbolic batch and sequence length


class _LearnedStates(nn.Module):
    """Fixed (learned) initial states, broadcast over the batch: constants in the exported graph."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(6, 8, num_layers=2, batch_first=True)
        self.h0 = nn.Parameter(torch.randn(2, 1, 8))
        self.c0 = nn.Parameter(torch.randn(2, 1, 8))

    def forward(self, x):
        batch = x.shape[0]
        return self.lstm(x, (self.h0.expand(-1, batch, -1).contiguous(), self.c0.expand(-1, batch, -1).contiguous()))


def test_lstm_with_fixed_initial_states_matches_torch():
    torch.manual_seed(0)
    model = _LearnedStates().eval()
    x = torch.randn(3, 5, 6)
    sess = InferenceSession(from_onnx(_export(model, (x,), ["x"], {"x": {0: "batch", 1: "seq"}}),
                                      ConvertOptions(exact=True)))
    _check(sess, model, (x,), ["x"])
    _check(sess, model, (torch.randn(2, 7, 6),), ["x"])


def test_pruned_lstm_runs_sparse_and_matches_torch():
    torch.manual_seed(0)
    model, inputs, names, dynamic = _recurrent("lstm-bidirectional-batch-first", False, hidden=64, size=48)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "weight" in name:  # 90% of every W and R pruned
                p.mul_(torch.rand_like(p) >= 0.9)
    args = inputs(2, 6)
    sess = InferenceSession(from_onnx(_export(model, args, names, dynamic), ConvertOptions(exact=True)))
    lstms = [d for d in sess.describe() if d["op"] == "LSTM"]
    assert len(lstms) == 2
    for d in lstms:
        assert d["kernel"] == "sparse" and d["recurrent_kernel"] == "sparse+dense"  # R's forms by batch
        assert d["density"] < 0.15 and d["recurrent_density"] < 0.15
    _check(sess, model, args, names)
    _check(sess, model, inputs(1, 11), names)


def test_decoder_exported_by_dynamo_matches_torch():
    torch.manual_seed(0)
    model = _Decoder(nn.Sequential(nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1),
                                   nn.Upsample(scale_factor=2, mode="bilinear"))).eval()
    x = torch.randn(2, 3, 12, 10)
    onnx_bytes = _export(model, (x,), ["x"], {"x": {0: torch.export.Dim("batch", max=64)}}, dynamo=True)
    sess = InferenceSession(from_onnx(onnx_bytes, ConvertOptions(exact=True)))
    _check(sess, model, (x,), ["x"])
    _check(sess, model, (torch.randn(3, 3, 12, 10),), ["x"])


@pytest.mark.parametrize("dynamo", [False, True])
def test_fold_becomes_col2im(dynamo):
    """torch's Fold (the inverse of an Unfold: overlapping patches summed back) exports as Col2Im."""

    class Refold(nn.Module):
        def forward(self, x):
            patches = F.unfold(x, kernel_size=(3, 2), dilation=(1, 2), padding=1, stride=(2, 1))
            return F.fold(patches * 2, output_size=(9, 8), kernel_size=(3, 2), dilation=(1, 2), padding=1,
                          stride=(2, 1))

    module, args = Refold().eval(), (torch.randn(2, 3, 9, 8),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        buf = io.BytesIO()
        torch.onnx.export(module, args, buf, input_names=["x"], opset_version=18, dynamo=dynamo)
    model = from_onnx(buf.getvalue(), ConvertOptions(exact=True))
    assert "Col2Im" in {n.op for n in model.nodes}
    _check(InferenceSession(model), module, args, ["x"])
