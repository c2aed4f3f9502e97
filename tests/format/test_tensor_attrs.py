"""Tensor-valued node attributes (spec 4.3): exact round trip, 1.0 files still read, and every
malformed attribute object is a rule-4.3 FormatError raised before its data is decoded."""
from __future__ import annotations

import base64
import struct
import zlib

import numpy as np
import pytest

from benchmarks import fuzz
from dcm.errors import FormatError
from dcm.format import Model, Node, ValueInfo, read, to_bytes
from dcm.format import constants as C
from dcm.runtime import InferenceSession


def _model(value: np.ndarray) -> Model:
    node = Node("ConstantOfShape", ["shape"], ["y"], {"value": value}, "fill")
    return Model([ValueInfo("shape", "int64", [2])], [ValueInfo("y", value.dtype.name, ["a", "b"])], [node], {})


@pytest.mark.parametrize("value", [np.array([-np.inf], np.float32), np.array([np.nan], np.float64),
                                   np.array([True]), np.array([-7], np.int64), np.array([3], np.uint8),
                                   np.zeros((0,), np.float16), np.arange(6, dtype=np.int32).reshape(2, 3)])
def test_round_trip_is_exact(value):
    data = to_bytes(_model(value))
    assert struct.unpack_from("<HH", data, 8) == (C.VERSION_MAJOR, 1)
    got = read(data).nodes[0].attrs["value"]
    assert got.dtype == value.dtype and got.shape == value.shape
    assert got.tobytes() == value.tobytes()
    assert to_bytes(read(data)) == data  # deterministic


def test_constant_of_shape_runs_from_a_file():
    sess = InferenceSession(to_bytes(_model(np.array([-np.inf], np.float32))))
    y = sess.run(None, {"shape": np.array([2, 3], np.int64)})[0]
    assert y.shape == (2, 3) and y.dtype == np.float32 and np.all(y == -np.inf)


def test_version_1_0_files_still_read():
    data = bytearray(to_bytes(Model([ValueInfo("x", "float32", [1])], [ValueInfo("y", "float32", [1])],
                                    [Node("Relu", ["x"], ["y"], {}, "r")], {})))
    struct.pack_into("<HHI", data, 8, 1, 0, 0)
    struct.pack_into("<I", data, 12, zlib.crc32(bytes(data[:12])))
    assert read(bytes(data)).nodes[0].op == "Relu"


def _with_attr(obj) -> bytes:
    doc, blob = fuzz._graph_and_data(to_bytes(_model(np.array([1.0], np.float32))))
    doc["nodes"][0]["attrs"]["value"] = obj
    return fuzz.rebuild(doc, blob)


GOOD = {"dtype": "float32", "shape": [1], "data": base64.b64encode(b"\0\0\x80?").decode()}


@pytest.mark.parametrize("obj,message", [
    ({**GOOD, "extra": 1}, "exactly the keys"),
    ({"dtype": "float32", "shape": [1]}, "exactly the keys"),
    ({**GOOD, "dtype": "complex64"}, "unknown dtype"),
    ({**GOOD, "dtype": ["float32"]}, "unknown dtype"),
    ({**GOOD, "shape": [1 << 40]}, "shape must be"),
    ({**GOOD, "shape": [1 << 16, 1 << 16]}, "elements, limit"),
    ({**GOOD, "shape": [1] * 9}, "shape must be"),
    ({**GOOD, "shape": [-1]}, "shape must be"),
    ({**GOOD, "shape": [2]}, "base64 of 8 bytes"),
    ({**GOOD, "data": "AAAA"}, "base64 of 4 bytes"),
    ({**GOOD, "data": "AA!AAA=="}, "not valid base64"),
    ({**GOOD, "data": 5}, "base64 of 4 bytes"),
])
def test_malformed_tensor_attribute_is_refused(obj, message):
    with pytest.raises(FormatError, match=message) as err:
        read(_with_attr(obj))
    assert err.value.rule == "4.3"


def test_writer_refuses_what_the_reader_would():
    with pytest.raises(FormatError):
        to_bytes(_model(np.zeros(C.MAX_ATTR_ELEMENTS + 1, np.float32)))
    with pytest.raises(FormatError):
        to_bytes(_model(np.array(["text"])))
