"""GridSample against torch's grid_sample (whose geometry ONNX took): every mode, padding and
align_corners on 2-D inputs, nearest and linear on 3-D ones, points well outside the input included;
and a spatial transformer (affine_grid + grid_sample) exported from torch runs as torch does."""
import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.nn import functional as F  # noqa: E402

from dcm.converters import ConvertOptions, from_onnx  # noqa: E402
from dcm.runtime import InferenceSession  # noqa: E402
from dcm.runtime.cpu.grid_sample import GridSample  # noqa: E402

TORCH_MODES = {"linear": "bilinear", "nearest": "nearest", "cubic": "bicubic"}


def _kernel(mode: str, padding: str, align: bool) -> GridSample:
    kernel = GridSample.__new__(GridSample)
    kernel.attrs, kernel.mode, kernel.padding, kernel.align = {}, mode, padding, align
    return kernel


@pytest.mark.parametrize("mode, dims", [("linear", 2), ("nearest", 2), ("cubic", 2), ("linear", 3), ("nearest", 3)])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align", [False, True])
def test_against_torch(mode, dims, padding, align):
    rng = np.random.default_rng(dims)
    x = rng.standard_normal((2, 3, *([5, 6, 4][:dims]))).astype(np.float32)
    grid = rng.uniform(-1.6, 1.6, (2, *([4, 7, 3][:dims]), dims)).astype(np.float32)  # some points outside
    got = _kernel(mode, padding, align)(x, grid)[0]
    want = F.grid_sample(torch.from_numpy(x), torch.from_numpy(grid), mode=TORCH_MODES[mode], padding_mode=padding,
                         align_corners=align).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_spatial_transformer_from_torch():
    class Transformer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.theta = torch.nn.Linear(3 * 8 * 8, 6)

        def forward(self, x):
            theta = self.theta(x.flatten(1)).view(-1, 2, 3)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    torch.manual_seed(0)
    module, buf = Transformer().eval(), io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 3, 8, 8),), buf, input_names=["x"], opset_version=20, dynamo=False)
    model = from_onnx(buf.getvalue(), ConvertOptions(exact=True))
    assert "GridSample" in {n.op for n in model.nodes}
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want = module(x).numpy()
    for device in ("cpu", "torch-cpu"):
        got = InferenceSession(model, device=device).run(None, {"x": x.numpy()})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
