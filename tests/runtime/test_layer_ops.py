"""The layer ops of decoders and recurrent nets (ConvTranspose, 3-D Conv and pooling, Resize/Upsample,
LSTM/GRU/RNN): every opset version from 7 (and 28, the newest) against onnx's reference evaluator, the recurrent
attributes the reference ignores against onnxruntime, pruned weights run sparse from their coded
form, and bad inputs refused with a DcmError. (onnx's own node cases for these ops run in
test_onnx_node_suite.py.)"""
import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from dcm.cli import main  # noqa: E402
from dcm.converters import ConvertOptions, from_onnx  # noqa: E402
from dcm.encoder.codec import encode_raw  # noqa: E402
from dcm.errors import DcmError  # noqa: E402
from dcm.format import constants as C  # noqa: E402
from dcm.format.model import Model, Node, ValueInfo  # noqa: E402
from dcm.format.writer import write  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402
from tests.runtime.opcheck import check, one_node  # noqa: E402

RNG = np.random.default_rng(0)


def _r(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _pruned(shape, density, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * (rng.random(shape) < density)).astype(np.float32)


# (op, opset, run-time inputs, attributes, constants, outputs): each op at every version from 7 on.
CONV_T = {"strides": [2, 3], "output_padding": [1, 2], "dilations": [2, 1], "pads": [1, 0, 2, 1], "group": 2}
VERSIONS = [
    *[("Conv", v, {"x": _r(2, 4, 5, 6, 7)}, {"strides": [2, 1, 2], "pads": [1, 0, 1, 0, 1, 1],
                                            "dilations": [1, 2, 1], "group": 2},
       {"w": _r(6, 2, 3, 2, 3), "b": _r(6)}, 1) for v in (7, 11, 22, 28)],
    *[("Conv", v, {"x": _r(2, 4, 9)}, {"auto_pad": "SAME_LOWER", "strides": [2]}, {"w": _r(3, 4, 4)}, 1)
      for v in (7, 11, 22)],
    *[("ConvTranspose", v, {"x": _r(2, 4, 5, 6)}, CONV_T, {"w": _r(4, 3, 3, 2), "b": _r(6)}, 1) for v in (7, 11, 22)],
    *[("ConvTranspose", v, {"x": _r(1, 2, 7)}, {"strides": [2], "auto_pad": auto}, {"w": _r(2, 3, 4)}, 1)
      for v in (7, 11, 22, 28) for auto in ("SAME_UPPER", "SAME_LOWER")],
    *[("ConvTranspose", v, {"x": _r(2, 3, 4, 5)}, attrs, {"w": _r(3, 2, 2, 2), "b": _r(2)}, 1)
      for v in (7, 22) for attrs in ({"strides": [2, 2]},  # taps that never overlap: one transposed copy
                                     {"strides": [2, 2], "output_padding": [1, 0], "pads": [0, 1, 0, 0]})],
    *[("ConvTranspose", v, {"x": _r(1, 2, 3, 4, 3)}, {"strides": [2, 1, 2], "output_shape": [7, 4, 6]},
       {"w": _r(2, 2, 2, 3, 2)}, 1) for v in (7, 11, 22)],
    *[("MaxPool", v, {"x": _r(2, 3, 6, 7, 8)}, {"kernel_shape": [3, 2, 3], "strides": [2, 2, 1],
                                               "pads": [1, 0, 1, 1, 0, 1]}, {}, 2) for v in (8, 10, 11, 12, 22, 28)],
    *[("MaxPool", v, {"x": _r(2, 3, 7, 8)}, {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1,
                                            "dilations": [1, 2], "storage_order": 1}, {}, 2) for v in (10, 11, 12, 22)],
    *[("AveragePool", v, {"x": _r(2, 3, 6, 7, 8)}, {"kernel_shape": [2, 3, 3], "strides": [2, 1, 2],
                                                   "pads": [1, 1, 0, 0, 1, 1], "count_include_pad": 1}, {}, 1)
      for v in (7, 10, 11, 19, 22, 28)],
    *[("AveragePool", v, {"x": _r(1, 2, 7, 6, 5)}, {"kernel_shape": [3, 3, 2], "strides": [2, 2, 2], "ceil_mode": 1},
       {}, 1) for v in (10, 11, 19, 22)],
    *[("LpPool", v, {"x": _r(1, 2, 6, 5, 4)}, {"kernel_shape": [2, 3, 2], "p": 3, "pads": [0, 1, 0, 0, 1, 1]}, {}, 1)
      for v in (7, 11, 18, 22, 28)],
    *[(op, v, {"x": _r(2, 3, 4, 5, 6)}, {}, {}, 1) for op in ("GlobalAveragePool", "GlobalMaxPool") for v in (7, 22)],
    *[("MaxUnpool", v, {"x": _r(1, 2, 2, 3)}, {"kernel_shape": [2, 2], "strides": [2, 2]},
       {"i": np.array([[[[0, 3, 4], [13, 14, 23]], [[25, 27, 28], [42, 43, 47]]]], np.int64),
        **({"shape": np.array([1, 2, 5, 7], np.int64)} if v >= 11 else {})}, 1) for v in (9, 11, 22)],
    ("Upsample", 7, {"x": _r(1, 2, 3, 4)}, {"scales": [1.0, 1.0, 2.0, 3.0], "mode": "nearest"}, {}, 1),
    ("Upsample", 9, {"x": _r(1, 2, 3, 4)}, {"mode": "nearest"},
     {"scales": np.array([1, 1, 2, 2], np.float32)}, 1),
    ("Resize", 10, {"x": _r(1, 2, 3, 4)}, {"mode": "nearest"}, {"scales": np.array([1, 1, 2, 3], np.float32)}, 1),
    *[("Resize", v, {"x": _r(2, 3, 5, 6)}, {"mode": mode, "coordinate_transformation_mode": ctm},
       {"roi": np.zeros(0, np.float32), "scales": np.array([1, 1, 1.5, 0.6], np.float32)}, 1)
      for v in (11, 13, 18, 19, 28)
      for mode, ctm in (("linear", "half_pixel"), ("cubic", "align_corners"), ("nearest", "asymmetric"),
                        ("linear", "pytorch_half_pixel"))],
    *[("Resize", v, {"x": _r(1, 2, 4, 5, 6)}, {"mode": "linear"},
       {"roi": np.zeros(0, np.float32), "scales": np.zeros(0, np.float32),
        "sizes": np.array([1, 2, 7, 3, 9], np.int64)}, 1) for v in (11, 13, 18, 19)],
    *[("Resize", v, {"x": _r(1, 2, 8, 9)}, {"mode": mode, "antialias": 1, "axes": [3, 2],
                                           "keep_aspect_ratio_policy": "not_larger"},
       {"roi": np.zeros(0, np.float32), "scales": np.zeros(0, np.float32),
        "sizes": np.array([4, 5], np.int64)}, 1) for v in (18, 19) for mode in ("linear", "cubic")],
    ("Resize", 19, {"x": _r(1, 1, 5, 7)}, {"mode": "linear", "coordinate_transformation_mode": "half_pixel_symmetric"},
     {"roi": np.zeros(0, np.float32), "scales": np.array([1, 1, 1.7, 0.5], np.float32)}, 1),
    ("Resize", 13, {"x": _r(1, 1, 5, 7)}, {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize",
                                          "extrapolation_value": 5.0},
     {"roi": np.array([0, 0, -0.2, 0.1, 1, 1, 0.9, 1.3], np.float32), "scales": np.zeros(0, np.float32),
      "sizes": np.array([1, 1, 4, 6], np.int64)}, 1),
]
for v in (7, 14, 22, 28):  # 28: the newest opset onnx 1.23 defines
    for op, gates in (("LSTM", 4), ("GRU", 3), ("RNN", 1)):
        attrs = {"hidden_size": 5, "direction": "bidirectional"}
        VERSIONS.append((op, v, {"x": _r(4, 3, 6)}, attrs,
                         {"W": _r(2, gates * 5, 6, scale=0.5), "R": _r(2, gates * 5, 5, scale=0.5),
                          "B": _r(2, 2 * gates * 5, scale=0.3)}, 3 if op == "LSTM" else 2))
    if v >= 14:  # layout=1: batch first
        VERSIONS.append(("LSTM", v, {"x": _r(3, 4, 6)}, {"hidden_size": 5, "layout": 1},
                         {"W": _r(1, 20, 6, scale=0.5), "R": _r(1, 20, 5, scale=0.5)}, 3))


@pytest.mark.parametrize("op, opset, inputs, attrs, consts, n_out", VERSIONS,
                         ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(VERSIONS)])
