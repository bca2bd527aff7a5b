"""Is the picture stretched sideways? Read from the shape of the probe's own fan.

A grabber that fills a 16:9 frame with a scanner's 4:3 screen widens everything on it by a
third. Nothing else on the box can see that: the depth ruler gives the vertical scale only,
and a calibration is one number, so a head measures a third too wide with status ok (HC 227
mm for 189). The image of a curved-array probe, the obstetric probe, is a fan: two straight
sides that meet at an apex above the image, and a far edge that is an arc of a circle about
that apex. Stretched sideways by s, the sides stay straight and still meet at the apex, but
the far edge becomes an ellipse s times as wide as it is tall. With the apex from the
sides, the far edge's points (dx, dy) fit dy^2 = r^2 - dx^2 / s^2, a straight line in
dx^2, so s comes out of one least-squares fit. On the real screens here the fit gives 1.00
within 0.3% on the frames that show the whole fan, and 1.33 on the same frames stretched
4:3 to 16:9.

Only a frame that shows both sides and the far edge can tell (a zoomed-in image, a linear
probe's rectangle, a screen without black around the image cannot); such a frame gives no
reading, and `StretchWatch` decides from the frames that could.

The frame's size is evidence too: an SD (PAL or NTSC) grabber's 720x576 draws a 4:3
picture 0.9375 as wide as it is, within the 8% that real screens' readings need, yet 3% on
every HC. At such a size (`FanSettings.sd_sizes`) the verdict lies halfway between what a
true screen reads and what that squeeze reads (`limits`).
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

# `[source] stretch` (edge/config.py): 16:9 squeezed into 4:3 is 0.75, 4:3 filling 16:9
# 1.333; past half or twice no grabber draws a screen.
MIN_SOURCE_STRETCH, MAX_SOURCE_STRETCH = 0.5, 2.0


@dataclass(frozen=True)
class FanSettings:
    """Every number of the reading and of the verdict, kept in one place."""

    level: int = 6  # grey above this, after a 5x5 blur, is image; the screen around is black
    thin_fraction: float = 0.03  # text and marks thinner than this share of the short side go
    coarse: int = 2  # the area is chosen on a copy this many times smaller (`image_mask`)
    edge_tolerance_px: float = 1.5  # a point this close to a side line or the arc lies on it
    tries: int = 200  # random pairs drawn per robust fit (seeded: the same frame, same reading)
    sample_points: int = 256  # each pair's support is counted on at most this many points
    seed: int = 0
    min_side_fraction: float = 0.15  # each straight side runs at least this share of the height
    min_slope: float = 0.1  # sides lean out at least this much (px across per px down)
    min_arc_fraction: float = 0.1  # the far edge's points: at least this share of the width
    min_arc_share: float = 0.35  # ...and at least this share of the bottom's points on the arc
    # The far edge is where the image stops: 5 px past it the screen is black (90th
    # percentile at most this). Where deep tissue only fades, speckle shows past the line.
    outside_level: int = 4
    outside_px: int = 5
    # The arc's points spread across at least this share of its radius, on both sides of
    # the apex: a short or one-sided piece fits any ellipse.
    min_arc_span: float = 0.3
    min_side_share: float = 0.2
    stretch_range: tuple[float, float] = (0.5, 2.0)  # outside: no fan, whatever fitted
    # The verdict: the median of the last `readings` frames that gave one, at least
    # `min_readings` of them; stretched beyond `tolerance` either way, and true again only
    # within `back_fraction` of it (a screen read near the limit must not flip its heads
    # in and out: a Voluson E10 screen read 1.028-1.051 frame to frame).
    # 8%: real screens as captured read up to 3.6% off (a Voluson E10 cord JPEG) and a
    # capture scaled to half size moved one by 3.5%; every grabber's usual fault lies
    # beyond: 4:3 in 16:9 (1.333), in 16:10 (1.2), in NTSC 720x480 (1.125), 16:9 squeezed
    # into 4:3 (0.75). Not caught by it: a 5:4 screen in 4:3 (1.067), and 4:3 in PAL
    # 720x576 (0.9375), which the frame's size gives away (`sd_sizes`).
    readings: int = 9
    min_readings: int = 3
    tolerance: float = 0.08
    back_fraction: float = 0.625  # 5% at 8%
    # A frame of a standard-definition capture size comes from an SD (PAL or NTSC) grabber,
    # whose pixels are not square: (width, height, what the fan of a 4:3 picture drawn
    # there reads). A 4:3 picture filling the frame: 720x576 is 720/768 = 0.9375 as wide as
    # it is (16:15 pixels, CEA-861's 720x576), 704x576 704/768 (12:11, ITU-R BT.601's 704
    # active samples, H.264 Table E-1), 720x480 720/640 (8:9), 704x480 704/640 (10:11),
    # 720x486 (NTSC's full D1) 720/648. BT.601's own 720x576 sampling (the picture on
    # 702-704 of the 720, 59:54 or 12:11 pixels) reads 0.915-0.917: 0.9375, the nearer 1,
    # is the one to tell from a true screen, and catching it catches both.
    sd_sizes: tuple[tuple[int, int, float], ...] = (
        (720, 576, 720 / 768), (704, 576, 704 / 768), (720, 480, 720 / 640),
        (704, 480, 704 / 640), (720, 486, 720 / 648))
    # What a screen that keeps its shape reads: the 8 real whole-fan screens 0.998-1.029 as
    # captured and 0.997-1.043 letterboxed into 720x576, the Voluson E10 screen 1.028-1.051
    # frame to frame, HC18's median of nine 0.991-1.007. At an SD size the verdict lies
    # halfway between these and the same readings times the size's ratio (`limits`): for
    # 720x576 below 0.987 is squeezed (true again above 0.992), where "nearer 0.9375 than
    # 1.0" (0.969) let the E10 screen through at 0.979.
    true_reads: tuple[float, float] = (0.99, 1.05)
    # `[source] stretch`: the frames were narrowed by this on the capture thread, so their
    # size is no longer the grabber's (the size rule is off) and the setting that undoes a
    # verdict is this times the reading.
    undone: float = 1.0
    # When a frame is read (beside the loop): every `fast_every_frames` for the first
    # `fast_for_frames` of a new screen (a verdict within seconds where the fan shows),
    # then every `every_frames`. One reading is 4-14 ms on one core (`make bench`).
    fast_every_frames: int = 5
    fast_for_frames: int = 450
    every_frames: int = 30
    # Frames wider than this are read on a copy this wide (area-averaged, both ways alike,
    # so the stretch is kept): a 1920x1080 frame took 113 ms, a 4K one a second.
    max_width: int = 1280


@dataclass(frozen=True)
class FanReading:
    """One frame's fan: how much wider than tall its far edge is, and where it was seen."""

    stretch: float  # horizontal over vertical scale; 1.0: square pixels
    apex: tuple[float, float]  # (x, y) in frame pixels; y above the image (negative often)
    radius_px: float  # the far edge's vertical radius from the apex
    points: int  # far-edge points on the fitted arc


