"""Frame sources behind one iterator: image files, folders, video files, V4L2/UVC grabbers,
picamera2 and the built-in demo clip.

Why one shape for all of them: the loop and `score` must not care where pixels come from.
Every item is a `Frame`; an item that could not be decoded is still a `Frame` (with `error`
set and no image), so one corrupt file in a folder is reported and skipped instead of
stopping a run. Problems with the source as a whole (missing path, empty folder, device that
cannot be opened, picamera2 not installed) raise `SourceError` with one line naming it.

Live sources (V4L2, picamera2) run a grabber thread that keeps only the newest frame: the
models are slower than the scanner's 30-60 fps, and a queue would make the assistant talk
about what the probe showed seconds ago. When the device stops delivering (unplugged,
dongle reset) the grabber logs one line and reopens with bounded exponential backoff.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from edge.capture.images import (
    DEFAULT_LIMITS,
    IMAGE_EXTS,
    FrameLimits,
    decode_image_file,
    display_name,
)
from wire.shown import shown_path

log = logging.getLogger(__name__)

# FFmpeg, under OpenCV, writes its own lines to stderr ("moov atom not found" before our
# one line for a corrupt video; a line per damaged frame of a live stream): quiet (-8), read
# when OpenCV first opens a video. Set OPENCV_FFMPEG_LOGLEVEL (e.g. 24 for warnings) to see
# them while looking into a capture.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

VIDEO_EXTS = frozenset({".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg"})
MAX_VIDEO_FRAMES = 10_000_000  # hard bound on any file-read loop

_V4L2_RE = re.compile(r"^v4l2:(.+)$")
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_VIDEO_NODE_RE = re.compile(r"^/dev/video(\d+)$")


class SourceError(Exception):
    """A source as a whole cannot be used; the message is one line naming it."""


@dataclass(frozen=True)
class Frame:
    """One captured item. `image` is None exactly when `error` says why."""

    source: str  # display name: file basename, or e.g. "v4l2:/dev/video0"
    index: int  # frame number within the source (live: grab sequence, gaps = dropped)
    image: np.ndarray | None  # uint8 HxWx3 BGR or HxW grey, as decoded
    t_mono: float  # time.monotonic() at capture: use for durations and ordering
    t_wall: float  # time.time() at capture: advisory only (no RTC on the box)
    error: str | None = None  # one-line reason when this item could not be decoded
    read_s: float | None = None  # time spent reading + decoding it (None: off the loop's path)
    # What the capture thread made of the image right after decoding it, while its pixels
    # were still in that core's cache (`read_ahead`'s and `LiveSource`'s `prepare`): the
    # models' half-resolution grey (edge.models.preprocess.half_grey), or None.
    half_grey: np.ndarray | None = None
    # Seconds into a recording (a video file's own timeline), None for live frames and
    # still images: what an exam's length and gaps are counted in (edge/capture/clock.py).
    t_media: float | None = None
    # The source's own calibration, mm per pixel, where it knows it: the demo clip knows
    # each head's (HC18's pixel sizes, as laid out on its screen), and 0.0 for its frames
    # of no known scale. None: the probe's, from [biometry] pixel_size_mm.
    pixel_size_mm: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.image is not None


@dataclass(frozen=True)
class LiveSettings:
    """Knobs for live sources. Size/fps are hints the driver may ignore (None = leave)."""

    backoff_initial_s: float = 0.5
    backoff_max_s: float = 10.0
    max_reopen_attempts: int | None = None  # consecutive failed reopens before giving up
    width: int | None = 1280
    height: int | None = 720
    fps: float | None = 30.0
    fourcc: str | None = "MJPG"  # HDMI-USB dongles give 720p30 only as MJPG over USB 2
    wait_for_device: bool = False  # absent device at start: SourceError (False) or wait
    copy_frames: bool = True  # own each image: a backend may reuse its buffer (~1 ms/720p)
    poll_s: float = 0.1  # how often the consumer re-checks for close/end while waiting
    # With `frames(idle=True)`, the consumer is handed None after this long without a frame
    # (and again each time as long): the loop's own clock keeps running while the grabber
    # is unplugged or the scanner off, so an exam ends and health is sent without a frame.
    idle_tick_s: float = 1.0
    limits: FrameLimits = DEFAULT_LIMITS  # files opened by `open_source`: the pixel budget

    def __post_init__(self) -> None:
        if not (0 < self.backoff_initial_s <= self.backoff_max_s):
            raise ValueError("LiveSettings: need 0 < backoff_initial_s <= backoff_max_s")
        if self.max_reopen_attempts is not None and self.max_reopen_attempts < 0:
            raise ValueError("LiveSettings: max_reopen_attempts must be >= 0 or None")
        if self.poll_s <= 0:
            raise ValueError("LiveSettings: poll_s must be > 0")
        if self.idle_tick_s <= 0:
            raise ValueError("LiveSettings: idle_tick_s must be > 0")


class CaptureLike(Protocol):
    """The part of cv2.VideoCapture the grabber uses (picamera2 is adapted to it)."""

    def isOpened(self) -> bool: ...
    def read(self) -> tuple[bool, Any]: ...
    def release(self) -> None: ...


# --------------------------------------------------------------------------- files


def _error_frame(source: str, index: int, error: str) -> Frame:
    return Frame(source, index, None, time.monotonic(), time.time(), error)


# --------------------------------------------------------------------------- sources


class Source:
    """Iterable of Frames with close(); also a context manager. Counters are for status."""

    name: str = "source"
    live: bool = False

    def __init__(self) -> None:
        self.dropped = 0  # stale frames skipped (live) or late frames skipped (paced file)
        self.reopens = 0  # live: successful reopens after a loss
        self.demo: Any = None  # DemoClip when this is the demo source
        self.pixel_sizes: Sequence[float | None] = ()  # per frame index, where known
        self._closed = threading.Event()

    def pixel_size(self, index: int) -> float | None:
        """Frame `index`'s mm per pixel (Frame.pixel_size_mm) where this source knows its
        frames' scales (the demo clip): 0.0 for a frame it knows has none (a screen of
        another scale, a blend), never the probe's calibration. None where it knows none."""
        if not self.pixel_sizes:
            return None
        known = self.pixel_sizes[index] if 0 <= index < len(self.pixel_sizes) else None
        return known or 0.0

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        self._closed.set()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ImageListSource(Source):
    """A fixed list of image files: one Frame each, errors as Frames."""

    def __init__(self, paths: Sequence[Path], name: str,
                 limits: FrameLimits = DEFAULT_LIMITS) -> None:
        super().__init__()
        self.paths = list(paths)
        self.name = display_name(name)
        self.limits = limits

    def __iter__(self) -> Iterator[Frame]:
        for i, p in enumerate(self.paths):
            if self.closed:
                return
            t_mono, t_wall = time.monotonic(), time.time()
            img, err = decode_image_file(p, self.limits)
            read_s = time.monotonic() - t_mono
            if err:  # the frame carries it; whoever scores the frame says it, once
                log.debug("%s", err)
            yield Frame(display_name(p.name), i, img, t_mono, t_wall, err, read_s,
                        pixel_size_mm=self.pixel_size(i))


