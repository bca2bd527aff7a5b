"""Turn a region of a screen frame into exactly the tensor a model's manifest asks for.

One function serves the teacher, the student, calibration and the device, so there is no
train/serve skew: every number comes from the manifest's `preprocessing` block. The one
knowing difference: a manifest's `half_res_from` lets the device read the frame at half
resolution while training views stay at full; through the device path it changed no
answer measurably (docs/measurements.md, "This stop (4th of 2 December)").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from edge.models.roi import Roi, to_grey
from wire.shown import shown

RESIZE_MODES = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}
NORMALISE_MODES = ("per_image_zscore", "unit")
MAX_HALF_RES_FROM = 16.0


# The keys a manifest's `preprocessing` block must give (`PreprocessSpec.from_dict`).
REQUIRED_KEYS = ("height", "width", "roi", "color", "resize", "normalise", "scale")


@dataclass(frozen=True)
class PreprocessSpec:
    """The manifest's `preprocessing` block.

    `per_image_zscore` is SonoNet's own normalisation: (x - mean) / std of the image, times
    `scale` (255 for the teacher, "arbitrary but necessary because the network was trained
    like this"). The crop is the region found by `edge.models.roi`, or the whole frame.

    `half_res_from`: read the region from a half-resolution grey of the frame (each 2x2
    block's mean, made once per frame and shared by every model) where the region there is
    still at least this many times the model's input in each direction; 0 reads the frame
    at full resolution. A non-integer area resize of a 700x950 region costs about 1 ms and
    greying it another; from half resolution both cost a quarter. The view differs from the
    full-resolution one by under a grey level on average (a 2x2 mean, then the area resize:
    a slightly wider box filter) and the region's edges move to even pixels.
    """

    height: int
    width: int
    roi: str = "auto"  # "auto" (edge.models.roi) or "full"
    color: str = "grey_mean"
    resize: str = "area"
    normalise: str = "per_image_zscore"
    scale: float = 1.0
    half_res_from: float = 0.0

    @classmethod
    def from_dict(cls, data: dict, where: str = "preprocessing") -> PreprocessSpec:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key {shown(unknown[0])}")
        # What the net was trained on must be said, not defaulted: a quality head's manifest
        # without `normalise` would silently feed it z-scores instead of its 0-1 greys.
        # (`half_res_from` alone may be left out: manifests before it read at full size.)
        missing = [key for key in REQUIRED_KEYS if key not in data]
        if missing:
            raise ValueError(f"{where}: lacks {missing[0]!r} (what the model was trained on "
                             "is never assumed)")
        try:
            spec = cls(**data)
        except TypeError as exc:
            raise ValueError(f"{where}: {exc}") from None
        for name in ("height", "width"):
            if isinstance(getattr(spec, name), bool) or not isinstance(getattr(spec, name), int):
                raise ValueError(f"{where}.{name}: {shown(getattr(spec, name))} is not a whole "
                                 "number")
        if (isinstance(spec.scale, bool) or not isinstance(spec.scale, int | float)
                or not math.isfinite(spec.scale) or spec.scale <= 0):
            raise ValueError(f"{where}.scale: {shown(spec.scale)} is not a positive number")
        if not isinstance(spec.resize, str) or spec.resize not in RESIZE_MODES:
            raise ValueError(f"{where}.resize: {shown(spec.resize)} is not one of "
                             f"{list(RESIZE_MODES)}")
        if spec.normalise not in NORMALISE_MODES:
            raise ValueError(f"{where}.normalise: {shown(spec.normalise)} is not supported")
        if spec.roi not in ("auto", "full") or spec.color != "grey_mean":
            raise ValueError(f"{where}: roi must be auto|full and color grey_mean")
        if spec.height < 8 or spec.width < 8:
            raise ValueError(f"{where}: input size {spec.height}x{spec.width} is too small")
        half = spec.half_res_from
        if (isinstance(half, bool) or not isinstance(half, int | float) or not math.isfinite(half)
                or not (half == 0 or 1.0 <= half <= MAX_HALF_RES_FROM)):
            raise ValueError(f"{where}.half_res_from: {shown(half)} must be 0 (never) or a "
                             f"number from 1 to {MAX_HALF_RES_FROM:g}")
        return spec

    def to_dict(self) -> dict:
        """The manifest's block; `half_res_from` only where it is set, so a spec without it
        writes (and keys its caches on) the block it always did."""
        block = asdict(self)
        if not self.half_res_from:
            del block["half_res_from"]
        return block


@dataclass
class FrameViews:
    """One frame's grey region, made once and shared by every model that reads the frame.

    The plane model, the head segmenter and the quality head all start from the same grey
    crop of the region, or from the same half-resolution grey of the frame where their
    manifests ask for it (`PreprocessSpec.half_res_from`). Greying a 1024x768 colour frame
    costs about as much as a model's invoke, so making it once per frame instead of once
    per model saves milliseconds on every frame, with exactly the same pixels.
    """

    image: np.ndarray
    roi: Roi | None
    _grey: dict[bool, np.ndarray] = field(default_factory=dict, repr=False)
    # The frame's half-resolution grey (`half_grey`), where the capture thread made it
    # already (`Frame.half_grey`); else made here when a model first reads it.
    half: np.ndarray | None = field(default=None, repr=False)
    _boxes: dict[tuple[int, int, int, int], np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def from_grey(cls, image: np.ndarray, roi: Roi | None, grey: np.ndarray,
                  half: np.ndarray | None = None) -> FrameViews:
        """The views of a frame whose whole grey (`to_grey(image)`) is made already."""
        views = cls(image, roi, half=half)
        views._grey[False] = grey
        return views

    def region_box(self, spec: PreprocessSpec) -> tuple[int, int, int, int]:
        """(x, y, w, h) a model with `spec` reads: the region, or the whole frame."""
        r = self.roi if spec.roi == "auto" else None
        return ((r.x, r.y, r.w, r.h) if r is not None else
                (0, 0, int(self.image.shape[1]), int(self.image.shape[0])))

    def grey(self, spec: PreprocessSpec) -> np.ndarray:
        cropped = self.roi is not None and spec.roi == "auto"
        if cropped not in self._grey:
            if cropped:
                self._grey[True] = (self.roi.crop(self._grey[False]) if False in self._grey
                                    else to_grey(self.roi.crop(self.image)))
            else:  # around the region's grey where there is one (box_grey)
                self._grey[False] = self.box_grey(
                    (0, 0, self.image.shape[1], self.image.shape[0]))
        return self._grey[cropped]

    def _grey_around(self, region: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """The grey of `box`, which holds the region, from the region's grey, greying only
        the four strips around it: the head segmenter reads the image's box or the whole
        frame after the plane model read the region, and greying costs about a millisecond
        per 400,000 pixels."""
        bx, by, bw, bh = box
        image = self.image[by:by + bh, bx:bx + bw]
        x, y, w, h = self.roi.x - bx, self.roi.y - by, self.roi.w, self.roi.h
        out = np.empty(image.shape[:2], np.uint8)
        out[y:y + h, x:x + w] = region
        for rows, cols in ((slice(0, y), slice(None)), (slice(y + h, None), slice(None)),
                           (slice(y, y + h), slice(0, x)), (slice(y, y + h), slice(x + w, None))):
            strip = image[rows, cols]
            if strip.size:
                out[rows, cols] = to_grey(np.ascontiguousarray(strip))
        return out

    def box_grey(self, box: tuple[int, int, int, int]) -> np.ndarray:
        """The grey of any box (x, y, w, h) inside the frame: a slice of a grey already
        made where one holds it, else only the box greyed."""
        x, y, w, h = box
        if False in self._grey:
            return self._grey[False][y:y + h, x:x + w]
        for (ox, oy, ow, oh), grey in self._boxes.items():  # a box greyed before holds it
            if ox <= x and oy <= y and x + w <= ox + ow and y + h <= oy + oh:
                return grey[y - oy:y - oy + h, x - ox:x - ox + w]
        grey = self._box_grey(box)
        self._boxes[box] = grey
        return grey

    def _box_grey(self, box: tuple[int, int, int, int]) -> np.ndarray:
        x, y, w, h = box
        r = self.roi
        if True in self._grey and self.image.ndim == 3:
            if r.x <= x and r.y <= y and x + w <= r.x + r.w and y + h <= r.y + r.h:
                return self._grey[True][y - r.y:y - r.y + h, x - r.x:x - r.x + w]
            if x <= r.x and y <= r.y and r.x + r.w <= x + w and r.y + r.h <= y + h:
                return self._grey_around(self._grey[True], box)
        return to_grey(np.ascontiguousarray(self.image[y:y + h, x:x + w]))

    def of_box(self, box: tuple[int, int, int, int]) -> FrameViews:
        """The views of a box of this frame as a frame of its own, its grey cut from a grey
        already made here (greying is per pixel, so the pixels are the same): a second
        pass on a crop around the head does not grey the crop again (0.5 ms with VNNI)."""
        x, y, w, h = box
        return FrameViews.from_grey(self.image[y:y + h, x:x + w], None, self.box_grey(box))

    def _half_region(self, box: tuple[int, int, int, int], spec: PreprocessSpec,
                     ) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
        """The half-resolution grey of `box` moved to even pixel edges, and that box, where
        the model reads half resolution and the box there still holds its input (see
        `PreprocessSpec.half_res_from`); else None."""
        if spec.half_res_from <= 0:
            return None
        x, y, w, h = box
        x0, y0 = x - x % 2, y - y % 2
        # Out to even edges; at a frame's odd last row or column, in by that one pixel.
        x1 = min(x + w + (x + w) % 2, self.image.shape[1] // 2 * 2)
        y1 = min(y + h + (y + h) % 2, self.image.shape[0] // 2 * 2)
        if (x1 - x0) / 2 < spec.half_res_from * spec.width or (
                y1 - y0) / 2 < spec.half_res_from * spec.height:
            return None
        half = self._half_grey()
        if half is None:  # a frame read at full resolution only (see `half_grey`)
            return None
        return half[y0 // 2:y1 // 2, x0 // 2:x1 // 2], (x0, y0, x1 - x0, y1 - y0)

    def _half_grey(self) -> np.ndarray | None:
        expected = (self.image.shape[0] // 2, self.image.shape[1] // 2)
        if self.half is None or self.half.shape != expected or self.half.dtype != np.uint8:
            self.half = half_grey(self.image)
        return self.half

    def resized_box(self, spec: PreprocessSpec, box: tuple[int, int, int, int],
                    ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """The uint8 view of a box the caller chose, and the box it covers: `box`, or where
        it is read at half resolution, `box` moved to even edges (out by a pixel, or in by
        one at a frame's odd last row or column)."""
        half = self._half_region(box, spec)
        grey, covered = (self.box_grey(box), box) if half is None else half
        return cv2.resize(grey, (spec.width, spec.height),
                          interpolation=RESIZE_MODES[spec.resize]), covered

    def prepare_box(self, spec: PreprocessSpec, box: tuple[int, int, int, int]) -> np.ndarray:
        """The model input for a box the caller chose, float32 of shape (1, 1, H, W)."""
        return normalise(self.resized_box(spec, box)[0], spec)[None, None]

    def resized(self, spec: PreprocessSpec) -> np.ndarray:
        """Crop, grey and resize: the uint8 view a model sees, before normalisation. At full
        resolution the region's grey is kept (`grey`): the segmenter's larger box is then
        greyed around it."""
        half = self._half_region(self.region_box(spec), spec)
        grey = self.grey(spec) if half is None else half[0]
        return cv2.resize(grey, (spec.width, spec.height), interpolation=RESIZE_MODES[spec.resize])

    def prepare(self, spec: PreprocessSpec) -> np.ndarray:
        """The model input, float32 of shape (1, 1, H, W)."""
        return normalise(self.resized(spec), spec)[None, None]


def half_grey(image: np.ndarray) -> np.ndarray | None:
    """A frame's grey at half resolution: the colour frame's 2x2 means (an exact halving,
    OpenCV's fast path), then greyed, a quarter of the pixels; None for a frame the models
    read at full resolution only (not 8-bit, or not grey or BGR). Cheapest where the frame
    was just decoded, its pixels still in that core's cache (`read_ahead(prepare=...)`)."""
    if image is None or image.dtype != np.uint8 or not (
            image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        return None
    h2, w2 = image.shape[0] // 2, image.shape[1] // 2
    if h2 < 1 or w2 < 1:
        return None
    small = cv2.resize(image[:2 * h2, :2 * w2], (w2, h2), interpolation=cv2.INTER_AREA)
    return to_grey(small)


def grey_resized(image: np.ndarray, roi: Roi | None, spec: PreprocessSpec) -> np.ndarray:
    """Crop, grey and resize: the uint8 view both nets see, before normalisation."""
    return FrameViews(image, roi).resized(spec)


def normalise(grey: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Per-image z-score (a flat image maps to zeros instead of NaN) or unit scaling, as
    float32 (H, W).

    An 8-bit view's mean and standard deviation come from one OpenCV pass, exact in double
    (NumPy's float32 mean and std took 0.3 ms of the 0.36 a view cost; they agree to the
    float32 the net is fed, bar a last bit now and then); the arithmetic is in place."""
    x = grey.astype(np.float32)
    if spec.normalise == "unit":
        x *= np.float32(spec.scale / 255.0)
        return x
    if grey.dtype == np.uint8 and grey.ndim == 2 and grey.size:
        mean_px, std_px = cv2.meanStdDev(grey)
        mean, std = float(mean_px[0, 0]), float(std_px[0, 0])
    else:
        mean, std = float(x.mean()), float(x.std())
    if not std >= 1e-6:  # flat, or no pixels at all
        return np.zeros_like(x)
    x -= np.float32(mean)
    x /= np.float32(std)
    x *= np.float32(spec.scale)
    return x


def prepare(image: np.ndarray, roi: Roi | None, spec: PreprocessSpec) -> np.ndarray:
    """The model input, float32 of shape (1, 1, H, W)."""
    return FrameViews(image, roi).prepare(spec)
