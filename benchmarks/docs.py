"""The measured tables in docs/*.md, generated from the JSON the benchmarks write.

    python -m benchmarks.docs --take runtime ops   # copy benchmarks/results/{runtime,ops}.json to docs/data/
    python -m benchmarks.docs                      # re-render every table from docs/data/*.json
    python -m benchmarks.docs --check              # exit 1 if a page differs from its data (a test runs this)

A page (README.md or docs/*.md) holds its tables between markers; the text around them is written by hand:

    <!-- table NAME -->
    ...generated...
    <!-- /table -->

NAME picks a renderer below and the data file ``docs/data/<source>.json`` it reads. The JSON is
committed (``benchmarks/results/`` is not), so every figure in the docs can be traced to one run
of one command, with the machine it ran on.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
DOCS, DATA, RESULTS = ROOT / "docs", ROOT / "docs" / "data", ROOT / "benchmarks" / "results"
MARKER = re.compile(r"(<!-- table (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)

COMMANDS = {  # what writes benchmarks/results/<source>.json
    "compression": "python benchmarks/compression.py",
    "codecs": "OMP_NUM_THREADS=1 python -m benchmarks.codecs",
    "runtime": "python -m benchmarks.runtime",
    "ops": "python -m benchmarks.ops",
    "scale": "python -m benchmarks.scale",
    "fuzz": "python -m benchmarks.fuzz --iterations N --workers 2 --seed S",
    "cli_errors": "python -m benchmarks.cli_errors",
    "tables": "python -m benchmarks.tables --dcm FILE ... --vgg16",
}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2%}"


def _num(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _table(head: list[str], rows: list[list[Any]], align: str = "") -> list[str]:
    """Markdown table lines; ``align`` has one letter per column, "r" for right-aligned."""
    align = align or "l" * len(head)
    return ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|",
            *("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows)]


def _machine(data: Any) -> str:
    """The conditions of the run, as ``benchmarks.common.save`` recorded them."""
    if isinstance(data, list):  # one row per model, each with its own record (benchmarks/compression.py)
        data = data[0] if data else {}
    m = data.get("machine") if isinstance(data, dict) else None
    if not m:
        return ""
    text = f"; machine: {m.get('cpu')}"
    if m.get("cores"):
        text += f", {m['cores']} cores"
    if m.get("load_average") is not None:
        text += f" (load average {m['load_average']} when it finished)"
    return text + f", Python {m.get('python')}"


def compression(data: list[dict]) -> list[str]:
    """One row per model of ``benchmarks/compression.py``'s JSON (its first seed's run)."""
    rows = [[r["model"], _pct(r.get("error_dense")), _pct(r.get("error_file")),
             f"{100 * (r['error_file'] - r['error_dense']):+.2f} pp", f"{r['parameters']:,}",
             f"{r['float32_bytes'] / 1024:,.0f} KB", f"{r['dcm_bytes']:,} B", f"**{r['ratio']:.1f}x**",
             f"{r['seconds']:.0f} s"] for r in data]
    return _table(["network", "dense error", "error of the .dcm", "change", "parameters", "float32", ".dcm",
                   "ratio", "time"], rows, "llrrrrrrr")


def demo(data: list[dict]) -> list[str]:
    """``dcm demo``'s own tables for LeNet-300-100 (the run of its recipe in compression.json)."""
    from dcm.demo import format_tables

    row = next(r for r in data if r["model"] == "lenet300")
    return ["```text", "$ dcm demo", "...", format_tables(row).strip(), "```"]


def codecs(data: dict) -> list[str]:
    rows = [[r["layer"], f"{r['nnz']:,}", f"{r['encode_s']:.2f} s", f"{r['encode_Mweights_s']:.1f}",
             f"{r['decode_Msymbols_s']:.1f}", f"{r['bitarray_plain_Msymbols_s']:.1f}", f"{r['huffman_vs_plain']:.2f}",
             f"{r['huffman_vs_plain_bytearray']:.2f}", f"{r['decode_vs_plain']:.2f}", f"{r['code_bits_vs_entropy']:.3f}",
             f"{r['index_bits_vs_entropy']:.3f}", r["code_table_bytes"] + r["index_table_bytes"]] for r in data["rows"]]
    return _table(["layer", "nnz", "encode", "enc Mw/s", "dec Ms/s", "plain Ms/s", "huff/plain", "huff/same",
                   "dec/plain", "code/H", "idx/H", "tables B"], rows, "lrrrrrrrrrrr")


def runtime_cpu(data: dict) -> list[str]:
    rows = [[r["model"], r["input"], r["batch"], r["threads"], f"{r['dcm_ms']:.3g}", f"{r['onnxruntime_ms']:.3g}",
             f"{r['torch_ms']:.3g}", f"**{r['dcm_vs_onnxruntime']:.2f}**", _num(r.get("floor_vs_onnxruntime"), ".2f"),
             r["dcm_kernels"]] for r in data["rows"] if r["device"] == "cpu"]
    return _table(["model", "input", "batch", "threads", "dcm ms", "onnxruntime ms", "torch ms", "dcm/ort",
                   "floor/ort", "dcm kernels"], rows, "llrrrrrrrl")


