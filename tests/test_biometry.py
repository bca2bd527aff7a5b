"""Head biometry from a probability map, checked on real HC18 annotations.

The ground truth is HC18's own: the sonographer's ellipse (recovered from the annotation's
outline) and the CSV's HC. The maps fed to `measure_probability` are what a perfect model
would output at a model-like 160x240: each pixel's share inside the filled ellipse.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.models.biometry import (
    GA_OUT_OF_RANGE,
    HEAD_CUT_OFF,
    NO_HEAD,
    OK,
    PIXEL_SIZE_ABSURD,
    PIXEL_SIZE_MISSING,
    POOR_FIT,
    SEVERAL_HEADS,
    BiometrySettings,
    head_shape,
    measure_probability,
    ramanujan_perimeter,
)
from wire.dating import hadlock_ga_weeks, hadlock_hc_mm, hadlock_hc_range_mm

MODEL_HW = (160, 240)


def read_hc18_csv(data_dir: Path) -> list[dict]:
    with open(data_dir / "hc18" / "training_set_pixel_size_and_HC.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def annotation_ellipse(data_dir: Path, filename: str) -> tuple[tuple, tuple[int, int]]:
    """The sonographer's ellipse: a direct ellipse fit to every pixel of the drawn outline."""
    path = data_dir / "hc18" / "annotations" / filename.replace(".png", "_Annotation.png")
    outline = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    ys, xs = np.nonzero(outline > 127)
    fit = cv2.fitEllipseDirect(np.stack([xs, ys], axis=1).astype(np.float32))
    return fit, outline.shape


def coverage_map(fit: tuple, frame_hw: tuple[int, int], out_hw: tuple[int, int] = MODEL_HW,
                 box: tuple[int, int, int, int] | None = None, supersample: int = 4) -> np.ndarray:
    """Each output pixel's share inside the filled ellipse `fit` (cv2 format, frame pixels),
    for a map of `out_hw` covering `box` of the frame (default: the whole frame)."""
    (cx, cy), (w, h), angle = fit
    bx, by, bw, bh = box if box is not None else (0, 0, frame_hw[1], frame_hw[0])
    oh, ow = out_hw
    sy = by + (np.arange(oh * supersample) + 0.5) / (oh * supersample) * bh - 0.5
    sx = bx + (np.arange(ow * supersample) + 0.5) / (ow * supersample) * bw - 0.5
    x, y = np.meshgrid(sx, sy)
    t = math.radians(angle)
    u = (x - cx) * math.cos(t) + (y - cy) * math.sin(t)
    v = -(x - cx) * math.sin(t) + (y - cy) * math.cos(t)
    inside = (u / (w / 2)) ** 2 + (v / (h / 2)) ** 2 <= 1.0
    return inside.reshape(oh, supersample, ow, supersample).mean(axis=(1, 3)).astype(np.float32)


def ellipse_map(cx: float, cy: float, a: float, b: float, angle: float,
                frame_hw: tuple[int, int] = (540, 800)) -> np.ndarray:
    return coverage_map(((cx, cy), (2 * a, 2 * b), angle), frame_hw)


def test_the_mask_of_the_annotated_ellipse_reproduces_the_csv_hc(data_dir):
    rows = read_hc18_csv(data_dir)[::10]  # 50 real images over the whole HC range
    diffs, axes = [], []
    for row in rows:
        fit, frame_hw = annotation_ellipse(data_dir, row["filename"])
        pixel = float(row["pixel size(mm)"])
        result = measure_probability(coverage_map(fit, frame_hw), (0, 0, frame_hw[1], frame_hw[0]),
                                     frame_hw, pixel)
        assert result.status in (OK, GA_OUT_OF_RANGE), (row["filename"], result.status)
        diffs.append(result.hc_mm - float(row["head circumference (mm)"]))
        # OFD and BPD are the axes of the same ellipse, outer-to-outer.
        axes.append((result.ofd_mm - max(fit[1]) * pixel, result.bpd_mm - min(fit[1]) * pixel))
    diffs = np.abs(np.array(diffs))
    assert len(diffs) >= 30
    assert diffs.mean() < 1.0  # the bar; measured about 0.01 mm
    assert diffs.mean() < 0.1 and diffs.max() < 0.5
    assert np.abs(np.array(axes)).max() < 0.3


