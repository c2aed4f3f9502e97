""".dcm bytes -> Model, rejecting everything spec.md forbids with a ``FormatError``.

Order of trust: framing and checksums first (nothing else is looked at until every section's
CRC matches), then the JSON graph against its schema and limits, then each tensor's payload
header. Stream *contents* (Huffman symbols, index positions) are checked where they are
decoded: ``dcm.encoder.decode_tensor`` and ``dcm.format.validate``.
"""
from __future__ import annotations

import json
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dcm.errors import FormatError
from dcm.format import constants as C
from dcm.format.attrs import tensor_from_json
from dcm.format.blobs import csr_bytes, decoded_size_limit, parse_payload
from dcm.format.model import Model, Node, TensorRecord, ValueInfo

Report = Callable[[FormatError], None]
TENSOR_KEYS = ("name", "dtype", "shape", "encoding", "offset", "length")  # spec 4.1, all required


def _raise(err: FormatError) -> None:
    raise err


def load_bytes(source: str | os.PathLike | bytes | bytearray | memoryview) -> bytes:
    """The file's bytes; a path that is missing, a folder or unreadable is a clear FormatError."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    path = Path(source)
    if path.is_dir():
        raise FormatError(f"{path} is a directory, not a .dcm file")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except OSError as exc:
        raise FormatError(f"{path}: cannot read ({exc.strerror})") from None


def _check_signature(data: bytes) -> None:
    if len(data) >= C.DICOM_MAGIC_OFFSET + 4 and data[C.DICOM_MAGIC_OFFSET : C.DICOM_MAGIC_OFFSET + 4] == C.DICOM_MAGIC:
        raise FormatError("this is a DICOM file (DICM at byte 128), not a dcm model", 128, "2")
    if len(data) < C.FILE_HEADER_SIZE:
        raise FormatError(f"file is {len(data)} bytes, shorter than the 16-byte header", len(data), "2")
    sig = data[:8]
    if sig != C.SIGNATURE:
        if sig[1:4] == b"DCM":
            raise FormatError("signature damaged (a text-mode or 7-bit transfer changed bytes)", 0, "2")
        if sig.startswith(b"\x89PNG"):
            raise FormatError("this is a PNG image, not a dcm model", 0, "2")
        if sig[:1] in (b"\x08", b"\x12", b"\x1a", b"\x3a", b"\x42"):
            raise FormatError("bad signature: not a dcm model (an ONNX protobuf? use `dcm convert`)", 0, "2")
        raise FormatError("bad signature: not a dcm model", 0, "2")
    major, minor, crc = struct.unpack_from("<HHI", data, 8)
    if zlib.crc32(data[:12]) != crc:
        raise FormatError("file header CRC mismatch", 12, "2")
    if major != C.VERSION_MAJOR:
        raise FormatError(f"format major version {major} is not supported (this reader: {C.VERSION_MAJOR})", 8, "2")


def read_sections(data: bytes) -> list[tuple[bytes, int, int]]:
    """Verify framing and every CRC; returns (type, payload offset, payload length) in file order."""
    pos, out = C.FILE_HEADER_SIZE, []
    while True:
        if pos == len(data):
            raise FormatError("file ends without a DEND section (truncated?)", pos, "3")
        if pos + C.SECTION_HEADER_SIZE + C.SECTION_CRC_SIZE > len(data):
            raise FormatError("truncated section header", pos, "3")
        kind = data[pos : pos + 4]
        reserved, length = struct.unpack_from("<IQ", data, pos + 4)
        if not all(65 <= b <= 90 or 97 <= b <= 122 for b in kind):
            raise FormatError(f"section type {kind!r} is not four ASCII letters", pos, "3")
        if reserved:
            raise FormatError("section reserved field must be 0", pos + 4, "3")
        start = pos + C.SECTION_HEADER_SIZE
        if length > len(data) - start - C.SECTION_CRC_SIZE:
            raise FormatError(f"section {kind.decode()} claims {length} bytes, file has {len(data) - start - 4} left", pos + 8, "3")
        end = start + length
        (crc,) = struct.unpack_from("<I", data, end)
        if zlib.crc32(data[pos:end]) != crc:
            raise FormatError(f"section {kind.decode()} CRC mismatch", end, "3")
        out.append((kind, start, length))
        pos = end + C.SECTION_CRC_SIZE
        if kind == C.SECTION_END:
            if length:
                raise FormatError("DEND section must be empty", pos - 4 - length, "3")
            if pos != len(data):
                raise FormatError(f"{len(data) - pos} trailing bytes after DEND", pos, "3")
            return out


def _check_order(sections: list[tuple[bytes, int, int]]) -> tuple[int, int, int, int]:
    kinds = [k for k, _, _ in sections]
    if kinds[0] != C.SECTION_GRAPH:
        raise FormatError("the first section must be GRPH", C.FILE_HEADER_SIZE, "3")
    for kind, start, _ in sections:
        if kind[0:1].isupper() and kind not in (C.SECTION_GRAPH, C.SECTION_DATA, C.SECTION_END):
            raise FormatError(f"unknown critical section {kind.decode()}", start - 16, "3")
    for kind in (C.SECTION_GRAPH, C.SECTION_DATA):
        if kinds.count(kind) != 1:
            raise FormatError(f"exactly one {kind.decode()} section required, found {kinds.count(kind)}", None, "3")
    (_, g_start, g_len), = [s for s in sections if s[0] == C.SECTION_GRAPH]
    (_, d_start, d_len), = [s for s in sections if s[0] == C.SECTION_DATA]
    if g_len > C.MAX_GRAPH_BYTES:
        raise FormatError(f"GRPH is {g_len} bytes, limit {C.MAX_GRAPH_BYTES}", g_start - 8, "8")
    if d_start % C.PAYLOAD_ALIGNMENT:
        raise FormatError("DATA payload does not start on a 64-byte boundary", d_start, "3.2")
    return g_start, g_len, d_start, d_len


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    """JSON allows ``1e400``; as a binary64 it is infinity, which spec 4 rejects like ``Infinity``."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} overflows to infinity")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


