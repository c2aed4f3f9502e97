"""Write the .dcm conformance suite (spec.md section 9): valid files with their expected tensors and
graphs, and one invalid file per rule tag of spec.md, each breaking that rule alone.

    python conformance/generate.py [--out conformance]

Deterministic: the same dcm gives the same bytes, so the files can be checked in and compared.
Valid files are built by dcm's writer where it can build them; invalid ones (and valid ones with
a structure the writer never makes) are assembled here section by section with correct CRCs, so
the broken rule is what a reader trips on, not a checksum.
"""
from __future__ import annotations

import argparse
import gzip
import json
import shutil
import struct
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from benchmarks.fuzz import join, split  # noqa: E402  (a file's framing: header and sections)
from dcm.encoder import decode_tensor, encode_raw, encode_tensor  # noqa: E402
from dcm.encoder.huffman import encode_stream, table_from_lengths  # noqa: E402
from dcm.format import Model, Node, ValueInfo, read, to_bytes  # noqa: E402
from dcm.format import constants as C  # noqa: E402
from dcm.format.attrs import tensor_to_json  # noqa: E402
from dcm.format.blobs import BLOB_HEADER, CodedPayload, HuffmanTable, Stream, pack_payload  # noqa: E402
from dcm.format.model import TensorRecord  # noqa: E402


# ---------------------------------------------------------------- file assembly


def section(kind: bytes, payload: bytes, reserved: int = 0) -> bytes:
    head = kind + struct.pack("<IQ", reserved, len(payload))
    return head + payload + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head)))


def file_header(major: int = C.VERSION_MAJOR, minor: int = C.VERSION_MINOR) -> bytes:
    head = C.SIGNATURE + struct.pack("<HH", major, minor)
    return head + struct.pack("<I", zlib.crc32(head))


def graph_text(doc: Any, before_data: int = 0) -> bytes:
    """Compact sorted JSON padded with spaces so that DATA starts on a 64-byte boundary when
    ``before_data`` bytes of other sections sit between GRPH and DATA."""
    text = doc if isinstance(doc, bytes) else json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    start = C.FILE_HEADER_SIZE + C.SECTION_HEADER_SIZE + len(text) + C.SECTION_CRC_SIZE + before_data
    return text + b" " * ((-(start + C.SECTION_HEADER_SIZE)) % C.PAYLOAD_ALIGNMENT)


def graph_of(data: bytes) -> dict:
    return json.loads(split(data)[1][0][1])


def with_graph(data: bytes, edit: Callable[[dict], Any]) -> bytes:
    """The file with its graph document edited (and re-padded); every CRC recomputed."""
    header, secs = split(data)
    doc = graph_of(data)
    edit(doc)
    return join(header, [(C.SECTION_GRAPH, graph_text(doc))] + secs[1:])


def with_graph_text(data: bytes, text: bytes) -> bytes:
    header, secs = split(data)
    return join(header, [(C.SECTION_GRAPH, graph_text(text))] + secs[1:])


def with_sections(data: bytes, edit: Callable[[list], Any]) -> bytes:
    header, secs = split(data)
    edit(secs)
    return join(header, secs)


def with_header(data: bytes, major: int = C.VERSION_MAJOR, minor: int = C.VERSION_MINOR) -> bytes:
    return file_header(major, minor) + data[C.FILE_HEADER_SIZE :]


def with_data(data: bytes, edit: Callable[[bytearray], Any]) -> bytes:
    def change(secs: list) -> None:
        buf = bytearray(secs[1][1])
        edit(buf)
        secs[1] = (C.SECTION_DATA, bytes(buf))
    return with_sections(data, change)


# ---------------------------------------------------------------- models


def value_info(name: str, dtype: str, shape: list) -> ValueInfo:
    return ValueInfo(name, dtype, list(shape))


def tensors_file(records: list[TensorRecord], nodes: list[Node] | None = None,
                 inputs: list[ValueInfo] | None = None, outputs: list[ValueInfo] | None = None) -> bytes:
    """A model whose outputs are its tensors (spec 4.2 allows a constant output): the least graph
    that makes a reader decode every tensor."""
    outs = outputs if outputs is not None else [value_info(r.name, r.dtype, list(r.shape)) for r in records]
    return to_bytes(Model(inputs or [], outs, nodes or [], {r.name: r for r in records}, {"producer": "conformance"}))