def runtime_gpu(data: dict) -> list[str]:
    rows = [[r["model"], r["device"], r["batch"], f"{r['dcm_ms']:.3g}", f"{r['torch_ms']:.3g}",
             f"{r['dcm_vs_torch']:.2f}", r["dcm_kernels"]] for r in data["rows"] if r["device"] != "cpu"]
    if not rows:
        return ["(no GPU rows in this run: `python -m benchmarks.runtime` adds them on a machine with CUDA)"]
    return _table(["model", "device", "batch", "dcm ms", "torch dense ms", "dcm/torch", "dcm kernels"], rows, "llrrrrl")


def ops(data: dict) -> list[str]:
    rows = [[r["op"], f"{r['dcm_ms']:.3f}", f"{r['onnxruntime_ms']:.3f}", f"{r['dcm_vs_onnxruntime']:.2f}"]
            for r in data["rows"]]
    return [f"Input {data['shape']}, {data['threads']} thread(s), best of 5.", "",
            *_table(["op", "dcm ms", "onnxruntime ms", "dcm/ort"], rows, "lrrr")]


def scale(data: dict) -> list[str]:
    from benchmarks.scale import report  # the benchmark's own markdown, so the two never disagree

    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        report(data["rows"])
    return [f"CPU, {data['threads']} threads.", *text.getvalue().strip().splitlines()]


def fuzz(data: dict) -> list[str]:
    o = data.get("outcomes", {})
    conv = data.get("convert", {})
    row = [f"{data['tried']:,}", f"{o.get('ok', 0):,}", f"{o.get('loaded', 0):,}", f"{o.get('rejected', 0):,}"]
    head = ["inputs tried", "ran ok", "loaded (feed too big to run)", "rejected (DcmError)"]
    if conv:
        co = conv.get("outcomes", {})
        head.append("ONNX conversions (ok / rejected)")
        row.append(f"{conv.get('tried', 0):,} ({co.get('ok', 0):,} / {co.get('rejected', 0):,})")
    head += ["crashes", "hangs", "slowest input", "max RSS / worker", "time"]
    row += [f"**{data['crashes']}**", f"**{data['hangs']}**", f"{data['slowest_s']:.2f} s",
            f"{data['max_rss_mib']:.0f} MiB", f"{data['elapsed_s']:.0f} s"]
    cmd = f"python -m benchmarks.fuzz --iterations {data['iterations']} --workers {data['workers']} --seed {data['seed']}"
    out = [f"Command: `{cmd}`.", "", *_table(head, [row], "r" * len(head))]
    if "kernels_never_reached" in data:
        never = data["kernels_never_reached"]
        out += ["", f"Compiled kernels never reached: {', '.join(never) or 'none'}. Registry ops never run: "
                    f"{', '.join(data.get('registry_ops_never_run', [])) or 'none'} "
                    f"(of {data.get('registry_ops', '?')})."]
    return out


def cli_errors(data: dict) -> list[str]:
    rows = [[f"`{r['command']}`", r["input"], r["exit"], r["message"]] for r in data["rows"]]
    return _table(["command", "bad input", "exit", "message (stderr, one line)"], rows, "llrl")


def tables(data: dict) -> list[str]:
    from benchmarks.tables import markdown  # the benchmark's own markdown, so the two never disagree

    return markdown(data["results"]).strip().splitlines()


RENDERERS: dict[str, tuple[str, Callable[[Any], list[str]]]] = {
    "compression": ("compression", compression),
    "demo": ("compression", demo),
    "codecs": ("codecs", codecs), "runtime-cpu": ("runtime", runtime_cpu), "runtime-gpu": ("runtime", runtime_gpu),
    "ops": ("ops", ops), "scale": ("scale", scale), "fuzz": ("fuzz", fuzz), "cli-errors": ("cli_errors", cli_errors),
    "tables": ("tables", tables),
}


def render(name: str) -> str:
    """The body of table ``name``: the table, then where it came from."""
    if name not in RENDERERS:
        raise SystemExit(f"unknown table {name!r}; known: {', '.join(RENDERERS)}")
    source, fn = RENDERERS[name]
    path = DATA / f"{source}.json"
    if not path.exists():
        return (f"(not generated yet: run `{COMMANDS[source]}`, then `python -m benchmarks.docs --take {source}`)\n")
    data = json.loads(path.read_text())
    note = f" {data['note']}" if isinstance(data, dict) and data.get("note") else ""
    origin = (f"Generated by `python -m benchmarks.docs` from `docs/data/{source}.json`, written by "
              f"`{COMMANDS[source]}`{_machine(data)}.{note}")
    return "\n".join([*fn(data), "", origin]) + "\n"


def pages() -> list[Path]:
    """Every page that may hold generated tables: the README (its headline table) and docs/*.md."""
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def page(text: str) -> str:
    return MARKER.sub(lambda m: m.group(1) + render(m.group("name")) + m.group(4), text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--take", nargs="+", default=[], choices=sorted(COMMANDS), metavar="SOURCE",
                    help="first copy benchmarks/results/SOURCE.json into docs/data/")
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a page is out of date")
    a = ap.parse_args(argv)
    for source in a.take:
        DATA.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(RESULTS / f"{source}.json", DATA / f"{source}.json")
    stale = []
    for path in pages():
        text = path.read_text()
        new = page(text)
        if new != text:
            stale.append(path.name)
            if not a.check:
                path.write_text(new)
    if a.check and stale:
        print(f"out of date (run python -m benchmarks.docs): {', '.join(stale)}", file=sys.stderr)
        return 1
    print(("up to date" if a.check else "rendered") + f": {', '.join(p.name for p in pages())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
