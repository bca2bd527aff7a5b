"""One typed configuration for the device, read from TOML, every key checked.

Every setting has a default, so `sonoedge run --source PATH` works without a file. A key
the code does not know is an error naming the file and the key: a typo must not silently
fall back to a default on a device nobody watches.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from edge.capture.images import DEFAULT_LIMITS, FrameLimits
from edge.exam.protocol import ProtocolError, load_protocols
from edge.exam.session import HEAD_PLANES, ExamSettings
from edge.fleet.settings import FleetSettings, check_fleet_settings
from edge.models.biometry import BiometrySettings
from edge.models.fan import MAX_SOURCE_STRETCH, MIN_SOURCE_STRETCH, FanSettings
from edge.models.roi import RoiSettings
from edge.uplink.mqtt import MqttSettings, check_mqtt_settings, resolve_device_id
from edge.web.settings import WebSettings, check_web_settings
from wire.mqtt import url_has_password
from wire.schema import PayloadError, read_toml_bounded
from wire.shown import one_line, printable, read_failure, shown, shown_path

REPO_ROOT = Path(__file__).resolve().parents[1]
# The shipped config is about 4 KB; a file 64 times that is no device config.
MAX_CONFIG_BYTES = 256 * 1024
# Every string of the config (a path, a name, an id, a URL): Linux's PATH_MAX is 4096
# bytes, and no name, id or URL the device uses comes near it.
MAX_STRING_CHARS = 4096
# NUL: no string of the config may hold it (open() refuses it with "embedded null byte",
# a C library ends the string there). Control characters (C0, DEL, C1: a newline that
# forges a log line, ESC that drives a terminal): no name, id, URL or word may hold one;
# a path (PATH_KEYS) may, as Linux allows ("clinic\nroom 2" is a folder a run reads, shown
# as \x0a), and so may the MQTT password (opaque bytes to the broker, never shown).
_CONTROL = re.compile(r"[\x01-\x1f\x7f-\x9f]")
_OPAQUE = {("mqtt", "password")}

# Upper bounds of the counts, sizes and waits below (each is a typo or worse beyond).
# A capture size each way: 16K is twice 8K UHD, more than any grabber delivers.
MAX_CAPTURE_SIDE = 16384
# A frame's pixel budget at most the largest frame those sides allow (16384^2, 268 MP;
# decoded as RGB that is 800 MB, more than the box's memory).
MAX_FRAME_PIXELS = MAX_CAPTURE_SIDE ** 2
# Reopens of a lost grabber: at the 30 s default backoff 100,000 is about a month; "for
# ever" is said with -1.
MAX_REOPEN_ATTEMPTS = 100_000
# Reopens of a lost grabber in `run --once` where the config says "for ever" (-1): a run
# that is to end does not wait a month for a cable; at the 0.5 s first backoff, doubling,
# 5 reopens are about 15 s.
ONCE_REOPEN_ATTEMPTS = 5
# loop.max_frames: a billion frames is a year at 30 fps; "until the source ends" is 0.
MAX_LOOP_FRAMES = 1_000_000_000
# loop.roi_refresh_frames: 100,000 frames is about an hour at 30 fps; a changed screen
# layout (the sonographer zoomed out) waits no longer than that to be found again.
MAX_ROI_REFRESH_FRAMES = 100_000
# loop.log_every: a million frames is 9 hours at 30 fps; a quiet log is log_every = 0.
MAX_LOG_EVERY = 1_000_000
# journal.keep_days: ten years is longer than the box lives; beyond is a typo.
MAX_KEEP_DAYS = 3650.0
# biometry.pixel_size_max_mm: at 2 mm a pixel a term head's BPD (~95 mm) spans under 50
# pixels: no measurement to the millimetre (HC18's probes span 0.049-0.393).
MAX_PIXEL_SIZE_MM = 2.0
# biometry.ruler_tick_mm: depth rulers tick every 1 mm to 5 cm; a value outside is a typo
# (a tick spacing in cm written as mm, or the depth itself).
MIN_RULER_TICK_MM, MAX_RULER_TICK_MM = 1.0, 50.0
# biometry.stretch_tolerance: below 1% every screen would be refused (one read 3.6% off as
# captured); a 4:3 screen filling 16:9 is 33% off, so beyond 30% the check would pass it.
MIN_STRETCH_TOLERANCE, MAX_STRETCH_TOLERANCE = 0.01, 0.3
# source.stretch: MIN_SOURCE_STRETCH-MAX_SOURCE_STRETCH, kept beside the check whose fix it
# is (edge/models/fan.py), which names a setting only within them (`setting_read_back`)


@dataclass(frozen=True)
class SourceSettings:
    spec: str = "demo"  # demo | image/video file | folder | v4l2:N | /dev/videoN | picamera2
    max_frame_pixels: int = DEFAULT_LIMITS.max_pixels  # pixel budget: larger is refused
    min_frame_side: int = DEFAULT_LIMITS.min_side  # smaller frames hold nothing to score
    width: int = 0  # live sources: capture size hint (0 = the device's default)
    height: int = 0
    fps: float = 0.0
    backoff_initial_s: float = 0.5  # live sources: first wait before reopening
    backoff_max_s: float = 30.0
    max_reopen_attempts: int = -1  # -1: keep trying forever (a grabber may be replugged)
    pace: bool = False  # play a video file at its own frame rate, as a scanner would
    # How much wider the grabber draws the scanner's picture than it is: each frame is
    # narrowed by it before anything reads it (edge/capture/sources.py `narrowing`). For a
    # grabber that cannot be set: 1.125 for a 4:3 screen in NTSC 720x480, 0.9375 in PAL
    # 720x576, 1.333 for 4:3 filling 16:9. The screen-shape check (edge/models/fan.py) then
    # reads the result.
    stretch: float = 1.0


@dataclass(frozen=True)
class ModelSettings:
    dir: str = str(REPO_ROOT / "models")
    plane: str = "plane_student"  # manifest name, i.e. models/<plane>.json
    backend: str = "litert"  # litert | edgetpu | tflite-runtime
    num_threads: int = 2


@dataclass(frozen=True)
class LoopSettings:
    roi_refresh_frames: int = 15  # the screen layout changes rarely: find the region this often
    log_every: int = 1  # print one line every N scored frames
    max_frames: int = 0  # 0 = until the source ends
    # systemd's watchdog is pinged only while a frame was scored within this many seconds or
    # the loop waits on a live grabber that is itself alive (edge/fleet/watchdog.py)
    stall_s: float = 2.0


@dataclass(frozen=True)
class JournalSettings:
    keep_days: float = 90.0  # frame results of runs older than this are pruned at start
    quota_mb: float = 2000.0  # the journal's file at most; the oldest frames are shed first


@dataclass(frozen=True)
class DeviceSettings:
    state_dir: str = "state"  # journal, outbox and status live here
    device_id: str = ""  # empty: derived from the machine id


@dataclass(frozen=True)
class LogSettings:
    """[logging]: journald keeps stderr under systemd (board/journald-sonoedge.conf caps it);
    a box without journald can keep a rotated file instead."""

    file: str = ""  # "" = stderr only
    max_mb: float = 10.0  # one file at most this large, then rotated
    backups: int = 5  # rotated files kept


_MEASURE = BiometrySettings()  # the measurement's defaults, stated once in edge/biometry.py
_FAN = FanSettings()  # the stretch check's, stated once in edge/models/fan.py


@dataclass(frozen=True)
class BiometryConfig:
    """[biometry]: head biometry on head-plane frames (see edge/biometry.py).

    The probability threshold is the model's and lives in the segmenter's manifest; the
    numbers here are the device's.
    """

    pixel_size_mm: float = 0.0  # the live probe's calibration, mm per pixel; 0 = unknown: off
    # The scanner's depth-ruler tick spacing in mm (5 on a GE Voluson E8): each measured
    # frame's scale is read from the ruler on the screen (edge/models/ruler.py), so a new
    # depth or zoom is measured right; pixel_size_mm is then not used. 0 = off.
    ruler_tick_mm: float = 0.0
    # How far the probe's fan may be from its true shape before the picture is called
    # stretched sideways and heads are not measured (edge/models/fan.py, where the 8% is
    # argued: real screens read up to 3.6% off; an SD grabber's 720x576 frame is judged
    # nearer, by its known squeeze, `sd_sizes`). 0 = not checked.
    stretch_tolerance: float = _FAN.tolerance
    segmenter: str = "head_segmenter"  # manifest name in models.dir; absent = no biometry
    head_planes: tuple[str, ...] = HEAD_PLANES  # plane labels measured
    min_head_area_fraction: float = _MEASURE.min_head_area_fraction
    several_heads_fraction: float = _MEASURE.several_heads_fraction
    cutoff_margin_fraction: float = _MEASURE.cutoff_margin_fraction
    edge_run_fraction: float = _MEASURE.edge_run_fraction
    min_fit_iou: float = _MEASURE.min_fit_iou
    min_axis_ratio: float = _MEASURE.min_axis_ratio
    measure_max_side_px: int = _MEASURE.measure_max_side_px
    frame_image_below: float = _MEASURE.frame_image_below
    pixel_size_min_mm: float = _MEASURE.pixel_size_min_mm
    pixel_size_max_mm: float = _MEASURE.pixel_size_max_mm

    def measurement(self) -> BiometrySettings:
        """The measurement settings; the threshold is filled in from the model's manifest."""
        names = [f.name for f in dataclasses.fields(BiometrySettings)
                 if f.name != "probability_threshold"]
        return BiometrySettings(**{name: getattr(self, name) for name in names})


