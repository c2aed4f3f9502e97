"""Structure-aware fuzzing of ``dcm.format.read``, ``validate``, ``InferenceSession`` and the ONNX converter.

Random byte flips mostly die at the CRC checks, so most mutations here are made *inside* the
structure and the checksums are then recomputed: JSON values in the graph, fields of a tensor's
payload header, Huffman length counts, block bit lengths, section lengths, truncation. Some inputs
keep a seed's file and get hostile feeds instead (out-of-range indices, zero-size or reshaped
arrays, other dtypes). A share of the inputs are mutated ONNX models through the converter
(``benchmarks/fuzz_onnx.py``). Every input must end in success or a ``DcmError``; anything else is
a crash.

Seeds: hand-made .dcm models that between them reach every compiled kernel of ``_native.c``, plus
(with onnx installed) models of every op in the CPU registry: onnx's backend node cases and
hand-built transformer, recurrent and upsampling models, converted.

    python -m benchmarks.fuzz --iterations 100000 [--workers 2] [--seed 0] [--convert-share 0.1]

prints inputs tried, outcomes, crashes, hangs, the peak RSS, and which compiled kernels and registry
ops the campaign ran, and writes all of it to benchmarks/results/fuzz.json (``--name``). The input of
a crash or hang is saved under benchmarks/results/crashes/ (a .dcm or .onnx, and the feeds as .npz).
``tests/format/test_hostile.py`` runs the .dcm mutators on the hand-made seeds; ``tests/test_fuzz.py``
checks the harness itself.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import struct
import sys
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from functools import lru_cache

import numpy as np

from dcm.encoder import encode_raw, encode_tensor
from dcm.errors import DcmError
from dcm.format import Model, Node, ValueInfo, read, to_bytes, validate
from dcm.format import constants as C
from dcm.runtime import InferenceSession

HANG_SECONDS = 10
MEMORY_LIMIT = 4 << 30  # per worker (address space), like libFuzzer's -rss_limit_mb
MAX_FEED_ELEMENTS = 1 << 16


# --- seeds: real files, every encoding, an MLP, LeNet-5 and a small conv net -----------------

def _pruned(rng: np.random.Generator, shape: tuple[int, ...], density: float) -> np.ndarray:
    w = rng.normal(size=shape).astype(np.float32)
    w[rng.random(shape) > density] = 0
    return w


def _mlp() -> Model:
    rng = np.random.default_rng(1)
    tensors = {
        "w1": encode_tensor(_pruned(rng, (16, 12), 0.3), code_bits=3, index_bits=2, name="w1"),
        "b1": encode_raw(rng.normal(size=16).astype(np.float32), "b1"),
        "w2": encode_tensor(rng.normal(size=(4, 16)).astype(np.float32), code_bits=4, name="w2"),
        "w3": encode_tensor(_pruned(rng, (4, 4), 0.8), quantize=False, index_bits=3, name="w3"),
    }
    nodes = [Node("Gemm", ["x", "w1", "b1"], ["h"], {"transB": 1}, "fc1"), Node("Relu", ["h"], ["r"], {}, "relu"),
             Node("Gemm", ["r", "w2"], ["y0"], {"transB": 1}, "fc2"),
             Node("Gemm", ["y0", "w3"], ["y"], {"transB": 1}, "fc3")]
    return Model([ValueInfo("x", "float32", ["batch", 12])], [ValueInfo("y", "float32", ["batch", 4])],
                 nodes, tensors, {"producer": "fuzz"})


def _lenet5() -> Model:
    """LeNet-5's graph at the paper's densities (Table 3), random weights."""
    rng = np.random.default_rng(2)
    shapes = {"c1": ((20, 1, 5, 5), 0.66), "c2": ((50, 20, 5, 5), 0.12), "f1": ((500, 800), 0.08),
              "f2": ((10, 500), 0.19)}
    tensors = {n: encode_tensor(_pruned(rng, s, d), code_bits=8 if n[0] == "c" else 5, index_bits=5, name=n)
               for n, (s, d) in shapes.items()}
    for n, (s, _) in shapes.items():
        tensors[n + "b"] = encode_raw(rng.normal(size=s[0]).astype(np.float32), n + "b")
    tensors["shape"] = encode_raw(np.array([-1, 800], np.int64), "shape")
    pool = {"kernel_shape": [2, 2], "strides": [2, 2]}
    nodes = [Node("Conv", ["x", "c1", "c1b"], ["a"], {"kernel_shape": [5, 5]}, "conv1"),
             Node("MaxPool", ["a"], ["b"], pool, "pool1"),
             Node("Conv", ["b", "c2", "c2b"], ["c"], {"kernel_shape": [5, 5]}, "conv2"),
             Node("MaxPool", ["c"], ["d"], pool, "pool2"),
             Node("Reshape", ["d", "shape"], ["e"], {}, "flatten"),
             Node("Gemm", ["e", "f1", "f1b"], ["f"], {"transB": 1}, "fc1"), Node("Relu", ["f"], ["g"], {}, "relu"),
             Node("Gemm", ["g", "f2", "f2b"], ["h"], {"transB": 1}, "fc2"),
             Node("Softmax", ["h"], ["y"], {"axis": 1}, "softmax")]
    return Model([ValueInfo("x", "float32", ["batch", 1, 28, 28])], [ValueInfo("y", "float32", ["batch", 10])],
                 nodes, tensors, {})


def _convnet() -> Model:
    """Padding, strides, groups, BN-free residual add, pooling variants, concat. The stem keeps a
    tenth of its weights, too sparse for the channels-last stem (channels_last.SPARSE_STEM), so that
    the depthwise layer after it stays NCHW (depthwise2d)."""
    rng = np.random.default_rng(3)
    tensors = {
        "k1": encode_tensor(_pruned(rng, (8, 3, 3, 3), 0.1), code_bits=4, index_bits=3, name="k1"),
        "k2": encode_tensor(_pruned(rng, (8, 1, 3, 3), 0.9), code_bits=2, name="k2"),
        "k3": encode_tensor(_pruned(rng, (4, 16), 0.4), quantize=False, index_bits=4, name="k3"),
    }
    nodes = [Node("Conv", ["x", "k1"], ["a"], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]}, "c1"),
             Node("LeakyRelu", ["a"], ["b"], {"alpha": 0.1}, "lrelu"),
             Node("Conv", ["b", "k2"], ["c"], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "group": 8}, "dw"),
             Node("Add", ["b", "c"], ["d"], {}, "res"),
             Node("AveragePool", ["d"], ["e"], {"kernel_shape": [2, 2], "strides": [2, 2]}, "avg"),
             Node("GlobalAveragePool", ["d"], ["g"], {}, "gap"),
             Node("Flatten", ["g"], ["h"], {"axis": 1}, "flat"),
             Node("Concat", ["h", "h"], ["i"], {"axis": 1}, "cat"),
             Node("Gemm", ["i", "k3"], ["j"], {"transB": 1}, "fc"),
             Node("Sigmoid", ["j"], ["y"], {}, "sig")]
    return Model([ValueInfo("x", "float32", ["batch", 3, 9, 9])],
                 [ValueInfo("y", "float32", ["batch", 4]), ValueInfo("e", "float32", ["batch", 8, 2, 2])],
                 nodes, tensors, {})


def _mlp_batch1() -> Model:
    """Two pruned layers at a fixed batch of 1: the batch-1 kernel (matvec), with and without ReLU."""
    rng = np.random.default_rng(5)
    tensors = {"w1": encode_tensor(_pruned(rng, (32, 24), 0.1), code_bits=4, index_bits=4, name="w1"),
               "b1": encode_raw(rng.normal(size=32).astype(np.float32), "b1"),
               "w2": encode_tensor(_pruned(rng, (6, 32), 0.2), code_bits=3, index_bits=3, name="w2")}
    nodes = [Node("Gemm", ["x", "w1", "b1"], ["h"], {"transB": 1}, "fc1"), Node("Relu", ["h"], ["r"], {}, "relu"),
             Node("Gemm", ["r", "w2"], ["y"], {"transB": 1}, "fc2")]
    return Model([ValueInfo("x", "float32", [1, 24])], [ValueInfo("y", "float32", [1, 6])], nodes, tensors, {})


def _wide_fc_batch2() -> Model:
    """A dense 512 -> 512 layer at a fixed batch of 2: a product large enough (SPLIT_MIN_MACS) for
    blas.matmul to hand it to the compiled gemm on the session's two threads where the layer has no
    packed weight (one row would stay numpy's matrix-vector call), whichever BLAS the machine has."""
    rng = np.random.default_rng(16)
    tensors = {"w": encode_tensor(rng.normal(size=(512, 512)).astype(np.float32), code_bits=5, name="w")}
    nodes = [Node("Gemm", ["x", "w"], ["y"], {"transB": 1}, "fc")]
    return Model([ValueInfo("x", "float32", [2, 512])], [ValueInfo("y", "float32", [2, 512])], nodes, tensors, {})


def _sparse_batch8() -> Model:
    """A 3%-dense layer at a fixed batch of 8: the batched product on activation rows (matmat_rows)."""
    rng = np.random.default_rng(6)
    tensors = {"w": encode_tensor(_pruned(rng, (48, 64), 0.03), code_bits=4, index_bits=5, name="w")}
    nodes = [Node("Gemm", ["x", "w"], ["h"], {"transB": 1}, "fc"), Node("Relu", ["h"], ["y"], {}, "relu")]
    return Model([ValueInfo("x", "float32", [8, 64])], [ValueInfo("y", "float32", [8, 48])], nodes, tensors, {})


def _sparse_strided() -> Model:
    """Two 10%-dense 3x3 convolutions of stride 2: the first (9x9 outputs) on the direct kernel's
    strided AVX-512 path (its phases), or elsewhere im2col and the batched product on columns
    (matmat); the second (5x5 outputs, a small plane) im2col and matmat everywhere."""
    rng = np.random.default_rng(8)
    tensors = {"k": encode_tensor(_pruned(rng, (16, 8, 3, 3), 0.1), code_bits=4, index_bits=5, name="k"),
               "k2": encode_tensor(_pruned(rng, (16, 16, 3, 3), 0.1), code_bits=4, index_bits=5, name="k2")}
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]}
    nodes = [Node("Conv", ["x", "k"], ["c"], conv, "c"), Node("Conv", ["c", "k2"], ["y"], conv, "c2")]
    return Model([ValueInfo("x", "float32", ["batch", 8, 17, 17])], [ValueInfo("y", "float32", ["batch", 16, 5, 5])],
                 nodes, tensors, {})


