"""benchmarks/zoo.py: the per-op-type profile of both runtimes and the page's "where dcm loses" list."""
from __future__ import annotations

import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from benchmarks import zoo  # noqa: E402


class _Tiny(torch.nn.Module):
    """Linear + Gelu + Linear on [batch, 8, 16]: MatMul and Add that dcm folds into dcm.MatMulAdd."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(16, 32), torch.nn.Linear(32, 4)

    def forward(self, x):
        return self.b(torch.nn.functional.gelu(self.a(x))).softmax(-1)


def _build(batch: int):
    return _Tiny(), (torch.randn(batch, 8, 16),), ["x"], {"x": {0: "batch"}, "output": {0: "batch"}}


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setitem(zoo.MODELS, "tiny", (_build, 0.5))
    monkeypatch.setattr(zoo, "PROFILE_SECONDS", 0.01)
    return "tiny"


def test_profile_charges_onnxruntime_nodes_to_the_dcm_op_that_does_their_work(tiny):
    rows = zoo.measure(tiny, False, (1,), (1,))
    assert len(rows) == 1 and "error" not in rows[0]
    ops = rows[0]["ops"]
    assert ops["dcm.MatMulAdd"]["dcm_ms"] > 0 and ops["dcm.MatMulAdd"]["onnxruntime_ms"] > 0
    # onnxruntime's bias Adds are dcm.MatMulAdd's work: they must not appear as an op dcm never ran
    for op, t in ops.items():
        assert t["dcm_ms"] > 0 or op in zoo.ORT_FUSED.values(), (op, t)
    assert "Add" not in ops


def test_onnxruntime_node_names_map_back_to_the_file_s_nodes():
    writer = {"conv_out": "/stem/Conv"}
    assert zoo.ort_node("conv_out_nchwc", writer) == "/stem/Conv"  # the NCHWc pass names a conv after its output
    assert zoo.ort_node("/blocks/b0/act/Mul/QuickGeluFusion/", writer) == "/blocks/b0/act/Mul"  # a fusion
    assert zoo.ort_node("/fc/Gemm", writer) == "/fc/Gemm"
    assert zoo.ort_node("ReorderInput_token_3", writer) == "ReorderInput_token_3"  # its own node: by op type


def test_gaps_lists_the_largest_losses_first_and_skips_wins():
    ops = {"Conv": {"dcm_ms": 5.0, "onnxruntime_ms": 2.0}, "Relu": {"dcm_ms": 1.5, "onnxruntime_ms": 0.5},
           "Gemm": {"dcm_ms": 0.1, "onnxruntime_ms": 0.4}}
    text = zoo.gaps([{"model": "m", "weights": "dense", "ops": ops}, {"model": "n", "weights": "dense"}])
    line = text.splitlines()[-1]
    assert line.startswith("- m, dense: nodes 6.60 vs 2.90 ms; Conv +3.00 (5.00 vs 2.00), Relu +1.00")
    assert "Gemm" not in line and "- n," not in text
    assert zoo.gaps([{"model": "n", "weights": "dense"}]) == ""


def test_docs_path_gets_the_page_with_the_gaps(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "save", lambda name, payload: tmp_path / f"{name}.json")
    page = tmp_path / "zoo.md"
    monkeypatch.setattr(sys, "argv", ["zoo", "--quick", "--models", tiny, "--docs", "--docs-path", str(page)])
    zoo.main()
    text = page.read_text()
    assert "| tiny | dense | 1 | 1 |" in text and "| tiny | pruned 50% kept | 1 | 1 |" in text
    assert "Where dcm loses" in text and "- tiny, dense: nodes" in text
