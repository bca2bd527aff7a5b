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


# What a log line or a terminal would act on or cannot print: C0 and C1 controls (a newline
# that forges a line, the ESC or CSI that starts a terminal command) and lone surrogates
# (valid in JSON, not in UTF-8: printing one raises).
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def printable(text: str) -> str:
    """`text` as one printable line: every control character and lone surrogate as a
    visible escape (\\x1b, \\x0a, \\ud800). What a device or a file sent can then neither
    add a line to a log or a report nor drive the terminal that shows it."""
    return _UNPRINTABLE.sub(lambda m: (f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                                       else f"\\u{ord(m.group()):04x}"), text)


def shown_path(path: object, limit: int | None = 200) -> str:
    """A path or source spec as one line of at most about `limit` characters: bytes that
    are not UTF-8 and control characters (a newline) as \\xNN, a very long one cut in its
    middle, keeping its start and its end (the file name); `limit` None never cuts.

    A path (a `Path`, not a spec's text such as `v4l2:0`) is shown absolute: an installer
    reads the line later, in a log, from another folder, where `./device.toml` names
    nothing. Made absolute from the current folder as written (`os.path.abspath`), links
    not followed and nothing asked of the file system: the name given, not another one."""
    if isinstance(path, os.PathLike):
        try:
            path = os.path.abspath(path)
        except (OSError, ValueError):  # the current folder removed under the process
            pass
    text = printable(os.fsencode(str(path)).decode("utf-8", "backslashreplace"))
    if limit is not None and len(text) > limit:
        half = limit // 2 - 2
        text = f"{text[:half]}...{text[-half:]}"
    return text


def read_failure(exc: BaseException) -> str:
    """Why a file could not be read, as one printable line; the caller names the file
    (an OSError's own text repeats the path, unescaped)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return printable(one_line(exc))


def is_one_line(text: str, limit: int) -> bool:
    """A text a file may give the screen or a summary: one printable line of 1-`limit`
    characters, not all blank."""
    return 0 < len(text) <= limit and text.isprintable() and bool(text.strip())