class VideoFileSource(Source):
    """A video file read frame by frame; a decode failure mid-file ends it with one error.

    With pace=True the file plays at its own fps and late frames are skipped (counted in
    `dropped`), so a slow loop sees it the way it would see a live scanner.
    """

    def __init__(self, path: Path, *, pace: bool = False, name: str | None = None,
                 limits: FrameLimits = DEFAULT_LIMITS) -> None:
        super().__init__()
        self.path = path
        self.name = name or display_name(path.name)
        self.pace = pace
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{shown_path(path)}: cannot open video (corrupt or "
                              "unsupported codec)")
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        if width > 0 and height > 0 and (problem := limits.check(self.name, width, height)):
            cap.release()
            raise SourceError(problem)
        self._cap = cap
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count = n if n > 0 else None
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0 < fps <= 240 else 25.0
        self._iterating = False

    def __iter__(self) -> Iterator[Frame]:
        cap = self._cap
        self._iterating = True
        t0 = time.monotonic()
        i = 0
        try:
            while i < MAX_VIDEO_FRAMES and not self.closed:
                if self.pace:
                    i = self._skip_late(cap, t0, i)
                    due = t0 + i / self.fps
                    wait = due - time.monotonic()
                    if wait > 0:
                        self._closed.wait(min(wait, 1.0))
                t_read = time.monotonic()
                ok, img = cap.read()
                t_mono, t_wall = time.monotonic(), time.time()
                if not ok or img is None:
                    if self.frame_count is not None and i < self.frame_count:
                        err = (f"{self.name}: decode failed at frame {i} of {self.frame_count}"
                               " (truncated or corrupt video)")
                        log.debug("%s", err)  # carried by the frame, said by its scorer
                        yield Frame(self.name, i, None, t_mono, t_wall, err,
                                    t_media=i / self.fps)
                    else:
                        log.info("%s: end of video after %d frames", self.name, i)
                    return
                yield Frame(self.name, i, img, t_mono, t_wall, read_s=t_mono - t_read,
                            t_media=i / self.fps, pixel_size_mm=self.pixel_size(i))
                i += 1
        finally:
            cap.release()

    def _skip_late(self, cap: Any, t0: float, i: int) -> int:
        """Skip frames whose display time has passed (grab() does not decode them)."""
        target = int((time.monotonic() - t0) * self.fps)
        if self.frame_count is not None:
            target = min(target, self.frame_count - 1)
        while i < target and cap.grab():
            self.dropped += 1
            i += 1
        return i

    def close(self) -> None:
        super().close()
        if not self._iterating:
            self._cap.release()


