"""``dcm.from_torch`` through both torch exporters: dynamo (torch's default) and TorchScript."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")  # the dynamo exporter's dependency
from torch import nn  # noqa: E402

from dcm.converters import ConvertOptions, from_torch  # noqa: E402
from dcm.converters import torch_in  # noqa: E402
from dcm.errors import ConversionError  # noqa: E402
from dcm.format import read  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402


class SmallNet(nn.Module):
    """Conv, BatchNorm, pooling, a Reshape of the run-time batch (``view(x.shape[0], -1)``), Linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(x.view(x.shape[0], -1))


class Branchy(nn.Module):
    """Data-dependent control flow: torch.export (the dynamo exporter) refuses it, tracing takes one branch."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return SmallNet().eval()


def _check_batches(model, module) -> None:
    """The batch axis is symbolic: the model runs at batch sizes other than the example's (1)."""
    session = InferenceSession(model)
    assert isinstance(model.inputs[0].shape[0], str)
    for batch in (2, 5):
        x = torch.randn(batch, 1, 8, 8)
        (y,) = session.run(None, {"input": x.numpy()})
        np.testing.assert_allclose(y, module(x).detach().numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_each_exporter_converts_with_a_symbolic_batch(net, exporter):
    model = from_torch(net, torch.zeros(1, 1, 8, 8), options=ConvertOptions(exact=True), exporter=exporter)
    assert model.metadata["exporter"] == exporter
    assert model.opset >= (18 if exporter == "dynamo" else 7)
    _check_batches(model, net)


def test_default_is_the_dynamo_exporter(net, tmp_path):
    path = tmp_path / "net.dcm"
    model = from_torch(net, torch.zeros(1, 1, 8, 8), path, options=ConvertOptions(exact=True))
    assert model.metadata["exporter"] == "dynamo"
    assert read(path).metadata["exporter"] == "dynamo"
    _check_batches(read(path), net)


def test_auto_falls_back_to_torchscript_where_dynamo_fails():
    torch.manual_seed(0)
    module = Branchy().eval()
    x = torch.ones(2, 4)
    with pytest.raises(ConversionError, match="dynamo exporter"):
        from_torch(module, x, exporter="dynamo")
    with pytest.warns(UserWarning, match="used the TorchScript exporter"):
        model = from_torch(module, x, options=ConvertOptions(exact=True))
    assert model.metadata["exporter"] == "torchscript"
    (y,) = InferenceSession(model).run(None, {"input": x.numpy()})
    np.testing.assert_allclose(y, module(x).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_both_exporters_failing_names_both(monkeypatch, net):
    def fail(*args, exporter, **kwargs):
        raise ConversionError(f"torch.onnx.export ({exporter} exporter) failed: broken")

    monkeypatch.setattr(torch_in, "torch_to_onnx_bytes", fail)
    with pytest.raises(ConversionError, match="dynamo: .*dynamo exporter.*torchscript: .*torchscript exporter"):
        from_torch(net, torch.zeros(1, 1, 8, 8))


def test_unknown_exporter_is_a_conversion_error(net):
    with pytest.raises(ConversionError, match="unknown exporter 'onnx'"):
        from_torch(net, torch.zeros(1, 1, 8, 8), exporter="onnx")
    with pytest.raises(ConversionError, match="unknown exporter"):
        torch_in.torch_to_onnx_bytes(net, torch.zeros(1, 1, 8, 8), exporter="auto")


def test_export_restores_training_mode(net):
    net.train()
    try:
        from_torch(net, torch.zeros(2, 1, 8, 8), options=ConvertOptions(exact=True), exporter="torchscript")
        assert net.training
    finally:
        net.eval()


def test_dynamo_export_from_a_batch_of_one_keeps_the_batch_symbolic():
    """torch.export bakes in dimensions whose example size is 1; attention's head reshape then
    fixed the batch at 1 (a ViT demo evaluated at batch 1000 failed in Reshape)."""
    import numpy as np
    import torch

    from dcm.converters import ConvertOptions, from_torch
    from dcm.runtime import InferenceSession

    class Attend(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Linear(8, 16)
            self.attn = torch.nn.MultiheadAttention(16, 2)

        def forward(self, x):
            h = self.embed(x).transpose(0, 1)
            return self.attn(h, h, h)[0].transpose(0, 1)

    torch.manual_seed(0)
    module = Attend().eval()
    model = from_torch(module, torch.randn(1, 5, 8), options=ConvertOptions(exact=True), exporter="dynamo")
    x = torch.randn(4, 5, 8)
    np.testing.assert_allclose(InferenceSession(model).run(None, {"input": x.numpy()})[0],
                               module(x).detach().numpy(), rtol=1e-4, atol=1e-5)


class _Decoder(nn.Module):
    """Two inputs (the target and the encoder's memory), only the first named by the caller."""

    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerDecoderLayer(16, 2, 32, batch_first=True, dropout=0.0)

    def forward(self, x, memory):
        return self.layer(x, memory)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_inputs_past_the_named_ones_get_names_and_a_symbolic_batch(exporter):
    """The dynamo exporter refused dynamic_axes that named only some of the inputs ("Failed to convert
    'dynamic_axes' to 'dynamic_shapes'"): the others are now input_1, input_2, ..."""
    torch.manual_seed(0)
    module = _Decoder().eval()
    model = from_torch(module, (torch.randn(2, 5, 16), torch.randn(2, 7, 16)), exporter=exporter,
                       options=ConvertOptions(exact=True))
    assert [v.name for v in model.inputs] == ["input", "input_1"]
    x, memory = torch.randn(3, 5, 16), torch.randn(3, 7, 16)
    (y,) = InferenceSession(model).run(None, {"input": x.numpy(), "input_1": memory.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(y, module(x, memory).numpy(), rtol=1e-4, atol=1e-5)