def coded(name: str, encoding: str, shape: tuple, header: tuple, *parts: bytes) -> TensorRecord:
    """A coded tensor from explicit payload parts: header fields (code_bits, index_bits, block_log2,
    K, nnz, index_count), then the parts in spec 5.2's order."""
    cb, ib, log2, k, nnz, icount = header
    payload = BLOB_HEADER.pack(cb, ib, log2, 0, k, nnz, icount, 0) + b"".join(parts)
    return TensorRecord(name, "float32", tuple(shape), encoding, payload)


def listed(counts: list[int], symbols: list[int]) -> bytes:
    return HuffmanTable(counts, np.array(symbols, dtype=np.uint16)).to_bytes()


def u32(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}I", *values)


def f32(*values: float) -> bytes:
    return np.array(values, dtype="<f4").tobytes()


# Reference weights: exact codebook values, so the expected tensors are these arrays themselves.
SPARSE_W = np.array([[0, 0.5, 0, 0], [0, 0, 0, -1.0]], np.float32)  # spec 7.1
GAP_W = np.array([[0.5, 0.5, -1, 0.5], [2, 0.5, -0.5, 0.5], [1, 0.5, 2, 0.5], [-1, 0.5, -0.5, 1]], np.float32)
GAP_CODEBOOK = np.array([-1, -0.5, 0.5, 1, 2], np.float32)


