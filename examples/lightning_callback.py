"""Example 3: Deep Compression inside a PyTorch Lightning Trainer.fit, with the DeepCompression
callback (dense training, pruning with retraining, trained quantization, .dcm export).

    python examples/lightning_callback.py [--out OUT] [--quick]

Needs `pip install 'dcm[lightning]'`. About a minute on 2 CPU cores.
"""
import argparse
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn as nn

import dcm
from dcm import mnist
from dcm.compress.lightning import DeepCompression


class LitMLP(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                                 nn.Linear(100, 10))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="example-out")
    ap.add_argument("--quick", action="store_true", help="tiny run for the test suite")
    a = ap.parse_args()
    torch.manual_seed(0)
    (xtr, ytr), (xte, yte) = mnist.load()
    if a.quick:
        xtr, ytr, xte, yte = xtr[:512], ytr[:512], xte[:256], yte[:256]
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(xtr), torch.from_numpy(ytr)),
                                       batch_size=64, shuffle=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    callback = DeepCompression({"fc": 0.92}, dense_epochs=1 if a.quick else 10, prune_epochs=2 if a.quick else 8,
                               prune_steps=2 if a.quick else 4, bits={"fc": 5},
                               export_to=out / "lit_mlp.dcm", example_input=torch.zeros(1, 1, 28, 28))
    trainer = pl.Trainer(max_epochs=4 if a.quick else 22, accelerator="cpu", callbacks=[callback], logger=False,
                         enable_checkpointing=False, enable_progress_bar=sys.stderr.isatty(),
                         enable_model_summary=False)
    model = LitMLP()
    trainer.fit(model, data)

    sess = dcm.InferenceSession(out / "lit_mlp.dcm")
    (logits,) = sess.run(None, {sess.get_inputs()[0].name: xte})
    size = (out / "lit_mlp.dcm").stat().st_size
    dense = 4 * sum(p.numel() for p in model.parameters())
    print(f"{out / 'lit_mlp.dcm'}: {size:,} bytes ({dense / size:.1f}x); "
          f"test error from the file {(logits.argmax(1) != yte).mean():.2%}")


if __name__ == "__main__":
    main()
