"""The transformer side of the runtime: MatMul + bias Add fused into one internal node at load, and
a pruned linear layer's kernel chosen per call from the rows it multiplies."""
import numpy as np
import pytest
import scipy.sparse as sp

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from dcm.converters import ConvertOptions  # noqa: E402
from dcm.converters.onnx_in import from_onnx  # noqa: E402
from dcm.encoder.codec import CsrParts  # noqa: E402
from dcm.errors import UnsupportedOpError  # noqa: E402
from dcm.format.model import Model, Node  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402
from dcm.runtime.kernel import LoadContext  # noqa: E402
from dcm.runtime.cpu import native  # noqa: E402
from dcm.runtime.cpu.matmul import WeightMatmul, prefers_dense  # noqa: E402
from dcm.runtime.optimize import ATTENTION, MATMUL_ADD, optimize  # noqa: E402

RNG = np.random.default_rng(0)
W = RNG.standard_normal((16, 8)).astype(np.float32)
B = RNG.standard_normal(8).astype(np.float32)


def _model(nodes, inits, outputs=("y",), fed=None):
    """``fed``: a second graph input {name: shape}, a value computed at run time."""
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 16])]
    inputs += [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in (fed or {}).items()]
    g = helper.make_graph(nodes, "g", inputs,
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return from_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), ConvertOptions(exact=True))


def _runs_alike(model):
    rng = np.random.default_rng(1)
    feeds = {v.name: rng.standard_normal(v.shape).astype(np.float32) for v in model.inputs}
    fused, plain = InferenceSession(model), InferenceSession(model, optimize=False)
    for got, want in zip(fused.run(None, feeds), plain.run(None, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    return fused


@pytest.mark.parametrize("bias_first", [False, True])
def test_matmul_add_fuses_into_one_node(bias_first):
    add = ["b", "m"] if bias_first else ["m", "b"]
    model = _model([helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
                    helper.make_node("Add", add, ["y"], name="add")], {"w": W, "b": B})
    graph = optimize(model, ["fuse_matmul_add"], internal=frozenset({MATMUL_ADD}))
    assert [(n.op, n.inputs, n.outputs, n.name) for n in graph.nodes] == [(MATMUL_ADD, ["x", "w", "b"], ["y"], "mm")]
    assert graph.folded == {"add": "mm"}
    sess = _runs_alike(model)
    assert [d["op"] for d in sess.describe()] == [MATMUL_ADD, "Add"]  # the Add is listed as folded
    assert sess.describe()[1]["folded_into"] == "mm"


@pytest.mark.parametrize("case", ["bias_2d", "product_read_twice", "runtime_weight", "bias_is_runtime"])
def test_matmul_add_leaves_other_graphs(case):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "b"], ["y"], name="add")]
    inits, outputs, fed = {"w": W, "b": B}, ("y",), None
    if case == "bias_2d":  # a [1, out] bias may broadcast to a higher rank than the product's
        inits["b"] = B[None]
    elif case == "product_read_twice":
        nodes.append(helper.make_node("Relu", ["m"], ["z"], name="relu"))
        outputs = ("y", "z")
    elif case == "runtime_weight":
        inits, fed = {"b": B}, {"w": [16, 8]}
    else:
        inits, fed = {"w": W}, {"b": [8]}
    model = _model(nodes, inits, outputs, fed)
    graph = optimize(model, ["fuse_matmul_add"], internal=frozenset({MATMUL_ADD}))
    assert MATMUL_ADD not in [n.op for n in graph.nodes] and graph.folded == {}
    _runs_alike(model)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("scale_shape", [(8,), (1, 1, 8)])
def test_layer_scale_goes_into_the_weight(sparse, scale_shape):
    """MatMul + bias, then a Mul by a constant per output (ConvNeXt's gamma): one node whose kernel
    scales W and b at load, dense or sparse."""
    w = W * (RNG.random(W.shape) < 0.2) if sparse else W
    gamma = RNG.standard_normal(scale_shape).astype(np.float32)
    model = _model([helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
                    helper.make_node("Add", ["m", "b"], ["a"], name="add"),
                    helper.make_node("Mul", ["g", "a"], ["y"], name="scale")], {"w": w, "b": B, "g": gamma})
    graph = optimize(model, ["fuse_matmul_add", "fuse_matmul_scale"], internal=frozenset({MATMUL_ADD}))
    assert [(n.op, n.inputs, n.outputs) for n in graph.nodes] == [(MATMUL_ADD, ["x", "w", "b", "g"], ["y"])]
    assert graph.folded == {"add": "mm", "scale": "mm"}
    sess = _runs_alike(model)
    assert sess.describe()[0]["kernel"] == ("sparse" if sparse else "dense")


