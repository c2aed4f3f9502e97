"""Depthwise / grouped / 1x1 convolution chains run channels-last (dcm/runtime/channels_last.py,
dcm/runtime/cpu/nhwc.py): the pass puts the right nodes in a region, enters and leaves it with one
Transpose per value, and every path gives onnxruntime's results."""
import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from dcm.converters import ConvertOptions, from_onnx  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402
from dcm.runtime.channels_last import (CHANNELS_LAST_OPS, NHWC_CONV, NHWC_MEAN, NHWC_SCALED_CONV,  # noqa: E402
                                       NHWC_STEM)
from dcm.runtime.cpu import native, nhwc  # noqa: E402
from dcm.runtime.optimize import optimize  # noqa: E402
from tests.runtime.switches import switched  # noqa: E402

needs_kernels = pytest.mark.skipif(not nhwc.available(), reason="the channels-last kernels need AVX2 and a build")


class _Graph:
    """A small ONNX graph under construction: conv layers with random weights, named values."""

    def __init__(self, channels: int):
        self.rng = np.random.default_rng(0)
        self.nodes, self.inits, self.count = [], [], 0
        self.channels = channels

    def conv(self, x: str, c_in: int, c_out: int, k: int = 1, group: int = 1, density: float = 1.0, **attrs) -> str:
        self.count += 1
        w = self.rng.standard_normal((c_out, c_in // group, k, k)).astype(np.float32) * 0.3
        w *= self.rng.random(w.shape) < density
        name = f"conv{self.count}"
        self.inits += [numpy_helper.from_array(w, f"{name}.w"),
                       numpy_helper.from_array(self.rng.standard_normal(c_out).astype(np.float32), f"{name}.b")]
        if k > 1 and "pads" not in attrs and "auto_pad" not in attrs:
            attrs["pads"] = [k // 2] * 4
        self.nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [name], name=name, group=group,
                                           **attrs))
        return name

    def op(self, op: str, inputs: list[str], **attrs) -> str:
        self.count += 1
        name = f"{op.lower()}{self.count}"
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def const(self, value) -> str:
        self.count += 1
        name = f"const{self.count}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def silu(self, x: str) -> str:
        return self.op("Mul", [x, self.op("Sigmoid", [x])])

    def relu6(self, x: str) -> str:
        return self.op("Clip", [x, self.const(0.0), self.const(6.0)])

    def model(self, outputs: list[str]):
        g = helper.make_graph(self.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                              [None, self.channels, None, None])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = 8
        return m


def _inverted_residual(g: _Graph, x: str, c: int, expand: int, k: int = 3, stride: int = 1, se: bool = False) -> str:
    """MobileNetV2's block (EfficientNet's with se): 1x1 expansion, depthwise, [squeeze-excite], 1x1
    projection, the input added back at stride 1."""
    h = g.relu6(g.conv(x, c, c * expand))
    h = g.conv(h, c * expand, c * expand, k=k, group=c * expand, strides=[stride, stride])
    h = g.silu(h) if se else g.relu6(h)
    if se:
        s = g.op("ReduceMean", [h], axes=[2, 3], keepdims=1)
        s = g.op("Sigmoid", [g.conv(g.silu(g.conv(s, c * expand, 4)), 4, c * expand)])
        h = g.op("Mul", [h, s])
    y = g.conv(h, c * expand, c)
    return g.op("Add", [y, x]) if stride == 1 else y


def _mobile(se: bool = False, c: int = 8):
    g = _Graph(3)
    stem = g.conv("x", 3, c, k=3, strides=[2, 2])
    x = g.silu(stem) if se else g.relu6(stem)  # EfficientNet's SiLU: a Sigmoid and a Mul read the stem
    x = _inverted_residual(g, x, c, 4, se=se)
    x = _inverted_residual(g, x, c, 6, k=5, stride=2, se=se)
    x = _inverted_residual(g, x, c, 6, se=se)
    x = g.op("GlobalAveragePool", [g.conv(x, c, 32)])
    return g.model([g.op("Flatten", [x])])


def _run(m, x, threads=1, **options):
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    sess = InferenceSession(from_onnx(m, ConvertOptions(exact=True)), threads=threads, **options)
    for got, want in zip(sess.run(None, {"x": x}), ref):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
    return sess


def _ops(sess) -> list[str]:
    return [d["op"] for d in sess.describe() if "folded_into" not in d and "fused_into" not in d]


@needs_kernels
@pytest.mark.parametrize("se", [False, True])
@pytest.mark.parametrize("batch,threads", [(1, 1), (3, 2)])
def test_mobile_blocks_run_channels_last(se, batch, threads):
    x = np.random.default_rng(1).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    ops = _ops(_run(_mobile(se), x, threads))
    # every block's three convolutions and the last 1x1 (SE: the projections are ScaledConvs, and the
    # squeeze-excite branches' two 1x1 layers on [N, C, 1, 1] values run on the packed GEMM too)
    assert ops.count(NHWC_CONV) == (7 + 6 if se else 10) and ops.count(NHWC_SCALED_CONV) == (3 if se else 0)
    if nhwc.NhwcStemConv.available():  # the stem reads NCHW and writes into the region
        assert ops[0] == NHWC_STEM and "Conv" not in ops and "Transpose" not in ops
    else:  # the stem stays NCHW; the region is entered after it
        assert ops.count("Conv") == 1 and ops.count("Transpose") == 1  # the means leave with no copy
    assert ops.count(NHWC_MEAN) == (4 if se else 1)


@needs_kernels
@pytest.mark.parametrize("size", [4, 40])  # 4x4: the scale goes into x; 40x40: into the packed weight
def test_squeeze_excite_scale_either_way(size):
    x = np.random.default_rng(2).standard_normal((2, 3, size * 2, size * 2)).astype(np.float32)
    _run(_mobile(se=True, c=16), x)


def test_pass_needs_the_backend_ops():
    model = from_onnx(_mobile(), ConvertOptions(exact=True))
    assert not any(n.op in CHANNELS_LAST_OPS for n in optimize(model).nodes)
    ops = [n.op for n in optimize(model, internal=frozenset(CHANNELS_LAST_OPS) - {NHWC_STEM}).nodes]
    # no stem op (conv_nhwc_out not vectorized: an AVX2-only CPU): the stem stays NCHW, the region entered
    # after it; the depthwise and 1x1 layers still join
    assert ops[:3] == ["Conv", "Clip", "Transpose"] and ops.count(NHWC_CONV) == 10 and ops.count("Transpose") == 1
    ops = [n.op for n in optimize(model, internal=frozenset(CHANNELS_LAST_OPS)).nodes]
    assert ops[0] == NHWC_STEM and ops.count(NHWC_CONV) == 10 and "Transpose" not in ops  # NCHW in, NHWC out


@needs_kernels
def test_sparse_requests_and_sparse_1x1_layers_stay_nchw():
    g = _Graph(8)
    h = g.conv(g.conv("x", 8, 8, k=3, group=8), 8, 8)
    y = g.conv(h, 8, 16, density=0.03)  # 1x1 at 3%: the direct sparse kernel keeps it
    x = np.random.default_rng(3).standard_normal((1, 8, 9, 9)).astype(np.float32)
    ops = _ops(_run(g.model([y]), x))
    assert ops == ["Transpose", NHWC_CONV, NHWC_CONV, "Transpose", "Conv"]
    assert NHWC_CONV not in _ops(_run(_mobile(), np.ones((1, 3, 16, 16), np.float32), kernels="sparse"))


@needs_kernels
def test_values_read_outside_leave_the_region_once():
    """A region value that is a model output and also read by MaxPool: one Transpose back, shared."""
    g = _Graph(8)
    h = g.relu6(g.conv("x", 8, 8, k=3, group=8, strides=[2, 2], dilations=[2, 2], pads=[2, 1, 0, 2]))
    p = g.op("MaxPool", [h], kernel_shape=[2, 2])
    y = g.op("Mul", [g.conv(g.conv(h, 8, 8), 8, 8), g.const(0.5)])  # a scalar constant keeps it in the region
    x = np.random.default_rng(4).standard_normal((2, 8, 11, 12)).astype(np.float32)
    ops = _ops(_run(g.model([h, p, y]), x))
    assert ops.count("Transpose") == 3  # in; out for h (output and MaxPool); out for y (output)
    assert ops.count(NHWC_CONV) == 3 and "Mul" in ops


def _resnext(density: float = 1.0):
    """Two ResNeXt blocks (1x1, 3x3 of 8 groups, 1x1, the input added back, Relu), the second downsampling
    (its shortcut a strided 1x1 layer, 32 -> 48 channels)."""
    g = _Graph(32)
    x = "x"
    for stride, c_out in ((1, 32), (2, 48)):
        h = g.op("Relu", [g.conv(x, 32, 32)])
        h = g.op("Relu", [g.conv(h, 32, 32, k=3, group=8, density=density, strides=[stride, stride])])
        y = g.conv(h, 32, c_out)
        shortcut = g.conv(x, 32, c_out, strides=[2, 2]) if stride == 2 else x
        x = g.op("Relu", [g.op("Add", [y, shortcut])])
    return g.model([x])


@needs_kernels
@pytest.mark.parametrize("batch,threads", [(1, 1), (2, 2)])
def test_grouped_blocks_run_channels_last(batch, threads):
    x = np.random.default_rng(5).standard_normal((batch, 32, 18, 17)).astype(np.float32)
    sess = _run(_resnext(), x, threads)
    grouped = [d for d in sess.describe() if d.get("kernel") == "grouped"]
    assert len(grouped) == 2 and all(d["op"] == NHWC_CONV and d["groups"] == 8 for d in grouped)
    ops = _ops(sess)  # the strided shortcut too: one region, entered and left once
    assert "Conv" not in ops and ops.count(NHWC_CONV) == 7 and ops.count("Transpose") == 2


def _pruned_pointwise_block(density: float):
    """A pruned RegNet-style block at 128 channels: 1x1 -> Relu, a 3x3 layer of 8 groups -> Clip, 1x1 + the
    input -> Relu."""
    g = _Graph(128)
    h = g.op("Relu", [g.conv("x", 128, 144, density=density)])
    h = g.relu6(g.conv(h, 144, 128, k=3, group=8))
    return g.model([g.op("Relu", [g.op("Add", [g.conv(h, 128, 128, density=density), "x"])])])


@needs_kernels
@pytest.mark.parametrize("threads", [1, 2])
def test_pruned_1x1_layers_run_the_sparse_kernel_channels_last(threads):
    """1x1 layers of 128 inputs at 25% kept multiply their pixels on the compiled sparse kernel (ReLU in
    it; the residual then ReLU one pass after), and match onnxruntime, Inf and all; a dense request, or
    few pixels where the dense form wins, keeps the packed GEMM."""
    from dcm.runtime.cpu.nhwc import NhwcConv

    x = np.random.default_rng(8).standard_normal((2, 128, 24, 20)).astype(np.float32)
    x[0, 3, 2, 2] = np.inf  # a pruned weight must not hide it: NaN where a dense product has one
    sess = _run(_pruned_pointwise_block(0.25), x, threads)
    layers = [d for d in sess.describe() if d["op"] == NHWC_CONV and d["kernel"] != "grouped"]
    assert len(layers) == 2 and all(d["kernel"] == "sparse" and d["density"] < 0.3 for d in layers)
    convs = [k for k in sess._kernels if isinstance(k, NhwcConv) and not k.grouped]
    assert all(k._takes_sparse(960, None) and not k._takes_sparse(200, None) for k in convs)  # 960: x's pixels
    dense = _run(_pruned_pointwise_block(0.25), x, threads, kernels="dense")
    assert sum(d.get("kernel") == "dense" for d in dense.describe() if d["op"] == NHWC_CONV) == 2
    assert not any(d.get("kernel") == "sparse" for d in _run(_pruned_pointwise_block(0.6), x, threads).describe())


@needs_kernels
def test_a_shortcut_on_an_entered_value_joins_the_region():
    """RegNet's first block: its 1x1 layer and its strided 1x1 shortcut both read the stem's output. The
    shortcut reads the value the region enters anyway, so it joins, the block's Add with it, and then
    the stem writes into the region: no Transpose at all."""
    g = _Graph(3)
    x = g.op("Relu", [g.conv("x", 3, 16, k=3, strides=[2, 2])])
    h = g.op("Relu", [g.conv(x, 16, 32)])
    h = g.op("Relu", [g.conv(h, 32, 32, k=3, group=4, strides=[2, 2])])
    y = g.op("Relu", [g.op("Add", [g.conv(h, 32, 32), g.conv(x, 16, 32, strides=[2, 2])])])
    x = np.random.default_rng(7).standard_normal((2, 3, 20, 18)).astype(np.float32)
    ops = _ops(_run(g.model([g.op("GlobalAveragePool", [y])]), x))
    assert "Transpose" not in ops and "Conv" not in ops
    if nhwc.NhwcStemConv.available():
        assert ops[0] == NHWC_STEM


@needs_kernels
def test_pruned_grouped_layers_stay_nchw():
    """At 10% the grouped layers keep the NCHW direct sparse kernel."""
    x = np.random.default_rng(6).standard_normal((1, 32, 18, 17)).astype(np.float32)
    sess = _run(_resnext(density=0.1), x)
    assert not any(d.get("kernel") == "grouped" for d in sess.describe())


def test_a_lone_depthwise_layer_stays_nchw():
    """In and out would cost two Transposes for one convolution."""
    g = _Graph(8)
    y = g.conv("x", 8, 8, k=3, group=8)
    model = from_onnx(g.model([y]), ConvertOptions(exact=True))
    assert [n.op for n in optimize(model, internal=frozenset(CHANNELS_LAST_OPS)).nodes] == ["Conv"]


@needs_kernels
@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_depthwise_auto_pad(auto_pad):
    g = _Graph(16)
    y = g.conv(g.conv("x", 16, 16, k=3, group=16, strides=[2, 2], auto_pad=auto_pad), 16, 8)
    x = np.random.default_rng(5).standard_normal((1, 16, 10, 7)).astype(np.float32)
    assert _ops(_run(g.model([y]), x)).count(NHWC_CONV) == 2


@needs_kernels
def test_exit_cancels_a_models_own_transpose():
    """ConvNeXt: depthwise, then the model's NCHW -> NHWC Transpose: the region's exit and it cancel."""
    g = _Graph(16)
    h = g.conv("x", 16, 16, k=7, group=16)
    t = g.op("Transpose", [h], perm=[0, 2, 3, 1])
    y = g.op("Transpose", [g.op("Relu", [t])], perm=[0, 3, 1, 2])
    x = np.random.default_rng(6).standard_normal((2, 16, 9, 9)).astype(np.float32)
    info = _run(g.model([y]), x).describe()
    assert [d["op"] for d in info if "folded_into" not in d and "fused_into" not in d] == [
        "Transpose", NHWC_CONV, "Transpose"]  # in, the convolution (with the Relu), the model's way back
    assert {"op": "Transpose", "name": t, "folded_into": "(cancelled)"} in info


@needs_kernels
def test_convnext_blocks_add_their_residual_channels_last():
    """ConvNeXt: depthwise 7x7, the model's Transpose to NHWC, a channel MLP, its Transpose back to NCHW,
    the block input added back. The Add joins the region and reads the MLP's NHWC output as it is: the
    model's Transposes back go, and two blocks run with one Transpose in and one out."""
    g = _Graph(16)
    x = "x"
    for _ in range(2):
        t = g.op("Transpose", [g.conv(x, 16, 16, k=7, group=16)], perm=[0, 2, 3, 1])
        w = g.const(np.random.default_rng(8).standard_normal((16, 16)) * 0.2)
        back = g.op("Transpose", [g.op("Relu", [g.op("MatMul", [t, w])])], perm=[0, 3, 1, 2])
        x = g.op("Add", [x, back])
    x_in = np.random.default_rng(9).standard_normal((2, 16, 9, 8)).astype(np.float32)
    info = _run(g.model([x]), x_in).describe()
    ops = [d["op"] for d in info if "folded_into" not in d and "fused_into" not in d]
    assert ops.count(NHWC_CONV) == 2 and ops.count("Add") == 2 and ops.count("Transpose") == 2
    assert sum(d.get("folded_into") == "(channels-last)" for d in info) == 2


@needs_kernels
def test_portable_product_after_load():
    """The packed GEMM switched off after the session was made: numpy's product, same results."""
    x = np.random.default_rng(7).standard_normal((2, 3, 24, 24)).astype(np.float32)
    m = _mobile(se=True, c=16)
    sess = InferenceSession(from_onnx(m, ConvertOptions(exact=True)), threads=1)
    want = sess.run(None, {"x": x})[0]
    with switched(native.set_gemm_simd, False):
        got = sess.run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@needs_kernels
@pytest.mark.parametrize("threads", [1, 2])
def test_kept_plans_give_the_first_calls_bits(threads):
    """A layer keeps each input shape's plan (nhwc.NhwcConv._keep_plan) after its first call: later calls
    of that shape, residual and ReLU6 included, give the same bits as the first; another shape gets its
    own plan; a float64 or strided x of a planned shape is refused by the compiled kernel and runs in
    full, to the same values."""
    from dcm.runtime.cpu.nhwc import NhwcConv

    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 12, 10)).astype(np.float32)
    sess = _run(_mobile(), x, threads)
    first = sess.run(None, {"x": x})[0]
    layers = {id(k): k for k in sess._kernels if isinstance(k, NhwcConv)}.values()
    planned = [k for k in layers if k._plans]
    assert {p[0] for k in planned for p in k._plans.values()} == {"gemm", "depthwise"}
    assert any(k.residual_add is not None or k.epilogue is not None for k in planned)
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], first)
    other = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    want = sess.run(None, {"x": other})[0]
    assert all(len(k._plans) == 2 for k in planned)
    _run(_mobile(), other, threads)  # the same values as onnxruntime with plans for both shapes kept
    np.testing.assert_array_equal(sess.run(None, {"x": other})[0], want)

    layer = next(k for k in planned if any(p[0] == "gemm" for p in k._plans.values()))
    shape = next(s for s, p in layer._plans.items() if p[0] == "gemm")
    h = rng.standard_normal(shape).astype(np.float32)
    (y,) = layer(h)
    np.testing.assert_array_equal(layer(h)[0], y)
    np.testing.assert_allclose(layer(h.astype(np.float64))[0], y, rtol=1e-6, atol=1e-6)
    wide = np.zeros(shape[:3] + (2 * shape[3],), np.float32)
    wide[..., ::2] = h
    np.testing.assert_array_equal(layer(wide[..., ::2])[0], y)