def _wide3x3() -> Model:
    """A dense 3x3 convolution wide enough (64 channels each way) for Winograd's compiled transforms."""
    rng = np.random.default_rng(4)
    tensors = {"k": encode_tensor(rng.normal(size=(64, 64, 3, 3)).astype(np.float32), code_bits=4, name="k"),
               "kb": encode_raw(rng.normal(size=64).astype(np.float32), "kb")}
    nodes = [Node("Conv", ["x", "k", "kb"], ["c"], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, "wino"),
             Node("Relu", ["c"], ["y"], {}, "relu")]
    return Model([ValueInfo("x", "float32", ["batch", 64, 6, 6])], [ValueInfo("y", "float32", ["batch", 64, 6, 6])],
                 nodes, tensors, {})


def _stem() -> Model:
    """A dense RGB stem (3 -> 12 channels, 3x3, stride 2) with a fused ReLU6: conv_lanes2d, a full and
    a partial group of 8 output channels; then ResNet's MaxPool (3x3, stride 2, pads 1: pool2d's
    AVX-512 path that reads the input rows directly)."""
    rng = np.random.default_rng(10)
    tensors = {"k": encode_tensor(rng.normal(size=(12, 3, 3, 3)).astype(np.float32), code_bits=5, name="k"),
               "kb": encode_raw(rng.normal(size=12).astype(np.float32), "kb"),
               "lo": encode_raw(np.array(0, np.float32), "lo"), "hi": encode_raw(np.array(6, np.float32), "hi")}
    nodes = [Node("Conv", ["x", "k", "kb"], ["c"], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]},
                  "stem"),
             Node("Clip", ["c", "lo", "hi"], ["y"], {}, "relu6"),
             Node("MaxPool", ["y"], ["p"], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]}, "pool")]
    return Model([ValueInfo("x", "float32", ["batch", 3, 11, 11])],
                 [ValueInfo("y", "float32", ["batch", 12, 6, 6]), ValueInfo("p", "float32", ["batch", 12, 3, 3])],
                 nodes, tensors, {})


