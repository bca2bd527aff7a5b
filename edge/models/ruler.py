"""The scanner's depth ruler, read from the screen: the scale of the image on this frame.

Why: a box calibrated once (`[biometry] pixel_size_mm`) holds for one depth and zoom of the
scanner. The audit's most common advice, "Zoom in", asks the midwife to change exactly that,
and every HC after it would be wrong by the ratio of the depths without a word. Scanners draw
a depth ruler beside the image: evenly spaced ticks a fixed distance apart in the body (5 mm
on the GE Voluson E8 screens of the SonoNet examples, with a longer tick every centimetre).
Read on the frame being measured, the ruler gives the frame's own mm per pixel, whatever the
depth or zoom: `[biometry] ruler_tick_mm` / the tick spacing in pixels.

How. A ruler lives on the screen's dark margin, so only columns that are mostly dark are
searched. In each, the bright runs no thicker than a tick are the candidate ticks; the
longest chain of them spaced evenly (each the same distance from the last, within a pixel
and a half) is that column's ruler. Of all columns, the longest chain wins: on a ruler with
long and short ticks, the column crossing every tick holds more than the columns crossing
only the long ones, so the spacing read is that of the finest ticks, which is what
`ruler_tick_mm` names. The spacing is the least-squares slope of tick position on tick
number, so twenty ticks give it to a few hundredths of a pixel. A chain that is too short,
spans too little of the screen, or bends (a tick more than `max_residual_px` off the line)
is no ruler: the frame's head is then not measured, rather than measured on a guess. So is
a chain with faint marks half-way between its ticks: a capture scaled down fades the finest
ticks, and the chain left is every other tick, half the scale (`_finer_ticks_between`).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class RulerSettings:
    """Every number of the reading. The defaults were read off the real screens here: the 13
    SonoNet examples (GE Voluson E8, 975x735, ticks 29-80 px apart, 1-3 px thick) and the 20
    umbilical-cord frames (GE Voluson E10, 640x480 JPEG, ticks 28-33 px apart)."""

    tick_min_grey: int = 90  # a tick is at least this bright (E10 JPEG ticks: 95-255)
    tick_min_contrast: int = 60  # and this much brighter than the rows a tick's width away
    search_band_share: float = 0.15  # rulers are read within this share of each side
    max_tick_px: int = 4  # a bright run thicker than this is text or tissue, not a tick
    min_ticks: int = 6  # fewer evenly spaced ticks are not trusted as a ruler
    min_spacing_px: float = 6.0  # ticks closer than this cannot be told from noise
    spacing_tolerance_px: float = 1.5  # each tick within this of the last plus the spacing
    max_gap_ticks: int = 3  # ticks hidden by tissue over the ruler, at most, between two
    max_hidden_share: float = 1.0  # hidden ticks at most this share of those found
    # the chain's ticks are at least this share of the bright runs over its span: stripes
    # every few rows hold an even chain too, with as many runs between its ticks
    min_chain_share: float = 0.5
    max_residual_px: float = 1.5  # no tick further than this from the fitted line (the
    # ticks are drawn at whole rows, each up to half a row off, and a tick 2 or 3 rows thick
    # puts its centre half a row further)
    min_span_share: float = 0.3  # the chain spans at least this share of the frame height
    max_runs_per_column: int = 400  # a column with more bright runs is noise: skipped
    keep_share: float = 0.8  # the last column is read again while it scores this share
    max_columns: int = 12  # the columns most like a ruler searched tick by tick
    # Finer ticks between the chain's: a screen captured smaller than the scanner drew it
    # (a capture card scaling 1024x768 to 640x480) fades the 1-pixel 5 mm ticks below a
    # tick's brightness while the wide centimetre ticks stay, and the chain read is then
    # every other tick: half the scale, every HC halved. Where a faint thin mark (top-hat
    # at least `finer_min_contrast`, within `finer_search_px` columns of the chain) lies
    # half-way between at least `finer_share` of the chain's neighbouring ticks, and
    # `finer_margin_share` of them more often than a quarter of the way, the ruler is not
    # trusted. Read off the 13 SonoNet screens resized 0.3-2.0x (area, bilinear, bicubic,
    # nearest; lossless and JPEG 75 and 50) and the 19 E10 cord frames read, resized
    # 0.5-1.5x: of some 4,800 right readings, none is refused.
    finer_min_contrast: int = 15
    finer_search_px: int = 3
    finer_share: float = 0.6
    finer_margin_share: float = 0.3


@dataclass(frozen=True)
class Ruler:
    """The ruler found: where, and its tick spacing."""

    x: int  # the column read
    first_y: float  # the first tick's centre (the fitted line at tick 0)
    spacing_px: float  # least-squares distance between neighbouring ticks
    ticks: int  # ticks found
    hidden: int  # ticks between them not found (tissue over the ruler)
    residual_px: float  # the largest distance of a tick from the fitted line

    @property
    def score(self) -> int:
        return self.ticks - self.hidden

    def mm_per_px(self, tick_mm: float) -> float:
        return tick_mm / self.spacing_px

    def to_dict(self) -> dict:
        return {"x": self.x, "first_y": round(self.first_y, 2),
                "spacing_px": round(self.spacing_px, 3), "ticks": self.ticks,
                "hidden": self.hidden,                 "residual_px": round(self.residual_px, 3)}


def _tick_centres(column: np.ndarray, settings: RulerSettings) -> np.ndarray | None:
    """Centres of the column's bright runs no thicker than a tick; None for a noisy column."""
    bright = np.concatenate(([False], column, [False])).astype(np.int8)
    edges = np.diff(bright)
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if len(starts) > settings.max_runs_per_column:
        return None
    thin = (ends - starts) <= settings.max_tick_px
    return (starts[thin] + ends[thin] - 1) / 2.0