def test_every_opset_version_matches_the_reference(op, opset, inputs, attrs, consts, n_out):
    if _reference_fails(op, opset, attrs):
        _vs_onnxruntime(one_node(op, inputs, attrs, opset=opset, consts=consts, n_out=n_out), inputs)
    else:
        check(op, inputs, attrs, opset=opset, consts=consts, n_out=n_out, rtol=2e-5)


def _reference_fails(op: str, opset: int, attrs: dict) -> bool:
    """Where onnx 1.23's reference evaluator is wrong or refuses, onnxruntime is the reference:
    grouped or output_shape ConvTranspose, rank-5 global pools, Upsample and Resize-10."""
    return ((op == "ConvTranspose" and (attrs.get("group", 1) > 1 or "output_shape" in attrs))
            or op.startswith("Global") or op == "Upsample" or (op == "Resize" and opset == 10))


def _vs_onnxruntime(model, feeds, rtol=2e-5, **session):
    indices = model.graph.node[0].op_type == "MaxPool"  # its second output
    for k, out in enumerate(model.graph.output):  # onnxruntime wants declared element types
        out.type.tensor_type.elem_type = onnx.TensorProto.INT64 if indices and k == 1 else onnx.TensorProto.FLOAT
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    sess = InferenceSession(from_onnx(model, ConvertOptions(exact=True)), **session)
    got = sess.run(None, feeds)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol)
    return sess


