"""Pruner and share_weights on the layers transformers and recurrent nets are made of.

For each kind: masks hold through optimizer steps (momentum + weight decay), shared weights hold at
most 2^bits distinct values after centroid fine-tuning, and the converted .dcm reproduces the
torch model.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402

from dcm import compress  # noqa: E402
from dcm.compress.layers import weight_layers  # noqa: E402
from dcm.errors import ConversionError  # noqa: E402


class Conv1D(nn.Module):
    """Hugging Face's transposed-weight linear layer (GPT-2): weight [in, out], y = x @ W + b."""

    def __init__(self, nf: int, nx: int):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.2)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return x @ self.weight + self.bias


class EmbeddingNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.fc = nn.Embedding(40, 16), nn.Linear(16, 4)

    def forward(self, ids):
        return self.fc(self.emb(ids).mean(1))


class RecurrentNet(nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.rnn, self.fc = cell(8, 16, batch_first=True), nn.Linear(16, 4)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


class AttentionNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn, self.fc = nn.MultiheadAttention(16, 2, batch_first=True), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.attn(x, x, x, need_weights=False)[0].mean(1))


class TransposedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj, self.fc = Conv1D(16, 8), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.proj(x).relu().mean(1))


def _ids(g):
    return torch.randint(0, 40, (6, 5), generator=g)


def _seq(g):
    return torch.randn(6, 5, 8, generator=g)


CASES = {  # name -> (model factory, input maker, the weights that must be found)
    "embedding": (EmbeddingNet, _ids, {"emb", "fc"}),
    "lstm": (lambda: RecurrentNet(nn.LSTM), _seq, {"rnn.weight_ih_l0", "rnn.weight_hh_l0", "fc"}),
    "gru": (lambda: RecurrentNet(nn.GRU), _seq, {"rnn.weight_ih_l0", "rnn.weight_hh_l0", "fc"}),
    "attention": (AttentionNet, lambda g: torch.randn(6, 5, 16, generator=g),
                  {"attn.in_proj_weight", "attn.out_proj", "fc"}),
    "transposed": (TransposedNet, _seq, {"proj", "fc"}),
}


def _make(case):
    torch.manual_seed(0)
    factory, inputs, names = CASES[case]
    return factory(), inputs, names


def _train(model, inputs, params, steps=4):
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.zero_grad()
        model(inputs(g)).square().mean().backward()
        opt.step()


@pytest.mark.parametrize("case", sorted(CASES))
def test_masks_hold_through_optimizer_steps(case):
    model, inputs, names = _make(case)
    assert set(weight_layers(model)) == names
    pruner = compress.Pruner(model, sparsity=0.7, schedule=compress.Steps(n=2))
    pruner.step()
    _train(model, inputs, model.parameters())
    reached = pruner.step()
    assert all(s == pytest.approx(0.7, abs=0.01) for s in reached.values()), reached
    zeros = {n: (ref.weight == 0).clone() for n, ref in pruner.layers.items()}
    _train(model, inputs, model.parameters())
    for n, ref in pruner.layers.items():
        assert torch.all(ref.weight[zeros[n]] == 0), n
    pruner.finalize()
    for n, ref in pruner.layers.items():
        assert isinstance(ref.weight, nn.Parameter) and torch.equal(ref.weight == 0, zeros[n]), n


@pytest.mark.parametrize("case", sorted(CASES))
def test_shared_weights_hold_at_most_2_bits_values_after_fine_tuning(case):
    model, inputs, _ = _make(case)
    pruner = compress.Pruner(model, sparsity=0.5)
    pruner.step()
    pruner.finalize()
    zeros = {n: (ref.weight == 0).clone() for n, ref in pruner.layers.items()}
    sharing = compress.share_weights(model, bits=3)
    before = {n: cb.copy() for n, cb in sharing.codebooks().items()}
    _train(model, inputs, sharing.parameters())
    after = sharing.codebooks()
    assert any(not np.array_equal(before[n], after[n]) for n in before)  # the centroids were trained
    sharing.finalize()
    for n, ref in sharing.layers.items():
        w = ref.weight.detach()
        assert torch.equal(w == 0, zeros[n]), n
        assert len(torch.unique(w[w != 0])) <= 8, n


@pytest.mark.parametrize("case", sorted(CASES))
def test_converted_file_reproduces_the_torch_model(case, tmp_path):
    from dcm.converters import from_torch
    from dcm.runtime import InferenceSession

    model, inputs, _ = _make(case)
    pruner = compress.Pruner(model, sparsity=0.6)
    pruner.step()
    pruner.finalize()
    sharing = compress.share_weights(model, bits=4)
    _train(model, inputs, sharing.parameters(), steps=2)
    sharing.finalize()
    model.eval()
    x = inputs(torch.Generator().manual_seed(2))
    try:
        from_torch(model, x, tmp_path / "m.dcm", code_bits=sharing.code_bits())
    except ConversionError as exc:
        if "unsupported op" in str(exc):
            pytest.skip(f"the runtime cannot run this model yet: {exc}")
        raise
    sess = InferenceSession(tmp_path / "m.dcm")
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
