"""How a bad value appears in an error line: one line, whatever the input was (the device
and the district alike)."""

from __future__ import annotations

import os
import re


def shown(value: object, limit: int = 60) -> str:
    """`value`'s repr cut to `limit` characters: a hostile config or manifest may hold a
    200 kB string or list, and the line that names it must stay one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def one_line(exc: BaseException) -> str:
    """An error as one line for a log or a message: its text's first line, or its type's
    name when it says nothing."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def shown_path(path: object, limit: int | None = 200) -> str:
    """A path or source spec as one line of at most about `limit` characters: bytes that
    are not UTF-8 and control characters (a newline) as \\xNN, a very long one cut in its
    middle, keeping its start and its end (the file name); `limit` None never cuts."""
    text = os.fsencode(str(path)).decode("utf-8", "backslashreplace")
    text = re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", text)
    if limit is not None and len(text) > limit:
        half = limit // 2 - 2
        text = f"{text[:half]}...{text[-half:]}"
    return text