SEQ = np.array([4, 0, 3], np.int32)
RECURRENT = [  # what the reference evaluator ignores: sequence_lens, activations, clip, input_forget
    ("LSTM", 4, {"direction": "bidirectional"}, True),
    ("LSTM", 4, {"direction": "reverse", "clip": 0.7, "input_forget": 1}, True),
    ("LSTM", 4, {"activations": ["HardSigmoid", "LeakyRelu", "Softsign"], "activation_alpha": [0.3, 0.2],
                 "activation_beta": [0.4]}, False),
    ("GRU", 3, {"direction": "bidirectional", "linear_before_reset": 1}, True),
    ("GRU", 3, {"direction": "reverse", "activations": ["Sigmoid", "Relu"], "clip": 2.0}, True),
    ("RNN", 1, {"direction": "bidirectional", "activations": ["Relu", "Tanh"]}, True),
]


@pytest.mark.parametrize("op, gates, attrs, lens", RECURRENT)
def test_recurrent_attributes_match_onnxruntime(op, gates, attrs, lens):
    hidden, size, dirs = 5, 6, 2 if attrs.get("direction") == "bidirectional" else 1
    consts = {"W": _r(dirs, gates * hidden, size, scale=0.5), "R": _r(dirs, gates * hidden, hidden, scale=0.5),
              "B": _r(dirs, 2 * gates * hidden, scale=0.3)}
    inputs = {"x": _r(4, 3, size), "h0": _r(dirs, 3, hidden)}
    order = ["x", "W", "R", "B", "seq" if lens else "", "h0"]
    if lens:
        consts["seq"] = SEQ
    if op == "LSTM":
        inputs["c0"] = _r(dirs, 3, hidden)
        consts["P"] = _r(dirs, 3 * hidden, scale=0.5)
        order += ["c0", "P"]
    model = one_node(op, inputs, {"hidden_size": hidden, **attrs}, opset=14, consts=consts,
                     n_out=3 if op == "LSTM" else 2, order=order)
    _vs_onnxruntime(model, inputs)


def test_pruned_lstm_runs_sparse_from_its_coded_weights(tmp_path, capsys):
    """90% pruned W and R are coded (not raw float32), run as sparse products, and match onnxruntime."""
    inputs = {"x": _r(7, 2, 64)}
    model = one_node("LSTM", inputs, {"hidden_size": 48}, opset=14,
                     consts={"W": _pruned((1, 192, 64), 0.1), "R": _pruned((1, 192, 48), 0.1, seed=2)}, n_out=3)
    dcm_model = from_onnx(model, ConvertOptions(exact=True))
    for name in ("W", "R"):
        assert dcm_model.tensors[name].encoding != C.ENC_RAW
    sess = _vs_onnxruntime(model, inputs)
    d = sess.describe()[0]  # R: CSR, and at batch < 8 the dense panels (recurrent.CSR_MAX_DENSITY_FEW)
    assert d["kernel"] == "sparse" and d["recurrent_kernel"] == "sparse+dense"
    assert d["density"] == pytest.approx(0.1, abs=0.02)
    dense = _vs_onnxruntime(model, inputs, kernels="dense")
    assert dense.describe()[0]["recurrent_kernel"] == "dense"
    path = tmp_path / "lstm.dcm"
    write(path, dcm_model)
    assert main(["inspect", str(path), "--json"]) == 0
    shown = json.dumps(json.loads(capsys.readouterr().out))
    assert '"W"' in shown and '"R"' in shown


