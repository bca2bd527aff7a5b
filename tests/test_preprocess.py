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


def test_grey_is_exactly_the_floor_of_the_channel_mean(data_dir):
    """The models were trained on floor((b + g + r) / 3); the fast path must give the same
    value for every possible sum, on a real colour screen and on a crop of it (a view with
    the frame's row stride), as the slow reference does."""
    from edge.models.roi import to_grey

    sums = np.arange(766)
    b = np.minimum(sums, 255)
    g = np.minimum(sums - b, 255)
    every_sum = np.stack([b, g, sums - b - g], axis=1).astype(np.uint8)[None]
    assert np.array_equal(to_grey(every_sum)[0], (sums // 3).astype(np.uint8))
    screen = cv2.imread(str(data_dir / "sononet/examples/4CH.tiff"))
    for image in (screen, screen[115:734, 81:874]):
        ref = (image.astype(np.uint16).sum(axis=2) // 3).astype(np.uint8)
        assert np.array_equal(to_grey(image), ref)


def test_every_model_of_a_frame_reads_one_grey_region(data_dir):
    """FrameViews greys the region once, and gives each model the view prepare() would."""
    from edge.models.preprocess import FrameViews

    image = cv2.imread(str(data_dir / "sononet/examples/4CH.tiff"))
    roi = find_roi(image)
    views = FrameViews(image, roi)
    plane, quality = PreprocessSpec(224, 288), PreprocessSpec(96, 128, normalise="unit")
    head = PreprocessSpec(160, 240, roi="full")
    for spec in (plane, quality, head):
        assert np.array_equal(views.prepare(spec), prepare(image, roi, spec))
    assert views.grey(plane) is views.grey(quality)  # made once, shared
    assert views.grey(head).shape == image.shape[:2]


def test_the_whole_frame_grey_made_around_the_region_is_the_frames_own(data_dir):
    """The head segmenter reads the whole frame after the plane model read the region; the
    whole grey is then made from the region's and the four strips around it, and must be
    exactly what greying the whole frame gives, wherever the region lies (also at an edge)."""
    from edge.models.preprocess import FrameViews
    from edge.models.roi import to_grey

    image = cv2.imread(str(data_dir / "sononet/examples/4CH.tiff"))
    h, w = image.shape[:2]
    region, whole = PreprocessSpec(224, 288), PreprocessSpec(160, 240, roi="full")
    for roi in (find_roi(image), Roi(0, 0, w, h), Roi(0, 10, 50, h - 10), Roi(w - 7, 0, 7, 9)):
        views = FrameViews(image, roi)
        views.grey(region)
        assert np.array_equal(views.grey(whole), to_grey(image)), roi
        other = FrameViews(image, roi)  # the other order: the region cut from the whole
        other.grey(whole)
        assert np.array_equal(other.grey(region), to_grey(roi.crop(image))), roi


def test_any_box_s_grey_made_around_the_region_is_the_frames_own(data_dir):
    """The segmenter reads the image's box (edge.models.biometry.image_box), which holds the
    plane model's region: its grey is made around the region's and must be exactly the box
    greyed, whether the box holds the region, lies inside it, or crosses it."""
    from edge.models.preprocess import FrameViews
    from edge.models.roi import to_grey

    image = cv2.imread(str(data_dir / "sononet/examples/4CH.tiff"))
    h, w = image.shape[:2]
    roi = find_roi(image)
    region = PreprocessSpec(224, 288)
    x0, y0 = max(0, roi.x - 40), max(0, roi.y - 30)
    holding = (x0, y0, min(w, roi.x + roi.w + 50) - x0, min(h, roi.y + roi.h + 20) - y0)
    boxes = (holding, (0, 0, w, h), (roi.x + 10, roi.y + 10, 50, 40),
             (roi.x - 20, roi.y + 20, 100, roi.h - 40))
    for box in boxes:
        views = FrameViews(image, roi)
        views.grey(region)
        x, y, bw, bh = box
        assert np.array_equal(views.box_grey(box), to_grey(image[y:y + bh, x:x + bw])), box


def test_a_box_inside_a_box_greyed_before_is_cut_from_it_with_the_same_pixels(data_dir):
    """The head's crop pass reads a box inside the image's box the first pass greyed: it is
    cut from that grey (`FrameViews.of_box`), not greyed again, and must be exactly the crop
    greyed, as a frame of its own, for every model view made from it."""
    from edge.models.preprocess import FrameViews
    from edge.models.roi import to_grey

    image = cv2.imread(str(data_dir / "sononet/examples/4CH.tiff"))
    h, w = image.shape[:2]
    roi = find_roi(image)
    views = FrameViews(image, roi)
    views.grey(PreprocessSpec(224, 288))
    outer = (max(0, roi.x - 40), max(0, roi.y - 20), min(w, roi.w + 80), min(h, roi.h + 40))
    first = views.box_grey(outer)
    head = PreprocessSpec(160, 240, roi="full")
    for box in ((outer[0] + 5, outer[1] + 7, 300, 200), (outer[0], outer[1], 120, 80),
                (roi.x - 30, roi.y + 50, 240, 160)):
        x, y, bw, bh = box
        crop = np.ascontiguousarray(image[y:y + bh, x:x + bw])
        inner = views.of_box(box)
        assert np.shares_memory(inner.grey(head), first), box  # cut, not greyed again
        assert np.array_equal(inner.grey(head), to_grey(crop)), box
        assert np.array_equal(inner.prepare(head), prepare(crop, None, head)), box


def test_the_grey_the_region_is_found_on_is_the_one_every_model_reads(data_dir):
    """On a frame where the scorer finds the region again, it greys the whole frame once,
    finds the region on that grey, and every model reads it: the very views, and the very
    region, that greying the frame for each would give."""
    from edge.models.preprocess import FrameViews
    from edge.models.roi import to_grey

    image = cv2.imread(str(data_dir / "sononet/examples/4CH.tiff"))
    grey = to_grey(image)
    roi = find_roi(grey)
    assert roi == find_roi(image)
    views = FrameViews.from_grey(image, roi, grey)
    for spec in (PreprocessSpec(224, 288), PreprocessSpec(96, 128, normalise="unit"),
                 PreprocessSpec(160, 240, roi="full")):
        assert np.array_equal(views.prepare(spec), prepare(image, roi, spec))
    assert np.shares_memory(views.grey(PreprocessSpec(224, 288)), grey)  # cut, not greyed
