"""The screen-shape verdict kept across runs (`edge.models.fan`).

A verdict needs a few frames that show the probe's whole fan, and after a restart the
first exams' heads would be measured before it, through a grabber already found to
stretch the picture. The box keeps each screen's last verdict (its source and frame size)
in the state folder, `screen_shape.json`, and starts from it until that screen has given
enough readings of its own. Each verdict keeps the `[source] stretch` it was read under
(`setting`; 1.0 where none is set): its frames were narrowed by it, and the verdict is of
that picture (`edge.models.fan.same_frames`). A verdict kept before the box recorded it
has none: its setting is not known (None). A damaged or foreign file is one log line and
no memory: nothing here is worth refusing a start for.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from edge.models.fan import MAX_SOURCE_STRETCH, MIN_SOURCE_STRETCH
from edge.store.state import write_json
from wire.schema import PayloadError, loads_bounded
from wire.shown import shown, shown_path

log = logging.getLogger(__name__)

SCREEN_SHAPE_FILE = "screen_shape.json"
MAX_FILE_BYTES = 16_384
MAX_SCREENS = 16  # sources and frame sizes remembered; the oldest go first
MAX_KEY_CHARS = 300


def _plausible(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and 0.25 <= value <= 4.0)


def _setting(entry: dict) -> tuple[bool, float | None]:
    """(readable, the `[source] stretch` the entry was read under): None, readable, where
    the entry has none (kept before the box recorded it); unreadable where it is anything
    but a number `[source] stretch` accepts (a hand edit, a damaged file)."""
    if "setting" not in entry:
        return True, None
    value = entry["setting"]
    if (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and MIN_SOURCE_STRETCH <= value <= MAX_SOURCE_STRETCH):
        return True, float(value)
    return False, None


def _load(path: Path) -> tuple[dict[str, dict], str | None]:
    """The screens kept in the file (the last `MAX_SCREENS`, each a text key, a plausible
    stretch and, where it has one, a setting `[source] stretch` accepts; any other entry is
    passed over), and why the file cannot be read as a whole
    (None where it can, or is not there)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return {}, None
    except OSError as exc:
        return {}, f"{shown_path(path)} not read ({exc.strerror or exc})"
    try:
        if len(raw) > MAX_FILE_BYTES:
            raise PayloadError(f"larger than {MAX_FILE_BYTES} bytes")
        data = loads_bounded(raw, MAX_FILE_BYTES, max_depth=4)
    except (PayloadError, ValueError) as exc:
        return {}, f"{shown_path(path)} is not a verdict file ({shown(str(exc))[:120]})"
    screens = data.get("screens") if isinstance(data, dict) else None
    if not isinstance(screens, list):  # oldest first: a list keeps its order in the file
        # said, as any damaged file is: read as none, a stretched screen's remembered
        # refusal was lost without a word (a walk's hand-edited `"screens": "many"`)
        return {}, f"{shown_path(path)} is not a verdict file (no list of screens)"
    kept: dict[str, dict] = {}
    for entry in screens[-MAX_SCREENS:]:
        if (isinstance(entry, dict) and isinstance(entry.get("screen"), str)
                and len(entry["screen"]) <= MAX_KEY_CHARS and _plausible(entry.get("stretch"))
                and _setting(entry)[0]):
            kept[entry["screen"]] = entry
    if screens and not kept:
        # every screen passed over (a hand-edited `"stretch": "0.94"`) is no memory as
        # surely as no list: said, or a stretched screen's refusal is lost without a word
        return {}, (f"{shown_path(path)} is not a verdict file (none of its "
                    f"{min(len(screens), MAX_SCREENS)} last screens readable)")
    return kept, None


def _read(path: Path) -> dict[str, dict]:
    kept, problem = _load(path)
    if problem:
        log.warning("screen shape: %s; no verdict remembered", problem)
    return kept


def recalled(state_dir: Path) -> tuple[list[tuple[str, float, object, float | None]],
                                       str | None]:
    """Every screen remembered, oldest first: (key, stretch, when kept: as read, unchecked,
    the setting it was read under: None where not recorded), and why the file cannot be
    read (None where it can or is not there), for `sonoedge status`."""
    kept, problem = _load(Path(state_dir) / SCREEN_SHAPE_FILE)
    return [(key, float(entry["stretch"]), entry.get("at"), _setting(entry)[1])
            for key, entry in kept.items()], problem


def remembered(state_dir: Path, key: str) -> tuple[float, float | None] | None:
    """This screen's last verdict (its median stretch) and the `[source] stretch` it was
    read under (None: not recorded), or None."""
    entry = _read(Path(state_dir) / SCREEN_SHAPE_FILE).get(key)
    return None if entry is None else (float(entry["stretch"]), _setting(entry)[1])


def remember(state_dir: Path, key: str, stretch: float, setting: float) -> None:
    """Keep this screen's verdict and the `[source] stretch` it was read under (1.0: none),
    written whole and durably; a failure is one line."""
    path = Path(state_dir) / SCREEN_SHAPE_FILE
    screens = _read(path)
    screens.pop(key, None)
    screens[key] = {"screen": key[:MAX_KEY_CHARS], "stretch": round(float(stretch), 4),
                    "setting": float(setting), "at": round(time.time())}
    try:
        write_json(path, {"version": 1, "screens": list(screens.values())[-MAX_SCREENS:]})
    except OSError as exc:
        log.warning("screen shape: the verdict was not kept in %s (%s)", shown_path(path),
                    exc.strerror or exc)