class _Schema:
    """Type checks for the JSON document; each failure is reported, not just the first."""

    def __init__(self, report: Report, offset: int):
        self.report, self.offset = report, offset

    def bad(self, message: str, rule: str = "4") -> None:
        self.report(FormatError(message, self.offset, rule))

    def name(self, value: Any, what: str, allow_empty: bool = False) -> bool:
        if not isinstance(value, str) or (not value and not allow_empty):
            self.bad(f"{what} must be a{'' if allow_empty else ' non-empty'} string, got {value!r:.80}")
            return False
        if len(value.encode("utf-8")) > C.MAX_NAME_BYTES:
            self.bad(f"{what} is longer than {C.MAX_NAME_BYTES} bytes", "8")
            return False
        return True

    def shape(self, value: Any, what: str, symbolic: bool) -> bool:
        if not isinstance(value, list) or len(value) > C.MAX_RANK:
            self.bad(f"{what} shape must be a list of at most {C.MAX_RANK} dims", "8")
            return False
        for d in value:
            ok = (type(d) is int and 0 <= d <= C.MAX_ELEMENTS) or (symbolic and isinstance(d, str) and 0 < len(d) <= 256)
            if not ok:
                self.bad(f"{what} has an invalid dim {d!r:.40}", "4")
                return False
        return True

    def value_info(self, items: Any, what: str) -> list[ValueInfo]:
        out = []
        if not isinstance(items, list):
            self.bad(f"{what} must be a list")
            return out
        for v in items:
            if not isinstance(v, dict):
                self.bad(f"{what} entries must be objects")
                continue
            name, dtype, shape = v.get("name"), v.get("dtype"), v.get("shape")
            ok = self.name(name, f"{what} name")
            if not _one_of(dtype, C.DTYPES):
                self.bad(f"{what} {name!r:.80} has unknown dtype {dtype!r:.40}")
                ok = False
            ok = self.shape(shape, f"{what} {name!r:.80}", symbolic=True) and ok
            if ok:
                out.append(ValueInfo(name, dtype, list(shape)))
        return out


def _one_of(value: Any, allowed: Any) -> bool:
    """``value in allowed`` for JSON values, which may be unhashable lists or objects."""
    return isinstance(value, str) and value in allowed


def _attr_ok(value: Any) -> bool:
    """A scalar, a list of scalars, or an object (a tensor attribute, checked by ``tensor_from_json``)."""
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, dict):
        return True
    if isinstance(value, (int, float, str)):
        return True
    return isinstance(value, list) and all(isinstance(x, (int, float, str)) and not isinstance(x, bool) for x in value)


