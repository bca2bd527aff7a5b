"""Real acquisition faults, applied to a real grey frame at a chosen severity.

There are no expert quality labels in the shared data, so the learned quality head is
trained to estimate how much of each fault was applied to a clean real frame (AI-IQA-style
multi-branch regression). The same functions let tests make a real frame fail one
criterion of the rule-based audit on purpose.

Every fault acts only inside the ultrasound region (`roi`, as found by
`edge.models.roi.find_roi` on the clean frame; None = the whole frame): the scanner's text,
scales and logos are not what a probe or a knob changes. Pixels that were screen background
inside the region (the black corners beside a sector) stay black, so the screen layout does
not move. Severity s is in [0, 1]: 0 returns the frame unchanged, 1 is the value in
`SEVERITY_ONE` (what s = 1 means physically). Sizes are fractions of the region, so a fault
looks the same whatever the screen resolution; the device sees the region at 96x128.

    degrade(grey, roi, kind, severity, rng) -> grey      (uint8 H x W, a new array)

`rng` is a numpy Generator: the random parts (gain direction, shadow angle and depth,
cut-off direction, noise pattern) come from it only, so a seeded call is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np

from edge.models.roi import Roi

KINDS = ("blur", "gain", "noise", "shadow", "cutoff", "zoom")
# Bump when a fault's pixels change for the same severity: cached training views and the
# quality head's checkpoint carry it, so they are rebuilt rather than silently reused.
VERSION = 3

# Physical meaning of severity 1.0 for each fault; the quality head's manifest copies these.
BLUR_SIGMA_AT_ONE = 0.025  # Gaussian sigma as a share of the region's width
GAIN_AT_ONE = 4.0  # brightness x4 or x1/4 (+-12 dB), clipped at 0..255
NOISE_SIGMA_AT_ONE = 64.0  # rms of the added noise floor, grey levels
NOISE_GRAIN = 1 / 200  # noise correlation length (resolution cell) as a share of the width
SHADOW_WIDTH_AT_ONE = 0.30  # shadow width at the region's bottom, share of the region width
SHADOW_RESIDUAL = 0.10  # a bone shadow keeps this share of the echo (near-anechoic)
SHADOW_START = (0.10, 0.45)  # the occluder's depth, share of the region's height
APEX_ABOVE = 0.6  # the virtual apex of the fan sits this many region heights above its top
# The anatomy moves by this share of the region's width (or height) at s = 1: a head
# centred in the region then loses about half of itself past the edge. Further than that
# the anatomy is simply out of view, which is the plane model's question, not a grade of
# how badly it is cut (version 1 used 0.5: the head often vanished, and its severity with
# it, so the head could not learn it).
CUTOFF_SHIFT_AT_ONE = 0.35
ZOOM_AT_ONE = 2.0  # zoomed out 2x: linear size / 2, area / 4
BLACK_LEVEL = 8  # as edge.models.roi: grey <= this is screen background

SEVERITY_ONE = {
    "blur": {
        "fault": "probe motion or an out-of-focus, out-of-plane view: the echo image loses "
                 "resolution",
        "model": "Gaussian blur of the region; sigma = s * "
                 f"{BLUR_SIGMA_AT_ONE} * region width",
        "at_1": f"sigma = {BLUR_SIGMA_AT_ONE:.1%} of the region width (20 px on an 800 px "
                "wide region, 3.2 px at the model's 128 px)"},
    "gain": {
        "fault": "overall gain set too low or too high",
        "model": f"grey * g, clipped to 0..255 as the scanner's display does; g = "
                 f"{GAIN_AT_ONE:g}**(+-s), too dark or too bright with equal chance",
        "at_1": f"x{GAIN_AT_ONE:g} or x1/{GAIN_AT_ONE:g} brightness (+-12 dB); s = |ln g| / "
                f"ln {GAIN_AT_ONE:g}, so the branch cannot tell dark from bright: the device "
                "reads the direction from the image's mean"},
    "noise": {
        "fault": "electronic (thermal) noise on top of the speckle, as with gain pushed "
                 "against a weak echo or a poor probe contact",
        "model": "noise power adds to echo power: out = sqrt(grey^2 + (sigma * R)^2), R a "
                 "unit-power Rayleigh field with the grain of a resolution cell "
                 f"({NOISE_GRAIN:.3g} of the width); sigma = s * {NOISE_SIGMA_AT_ONE:g}",
        "at_1": f"noise floor of rms {NOISE_SIGMA_AT_ONE:g} grey levels: anechoic fluid "
                "turns grey (mean about 57), bright echoes barely change"},
    "shadow": {
        "fault": "acoustic shadow behind bone or gas: a dark band along the beam",
        "model": "a wedge along the fan's rays from the transducer (virtual apex "
                 f"{APEX_ABOVE:g} region heights above the region's top, at its centre), "
                 f"from a random depth in {SHADOW_START} of the region height down; echo "
                 f"kept at {SHADOW_RESIDUAL:.0%} inside, soft edges; width at the bottom = "
                 f"s * {SHADOW_WIDTH_AT_ONE} * region width, at a random angle in the fan",
        "at_1": f"a shadow {SHADOW_WIDTH_AT_ONE:.0%} of the region wide at its bottom"},
    "cutoff": {
        "fault": "the anatomy pushed past the edge of the ultrasound region (probe off "
                 "target)",
        "model": "the region's content slid left, right or down by s * "
                 f"{CUTOFF_SHIFT_AT_ONE} of the region's width (height) under a fan that "
                 "stays where it is: what slides past the fan's side is lost, and other "
                 "tissue comes in on the other side (the frame's own far side, "
                 "featureless speckle as in zoom, or nothing, drawn at random)",
        "at_1": f"shifted by {CUTOFF_SHIFT_AT_ONE:.0%} of the region: a head centred in "
                "it loses about half of itself past the edge"},
    "zoom": {
        "fault": "depth set too deep (zoomed out): the anatomy fills too little of the image",
        "model": f"the region's content scaled by {ZOOM_AT_ONE:g}**(-s) about the "
                 "transducer (top centre); the wider field around it is featureless tissue "
                 "(speckle at the frame's median echo level), inside the clean sector",
        "at_1": f"zoomed out {ZOOM_AT_ONE:g}x: linear size / {ZOOM_AT_ONE:g}, area / "
                f"{ZOOM_AT_ONE ** 2:g}"},
}


def _region(grey: np.ndarray, roi: Roi | None) -> Roi:
    if grey.ndim != 2 or grey.dtype != np.uint8:
        raise ValueError(f"degrade: expected a grey uint8 frame, got {grey.dtype} "
                         f"{grey.shape}")
    height, width = grey.shape
    if roi is None:
        return Roi(0, 0, width, height)
    x0, y0 = max(0, roi.x), max(0, roi.y)
    x1, y1 = min(width, roi.x + roi.w), min(height, roi.y + roi.h)
    if x1 - x0 < 8 or y1 - y0 < 8:
        raise ValueError(f"degrade: region {roi.as_list()} is empty in a {width}x{height} "
                         "frame")
    return Roi(x0, y0, x1 - x0, y1 - y0)


def footprint(region: np.ndarray) -> np.ndarray:
    """float32 mask (0/1) of the region's ultrasound image: the filled convex hull of its
    large non-black areas, as `edge.models.roi` sees them. A sector is convex, so dark fluid
    inside it stays image, and only the black screen beside the sector is left out (faults
    act on the echo image, not on the screen around it)."""
    height, width = region.shape
    scale = min(1.0, 256 / width)
    small = cv2.resize(region, (max(8, round(width * scale)), max(8, round(height * scale))),
                       interpolation=cv2.INTER_AREA)
    mask = (small > BLACK_LEVEL).astype(np.uint8)
    side = max(3, int(round(min(small.shape) * 0.05)) | 1)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN,
                            cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side)))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return np.ones(region.shape, np.float32)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.isin(labels, 1 + np.flatnonzero(areas >= 0.2 * areas.max())).astype(np.uint8)
    contours, _ = cv2.findContours(keep, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(keep)
    cv2.fillConvexPoly(filled, cv2.convexHull(np.vstack(contours)), 1)
    return cv2.resize(filled, (width, height), interpolation=cv2.INTER_NEAREST).astype(
        np.float32)


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def _gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a float image; a wide blur runs on a smaller copy (same result to
    within a grey level, 10x faster on a full screen)."""
    height, width = x.shape
    k = sigma / 3.0
    if k <= 1.5:
        return cv2.GaussianBlur(x, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)
    small = cv2.resize(x, (max(4, round(width / k)), max(4, round(height / k))),
                       interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma * small.shape[1] / width,
                             borderType=cv2.BORDER_REFLECT_101)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def _soft_inside(mask: np.ndarray, width: int) -> np.ndarray:
    """A 0/1 mask as a blend weight that falls from 1 to 0 just inside its edge, over about
    1.5% of the region's width: where a real image meets a filler, no sharp seam shows."""
    return np.clip(2 * _gaussian(mask, max(1.0, 0.015 * width)) - 1, 0, 1)


