"""Frame to result: the region, the plane model and, on head planes, the head biometry.

The scorer is what `sonoedge score`, `sonoedge exam` and the run loop share: a captured
frame in, one `FrameResult` out, with the time each stage took. No I/O here beyond the
models' own files, read once at start-up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.capture.clock import ScanClock
from edge.capture.sources import Frame, Prepare, Reshape, Source, read_ahead
from edge.config import Settings, fan_settings
from edge.models.biometry import (
    RULER_UNREAD,
    SCALE_CALIBRATION,
    SCALE_FRAME,
    SCALE_RULER,
    SCREEN_STRETCHED,
    SHAPE_CHECKED,
    SHAPE_UNCHECKED,
    Biometry,
    BiometrySettings,
    Passes,
    biometry_of,
    locate_head,
    passes_for_model,
    pixel_size_status,
    settings_for_model,
)
from edge.models.fan import (
    FanSettings,
    StretchWatch,
    another_size,
    read_fan,
    refusal,
    same_frames,
    screen_key,
    setting_words,
)
from edge.models.manifest import Manifest, find_manifest
from edge.models.planes import (
    PlaneResult,
    check_plane_model,
    class_map,
    class_maps_layout,
    plane_from_output,
    settle_within_group,
)
from edge.models.preprocess import FrameViews, half_grey, normalise
from edge.models.quality import (
    RepeatTracker,
    Rules,
    audit,
    check_quality_head,
    head_measures,
    image_measures,
    learned_severities,
    load_rules,
    may_show_head,
)
from edge.models.roi import Roi, RoiSettings, find_roi, to_grey
from edge.models.ruler import RulerReader
from edge.models.runtime import Model, load_model
from edge.result import FrameResult

log = logging.getLogger(__name__)


def aside(job, *args, name: str = "sonoedge-roi") -> Future:
    """`job(*args)` on a thread of its own, its result (or error) in the future.

    Finding the region costs a whole frame's greying and more, 3-5 ms: on the frames it was
    found on, it was most of the head-plane p90. Beside the loop (OpenCV lets the GIL go),
    started once a frame's models have run (`Scorer._start_due`), it uses the pause
    before the next frame; so does the reading of the fan's shape (`edge.models.fan`),
    4-9 ms on a real screen."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(job(*args))
        except BaseException as exc:  # raised in the loop, at the next frame
            future.set_exception(exc)

    # Not a daemon: the loop may end with a job still running (the source's last frame
    # started one), and a process that exits inside OpenCV on a daemon thread aborts
    # ("terminate called without an active exception", rc -6: `sonoedge exam`, 6 Dec).
    threading.Thread(target=run, name=name, daemon=False).start()
    return future


def find_roi_aside(image: np.ndarray, settings: RoiSettings) -> Future:
    """`find_roi` of a frame beside the loop (`aside`)."""
    return aside(find_roi, image, settings)


def read_fan_aside(image: np.ndarray, settings: FanSettings) -> Future:
    """`read_fan` of a frame's grey beside the loop (`aside`)."""
    return aside(lambda: read_fan(to_grey(image), settings), name="sonoedge-fan")


def _ms(seconds: float) -> float:
    return seconds * 1000.0


@dataclass
class HeadModel:
    """The head segmenter: the head is judged on every frame that may show one, and
    measured (biometry) on frames of the biometry planes when the pixel size is known."""

    model: Model
    settings: BiometrySettings = field(default_factory=BiometrySettings)
    pixel_size_mm: float = 0.0  # the probe's calibration; 0 = unknown: no biometry
    head_planes: frozenset[str] = frozenset()
    # The model's own passes (its manifest): what a frame an exam keeps is measured with
    # when the exam ends (`Scorer.measure_kept`). Every frame is judged live on one pass.
    passes: Passes = field(default_factory=Passes)
    # The scanner's depth ruler, read on each measured frame where the box knows its tick
    # spacing (`[biometry] ruler_tick_mm`); None: the calibration above is the scale.
    ruler: RulerReader | None = None
    # The check that the picture is not stretched sideways (`edge.models.fan`): its
    # settings, with `[biometry] stretch_tolerance`; None: not checked.
    fan: FanSettings | None = field(default_factory=FanSettings)


