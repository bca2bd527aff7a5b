"""Head biometry: HC, BPD, OFD and gestational age from the head segmenter's probability map.

No I/O here: a probability map and where it lies in the frame in, a `Biometry` out.

Measurement. The map (the model's resolution) is upsampled bilinearly to the box it covers
(the region found by `edge.models.roi` for an "auto" model; for a "full" one the whole frame,
or on a scanner's screen the image's outline framed at the model's aspect, `image_box`),
thresholded, and split into connected components. The largest is the head; a second one
larger than `several_heads_fraction` of it means the frame shows two heads (twins, or a bad
segmentation) and nothing is measured.
The head's outer 0.5 iso-contour is found at sub-pixel precision, marching-squares style: on
every pixel edge that crosses the boundary the crossing is placed by linear interpolation of
the probabilities, so the contour does not snap to pixel corners. An ellipse is fitted to
those points (`cv2.fitEllipseDirect`, least squares constrained to an ellipse) in frame
pixels.

Calipers. HC is the perimeter of that ellipse (Ramanujan's second approximation) times the
pixel size. OFD is its major axis and BPD its minor axis, both outer-to-outer on the HC
ellipse: HC18's sonographers drew the ellipse on the outer edge of the skull, and the model
learns that ellipse. Hadlock's BPD is measured outer-to-inner (leading edge to leading
edge), so the BPD here is a little larger than a BPD placed by Hadlock's convention and must
not be fed into Hadlock's BPD formulas.

Gestational age. Hadlock et al. 1984 (below), from HC alone. Outside the ages the formula
was fitted on (14-42 menstrual weeks, i.e. HC about 89-358 mm) the age is withheld: the
status is `ga_out_of_range` and HC, BPD and OFD are still reported.

A head cut off by the edge of the box (the fitted ellipse runs past it by more than
`cutoff_margin_fraction` of the semi-major axis, or the head lies along the edge for more
than `edge_run_fraction` of its perimeter) is `head_cut_off`, never a short HC. Where the
caller knows the image's outline on the screen (`Roi.outline`: a sector's fan inside the
scanner's black screen), the same two rules also hold against that outline: a head pushed
past the side of the fan is cut off although the frame goes on around it.

Passes. The segmenter runs once on the frame, or, as its manifest's `biometry` block says
(`Passes`), also on the mirrored frame (the two logit maps averaged) and/or a second time on
a crop around the head the first pass found (`refine_crop_margin`): the crop keeps the
model's aspect ratio and the head plus that margin, so a small or mid-size head gets more
model pixels per mm. Measured on 264 validation frames, the HC error is about 0.6 model
pixels of radius for every head size; the mm error of big heads is larger because their
frames have larger pixels (0.23 vs 0.13 mm), not because of the threshold or the fit.

Settings live in one place each: the probability threshold and the passes belong to the
model and come from the segmenter manifest's `biometry` block (`settings_for_model`,
`passes_for_model`); every other number is the device's and comes from the `[biometry]`
section of the device config, whose defaults are the defaults of `BiometrySettings` below.
The pixel size comes from the caller: the HC18-format CSV in batch mode, the probe's
calibration (`[biometry] pixel_size_mm`) live.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from edge.models.manifest import Manifest, ModelError
from edge.models.preprocess import FrameViews, normalise
from edge.models.roi import Roi
from edge.models.runtime import Model
from wire.dating import hadlock_ga_weeks

TASK = "head_segmentation"

OK = "ok"
GA_OUT_OF_RANGE = "ga_out_of_range"  # HC, BPD and OFD measured; the age formula does not apply
NO_HEAD = "no_head"
SEVERAL_HEADS = "several_heads"
HEAD_CUT_OFF = "head_cut_off"
POOR_FIT = "poor_fit"  # the head region is not ellipse-shaped: the segmentation is not trusted
PIXEL_SIZE_MISSING = "pixel_size_missing"
PIXEL_SIZE_ABSURD = "pixel_size_absurd"
# The box reads each frame's scale from the scanner's depth ruler (`[biometry]
# ruler_tick_mm`) and found none to trust on this frame: measured on no guess.
RULER_UNREAD = "ruler_unread"
# The probe's fan on this screen is wider than it is tall (`edge.models.fan`): the picture
# is stretched sideways, so a head would measure too wide whatever the scale.
SCREEN_STRETCHED = "screen_stretched"
# Statuses with the numbers filled in.
MEASURED = (OK, GA_OUT_OF_RANGE)
STATUSES = (OK, GA_OUT_OF_RANGE, NO_HEAD, SEVERAL_HEADS, HEAD_CUT_OFF, POOR_FIT,
            PIXEL_SIZE_MISSING, PIXEL_SIZE_ABSURD, RULER_UNREAD, SCREEN_STRETCHED)
# The statuses that refuse every head for the box's set-up, not the scan: what the exam card
# and the report tell the midwife to have fixed (the district's words for them are its own,
# central/dashboard/config.py SETUP_REFUSALS, checked against these by a test).
SET_UP_STATUSES = (PIXEL_SIZE_MISSING, PIXEL_SIZE_ABSURD, RULER_UNREAD, SCREEN_STRETCHED)
# Those of them that are a verdict on the set-up, the same on every frame until it changes
# (no calibration, a wrong one, the picture stretched), unlike a ruler read on each frame,
# where one frame in many may miss it: the page says these on their first frame.
STEADY_SET_UP_STATUSES = (PIXEL_SIZE_MISSING, PIXEL_SIZE_ABSURD, SCREEN_STRETCHED)
# Each refusal in the installer's words, as the box's terminal says it (the exam summary of
# `sonoedge exam` and `run`, `edge.exam.session.format_exam`): the meaning of the page's
# card (edge/web/i18n "bio.*"), which the page words its own way.
REFUSAL_WORDS = {
    NO_HEAD: "no head found",
    SEVERAL_HEADS: "more than one head-like region",
    HEAD_CUT_OFF: "head cut off by the image's edge",
    POOR_FIT: "head outline unclear",
    PIXEL_SIZE_MISSING: "no calibration (pixel size unknown)",
    PIXEL_SIZE_ABSURD: "bad calibration (pixel size impossible)",
    RULER_UNREAD: "depth scale not read",
    SCREEN_STRETCHED: "picture out of shape"}
# What undoes each set-up refusal, said after the words above: the meaning of the page's
# "exam.not_measured_*", with the settings an installer sets. `{set_scale}`: how the caller
# takes a pixel size (`format_exam`'s `set_scale`: a flag, or the config's key).
SET_UP_FIXES = {
    PIXEL_SIZE_MISSING: "the pixel size is unknown{set_scale}",
    PIXEL_SIZE_ABSURD: "the pixel size is impossible for a scanner (outside [biometry] "
                       "pixel_size_min_mm to pixel_size_max_mm): check it{set_scale}",
    RULER_UNREAD: "the depth scale beside the image could not be read: keep it on the "
                  "screen, uncovered, or set the box up for this scanner ([biometry] "
                  "ruler_tick_mm, its tick in mm, or 0 to use a pixel size)",
    SCREEN_STRETCHED: "the picture is stretched or squeezed sideways, so every head would "
                      "measure wrong; the 'screen shape' warning names the setting that "
                      "undoes it"}
# ... and for a stretched picture where its heads named the setting that undoes it (biometry
# `stretch_setting`, `ExamTally.stretch_setting`): that setting, as the page's card names it
# ("exam.not_measured_screen_stretched_setting"), so the terminal does not send the installer
# up a long log for the warning that names it.
STRETCH_SETTING_FIX = ("the picture is stretched or squeezed sideways, so every head would "
                       "measure wrong; set [source] stretch = {setting:g}{frame} to undo it, "
                       "or set the grabber to keep the scanner's own shape")
# `{frame}` above, where the heads named the grabber's frame size the setting is for (the
# card's and the report's "for the video grabber's 720x576 frames"): a setting made for one
# size misleads on another (`edge.models.fan.another_size`)
STRETCH_FRAME_FOR = " (for the grabber's {frame} frames)"
# Where a head's scale came from (its biometry's `scale`, an exam's `biometry.scale`): the
# frame's own (the demo clip, a CSV of pixel sizes), the scanner's depth ruler read on the
# frame, or the calibration `[biometry] pixel_size_mm`, which holds for one depth alone.
SCALE_FRAME, SCALE_RULER, SCALE_CALIBRATION = "frame", "ruler", "calibration"
HEAD_SCALES = (SCALE_FRAME, SCALE_RULER, SCALE_CALIBRATION)
# Whether the picture's shape had been checked from the probe's fan (`edge.models.fan`)
# when a head was measured through the video grabber (its biometry's `shape`, an exam's
# `biometry.shape`): only a frame that shows the whole fan can check it, and a scanner
# kept zoomed in may never show one, so a head measured before any verdict is said to be
# measured unchecked rather than passed as checked.
SHAPE_CHECKED, SHAPE_UNCHECKED = "checked", "unchecked"
HEAD_SHAPES = (SHAPE_CHECKED, SHAPE_UNCHECKED)



@dataclass(frozen=True)
class BiometrySettings:
    """Every number of the measurement. See the module docstring for who sets which."""

    probability_threshold: float = 0.5  # the model's: manifest `biometry.probability_threshold`
    min_head_area_fraction: float = 0.005  # a head smaller than this share of the box: no head
    several_heads_fraction: float = 0.25  # a 2nd component this large vs the largest: two heads
    cutoff_margin_fraction: float = 0.02  # ellipse past the box edge by > this x semi-major axis
    edge_run_fraction: float = 0.08  # head along the box edge for > this share of its perimeter
    min_fit_iou: float = 0.85  # head region vs fitted ellipse; below: poor_fit
    # A region whose ellipse is narrower than this (minor / major axis) has no skull's
    # proportions: no head. The fetal cephalic index (BPD / OFD) is 0.70-0.86 (Hadlock et
    # al., AJR 1981;137:83-85), and segmenter 1.4.0's ellipses on all 937 HC18 heads
    # measure 0.669 at the least (0.69 on the 264 validation heads). A thorax or an abdomen
    # side-on, which a segmenter may outline as one oval, measured 0.34 and 0.41 (segmenter
    # 1.3.0) and 0.488 (1.4.0, FETAL_PLANES_DB Patient01600) on FETAL_PLANES_DB frames:
    # 0.45 let 1.4.0's thorax through, 0.55 keeps 0.12 below the narrowest real head.
    # Judged before the cut-off rules, so a sliver of a head at the screen's edge is also
    # no head.
    min_axis_ratio: float = 0.55
    # The head is found on the probability map upsampled to at most this many pixels along
    # the box's long side, and the ellipse scaled back to the frame: the sub-pixel contour
    # of a 240-pixel map gains nothing from 800 or 1920 frame pixels, but costs their square.
    # 320 rather than 480: on the 264 validation heads the shipped net's HC moved by
    # +0.0004 +- 0.0005 mm (paired), the statuses not at all, and the measurement took
    # 1.11 ms instead of 2.06 (median, this box).
    measure_max_side_px: int = 320
    # A "full" segmenter sees the image's outline framed at its aspect ratio, not the whole
    # screen, where that box covers less than this share of the frame (a scanner's screen
    # around the image); above it the frame is the image, as on the HC18 frames the net
    # learned (937 of them: 932 at 0.8 or more, the lowest 0.69). 0: always the frame.
    frame_image_below: float = 0.75
    pixel_size_min_mm: float = 0.01  # plausible mm per pixel (HC18 spans 0.049-0.393)
    pixel_size_max_mm: float = 1.0


@dataclass(frozen=True)
class Passes:
    """How the segmenter runs on one frame: the model's own choice, from its manifest's
    `biometry` block, measured on validation patients by `quantize.build_segmenter` and
    paid for in latency in `make bench`."""

    test_time_flip: bool = False  # also run the mirrored frame; average the two logit maps
    refine_crop_margin: float = 0.0  # > 0: second pass on the head + this share around it
    # >= 1: the crop magnifies the box at most this much (the largest scale the net was
    # trained on; a small head zoomed further is under-segmented); 0: no limit
    refine_max_zoom: float = 0.0

    def runs(self) -> int:
        """Model invocations per frame."""
        return (2 if self.test_time_flip else 1) * (2 if self.refine_crop_margin > 0 else 1)


MAX_CROP_MARGIN = 1.0  # a margin of a whole head each side is no longer a crop
MAX_ZOOM_LIMIT = 10.0  # a zoom limit above this is a mistake, not a limit


@dataclass(frozen=True)
class Biometry:
    status: str  # "ok" or a reason code from STATUSES
    hc_mm: float | None = None
    bpd_mm: float | None = None  # minor axis of the HC ellipse, outer-to-outer
    ofd_mm: float | None = None  # major axis of the HC ellipse, outer-to-outer
    ga_weeks: float | None = None  # Hadlock 1984 from HC; None outside 14-42 weeks
    # (cx, cy, semi_axis_major, semi_axis_minor, angle_deg) in frame pixels (pixel centres
    # at integers; the angle of the major axis from +x towards +y, in [0, 180)).
    ellipse: tuple[float, float, float, float, float] | None = None
    pixel_size_mm: float | None = None

    @property
    def measured(self) -> bool:
        return self.hc_mm is not None

    def to_dict(self) -> dict:
        def r(value: float | None, digits: int) -> float | None:
            return None if value is None else round(float(value), digits)

        return {"status": self.status, "hc_mm": r(self.hc_mm, 2), "bpd_mm": r(self.bpd_mm, 2),
                "ofd_mm": r(self.ofd_mm, 2), "ga_weeks": r(self.ga_weeks, 2),
                "ellipse": None if self.ellipse is None else [round(v, 2) for v in self.ellipse],
                "pixel_size_mm": r(self.pixel_size_mm, 6)}


def ramanujan_perimeter(a: float, b: float) -> float:
    """Perimeter of an ellipse with semi-axes a and b (Ramanujan's second approximation)."""
    a, b = float(a), float(b)
    if a + b <= 0:
        return 0.0
    h = ((a - b) / (a + b)) ** 2
    return math.pi * (a + b) * (1.0 + 3.0 * h / (10.0 + math.sqrt(4.0 - 3.0 * h)))


def _subpixel_boundary(prob: np.ndarray, inside: np.ndarray, threshold: float) -> np.ndarray:
    """Points (x, y) where the iso-contour `threshold` crosses the boundary of `inside`.

    On every horizontal or vertical pair of neighbouring pixels with one pixel inside and
    one outside, the crossing is placed by linear interpolation of the two probabilities.
    """
    points = []
    for axis in (1, 0):
        a = [slice(None), slice(None)]
        b = [slice(None), slice(None)]
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        ins_a, ins_b = inside[tuple(a)], inside[tuple(b)]
        crossed = ins_a != ins_b
        # np.nonzero of a 2-D mask is 8x slower than of its flat copy; the same order.
        rows, cols = np.divmod(np.flatnonzero(crossed), crossed.shape[1])
        if rows.size == 0:
            continue
        pa = prob[tuple(a)][rows, cols]
        pb = prob[tuple(b)][rows, cols]
        denom = pb - pa
        safe = np.where(np.abs(denom) < 1e-9, 1.0, denom)
        t = np.clip(np.where(np.abs(denom) < 1e-9, 0.5, (threshold - pa) / safe), 0.0, 1.0)
        if axis == 1:
            points.append(np.stack([cols + t, rows.astype(np.float64)], axis=1))
        else:
            points.append(np.stack([cols.astype(np.float64), rows + t], axis=1))
    if not points:
        return np.zeros((0, 2))
    return np.concatenate(points)


def _over_threshold_window(prob: np.ndarray, threshold: float, bw: int,
                           bh: int) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) in box pixels holding every upsampled pixel over `threshold`, with
    a margin of two pixels, or None when no pixel of the map reaches it.

    A bilinearly upsampled pixel is a convex combination of its neighbours at the map's own
    resolution, so it can only pass the threshold next to a map pixel that does: labelling
    components in this window instead of the whole box gives the same components for a
    fraction of the work (the head is often a quarter of a frame).
    """
    over = prob >= threshold - 1e-4
    rows = np.flatnonzero(over.any(axis=1))  # the rows and columns holding any: a tenth of
    if rows.size == 0:  # the time of every pixel's index (np.nonzero)
        return None
    cols = np.flatnonzero(over.any(axis=0))
    h, w = prob.shape

    def span(lo: int, hi: int, size: int, full: int) -> tuple[int, int]:
        scale = full / size  # box pixels per map pixel
        start = math.floor((lo - 0.5) * scale - 0.5) - 2
        stop = math.ceil((hi + 1.5) * scale - 0.5) + 3
        return max(0, start), min(full, stop)

    x0, x1 = span(int(cols[0]), int(cols[-1]), w, bw)
    y0, y1 = span(int(rows[0]), int(rows[-1]), h, bh)
    return x0, y0, x1, y1


def _extent(a: float, b: float, angle_deg: float) -> tuple[float, float]:
    """Half-width and half-height of the ellipse's bounding box."""
    t = math.radians(angle_deg)
    return (math.hypot(a * math.cos(t), b * math.sin(t)),
            math.hypot(a * math.sin(t), b * math.cos(t)))


