import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402

from dcm import compress, zoo  # noqa: E402


def _train_steps(model, n=5, wd=1e-3):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9, weight_decay=wd)
    g = torch.Generator().manual_seed(0)
    for _ in range(n):
        x = torch.randn(16, 1, 28, 28, generator=g)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()


def test_pruned_weights_stay_zero_under_momentum_and_weight_decay():
    torch.manual_seed(0)
    net = zoo.LeNet300()
    pruner = compress.Pruner(net, sparsity={"fc1": 0.9, "fc": 0.5}, schedule=compress.Steps(n=2))
    pruner.step()
    _train_steps(net)
    s = pruner.step()
    assert s["fc1"] == pytest.approx(0.9, abs=1e-3) and s["fc2"] == pytest.approx(0.5, abs=1e-3)
    zeros = {n: (m.weight == 0).clone() for n, m in pruner.layers.items()}
    _train_steps(net)
    for n, m in pruner.layers.items():
        assert torch.all(m.weight[zeros[n]] == 0)
    pruner.finalize()
    for n, m in pruner.layers.items():
        assert torch.equal(m.weight == 0, zeros[n])


def test_gradual_schedule_is_cubic_and_monotone():
    g = compress.Gradual(steps=4)
    fr = [g.fraction(i) for i in range(6)]
    assert fr[0] == pytest.approx(1 - 0.75 ** 3) and fr[3] == 1.0 and fr == sorted(fr)


def test_quality_rule():
    net = zoo.LeNet300()
    w0 = net.fc1.weight.detach().numpy().copy()
    pruner = compress.Pruner(net, quality=1.0)
    pruner.step()
    w = net.fc1.weight.detach().numpy()
    np.testing.assert_array_equal(w == 0, np.abs(w0) <= np.std(w0))


def test_weight_sharing_keeps_k_values_and_zeros():
    torch.manual_seed(0)
    net = zoo.LeNet5()
    pruner = compress.Pruner(net, sparsity=0.8)
    pruner.step()
    pruner.finalize()
    zeros = {n: (m.weight == 0).clone() for n, m in pruner.layers.items()}
    quant = compress.share_weights(net, bits={"conv": 4, "fc": 3})
    before = {n: cb.copy() for n, cb in quant.codebooks().items()}
    _train_steps(net)
    after = quant.codebooks()
    assert any(not np.array_equal(before[n], after[n]) for n in before)  # centroids were trained
    quant.finalize()
    for n, m in quant.layers.items():
        w = m.weight.detach()
        assert torch.equal(w == 0, zeros[n])
        k = 16 if n.startswith("conv") else 8
        assert len(torch.unique(w[w != 0])) <= k


def test_centroid_gradient_is_sum_of_member_gradients():
    lin = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2, 0, 1], [2, 1, 1, 0], [0, 2, 2, 1]]))
    compress.share_weights(lin, bits=2)
    x = torch.randn(5, 4)
    lin(x).sum().backward()
    p = lin.parametrizations.weight[0]
    g_w = x.sum(0).expand(3, 4)  # d(sum(xW^T))/dW
    expect = torch.zeros_like(p.codebook)
    expect.index_add_(0, p.labels[p.mask.bool()], g_w[p.mask.bool()])
    torch.testing.assert_close(p.codebook.grad, expect)


def test_sensitivity_restores_model():
    net = zoo.LeNet300()
    x = torch.randn(8, 1, 28, 28)
    before = net(x).detach()
    table = compress.sensitivity(net, lambda m: float(m(x).abs().mean()), [0.5, 0.9], layers=["fc1", "fc2"])
    assert set(table) == {"fc1", "fc2"} and set(table["fc1"]) == {0.5, 0.9}
    assert torch.equal(net(x).detach(), before)
