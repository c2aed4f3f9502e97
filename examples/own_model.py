"""Example 1: your own nn.Module, trained on the bundled MNIST, compressed with the Python API,
saved as .dcm, reloaded with dcm.InferenceSession and evaluated.

    python examples/own_model.py [--out OUT] [--quick]

Takes about 2 minutes on 2 CPU cores (--quick: a few seconds, figures not meaningful).
"""
import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import dcm
from dcm import compress, mnist


class TinyConvNet(nn.Module):
    """A model that is not in dcm's zoo: two convolutions and a classifier."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


def train(model, x, y, epochs, lr, on_epoch=None):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    model.train()
    for epoch in range(epochs):
        if on_epoch:
            on_epoch(epoch)
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = order[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="example-out")
    ap.add_argument("--quick", action="store_true", help="tiny run for the test suite")
    a = ap.parse_args()
    torch.manual_seed(0)
    (xtr, ytr), (xte, yte) = mnist.load()
    if a.quick:
        xtr, ytr, xte, yte = xtr[:512], ytr[:512], xte[:256], yte[:256]
    x, y = torch.from_numpy(xtr), torch.from_numpy(ytr)
    epochs = 1 if a.quick else 4

    model = TinyConvNet()
    train(model, x, y, epochs, lr=0.05)
    with torch.no_grad():
        dense_err = float((model(torch.from_numpy(xte)).argmax(1).numpy() != yte).mean())
    print(f"dense: test error {dense_err:.2%}")

    # 1. prune with retraining: 3 pruning steps, one per epoch
    pruner = compress.Pruner(model, sparsity={"conv": 0.6, "fc": 0.92}, schedule=compress.Gradual(steps=3))
    train(model, x, y, 3 if not a.quick else 1, lr=0.02, on_epoch=lambda e: pruner.step() if e < 3 else None)
    if a.quick:
        pruner.step()
    pruner.finalize()
    # 2. trained quantization: k-means weight sharing, then fine-tune the centroids
    sharing = compress.share_weights(model, bits={"conv": 8, "fc": 5})
    train(model, x, y, epochs, lr=0.01)
    sharing.finalize()

    # 3. write the .dcm (Huffman coding happens here) and run it with dcm's runtime
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "tinyconvnet.dcm"
    dcm.from_torch(model, torch.zeros(1, 1, 28, 28), path, code_bits=sharing.code_bits())
    sess = dcm.InferenceSession(path)
    (logits,) = sess.run(None, {sess.get_inputs()[0].name: xte})
    err = float((logits.argmax(1) != yte).mean())
    dense_bytes = 4 * sum(p.numel() for p in model.parameters())
    print(f"compressed: {path} is {path.stat().st_size:,} bytes ({dense_bytes / path.stat().st_size:.1f}x smaller "
          f"than float32); test error from the file {err:.2%}")
    np.save(out / "tinyconvnet_logits.npy", logits)


if __name__ == "__main__":
    main()
