"""Architectures people deploy, built from their public definitions with torch.nn parts only
(torchvision is not a dependency), at the sizes ``benchmarks/zoo.py`` measures.

Each factory returns ``(module, example inputs, input names, dynamic axes)``; the modules take
plain tensors so that both torch exporters can trace them. Sizes follow the papers unless a
docstring says otherwise.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

Built = tuple[nn.Module, tuple[torch.Tensor, ...], list[str], dict[str, dict[int, str]]]
IMAGE_AXES = {"input": {0: "batch"}, "output": {0: "batch"}}


def _image(module: nn.Module, batch: int, size: int = 224) -> Built:
    return module, (torch.randn(batch, 3, size, size),), ["input"], IMAGE_AXES


# ResNet-18 (He et al. 2016): BasicBlock, [2, 2, 2, 2].
class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.down(x))


class ResNet18(nn.Module):
    def __init__(self, classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1))


# MobileNetV2 (Sandler et al. 2018): inverted residuals with ReLU6, width 1.0.
def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1, act: type[nn.Module] | None = nn.ReLU6):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [_conv_bn(cin, hidden, 1, 1)] if expand != 1 else []
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, cout, 1, 1, act=None)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


def _divisible(channels: float) -> int:
    """A width-multiplied channel count as torchvision rounds it: to a multiple of 8, at least 8, never
    below 90% of the product."""
    rounded = max(8, int(channels + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * channels else rounded


class MobileNetV2(nn.Module):
    """``width`` multiplies every layer's channels but the last (1280), as torchvision's width_mult."""

    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))  # (expansion, channels, repeats, first stride)

    def __init__(self, classes: int = 1000, width: float = 1.0):
        super().__init__()
        cin = _divisible(32 * width)
        layers = [_conv_bn(3, cin, 3, 2)]
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(_InvertedResidual(cin, _divisible(c * width), s if i == 0 else 1, t))
                cin = _divisible(c * width)
        layers.append(_conv_bn(cin, 1280, 1, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(1280, classes)

    def forward(self, x):
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


# RegNetX-400MF (Radosavovic et al. 2020, torchvision's regnet_x_400mf): X blocks (1x1, 3x3 of groups
# 16 channels wide, 1x1, bottleneck ratio 1), widths 32-64-160-400, depths 1-2-7-12.
class _XBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, group_width: int = 16):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(cin, cout, 1, 1, act=nn.ReLU),
                                  _conv_bn(cout, cout, 3, stride, groups=cout // group_width, act=nn.ReLU),
                                  _conv_bn(cout, cout, 1, 1, act=None))
        self.down = _conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return F.relu(self.body(x) + self.down(x))


class RegNetX400MF(nn.Module):
    def __init__(self, classes: int = 1000):
        super().__init__()
        layers, cin = [_conv_bn(3, 32, 3, 2, act=nn.ReLU)], 32
        for width, depth in ((32, 1), (64, 2), (160, 7), (400, 12)):
            for i in range(depth):
                layers.append(_XBlock(cin, width, 2 if i == 0 else 1))
                cin = width
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


# EfficientNet-B0 (Tan & Le 2019): MBConv with SiLU and squeeze-excitation.
class _SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeezed: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(F.silu(self.reduce(s))))


class _MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [_conv_bn(cin, hidden, 1, 1, act=nn.SiLU)] if expand != 1 else []
        layers += [_conv_bn(hidden, hidden, k, stride, groups=hidden, act=nn.SiLU),
                   _SqueezeExcite(hidden, max(1, cin // 4)), _conv_bn(hidden, cout, 1, 1, act=None)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class EfficientNetB0(nn.Module):
    SETTINGS = ((1, 3, 16, 1, 1), (6, 3, 24, 2, 2), (6, 5, 40, 2, 2), (6, 3, 80, 3, 2), (6, 5, 112, 3, 1),
                (6, 5, 192, 4, 2), (6, 3, 320, 1, 1))  # (expansion, kernel, channels, repeats, first stride)

    def __init__(self, classes: int = 1000):
        super().__init__()
        layers, cin = [_conv_bn(3, 32, 3, 2, act=nn.SiLU)], 32
        for t, k, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(_MBConv(cin, c, k, s if i == 0 else 1, t))
                cin = c
        layers.append(_conv_bn(cin, 1280, 1, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(1280, classes)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(x.reshape(x.shape[0], -1))  # a shape computed from the symbolic batch


# ConvNeXt (Liu et al. 2022), "atto" widths (40, 80, 160, 320), depths (2, 2, 6, 2).
class _ChannelsLayerNorm(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=1e-6)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pw1 = nn.Linear(dim, 4 * dim)
        self.pw2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.1))  # layer scale, as after some training

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(F.gelu(self.pw1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtAtto(nn.Module):
    def __init__(self, classes: int = 1000, dims=(40, 80, 160, 320), depths=(2, 2, 6, 2)):
        super().__init__()
        stages: list[nn.Module] = [nn.Conv2d(3, dims[0], 4, 4), _ChannelsLayerNorm(dims[0])]
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            if i:
                stages += [_ChannelsLayerNorm(dims[i - 1]), nn.Conv2d(dims[i - 1], dim, 2, 2)]
            stages += [_ConvNeXtBlock(dim) for _ in range(depth)]
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], classes)

    def forward(self, x):
        return self.head(self.norm(self.stages(x).mean((2, 3))))


def _stack(layer: nn.TransformerEncoderLayer, depth: int) -> nn.TransformerEncoder:
    """nn.TransformerEncoder deep-copies one layer, so every block starts with the same weights (and
    the exporter stores them once); re-initialize each block so that the weights are independent."""
    encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
    for block in encoder.layers:
        for m in block.modules():
            reset = getattr(m, "reset_parameters", None) or getattr(m, "_reset_parameters", None)
            if m is not block and reset is not None:
                reset()
    return encoder


# ViT-Tiny/16 (Dosovitskiy et al. 2021; DeiT-Ti sizes): dim 192, depth 12, 3 heads, MLP 768.
class ViTTiny(nn.Module):
    def __init__(self, classes: int = 1000, dim: int = 192, depth: int = 12, heads: int = 3, size: int = 224):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 16, 16)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, (size // 16) ** 2 + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = _stack(layer, depth)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return self.head(self.norm(self.encoder(x)[:, 0]))


# A BERT-style encoder: 4 layers, hidden 256, 4 heads, sequence 128 (BERT-mini sizes), with a
# padding mask from the attention mask input.
class BertEncoder(nn.Module):
    def __init__(self, vocab: int = 30522, dim: int = 256, depth: int = 4, heads: int = 4, max_len: int = 512):
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(max_len, dim)
        self.norm = nn.LayerNorm(dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True)
        self.encoder = _stack(layer, depth)

    def forward(self, ids, mask):
        pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
        x = self.norm(self.tokens(ids) + self.positions(pos))
        return self.encoder(x, src_key_padding_mask=mask == 0)


# A GPT-2-style decoder (4 layers, hidden 256, 4 heads, GPT-2's vocabulary), causal, tied LM head,
# run on a whole prompt.
class GPT2Decoder(nn.Module):
    def __init__(self, vocab: int = 50257, dim: int = 256, depth: int = 4, heads: int = 4, max_len: int = 1024):
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.blocks = _stack(layer, depth)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids):
        n = ids.shape[1]
        pos = torch.arange(n, device=ids.device).unsqueeze(0)
        causal = torch.triu(torch.full((n, n), float("-inf"), device=ids.device), 1)
        x = self.blocks(self.tokens(ids) + self.positions(pos), mask=causal)
        return self.norm(x) @ self.tokens.weight.T


# A 2-layer LSTM classifier over 100 steps (hidden 256, input 128).
class LSTMClassifier(nn.Module):
    def __init__(self, features: int = 128, hidden: int = 256, classes: int = 10):
        super().__init__()
        self.rnn = nn.LSTM(features, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y[:, -1])


# A U-Net-style segmenter (Ronneberger et al. 2015) with 3 levels, base width 32, at 128x128.
class UNet(nn.Module):
    def __init__(self, classes: int = 2, base: int = 32, levels: int = 3):
        super().__init__()
        widths = [base * 2 ** i for i in range(levels + 1)]
        self.down = nn.ModuleList([self._double(3 if i == 0 else widths[i - 1], widths[i]) for i in range(levels + 1)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, 2) for i in range(levels)])
        self.merge = nn.ModuleList([self._double(2 * widths[i], widths[i]) for i in range(levels)])
        self.head = nn.Conv2d(base, classes, 1)

    @staticmethod
    def _double(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(_conv_bn(cin, cout, 3, 1, act=nn.ReLU), _conv_bn(cout, cout, 3, 1, act=nn.ReLU))

    def forward(self, x):
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for i in reversed(range(len(self.up))):
            x = self.merge[i](torch.cat([skips[i], self.up[i](x)], 1))
        return self.head(x)


def _text(module: nn.Module, batch: int, seq: int, vocab: int, mask: bool) -> Built:
    ids = torch.randint(0, vocab, (batch, seq))
    names = ["ids", "mask"] if mask else ["ids"]
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"output": {0: "batch", 1: "sequence"}}
    inputs = (ids, torch.ones(batch, seq, dtype=torch.int64)) if mask else (ids,)
    return module, inputs, names, axes


# name: (builder(batch), kept fraction of each weight when pruned, as typical for the family)
MODELS: dict[str, tuple[Callable[[int], Built], float]] = {
    "resnet18": (lambda b: _image(ResNet18(), b), 0.30),
    "regnetx_400mf": (lambda b: _image(RegNetX400MF(), b), 0.30),
    "mobilenet_v2": (lambda b: _image(MobileNetV2(), b), 0.50),
    # a small one, where each node's fixed cost outweighs its arithmetic (width 0.35, 32x32 inputs)
    "mobilenet_v2_035_32px": (lambda b: _image(MobileNetV2(width=0.35), b, 32), 0.50),
    "efficientnet_b0": (lambda b: _image(EfficientNetB0(), b), 0.50),
    "convnext_atto": (lambda b: _image(ConvNeXtAtto(), b), 0.30),
    "vit_tiny16": (lambda b: _image(ViTTiny(), b), 0.25),
    "bert_4x256": (lambda b: _text(BertEncoder(), b, 128, 30522, True), 0.25),
    "gpt2_4x256": (lambda b: _text(GPT2Decoder(), b, 128, 50257, False), 0.25),
    "lstm_2x256": (lambda b: (LSTMClassifier(), (torch.randn(b, 100, 128),), ["input"],
                              {"input": {0: "batch", 1: "steps"}, "output": {0: "batch"}}), 0.10),
    "unet_128": (lambda b: _image(UNet(), b, 128), 0.30),
}
