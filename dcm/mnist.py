"""The bundled MNIST copy and the standard split every reported figure uses (dcm/data/mnist/README.md).

train: all of train5k + the first 5,000 images of t10k; test: the last 5,000 of t10k.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data" / "mnist"


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic, = struct.unpack(">i", raw[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(f">{ndim}i", raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(folder: Path = DATA) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((x_train, y_train), (x_test, y_test)); x float32 [N, 1, 28, 28] scaled to [0, 1], y int64."""
    tx, ty = _idx(folder / "train5k-images-idx3-ubyte.gz"), _idx(folder / "train5k-labels-idx1-ubyte.gz")
    vx, vy = _idx(folder / "t10k-images-idx3-ubyte.gz"), _idx(folder / "t10k-labels-idx1-ubyte.gz")
    x_train = np.concatenate([tx, vx[:5000]]).astype(np.float32)[:, None] / 255.0
    y_train = np.concatenate([ty, vy[:5000]]).astype(np.int64)
    x_test = vx[5000:].astype(np.float32)[:, None] / 255.0
    return (x_train, y_train), (x_test, vy[5000:].astype(np.int64))
