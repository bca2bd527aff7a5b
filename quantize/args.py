"""Numbers the toolchain's command lines take, bounded: a bad one is refused by argparse
with one line that names the option, before any work (a negative step count once trained
nothing and wrote its results; a thread count of 0 ended in a traceback)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An argparse `type`: a whole number from `low` to `high`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{text[:40]!r} is not a whole number from {low} to {high}")
        return value

    return parse


def bounded_float(low: float, high: float) -> Callable[[str], float]:
    """An argparse `type`: a finite number from `low` to `high`."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number from {low:g} "
                                             f"to {high:g}")
        return value

    return parse


STEPS = bounded_int(1, 1_000_000)
SEED = bounded_int(0, 2**31 - 1)
THREADS = bounded_int(1, 64)
