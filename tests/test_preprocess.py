"""One preprocessing for teacher, student, calibration and device, driven by the manifest."""

from __future__ import annotations

from pathlib import Path

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


FULL_BLOCK = {"height": 224, "width": 288, "roi": "auto", "color": "grey_mean",
              "resize": "area", "normalise": "per_image_zscore", "scale": 1.0}


@pytest.mark.parametrize(("block", "expected"), [
    ({"height": 224}, "lacks 'width'"),
    ({**FULL_BLOCK, "resize": "nearest"}, "resize"),
    ({**FULL_BLOCK, "normalise": "imagenet"}, "normalise"),
    ({**FULL_BLOCK, "mean": 0.45}, "unknown key 'mean'"),
    # what the net was trained on is never assumed: a quality head fed z-scores for greys
    ({k: v for k, v in FULL_BLOCK.items() if k != "normalise"}, "lacks 'normalise'"),
    ({k: v for k, v in FULL_BLOCK.items() if k != "roi"}, "lacks 'roi'"),
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


HALF = 1.0  # the shipped manifests' half_res_from


@pytest.mark.parametrize("spec", [PreprocessSpec(224, 288),
                                  PreprocessSpec(96, 128, normalise="unit"),
                                  PreprocessSpec(160, 240, roi="full")])
def test_a_region_read_at_half_resolution_is_its_full_resolution_view_within_a_grey_level(
        data_dir, spec):
    """A manifest's `half_res_from` lets the device read a region from the frame's grey at
    half resolution: the region grown to even pixel edges (at most a pixel a side), and a
    view of it that differs from the full-resolution view of that same box by under a grey
    level on average. Both are what the shipped models were measured on."""
    from dataclasses import replace

    from edge.models.preprocess import FrameViews

    screen = cv2.imread(str(data_dir / "sononet/examples/4CH.tiff"))
    roi = find_roi(screen)
    assert roi.x % 2 or roi.y % 2 or roi.w % 2 or roi.h % 2  # an odd edge to grow
    half = replace(spec, half_res_from=HALF)
    box = (roi.x, roi.y, roi.w, roi.h) if spec.roi == "auto" else (0, 0, *screen.shape[1::-1])
    view, covered = FrameViews(screen, roi).resized_box(half, box)
    x, y, w, h = covered
    assert x % 2 == y % 2 == w % 2 == h % 2 == 0
    assert 0 <= box[0] - x <= 1 and 0 <= box[1] - y <= 1
    # Out by a pixel to an even edge; in by one at the screen's odd last row (735 rows).
    assert abs(x + w - (box[0] + box[2])) <= 1 and abs(y + h - (box[1] + box[3])) <= 1
    assert y + h == 734 and box[1] + box[3] == 735
    full, same = FrameViews(screen, roi).resized_box(spec, covered)
    assert same == covered and view.shape == full.shape == (spec.height, spec.width)
    diff = np.abs(view.astype(int) - full.astype(int))
    # Under a grey level on average; the sharp edges (text, the rim of the fan) differ most.
    assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 12, (diff.mean(), diff.max())
    if spec.roi == "auto":  # the region's own view: the box the model reads
        assert np.array_equal(FrameViews(screen, roi).resized(half), view)


def test_a_region_too_small_for_half_resolution_is_read_at_full_resolution_exactly(data_dir):
    """Half resolution must never upsample: a region whose half is smaller than the model's
    input, and a frame that is not 8-bit, are read exactly as without `half_res_from`."""
    from dataclasses import replace

    from edge.models.preprocess import FrameViews

    screen = cv2.imread(str(data_dir / "sononet/examples/4CH.tiff"))
    spec = PreprocessSpec(224, 288)
    small = Roi(101, 97, 2 * 288 - 3, 2 * 224 + 5)  # 573 wide: 286.5 at half, under 288
    assert np.array_equal(FrameViews(screen, small).resized(replace(spec, half_res_from=HALF)),
                          FrameViews(screen, small).resized(spec))
    wide = screen.astype(np.uint16) * 200
    roi = find_roi(screen)
    assert np.array_equal(FrameViews(wide, roi).resized(replace(spec, half_res_from=HALF)),
                          FrameViews(wide, roi).resized(spec))


def test_the_half_resolution_grey_is_made_once_per_frame_for_every_model(data_dir, monkeypatch):
    from dataclasses import replace

    from edge.models import preprocess

    screen = cv2.imread(str(data_dir / "sononet/examples/4CH.tiff"))
    greyed = []
    real = preprocess.to_grey
    monkeypatch.setattr(preprocess, "to_grey", lambda image: greyed.append(image.shape) or
                        real(image))
    views = preprocess.FrameViews(screen, find_roi(screen))
    for spec in (PreprocessSpec(224, 288), PreprocessSpec(96, 128, normalise="unit"),
                 PreprocessSpec(160, 240, roi="full")):
        views.prepare(replace(spec, half_res_from=HALF))
    assert greyed == [(screen.shape[0] // 2, screen.shape[1] // 2, 3)]


@pytest.mark.parametrize("value", [0.5, -1, 17, float("nan"), float("inf"), "1", True, None])
def test_a_bad_half_res_from_is_refused_by_name(value):
    with pytest.raises(ValueError, match="half_res_from"):
        PreprocessSpec.from_dict({**FULL_BLOCK, "half_res_from": value},
                                 "plane_student.json: preprocessing")


@pytest.mark.parametrize(("block", "expected"), [
    ({**FULL_BLOCK, "height": "224"}, "height"),
    ({**FULL_BLOCK, "width": 288.5}, "width"),
    ({**FULL_BLOCK, "width": True}, "width"),
    ({**FULL_BLOCK, "scale": float("nan")}, "scale"),
    ({**FULL_BLOCK, "scale": "255"}, "scale"),
    ({**FULL_BLOCK, "scale": 0}, "scale"),
    ({**FULL_BLOCK, "resize": {"a": 1}}, "resize"),
    ({**FULL_BLOCK, "normalise": ["z"]}, "normalise"),
])
def test_a_wrongly_typed_size_or_scale_is_refused_by_name_not_a_traceback(block, expected):
    with pytest.raises(ValueError, match=expected):
        PreprocessSpec.from_dict(block, "plane_student.json: preprocessing")


def test_a_spec_without_half_resolution_writes_the_block_it_always_did():
    """Caches and manifests are keyed on the block: a spec that does not read at half
    resolution must not change its block, and one that does must read back the same."""
    from dataclasses import replace

    plain = PreprocessSpec(224, 288)
    assert "half_res_from" not in plain.to_dict()
    half = replace(plain, half_res_from=HALF)
    assert half.to_dict()["half_res_from"] == HALF
    assert PreprocessSpec.from_dict(half.to_dict()) == half
    assert PreprocessSpec.from_dict(plain.to_dict()) == plain


def test_a_half_grey_made_on_the_capture_thread_gives_the_very_views_made_here(data_dir):
    """The capture thread may hand over the frame's half-resolution grey (`half_grey`): the
    models then read exactly what they would have made themselves; one of the wrong size
    (another frame's) is not read but made again."""
    from dataclasses import replace

    from edge.models.preprocess import FrameViews, half_grey

    screen = cv2.imread(str(data_dir / "sononet/examples/4CH.tiff"))
    roi = find_roi(screen)
    specs = [replace(s, half_res_from=HALF) for s in (
        PreprocessSpec(224, 288), PreprocessSpec(96, 128, normalise="unit"),
        PreprocessSpec(160, 240, roi="full"))]
    made = half_grey(screen)
    wrong = half_grey(screen[:-10])
    for spec in specs:
        own = FrameViews(screen, roi).prepare(spec)
        assert np.array_equal(FrameViews(screen, roi, half=made).prepare(spec), own)
        assert np.array_equal(FrameViews(screen, roi, half=wrong).prepare(spec), own)
    views = FrameViews(screen, roi, half=made)
    views.prepare(specs[0])
    assert views.half is made  # read, not made again
    assert half_grey(screen.astype(np.float32)) is None and half_grey(screen[:1]) is None


def test_the_capture_thread_makes_the_half_grey_only_for_models_that_read_it(tmp_path):
    """`Scorer.prepare_frame`: the shipped models read half resolution, so the capture
    thread makes it; models whose manifests do not would only waste the work."""
    import json
    import shutil

    from edge.config import load_settings
    from edge.models.preprocess import half_grey
    from edge.scorer import make_scorer

    models = Path(__file__).resolve().parents[1] / "models"
    shipped = make_scorer(load_settings(None, {"models": {"dir": str(models)}}))
    assert shipped.prepare_frame is half_grey
    for path in models.iterdir():
        shutil.copy(path, tmp_path / path.name)
    for manifest in tmp_path.glob("*.json"):
        raw = json.loads(manifest.read_text())
        raw["preprocessing"].pop("half_res_from", None)
        manifest.write_text(json.dumps(raw))
    plain = make_scorer(load_settings(None, {"models": {"dir": str(tmp_path)}}))
    assert plain.prepare_frame is None


def test_a_huge_bad_value_is_named_in_one_short_line():
    with pytest.raises(ValueError, match="half_res_from") as raised:
        PreprocessSpec.from_dict({**FULL_BLOCK, "half_res_from": "x" * 200_000},
                                 "plane_student.json: preprocessing")
    assert len(str(raised.value)) < 200
