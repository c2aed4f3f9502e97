import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from dcm.encoder import decode_tensor, encode_tensor
from dcm.errors import DcmError, FormatError
from dcm.format import constants as C
from dcm.format import read, to_bytes, validate, write
from tests.conftest import small_model

SPEC = Path(__file__).resolve().parents[2] / "spec.md"


def test_round_trip_every_encoding(model, model_bytes):
    back = read(model_bytes)
    assert list(back.tensors) == list(model.tensors)
    assert {t.encoding for t in back.tensors.values()} == {C.ENC_RAW, *C.COMPACT_TABLE_ENCODINGS}
    for name, rec in model.tensors.items():
        np.testing.assert_array_equal(decode_tensor(back.tensors[name]), decode_tensor(rec))
    assert [n.op for n in back.nodes] == [n.op for n in model.nodes]
    assert back.inputs[0].shape == ["batch", 12]
    assert back.metadata == {"producer": "tests"}
    assert validate(model_bytes) == []


def test_deterministic(model_bytes):
    assert to_bytes(small_model()) == model_bytes


def test_payloads_aligned_and_signature(model_bytes):
    assert model_bytes[:8] == b"\x89DCM\r\n\x1a\n"
    assert model_bytes[128:132] != b"DICM"
    back = read(model_bytes)
    base = model_bytes.index(b"DATA") + 16
    assert base % 64 == 0
    for rec in back.tensors.values():
        off = model_bytes.find(bytes(rec.payload), base)
        assert off % 64 == 0


def _spec_hex(title: str) -> bytes:
    text = SPEC.read_text()
    block = text.split(title, 1)[1].split("```", 2)[1]
    return bytes.fromhex(" ".join(re.findall(r"^[0-9a-f]{2}(?: [0-9a-f]{2})*", "\n".join(
        line.split("|")[0].strip() for line in block.splitlines()), re.M)))


def test_spec_worked_example_byte_for_byte():
    w = np.array([[0, 0.5, 0, 0], [0, 0, 0, -1.0]], np.float32)
    rec = encode_tensor(w, code_bits=1, index_bits=2, block_log2=8, compact_tables=False)
    assert rec.payload == _spec_hex("### Worked example bytes")
    np.testing.assert_array_equal(decode_tensor(rec), w)


def test_spec_gap_example_byte_for_byte():
    w = np.array([[0.5, 0.5, -1, 0.5], [2, 0.5, -0.5, 0.5], [1, 0.5, 2, 0.5], [-1, 0.5, -0.5, 1]], np.float32)
    rec = encode_tensor(w, code_bits=3, codebook=np.array([-1, -0.5, 0.5, 1, 2], np.float32), block_log2=8)
    assert rec.encoding == C.ENC_DENSE_COMPACT
    assert rec.payload == _spec_hex("### Gap example bytes")
    np.testing.assert_array_equal(decode_tensor(rec), w)


def test_truncation_at_every_offset(model_bytes):
    for n in range(len(model_bytes)):
        with pytest.raises(DcmError):
            read(model_bytes[:n])


def _section_offsets(data: bytes) -> dict[bytes, tuple[int, int]]:
    out, pos = {}, 16
    while pos < len(data):
        kind = data[pos:pos + 4]
        (length,) = struct.unpack_from("<Q", data, pos + 8)
        out[kind] = (pos, length)
        pos += 16 + length + 4
    return out


def _patch(data: bytes, kind: bytes, new_payload: bytes) -> bytes:
    """Replace one section's payload and fix its CRC, so only the structural rule is broken."""
    pos, length = _section_offsets(data)[kind]
    head = kind + struct.pack("<IQ", 0, len(new_payload))
    sec = head + new_payload + struct.pack("<I", zlib.crc32(new_payload, zlib.crc32(head)))
    return data[:pos] + sec + data[pos + 16 + length + 4:]


def _with_graph(data: bytes, edit) -> bytes:
    import json

    pos, length = _section_offsets(data)[b"GRPH"]
    doc = json.loads(data[pos + 16: pos + 16 + length])
    edit(doc)
    text = json.dumps(doc).encode()
    d_pos, d_len = _section_offsets(data)[b"DATA"]
    text += b" " * ((-(16 + 16 + len(text) + 4 + 16)) % 64)
    return _patch(data, b"GRPH", text)


def _fix_header_crc(b: bytearray) -> bytes:
    b[12:16] = struct.pack("<I", zlib.crc32(bytes(b[:12])))
    return bytes(b)


