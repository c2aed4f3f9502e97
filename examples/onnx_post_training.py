"""Example 2: an ONNX model compressed post-training (no retraining) with `dcm convert`, checked
against onnxruntime with `dcm verify` and `--check`.

    python examples/onnx_post_training.py [--out OUT] [--quick]

Any ONNX file works the same way (from PyTorch, tf2onnx, a model zoo); here one is made by
training a small MLP on the bundled MNIST so the example is self-contained. About 30 seconds.
"""
import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from dcm import mnist
from dcm.converters.torch_in import torch_to_onnx_bytes


def sh(*args: str) -> None:
    print("$ dcm " + " ".join(shlex.quote(a) for a in args), flush=True)
    subprocess.run([sys.executable, "-m", "dcm.cli", *args], check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="example-out")
    ap.add_argument("--quick", action="store_true", help="tiny run for the test suite")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(0)
    (xtr, ytr), (xte, yte) = mnist.load()
    n = 1024 if a.quick else len(xtr)
    x, y = torch.from_numpy(xtr[:n]).flatten(1), torch.from_numpy(ytr[:n])
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(1 if a.quick else 5):
        for i in range(0, n, 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64]).backward()
            opt.step()
    model.eval()
    onnx_path = out / "mlp.onnx"
    onnx_path.write_bytes(torch_to_onnx_bytes(model, torch.zeros(1, 784), ("input",), ("logits",)))
    np.savez(out / "check.npz", input=xte[:500].reshape(500, 784))

    dcm_path = out / "mlp.dcm"
    # 80% of the weights removed by magnitude, 6-bit shared weights: no retraining, so check the drift
    sh("convert", str(onnx_path), "-o", str(dcm_path), "--sparsity", "0.8", "--code-bits", "6",
       "--check", str(out / "check.npz"), "--quiet")
    sh("inspect", str(dcm_path), "--paper")
    sh("verify", str(dcm_path), "--inputs", str(out / "check.npz"))


if __name__ == "__main__":
    main()