def _basic_blocks(c: int, density: float = 1.0):
    """A CIFAR ResNet's stem and two basic blocks (3x3, ReLU, 3x3, the input added back, ReLU), the second
    strided with a 1x1 shortcut; then the mean and a Flatten."""
    g = _Graph(3)
    x = g.op("Relu", [g.conv("x", 3, c, k=3)])
    h = g.op("Relu", [g.conv(x, c, c, k=3, density=density)])
    x = g.op("Relu", [g.op("Add", [g.conv(h, c, c, k=3, density=density), x])])
    h = g.op("Relu", [g.conv(x, c, 2 * c, k=3, strides=[2, 2], density=density)])
    x = g.op("Relu", [g.op("Add", [g.conv(h, 2 * c, 2 * c, k=3, density=density), g.conv(x, c, 2 * c, strides=[2, 2])])])
    return g.model([g.op("Flatten", [g.op("GlobalAveragePool", [x])])])


@needs_kernels
@pytest.mark.parametrize("batch,threads", [(1, 1), (3, 2)])
def test_small_dense_layers_run_channels_last(batch, threads):
    """16 and 32 channels (at most DENSE_MAX_CHANNELS): every 3x3 layer joins the region (conv_nhwc_out
    with one group, the residual Adds and ReLUs fused) and the results match onnxruntime; 32 and 64
    channels: the 64-channel layers stay NCHW; at 30% kept all of them do."""
    from dcm.runtime.channels_last import DENSE_MAX_CHANNELS

    x = np.random.default_rng(4).standard_normal((batch, 3, 20, 18)).astype(np.float32)
    sess = _run(_basic_blocks(16), x, threads)
    ops = _ops(sess)
    assert "Conv" not in ops and "Transpose" not in ops and ops.count(NHWC_CONV) == 5
    assert [d["kernel"] for d in sess.describe() if d["op"] == NHWC_CONV].count("direct") == 4
    assert 2 * 32 > DENSE_MAX_CHANNELS >= 32
    assert _ops(_run(_basic_blocks(32), x, threads)).count("Conv") == 2  # the 64-channel 3x3 layers
    assert _ops(_run(_basic_blocks(16, density=0.3), x, threads)).count(NHWC_CONV) == 0


