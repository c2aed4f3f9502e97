"""The compiled LSTM/GRU/RNN step loop (_recurrent.c, native.recurrent_scan) against the numpy loop of
recurrent.py on random models: every direction, batch 1, 3 and 9 (a pruned R's one-sequence and
transposed-batch products, the dense tiles of 8 sequences and their remainders), hidden sizes that
fill their last panel and that do not, sequences of different lengths, initial states, peepholes, clip,
input_forget, GRU's linear_before_reset both ways, dense and pruned R, the AVX-512, AVX2 and portable
paths; two threads give the bits one gives; Inf and NaN inputs propagate as in the dense math;
malformed calls are refused."""
import contextlib
import zlib
from unittest import mock

import numpy as np
import pytest
import scipy.sparse as sp

from dcm.converters import ConvertOptions, from_onnx
from dcm.runtime import InferenceSession
from dcm.runtime.cpu import native
from dcm.runtime.cpu import _pool, _recurrent, recurrent
from dcm.runtime.cpu.recurrent import ScanWeight, _panels
from tests.runtime.opcheck import one_node
from tests.runtime.switches import switched

pytestmark = pytest.mark.skipif(native.recurrent_scan is None, reason="built without _recurrent.c")

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _model(op, direction, batch, seed, lens=False, states=False, peephole=False, density=1.0, hidden=20, steps=6,
           r_scale=0.4, **attrs):
    rng = np.random.default_rng(seed)
    gates, size, dirs = GATES[op], 7, 2 if direction == "bidirectional" else 1
    r = rng.standard_normal((dirs, gates * hidden, hidden)).astype(np.float32) * r_scale
    if density < 1:
        r *= rng.random(r.shape) < density
    consts = {"W": rng.standard_normal((dirs, gates * hidden, size)).astype(np.float32) * 0.4, "R": r,
              "B": rng.standard_normal((dirs, 2 * gates * hidden)).astype(np.float32) * 0.3}
    feeds = {"x": rng.standard_normal((steps, batch, size)).astype(np.float32)}
    order = ["x", "W", "R", "B", "", ""]
    if lens:
        consts["seq"] = rng.integers(0, steps + 1, batch).astype(np.int32)
        consts["seq"][0] = steps
        order[4] = "seq"
    if states:
        feeds["h0"] = rng.standard_normal((dirs, batch, hidden)).astype(np.float32)
        order[5] = "h0"
    if op == "LSTM":
        order += ["", ""]
        if states:
            feeds["c0"] = rng.standard_normal((dirs, batch, hidden)).astype(np.float32)
            order[6] = "c0"
        if peephole:
            consts["P"] = rng.standard_normal((dirs, 3 * hidden)).astype(np.float32) * 0.5
            order[7] = "P"
    model = one_node(op, {k: feeds[k] for k in feeds}, {"hidden_size": hidden, "direction": direction, **attrs},
                     opset=14, consts=consts, n_out=3 if op == "LSTM" else 2, order=[o for o in order])
    return from_onnx(model, ConvertOptions(exact=True)), feeds


def _both(model, feeds, **session):
    compiled = InferenceSession(model, **session)
    with mock.patch.object(native, "recurrent_scan", None):  # read at load: the numpy step loop
        reference = InferenceSession(model, **session)
    assert compiled.describe()[0]["step_loop"] == "compiled"
    assert reference.describe()[0]["step_loop"].startswith("numpy")
    return compiled.run(None, feeds), reference.run(None, feeds), compiled


CASES = [
    ("LSTM", {}),
    ("LSTM", {"peephole": True}),
    ("LSTM", {"peephole": True, "clip": 0.6}),
    ("LSTM", {"input_forget": 1, "clip": 1.5}),
    ("LSTM", {"peephole": True, "input_forget": 1}),
    ("GRU", {}),
    ("GRU", {"linear_before_reset": 1}),
    ("GRU", {"clip": 0.5}),
    ("GRU", {"linear_before_reset": 1, "clip": 0.5}),
    ("RNN", {}),
    ("RNN", {"clip": 0.3}),
]


@contextlib.contextmanager
def path(name: str):
    """The instruction path of the compiled loop: 'avx512', 'avx2' or 'portable'."""
    with switched(native.set_recurrent_simd, name != "portable"), switched(_recurrent.set_avx512, name == "avx512"):
        yield


