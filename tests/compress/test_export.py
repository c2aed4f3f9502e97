"""The lossless export steps: coding shared small tensors, short graph names."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402

from dcm import compress  # noqa: E402
from dcm.compress.export import code_shared_tensors, compact_names  # noqa: E402
from dcm.converters import from_torch  # noqa: E402
from dcm.encoder.codec import decode_tensor  # noqa: E402
from dcm.format import constants as C  # noqa: E402
from dcm.format.reader import read  # noqa: E402
from dcm.format.writer import write  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 300), nn.ReLU(), nn.LayerNorm(300), nn.Linear(300, 10))


def test_shared_biases_are_coded_exactly_and_smaller(tmp_path):
    net = _net()
    sharing = compress.share_weights(net, bits=4, other_bits=2)
    assert {"0.bias", "2.weight", "2.bias", "3.bias"} <= set(sharing.layers)
    sharing.finalize()
    net.eval()
    x = torch.randn(5, 20)
    model = from_torch(net, x, code_bits=sharing.code_bits())
    raw = {n: decode_tensor(t) for n, t in model.tensors.items() if t.encoding == C.ENC_RAW}
    changed = code_shared_tensors(model)
    assert "0.bias" in changed and "2.weight" in changed  # 300 values over 4 distinct: far below 1,200 bytes
    for name in changed:
        np.testing.assert_array_equal(decode_tensor(model.tensors[name]), raw[name])
        assert len(model.tensors[name].payload) < 4 * raw[name].size
    write(tmp_path / "m.dcm", model)
    sess = InferenceSession(tmp_path / "m.dcm")
    np.testing.assert_allclose(sess.run(None, {"input": x.numpy()})[0], net(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_unshared_tensors_stay_raw():
    net = _net()
    model = from_torch(net.eval(), torch.randn(2, 20))
    # Trained float32 biases hold 300 distinct values: nothing to gain. LayerNorm's untrained scale
    # (all ones) is one value, coded exactly.
    assert code_shared_tensors(model) == ["2.weight"]
    np.testing.assert_array_equal(decode_tensor(model.tensors["2.weight"]), np.ones(300, np.float32))


def test_compact_names_keeps_inputs_outputs_tensors_and_results(tmp_path):
    net = _net().eval()
    x = torch.randn(3, 20)
    model = from_torch(net, x)
    write(tmp_path / "a.dcm", model)
    tensors, io = set(model.tensors), ([v.name for v in model.inputs], [v.name for v in model.outputs])
    assert compact_names(model) > 0
    write(tmp_path / "b.dcm", model)
    assert (tmp_path / "b.dcm").stat().st_size <= (tmp_path / "a.dcm").stat().st_size
    back = read(tmp_path / "b.dcm")
    assert set(back.tensors) == tensors and ([v.name for v in back.inputs], [v.name for v in back.outputs]) == io
    a, b = InferenceSession(tmp_path / "a.dcm"), InferenceSession(tmp_path / "b.dcm")
    np.testing.assert_array_equal(a.run(None, {"input": x.numpy()})[0], b.run(None, {"input": x.numpy()})[0])
