"""The GPU backend (torch kernels, run on the CPU under device="torch-cpu") against onnx's backend
node cases: every case the CPU backend passes must pass on it too. The cases, skip rules and the
comparison are ``benchmarks/onnx_node_suite.py``'s; only the session's device differs."""
import pytest

pytest.importorskip("onnx")
pytest.importorskip("torch")

import dcm.runtime  # noqa: E402
from benchmarks.onnx_node_suite import all_cases, main_op, run_case, skip_reason  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402

CASES = {case.name: case for case in all_cases()}


def _on_gpu_backend(model, *args, **kwargs):
    return InferenceSession(model, *args, device="torch-cpu", **kwargs)


@pytest.mark.parametrize("name", list(CASES))
def test_backend_node_case_on_gpu_backend(name: str, monkeypatch) -> None:
    case = CASES[name]
    reason = skip_reason(case)
    if reason is not None:
        pytest.skip(f"{main_op(case)}: {reason}")
    with monkeypatch.context() as m:
        m.setattr(dcm.runtime, "InferenceSession", _on_gpu_backend)  # the runner imports it at call time
        try:
            run_case(case)
            return
        except Exception as exc:  # noqa: BLE001  judged against the CPU backend below
            failure = exc
    try:
        run_case(case)
    except Exception as cpu_failure:  # noqa: BLE001
        pytest.skip(f"the CPU backend fails this case too: {str(cpu_failure).splitlines()[0][:120]}")
    raise failure