@pytest.mark.parametrize("case", ["per_row", "product_read_twice", "runtime_scale"])
def test_layer_scale_leaves_other_graphs(case):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "b"], ["a"], name="add"),
             helper.make_node("Mul", ["a", "g"], ["y"], name="scale")]
    inits, outputs, fed = {"w": W, "b": B, "g": RNG.standard_normal(8).astype(np.float32)}, ("y",), None
    if case == "per_row":  # [5, 1]: a factor per token, not per output
        inits["g"] = RNG.standard_normal((5, 1)).astype(np.float32)
    elif case == "product_read_twice":
        nodes.append(helper.make_node("Relu", ["a"], ["z"], name="relu"))
        outputs = ("y", "z")
    else:
        del inits["g"]
        fed = {"g": [8]}
    model = _model(nodes, inits, outputs, fed)
    graph = optimize(model, ["fuse_matmul_add", "fuse_matmul_scale"], internal=frozenset({MATMUL_ADD}))
    assert [n.op for n in graph.nodes][:2] == [MATMUL_ADD, "Mul"] and "scale" not in graph.folded
    _runs_alike(model)


def test_matmul_add_waits_for_a_backend_that_runs_it():
    model = _model([helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
                    helper.make_node("Add", ["m", "b"], ["y"], name="add")], {"w": W, "b": B})
    assert [n.op for n in optimize(model).nodes] == ["MatMul", "Add"]  # no internal ops offered


def test_a_file_cannot_name_an_internal_op():
    model = _model([helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
                    helper.make_node("Add", ["m", "b"], ["y"], name="add")], {"w": W, "b": B})
    hostile = type(model)(**{**model.__dict__, "nodes": [Node(MATMUL_ADD, ["x", "w", "b"], ["y"], {}, "mm")]})
    with pytest.raises(UnsupportedOpError, match="unsupported op dcm.MatMulAdd"):
        InferenceSession(hostile)


@pytest.mark.parametrize("kernels", ["sparse", "dense", None])
def test_matmul_add_on_every_kernel(kernels):
    w = W * (RNG.random(W.shape) < 0.2)
    model = _model([helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
                    helper.make_node("Add", ["m", "b"], ["y"], name="add")], {"w": w.astype(np.float32), "b": B})
    x = np.random.default_rng(2).standard_normal((2, 5, 16)).astype(np.float32)
    got = InferenceSession(model, kernels=kernels).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, x @ w + B, rtol=1e-5, atol=1e-5)


def test_prefers_dense_by_rows_and_density():
    assert not prefers_dense(0.9, 1)  # one row keeps the load-time choice
    assert prefers_dense(0.1, 4, 1000) and not prefers_dense(0.03, 4, 1000)
    assert not prefers_dense(0.1, 4, 37_748_736)  # AlexNet's fc6 at a few rows: bound by memory traffic
    assert not prefers_dense(0.1, 128, 1000) and prefers_dense(0.4, 128, 1000)
    # at 8+ rows the break-even density falls where a 32-row panel of the inputs outgrows L1, less on
    # the kernel's AVX-512 path
    assert not prefers_dense(0.25, 128, 262_144, 256) and prefers_dense(0.33, 128, 262_144, 1024)
    if native.set_avx512 is not None:
        previous = native.set_avx512(False)
        try:
            assert prefers_dense(0.25, 128, 262_144, 1024)
        finally:
            native.set_avx512(previous)
        if native.batched_simd() == "avx512":
            assert not prefers_dense(0.25, 128, 262_144, 1024)


def _sparse(density, shape=(64, 48)):
    m = sp.random_array(shape, density=density, format="csr", dtype=np.float32, rng=np.random.default_rng(3))
    m.sort_indices()
    return CsrParts(m.shape, m.data, None, None, m.indices, m.indptr), m.toarray()