BAD_FILES = {
    "2 signature": lambda d: b"\x89DCM\n\x1a\n\0" + d[8:],
    "2 major version": lambda d: _fix_header_crc(bytearray(d[:8] + struct.pack("<H", 2) + d[10:])),
    "2 header crc": lambda d: d[:12] + b"\0\0\0\0" + d[16:],
    "2 dicom": lambda d: d[:128] + b"DICM" + d[132:],
    "3 section crc": lambda d: d[:40] + bytes([d[40] ^ 0xFF]) + d[41:],
    "3 unknown critical section": lambda d: d[:-20] + _sec(b"ZZZZ", b"x") + d[-20:],
    "3 trailing bytes": lambda d: d + b"\0",
    "3 missing DEND": lambda d: d[:-20],
    "3 reserved field": lambda d: d[:20] + b"\1" + d[21:],
    "3.2 non-zero padding": lambda d: _patch(d, b"DATA", _nonzero_pad(d)),
    "4 not json": lambda d: _patch(d, b"GRPH", b"{" + b" " * 75),
    "4.1 duplicate tensor name": lambda d: _with_graph(d, lambda g: g["tensors"][1].update(name="w1")),
    "5 unknown encoding": lambda d: _with_graph(d, lambda g: g["tensors"][0].update(encoding="zip")),
    "4.2 dangling input": lambda d: _with_graph(d, lambda g: g["nodes"][1].update(inputs=["nowhere"])),
    "8 rank limit": lambda d: _with_graph(d, lambda g: g["inputs"][0].update(shape=[1] * 9)),
    "3.2 offset gap": lambda d: _with_graph(d, lambda g: g["tensors"][1].update(offset=g["tensors"][1]["offset"] + 64)),
    "5.1 raw length": lambda d: _with_graph(d, lambda g: g["tensors"][1].update(shape=[17])),
    "5.2 nnz above numel": lambda d: _with_graph(d, lambda g: g["tensors"][0].update(shape=[1, 1])),
}


def _sec(kind: bytes, payload: bytes) -> bytes:
    head = kind + struct.pack("<IQ", 0, len(payload))
    return head + payload + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head)))


def _nonzero_pad(d: bytes) -> bytes:
    pos, length = _section_offsets(d)[b"DATA"]
    payload = bytearray(d[pos + 16: pos + 16 + length])
    payload[-1] = 7
    return bytes(payload)


@pytest.mark.parametrize("rule", sorted(BAD_FILES))
def test_crafted_bad_file_is_rejected(model_bytes, rule):
    bad = BAD_FILES[rule](model_bytes)
    with pytest.raises(FormatError) as info:
        read(bad)
    assert validate(bad), rule
    assert f"[spec {rule.split()[0]}]" in str(info.value)


def test_unknown_ancillary_section_is_skipped(model_bytes):
    extra = model_bytes[:-20] + _sec(b"zzzz", b"hello") + model_bytes[-20:]
    assert list(read(extra).tensors) == list(read(model_bytes).tensors)


def test_validate_reports_every_violation(model_bytes):
    def edit(g):
        g["tensors"][0]["encoding"] = "zip"
        g["nodes"][1]["inputs"] = ["nowhere"]
    problems = validate(_with_graph(model_bytes, edit))
    assert len(problems) >= 2


def test_huge_claims_rejected_before_allocation(model_bytes):
    bad = _with_graph(model_bytes, lambda g: g["tensors"][0].update(shape=[10**6, 10**6]))
    with pytest.raises(FormatError, match="limit"):
        read(bad)


def test_dicom_and_png_are_named():
    dicom = b"\0" * 128 + b"DICM" + b"\0" * 64
    with pytest.raises(FormatError, match="DICOM"):
        read(dicom)
    with pytest.raises(FormatError, match="PNG"):
        read(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)


def test_write_is_atomic_and_leaves_no_temp(tmp_path, model):
    target = tmp_path / "m.dcm"
    write(target, model)
    write(target, model)
    assert [p.name for p in tmp_path.iterdir()] == ["m.dcm"]
    assert read(target).tensors.keys() == model.tensors.keys()


def test_write_failure_keeps_old_file(tmp_path, model, monkeypatch):
    target = tmp_path / "m.dcm"
    write(target, model)
    before = target.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write(target, model)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.dcm"]


def test_missing_and_directory_paths(tmp_path):
    with pytest.raises(FormatError, match="no such file"):
        read(tmp_path / "nope.dcm")
    with pytest.raises(FormatError, match="directory"):
        read(tmp_path)