@dataclass
class QualityModel:
    """The audit's rules and, where installed, the learned quality head."""

    rules: Rules
    learned: Model | None = None
    repeats: RepeatTracker = field(default_factory=RepeatTracker)


@dataclass
class Scorer:
    """Scores frames with the plane model, re-finding the screen region now and then.

    A scanner's layout changes rarely within a stream, so the region is found again every
    `roi_refresh_frames` frames (beside the loop, taken at the next frame), or at once when
    the source or the frame size changes. The quality audit reuses the plane model's own
    grey view of the region, so its image statistics cost one histogram and one small
    Laplacian.
    """

    model: Model
    roi_settings: RoiSettings = field(default_factory=RoiSettings)
    roi_refresh_frames: int = 15
    head: HeadModel | None = None
    quality: QualityModel | None = None
    _roi: Roi | None = None
    _roi_key: tuple | None = None
    _since_roi: int = 0
    _roi_pending: Future | None = None  # the region being found beside the loop
    _ruler_said: float = 0.0  # the ruler spacing last logged (`_say_ruler`); 0: none
    _ruler_lost_said: float = -1e9  # when its loss was last logged (monotonic s)
    _stretch: StretchWatch | None = None  # the fans read on this source (`_watch_fan`)
    _fan_pending: Future | None = None
    # The jobs this frame found due beside the loop (a region search, a fan reading),
    # started once its models have run (`_start_due`), not before them.
    _due: list[Callable[[], None]] = field(default_factory=list, repr=False)
    _screen_frames: int = 0  # frames of this source and size so far
    _screen: str = ""  # its name for the verdict's memory (`screen_key`)
    _stretch_said: bool | None = None  # the verdict last logged; None: none yet
    _shape_unrecorded: bool = False  # the memory started from has no setting (`_recalled`)
    # Where a screen's verdict is kept across runs (`sonoedge run`: the state folder,
    # edge/store/screen_shape.py): (key -> the stretch remembered and the `[source]
    # stretch` it was read under, None where not recorded) and (key, stretch, the setting
    # now) to keep a new one. None: nothing remembered (`score`, `exam`, tests).
    recall_shape: Callable[[str], tuple[float, float | None] | None] | None = field(
        default=None, repr=False)
    keep_shape: Callable[[str, float, float], None] | None = field(default=None, repr=False)
    # The named plane's class map of the last scored frame, (h, w) over the region, when the
    # plane model has a class_maps output (edge/models/planes.py); None otherwise. Kept
    # beside the result, not in it: the web view shows it, the journal does not keep it.
    last_class_map: np.ndarray | None = field(default=None, repr=False)
    _maps_layout: str | None = None
    _abstain_below: float = 0.0  # the plane model's own, from its manifest
    _clock: ScanClock = field(default_factory=ScanClock)  # each result's mono_s

    def __post_init__(self) -> None:
        self._maps_layout = class_maps_layout(self.manifest)
        self._abstain_below = self.manifest.setting("abstain_below", 0.0)

    @property
    def prepare_frame(self) -> Prepare | None:
        """What the capture thread can make of a frame for these models right after decoding
        it (`timed_frames`): the half-resolution grey where one of them reads it."""
        specs = [self.model.manifest.preprocessing]
        specs += [self.head.model.manifest.preprocessing] if self.head is not None else []
        if self.quality is not None and self.quality.learned is not None:
            specs.append(self.quality.learned.manifest.preprocessing)
        return half_grey if any(spec.half_res_from > 0 for spec in specs) else None

    @property
    def has_class_maps(self) -> bool:
        return self._maps_layout is not None

    @property
    def manifest(self) -> Manifest:
        return self.model.manifest

    def model_versions(self) -> dict[str, str]:
        """Every model (and the quality rules) that shapes a result, name -> version."""
        out = {self.manifest.name: self.manifest.version}
        for extra in (self.head.model if self.head else None,
                      self.quality.learned if self.quality else None):
            if extra is not None:
                out[extra.manifest.name] = extra.manifest.version
        if self.quality is not None:
            out["quality_rules"] = self.quality.rules.version
        return out

    def _views(self, frame: Frame) -> tuple[Roi | None, FrameViews]:
        """The region and the frame's shared grey views.

        On a source's first frame, or a new frame size, the region is found on the spot,
        on the whole frame's grey, which a model reading full resolution then reads too (the
        others read the capture thread's half-resolution grey). After that it is found
        again every `roi_refresh_frames` frames beside the loop (`find_roi_aside`): the
        frame it is found on keeps the region before, and the next frame takes the new one,
        waiting for it if need be. So every frame's region is that of a known earlier frame,
        whatever the timing.

        The search, like the fan's reading (`_watch_fan`), is started once the frame's
        models have run (`_start_due`), not before them: on two cores it took a core from
        the models' two threads while they ran. At a live frame rate it runs in the pause
        before the next frame; frames handed over back to back may wait at the next frame
        for the rest of a search instead."""
        self._due.clear()  # a frame that failed midway starts nothing
        key = (frame.source, frame.image.shape)
        if key != self._roi_key:
            self._roi_pending = None
            self._new_screen(screen_key(frame.source, frame.image.shape),
                             frame.image.shape)
            grey = to_grey(frame.image)
            self._roi = find_roi(grey, self.roi_settings)
            self._roi_key = key
            self._since_roi = 1
            return self._roi, FrameViews.from_grey(frame.image, self._roi, grey,
                                                   frame.half_grey)
        if self._roi_pending is not None:
            pending, self._roi_pending = self._roi_pending, None
            self._roi = pending.result()
        if self._since_roi >= self.roi_refresh_frames:
            self._due.append(lambda: self._search_roi_aside(frame))
            self._since_roi = 0
        self._since_roi += 1
        self._watch_fan(frame)
        return self._roi, FrameViews(frame.image, self._roi, half=frame.half_grey)

    def _search_roi_aside(self, frame: Frame) -> None:
        self._roi_pending = find_roi_aside(frame.image, self.roi_settings)

    def _read_fan_aside(self, frame: Frame) -> None:
        self._fan_pending = read_fan_aside(frame.image, self._stretch.settings)

    def _start_due(self) -> None:
        """Start the jobs beside the loop that this frame found due (`_views`)."""
        due, self._due = self._due, []
        for start in due:
            start()

    def _new_screen(self, key: str, shape: tuple[int, ...] | None = None) -> None:
        """A new source or frame size (`shape`, its frame's): its fans are read afresh,
        starting from the verdict remembered for it, if any; an SD grabber's frame size
        tells what its squeeze reads (`edge.models.fan.limits`)."""
        self._fan_pending = None
        self._screen_frames = 0
        self._screen = key
        if self.head is None or self.head.fan is None:
            return
        remembered = self._recalled(key, shape)
        if self._stretch is None:
            self._stretch = StretchWatch(self.head.fan)
        self._stretch.clear(remembered, shape)
        costs = another_size(self.head.fan, shape)
        if costs is not None:  # a setting copied from another box, or made by mistake
            log.warning("screen shape: %s", costs)
        if remembered is not None:
            self._stretch_said = None
            self._say_stretch(" (remembered from the last run)")

    def _recalled(self, key: str, shape: tuple[int, ...] | None) -> float | None:
        """The verdict remembered for this screen, where it is one of these very frames.

        The key's size is the frames' after `[source] stretch` (`narrowing`: round(the
        grabber's width / setting)), so a verdict kept under this key but read under
        another setting was read on a grabber frame of another width (`fan.same_frames`):
        another picture. The box starts without it and reads the fan afresh. Not with the
        reading scaled by the settings' ratio: that holds for the same grabber frames
        narrowed anew (`fan.under_setting`, what `sonoedge status` says of a screen read
        before a new setting), and those come back at another size, under another key.
        Here the grabber's frames changed, and a grabber fills its frame with the picture:
        a 1920x1080 one at 1.333 and a 1440x1080 one at none both give 1440x1080 frames of
        the same 4:3 picture, reading 1.0, which the ratio would make 1.333, refusing every
        head. A setting refined by less than a pixel keeps the frames, and the verdict. A
        verdict kept before the box recorded its setting is of frames of this size, as
        today's are: started from, and kept anew with the setting once the screen gives
        its own."""
        recalled = self.recall_shape(key) if self.recall_shape is not None else None
        self._shape_unrecorded = recalled is not None and recalled[1] is None
        if recalled is None:
            return None
        stretch, read_under = recalled
        if read_under is None or same_frames(self.head.fan, shape, read_under):
            return stretch
        log.info("screen shape: the verdict remembered for this screen (%.3f) was read under "
                 "%s, and %s is set now: frames of this size came from another grabber "
                 "size then, so it is not used; the fan is read afresh", stretch,
                 setting_words(read_under), setting_words(self.head.fan.undone))
        return None

    def _watch_fan(self, frame: Frame) -> None:
        """Take the fan read beside the loop, if done, and have the next started after this
        frame's models (`_start_due`): every
        `fast_every_frames` for the first `fast_for_frames` of a screen, then every
        `every_frames`. A frame that cannot show its fan adds nothing."""
        if self._stretch is None:
            return
        if self._fan_pending is not None and self._fan_pending.done():
            pending, self._fan_pending = self._fan_pending, None
            try:
                reading = pending.result()
            except Exception as exc:  # a check beside the scan: never the reason it stops
                log.warning("screen shape: a frame's fan could not be read (%s: %s)",
                            type(exc).__name__, exc)
                reading = None
            said = self._stretch_said
            self._stretch.add(reading)
            self._say_stretch()
            if self._stretch.fresh and (self._stretch_said != said or self._shape_unrecorded) \
                    and self.keep_shape is not None:
                self._shape_unrecorded = False  # now kept with the setting it is read under
                self.keep_shape(self._screen, self._stretch.stretch,
                                self._stretch.settings.undone)
        settings = self._stretch.settings
        every = (settings.fast_every_frames if self._screen_frames < settings.fast_for_frames
                 else settings.every_frames)
        self._screen_frames += 1
        # said only where it is true: a recording that knows its own scale never came
        # through a grabber (its heads carry no shape), and a box with no scale yet
        # measures no head to say unchecked
        if self._screen_frames == settings.fast_for_frames and self._stretch.stretch is None \
                and frame.pixel_size_mm is None:
            measures = self.head.ruler is not None or not pixel_size_status(
                self.head.pixel_size_mm, self.head.settings)
            log.warning("screen shape: not checked: none of this screen's first %d frames "
                        "showed the probe's whole fan. %s: zoom out once so the whole fan "
                        "shows, with black below it", settings.fast_for_frames,
                        "Heads are measured, and their exams say the shape was not checked"
                        if measures else "No head is measured yet (no pixel size or depth "
                        "scale); once heads are, they are said unchecked until a frame shows "
                        "the whole fan")
        if self._fan_pending is None and self._screen_frames % every == 0:
            self._due.append(lambda: self._read_fan_aside(frame))

    def _say_stretch(self, where: str = "") -> None:
        """The verdict, logged when it is first reached and whenever it turns."""
        stretch = self._stretch.stretch
        if stretch is None or self._stretch.stretched == self._stretch_said:
            return
        self._stretch_said = self._stretch.stretched
        seen = where or (f" (median of the last {self._stretch.count} frames that showed "
                         "it)")
        if self._stretch_said:
            log.warning("screen shape: the probe's fan is %.3f times as wide as its true "
                        "shape%s: %s", stretch, seen, refusal(self._stretch))
        else:
            log.info("screen shape: the probe's fan keeps its shape, %.3f%s: the picture "
                     "is not stretched", stretch, seen)

    def _shape_checked(self, source: str) -> str | None:
        """Whether this screen's shape is known (a verdict of its own or remembered) for a
        head measured through the grabber; None where the check is off, or the scale is
        the frame's own (a recording that knows its pixels was never through a grabber)."""
        if self._stretch is None or source == SCALE_FRAME:
            return None
        return SHAPE_CHECKED if self._stretch.stretch is not None else SHAPE_UNCHECKED

    def _scale(self, frame: Frame) -> tuple[float, str, str]:
        """(mm per pixel, "", where it came from) for a frame whose head can be measured,
        else (0, why not, where it would have come from). The frame's own where its source
        knows its frames' scales (the demo clip, a CSV of pixel sizes); else the scanner's
        depth ruler read on this very frame, where the box is told its tick spacing
        (`[biometry] ruler_tick_mm`: a new depth or zoom is then measured right); else the
        probe's calibration (`[biometry] pixel_size_mm`), which holds for one depth."""
        own = frame.pixel_size_mm
        source = (SCALE_FRAME if own is not None else
                  SCALE_RULER if self.head.ruler is not None else SCALE_CALIBRATION)
        if self._stretch is not None and self._stretch.stretched:
            return 0.0, SCREEN_STRETCHED, source
        if source == SCALE_RULER:
            ruler = self.head.ruler.read(frame.image)
            self._say_ruler(ruler, frame.image.shape[0])
            if ruler is None:
                return 0.0, RULER_UNREAD, source
            own = ruler.mm_per_px(self.head.ruler.tick_mm)
        elif source == SCALE_CALIBRATION:
            own = self.head.pixel_size_mm
        problem = pixel_size_status(own, self.head.settings)
        return (0.0, problem, source) if problem else (own, "", source)

    def _say_ruler(self, ruler, height: int) -> None:
        """The ruler read, logged when first read and whenever its spacing changes by more
        than a percent (a new depth), or when it is lost: what an installer compares with
        the depth the scanner prints, where a wrong `ruler_tick_mm` (the centimetre ticks
        taken for the finest) would otherwise measure every head wrong with status ok."""
        said = self._ruler_said
        if ruler is None:  # once a minute at most: a ruler that comes and goes floods not
            now = time.monotonic()  # never read yet (a calibration screen without one) too
            if now - self._ruler_lost_said >= 60.0:
                self._ruler_lost_said = now
                log.info("depth ruler: not read on this frame; heads are not measured "
                         "until it is" if said else "depth ruler: none found on this "
                         "frame; heads are not measured until one is (the scanner's "
                         "depth ruler must show beside the image)")
            return
        if said and abs(ruler.spacing_px / said - 1.0) <= 0.01:
            return
        self._ruler_said = ruler.spacing_px
        mm = ruler.mm_per_px(self.head.ruler.tick_mm)
        log.info("depth ruler: %d ticks %.2f px apart in column %d, a tick every %g mm: "
                 "%.4f mm per pixel; the frame's height spans %.1f cm (compare the depth "
                 "the scanner prints)", ruler.ticks, ruler.spacing_px, ruler.x,
                 self.head.ruler.tick_mm, mm, height * mm / 10.0)

    def _scale_fixed(self, frame: Frame) -> bool:
        """A head here would be measured at the calibration set for one depth (no ruler,
        no scale of the frame's own): advice that changes the depth is not given, nor does
        a bigger head score or rank better (`audit`)."""
        return (self.head is not None and self.head.ruler is None
                and frame.pixel_size_mm is None and bool(self.head.pixel_size_mm))

    def _judge_head(self, plane: PlaneResult, scale: tuple[float, str, str] | None) -> bool:
        if self.head is None:
            return False
        if self.quality is None:  # no audit: the segmenter runs for biometry alone
            return scale is not None and bool(scale[0])
        return may_show_head(self.quality.rules, self.head.head_planes, plane.plane,
                             self.manifest.labels, plane.probabilities)

    def score(self, frame: Frame, capture_s: float = 0.0) -> FrameResult:
        """One frame's result. The head is judged and measured on one plain pass of the
        segmenter, on every frame alike. Where the segmenter's own passes are more (a second
        pass on a crop around the head: 3-4 ms more per frame with VNNI, and a smaller HC
        error on the validation patients), the exam measures the few heads it reports with
        them when it ends (`measure_kept`), so no live frame waits for them."""
        ident = self.manifest.ident
        if not frame.ok:
            return FrameResult(frame.source, frame.index, None, None, _ms(capture_s),
                               _ms(capture_s), 0.0, 0.0, None, ident, frame.t_wall,
                               self._clock(frame), error=frame.error or "no image")
        t0 = time.perf_counter()
        roi, views = self._views(frame)  # greyed once, read by every model
        spec = self.manifest.preprocessing
        grey = views.resized(spec)
        x = normalise(grey, spec)[None, None]
        t1 = time.perf_counter()
        if self._maps_layout is None:
            plane = plane_from_output(self.manifest, self.model.run(x))
        else:
            outputs = self.model.run_all(x)
            plane = plane_from_output(self.manifest, outputs[self.model.output_names[0]])
            self.last_class_map = class_map(outputs["class_maps"],
                                            self.manifest.labels.index(plane.top_label),
                                            self._maps_layout)
        if self.head is not None:  # Tv vs Cb: either is a head plane biometry measures on
            plane = settle_within_group(plane, self.manifest.labels, self.head.head_planes,
                                        self._abstain_below)
        t2 = time.perf_counter()
        head = biometry = None
        measures: dict[str, float] = {}
        named = self.head is not None and plane.plane in self.head.head_planes
        scale = self._scale(frame) if named else None  # read once: the ruler costs
        if self._judge_head(plane, scale):  # the live pass: one plain run
            shape = locate_head(self.head.model, frame.image, roi, self.head.settings,
                                Passes(), views)
            head = {"status": shape.status,
                    "ellipse": None if shape.ellipse is None else
                    [round(v, 2) for v in shape.ellipse]}
            measures.update(head_measures(shape, roi, named_head=named) or {})
            if named and scale[0]:
                biometry = biometry_of(shape, scale[0]).to_dict()
            elif named:  # said, not left out: a fresh box ticked its heads and never said
                biometry = Biometry(scale[1], ellipse=shape.ellipse).to_dict()
        elif named and self.quality is None:
            # without the audit the segmenter runs for biometry alone, so not without a
            # pixel size: the frame still says why its head is not measured
            biometry = Biometry(scale[1]).to_dict()
        t3 = time.perf_counter()
        if biometry is not None:
            biometry["ms"] = round(_ms(t3 - t2), 3)
            biometry["scale"] = scale[2]
            shape = self._shape_checked(scale[2])
            if shape is not None:
                biometry["shape"] = shape
            if biometry["status"] == SCREEN_STRETCHED and self._stretch.setting is not None:
                # the setting the verdict names (`refusal`), for the exam's card and report,
                # and the grabber's frame size it is for
                biometry["stretch_setting"] = self._stretch.setting
                if self._stretch.frame is not None:
                    biometry["stretch_frame"] = self._stretch.frame
        quality = None
        if self.quality is not None:
            measures.update(image_measures(grey))
            measures["repeated_frames"] = float(self.quality.repeats.update(frame.source, grey))
            # How far the named plane is above the model's own abstain threshold: one number
            # for "is this a standard plane", whatever threshold the installed model carries.
            confidence = 0.0 if plane.top_label == "Background" else plane.confidence
            measures["plane_margin"] = confidence - self._abstain_below
            if self.quality.learned is not None:
                learned = learned_severities(self.quality.learned, frame.image, roi, views)
                measures.update({f"learned:{k}": v for k, v in learned.items()})
            quality = audit(self.quality.rules, measures, self._scale_fixed(frame)).to_dict()
            quality["ms"] = round(_ms(time.perf_counter() - t3), 3)
        t4 = time.perf_counter()
        preprocess_s, infer_s = t1 - t0, t2 - t1
        result = FrameResult(
            source=frame.source, frame=frame.index, plane=plane.plane,
            plane_confidence=plane.confidence,
            latency_ms=_ms(capture_s + preprocess_s + infer_s + (t4 - t2)),
            capture_ms=_ms(capture_s), preprocess_ms=_ms(preprocess_s), infer_ms=_ms(infer_s),
            roi=roi.as_list() if roi else None, model=ident, ts=frame.t_wall,
            mono_s=self._clock(frame), biometry=biometry, quality=quality, head=head,
            head_ms=round(_ms(t3 - t2), 3) if head is not None else None)
        self._start_due()
        return result

    def measure_kept(self, image: np.ndarray, roi: Roi | None,
                     pixel_size_mm: float) -> dict | None:
        """The biometry of a frame an exam keeps (its best heads, its planes' best frames),
        measured with the segmenter's own passes, or None where they are the one live pass
        already (or there is no segmenter, or no usable pixel size). The exam calls it for
        a handful of frames when it ends (`ExamSession.measure_kept`)."""
        head = self.head
        if head is None or head.passes.runs() <= 1 or pixel_size_status(
                pixel_size_mm, head.settings) is not None:
            return None
        t0 = time.perf_counter()
        shape = locate_head(head.model, image, roi, head.settings, head.passes)
        biometry = biometry_of(shape, pixel_size_mm).to_dict()
        biometry["ms"] = round(_ms(time.perf_counter() - t0), 3)
        biometry["passes"] = head.passes.runs()
        return biometry


