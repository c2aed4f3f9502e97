"""PyTorch module -> .dcm, through torch.onnx.export and the ONNX path.

Pruning masks and shared weights made by ``dcm.compress`` travel as the weights' own zeros and
their (at most 2^bits) distinct values, so conversion is lossless: no second quantization.
"""
from __future__ import annotations

import io
import os
import warnings
from typing import Any

from dcm.converters.onnx_in import ConvertOptions, from_onnx
from dcm.errors import ConversionError
from dcm.format.model import Model
from dcm.format.writer import write


def torch_to_onnx_bytes(module, example_inputs: Any, input_names=("input",), output_names=("output",)) -> bytes:
    import torch

    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    buf = io.BytesIO()
    was_training = module.training
    module.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, buf, input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes={n: {0: "batch"} for n in (*input_names, *output_names)},
                              opset_version=17, dynamo=False)
    except Exception as exc:
        raise ConversionError(f"torch.onnx.export failed: {type(exc).__name__}: {exc}") from None
    finally:
        module.train(was_training)
    return buf.getvalue()


def from_torch(module, example_inputs: Any, path: str | os.PathLike | None = None, *,
               options: ConvertOptions | None = None, code_bits: dict[str, int] | None = None,
               input_names=("input",), output_names=("output",)) -> Model:
    """Convert a ``torch.nn.Module`` and (if ``path``) write it. Returns the dcm ``Model``.

    ``code_bits`` ({"conv": 8, "fc": 5}) should match the weight sharing the model went through;
    any layer with no more distinct non-zero values than 2^bits is stored exactly.
    """
    opts = options or ConvertOptions()
    if code_bits:
        opts.code_bits = {**opts.code_bits, **code_bits}
    model = from_onnx(torch_to_onnx_bytes(module, example_inputs, input_names, output_names), opts)
    model.metadata["source_format"] = "pytorch"
    model.metadata["source_model"] = type(module).__name__
    if path is not None:
        write(path, model)
    return model