def _longest_chain(centres: np.ndarray, settings: RulerSettings
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The longest run of centres each a whole number of `spacing`s after the last (within
    the tolerance; at most `max_gap_ticks` ticks hidden between two, as tissue over the
    ruler hides them), trying as the spacing each distance from a centre to one of its next
    three. Returns the ticks' numbers and their centres."""
    n, tol = len(centres), settings.spacing_tolerance_px
    ys = centres.tolist()
    best_at, best = np.zeros(0), centres[:0]
    for i in range(n):
        if n - i <= _score(best_at):  # no chain from here can score more
            break
        for j in range(i + 1, min(n, i + 4)):
            spacing = ys[j] - ys[i]
            if spacing < settings.min_spacing_px:
                continue
            at, chain = [0, 1], [ys[i], ys[j]]
            while len(chain) < n:  # bounded: each step takes a later centre
                for step in range(1, settings.max_gap_ticks + 2):
                    target = chain[-1] + step * spacing
                    k = bisect.bisect_left(ys, target - tol)
                    if k < n and ys[k] <= target + tol:
                        at.append(at[-1] + step)
                        chain.append(ys[k])
                        break
                else:
                    break
            if 2 * len(at) - at[-1] > _score(best_at):
                best_at, best = np.asarray(at, dtype=np.float64), np.asarray(chain)
    return best_at, best


def _score(at) -> float:
    """Ticks found less ticks hidden: a chain at half the true spacing finds every tick
    and hides as many again, so it never beats the true one."""
    return 2 * len(at) - (at[-1] + 1) if len(at) else -1


def _fit(index: np.ndarray, chain: np.ndarray) -> tuple[float, float, float]:
    """(first_y, spacing, largest residual) of the least-squares line through the chain."""
    spacing, first = np.polyfit(index, chain, 1)
    residual = float(np.max(np.abs(chain - (first + spacing * index))))
    return float(first), float(spacing), residual


def _candidate_columns(peaks: np.ndarray, settings: RulerSettings) -> np.ndarray:
    """The band's columns most like a ruler, by how many of their peaks have a partner at
    one common distance: the autocorrelation of every column at once (FFT), so the exact
    chain search runs on a few columns, not on every one."""
    height = peaks.shape[0]
    signal = peaks.astype(np.float32)
    counts = signal.sum(axis=0)
    columns = np.flatnonzero(counts >= settings.min_ticks)
    if not len(columns):
        return columns
    counts = counts[columns]
    rows = np.zeros((len(columns), cv2.getOptimalDFTSize(2 * height)), np.float32)
    rows[:, :height] = signal[:, columns].T
    rows[:, 1:height] = np.maximum(rows[:, 1:height], rows[:, :height - 1])  # a pixel's give
    spectrum = cv2.dft(rows, flags=cv2.DFT_ROWS | cv2.DFT_COMPLEX_OUTPUT)
    power = cv2.mulSpectrums(spectrum, spectrum, cv2.DFT_ROWS, conjB=True)
    lags = cv2.idft(power, flags=cv2.DFT_ROWS | cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE)
    lags = lags[:, int(settings.min_spacing_px):height]
    pairs = lags.max(axis=1) / 2.0  # each tick pair counts twice after the widening
    ranked = np.argsort(-(pairs / counts * np.minimum(pairs, settings.min_ticks * 4)),
                        kind="stable")
    ranked = ranked[pairs[ranked] >= settings.min_ticks - 1]
    return columns[ranked[:settings.max_columns]]


def _thin_contrast(band: np.ndarray, settings: RulerSettings
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(grey, how much brighter each pixel is than the rows a tick's width away): a
    vertical top-hat, what makes a tick stand out on the margin or over tissue."""
    grey = band if band.ndim == 2 else cv2.cvtColor(band, cv2.COLOR_BGR2GRAY)
    kernel = np.ones((2 * settings.max_tick_px + 1, 1), np.uint8)
    return grey, cv2.morphologyEx(grey, cv2.MORPH_TOPHAT, kernel)


def _tick_peaks(band: np.ndarray, settings: RulerSettings) -> np.ndarray:
    """Pixels bright, and thin in y: what a tick is made of, on the margin or over tissue."""
    grey, contrast = _thin_contrast(band, settings)
    return (contrast >= settings.tick_min_contrast) & (grey >= settings.tick_min_grey)


def _column_ruler(column: np.ndarray, x: int, height: int, settings: RulerSettings
                  ) -> Ruler | None:
    centres = _tick_centres(column, settings)
    if centres is None or len(centres) < settings.min_ticks:
        return None
    index, chain = _longest_chain(centres, settings)
    if len(chain) < settings.min_ticks or chain[-1] - chain[0] < settings.min_span_share * height:
        return None
    hidden = int(index[-1]) + 1 - len(chain)
    if hidden > len(chain) * settings.max_hidden_share:
        return None
    inside = np.count_nonzero((centres >= chain[0]) & (centres <= chain[-1]))
    if len(chain) < settings.min_chain_share * inside:  # a ruler's ticks stand alone
        return None
    first, spacing, residual = _fit(index, chain)
    if residual > settings.max_residual_px:
        return None
    return Ruler(x, first, spacing, len(chain), hidden, residual)


def _finer_ticks_between(image: np.ndarray, ruler: Ruler, settings: RulerSettings) -> bool:
    """Whether faint thin marks lie half-way between the ruler's ticks (and not a quarter
    of the way): the ticks read are then every other one of the ruler's finest, which a
    downscaled capture faded (`RulerSettings.finer_min_contrast`)."""
    height, width = image.shape[:2]
    x0 = max(0, ruler.x - settings.finer_search_px)
    x1 = min(width, ruler.x + settings.finer_search_px + 1)
    contrast = _thin_contrast(np.ascontiguousarray(image[:, x0:x1]), settings)[1].max(axis=1)
    # the brightest mark within 1.5 rows either side of each row (5 rows from lo = y - 1.5)
    window = np.lib.stride_tricks.sliding_window_view(contrast, min(5, height)).max(axis=1)
    steps = np.arange(ruler.ticks + ruler.hidden - 1)

    def marked(fraction: float) -> tuple[int, int]:
        lo = np.floor(ruler.first_y + (steps + fraction) * ruler.spacing_px - 1.5)
        lo = lo[(lo >= 0) & (lo < len(window))].astype(int)
        return int(np.count_nonzero(window[lo] >= settings.finer_min_contrast)), len(lo)

    halfway, looked = marked(0.5)
    if not looked:
        return False
    quarter = max(marked(0.25)[0], marked(0.75)[0])
    return (halfway >= settings.finer_share * looked
            and halfway - quarter >= settings.finer_margin_share * looked)


def _search_bands(image: np.ndarray, settings: RulerSettings) -> list[tuple[int, int]]:
    """(first column, width) of each band searched: `search_band_share` of the frame at
    either side, and of the screen within it where the scanner's screen does not fill the
    frame (a 4:3 or 5:4 screen in a 1920x1080 capture, black at its sides: the ruler lies
    within the screen's own band, past the frame's). The screen's sides are its first and
    last columns holding a pixel as bright as a tick."""
    width = image.shape[1]
    band = max(1, min(width, int(round(width * settings.search_band_share))))
    bands = {(0, band), (width - band, band)}
    column_max = image.max(axis=0)
    if column_max.ndim == 2:
        column_max = column_max.max(axis=1)
    lit = np.flatnonzero(column_max >= settings.tick_min_grey)
    # black bars wider than half a band: the screen's own bands lie past the frame's
    if len(lit) and (lit[0] > band // 2 or width - 1 - lit[-1] > band // 2):
        left, right = int(lit[0]), int(lit[-1]) + 1
        inner = max(1, int(round((right - left) * settings.search_band_share)))
        bands.update({(left, inner), (right - inner, inner)})
    return sorted(bands)


def read_ruler(image: np.ndarray, settings: RulerSettings = RulerSettings()) -> Ruler | None:
    """The depth ruler on a screen (H, W grey or H, W, 3 BGR uint8), or None where there is
    none to trust. Only the bands at either side are read, so the cost does not grow with
    the image between them."""
    if image.ndim not in (2, 3) or image.shape[0] < settings.min_ticks or image.shape[1] < 1:
        return None
    height, width = image.shape[:2]
    best: Ruler | None = None
    for x0, band in _search_bands(image, settings):
        peaks = _tick_peaks(np.ascontiguousarray(image[:, x0:x0 + band]), settings)
        for x in _candidate_columns(peaks, settings):
            if best is not None and np.count_nonzero(peaks[:, x]) <= best.score:
                continue
            found = _column_ruler(peaks[:, x], x0 + int(x), height, settings)
            if found is not None and (best is None or (found.score, -found.residual_px)
                                      > (best.score, -best.residual_px)):
                best = found
    if best is not None and _finer_ticks_between(image, best, settings):
        return None  # every other tick: half the scale, not a guess to measure on
    return best


@dataclass
class RulerReader:
    """Reads the ruler frame after frame: the column it was last found in is read first
    (well under a millisecond), and the whole search (a few milliseconds) runs only where
    that column no longer holds as good a ruler: a new depth rescales the ticks in the same
    column, and that column's new spacing is read like the first."""

    tick_mm: float
    settings: RulerSettings = RulerSettings()
    last: Ruler | None = None

    def read(self, image: np.ndarray) -> Ruler | None:
        last = self.last
        if last is not None and image.ndim in (2, 3) and last.x < image.shape[1]:
            peaks = _tick_peaks(np.ascontiguousarray(image[:, last.x:last.x + 1]),
                                self.settings)
            again = _column_ruler(peaks[:, 0], last.x, image.shape[0], self.settings)
            if (again is not None and again.score >= self.settings.keep_share * last.score
                    and not _finer_ticks_between(image, again, self.settings)):
                self.last = again
                return again
        self.last = read_ruler(image, self.settings)
        return self.last
