"""Where the bytes go: per-tensor and per-section accounting of a .dcm (``dcm inspect``).

Reads only payload headers and tables; no stream is decoded.
"""
from __future__ import annotations

import math
from typing import Any

from dcm.format import constants as C
from dcm.format.blobs import BLOB_HEADER, parse_payload
from dcm.format.model import Model, TensorRecord
from dcm.format.reader import read_sections


def tensor_stats(rec: TensorRecord) -> dict[str, Any]:
    numel = rec.numel
    row: dict[str, Any] = {"name": rec.name, "shape": list(rec.shape), "encoding": rec.encoding,
                           "elements": numel, "payload_bytes": len(rec.payload),
                           "float32_bytes": 4 * numel}
    if rec.encoding == C.ENC_RAW:
        row.update(nnz=numel, density=1.0, code_bits=None, index_bits=None, codebook_bytes=0,
                   table_bytes=0, code_stream_bytes=0, index_stream_bytes=0,
                   bits_per_code=None, bits_per_index=None)
    else:
        p = parse_payload(rec.payload, rec.encoding, numel, 0, rec.name)
        streams = {"code": p.codes, "index": p.index}
        table_bytes = sum(map(len, p.tables())) + sum(4 * len(s.block_bits) for s in streams.values() if s)
        bits = {k: int(s.block_bits.astype("int64").sum()) if s else 0 for k, s in streams.items()}
        row.update(
            nnz=p.nnz, density=p.nnz / numel if numel else 0.0,
            code_bits=p.code_bits or None, index_bits=p.index_bits or None,
            codebook_bytes=4 * (len(p.codebook) if p.codebook is not None else 0),
            values_bytes=4 * len(p.values) if p.values is not None else 0,
            header_bytes=BLOB_HEADER.size, table_bytes=table_bytes,
            code_stream_bytes=len(p.codes.data) if p.codes else 0,
            index_stream_bytes=len(p.index.data) if p.index else 0,
            index_entries=p.index_count, code_stream_bits=bits["code"], index_stream_bits=bits["index"],
            bits_per_code=bits["code"] / p.nnz if p.nnz and p.codes else None,
            bits_per_index=bits["index"] / p.nnz if p.nnz and p.index else None)
    row["ratio"] = row["float32_bytes"] / max(row["payload_bytes"], 1)
    return row


def section_sizes(data: bytes) -> dict[str, int]:
    """Bytes per section type, header and CRC included, plus the 16-byte file header."""
    sizes = {"file header": C.FILE_HEADER_SIZE}
    for kind, _, length in read_sections(data):
        name = kind.decode("ascii")
        sizes[name] = sizes.get(name, 0) + C.SECTION_HEADER_SIZE + length + C.SECTION_CRC_SIZE
    return sizes


def model_stats(model: Model, file_bytes: int) -> dict[str, Any]:
    rows = [tensor_stats(t) for t in model.tensors.values()]
    payload = sum(r["payload_bytes"] for r in rows)
    dense = sum(r["float32_bytes"] for r in rows)
    return {
        "tensors": rows,
        "totals": {
            "file_bytes": file_bytes,
            "tensor_payload_bytes": payload,
            "container_overhead_bytes": file_bytes - payload,
            "parameters": sum(r["elements"] for r in rows),
            "nonzero_parameters": sum(r["nnz"] for r in rows),
            "float32_bytes": dense,
            "ratio": dense / file_bytes if file_bytes else math.nan,
            "code_stream_bytes": sum(r["code_stream_bytes"] for r in rows),
            "index_stream_bytes": sum(r["index_stream_bytes"] for r in rows),
            "codebook_bytes": sum(r["codebook_bytes"] for r in rows),
            "table_bytes": sum(r["table_bytes"] for r in rows),
            "raw_bytes": sum(r["payload_bytes"] for r in rows if r["encoding"] == C.ENC_RAW),
        },
    }


NAME_WIDTH = (12, 40)  # the name column fits the longest name within these bounds


