"""Architectures beyond the zoo (``benchmarks/family_models.py``): does each convert, match torch, and
how fast is it against onnxruntime on the same weights?

    python -m benchmarks.families [--models resnet50,llama_2x256] [--dynamo] [--docs]

Each model with random weights (seed 0), exported by torch.onnx.export (the TorchScript exporter; with
``--dynamo`` also the default dynamo exporter), converted with ``--exact``, run at batch 1 on one thread:
the largest error relative to torch's largest output, and dcm's and onnxruntime's median times in
turns. A model that fails to export, convert or run gets its error in the table. Writes
benchmarks/results/families.json; ``--docs`` writes docs/families.md.
"""
from __future__ import annotations

import argparse
import io
import math
import warnings
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import cpu_model, onnxruntime_session, save, timeit
from benchmarks.family_models import MODELS
from dcm.converters import ConvertOptions
from dcm.converters.onnx_in import from_onnx
from dcm.runtime import InferenceSession

DOCS = Path(__file__).parent.parent / "docs" / "families.md"


def _export(module: torch.nn.Module, x: torch.Tensor, dynamo: bool) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(module, (x,), buf, dynamo=True, input_names=["input"], verbose=False)
        else:
            torch.onnx.export(module, (x,), buf, dynamo=False, input_names=["input"], opset_version=17)
    return buf.getvalue()


def measure(name: str, dynamo: bool) -> dict:
    torch.manual_seed(0)
    module, x = MODELS[name]()
    module.eval()
    row = {"model": name, "exporter": "dynamo" if dynamo else "torchscript"}
    try:
        onnx_bytes = _export(module, x, dynamo)
        with torch.no_grad():
            want = module(x).numpy()
        sess = InferenceSession(from_onnx(onnx_bytes, ConvertOptions(exact=True)), threads=1)
        ort = onnxruntime_session(onnx_bytes, 1)
        feeds = {sess.get_inputs()[0].name: x.numpy()}
        ort_feeds = {ort.get_inputs()[0].name: x.numpy()}
        got = sess.run(None, feeds)[0]
        row["max_rel_error"] = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))
        for _ in range(2):  # in turns, each runtime's best block
            for label, run in (("dcm", lambda: sess.run(None, feeds)), ("onnxruntime", lambda: ort.run(None, ort_feeds))):
                t = 1e3 * timeit(run)
                row[f"{label}_ms"] = min(row.get(f"{label}_ms", t), t)
        row["dcm_vs_onnxruntime"] = row["dcm_ms"] / row["onnxruntime_ms"]
    except Exception as e:  # noqa: BLE001 - the table reports what stopped the model
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return row


def table(rows: list[dict]) -> str:
    lines = ["| model | exporter | dcm ms | onnxruntime ms | dcm/ort | max error vs torch |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['exporter']} | failed: {r['error']} | | | |")
        else:
            lines.append(f"| {r['model']} | {r['exporter']} | {r['dcm_ms']:.2f} | {r['onnxruntime_ms']:.2f} | "
                         f"{r['dcm_vs_onnxruntime']:.2f} | {r['max_rel_error']:.1e} |")
    ok = [r["dcm_vs_onnxruntime"] for r in rows if "error" not in r]
    if ok:
        lines += ["", f"Geometric mean dcm/onnxruntime {math.exp(sum(map(math.log, ok)) / len(ok)):.2f} over {len(ok)} "
                      f"runs, worst {max(ok):.2f}; {len(rows) - len(ok)} failed."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated names from family_models.MODELS")
    ap.add_argument("--dynamo", action="store_true", help="also export each model with torch's dynamo exporter")
    ap.add_argument("--docs", action="store_true", help="write docs/families.md")
    args = ap.parse_args()
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown models {unknown}; the models are {', '.join(MODELS)}")
    rows = []
    for name in names:
        for dynamo in (False, True) if args.dynamo else (False,):
            rows.append(measure(name, dynamo))
            r = rows[-1]
            print(f"{name} ({r['exporter']}): " + (r["error"] if "error" in r else
                  f"dcm {r['dcm_ms']:.2f} ms, onnxruntime {r['onnxruntime_ms']:.2f}, ratio {r['dcm_vs_onnxruntime']:.2f}, "
                  f"error {r['max_rel_error']:.1e}"), flush=True)
    path = save("families", {"rows": rows})
    text = table(rows)
    print(text)
    if args.docs:
        DOCS.write_text(
            "# Architectures beyond the zoo\n\n"
            "Made by `python -m benchmarks.families --dynamo --docs`: one small instance of each family in "
            "`benchmarks/family_models.py`, random weights (seed 0), converted with `--exact`, batch 1, one thread, "
            f"medians of dcm and onnxruntime in turns on the same ONNX file, on an {cpu_model()}. The error is the "
            "largest difference "
            "from torch's output over torch's largest output value. Ratios < 1: dcm is faster.\n\n" + text + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
