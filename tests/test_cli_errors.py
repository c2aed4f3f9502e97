"""Bad input to every CLI command: documented exit code, one stderr line, no traceback, nothing written."""
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from benchmarks.cli_errors import CASES, make_workspace, read_only_works, remove_workspace, run_case, snapshot  # noqa: E402


@pytest.fixture(scope="module")
def workspace():
    w = make_workspace()
    yield w
    remove_workspace(w)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.command}-{c.what}" for c in CASES])
def test_bad_input_gets_one_clear_line(case, workspace):
    if case.read_only and not read_only_works(workspace):
        pytest.skip("cannot make a folder read-only for this user")
    before = snapshot(workspace)
    r = run_case(case, workspace)
    assert r.returncode == case.exit_code, r.stderr
    message = r.stderr if case.command != "validate" else r.stdout
    assert len(message.strip().splitlines()) == (0 if case.stdout_closed else 1), message
    assert "Traceback" not in r.stderr + r.stdout
    after = snapshot(workspace)
    if case.writes:  # new outputs are allowed; existing files must be untouched
        for name in set(after) - set(before):
            (workspace / name).unlink()
        after = {k: v for k, v in after.items() if k in before}
    assert after == before  # nothing created, changed or partially written
    assert not (workspace / "out").exists()
