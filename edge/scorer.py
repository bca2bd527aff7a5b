"""Frame to result: the region, the plane model and, on head planes, the head biometry.

The scorer is what `sonoedge score`, `sonoedge exam` and the run loop share: a captured
frame in, one `FrameResult` out, with the time each stage took. No I/O here beyond the
models' own files, read once at start-up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from edge.capture.sources import Frame, Source
from edge.config import Settings
from edge.models.biometry import BiometrySettings, measure_frame, settings_for_model
from edge.models.manifest import Manifest, find_manifest
from edge.models.planes import plane_from_output
from edge.models.preprocess import prepare
from edge.models.roi import Roi, RoiSettings, find_roi
from edge.models.runtime import Model, load_model
from edge.result import FrameResult

log = logging.getLogger(__name__)


def _ms(seconds: float) -> float:
    return seconds * 1000.0


@dataclass
class HeadBiometry:
    """Head biometry for frames of a head plane, at the probe's known pixel size."""

    model: Model
    pixel_size_mm: float
    head_planes: frozenset[str]
    settings: BiometrySettings = field(default_factory=BiometrySettings)

    def measure(self, image, roi: Roi | None, plane: str | None) -> dict | None:
        if plane not in self.head_planes:
            return None  # the loop stays cheap: one extra model run on head planes only
        t0 = time.perf_counter()
        result = measure_frame(self.model, image, roi, self.pixel_size_mm, self.settings)
        return {**result.to_dict(), "ms": round(_ms(time.perf_counter() - t0), 3)}


@dataclass
class Scorer:
    """Scores frames with the plane model, re-finding the screen region now and then.

    A scanner's layout changes rarely within a stream, so the region is found again every
    `roi_refresh_frames` frames, or when the source or the frame size changes.
    """

    model: Model
    roi_settings: RoiSettings = field(default_factory=RoiSettings)
    roi_refresh_frames: int = 15
    head: HeadBiometry | None = None
    _roi: Roi | None = None
    _roi_key: tuple | None = None
    _since_roi: int = 0

    @property
    def manifest(self) -> Manifest:
        return self.model.manifest

    def _region(self, frame: Frame) -> Roi | None:
        key = (frame.source, frame.image.shape)
        if key != self._roi_key or self._since_roi >= self.roi_refresh_frames:
            self._roi = find_roi(frame.image, self.roi_settings)
            self._roi_key = key
            self._since_roi = 0
        self._since_roi += 1
        return self._roi

    def score(self, frame: Frame, capture_s: float = 0.0) -> FrameResult:
        ident = self.manifest.ident
        if not frame.ok:
            return FrameResult(frame.source, frame.index, None, None, _ms(capture_s),
                               _ms(capture_s), 0.0, 0.0, None, ident, frame.t_wall,
                               frame.t_mono, error=frame.error or "no image")
        t0 = time.perf_counter()
        roi = self._region(frame)
        x = prepare(frame.image, roi, self.manifest.preprocessing)
        t1 = time.perf_counter()
        plane = plane_from_output(self.manifest, self.model.run(x))
        t2 = time.perf_counter()
        biometry = self.head.measure(frame.image, roi, plane.plane) if self.head else None
        t3 = time.perf_counter()
        preprocess_s, infer_s = t1 - t0, t2 - t1
        return FrameResult(
            source=frame.source, frame=frame.index, plane=plane.plane,
            plane_confidence=plane.confidence,
            latency_ms=_ms(capture_s + preprocess_s + infer_s + (t3 - t2)),
            capture_ms=_ms(capture_s), preprocess_ms=_ms(preprocess_s), infer_ms=_ms(infer_s),
            roi=roi.as_list() if roi else None, model=ident, ts=frame.t_wall,
            mono_s=frame.t_mono, biometry=biometry)


def make_head_biometry(settings: Settings) -> HeadBiometry | None:
    """The head segmenter when a pixel size is configured; None (said once) without it.

    A segmenter that is installed but broken is an error like a broken plane model; one
    that is not installed only turns biometry off.
    """
    bio = settings.biometry
    if not bio.pixel_size_mm:
        return None
    path = Path(settings.models.dir) / f"{bio.segmenter}.json"
    if not path.is_file():
        log.warning("biometry: %s not installed; frames are scored without head biometry",
                    path)
        return None
    model, measurement = load_segmenter(settings)
    return HeadBiometry(model, bio.pixel_size_mm, frozenset(bio.head_planes), measurement)


def load_segmenter(settings: Settings) -> tuple[Model, BiometrySettings]:
    """The head segmenter and the measurement's settings, checked once at start-up: the
    device's `[biometry]` numbers with the model's own threshold from its manifest."""
    manifest = find_manifest(Path(settings.models.dir), settings.biometry.segmenter)
    measurement = settings_for_model(manifest, settings.biometry.measurement())
    model = load_model(manifest, settings.models.backend, settings.models.num_threads)
    return model, measurement


def make_scorer(settings: Settings) -> Scorer:
    manifest = find_manifest(Path(settings.models.dir), settings.models.plane)
    model = load_model(manifest, settings.models.backend, settings.models.num_threads)
    return Scorer(model, settings.roi, settings.loop.roi_refresh_frames,
                  head=make_head_biometry(settings))


def timed_frames(source: Source) -> Iterator[tuple[Frame, float]]:
    """Each frame with its capture cost on the loop's path.

    That is the read and decode time where the source measured it. It is not the time
    spent waiting: a paced file or a live grabber hands over frames at the scanner's rate,
    and a live grabber decodes on its own thread.
    """
    iterator = iter(source)
    while True:
        t0 = time.perf_counter()
        try:
            frame = next(iterator)
        except StopIteration:
            return
        waited = time.perf_counter() - t0
        if frame.read_s is not None:
            yield frame, frame.read_s
        else:
            yield frame, 0.0 if source.live else waited