def image_mask(grey: np.ndarray, settings: FanSettings) -> np.ndarray | None:
    """The largest bright connected area, thin things (text, ticks, lines) opened away.

    Which area that is, is found on a copy `coarse` times smaller (the opening and the
    labelling were 15 of a reading's 20 ms on a 1024x768 screen, and beside the loop they
    slowed the head frames); its edges are the full frame's, within `coarse` pixels of it."""
    binary = (cv2.GaussianBlur(grey, (5, 5), 0) > settings.level).astype(np.uint8)
    height, width = binary.shape
    step = max(1, min(settings.coarse, min(height, width) // 64))
    small = cv2.resize(binary, (max(1, width // step), max(1, height // step)),
                       interpolation=cv2.INTER_AREA)
    side = max(3, int(round(min(small.shape) * settings.thin_fraction)) | 1)
    small = cv2.morphologyEx(small, cv2.MORPH_OPEN,
                             cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side)))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(small, connectivity=8)
    if count <= 1:
        return None
    largest = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    area = cv2.dilate(cv2.resize(largest, (width, height), interpolation=cv2.INTER_NEAREST),
                      np.ones((2 * step + 1, 2 * step + 1), np.uint8))
    return binary & area


def _every(count: int, settings: FanSettings) -> slice:
    """Every n-th point, at most `sample_points` of them: a candidate fit's support is
    counted on these, and the one chosen is fitted to all its points."""
    return slice(None, None, max(1, -(-count // settings.sample_points)))


def _side_line(ys: np.ndarray, xs: np.ndarray, settings: FanSettings,
               rng: np.random.Generator) -> tuple[float, float, int] | None:
    """x = p*y + q through the most points within the tolerance (a fan's side is straight
    from the top down to where the far edge begins; below, the boundary follows the arc).
    Every drawn pair's line is tried at once: one array, no Python loop."""
    i, j = rng.integers(0, len(ys), (2, settings.tries))
    apart = np.abs(ys[j] - ys[i]) >= 10
    if not apart.any():
        return None
    i, j = i[apart], j[apart]
    p = (xs[j] - xs[i]) / (ys[j] - ys[i])
    every = _every(len(ys), settings)  # candidates are counted on a sample of the points
    residual = np.abs(xs[None, every] - (xs[i, None] + p[:, None] * (ys[None, every]
                                                                      - ys[i, None])))
    k = int(np.argmax((residual <= settings.edge_tolerance_px).sum(axis=1)))
    best = np.abs(xs - (xs[i[k]] + p[k] * (ys - ys[i[k]]))) <= settings.edge_tolerance_px
    if best.sum() < 2:
        return None
    p, q = np.polyfit(ys[best], xs[best], 1)
    return float(p), float(q), int(best.sum())


def _far_arc(dx: np.ndarray, dy2: np.ndarray, settings: FanSettings,
             rng: np.random.Generator) -> tuple[float, float, np.ndarray] | None:
    """(1/s^2, r^2, inliers) of dy^2 = r^2 - dx^2/s^2 through the most points."""
    dx2 = dx * dx
    i, j = rng.integers(0, len(dx2), (2, settings.tries))
    apart = np.abs(dx2[i] - dx2[j]) >= 1.0
    i, j = i[apart], j[apart]
    a = -(dy2[j] - dy2[i]) / (dx2[j] - dx2[i]) if len(i) else np.empty(0)
    r2 = dy2[i] + a * dx2[i]
    ellipse = (a > 0) & (r2 > 0)
    if not ellipse.any():
        return None
    a, r2 = a[ellipse], r2[ellipse]
    every = _every(len(dx2), settings)
    residual = np.abs(np.sqrt(a[:, None] * dx2[None, every] + dy2[None, every])
                      - np.sqrt(r2)[:, None])
    k = int(np.argmax((residual <= settings.edge_tolerance_px).sum(axis=1)))
    best = np.abs(np.sqrt(a[k] * dx2 + dy2) - math.sqrt(r2[k])) <= settings.edge_tolerance_px
    if best.sum() < 2:
        return None
    design = np.stack([dx2[best], np.ones(int(best.sum()))], axis=1)
    (slope, r2_fit), *_ = np.linalg.lstsq(design, dy2[best], rcond=None)
    if slope >= 0 or r2_fit <= 0:
        return None
    return float(-slope), float(r2_fit), best


def _black_beyond(grey: np.ndarray, xs: np.ndarray, ys: np.ndarray,
                  settings: FanSettings) -> bool:
    """The screen is black just past the far edge's points (where the frame goes on)."""
    beyond = ys + settings.outside_px
    inside = beyond < grey.shape[0]
    if inside.sum() < 0.5 * len(ys):
        return False
    return float(np.percentile(grey[beyond[inside], xs[inside]], 90)) <= settings.outside_level


def read_fan(grey: np.ndarray, settings: FanSettings = FanSettings()) -> FanReading | None:
    """The fan's stretch on this frame, or None where the frame cannot show it. The grey
    is 8-bit, as every frame the box reads (its levels are 8-bit grey levels)."""
    if grey.ndim != 2 or min(grey.shape) < 32 or grey.dtype != np.uint8:
        return None
    if grey.shape[1] > settings.max_width:
        height = max(32, round(grey.shape[0] * settings.max_width / grey.shape[1]))
        grey = cv2.resize(grey, (settings.max_width, height), interpolation=cv2.INTER_AREA)
    mask = image_mask(grey, settings)
    if mask is None:
        return None
    height, width = mask.shape
    rows = np.flatnonzero(mask.any(axis=1))
    rng = np.random.default_rng(settings.seed)
    sides = []
    for xs in (np.argmax(mask[rows], axis=1),
               width - 1 - np.argmax(mask[rows, ::-1], axis=1)):
        inside = (xs > 2) & (xs < width - 3)  # a boundary at the frame's edge is no side
        if inside.sum() < settings.min_side_fraction * height:
            return None
        line = _side_line(rows[inside].astype(float), xs[inside].astype(float), settings, rng)
        if line is None or line[2] < settings.min_side_fraction * height:
            return None
        sides.append(line)
    (p_left, q_left, _), (p_right, q_right, _) = sides
    if not (p_left < -settings.min_slope and p_right > settings.min_slope):
        return None  # not a fan opening downwards: a rectangle, a sector upside down
    apex_y = (q_right - q_left) / (p_left - p_right)
    apex_x = p_left * apex_y + q_left
    if apex_y > rows[0]:
        return None
    # The far edge: the lowest image point of each column, off the frame's edge and clear
    # of both side lines (where the arc meets a side, the corner belongs to neither).
    columns = np.arange(width)
    bottom = height - 1 - np.argmax(mask[::-1], axis=0)
    keep = mask.any(axis=0) & (bottom > 2) & (bottom < height - 3)
    keep &= columns > p_left * bottom + q_left + 2 * settings.edge_tolerance_px + 1
    keep &= columns < p_right * bottom + q_right - 2 * settings.edge_tolerance_px - 1
    if keep.sum() < settings.min_arc_fraction * width:
        return None
    dx = columns[keep] - apex_x
    dy2 = (bottom[keep] - apex_y) ** 2.0
    arc = _far_arc(dx, dy2, settings, rng)
    if arc is None:
        return None
    a, r2, on_arc = arc
    if (on_arc.sum() < settings.min_arc_fraction * width
            or on_arc.mean() < settings.min_arc_share
            or not _black_beyond(grey, columns[keep][on_arc], bottom[keep][on_arc], settings)):
        return None
    stretch = 1.0 / math.sqrt(a)
    low, high = settings.stretch_range
    if not low <= stretch <= high:
        return None
    # Spread and balance, in the arc's own (unstretched) units: a short or one-sided piece
    # of curve fits an ellipse of any shape.
    across = dx[on_arc] / stretch
    radius = math.sqrt(r2)
    if (across.max() - across.min()) < settings.min_arc_span * radius:
        return None
    share_left = float((across < 0).mean())
    if min(share_left, 1.0 - share_left) < settings.min_side_share:
        return None
    return FanReading(round(stretch, 4), (round(apex_x, 1), round(apex_y, 1)),
                      round(radius, 1), int(on_arc.sum()))


def screen_key(source: str, shape: tuple[int, ...]) -> str:
    """A screen as the box sees it, whose verdict holds while it lasts: the source's name
    and the frame's size (a grabber set anew comes back at another size, or another name)."""
    height, width = shape[:2]
    return f"{str(source)[:280]}|{width}x{height}"


_KEY_SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")


def parse_screen_key(key: str) -> tuple[str, tuple[int, int] | None]:
    """A `screen_key` read back: (source, (height, width)), or (the key whole, None) for
    a key the box does not write (no "|WxH" after the source)."""
    source, _, size = key.rpartition("|")
    sized = _KEY_SIZE.fullmatch(size) if source else None
    if sized is None:
        return key, None
    return source, (int(sized.group(2)), int(sized.group(1)))


def _grabber_width(width: int, setting: float) -> int:
    """The grabber's own frame width, from its frames' `width` after `[source] stretch =
    setting` (`narrowing` makes it round(the grabber's / setting))."""
    return round(width * setting)


def same_frames(settings: FanSettings, shape: tuple[int, ...] | None,
                read_under: float) -> bool:
    """Whether frames of `shape` (as the box keys a screen: after `[source] stretch`), read
    under the setting `read_under`, are the very frames the box reads at that size under the
    setting now (`undone`): their grabber's own width narrowed by the setting now is their
    width again (the same setting, or one refined by less than a pixel). Else frames of
    this size now come from a grabber frame of another width: another picture."""
    if read_under == settings.undone:
        return True
    if shape is None or len(shape) < 2:
        return False
    width = shape[1]
    return round(_grabber_width(width, read_under) / settings.undone) == width


def under_setting(settings: FanSettings, stretch: float, shape: tuple[int, ...],
                  read_under: float) -> tuple[float, tuple[int, int]]:
    """What a screen whose fan read `stretch` on frames of `shape` under `[source] stretch =
    read_under` reads under the setting now (`undone`), and its frames' (height, width)
    then: the same grabber frames narrowed by the setting now instead (`narrowing`). The
    narrowing scales across only, and the reading (the far edge's width over its height)
    scales with it: the stretch times the new width over the old. The picture the grabber
    draws is unchanged, so the setting that undoes it (`StretchWatch.setting`, the setting
    times the reading) is the same either way."""
    height, width = shape[:2]
    now = max(1, round(_grabber_width(width, read_under) / settings.undone))
    return round(stretch * now / width, 4), (height, now)


def setting_words(setting: float | None) -> str:
    """A `[source] stretch` as `sonoedge status` and `run`'s log name it."""
    if setting is None:
        return "a [source] stretch not recorded"
    return "no [source] stretch" if setting == 1.0 else f"[source] stretch = {setting:g}"


def sd_ratio(settings: FanSettings, shape: tuple[int, ...] | None) -> float | None:
    """What the fan of a 4:3 picture reads in a frame of this size drawn by an SD grabber
    (`sd_sizes`); None for any other size, or where `[source] stretch` narrowed the frames
    (their size is then not the grabber's)."""
    if shape is None or len(shape) < 2 or settings.undone != 1.0:
        return None
    height, width = shape[:2]
    return next((ratio for w, h, ratio in settings.sd_sizes if (w, h) == (width, height)),
                None)


def setting_for_another_size(settings: FanSettings,
                             shape: tuple[int, ...] | None) -> tuple[int, int] | None:
    """The SD size whose squeeze `[source] stretch` undoes (`sd_sizes`), where the grabber's
    own frames (`shape` is theirs after the setting: `edge.capture.sources.narrowing`) are
    not of that size; else None. 0.9375 set on a grabber that keeps the picture's shape
    draws every head 6.7% too wide (HC 3-4% large), and the fan reads 1.067, within the 8%:
    only the frame's size tells."""
    if settings.undone == 1.0 or shape is None or len(shape) < 2:
        return None
    height, width = shape[:2]
    before = _grabber_width(width, settings.undone)  # before the setting
    sizes = [(w, h) for w, h, ratio in settings.sd_sizes
             if abs(settings.undone / ratio - 1.0) < 1e-3]  # the sizes it is the ratio of
    if not sizes or any(abs(before - w) <= 1 and height == h for w, h in sizes):
        return None
    return sizes[0]


def another_size(settings: FanSettings, shape: tuple[int, ...] | None) -> str | None:
    """What a setting made for another size costs (`setting_for_another_size`), where it
    is one; else None. One wording for `run`'s log (`Scorer._new_screen`) and `sonoedge
    status`, for a screen whose frames are `shape` (after the setting, as the box keys it)."""
    meant = setting_for_another_size(settings, shape)
    if meant is None:
        return None
    undone = settings.undone
    return (f"[source] stretch = {undone:g} undoes an SD grabber's {meant[0]}x{meant[1]}, but "
            f"this grabber's frames are {round(shape[1] * undone)}x{shape[0]}: if its picture "
            "keeps the scanner's shape, remove the setting: it draws every head "
            f"{abs(1.0 / undone - 1.0) * 100:.1f}% too {'wide' if undone < 1.0 else 'narrow'} "
            "(HC about half that off), too little for the fan's check to tell")


def limits(settings: FanSettings, shape: tuple[int, ...] | None) -> tuple[float, float]:
    """How far below and above 1.0 the median may read before the verdict: `tolerance`
    either way; at an SD size, on its ratio's side, halfway between what a true screen
    reads (`true_reads`) and what it reads squeezed by that ratio, where that is nearer."""
    below = above = settings.tolerance
    ratio = sd_ratio(settings, shape)
    low, high = settings.true_reads
    if ratio is not None and ratio * high < low:
        below = min(below, 1.0 - (low + ratio * high) / 2)
    elif ratio is not None and ratio * low > high:
        above = min(above, (high + ratio * low) / 2 - 1.0)
    return below, above


class StretchWatch:
    """The verdict from the frames that showed their fan: the median of the last few, with
    a margin to turn back (`back_fraction`), and, until this screen has given its own, the
    verdict remembered from the box's last run (`remembered`). The frame's size (`shape`)
    is evidence too: an SD grabber's squeezes a 4:3 picture by a known ratio (`limits`)."""

    def __init__(self, settings: FanSettings = FanSettings(),
                 remembered: float | None = None,
                 shape: tuple[int, ...] | None = None) -> None:
        self.settings = settings
        self._readings: deque[float] = deque(maxlen=settings.readings)
        self.clear(remembered, shape)

    def _beyond(self, stretch: float, stretched_now: bool) -> bool:
        below, above = self._limits
        limit = (below if stretch < 1.0 else above) * (
            self.settings.back_fraction if stretched_now else 1)
        return abs(stretch - 1.0) > limit

    def add(self, reading: FanReading | None) -> None:
        if reading is None:
            return
        self._readings.append(reading.stretch)
        stretch = self.stretch
        if stretch is not None:
            self._stretched = self._beyond(stretch, self._stretched)

    def clear(self, remembered: float | None = None,
              shape: tuple[int, ...] | None = None) -> None:
        """A new screen (source and frame size, `shape` its frame's): no readings yet."""
        self._readings.clear()
        self.remembered = remembered
        self.shape = tuple(shape[:2]) if shape is not None else None
        self.sd_ratio = sd_ratio(self.settings, shape)
        self._limits = limits(self.settings, shape)
        self._stretched = remembered is not None and self._beyond(remembered, False)

    @property
    def count(self) -> int:
        return len(self._readings)

    @property
    def fresh(self) -> bool:
        """Whether this screen has given enough readings of its own for a verdict."""
        return len(self._readings) >= self.settings.min_readings

    @property
    def stretch(self) -> float | None:
        """The median stretch of this screen's readings once there are enough, else the one
        remembered; None where neither is known."""
        if not self.fresh:
            return self.remembered
        return float(np.median(self._readings))

    @property
    def stretched(self) -> bool:
        """True only on evidence: a screen that never shows its fan is not called stretched."""
        return self._stretched

    @property
    def as_sd(self) -> bool:
        """Whether the median reads as this SD size draws a 4:3 picture (within the
        tolerance of its ratio): the ratio, not the noisier reading, is then the fix."""
        stretch = self.stretch
        return (self.sd_ratio is not None and stretch is not None
                and abs(stretch / self.sd_ratio - 1.0) <= self.settings.tolerance)

    @property
    def setting(self) -> float | None:
        """The `[source] stretch` that undoes the verdict (frames are narrowed by it before
        anything reads them, `edge.capture.sources.narrowing`): the SD ratio where the
        median reads as one, else the median, times any setting already undone."""
        stretch = self.stretch
        if stretch is None:
            return None
        if self.as_sd:
            return round(self.sd_ratio, 4)
        return round(self.settings.undone * stretch, 3)

    @property
    def frame(self) -> str | None:
        """The grabber's own frame size ("720x576") the `setting` is for: this screen's
        frames widened back by any setting already undone (it narrowed them), as
        `setting_for_another_size` reads them. A setting is one number for every frame the
        grabber sends: at another size it is another setting. None where the size is not
        known."""
        if self.shape is None or len(self.shape) < 2:
            return None
        height, width = self.shape
        return f"{max(1, _grabber_width(width, self.settings.undone))}x{height}"


def refusal(watch: StretchWatch) -> str:
    """Why a screen found stretched has its heads refused, and the fix: how the picture is
    drawn (an SD grabber's squeeze where its size tells, `as_sd`), and the setting that
    undoes it. One wording for `run`'s log (`Scorer._say_stretch`) and `sonoedge status`."""
    stretch = watch.stretch or 1.0
    sd = (f", as an SD grabber draws a 4:3 picture in {watch.shape[1]}x{watch.shape[0]} "
          f"({watch.sd_ratio:.4g})" if watch.as_sd else "")
    # the example is this grabber's own where its size tells it (a PAL squeeze was told
    # how a 16:9 frame reads): the same picture with square pixels
    shape = (f"{round(watch.shape[1] / watch.sd_ratio)}x{watch.shape[0]}, not "
             f"{watch.shape[1]}x{watch.shape[0]}" if watch.as_sd else
             "a 4:3 screen filling a 16:9 frame reads 1.33")
    return (f"the picture is {'stretched' if stretch > 1.0 else 'squeezed'} sideways{sd}, so "
            "heads are not measured. Set the grabber to keep the scanner's own shape "
            f"({shape}), or, where it cannot be set, set [source] stretch = {watch.setting:g} "
            "to undo it")


def setting_read_back(value: object) -> float | None:
    """A `StretchWatch.setting` carried past the scorer (a frame's biometry
    `stretch_setting`, the exam's, the journal's: any of them may be damaged) as a number
    to name, to four decimals, where it is one `[source] stretch` accepts; else None, and
    the fix is said without it."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond a float
        return None
    if not MIN_SOURCE_STRETCH <= number <= MAX_SOURCE_STRETCH:  # NaN fails it too
        return None
    return round(number, 4)


def frame_read_back(value: object) -> str | None:
    """A `StretchWatch.frame` carried past the scorer (a frame's biometry `stretch_frame`,
    the exam's, the journal's: any of them may be damaged) as "WxH", where it is a size a
    screen key writes (`_KEY_SIZE`, neither side 0); else None, and the setting is named
    without it."""
    sized = _KEY_SIZE.fullmatch(value) if isinstance(value, str) else None
    if sized is None or not all(int(side) for side in sized.groups()):
        return None
    return f"{int(sized.group(1))}x{int(sized.group(2))}"
