"""benchmarks/families.py: a model that converts gets times, a ratio and its error against torch; one that
fails gets its error in the row and the table; an unknown name is refused; every family converts."""
from __future__ import annotations

import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from benchmarks import families, family_models  # noqa: E402


def _tiny():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU()), torch.randn(1, 3, 6, 6)


class _Unexportable(torch.nn.Module):
    def forward(self, x):
        return torch.linalg.eigvals(x).real  # no ONNX form


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setitem(families.MODELS, "tiny", _tiny)
    monkeypatch.setitem(families.MODELS, "broken", lambda: (_Unexportable(), torch.randn(1, 3, 3)))
    monkeypatch.setattr(families, "timeit", lambda fn: (fn(), 1e-3)[1])


def test_rows_and_table(quick):
    ok, broken = families.measure("tiny", False), families.measure("broken", False)
    assert ok["max_rel_error"] < 1e-5 and ok["dcm_vs_onnxruntime"] == pytest.approx(1.0)
    assert "error" in broken and "dcm_ms" not in broken
    text = families.table([ok, broken])
    assert "| tiny | torchscript | 1.00 | 1.00 | 1.00 |" in text and "| broken | torchscript | failed:" in text
    assert "over 1 runs, worst 1.00; 1 failed" in text


def test_unknown_model_is_refused(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["families", "--models", "resnet50,nope"])
    with pytest.raises(SystemExit):
        families.main()
    assert "unknown models ['nope']" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["shufflenet_v2", "swin_2blocks", "tcn_1d", "llama_2x256"])
def test_families_convert_and_match_torch(name, monkeypatch):
    """A quick subset (the others are large): each converts and matches torch to 1e-5."""
    monkeypatch.setattr(families, "timeit", lambda fn: (fn(), 1e-3)[1])
    row = families.measure(name, False)
    assert "error" not in row, row.get("error")
    assert row["max_rel_error"] < 1e-5
    assert name in family_models.MODELS
