"""The attention pass and kernel on the graphs torch exports: nn.MultiheadAttention and
F.scaled_dot_product_attention through both exporters, float, causal and boolean masks, several
sequence lengths. Each fused session must match the same model run node by node (``optimize=False``)
and torch itself."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from dcm.converters import ConvertOptions  # noqa: E402
from dcm.converters.onnx_in import from_onnx  # noqa: E402
from dcm.converters.torch_in import from_torch  # noqa: E402
from dcm.encoder import encode_tensor  # noqa: E402
from dcm.format.model import Model, Node, ValueInfo  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402
from dcm.runtime.cpu import attention, native  # noqa: E402
from dcm.runtime.kernel import LoadContext  # noqa: E402
from dcm.runtime.optimize import ATTENTION  # noqa: E402
from tests.runtime.switches import switched  # noqa: E402

_CTX = LoadContext(Model([], [], [], {}))  # kernels built alone: one thread

DIM, HEADS = 32, 4


class _Mha(nn.Module):
    def __init__(self, causal: bool):
        super().__init__()
        self.attn, self.causal = nn.MultiheadAttention(DIM, HEADS, batch_first=True), causal

    def forward(self, x):
        n = x.shape[1]
        mask = torch.triu(torch.full((n, n), float("-inf")), 1) if self.causal else None
        return self.attn(x, x, x, attn_mask=mask, need_weights=False)[0]


class _Sdpa(nn.Module):
    """q, k, v from one projection; ``mask``: "causal", a boolean [queries, keys] array, or None."""

    def __init__(self, mask: str | np.ndarray | None):
        super().__init__()
        self.qkv, self.causal = nn.Linear(DIM, 3 * DIM), isinstance(mask, str)
        self.register_buffer("keep", None if mask is None or self.causal else torch.from_numpy(mask))

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.keep, is_causal=self.causal)
        return y.transpose(1, 2).reshape(b, n, DIM)


def _sessions(model):
    fused, plain = InferenceSession(model, threads=1), InferenceSession(model, threads=1, optimize=False)
    assert [d["op"] for d in fused.describe()].count(ATTENTION) == 1
    return fused, plain


def _check(fused, plain, module, feeds):
    got, want = fused.run(None, feeds)[0], plain.run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        ref = module(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    np.testing.assert_allclose(got, np.nan_to_num(ref), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("make", [lambda: _Mha(False), lambda: _Mha(True), lambda: _Sdpa(None), lambda: _Sdpa("causal")],
                         ids=["mha", "mha_causal", "sdpa", "sdpa_causal"])
def test_exported_attention_fuses_and_matches(exporter, make):
    torch.manual_seed(0)
    module = make().eval()
    model = from_torch(module, (torch.randn(2, 9, DIM),), exporter=exporter, options=ConvertOptions(exact=True))
    fused, plain = _sessions(model)
    x = np.random.default_rng(1).standard_normal((3, 9, DIM)).astype(np.float32)
    _check(fused, plain, module, {"input": x})


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_multihead_attention_heads_reach_the_kernel_as_views(exporter):
    """nn.MultiheadAttention scales q and k by a Mul each and permutes the heads out of [sequence, batch x
    heads, features]: the kernel takes the Muls' operands (scaled_qk) and the permuted heads as views.
    Of the Transposes before it only the batch-first input's is a copy (it feeds the projection)."""
    torch.manual_seed(0)
    module = _Mha(False).eval()
    model = from_torch(module, (torch.randn(2, 9, DIM),), exporter=exporter, options=ConvertOptions(exact=True))
    fused, plain = _sessions(model)
    assert next(n for n in fused._nodes if n.op == ATTENTION).attrs == {"scale_op": "Mul", "scaled_qk": 1}
    steps = [d for d in fused.describe() if "folded_into" not in d and "fused_into" not in d]
    before = steps[:[d["op"] for d in steps].index(ATTENTION)]
    assert "Mul" not in [d["op"] for d in before[-6:]]  # q's and k's scales: in the kernel
    assert [d.get("kernel", "copy") for d in before if d["op"] == "Transpose"].count("copy") == 1
    # the heads merged back: the attention writes in the order of the Transpose that reads it
    i = next(i for i, n in enumerate(fused._nodes) if n.op == ATTENTION)
    after = next(j for j, n in enumerate(fused._nodes) if fused._nodes[i].outputs[0] in n.inputs)
    assert fused._kernels[i].out_perm == fused._kernels[after].perm
    feeds = {"input": np.random.default_rng(1).standard_normal((3, 9, DIM)).astype(np.float32)}
    _check(fused, plain, module, feeds)