def _pointwise_conv() -> Model:
    """Dense 1x1 layers (pointwise_conv): 10 -> 12 channels with a fused ReLU6 (a full and a partial
    block of 8 outputs, a 35-pixel plane of partial vectors), then 12 -> 12 with a fused residual Add."""
    rng = np.random.default_rng(11)
    tensors = {"p1": encode_tensor(rng.normal(size=(12, 10, 1, 1)).astype(np.float32), code_bits=5, name="p1"),
               "p2": encode_tensor(rng.normal(size=(12, 12, 1, 1)).astype(np.float32), code_bits=5, name="p2"),
               "pb": encode_raw(rng.normal(size=12).astype(np.float32), "pb"),
               "lo": encode_raw(np.array(0, np.float32), "lo"), "hi": encode_raw(np.array(6, np.float32), "hi")}
    nodes = [Node("Conv", ["x", "p1", "pb"], ["c"], {"kernel_shape": [1, 1]}, "expand"),
             Node("Clip", ["c", "lo", "hi"], ["a"], {}, "relu6"),
             Node("Conv", ["a", "p2"], ["d"], {"kernel_shape": [1, 1]}, "project"),
             Node("Add", ["d", "a"], ["y"], {}, "residual")]
    return Model([ValueInfo("x", "float32", ["batch", 10, 5, 7])], [ValueInfo("y", "float32", ["batch", 12, 5, 7])],
                 nodes, tensors, {})


def _dense_layers() -> Model:
    """A dense grouped 3x3/2 convolution (32 -> 64 channels in 2 groups, 144 taps: im2col, as pixel_gemm
    takes group 1 only, and read by a MaxPool, no channels-last region takes it alone) whose products are
    large enough (0.56M multiply-adds a group and sample) for blas.matmul to split them over the
    session's two threads (the compiled gemm; the packed GEMM where OpenBLAS runs AVX2 kernels only on
    an AVX-512 CPU, blas.runs_avx2_only), then a dense fully connected layer on the packed weight
    (gemm_packed)."""
    rng = np.random.default_rng(12)
    tensors = {"k": encode_tensor(rng.normal(size=(64, 16, 3, 3)).astype(np.float32), code_bits=5, name="k"),
               "w": encode_tensor(rng.normal(size=(10, 64)).astype(np.float32), code_bits=5, name="w"),
               "wb": encode_raw(rng.normal(size=10).astype(np.float32), "wb")}
    nodes = [Node("Conv", ["x", "k"], ["c"], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2],
                                              "group": 2}, "conv"),
             Node("MaxPool", ["c"], ["m"], {"kernel_shape": [2, 2]}, "max"),
             Node("GlobalAveragePool", ["m"], ["p"], {}, "pool"), Node("Flatten", ["p"], ["f"], {}, "flatten"),
             Node("Gemm", ["f", "w", "wb"], ["y"], {"transB": 1}, "fc")]
    return Model([ValueInfo("x", "float32", ["batch", 32, 21, 21])], [ValueInfo("y", "float32", ["batch", 10])],
                 nodes, tensors, {})


def _pixel_conv() -> Model:
    """A dense 3x3/2 convolution of 64 channels (576 deep) on a 6x6 plane: few output pixels, so the
    packed GEMM takes it with the pixels as rows, its columns from the compiled transpose and
    window_rows (pixel_gemm.py)."""
    rng = np.random.default_rng(15)
    tensors = {"k": encode_tensor(rng.normal(size=(16, 64, 3, 3)).astype(np.float32), code_bits=5, name="k"),
               "kb": encode_raw(rng.normal(size=16).astype(np.float32), "kb")}
    nodes = [Node("Conv", ["x", "k", "kb"], ["y"], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]},
                  "conv")]
    return Model([ValueInfo("x", "float32", ["batch", 64, 6, 6])], [ValueInfo("y", "float32", ["batch", 16, 3, 3])],
                 nodes, tensors, {})


def _logic() -> Model:
    """A Constant node (the converter folds them, so no converted model has one) and boolean logic."""
    nodes = [Node("Constant", [], ["c"], {"value_float": 0.5}, "half"), Node("Mul", ["x", "s"], ["m"], {}, "scale"),
             Node("Greater", ["m", "c"], ["g"], {}, "gt"), Node("Not", ["g"], ["n"], {}, "not"),
             Node("Cast", ["n"], ["y"], {"to": 1}, "cast")]
    tensors = {"s": encode_raw(np.array([1, -2, 3, -4], np.float32), "s")}
    return Model([ValueInfo("x", "float32", ["batch", 4])], [ValueInfo("y", "float32", ["batch", 4])], nodes, tensors,
                 {})


def _layer_norm() -> Model:
    """A channels-last Transpose, then LayerNormalization, Gelu and LogSoftmax over the last axis: the
    compiled transpose2d and pointwise kernels (layer_norm, activate, softmax)."""
    rng = np.random.default_rng(7)
    tensors = {n: encode_raw(rng.normal(size=16).astype(np.float32), n) for n in ("s", "b")}
    nodes = [Node("Transpose", ["x"], ["t"], {"perm": [0, 2, 1]}, "channels_last"),
             Node("LayerNormalization", ["t", "s", "b"], ["n"], {"axis": -1}, "ln"), Node("Gelu", ["n"], ["g"], {}, "gelu"),
             Node("LogSoftmax", ["g"], ["y"], {"axis": -1}, "logsoftmax")]
    return Model([ValueInfo("x", "float32", ["batch", 16, 3])], [ValueInfo("y", "float32", ["batch", 3, 16])], nodes,
                 tensors, {}, opset=20)


def _skip_concat() -> Model:
    """A U-Net skip connection's channel concat, large enough (2 x 64k values; batch 1, the largest
    feed the fuzzer makes) for the session's two threads to copy it through the compiled concat."""
    tensors = {"s": encode_raw(np.array(0.5, np.float32), "s")}
    nodes = [Node("Mul", ["x", "s"], ["r"], {}, "scale"), Node("Concat", ["r", "x"], ["y"], {"axis": 1}, "skip")]
    return Model([ValueInfo("x", "float32", [1, 16, 64, 64])], [ValueInfo("y", "float32", [1, 32, 64, 64])], nodes,
                 tensors, {})


