"""Progress bars: drawn when asked (or on a terminal), never in pipes or with --quiet."""
import pytest

from dcm.progress import bar
from dcm.runtime import InferenceSession
from tests.conftest import small_model


def test_no_bar_when_stderr_is_not_a_terminal(capsys):
    items = [1, 2, 3]
    assert bar(items, "x") is items  # pytest captures stderr: not a TTY
    assert bar(items, "x", enabled=False) is items


def test_session_load_bar_when_forced(capsys):
    pytest.importorskip("tqdm")
    InferenceSession(small_model(), progress=True)
    assert "load" in capsys.readouterr().err
    InferenceSession(small_model())  # small file, not a terminal: silent
    assert capsys.readouterr().err == ""


def test_convert_quiet_and_progress(tmp_path, capsys):
    pytest.importorskip("tqdm")
    pytest.importorskip("onnx")
    from dcm.cli import main
    from dcm.converters import export_onnx

    export_onnx(small_model(), tmp_path / "m.onnx")
    assert main(["convert", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.dcm"), "--exact", "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "encode" not in captured.err
