"""Is this frame good enough, and if not, what should the midwife change?

A frame is judged criterion by criterion. Each criterion measures one thing (an image
statistic of the plane model's own grey view of the ultrasound region, a figure of the head
the segmenter found, or a branch of the learned quality head) and compares it with the
bounds in the quality rules (`quality_rules.toml`, versioned, every number with its
source). Each gives `pass`, the `value` and a plain-language `message`; the frame's `score`
in 0..1 is the product over criteria of (1 - weight * (1 - goodness)), so one critical
failure (no image) zeroes it while small deficiencies only dent it. The `advice` is the one
failing criterion that matters most, by the rules' priority. Where the head's scale is a
calibration fixed for one depth, a criterion whose instruction changes the scale is judged
and shown but neither advised nor scored (`audit`).

No I/O here beyond reading the rules file once: evidence in, a `QualityResult` out. The
criteria that need evidence a frame does not have are left out of that frame's audit: the
head criteria when no head may be in view, the learned ones when no quality head is
installed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from edge.models.biometry import HEAD_CUT_OFF, NO_HEAD, SEVERAL_HEADS, HeadShape, sigmoid
from edge.models.manifest import Manifest, ModelError
from edge.models.planes import group_mass
from edge.models.preprocess import FrameViews
from edge.models.roi import Roi
from edge.models.runtime import Model
from wire.schema import read_toml_bounded
from wire.shown import is_one_line, read_failure, shown, shown_path

RULES_FILE = Path(__file__).resolve().parent / "quality_rules.toml"
TASK = "quality_regression"
QUALITY_HEAD_LABELS = ("blur", "gain", "noise", "shadow", "cutoff", "zoom")
# The learned head's branches that estimate the depth or zoom (trained on quantize/degrade.py
# `zoom`, a depth set too deep): a bigger head lowers them, like a rule that `changes_scale`,
# so they rank no frame where the head scale is a calibration fixed for one depth (`audit`).
SCALE_BRANCHES = ("zoom",)

# What a criterion may measure. Image statistics are of the plane model's grey view of the
# region (uint8, the model's input size); head figures come from `biometry.HeadShape`.
IMAGE_MEASURES = ("tissue_fraction", "repeated_frames", "bright_level", "dynamic_range",
                  "dark_level", "edge_energy", "plane_margin")
HEAD_MEASURES = ("head_regions", "head_overshoot", "head_area_fraction", "head_fit_iou",
                 "head_offset")
LEARNED_MEASURES = tuple(f"learned:{label}" for label in QUALITY_HEAD_LABELS)
MEASURES = IMAGE_MEASURES + HEAD_MEASURES + LEARNED_MEASURES
# What each measure can be: a rule's min and max must lie within its span and its soft ramp
# be no wider than it (`load_rules`). Where a measure is open-ended, the top is where a
# bound stops meaning anything, with the reason.
MAX_REPEATED_FRAMES = 14_400  # one minute at 240 fps, the fastest source the device takes
MEASURE_RANGES: dict[str, tuple[float, float]] = {
    "tissue_fraction": (0.0, 1.0),  # a share of the region's pixels
    # a count of frames: a frozen image not called within a minute is not being called
    "repeated_frames": (0.0, float(MAX_REPEATED_FRAMES)),
    "bright_level": (0.0, 255.0),  # a grey level of the uint8 view (0: no echoes)
    "dynamic_range": (0.0, 1.0),  # a span of grey levels / 255
    "dark_level": (0.0, 255.0),  # a grey level of the uint8 view (0: no echoes)
    # the variance of the Laplacian over the image's: the 4-neighbour Laplacian's gain is at
    # most 8 (a one-pixel checkerboard), so its variance is at most 64 times the image's
    "edge_energy": (0.0, 64.0),
    # the named plane's calibrated probability (0-1) minus the abstain threshold (0-1)
    "plane_margin": (-1.0, 1.0),
    "head_regions": (0.0, 2.0),  # 0 none, 1 one skull, 2 several (`head_measures`)
    # past the region's edge / the semi-major axis: at 2 the whole ellipse lies beyond it
    "head_overshoot": (0.0, 2.0),
    # the head's ellipse / the image's area: 1 fills the image (more is a head cut off by
    # its edge, which head_overshoot judges)
    "head_area_fraction": (0.0, 1.0),
    "head_fit_iou": (0.0, 1.0),  # an overlap (intersection over union)
    # the head's centre from the region's / its half-size: 1 is the region's edge (beyond
    # it the centre is off the image, which no bound can call centred)
    "head_offset": (0.0, 1.0),
    **{measure: (0.0, 1.0) for measure in LEARNED_MEASURES},  # severity: 0 clean .. 1 severe
}

TISSUE_LEVEL = 12  # grey level above which a pixel holds echoes (fluid and air are below)
SAME_FRAME_DIFF = 0.5  # mean absolute difference (grey levels) below which a frame repeats
MAX_RULES_BYTES = 256 * 1024
# Every frame's audit judges every criterion and carries each one's message into its result
# and the journal: the shipped file has 14, each message under 100 characters.
MAX_CRITERIA = 32
MAX_MESSAGE_CHARS = 200
# A citation and what was measured on it; only the rules file and its readers see it (the
# shipped file's longest, head_found's, is 848 characters).
MAX_SOURCE_CHARS = 2000
MAX_VERSION_CHARS = 16  # an exam summary carries it (edge/exam/tally.py keeps 16)
# `priority` is a rank, 1 = told first, ties allowed: among at most MAX_CRITERIA criteria a
# larger one ranks nothing more.
MAX_PRIORITY = MAX_CRITERIA
_CRITERION_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")  # as a protocol names one
_CRITERION_KEYS = {"measure": str, "min": float, "max": float, "soft": float, "weight": float,
                   "priority": int, "message": str, "message_low": str, "message_high": str,
                   "ok": str, "source": str, "changes_scale": bool}


class RulesError(ValueError):
    """A one-line message naming the rules file and the key."""


@dataclass(frozen=True)
class Rule:
    name: str
    measure: str
    min: float | None
    max: float | None
    soft: float
    weight: float
    priority: int
    message_low: str
    message_high: str
    ok: str
    source: str
    # Its instruction changes the scanner's depth or zoom, so the image's scale: never
    # given where the box's scale is a calibration fixed for one depth (`audit`).
    changes_scale: bool = False

    def goodness(self, value: float) -> float:
        """1 inside the bounds, falling linearly to 0 at `soft` beyond them."""
        miss = 0.0
        if self.min is not None and value < self.min:
            miss = self.min - value
        elif self.max is not None and value > self.max:
            miss = value - self.max
        return 1.0 if miss <= 0 else max(0.0, 1.0 - miss / self.soft)

    def passes(self, value: float) -> bool:
        return ((self.min is None or value >= self.min)
                and (self.max is None or value <= self.max))

    def message(self, value: float) -> str:
        if self.passes(value):
            return self.ok
        return self.message_low if self.min is not None and value < self.min else \
            self.message_high


@dataclass(frozen=True)
class Feedback:
    plane_change_frames: int = 6
    message_change_frames: int = 15
    followed_frames: int = 6
    score_smoothing: float = 0.2


@dataclass(frozen=True)
class Rules:
    version: str
    criteria: tuple[Rule, ...]
    feedback: Feedback
    head_gate_probability: float
    path: str
    # [advice] washed_out_dark_level: a failing contrast is washed out (less gain) only with
    # the echoes' dark end raised above this grey level; at or below it they are dim (more
    # gain). None: not judged (a rules file without it).
    washed_out_dark_level: float | None = None
    # [head] judge_named_planes: whether a frame the plane model names another standard
    # plane (a profile, a heart view; not Background) is still judged by the head criteria
    # when its head planes reach the gate. False: its anatomy is that plane's. A rules file
    # without the key keeps the behaviour of the rules before it (True).
    head_judge_named_planes: bool = True

    def needs_learned_head(self) -> bool:
        return any(r.measure.startswith("learned:") for r in self.criteria)


def _typed(value: object, kind: type, where: str) -> object:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not kind:
        raise RulesError(f"{where}: expected {kind.__name__}, got {shown(value)}")
    if kind is float and not math.isfinite(value):
        raise RulesError(f"{where}: must be a finite number")
    return value


def _rule(name: str, table: object, where: str) -> Rule:
    if not isinstance(table, dict):
        raise RulesError(f"{where}: expected a table")
    values = {}
    for key, value in table.items():
        if key not in _CRITERION_KEYS:
            raise RulesError(f"{where}: unknown key {shown(key)}")
        values[key] = _typed(value, _CRITERION_KEYS[key], f"{where}.{key}")
    for key in ("measure", "soft", "weight", "priority", "ok", "source"):
        if key not in values:
            raise RulesError(f"{where}: missing {shown(key)}")
    if values["measure"] not in MEASURES:
        raise RulesError(f"{where}.measure: {shown(values['measure'])} is not one of "
                         f"{', '.join(MEASURES)}")
    measure = values["measure"]
    floor, top = MEASURE_RANGES[measure]
    low, high = values.get("min"), values.get("max")
    if low is None and high is None:
        raise RulesError(f"{where}: needs min, max or both")
    for key, bound in (("min", low), ("max", high)):
        if bound is not None and not floor <= bound <= top:
            raise RulesError(f"{where}.{key}: {bound:g} is outside what {measure} can be "
                             f"({floor:g} to {top:g})")
    if low is not None and high is not None and low > high:
        raise RulesError(f"{where}.min: {low:g} is above max {high:g}")
    if not 0 < values["soft"] <= top - floor:
        raise RulesError(f"{where}.soft: must be above 0 and at most {top - floor:g}, the "
                         f"span of {measure}")
    if not 0.0 <= values["weight"] <= 1.0:
        raise RulesError(f"{where}.weight: must be between 0 and 1")
    if not 1 <= values["priority"] <= MAX_PRIORITY:
        raise RulesError(f"{where}.priority: must be a rank of 1-{MAX_PRIORITY} (1 = told "
                         "first)")
    for key in ("message", "message_low", "message_high", "ok"):
        text = values.get(key)
        if text is not None and not is_one_line(text, MAX_MESSAGE_CHARS):
            raise RulesError(f"{where}.{key}: must be one line of at most {MAX_MESSAGE_CHARS} "
                             "characters, not blank")
    if not is_one_line(values["source"], MAX_SOURCE_CHARS):
        raise RulesError(f"{where}.source: must be one line of printable text, 1-"
                         f"{MAX_SOURCE_CHARS} characters, not blank")
    message = values.get("message")
    low_msg, high_msg = values.get("message_low", message), values.get("message_high", message)
    if (low is not None and low_msg is None) or (high is not None and high_msg is None):
        raise RulesError(f"{where}: needs a message for each bound it has")
    return Rule(name, measure, low, high, values["soft"], values["weight"],
                values["priority"], low_msg or "", high_msg or "", values["ok"],
                values["source"], values.get("changes_scale", False))


def load_rules(path: Path | str | None = None) -> Rules:
    """The quality rules from `path` (default: the shipped file), every key checked."""
    path = Path(path) if path else RULES_FILE
    try:
        data = read_toml_bounded(path, MAX_RULES_BYTES)
    except FileNotFoundError:
        raise RulesError(f"{shown_path(path, None)}: quality rules file not found") from None
    except (OSError, ValueError) as exc:  # PayloadError, a NUL in the path, tomllib's own
        raise RulesError(f"{shown_path(path, None)}: {read_failure(exc)}") from None
    real, path = str(path), shown_path(path, None)  # each line below names it, escaped
    known = {"version", "feedback", "head", "advice", "criteria"}
    for key in data:
        if key not in known:
            raise RulesError(f"{path}: unknown key {shown(key)}")
    version = _typed(data.get("version"), str, f"{path}: version")
    if not is_one_line(version, MAX_VERSION_CHARS):
        raise RulesError(f"{path}: version: must be 1-{MAX_VERSION_CHARS} characters, not "
                         "blank")
    feedback_table = data.get("feedback", {})
    if not isinstance(feedback_table, dict):
        raise RulesError(f"{path}: feedback: expected a table")
    fb = {}
    for key, value in feedback_table.items():
        kind = {"plane_change_frames": int, "message_change_frames": int,
                "followed_frames": int, "score_smoothing": float}.get(key)
        if kind is None:
            raise RulesError(f"{path}: feedback: unknown key {shown(key)}")
        fb[key] = _typed(value, kind, f"{path}: feedback.{key}")
    feedback = Feedback(**fb)
    if not (1 <= feedback.plane_change_frames <= 1000
            and 1 <= feedback.message_change_frames <= 1000
            and 1 <= feedback.followed_frames <= 1000
            and 0.0 < feedback.score_smoothing <= 1.0):
        raise RulesError(f"{path}: feedback: frame counts must be 1-1000 and score_smoothing "
                         "in (0, 1]")
    head = data.get("head", {})
    if not isinstance(head, dict) or set(head) - {"gate_probability", "judge_named_planes"}:
        raise RulesError(f"{path}: head: only gate_probability and judge_named_planes are "
                         "known")
    gate = _typed(head.get("gate_probability", 0.1), float, f"{path}: head.gate_probability")
    if not 0.0 <= gate <= 1.0:
        raise RulesError(f"{path}: head.gate_probability must be between 0 and 1")
    judge_named = _typed(head.get("judge_named_planes", True), bool,
                         f"{path}: head.judge_named_planes")
    advice = data.get("advice", {})
    if not isinstance(advice, dict) or set(advice) - {"washed_out_dark_level"}:
        raise RulesError(f"{path}: advice: only washed_out_dark_level is known")
    dark = advice.get("washed_out_dark_level")
    if dark is not None:
        dark = _typed(dark, float, f"{path}: advice.washed_out_dark_level")
        if not 0.0 <= dark <= 255.0:
            raise RulesError(f"{path}: advice.washed_out_dark_level must be a grey level, "
                             "0-255")
    table = data.get("criteria")
    if not isinstance(table, dict) or not table:
        raise RulesError(f"{path}: criteria: expected a table of criteria")
    if len(table) > MAX_CRITERIA:
        raise RulesError(f"{path}: criteria: {len(table)} criteria, at most {MAX_CRITERIA}")
    for name in table:
        if not _CRITERION_NAME.fullmatch(name):
            raise RulesError(f"{path}: criteria.{shown(name)}: a name is 1-32 lower-case "
                             "letters, digits, - or _")
    rules = tuple(_rule(name, value, f"{path}: criteria.{name}")
                  for name, value in table.items())
    if not any(rule.weight > 0 for rule in rules):
        raise RulesError(f"{path}: criteria: every weight is 0, so every frame would score 1")
    return Rules(version, rules, feedback, gate, real, dark, judge_named)


# ---------------------------------------------------------------------------- evidence
@dataclass
class RepeatTracker:
    """Counts consecutive identical frames per source: a frozen scanner repeats its image."""

    key: tuple | None = None
    last: np.ndarray | None = None
    repeats: int = 0

    def update(self, source: str, grey: np.ndarray) -> int:
        small = cv2.resize(grey, (36, 28), interpolation=cv2.INTER_AREA).astype(np.int16)
        key = (source, grey.shape)
        same = (self.last is not None and key == self.key
                and float(np.abs(small - self.last).mean()) < SAME_FRAME_DIFF)
        self.repeats = self.repeats + 1 if same else 0
        self.key, self.last = key, small
        return self.repeats


def image_measures(grey: np.ndarray | None) -> dict[str, float]:
    """Statistics of the plane model's uint8 grey view of the region (cheap: one histogram,
    one Laplacian at half size).

    Brightness and contrast are read off the pixels that hold echoes (above `TISSUE_LEVEL`):
    the black corners beside a sector, the scanner's panels and anechoic fluid say nothing
    about the gain or the dynamic range.
    """
    if grey is None or grey.size == 0:
        return {"tissue_fraction": 0.0, "bright_level": 0.0, "dynamic_range": 0.0,
                "dark_level": 0.0, "edge_energy": 0.0}
    hist = cv2.calcHist([grey], [0], None, [256], [0, 256]).ravel()
    total = max(1.0, float(hist.sum()))
    echoes = hist[TISSUE_LEVEL + 1:]
    tissue = float(echoes.sum()) / total
    if echoes.sum() < 1:
        return {"tissue_fraction": 0.0, "bright_level": 0.0, "dynamic_range": 0.0,
                "dark_level": 0.0, "edge_energy": 0.0}
    cdf = np.cumsum(echoes) / float(echoes.sum())
    p5 = TISSUE_LEVEL + 1 + int(np.searchsorted(cdf, 0.05))
    p95 = TISSUE_LEVEL + 1 + int(np.searchsorted(cdf, 0.95))
    return {"tissue_fraction": tissue, "bright_level": float(p95),
            "dynamic_range": (p95 - p5) / 255.0, "dark_level": float(p5),
            "edge_energy": edge_energy(grey)}


def edge_energy(grey: np.ndarray) -> float:
    """Fine detail relative to contrast: the variance of the Laplacian over the variance of
    the image, at half size, inside the echoes only. The edge of a sector and of fluid stays
    sharp however blurred the anatomy is (the scanner draws it), so a band along every dark
    border is left out."""
    half = cv2.resize(grey, (max(8, grey.shape[1] // 2), max(8, grey.shape[0] // 2)),
                      interpolation=cv2.INTER_AREA).astype(np.float32)
    inside = cv2.erode((cv2.blur(half, (5, 5)) > TISSUE_LEVEL).astype(np.uint8),
                       np.ones((7, 7), np.uint8)).astype(bool)
    if int(inside.sum()) < 64:
        return 0.0
    spread = float(half[inside].var())
    if spread < 1.0:
        return 0.0
    return float(cv2.Laplacian(half, cv2.CV_32F)[inside].var()) / spread


def head_measures(shape: HeadShape | None, roi: Roi | None = None,
                  named_head: bool = False) -> dict[str, float] | None:
    """The head figures, or None when no single head was found (nothing to judge).

    Except on a frame the plane model names a head plane (`named_head`): there a missing
    skull, or several skull-like regions, is itself the fault (`head_regions` 0 or 2), or
    a chest the plane model mistook for a head would pass every head criterion unjudged.

    Size and centring are judged against the ultrasound image (the region `roi`, counting
    only the part of its box the image covers: a sector leaves the corners empty), not
    against the screen; whether the head is whole is biometry's own cut-off rule on the
    box the segmenter saw, so the two never disagree.
    """
    if shape is None or shape.status in (NO_HEAD, SEVERAL_HEADS) or shape.ellipse is None:
        if not named_head:
            return None
        return {"head_regions": 2.0 if shape is not None and shape.status == SEVERAL_HEADS
                else 0.0}
    cx, cy, a, b, _ = shape.ellipse
    bx, by, bw, bh = (roi.x, roi.y, roi.w, roi.h) if roi is not None else shape.box
    image_area = float(bw * bh) * (roi.fill if roi is not None else 1.0)
    offset = max(abs(cx - (bx + (bw - 1) / 2)) / (bw / 2), abs(cy - (by + (bh - 1) / 2)) / (bh / 2))
    out = {"head_regions": 1.0,
           "head_area_fraction": math.pi * a * b / max(1.0, image_area), "head_offset": offset,
           "head_overshoot": max(0.0, shape.overshoot or 0.0)}
    if shape.status == HEAD_CUT_OFF:
        # Cut off by the edge rather than by the ellipse: count the edge run as overshoot,
        # so the value fails exactly when biometry declines the head.
        out["head_overshoot"] = max(out["head_overshoot"], shape.edge_run or 0.0, 1.0)
    if shape.fit_iou is not None:
        out["head_fit_iou"] = shape.fit_iou
    return out


def learned_severities(model: Model, image: np.ndarray, roi: Roi | None,
                       views: FrameViews | None = None) -> dict[str, float]:
    """The quality head's severities (0 clean .. 1 severe) for one frame (`views`: the
    frame's shared grey region, where the caller has one)."""
    manifest = model.manifest
    x = (views or FrameViews(image, roi)).prepare(manifest.preprocessing)
    out = np.asarray(model.run(x), np.float32)
    values = sigmoid(out.reshape(-1)) if manifest.output_kind == "logits" else out.reshape(-1)
    return {label: float(v) for label, v in zip(manifest.labels, values, strict=True)}