@pytest.mark.parametrize("op, weight, x, attrs", [
    ("ConvTranspose", (32, 16, 3, 3), (1, 32, 6, 5), {"strides": [2, 2], "output_padding": [1, 0]}),
    ("Conv", (16, 8, 3, 3, 3), (1, 8, 5, 6, 4), {"pads": [1] * 6}),
])
def test_pruned_convolutions_run_sparse(op, weight, x, attrs):
    inputs = {"x": _r(*x)}
    model = one_node(op, inputs, attrs, opset=17, consts={"w": _pruned(weight, 0.08)})
    assert from_onnx(model, ConvertOptions(exact=True)).tensors["w"].encoding != C.ENC_RAW
    sess = _vs_onnxruntime(model, inputs, rtol=1e-4)
    assert sess.describe()[0]["kernel"] == "sparse"
    assert _vs_onnxruntime(model, inputs, rtol=1e-4, kernels="dense").describe()[0]["kernel"] == "dense"


def _lstm(x_shape, w_shape, r_shape, **attrs):
    return one_node("LSTM", {"x": np.zeros(x_shape, np.float32)}, {"hidden_size": r_shape[-1], **attrs}, opset=14,
                    consts={"W": np.ones(w_shape, np.float32), "R": np.ones(r_shape, np.float32)}, n_out=3)


@pytest.mark.parametrize("model, feeds", [
    (lambda: _lstm((2, 1, 3), (1, 8, 3), (1, 8, 2)), {"x": np.zeros((2, 1, 4), np.float32)}),  # input size
    (lambda: one_node("ConvTranspose", {"x": np.zeros((1, 2, 3, 3), np.float32)}, {"output_shape": [1 << 20, 1 << 20]},
                      opset=17, consts={"w": np.ones((2, 2, 3, 3), np.float32)}), None),  # absurd output_shape
    (lambda: one_node("ConvTranspose", {"x": np.zeros((1, 3, 3, 3), np.float32)}, {},
                      opset=17, consts={"w": np.ones((2, 2, 3, 3), np.float32)}), None),  # channels
    (lambda: one_node("Resize", {"x": np.zeros((1, 1, 4, 4), np.float32)}, {},
                      opset=13, consts={"roi": np.zeros(0, np.float32),
                                        "scales": np.array([1, 1, 1e6, 1e6], np.float32)}), None),  # huge output
    (lambda: one_node("Resize", {"x": np.zeros((1, 1, 4, 4), np.float32)}, {},
                      opset=13, consts={"roi": np.zeros(0, np.float32),
                                        "scales": np.array([1, 1, np.inf, 1], np.float32)}), None),
    (lambda: one_node("Resize", {"x": np.zeros((1, 1, 4, 4), np.float32)}, {},
                      opset=13, consts={"roi": np.zeros(0, np.float32), "scales": np.zeros(0, np.float32),
                                        "sizes": np.array([1, 1, -3, 2], np.int64)}), None),
    (lambda: one_node("MaxPool", {"x": np.zeros((1, 1, 4, 4, 4), np.float32)}, {"kernel_shape": [2, 2, 2]}, opset=17),
     {"x": np.zeros((1, 1, 4, 4), np.float32)}),  # rank
    (lambda: one_node("MaxPool", {"x": np.zeros((1, 1, 1000, 1000), np.float32)}, {"kernel_shape": [100, 100]},
                      opset=17, n_out=2), None),  # Indices through 8e9 window entries
])
def test_bad_inputs_are_a_dcm_error(model, feeds):
    m = model()
    feeds = feeds or {"x": np.zeros([d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim], np.float32)}
    with pytest.raises(DcmError):
        InferenceSession(from_onnx(m, ConvertOptions(exact=True))).run(None, feeds)