class ChainSource(Source):
    """Several sources one after another (`score a.png dir/ clip.mp4`).

    A path that cannot be opened becomes one error Frame (index -1) unless strict.
    """

    def __init__(self, specs: Sequence[str | Path], *, strict: bool = False,
                 pace: bool = False, limits: FrameLimits = DEFAULT_LIMITS) -> None:
        super().__init__()
        self.specs = [str(s) for s in specs]
        self.name = display_name("+".join(os.path.basename(s.rstrip("/")) or s
                                          for s in self.specs))
        self.pace = pace
        self.limits = limits
        self._current: Source | None = None
        if strict:
            for s in self.specs:  # fail before any work, naming the first bad path
                _open_file_spec(s, pace=pace, limits=limits).close()

    def __iter__(self) -> Iterator[Frame]:
        for spec in self.specs:
            if self.closed:
                return
            try:
                src = _open_file_spec(spec, pace=self.pace, limits=self.limits)
            except SourceError as e:
                log.debug("%s", e)  # carried by the error frame, said by its scorer
                yield _error_frame(display_name(os.path.basename(spec.rstrip("/")) or spec),
                                   -1, str(e))
                continue
            self._current = src
            try:
                yield from src
            finally:
                src.close()
                self.dropped += src.dropped
                self._current = None

    def close(self) -> None:
        super().close()
        if self._current is not None:
            self._current.close()


# --------------------------------------------------------------------------- read-ahead

READ_AHEAD_FRAMES = 2  # decoded frames waiting for the loop: bounded memory, never dropped
_END = object()