def _scaled_qk_graph(q_factor: np.ndarray, k_factor: np.ndarray) -> Model:
    """(q * q_factor) @ (k * k_factor) -> Softmax -> @ v, the factors constants of any shape."""
    tensors = {"fq": encode_tensor(q_factor, quantize=False, name="fq"),
               "fk": encode_tensor(k_factor, quantize=False, name="fk")}
    nodes = [Node("Mul", ["q", "fq"], ["qs"], {}, "mq"), Node("Mul", ["fk", "k"], ["ks"], {}, "mk"),
             Node("MatMul", ["qs", "ks"], ["s"], {}, "qk"), Node("Softmax", ["s"], ["p"], {"axis": -1}, "sm"),
             Node("MatMul", ["p", "v"], ["y"], {}, "pv")]
    inputs = [ValueInfo("q", "float32", [2, 5, 8]), ValueInfo("k", "float32", [2, 8, 6]),
              ValueInfo("v", "float32", [2, 6, 3])]
    return Model(inputs, [ValueInfo("y", "float32", [2, 5, 3])], nodes, tensors, {})


@pytest.mark.parametrize("q_factor, k_factor", [
    (np.float32(0.5), np.array([0.25], np.float32)),  # single values: one scale of the scores
    (np.linspace(0.5, 1.5, 8).astype(np.float32), np.float32(0.3)),  # q's a vector: multiplied first
    (np.ones((1, 1, 1, 1), np.float32), np.float32(2.0)),  # a single value that widens q: multiplied first
], ids=["scalars", "vector", "wider"])
def test_scaled_qk_matches_the_graph(q_factor, k_factor):
    model = _scaled_qk_graph(np.asarray(q_factor), np.asarray(k_factor))
    fused, plain = _sessions(model)
    assert next(n for n in fused._nodes if n.op == ATTENTION).attrs.get("scaled_qk") == 1
    rng = np.random.default_rng(12)
    feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in (("q", (2, 5, 8)), ("k", (2, 8, 6)),
                                                                        ("v", (2, 6, 3)))}
    got, want = fused.run(None, feeds)[0], plain.run(None, feeds)[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_boolean_mask_rows_masked_everywhere_become_zero(exporter):
    """SDPA's boolean mask exports as Softmax, IsNaN, Where(nan, 0, p): a query that may see no key
    gets an all-NaN row, which the graph (and so the fused kernel) turns into zeros."""
    torch.manual_seed(0)
    keep = np.tril(np.ones((9, 9), bool))
    keep[4] = False  # query 4 sees nothing
    module = _Sdpa(keep).eval()
    model = from_torch(module, (torch.randn(2, 9, DIM),), exporter=exporter, options=ConvertOptions(exact=True))
    fused, plain = _sessions(model)
    node = next(n for n in fused._nodes if n.op == ATTENTION)
    assert node.attrs["nan_to"] == 0.0
    feeds = {"input": np.random.default_rng(2).standard_normal((2, 9, DIM)).astype(np.float32)}
    got = fused.run(None, feeds)[0]
    np.testing.assert_allclose(got, plain.run(None, feeds)[0], rtol=1e-5, atol=1e-6)
    assert np.isfinite(got).all()


def _torchscript(module, x, names, axes):
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, x, buf, input_names=names, output_names=["output"], dynamic_axes=axes,
                          opset_version=17, dynamo=False)
    return from_onnx(buf.getvalue(), ConvertOptions(exact=True))


