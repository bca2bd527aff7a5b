"""What the midwife is shown, steadied over frames so that it does not flicker.

Per frame the plane model and the audit answer afresh; a probe in a moving hand makes both
jump. The displayed plane holds until it has been absent from the last
`plane_change_frames` frames, and the instruction until it has been absent from the last
`message_change_frames` frames; then the most common recent value replaces it (so a steady
change is taken after that many frames, one odd frame changes nothing, and a stale
instruction goes even while the probe keeps moving). An instruction the midwife has followed
goes sooner, once its own criterion has passed on the last `followed_frames` frames: the
screen answers what she did. The displayed score is an exponential average. The numbers are
in the quality rules' [feedback] table.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from edge.models.quality import Feedback


@dataclass
class Hysteresis:
    """A shown value that holds until it has been absent from the last `needed` frames;
    then the most common of those frames' values (the latest on a tie) is shown.

    So a change seen on `needed` frames in a row is taken, one odd frame changes nothing,
    and a value that has gone stale is dropped even when what replaced it keeps changing
    (a moving probe: zoom, then sector cut, then sharpness, each for a few frames).
    """

    needed: int
    shown: object = None
    recent: deque = field(default_factory=deque)

    def update(self, value: object, at_once: bool = False) -> object:
        """Feed one frame's value; returns the value to show. `at_once`: this frame's value
        is shown now, without the hold, for a value that must not wait (a head the box
        refuses for its set-up: "Good image: hold still" held over it for a second had her
        hold still while nothing was measured); going from it is held as from any."""
        self.recent.append(value)
        while len(self.recent) > self.needed:
            self.recent.popleft()
        if at_once:
            self.shown = value
        elif len(self.recent) == self.needed and self.shown not in self.recent:
            self.shown = _most_common(list(self.recent))
        return self.shown

    def release(self, last: int) -> object:
        """Drop the shown value for the most common of the last `last` frames' values."""
        self.shown = _most_common(list(self.recent)[-last:])
        return self.shown


def _most_common(values: list) -> object:
    """The most common value, the latest of them on a tie."""
    counts = Counter(values)
    most = max(counts.values())
    return next(v for v in reversed(values) if counts[v] == most)


@dataclass(frozen=True)
class Shown:
    plane: str | None
    score: float | None
    advice: str | None  # criterion name
    message: str | None  # what to do


class SteadyFeedback:
    def __init__(self, settings: Feedback):
        self.settings = settings
        self._plane = Hysteresis(settings.plane_change_frames)
        self._advice = Hysteresis(settings.message_change_frames)
        self._score: float | None = None
        self._messages: dict[str, str] = {}
        self._followed = 0  # frames in a row on which the shown instruction's criterion passed

    def update(self, result: dict) -> Shown:
        """Feed one frame's result dict; returns what to show now."""
        if result.get("error"):
            return Shown(self._plane.shown, self._score, self._advice.shown,
                         self._messages.get(self._advice.shown))
        plane = self._plane.update(result.get("plane"))
        quality = result.get("quality") or {}
        score = quality.get("score")
        if isinstance(score, int | float):
            a = self.settings.score_smoothing
            self._score = float(score) if self._score is None else \
                (1 - a) * self._score + a * float(score)
        advice = quality.get("advice")
        if advice:
            self._messages[advice] = quality["criteria"][advice]["message"]
        before = self._advice.shown
        shown = self._advice.update(advice)
        criterion = (quality.get("criteria") or {}).get(shown) if shown else None
        passed = isinstance(criterion, dict) and criterion.get("pass") is True
        self._followed = self._followed + 1 if passed and shown == before else int(passed)
        if self._followed >= self.settings.followed_frames:
            shown = self._advice.release(self.settings.followed_frames)
            self._followed = 0
        return Shown(plane, None if self._score is None else round(self._score, 3), shown,
                     self._messages.get(shown) if shown else None)