def _lstm_upsample() -> Model:
    """A pruned LSTM (the compiled step loop on a CSR R, biases and peepholes) whose output [steps, 1,
    batch, hidden] is upsampled bilinearly, then by a 2x2/2 ConvTranspose: the compiled
    recurrent_scan, resize2d and col2im2d."""
    rng = np.random.default_rng(9)
    tensors = {"w": encode_tensor(_pruned(rng, (1, 32, 6), 0.5), code_bits=4, name="w"),
               "r": encode_tensor(_pruned(rng, (1, 32, 8), 0.15), code_bits=4, index_bits=4, name="r"),
               "b": encode_raw(rng.normal(size=(1, 64)).astype(np.float32), "b"),
               "p": encode_raw(rng.normal(size=(1, 24)).astype(np.float32), "p"),
               "scales": encode_raw(np.array([1, 1, 2, 2], np.float32), "scales"),
               "k": encode_tensor(rng.normal(size=(1, 2, 2, 2)).astype(np.float32), code_bits=4, name="k")}
    nodes = [Node("LSTM", ["x", "w", "r", "b", "", "", "", "p"], ["h"], {"hidden_size": 8}, "lstm"),
             Node("Resize", ["h", "", "scales"], ["u"], {"mode": "linear"}, "up"),
             Node("ConvTranspose", ["u", "k"], ["y"], {"strides": [2, 2]}, "upconv")]
    return Model([ValueInfo("x", "float32", [5, "batch", 6])], [ValueInfo("y", "float32", [5, 2, "rows", 32])],
                 nodes, tensors, {}, opset=17)


def _gru_dense() -> Model:
    """A GRU with a dense R (linear_before_reset=0: two products a step) of 120 units, not a multiple
    of the 16-unit panels, at the fuzzer's batch of 2: recurrent_scan's dense tiles, large enough
    for its steps to be split across the pool."""
    rng = np.random.default_rng(10)
    tensors = {"w": encode_tensor(rng.normal(size=(1, 360, 6)).astype(np.float32), code_bits=4, name="w"),
               "r": encode_tensor(rng.normal(size=(1, 360, 120)).astype(np.float32) * 0.1, code_bits=4, name="r")}
    nodes = [Node("GRU", ["x", "w", "r"], ["y"], {"hidden_size": 120}, "gru")]
    return Model([ValueInfo("x", "float32", [4, "batch", 6])], [ValueInfo("y", "float32", [4, 1, "batch", 120])],
                 nodes, tensors, {}, opset=17)


def _inverted_residual() -> Model:
    """MobileNetV2's stem (3 -> 16, 3x3/2, ReLU6) and block: a 1x1 expansion with ReLU6, a 3x3/2
    depthwise layer with ReLU6 and a 1x1 projection, then the global average pool: a chain the session
    runs channels-last, entered by the stem reading NCHW and writing NHWC (conv_nhwc_out,
    depthwise_nhwc, global_average_nhwc). 40 channels: two whole vectors of 16 and a part."""
    rng = np.random.default_rng(13)
    tensors = {"s": encode_tensor(rng.normal(size=(16, 3, 3, 3)).astype(np.float32), code_bits=5, name="s"),
               "sb": encode_raw(rng.normal(size=16).astype(np.float32), "sb"),
               "e": encode_tensor(rng.normal(size=(40, 16, 1, 1)).astype(np.float32), code_bits=5, name="e"),
               "d": encode_tensor(rng.normal(size=(40, 1, 3, 3)).astype(np.float32), code_bits=5, name="d"),
               "db": encode_raw(rng.normal(size=40).astype(np.float32), "db"),
               "p": encode_tensor(rng.normal(size=(24, 40, 1, 1)).astype(np.float32), code_bits=5, name="p"),
               "lo": encode_raw(np.array(0, np.float32), "lo"), "hi": encode_raw(np.array(6, np.float32), "hi")}
    nodes = [Node("Conv", ["x", "s", "sb"], ["t"], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]},
                  "stem"),
             Node("Clip", ["t", "lo", "hi"], ["u"], {}, "relu6_0"),
             Node("Conv", ["u", "e"], ["a"], {"kernel_shape": [1, 1]}, "expand"),
             Node("Clip", ["a", "lo", "hi"], ["b"], {}, "relu6_1"),
             Node("Conv", ["b", "d", "db"], ["c"], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2],
                                                  "group": 40}, "dw"),
             Node("Clip", ["c", "lo", "hi"], ["f"], {}, "relu6_2"),
             Node("Conv", ["f", "p"], ["g"], {"kernel_shape": [1, 1]}, "project"),
             Node("GlobalAveragePool", ["g"], ["y"], {}, "pool")]
    return Model([ValueInfo("x", "float32", ["batch", 3, 22, 22])], [ValueInfo("y", "float32", ["batch", 24, 1, 1])],
                 nodes, tensors, {})


def _grouped_block() -> Model:
    """A ResNeXt-like block: 1x1, then a 3x3/2 layer of 2 groups (16 channels in, 20 out a group) and a
    1x1 layer, added to a strided 1x1 shortcut, Relu'd: the grouped and the last 1x1 layers run
    channels-last (conv_nhwc_out on NHWC input, gemm_packed)."""
    rng = np.random.default_rng(16)
    tensors = {"a": encode_tensor(rng.normal(size=(32, 16, 1, 1)).astype(np.float32), code_bits=5, name="a"),
               "g": encode_tensor(rng.normal(size=(40, 16, 3, 3)).astype(np.float32), code_bits=5, name="g"),
               "gb": encode_raw(rng.normal(size=40).astype(np.float32), "gb"),
               "p": encode_tensor(rng.normal(size=(32, 40, 1, 1)).astype(np.float32), code_bits=5, name="p"),
               "s": encode_tensor(rng.normal(size=(32, 32, 1, 1)).astype(np.float32), code_bits=5, name="s")}
    nodes = [Node("Conv", ["x", "a"], ["b"], {"kernel_shape": [1, 1]}, "reduce"),
             Node("Relu", ["b"], ["c"], {}, "relu_0"),
             Node("Conv", ["c", "g", "gb"], ["d"], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2],
                                                  "group": 2}, "grouped"),
             Node("Relu", ["d"], ["e"], {}, "relu_1"),
             Node("Conv", ["e", "p"], ["f"], {"kernel_shape": [1, 1]}, "expand"),
             Node("Conv", ["c", "s"], ["h"], {"kernel_shape": [1, 1], "strides": [2, 2]}, "shortcut"),
             Node("Add", ["f", "h"], ["i"], {}, "add"),
             Node("Relu", ["i"], ["y"], {}, "relu_2")]
    return Model([ValueInfo("x", "float32", ["batch", 16, 11, 10])], [ValueInfo("y", "float32", ["batch", 32, 6, 5])],
                 nodes, tensors, {})


