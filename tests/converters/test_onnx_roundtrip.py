"""Real graphs exported by torch.onnx.export: ONNX -> .dcm -> run equals onnxruntime; export back."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
import torch.nn as nn  # noqa: E402

from dcm import zoo  # noqa: E402
from dcm.converters import ConvertOptions, from_onnx, from_torch, to_onnx  # noqa: E402
from dcm.converters.torch_in import torch_to_onnx_bytes  # noqa: E402
from dcm.errors import ConversionError  # noqa: E402
from dcm.format import read, to_bytes  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402


class ResBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x):
        return torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))


class Fire(nn.Module):  # SqueezeNet-style Concat block
    def __init__(self):
        super().__init__()
        self.s, self.e1, self.e3 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 6, 1), nn.Conv2d(4, 6, 3, padding=1)

    def forward(self, x):
        s = torch.relu(self.s(x))
        return torch.cat([torch.relu(self.e1(s)), torch.relu(self.e3(s))], 1)


class DepthwiseSeparable(nn.Module):
    def __init__(self):
        super().__init__()
        self.dw, self.pw, self.bn = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 16, 1), nn.BatchNorm1d(10)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.pw(torch.relu(self.dw(x))).mean((2, 3))
        return self.bn(self.fc(x)).softmax(1)


def _randomize_bn(m):
    for mod in m.modules():
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2)
            mod.weight.data.uniform_(0.5, 1.5)
    return m.eval()


MODELS = {
    "mlp": (zoo.LeNet300, (3, 1, 28, 28)),
    "lenet5": (zoo.LeNet5, (2, 1, 28, 28)),
    "resblock": (ResBlock, (2, 8, 6, 6)),
    "fire": (Fire, (2, 8, 6, 6)),
    "depthwise": (DepthwiseSeparable, (2, 8, 6, 6)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_exact_round_trip(name):
    torch.manual_seed(0)
    cls, shape = MODELS[name]
    net = _randomize_bn(cls())
    with torch.no_grad():  # prune some weights so the sparse path is exercised
        for p in net.parameters():
            if p.dim() > 1:
                p.mul_((torch.rand_like(p) > 0.6).float())
    x = torch.randn(*shape).numpy()
    src = torch_to_onnx_bytes(net, torch.from_numpy(x))
    ref = ort.InferenceSession(src, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    model = from_onnx(src, ConvertOptions(exact=True))
    assert not any(n.op in ("BatchNormalization", "Dropout") for n in model.nodes) or name == "depthwise"
    got = InferenceSession(read(to_bytes(model))).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    exported = to_onnx(read(to_bytes(model)))
    onnx.checker.check_model(exported)
    back = ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(back, ref, rtol=1e-4, atol=1e-5)
    # default mode: 8-bit codebooks, within the quantization error
    q = InferenceSession(from_onnx(src)).run(None, {"input": x})[0]
    assert np.abs(q - ref).max() <= 0.05 * np.abs(ref).max() + 1e-3


def test_from_torch_keeps_shared_weights_exactly(tmp_path):
    torch.manual_seed(0)
    net = zoo.LeNet300().eval()
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1:
                levels = torch.linspace(-0.1, 0.1, 16)
                p.copy_(levels[torch.randint(0, 16, p.shape)] * (torch.rand_like(p) > 0.9))
    x = torch.randn(4, 1, 28, 28)
    path = tmp_path / "m.dcm"
    from_torch(net, x, path, code_bits={"fc": 4})
    got = InferenceSession(path).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, net(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_batchnorm_after_gemm_is_folded():
    net = _randomize_bn(nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5)))
    src = torch_to_onnx_bytes(net, torch.randn(3, 6))
    model = from_onnx(src, ConvertOptions(exact=True))
    assert [n.op for n in model.nodes] == ["Gemm"]


def test_post_training_pruning_warns_and_prunes():
    net = zoo.LeNet300().eval()
    src = torch_to_onnx_bytes(net, torch.randn(1, 1, 28, 28))
    with pytest.warns(UserWarning, match="accuracy"):
        model = from_onnx(src, ConvertOptions(sparsity={"fc": 0.9}))
    from dcm.encoder import decode_tensor
    w = decode_tensor(model.tensors["fc1.weight"])
    assert abs((w == 0).mean() - 0.9) < 0.01


def test_malformed_onnx():
    net = zoo.LeNet300().eval()
    src = torch_to_onnx_bytes(net, torch.randn(1, 1, 28, 28))
    with pytest.raises(ConversionError):
        from_onnx(src[: len(src) // 2])
    m = onnx.load_from_string(src)
    m.graph.node[1].op_type = "NoSuchOp"
    with pytest.raises(ConversionError, match="unsupported op NoSuchOp"):
        from_onnx(m)
    m = onnx.load_from_string(src)
    del m.graph.initializer[0]
    with pytest.raises(ConversionError, match="missing|computed at run time"):
        from_onnx(m)


def test_initializers_listed_as_graph_inputs():
    """Older zoo graphs (IR < 4) list every initializer as a graph input too."""
    net = zoo.LeNet300().eval()
    x = torch.randn(2, 1, 28, 28)
    m = onnx.load_from_string(torch_to_onnx_bytes(net, x))
    for init in m.graph.initializer:
        m.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    model = from_onnx(m, ConvertOptions(exact=True))
    assert [v.name for v in model.inputs] == ["input"]
    got = InferenceSession(model).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, net(x).detach().numpy(), rtol=1e-4, atol=1e-5)
