"""Message catalogs: every word the page shows, by key, one JSON file per language.

`edge/web/i18n/<lang>.json` holds the page's own text. The quality instructions' English
text is not repeated there: it comes from the quality rules (`edge/models/quality_rules.toml`,
whatever file the device is configured with), each criterion's messages under
`quality.<criterion>` (one message) or `quality.<criterion>.low` / `.high`, and
`quality.<criterion>.ok`. Another language is one more JSON file with the same keys, no
code: a key it lacks falls back to English. A catalog's quality text is used only while the
rules' `version` equals its `_quality_rules_version`, because a stale translation of a
changed instruction would tell the midwife the wrong thing; otherwise the English text of
the rules is shown (and the log says so once).
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from pathlib import Path

from edge.models.quality import Rules
from wire.schema import PayloadError, loads_bounded, read_regular_file
from wire.shown import one_line, printable, read_failure, shown_path

log = logging.getLogger(__name__)

CATALOG_DIR = Path(__file__).resolve().parent / "i18n"
LANG_RE = re.compile(r"^[a-z]{2,3}(-[A-Za-z]{2,4})?$")
DEFAULT = "en"
MAX_CATALOG_BYTES = 256 * 1024


class CatalogError(ValueError):
    """One line naming the catalog file."""


def quality_keys(rules: Rules | None) -> dict[str, str]:
    """English text of every quality instruction by catalog key."""
    out: dict[str, str] = {}
    for rule in rules.criteria if rules is not None else ():
        if rule.message_low == rule.message_high:
            out[f"quality.{rule.name}"] = rule.message_low
        else:
            out[f"quality.{rule.name}.low"] = rule.message_low
            out[f"quality.{rule.name}.high"] = rule.message_high
        out[f"quality.{rule.name}.ok"] = rule.ok
    return out


def message_key(rules: Rules | None, criterion: str | None, message: str | None) -> str | None:
    """The catalog key of a criterion's instruction, given its English text."""
    if not criterion or message is None:
        return None
    keys = quality_keys(rules)
    for key, text in keys.items():
        if text == message and key.startswith(f"quality.{criterion}") and \
                not key.endswith(".ok"):
            return key
    # another criterion's words (a dim frame's contrast says the gain's "too dark")
    return next((key for key, text in keys.items()
                 if text == message and not key.endswith(".ok")), None)


def exam_with_advice_keys(rules: Rules | None, exam: dict | None) -> dict | None:
    """The exam with the catalog key of each slot's advice, so the page says in its own
    language what would make a best frame good enough. A copy: the view's own exam is
    shared with the loop."""
    if not exam:
        return exam
    rows = []
    for row in exam.get("checklist") or []:
        advice = (row.get("best") or {}).get("advice")
        if isinstance(advice, dict):
            key = message_key(rules, advice.get("criterion"), advice.get("message"))
            row = {**row, "best": {**row["best"], "advice": {**advice, "key": key}}}
        rows.append(row)
    return {**exam, "checklist": rows}


@lru_cache(maxsize=16)
def _read(path: Path) -> dict[str, str]:
    """A catalog, read as any file given by someone else: a regular file of at most
    MAX_CATALOG_BYTES, JSON bounded in depth and numbers (`wire.schema.loads_bounded`: a
    1,000-deep catalog was a RecursionError, a 5,000-digit number a ValueError). Else
    CatalogError, one line naming the file."""
    try:
        raw, _ = read_regular_file(path, MAX_CATALOG_BYTES)
        data = loads_bounded(raw, MAX_CATALOG_BYTES)
    except OSError as exc:
        raise CatalogError(f"{shown_path(path)}: not a readable JSON catalog "
                           f"({read_failure(exc)})") from None
    except PayloadError as exc:
        raise CatalogError(f"{shown_path(path)}: not a readable JSON catalog "
                           f"({printable(one_line(exc))})") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                             for k, v in data.items()):
        raise CatalogError(f"{shown_path(path)}: a catalog is one JSON object of strings")
    return data


_SAID_BAD: set[Path] = set()


def _readable(path: Path) -> dict[str, str] | None:
    """A catalog, or None when it cannot be read: said once in the log, one line naming the
    file. The page then goes on in English (`languages` leaves the language out). A bad
    one is not read again (a good one is cached by `_read`): else every request read and
    parsed it anew, three or four times."""
    if path in _SAID_BAD:
        return None
    try:
        return _read(path)
    except CatalogError as exc:
        if path not in _SAID_BAD:
            _SAID_BAD.add(path)
            log.warning("web: %s; the page leaves this language out", exc)
        return None


def languages(catalog_dir: Path = CATALOG_DIR) -> dict[str, str]:
    """Available languages: code -> its own name (the catalog's `_language_name`). A
    catalog that cannot be read is no language the box has: asked for, it is English."""
    out = {}
    for path in sorted(catalog_dir.glob("*.json")):
        if LANG_RE.match(path.stem) and (own := _readable(path)) is not None:
            out[path.stem] = own.get("_language_name", path.stem)
    return out


_SAID_STALE: set[str] = set()


def catalog(lang: str, rules: Rules | None, catalog_dir: Path = CATALOG_DIR) -> dict[str, str]:
    """The full catalog of one language: English underneath, the language on top."""
    if lang not in languages(catalog_dir):
        lang = DEFAULT
    # English is the shipped one; were it damaged, the quality instructions (from the
    # rules) are still shown, the page's own words as their keys, and the log says so
    merged = dict(_readable(catalog_dir / f"{DEFAULT}.json") or {})
    merged.update(quality_keys(rules))
    if lang != DEFAULT:
        own = _readable(catalog_dir / f"{lang}.json") or {}
        fresh = rules is None or own.get("_quality_rules_version") == rules.version
        if not fresh and lang not in _SAID_STALE:
            _SAID_STALE.add(lang)
            log.warning("web: the %s catalog translates quality rules %s, the device has %s; "
                        "quality instructions are shown in English", lang,
                        own.get("_quality_rules_version"), rules.version)
        merged.update({k: v for k, v in own.items() if fresh or not k.startswith("quality.")})
    merged["_lang"] = lang
    return merged
