"""Find the ultrasound image on a scanner's screen.

A probe's video out shows the whole screen: the B-mode sector or rectangle, text, a depth
scale, a grey bar, logos. The models must see only the B-mode image, framed the same way
on every scanner, so the region is found from the picture itself rather than from a fixed
per-vendor crop. The idea: the B-mode image is the one large, solid, textured area; text,
scales and frame lines are thin. Threshold away the black background, remove everything
thinner than a fraction of the screen with a morphological opening, keep the largest
connected area and take its bounding box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np


@dataclass(frozen=True)
class Roi:
    """A rectangle in full-frame pixel coordinates (x, y = top-left corner)."""

    x: int
    y: int
    w: int
    h: int
    # The share of the box the ultrasound image covers: a sector leaves the box's corners
    # empty. The quality audit judges how much of the *image* the head fills with it.
    fill: float = 1.0
    # The image's outline on the screen, a convex polygon ((x, y), ...) in frame pixels:
    # the fan of a sector probe, which the box above crops inside. A head running past it
    # is cut off even where the screen around it goes on (see `edge.models.biometry`).
    # None where the region did not come from `find_roi` (a replayed result, a given box).
    outline: tuple[tuple[float, float], ...] | None = field(default=None, compare=False)

    def as_list(self) -> list[int]:
        return [self.x, self.y, self.w, self.h]

    def crop(self, image: np.ndarray) -> np.ndarray:
        return image[self.y : self.y + self.h, self.x : self.x + self.w]


@dataclass(frozen=True)
class RoiSettings:
    """Every number of the finder, kept together so config and manifests can set them."""

    work_width: int = 320  # the finder runs on a copy this wide: fast and scale-free
    black_level: int = 8  # grey levels at or below this count as screen background
    # The image's outline (`Roi.outline`) also takes the dim parts of the image next to it
    # that the box leaves out: a fan's far sides can echo at grey 1-3 on a black screen.
    outline_level: int = 0
    thin_fraction: float = 0.03  # structures thinner than this share of the short side go
    min_area_fraction: float = 0.08  # a region smaller than this share is no ultrasound image
    piece_fraction: float = 0.1  # pieces this large next to the largest belong to the image
    # A sector is a fan: its apex rows and its outermost columns hold little image. Keep the
    # rows (columns) where the filled region spans at least this share of its widest row
    # (tallest column): on the GE screens SonoNet was trained on, this lands near its crop.
    row_fraction: float = 0.6
    col_fraction: float = 0.6


_MEAN_FLOOR = np.array([[1 / 3, 1 / 3, 1 / 3, -1 / 3]], dtype=np.float32)


def to_grey(image: np.ndarray) -> np.ndarray:
    """Unweighted mean of the colour channels, as SonoNet's preprocessing does."""
    if image.ndim == 2:
        return image
    if image.shape[2] == 1:
        return image[:, :, 0]
    if image.shape[2] == 3 and image.dtype == np.uint8:
        # floor((b + g + r) / 3) as round(b/3 + g/3 + r/3 - 1/3): every sum lands a third
        # away from a rounding boundary, so the values are exactly the floor of the mean,
        # as the models were trained on; one SIMD pass, 2x faster than the numpy sum below.
        return cv2.transform(image, _MEAN_FLOOR)
    # Integer floor of the mean: the same values as np.mean(...).astype(uint8), 10x faster.
    total = image[:, :, 0].astype(np.uint16)
    total += image[:, :, 1]
    total += image[:, :, 2]
    return (total // 3).astype(np.uint8)


def find_roi(image: np.ndarray, settings: RoiSettings = RoiSettings()) -> Roi | None:
    """The bounding box of the ultrasound image, or None where there is none (a blank screen)."""
    grey = to_grey(image)
    height, width = grey.shape
    scale = min(1.0, settings.work_width / width)
    small = cv2.resize(grey, (max(1, round(width * scale)), max(1, round(height * scale))),
                       interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (3, 3), 0)
    mask = (small > settings.black_level).astype(np.uint8)
    # Remove the thin things first (text, ticks, scales, frame lines), so that nothing can
    # bridge them to the image; then close the speckle gaps the opening left in the image.
    side = max(3, int(round(min(small.shape) * settings.thin_fraction)) | 1)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(
        cv2.MORPH_ELLIPSE, (side, side)))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return None
    areas = stats[1:, cv2.CC_STAT_AREA]
    if areas.max() < settings.min_area_fraction * mask.size:
        return None
    # Fluid can split one image into several large pieces; thin clutter is gone by now.
    pieces = np.zeros(count, np.uint8)  # a lookup per label: np.isin sorts, this indexes
    pieces[1:] = areas >= settings.piece_fraction * areas.max()
    region = pieces[labels]
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.convexHull(np.vstack(contours))
    filled = np.zeros_like(region)
    cv2.fillConvexPoly(filled, hull, 1)
    row_span = filled.sum(axis=1)
    col_span = filled.sum(axis=0)
    rows = np.flatnonzero(row_span >= settings.row_fraction * row_span.max())
    cols = np.flatnonzero(col_span >= settings.col_fraction * col_span.max())
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    fx0, fy0 = int(np.floor(x0 / scale)), int(np.floor(y0 / scale))
    fx1, fy1 = min(width, int(np.ceil(x1 / scale))), min(height, int(np.ceil(y1 / scale)))
    fill = float(filled[y0:y1, x0:x1].mean())
    return Roi(fx0, fy0, fx1 - fx0, fy1 - fy0, round(fill, 3),
               _outline(small, filled, side, scale, settings))


def _outline(small: np.ndarray, filled: np.ndarray, side: int, scale: float,
             settings: RoiSettings) -> tuple[tuple[float, float], ...]:
    """The image's outline in frame pixels: the convex hull of the region and of every
    non-thin area above `outline_level` that touches it (a dim side of the fan)."""
    dim = (small > settings.outline_level).astype(np.uint8)
    dim = cv2.morphologyEx(dim, cv2.MORPH_OPEN, cv2.getStructuringElement(
        cv2.MORPH_ELLIPSE, (side, side)))
    count, labels = cv2.connectedComponents(dim | filled, connectivity=8)
    touching = np.zeros(count, np.uint8)  # the labels the region touches, as a lookup
    touching[labels[filled > 0]] = 1
    touching[0] = 0
    keep = touching[labels]
    contours, _ = cv2.findContours(keep, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.convexHull(np.vstack(contours))
    # The hull's vertices are centres of the outermost image pixels of the small copy: half
    # a small pixel further out is the image's edge, in frame pixels (centres at integers).
    centre = hull.reshape(-1, 2).astype(np.float64).mean(axis=0)
    outline = []
    for x, y in hull.reshape(-1, 2).astype(np.float64):
        dx, dy = x - centre[0], y - centre[1]
        out = 0.5 / max(1e-9, math.hypot(dx, dy))
        outline.append((round(float((x + dx * out + 0.5) / scale - 0.5), 1),
                        round(float((y + dy * out + 0.5) / scale - 0.5), 1)))
    return tuple(outline)