def shorten(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, cut in the middle with an ellipsis when longer:
    tensor names differ at their ends (``features.3.conv.1.weight``), so both ends must show."""
    if len(text) <= width:
        return text
    head = width // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def _name_width(names: list[str]) -> int:
    return max(NAME_WIDTH[0], min(NAME_WIDTH[1], max((len(n) for n in names), default=0)))


def format_table(stats: dict[str, Any]) -> str:
    w = _name_width([r["name"] for r in stats["tensors"]])
    e = 2 + max([len(r["encoding"]) for r in stats["tensors"]] + [8])
    head = (f"{'tensor':<{w + 1}}{'shape':>16}{'encoding':>{e}}{'nnz':>9}{'dens':>7}{'code b':>8}{'idx b':>7}"
            f"{'bits/w':>8}{'bits/i':>8}{'cbook':>7}{'tables':>8}{'payload':>10}{'ratio':>8}")
    lines = [head, "-" * len(head)]
    for r in stats["tensors"]:
        f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
        lines.append(f"{shorten(r['name'], w):<{w + 1}}{'x'.join(map(str, r['shape'])):>16}{r['encoding']:>{e}}{r['nnz']:>9}"
                     f"{r['density']:>7.1%}{f(r['code_bits'], 'd'):>8}{f(r['index_bits'], 'd'):>7}"
                     f"{f(r['bits_per_code'], '.2f'):>8}{f(r['bits_per_index'], '.2f'):>8}{r['codebook_bytes']:>7}"
                     f"{r['table_bytes']:>8}{r['payload_bytes']:>10}{r['ratio']:>7.1f}x")
    t = stats["totals"]
    lines += ["-" * len(head),
              f"parameters {t['parameters']:,} ({t['nonzero_parameters']:,} non-zero); float32 {t['float32_bytes']:,} B; "
              f"file {t['file_bytes']:,} B; ratio {t['ratio']:.1f}x",
              f"bytes: code streams {t['code_stream_bytes']:,}, index streams {t['index_stream_bytes']:,}, "
              f"codebooks {t['codebook_bytes']:,}, Huffman+block tables {t['table_bytes']:,}, raw tensors "
              f"{t['raw_bytes']:,}, container (graph JSON, headers, padding) {t['container_overhead_bytes']:,}"]
    if "sections" in stats:
        lines.append("sections: " + ", ".join(f"{k} {v:,} B" for k, v in stats["sections"].items()))
    return "\n".join(lines)


def paper_rows(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """The columns of the paper's Tables 4 and 5, per coded weight and in total.

    P: pruning, Q: quantization (fixed-width codes and indexes, plus the codebook), H: Huffman
    (the actual payload, tables and block headers included). Rates are compressed / float32 size.
    """
    coded = [r for r in stats["tensors"] if r["encoding"] != C.ENC_RAW]
    rows = []
    for r in coded + [None]:
        group = coded if r is None else [r]
        numel = sum(x["elements"] for x in group)
        nnz = sum(x["nnz"] for x in group)
        code_bits = sum((x["code_bits"] or 32) * x["nnz"] for x in group)  # float32 values: 32 bits
        index_bits = sum((x["index_bits"] or 0) * x["index_entries"] for x in group)
        pq = code_bits + index_bits + 8 * sum(x["codebook_bytes"] for x in group)
        rows.append({
            "layer": "total" if r is None else r["name"], "weights": numel, "density": nnz / numel if numel else 0.0,
            "weight_bits_pq": code_bits / nnz if nnz else None,
            "weight_bits_pqh": sum(x["code_stream_bits"] or 32 * x["nnz"] for x in group) / nnz if nnz else None,
            "index_bits_pq": index_bits / nnz if nnz and index_bits else None,
            "index_bits_pqh": sum(x["index_stream_bits"] for x in group) / nnz if nnz and index_bits else None,
            "rate_pq": pq / (32 * numel) if numel else None,
            "rate_pqh": sum(x["payload_bytes"] for x in group) / (4 * numel) if numel else None,
        })
    return rows


def format_paper_table(stats: dict[str, Any]) -> str:
    rows = paper_rows(stats)
    w = _name_width([r["layer"] for r in rows])
    head = (f"{'layer':<{w + 1}}{'#weights':>12}{'weights% (P)':>14}{'weight bits':>13}{'(P+Q+H)':>9}"
            f"{'index bits':>12}{'(P+Q+H)':>9}{'rate (P+Q)':>12}{'(P+Q+H)':>9}")
    lines = [head, "-" * len(head)]
    f = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
    for r in rows:
        if r["layer"] == "total":
            lines.append("-" * len(head))
        lines.append(f"{shorten(r['layer'], w):<{w + 1}}{r['weights']:>12,}{r['density']:>14.1%}{f(r['weight_bits_pq'], '.1f'):>13}"
                     f"{f(r['weight_bits_pqh'], '.1f'):>9}{f(r['index_bits_pq'], '.1f'):>12}"
                     f"{f(r['index_bits_pqh'], '.1f'):>9}{f(r['rate_pq'], '.2%'):>12}{f(r['rate_pqh'], '.2%'):>9}")
    lines.append("(columns of the paper's Tables 4/5: P pruning, Q quantization, H Huffman; rate = coded / float32)")
    return "\n".join(lines)