def check_quality_head(manifest: Manifest) -> None:
    """The manifest is a quality head with the branches the rules may name, or one line."""
    if manifest.task != TASK:
        raise ModelError(f"{manifest.path}: task {shown(manifest.task)} is not {TASK!r}")
    missing = [label for label in QUALITY_HEAD_LABELS if label not in manifest.labels]
    if missing:
        raise ModelError(f"{manifest.path}: labels lack {shown(missing[0])}")


# ------------------------------------------------------------------------------ audit
@dataclass(frozen=True)
class Criterion:
    name: str
    passed: bool
    value: float
    message: str
    loss: float  # how much of the score this criterion took away
    priority: int

    def to_dict(self) -> dict:
        return {"pass": self.passed, "value": round(float(self.value), 4),
                "message": self.message}


@dataclass(frozen=True)
class QualityResult:
    score: float
    criteria: dict[str, Criterion] = field(default_factory=dict)
    advice: str | None = None  # the failing criterion that matters most, or None
    # Criteria judged and shown but neither the advice on this frame nor a loss of its
    # score: their instruction changes the scale, and the head is measured at a calibration
    # fixed for one depth (`audit`). The exam's tally does not count them as faults to
    # coach either (edge/exam/tally.py).
    withheld: tuple[str, ...] = ()
    # The learned head's severities by branch, every branch (also those no rule reads):
    # they rank frames of equal score (edge/exam/session.py `discounted`). Where the scale
    # is fixed, not the branches that estimate it (`SCALE_BRANCHES`).
    learned: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {"score": round(self.score, 4), "advice": self.advice,
               "criteria": {name: c.to_dict() for name, c in self.criteria.items()}}
        if self.withheld:
            out["withheld"] = list(self.withheld)
        if self.learned:
            out["learned"] = {k: round(v, 3) for k, v in self.learned.items()}
        return out

    @property
    def failing(self) -> list[str]:
        return [name for name, c in self.criteria.items() if not c.passed]