def make_head_model(settings: Settings) -> HeadModel | None:
    """The head segmenter where it is installed; None (said once) where it is not.

    A segmenter that is installed but broken is an error like a broken plane model; one
    that is not installed only turns the head criteria and biometry off.
    """
    bio = settings.biometry
    path = Path(settings.models.dir) / f"{bio.segmenter}.json"
    if not path.is_file():
        log.warning("head: %s not installed; frames are scored without head biometry or "
                    "head quality criteria", path)
        return None
    model, measurement = load_segmenter(settings)
    fan = fan_settings(settings)
    return HeadModel(model, measurement, bio.pixel_size_mm, frozenset(bio.head_planes),
                     passes_for_model(model.manifest),
                     RulerReader(bio.ruler_tick_mm) if bio.ruler_tick_mm else None, fan)


def load_segmenter(settings: Settings) -> tuple[Model, BiometrySettings]:
    """The head segmenter and the measurement's settings, checked once at start-up: the
    device's `[biometry]` numbers with the model's own threshold from its manifest."""
    manifest = find_manifest(Path(settings.models.dir), settings.biometry.segmenter)
    measurement = settings_for_model(manifest, settings.biometry.measurement())
    model = load_model(manifest, settings.models.backend, settings.models.num_threads)
    return model, measurement


