"""Ops without a kernel that ONNX defines as functions are replaced by their bodies at conversion (in
turn where a body calls one: SoftmaxCrossEntropyLoss): opset 23's Attention (from torch's dynamo
exporter too), a window function that folds to a constant; a body whose ops mean something else at
the model's opset, or one that needs an input type nobody knows, is left alone and the op named as
unsupported. Attention in the form torch writes runs on the fused attention kernel instead."""
import io
import warnings

import numpy as np
import pytest
from onnx import TensorProto, helper

from dcm.converters import ConvertOptions, from_onnx
from dcm.converters import functions
from dcm.errors import ConversionError
from dcm.runtime import InferenceSession
from dcm.runtime.cpu import REGISTRY


def _attention_model(opset: int = 23, **attrs) -> bytes:
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"], name="attn", **attrs)
    shape = [1, 2, 5, 8]
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in "qkv"],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString()


def _attention(q, k, v, causal: bool, softcap: float = 0.0) -> np.ndarray:
    s = q.astype(np.float64) @ k.swapaxes(-1, -2) / np.sqrt(q.shape[-1])
    if softcap:
        s = softcap * np.tanh(s / softcap)
    if causal:
        s = np.where(np.tril(np.ones(s.shape[-2:], bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


def _runs(node, types) -> bool:
    return node.op_type in REGISTRY and REGISTRY[node.op_type].takes_onnx(node, types)


@pytest.mark.parametrize("causal", [0, 1])
@pytest.mark.parametrize("softcap", [0.0, 50.0])
def test_attention_runs_fused_or_as_its_body(causal, softcap):
    """The form torch writes (4-D, no softcap) runs on the fused attention kernel; another form (a
    softcap) becomes the op's ONNX function body."""
    model = from_onnx(_attention_model(is_causal=causal, **({"softcap": softcap} if softcap else {})),
                      ConvertOptions(exact=True))
    ops = {n.op for n in model.nodes}
    if softcap:
        assert "Attention" not in ops and all(n.name.startswith("attn_0/") for n in model.nodes)
    else:
        assert ops == {"Attention"}
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 2, 5, 8)).astype(np.float32) for _ in range(3))
    want = _attention(q, k, v, bool(causal), softcap)
    for device in ("cpu", "torch-cpu"):
        got = InferenceSession(model, device=device).run(None, {"q": q, "k": k, "v": v})[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_window_of_constant_size_folds_to_a_constant():
    size = helper.make_tensor("size", TensorProto.INT64, [], [10])
    node = helper.make_node("HannWindow", ["size"], ["w"], periodic=0)  # not the default: the attribute is bound
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("w", TensorProto.FLOAT, [10])], [size])
    model = from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    assert model.nodes == []
    got = InferenceSession(model).run(None, {})[0]
    np.testing.assert_allclose(got, np.hanning(10), atol=1e-6)  # numpy's window is the symmetric one


def test_a_body_whose_ops_changed_meaning_is_left(monkeypatch):
    monkeypatch.setattr(functions, "_same_meaning", lambda op, version, opset: False)
    with pytest.raises(ConversionError, match="unsupported op Attention"):
        from_onnx(_attention_model(softcap=50.0))


def test_a_context_dependent_body_needs_its_input_types():
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"], softcap=50.0)
    kept = functions.expand_functions([node], 23, {}, _runs)  # no types known
    assert [n.op_type for n in kept] == ["Attention"]
    types = {n: helper.make_tensor_type_proto(TensorProto.FLOAT, [1, 2, 5, 8]) for n in "qkv"}
    expanded = functions.expand_functions([node], 23, types, _runs)
    assert len(expanded) > 1 and all(n.op_type in REGISTRY for n in expanded)


def test_torch_sdpa_exported_at_opset_23():
    """torch's dynamo exporter writes scaled_dot_product_attention as one Attention node at opset 23."""
    torch = pytest.importorskip("torch")

    class Block(torch.nn.Module):
        def __init__(self, dim: int = 16, heads: int = 2):
            super().__init__()
            self.heads, self.qkv, self.out = heads, torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)

        def forward(self, x):
            b, n, d = x.shape
            q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.out(y.transpose(1, 2).reshape(b, n, d))

    torch.manual_seed(0)
    module, buf = Block().eval(), io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(1, 7, 16),), buf, dynamo=True, opset_version=23, input_names=["x"],
                          dynamic_shapes={"x": {1: torch.export.Dim("n")}})
    import onnx

    assert "Attention" in {n.op_type for n in onnx.load_from_string(buf.getvalue()).graph.node}
    sess = InferenceSession(from_onnx(buf.getvalue(), ConvertOptions(exact=True)))
    assert any(d["op"] == "Attention" and d.get("kernel") == "attention" for d in sess.describe())  # fused
    for n in (7, 12):
        x = torch.randn(1, n, 16)
        with torch.no_grad():
            want = module(x).numpy()
        np.testing.assert_allclose(sess.run(None, {"x": x.numpy()})[0], want, rtol=1e-4, atol=1e-5)


def test_a_body_whose_function_ops_need_their_types():
    """SoftmaxCrossEntropyLoss's body calls NegativeLogLikelihoodLoss, itself built for its input types:
    those come from shape inference over the outer body."""
    node = helper.make_node("SoftmaxCrossEntropyLoss", ["scores", "labels"], ["loss"], reduction="mean")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [4, 5]),
                                            helper.make_tensor_value_info("labels", TensorProto.INT64, [4])],
                              [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])])
    model = from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    assert {n.op for n in model.nodes} <= set(REGISTRY)
    rng = np.random.default_rng(0)
    scores, labels = rng.standard_normal((4, 5)).astype(np.float32), np.array([0, 3, 1, 4], np.int64)
    log_p = scores - np.log(np.exp(scores).sum(1, keepdims=True))
    got = InferenceSession(model).run(None, {"scores": scores, "labels": labels})[0]
    np.testing.assert_allclose(got, -log_p[np.arange(4), labels].mean(), rtol=1e-5)