def audit(rules: Rules, measures: dict[str, float], scale_fixed: bool = False) -> QualityResult:
    """Judge every criterion whose measure is present in `measures`. With `scale_fixed` (a
    head measured at a calibration set for one depth: `[biometry] pixel_size_mm` without
    the depth ruler), a criterion whose instruction changes the scale is judged and shown
    but is never the advice and takes nothing off the score: obeying "Zoom in" made every
    HC after it wrong by the ratio, and a score that rewards a bigger head made the exam
    keep the zoomed-in frames, the very heads measured at the wrong scale. Such criteria
    judged on the frame are listed as `withheld`; the learned head's estimates of the
    zoom (`SCALE_BRANCHES`) are left out of `learned`, which ranks frames, for the same
    reason. Every reader of the score (best frames, best heads, the capture bar) thus
    ranks on what the midwife can mend without changing the scale."""
    criteria: dict[str, Criterion] = {}
    score = 1.0
    for rule in rules.criteria:
        value = measures.get(rule.measure)
        if value is None or not math.isfinite(value):
            continue
        good = rule.goodness(value)
        loss = 0.0 if scale_fixed and rule.changes_scale else rule.weight * (1.0 - good)
        score *= 1.0 - loss
        criteria[rule.name] = Criterion(rule.name, rule.passes(value), float(value),
                                        rule.message(value), loss, rule.priority)
    explained = _explained_by_dim_echoes(rules, measures, criteria)
    failing = [c for c in criteria.values() if not c.passed]
    gain = {r.name for r in rules.criteria if r.measure == "bright_level"}
    if any(c.name in gain for c in failing):  # the gain leads what dim echoes explain
        failing = [c for c in failing if c.name not in explained]
    withheld: tuple[str, ...] = ()
    if scale_fixed:
        withheld = tuple(r.name for r in rules.criteria
                         if r.changes_scale and r.name in criteria)
        failing = [c for c in failing if c.name not in withheld]
    advice = min(failing, key=lambda c: (c.priority, -c.loss)).name if failing else None
    learned = {m.split(":", 1)[1]: v for m, v in measures.items()
               if m.startswith("learned:") and math.isfinite(v)}
    if scale_fixed:
        learned = {k: v for k, v in learned.items() if k not in SCALE_BRANCHES}
    return QualityResult(max(0.0, min(1.0, score)), criteria, advice, withheld, learned)


