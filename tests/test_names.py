"""Options name layers the way users write them: module path, ONNX node name or tensor name."""
import numpy as np
import pytest

from dcm.errors import ConversionError, UnknownLayerError
from dcm.names import layer_aliases, module_path

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from dcm.converters import ConvertOptions, from_onnx  # noqa: E402
from dcm.converters.torch_in import torch_to_onnx_bytes  # noqa: E402
from dcm.encoder import decode_tensor  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU())
        self.fc1 = torch.nn.Linear(8 * 6 * 6, 32)
        self.head = torch.nn.Sequential(torch.nn.Linear(32, 10))

    def forward(self, x):
        return self.head(torch.relu(self.fc1(self.features(x).flatten(1))))


@pytest.fixture(scope="module", params=["dynamo", "torchscript"])
def onnx_bytes(request):
    """Both exporters: dynamo names nodes ``node_linear``, TorchScript ``/fc1/Gemm``."""
    return torch_to_onnx_bytes(Net().eval(), torch.zeros(1, 1, 8, 8), exporter=request.param)


def _node_of(model, weight: str) -> str:
    return next(n.name for n in model.nodes if weight in n.inputs)


def test_module_path_and_aliases():
    assert module_path("/features/features.0/Conv") == "features.0"
    assert module_path("/fc1/Gemm") == "fc1"
    assert module_path("/0/Gemm") == "0"
    assert module_path("Gemm_0") is None
    assert layer_aliases("/fc1/Gemm", "fc1.weight") == {"/fc1/Gemm", "fc1.weight", "fc1"}
    assert {"0", "0.weight"} <= layer_aliases("/0/Gemm", "0.weight_bnfolded")


def _zeros(model, tensor):
    return float((decode_tensor(model.tensors[tensor]) == 0).mean())


@pytest.mark.parametrize("form", ["module", "node", "tensor"])
def test_sparsity_accepts_every_form_of_a_layer_name(onnx_bytes, form):
    name = {"module": "fc1", "tensor": "fc1.weight",
            "node": _node_of(from_onnx(onnx_bytes, ConvertOptions(exact=True)), "fc1.weight")}[form]
    with pytest.warns(UserWarning):
        model = from_onnx(onnx_bytes, ConvertOptions(sparsity={name: 0.75}))
    assert _zeros(model, "fc1.weight") == pytest.approx(0.75, abs=0.01)
    assert _zeros(model, "head.0.weight") < 0.05  # only the named layer


def test_nested_module_path_names_a_weight_with_a_generated_name(onnx_bytes):
    with pytest.warns(UserWarning):
        model = from_onnx(onnx_bytes, ConvertOptions(sparsity={"features.0": 0.5}))
    conv = next(n for n in model.nodes if n.op == "Conv")
    assert _zeros(model, conv.inputs[1]) == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("option", ["sparsity", "code_bits", "index_bits"])
def test_a_name_matching_no_layer_is_an_error_naming_the_closest(onnx_bytes, option):
    value = {"fc9": 0.5} if option == "sparsity" else {"fc9": 4}
    with pytest.raises(ConversionError, match=r"no layer named 'fc9'.*fc1"):
        from_onnx(onnx_bytes, ConvertOptions(**{option: value}))


def test_code_bits_per_layer(onnx_bytes):
    with pytest.warns(UserWarning):
        model = from_onnx(onnx_bytes, ConvertOptions(code_bits={"conv": 8, "fc": 8, "fc1": 2}))
    w = decode_tensor(model.tensors["fc1.weight"])
    assert len(np.unique(w[w != 0])) <= 4
    head = decode_tensor(model.tensors["head.0.weight"])
    assert len(np.unique(head[head != 0])) > 4


@pytest.mark.parametrize("form", ["module", "node", "tensor"])
def test_session_kernels_accept_every_form_of_a_layer_name(onnx_bytes, form):
    model = from_onnx(onnx_bytes, ConvertOptions(exact=True))
    node = _node_of(model, "fc1.weight")
    name = {"module": "fc1", "tensor": "fc1.weight", "node": node}[form]
    for mode in ("dense", "sparse"):
        layers = {d["name"]: d.get("kernel") for d in InferenceSession(model, kernels={name: mode}).describe()}
        assert layers[node] == mode


def test_session_kernels_unknown_name_is_an_error(onnx_bytes):
    model = from_onnx(onnx_bytes, ConvertOptions(exact=True))
    with pytest.raises(UnknownLayerError, match=r"no layer named 'fc9'.*fc1"):
        InferenceSession(model, kernels={"fc9": "dense"})


def test_one_layer_named_twice_with_different_values_is_an_error(onnx_bytes):
    with pytest.raises(ConversionError, match="name the same layer"):
        from_onnx(onnx_bytes, ConvertOptions(sparsity={"fc1": 0.5, "fc1.weight": 0.7}))
    with pytest.warns(UserWarning):  # the same value twice, or a kind plus one layer, is no conflict
        from_onnx(onnx_bytes, ConvertOptions(sparsity={"fc": 0.5, "fc1": 0.5, "fc1.weight": 0.5}))
