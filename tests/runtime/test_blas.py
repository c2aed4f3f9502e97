"""InferenceSession(threads=N) bounds numpy's BLAS pool too (dcm/runtime/cpu/blas.py)."""
import numpy as np
import pytest

pytest.importorskip("threadpoolctl")
from threadpoolctl import threadpool_limits  # noqa: E402

from dcm.format.model import Model, Node, ValueInfo  # noqa: E402
from dcm.encoder.codec import encode_raw  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402
from dcm.runtime.cpu import blas  # noqa: E402


def _dense_fc() -> Model:
    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    return Model([ValueInfo("x", "float32", ["batch", 64])], [ValueInfo("y", "float32", ["batch", 64])],
                 [Node("Gemm", ["x", "w"], ["y"], {"transB": 1}, "fc")], {"w": encode_raw(w, "w")})


def test_threads_set_the_blas_pool_for_each_run():
    if not blas.current():
        pytest.skip("no BLAS library found by threadpoolctl")
    x = np.ones((8, 64), np.float32)
    one, two = InferenceSession(_dense_fc(), threads=1), InferenceSession(_dense_fc(), threads=2)
    one.run(None, {"x": x})
    assert set(blas.current()) == {1}
    two.run(None, {"x": x})
    assert set(blas.current()) == {2}
    with threadpool_limits(3):  # a change from outside is overridden by the next run
        one.run(None, {"x": x})
        assert set(blas.current()) == {1}
