"""The architectures users bring, from both torch exporters, converted and run against torch.

Transformer encoder/decoder layers (causal and padding masks), MultiheadAttention, Embedding +
LayerNorm + GELU (erf and tanh), LSTM and GRU (2 layers, bidirectional, batch_first), MobileNetV3 /
EfficientNet blocks (Hardswish, SiLU, squeeze-excite with a Reshape of the run-time batch) and a
decoder (ConvTranspose2d, nearest and bilinear Upsample, PixelShuffle): each exported with
``torch.onnx.export(dynamo=False)`` (TorchScript) and ``dynamo=True`` with a symbolic batch (and
sequence), then run at two sizes that are not the export's (``architectures.run_sizes``: the
TorchScript exporter fixes MultiheadAttention's sequence length, so there only the batch changes).

- ``--exact`` conversion: relative error (max |dcm - torch| / max |torch|) <= 1e-4.
- Default conversion (8-bit codebooks): dcm equals onnxruntime running the same graph with the
  decoded (quantized) weights, so its distance from torch is the weights' quantization error and
  nothing else: |dcm - torch| <= |onnxruntime(quantized) - torch| + 1e-4 max |torch|.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")  # the dynamo exporter's dependency
ort = pytest.importorskip("onnxruntime")

from dcm.converters import ConvertOptions, from_onnx, to_onnx  # noqa: E402
from dcm.format import constants as C  # noqa: E402
from dcm.format.model import Model  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402
from tests.converters.architectures import NAMES, Arch, build, export, run_sizes, torch_outputs  # noqa: E402

EXPORTERS = ["torchscript", "dynamo"]
REL_TOL = 1e-4


@pytest.fixture(scope="module")
def exported() -> dict:
    """Exports made once per module: {(name, exporter): (arch, ONNX bytes)} (the dynamo exporter
    takes seconds per model)."""
    return {}


def _get(cache: dict, name: str, exporter: str) -> tuple[Arch, bytes]:
    key = (name, exporter)
    if key not in cache:
        arch = build(name)
        cache[key] = (arch, export(arch, dynamo=exporter == "dynamo"))
    return cache[key]


def _feeds(arch: Arch, inputs: tuple) -> dict[str, np.ndarray]:
    return {n: t.numpy() for n, t in zip(arch.input_names, inputs)}


def _rel_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-30))


def _check_shapes(got: list, want: list) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, g.dtype, w.shape, w.dtype)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", NAMES)
def test_exact_conversion_matches_torch(exported, name: str, exporter: str) -> None:
    arch, onnx_bytes = _get(exported, name, exporter)
    model = from_onnx(onnx_bytes, ConvertOptions(exact=True))
    for v in model.inputs:  # the exporter kept the axes symbolic
        assert all(isinstance(v.shape[axis], str) for axis in arch.axes[v.name]), (v.name, v.shape)
    session = InferenceSession(model)
    for batch, seq in run_sizes(arch, exporter == "dynamo"):
        torch.manual_seed(batch * 100 + seq)
        inputs = arch.make_inputs(batch, seq)
        want = torch_outputs(arch, inputs)
        got = session.run(None, _feeds(arch, inputs))
        _check_shapes(got, want)
        for out, g, w in zip(arch.output_names, got, want):
            assert _rel_error(g, w) <= REL_TOL, f"{out} at batch {batch}, sequence {seq}: {_rel_error(g, w):.2e}"


def _onnxruntime(model: Model, feeds: dict) -> list[np.ndarray]:
    """onnxruntime on dcm's graph with its weights decoded: the same quantized weights, another engine."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(to_onnx(model).SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", NAMES)
def test_default_conversion_within_quantization_error(exported, name: str, exporter: str) -> None:
    arch, onnx_bytes = _get(exported, name, exporter)
    model = from_onnx(onnx_bytes)
    assert any(t.encoding in C.CODEBOOK_ENCODINGS for t in model.tensors.values()), "no weight was quantized"
    session = InferenceSession(model)
    for batch, seq in run_sizes(arch, exporter == "dynamo"):
        torch.manual_seed(batch * 100 + seq)
        inputs = arch.make_inputs(batch, seq)
        feeds = _feeds(arch, inputs)
        want = torch_outputs(arch, inputs)
        got = session.run(None, feeds)
        quantized = _onnxruntime(model, feeds)
        _check_shapes(got, want)
        for out, g, q, w in zip(arch.output_names, got, quantized, want):
            where = f"{out} at batch {batch}, sequence {seq}"
            assert _rel_error(g, q) <= REL_TOL, f"{where}: dcm vs onnxruntime on the same weights {_rel_error(g, q):.2e}"
            bound = np.max(np.abs(q - w)) + REL_TOL * np.max(np.abs(w))
            assert np.max(np.abs(g - w)) <= bound, f"{where}: beyond the quantization error"


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", ["encoder_layer", "embedding_gelu", "lstm", "gru"])
def test_weights_stay_coded(exported, name: str, exporter: str) -> None:
    """After default conversion the linear weights, the embedding table and the recurrent W and R
    are stored coded (codebook + Huffman), not as raw float32."""
    arch, onnx_bytes = _get(exported, name, exporter)
    model = from_onnx(onnx_bytes)
    linear = ("MatMul", "Gemm")  # an nn.Linear becomes either, depending on the exporter
    seen = {"linear" if op in linear else op: 0 for op in arch.weights}
    for node in model.nodes:
        for i in arch.weights.get(node.op, ()):
            if i < len(node.inputs) and node.inputs[i] in model.tensors:
                rec = model.tensors[node.inputs[i]]
                assert rec.encoding in C.CODED_ENCODINGS, f"{node.op} {node.name} input {i}: {rec.encoding}"
                seen["linear" if node.op in linear else node.op] += 1
    assert all(seen.values()), f"coded weights found per op: {seen}"


def test_efficientnet_reshape_takes_its_shape_at_run_time(exported) -> None:
    """The squeeze-excite ``reshape(b, c, 1, 1)`` with ``b`` read from ``x.shape``: the TorchScript
    export computes that shape from the symbolic batch at run time (Shape, Gather, Concat), which
    the matrix above then runs at batch sizes other than the export's."""
    _, onnx_bytes = _get(exported, "mobile_block", "torchscript")
    model = from_onnx(onnx_bytes, ConvertOptions(exact=True))
    assert any(n.op == "Reshape" and n.inputs[1] not in model.tensors for n in model.nodes)
