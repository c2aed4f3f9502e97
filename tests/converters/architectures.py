"""Small torch.nn models of the architectures users bring, and their export with both torch exporters.

Each builder returns an ``Arch``: the module (random weights, eval mode), a function making its
inputs for a (batch, sequence) size, the input/output names and the symbolic axes to export.
Dimensions are tiny so that both exporters and every run stay fast; the weight matrices are still
big enough (>= 64 elements) for the converter to code them.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

D = 64  # model width of the text models (weights large enough that coding them pays: encode_smallest)
HEADS = 4
VOCAB = 128


@dataclass
class Arch:
    module: nn.Module
    make_inputs: Callable[[int, int], tuple[torch.Tensor, ...]]  # (batch, sequence) -> inputs
    input_names: list[str]
    output_names: list[str]
    axes: dict[str, dict[int, str]]  # symbolic axes per input/output name
    weights: dict[str, tuple[int, ...]]  # ONNX op -> input positions of weights the converter must code
    # The TorchScript exporter traces MultiheadAttention's sequence length into a Reshape constant
    # (onnxruntime fails on such a file at any other length too): run those at the export's length.
    traced_sequence: bool = False


def _padding_mask(batch: int, seq: int) -> torch.Tensor:
    """True = padded. Sequence b is padded from position seq - b % seq on, never at position 0, so
    that no query attends to nothing (a fully masked row is NaN in torch and ONNX alike)."""
    pos = torch.arange(seq).expand(batch, seq)
    keep = torch.clamp(seq - torch.arange(batch) % seq, min=1).unsqueeze(1)
    return pos >= keep


def _causal(seq: int, like: torch.Tensor) -> torch.Tensor:
    """The float causal mask built from the run-time sequence length (Trilu/Range/Where in ONNX)."""
    return torch.triu(torch.full((seq, seq), float("-inf"), dtype=like.dtype), diagonal=1)


class EncoderLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(D, HEADS, dim_feedforward=2 * D, dropout=0.0, batch_first=True)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        return self.layer(x, src_mask=_causal(x.shape[1], x), src_key_padding_mask=pad)


class DecoderLayer(nn.Module):
    """Pre-norm with GELU (GPT-style), where the encoder layer is post-norm with ReLU (BERT-style)."""

    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerDecoderLayer(D, HEADS, dim_feedforward=2 * D, dropout=0.0, batch_first=True,
                                                norm_first=True, activation="gelu")

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        return self.layer(tgt, memory, tgt_mask=_causal(tgt.shape[1], tgt), tgt_key_padding_mask=pad,
                          memory_key_padding_mask=pad)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(D, HEADS, batch_first=True)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.attn(x, x, x, key_padding_mask=pad, need_weights=True)


class EmbeddingNorm(nn.Module):
    """Token embedding, LayerNorm, then GELU with each approximation (erf and tanh), one output each."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D)
        self.norm = nn.LayerNorm(D)
        self.gelu = nn.GELU(approximate="none")
        self.gelu_tanh = nn.GELU(approximate="tanh")
        self.proj = nn.Linear(D, D)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norm(self.embed(ids))
        return self.proj(self.gelu(h)), self.proj(self.gelu_tanh(h))


