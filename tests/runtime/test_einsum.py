"""Einsum: its equations checked at load, its operands before any work; the values of np.einsum in
float64 on both backends; a torch model that computes attention with torch.einsum converts, goes
through a .dcm file and back to ONNX, and matches torch."""
import io
import warnings

import numpy as np
import pytest
from onnx import TensorProto, helper

from dcm.converters import ConvertOptions, from_onnx
from dcm.converters.onnx_out import to_onnx
from dcm.errors import ExecutionError, UnsupportedOpError
from dcm.format import read
from dcm.format.writer import to_bytes
from dcm.runtime import InferenceSession
from dcm.runtime.cpu import einsum
from dcm.runtime.cpu.einsum import parse


def _model(equation: str, shapes: list[tuple], dtype=TensorProto.FLOAT) -> bytes:
    names = [f"x{i}" for i in range(len(shapes))]
    node = helper.make_node("Einsum", names, ["y"], equation=equation)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, dtype, s) for n, s in zip(names, shapes)],
                              [helper.make_tensor_value_info("y", dtype, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _run(equation: str, xs: list[np.ndarray], device: str = "cpu") -> np.ndarray:
    sess = InferenceSession(from_onnx(_model(equation, [x.shape for x in xs])), device=device)
    return sess.run(None, {f"x{i}": x for i, x in enumerate(xs)})[0]


CONTRACTIONS = [
    ("bhqd,bhkd->bhqk", (2, 3, 7, 8), (2, 3, 9, 8)),  # attention's scores
    ("bhqk,bhkd->bhqd", (2, 3, 7, 9), (2, 3, 9, 8)),  # ... and their values
    ("nqhd,nkhd->nhqk", (2, 5, 3, 4), (2, 6, 3, 4)),  # heads not leading
    ("b i d, b j d -> b i j", (2, 5, 8), (2, 6, 8)),  # spaces, as torch writes them
    ("bij,jk->bik", (2, 3, 4), (4, 5)),
    ("...ij,...jk", (2, 3, 4), (1, 4, 5)),  # implicit output, broadcast batch
    ("...ij,jk->...ik", (3, 4), (4, 5)),  # an empty ellipsis
    ("Ba,aC", (2, 3), (3, 4)),  # implicit: upper case sorts first
    ("ijk,ik->jk", (3, 4, 5), (3, 5)),
    ("ij,ab->ijab", (3, 5), (7, 9)),  # outer product
    ("abc,cd->", (2, 3, 4), (4, 5)),  # everything summed: a scalar
    ("i,i", (5,), (5,)),
    ("ij,ij->ij", (3, 1), (3, 4)),  # a broadcast batch axis
    ("ij,jk->ik", (3, 0), (0, 5)),  # an empty sum
]


@pytest.mark.parametrize("equation, sa, sb", CONTRACTIONS)
def test_two_operand_contractions(equation, sa, sb):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(sa).astype(np.float32), rng.standard_normal(sb).astype(np.float32)
    want = np.einsum(equation.replace(" ", ""), a.astype(np.float64), b.astype(np.float64))
    got = _run(equation, [a, b])
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("equation, shapes", [
    ("ii,ij->j", [(3, 3), (3, 4)]),  # a diagonal
    ("ij,jk->ik", [(3, 1), (4, 5)]),  # a summed axis of size 1 broadcast, as numpy does
    ("ij,jk,kl->il", [(3, 4), (4, 5), (5, 6)]),
    ("ij->ji", [(3, 4)]),
    ("...ii ->...i", [(3, 5, 5)]),
    ("ji", [(3, 4)]),
    ("->", [()]),
])
def test_other_equations_follow_numpy(equation, shapes):
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    got = _run(equation, xs)
    want = np.einsum(equation.replace(" ", ""), *xs)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_transpose_is_not_a_view_of_its_input():
    """Later kernels may write their output in place: it must not be the input's memory."""
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    node = einsum.Einsum.__new__(einsum.Einsum)
    node.equation, node.paths, node.threads = parse("ij->ji", 1), {}, 1
    (y,) = node(x)
    assert not np.may_share_memory(x, y)
    np.testing.assert_array_equal(y, x.T)


def test_integers_and_the_torch_backend():
    pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    a, b = rng.integers(-5, 5, (2, 3, 4)).astype(np.int64), rng.integers(-5, 5, (4, 5)).astype(np.int64)
    sess = InferenceSession(from_onnx(_model("bij,jk->bik", [a.shape, b.shape], TensorProto.INT64)))
    np.testing.assert_array_equal(sess.run(None, {"x0": a, "x1": b})[0], np.einsum("bij,jk->bik", a, b))
    gpu = InferenceSession(from_onnx(_model("bij,jk->bik", [a.shape, b.shape], TensorProto.INT64)), device="torch-cpu")
    np.testing.assert_array_equal(gpu.run(None, {"x0": a, "x1": b})[0], np.einsum("bij,jk->bik", a, b))
    x, y = rng.standard_normal((2, 3, 4)).astype(np.float32), rng.standard_normal((1, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(_run("...ij,...jk", [x, y], device="torch-cpu"), np.einsum("...ij,...jk", x, y),
                               rtol=1e-5, atol=1e-5)
    assert InferenceSession(from_onnx(_model("Ba,aC", [(2, 3), (3, 4)])), device="torch-cpu").describe()[0][
        "equation"] == "Ba,aC->BC"


@pytest.mark.parametrize("equation, inputs, message", [
    ("ij,jk->ik", 1, "2 terms for 1 inputs"),
    ("ij->j->i", 1, "at most one '->'"),
    ("i-j", 1, "no other '-'"),
    ("i1->i", 1, "letters a-z and A-Z, not '1'"),
    ("......i->i", 1, "at most one per term"),
    ("i..j->ij", 1, "three dots"),
    ("ij->ii", 1, "'i' repeated"),
    ("ij->k", 1, "'k' is in no input"),
    ("i" * (einsum.MAX_EQUATION + 1), 1, "characters"),
])
def test_bad_equations_are_refused_at_load(equation, inputs, message):
    model = from_onnx(_model("ij", [(2, 2)] * 1))
    model.nodes[0].attrs["equation"] = equation
    model.nodes[0].inputs = model.nodes[0].inputs[:1] * inputs
    with pytest.raises(UnsupportedOpError, match=message):
        InferenceSession(model)


def test_bad_operands_are_refused_before_any_work():
    node = einsum.Einsum.__new__(einsum.Einsum)
    node.equation, node.paths, node.threads = parse("ij,jk->ik", 2), {}, 1
    with pytest.raises(ValueError, match="input 0 has rank 3, its subscripts 'ij' name 2"):
        node(np.zeros((2, 2, 2), np.float32), np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="inputs of different types: float32, float64"):
        node(np.zeros((2, 2), np.float32), np.zeros((2, 2), np.float64))
    outer = InferenceSession(from_onnx(_model("i,j->ij", [("n",), ("m",)])))
    big = np.zeros(1 << 16, np.float32)  # 2^32 outputs: refused before they are allocated
    with pytest.raises(ExecutionError, match="Einsum output: 4294967296 elements"):
        outer.run(None, {"x0": big, "x1": big})


def test_torch_attention_written_with_einsum():
    torch = pytest.importorskip("torch")
    onnxruntime = pytest.importorskip("onnxruntime")

    class Attention(torch.nn.Module):  # the form of the original latent-diffusion attention
        def __init__(self, dim: int = 16, heads: int = 2):
            super().__init__()
            self.heads, self.qkv, self.out = heads, torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)

        def forward(self, x):
            b, n, d = x.shape
            q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).unbind(2)
            scores = torch.einsum("bihd,bjhd->bhij", q, k) / (d // self.heads) ** 0.5
            y = torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v)
            return self.out(y.reshape(b, n, d))

    torch.manual_seed(0)
    module, x = Attention().eval(), torch.randn(2, 7, 16)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), buf, input_names=["x"], dynamic_axes={"x": {0: "b", 1: "n"}},
                          opset_version=17, dynamo=False)
    model = from_onnx(buf.getvalue(), ConvertOptions(exact=True))
    assert sum(n.op == "Einsum" for n in model.nodes) == 2
    sess = InferenceSession(read(to_bytes(model)))  # through a .dcm file's bytes
    ort = onnxruntime.InferenceSession(to_onnx(model).SerializeToString(), providers=["CPUExecutionProvider"])
    for n in (7, 12):
        xn = torch.randn(3, n, 16)
        with torch.no_grad():
            want = module(xn).numpy()
        np.testing.assert_allclose(sess.run(None, {"x": xn.numpy()})[0], want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(ort.run(None, {"x": xn.numpy()})[0], want, rtol=1e-4, atol=1e-5)  # dcm export