@pytest.mark.parametrize("rows", [1, 4, 8, 100])
def test_sparse_weight_by_rows_matches_dense(rows):
    parts, w = _sparse(0.25)
    mm = WeightMatmul("sparse", parts, prefer="right", vectors=True, by_rows=True)
    x = np.random.default_rng(4).standard_normal((rows, 48)).astype(np.float32)
    bias = np.arange(64, dtype=np.float32)
    np.testing.assert_allclose(mm.right(x), x @ w.T, rtol=1e-5, atol=1e-5)
    want = np.maximum(x @ w.T + bias, 0)
    if mm.native is not None:  # the compiled kernels' bias and ReLU epilogue
        np.testing.assert_allclose(mm.fused_right(x, bias, True), want, rtol=1e-5, atol=1e-5)
    assert mm.holds_dense_form == prefers_dense(mm.density, rows, 64 * 48, 48)  # made only when used


def test_sparse_weight_without_by_rows_never_copies():
    parts, w = _sparse(0.25)
    mm = WeightMatmul("sparse", parts, prefer="right")
    x = np.ones((100, 48), np.float32)
    np.testing.assert_allclose(mm.right(x), x @ w.T, rtol=1e-5, atol=1e-4)
    assert not mm.holds_dense_form


def test_requested_sparse_kernel_stays_sparse():
    w = (W * (RNG.random(W.shape) < 0.25)).astype(np.float32)
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], {"w": w})
    chosen, forced = InferenceSession(model), InferenceSession(model, kernels="sparse")
    assert forced.describe()[0]["kernel"] == "sparse" and "dense_rows" not in forced.describe()[0]
    x = np.random.default_rng(5).standard_normal((2, 5, 16)).astype(np.float32)
    np.testing.assert_allclose(chosen.run(None, {"x": x})[0], forced.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)


def _attention_model(scale_op="Div", mask="add", axis=-1, extra_reader=False):
    """x [2, 5, 16] as q, k and v of 2 heads of 8: softmax(scale(q @ k^T) + mask) @ v."""
    nodes = [helper.make_node("Reshape", ["x", "heads"], ["h"], name="split"),
             helper.make_node("Transpose", ["h"], ["q"], name="tq", perm=[0, 2, 1, 3]),
             helper.make_node("Transpose", ["h"], ["kt"], name="tk", perm=[0, 2, 3, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["s"], name="qk")]
    inits = {"heads": np.array([2, 5, 2, 8], np.int64), "c": np.array(8 ** -0.5 if scale_op == "Mul" else 8 ** 0.5,
                                                                       np.float32),
             "mask": np.where(np.arange(5) < 4, 0, -1e9).astype(np.float32).reshape(1, 1, 1, 5)}
    last = "s"
    if scale_op:
        nodes.append(helper.make_node(scale_op, ["s", "c"], ["s2"], name="scale"))
        last = "s2"
    if mask:
        nodes.append(helper.make_node("Add", ["mask", last] if mask == "add_first" else [last, "mask"], ["s3"],
                                      name="mask"))
        last = "s3"
    nodes += [helper.make_node("Softmax", [last], ["p"], name="softmax", axis=axis),
              helper.make_node("MatMul", ["p", "q"], ["y"], name="pv")]
    outputs = ("y",)
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["s"], ["z"], name="relu"))
        outputs = ("y", "z")
    return _model(nodes, inits, outputs)


@pytest.mark.parametrize("scale_op, mask", [("Div", "add"), ("Mul", "add_first"), ("", ""), ("Mul", "")])
def test_attention_fuses_into_one_node(scale_op, mask):
    model = _attention_model(scale_op, mask)
    graph = optimize(model, ["fuse_attention"], internal=frozenset({ATTENTION}))
    fused = [n for n in graph.nodes if n.op == ATTENTION]
    assert len(fused) == 1 and fused[0].attrs == {"scale_op": scale_op} and fused[0].outputs == ["y"]
    assert fused[0].inputs[:3] == ["q", "kt", "q"]
    assert set(graph.folded) == {"qk", "softmax"} | ({"scale"} if scale_op else set()) | ({"mask"} if mask else set())
    assert [n.op for n in graph.nodes if n.op in ("Softmax", "MatMul")] == []
    _runs_alike(model)


