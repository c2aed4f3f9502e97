"""InferenceSession(..., tune=True): a pruned linear layer times its sparse kernel against BLAS on
the real input at its first run and keeps the faster; the decision is kept for the process."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from dcm.converters import ConvertOptions  # noqa: E402
from dcm.converters.onnx_in import from_onnx  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402
from dcm.runtime.cpu import native, tune  # noqa: E402


def _pruned(rng, shape, density):
    return (rng.standard_normal(shape) * (rng.random(shape) < density)).astype(np.float32)


def _model(rows: int, seed: int = 0):
    """Two pruned layers (MatMul + bias, ReLU, MatMul) over [rows, 64] activations: many rows, so each
    layer's sparse/BLAS choice is made per call."""
    rng = np.random.default_rng(seed)
    inits = {"w1": _pruned(rng, (64, 96), 0.3), "b1": rng.standard_normal(96).astype(np.float32),
             "w2": _pruned(rng, (96, 40), 0.2)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m"], name="fc1"), helper.make_node("Add", ["m", "b1"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, 40])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return from_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), ConvertOptions(exact=True))


def _layers(sess):
    return [d for d in sess.describe() if d.get("name") in ("fc1", "fc2")]


@pytest.fixture(autouse=True)
def _fresh_decisions(monkeypatch):
    monkeypatch.setattr(tune, "DECISIONS", {})


@pytest.mark.parametrize("rows", [3, 40])
def test_tuned_session_matches_untuned_and_times_once_per_process(rows):
    if native.SparseMatrix is None:
        pytest.skip("built without the compiled kernels")
    model = _model(rows)
    x = np.random.default_rng(1).standard_normal((rows, 64)).astype(np.float32)
    plain = InferenceSession(model, threads=1)
    want = plain.run(None, {"x": x})[0]
    assert [d["kernel"] for d in _layers(plain)] == ["sparse", "sparse"]
    assert all("tuned" not in d for d in _layers(plain))  # without tune the break-even points decide
    races = tune.RACES[0]
    tuned = InferenceSession(model, threads=1, tune=True)
    assert all(d["tuned"] == {} for d in _layers(tuned))  # nothing timed before the first run
    np.testing.assert_allclose(tuned.run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-5)
    assert tune.RACES[0] == races + 2  # one race per layer
    choices = [d["tuned"] for d in _layers(tuned)]
    assert all(set(c) == {str(rows)} and set(c.values()) <= {"sparse", "dense"} for c in choices)
    np.testing.assert_allclose(tuned.run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-5)
    again = InferenceSession(model, threads=1, tune=True)  # same layers, rows and threads: no timing
    np.testing.assert_allclose(again.run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-5)
    assert tune.RACES[0] == races + 2 and [d["tuned"] for d in _layers(again)] == choices
    InferenceSession(model, threads=2, tune=True).run(None, {"x": x})  # another thread count: timed anew
    assert tune.RACES[0] == races + 4


def test_each_decision_is_the_faster_candidate_and_dense_copy_is_dropped(monkeypatch):
    if native.SparseMatrix is None:
        pytest.skip("built without the compiled kernels")
    model = _model(40)
    x = np.ones((40, 64), np.float32)
    for winner in ("sparse", "dense"):
        monkeypatch.setattr(tune, "DECISIONS", {})
        monkeypatch.setattr(tune, "race", lambda candidates, w=winner, **_: {k: 0.0 if k == w else 1.0 for k in candidates})
        sess = InferenceSession(model, threads=1, tune=True)
        sess.run(None, {"x": x})
        assert [d["tuned"] for d in _layers(sess)] == [{"40": winner}] * 2
        products = [k.mm for k in sess._kernels if getattr(k, "mm", None) is not None]
        assert [p.holds_dense_form for p in products] == [winner == "dense"] * 2  # kept only when used


def test_a_requested_kernel_is_not_tuned():
    model = _model(40)
    x = np.random.default_rng(2).standard_normal((40, 64)).astype(np.float32)
    races = tune.RACES[0]
    for kernels in ("sparse", "dense"):
        sess = InferenceSession(model, threads=1, tune=True, kernels=kernels)
        sess.run(None, {"x": x})
        assert [d["kernel"] for d in _layers(sess)] == [kernels] * 2 and all("tuned" not in d for d in _layers(sess))
    assert tune.RACES[0] == races


def test_race_calls_candidates_in_turn():
    calls = []
    times = tune.race({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, min_time=0.0)
    assert set(times) == {"a", "b"} and calls[:2] == ["a", "b"]  # warm-up, then rounds of a, b
    assert calls[2:] == ["a", "b"] * ((len(calls) - 2) // 2) and len(calls) >= 8


def test_a_decision_goes_by_the_fastest_call():
    """A call another process delayed must not decide: a's calls take 1, 80, 80 ms (after its warm-up),
    b's 30 each, so the medians favour b and the fastest calls a, which ``choose`` keeps."""
    import time

    def sleeper(ms):
        steps = iter(ms)
        return lambda: time.sleep(next(steps) / 1e3)

    times = tune.race({"a": sleeper([0, 1, 80, 80]), "b": sleeper([0, 30, 30, 30])}, min_time=0.0)
    assert times["b"] < times["a"]  # medians
    assert tune.choose("test", {"a": sleeper([0, 1, 80, 80]), "b": sleeper([0, 30, 30, 30])}) == "a"


def _conv_model(channels: int, density: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = _pruned(rng, (channels, channels, 3, 3), density)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 10, 10])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "w"),
                           numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "b")])
    return from_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), ConvertOptions(exact=True))