OUTLINE_BAND_PX = 2  # head pixels this close inside the image's outline lie along it


def _past_outline(outline: np.ndarray, ellipse: tuple[float, float, float, float, float],
                  filled: np.ndarray, origin: tuple[int, int]) -> tuple[float, float]:
    """How far the ellipse runs past the image's outline (pixels; <= 0: inside it), and how
    long the head region lies along or over that outline (pixels of run).

    `ellipse` is (cx, cy, a, b, angle) and `outline` (N, 2), both in box pixels; `filled`
    is the head region in the window whose top-left box pixel is `origin`. The run counts
    the head's pixels less than OUTLINE_BAND_PX inside the outline or past it, per pixel of
    band width: a head resting against the fan's side for a long stretch is cut by it.
    """
    cx, cy, a, b, angle = ellipse
    t = np.linspace(0.0, 2.0 * math.pi, 72, endpoint=False)
    ca, sa = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    xs = cx + a * np.cos(t) * ca - b * np.sin(t) * sa
    ys = cy + a * np.cos(t) * sa + b * np.sin(t) * ca
    polygon = outline.reshape(-1, 1, 2)
    past = max(-cv2.pointPolygonTest(polygon, (float(x), float(y)), True)
               for x, y in zip(xs, ys, strict=True))
    inner = np.zeros((filled.shape[0] + 2 * OUTLINE_BAND_PX, filled.shape[1] + 2 * OUTLINE_BAND_PX),
                     np.uint8)
    shifted = outline - (origin[0] - OUTLINE_BAND_PX, origin[1] - OUTLINE_BAND_PX)
    cv2.fillConvexPoly(inner, np.round(shifted * 16).astype(np.int32), 1, cv2.LINE_8, 4)
    side = 2 * OUTLINE_BAND_PX + 1
    inner = cv2.erode(inner, np.ones((side, side), np.uint8))
    inner = inner[OUTLINE_BAND_PX:-OUTLINE_BAND_PX, OUTLINE_BAND_PX:-OUTLINE_BAND_PX]
    run = np.count_nonzero(filled & (inner == 0)) / OUTLINE_BAND_PX
    return float(past), float(run)


