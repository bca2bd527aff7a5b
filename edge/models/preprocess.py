"""Turn a region of a screen frame into exactly the tensor a model's manifest asks for.

One function serves the teacher, the student, calibration and the device, so there is no
train/serve skew: every number comes from the manifest's `preprocessing` block.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from edge.models.roi import Roi, to_grey

RESIZE_MODES = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}
NORMALISE_MODES = ("per_image_zscore", "unit")


@dataclass(frozen=True)
class PreprocessSpec:
    """The manifest's `preprocessing` block.

    `per_image_zscore` is SonoNet's own normalisation: (x - mean) / std of the image, times
    `scale` (255 for the teacher, "arbitrary but necessary because the network was trained
    like this"). The crop is the region found by `edge.models.roi`, or the whole frame.
    """

    height: int
    width: int
    roi: str = "auto"  # "auto" (edge.models.roi) or "full"
    color: str = "grey_mean"
    resize: str = "area"
    normalise: str = "per_image_zscore"
    scale: float = 1.0

    @classmethod
    def from_dict(cls, data: dict, where: str = "preprocessing") -> PreprocessSpec:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key {unknown[0]!r}")
        try:
            spec = cls(**data)
        except TypeError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if spec.resize not in RESIZE_MODES:
            raise ValueError(f"{where}.resize: {spec.resize!r} is not one of {list(RESIZE_MODES)}")
        if spec.normalise not in NORMALISE_MODES:
            raise ValueError(f"{where}.normalise: {spec.normalise!r} is not supported")
        if spec.roi not in ("auto", "full") or spec.color != "grey_mean":
            raise ValueError(f"{where}: roi must be auto|full and color grey_mean")
        if spec.height < 8 or spec.width < 8:
            raise ValueError(f"{where}: input size {spec.height}x{spec.width} is too small")
        return spec

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FrameViews:
    """One frame's grey region, made once and shared by every model that reads the frame.

    The plane model, the head segmenter and the quality head all start from the same grey
    crop of the region. Greying a 1024x768 colour frame costs about as much as a model's
    invoke, so making it once per frame instead of once per model saves milliseconds on
    every frame, with exactly the same pixels.
    """

    image: np.ndarray
    roi: Roi | None
    _grey: dict[bool, np.ndarray] = field(default_factory=dict, repr=False)
    _boxes: dict[tuple[int, int, int, int], np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def from_grey(cls, image: np.ndarray, roi: Roi | None, grey: np.ndarray) -> FrameViews:
        """The views of a frame whose whole grey (`to_grey(image)`) is made already."""
        views = cls(image, roi)
        views._grey[False] = grey
        return views

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

    def prepare_box(self, spec: PreprocessSpec, box: tuple[int, int, int, int]) -> np.ndarray:
        """The model input for a box the caller chose, float32 of shape (1, 1, H, W)."""
        small = cv2.resize(self.box_grey(box), (spec.width, spec.height),
                           interpolation=RESIZE_MODES[spec.resize])
        return normalise(small, spec)[None, None]

    def resized(self, spec: PreprocessSpec) -> np.ndarray:
        """Crop, grey and resize: the uint8 view a model sees, before normalisation."""
        return cv2.resize(self.grey(spec), (spec.width, spec.height),
                          interpolation=RESIZE_MODES[spec.resize])

    def prepare(self, spec: PreprocessSpec) -> np.ndarray:
        """The model input, float32 of shape (1, 1, H, W)."""
        return normalise(self.resized(spec), spec)[None, None]


def grey_resized(image: np.ndarray, roi: Roi | None, spec: PreprocessSpec) -> np.ndarray:
    """Crop, grey and resize: the uint8 view both nets see, before normalisation."""
    return FrameViews(image, roi).resized(spec)


def normalise(grey: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Per-image z-score (a flat image maps to zeros instead of NaN) or unit scaling, as
    float32 (H, W)."""
    x = grey.astype(np.float32)
    if spec.normalise == "unit":
        return x * np.float32(spec.scale / 255.0)
    std = float(x.std())
    if std < 1e-6:
        return np.zeros_like(x)
    return ((x - float(x.mean())) / std * spec.scale).astype(np.float32)


def prepare(image: np.ndarray, roi: Roi | None, spec: PreprocessSpec) -> np.ndarray:
    """The model input, float32 of shape (1, 1, H, W)."""
    return FrameViews(image, roi).prepare(spec)
