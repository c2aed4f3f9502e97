"""onnx's own backend node test cases through dcm: every case dcm can express must pass.

The cases, the skip rules and the comparison live in ``benchmarks/onnx_node_suite.py`` (which also
writes the per-op table docs/onnx-conformance.md). A case dcm cannot express (a string or float8
tensor, a sequence, training mode, an op outside the CPU registry) is skipped with its reason:
``pytest tests/runtime/test_onnx_node_suite.py -rs`` lists them.
"""
import pytest

pytest.importorskip("onnx")

from benchmarks.onnx_node_suite import all_cases, main_op, run_case, skip_reason  # noqa: E402

CASES = {case.name: case for case in all_cases()}


@pytest.mark.parametrize("name", list(CASES))
def test_backend_node_case(name: str) -> None:
    case = CASES[name]
    reason = skip_reason(case)
    if reason is not None:
        pytest.skip(f"{main_op(case)}: {reason}")
    run_case(case)


def test_the_suite_is_whole() -> None:
    """The installed onnx generates its cases (a wheel without generators would make every test above
    vanish), and every skip has one of the documented reasons."""
    assert len(CASES) > 1000
    reasons = [skip_reason(c) for c in CASES.values()]
    assert sum(r is None for r in reasons) > 1000
    groups = {r.split(":")[0] for r in reasons if r is not None}
    assert groups <= {"training mode", "custom domain", "non-tensor type", "dtype", "not in registry"}