def _attention() -> Model:
    """Scaled dot-product attention over a run-time input (q = v = x, k its transpose), scaled and
    masked: the session fuses it into one dcm.Attention node, the compiled attention kernel."""
    rng = np.random.default_rng(14)
    tensors = {"c": encode_raw(np.array(0.5, np.float32), "c"),
               "m": encode_raw(np.where(rng.random(5) < 0.3, -1e4, 0).astype(np.float32), "m")}
    nodes = [Node("Transpose", ["x"], ["k"], {"perm": [0, 1, 3, 2]}, "keys"),
             Node("MatMul", ["x", "k"], ["s"], {}, "scores"), Node("Mul", ["s", "c"], ["sc"], {}, "scale"),
             Node("Add", ["sc", "m"], ["sm"], {}, "mask"), Node("Softmax", ["sm"], ["p"], {"axis": -1}, "softmax"),
             Node("MatMul", ["p", "x"], ["y"], {}, "mix")]
    return Model([ValueInfo("x", "float32", ["batch", 2, 5, 4])], [ValueInfo("y", "float32", ["batch", 2, 5, 4])],
                 nodes, tensors, {}, opset=17)


@lru_cache(maxsize=None)
def seeds() -> tuple[bytes, ...]:
    """The hand-made .dcm seeds: between them they reach every compiled kernel (``kernel_names``)."""
    return tuple(to_bytes(m()) for m in (_mlp, _lenet5, _convnet, _mlp_batch1, _wide_fc_batch2, _sparse_batch8,
                                         _sparse_strided, _wide3x3, _stem, _pointwise_conv, _dense_layers, _logic,
                                         _layer_norm,
                                         _lstm_upsample, _gru_dense, _skip_concat, _inverted_residual, _grouped_block,
                                         _attention, _pixel_conv))


@lru_cache(maxsize=None)
def op_seeds() -> tuple[tuple[bytes, dict], ...]:
    """(file, feeds) of models of every registry op that convert and run (``fuzz_onnx.node_seeds``:
    onnx's backend node cases and hand-built models), or none without the onnx package."""
    try:
        from benchmarks.fuzz_onnx import node_seeds
    except ImportError:
        return ()
    return tuple((data, feeds) for _, data, feeds in node_seeds())


# --- which compiled kernels a campaign reached ------------------------------------------------

# Compiled kernels the runtime calls only where the CPU runs their AVX-512 path: the NCHW 1x1 kernel
# (``pointconv``).
AVX512_ONLY = ("pointwise_conv",)
# ... and only where the packed GEMM runs (AVX-512 or AVX2): it (``pixel_gemm``, the regions' 1x1 layers) and
# the channels-last kernels of the regions built around it (``nhwc``; ``conv_nhwc_out``: stems, grouped and
# small dense layers). On other CPUs no seed can reach them.
PACKED_ONLY = ("gemm_packed", "window_rows", "depthwise_nhwc", "global_average_nhwc", "conv_nhwc_out")


def kernel_names(reachable: bool = False) -> list[str]:
    """Every compiled kernel by name, read from ``native.NAMES`` so that a kernel added there is
    counted (and must be seeded): the module's functions and its kernel objects' methods.
    ``reachable``: only those the runtime calls on this CPU (``AVX512_ONLY`` left out without AVX-512,
    ``PACKED_ONLY`` without AVX2)."""
    from dcm.runtime.cpu import native

    simd = native.packed_simd()
    skipped = ((AVX512_ONLY if simd != "avx512" else ()) + (PACKED_ONLY if simd is None else ())) if reachable else ()
    out = []
    for name in native.NAMES:
        if name in skipped:
            continue
        obj = getattr(native, name)
        if isinstance(obj, type):
            out += [f"{name}.{m}" for m in sorted(vars(obj)) if not m.startswith("_") and callable(getattr(obj, m))]
        elif obj is not None:
            out.append(name)
    return out


def _counted(fn, name: str, calls: Counter):
    """``fn``, its calls that return counted in ``calls[name]``."""
    def call(*args, **kwargs):
        out = fn(*args, **kwargs)
        calls[name] += 1
        return out
    return call


class _CountedObject:
    """A SparseMatrix or SparseConv whose method calls that return are counted."""

    def __init__(self, obj, kind: str, calls: Counter):
        self._obj, self._kind, self._calls = obj, kind, calls

    def __getattr__(self, name: str):
        attr = getattr(self._obj, name)
        return _counted(attr, f"{self._kind}.{name}", self._calls) if callable(attr) else attr


@contextmanager
def counting_kernels() -> Iterator[Counter]:
    """Counts the compiled kernel calls that return (by ``kernel_names`` name) while active. The kernels look
    ``native.X`` up at each load or call, so swapping the module's attributes reaches all of them."""
    from dcm.runtime.cpu import native

    calls: Counter = Counter()
    saved = {name: getattr(native, name) for name in native.NAMES}
    for name, original in saved.items():
        if original is None:
            continue
        if isinstance(original, type):
            setattr(native, name, lambda *a, _t=original, _n=name, **k: _CountedObject(_t(*a, **k), _n, calls))
        else:
            setattr(native, name, _counted(original, name, calls))
    try:
        yield calls
    finally:
        for name, original in saved.items():
            setattr(native, name, original)


# --- framing helpers ------------------------------------------------------------------------

