"""More architectures people deploy, beyond the zoo: one small instance of each family, built with
torch.nn parts from its public definition, for ``benchmarks/families.py`` to convert, check against
torch and time against onnxruntime. Each factory returns ``(module, example input)``.

Sizes are reduced where a full model would take seconds a run on 2 cores (ResNet-50 and DenseNet keep
their layouts; Swin, Mixer and LLaMA have a few blocks).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def _cbr(cin: int, cout: int, k: int | tuple[int, int] = 3, stride: int = 1, groups: int = 1, dilation: int = 1,
         act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    pad = (k[0] // 2, k[1] // 2) if isinstance(k, tuple) else dilation * (k // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), act())


# ResNet-50 (He et al. 2016): bottlenecks [3, 4, 6, 3]; ResNeXt's (Xie et al. 2017) with groups.
class _Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, stride: int, groups: int = 1, expansion: int = 4):
        super().__init__()
        cout = mid * expansion
        self.body = nn.Sequential(_cbr(cin, mid, 1), _cbr(mid, mid, 3, stride, groups),
                                  nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return F.relu(self.body(x) + self.short(x))


def _resnet(widths, depths, groups: int = 1, expansion: int = 4) -> nn.Module:
    layers, cin = [_cbr(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)], 64
    for i, (mid, n) in enumerate(zip(widths, depths)):
        for j in range(n):
            layers.append(_Bottleneck(cin, mid, 2 if j == 0 and i > 0 else 1, groups, expansion))
            cin = mid * expansion
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000))


# ResNet-20 for CIFAR-10 (He et al. 2016, section 4.2): a 3x3 stem of 16 channels, three stages of three
# basic blocks at 16, 32 and 64 channels on 32x32, 16x16 and 8x8 planes, 1x1 projection shortcuts.
class _Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(_cbr(cin, cout, 3, stride), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(cout))
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        return F.relu(self.body(x) + self.short(x))


def _resnet_cifar(blocks: int = 3) -> nn.Module:
    layers, cin = [_cbr(3, 16)], 16
    for i, width in enumerate((16, 32, 64)):
        for j in range(blocks):
            layers.append(_Basic(cin, width, 2 if j == 0 and i > 0 else 1))
            cin = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


# DenseNet (Huang et al. 2017): pre-activation BN-ReLU-Conv layers, concatenated; DenseNet-121's first
# three blocks (6, 12, 24 layers, growth 32).
class _DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int = 32):
        super().__init__()
        self.f = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, 4 * growth, 1, bias=False),
                               nn.BatchNorm2d(4 * growth), nn.ReLU(), nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.f(x)], 1)


def _densenet() -> nn.Module:
    layers, c = [_cbr(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)], 64
    for i, n in enumerate((6, 12, 24)):
        for _ in range(n):
            layers.append(_DenseLayer(c))
            c += 32
        if i < 2:
            layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2, 2)]
            c //= 2
    return nn.Sequential(*layers, nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 1000))


# ShuffleNetV2 (Ma et al. 2018): channel split, depthwise 3x3, channel shuffle; 1.0x widths.
class _ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        b = cout // 2
        self.stride = stride
        self.branch = nn.Sequential(_cbr(cin if stride == 2 else b, b, 1),
                                    nn.Conv2d(b, b, 3, stride, 1, groups=b, bias=False), nn.BatchNorm2d(b), _cbr(b, b, 1))
        self.left = (nn.Sequential(nn.Conv2d(cin, cin, 3, 2, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                                   _cbr(cin, b, 1)) if stride == 2 else None)

    def forward(self, x):
        if self.stride == 1:
            a, b = x.chunk(2, 1)
            out = torch.cat([a, self.branch(b)], 1)
        else:
            out = torch.cat([self.left(x), self.branch(x)], 1)
        n, c, h, w = out.shape
        return out.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


def _shufflenet() -> nn.Module:
    layers, cin = [_cbr(3, 24, 3, 2), nn.MaxPool2d(3, 2, 1)], 24
    for cout, n in ((116, 4), (232, 8), (464, 4)):
        for i in range(n):
            layers.append(_ShuffleUnit(cin, cout, 2 if i == 0 else 1))
            cin = cout
    return nn.Sequential(*layers, _cbr(cin, 1024, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1024, 1000))


# Inception-v3's 17x17 blocks (Szegedy et al. 2016): factorized 1x7 / 7x1 convolutions, average pool.
class _InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.b1 = _cbr(cin, 192, 1)
        self.b7 = nn.Sequential(_cbr(cin, c7, 1), _cbr(c7, c7, (1, 7)), _cbr(c7, 192, (7, 1)))
        self.bd = nn.Sequential(_cbr(cin, c7, 1), _cbr(c7, c7, (7, 1)), _cbr(c7, c7, (1, 7)), _cbr(c7, c7, (7, 1)),
                                _cbr(c7, 192, (1, 7)))
        self.bp = nn.Sequential(nn.AvgPool2d(3, 1, 1), _cbr(cin, 192, 1))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b7(x), self.bd(x), self.bp(x)], 1)


def _inception() -> nn.Module:
    return nn.Sequential(_cbr(3, 32, 3, 2), _cbr(32, 64, 3, 2), _cbr(64, 192, 3, 2), _cbr(192, 768, 3, 2),
                         _InceptionC(768, 128), _InceptionC(768, 160), _InceptionC(768, 192),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(768, 1000))


# A YOLOv5/v8-style detector: Conv-BN-SiLU, SPPF (three 5x5 stride-1 max pools), nearest upsampling,
# concatenated feature maps, a 1x1 head.
class _SPPF(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.a, self.b, self.pool = _cbr(c, c // 2, 1, act=nn.SiLU), _cbr(c * 2, c, 1, act=nn.SiLU), nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        x = self.a(x)
        y1 = self.pool(x)
        y2 = self.pool(y1)
        return self.b(torch.cat([x, y1, y2, self.pool(y2)], 1))


class _Yolo(nn.Module):
    def __init__(self):
        super().__init__()
        conv = lambda cin, cout, s=1: _cbr(cin, cout, 3, s, act=nn.SiLU)  # noqa: E731
        self.p3 = nn.Sequential(conv(3, 16, 2), conv(16, 32, 2), conv(32, 32), conv(32, 64, 2), conv(64, 64))
        self.p4 = nn.Sequential(conv(64, 128, 2), conv(128, 128))
        self.p5 = nn.Sequential(conv(128, 256, 2), conv(256, 256), _SPPF(256))
        self.h4, self.h3 = conv(256 + 128, 128), conv(128 + 64, 64)
        self.head = nn.Conv2d(64, 85, 1)

    def forward(self, x):
        a = self.p3(x)
        b = self.p4(a)
        c = self.p5(b)
        d = self.h4(torch.cat([F.interpolate(c, scale_factor=2.0, mode="nearest"), b], 1))
        return self.head(self.h3(torch.cat([F.interpolate(d, scale_factor=2.0, mode="nearest"), a], 1)))


# DeepLabv3-style segmenter: dilated backbone layer, ASPP (rates 6, 12, 18), bilinear upsampling.
class _ASPP(nn.Module):
    def __init__(self):
        super().__init__()
        self.back = nn.Sequential(_cbr(3, 32, 3, 2), _cbr(32, 64, 3, 2), _cbr(64, 128, 3, 2), _cbr(128, 256, 3, 1, dilation=2))
        self.branches = nn.ModuleList([_cbr(256, 128, 1)] + [_cbr(256, 128, 3, dilation=d) for d in (6, 12, 18)])
        self.out = nn.Conv2d(512, 21, 1)

    def forward(self, x):
        x = self.back(x)
        y = self.out(torch.cat([b(x) for b in self.branches], 1))
        return F.interpolate(y, scale_factor=8.0, mode="bilinear", align_corners=False)


# A VAE / diffusion decoder: GroupNorm + SiLU residual blocks, nearest upsampling.
class _GNBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.f = nn.Sequential(nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, c, 3, 1, 1),
                               nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, c, 3, 1, 1))

    def forward(self, x):
        return x + self.f(x)


class _Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Conv2d(4, 128, 3, 1, 1)
        self.b1, self.u1 = _GNBlock(128), nn.Conv2d(128, 128, 3, 1, 1)
        self.b2, self.u2 = _GNBlock(128), nn.Conv2d(128, 64, 3, 1, 1)
        self.b3 = _GNBlock(64)
        self.out = nn.Sequential(nn.GroupNorm(8, 64), nn.SiLU(), nn.Conv2d(64, 3, 3, 1, 1))

    def forward(self, z):
        x = self.u1(F.interpolate(self.b1(self.inp(z)), scale_factor=2.0, mode="nearest"))
        x = self.u2(F.interpolate(self.b2(x), scale_factor=2.0, mode="nearest"))
        return self.out(self.b3(x))


# Swin (Liu et al. 2021): window attention with a relative position bias, shifted windows (torch.roll).
class _SwinBlock(nn.Module):
    def __init__(self, dim: int = 96, window: int = 7, heads: int = 3):
        super().__init__()
        self.window, self.heads = window, heads
        self.norm1, self.qkv, self.proj = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.bias = nn.Parameter(torch.randn(heads, window * window, window * window) * 0.02)

    def forward(self, x, shift: bool):
        b, h, w, c = x.shape
        ws = self.window
        s = self.norm1(x)
        if shift:
            s = torch.roll(s, (-(ws // 2), -(ws // 2)), (1, 2))
        win = s.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)
        q, k, v = self.qkv(win).reshape(win.shape[0], -1, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5 + self.bias
        o = (a.softmax(-1) @ v).transpose(1, 2).reshape(win.shape[0], -1, c)
        o = self.proj(o).view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        if shift:
            o = torch.roll(o, (ws // 2, ws // 2), (1, 2))
        x = x + o
        return x + self.mlp(self.norm2(x))


class _Swin(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 96, 4, 4)
        self.blocks = nn.ModuleList([_SwinBlock(), _SwinBlock()])
        self.head = nn.Linear(96, 1000)

    def forward(self, x):
        x = self.patch(x).permute(0, 2, 3, 1)
        x = self.blocks[1](self.blocks[0](x, False), True)
        return self.head(x.mean((1, 2)))


# MLP-Mixer (Tolstikhin et al. 2021): token- and channel-mixing MLPs.
class _Mixer(nn.Module):
    def __init__(self, dim: int = 256, tokens: int = 196, depth: int = 4):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 16, 16)
        self.layers = nn.ModuleList([nn.ModuleList([
            nn.LayerNorm(dim), nn.Sequential(nn.Linear(tokens, 256), nn.GELU(), nn.Linear(256, tokens)),
            nn.LayerNorm(dim), nn.Sequential(nn.Linear(dim, 1024), nn.GELU(), nn.Linear(1024, dim))]) for _ in range(depth)])
        self.head = nn.Linear(dim, 1000)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        for norm1, tokens, norm2, channels in self.layers:
            x = x + tokens(norm1(x).transpose(1, 2)).transpose(1, 2)
            x = x + channels(norm2(x))
        return self.head(x.mean(1))


# A Whisper-style audio encoder: two 1-D convolutions (the second strided), learned positions,
# pre-norm transformer layers with GELU.
class _AudioEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv1d(80, 256, 3, 1, 1), nn.Conv1d(256, 256, 3, 2, 1)
        self.pos = nn.Parameter(torch.randn(1, 150, 256) * 0.02)
        layer = nn.TransformerEncoderLayer(256, 4, 1024, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, x):
        return self.enc(F.gelu(self.c2(F.gelu(self.c1(x)))).transpose(1, 2) + self.pos)


# A speech / TCN stack of 1-D convolutions (Wav2Letter-style).
def _temporal() -> nn.Module:
    layers, cin = [], 80
    for cout, k, s in ((256, 11, 2), (256, 11, 1), (256, 11, 1), (384, 13, 1), (384, 13, 1), (512, 17, 1), (512, 1, 1)):
        layers += [nn.Conv1d(cin, cout, k, s, k // 2), nn.BatchNorm1d(cout), nn.ReLU()]
        cin = cout
    return nn.Sequential(*layers, nn.Conv1d(cin, 29, 1))


# A LLaMA-style decoder (Touvron et al. 2023): RMSNorm, rotary positions, SwiGLU, causal attention.
class _RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


def _rotate(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


class _LlamaBlock(nn.Module):
    def __init__(self, dim: int = 256, heads: int = 4, hidden: int = 688):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = _RMSNorm(dim), _RMSNorm(dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.gate, self.up = nn.Linear(dim, hidden, bias=False), nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x, cos, sin):
        b, t, d = x.shape
        h = self.norm1(x)
        q, k, v = (p(h).view(b, t, self.heads, d // self.heads).transpose(1, 2) for p in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(_rotate(q, cos, sin), _rotate(k, cos, sin), v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        h = self.norm2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class _Llama(nn.Module):
    def __init__(self, vocab: int = 32000, dim: int = 256, depth: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList([_LlamaBlock(dim) for _ in range(depth)])
        self.norm, self.head = _RMSNorm(dim), nn.Linear(dim, vocab, bias=False)
        head = dim // 4  # 4 heads
        inv = 1.0 / (10000 ** (torch.arange(0, head, 2).float() / head))
        angles = torch.outer(torch.arange(512).float(), inv)
        angles = torch.cat([angles, angles], -1)
        self.register_buffer("cos", angles.cos())
        self.register_buffer("sin", angles.sin())

    def forward(self, ids):
        t = ids.shape[1]
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x, self.cos[:t], self.sin[:t])
        return self.head(self.norm(x))


# MobileNetV3-Large's first eight blocks (Howard et al. 2019): HardSwish, HardSigmoid squeeze-excitation.
class _HardSE(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)

    def forward(self, x):
        return x * F.hardsigmoid(self.expand(F.relu(self.reduce(F.adaptive_avg_pool2d(x, 1)))))


class _V3Block(nn.Module):
    def __init__(self, cin: int, hidden: int, cout: int, k: int, stride: int, se: bool):
        super().__init__()
        self.body = nn.Sequential(_cbr(cin, hidden, 1, act=nn.Hardswish),
                                  _cbr(hidden, hidden, k, stride, groups=hidden, act=nn.Hardswish),
                                  _HardSE(hidden) if se else nn.Identity(),
                                  nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


def _mobilenet_v3() -> nn.Module:
    settings = ((16, 64, 24, 3, 2, False), (24, 72, 24, 3, 1, False), (24, 72, 40, 5, 2, True), (40, 120, 40, 5, 1, True),
                (40, 240, 80, 3, 2, False), (80, 200, 80, 3, 1, False), (80, 480, 112, 3, 1, True),
                (112, 672, 160, 5, 2, True))
    return nn.Sequential(_cbr(3, 16, 3, 2, act=nn.Hardswish), *[_V3Block(*s) for s in settings],
                         nn.Conv2d(160, 960, 1), nn.Hardswish(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(960, 1000))


Factory = Callable[[], tuple[nn.Module, torch.Tensor]]
MODELS: dict[str, Factory] = {
    "resnet50": lambda: (_resnet((64, 128, 256, 512), (3, 4, 6, 3)), torch.randn(1, 3, 224, 224)),
    "resnext50_32x4d": lambda: (_resnet((128, 256, 512, 1024), (3, 4, 6, 3), groups=32, expansion=2),
                                torch.randn(1, 3, 224, 224)),
    "resnet20_cifar": lambda: (_resnet_cifar(), torch.randn(1, 3, 32, 32)),
    "densenet_3blocks": lambda: (_densenet(), torch.randn(1, 3, 224, 224)),
    "shufflenet_v2": lambda: (_shufflenet(), torch.randn(1, 3, 224, 224)),
    "inception_v3_c": lambda: (_inception(), torch.randn(1, 3, 289, 289)),
    "mobilenet_v3_8": lambda: (_mobilenet_v3(), torch.randn(1, 3, 224, 224)),
    "yolo_style": lambda: (_Yolo(), torch.randn(1, 3, 320, 320)),
    "deeplab_aspp": lambda: (_ASPP(), torch.randn(1, 3, 256, 256)),
    "vae_decoder": lambda: (_Decoder(), torch.randn(1, 4, 32, 32)),
    "swin_2blocks": lambda: (_Swin(), torch.randn(1, 3, 224, 224)),
    "mlp_mixer": lambda: (_Mixer(), torch.randn(1, 3, 224, 224)),
    "audio_encoder": lambda: (_AudioEncoder(), torch.randn(1, 80, 300)),
    "tcn_1d": lambda: (_temporal(), torch.randn(1, 80, 400)),
    "llama_2x256": lambda: (_Llama(), torch.randint(0, 32000, (1, 64))),
}
