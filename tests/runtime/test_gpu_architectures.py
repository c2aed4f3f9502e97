"""The architectures users bring (``tests/converters/architectures.py``: transformer encoder and
decoder layers, attention, embedding + LayerNorm + GELU, LSTM, GRU, a MobileNetV3 block, a U-Net
style decoder with ConvTranspose and Resize), exported by torch's TorchScript exporter, converted with
the default (coded, 8-bit) options, run on the GPU backend (device="torch-cpu") and on the CPU
backend: the outputs agree, and the layers that carry the work run as torch kernels, not through the
CPU fallback."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dcm.converters import from_onnx  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402
from tests.converters.architectures import NAMES, build, export  # noqa: E402

# The ops that carry a network's arithmetic: none of them may take the CPU fallback on these models.
HEAVY = {"MatMul", "Gemm", "Conv", "ConvTranspose", "LayerNormalization", "Softmax", "Gelu", "HardSwish",
         "HardSigmoid", "Sigmoid", "Relu", "Tanh", "Add", "Mul", "Div", "Sub", "Pow", "Sqrt", "Erf",
         "ReduceMean", "BatchNormalization", "GlobalAveragePool", "Where", "Expand", "Slice", "Split",
         "Concat", "Transpose", "Reshape", "Gather", "Resize", "LSTM", "GRU"}


@pytest.mark.parametrize("name", NAMES)
def test_gpu_backend_matches_cpu_backend(name: str) -> None:
    arch = build(name)
    model = from_onnx(export(arch, dynamo=False))
    cpu, gpu = InferenceSession(model), InferenceSession(model, device="torch-cpu")
    torch.manual_seed(1)
    batch, seq = 2, 5  # the export's size: the TorchScript exporter fixes attention's sequence length
    feeds = {n: t.numpy() for n, t in zip(arch.input_names, arch.make_inputs(batch, seq))}
    want, got = cpu.run(None, feeds), gpu.run(None, feeds)
    for out, g, w in zip(arch.output_names, got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, (out, g.shape, g.dtype, w.shape, w.dtype)
        scale = max(float(np.max(np.abs(w))), 1e-30)
        assert float(np.max(np.abs(g - w))) / scale <= 1e-4, f"{name} output {out!r}"
    fallback = {d["op"] for d in gpu.describe() if d.get("backend") == "cpu-fallback"}
    assert not fallback & HEAVY, f"{name}: {sorted(fallback & HEAVY)} run through the CPU fallback"