def split(data: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """(16-byte header, [(type, payload)]) of a well-framed file."""
    pos, out = C.FILE_HEADER_SIZE, []
    while pos < len(data):
        kind = data[pos : pos + 4]
        (length,) = struct.unpack_from("<Q", data, pos + 8)
        out.append((kind, data[pos + 16 : pos + 16 + length]))
        pos += 16 + length + 4
    return data[: C.FILE_HEADER_SIZE], out


def join(header: bytes, sections: list[tuple[bytes, bytes]], reserved: int = 0) -> bytes:
    """Frame sections with correct lengths and CRCs (the header CRC too)."""
    head = header[:12] + struct.pack("<I", zlib.crc32(header[:12]))
    parts = [head]
    for kind, payload in sections:
        h = kind + struct.pack("<IQ", reserved, len(payload))
        parts += [h, payload, struct.pack("<I", zlib.crc32(payload, zlib.crc32(h)))]
    return b"".join(parts)


def refresh_crcs(data: bytes) -> bytes:
    """Recompute every CRC a (possibly damaged) framing still lets us find."""
    buf = bytearray(data)
    if len(buf) >= 16:
        buf[12:16] = struct.pack("<I", zlib.crc32(bytes(buf[:12])))
    pos = C.FILE_HEADER_SIZE
    while pos + 20 <= len(buf):
        (length,) = struct.unpack_from("<Q", buf, pos + 8)
        end = pos + 16 + length
        if end + 4 > len(buf):
            break
        buf[end : end + 4] = struct.pack("<I", zlib.crc32(bytes(buf[pos:end])))
        pos = end + 4
    return bytes(buf)


def _graph_and_data(data: bytes) -> tuple[dict, bytes]:
    _, sections = split(data)
    doc = json.loads(sections[0][1])
    return doc, sections[1][1]


def rebuild(doc: dict, blob: bytes) -> bytes:
    """A file from a (mutated) graph document and DATA payload, padded so DATA stays aligned."""
    text = json.dumps(doc, separators=(",", ":"), allow_nan=True).encode()
    start = C.FILE_HEADER_SIZE + 2 * C.SECTION_HEADER_SIZE + len(text) + C.SECTION_CRC_SIZE
    text += b" " * (-start % C.PAYLOAD_ALIGNMENT)
    header = C.SIGNATURE + struct.pack("<HH", C.VERSION_MAJOR, C.VERSION_MINOR) + b"\0" * 4
    return join(header, [(C.SECTION_GRAPH, text), (C.SECTION_DATA, blob), (C.SECTION_END, b"")])


# --- mutators ---------------------------------------------------------------------------------

INTERESTING = [0, 1, 2, 7, 8, 15, 16, 17, 24, 25, 31, 32, 63, 64, 255, 256, 65535, 65536, 2**31 - 1, 2**31,
               2**32 - 1, 2**32, 2**53, 2**63 - 1, 2**64 - 1, -1, -(2**31), -(2**63)]


def _interesting(rng: random.Random) -> int:
    return rng.choice(INTERESTING) + rng.choice([0, 0, 0, -1, 1])


def _json_value(rng: random.Random, old):
    pick = rng.randrange(10)
    if pick < 4 and isinstance(old, (int, float)) and not isinstance(old, bool):
        return _interesting(rng)
    if pick < 5:
        return rng.choice([None, True, "", "x" * rng.choice([1, 5000]), [], {}, 1.5, float("nan"), float("inf"), -0.0])
    if pick < 7 and isinstance(old, str):
        return rng.choice(["batch", "x", "y", "w1", "Gemm", "Conv", "float64", "int64", *C.ENCODINGS,
                           old + "_", old[:-1], "\u00e9\u6f22"])
    if pick < 8 and isinstance(old, list):
        out = list(old)
        if out and rng.random() < 0.5:
            del out[rng.randrange(len(out))]
        elif out:
            out.insert(rng.randrange(len(out) + 1), rng.choice(out))
        else:
            out.append(_interesting(rng))
        return out
    return _interesting(rng)


def _walk(node, path=()):
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, path + (i,))


def mutate_json(data: bytes, rng: random.Random) -> bytes:
    doc, blob = _graph_and_data(data)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        paths = [p for p, _ in _walk(doc) if p]
        path = rng.choice(paths)
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        if rng.random() < 0.15 and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = _json_value(rng, parent[path[-1]])
    return rebuild(doc, blob)


def _payload_field_offsets(payload: bytes) -> list[tuple[int, str]]:
    """Offsets of the numeric fields of a coded payload: header, table counts, block bit lengths."""
    fields = [(0, "B"), (1, "B"), (2, "B"), (3, "B"), (4, "I"), (8, "Q"), (16, "Q"), (24, "Q")]
    if len(payload) < 32:
        return fields
    k, nnz, icount = struct.unpack_from("<IQQ", payload, 4)
    pos = 32 + 4 * k + (0 if payload[0] else 4 * nnz)  # codebook, or float32 values
    for _ in range(2):
        if pos >= len(payload):
            break
        n = payload[pos]
        fields.append((pos, "B"))
        fields += [(pos + 1 + 4 * i, "I") for i in range(n) if pos + 5 + 4 * i <= len(payload)]
        counts = [struct.unpack_from("<I", payload, pos + 1 + 4 * i)[0] for i in range(n) if pos + 5 + 4 * i <= len(payload)]
        pos += 1 + 4 * n + 2 * sum(counts)
    fields += [(p, "I") for p in range(pos, min(len(payload) - 3, pos + 64), 4)]
    return [(o, f) for o, f in fields if o + struct.calcsize(f) <= len(payload)]


def mutate_payload(data: bytes, rng: random.Random) -> bytes:
    doc, blob = _graph_and_data(data)
    coded = [t for t in doc["tensors"] if t["encoding"] != C.ENC_RAW]
    t = rng.choice(coded or doc["tensors"])
    buf = bytearray(blob)
    payload = bytes(buf[t["offset"] : t["offset"] + t["length"]])
    for _ in range(rng.choice([1, 1, 2])):
        offset, fmt = rng.choice(_payload_field_offsets(payload))
        bits = 8 * struct.calcsize(fmt)
        value = _interesting(rng) % (1 << bits)
        struct.pack_into("<" + fmt, buf, t["offset"] + offset, value)
        payload = bytes(buf[t["offset"] : t["offset"] + t["length"]])
    if rng.random() < 0.3:  # damage the streams too
        for _ in range(rng.randrange(1, 8)):
            buf[t["offset"] + rng.randrange(t["length"])] ^= 1 << rng.randrange(8)
    return rebuild(doc, bytes(buf))


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 4, 16])):
        op = rng.randrange(5)
        i = rng.randrange(len(buf)) if buf else 0
        if op == 0 and buf:
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[i] = rng.randrange(256)
        elif op == 2 and len(buf) >= i + 8:
            struct.pack_into("<Q", buf, i, _interesting(rng) % 2**64)
        elif op == 3:
            del buf[i : i + rng.choice([1, 4, 64])]
        else:
            buf[i:i] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 4, 64])))
    return refresh_crcs(bytes(buf)) if rng.random() < 0.8 else bytes(buf)