@pytest.mark.parametrize("causal", [False, True])
def test_any_sequence_length_and_one_head_at_a_time(causal, monkeypatch):
    """A graph with a symbolic sequence, run at several lengths; then again with the scores made one
    head at a time (the memory bound set to one head's [queries, keys] matrix)."""
    torch.manual_seed(0)
    module = _Sdpa("causal" if causal else None).eval()
    model = _torchscript(module, (torch.randn(2, 8, DIM),), ["input"], {"input": {0: "b", 1: "n"}, "output": {0: "b", 1: "n"}})
    fused, plain = _sessions(model)
    rng = np.random.default_rng(3)
    for n in (1, 7, 33):
        _check(fused, plain, module, {"input": rng.standard_normal((2, n, DIM)).astype(np.float32)})
    heads = []
    original = attention._softmax_last
    monkeypatch.setattr(native, "attention", None)  # numpy's path: the compiled one works in row blocks
    monkeypatch.setattr(attention, "SCORES_MAX_BYTES", 33 * 33 * 4)
    monkeypatch.setattr(attention, "_softmax_last", lambda s, *a: heads.append(s.shape) or original(s, *a))
    _check(fused, plain, module, {"input": rng.standard_normal((2, 33, DIM)).astype(np.float32)})
    assert heads == [(33, 33)] * (2 * HEADS)


