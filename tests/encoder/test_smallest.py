"""Each tensor takes the smallest encoding that stores it as asked; never larger than raw float32."""
import numpy as np
import pytest

from dcm.encoder import decode_tensor
from dcm.encoder.smallest import encode_smallest, largest_change
from dcm.format import constants as C
from dcm.format import read, to_bytes


def _tensor(shape, density, seed):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=shape).astype(np.float32)
    w[rng.random(shape) > density] = 0
    return w


CASES = [(shape, density, exact, bits)
         for shape in [(16, 1, 3, 3), (8, 4), (64, 32), (300, 200), (32, 16, 1, 1)]
         for density in [1.0, 0.9, 0.3, 0.05]
         for exact, bits in [(True, 0), (False, 8), (False, 5), (False, 2)]]


@pytest.mark.parametrize("shape,density,exact,bits", CASES)
def test_never_larger_than_raw_and_stores_what_was_asked(shape, density, exact, bits):
    w = _tensor(shape, density, seed=len(shape) + int(100 * density) + bits)
    rec = encode_smallest(w, exact=exact, code_bits=bits or 8, index_bits="auto")
    assert len(rec.payload) <= 4 * w.size
    got = decode_tensor(rec)
    assert np.array_equal(got == 0, w == 0)  # the model's own zeros, and no others
    if exact or rec.encoding == C.ENC_RAW:
        assert np.array_equal(got, w)
    else:
        assert len(np.unique(got[got != 0])) <= 1 << bits
    change = float(np.abs(got - w).max() / np.abs(w).max())
    assert largest_change(w, None, rec) == pytest.approx(change, rel=1e-6, abs=1e-9)


def test_raw_wins_where_coding_cannot_pay_and_coding_where_it_does():
    small = _tensor((16, 1, 3, 3), 1.0, 0)  # 576 B of float32; an 8-bit codebook alone is 1 KB
    assert encode_smallest(small).encoding == C.ENC_RAW
    assert encode_smallest(small, exact=True).encoding == C.ENC_RAW
    big = _tensor((300, 200), 0.05, 0)
    assert encode_smallest(big).encoding != C.ENC_RAW
    assert encode_smallest(big, exact=True).encoding != C.ENC_RAW


def test_pruning_mask_is_applied_to_raw_too():
    w = _tensor((16, 1, 3, 3), 1.0, 1)
    mask = np.abs(w) > 1.0
    rec = encode_smallest(w, mask, exact=True)
    assert np.array_equal(decode_tensor(rec), np.where(mask, w, 0))
    expected = float(np.abs(w[~mask]).max() / np.abs(w).max())
    assert largest_change(w, mask, rec) == pytest.approx(expected)


def test_deterministic():
    w = _tensor((64, 32), 0.3, 5)
    assert encode_smallest(w, code_bits=5).payload == encode_smallest(w.copy(), code_bits=5).payload


def _mobilenet_style():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU(),  # depthwise 16x1x3x3
        nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.ReLU(),
        nn.Conv2d(32, 64, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).eval()


@pytest.mark.parametrize("exact", [False, True])
def test_no_stored_tensor_is_larger_than_raw_plus_alignment(exact, tmp_path):
    pytest.importorskip("onnx")
    import torch

    from dcm.converters import ConvertOptions, from_torch

    path = tmp_path / "m.dcm"
    model = from_torch(_mobilenet_style(), torch.zeros(1, 3, 16, 16), path, options=ConvertOptions(exact=exact))
    stored = read(path)
    assert to_bytes(model) == path.read_bytes()
    for rec in stored.tensors.values():
        raw = rec.numel * np.dtype(C.DTYPES[rec.dtype]).itemsize
        aligned = -(-len(rec.payload) // C.PAYLOAD_ALIGNMENT) * C.PAYLOAD_ALIGNMENT
        assert aligned <= raw + C.PAYLOAD_ALIGNMENT, (rec.name, rec.shape, rec.encoding, len(rec.payload))
    if exact:  # unpruned and exact: every weight raw, so the data is the float32 model plus padding
        assert all(r.encoding == C.ENC_RAW for r in stored.tensors.values())