@pytest.mark.parametrize("case", ["softmax_axis_2", "scores_read_twice"])
def test_attention_leaves_other_graphs(case):
    model = _attention_model(axis=2) if case == "softmax_axis_2" else _attention_model(extra_reader=True)
    graph = optimize(model, ["fuse_attention"], internal=frozenset({ATTENTION}))
    assert ATTENTION not in [n.op for n in graph.nodes] and graph.folded == {}
    assert [n.op for n in optimize(_attention_model()).nodes].count(ATTENTION) == 0  # not offered: not written


def test_attention_one_head_at_a_time_matches_all_heads(monkeypatch):
    """numpy's path (types other than float32, builds without the compiled kernel) bounds its scores to
    one head's when all heads' would be large."""
    from dcm.runtime.cpu import attention, native

    monkeypatch.setattr(native, "attention", None)

    rng = np.random.default_rng(6)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((2, 3, 6, 4), (2, 3, 4, 7), (1, 3, 7, 5)))
    mask = np.where(rng.random((2, 1, 1, 7)) < 0.3, -1e9, 0).astype(np.float32)
    scale = np.float32(0.5)
    node = Node(ATTENTION, ["q", "k", "v", "m", "c"], ["y"], {"scale_op": "Mul"}, "att")
    kernel = attention.Attention(node, LoadContext(Model([], [], [], {})))
    s = q @ k * scale + mask
    p = np.exp(s - s.max(-1, keepdims=True))
    want = (p / p.sum(-1, keepdims=True)) @ v
    np.testing.assert_allclose(kernel(q, k, v, mask, scale)[0], want, rtol=1e-5, atol=1e-6)
    calls = []
    monkeypatch.setattr(attention, "SCORES_MAX_BYTES", 6 * 7 * 4)  # one head's scores
    original = attention._softmax_last
    monkeypatch.setattr(attention, "_softmax_last", lambda s, *a: calls.append(s.shape) or original(s, *a))
    np.testing.assert_allclose(kernel(q, k, v, mask, scale)[0], want, rtol=1e-5, atol=1e-6)
    assert calls == [(6, 7)] * 6  # six heads, one [queries, keys] matrix each


def _tail(nodes: list, bias: bool, second_reader: str | None) -> tuple[str, ...]:
    """The graph's outputs after appending the bias Add ("g" + "beta" -> "y") and a Relu of
    ``second_reader`` (another reader of an intermediate, which keeps a fusion from taking it)."""
    if bias:
        nodes.append(helper.make_node("Add", ["g", "beta"], ["y"], name="beta"))
    if second_reader:
        nodes.append(helper.make_node("Relu", [second_reader], ["z"], name="relu"))
    return ("y", "z") if second_reader else ("y",)


def _converted(nodes, inits: dict, outputs, opset: int):
    """The graph of ``nodes`` on x [2, 5, 16], converted with --exact."""
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 16])],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return from_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]), ConvertOptions(exact=True))


def _layer_norm_model(square="Pow", bias=True, opset=17, axes=(-1,), extra_reader=False):
    """LayerNormalization over x's last axis written out as torch exports it before opset 17."""
    ax = {"axes": list(axes)} if opset < 18 else {}
    ax_in = [] if opset < 18 else ["axes"]
    nodes = [helper.make_node("ReduceMean", ["x", *ax_in], ["mean"], name="mean", **ax),
             helper.make_node("Sub", ["x", "mean"], ["d"], name="sub"),
             helper.make_node("Pow", ["d", "two"], ["sq"], name="sq") if square == "Pow"
             else helper.make_node("Mul", ["d", "d"], ["sq"], name="sq"),
             helper.make_node("ReduceMean", ["sq", *ax_in], ["var"], name="var", **ax),
             helper.make_node("Add", ["var", "eps"], ["ve"], name="eps"),
             helper.make_node("Sqrt", ["ve"], ["std"], name="sqrt"),
             helper.make_node("Div", ["d", "std"], ["n"], name="div"),
             helper.make_node("Mul", ["gamma", "n"], ["y" if not bias else "g"], name="gamma")]
    outputs = _tail(nodes, bias, "d" if extra_reader else None)
    inits = {"two": np.array(2.0, np.float32), "eps": np.array(1e-5, np.float32),
             "gamma": RNG.standard_normal(16).astype(np.float32), "beta": RNG.standard_normal(16).astype(np.float32),
             "axes": np.array(axes, np.int64)}
    return _converted(nodes, inits, outputs, opset)


