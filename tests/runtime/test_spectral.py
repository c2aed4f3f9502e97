"""DFT and STFT against onnx's reference (other axes, lengths that pad and cut, complex input,
inverse), a DFT round trip, and a spectrogram exported from torch.stft."""
import io
import warnings

import numpy as np
import pytest

from dcm.converters import ConvertOptions, from_onnx
from dcm.runtime import InferenceSession
from tests.runtime.opcheck import check


@pytest.mark.parametrize("attrs, length", [({}, None), ({"onesided": 1}, 12), ({"inverse": 1}, 5),
                                           ({"inverse": 1, "onesided": 1}, 10)])
def test_dft_against_the_reference(attrs, length):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 3, 2)).astype(np.float32)  # complex, transformed along axis 1
    consts = {"n": np.array(length, np.int64)} if length else {}
    check("DFT", {"x": x}, {**attrs, "axis": 1}, opset=19, consts=consts, order=["x", "n" if length else ""],
          rtol=1e-4)


def test_dft_round_trip_at_opset_20():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 16, 1)).astype(np.float32)
    spectrum = check("DFT", {"x": x}, {"onesided": 1}, opset=20, consts={"axis": np.array(1, np.int64)},
                     order=["x", "", "axis"], rtol=1e-4)[0]
    back = check("DFT", {"s": spectrum}, {"onesided": 1, "inverse": 1}, opset=20, consts={"axis": np.array(1, np.int64)},
                 order=["s", "", "axis"], rtol=1e-4)[0]
    np.testing.assert_allclose(back, x, atol=1e-5)


def test_stft_against_the_reference():
    rng = np.random.default_rng(2)
    signal = rng.standard_normal((2, 100, 1)).astype(np.float32)
    window = np.hanning(20).astype(np.float32)
    check("STFT", {"signal": signal}, {}, opset=17, consts={"step": np.array(7, np.int64), "w": window},
          order=["signal", "step", "w"], rtol=1e-4)


def test_a_spectrogram_from_torch():
    torch = pytest.importorskip("torch")

    class Spectrogram(torch.nn.Module):
        def forward(self, x):
            s = torch.stft(x, n_fft=64, hop_length=16, window=torch.hann_window(64), center=False,
                           return_complex=True)
            return s.abs() ** 2

    module, buf = Spectrogram().eval(), io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 400),), buf, input_names=["x"], opset_version=17, dynamo=True)
    model = from_onnx(buf.getvalue(), ConvertOptions(exact=True))
    assert "STFT" in {n.op for n in model.nodes}
    x = torch.randn(2, 400)
    want = module(x).numpy()
    got = InferenceSession(model).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