@pytest.mark.parametrize("channels, density, default, rival", [(16, 0.3, "direct", "lanes"),
                                                                (64, 0.4, "winograd", "dense")])
@pytest.mark.parametrize("direct_wins", [True, False])
def test_conv_times_direct_against_its_dense_form(monkeypatch, channels, density, default, rival, direct_wins):
    """A pruned conv with tune holds the direct kernel and its rival until its first run, which keeps
    the winner: same outputs either way. The rival is conv_lanes2d on a layer of few input channels
    (16 here: 144 taps), else the dense form (Winograd or im2col + BLAS)."""
    if native.SparseConv is None:
        pytest.skip("built without the compiled kernels")
    model = _conv_model(channels, density)
    x = np.random.default_rng(3).standard_normal((1, channels, 10, 10)).astype(np.float32)
    plain = InferenceSession(model, threads=1)
    assert plain.describe()[0]["kernel"] == default and "tuned" not in plain.describe()[0]
    want = plain.run(None, {"x": x})[0]
    winner = "direct" if direct_wins else rival
    monkeypatch.setattr(tune, "race", lambda candidates, **_: {k: 0.0 if k == winner else 1.0 for k in candidates})
    sess = InferenceSession(model, threads=1, tune=True)
    assert sess.describe()[0]["tuned"] == "pending"
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, rtol=1e-4, atol=1e-4)
    info = sess.describe()[0]
    assert info["tuned"] == winner and info["kernel"] == ("direct" if direct_wins else default if rival == "dense"
                                                          else rival)
    conv = sess._kernels[0]
    dropped = (conv.winograd is None and conv.mms == [] and conv.lanes_weight is None) if direct_wins else conv.direct is None
    assert dropped  # the loser's weight is not kept
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, rtol=1e-4, atol=1e-4)
    races = tune.RACES[0]
    again = InferenceSession(model, threads=1, tune=True)
    np.testing.assert_allclose(again.run(None, {"x": x})[0], want, rtol=1e-4, atol=1e-4)
    assert tune.RACES[0] == races and again.describe()[0]["tuned"] == winner  # the process's decision


def test_conv_override_and_dense_layers_are_not_tuned():
    model = _conv_model(16, 0.3)
    x = np.random.default_rng(4).standard_normal((1, 16, 10, 10)).astype(np.float32)
    want = InferenceSession(model, threads=1).run(None, {"x": x})[0]
    timed = InferenceSession(model, threads=1, tune=True)  # a real race
    np.testing.assert_allclose(timed.run(None, {"x": x})[0], want, rtol=1e-4, atol=1e-4)
    assert timed.describe()[0]["tuned"] in ("direct", "lanes")
    assert "tuned" not in InferenceSession(model, threads=1, tune=True, kernels="dense").describe()[0]
    assert "tuned" not in InferenceSession(_conv_model(16, 0.9), threads=1, tune=True).describe()[0]


def test_pruned_stem_races_lanes_against_direct():
    """A pruned strided stem (ResNet's 7x7/2, 30% kept): with tune, conv_lanes2d against the direct
    kernel where the direct kernel runs strided layers (AVX-512), the static rule elsewhere."""
    if native.SparseConv is None:
        pytest.skip("built without the compiled kernels")
    rng = np.random.default_rng(5)
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], pads=[3] * 4, strides=[2, 2], name="stem"),
                           helper.make_node("Relu", ["c"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 30, 30])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(_pruned(rng, (16, 3, 7, 7), 0.3), "w")])
    model = from_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), ConvertOptions(exact=True))
    x = rng.standard_normal((1, 3, 30, 30)).astype(np.float32)
    want = InferenceSession(model, threads=1).run(None, {"x": x})[0]
    sess = InferenceSession(model, threads=1, tune=True)
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, rtol=1e-4, atol=1e-4)
    info = sess.describe()[0]
    if native.batched_simd() == "avx512":
        assert info["tuned"] in ("lanes", "direct") and info["kernel"] == info["tuned"]
    else:
        assert "tuned" not in info
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, rtol=1e-4, atol=1e-4)