@pytest.mark.parametrize("square, bias, opset", [("Pow", True, 17), ("Mul", True, 13), ("Pow", False, 18)])
def test_layer_norm_written_out_becomes_one_node(square, bias, opset):
    model = _layer_norm_model(square, bias, opset)
    graph = optimize(model, ["fuse_layer_norm"])
    assert [n.op for n in graph.nodes] == ["LayerNormalization"]
    node = graph.nodes[0]
    assert node.inputs == ["x", "gamma", *(["beta"] if bias else [])] and node.outputs == ["y"]
    assert node.attrs["axis"] == -1 and node.attrs["epsilon"] == pytest.approx(1e-5)
    assert len(graph.folded) == (8 if bias else 7)
    _runs_alike(model)


@pytest.mark.parametrize("case", ["axis_1", "centred_read_twice"])
def test_layer_norm_leaves_other_graphs(case):
    model = _layer_norm_model(axes=(1,)) if case == "axis_1" else _layer_norm_model(extra_reader=True)
    graph = optimize(model, ["fuse_layer_norm"])
    assert "LayerNormalization" not in [n.op for n in graph.nodes] and graph.folded == {}
    _runs_alike(model)


def _rms_norm_model(inverse="Reciprocal", square="Pow", bias=False, axes=(-1,), extra_reader=False):
    """RMSNormalization over x's last axis written out: x * rsqrt(mean(x^2) + eps) * w, the rsqrt as the
    dynamo exporter writes it (Reciprocal of Sqrt), as the TorchScript one does (Div of 1 by the Sqrt),
    or x divided by the Sqrt."""
    nodes = [helper.make_node("Pow", ["x", "two"], ["sq"], name="sq") if square == "Pow"
             else helper.make_node("Mul", ["x", "x"], ["sq"], name="sq"),
             helper.make_node("ReduceMean", ["sq"], ["ms"], name="mean", axes=list(axes)),
             helper.make_node("Add", ["ms", "eps"], ["me"], name="eps"),
             helper.make_node("Sqrt", ["me"], ["rms"], name="sqrt")]
    if inverse == "Reciprocal":
        nodes += [helper.make_node("Reciprocal", ["rms"], ["inv"], name="inv"),
                  helper.make_node("Mul", ["x", "inv"], ["n"], name="norm")]
    elif inverse == "Div1":
        nodes += [helper.make_node("Div", ["one", "rms"], ["inv"], name="inv"),
                  helper.make_node("Mul", ["inv", "x"], ["n"], name="norm")]
    else:
        nodes.append(helper.make_node("Div", ["x", "rms"], ["n"], name="norm"))
    nodes.append(helper.make_node("Mul", ["n", "w"], ["g" if bias else "y"], name="weight"))
    outputs = _tail(nodes, bias, "sq" if extra_reader else None)
    inits = {"two": np.array(2.0, np.float32), "one": np.array(1.0, np.float32), "eps": np.array(1e-6, np.float32),
             "w": RNG.standard_normal(16).astype(np.float32), "beta": RNG.standard_normal(16).astype(np.float32)}
    return _converted(nodes, inits, outputs, 17)


@pytest.mark.parametrize("inverse, square", [("Reciprocal", "Pow"), ("Div1", "Mul"), ("Div", "Pow")])
def test_rms_norm_written_out_becomes_one_node(inverse, square):
    model = _rms_norm_model(inverse, square)
    graph = optimize(model, ["fuse_rms_norm"])
    assert [n.op for n in graph.nodes] == ["RMSNormalization"]
    node = graph.nodes[0]
    assert node.inputs == ["x", "w"] and node.outputs == ["y"]
    assert node.attrs["axis"] == -1 and node.attrs["epsilon"] == pytest.approx(1e-6)
    assert len(graph.folded) == (5 if inverse == "Div" else 6)  # all but the last Mul, which became the node
    _runs_alike(model)