@dataclass(frozen=True)
class QualityConfig:
    """[quality]: the per-frame audit (edge/models/quality.py)."""

    enabled: bool = True
    rules: str = ""  # a quality rules TOML; "" = the shipped edge/models/quality_rules.toml
    learned: str = "quality_head"  # manifest name of the learned quality head; "" = none


@dataclass(frozen=True)
class Settings:
    source: SourceSettings = field(default_factory=SourceSettings)
    models: ModelSettings = field(default_factory=ModelSettings)
    roi: RoiSettings = field(default_factory=RoiSettings)
    loop: LoopSettings = field(default_factory=LoopSettings)
    device: DeviceSettings = field(default_factory=DeviceSettings)
    journal: JournalSettings = field(default_factory=JournalSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    biometry: BiometryConfig = field(default_factory=BiometryConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    exam: ExamSettings = field(default_factory=ExamSettings)
    web: WebSettings = field(default_factory=WebSettings)  # the midwife's page (edge/web)
    fleet: FleetSettings = field(default_factory=FleetSettings)  # bundles, slots (edge/fleet)
    logging: LogSettings = field(default_factory=LogSettings)


class ConfigError(ValueError):
    """A one-line message naming the file and the key."""


def _coerce(value: object, kind: object, where: str) -> object:
    """Accept TOML's types where they fit the field's declared type exactly."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(kind):
            if option is type(None) and value is None:
                return None
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {shown(value)} has the wrong type")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {shown(value)}")
        return tuple(value)
    if kind in (int, str, bool, float):
        if type(value) is not kind:
            raise ConfigError(f"{where}: expected {kind.__name__}, got {shown(value)}")
        return value
    return value


def _section(cls: type, table: object, where: str) -> object:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in table.items():
        if key not in hints:
            raise ConfigError(f"{where}: unknown key {shown(key)}")
        values[key] = _coerce(value, hints[key], f"{where}.{key}")
    return cls(**values)


def load_settings(path: Path | None = None, overrides: dict[str, dict] | None = None) -> Settings:
    """Defaults, then the file, then command-line overrides ({"source": {"spec": ...}})."""
    data: dict = {}
    label = "command line"
    if path is not None:
        label = shown_path(Path(path))
        try:
            data = read_toml_bounded(Path(path), MAX_CONFIG_BYTES)
        except FileNotFoundError:
            raise ConfigError(f"{label}: config file not found") from None
        except PayloadError as exc:
            raise ConfigError(f"{label}: {exc}") from None
        # ValueError: a NUL in the config's own path; str(OSError) repeats the whole path
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{label}: {read_failure(exc)}") from None
    if path is not None:
        _check_secrets(Path(path), data)
        _paths_beside(Path(path), data)
    for section, values in (overrides or {}).items():
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ConfigError(f"{label}: [{section}] must be a table")
        data[section].update({k: v for k, v in values.items() if v is not None})
    sections = {f.name: f.default_factory for f in dataclasses.fields(Settings)}
    built = {}
    for key, table in data.items():
        if key not in sections:
            raise ConfigError(f"{label}: unknown section [{key}]")
        built[key] = _section(type(sections[key]()), table, f"{label}: {key}")
    settings = Settings(**built)
    _validate(settings, label)
    return settings


# The keys that name a file or folder. A relative one in a config file means beside that
# file, as a unit file or a compose file reads it: the service's working folder is not the
# config's, and `--config` from another folder must read the same files. A command-line
# path (--source, --state-dir) keeps the shell's meaning: the current folder.
PATH_KEYS = {
    "source": ("spec",), "models": ("dir",), "device": ("state_dir",), "logging": ("file",),
    "quality": ("rules",), "exam": ("protocols_file",),
    "mqtt": ("tls_ca", "tls_cert", "tls_key", "password_file"),
    "fleet": ("root", "trusted_keys", "http_ca"),
    "web": ("tls_cert", "tls_key"),
}
# `[source] spec` values that name no file: the demo, a device, a camera (v4l2:N, picamera2:N)
_SPEC_WORDS = ("demo", "picamera2")


def _paths_beside(path: Path, data: dict) -> None:
    base = path.parent
    for section, keys in PATH_KEYS.items():
        table = data.get(section)
        if not isinstance(table, dict):
            continue  # _section names the wrong type
        for key in keys:
            value = table.get(key)
            if not isinstance(value, str) or not value or Path(value).is_absolute():
                continue
            if section == "source" and (value in _SPEC_WORDS or ":" in value):
                continue
            table[key] = str(base / value)


def fan_settings(settings: Settings) -> FanSettings | None:
    """The screen-shape check's settings (`edge.models.fan`) as the box runs it, for the
    scorer and `sonoedge status` alike; None where `[biometry] stretch_tolerance = 0` turns
    it off. Its image and black levels follow the screen's, as the region's do (`[roi]`: a
    capture whose black sits at grey 16 sets black_level 24 and outline_level 16)."""
    bio = settings.biometry
    if not bio.stretch_tolerance:
        return None
    return dataclasses.replace(FanSettings(), tolerance=bio.stretch_tolerance,
                               level=max(1, settings.roi.black_level - 2),
                               outside_level=settings.roi.outline_level + 4,
                               undone=settings.source.stretch)


def frame_limits(settings: Settings) -> FrameLimits:
    """The pixel budget and minimum frame size of `[source]`."""
    return FrameLimits(settings.source.max_frame_pixels, settings.source.min_frame_side)


def _check_secrets(path: Path, data: dict) -> None:
    """A config that holds the MQTT password must be readable by its owner alone."""
    mqtt = data.get("mqtt")
    if not isinstance(mqtt, dict):
        return
    url = mqtt.get("url")
    if not (mqtt.get("password") or (isinstance(url, str) and url_has_password(url))):
        return
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & 0o077:
        raise ConfigError(f"{shown_path(path)}: holds the MQTT password but other users can "
                          f"read it (mode {mode & 0o777:04o}); chmod 600 it, or use [mqtt] "
                          "password_file")


def _validate(settings: Settings, label: str) -> None:
    _check_strings(settings, label)  # first: the checks below open files by these names
    if settings.models.backend not in ("litert", "edgetpu", "tflite-runtime"):
        raise ConfigError(f"{label}: models.backend must be litert, edgetpu or tflite-runtime")
    if not 1 <= settings.models.num_threads <= 64:
        raise ConfigError(f"{label}: models.num_threads must be between 1 and 64")
    lp = settings.loop
    _each_in_range("loop", lp, label, (
        ("roi_refresh_frames", 1 <= lp.roi_refresh_frames <= MAX_ROI_REFRESH_FRAMES,
         f"1-{MAX_ROI_REFRESH_FRAMES} frames"),
        ("log_every", 0 <= lp.log_every <= MAX_LOG_EVERY,
         f"0-{MAX_LOG_EVERY} frames (0: no per-frame line)")))
    # loop.max_frames is checked by `sonoedge run`, which knows whether --max-frames gave it
    if not 0.1 <= settings.loop.stall_s <= 3600:
        raise ConfigError(f"{label}: loop.stall_s must be 0.1-3600 seconds")
    mq = settings.mqtt
    _check_mqtt(mq, label)
    if settings.device.device_id:  # the uplink's id where [mqtt] gives none (edge/loop.py)
        try:
            resolve_device_id(settings.device.device_id)
        except ValueError as exc:
            raise ConfigError(f"{label}: device.device_id: {printable(one_line(exc))}") \
                from None
    _each_in_range("journal", settings.journal, label, (
        ("keep_days", 0.0 < settings.journal.keep_days <= MAX_KEEP_DAYS,
         f"in (0, {MAX_KEEP_DAYS:g}] days"),))
    if not 1.0 <= settings.journal.quota_mb <= 1e7:
        raise ConfigError(f"{label}: journal.quota_mb must be at least 1")
    if not 0.1 <= settings.logging.max_mb <= 1e4 or not 0 <= settings.logging.backups <= 100:
        raise ConfigError(f"{label}: logging.max_mb must be 0.1-10000 and backups 0-100")
    try:
        check_fleet_settings(settings.fleet)
    except ValueError as exc:
        raise ConfigError(f"{label}: fleet: {exc}") from None
    src = settings.source
    _each_in_range("source", src, label, (
        ("max_frame_pixels", 1024 <= src.max_frame_pixels <= MAX_FRAME_PIXELS,
         f"1024-{MAX_FRAME_PIXELS} pixels"),))
    if not (src.min_frame_side >= 1 and src.min_frame_side ** 2 <= src.max_frame_pixels):
        raise ConfigError(f"{label}: source.max_frame_pixels must be at least 1024 and "
                          "source.min_frame_side at least 1 (and fit within the budget)")
    side = f"0-{MAX_CAPTURE_SIDE} pixels (0: the device's own)"
    _each_in_range("source", src, label, (
        ("width", 0 <= src.width <= MAX_CAPTURE_SIDE, side),
        ("height", 0 <= src.height <= MAX_CAPTURE_SIDE, side),
        ("max_reopen_attempts", -1 <= src.max_reopen_attempts <= MAX_REOPEN_ATTEMPTS,
         f"-1 (for ever) or 0-{MAX_REOPEN_ATTEMPTS}"),
        ("fps", 0.0 <= src.fps <= 240.0, "0-240 (0: the device's own)"),
        ("backoff_initial_s", 0.0 < src.backoff_initial_s <= 3600.0, "in (0, 3600] seconds"),
        ("backoff_max_s", 0.0 < src.backoff_max_s <= 3600.0, "in (0, 3600] seconds"),
        ("stretch", MIN_SOURCE_STRETCH <= src.stretch <= MAX_SOURCE_STRETCH,
         f"{MIN_SOURCE_STRETCH:g}-{MAX_SOURCE_STRETCH:g} (1: the grabber keeps the "
         "scanner's shape)")))
    _validate_biometry(settings.biometry, label)
    _validate_roi(settings.roi, label)
    try:
        check_web_settings(settings.web)
    except ValueError as exc:
        raise ConfigError(f"{label}: web: {exc}") from None
    _validate_exam(settings.exam, label)
    _check_finite(settings, label)


def _check_finite(settings: Settings, label: str) -> None:
    """TOML has nan and inf, and NaN passes every check written "x <= 0 is wrong": a number
    no check above covers must still be a number."""
    for section in dataclasses.fields(settings):
        values = getattr(settings, section.name)
        if not dataclasses.is_dataclass(values):
            continue
        for item in dataclasses.fields(values):
            value = getattr(values, item.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{label}: {section.name}.{item.name}: expected a finite "
                                  f"number, got {value}")


def _each_in_range(section: str, values: object, label: str,
                   checks: tuple[tuple[str, bool, str], ...]) -> None:
    """(key, in range, what is allowed) per number of a section: the first out of range is
    named on its own, with its value, so the line says which one is wrong."""
    for name, ok, allowed in checks:
        if not ok:
            value = getattr(values, name)
            # to 12 digits: 50.0000001 was said "got 50", the bound itself
            text = f"{value:.12g}" if isinstance(value, float) else shown(value)
            raise ConfigError(f"{label}: {section}.{name} must be {allowed}, got {text}")


def _check_strings(settings: Settings, label: str) -> None:
    """One rule for every string of every section (paths, names, ids, URLs, the lists'
    items): at most MAX_STRING_CHARS long, no NUL, and no other control character but in
    a path or the password (`_CONTROL`). A NUL was accepted here and ended the loop later
    in open() ("embedded null byte"). The line names the key and the character, never the
    value (it may be the password)."""
    free = _OPAQUE | {(section, key) for section, keys in PATH_KEYS.items() for key in keys}
    for section in dataclasses.fields(settings):
        values = getattr(settings, section.name)
        for item in dataclasses.fields(values):
            value = getattr(values, item.name)
            texts = value if isinstance(value, tuple) else (value,)
            for text in (t for t in texts if isinstance(t, str)):
                where = f"{label}: {section.name}.{item.name}"
                if len(text) > MAX_STRING_CHARS:
                    raise ConfigError(f"{where} is longer than {MAX_STRING_CHARS} characters")
                if "\x00" in text:
                    raise ConfigError(f"{where} contains a NUL character")
                bad = _CONTROL.search(text)
                if bad and (section.name, item.name) not in free:
                    raise ConfigError(f"{where} contains a control character "
                                      f"(\\x{ord(bad.group()):02x})")


def _check_mqtt(mq: MqttSettings, label: str) -> None:
    """check_mqtt_settings, whose one line names the key, and a file's path cut and
    escaped (a name too long for the file system, a FIFO, a NUL: each a ValueError)."""
    try:
        check_mqtt_settings(mq)
    except ValueError as exc:
        raise ConfigError(f"{label}: mqtt: {printable(one_line(exc))}") from None


def _validate_exam(ex: ExamSettings, label: str) -> None:
    _each_in_range("exam", ex, label, (
        ("end_gap_s", 0.0 < ex.end_gap_s <= 86400.0, "in (0, 86400] seconds"),
        ("signal_lost_s", 0.2 <= ex.signal_lost_s <= 60.0, "0.2-60 seconds"),
        ("signal_hold_s", 0.0 <= ex.signal_hold_s <= 3600.0, "0-3600 seconds"),
        # a signal counted lost only after the gap has ended the exam holds nothing: the
        # hold would be off without a word (the review)
        ("signal_lost_s", ex.signal_hold_s == 0 or ex.signal_lost_s < ex.end_gap_s,
         f"under exam.end_gap_s ({ex.end_gap_s:g}) while exam.signal_hold_s is set"),
        ("thumb_width", 16 <= ex.thumb_width <= 4096, "16-4096 pixels"),
        ("thumb_interval_s", 0.0 <= ex.thumb_interval_s <= 3600.0, "0-3600 seconds"),
        ("thumbs_quota_mb", 0.0 < ex.thumbs_quota_mb <= 1e6, "in (0, 1000000] MB")))
    # The protocol by name, at load: a typo ("nope") was said only when `run` or `exam`
    # looked it up, without the file or the key, and `score`, `status` and the rest took
    # the config as good.
    try:
        protocols = load_protocols(ex.protocols_file or None)
    except ProtocolError as exc:  # its line names the protocols file and its key
        raise ConfigError(f"{label}: exam.protocols_file: {exc}") from None
    if ex.protocol not in protocols:
        raise ConfigError(f"{label}: exam.protocol: unknown protocol {shown(ex.protocol)}: "
                          f"choose one of {', '.join(sorted(protocols))}")


def _validate_roi(roi: RoiSettings, label: str) -> None:
    """[roi]: a width of 0 or a black level of 999 would find no image on any screen, and
    say nothing; each number is held to what the finder can use."""
    if not 32 <= roi.work_width <= 4096:
        raise ConfigError(f"{label}: roi.work_width must be 32-4096 pixels")
    for name in ("black_level", "outline_level"):
        if not 0 <= getattr(roi, name) <= 254:
            raise ConfigError(f"{label}: roi.{name} must be a grey level of 0-254")
    for name in ("thin_fraction", "min_area_fraction"):
        if not 0.0 < getattr(roi, name) < 0.5:
            raise ConfigError(f"{label}: roi.{name} must be between 0 and 0.5")
    for name in ("piece_fraction", "row_fraction", "col_fraction"):
        if not 0.0 < getattr(roi, name) <= 1.0:
            raise ConfigError(f"{label}: roi.{name} must be above 0 and at most 1")


def _validate_biometry(bio: BiometryConfig, label: str) -> None:
    for name in ("min_head_area_fraction", "several_heads_fraction", "cutoff_margin_fraction",
                 "edge_run_fraction", "min_fit_iou", "min_axis_ratio"):
        if not 0.0 < getattr(bio, name) < 1.0:
            raise ConfigError(f"{label}: biometry.{name} must be between 0 and 1")
    if not 0.0 <= bio.frame_image_below <= 1.0:
        raise ConfigError(f"{label}: biometry.frame_image_below must be between 0 and 1")
    if not (bio.measure_max_side_px == 0 or 64 <= bio.measure_max_side_px <= 8192):
        raise ConfigError(f"{label}: biometry.measure_max_side_px must be 0 (the frame's own "
                          "size) or 64-8192")
    if not 0.0 < bio.pixel_size_min_mm < bio.pixel_size_max_mm:
        raise ConfigError(f"{label}: biometry.pixel_size_min_mm must be positive and below "
                          f"pixel_size_max_mm")
    _each_in_range("biometry", bio, label, (
        ("pixel_size_max_mm", bio.pixel_size_max_mm <= MAX_PIXEL_SIZE_MM,
         f"at most {MAX_PIXEL_SIZE_MM:g} mm per pixel"),))
    if bio.pixel_size_mm != 0.0 and not (
            bio.pixel_size_min_mm <= bio.pixel_size_mm <= bio.pixel_size_max_mm):
        raise ConfigError(f"{label}: biometry.pixel_size_mm {bio.pixel_size_mm:g} is outside "
                          f"the plausible {bio.pixel_size_min_mm:g}-{bio.pixel_size_max_mm:g} "
                          f"mm per pixel (0 = unknown)")
    _each_in_range("biometry", bio, label, (
        ("ruler_tick_mm", bio.ruler_tick_mm == 0.0
         or MIN_RULER_TICK_MM <= bio.ruler_tick_mm <= MAX_RULER_TICK_MM,
         f"0 (no ruler read) or {MIN_RULER_TICK_MM:g}-{MAX_RULER_TICK_MM:g} mm"),
        ("stretch_tolerance", bio.stretch_tolerance == 0.0
         or MIN_STRETCH_TOLERANCE <= bio.stretch_tolerance <= MAX_STRETCH_TOLERANCE,
         f"0 (not checked) or {MIN_STRETCH_TOLERANCE:g}-{MAX_STRETCH_TOLERANCE:g}"),))
    if not bio.segmenter:
        raise ConfigError(f"{label}: biometry.segmenter must name a model manifest")