def mutate_sections(data: bytes, rng: random.Random) -> bytes:
    header, sections = split(data)
    op = rng.randrange(6)
    if op == 0:  # truncate anywhere
        return data[: rng.randrange(len(data))]
    if op == 1:  # drop, duplicate or reorder sections
        i = rng.randrange(len(sections))
        if rng.random() < 0.5:
            del sections[i]
        else:
            sections.insert(rng.randrange(len(sections) + 1), sections[i])
    elif op == 2:  # unknown sections, critical or not
        sections.insert(rng.randrange(len(sections) + 1), (rng.choice([b"ZZZZ", b"zzzz", b"DAT\0"]), b"abc"))
    elif op == 3:  # lie about a section length
        buf = bytearray(join(header, sections))
        pos = C.FILE_HEADER_SIZE
        for _ in range(rng.randrange(len(sections))):
            (n,) = struct.unpack_from("<Q", buf, pos + 8)
            pos += 20 + n
        struct.pack_into("<Q", buf, pos + 8, _interesting(rng) % 2**64)
        return refresh_crcs(bytes(buf)) if rng.random() < 0.5 else bytes(buf)
    elif op == 4:  # version, reserved field
        header = header[:8] + struct.pack("<HH", rng.choice([0, 1, 2, 65535]), rng.choice([0, 1, 65535])) + header[12:]
        return join(header, sections, reserved=rng.choice([0, 0, 1]))
    else:  # grow or shrink the graph text without changing its meaning
        kind, text = sections[0]
        sections[0] = (kind, text.rstrip() if rng.random() < 0.5 else text + b" " * rng.randrange(1, 130))
    return join(header, sections)


MUTATORS = (mutate_json, mutate_payload, mutate_bytes, mutate_sections)


def mutate(data: bytes, rng: random.Random) -> bytes:
    out = rng.choice(MUTATORS)(data, rng)
    if rng.random() < 0.2:  # stack a second mutation
        try:
            out = rng.choice(MUTATORS)(out, rng)
        except (ValueError, KeyError, IndexError, TypeError, struct.error, AttributeError):
            pass  # the first mutation broke the structure the second one needs
    return out


def _mutated(seed: bytes, rng: random.Random) -> bytes:
    try:
        return mutate(seed, rng)
    except (ValueError, KeyError, IndexError, TypeError, struct.error, AttributeError):
        return seed[: rng.randrange(len(seed))]


def generate(rng: random.Random) -> bytes:
    """A mutated hand-made seed."""
    return _mutated(rng.choice(seeds()), rng)


# --- the property ------------------------------------------------------------------------------

def _feed(shape: list) -> np.ndarray | None:
    dims = [d if isinstance(d, int) else 2 for d in shape]
    if int(np.prod(dims, dtype=np.float64)) > MAX_FEED_ELEMENTS:
        return None
    return np.random.default_rng(0).normal(size=dims).astype(np.float32)


def mutate_feeds(feeds: dict, rng: random.Random) -> dict:
    """One input made hostile: an out-of-range index or extreme value, a zero-size or reshaped array,
    another dtype. The model must refuse it with a DcmError or run it."""
    out = dict(feeds)
    name = rng.choice(sorted(out))
    x = np.array(out[name], copy=True)
    op = rng.randrange(4)
    if op == 0 and x.size:
        flat = x.reshape(-1)
        i = rng.randrange(flat.size)
        if x.dtype.kind in "iu":
            info = np.iinfo(x.dtype)
            flat[i] = min(max(_interesting(rng), int(info.min)), int(info.max))
        elif x.dtype.kind == "f":
            flat[i] = rng.choice([np.nan, np.inf, -np.inf, 3e38, -0.0, 1e-45])
        elif x.dtype.kind == "b":
            flat[i] = not flat[i]
    elif op == 1 and x.ndim:
        shape = list(x.shape)
        shape[rng.randrange(len(shape))] = 0
        x = np.zeros(shape, x.dtype)
    elif op == 2:
        x = x.reshape(-1) if x.ndim != 1 else x[None]
    else:
        x = x.astype(rng.choice([np.float32, np.float64, np.int64, np.int32, np.bool_, np.float16]))
    out[name] = x
    return out


def generate_case(rng: random.Random) -> tuple[bytes, dict | None]:
    """A mutated file and its feeds: half from the hand-made seeds (the compiled kernels), half from
    the op seeds, which sometimes keep their file intact and get hostile feeds instead."""
    if op_seeds() and rng.random() < 0.5:
        data, feeds = rng.choice(op_seeds())
    else:
        data, feeds = rng.choice(seeds()), None
    if feeds and rng.random() < 0.3:
        return data, mutate_feeds(feeds, rng)
    return _mutated(data, rng), feeds


def check(data: bytes, feeds: dict | None = None, ran: Counter | None = None) -> str:
    """'ok', 'loaded' (no feed for an input) or 'rejected'; anything but a DcmError propagates (that
    is a crash). ``feeds``: values by input name (others get random float32); ``ran`` counts the ops
    of a model that ran to its end."""
    problems = validate(data)
    try:
        model = read(data)
        sess = InferenceSession(model, threads=2)  # a session's default on 2 cores: the kernels' splits run
        inputs = {}
        for v in model.inputs:
            x = feeds.get(v.name) if feeds else None
            if x is None:
                x = _feed(v.shape) if v.dtype == "float32" else None
            if x is None:
                return "loaded"
            inputs[v.name] = x
        sess.run(None, inputs)
    except DcmError:
        return "rejected"
    if problems:
        raise AssertionError(f"validate reported {problems[0]} but read + run accepted the file")
    if ran is not None:
        ran.update({n.op for n in model.nodes})
    return "ok"


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def _limit_worker() -> None:
    """A campaign worker's bounds: address space (a huge allocation is a finding) and numpy's warnings."""
    if "libasan" not in os.environ.get("LD_PRELOAD", ""):  # ASan reserves terabytes of address space;
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))  # sanitize.sh bounds malloc instead
    np.seterr(all="ignore")  # overflow in a fuzzed model's arithmetic is not a finding


def _record(stats: dict, kind: str, outcome: str, data: bytes, feeds: dict | None, error: str = "") -> None:
    part = stats if kind == "dcm" else stats["convert"]
    part["outcomes"][outcome] = part["outcomes"].get(outcome, 0) + 1
    if outcome == "hang":
        stats["hangs"] += 1
    if outcome in ("crash", "hang"):
        stats["crashes" if outcome == "crash" else "hang_inputs"].append(
            {"kind": kind, "outcome": outcome, "input": data.hex(), "feeds": feeds, "error": error})


