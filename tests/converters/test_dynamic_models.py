"""Transformer, decoder-attention and modern-CNN blocks exported by both torch exporters (TorchScript, dynamo=False, and
the default dynamo one) with a symbolic batch and sequence length: shapes computed at run time,
int64 token ids and masks, attention products of two run-time values. Each converts with --exact
and matches torch at two different batch/sequence sizes. Plus embedding tables gathered from their
compressed form, and the converter's GatherElements folding."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from dcm import InferenceSession  # noqa: E402
from dcm.converters.onnx_in import ConvertOptions, from_onnx  # noqa: E402
from dcm.encoder.codec import decode_tensor  # noqa: E402
from dcm.format import constants as C  # noqa: E402
from dcm.format import read, to_bytes  # noqa: E402
from dcm.runtime.cpu import shape as cpu_shape  # noqa: E402

RTOL = 1e-4


class Bert(nn.Module):
    """Token + position embeddings, padding mask from an int64 input, attention, GELU (erf) MLP."""

    def __init__(self, vocab=100, d=32, heads=4, maxlen=64):
        super().__init__()
        self.tok, self.pos, self.h = nn.Embedding(vocab, d), nn.Embedding(maxlen, d), heads
        self.qkv, self.o = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff1, self.ff2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, ids, mask):
        b, t = ids.shape
        x = self.tok(ids) + self.pos(torch.arange(t).unsqueeze(0).expand(b, t))
        q, k, v = self.qkv(x).split(x.shape[-1], dim=-1)
        hd = x.shape[-1] // self.h
        q, k, v = (z.view(b, t, self.h, hd).transpose(1, 2) for z in (q, k, v))
        att = q @ k.transpose(-2, -1) / math.sqrt(hd)
        att = att + (1.0 - mask[:, None, None, :].to(att.dtype)) * -10000.0
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, -1)
        x = self.ln1(x + self.o(y))
        return self.ln2(x + self.ff2(F.gelu(self.ff1(x))))[:, 0]


class GPT2(nn.Module):
    """Causal mask from a boolean lower triangle of run-time size, masked_fill with -inf, tanh GELU."""

    def __init__(self, vocab=100, d=32, heads=4, maxlen=64):
        super().__init__()
        self.tok, self.pos, self.h = nn.Embedding(vocab, d), nn.Embedding(maxlen, d), heads
        self.attn, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ln1, self.ln2, self.lnf = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.fc, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, ids):
        b, t = ids.shape
        x = self.tok(ids) + self.pos(torch.arange(t))
        q, k, v = self.attn(self.ln1(x)).chunk(3, dim=-1)
        hd = x.shape[-1] // self.h
        q, k, v = (z.reshape(b, t, self.h, hd).permute(0, 2, 1, 3) for z in (q, k, v))
        causal = torch.tril(torch.ones(t, t, dtype=torch.bool))
        att = ((q @ k.transpose(-1, -2)) * hd ** -0.5).masked_fill(~causal, float("-inf")).softmax(-1)
        x = x + self.proj((att @ v).permute(0, 2, 1, 3).reshape(b, t, -1))
        x = x + self.fc2(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))
        return self.head(self.lnf(x))


class EffNet(nn.Module):
    """Squeeze-excitation reshaped with the run-time batch (x.size(0)), depthwise conv, SiLU."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.se1, self.se2 = nn.Linear(8, 4), nn.Linear(4, 8)
        self.head = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = F.silu(self.stem(x))
        y = F.silu(self.dw(x))
        w = torch.sigmoid(self.se2(F.silu(self.se1(y.mean((2, 3)))))).reshape(x.size(0), -1, 1, 1)
        y = F.adaptive_avg_pool2d(y * w, 4)
        return self.head(y.reshape(y.size(0), -1))