def _parse_graph(data: bytes, g_start: int, g_len: int, d_start: int, d_len: int, report: Report) -> Model:
    try:
        text = data[g_start : g_start + g_len].decode("utf-8")
        doc = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float,
                         object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(f"GRPH is not valid UTF-8 JSON: {exc}", g_start, "4") from None
    if not isinstance(doc, dict):
        raise FormatError("GRPH must hold a JSON object", g_start, "4")
    s = _Schema(report, g_start)
    opset = doc.get("opset")
    if type(opset) is not int or not 1 <= opset <= 1000:
        s.bad(f"opset must be an integer 1..1000, got {opset!r:.40}")
        opset = 17
    inputs = s.value_info(doc.get("inputs"), "input")
    outputs = s.value_info(doc.get("outputs"), "output")
    metadata = doc.get("metadata", {})
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        s.bad("metadata must map strings to strings")
        metadata = {}

    nodes: list[Node] = []
    raw_nodes = doc.get("nodes")
    if not isinstance(raw_nodes, list) or len(raw_nodes) > C.MAX_NODES:
        s.bad(f"nodes must be a list of at most {C.MAX_NODES}", "8" if isinstance(raw_nodes, list) else "4")
        raw_nodes = []
    for i, n in enumerate(raw_nodes):
        if not isinstance(n, dict):
            s.bad(f"node {i} must be an object")
            continue
        op, name, ins, outs, attrs = n.get("op"), n.get("name", ""), n.get("inputs"), n.get("outputs"), n.get("attrs", {})
        ok = s.name(op, f"node {i} op") and s.name(name, f"node {i} name", allow_empty=True)
        if not (isinstance(ins, list) and all(s.name(x, f"node {i} input", allow_empty=True) for x in ins)):
            s.bad(f"node {i} inputs must be a list of strings")
            ok = False
        if not (isinstance(outs, list) and outs and all(s.name(x, f"node {i} output") for x in outs)):
            s.bad(f"node {i} outputs must be a non-empty list of names")
            ok = False
        if not isinstance(attrs, dict) or not all(_attr_ok(v) for v in attrs.values()):
            s.bad(f"node {i} attrs must map names to numbers, strings, lists of them or tensors")
            ok = False
        else:
            attrs = dict(attrs)
            for key, v in attrs.items():
                if isinstance(v, dict):
                    try:
                        attrs[key] = tensor_from_json(v)
                    except ValueError as exc:
                        s.bad(f"node {i} attribute {key!r:.80}: {exc}", "4.3")
                        ok = False
        if ok:
            nodes.append(Node(op, list(ins), list(outs), dict(attrs), name))

    tensors: dict[str, TensorRecord] = {}
    table = doc.get("tensors")
    if not isinstance(table, list) or len(table) > C.MAX_TENSORS:
        raise FormatError(f"tensors must be a list of at most {C.MAX_TENSORS}", g_start,
                          "8" if isinstance(table, list) else "4")
    expected, end = 0, 0
    for i, t in enumerate(table):
        if not isinstance(t, dict):
            raise FormatError(f"tensor entry {i} must be an object", g_start, "4")
        missing = [k for k in TENSOR_KEYS if k not in t]
        if missing:
            raise FormatError(f"tensor entry {i} lacks the required keys {missing}", g_start, "4")
        name, dtype, shape, enc = t.get("name"), t.get("dtype"), t.get("shape"), t.get("encoding")
        offset, length = t.get("offset"), t.get("length")
        if type(offset) is not int or type(length) is not int or length < 0:
            raise FormatError(f"tensor {name!r:.80}: offset and length must be non-negative integers", g_start, "4")
        if offset != expected:
            raise FormatError(f"tensor {name!r:.80}: offset {offset}, layout requires {expected} (no gaps or overlaps)", g_start, "3.2")
        end = offset + length
        expected = -(-end // C.PAYLOAD_ALIGNMENT) * C.PAYLOAD_ALIGNMENT
        if end > d_len:
            raise FormatError(f"tensor {name!r:.80}: payload runs past the DATA section", d_start + min(offset, d_len), "3.2")
        if not s.name(name, f"tensor {i} name"):
            continue
        if name in tensors:
            s.bad(f"tensor name {name!r:.80} is not unique", "4.1")
            continue
        if not _one_of(enc, C.ENCODINGS):
            s.bad(f"tensor {name!r:.80}: unknown encoding {enc!r:.40}", "5")
            continue
        if not _one_of(dtype, C.DTYPES) or (enc != C.ENC_RAW and dtype != "float32"):
            s.bad(f"tensor {name!r:.80}: dtype {dtype!r:.40} not allowed with encoding {enc}", "5")
            continue
        if not s.shape(shape, f"tensor {name!r:.80}", symbolic=False):
            continue
        numel = math.prod(shape)
        if numel > C.MAX_ELEMENTS:
            s.bad(f"tensor {name!r:.80}: {numel} elements exceeds the limit {C.MAX_ELEMENTS}", "8")
            continue
        payload = memoryview(data)[d_start + offset : d_start + end]
        try:
            if enc == C.ENC_RAW:
                want = numel * C.DTYPES[dtype].itemsize
                if length != want:
                    raise FormatError(f"tensor {name!r:.80}: raw payload is {length} bytes, shape and dtype need {want}", d_start + offset, "5.1")
                if dtype == "bool" and np.any(np.frombuffer(payload, dtype=np.uint8) > 1):
                    raise FormatError(f"tensor {name!r:.80}: a bool element is neither 0 nor 1", d_start + offset, "5.1")
            else:
                p = parse_payload(payload, enc, numel, d_start + offset, name)
                if csr_bytes(shape, p.nnz) > decoded_size_limit(length):
                    raise FormatError(f"tensor {name!r:.80}: its CSR form would take {csr_bytes(shape, p.nnz):,} bytes, "
                                      f"more than {decoded_size_limit(length):,} allowed for a {length:,}-byte payload",
                                      d_start + offset, "8")
        except FormatError as exc:
            report(exc)
            continue
        tensors[name] = TensorRecord(name, dtype, tuple(shape), enc, payload)
    layout_end = expected if table else 0
    if layout_end != d_len:
        raise FormatError(f"DATA section is {d_len} bytes, the tensor table accounts for {layout_end}", d_start, "3.2")
    pad = np.frombuffer(data, dtype=np.uint8, count=d_len, offset=d_start) if d_len else np.zeros(0, np.uint8)
    for t in table:
        if isinstance(t, dict):
            lo = t["offset"] + t["length"]
            hi = -(-lo // C.PAYLOAD_ALIGNMENT) * C.PAYLOAD_ALIGNMENT
            if np.any(pad[lo:hi]):
                report(FormatError("padding after a tensor payload must be zero bytes", d_start + lo, "3.2"))
    model = Model(inputs, outputs, nodes, tensors, metadata, opset)
    _check_wiring(model, table, s)
    return model


def _check_wiring(model: Model, table: list, s: _Schema) -> None:
    """Every node input exists before it is used; every value is produced once; outputs exist."""
    known = {v.name for v in model.inputs} | {t.get("name") for t in table
                                              if isinstance(t, dict) and isinstance(t.get("name"), str)}
    if len({v.name for v in model.inputs}) != len(model.inputs):
        s.bad("model input names must be unique", "4.2")
    if len({v.name for v in model.outputs}) != len(model.outputs):
        s.bad("model output names must be unique", "4.2")
    for v in model.inputs:
        if v.name in model.tensors:
            s.bad(f"input {v.name!r:.80} has the name of a tensor", "4.2")
    for i, n in enumerate(model.nodes):
        for x in n.inputs:
            if x and x not in known:
                s.bad(f"node {i} ({n.op}) reads {x!r:.80}, which no input, tensor or earlier node provides", "4.2")
        for y in n.outputs:
            if y in known:
                s.bad(f"node {i} ({n.op}) writes {y!r:.80}, which already exists", "4.2")
            known.add(y)
    for v in model.outputs:
        if v.name not in known:
            s.bad(f"model output {v.name!r:.80} is never produced", "4.2")


def parse(data: bytes, report: Report = _raise) -> Model:
    _check_signature(data)
    sections = read_sections(data)
    g_start, g_len, d_start, d_len = _check_order(sections)
    return _parse_graph(data, g_start, g_len, d_start, d_len, report)


def read(source: str | os.PathLike | bytes | bytearray | memoryview) -> Model:
    """Read a .dcm file (path or bytes). Raises ``FormatError`` naming the rule and byte offset."""
    return parse(load_bytes(source))
