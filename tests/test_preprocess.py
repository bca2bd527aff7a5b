"""One preprocessing for teacher, student, calibration and device, driven by the manifest."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge.models.preprocess import PreprocessSpec, prepare
from edge.models.roi import Roi, find_roi


def test_sononet_preprocessing_as_documented(data_dir):
    """Crop, grey mean, 224x288, per-image z-score times 255: the README's recipe."""
    image = cv2.cvtColor(cv2.imread(str(data_dir / "sononet/examples/4CH.tiff")),
                         cv2.COLOR_BGR2RGB)
    spec = PreprocessSpec(224, 288, scale=255.0, resize="linear")
    x = prepare(image, Roi(81, 115, 874 - 81, 734 - 115), spec)
    assert x.shape == (1, 1, 224, 288) and x.dtype == np.float32
    grey = np.mean(image[115:734, 81:874], axis=2).astype(np.uint8)
    ref = cv2.resize(grey, (288, 224), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    ref = 255.0 * (ref - ref.mean()) / ref.std()
    assert np.allclose(x[0, 0], ref, atol=1e-3)
    assert abs(float(x.mean())) < 1e-2 and abs(float(x.std()) - 255.0) < 0.5


def test_the_region_is_what_the_model_sees(data_dir):
    image = cv2.imread(str(data_dir / "hc18/images/100_HC.png"))
    spec = PreprocessSpec(112, 144)
    roi = find_roi(image)
    screen = np.zeros((900, 1400, 3), np.uint8)
    screen[200:200 + image.shape[0], 300:300 + image.shape[1]] = image
    moved = Roi(roi.x + 300, roi.y + 200, roi.w, roi.h)
    assert np.array_equal(prepare(image, roi, spec), prepare(screen, moved, spec))


def test_a_flat_frame_gives_zeros_not_nan():
    x = prepare(np.full((480, 640, 3), 7, np.uint8), None, PreprocessSpec(112, 144))
    assert np.isfinite(x).all() and not x.any()


@pytest.mark.parametrize(("block", "expected"), [
    ({"height": 224}, "width"),
    ({"height": 224, "width": 288, "resize": "nearest"}, "resize"),
    ({"height": 224, "width": 288, "normalise": "imagenet"}, "normalise"),
    ({"height": 224, "width": 288, "mean": 0.45}, "unknown key 'mean'"),
])
def test_a_bad_preprocessing_block_is_refused_by_name(block, expected):
    with pytest.raises(ValueError, match=expected):
        PreprocessSpec.from_dict(block, "plane_student.json: preprocessing")