class CausalSDPA(nn.Module):
    """scaled_dot_product_attention(is_causal=True), a -inf upper triangle, torch.gather at an
    argmax, and a pad of a shifted slice: the masks and index ops of decoder models."""

    def __init__(self, d=32, heads=4):
        super().__init__()
        self.h, self.qkv = heads, nn.Linear(d, 3 * d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.h, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        z = (q @ k.transpose(-1, -2) + torch.triu(torch.full((t, t), float("-inf")), diagonal=1)).softmax(-1) @ v
        picked = torch.gather(x, 1, torch.argmax(x[..., 0], dim=-1)[:, None, None].expand(b, 1, d))
        return ((y + z).transpose(1, 2).reshape(b, t, d) + picked + F.pad(x[:, 1:], (0, 0, 0, 1)))


def _inputs(name: str, batch: int, seq: int, rng) -> dict[str, np.ndarray]:
    if name == "effnet":
        return {"x": rng.standard_normal((batch, 3, 16, 16)).astype(np.float32)}
    if name == "sdpa":
        return {"x": rng.standard_normal((batch, seq, 32)).astype(np.float32)}
    feeds = {"ids": rng.integers(0, 100, (batch, seq)).astype(np.int64)}
    if name == "bert":
        mask = np.ones((batch, seq), np.int64)
        mask[0, seq // 2:] = 0
        feeds["mask"] = mask
    return feeds


MODELS = {"bert": Bert, "gpt2": GPT2, "effnet": EffNet, "sdpa": CausalSDPA}


def _export(name: str, dynamo: bool, path) -> None:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    args = tuple(torch.from_numpy(v) for v in _inputs(name, 2, 7, np.random.default_rng(0)).values())
    names = list(_inputs(name, 1, 1, np.random.default_rng(0)))
    axes = {n: [0] if name == "effnet" else [0, 1] for n in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            dims = {n: {a: torch.export.Dim.AUTO for a in ax} for n, ax in axes.items()}
            torch.onnx.export(model, args, str(path), input_names=names, dynamic_shapes=dims, dynamo=True,
                              verbose=False)
        else:
            torch.onnx.export(model, args, str(path), input_names=names, output_names=["y"], opset_version=17,
                              dynamic_axes={n: {a: f"{n}_{a}" for a in ax} for n, ax in axes.items()}, dynamo=False)
    return model


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", list(MODELS))
def test_exported_block_matches_torch(name, dynamo, tmp_path):
    model = _export(name, dynamo, tmp_path / "m.onnx")
    dcm_model = read(to_bytes(from_onnx(tmp_path / "m.onnx", ConvertOptions(exact=True))))
    assert all(isinstance(d, str) for v in dcm_model.inputs for d in v.shape[:1])  # symbolic batch
    sess = InferenceSession(dcm_model)
    rng = np.random.default_rng(1)
    for batch, seq in ((3, 9), (1, 4)):
        feeds = _inputs(name, batch, seq, rng)
        with torch.no_grad():
            want = model(*(torch.from_numpy(v) for v in feeds.values())).numpy()
        got = sess.run(None, feeds)[0]
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= RTOL * np.abs(want).max()


def _embedding_model(vocab: int, d: int, pruned: bool) -> onnx.ModelProto:
    table = np.random.default_rng(2).standard_normal((vocab, d)).astype(np.float32)
    if pruned:
        table[:, ::3] = 0
    g = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["y"])], "emb",
                          [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "t"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "t", d])],
                          [numpy_helper.from_array(table, "table")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("options,pruned,kind", [(ConvertOptions(), False, "codes"),
                                                 (ConvertOptions(exact=True), True, "csr")])
def test_embedding_gathered_from_compressed_rows(options, pruned, kind):
    vocab, d = 2048, 64
    assert vocab * d >= cpu_shape.SPARSE_GATHER_MIN_ELEMENTS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = from_onnx(_embedding_model(vocab, d, pruned), options)
    rec = model.tensors["table"]
    assert rec.encoding != C.ENC_RAW and len(rec.payload) < vocab * d * 4 * (0.7 if pruned else 0.3)
    sess = InferenceSession(model)
    (gather,) = sess._kernels
    assert gather.describe()["kernel"] == f"rows from {kind}"
    arrays = list(gather.table[1]) if kind == "codes" else [gather.table[1].data, gather.table[1].indices]
    assert not any(a.dtype == np.float32 and a.size >= vocab * d for a in arrays)  # never the dense table
    ids = np.array([[0, 5, -1], [2047, 3, 3]], np.int64)
    np.testing.assert_array_equal(sess.run(None, {"ids": ids})[0], decode_tensor(rec)[ids])
    with pytest.raises(Exception, match="out of range"):
        sess.run(None, {"ids": np.array([[vocab]], np.int64)})


def test_gather_elements_on_long_axes_folds():
    """onnx's reference GatherElements fails on an axis longer than 32 (np.choose); the converter
    folds it with dcm's own kernel (a dynamo BERT export hits this with its position ids)."""
    data = np.arange(512, dtype=np.int64).reshape(1, 512)
    idx = np.arange(16, dtype=np.int64).reshape(1, 16)[:, ::-1].copy()
    g = helper.make_graph([helper.make_node("GatherElements", ["d", "i"], ["p"], axis=1),
                           helper.make_node("Add", ["x", "p"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.INT64, [1, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.INT64, [1, 16])],
                          [numpy_helper.from_array(data, "d"), numpy_helper.from_array(idx, "i")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    sess = InferenceSession(from_onnx(m, ConvertOptions(exact=True)))
    x = np.ones((1, 16), np.int64)
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], x + idx)


def test_unsupported_ops_are_one_line_naming_every_op(tmp_path):
    g = helper.make_graph([helper.make_node("Bernoulli", ["x"], ["a"]), helper.make_node("TfIdfVectorizer", ["a"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(Exception, match=r"unsupported op Bernoulli .*all unsupported: Bernoulli, TfIdfVectorizer\)$"):
        from_onnx(m)


def test_value_without_inferred_shape_is_not_a_scalar():
    """Shape inference cannot see a Squeeze's axes (the converter hides weight values from it): the
    value it leaves without a shape is unknown and its Shape runs, rather than folding to [] as if
    it were a scalar (a dynamo SDPA export's causal mask failed that way)."""
    nodes = [helper.make_node("Squeeze", ["x", "axes"], ["sq"]), helper.make_node("Shape", ["sq"], ["s"]),
             helper.make_node("Reshape", ["x", "s"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.array([1], np.int64), "axes")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    sess = InferenceSession(from_onnx(m, ConvertOptions(exact=True)))
    x = np.random.default_rng(3).standard_normal((3, 1, 4)).astype(np.float32)
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], x[:, 0])