@pytest.mark.parametrize("simd", ["avx512", "avx2", "portable"])
@pytest.mark.parametrize("density", [1.0, 0.15], ids=["dense", "pruned"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("batch, hidden", [(1, 20), (3, 32), (9, 16)])  # 20: zeros in the last panels
@pytest.mark.parametrize("op, attrs", CASES, ids=[f"{op}-{'-'.join(a) or 'plain'}" for op, a in CASES])
def test_compiled_loop_matches_numpy(op, attrs, batch, hidden, direction, density, simd):
    seed = zlib.crc32(repr((op, sorted(attrs), batch, direction)).encode()) % 1000  # not hash(): salted per process
    model, feeds = _model(op, direction, batch, seed, lens=batch > 1, states=True, density=density, hidden=hidden,
                          **attrs)
    kernels = "sparse" if density < 1 else "dense"
    with path(simd):
        got, want, sess = _both(model, feeds, kernels=kernels)
    assert sess.describe()[0]["recurrent_kernel"] == kernels
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("simd", ["avx512", "avx2"])
@pytest.mark.parametrize("batch", [2, 7])  # 7: the tiles of 4 sequences, then of 3
@pytest.mark.parametrize("op", GATES)
@pytest.mark.parametrize("hidden", [8, 64, 100])
def test_wide_layers_and_defaults(op, hidden, batch, simd):
    """Widths that fill the multi-panel tiles and leave single-panel tails; no states."""
    model, feeds = _model(op, "forward", batch, hidden, hidden=hidden, steps=5)
    with path(simd):
        got, want, _ = _both(model, feeds)
    for g, w in zip(got, want):  # 1e-5: the portable build's scalar sums of 100 units round in another order
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize("op", GATES)
def test_a_chosen_sparse_r_runs_both_forms_by_batch(op):
    """A pruned R whose panels are small keeps them beside its CSR where the mode was chosen, not asked
    for: batch 1 takes the panels past CSR_MAX_DENSITY_FEW, batch 9 CSR below CSR_MAX_DENSITY_MANY;
    both match the numpy loop."""
    density = (recurrent.CSR_MAX_DENSITY_FEW + recurrent.CSR_MAX_DENSITY_MANY) / 2
    for batch in (1, 9):
        model, feeds = _model(op, "bidirectional", batch, 5, lens=batch > 1, states=True, density=density, hidden=64)
        got, want, sess = _both(model, feeds)
        assert sess.describe()[0]["recurrent_kernel"] == "sparse+dense"
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)
        asked = InferenceSession(model, kernels="sparse").describe()[0]
        assert asked["recurrent_kernel"] == "sparse"  # asked for: CSR only


def test_scan_weight_keeps_the_panels_only_where_they_can_win():
    rng = np.random.default_rng(0)

    def pruned(hidden: int, density: float) -> sp.csr_array:
        r = rng.standard_normal((4 * hidden, hidden)).astype(np.float32)
        return sp.csr_array(r * (rng.random(r.shape) < density))

    both = ScanWeight.of(pruned(64, 0.1), 4, both=True)
    assert both.kind == "sparse+dense"
    assert both.arrays(1) is both.panels and both.arrays(7) is both.panels  # 10% > CSR_MAX_DENSITY_FEW
    assert both.arrays(8) is both.csr and both.arrays(64) is both.csr  # < CSR_MAX_DENSITY_MANY
    assert ScanWeight.of(pruned(64, 0.2), 4, both=True).arrays(8)["rt"] is not None  # past both limits
    assert ScanWeight.of(pruned(64, 0.05), 4, both=True).kind == "sparse"  # CSR wins at any batch
    assert ScanWeight.of(pruned(300, 0.2), 4, both=True).kind == "sparse"  # panels of 1.4 MB: past L2
    assert ScanWeight.of(pruned(64, 0.2), 4).kind == "sparse"  # not chosen: what was asked for
    dense = ScanWeight.of(rng.standard_normal((256, 64)).astype(np.float32), 4)
    assert dense.kind == "dense" and dense.arrays(1) is dense.panels


THREADED = [("LSTM", {"peephole": True}), ("GRU", {}), ("GRU", {"linear_before_reset": 1}), ("RNN", {})]


@pytest.mark.parametrize("density", [1.0, 0.15], ids=["dense", "pruned"])
# 120: a part-filled last panel; batch 1 at 132: a pruned R's rows go 8 to a block, then 4 alone
@pytest.mark.parametrize("batch, hidden", [(2, 128), (8, 128), (8, 120), (1, 132)])
@pytest.mark.parametrize("op, attrs", THREADED, ids=[f"{op}-{'-'.join(a) or 'plain'}" for op, a in THREADED])
def test_two_threads_give_the_bits_of_one(op, attrs, batch, hidden, density):
    """Each step's units are split across the native pool (in whole panels): the same sums in the
    same order, so the same bits; sequences of different lengths, as the ranges copy ended states.
    RNN at batch 2 is below the size worth splitting: one thread."""
    model, feeds = _model(op, "bidirectional", batch, 3, lens=True, states=True, density=density, hidden=hidden,
                          steps=7, r_scale=0.1, **attrs)  # 0.1: gates off saturation at 128 units
    kernels = "sparse" if density < 1 else "dense"
    one = InferenceSession(model, kernels=kernels, threads=1).run(None, feeds)
    two = InferenceSession(model, kernels=kernels, threads=2)
    with switched(_recurrent.set_always_split, True):  # not one thread where the probes find it faster
        split = two.run(None, feeds)
    assert _pool.workers() >= 1  # the steps were handed to the pool's thread
    for a, b, c in zip(one, split, two.run(None, feeds)):  # and as the probes choose
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    with mock.patch.object(native, "recurrent_scan", None):
        want = InferenceSession(model, kernels=kernels).run(None, feeds)
    for a, w in zip(split, want):
        np.testing.assert_allclose(a, w, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("density", [1.0, 0.2], ids=["dense", "pruned"])
@pytest.mark.parametrize("op", GATES)
def test_inf_and_nan_propagate_like_the_dense_math(op, density):
    model, feeds = _model(op, "bidirectional", 3, 7, density=density, states=True)
    feeds["x"][2, 0, 1] = np.inf
    feeds["x"][1, 1, 3] = np.nan
    feeds["h0"][0, 2, 0] = -np.inf
    kernels = "sparse" if density < 1 else "dense"
    got, want, _ = _both(model, feeds, kernels=kernels)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
        ok = np.isfinite(w)
        np.testing.assert_allclose(g[ok], w[ok], rtol=2e-5, atol=2e-6)
    assert np.isnan(got[0]).any()


def test_other_activations_run_the_numpy_loop_and_say_so():
    model, feeds = _model("GRU", "forward", 1, 0, activations=["HardSigmoid", "Tanh"])
    sess = InferenceSession(model)
    assert sess.describe()[0]["step_loop"] == "numpy (activations other than the defaults)"
    sess.run(None, feeds)


def _args(**change):
    n, hid, gates, steps = 2, 3, 4, 5
    args = {"cell": "LSTM", "xw": np.zeros((steps, n, gates * hid), np.float32),
            "y": np.zeros((steps, 1, n, hid), np.float32), "h": np.zeros((n, hid), np.float32),
            "c": np.zeros((n, hid), np.float32), "lens": np.full(n, steps, np.int64), "direction": 0,
            "backwards": False, "rt": np.zeros((hid, gates * hid), np.float32)}
    args.update(change)
    return args


def _csr(indptr, indices):
    return {"rt": None, "indptr": np.asarray(indptr, np.int64), "indices": np.asarray(indices, np.int32),
            "values": np.ones(len(indices), np.float32)}


@pytest.mark.parametrize("change, message", [
    ({"cell": "LSTMX"}, "cell must be"),
    ({"xw": np.zeros((5, 2, 13), np.float32)}, "multiple of 4 gates"),
    ({"y": np.zeros((5, 1, 2, 4), np.float32)}, "y must be"),
    ({"h": np.zeros((3, 3), np.float32)}, "h \\[n, hidden\\]"),
    ({"c": np.zeros((2, 4), np.float32)}, "c must be"),
    ({"lens": np.array([5, 6], np.int64)}, "outside 0..5"),
    ({"lens": np.array([5, -1], np.int64)}, "outside 0..5"),
    ({"lens": np.array([5], np.int64)}, "lens must have 2"),
    ({"direction": 1}, "direction 1 is outside"),
    ({"rt": np.zeros((12, 3), np.float32)}, "rt must be \\[3, 12\\]"),
    ({"rt": np.zeros((4, 3, 8), np.float32)}, "rt must be \\[3, 12\\] \\(R transposed\\) or its panels \\[4, 3, 16\\]"),
    ({"rt": None}, "give R as"),
    ({"peephole": np.zeros(8, np.float32)}, "peephole must have 9"),
    ({"input_bias": np.zeros(11, np.float32)}, "input_bias must have 12"),
    ({"clip": -1.0}, "clip must be"),
    ({"clip": float("nan")}, "clip must be"),
    (_csr([0] * 12, []), "indptr must have 13"),
    (_csr([0] * 12 + [2], [0]), "indptr must run from 0 to the 1"),
    (_csr([1] * 13, [0]), "indptr must run"),
    (_csr([0] * 6 + [2] + [1] * 6, [0]), "indptr decreases at 6"),
    (_csr([0] * 12 + [1], [3]), "index 3 at entry 0 is outside 0..2"),
    (_csr([0] * 12 + [1], [-1]), "index -1 at entry 0 is outside"),
    ({"cell": "GRU", "xw": np.zeros((5, 2, 9), np.float32), "rt": np.zeros((3, 9), np.float32)}, "c and peephole"),
    ({"cell": "RNN", "c": None, "xw": np.zeros((5, 2, 3), np.float32), "rt": np.zeros((3, 3), np.float32),
      "recurrent_bias": np.zeros(3, np.float32)}, "recurrent_bias is for a GRU"),
])
def test_malformed_calls_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        native.recurrent_scan(**_args(**change))


@pytest.mark.parametrize("op", GATES)
def test_r_transposed_is_packed_like_the_loaded_panels(op):
    """A caller's R^T is packed per call into the panels recurrent._panels makes at load."""
    rng = np.random.default_rng(2)
    gates, hidden, n = GATES[op], 20, 3
    r = rng.standard_normal((gates * hidden, hidden)).astype(np.float32)
    args = {"cell": op, "xw": rng.standard_normal((4, n, gates * hidden)).astype(np.float32),
            "lens": np.full(n, 4, np.int64), "direction": 0, "backwards": False}
    outs = []
    for form in ({"rt": np.ascontiguousarray(r.T)}, _panels(r, gates)):
        y, h = np.zeros((4, 1, n, hidden), np.float32), np.ones((n, hidden), np.float32)
        c = np.ones((n, hidden), np.float32) if op == "LSTM" else None
        native.recurrent_scan(**args, y=y, h=h, c=c, **form)
        outs.append(y)
    np.testing.assert_array_equal(*outs)
    assert np.abs(outs[0]).max() > 0


def test_panels_of_the_wrong_shape_are_refused():
    """hidden 20: 32 units a gate in the panels, the last 12 zero."""
    args = _args(xw=np.zeros((5, 2, 80), np.float32), y=np.zeros((5, 1, 2, 20), np.float32),
                 h=np.zeros((2, 20), np.float32), c=np.zeros((2, 20), np.float32))
    native.recurrent_scan(**{**args, "rt": np.zeros((8, 20, 16), np.float32)})
    with pytest.raises(ValueError, match="or its panels \\[8, 20, 16\\]"):
        native.recurrent_scan(**{**args, "rt": np.zeros((5, 20, 16), np.float32)})


def test_wrong_array_types_are_refused():
    with pytest.raises(TypeError, match="xw"):
        native.recurrent_scan(**_args(xw=np.zeros((5, 2, 12), np.float64)))
    with pytest.raises(TypeError, match="lens"):
        native.recurrent_scan(**_args(lens=np.full(2, 5, np.int32)))
    with pytest.raises((TypeError, ValueError), match="y"):
        native.recurrent_scan(**_args(y=np.zeros((5, 1, 2, 3), np.float32)[:, :, ::-1]))


def test_empty_sizes_write_nothing():
    native.recurrent_scan(**_args(xw=np.zeros((0, 2, 12), np.float32), y=np.zeros((0, 1, 2, 3), np.float32),
                                  lens=np.zeros(2, np.int64)))
    native.recurrent_scan(**_args(xw=np.zeros((5, 0, 12), np.float32), y=np.zeros((5, 1, 0, 3), np.float32),
                                  h=np.zeros((0, 3), np.float32), c=np.zeros((0, 3), np.float32),
                                  lens=np.zeros(0, np.int64)))


@pytest.mark.parametrize("op", GATES)
def test_batch_first_layout_and_strided_initial_states(op):
    """layout=1 swaps the states' axes: the compiled loop gets C-ordered copies of any layout."""
    rng = np.random.default_rng(5)
    gates, hidden, size = GATES[op], 8, 5
    consts = {"W": rng.standard_normal((1, gates * hidden, size)).astype(np.float32),
              "R": rng.standard_normal((1, gates * hidden, hidden)).astype(np.float32)}
    feeds = {"x": rng.standard_normal((3, 4, size)).astype(np.float32),  # [batch, steps, input]
             "h0": np.asfortranarray(rng.standard_normal((3, 1, hidden)).astype(np.float32))}
    order = ["x", "W", "R", "", "", "h0"]
    if op == "LSTM":
        feeds["c0"] = np.asfortranarray(rng.standard_normal((3, 1, hidden)).astype(np.float32))
        order.append("c0")
    model = one_node(op, feeds, {"hidden_size": hidden, "layout": 1}, opset=14, consts=consts,
                     n_out=3 if op == "LSTM" else 2, order=order)
    got, want, _ = _both(from_onnx(model, ConvertOptions(exact=True)), feeds)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)