@pytest.mark.parametrize("w, r", [((1, 8, 3), (1, 12, 2)), ((1, 8, 3), (1, 8, 3)), ((2, 8, 3), (2, 8, 2))])
def test_mismatched_recurrent_weights_fail_at_load(w, r):
    with pytest.raises(DcmError, match="LSTM"):
        InferenceSession(from_onnx(_lstm((2, 1, 3), w, r), ConvertOptions(exact=True)))


@pytest.mark.parametrize("op, attrs, consts", [
    ("Conv", {}, {"w": np.ones((3, 2, 2, 2, 2), np.float32)}),
    ("MaxPool", {"kernel_shape": [2, 2, 2]}, {}),
])
def test_gpu_backend_runs_3d_windows(op, attrs, consts):
    pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4, 4)).astype(np.float32)
    model = from_onnx(one_node(op, {"x": x}, attrs, opset=17, consts=consts))
    want = InferenceSession(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(InferenceSession(model, device="torch-cpu").run(None, {"x": x})[0], want, rtol=1e-5)


@pytest.mark.parametrize("op, attrs, weights, match", [
    ("MaxPool", {"kernel_shape": [2, 2], "pads": [1, 1]}, {}, "pads has 2 values for 2 spatial axes"),
    ("AveragePool", {"kernel_shape": [2, 2], "strides": [1, 1, 1]}, {}, "'strides' has 3 values"),
    ("Conv", {}, {"w": np.ones((2, 3, 2, 2), np.float32), "b": np.ones(3, np.float32)}, "bias of 3 values for 2"),
    ("ConvTranspose", {"dilations": [2]}, {"w": np.ones((3, 2, 2, 2), np.float32)}, "'dilations' has 1 values"),
    ("LSTM", {"activations": ["Sigmoid", "Tanh"]},
     {"W": np.ones((1, 8, 4), np.float32), "R": np.ones((1, 8, 2), np.float32)}, "2 activations given, 3 expected"),
])
def test_malformed_attributes_are_named(op, attrs, weights, match):
    """A hand-made (or hostile) .dcm, past onnx's checks: the error names what is wrong."""
    x = np.ones((1, 3, 5, 4), np.float32) if op != "LSTM" else np.ones((2, 1, 4), np.float32)
    model = Model([ValueInfo("x", "float32", list(x.shape))], [ValueInfo("y", "float32", [])],
                  [Node(op, ["x", *weights], ["y"], attrs, "n")], {k: encode_raw(v, k) for k, v in weights.items()})
    with pytest.raises(DcmError, match=match):
        InferenceSession(model).run(None, {"x": x})


def test_inspect_kernels_with_weights_fed_at_run_time(tmp_path, capsys):
    """Run-time weights have no density to report; ``dcm inspect --kernels`` still lists their layers."""
    feeds = {"x": np.zeros((3, 1, 4), np.float32), "W": np.zeros((1, 8, 4), np.float32),
             "R": np.zeros((1, 8, 2), np.float32), "w": np.zeros((4, 2, 3, 3), np.float32)}
    for model in (one_node("LSTM", {k: feeds[k] for k in "xWR"}, {"hidden_size": 2}, opset=17, n_out=3),
                  one_node("ConvTranspose", {"x": np.zeros((1, 4, 5, 5), np.float32), "w": feeds["w"]}, opset=17)):
        path = tmp_path / "m.dcm"
        write(path, from_onnx(model))
        assert main(["inspect", str(path), "--kernels"]) == 0
        assert model.graph.node[0].op_type in capsys.readouterr().out


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_recurrent_outputs_keep_the_input_type(dtype):
    inputs = {"x": _r(3, 2, 4).astype(dtype)}
    consts = {"W": _r(1, 9, 4, scale=0.5).astype(dtype), "R": _r(1, 9, 3, scale=0.5).astype(dtype)}
    check("GRU", inputs, {"hidden_size": 3}, opset=14, consts=consts, n_out=2, rtol=2e-3 if dtype == np.float16 else 1e-6)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_conv_transpose_output_keeps_the_input_type(dtype):
    check("ConvTranspose", {"x": _r(1, 2, 3, 4).astype(dtype)}, {"strides": [2, 1]}, opset=17,
          consts={"w": _r(2, 3, 3, 2).astype(dtype)}, rtol=2e-3 if dtype == np.float16 else 1e-6)
