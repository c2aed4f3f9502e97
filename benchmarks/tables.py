"""Huffman table bytes per layer: the listed tables of version 1.0 vs the compact ones of 1.1.

    python -m benchmarks.tables [--dcm FILE ...] [--vgg16]

Each coded tensor is measured twice with the same streams: its payload is parsed and packed again
with the other table form (spec 6.1 vs 6.2), so the difference is the tables alone. ``--dcm``
measures existing files (such as the output of ``dcm demo``); ``--vgg16`` builds VGG-16 as
``benchmarks/scale.py`` does (seeded random weights pruned to the paper's per-layer densities,
8-bit conv and 5-bit fc codes, 5-bit index) and encodes each weight. Writes
benchmarks/results/tables.json, which ``python -m benchmarks.docs --take tables`` turns into the
tables of docs/format-measurements.md.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.common import save
from dcm.format import constants as C
from dcm.format import read, to_bytes
from dcm.format.blobs import pack_payload, parse_payload
from dcm.format.model import Model, TensorRecord

LISTED = {compact: base for base, compact in C.WITH_COMPACT_TABLES.items()}


def both_forms(rec: TensorRecord) -> tuple[TensorRecord, TensorRecord]:
    """The tensor with listed tables and with compact tables, streams unchanged."""
    p = parse_payload(rec.payload, rec.encoding, rec.numel, 0, rec.name)
    listed = LISTED.get(rec.encoding, rec.encoding)
    forms = []
    for enc in (listed, C.WITH_COMPACT_TABLES[listed]):
        q = replace(p, encoding=enc)
        forms.append(TensorRecord(rec.name, rec.dtype, rec.shape, enc, pack_payload(q)))
    return forms[0], forms[1]


def table_bytes(rec: TensorRecord) -> int:
    p = parse_payload(rec.payload, rec.encoding, rec.numel, 0, rec.name)
    return sum(len(t) for t in p.tables())


def measure(name: str, model: Model) -> dict[str, Any]:
    """Per coded tensor: table and payload bytes in both forms; file bytes in both forms."""
    rows, listed_model, compact_model = [], dict(model.tensors), dict(model.tensors)
    for rec in model.tensors.values():
        if rec.encoding not in C.CODED_ENCODINGS:
            continue
        old, new = both_forms(rec)
        listed_model[rec.name], compact_model[rec.name] = old, new
        rows.append({"tensor": rec.name, "shape": list(rec.shape), "encoding": new.encoding,
                     "tables_listed": table_bytes(old), "tables_compact": table_bytes(new),
                     "payload_listed": len(old.payload), "payload_compact": len(new.payload)})
    files = {form: len(to_bytes(replace(model, tensors=t))) for form, t in
             (("listed", listed_model), ("compact", compact_model))}
    return {"model": name, "layers": rows, "file_listed": files["listed"], "file_compact": files["compact"]}


def vgg16() -> Model:
    from benchmarks.scale import CODE_BITS, INDEX_BITS, build_module
    from dcm.encoder import encode_tensor

    module = build_module("vgg16")
    tensors = {}
    for name, param in module.named_parameters():
        if not name.endswith("weight"):
            continue
        kind = "conv" if param.dim() == 4 else "fc"
        w = param.detach().numpy()
        tensors[name] = encode_tensor(w, code_bits=CODE_BITS[kind], index_bits=INDEX_BITS[kind], name=name)
    return Model([], [], [], tensors)


def markdown(results: list[dict[str, Any]]) -> str:
    """One table per model: bytes per coded tensor with listed and compact tables, then the file."""
    out = []
    for r in results:
        out += [f"### {r['model']}", "",
                "| tensor | shape | tables 1.0 (listed) | tables 1.1 (compact) | payload 1.0 | payload 1.1 | saved |",
                "|---|---|---:|---:|---:|---:|---:|"]
        for row in r["layers"]:
            saved = row["payload_listed"] - row["payload_compact"]
            out.append(f"| {row['tensor']} | {'x'.join(map(str, row['shape']))} | {row['tables_listed']:,} | "
                       f"{row['tables_compact']:,} | {row['payload_listed']:,} | {row['payload_compact']:,} | "
                       f"{saved:,} B ({saved / row['payload_listed']:.2%}) |")
        t_old = sum(x["tables_listed"] for x in r["layers"])
        t_new = sum(x["tables_compact"] for x in r["layers"])
        saved = r["file_listed"] - r["file_compact"]
        out += [f"| **file** | | {t_old:,} | {t_new:,} | {r['file_listed']:,} | {r['file_compact']:,} | "
                f"{saved:,} B ({saved / r['file_listed']:.2%}) |", ""]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dcm", nargs="*", default=[], type=Path, help=".dcm files to measure")
    ap.add_argument("--vgg16", action="store_true", help="also build and measure VGG-16 (minutes)")
    args = ap.parse_args()
    results = [measure(p.stem, read(p)) for p in args.dcm]
    if args.vgg16:
        results.append(measure("VGG-16 (random weights, paper densities)", vgg16()))
    files = ", ".join(f"`{p.name}`" for p in args.dcm)
    save("tables", {"note": f"Files measured: {files}." if files else "", "results": results})
    print(markdown(results))


if __name__ == "__main__":
    main()
