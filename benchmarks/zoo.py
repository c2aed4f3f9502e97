"""Latency of dcm against onnxruntime and torch on the architectures users bring, dense and pruned.

    python -m benchmarks.zoo [--models resnet18,bert_4x256] [--quick] [--docs [--docs-path PATH]]

Each model of ``benchmarks/zoo_models.py`` is built with random weights (seed 0), run dense and
pruned (magnitude pruning of every weight to the kept fraction typical for its family), exported
with torch.onnx.export (TorchScript exporter, symbolic batch and sequence) and converted with
``--exact``, so dcm, onnxruntime (the same dense ONNX file) and torch eager all hold the same
weights. Batch 1 and 8, 1 and 2 threads (dcm's ``threads``, onnxruntime's
intra-op pool, torch.set_num_threads). dcm and onnxruntime are timed in turns (``timeit_in_turns``:
three blocks each, medians), so that a change in the machine's load falls on both. A model dcm cannot convert or run gets its error in the JSON
instead of times. At batch 1 and 1 thread each model is also profiled node by node on both runtimes
(``InferenceSession.profile``, onnxruntime's ``enable_profiling``) and the time summed per op type,
so that the page can say where dcm loses. Writes benchmarks/results/zoo.json; ``--docs`` also
writes docs/zoo.md. Ratios < 1 mean dcm is faster.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import sys
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import cpu_model, save, timeit, timeit_in_turns
from benchmarks.zoo_models import MODELS
from dcm.converters import ConvertOptions
from dcm.converters.onnx_in import from_onnx
from dcm.encoder.prune import mask_by_sparsity
from dcm.runtime import InferenceSession

DOCS = Path(__file__).parent.parent / "docs" / "zoo.md"
PROFILE_SECONDS = 0.3  # per runtime and model: enough runs for stable per-op sums, cheap in --quick
TOP_GAPS = 4
# onnxruntime's own fused nodes (their names are not the file's node names), counted under the ONNX
# op whose work they do; the 4-D <-> NCHWc layout changes around its blocked convolutions go to Conv.
ORT_FUSED = {"BiasGelu": "Gelu", "FastGelu": "Gelu", "FusedConv": "Conv", "FusedGemm": "Gemm",
             "FusedMatMul": "MatMul", "SkipLayerNormalization": "LayerNormalization", "ReorderInput": "Conv",
             "ReorderOutput": "Conv", "QuickGelu": "Gelu"}


def prune_all(module: torch.nn.Module, kept: float) -> None:
    """Keep the largest-magnitude ``kept`` fraction of every weight matrix or kernel (ndim >= 2)."""
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim >= 2:
                p.mul_(torch.from_numpy(mask_by_sparsity(p.numpy(), 1.0 - kept)).to(p.dtype))


def export(module, inputs, names, axes) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, inputs, buf, input_names=names, output_names=["output"], dynamic_axes=axes,
                          opset_version=17, dynamo=False)
    return buf.getvalue()


def _runs_of(node_ops: dict[str, str], profile: list[dict]) -> dict[str, str]:
    """{name of a node in the file: op type of the dcm node that does its work}: a node a graph pass
    folded or an activation fused into its producer is charged to that producer."""
    into = {p["name"]: p.get("folded_into") or p.get("fused_into") for p in profile}
    out = {}
    for name in into:
        target = name
        for _ in range(len(into)):  # follows folded-into-fused chains; bounded against cycles
            if not into.get(target):
                break
            target = into[target]
        out[name] = node_ops.get(target, "?")
    return out


def ort_node(name: str, writer: dict[str, str]) -> str:
    """The node of the file that an onnxruntime profile node ``name`` does the work of. Its NCHWc layout
    pass renames the convolutions it moves into its blocked layout after their output
    ("<output>_nchwc"): the node that writes that output. A fusion names its node after the last node it
    replaces ("<node>/QuickGeluFusion/", EfficientNet's Sigmoid * Mul): that node, so that the time goes
    to the dcm op that fused the same nodes (the convolution before the SiLU), not to a separate op."""
    if name.endswith("_nchwc"):
        return writer.get(name.removesuffix("_nchwc"), name)
    fused = re.fullmatch(r"(.+)/[A-Za-z]+Fusion/", name)
    return fused.group(1) if fused else name


def op_profile(sess: InferenceSession, onnx_bytes: bytes, feeds: dict, seconds_per_run: float) -> dict[str, dict]:
    """{op type: {"dcm_ms", "onnxruntime_ms"}}: each runtime's time per run summed over the nodes of
    that op type (1 thread). An onnxruntime node keeping the file's node name is charged to the op
    type of the dcm node that does its work (so onnxruntime's MatMul on attention scores lands under
    dcm.Attention, its bias Add under dcm.MatMulAdd); its own fused nodes go by ``ORT_FUSED``."""
    import onnxruntime as ort

    runs = max(3, min(50, int(PROFILE_SECONDS / max(seconds_per_run, 1e-6))))
    profile = sess.profile(feeds, runs=runs)
    dcm_ms: Counter = Counter()
    for p in profile:
        dcm_ms[p["op"]] += 1e3 * p["seconds"] if "folded_into" not in p and "fused_into" not in p else 0.0
    running = {p["name"]: p["op"] for p in profile if "folded_into" not in p and "fused_into" not in p}
    charged = _runs_of(running, profile)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        so.profile_file_prefix = os.path.join(tmp, "ort")
        ort_sess = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
        ort_sess.run(None, feeds)  # warm-up, left out below
        for _ in range(runs):
            ort_sess.run(None, feeds)
        events = json.loads(Path(ort_sess.end_profiling()).read_text())
    ort_ms: Counter = Counter()
    warm = {}
    import onnx

    writer = {out: n.name for n in onnx.load_from_string(onnx_bytes).graph.node for out in n.output}
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        node = ort_node(e["name"][: -len("_kernel_time")], writer)
        warm[node] = warm.get(node, 0) + 1
        if warm[node] > 1:  # the first event of each node is the warm-up run's
            op = e["args"].get("op_name", "?")
            ort_ms[charged.get(node, ORT_FUSED.get(op, op))] += e["dur"] / 1e3 / runs
    return {op: {"dcm_ms": dcm_ms[op], "onnxruntime_ms": ort_ms[op]} for op in sorted(dcm_ms.keys() | ort_ms.keys())
            if dcm_ms[op] or ort_ms[op]}


def exported(name: str, pruned: bool) -> tuple[torch.nn.Module, list[str], bytes]:
    """A zoo model with its seed-0 weights (magnitude-pruned to its family's kept fraction when
    ``pruned``) in eval mode, its input names, and its ONNX export."""
    build, kept = MODELS[name]
    torch.manual_seed(0)
    module, inputs, names, axes = build(1)
    module.eval()
    if pruned:
        prune_all(module, kept)
    return module, names, export(module, inputs, names, axes)


def example(name: str, batch: int, names: list[str]) -> tuple[tuple, dict[str, np.ndarray]]:
    """A zoo model's example inputs at ``batch`` (seed 1): as torch tensors and as feeds."""
    torch.manual_seed(1)
    inputs = MODELS[name][0](batch)[1]
    return inputs, {n: t.numpy() for n, t in zip(names, inputs)}


def measure(name: str, pruned: bool, batches: tuple[int, ...], thread_counts: tuple[int, ...]) -> list[dict]:
    import onnxruntime as ort

    kept = MODELS[name][1]
    base = {"model": name, "weights": f"pruned {kept:.0%} kept" if pruned else "dense"}
    module, names, onnx_bytes = exported(name, pruned)
    try:
        model = from_onnx(onnx_bytes, ConvertOptions(exact=True))
    except Exception as exc:  # the table reports what does not convert
        return [{**base, "error": f"convert: {type(exc).__name__}: {exc}"[:300]}]
    rows = []
    for batch in batches:
        inputs, feeds = example(name, batch, names)
        for threads in thread_counts:
            row = {**base, "batch": batch, "threads": threads}
            try:
                sess = InferenceSession(model, threads=threads, batch_hint=batch)
                got = sess.run(None, feeds)[0]  # the warm-up
            except Exception as exc:
                rows.append({**row, "error": f"run: {type(exc).__name__}: {exc}"[:300]})
                continue
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            ort_sess = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
            want = ort_sess.run(None, feeds)[0]
            t_dcm, t_ort = timeit_in_turns([lambda: sess.run(None, feeds), lambda: ort_sess.run(None, feeds)])
            ort_sess = None  # its spinning pool goes before torch is timed
            torch.set_num_threads(threads)
            with torch.no_grad():
                t_torch = timeit(lambda: module(*inputs))
            scale = float(np.abs(want).max()) or 1.0
            rows.append({**row, "dcm_ms": 1e3 * t_dcm, "onnxruntime_ms": 1e3 * t_ort, "torch_ms": 1e3 * t_torch,
                         "dcm_vs_onnxruntime": t_dcm / t_ort, "dcm_vs_torch": t_dcm / t_torch,
                         "max_rel_error": float(np.abs(got - want).max()) / scale})
            if batch == 1 and threads == 1:
                rows[-1]["ops"] = op_profile(sess, onnx_bytes, feeds, t_dcm)
    return rows


def row_line(r: dict) -> str:
    """One markdown table line: the times and ratios, or the error that stopped the model."""
    if "error" in r:
        return (f"| {r['model']} | {r['weights']} | {r.get('batch', '-')} | {r.get('threads', '-')} | "
                f"fails: {r['error'].replace('|', '/')} | | | | |")
    return (f"| {r['model']} | {r['weights']} | {r['batch']} | {r['threads']} | {r['dcm_ms']:.2f} | "
            f"{r['onnxruntime_ms']:.2f} | {r['torch_ms']:.2f} | {r['dcm_vs_onnxruntime']:.2f} | {r['dcm_vs_torch']:.2f} |")


def table(rows: list[dict]) -> str:
    """Markdown: one line per measurement, then the geometric mean of dcm/onnxruntime per weights kind."""
    lines = ["| model | weights | batch | threads | dcm ms | onnxruntime ms | torch ms | dcm/ort | dcm/torch |",
             "|---|---|---|---|---|---|---|---|---|", *map(row_line, rows)]
    lines.append("")
    for kind in ("dense", "pruned"):
        ratios = [r["dcm_vs_onnxruntime"] for r in rows if "error" not in r and r["weights"].startswith(kind)]
        failed = sum(1 for r in rows if "error" in r and r["weights"].startswith(kind))
        if ratios:
            gm = math.exp(sum(map(math.log, ratios)) / len(ratios))
            lines.append(f"- {kind}: geometric mean dcm/onnxruntime {gm:.2f} over {len(ratios)} measurements, "
                         f"worst {max(ratios):.2f}; {failed} failed")
        elif failed:
            lines.append(f"- {kind}: every measurement failed ({failed})")
    return "\n".join(lines)


def gaps(rows: list[dict]) -> str:
    """Markdown: per profiled model, the op types where dcm spends the most time over onnxruntime."""
    lines = []
    for r in rows:
        ops = r.get("ops")
        if not ops:
            continue
        worst = sorted(ops.items(), key=lambda kv: kv[1]["onnxruntime_ms"] - kv[1]["dcm_ms"])[:TOP_GAPS]
        worst = [(op, t) for op, t in worst if t["dcm_ms"] - t["onnxruntime_ms"] >= 0.005]
        total = sum(t["dcm_ms"] for t in ops.values()), sum(t["onnxruntime_ms"] for t in ops.values())
        items = ", ".join(f"{op} +{t['dcm_ms'] - t['onnxruntime_ms']:.2f} ({t['dcm_ms']:.2f} vs {t['onnxruntime_ms']:.2f})"
                          for op, t in worst)
        lines.append(f"- {r['model']}, {r['weights']}: nodes {total[0]:.2f} vs {total[1]:.2f} ms; "
                     + (items or "dcm is faster on every op type"))
    if not lines:
        return ""
    return ("Where dcm loses (batch 1, 1 thread): the op types with the largest dcm minus onnxruntime time, "
            "in ms per run, summed over each runtime's per-node profile (dcm time vs onnxruntime time). "
            "onnxruntime's work on a node that dcm folded into a fused op (dcm.MatMulAdd, dcm.Attention) is "
            "counted under that op; its own fused nodes under the ONNX op they replace.\n\n" + "\n".join(lines))


def add_output_options(ap: argparse.ArgumentParser, docs: Path) -> None:
    """--docs and --docs-path, which this benchmark and benchmarks.busy both take."""
    ap.add_argument("--docs", action="store_true", help=f"also write {docs.relative_to(docs.parent.parent)}")
    ap.add_argument("--docs-path", type=Path, default=docs, help="where --docs writes the page")


def model_names(ap: argparse.ArgumentParser, value: str) -> list[str]:
    """The zoo models a comma-separated --models names (an unknown one ends the program with usage)."""
    names = [n for n in value.split(",") if n]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
    return names


def thread_counts() -> tuple[int, ...]:
    """1 and 2 threads (1 alone on a one-core machine)."""
    return tuple(sorted({1, min(2, os.cpu_count() or 1)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of: " + ", ".join(MODELS))
    ap.add_argument("--quick", action="store_true", help="batch 1 and 1 thread only")
    add_output_options(ap, DOCS)
    args = ap.parse_args()
    names = model_names(ap, args.models)
    batches, threads = ((1,), (1,)) if args.quick else ((1, 8), thread_counts())
    rows = []
    for name in names:
        for pruned in (False, True):
            new = measure(name, pruned, batches, threads)
            print("\n".join(map(row_line, new)), flush=True)
            rows += new
    text = table(rows)
    where = gaps(rows)
    print("\n" + text.split("\n\n")[-1])
    print(f"wrote {save('zoo', {'rows': rows})}")
    if args.docs:
        args.docs_path.parent.mkdir(parents=True, exist_ok=True)
        command = " ".join(["python -m benchmarks.zoo", *sys.argv[1:]])
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        args.docs_path.write_text(
            f"# Runtime on the architectures users bring\n\nMade by `{command}` (random weights, seed 0; medians, dcm "
            f"and onnxruntime timed in turns, on {os.cpu_count()} cores of an {cpu_model()} at load average {load:.1f}). "
            "Ratios < 1: dcm is faster than onnxruntime on the "
            "same weights.\n\n" + text + "\n" + (f"\n{where}\n" if where else ""))


if __name__ == "__main__":
    main()