def test_the_head_is_measured_the_same_on_a_capped_copy_of_a_large_frame(data_dir):
    """The contour is found on the map upsampled to at most 320 pixels along the box, and
    the ellipse scaled back: HC18's 800-pixel frames and a 1920-pixel screen grab of the
    same head measure as on the frame's own pixels, within hundredths of a millimetre."""
    full = BiometrySettings(measure_max_side_px=0)
    for row in read_hc18_csv(data_dir)[5::60]:
        fit, frame_hw = annotation_ellipse(data_dir, row["filename"])
        pixel = float(row["pixel size(mm)"])
        prob = coverage_map(fit, frame_hw)
        box = (0, 0, frame_hw[1], frame_hw[0])
        capped = measure_probability(prob, box, frame_hw, pixel)
        exact = measure_probability(prob, box, frame_hw, pixel, full)
        assert capped.status == exact.status, row["filename"]
        if exact.hc_mm is None:
            continue
        assert abs(capped.hc_mm - exact.hc_mm) < 0.05
        assert np.allclose(capped.ellipse[:2], exact.ellipse[:2], atol=0.5)
        big_hw = (round(frame_hw[0] * 2.4), round(frame_hw[1] * 2.4))  # a 1920-wide grab
        big = measure_probability(prob, (0, 0, big_hw[1], big_hw[0]), big_hw, pixel / 2.4)
        assert abs(big.hc_mm - exact.hc_mm) < 0.1, row["filename"]


def test_the_ellipse_is_reported_in_frame_pixels_when_the_map_covers_a_region(data_dir):
    row = read_hc18_csv(data_dir)[100]
    fit, frame_hw = annotation_ellipse(data_dir, row["filename"])
    (cx, cy), (w, h), _ = fit
    box = (int(cx - w), int(cy - h), int(2 * w), int(2 * h))  # generous, inside the frame
    box = (max(0, box[0]), max(0, box[1]), min(box[2], frame_hw[1] - max(0, box[0])),
           min(box[3], frame_hw[0] - max(0, box[1])))
    result = measure_probability(coverage_map(fit, frame_hw, (128, 128), box), box, frame_hw,
                                 float(row["pixel size(mm)"]))
    assert result.status in (OK, GA_OUT_OF_RANGE)
    assert abs(result.ellipse[0] - cx) < 0.5 and abs(result.ellipse[1] - cy) < 0.5
    assert abs(result.hc_mm - float(row["head circumference (mm)"])) < 1.0


def test_the_contour_is_sub_pixel_not_pixel_corners():
    """A circle of radius 40.3 px at the map's own resolution: HC within 0.2% of 2 pi r."""
    prob = coverage_map(((100.0, 80.0), (80.6, 80.6), 0.0), (160, 200), (160, 200))
    result = measure_probability(prob, (0, 0, 200, 160), (160, 200), 1.0)
    assert result.hc_mm == pytest.approx(2 * math.pi * 40.3, rel=0.002)
    # The same disc thresholded to whole pixels first loses that precision.
    binary = (prob >= 0.5).astype(np.float32)
    coarse = measure_probability(binary, (0, 0, 200, 160), (160, 200), 1.0)
    assert abs(coarse.hc_mm - 2 * math.pi * 40.3) > abs(result.hc_mm - 2 * math.pi * 40.3)