@pytest.mark.parametrize("case", ["axis_1", "square_read_twice", "bias"])
def test_rms_norm_leaves_other_graphs(case):
    model = _rms_norm_model(axes=(1,) if case == "axis_1" else (-1,), extra_reader=case == "square_read_twice",
                            bias=case == "bias")
    graph = optimize(model, ["fuse_rms_norm"])
    assert "RMSNormalization" not in [n.op for n in graph.nodes] and graph.folded == {}
    _runs_alike(model)


@pytest.mark.parametrize("act", ["Relu", "Gelu"])
@pytest.mark.parametrize("kernels", ["sparse", "dense"])
def test_matmul_add_takes_the_following_activation(act, kernels):
    w = (W * (RNG.random(W.shape) < 0.3)).astype(np.float32)
    model = _model([helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
                    helper.make_node("Add", ["m", "b"], ["a"], name="add"),
                    helper.make_node(act, ["a"], ["y"], name="act")], {"w": w, "b": B})
    sess = InferenceSession(model, kernels=kernels)
    described = {d["name"]: d for d in sess.describe()}
    assert described["act"].get("fused_into") == "mm" and described["mm"]["op"] == MATMUL_ADD
    x = np.random.default_rng(7).standard_normal((2, 5, 16)).astype(np.float32)
    want = InferenceSession(model, kernels=kernels, optimize=False).run(None, {"x": x})[0]
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-6)


def test_inspect_kernels_lists_fused_and_folded_nodes(tmp_path, capsys):
    from dcm.cli import main
    from dcm.format.writer import write

    model = _model([helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
                    helper.make_node("Add", ["m", "b"], ["y"], name="add")], {"w": W, "b": B})
    write(tmp_path / "m.dcm", model)
    assert main(["inspect", str(tmp_path / "m.dcm"), "--kernels"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:3] == ["mm", MATMUL_ADD, "dense"] for line in lines)
    assert any(line.split() == ["add", "Add", "folded", "into", "mm"] for line in lines)


def test_torch_backend_gets_no_internal_ops():
    pytest.importorskip("torch")
    model = _attention_model()
    sess = InferenceSession(model, device="torch-cpu")
    assert not [d for d in sess.describe() if d["op"].startswith("dcm.")]
    x = np.random.default_rng(8).standard_normal((2, 5, 16)).astype(np.float32)
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], InferenceSession(model).run(None, {"x": x})[0],
                               rtol=1e-4, atol=1e-5)


def test_prefers_dense_from_8_to_15_rows_by_cpu(monkeypatch):
    """Below 16 rows a layer past SPARSE_MAX_DENSITY_8_ROWS goes dense, except on a Zen 5 or later on
    the AVX-512 path, where the 8-row panels kept their lead; 16 rows and more keep the general rule,
    and a layer too large for the packed dense kernel stays sparse."""
    from dcm.runtime.cpu import matmul

    for wide_loads in (False, True):
        monkeypatch.setattr(matmul, "_wide_load_core", lambda: wide_loads)
        keeps = wide_loads and native.batched_simd is not None and native.batched_simd() == "avx512"
        assert prefers_dense(0.25, 8, 262_144, 256, 1024) is not keeps
        assert prefers_dense(0.25, 15, 262_144, 256, 1024) is not keeps
        assert not prefers_dense(0.1, 8, 262_144, 256, 1024)
        assert not prefers_dense(0.25, 16, 262_144, 256, 1024)
        assert not prefers_dense(0.2, 8, matmul.PACK_MAX_FLOATS + 1, 4096, 4097)


def test_zen5_or_later_reads_vendor_and_family():
    from dcm.runtime.cpu.matmul import zen5_or_later

    amd = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: {}\nmodel\t\t: 2\n"
    assert zen5_or_later(amd.format(26)) and zen5_or_later(amd.format(27))
    assert not zen5_or_later(amd.format(25))  # Zen 3 and Zen 4
    assert not zen5_or_later("vendor_id\t: GenuineIntel\ncpu family\t: 6\n")
    assert not zen5_or_later("")  # another system's text, or none