def _handover(handoff: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put `item` for the loop unless it stopped listening; False once it has."""
    while not stop.is_set():
        try:
            handoff.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _newest_wins(handoff: queue.Queue, frame: object, stop: threading.Event,
                 source: Source) -> bool:
    """Put `frame` in the one-frame slot, in place of a frame the loop has not taken (it
    is stale now: counted in `source.dropped`), as a live grabber does."""
    while not stop.is_set():
        try:
            handoff.put_nowait(frame)
            return True
        except queue.Full:
            try:
                handoff.get_nowait()
                source.dropped += 1
            except queue.Empty:
                continue
    return False


Prepare = Callable[[np.ndarray], "np.ndarray | None"]
Reshape = Callable[[np.ndarray], np.ndarray]


def narrowing(stretch: float) -> Reshape | None:
    """Each frame narrowed by `stretch` (`[source] stretch`: how much wider the grabber
    draws the scanner's picture than it is), so everything after sees the scanner's own
    shape; None for 1. A grabber that cannot be set (an SD one: 4:3 in 720x480 is 1.125,
    in 720x576 0.9375, widened back to 768) otherwise has every head refused as stretched
    (edge/models/fan.py), or measured wrong."""
    if stretch == 1.0:
        return None

    def narrow(image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        return cv2.resize(image, (max(1, round(width / stretch)), height),
                          interpolation=cv2.INTER_AREA if stretch > 1 else cv2.INTER_LINEAR)
    return narrow


def read_ahead(source: Source, depth: int = READ_AHEAD_FRAMES,
               prepare: Prepare | None = None, idle: bool = False,
               reshape: Reshape | None = None) -> Iterator[Frame | None]:
    """A file source's frames decoded on a thread of their own, up to `depth` ahead.

    A live grabber already decodes on its own thread. A video file, a folder or the demo
    clip decoded in the loop put every frame's JPEG decode (about 2 ms for the demo's
    1024x768 frames on the Xeon) on the frame's path while the second core waited. Here
    the decode of the next frames overlaps the scoring of this one, in order, none dropped.
    Each frame's `read_s` becomes the part of its decode the loop actually waited for, so
    the path's capture cost stays honest: near 0 when the decoder keeps ahead, the whole
    decode when it does not. A paced file keeps its own pacing and, like a live grabber,
    only its newest frame ready: a frame the loop was too slow to take gives way to the
    next (`dropped`), so a slow loop never sees a queue of old frames. An error raised
    by the source is raised here, in the loop. `prepare` runs on each decoded image on the
    decoding thread (its result in `Frame.half_grey`), and counts as part of the decode.
    A live source runs it on its own grabber thread. With `idle`, a live grabber's
    `frames(idle=True)`: None each `idle_tick_s` without a frame (files never wait so).
    `reshape` (`narrowing`) runs on each decoded image before `prepare`, on the same thread.
    """
    if source.live:
        if isinstance(source, LiveSource):
            if prepare is not None:
                source.prepare = prepare
            source.reshape = reshape
            yield from source.frames(idle)
        else:
            for frame in source:
                yield (replace(frame, image=reshape(frame.image))
                       if reshape is not None and frame is not None and frame.ok else frame)
        return
    paced = bool(getattr(source, "pace", False))  # played at its own rate, as live
    handoff: queue.Queue = queue.Queue(maxsize=1 if paced else max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        try:
            for frame in source:
                item = _ready(frame, prepare, reshape)
                if paced and frame.ok:
                    if not _newest_wins(handoff, item, stop, source):
                        return
                elif not _handover(handoff, item, stop):
                    return
        except BaseException as exc:  # handed to the loop and raised there
            _handover(handoff, exc, stop)
            return
        _handover(handoff, _END, stop)

    thread = threading.Thread(target=produce, name=f"read-{source.name}", daemon=True)
    thread.start()
    try:
        while True:
            asked = time.monotonic()
            try:
                item = handoff.get(timeout=1.0)
            except queue.Empty:
                if not thread.is_alive():  # it ended without a word: nothing more comes
                    return
                continue
            got = time.monotonic()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            frame, done = item.frame, item.done  # type: ignore[union-attr]
            if frame.read_s is None:
                yield frame
                continue
            # The decode ran over [t_mono - read_s, done] (`prepare` after it); the loop
            # waited over [asked, got].
            waited = min(got, done) - max(asked, frame.t_mono - frame.read_s)
            yield replace(frame, read_s=max(0.0, waited))
    finally:
        stop.set()  # a paced source may sleep up to 1 s more; closing it wakes it
        thread.join(timeout=0.25)


@dataclass(frozen=True)
class _Ready:
    """A decoded frame and when the decoding thread was done with it (`prepare` included)."""

    frame: Frame
    done: float


def _ready(frame: Frame, prepare: Prepare | None, reshape: Reshape | None = None) -> _Ready:
    if (prepare is None and reshape is None) or not frame.ok:
        return _Ready(frame, frame.t_mono)
    if reshape is not None:
        frame = replace(frame, image=reshape(frame.image))
    made = prepare(frame.image) if prepare is not None else None
    return _Ready(replace(frame, half_grey=made), time.monotonic())


# --------------------------------------------------------------------------- live


class LiveSource(Source):
    """Latest-frame-wins grabber around any opener returning a CaptureLike.

    The thread reads as fast as the device delivers and overwrites one slot; the consumer
    takes whatever is newest. `dropped` counts frames overwritten before anyone took them.
    On a failed read it logs one line, releases, and calls the opener again after a
    backoff that doubles up to backoff_max_s; after max_reopen_attempts consecutive
    failures (or close()) the iterator ends with one log line.
    """

    live = True

    def __init__(self, name: str, opener: Callable[[], CaptureLike | None],
                 settings: LiveSettings | None = None, *, first: CaptureLike | None = None):
        super().__init__()
        self.name = name
        self.settings = settings or LiveSettings()
        self._opener = opener
        self._first = first
        self._cond = threading.Condition()
        self._slot: tuple[int, np.ndarray, float, float, np.ndarray | None] | None = None
        # Run on each grabbed image on the grabber's thread (`read_ahead`'s `prepare`).
        self.prepare: Prepare | None = None
        self.reshape: Reshape | None = None  # before `prepare`, on the same thread
        self._done = False
        self.end_reason: str | None = None
        self.gave_up = False  # ended after max_reopen_attempts failed reopens
        self.frames_grabbed = 0
        self.open_attempts = 0
        self.delays: deque[float] = deque(maxlen=32)  # recent backoff waits, for status/tests
        self._thread = threading.Thread(target=self._run, name=f"grab-{name}", daemon=True)
        self._thread.start()

    # -- grabber thread
    def _open(self) -> CaptureLike | None:
        self.open_attempts += 1
        try:
            cap = self._opener()
        except Exception as e:  # an opener may raise (device vanished mid-open)
            log.warning("%s: open failed (%s)", self.name, str(e).splitlines()[0] if str(e)
                        else type(e).__name__)
            return None
        if cap is None:
            return None
        if not cap.isOpened():
            cap.release()
            return None
        return cap

    def _run(self) -> None:
        s = self.settings
        cap, self._first = self._first, None
        if cap is None:
            cap = self._open()
        delay = s.backoff_initial_s
        failures = 0
        seq = 0
        had_frames = False
        try:
            while not self.closed:
                if cap is None:
                    failures += 1
                    if s.max_reopen_attempts is not None and failures > s.max_reopen_attempts:
                        self.gave_up = True
                        self._finish(f"{self.name}: giving up after {failures - 1} reopen"
                                     " attempts")
                        return
                    log.info("%s: reopening in %.2fs (attempt %d)", self.name, delay, failures)
                    self.delays.append(delay)
                    if self._closed.wait(delay):
                        break
                    delay = min(delay * 2, s.backoff_max_s)
                    cap = self._open()
                    if cap is not None and had_frames:
                        self.reopens += 1
                        log.info("%s: reopened", self.name)
                    continue
                ok, img = cap.read()
                if not ok or img is None:
                    log.warning("%s: no frame from device (unplugged or stream ended) after"
                                " %d frames", self.name, self.frames_grabbed)
                    cap.release()
                    cap = None
                    continue
                t_mono, t_wall = time.monotonic(), time.time()
                if s.copy_frames:
                    img = np.array(img, copy=True)
                if self.reshape is not None:
                    img = self.reshape(img)
                prepare = self.prepare
                half = prepare(img) if prepare is not None else None
                had_frames = True
                failures = 0
                delay = s.backoff_initial_s
                with self._cond:
                    if self._slot is not None:
                        self.dropped += 1
                    self._slot = (seq, img, t_mono, t_wall, half)
                    self._cond.notify_all()
                seq += 1
                self.frames_grabbed += 1
            self._finish(f"{self.name}: closed after {self.frames_grabbed} frames")
        except Exception as e:  # never let the thread die silently
            self._finish(f"{self.name}: grabber stopped ({type(e).__name__}: {e})")
        finally:
            if cap is not None:
                cap.release()

    def _finish(self, reason: str) -> None:
        with self._cond:
            if self._done:
                return
            self._done = True
            self.end_reason = reason
            self._cond.notify_all()
        log.info("%s", reason)

    # -- consumer
    def __iter__(self) -> Iterator[Frame]:
        return self.frames()  # type: ignore[return-value]  (never None without idle)

    def frames(self, idle: bool = False) -> Iterator[Frame | None]:
        """The newest frame each time; with `idle`, None after each `idle_tick_s` that
        brought none."""
        tick = self.settings.idle_tick_s if idle else None
        while True:
            until = None if tick is None else time.monotonic() + tick
            with self._cond:
                while self._slot is None and not self._done and not self.closed:
                    if until is not None and time.monotonic() >= until:
                        break
                    self._cond.wait(self.settings.poll_s)
                if self.closed or (self._slot is None and self._done):
                    return
                taken, self._slot = self._slot, None
            if taken is None:
                yield None
                continue
            seq, img, t_mono, t_wall, half = taken
            yield Frame(self.name, seq, img, t_mono, t_wall, half_grey=half)

    def close(self, timeout_s: float = 2.0) -> None:
        super().close()
        with self._cond:
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)


def _device_number(text: str) -> str | None:
    """A device or camera number as written, in ASCII digits, without its leading zeros;
    None for anything else: '-1', '1e9', '0x1', ' 0', and digits of other scripts ('٣',
    '²', which str.isdigit takes and int() reads as 3 or refuses with a traceback)."""
    if not (text.isascii() and text.isdigit()):
        return None
    return text.lstrip("0") or "0"


def _v4l2_target(spec: str) -> str | None:
    """'v4l2:0', 'v4l2:/dev/video0', '/dev/video0', '/dev/v4l/by-id/...' -> device path;
    None for a spec that is neither a device number nor an absolute path ('v4l2:abc' was
    taken as a file of that name in the current folder: "no such device", and the live
    loop waited for it to be plugged in)."""
    m = _V4L2_RE.match(spec)
    rest = m.group(1) if m else spec
    number = _device_number(rest)
    if number is not None:
        return f"/dev/video{number}"
    if rest.startswith("/dev/") or (m and rest.startswith("/")):
        return rest
    return None


def _v4l2_opener(dev: str, s: LiveSettings) -> Callable[[], CaptureLike]:
    """Re-resolve the path on every open: after a replug a by-id link may point elsewhere."""

    def open_() -> CaptureLike:
        real = os.path.realpath(dev)
        m = _VIDEO_NODE_RE.match(real)
        # This OpenCV build's V4L2 backend opens by index only; other names go by string.
        cap = cv2.VideoCapture(int(m.group(1)) if m else real, cv2.CAP_V4L2)
        if cap.isOpened():
            if s.fourcc:
                cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*s.fourcc))
            if s.width:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, s.width)
            if s.height:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, s.height)
            if s.fps:
                cap.set(cv2.CAP_PROP_FPS, s.fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # driver queue too: fewer stale frames
        return cap

    return open_


def open_v4l2(spec: str, settings: LiveSettings | None = None) -> LiveSource:
    s = settings or LiveSettings()
    dev = _v4l2_target(spec)
    if dev is None:
        raise SourceError(f"{shown_path(spec)}: not a V4L2 device (give its number, "
                          "v4l2:0, or its path, v4l2:/dev/video0 or a /dev/v4l/by-id link)")
    name = f"v4l2:{dev}"
    shown = f"v4l2:{shown_path(dev)}"
    opener = _v4l2_opener(dev, s)
    if s.wait_for_device and not os.path.exists(dev):
        # absent only: a device present but not openable (no permission, not a capture
        # device) is a mistake to say at once, not a dongle still to be plugged in
        log.warning("%s: no such device yet (is the capture dongle plugged in?); waiting "
                    "for it", shown)
        return LiveSource(name, opener, s)
    if not os.path.exists(dev):
        raise SourceError(f"{shown}: no such device (is the capture dongle plugged in?)")
    cap = opener()
    if not cap.isOpened():
        cap.release()
        raise SourceError(f"{shown}: cannot open device (busy, no permission, or not a "
                          "capture device)")
    return LiveSource(name, opener, s, first=cap)


class _Picamera2Capture:
    """Adapts a Picamera2 to the read()/isOpened()/release() shape the grabber uses."""

    def __init__(self, module: Any, num: int, s: LiveSettings) -> None:
        self._cam = module.Picamera2(camera_num=num)
        main: dict[str, Any] = {"format": "RGB888"}  # RGB888 in libcamera = BGR in numpy
        if s.width and s.height:
            main["size"] = (int(s.width), int(s.height))
        cfg = self._cam.create_video_configuration(main=main)
        self._cam.configure(cfg)
        if s.fps:
            self._cam.set_controls({"FrameRate": float(s.fps)})
        self._cam.start()
        self._open = True

    def isOpened(self) -> bool:
        return self._open

    def read(self) -> tuple[bool, Any]:
        try:
            return True, self._cam.capture_array("main")
        except Exception:  # camera gone: report as a failed read, the grabber reopens
            return False, None

    def release(self) -> None:
        if self._open:
            self._open = False
            try:
                self._cam.stop()
                self._cam.close()
            except Exception as e:
                log.debug("picamera2 close: %s", e)


def open_picamera2(spec: str, settings: LiveSettings | None = None) -> LiveSource:
    s = settings or LiveSettings()
    _, _, num_s = spec.partition(":")
    number = _device_number(num_s or "0")
    if number is None:
        raise SourceError(f"{shown_path(spec)}: camera number must be an integer "
                          "(picamera2:N)")
    num = int(number)
    name = f"picamera2:{num}"
    try:
        import picamera2  # optional: Raspberry Pi only
    except ImportError as e:
        raise SourceError(f"{name}: picamera2 is not installed (Raspberry Pi OS: apt install "
                          f"python3-picamera2, venv with --system-site-packages): {e}") from None
    try:
        first = _Picamera2Capture(picamera2, num, s)
    except Exception as e:
        raise SourceError(f"{name}: cannot open camera ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
    return LiveSource(name, lambda: _Picamera2Capture(picamera2, num, s), s, first=first)


# --------------------------------------------------------------------------- dispatch


def list_folder_images(folder: Path) -> list[Path]:
    """Images in a folder sorted by name; other files skipped with one log line.

    Anything named like an image that is not a folder is a frame: a link whose image went
    missing, or a pipe, then says why it gave no image (`decode_image_file`), where a
    regular-files-only listing dropped it without a word."""
    shown = shown_path(Path(folder))
    try:
        listed = sorted(folder.iterdir())
        folders = [p.name for p in listed if p.is_dir()]
    except OSError as e:
        raise SourceError(f"{shown}: cannot list folder ({e.strerror or e})") from None
    entries = [p for p in listed if p.name not in folders]
    imgs = [p for p in entries if p.suffix.lower() in IMAGE_EXTS]
    skipped = len(entries) - len(imgs)
    if not imgs:  # one line, with what the folder does hold: the frames may be a level down
        kinds = "/".join(sorted(IMAGE_EXTS))
        if not listed:
            raise SourceError(f"{shown}: empty folder (no {kinds} files)")
        held = [f"{len(entries)} other file(s)"] if entries else []
        if folders:
            names = ", ".join(f"{display_name(n)}/" for n in folders[:3])
            held.append(f"sub-folder(s) {names}{', ...' if len(folders) > 3 else ''} (not "
                        "read: name the one with the frames)")
        raise SourceError(f"{shown}: no {kinds} files in this folder; it holds "
                          + " and ".join(held))
    if skipped:
        log.info("%s: skipped %d non-image file(s)", shown, skipped)
    return imgs


def _open_file_spec(spec: str, *, pace: bool = False,
                    limits: FrameLimits = DEFAULT_LIMITS) -> Source:
    if not str(spec).strip():  # Path("") is the current folder: `score ""` scored it
        raise SourceError(f"{shown_path(spec)!r}: an empty path names no file or folder")
    path = Path(spec)
    shown = shown_path(path)
    try:
        found = path.exists()
    except OSError as e:  # a name longer than the file system takes, and the like
        raise SourceError(f"{shown}: cannot use this path ({e.strerror or e})") from None
    if not found:
        if not os.path.lexists(path):
            raise SourceError(f"{shown}: no such file or folder")
        try:  # a link: to nothing, or round in a loop
            path.stat()
        except OSError as e:
            raise SourceError(f"{shown}: a link that leads nowhere ({e.strerror or e})") from None
    if path.is_dir():
        return ImageListSource(list_folder_images(path), name=path.name or str(path),
                               limits=limits)
    ext = path.suffix.lower()
    if ext in IMAGE_EXTS:
        return ImageListSource([path], name=path.name, limits=limits)
    if ext in VIDEO_EXTS:
        if not path.is_file():  # a pipe named .mp4: the decoder would wait for a writer
            raise SourceError(f"{shown}: not a regular file (a video source must be a file)")
        return VideoFileSource(path, pace=pace, limits=limits)
    raise SourceError(f"{shown}: unsupported file type '{ext or '(none)'}' (images: "
                      f"{' '.join(sorted(IMAGE_EXTS))}; video: {' '.join(sorted(VIDEO_EXTS))})")


def open_source(spec: str | Path, *, live: LiveSettings | None = None,
                pace: bool = False) -> Source:
    """Open one source by spec.

    Specs: image file, folder, video file, `v4l2:N`, `v4l2:/dev/videoN`, `/dev/videoN`
    (or a /dev/v4l/by-id link), `picamera2[:N]`, `demo`. pace=True plays files (and the
    demo) at their own frame rate, skipping late frames like a live source would.
    """
    s = str(spec)
    if not s:  # Path("") is the current folder: never read whatever happens to be there
        raise SourceError("source spec is empty (--source or [source] spec): give demo, a "
                          "file, a folder, v4l2:N or picamera2")
    if _URL_RE.match(s):  # rtsp://, http://...: not a path that happens to be missing
        raise SourceError(f"{shown_path(s)}: network streams are not a source here; give a "
                          "capture device (v4l2:N, /dev/videoN), picamera2, a file or a "
                          "folder")
    if s == "demo":
        from edge.capture import demo  # late import: only this spec needs it

        try:
            clip = demo.build_demo_clip(demo.default_cache_dir(), None)
        except OSError as e:  # read-only install: build in the temp dir instead
            alt = Path(tempfile.gettempdir()) / "sonoedge-demo"
            log.warning("demo: cannot build in %s (%s); using %s", demo.default_cache_dir(),
                        e.strerror or e, alt)
            try:
                clip = demo.build_demo_clip(alt, None)
            except OSError as e2:
                raise SourceError(f"demo: cannot build the demo clip ({e2})") from None
        if clip.kind == "phantom":
            log.warning("demo source: %s", clip.description)
        else:
            log.info("demo source: %s", clip.description)
        src = _open_file_spec(str(clip.path), pace=pace,
                              limits=(live or LiveSettings()).limits)
        src.name = f"demo:{clip.kind}"
        src.demo = clip
        src.pixel_sizes = clip.pixel_sizes  # its heads are measured at their own scale
        return src
    if s == "picamera2" or s.startswith("picamera2:"):
        return open_picamera2(s, live)
    if s.startswith("v4l2:") or s.startswith("/dev/"):
        return open_v4l2(s, live)
    return _open_file_spec(s, pace=pace, limits=(live or LiveSettings()).limits)


def open_sources(paths: Iterable[str | Path], *, strict: bool = False,
                 pace: bool = False, limits: FrameLimits = DEFAULT_LIMITS) -> ChainSource:
    """Files/folders/videos in the given order, for `score`. A bad path is one error Frame
    (index -1) and the rest still run; strict=True raises SourceError up front instead."""
    specs = list(paths)
    if not specs:
        raise SourceError("no input paths given")
    return ChainSource(specs, strict=strict, pace=pace, limits=limits)