def test_ramanujan_perimeter():
    assert ramanujan_perimeter(10.0, 10.0) == pytest.approx(2 * math.pi * 10.0, rel=1e-12)
    # An ellipse of semi-axes 2 and 1: 9.688448220547675 (complete elliptic integral).
    assert ramanujan_perimeter(2.0, 1.0) == pytest.approx(9.688448220547675, rel=1e-9)
    assert ramanujan_perimeter(5.0, 0.0) == pytest.approx(20.0, rel=0.001)  # a flat ellipse
    assert ramanujan_perimeter(0.0, 0.0) == 0.0


def test_hadlock_ga_from_hc():
    # The formula: 8.96 + 0.540 * 17.0 + 0.0003 * 17.0**3 = 19.6139 weeks.
    assert hadlock_ga_weeks(170.0) == pytest.approx(19.6139, abs=1e-4)
    assert hadlock_ga_weeks(175.0) == pytest.approx(20.0178, abs=1e-4)
    # Hadlock's published HC table: 17.0 cm at 19.5 weeks, 34.6 cm at 40 weeks.
    assert hadlock_ga_weeks(170.0) == pytest.approx(19.5, abs=0.2)
    assert hadlock_ga_weeks(346.0) == pytest.approx(40.0, abs=0.2)
    # Outside the study's 14-42 menstrual weeks there is no estimate.
    low, high = hadlock_hc_range_mm()
    assert low == pytest.approx(89.4, abs=0.1) and high == pytest.approx(357.7, abs=0.1)
    assert hadlock_ga_weeks(low + 0.1) is not None and hadlock_ga_weeks(high - 0.1) is not None
    for hc in (44.3, low - 0.1, high + 0.1, 400.0, 0.0, -5.0, float("nan")):
        assert hadlock_ga_weeks(hc) is None


def test_the_hc_for_an_age_is_hadlocks_formula_run_backwards():
    """One inverse serves the age range and the screening card's expected HC."""
    for weeks in (14.0, 19.5, 22.0, 30.25, 40.0, 42.0):
        assert hadlock_ga_weeks(hadlock_hc_mm(weeks)) == pytest.approx(weeks, abs=1e-9)
    assert hadlock_hc_mm(19.5) == pytest.approx(168.6, abs=0.2)  # Hadlock's table: 17.0 cm


def test_a_small_head_gets_hc_but_no_age(data_dir):
    row = read_hc18_csv(data_dir)[0]  # 000_HC.png, HC 44.3 mm: about 11 weeks
    fit, frame_hw = annotation_ellipse(data_dir, row["filename"])
    result = measure_probability(coverage_map(fit, frame_hw), (0, 0, 800, 540), frame_hw,
                                 float(row["pixel size(mm)"]))
    assert result.status == GA_OUT_OF_RANGE and result.ga_weeks is None
    assert result.hc_mm == pytest.approx(44.3, abs=0.5) and result.measured


def test_an_empty_map_is_no_head():
    result = measure_probability(np.zeros(MODEL_HW, np.float32), (0, 0, 800, 540), (540, 800),
                                 0.1)
    assert result.status == NO_HEAD and result.hc_mm is None and result.ellipse is None
    speck = np.zeros(MODEL_HW, np.float32)
    speck[80, 120] = 1.0  # one pixel of "head" is no head
    assert measure_probability(speck, (0, 0, 800, 540), (540, 800), 0.1).status == NO_HEAD


def test_two_heads_are_several_heads():
    prob = np.maximum(ellipse_map(250, 270, 140, 110, 10), ellipse_map(580, 270, 130, 100, 0))
    result = measure_probability(prob, (0, 0, 800, 540), (540, 800), 0.1)
    assert result.status == SEVERAL_HEADS and result.hc_mm is None
    # A small stray blob beside one head is not a second head.
    prob = np.maximum(ellipse_map(350, 270, 200, 160, 10), ellipse_map(700, 60, 20, 15, 0))
    assert measure_probability(prob, (0, 0, 800, 540), (540, 800), 0.1).status == OK


