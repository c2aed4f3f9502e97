"""onnx's model tests shipped as files (old PyTorch exports at opset 6-9, small models, light CNNs)
through dcm: every case dcm can express must pass, at onnx's runner tolerances. The cases and the
skip rules are ``benchmarks/onnx_node_suite.py``'s (``data_cases``, ``skip_reason``)."""
import pytest

pytest.importorskip("onnx")

from benchmarks.onnx_node_suite import DATA_SUITES, data_cases, run_case, skip_reason  # noqa: E402
from dcm.runtime.cpu import pointconv  # noqa: E402

CASES = {case.name: case for case in data_cases()}


# Cases whose expected output holds only where the kernels round every output channel alike: light
# SqueezeNet's constant weights make its 1000 logits equal and ~1e10, so the reference softmax is uniform,
# and a difference of one rounding between two channels (4e3 at 1e10) makes it one-hot. dcm's own NCHW 1x1
# kernel (pointconv, AVX-512) computes each channel alike; OpenBLAS's edge kernels, which run that layer on
# other CPUs, do not.
CHANNEL_EXACT = {"light/light_squeezenet"}


@pytest.mark.parametrize("name", list(CASES))
def test_model_case(name: str) -> None:
    case = CASES[name]
    reason = skip_reason(case)
    if reason is not None:
        pytest.skip(reason)
    if name in CHANNEL_EXACT and not pointconv.available():
        pytest.skip("softmax of equal logits near 1e10: needs channel-identical rounding (dcm's AVX-512 1x1 kernel)")
    run_case(case)


def test_every_suite_is_there():
    """The wheel ships each suite's files (a wheel without them would make the tests above vanish)."""
    runnable = [name for name, case in CASES.items() if skip_reason(case) is None]
    assert {name.split("/")[0] for name in runnable} == set(DATA_SUITES)
    assert len(runnable) > 120
