"""``dcm inspect --plot`` and the sensitivity plot write real images; without matplotlib the error
names the extra to install."""
import sys

import pytest

from dcm.cli import main
from dcm.format import write
from tests.conftest import small_model

PNG = b"\x89PNG\r\n\x1a\n"


def test_inspect_plot_writes_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    write(tmp_path / "m.dcm", small_model())
    assert main(["inspect", str(tmp_path / "m.dcm"), "--plot", str(tmp_path / "m.png"), "-q"]) == 0
    assert (tmp_path / "m.png").read_bytes()[:8] == PNG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.dcm", "m.png"]


def test_sensitivity_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("torch")
    from dcm.compress.sensitivity import plot

    plot({"fc1": {0.0: 0.98, 0.5: 0.97, 0.9: 0.80}, "fc2": {0.0: 0.98, 0.5: 0.98, 0.9: 0.95}}, tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:8] == PNG


def test_without_matplotlib_the_error_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    write(tmp_path / "m.dcm", small_model())
    assert main(["inspect", str(tmp_path / "m.dcm"), "--plot", str(tmp_path / "m.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'dcm[plot]'" in err
    assert not (tmp_path / "m.png").exists()