def test_a_head_cut_off_by_the_edge_is_flagged_not_measured_short():
    whole = measure_probability(ellipse_map(400, 270, 200, 160, 0), (0, 0, 800, 540),
                                (540, 800), 0.1)
    assert whole.status == OK
    for cx, cy in ((150, 270), (400, 90), (690, 400)):
        result = measure_probability(ellipse_map(cx, cy, 200, 160, 20), (0, 0, 800, 540),
                                     (540, 800), 0.1)
        assert result.status == HEAD_CUT_OFF and result.hc_mm is None, (cx, cy)


FAN = np.array([[300, 20], [500, 20], [700, 520], [100, 520]], np.float32)  # a sector's outline


def in_fan(prob: np.ndarray) -> np.ndarray:
    """What a segmenter sees of a head under the fan: nothing where there is no image."""
    fan = np.zeros((540, 800), np.uint8)
    cv2.fillConvexPoly(fan, FAN.astype(np.int32), 1)
    small = cv2.resize(fan, prob.shape[::-1], interpolation=cv2.INTER_AREA)
    return prob * small


def test_a_head_cut_by_the_side_of_the_fan_is_flagged_when_the_outline_is_known():
    """On a scanner's screen the fan ends inside the frame: the box's edges never see a head
    pushed past its side, the image's outline does."""
    box, frame = (0, 0, 800, 540), (540, 800)
    whole = head_shape(in_fan(ellipse_map(400, 300, 150, 120, 0)), box, frame, outline=FAN)
    assert whole.status == OK
    for cx in (200, 600):  # past the left side, past the right side
        cut = head_shape(in_fan(ellipse_map(cx, 300, 150, 120, 0)), box, frame, outline=FAN)
        assert cut.status == HEAD_CUT_OFF, cx
        assert measure_probability(in_fan(ellipse_map(cx, 300, 150, 120, 0)), box, frame,
                                   0.1).status != HEAD_CUT_OFF  # the box alone is blind


def test_the_real_hc18_head_that_runs_past_the_image_is_cut_off(data_dir):
    """186_HC.png's annotated ellipse runs 14 px past the image edge: the only one of the 499
    by more than 3 px. A mask of what is visible must not give a short HC."""
    rows = {row["filename"]: row for row in read_hc18_csv(data_dir)}
    fit, frame_hw = annotation_ellipse(data_dir, "186_HC.png")
    result = measure_probability(coverage_map(fit, frame_hw), (0, 0, frame_hw[1], frame_hw[0]),
                                 frame_hw, float(rows["186_HC.png"]["pixel size(mm)"]))
    assert result.status == HEAD_CUT_OFF and result.hc_mm is None


def test_a_shape_that_is_no_ellipse_is_not_measured():
    prob = np.zeros(MODEL_HW, np.float32)
    prob[30:130, 40:70] = 1.0  # an L: a plausible area, no head shape
    prob[100:130, 40:200] = 1.0
    result = measure_probability(prob, (0, 0, 800, 540), (540, 800), 0.1)
    assert result.status == POOR_FIT and result.hc_mm is None


def test_a_missing_or_absurd_pixel_size_gives_no_numbers():
    prob = ellipse_map(400, 270, 200, 160, 0)
    for missing in (None, 0.0, float("nan")):
        result = measure_probability(prob, (0, 0, 800, 540), (540, 800), missing)
        assert result.status == PIXEL_SIZE_MISSING and result.hc_mm is None
    for absurd in (5.0, 0.001, -0.1):
        result = measure_probability(prob, (0, 0, 800, 540), (540, 800), absurd)
        assert result.status == PIXEL_SIZE_ABSURD and result.hc_mm is None
    narrow = BiometrySettings(pixel_size_min_mm=0.2, pixel_size_max_mm=0.3)
    assert measure_probability(prob, (0, 0, 800, 540), (540, 800), 0.1,
                               narrow).status == PIXEL_SIZE_ABSURD