def pixel_size_status(pixel_size_mm: float | None,
                      settings: BiometrySettings = BiometrySettings()) -> str | None:
    """None for a usable pixel size, else why not: unknown (None, NaN, 0) or implausible.

    Checked before anything else: without a scale no image can give a measurement.
    """
    if pixel_size_mm is None or not math.isfinite(pixel_size_mm) or pixel_size_mm == 0:
        return PIXEL_SIZE_MISSING
    if not settings.pixel_size_min_mm <= pixel_size_mm <= settings.pixel_size_max_mm:
        return PIXEL_SIZE_ABSURD
    return None


def measure_probability(prob: np.ndarray, box: tuple[int, int, int, int],
                        frame_shape: tuple[int, ...], pixel_size_mm: float | None,
                        settings: BiometrySettings = BiometrySettings()) -> Biometry:
    """Biometry from a head probability map `prob` (H, W) covering `box` = (x, y, w, h).

    `frame_shape` is the frame's (height, width, ...) and the box must lie inside it. See
    the module docstring for the method and the statuses. The pixel size is checked first.
    """
    bad_scale = pixel_size_status(pixel_size_mm, settings)
    if bad_scale is not None:
        finite = pixel_size_mm is not None and math.isfinite(pixel_size_mm)
        return Biometry(bad_scale, pixel_size_mm=pixel_size_mm if finite else None)
    return biometry_of(head_shape(prob, box, frame_shape, settings), pixel_size_mm)


