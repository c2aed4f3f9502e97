"""Reference models of the paper (Table 1): LeNet-300-100, LeNet-5 (Caffe variant), AlexNet, VGG-16."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class LeNet300(nn.Module):
    """784-300-100-10 MLP: 266,610 parameters."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(784, 300), nn.Linear(300, 100), nn.Linear(100, 10)

    def forward(self, x):
        x = x.flatten(1)
        return self.fc3(self.fc2(self.fc1(x).relu()).relu())


class LeNet5(nn.Module):
    """Caffe's LeNet: conv 20, conv 50, fc 500, fc 10 (431,080 parameters)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 20, 5), nn.Conv2d(20, 50, 5)
        self.fc1, self.fc2 = nn.Linear(800, 500), nn.Linear(500, 10)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        x = self.pool(self.conv1(x))
        x = self.pool(self.conv2(x)).flatten(1)
        return self.fc2(self.fc1(x).relu())


class _LRNFunction(torch.autograd.Function):
    """torch's LRN exports as a subgraph with If nodes; this exports it as the one ONNX LRN op."""

    @staticmethod
    def forward(ctx, x, size: int, alpha: float, beta: float, k: float):
        return F.local_response_norm(x, size, alpha, beta, k)

    @staticmethod
    def symbolic(g, x, size, alpha, beta, k):
        return g.op("LRN", x, size_i=size, alpha_f=alpha, beta_f=beta, bias_f=k)


class LRN(nn.LocalResponseNorm):
    def forward(self, x):
        return _LRNFunction.apply(x, self.size, self.alpha, self.beta, self.k)


def alexnet(num_classes: int = 1000) -> nn.Module:
    """AlexNet as in the paper's Table 4 (61M parameters; single-tower variant)."""
    return nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(), LRN(5), nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2), nn.ReLU(), LRN(5), nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Flatten(),
        nn.Linear(9216, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, num_classes))


def vgg16(num_classes: int = 1000) -> nn.Module:
    """VGG-16 (138M parameters)."""
    layers: list[nn.Module] = []
    c = 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
            c = v
    layers += [nn.Flatten(), nn.Linear(25088, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
               nn.Linear(4096, num_classes)]
    return nn.Sequential(*layers)


class _Bottleneck(nn.Module):
    def __init__(self, c_in: int, width: int, stride: int):
        super().__init__()
        c_out = 4 * width
        self.body = nn.Sequential(
            nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.skip = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                     if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x):
        return (self.body(x) + self.skip(x)).relu()


def resnet50(num_classes: int = 1000, base: int = 64) -> nn.Module:
    """ResNet-50 (25.6M parameters at ``base=64``; 161 weight tensors, 53 conv + BN pairs).

    A smaller ``base`` keeps the same graph (same tensor count) with fewer channels, for tests.
    """
    layers: list[nn.Module] = [nn.Conv2d(3, base, 7, 2, 3, bias=False), nn.BatchNorm2d(base), nn.ReLU(),
                               nn.MaxPool2d(3, 2, 1)]
    c = base
    for i, blocks in enumerate([3, 4, 6, 3]):
        width = base * 2**i
        for b in range(blocks):
            layers.append(_Bottleneck(c, width, 2 if b == 0 and i > 0 else 1))
            c = 4 * width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


class _Attention(nn.Module):
    """Multi-head self-attention on token rows (batch * tokens, dim): one Linear makes queries, keys
    and values for every head at once, softmax(q k^T / sqrt(d)) v mixes each image's tokens.

    Written out rather than ``nn.MultiheadAttention`` for the graph it exports: 12 nodes instead of
    38 with torch's dynamo exporter (which traces MultiheadAttention's shape checks and head
    juggling), and in a compressed file of 30 KB the graph is a large share of the bytes.
    """

    def __init__(self, dim: int, heads: int, tokens: int):
        super().__init__()
        self.heads, self.tokens, self.scale = heads, tokens, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        dim = x.shape[1]
        q, k, v = self.qkv(x).reshape(-1, self.tokens, 3 * self.heads, dim // self.heads).transpose(1, 2).chunk(3, 1)
        a = torch.softmax(q @ k.transpose(2, 3) * self.scale, -1)
        return self.proj((a @ v).transpose(1, 2).reshape(-1, dim))


class _EncoderBlock(nn.Module):
    """Pre-norm transformer encoder block on token rows: x + MHA(LN(x)), then x + MLP(LN(x)) with GELU.

    The LayerNorms have no scale or shift of their own: each feeds a Linear, which absorbs them
    exactly (W (g * n + b) + c = (W diag(g)) n + (W b + c)), so they would only add parameters and
    tensors to the file without changing what the block can compute."""

    def __init__(self, dim: int, heads: int, hidden: int, tokens: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, elementwise_affine=False), nn.LayerNorm(dim, elementwise_affine=False)
        self.attn = _Attention(dim, heads, tokens)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class MnistViT(nn.Module):
    """A small vision transformer for 28x28 digits: 7x7 patches (16 tokens) embedded by a strided
    Conv, learned positions, ``depth`` pre-norm encoder blocks, a LayerNorm, the mean over tokens
    and a Linear head.

    Tokens travel as rows of one (batch * tokens, dim) matrix, so every Linear exports as one Gemm
    node that keeps its weight's name (the file's per-layer table reads "blocks.0.fc1", and the
    pruning settings address it by that name); only attention reshapes them per image. Mean pooling
    instead of a class token saves the token's parameters and the nodes that copy it per batch."""

    def __init__(self, dim: int = 64, depth: int = 2, heads: int = 4, hidden: int = 128, patch: int = 7):
        super().__init__()
        side = 28 // patch
        self.tokens = side * side
        self.embed = nn.Conv2d(1, dim, patch, patch, bias=False)  # the positions below serve as its bias
        self.pos = nn.Parameter(torch.randn(dim, side, side) * 0.02)
        self.blocks = nn.Sequential(*[_EncoderBlock(dim, heads, hidden, self.tokens) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim, elementwise_affine=False), nn.Linear(dim, 10)

    def forward(self, x):
        x = (self.embed(x) + self.pos).permute(0, 2, 3, 1)
        dim = x.shape[-1]
        x = self.norm(self.blocks(x.reshape(-1, dim)))
        return self.head(x.reshape(-1, self.tokens, dim).mean(1))


class RowLSTM(nn.Module):
    """An LSTM that reads a 28x28 digit one row (28 pixels) per time step; the last hidden state
    feeds a Linear classifier (the recurrent-net setting of the ESE accelerator's compression)."""

    def __init__(self, hidden: int = 128):
        super().__init__()
        self.lstm = nn.LSTM(28, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, 10)

    def forward(self, x):
        out, _ = self.lstm(x.reshape(-1, 28, 28))
        return self.fc(out[:, -1])


MODELS = {"lenet300": LeNet300, "lenet5": LeNet5, "vit": MnistViT, "lstm": RowLSTM}
