"""The Lightning callback runs pruning and weight sharing inside Trainer.fit and exports a .dcm."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

import torch.nn as nn  # noqa: E402

from dcm.compress.lightning import DeepCompression  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402


class Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(20, 64), nn.Linear(64, 5)

    def forward(self, x):
        return self.fc2(self.fc1(x).relu())

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 20, generator=g)
    y = (x[:, :5].argmax(1)).long()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)


def test_callback_prunes_shares_and_exports(tmp_path):
    torch.manual_seed(0)
    net = Net()
    cb = DeepCompression({"fc": 0.8}, dense_epochs=1, prune_epochs=3, prune_steps=2, bits=4,
                         export_to=tmp_path / "net.dcm", example_input=torch.zeros(1, 20))
    trainer = pl.Trainer(max_epochs=6, accelerator="cpu", logger=False, enable_checkpointing=False, callbacks=[cb],
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(net, _data())
    for m in (net.fc1, net.fc2):
        w = m.weight.detach()
        assert (w == 0).float().mean().item() == pytest.approx(0.8, abs=0.01)
        assert 2 <= len(torch.unique(w[w != 0])) <= 16
    x = torch.randn(8, 20)
    (y,) = InferenceSession(tmp_path / "net.dcm").run(None, {"input": x.numpy()})
    np.testing.assert_allclose(y, net(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_export_needs_an_example_input():
    with pytest.raises(ValueError, match="example_input"):
        DeepCompression(0.5, prune_epochs=1, export_to="x.dcm")