def make_quality_model(settings: Settings) -> QualityModel | None:
    """The quality rules, and the learned quality head where installed; None when the
    audit is turned off. Broken rules or a broken installed head are errors at start-up."""
    cfg = settings.quality
    if not cfg.enabled:
        return None
    rules = load_rules(cfg.rules or None)
    path = Path(settings.models.dir) / f"{cfg.learned}.json"
    learned = None
    if cfg.learned and path.is_file():
        manifest = find_manifest(Path(settings.models.dir), cfg.learned)
        check_quality_head(manifest)
        learned = load_model(manifest, settings.models.backend, settings.models.num_threads)
    elif rules.needs_learned_head():
        log.warning("quality: %s not installed; the criteria it measures (%s) are left out",
                    path, ", ".join(r.name for r in rules.criteria
                                    if r.measure.startswith("learned:")))
    return QualityModel(rules, learned)


def make_scorer(settings: Settings) -> Scorer:
    manifest = find_manifest(Path(settings.models.dir), settings.models.plane)
    check_plane_model(manifest)
    model = load_model(manifest, settings.models.backend, settings.models.num_threads)
    return Scorer(model, settings.roi, settings.loop.roi_refresh_frames,
                  head=make_head_model(settings), quality=make_quality_model(settings))


def timed_frames(source: Source, prepare: Prepare | None = None, idle: bool = False,
                 reshape: Reshape | None = None) -> Iterator[tuple[Frame, float]]:
    """Each frame with its capture cost on the loop's path.

    That is the read and decode time the loop waited for. It is not the time spent waiting
    for the scanner: a paced file or a live grabber hands over frames at the scanner's
    rate. A live grabber decodes on its own thread, and so do files and the demo clip
    (`read_ahead`): their cost is the part of the decode the loop was not ahead of.
    `prepare` (a scorer's `prepare_frame`) runs on that thread, right after the decode.
    With `idle`, a live grabber that hands no frame for a while gives `(None, 0.0)`
    instead (`read_ahead`), so the caller's clock-driven work goes on.
    """
    iterator = read_ahead(source, prepare=prepare, idle=idle, reshape=reshape)
    while True:
        t0 = time.perf_counter()
        try:
            frame = next(iterator)
        except StopIteration:
            return
        if frame is None:
            yield None, 0.0  # type: ignore[misc]  (only with idle)
            continue
        waited = time.perf_counter() - t0
        if frame.read_s is not None:
            yield frame, frame.read_s
        else:
            yield frame, 0.0 if source.live else waited