def test_the_threshold_comes_from_the_settings():
    prob = 0.6 * ellipse_map(400, 270, 200, 160, 0)
    assert measure_probability(prob, (0, 0, 800, 540), (540, 800), 0.1).status == OK
    strict = BiometrySettings(probability_threshold=0.7)
    assert measure_probability(prob, (0, 0, 800, 540), (540, 800), 0.1,
                               strict).status == NO_HEAD


def test_to_dict_is_rounded_and_json_ready():
    result = measure_probability(ellipse_map(400, 270, 200, 160, 30), (0, 0, 800, 540),
                                 (540, 800), 0.123456789)
    data = result.to_dict()
    assert data["status"] == OK and set(data) >= {"hc_mm", "bpd_mm", "ofd_mm", "ga_weeks",
                                                  "ellipse", "pixel_size_mm"}
    assert data["hc_mm"] == round(data["hc_mm"], 2) and len(data["ellipse"]) == 5
    assert data["ellipse"][4] == pytest.approx(30.0, abs=0.5)
    assert data["ofd_mm"] == pytest.approx(400 * 0.123456789, abs=0.2)
    assert data["bpd_mm"] == pytest.approx(320 * 0.123456789, abs=0.2)


def test_the_threshold_is_the_segmenter_manifests_own(tmp_path):
    import json

    from edge.models.biometry import check_segmenter, settings_for_model
    from edge.models.manifest import ModelError, read_manifest

    def manifest(**changes):
        raw = {"name": "head_segmenter", "version": "1", "task": "head_segmentation",
               "file": "head_segmenter.tflite", "sha256": "0" * 64, "labels": ["head"],
               "input": {"shape": [1, 1, 160, 240], "dtype": "int8"},
               "output": {"shape": [1, 1, 160, 240], "kind": "logits"},
               "preprocessing": {"height": 160, "width": 240, "roi": "full",
                                 "color": "grey_mean", "resize": "area",
                                 "normalise": "per_image_zscore", "scale": 1.0},
               "biometry": {"probability_threshold": 0.4}, **changes}
        path = tmp_path / "head_segmenter.json"
        path.write_text(json.dumps(raw))
        return read_manifest(path)

    base = BiometrySettings(cutoff_margin_fraction=0.05)
    settings = settings_for_model(manifest(), base)
    assert settings.probability_threshold == 0.4 and settings.cutoff_margin_fraction == 0.05
    assert settings_for_model(manifest(biometry={}), base).probability_threshold == 0.5
    for bad in ({"task": "plane_classification"},
                {"biometry": {"probability_threshold": 1.5}},
                {"biometry": {"probability_threshold": "high"}}, {"biometry": [0.5]}):
        with pytest.raises(ModelError, match="head_segmenter.json"):
            check_segmenter(manifest(**bad))


def test_a_box_outside_the_frame_is_a_caller_error():
    with pytest.raises(ValueError, match="not inside the 800x540 frame"):
        measure_probability(np.zeros(MODEL_HW, np.float32), (10, 0, 800, 540), (540, 800), 0.1)


