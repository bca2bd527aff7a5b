"""What the midwife is shown, steadied over frames so that it does not flicker.

Per frame the plane model and the audit answer afresh; a probe in a moving hand makes both
jump. The displayed plane changes only after `plane_change_frames` consecutive frames agree
on a new one; the instruction changes only after a new most important failing criterion
has led for `message_change_frames` frames (a run of passing frames clears it the same
way); the displayed score is an exponential average. The numbers are in the quality rules'
[feedback] table.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.models.quality import Feedback


@dataclass
class _Hysteresis:
    """A value that changes only after a candidate has been seen `needed` times in a row."""

    needed: int
    shown: object = None
    candidate: object = None
    run: int = 0

    def update(self, value: object) -> object:
        if value == self.shown:
            self.candidate, self.run = None, 0
            return self.shown
        if value == self.candidate:
            self.run += 1
        else:
            self.candidate, self.run = value, 1
        if self.run >= self.needed:
            self.shown, self.candidate, self.run = value, None, 0
        return self.shown


@dataclass(frozen=True)
class Shown:
    plane: str | None
    score: float | None
    advice: str | None  # criterion name
    message: str | None  # what to do


class SteadyFeedback:
    def __init__(self, settings: Feedback):
        self.settings = settings
        self._plane = _Hysteresis(settings.plane_change_frames)
        self._advice = _Hysteresis(settings.message_change_frames)
        self._score: float | None = None
        self._messages: dict[str, str] = {}

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
        shown = self._advice.update(advice)
        return Shown(plane, None if self._score is None else round(self._score, 3), shown,
                     self._messages.get(shown) if shown else None)
