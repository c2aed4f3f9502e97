"""dcm's reader and validator against the conformance suite (spec.md section 9).

Valid files must read, validate clean and decode to exactly the stored arrays; invalid files must
be rejected with an error citing the section of the rule they break. Every rule tag in spec.md
must have a file, and every MUST must carry a tag, so a new rule cannot go without a vector.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from dcm.encoder import decode_tensor
from dcm.errors import FormatError
from dcm.format import constants as C
from dcm.format import read, validate
from dcm.format.reader import read_sections

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "conformance"
SPEC = (ROOT / "spec.md").read_text()
MANIFEST = json.loads((SUITE / "manifest.json").read_text())["files"]
TAG = re.compile(r"\[`(\d+(?:\.\d+)?-[a-z0-9-]+)`\]")
# Rules on what a reader accepts: only valid files can exercise them.
ACCEPTANCE_RULES = {"2-minor", "3-ancillary", "4-unknown-keys"}


def _data(entry: dict) -> bytes:
    raw = (SUITE / entry["file"]).read_bytes()
    return gzip.decompress(raw) if entry.get("gzip") else raw


def _graph(data: bytes) -> dict:
    (_, start, length), *_ = read_sections(data)
    return json.loads(data[start : start + length])


def _decode_all(data: bytes) -> None:
    for rec in read(data).tensors.values():
        decode_tensor(rec, "parts") if rec.encoding in C.CODED_ENCODINGS else decode_tensor(rec)


VALID = [e for e in MANIFEST if e["valid"]]
INVALID = [e for e in MANIFEST if not e["valid"]]


@pytest.mark.parametrize("entry", VALID, ids=[e["file"] for e in VALID])
def test_valid_file_reads_to_the_expected_tensors_and_graph(entry):
    data = _data(entry)
    model = read(data)
    assert validate(data) == []
    assert sorted(model.tensors) == sorted(entry["tensors"])
    for name, rel in entry["tensors"].items():
        want = np.load(SUITE / rel, allow_pickle=False)
        got = decode_tensor(model.tensors[name])
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want)
    graph = json.loads((SUITE / entry["graph"]).read_text())
    assert _graph(data) == graph
    assert [v.name for v in model.outputs] == [v["name"] for v in graph["outputs"]]
    assert [n.op for n in model.nodes] == [n["op"] for n in graph["nodes"]]


@pytest.mark.parametrize("entry", INVALID, ids=[e["file"] for e in INVALID])
def test_invalid_file_is_rejected_citing_its_section(entry):
    data = _data(entry)
    (rule,) = entry["rules"]
    section = rule.split("-")[0]
    with pytest.raises(FormatError) as info:
        _decode_all(data)
    assert info.value.rule == section, str(info.value)
    problems = validate(data)
    assert problems and problems[0].rule == section, [str(p) for p in problems]


def test_every_rule_has_a_vector_and_every_vector_a_rule():
    tags = set(TAG.findall(SPEC))
    assert len(tags) > 40
    covered = {r for e in MANIFEST for r in e["rules"]}
    broken = {r for e in INVALID for r in e["rules"]}
    assert tags - covered == set(), "rules without a conformance file"
    assert covered - tags == set(), "files citing rules spec.md does not have"
    assert tags - broken == ACCEPTANCE_RULES, "rules a file can break need an invalid file"
    for e in VALID:
        assert e["rules"] and set(e["rules"]) <= tags


def test_every_must_in_the_spec_carries_a_tag():
    """A paragraph, list item or table row with MUST names its rule, unless it only introduces a
    list or table (ends with ':') or defines the word itself."""
    pieces = re.split(r"\n\s*\n|\n(?=- )|\n(?=\|)", SPEC)
    untagged = [p for p in pieces if re.search(r"\bMUST\b", p) and not TAG.search(p)
                and not p.rstrip().endswith(":") and not p.startswith(("A `.dcm` file holds", "- `valid`"))]
    assert untagged == []


def test_both_table_forms_and_version_1_0_are_in_the_suite():
    encodings = {t["encoding"] for e in VALID for t in _graph(_data(e))["tensors"]}
    assert encodings == set(C.ENCODINGS)
    assert any(_data(e)[10:12] == b"\0\0" for e in VALID)  # a version 1.0 file


def test_generator_reproduces_the_suite_byte_for_byte(monkeypatch):
    spec = importlib.util.spec_from_file_location("conformance_generate", SUITE / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, gen)  # dataclasses look their module up there
    spec.loader.exec_module(gen)
    files = gen.build()
    on_disk = {str(p.relative_to(SUITE)) for p in SUITE.rglob("*") if p.is_file()
               and p.parts[len(SUITE.parts)] in ("valid", "invalid", "expected")}
    assert on_disk | {"manifest.json"} == set(files)
    for rel, data in files.items():
        assert (SUITE / rel).read_bytes() == data, rel