def test_padding_mask_of_a_text_encoder():
    """BERT-style (the zoo's bert_4x256): a [batch, keys] padding mask input, made a -inf float mask
    in the graph."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(DIM, HEADS, 2 * DIM, dropout=0.0, batch_first=True)

    class Text(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)

        def forward(self, x, mask):
            return self.encoder(x, src_key_padding_mask=mask == 0)

    module = Text().eval()
    axes = {"x": {0: "b", 1: "n"}, "mask": {0: "b", 1: "n"}, "output": {0: "b", 1: "n"}}
    model = _torchscript(module, (torch.randn(2, 8, DIM), torch.ones(2, 8, dtype=torch.int64)), ["x", "mask"], axes)
    fused, plain = _sessions(model)
    rng = np.random.default_rng(4)
    mask = np.ones((3, 8), np.int64)  # torch's export of MultiheadAttention fixes the sequence length
    mask[1, 5:] = 0
    _check(fused, plain, module, {"x": rng.standard_normal((3, 8, DIM)).astype(np.float32), "mask": mask})


def test_nan_fill_kernel_alone():
    rng = np.random.default_rng(5)
    q, k, v = rng.standard_normal((1, 2, 3, 4)), rng.standard_normal((1, 2, 4, 3)), rng.standard_normal((1, 2, 3, 4))
    mask = np.zeros((3, 3))
    mask[1] = -np.inf
    kernel = attention.Attention(Node(ATTENTION, ["q", "k", "v", "m"], ["y"], {"scale_op": "", "nan_to": 0.0}, "a"), _CTX)
    s = q @ k + mask
    with np.errstate(invalid="ignore"):  # the masked row: -inf - -inf (a session runs under this too)
        y = kernel(q, k, v, mask)[0]
        p = np.exp(s - s.max(-1, keepdims=True))
        want = np.nan_to_num(p / p.sum(-1, keepdims=True)) @ v
    np.testing.assert_allclose(y, want, rtol=1e-12)
    assert (y[:, :, 1] == 0).all()


@pytest.mark.parametrize("zero", [0.0, -0.0])
def test_a_mask_of_zeros_changes_nothing(zero):
    """The kernel skips adding a mask that is all zeros (BERT's mask with no padding): the result is
    the unmasked one, as adding the zeros would give."""
    rng = np.random.default_rng(6)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((2, 3, 5, 4), (2, 3, 4, 5), (2, 3, 5, 4)))
    kernel = attention.Attention(Node(ATTENTION, ["q", "k", "v", "m"], ["y"], {"scale_op": ""}, "a"), _CTX)
    plain = attention.Attention(Node(ATTENTION, ["q", "k", "v"], ["y"], {"scale_op": ""}, "a"), _CTX)
    mask = np.full((2, 1, 1, 5), zero, np.float32)
    np.testing.assert_array_equal(kernel(q, k, v, mask)[0], plain(q, k, v)[0])
    s = q @ k + mask
    p = np.exp(s - s.max(-1, keepdims=True))
    np.testing.assert_allclose(kernel(q, k, v, mask)[0], (p / p.sum(-1, keepdims=True)) @ v, rtol=1e-5, atol=1e-6)
    half = mask.astype(np.float64)  # another type: numpy's promotion, as the unfused Add would give
    assert kernel(q, k, v, half)[0].dtype == np.float64


def _kernel(inputs: list[str], attrs: dict, threads: int = 1) -> attention.Attention:
    ctx = LoadContext(Model([], [], [], {}))
    ctx.threads = threads
    return attention.Attention(Node(ATTENTION, inputs, ["y"], attrs, "a"), ctx)


# (q, k, v, mask, scale): shapes; the mask and scale broadcast as the unfused Add and Mul/Div would
COMPILED_CASES = {
    "vit": ((1, 3, 197, 64), (1, 3, 64, 197), (1, 3, 197, 64), None, None),
    "bert_padding_mask": ((2, 4, 16, 8), (2, 4, 8, 16), (2, 4, 16, 8), (2, 1, 1, 16), ()),
    "causal_mask_2d": ((1, 2, 9, 8), (1, 2, 8, 9), (1, 2, 9, 8), (9, 9), (1, 1, 1, 1)),
    "shared_v_heads": ((2, 3, 6, 4), (2, 3, 4, 7), (1, 3, 7, 5), (7,), None),
    "k_of_lower_rank": ((2, 3, 6, 4), (4, 7), (3, 7, 5), (1, 6, 1), ()),
    "mask_widens_batch": ((3, 5, 4), (3, 4, 6), (3, 6, 2), (2, 1, 5, 6), None),
    "no_heads": ((5, 4), (4, 6), (6, 3), (5, 1), ()),
    "one_query": ((4, 1, 16), (4, 16, 300), (4, 300, 16), None, ()),
    "long_keys": ((1, 2, 40, 8), (1, 2, 8, 5000), (1, 2, 5000, 8), (1, 5000), None),
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("scale_op", ["Mul", "Div"])
@pytest.mark.parametrize("case", COMPILED_CASES.values(), ids=COMPILED_CASES.keys())
def test_compiled_kernel_matches_numpy(case, scale_op, threads, monkeypatch):
    """The compiled kernel (one head's block of query rows per task) against numpy's path on the same
    inputs: broadcast heads, masks of every rank, blocks that split a head, more keys than one block."""
    rng = np.random.default_rng(7)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in case[:3])
    mask = None if case[3] is None else np.where(rng.random(case[3]) < 0.3, -1e4, 0.1).astype(np.float32)
    scale = None if case[4] is None else np.full(case[4], 0.125, np.float32)
    inputs = ["q", "k", "v"] + (["m"] if mask is not None else [""] if scale is not None else [])
    inputs += ["c"] if scale is not None else []
    args = [x for x in (q, k, v) + ((mask,) if mask is not None else (None,) if scale is not None else ()) + (
        (scale,) if scale is not None else ())]
    kernel = _kernel(inputs, {"scale_op": scale_op if scale is not None else ""}, threads)
    calls = []
    original = native.attention
    monkeypatch.setattr(native, "attention", lambda *a: calls.append(1) or original(*a))
    got = kernel(*args)[0]
    assert calls == [1]
    monkeypatch.setattr(native, "attention", None)
    want = kernel(*args)[0]
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)  # two float32 sgemm, unscaled scores up to ~40


def test_compiled_kernel_reads_transposed_views_without_copies():
    """k as the transposed view an exported graph hands over, q as a view of a wider projection."""
    rng = np.random.default_rng(8)
    qkv = rng.standard_normal((2, 10, 3, 4, 8)).astype(np.float32)  # [batch, seq, q/k/v, heads, dim]
    q = qkv[:, :, 0].transpose(0, 2, 1, 3)  # [2, 4, 10, 8], no axis of unit stride but the last
    k = qkv[:, :, 1].transpose(0, 2, 3, 1)  # [2, 4, 8, 10], column-major
    v = qkv[:, :, 2].transpose(0, 2, 1, 3)
    got = _kernel(["q", "k", "v"], {}, 2)(q, k, v)[0]
    s = np.ascontiguousarray(q) @ np.ascontiguousarray(k)
    p = np.exp(s - s.max(-1, keepdims=True))
    np.testing.assert_allclose(got, (p / p.sum(-1, keepdims=True)) @ v, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(native.packed_simd is None or native.packed_simd() != "avx512", reason="needs AVX-512")
@pytest.mark.parametrize("scale_op", [1, 2])
@pytest.mark.parametrize("case", ["vit", "bert_padding_mask", "long_keys"])
def test_packed_products_match_sgemm(case, scale_op):
    """On AVX-512 the two products run on the packed GEMM (a head's k and v packed once, the scale in k;
    a k whose keys are contiguous, as the exported graphs hand it over, packed 16 x 16 at a time); with
    the SIMD paths off, and for a q whose rows are not unit-stride, on sgemm: the same results."""
    rng = np.random.default_rng(11)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in COMPILED_CASES[case][:3])
    shape = COMPILED_CASES[case][3]
    mask = None if shape is None else np.where(rng.random(shape) < 0.3, -1e4, 0.1).astype(np.float32)
    out = {}
    for path in ("packed", "sgemm", "q_transposed", "k_columns"):
        y = np.empty(q.shape[:-1] + v.shape[-1:], np.float32)
        # q_transposed / k_columns: the matrix column-major, its rows not of unit stride / its columns
        qq = np.ascontiguousarray(q.swapaxes(-1, -2)).swapaxes(-1, -2) if path == "q_transposed" else q
        kk = np.ascontiguousarray(k.swapaxes(-1, -2)).swapaxes(-1, -2) if path == "k_columns" else k
        with switched(native.set_pointwise_simd, path != "sgemm"):
            native.attention(qq, kk, v, y, mask, scale_op, 0.125, None, 2)
        out[path] = y
    # atol: sgemm sums the scores in its own order, which depends on the CPU OpenBLAS picked a kernel
    # for (on Zen 5, ViT's 64-wide scores: outputs near 0.005 off by 2e-5), and the softmax scales a
    # score's rounding by its exponential
    for path in ("packed", "q_transposed", "k_columns"):
        np.testing.assert_allclose(out[path], out["sgemm"], rtol=1e-4, atol=1e-4, err_msg=path)


def test_compiled_kernel_writes_an_output_in_any_axis_order():
    """out may be a transposed view (the order of the Transpose after the attention) whose rows are
    whole; an out whose axes make two elements share an address is refused."""
    rng = np.random.default_rng(13)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((1, 4, 16, 8), (1, 4, 8, 16), (1, 4, 16, 8)))
    want = np.empty((1, 4, 16, 8), np.float32)
    native.attention(q, k, v, want, None, 1, 0.125, None, 2)
    for perm in ((2, 0, 1, 3), (0, 2, 1, 3), (1, 2, 0, 3)):
        out = np.full([want.shape[a] for a in perm], np.nan, np.float32).transpose(np.argsort(perm))
        native.attention(q, k, v, out, None, 1, 0.125, None, 2)
        np.testing.assert_array_equal(out, want)
    shared = np.lib.stride_tricks.as_strided(np.empty(16 * 8 * 4, np.float32), (1, 4, 16, 8), (0, 64, 32, 4))
    with pytest.raises(ValueError, match="two elements at one address"):
        native.attention(q, k, v, shared, None, 1, 0.125, None, 1)


def test_compiled_kernel_fills_rows_masked_everywhere():
    rng = np.random.default_rng(9)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((2, 5, 4), (2, 4, 5), (2, 5, 3)))
    mask = np.zeros((5, 5), np.float32)
    mask[2] = -np.inf
    with np.errstate(invalid="ignore"):
        got = _kernel(["q", "k", "v", "m"], {"nan_to": 0.0})(q, k, v, mask)[0]
    assert (got[:, 2] == 0).all() and np.isfinite(got).all()
    keep = [0, 1, 3, 4]
    want = _kernel(["q", "k", "v"], {})(q[:, keep], k, v)[0]
    np.testing.assert_allclose(got[:, keep], want, rtol=1e-6)


@pytest.mark.parametrize("bad, message", [
    (lambda q, k, v, out: (q, k[:, :3], v, out), "shapes must be"),
    (lambda q, k, v, out: (q, k, v, out[:, :, :2]), "shapes must be"),
    (lambda q, k, v, out: (q, k, v, np.empty((2, 5, 8), np.float32)[..., ::2]), "row-major"),
    (lambda q, k, v, out: (q, k, v, q), "overlaps"),
    (lambda q, k, v, out: (q[None], k, v, out), "no more axes than out"),
    (lambda q, k, v, out: (q, k, v, np.empty((3, 5, 4), np.float32)), "does not broadcast"),
    (lambda q, k, v, out: (q, k, v, out, np.zeros((5, 3), np.float32)), "mask \\[lq or 1, lk or 1\\]"),
])
def test_compiled_kernel_refuses_inconsistent_arrays(bad, message):
    rng = np.random.default_rng(10)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((2, 5, 4), (2, 4, 5), (2, 5, 4)))
    out = np.empty((2, 5, 4), np.float32)
    with pytest.raises(ValueError, match=message):
        native.attention(*bad(q, k, v, out))