def _campaign(args: tuple[int, int, float]) -> dict:
    """``count`` inputs from ``seed``: a share ``convert_share`` of them mutated ONNX models through the
    converter (each in a forked child), the rest mutated .dcm files (or hostile feeds) through the
    runtime, in this process with a SIGALRM deadline."""
    seed, count, convert_share = args
    rng = random.Random(seed)
    previous = signal.signal(signal.SIGALRM, _alarm)
    stats = {"tried": 0, "outcomes": {}, "crashes": [], "hang_inputs": [], "hangs": 0, "slowest_s": 0.0,
             "ops_run": Counter(), "convert": {"tried": 0, "outcomes": {}}}
    with counting_kernels() as kernels:
        for _ in range(count):
            t = time.perf_counter()
            if convert_share and rng.random() < convert_share:
                from benchmarks.fuzz_onnx import check_conversion, generate_onnx

                data, feeds = generate_onnx(rng)
                outcome, error = check_conversion(data, feeds, HANG_SECONDS, MEMORY_LIMIT, stats["ops_run"])
                stats["convert"]["tried"] += 1
                _record(stats, "onnx", outcome, data, feeds, error)
            else:
                data, feeds = generate_case(rng)
                signal.alarm(HANG_SECONDS)
                error = ""
                try:
                    outcome = check(data, feeds, stats["ops_run"])
                except Hang:
                    outcome = "hang"
                except Exception:  # noqa: BLE001 - the fuzzer's job is to catch everything
                    outcome, error = "crash", traceback.format_exc(limit=-6)
                finally:
                    signal.alarm(0)
                _record(stats, "dcm", outcome, data, feeds, error)
            stats["slowest_s"] = max(stats["slowest_s"], time.perf_counter() - t)
            stats["tried"] += 1
    signal.signal(signal.SIGALRM, previous)
    stats["kernels"] = Counter(kernels)
    stats["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return stats


def _merge(total: dict, s: dict) -> None:
    for key in ("tried", "hangs"):
        total[key] += s[key]
    for key in ("crashes", "hang_inputs"):
        total[key] += s[key]
    for key in ("slowest_s", "max_rss_mib"):
        total[key] = max(total[key], s[key])
    for key in ("ops_run", "kernels"):
        total[key].update(s[key])
    for part, other in ((total, s), (total["convert"], s["convert"])):
        for k, v in other["outcomes"].items():
            part["outcomes"][k] = part["outcomes"].get(k, 0) + v
    total["convert"]["tried"] += s["convert"]["tried"]


def _onnx_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnx") is not None


def main(argv: list[str] | None = None) -> int:
    import multiprocessing

    from benchmarks.common import RESULTS, save
    from dcm.runtime.cpu import REGISTRY

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--convert-share", type=float, default=0.1 if _onnx_available() else 0.0,
                   help="share of inputs that are mutated ONNX models through the converter (needs onnx)")
    p.add_argument("--name", default="fuzz", help="results file: benchmarks/results/NAME.json")
    a = p.parse_args(argv)
    start = time.perf_counter()
    seed_count = len(seeds()) + len(op_seeds())  # built once here; the forked workers inherit them
    kernels = kernel_names(reachable=True)
    failed: list[str] = []
    if a.convert_share:
        from benchmarks.fuzz_onnx import failed_seeds, onnx_seeds

        onnx_seeds()
        failed = failed_seeds()
    print(f"{seed_count} seeds ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    chunk = 2_000
    jobs = [(a.seed * 1_000_003 + i, min(chunk, a.iterations - i * chunk), a.convert_share)
            for i in range(-(-a.iterations // chunk))]
    total = {"tried": 0, "outcomes": {}, "crashes": [], "hang_inputs": [], "hangs": 0, "slowest_s": 0.0,
             "max_rss_mib": 0.0, "ops_run": Counter(), "kernels": Counter(), "convert": {"tried": 0, "outcomes": {}}}
    with ProcessPoolExecutor(a.workers, mp_context=multiprocessing.get_context("fork"),
                             initializer=_limit_worker) as pool:
        for s in pool.map(_campaign, jobs):
            _merge(total, s)
            print(f"\r{total['tried']}/{a.iterations} tried, {len(total['crashes'])} crashes", end="", file=sys.stderr)
    print(file=sys.stderr)
    elapsed = time.perf_counter() - start
    for i, c in enumerate((total["crashes"] + total["hang_inputs"])[:20]):  # the file, and the feeds it ran with
        (RESULTS / "crashes").mkdir(parents=True, exist_ok=True)
        stem = RESULTS / "crashes" / f"{c['outcome']}-{i}"
        stem.with_suffix(f".{c['kind']}").write_bytes(bytes.fromhex(c["input"]))
        if c["feeds"]:
            np.savez(stem.with_suffix(".npz"), **c["feeds"])
    never_run = sorted(set(REGISTRY) - set(total["ops_run"]))
    unreached = [k for k in kernels if not total["kernels"][k]]
    print(f"| inputs tried | ok | loaded | rejected | conversions (ok / rejected) | crashes "
          f"| hangs (>{HANG_SECONDS} s) | slowest input | max RSS / worker | time |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    o, co = total["outcomes"], total["convert"]["outcomes"]
    print(f"| {total['tried']:,} | {o.get('ok', 0):,} | {o.get('loaded', 0):,} | {o.get('rejected', 0):,} | "
          f"{total['convert']['tried']:,} ({co.get('ok', 0):,} / {co.get('rejected', 0):,}) | "
          f"{len(total['crashes'])} | {total['hangs']} | {total['slowest_s']:.2f} s | {total['max_rss_mib']:.0f} MiB | "
          f"{elapsed:.0f} s |")
    never = {k: f" (never: {', '.join(v)})" if v else "" for k, v in (("kernels", unreached), ("ops", never_run))}
    print(f"compiled kernels reached: {len(kernels) - len(unreached)}/{len(kernels)}{never['kernels']}; "
          f"registry ops run: {len(REGISTRY) - len(never_run)}/{len(REGISTRY)}{never['ops']}")
    for c in total["crashes"][:3]:
        print(c["error"], file=sys.stderr)
    save(a.name, {"iterations": a.iterations, "seed": a.seed, "workers": a.workers, "convert_share": a.convert_share,
                  "elapsed_s": elapsed, "seeds": seed_count, "onnx_seeds_failing_unmutated": failed,
                  **{k: v for k, v in total.items() if k not in ("crashes", "hang_inputs")},
                  "crashes": len(total["crashes"]), "kernels": dict(sorted(total["kernels"].items())),
                  "kernels_never_reached": unreached, "ops_run": dict(sorted(total["ops_run"].items())),
                  "registry_ops": len(REGISTRY), "registry_ops_never_run": never_run})
    return 1 if total["crashes"] or total["hangs"] else 0


if __name__ == "__main__":
    sys.exit(main())
