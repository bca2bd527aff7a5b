"""How a bad value appears in an error line: one line, whatever the input was (the device
and the district alike)."""

from __future__ import annotations


def shown(value: object, limit: int = 60) -> str:
    """`value`'s repr cut to `limit` characters: a hostile config or manifest may hold a
    200 kB string or list, and the line that names it must stay one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