def blur(region: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    sigma = s * BLUR_SIGMA_AT_ONE * region.shape[1]
    if sigma < 0.3:
        return region.copy()
    fp = footprint(region)
    x = region.astype(np.float32)
    # Blur the echo image only: normalised by the blurred footprint, so the black screen
    # beside a sector neither bleeds in nor gets smeared out.
    out = _gaussian(x * fp, sigma) / np.maximum(_gaussian(fp, sigma), 1e-3)
    return _to_u8(np.where(fp > 0, out, x))


def gain(region: np.ndarray, s: float, rng: np.random.Generator,
         direction: int | None = None) -> np.ndarray:
    """direction +1 brighter, -1 darker, None = drawn from rng (half each)."""
    if direction is None:
        direction = 1 if rng.random() < 0.5 else -1
    if direction not in (1, -1):
        raise ValueError(f"gain: direction must be +1 or -1, got {direction!r}")
    g = GAIN_AT_ONE ** (direction * s)
    return _to_u8(region.astype(np.float32) * g)


def rayleigh_field(shape: tuple[int, int], grain: float, rng: np.random.Generator) -> np.ndarray:
    """A unit-power (mean R^2 = 1) Rayleigh field whose speckle grain is `grain` pixels:
    the magnitude of complex Gaussian noise drawn on a grid `grain` apart and interpolated
    (cubic). A coarse field is built at a third of its grain and then enlarged linearly,
    which keeps its look and costs one full-size resize."""
    height, width = shape
    gh, gw = max(2, math.ceil(height / grain) + 1), max(2, math.ceil(width / grain) + 1)
    re = rng.standard_normal((gh, gw)).astype(np.float32)
    im = rng.standard_normal((gh, gw)).astype(np.float32)
    step = max(1.0, grain / 3)
    mh, mw = max(2, round(height / step)), max(2, round(width / step))
    re = cv2.resize(re, (mw, mh), interpolation=cv2.INTER_CUBIC)
    im = cv2.resize(im, (mw, mh), interpolation=cv2.INTER_CUBIC)
    power = re * re + im * im
    field = np.sqrt(power / max(float(power.mean()), 1e-6))
    if (mh, mw) != (height, width):
        field = cv2.resize(field, (width, height), interpolation=cv2.INTER_LINEAR)
    return field


def noise(region: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    sigma = s * NOISE_SIGMA_AT_ONE
    if sigma <= 0:
        return region.copy()
    grain = max(1.0, region.shape[1] * NOISE_GRAIN)
    r = rayleigh_field(region.shape, grain, rng) * sigma
    x = region.astype(np.float32)
    return _to_u8(np.sqrt(x * x + r * r) * footprint(region))


def shadow(region: np.ndarray, s: float, rng: np.random.Generator,
           centre: float | None = None) -> np.ndarray:
    """`centre`: where the shadow's axis meets the region's bottom, as a share of the width
    (None = drawn from rng in 0.15..0.85)."""
    height, width = region.shape
    half = 0.5 * s * SHADOW_WIDTH_AT_ONE * width
    if half < 0.5:
        return region.copy()
    apex_x, apex_y = width / 2.0, -APEX_ABOVE * height
    bottom = (centre if centre is not None else rng.uniform(0.15, 0.85)) * width
    depth = height - apex_y  # from the apex down to the region's bottom row
    axis = math.atan2(bottom - apex_x, depth)
    half_angle = math.atan2(half, math.hypot(bottom - apex_x, depth))
    start = rng.uniform(*SHADOW_START) * height
    # The mask is smooth: compute it on a grid 4x coarser and interpolate.
    step = 4
    ys, xs = np.mgrid[0:height + step:step, 0:width + step:step].astype(np.float32)
    angle = np.arctan2(xs - apex_x, ys - apex_y) - axis
    # Soft edges: 15% of the half-width, where the beam is partly blocked.
    soft = max(half_angle * 0.15, 1e-4)
    across = np.clip((half_angle + soft - np.abs(angle)) / (2 * soft), 0, 1)
    along = np.clip((ys - start) / max(2.0, 0.03 * height), 0, 1)
    keep = 1.0 - (1.0 - SHADOW_RESIDUAL) * across * along
    keep = cv2.resize(keep, (xs.shape[1] * step, ys.shape[0] * step),
                      interpolation=cv2.INTER_LINEAR)[:height, :width]
    return _to_u8(region.astype(np.float32) * keep)


CUTOFF_DIRECTIONS = ("left", "right", "down")
# What comes in behind the slid anatomy (see `cutoff`), drawn at random: no one of them is
# a real probe's, so the cue they share, the anatomy cut by the fan's side, is the one to
# learn. With "roll" and "tissue" alone the head missed 96% of cuts with nothing behind.
CUTOFF_FILLERS = ("roll", "tissue", "black")


def cutoff(region: np.ndarray, s: float, rng: np.random.Generator,
           direction: str | None = None, filler: str | None = None) -> np.ndarray:
    """direction: left, right or down (None = drawn from rng). Upward is left out: the
    transducer sits at the top, and the skin line there cannot move past it.

    The probe moved, not the screen: the anatomy slides under a fan that stays where it
    is, what slides past the fan's side is lost, and other tissue comes in on the other
    side. `filler` says what comes in (None = drawn from rng among CUTOFF_FILLERS):
    "roll", the frame's own tissue from its far side (real speckle); "tissue", synthetic
    speckle as in `zoom`; "black", nothing (find_roi then crops it away, as version 2 of
    this fault did). Each alone is a tell a net can learn in place of the cut anatomy."""
    if direction is None:
        direction = CUTOFF_DIRECTIONS[int(rng.integers(len(CUTOFF_DIRECTIONS)))]
    if direction not in CUTOFF_DIRECTIONS:
        raise ValueError(f"cutoff: direction must be one of {CUTOFF_DIRECTIONS}")
    if filler is None:
        filler = CUTOFF_FILLERS[int(rng.integers(len(CUTOFF_FILLERS)))]
    if filler not in CUTOFF_FILLERS:
        raise ValueError(f"cutoff: filler must be one of {CUTOFF_FILLERS}")
    height, width = region.shape
    slide = _slide(region.shape, s, direction)
    if slide is None:
        return region.copy()
    step, axis, slid = slide
    fp = footprint(region)
    whole = np.roll(region.astype(np.float32), step, axis)
    where = np.roll(fp, step, axis)  # the image's own fan, carried along
    if filler == "black":
        incoming = np.zeros((height, width), np.float32)
    else:
        incoming = tissue(region, fp, rng)
        if filler == "roll":  # the far side's own image where it has one, else speckle
            near = _soft_inside(where * (1 - slid), width)
            incoming = near * whole + (1 - near) * incoming
    alpha = _soft_inside(where * slid, width)  # the seam is soft, as in `zoom`
    return _to_u8((alpha * whole + (1 - alpha) * incoming) * fp)


def _slide(shape: tuple[int, int], s: float, direction: str
           ) -> tuple[int, int, np.ndarray] | None:
    """The slide of `cutoff`: (roll step, axis, the 0/1 part of the region the slid anatomy
    covers), or None when it moves less than a pixel."""
    height, width = shape
    axis = 0 if direction == "down" else 1
    d = int(round(s * CUTOFF_SHIFT_AT_ONE * shape[axis]))
    if d == 0:
        return None
    slid = np.zeros((height, width), np.float32)
    if direction == "left":
        slid[:, : width - d] = 1
    elif direction == "right":
        slid[:, d:] = 1
    else:
        slid[d:] = 1
    return (-d if direction == "left" else d), axis, slid


def cutoff_kept(grey: np.ndarray, roi: Roi | None, anatomy: np.ndarray, s: float,
                direction: str) -> float:
    """The share of `anatomy` (a 0..1 mask over the frame, e.g. an annotated head) still
    inside the fan after `degrade(grey, roi, "cutoff", s, rng, direction=direction)`: 1.0
    when the slide cut none of it. A slide moves the whole image, so a small or off-centre
    head often slides without being cut; whoever needs a cut-off *head* checks here."""
    if direction not in CUTOFF_DIRECTIONS:
        raise ValueError(f"cutoff: direction must be one of {CUTOFF_DIRECTIONS}")
    box = _region(grey, roi)
    part = box.crop(anatomy).astype(np.float32)
    total = float(anatomy.sum())
    slide = _slide(part.shape, s, direction)
    if total <= 0 or slide is None:
        return 1.0
    step, axis, slid = slide
    fan = footprint(box.crop(grey))
    return float((np.roll(part, step, axis) * slid * fan).sum()) / total


TISSUE_GRAIN = 1 / 80  # speckle grain of the filler tissue, share of the region width


def tissue(region: np.ndarray, fp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Featureless soft tissue for the wider field of a zoomed-out view: speckle at the
    grain of the frame's resolution cell, with the low contrast of a log-compressed display
    (sqrt of a Rayleigh field), at the frame's own median echo level with slow +-30%
    variation; no anatomy."""
    height, width = region.shape
    inside = region[::4, ::4][fp[::4, ::4] > 0]
    level = float(np.percentile(inside, 60)) if inside.size else float(region.mean())
    level = max(level, 24.0)
    slow = 0.7 + 0.6 * np.clip(rayleigh_field((height, width), max(2.0, width / 4), rng) / 2,
                               0, 1)
    grain = max(1.0, width * TISSUE_GRAIN)
    speckle = np.sqrt(rayleigh_field((height, width), grain, rng)) / 0.94
    return level * slow * speckle


def zoom(region: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    z = ZOOM_AT_ONE ** (-s)
    if z > 0.995:
        return region.copy()
    height, width = region.shape
    fp = footprint(region)
    # Scale about the transducer (top centre of the region); the wider field around the
    # smaller image is featureless tissue, blended over a soft edge.
    sw, sh = max(2, int(round(width * z))), max(2, int(round(height * z)))
    left = (width - sw) // 2
    small = np.zeros((height, width), np.float32)
    small[:sh, left:left + sw] = cv2.resize(region, (sw, sh), interpolation=cv2.INTER_AREA)
    alpha = np.zeros((height, width), np.float32)
    alpha[:sh, left:left + sw] = cv2.resize(fp, (sw, sh), interpolation=cv2.INTER_NEAREST)
    alpha[0, :] = alpha[1, :]  # the transducer edge stays sharp: the image starts there
    alpha = _soft_inside(alpha, width)
    out = alpha * small + (1 - alpha) * tissue(region, fp, rng)
    return _to_u8(out * fp)


FAULTS: dict[str, Callable[..., np.ndarray]] = {
    "blur": blur, "gain": gain, "noise": noise, "shadow": shadow, "cutoff": cutoff,
    "zoom": zoom}
# When several faults are applied together: the scene first (zoom, cut-off, shadow), then
# the acquisition chain (blur of the echo, electronic noise, and the gain amplifying both).
ORDER = ("zoom", "cutoff", "shadow", "blur", "noise", "gain")


def degrade(grey: np.ndarray, roi: Roi | None, kind: str, severity: float,
            rng: np.random.Generator, **options) -> np.ndarray:
    """A copy of `grey` with fault `kind` at `severity` (0..1) inside `roi`.

    `options` go to the fault: gain(direction=+1|-1), shadow(centre=0..1),
    cutoff(direction="left"|"right"|"down", filler="roll"|"tissue"|"black")."""
    if kind not in FAULTS:
        raise ValueError(f"degrade: unknown kind {kind!r}; choose one of {list(KINDS)}")
    s = float(severity)
    if not 0.0 <= s <= 1.0 or math.isnan(s):
        raise ValueError(f"degrade: severity {severity!r} is outside 0..1")
    box = _region(grey, roi)
    out = grey.copy()
    if s == 0.0:
        return out
    region = box.crop(grey)
    out[box.y: box.y + box.h, box.x: box.x + box.w] = FAULTS[kind](region, s, rng, **options)
    return out


def degrade_many(grey: np.ndarray, roi: Roi | None, severities: dict[str, float],
                 rng: np.random.Generator) -> np.ndarray:
    """Several faults on one frame, in the physical `ORDER`; severities of 0 are skipped."""
    unknown = sorted(set(severities) - set(KINDS))
    if unknown:
        raise ValueError(f"degrade: unknown kind {unknown[0]!r}; choose from {list(KINDS)}")
    out = grey
    for kind in ORDER:
        s = float(severities.get(kind, 0.0))
        if s > 0:
            out = degrade(out, roi, kind, s, rng)
    return out if out is not grey else grey.copy()
