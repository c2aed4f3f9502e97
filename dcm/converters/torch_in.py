"""PyTorch module -> .dcm, through torch.onnx.export and the ONNX path.

Pruning masks and shared weights made by ``dcm.compress`` travel as the weights' own zeros and
their (at most 2^bits) distinct values, so conversion is lossless: no second quantization.

Two exporters: torch's default one (``dynamo``: torch.export, then onnxscript; opset 18+) and the
older TorchScript one (``torchscript``: tracing; deprecated in torch). ``auto`` uses the dynamo
exporter and falls back to TorchScript only where the dynamo exporter or its graph's conversion
fails (a model torch.export cannot capture, or onnxscript not installed).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from typing import Any, Literal

from dcm.converters.onnx_in import ConvertOptions, from_onnx
from dcm.errors import ConversionError
from dcm.format.model import Model
from dcm.format.writer import write

Exporter = Literal["auto", "dynamo", "torchscript"]
EXPORTERS = ("auto", "dynamo", "torchscript")
TORCHSCRIPT_OPSET = 17  # the newest opset the TorchScript exporter supports fully


def torch_to_onnx_bytes(module, example_inputs: Any, input_names=("input",), output_names=("output",), *,
                        exporter: Literal["dynamo", "torchscript"] = "dynamo") -> bytes:
    """The module as ONNX bytes, with axis 0 of every input and named output symbolic ("batch"); the
    inputs past ``input_names`` are named input_1, input_2, ... after their position.

    The module is exported in eval mode (its own mode is restored) and with grad mode on: under
    ``no_grad`` torch runs eval-mode TransformerEncoderLayer and MultiheadAttention through fused
    kernels (``aten::_transformer_encoder_layer_fwd``) that the TorchScript exporter cannot export.
    """
    import torch

    if exporter not in ("dynamo", "torchscript"):
        raise ConversionError(f"unknown exporter {exporter!r}: use 'dynamo' or 'torchscript'")
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    # a name for every tensor argument: the dynamo exporter cannot turn dynamic_axes into its
    # dynamic_shapes when some inputs have none (a decoder's memory, attention's k and v)
    input_names = [*input_names, *(f"input_{i}" for i in range(len(input_names), len(args)))]
    axes = {n: {0: "batch"} for n in (*input_names, *output_names)}
    was_training = module.training
    module.eval()
    log = logging.getLogger("torch")  # torch's loggers inherit its level
    level = log.level
    log.setLevel(logging.ERROR)  # the dynamo exporter logs each op it skips and each graph it gives up on
    try:
        # The exporters print progress and, when they give up, the graph they stopped at: the
        # ConversionError below carries what went wrong.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()), torch.enable_grad():
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                # torch.export specializes every dimension whose example size is 1, dynamic_axes or
                # not: an example batch of 1 would bake batch 1 into reshapes (attention's heads).
                args = tuple(torch.cat([a, a]) if isinstance(a, torch.Tensor) and a.ndim and a.shape[0] == 1 else a
                             for a in args)
                program = torch.onnx.export(module, args, input_names=list(input_names),
                                            output_names=list(output_names), dynamic_axes=axes, dynamo=True)
                return program.model_proto.SerializeToString()
            buf = io.BytesIO()
            torch.onnx.export(module, args, buf, input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes=axes, opset_version=TORCHSCRIPT_OPSET, dynamo=False)
            return buf.getvalue()
    except Exception as exc:  # torch raises many types (export, tracing, onnxscript import errors)
        raise ConversionError(f"torch.onnx.export ({exporter} exporter) failed: {type(exc).__name__}: "
                              f"{_first_line(exc)}") from None
    finally:
        log.setLevel(level)
        module.train(was_training)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else ""


def from_torch(module, example_inputs: Any, path: str | os.PathLike | None = None, *,
               options: ConvertOptions | None = None, code_bits: dict[str, int] | None = None,
               input_names=("input",), output_names=("output",), exporter: Exporter = "auto") -> Model:
    """Convert a ``torch.nn.Module`` and (if ``path``) write it. Returns the dcm ``Model``.

    ``code_bits`` ({"conv": 8, "fc": 5}) should match the weight sharing the model went through;
    any layer with no more distinct non-zero values than 2^bits is stored exactly. ``exporter``:
    "dynamo" (torch's default exporter), "torchscript", or "auto" (dynamo, then TorchScript if that
    fails; the model's metadata ``exporter`` says which one made it). Either way the batch axis is
    symbolic, so the model runs at any batch size.
    """
    if exporter not in EXPORTERS:
        raise ConversionError(f"unknown exporter {exporter!r}: use one of {', '.join(EXPORTERS)}")
    opts = options or ConvertOptions()
    if code_bits:
        opts.code_bits = {**opts.code_bits, **code_bits}
    failures: list[ConversionError] = []
    for name in ("dynamo", "torchscript") if exporter == "auto" else (exporter,):
        try:
            model = from_onnx(torch_to_onnx_bytes(module, example_inputs, input_names, output_names, exporter=name),
                              opts)
            break
        except ConversionError as exc:
            failures.append(exc)
    else:
        if len(failures) == 1:
            raise failures[0]
        raise ConversionError(f"neither exporter's graph converts: dynamo: {failures[0]}; torchscript: {failures[1]}")
    if failures:
        warnings.warn(f"used the TorchScript exporter: the dynamo exporter's graph did not convert ({failures[0]})",
                      stacklevel=2)
    model.metadata["source_format"] = "pytorch"
    model.metadata["source_model"] = type(module).__name__
    model.metadata["exporter"] = name
    if path is not None:
        write(path, model)
    return model
