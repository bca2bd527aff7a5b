"""Does the ONE instruction name the right fix? Each acquisition fault of `quantize.degrade`
on real frames, through the device's own scorer, against the criterion that fault should
lead to.

The midwife sees one instruction per frame: the leading failing criterion's message (the
rules' priority, `edge.models.quality.audit`). A fault is advised right when that message is
the expected criterion's own (on the right side of its bounds: a dark frame must be told
"turn the gain up", not "down"); a criterion may speak in another's words (a dim frame's
contrast says the gain's "Too dark"), so the words decide, not the criterion's name. A wrong
instruction is shown as `criterion` or `criterion=owner.side` when it speaks another's words.
The expected criterion per fault, from the rules' messages (`edge/models/quality_rules.toml`):

    blur            -> sharpness   "Blurred: hold the probe still for a moment"
    gain down (/2, /4) -> gain     "Too dark: turn the gain up"
    gain up (x2, x4) -> gain       "Too bright: turn the gain down"
    noise           -> noise       "Grainy image: add gel and keep the probe in full contact"
    shadow          -> shadow      "A shadow hides part of the image: tilt or slide the probe"
    cut-off         -> head_inside or sector_cut (both say: slide the probe to bring the
                       anatomy / the whole head in)
    zoom out        -> zoom        "Zoom in: the head fills too little of the screen"
                       (heads only: no criterion judges the magnification of other anatomy,
                       so on the other frames its row shows what is said, expecting nothing)
    clean           -> no advice

Two more columns tell a wrong instruction's cause apart: "as clean", the wrong instructions
that the same frame already gets clean (a small head's "Zoom in" that outranks a shadow:
the fault did not cause it), and "right way", instructions that are not the expected
criterion's but send the midwife the same way (for a cut-off head: "bring the head into the
middle of the screen", of `centred` and of `head_found` low).

Frames: HC18 heads of the patients `quantize.data.split` holds out (`--patients held`, the
report) or trains on (`--patients train`, where a rule may be tuned), each scored with its
own pixel size from the HC18 CSV; the FETAL_PLANES_DB frames of the same side of the split
(the cord session always trains); the 13 SonoNet example screens (no patient's: both sides).
Each fault at severity 0.5 (moderate) and 1.0 (severe); a cut-off head is always really cut
(`quantize.sweeps.cutting_slide`: a slide that leaves the annotated head whole is not a
cut-off head). Seeded: the random parts of each (frame, fault) come from their own
generator, so a frame's result does not depend on `--limit`.

    python -m quantize.advice_audit [--limit N] [--patients held|train] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge.capture.sources import Frame as CapturedFrame
from edge.config import load_settings
from edge.models.roi import find_roi, to_grey
from edge.scorer import make_scorer
from quantize.args import bounded_int
from quantize.data import DataError, data_dir, list_frames, read_frame, split
from quantize.degrade import degrade
from quantize.seg_data import annotation_path, fill_ellipse, fit_annotation, read_hc_table
from quantize.sweeps import cut_off_head

SEVERITIES = (0.5, 1.0)
# (row name, degrade kind, options, the instructions that are the right fix: a criterion's
# name for any of its messages, "name.low" / "name.high" for one side only)
FAULTS: tuple[tuple[str, str, dict, frozenset[str]], ...] = (
    ("blur", "blur", {}, frozenset({"sharpness"})),
    ("gain down", "gain", {"direction": -1}, frozenset({"gain.low"})),
    ("gain up", "gain", {"direction": 1}, frozenset({"gain.high"})),
    ("noise", "noise", {}, frozenset({"noise"})),
    ("shadow", "shadow", {}, frozenset({"shadow"})),
    ("cut-off", "cutoff", {}, frozenset({"head_inside", "sector_cut"})),
    ("zoom out", "zoom", {}, frozenset({"zoom"})),
)
# Instructions that are not the expected criterion's but send the midwife the same way.
SAME_WAY = {"cut-off": frozenset({"centred", "head_found.low"})}
NONE = "(none)"
MAX_FRAMES = 2000


def audit_frames(patients: str, limit: int | None) -> tuple[list, list]:
    """(heads, other frames) of one side of the patient split."""
    frames = list_frames()
    train, held = split(frames)
    side = held if patients == "held" else train
    heads = [f for f in side if f.source == "hc18"]
    others = [f for f in side if f.source == "planes"]
    others += [f for f in frames if f.source == "examples"]
    return (heads[:limit] if limit else heads), others


def score(scorer, grey: np.ndarray, name: str, pixel_mm: float) -> dict:
    """One frame through the device's scorer, as its own still (never 'frozen', its own
    screen region)."""
    scorer.quality.repeats.last = None
    scorer._roi_key = None
    # the frame's own scale, as a source that knows it gives it: not a calibration fixed
    # for one depth, on which "Zoom in" is not said (quality rules 1.3.8, changes_scale)
    return scorer.score(CapturedFrame(name, 0, grey, time.monotonic(), time.time(),
                                      pixel_size_mm=pixel_mm)).to_dict()


def said(rules, quality: dict) -> str:
    """The instruction shown, as `criterion.side` of the rule whose words it is (side: low,
    high, or "" for a one-message rule), prefixed `advice=` when another criterion speaks
    them; NONE when nothing is advised."""
    advice = quality["advice"]
    if not advice:
        return NONE
    message = quality["criteria"][advice]["message"]
    owners = [f"{r.name}.low" if r.message_low != r.message_high else r.name
              for r in rules.criteria if r.message_low == message]
    owners += [f"{r.name}.high" for r in rules.criteria
               if r.message_high == message and r.message_low != r.message_high]
    own = [o for o in owners if o.split(".")[0] == advice]
    if own:
        return own[0]
    return f"{advice}={owners[0]}" if owners else advice


def is_right(label: str, want: frozenset[str]) -> bool:
    words = label.split("=")[-1]
    return words in want or words.split(".")[0] in want


def run(patients: str, limit: int | None, seed: int) -> dict:
    settings = load_settings()
    scorer = make_scorer(settings)
    if scorer.quality is None:
        raise DataError("the quality audit is turned off in the config")
    default_pixel = scorer.head.pixel_size_mm
    rules = scorer.quality.rules
    table = read_hc_table(data_dir())
    heads, others = audit_frames(patients, limit)
    # (group, fault, severity) -> Counter of leading advice; ("clean", None) for clean frames
    advice: dict[tuple[str, str, float], Counter] = {}
    as_clean: dict[tuple[str, str, float], Counter] = {}  # the same instruction as clean
    jobs = [("heads", f) for f in heads] + [("other", f) for f in others]
    for index, (group, f) in enumerate(tqdm(jobs, desc=f"advice audit ({patients})",
                                            unit="frame", mininterval=2.0)):
        grey = to_grey(read_frame(f.path))
        roi = find_roi(grey)
        pixel = table[f.path.name][0] if group == "heads" else default_pixel
        r = score(scorer, grey, f.path.name, pixel)
        clean = said(rules, r["quality"])
        advice.setdefault((group, "clean", 0.0), Counter())[clean] += 1
        head_mask = None
        for j, (row, kind, options, _) in enumerate(FAULTS):
            for k, s in enumerate(SEVERITIES):
                rng = np.random.default_rng([seed, index, j, k])
                if kind == "cutoff" and group == "heads":
                    if head_mask is None:
                        head_mask = fill_ellipse(grey.shape,
                                                 fit_annotation(annotation_path(f.path)))
                    bad = cut_off_head(grey, roi, head_mask, s, rng)
                else:
                    bad = degrade(grey, roi, kind, s, rng, **options)
                r = score(scorer, bad, f.path.name, pixel)
                now = said(rules, r["quality"])
                advice.setdefault((group, row, s), Counter())[now] += 1
                if now == clean and now != NONE:
                    as_clean.setdefault((group, row, s), Counter())[now] += 1
    return {"patients": patients, "heads": len(heads), "others": len(others),
            "advice": advice, "as_clean": as_clean, "seed": seed, "rules": rules.version}


def report(result: dict) -> str:
    who = "held-out" if result["patients"] == "held" else "training"
    expected = {row: want for row, _, _, want in FAULTS}
    lines = [f"# One instruction per fault: {result['heads']} {who} HC18 heads, "
             f"{result['others']} other frames (FETAL_PLANES_DB {who} + SonoNet examples), "
             f"seed {result['seed']}, quality rules {result['rules']}", "",
             "| frames | fault | severity | expected | right | no advice | most common wrong "
             "(share) | next wrong (share) | wrong as clean | right way |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (group, row, s), counts in result["advice"].items():
        n = sum(counts.values())
        if row == "clean":
            want: frozenset[str] = frozenset({NONE})
        elif row == "zoom out" and group == "other":
            want = frozenset()  # nothing judges it off a head
        else:
            want = expected[row]
        right = sum(v for k, v in counts.items() if is_right(k, want))
        wrong = [(k, v) for k, v in counts.most_common() if not is_right(k, want) and k != NONE]
        shown = [f"{k} {v}/{n} ({100 * v / n:.0f}%)" for k, v in wrong[:2]] + ["-", "-"]
        same = result["as_clean"].get((group, row, s), Counter())
        masked = sum(v for k, v in same.items() if not is_right(k, want))
        way = right + sum(v for k, v in counts.items()
                          if not is_right(k, want) and is_right(k, SAME_WAY.get(row, frozenset())))
        lines.append(
            f"| {group} | {row} | {s:g} | {'/'.join(sorted(want)) or '-'} | "
            + (f"{right}/{n} ({100 * right / n:.0f}%)" if want else "-")
            + f" | {counts.get(NONE, 0)}/{n} | {shown[0]} | {shown[1]} | "
            + (f"{masked}/{n} | " if row != "clean" else "- | ")
            + (f"{way}/{n} ({100 * way / n:.0f}%) |" if want and row != "clean" else "- |"))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quantize.advice_audit",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=bounded_int(1, MAX_FRAMES), default=None,
                        help="heads to use (default: every head of the chosen patients)")
    parser.add_argument("--patients", choices=("held", "train"), default="held")
    parser.add_argument("--seed", type=bounded_int(0, 2**31 - 1), default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    try:
        text = report(run(args.patients, args.limit, args.seed))
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text)
    except (DataError, ValueError, OSError) as exc:
        print(f"advice_audit: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