def _explained_by_dim_echoes(rules: Rules, measures: dict[str, float],
                             criteria: dict[str, Criterion]) -> set[str]:
    """The failing criteria that dim echoes explain, each told in the gain rule's own words
    ("turn the gain up"); returns their names. Two cases:

    - contrast: echoes too dim for its bound to be reachable at all (their 5th-95th span
      cannot exceed the bright level above the tissue floor), or whose dark end is not
      raised (`washed_out_dark_level`: a washed-out image lifts its darkest echoes, a dim one
      lowers its brightest), are dark, not washed out; a dim frame whose gain passed was
      told "lower the gain", and lowering it failed the gain;
    - content: with the gain failing low, an image whose share of echoes is short of the
      bound but within its soft margin is there, only dim (a real head at a fifth of its
      brightness: 0.22 against 0.25). It was told "No image: put gel on the probe". An
      empty screen (below the margin) still is.

    When the gain itself fails, it leads the advice over what it explains."""
    gain = next((r for r in rules.criteria if r.measure == "bright_level"), None)
    bright = measures.get("bright_level")
    if gain is None or gain.min is None or bright is None or not math.isfinite(bright):
        return set()
    explained = set()
    for rule in rules.criteria:
        judged = criteria.get(rule.name)
        if judged is None or judged.passed or rule.min is None:
            continue
        dark = measures.get("dark_level")
        if rule.measure == "dynamic_range" and (
                bright - (TISSUE_LEVEL + 1) < rule.min * 255.0
                or (rules.washed_out_dark_level is not None and dark is not None
                    and dark <= rules.washed_out_dark_level)):
            explained.add(rule.name)
        elif rule.measure == "tissue_fraction" and bright < gain.min \
                and judged.value >= rule.min - rule.soft:
            explained.add(rule.name)
    for name in explained:
        criteria[name] = replace(criteria[name], message=gain.message_low)
    return explained


def may_show_head(rules: Rules, head_planes: frozenset[str], plane: str | None,
                  labels: tuple[str, ...], probabilities: tuple[float, ...]) -> bool:
    """Whether the head criteria apply: a head plane, an abstention, or enough head mass
    on a frame not named another standard plane (`Rules.head_judge_named_planes`)."""
    if plane in head_planes or plane == "uncertain":
        return True
    if not rules.head_judge_named_planes and plane not in (None, "Background"):
        return False
    return group_mass(labels, probabilities, head_planes) >= rules.head_gate_probability
