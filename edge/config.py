"""One typed configuration for the device, read from TOML, every key checked.

Every setting has a default, so `sonoedge run --source PATH` works without a file. A key
the code does not know is an error naming the file and the key: a typo must not silently
fall back to a default on a device nobody watches.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from edge.roi import RoiSettings
from edge.uplink import MqttSettings, check_mqtt_settings

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class SourceSettings:
    spec: str = "demo"  # demo | image/video file | folder | v4l2:N | /dev/videoN | picamera2
    width: int = 0  # live sources: capture size hint (0 = the device's default)
    height: int = 0
    fps: float = 0.0
    backoff_initial_s: float = 0.5  # live sources: first wait before reopening
    backoff_max_s: float = 30.0
    max_reopen_attempts: int = -1  # -1: keep trying forever (a grabber may be replugged)


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


@dataclass(frozen=True)
class JournalSettings:
    keep_days: float = 90.0  # frame results of runs older than this are pruned at start


@dataclass(frozen=True)
class DeviceSettings:
    state_dir: str = "state"  # journal, outbox and status live here
    device_id: str = ""  # empty: derived from the machine id


@dataclass(frozen=True)
class Settings:
    source: SourceSettings = field(default_factory=SourceSettings)
    models: ModelSettings = field(default_factory=ModelSettings)
    roi: RoiSettings = field(default_factory=RoiSettings)
    loop: LoopSettings = field(default_factory=LoopSettings)
    device: DeviceSettings = field(default_factory=DeviceSettings)
    journal: JournalSettings = field(default_factory=JournalSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)


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
        raise ConfigError(f"{where}: {value!r} has the wrong type")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (int, str, bool, float):
        if type(value) is not kind:
            raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}")
        return value
    return value


def _section(cls: type, table: object, where: str) -> object:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in table.items():
        if key not in hints:
            raise ConfigError(f"{where}: unknown key {key!r}")
        values[key] = _coerce(value, hints[key], f"{where}.{key}")
    return cls(**values)


def load_settings(path: Path | None = None, overrides: dict[str, dict] | None = None) -> Settings:
    """Defaults, then the file, then command-line overrides ({"source": {"spec": ...}})."""
    data: dict = {}
    label = "command line"
    if path is not None:
        label = str(path)
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
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


def _validate(settings: Settings, label: str) -> None:
    if settings.models.backend not in ("litert", "edgetpu", "tflite-runtime"):
        raise ConfigError(f"{label}: models.backend must be litert, edgetpu or tflite-runtime")
    if not 1 <= settings.models.num_threads <= 64:
        raise ConfigError(f"{label}: models.num_threads must be between 1 and 64")
    if settings.loop.roi_refresh_frames < 1 or settings.loop.log_every < 0:
        raise ConfigError(f"{label}: loop.roi_refresh_frames must be >= 1, log_every >= 0")
    try:
        check_mqtt_settings(settings.mqtt)
    except ValueError as exc:
        raise ConfigError(f"{label}: mqtt: {exc}") from None
    if settings.journal.keep_days <= 0:
        raise ConfigError(f"{label}: journal.keep_days must be positive")
    if settings.source.backoff_initial_s <= 0 or settings.source.backoff_max_s <= 0:
        raise ConfigError(f"{label}: source backoff times must be positive")