@dataclass(frozen=True)
class HeadShape:
    """The head the segmenter found, in frame pixels, before any scale is applied.

    Biometry measures it when the pixel size is known; the quality audit judges it on every
    frame that may show a head (is it whole, large enough, ellipse-shaped, centred), with or
    without a pixel size. Values are None where the step that computes them was not reached.
    """

    status: str  # OK, NO_HEAD, SEVERAL_HEADS, HEAD_CUT_OFF or POOR_FIT
    box: tuple[int, int, int, int]  # (x, y, w, h): the region the map covers
    ellipse: tuple[float, float, float, float, float] | None = None  # as Biometry.ellipse
    area_fraction: float | None = None  # head region (over threshold) / box area
    overshoot: float | None = None  # ellipse past the box edge / semi-major axis (<= 0: inside)
    edge_run: float | None = None  # head along the box edge / ellipse perimeter
    fit_iou: float | None = None  # head region vs its fitted ellipse


def head_shape(prob: np.ndarray, box: tuple[int, int, int, int],
               frame_shape: tuple[int, ...],
               settings: BiometrySettings = BiometrySettings(),
               outline: np.ndarray | None = None) -> HeadShape:
    """The head in a probability map `prob` (H, W) covering `box`; see the module docstring.

    `outline`: the image's outline, a convex polygon (N, 2) of (x, y) in the box's pixels,
    or None where the box's own edges are the image's. A box longer than
    `measure_max_side_px` is measured on a scaled copy of itself, and the ellipse scaled
    back: every other figure of the shape is a ratio and needs no scaling.
    """
    prob = np.asarray(prob, dtype=np.float32)
    prob = prob.reshape(prob.shape[-2:]) if prob.ndim > 2 else prob
    frame_h, frame_w = int(frame_shape[0]), int(frame_shape[1])
    bx, by, bw, bh = (int(v) for v in box)
    if bx < 0 or by < 0 or bx + bw > frame_w or by + bh > frame_h:
        raise ValueError(f"box {tuple(box)} is not inside the {frame_w}x{frame_h} frame")
    box = (bx, by, bw, bh)
    longest = max(bw, bh)
    if longest > settings.measure_max_side_px > 0:
        sw = max(2, round(bw * settings.measure_max_side_px / longest))
        sh = max(2, round(bh * settings.measure_max_side_px / longest))
        if outline is not None:  # the same pixel-centre convention as the ellipse below
            outline = (np.asarray(outline, np.float64) + 0.5) * (sw / bw, sh / bh) - 0.5
        small = head_shape(prob, (0, 0, sw, sh), (sh, sw), settings, outline)
        if small.ellipse is None:
            return replace(small, box=box)
        sx, sy = bw / sw, bh / sh
        cx, cy, major, minor, angle = small.ellipse
        # Pixel centres sit at integers: the edge of pixel 0 is at -0.5 in both grids.
        ellipse = ((cx + 0.5) * sx - 0.5 + bx, (cy + 0.5) * sy - 0.5 + by,
                   major * (sx + sy) / 2, minor * (sx + sy) / 2, angle)
        return replace(small, box=box, ellipse=ellipse)
    if bw < 2 or bh < 2 or prob.size == 0:
        return HeadShape(NO_HEAD, box)
    if not np.isfinite(prob).all():  # one pass where nan_to_num makes four
        prob = np.nan_to_num(prob, nan=0.0)
    threshold = settings.probability_threshold
    window = _over_threshold_window(prob, threshold, bw, bh)
    if window is None:
        return HeadShape(NO_HEAD, box)
    if prob.shape != (bh, bw):
        prob = cv2.resize(prob, (bw, bh), interpolation=cv2.INTER_LINEAR)
    wx0, wy0, wx1, wy1 = window
    mask = (prob[wy0:wy1, wx0:wx1] >= threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return HeadShape(NO_HEAD, box)
    stats[:, cv2.CC_STAT_LEFT] += wx0
    stats[:, cv2.CC_STAT_TOP] += wy0
    areas = stats[1:, cv2.CC_STAT_AREA]
    order = np.argsort(areas)[::-1]
    largest = int(areas[order[0]])
    area_fraction = largest / float(bw * bh)
    if largest < settings.min_head_area_fraction * bw * bh:
        return HeadShape(NO_HEAD, box, area_fraction=area_fraction)
    if len(order) > 1 and areas[order[1]] > settings.several_heads_fraction * largest:
        return HeadShape(SEVERAL_HEADS, box, area_fraction=area_fraction)
    # From here on, work in the head's bounding box plus one pixel (the outside neighbours).
    k = 1 + int(order[0])
    left, top, width, height = (int(v) for v in stats[k, :4])
    x0, y0 = max(0, left - 1), max(0, top - 1)
    x1, y1 = min(bw, left + width + 1), min(bh, top + height + 1)
    head = (labels[y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0] == k).astype(np.uint8)
    # The outer outline only: holes inside the head (a dark ventricle) are not its edge.
    contours, _ = cv2.findContours(head, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(head)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    points = _subpixel_boundary(prob[y0:y1, x0:x1], filled.astype(bool), threshold)
    if len(points) < 12:
        return HeadShape(NO_HEAD, box, area_fraction=area_fraction)
    points += (x0, y0)
    (cx, cy), (w, h), fit_angle = cv2.fitEllipseDirect(points.astype(np.float32))
    if not all(math.isfinite(v) for v in (cx, cy, w, h, fit_angle)) or min(w, h) <= 0:
        return HeadShape(POOR_FIT, box, area_fraction=area_fraction)
    major, minor = (w / 2.0, h / 2.0) if w >= h else (h / 2.0, w / 2.0)
    angle = (fit_angle if w >= h else fit_angle + 90.0) % 180.0
    ellipse = (cx + bx, cy + by, major, minor, angle)
    if minor < settings.min_axis_ratio * major:
        return HeadShape(NO_HEAD, box, area_fraction=area_fraction)

    # Cut off: the ellipse runs past the box edge (pixel edges at -0.5 and size - 0.5),
    # or the head lies along the edge for a long run.
    ex, ey = _extent(major, minor, angle)
    over = max(-0.5 - (cx - ex), (cx + ex) - (bw - 0.5), -0.5 - (cy - ey), (cy + ey) - (bh - 0.5))
    along_edge = ((int(filled[0].sum()) if y0 == 0 else 0)
                  + (int(filled[-1].sum()) if y1 == bh else 0)
                  + (int(filled[:, 0].sum()) if x0 == 0 else 0)
                  + (int(filled[:, -1].sum()) if x1 == bw else 0))
    if outline is not None and len(outline) >= 3:
        past, run = _past_outline(np.asarray(outline, np.float32), (cx, cy, major, minor, angle),
                                  filled, (x0, y0))
        over, along_edge = max(over, past), max(along_edge, run)
    perimeter_px = ramanujan_perimeter(major, minor)
    found = {"ellipse": ellipse, "area_fraction": area_fraction,
             "overshoot": over / major, "edge_run": along_edge / perimeter_px}
    if (over > settings.cutoff_margin_fraction * major
            or along_edge > settings.edge_run_fraction * perimeter_px):
        return HeadShape(HEAD_CUT_OFF, box, **found)

    # The head region must look like the ellipse fitted to its outline (IoU), on the
    # part of the box that holds either of them.
    rx0, ry0 = max(0, min(x0, math.floor(cx - ex) - 1)), max(0, min(y0, math.floor(cy - ey) - 1))
    rx1 = min(bw, max(x1, math.ceil(cx + ex) + 2))
    ry1 = min(bh, max(y1, math.ceil(cy + ey) + 2))
    region = np.zeros((ry1 - ry0, rx1 - rx0), np.uint8)
    region[y0 - ry0:y1 - ry0, x0 - rx0:x1 - rx0] = filled
    drawn = np.zeros_like(region)
    cv2.ellipse(drawn, (round((cx - rx0) * 16), round((cy - ry0) * 16)),
                (round(w * 8), round(h * 8)), fit_angle, 0, 360, 1, thickness=cv2.FILLED,
                lineType=cv2.LINE_8, shift=4)
    union = int(np.count_nonzero(drawn | region))
    iou = int(np.count_nonzero(drawn & region)) / max(1, union)
    return HeadShape(OK if iou >= settings.min_fit_iou else POOR_FIT, box, fit_iou=iou, **found)


def biometry_of(shape: HeadShape, pixel_size_mm: float) -> Biometry:
    """HC, BPD, OFD and GA of a whole, ellipse-shaped head at a known pixel size."""
    if shape.status != OK:
        return Biometry(shape.status, ellipse=shape.ellipse, pixel_size_mm=pixel_size_mm)
    _, _, major, minor, _ = shape.ellipse
    hc = ramanujan_perimeter(major, minor) * pixel_size_mm
    ga = hadlock_ga_weeks(hc)
    return Biometry(OK if ga is not None else GA_OUT_OF_RANGE, hc_mm=hc,
                    bpd_mm=2.0 * minor * pixel_size_mm, ofd_mm=2.0 * major * pixel_size_mm,
                    ga_weeks=ga, ellipse=shape.ellipse, pixel_size_mm=pixel_size_mm)


def check_segmenter(manifest: Manifest) -> None:
    """The manifest is a head segmenter with a usable `biometry` block, or a one-line error."""
    if manifest.task != TASK:
        raise ModelError(f"{manifest.path}: task {manifest.task!r} is not {TASK!r}")
    block = manifest.raw.get("biometry", {})
    if not isinstance(block, dict):
        raise ModelError(f"{manifest.path}: biometry must be an object")
    # Other keys in the block are the toolchain's notes; only these three are read here.
    threshold = block.get("probability_threshold", BiometrySettings.probability_threshold)
    if (not isinstance(threshold, int | float) or isinstance(threshold, bool)
            or not 0.0 < threshold < 1.0):
        raise ModelError(f"{manifest.path}: biometry.probability_threshold must be in (0, 1)")
    if not isinstance(block.get("test_time_flip", False), bool):
        raise ModelError(f"{manifest.path}: biometry.test_time_flip must be true or false")
    margin = block.get("refine_crop_margin", 0.0)
    if (not isinstance(margin, int | float) or isinstance(margin, bool)
            or not 0.0 <= margin <= MAX_CROP_MARGIN):
        raise ModelError(f"{manifest.path}: biometry.refine_crop_margin must be in "
                         f"[0, {MAX_CROP_MARGIN:g}] (0 = no second pass)")
    zoom = block.get("refine_max_zoom", 0.0)
    if (not isinstance(zoom, int | float) or isinstance(zoom, bool)
            or not (zoom == 0 or 1.0 <= zoom <= MAX_ZOOM_LIMIT)):
        raise ModelError(f"{manifest.path}: biometry.refine_max_zoom must be 0 (no limit) "
                         f"or in [1, {MAX_ZOOM_LIMIT:g}]")


def settings_for_model(manifest: Manifest | None,
                       settings: BiometrySettings = BiometrySettings()) -> BiometrySettings:
    """The device's settings with the model's own threshold from its manifest."""
    if manifest is None:
        return settings
    check_segmenter(manifest)
    block = manifest.raw.get("biometry", {})
    if "probability_threshold" not in block:
        return settings
    return replace(settings, probability_threshold=float(block["probability_threshold"]))


def passes_for_model(manifest: Manifest | None) -> Passes:
    """The model's passes from its manifest (checked at load by `check_segmenter`); a
    manifest without them, or no manifest, gives the single plain pass."""
    if manifest is None:
        return Passes()
    block = manifest.raw.get("biometry", {})
    if not isinstance(block, dict):
        return Passes()
    return Passes(test_time_flip=block.get("test_time_flip", False) is True,
                  refine_crop_margin=float(block.get("refine_crop_margin", 0.0)),
                  refine_max_zoom=float(block.get("refine_max_zoom", 0.0)))


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)


def segment_head(model: Model, image: np.ndarray, roi: Roi | None,
                 flip: bool = False, views: FrameViews | None = None,
                 frame_image_below: float = BiometrySettings.frame_image_below,
                 ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The head probability map (H, W) at the model's resolution and the box it covers.

    With `flip` the model also sees the mirrored input and the two logit maps are averaged
    (the mirrored map mirrored back): a head is symmetric enough that the two views err
    differently, and their mean is steadier. `views`: the frame's shared grey region, where
    the caller has one (the scorer)."""
    manifest = model.manifest
    spec = manifest.preprocessing
    views = views or FrameViews(image, roi)
    framed = (image_box(roi, image.shape, spec.width / spec.height, frame_image_below)
              if spec.roi == "full" else None)
    small, box = views.resized_box(spec, views.region_box(spec) if framed is None else framed)
    x = normalise(small, spec)[None, None]
    out = np.asarray(model.run(x), dtype=np.float32)
    out = out.reshape(out.shape[-2:])
    if flip:
        mirrored = np.asarray(model.run(np.ascontiguousarray(x[..., ::-1])), dtype=np.float32)
        out = (out + mirrored.reshape(out.shape)[:, ::-1]) / 2.0
    prob = sigmoid(out) if manifest.output_kind == "logits" else np.clip(out, 0.0, 1.0)
    return prob, box


def image_box(roi: Roi | None, frame_shape: tuple[int, ...], aspect: float,
              below: float = BiometrySettings.frame_image_below,
              ) -> tuple[int, int, int, int] | None:
    """(x, y, w, h): the image's outline's bounding box grown to the model's aspect ratio
    (width / height) about its centre and kept inside the frame, or None (the whole frame)
    where the outline is not known or that box covers `below` of the frame or more.

    A "full" segmenter learned heads on HC18's frames, which the image fills. A scanner's
    screen puts that image inside a larger black screen of another shape: given the whole
    1024x768 or 1280x720 screen, the net saw every head smaller and squeezed, and the HC
    error of 264 validation heads rose from 1.88 mm to 2.33 and 4.48 mm. Framing the
    image as HC18 frames it gives the net the heads it learned.
    """
    if roi is None or not roi.outline:
        return None
    frame_h, frame_w = int(frame_shape[0]), int(frame_shape[1])
    points = np.asarray(roi.outline, np.float64)
    x0 = max(0, math.floor(points[:, 0].min() + 0.5))
    x1 = min(frame_w, math.ceil(points[:, 0].max() + 0.5))
    y0 = max(0, math.floor(points[:, 1].min() + 0.5))
    y1 = min(frame_h, math.ceil(points[:, 1].max() + 0.5))
    w, h = x1 - x0, y1 - y0
    if w < 16 or h < 16:
        return None
    if w / h < aspect:
        w = min(frame_w, round(h * aspect))
    else:
        h = min(frame_h, round(w / aspect))
    if w * h >= below * frame_w * frame_h:
        return None
    x = min(max(0, round((x0 + x1) / 2 - w / 2)), frame_w - w)
    y = min(max(0, round((y0 + y1) / 2 - h / 2)), frame_h - h)
    return int(x), int(y), int(w), int(h)


def refine_box(ellipse: tuple[float, float, float, float, float],
               within: tuple[int, int, int, int], margin: float,
               aspect: float, max_zoom: float = 0.0) -> tuple[int, int, int, int]:
    """(x, y, w, h): the head's bounding box plus `margin` of its size on every side, grown
    to the model's aspect ratio (width / height), at least 1/`max_zoom` of the height of
    `within` (when `max_zoom` > 0), and kept inside the box `within`."""
    cx, cy, major, minor, angle = ellipse
    ex, ey = _extent(major, minor, angle)
    wx, wy, ww, wh = within
    h = max(2.0 * ey * (1.0 + margin), 2.0 * ex * (1.0 + margin) / aspect)
    if max_zoom > 0:
        h = max(h, wh / max_zoom)
    w = min(float(ww), aspect * h)
    h = min(float(wh), h)
    w, h = max(2, round(w)), max(2, round(h))
    x = round(min(max(cx - w / 2.0, wx), wx + ww - w))
    y = round(min(max(cy - h / 2.0, wy), wy + wh - h))
    return int(x), int(y), int(w), int(h)


def locate_head(model: Model, image: np.ndarray, roi: Roi | None,
                settings: BiometrySettings = BiometrySettings(),
                passes: Passes | None = None, views: FrameViews | None = None) -> HeadShape:
    """Segment the head in a frame and find its shape, with the model's own passes.

    `settings` come from `settings_for_model` (done once when the segmenter is loaded, see
    `edge.scorer.load_segmenter`), so the threshold is the model's own; `passes` default to
    the model's own (`passes_for_model`). See `shape_from_first_pass` for the second pass.
    """
    passes = passes_for_model(model.manifest) if passes is None else passes
    views = views or FrameViews(image, roi)  # one grey of the frame for both passes
    first = segment_head(model, image, roi, passes.test_time_flip, views,
                         settings.frame_image_below)
    return shape_from_first_pass(model, image, roi, first, settings, passes, views)


def shape_from_first_pass(model: Model, image: np.ndarray, roi: Roi | None,
                          first: tuple[np.ndarray, tuple[int, int, int, int]],
                          settings: BiometrySettings, passes: Passes,
                          views: FrameViews | None = None) -> HeadShape:
    """The head's shape from the first pass's map (`segment_head` with `passes`' flip),
    and from a second pass on a crop around the head where `passes` ask for one (`views`:
    the frame's shared grey, where the caller has one; the crop's grey is cut from it).

    With a crop margin, the first pass only places the crop, located at the model's
    resolution (cheap); the head is found on the second pass. If the first pass finds no
    whole head, or the second pass does not find one whole and regular, the frame is judged
    on the first pass as a single pass would. The scorer keeps a live frame's first pass and
    calls this again only for the frames an exam keeps (`Scorer.score`'s `keeps`).
    """
    prob, box = first
    if passes.refine_crop_margin <= 0:
        return head_shape(prob, box, image.shape, settings, _outline_in(roi, box))
    mh, mw = prob.shape
    rough = head_shape(prob, (0, 0, mw, mh), (mh, mw), settings)
    if rough.status == OK:
        sx, sy = box[2] / mw, box[3] / mh
        cx, cy, major, minor, angle = rough.ellipse
        # Scale the model-resolution ellipse to the box; the axes by the mean scale (the
        # model keeps the frame's aspect ratio, so sx and sy differ by rounding only).
        s = (sx + sy) / 2.0
        ellipse = ((cx + 0.5) * sx - 0.5 + box[0], (cy + 0.5) * sy - 0.5 + box[1],
                   major * s, minor * s, angle)
        spec = model.manifest.preprocessing
        x, y, w, h = refine_box(ellipse, box, passes.refine_crop_margin,
                                spec.width / spec.height, passes.refine_max_zoom)
        crop = (views or FrameViews(image, roi)).of_box((x, y, w, h))
        prob2, _ = segment_head(model, crop.image, None, passes.test_time_flip, crop)
        refined = head_shape(prob2, (x, y, w, h), image.shape, settings,
                             _outline_in(roi, (x, y, w, h)))
        if refined.status == OK:
            return refined
    return head_shape(prob, box, image.shape, settings, _outline_in(roi, box))


def _outline_in(roi: Roi | None, box: tuple[int, int, int, int]) -> np.ndarray | None:
    """The image's outline (`Roi.outline`) in the pixels of `box`, where it is known."""
    if roi is None or not roi.outline:
        return None
    return np.asarray(roi.outline, np.float32) - np.float32((box[0], box[1]))


def measure_frame(model: Model, image: np.ndarray, roi: Roi | None,
                  pixel_size_mm: float | None,
                  settings: BiometrySettings = BiometrySettings(),
                  passes: Passes | None = None) -> Biometry:
    """Segment the head in a frame and measure it (see `locate_head`); without a usable
    pixel size the model is not run at all."""
    bad_scale = pixel_size_status(pixel_size_mm, settings)
    if bad_scale is not None:
        finite = pixel_size_mm is not None and math.isfinite(pixel_size_mm)
        return Biometry(bad_scale, pixel_size_mm=pixel_size_mm if finite else None)
    return biometry_of(locate_head(model, image, roi, settings, passes), pixel_size_mm)