def test_the_passes_are_the_segmenter_manifests_own(tmp_path):
    """Flip and crop refinement belong to the model: read from its manifest's `biometry`
    block, checked at load with one line naming the field, absent = one plain pass."""
    import json

    from edge.models.biometry import Passes, check_segmenter, passes_for_model
    from edge.models.manifest import ModelError, read_manifest

    def manifest(block):
        raw = {"name": "head_segmenter", "version": "1", "task": "head_segmentation",
               "file": "head_segmenter.tflite", "sha256": "0" * 64, "labels": ["head"],
               "input": {"shape": [1, 1, 160, 240], "dtype": "int8"},
               "output": {"shape": [1, 1, 160, 240], "kind": "logits"},
               "preprocessing": {"height": 160, "width": 240, "roi": "full",
                                 "color": "grey_mean", "resize": "area",
                                 "normalise": "per_image_zscore", "scale": 1.0},
               "biometry": block}
        path = tmp_path / "head_segmenter.json"
        path.write_text(json.dumps(raw))
        return read_manifest(path)

    both = manifest({"probability_threshold": 0.5, "test_time_flip": True,
                     "refine_crop_margin": 0.2, "refine_max_zoom": 1.2})
    check_segmenter(both)
    assert passes_for_model(both) == Passes(test_time_flip=True, refine_crop_margin=0.2,
                                            refine_max_zoom=1.2)
    assert passes_for_model(both).runs() == 4
    assert passes_for_model(manifest({"probability_threshold": 0.5})) == Passes()
    assert Passes().runs() == 1 and passes_for_model(None) == Passes()
    for bad, field in (({"test_time_flip": "yes"}, "test_time_flip"),
                       ({"test_time_flip": 1}, "test_time_flip"),
                       ({"refine_crop_margin": -0.1}, "refine_crop_margin"),
                       ({"refine_crop_margin": 2.0}, "refine_crop_margin"),
                       ({"refine_crop_margin": True}, "refine_crop_margin"),
                       ({"refine_crop_margin": "0.2"}, "refine_crop_margin"),
                       ({"refine_max_zoom": 0.5}, "refine_max_zoom"),
                       ({"refine_max_zoom": 50}, "refine_max_zoom"),
                       ({"refine_max_zoom": None}, "refine_max_zoom")):
        with pytest.raises(ModelError, match=f"head_segmenter.json: biometry.{field}"):
            check_segmenter(manifest(bad))


def test_the_second_pass_crop_holds_the_head_at_the_models_aspect(data_dir):
    """The crop around a real annotated head: the whole head plus the margin, the model's
    width/height ratio, inside the frame; a head that fills the frame gets the frame."""
    from edge.models.biometry import refine_box

    for name in ("010_2HC.png", "100_HC.png", "250_HC.png", "600_HC.png"):
        fit, (fh, fw) = annotation_ellipse(data_dir, name)
        (cx, cy), (w, h), angle = fit
        a, b = max(w, h) / 2, min(w, h) / 2
        ellipse = (cx, cy, a, b, angle if w >= h else angle + 90)
        x, y, bw, bh = refine_box(ellipse, (0, 0, fw, fh), 0.2, 1.5)
        assert 0 <= x and 0 <= y and x + bw <= fw and y + bh <= fh, name
        t = math.radians(ellipse[4])
        ex, ey = math.hypot(a * math.cos(t), b * math.sin(t)), math.hypot(a * math.sin(t),
                                                                           b * math.cos(t))
        # The head and (where the frame allows) a margin of 20% of its half-size around it.
        assert x <= max(0, cx - 1.2 * ex) + 1 and x + bw >= min(fw, cx + 1.2 * ex) - 1, name
        assert y <= max(0, cy - 1.2 * ey) + 1 and y + bh >= min(fh, cy + 1.2 * ey) - 1, name
        if bh < fh and bw < fw:
            assert bw / bh == pytest.approx(1.5, abs=0.02), name
    # A head as tall as the frame: the crop is the frame's height and as wide as allowed.
    assert refine_box((400, 270, 300, 260, 90), (0, 0, 800, 540), 0.2, 1.5)[1::2] == (0, 540)
    # A small head (the smallest annotated one, 000_HC) is magnified at most max_zoom: the
    # crop keeps at least 1/1.2 of the frame's height, still around the head.
    fit, (fh, fw) = annotation_ellipse(data_dir, "000_HC.png")
    (cx, cy), (w, h), angle = fit
    small = (cx, cy, max(w, h) / 2, min(w, h) / 2, angle if w >= h else angle + 90)
    assert refine_box(small, (0, 0, fw, fh), 0.2, 1.5)[3] < fh / 1.5
    x, y, bw, bh = refine_box(small, (0, 0, fw, fh), 0.2, 1.5, max_zoom=1.2)
    assert bh >= fh / 1.2 - 1 and x <= cx <= x + bw and y <= cy <= y + bh
