"""Calls that must not wait for ever (a FIFO given as a file), run so that a regression
fails its test instead of holding the whole suite."""

from __future__ import annotations

import threading
from collections.abc import Callable


def raised_within(call: Callable[[], object], error: type[BaseException],
                  seconds: float = 10.0) -> BaseException:
    """The `error` that `call()` raised on a thread of its own; AssertionError when it
    returned instead, raised something else, or was still waiting after `seconds`."""
    outcome: list = []

    def attempt() -> None:
        try:
            call()
            outcome.append("returned")
        except error as exc:
            outcome.append(exc)
        except BaseException as exc:  # noqa: BLE001  (reported below, whatever it is)
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(seconds)
    assert outcome, f"still waiting after {seconds:g} s"
    assert isinstance(outcome[0], error), outcome[0]
    return outcome[0]