class Recurrent(nn.Module):
    def __init__(self, cell: type[nn.Module]):
        super().__init__()
        self.rnn = cell(16, 32, num_layers=2, bidirectional=True, batch_first=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, state = self.rnn(x)
        h = state[0] if isinstance(state, tuple) else state
        return y, h


class SqueezeExcite(nn.Module):
    """EfficientNet-style SE: the pooled vector is flattened and reshaped back with sizes read from
    the input at run time (``x.shape``), a Reshape whose shape is computed from the symbolic batch."""

    def __init__(self, channels: int, gate: nn.Module):
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // 2)
        self.fc2 = nn.Linear(channels // 2, channels)
        self.act = nn.SiLU()
        self.gate = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[0], x.shape[1]
        s = x.mean(dim=(2, 3)).reshape(b, c)
        s = self.gate(self.fc2(self.act(self.fc1(s))))
        return x * s.reshape(b, c, 1, 1)


class MobileBlock(nn.Module):
    """MobileNetV3 / EfficientNet blocks: expand (Hardswish), depthwise (SiLU), SE with hard-sigmoid and
    with sigmoid gates, project, residual."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.expand = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.Hardswish())
        self.depthwise = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(32), nn.SiLU())
        self.se_hard = SqueezeExcite(32, nn.Hardsigmoid())
        self.se = SqueezeExcite(32, nn.Sigmoid())
        self.project = nn.Sequential(nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.project(self.se(self.se_hard(self.depthwise(self.expand(x)))))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x + y, 1), 1))


class Decoder(nn.Module):
    """U-Net-style decoder: ConvTranspose2d, nearest and bilinear Upsample, PixelShuffle."""

    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1)
        self.nearest = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.bilinear = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.to_shuffle = nn.Conv2d(8, 12, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.up(x))
        x = torch.relu(self.conv(self.nearest(x)))
        return self.shuffle(self.to_shuffle(self.bilinear(x)))


def _text(batch: int, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, seq, D), _padding_mask(batch, seq)


def _batch_seq(*names: str) -> dict[str, dict[int, str]]:
    return {n: {0: "batch", 1: "seq"} for n in names}


def build(name: str) -> Arch:
    """A fresh model (seeded) by name; ``NAMES`` lists them."""
    torch.manual_seed(0)
    text_weights = {"MatMul": (1,), "Gemm": (1,)}
    if name == "encoder_layer":
        arch = Arch(EncoderLayer(), _text, ["x", "pad"], ["y"], _batch_seq("x", "pad", "y"), text_weights, True)
    elif name == "decoder_layer":
        arch = Arch(DecoderLayer(), lambda b, s: (torch.randn(b, s, D), torch.randn(b, s, D), _padding_mask(b, s)),
                    ["tgt", "memory", "pad"], ["y"], _batch_seq("tgt", "memory", "pad", "y"), text_weights, True)
    elif name == "multihead_attention":
        arch = Arch(Attention(), _text, ["x", "pad"], ["y", "weights"],
                    {**_batch_seq("x", "pad", "y"), "weights": {0: "batch", 1: "seq", 2: "seq"}}, text_weights, True)
    elif name == "embedding_gelu":
        arch = Arch(EmbeddingNorm(), lambda b, s: (torch.randint(0, VOCAB, (b, s)),), ["ids"], ["y", "y_tanh"],
                    _batch_seq("ids", "y", "y_tanh"),
                    {"Gather": (0,), **text_weights})
    elif name in ("lstm", "gru"):
        arch = Arch(Recurrent(nn.LSTM if name == "lstm" else nn.GRU), lambda b, s: (torch.randn(b, s, 16),),
                    ["x"], ["y", "h"], {**_batch_seq("x", "y"), "h": {1: "batch"}}, {name.upper(): (1, 2)})
    elif name == "mobile_block":
        arch = Arch(MobileBlock(), lambda b, s: (torch.randn(b, 3, 16, 16),), ["x"], ["y"],
                    {"x": {0: "batch"}, "y": {0: "batch"}}, {"Conv": (1,)})
    elif name == "decoder":
        arch = Arch(Decoder(), lambda b, s: (torch.randn(b, 8, 4, 4),), ["x"], ["y"],
                    {"x": {0: "batch"}, "y": {0: "batch"}}, {"ConvTranspose": (1,)})
    else:
        raise KeyError(name)
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so that folding them shows
        for m in arch.module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    arch.module.eval()
    return arch


NAMES = ["encoder_layer", "decoder_layer", "multihead_attention", "embedding_gelu", "lstm", "gru", "mobile_block", "decoder"]
EXPORT_SIZE = (2, 5)  # (batch, sequence) of the example inputs given to the exporters
RUN_SIZES = [(1, 3), (3, 7)]  # sizes the converted model runs at: neither is the export's


def run_sizes(arch: Arch, dynamo: bool) -> list[tuple[int, int]]:
    """(batch, sequence) sizes to run an export at: never the export's own batch size."""
    if arch.traced_sequence and not dynamo:
        return [(b, EXPORT_SIZE[1]) for b, _ in RUN_SIZES]
    return RUN_SIZES


def export(arch: Arch, dynamo: bool) -> bytes:
    """ONNX bytes from ``torch.onnx.export`` (TorchScript exporter for ``dynamo=False``) with the
    symbolic axes of ``arch``.

    Grad mode stays on: under ``no_grad`` an eval-mode TransformerEncoderLayer or MultiheadAttention
    takes torch's fused fast path (``aten::_transformer_encoder_layer_fwd``), which the TorchScript
    exporter cannot export; with grad on, both exporters see the plain ops users' models run.
    """
    inputs = arch.make_inputs(*EXPORT_SIZE)
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)  # the dynamo exporter logs a warning per torchvision op it cannot register
    try:
        return _export(arch, inputs, dynamo)
    finally:
        log.setLevel(level)


def _export(arch: Arch, inputs: tuple[torch.Tensor, ...], dynamo: bool) -> bytes:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(arch.module, inputs, input_names=arch.input_names,
                                        output_names=arch.output_names, dynamic_axes=arch.axes, dynamo=True,
                                        verbose=False)
            return program.model_proto.SerializeToString()
        buf = io.BytesIO()
        torch.onnx.export(arch.module, inputs, buf, input_names=arch.input_names, output_names=arch.output_names,
                          dynamic_axes=arch.axes, opset_version=17, dynamo=False)
        return buf.getvalue()


def torch_outputs(arch: Arch, inputs: tuple[torch.Tensor, ...]) -> list:
    """The module's outputs as numpy, computed the way ``export`` traced it (grad on: no fast path)."""
    out = arch.module(*inputs)
    return [t.detach().numpy() for t in (out if isinstance(out, tuple) else (out,))]