@needs_kernels
@pytest.mark.parametrize("batch,threads", [(1, 1), (2, 2)])
@pytest.mark.parametrize("simd", [True, False])
def test_patch_layers_run_channels_last(batch, threads, simd):
    """ConvNeXt's stage boundaries: 2x2 stride-2 layers of any width join the region between depthwise
    blocks, 40 -> 64 on conv_nhwc_out and 64 -> 176 (past PATCH_DIRECT_MAX_OUTPUTS) as one product over
    its gathered patches, an odd plane's last row and column dropped as the NCHW layer drops them; a
    ReLU fused; the results match onnxruntime, with the packed GEMM switched off after load too."""
    from dcm.runtime.cpu.nhwc import PATCH_DIRECT_MAX_OUTPUTS

    g = _Graph(40)
    h = g.op("Relu", [g.conv(g.conv("x", 40, 40, k=3, group=40), 40, 40)])
    h = g.conv(h, 40, 64, k=2, strides=[2, 2], pads=[0] * 4)
    h = g.conv(g.conv(h, 64, 64, k=3, group=64), 64, 64)
    h = g.op("Relu", [g.conv(h, 64, 176, k=2, strides=[2, 2], pads=[0] * 4)])
    y = g.conv(g.conv(h, 176, 176, k=3, group=176), 176, 16)
    m = g.model([g.op("Flatten", [g.op("GlobalAveragePool", [y])]), h])
    x = np.random.default_rng(5).standard_normal((batch, 40, 19, 22)).astype(np.float32)
    sess = _run(m, x, threads)
    ops = _ops(sess)
    assert "Conv" not in ops and ops.count("Transpose") == 2  # in once; out once, for the second output
    kinds = {d["name"]: d for d in sess.describe() if d["op"] == NHWC_CONV}
    assert 64 <= PATCH_DIRECT_MAX_OUTPUTS < 176
    assert kinds["conv4"]["kernel"] == "direct" and kinds["conv7"].get("product") == "gemm_packed over patches"
    if not simd:
        ref = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})]
        with switched(native.set_gemm_simd, False):
            for got, want in zip(sess.run(None, {"x": x}), ref[0]):
                np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