def sparse_weights(shape: tuple, density: float, levels: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = (rng.integers(1, levels + 1, size=shape) * 0.25 * rng.choice([-1, 1], size=shape)).astype(np.float32)
    return np.where(rng.random(shape) < density, w, np.float32(0))


def base_file(compact: bool = True) -> bytes:
    """A small model with one tensor per coded encoding and a raw one: the file most invalid
    vectors start from."""
    return tensors_file([
        encode_tensor(SPARSE_W, code_bits=1, index_bits=2, block_log2=8, name="w", compact_tables=compact),
        encode_raw(np.arange(3, dtype=np.float32), "b"),
    ])


# ---------------------------------------------------------------- the suite


@dataclass
class Vector:
    name: str
    rules: list[str]
    what: str
    data: bytes
    valid: bool
    expected: dict[str, np.ndarray] = field(default_factory=dict)
    gzip: bool = False


def valid_vectors() -> list[Vector]:
    out: list[Vector] = []

    def add(name: str, rules: list[str], what: str, data: bytes, expected: dict[str, np.ndarray]) -> None:
        out.append(Vector(name, rules, what, data, True, expected))

    rng = np.random.default_rng(7)
    raws = {f"raw_{d}": rng.integers(-100, 100, size=(2, 3)).astype(d) for d in C.DTYPES if d != "bool"}
    raws["raw_bool"] = np.array([[True, False, True], [False, False, True]])
    raws["raw_rank0"] = np.array(3.5, np.float32)
    raws["raw_empty"] = np.zeros((2, 0, 3), np.int64)
    add("valid-raw-every-dtype", ["5.1-length", "5.1-bool"],
        "raw tensors of all nine dtypes, a rank-0 tensor and an empty one",
        tensors_file([encode_raw(a, n) for n, a in raws.items()]), raws)

    for compact, tag in ((False, "listed"), (True, "compact")):
        w3 = sparse_weights((6, 40), 0.3, 3, 1)
        recs = {
            "sparse": (encode_tensor(SPARSE_W, code_bits=1, index_bits=2, block_log2=8, name="sparse",
                                     compact_tables=compact), SPARSE_W),
            "dense": (encode_tensor(GAP_W, code_bits=3, codebook=GAP_CODEBOOK, block_log2=8, name="dense",
                                    compact_tables=compact), GAP_W),
            "float": (encode_tensor(w3, quantize=False, index_bits=3, name="float", compact_tables=compact), w3),
        }
        data = tensors_file([r for r, _ in recs.values()])
        if not compact:
            data = with_header(data, minor=0)
        add(f"valid-{tag}-tables-every-coded-encoding",
            ["6.1-order", "6.1-symbols"] if not compact else ["6.2-ops", "6.2-lengths"],
            ("a version 1.0 file: " if not compact else "")
            + f"the three coded encodings with {tag} tables (the tensors of spec 7.1 and 7.2, and a "
            "float32 one)", data, {n: w for n, (_, w) in recs.items()})

    wide = sparse_weights((8, 700), 0.2, 6, 2)  # ~1100 entries: 5 blocks of 256
    one = np.zeros((5, 9), np.float32)
    one.flat[[1, 3, 5]] = 0.75  # one codebook value; equal gaps, so one index symbol
    add("valid-blocks-and-one-symbol", ["5.2-block-bits", "6-single"],
        "multi-block streams of 2^8 symbols, a 2^22 block size, and single-symbol tables",
        tensors_file([encode_tensor(wide, code_bits=4, codebook=np.unique(wide[wide != 0]), block_log2=8, name="wide"),
                      encode_tensor(wide, code_bits=4, codebook=np.unique(wide[wide != 0]), block_log2=22, name="big_block"),
                      encode_tensor(one, code_bits=1, index_bits=8, name="one")]),
        {"wide": wide, "big_block": wide, "one": one})

    empty = np.zeros((4, 5), np.float32)
    small = {"scalar": np.array(0.5, np.float32), "scalar_zero": np.array(0, np.float32),
             "no_elements": np.zeros((0, 3), np.float32)}
    add("valid-nnz-zero-rank-0-and-empty", ["6-empty"],
        "sparse tensors with nothing kept (empty streams with empty tables, in both table forms), "
        "rank-0 coded tensors and a coded tensor without elements",
        tensors_file([encode_tensor(empty, code_bits=2, name="nothing"),
                      encode_tensor(empty, quantize=False, name="nothing_float"),
                      encode_tensor(empty, code_bits=2, name="nothing_listed", compact_tables=False)]
                     + [encode_tensor(a, code_bits=2, name=n) for n, a in small.items()]),
        {"nothing": empty, "nothing_float": empty, "nothing_listed": empty, **small})

    base = base_file()
    def add_ancillary(secs: list) -> None:
        secs.insert(1, (b"abcd", b"x" * 44))  # 16 + 44 + 4 = 64 bytes: DATA stays aligned
        secs.insert(3, (b"zzzz", b"trailing ancillary"))
    w_b = {"w": SPARSE_W, "b": np.arange(3, dtype=np.float32)}
    add("valid-ancillary-sections", ["3-ancillary"], "ancillary sections before and after DATA",
        with_sections(base, add_ancillary), w_b)

    def future(doc: dict) -> None:
        doc["future_key"] = {"anything": [1, 2]}
        doc["tensors"][0]["future_key"] = 1
        doc["outputs"][0]["future_key"] = "x"
    add("valid-minor-version-99", ["2-minor", "4-unknown-keys"],
        "minor version 99 with unknown JSON keys at three levels", with_header(with_graph(base, future), minor=99), w_b)

    text = json.dumps(graph_of(base), sort_keys=True, separators=(",", ":")).encode()
    add("valid-json-whitespace", ["4-json"], "the graph JSON surrounded by tab, CR, LF and space",
        with_graph_text(base, b"\t\r\n " + text + b"\n\t"), w_b)

    # spec 2: a metadata string that would put DICM at byte 128 makes the writer insert a space.
    def with_metadata(text: str) -> bytes:
        b = encode_raw(np.arange(3, dtype=np.float32), "b")
        return to_bytes(Model([], [value_info("b", "float32", [3])], [], {"b": b}, {"a": text}))
    start = with_metadata("#").index(b"#")
    dicm = with_metadata("#" * (128 - start) + "DICM" + "#" * 20)
    assert dicm[128:132] != b"DICM" and dicm[129:133] == b"DICM" and b'{ "' in dicm
    add("valid-dicm-avoidance-space", ["2-dicom"],
        "a graph whose bytes 128..131 would read DICM: the writer put one space after the opening brace",
        dicm, {"b": np.arange(3, dtype=np.float32)})

    x = value_info("x", "float32", ["batch", 3])
    shape_rec = encode_raw(np.array([2, 3], np.int64), "shape")
    nodes = [Node("ConstantOfShape", ["shape"], ["filled"], {"value": np.array([-np.inf], np.float32)}, ""),
             Node("Add", ["x", "x"], ["twice"], {}, "")]
    add("valid-graph-features", ["4.2-outputs", "4.3-tensor", "4-schema"],
        "a tensor-valued attribute (-inf fill), unnamed nodes, and model outputs that are a model input, "
        "a tensor and node outputs",
        tensors_file([shape_rec], nodes, [x], [x, value_info("shape", "int64", [2]),
                                               value_info("filled", "float32", [2, 3]), value_info("twice", "float32", ["batch", 3])]),
        {"shape": np.array([2, 3], np.int64)})
    return out


def invalid_vectors() -> list[Vector]:
    out: list[Vector] = []
    base = base_file()

    def bad(rule: str, name: str, what: str, data: bytes, gz: bool = False) -> None:
        out.append(Vector(f"{rule}--{name}", [rule], what, data, False, gzip=gz))

    def graph(edit: Callable[[dict], Any]) -> bytes:
        return with_graph(base, edit)

    def one(rec: TensorRecord) -> bytes:
        return tensors_file([rec])

    # 2: header
    bad("2-signature", "damaged", "the signature's CR LF became LF (a text-mode transfer)",
        b"\x89DCM\n\x1a\n\x00" + base[8:])
    bad("2-signature", "short", "10 bytes: shorter than the header", base[:10])
    bad("2-header-crc", "zeroed", "header CRC set to 0", base[:12] + b"\0\0\0\0" + base[16:])
    bad("2-major", "version-2", "major version 2 (header CRC correct)", with_header(base, major=2))
    def dicom(doc: dict) -> None:
        doc["metadata"]["a"] = "#" * 300
    padded = graph(dicom)
    spot = padded.index(b"#" * 8)
    assert spot < 128
    bad("2-dicom", "at-128", "DICM at bytes 128..131, inside a metadata string (CRCs correct)",
        join(*split(padded[:128] + b"DICM" + padded[132:])))

    # 3: sections
    bad("3-reserved", "graph", "GRPH's reserved field is 1",
        file_header() + section(C.SECTION_GRAPH, split(base)[1][0][1], reserved=1)
        + b"".join(section(k, p) for k, p in split(base)[1][1:]))
    end = base[:-20]
    bad("3-length", "dend", "DEND claims 2^40 bytes", end + C.SECTION_END + struct.pack("<IQ", 0, 1 << 40) + b"\0" * 4)
    bad("3-type", "digits", "a section typed a1b2",
        with_sections(base, lambda s: s.insert(2, (b"a1b2", b""))))
    bad("3-critical", "unknown", "an unknown critical section ZZZZ before DEND",
        with_sections(base, lambda s: s.insert(2, (b"ZZZZ", b"x"))))
    flipped = bytearray(base)
    flipped[len(base) - 40] ^= 0x01  # inside DATA, CRC left as it was
    bad("3-crc", "data", "one DATA byte changed, CRC not updated", bytes(flipped))
    bad("3-order", "data-first", "DATA before GRPH", with_sections(base, lambda s: s.insert(0, s.pop(1))))
    bad("3-order", "two-data", "two DATA sections", with_sections(base, lambda s: s.insert(2, (C.SECTION_DATA, b""))))
    bad("3-dend", "missing", "no DEND: the file is truncated", base[:-20])
    bad("3-dend", "not-empty", "DEND with a 1-byte payload", with_sections(base, lambda s: s.__setitem__(2, (C.SECTION_END, b"x"))))
    bad("3-dend", "trailing", "one byte after DEND", base + b"\0")

    # 3.2: DATA layout
    bad("3.2-align", "shifted", "a 1-byte ancillary section before DATA moves it off a 64-byte boundary",
        with_sections(base, lambda s: s.insert(1, (b"abcd", b"x"))))
    bad("3.2-offset", "gap", "the second payload 64 bytes later than the layout puts it",
        graph(lambda d: d["tensors"][1].update(offset=d["tensors"][1]["offset"] + 64)))
    w_len = graph_of(base)["tensors"][0]["length"]
    bad("3.2-padding", "non-zero", "a padding byte after the first payload is 7",
        with_data(base, lambda b: b.__setitem__(w_len, 7)))
    bad("3.2-length", "extra", "64 zero bytes after the last payload",
        with_data(base, lambda b: b.extend(b"\0" * 64)))
    bad("3.2-length", "past-end", "the last payload's length runs past DATA",
        graph(lambda d: d["tensors"][1].update(length=d["tensors"][1]["length"] + 64)))

    # 4: the graph document
    text = json.dumps(graph_of(base), sort_keys=True, separators=(",", ":")).encode()
    bad("4-json", "not-json", "the graph is '{' and spaces", with_graph_text(base, b"{"))
    bad("4-json", "nan", "a NaN literal in an attribute", with_graph_text(base, text.replace(b'"nodes":[]', b'"nodes":[{"op":"Relu","inputs":["b"],"outputs":["r"],"attrs":{"alpha":NaN}}]')))
    bad("4-json", "duplicate-key", "the key opset twice", with_graph_text(base, text.replace(b'"opset":', b'"opset":17,"opset":')))
    bad("4-json", "utf8", "a byte 0xff inside a string", with_graph_text(base, text.replace(b'"conformance"', b'"conf\xffrmance"')))
    bad("4-json", "array", "the document is a JSON array", with_graph_text(base, b"[" + text + b"]"))
    bad("4-finite", "1e400", "an attribute 1e400, which overflows binary64",
        with_graph_text(base, text.replace(b'"nodes":[]', b'"nodes":[{"op":"Relu","inputs":["b"],"outputs":["r"],"attrs":{"alpha":1e400}}]')))
    bad("4-int", "opset-float", "opset written 17.0", graph(lambda d: d.update(opset=17.0)))
    bad("4-int", "dim-true", "a dim written true", graph(lambda d: d["outputs"][0].update(shape=[True, 4])))
    bad("4-int", "offset-float", "a tensor offset written 0.0", graph(lambda d: d["tensors"][0].update(offset=0.0)))
    bad("4-schema", "no-opset", "the opset key is missing", graph(lambda d: d.pop("opset")))
    bad("4-schema", "no-nodes", "the nodes key is missing", graph(lambda d: d.pop("nodes")))
    bad("4-schema", "tensor-no-encoding", "a tensor entry lacks encoding", graph(lambda d: d["tensors"][0].pop("encoding")))
    bad("4-schema", "node-no-outputs", "a node lacks outputs",
        graph(lambda d: d["nodes"].append({"op": "Relu", "inputs": ["b"]})))
    bad("4-schema", "opset-0", "opset 0", graph(lambda d: d.update(opset=0)))
    bad("4-schema", "dtype", "an output of dtype complex64", graph(lambda d: d["outputs"][0].update(dtype="complex64")))
    bad("4-schema", "dim-negative", "a dim of -1", graph(lambda d: d["outputs"][0].update(shape=[-1, 4])))
    bad("4-schema", "empty-output-name", "a node output named ''",
        graph(lambda d: d["nodes"].append({"op": "Relu", "inputs": ["b"], "outputs": [""]})))
    bad("4-schema", "attr-bool", "an attribute value true",
        graph(lambda d: d["nodes"].append({"op": "Relu", "inputs": ["b"], "outputs": ["r"], "attrs": {"a": True}})))
    bad("4-schema", "metadata", "a metadata value that is a number", graph(lambda d: d["metadata"].update(n=1)))
    bad("4.1-unique", "tensor-names", "two tensors named w", graph(lambda d: d["tensors"][1].update(name="w")))
    relu = {"op": "Relu", "name": "", "inputs": ["nowhere"], "outputs": ["r"], "attrs": {}}
    bad("4.2-defined", "dangling", "a node reads a name nothing provides", graph(lambda d: d["nodes"].append(relu)))
    bad("4.2-single", "tensor", "a node writes the name of a tensor",
        graph(lambda d: d["nodes"].append(dict(relu, inputs=["b"], outputs=["w"]))))
    bad("4.2-outputs", "unproduced", "a model output nothing produces",
        graph(lambda d: d["outputs"].append({"name": "ghost", "dtype": "float32", "shape": [1]})))
    x = {"name": "x", "dtype": "float32", "shape": [1]}
    bad("4.2-names", "inputs", "two model inputs named x", graph(lambda d: d["inputs"].extend([x, x])))
    bad("4.2-names", "input-is-tensor", "a model input named like the tensor b",
        graph(lambda d: d["inputs"].append(dict(x, name="b"))))
    bad("4.2-names", "outputs", "the model output w listed twice", graph(lambda d: d["outputs"].append(d["outputs"][0])))
    fill = tensor_to_json(np.array([1.0], np.float32))
    bad("4.3-tensor", "extra-key", "a tensor attribute with a fourth key",
        graph(lambda d: d["nodes"].append({"op": "ConstantOfShape", "inputs": ["b"], "outputs": ["c"],
                                           "attrs": {"value": dict(fill, extra=1)}})))

    # 5: encodings
    bad("5-encoding", "unknown", "a tensor encoded 'zip'", graph(lambda d: d["tensors"][0].update(encoding="zip")))
    bad("5-dtype", "float16", "a coded tensor of dtype float16", graph(lambda d: d["tensors"][0].update(dtype="float16")))
    bad("5.1-length", "short", "a raw float32 tensor of shape [4] with 12 bytes",
        graph(lambda d: d["tensors"][1].update(shape=[4])))
    bad("5.1-bool", "byte-2", "a raw bool tensor holding the byte 2",
        one(TensorRecord("m", "bool", (3,), C.ENC_RAW, b"\x01\x02\x00")))

    # 5.2-5.4: payload headers and streams. Parts for the spec 7.1 tensor, listed tables:
    cbk = f32(-1.0, 0.5)
    code_t, index_t = listed([2], [0, 1]), listed([1, 2], [3, 1, 2])
    blocks, streams = u32(2) + u32(5), b"\x80\x98"
    sp = C.ENC_SPARSE

    def sparse(header: tuple = (1, 2, 8, 2, 2, 3), shape: tuple = (2, 4), *parts: bytes) -> bytes:
        return one(coded("w", sp, shape, header, *(parts or (cbk, code_t, index_t, blocks, streams))))

    assert read(sparse()).tensors  # the unbroken form is valid
    reserved = bytearray(coded("w", sp, (2, 4), (1, 2, 8, 2, 2, 3), cbk, code_t, index_t, blocks, streams).payload)
    reserved[3] = 1
    bad("5.2-header", "reserved", "the payload header's reserved byte is 1",
        one(TensorRecord("w", "float32", (2, 4), sp, bytes(reserved))))
    bad("5.2-header", "block-log2-7", "block_log2 7", sparse((1, 2, 7, 2, 2, 3)))
    bad("5.2-header", "code-bits-0", "code_bits 0 in a codebook encoding", sparse((0, 2, 8, 2, 2, 3)))
    bad("5.2-header", "index-bits-17", "index_bits 17", sparse((1, 17, 8, 2, 2, 3)))
    bad("5.2-header", "k-above", "K = 3 with code_bits 1", sparse((1, 2, 8, 3, 2, 3)))
    bad("5.2-header", "nnz-above-numel", "nnz 9 in an 8-element tensor", sparse((1, 2, 8, 2, 9, 3)))
    bad("5.2-header", "index-count", "index_count 5: more fillers than the zeros allow", sparse((1, 2, 8, 2, 2, 5)))
    bad("5.2-codebook", "not-increasing", "codebook [0.5, -1.0]",
        sparse((1, 2, 8, 2, 2, 3), (2, 4), f32(0.5, -1.0), code_t, index_t, blocks, streams))
    bad("5.2-codebook", "nan", "a NaN centroid", sparse((1, 2, 8, 2, 2, 3), (2, 4), f32(-1.0, np.nan), code_t, index_t, blocks, streams))
    bad("5.2-size", "trailing", "one byte after the index stream",
        sparse((1, 2, 8, 2, 2, 3), (2, 4), cbk, code_t, index_t, blocks, streams + b"\0"))
    bad("5.2-size", "truncated", "the index stream is missing",
        sparse((1, 2, 8, 2, 2, 3), (2, 4), cbk, code_t, index_t, blocks, streams[:1]))
    # index rules: index symbols written with the same table (3 -> 0, 1 -> 10, 2 -> 11)
    bad("5.2-index", "ends-with-filler", "index symbols [1, 3]: the last entry is a filler",
        sparse((1, 2, 8, 2, 1, 2), (2, 4), cbk, listed([1], [1]), listed([1, 2], [3, 1, 2]), u32(1, 3), b"\x00\x80"))
    bad("5.2-index", "real-count", "index symbols [1, 2, 2] hold 3 real entries, nnz is 2",
        sparse((1, 2, 8, 2, 2, 3), (2, 4), cbk, code_t, index_t, u32(2, 6), b"\x80\xbc"))
    bad("5.2-index", "past-numel", "index symbols [1, 3, 2] in a 7-element tensor reach position 7",
        sparse((1, 2, 8, 2, 2, 3), (7,), cbk, code_t, index_t, blocks, streams))
    bad("5.2-padding", "code-block", "the code block's padding bits are 0000001",
        sparse((1, 2, 8, 2, 2, 3), (2, 4), cbk, code_t, index_t, blocks, b"\x81\x98"))
    bad("5.2-block-bits", "too-long", "a 2-symbol block of 1-bit codes claims 9 bits",
        sparse((1, 2, 8, 2, 2, 3), (2, 4), cbk, code_t, index_t, u32(9, 5), b"\x80\x00\x98"))
    dense_parts = (f32(-1.0, 0.5), listed([2], [0, 1]), u32(8), b"\xa5")
    assert read(one(coded("d", C.ENC_DENSE, (2, 4), (1, 0, 8, 2, 8, 0), *dense_parts))).tensors
    bad("5.3-header", "index-bits", "a dense tensor with index_bits 1",
        one(coded("d", C.ENC_DENSE, (2, 4), (1, 1, 8, 2, 8, 0), *dense_parts)))
    bad("5.3-header", "nnz", "a dense tensor storing 8 of 9 elements",
        one(coded("d", C.ENC_DENSE, (9,), (1, 0, 8, 2, 8, 0), *dense_parts)))
    float_parts = (f32(0.5, -1.0), listed([1, 2], [3, 1, 2]), u32(5), b"\x98")
    assert read(one(coded("f", C.ENC_SPARSE_FLOAT, (2, 4), (0, 2, 8, 0, 2, 3), *float_parts))).tensors
    bad("5.4-header", "code-bits", "a sparse-float32 tensor with code_bits 1 and K 2",
        one(coded("f", C.ENC_SPARSE_FLOAT, (2, 4), (1, 2, 8, 2, 2, 3), *float_parts)))
    bad("5.4-values", "inf", "a stored value +inf",
        one(coded("f", C.ENC_SPARSE_FLOAT, (2, 4), (0, 2, 8, 0, 2, 3), f32(0.5, np.inf), *float_parts[1:])))

    # 6: tables (listed form unless the tag is 6.2)
    def codes_with(table: bytes, bits: int, stream: bytes, k: int = 2, cbits: int = 1, cb: bytes = cbk) -> bytes:
        return one(coded("d", C.ENC_DENSE, (2, 4), (cbits, 0, 8, k, 8, 0), cb, table, u32(bits), stream))
    bad("6-length", "25", "a table with L = 25", codes_with(listed([0] * 24 + [2], [0, 1]), 200, b"\0" * 25))
    bad("6-length", "last-count-0", "count[L] = 0", codes_with(listed([2, 0], [0, 1]), 8, b"\xa5"))
    bad("6-empty", "table-for-nothing", "nnz 0 but a code table with one symbol",
        one(coded("w", sp, (2, 4), (1, 2, 8, 2, 0, 0), cbk, listed([1], [0]), listed([], []), b"", b"")))
    bad("6-empty", "nothing-for-stream", "8 codes but an empty code table", codes_with(listed([], []), 8, b"\xa5"))
    bad("6-single", "length-2", "one symbol with a 2-bit code", codes_with(listed([0, 1], [0]), 16, b"\0\0"))
    bad("6-complete", "kraft", "lengths 1 and 2 for two symbols (incomplete)", codes_with(listed([1, 1], [0, 1]), 8, b"\x00"))
    k3 = f32(-1.0, 0.5, 2.0)
    bad("6-decode", "extra-symbols", "8 codes' block holds 9 codes (lengths 1, 2, 2)",
        codes_with(listed([1, 2], [0, 1, 2]), 9, b"\x00\x00", 3, 2, k3))
    bad("6-decode", "cut-code", "the block ends inside a code",
        codes_with(listed([1, 2], [0, 1, 2]), 8, b"\x01", 3, 2, k3))
    bad("6.1-symbols", "outside", "symbol 2 in a 2-symbol alphabet", codes_with(listed([2], [0, 2]), 8, b"\xa5"))
    bad("6.1-symbols", "repeated", "symbol 0 twice", codes_with(listed([2], [0, 0]), 8, b"\xa5"))
    bad("6.1-symbols", "too-many", "3 symbols for an alphabet of 2", codes_with(listed([1, 2], [0, 1, 1]), 8, b"\x00"))
    bad("6.1-order", "decreasing", "symbols of length 1 listed as 1, 0", codes_with(listed([2], [1, 0]), 8, b"\xa5"))
    dc = C.ENC_DENSE_COMPACT

    def compact_codes(table: bytes, bits: int = 8, stream: bytes = b"\xa5", k: int = 2, cbits: int = 1, cb: bytes = cbk) -> bytes:
        return one(coded("d", dc, (2, 4), (cbits, 0, 8, k, 8, 0), cb, table, u32(bits), stream))
    assert read(compact_codes(b"\x01\x80")).tensors  # lengths [1, 1]: "10" then "0" -> 0b10000000
    bad("6.2-ops", "v-31", "a length operation 111 11111 (v = 31)", compact_codes(b"\x01\xff\x00"))
    bad("6.2-ops", "truncated", "the table stops after one of two operations",
        one(coded("d", dc, (2, 4), (1, 0, 8, 2, 8, 0), cbk, b"\x01\xe0")))
    bad("6.2-lengths", "negative", "the first operation is 110 (p - 1 from 0)", compact_codes(b"\x01\xd0"))
    bad("6.2-lengths", "above-l", "lengths [2, 2] in a table with L = 1", compact_codes(b"\x01\xe2\x00"))
    bad("6.2-lengths", "never-l", "lengths [1, 1] in a table with L = 2", compact_codes(b"\x02\x80"))
    bad("6.2-padding", "bit", "a 1 in the table's padding bits", compact_codes(b"\x01\x81"))

    # 8: limits
    huge = graph_text(text + b" " * (C.MAX_GRAPH_BYTES + 1 - len(text)))
    bad("8-graph", "64mib", "a GRPH payload of 64 MiB + 1 byte (JSON then spaces)",
        join(split(base)[0], [(C.SECTION_GRAPH, huge)] + split(base)[1][1:]), gz=True)
    bad("8-rank", "nine", "an output shape of rank 9", graph(lambda d: d["outputs"][0].update(shape=[1] * 9)))
    bad("8-elements", "2-pow-31", "a raw tensor of 2^31 elements",
        graph(lambda d: d["tensors"][1].update(shape=[2**16, 2**15])))
    bad("8-count", "nodes", "1,000,001 nodes", graph(lambda d: d.update(nodes=[{}] * (C.MAX_NODES + 1))), gz=True)
    bad("8-name", "4097", "an output name of 4097 bytes", graph(lambda d: d["outputs"].append(
        {"name": "n" * 4097, "dtype": "float32", "shape": [1]})))
    bad("8-decoded-size", "rows", "a sparse tensor of shape [2^27 - 1, 12]: its CSR row pointers alone take 1 GiB",
        graph(lambda d: d["tensors"][0].update(shape=[2**27 - 1, 12])))
    return out


# ---------------------------------------------------------------- output


def build() -> dict[str, bytes]:
    """Every file of the suite, by relative path (the manifest included)."""
    files: dict[str, bytes] = {}
    manifest = []
    for v in valid_vectors() + invalid_vectors():
        path = f"{'valid' if v.valid else 'invalid'}/{v.name}.dcm" + (".gz" if v.gzip else "")
        files[path] = gzip.compress(v.data, mtime=0) if v.gzip else v.data
        entry: dict[str, Any] = {"file": path, "valid": v.valid, "rules": v.rules, "what": v.what}
        if v.gzip:
            entry["gzip"] = True
        if v.valid:
            model = read(v.data)
            entry["graph"] = f"expected/{v.name}/graph.json"
            files[entry["graph"]] = (json.dumps(graph_of(v.data), indent=1, sort_keys=True) + "\n").encode()
            entry["tensors"] = {}
            for name, rec in model.tensors.items():
                got = decode_tensor(rec)
                want = v.expected.get(name, got)
                assert got.dtype == want.dtype and np.array_equal(got, want), (v.name, name)
                entry["tensors"][name] = f"expected/{v.name}/{name}.npy"
                files[entry["tensors"][name]] = _npy(want)
        manifest.append(entry)
    files["manifest.json"] = (json.dumps({"spec": "spec.md", "format_version": f"{C.VERSION_MAJOR}.{C.VERSION_MINOR}",
                                          "files": manifest}, indent=1) + "\n").encode()
    return files


def _npy(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT)
    args = ap.parse_args()
    files = build()
    for sub in ("valid", "invalid", "expected"):
        shutil.rmtree(args.out / sub, ignore_errors=True)
    for rel, data in sorted(files.items()):
        path = args.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    print(f"wrote {len(files)} files to {args.out}")


if __name__ == "__main__":
    main()
