"""NonMaxSuppression against onnx's reference on random boxes (both box formats, thresholds given or
not, tied scores), and the errors bad shapes give."""
import numpy as np
import pytest

from dcm.converters import from_onnx
from dcm.errors import ExecutionError
from dcm.runtime import InferenceSession
from tests.runtime.opcheck import check, one_node


def _boxes(rng, batches: int, n: int, center: int) -> np.ndarray:
    xy = rng.uniform(0, 10, (batches, n, 2))
    wh = rng.uniform(0.5, 4, (batches, n, 2))
    if center:
        return np.concatenate([xy, wh], -1).astype(np.float32)
    corners = np.concatenate([xy[..., ::-1], (xy + wh)[..., ::-1]], -1)  # [y1, x1, y2, x2]
    corners[:, ::3] = corners[:, ::3][..., [2, 3, 0, 1]]  # some boxes given by the other diagonal
    return corners.astype(np.float32)


@pytest.mark.parametrize("center", [0, 1])
@pytest.mark.parametrize("score_threshold", [None, 0.3])
def test_against_the_reference(center, score_threshold):
    rng = np.random.default_rng(center)
    boxes = _boxes(rng, 2, 60, center)
    scores = rng.uniform(0, 1, (2, 3, 60)).astype(np.float32)
    scores[:, :, 10:20] = 0.5  # ties: kept in index order
    consts = {"m": np.array([7], np.int64), "iou": np.array([0.4], np.float32)}
    if score_threshold is not None:
        consts["s"] = np.array([score_threshold], np.float32)
    check("NonMaxSuppression", {"boxes": boxes, "scores": scores}, {"center_point_box": center}, opset=11,
          consts=consts)


@pytest.mark.parametrize("boxes, scores, message", [
    (np.zeros((1, 5, 3), np.float32), np.zeros((1, 1, 5), np.float32), r"boxes of shape \[1, 5, 3\]"),
    (np.zeros((1, 5, 4), np.float32), np.zeros((1, 1, 4), np.float32), r"scores of shape \[1, 1, 4\]"),
])
def test_bad_shapes_name_the_problem(boxes, scores, message):
    model = one_node("NonMaxSuppression", {"boxes": boxes, "scores": scores}, opset=11)
    model.graph.output[0].type.tensor_type.elem_type = 7
    with pytest.raises(ExecutionError, match=message):
        InferenceSession(from_onnx(model)).run(None, {"boxes": boxes, "scores": scores})


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("transform", ["half_pixel", "output_half_pixel"])
@pytest.mark.parametrize("ratio", [0, 2])
def test_roi_align_against_the_reference(mode, transform, ratio):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 12, 10)).astype(np.float32)
    corner = rng.uniform(-4, 16, (9, 2))
    rois = np.concatenate([corner, corner + rng.uniform(0, 12, (9, 2))], 1).astype(np.float32)  # some past the map
    rois[0] = [3, 3, 3, 3]  # a point
    batch = rng.integers(0, 2, 9).astype(np.int64)
    check("RoiAlign", {"x": x, "rois": rois, "batch": batch},
          {"mode": mode, "coordinate_transformation_mode": transform, "sampling_ratio": ratio, "output_height": 3,
           "output_width": 4, "spatial_scale": 0.75}, opset=16)
