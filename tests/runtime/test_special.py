"""The float32 rational erf (dcm/runtime/cpu/special.py) against scipy's double-precision erf."""
import numpy as np
import scipy.special

from dcm.runtime.cpu.special import erf32


def test_erf32_within_float32_accuracy_everywhere():
    x = np.linspace(-10, 10, 400_001, dtype=np.float32)
    got = erf32(x)
    assert got.dtype == np.float32
    assert np.abs(got - scipy.special.erf(x.astype(np.float64))).max() < 6e-7
    assert np.abs(got).max() <= 1


def test_erf32_special_values():
    got = erf32(np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], np.float32))
    assert np.isnan(got[0]) and got[1] == 1 and got[2] == -1 and got[3] == 0 and got[4] == 0


def test_gelu_float32_absolute_error():
    from dcm.format.model import Model, Node, ValueInfo
    from dcm.runtime import InferenceSession

    model = Model([ValueInfo("x", "float32", ["n"])], [ValueInfo("y", "float32", ["n"])],
                  [Node("Gelu", ["x"], ["y"], {}, "gelu")], {}, opset=20)
    x = np.linspace(-12, 12, 100_001, dtype=np.float32)
    want = x.astype(np.float64) * scipy.special.ndtr(x.astype(np.float64))
    assert np.abs(InferenceSession(model).run(None, {"x": x})[0] - want).max() < 2e-6
