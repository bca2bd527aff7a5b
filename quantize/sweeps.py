"""Blind sweeps: does the device pick a clean head frame out of a novice's sweep?

A sweep is built for every held-out HC18 patient (patients `quantize.data.split` keeps out
of training, so no model saw them): the patient's real head frames (the clean targets),
each of them also degraded by one acquisition fault of `quantize.degrade` at a random
severity between 0.4 and 1.0 (blurred by a moving probe, too dark or bright, noisy,
shadowed, cut off, zoomed out; a cut-off copy always cuts the annotated head, see
`cutting_slide`), real frames of other anatomy (the FETAL_PLANES_DB and
umbilical-cord frames and the SonoNet example screens that are not head planes) and a frame
with no ultrasound, in a seeded random order. The device runs the biometry protocol over
it, exactly as `sonoedge exam` does; its choice is the head slot's best frame, the one the
checklist shows, or none when no frame could fill the slot. A choice below the protocol's
quality bar is still the frame the device returns (with what to change on it); whether it
also counts as captured is reported beside it.

Reported: how often the choice is a clean target frame (the target: at least 95% of the
sweeps), how often it is a degraded or wrong frame, how often nothing is chosen, how many
choices reach the bar; and the HC error of the chosen frames against the sonographer's CSV
value, beside the error on every clean target frame.

    python -m bench.sweeps [--limit N] [--seed 0] [--patients held|train]
    (this module's main, as make bench runs it; "train" builds the sweeps of the training
    patients instead, where a selection rule may be tuned: see edge/exam/protocols.toml)

The plane student's build (`quantize.build_models`) runs them too: a new student ships only
if it chooses a clean head in at least as many sweeps as the shipped one.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.capture.sources import Frame
from edge.config import load_settings
from edge.exam.protocol import find_protocol
from edge.exam.session import ExamSession
from edge.models.roi import Roi, find_roi, to_grey
from edge.scorer import make_scorer
from quantize.data import DataError, data_dir, is_head_frame, list_frames, read_frame, split
from quantize.degrade import (
    CUTOFF_DIRECTIONS,
    CUTOFF_FILLERS,
    KINDS,
    cutoff_kept,
    degrade,
)
from quantize.seg_data import annotation_path, fill_ellipse, fit_annotation, read_hc_table
from wire.schema import UNCERTAIN

HEAD_EXAMPLES = ("BRAIN-CB", "BRAIN-TV")
PATIENT_SETS = ("held", "train")


@dataclass
class Sweep:
    patient: str
    items: list[tuple[str, np.ndarray, str]]  # (name, grey image, "clean"|"degraded"|"other")
    pixel_mm: dict[str, float]  # each frame's own pixel size (a degraded copy: its source's)
    hc_csv: dict[str, float]


# A cut-off head has lost at least this share of its annotated area past the fan's edge.
MIN_CUT = 0.01


def cut_off_head(grey: np.ndarray, roi: Roi | None, head: np.ndarray, s: float,
                 rng: np.random.Generator) -> np.ndarray:
    """The cut-off fault at severity `s`, drawn as `degrade` draws it, but one that cuts the
    head (`cutting_slide`). The filler stays as drawn, so the rng's stream, and with it
    every later frame of every sweep, is what it was."""
    direction = CUTOFF_DIRECTIONS[int(rng.integers(len(CUTOFF_DIRECTIONS)))]
    filler = CUTOFF_FILLERS[int(rng.integers(len(CUTOFF_FILLERS)))]
    level, direction = cutting_slide(grey, roi, head, s, direction)
    return degrade(grey, roi, "cutoff", level, rng, direction=direction, filler=filler)


def cutting_slide(grey: np.ndarray, roi: Roi | None, head: np.ndarray, s: float,
                  direction: str) -> tuple[float, str]:
    """(severity, direction) of a cut-off slide that cuts `head` (a 0..1 mask over the
    frame) by at least MIN_CUT: the drawn one if it does. A slide moves the whole image,
    and one in six of the held-out heads' drawn slides left the annotated head whole (a
    small or off-centre head, slid towards the middle or not far enough), which made a
    whole, well-measured head a "degraded" frame. Such a slide is replaced by the first
    that cuts: the other directions at `s`, then every direction at rising severity up to
    1 (every HC18 head is cut by some direction at 1); the drawn one if none does."""
    order = [direction] + [d for d in CUTOFF_DIRECTIONS if d != direction]
    tries = [(s, d) for d in order] + [(float(level), d)
                                       for level in np.linspace(s, 1.0, 7)[1:] for d in order]
    return next(((level, d) for level, d in tries
                 if cutoff_kept(grey, roi, head, level, d) <= 1 - MIN_CUT), (s, direction))


def build_sweeps(limit: int | None, seed: int, patients: str = "held") -> list[Sweep]:
    """One sweep per patient of `patients`: "held" (the report's, never trained on) or
    "train" (the training patients: where a selection rule may be tuned without looking at
    the held-out sweeps it is judged on)."""
    if patients not in PATIENT_SETS:
        raise ValueError(f"patients must be one of {PATIENT_SETS}, not {patients!r}")
    root = data_dir()
    table = read_hc_table(root)
    frames = list_frames(root)
    train, held = split(frames)
    chosen = held if patients == "held" else train
    # FETAL_PLANES_DB's plane 3 is the fetal brain, labelled or not: a head, not "other".
    others = [f for f in frames if f.source == "planes" and not is_head_frame(f)]
    others += [f for f in frames if f.source == "examples" and f.path.stem not in HEAD_EXAMPLES]
    other_greys = [(f.path.name, to_grey(read_frame(f.path))) for f in others]
    groups: dict[str, list] = {}
    for f in chosen:
        if f.source == "hc18":
            groups.setdefault(f.group, []).append(f)
    rng = np.random.default_rng(seed)
    sweeps = []
    for group in sorted(groups)[:limit] if limit else sorted(groups):
        items = []
        for f in groups[group]:
            grey = to_grey(read_frame(f.path))
            items.append((f.path.name, grey, "clean"))
            roi = find_roi(grey)
            head = None
            for kind in rng.choice(KINDS, size=2, replace=False):
                s = float(rng.uniform(0.4, 1.0))
                if kind == "cutoff":
                    if head is None:
                        head = fill_ellipse(grey.shape, fit_annotation(annotation_path(f.path)))
                    bad = cut_off_head(grey, roi, head, s, rng)
                else:
                    bad = degrade(grey, roi, str(kind), s, rng)
                items.append((f"{f.path.stem}-{kind}.png", bad, "degraded"))
        for i in rng.choice(len(other_greys), size=4, replace=False):
            items.append((*other_greys[i], "other"))
        items.append(("no-image.png", np.zeros_like(items[0][1]), "other"))
        order = rng.permutation(len(items))
        pixel = {}
        for f in groups[group]:
            pixel[f.path.name] = table[f.path.name][0]
            pixel.update({n: table[f.path.name][0] for n, _, k in items
                          if k == "degraded" and n.startswith(f.path.stem + "-")})
        sweeps.append(Sweep(group, [items[i] for i in order], pixel,
                            {f.path.name: table[f.path.name][1] for f in groups[group]}))
    return sweeps


def run(limit: int | None, seed: int, models_dir: Path | None = None,
        built: list[Sweep] | None = None, patients: str = "held") -> dict:
    """The sweeps through the device's scorer, with the models in `models_dir` (default:
    the device config's, i.e. the shipped ones); `built`: sweeps already made by
    `build_sweeps(limit, seed)`, to judge several model sets on the same frames."""
    overrides: dict = {"biometry": {"pixel_size_mm": 0.1}}
    if models_dir is not None:
        overrides["models"] = {"dir": str(models_dir)}
    settings = load_settings(overrides=overrides)
    scorer = make_scorer(settings)
    protocol = find_protocol("biometry")
    slot = protocol.slots[0]
    sweeps = built if built is not None else build_sweeps(limit, seed, patients)
    outcome = {"clean": 0, "degraded": 0, "other": 0, "none": 0}
    # Choices that reach the protocol's quality bar (captured), and of the clean ones, those
    # that do; and choices the plane model abstained on (a slot's unsure_head).
    captured = clean_captured = unsure = 0
    advice: Counter[str] = Counter()  # what the device says on choices below the bar
    chosen_err, clean_err, wrong = [], [], []
    t0 = time.perf_counter()
    n_frames = 0
    for sweep in sweeps:
        session = ExamSession(protocol, None, measure_kept=scorer.measure_kept)
        kinds = {}
        for index, (name, grey, kind) in enumerate(sweep.items):
            # HC18 gives each frame its own pixel size (the frame's own scale, as a source
            # that knows it gives it: not a calibration fixed for one depth, so the advice
            # is the scanner's); other anatomy has none that matters.
            scorer._roi_key = None
            result = scorer.score(Frame(name, index, grey, time.monotonic(), time.time(),
                                        pixel_size_mm=sweep.pixel_mm.get(name, 0.1)))
            record = result.to_dict()
            session.add(record, grey, Roi(*result.roi) if result.roi else None)
            kinds[name] = kind
            n_frames += 1
            bio = record.get("biometry") or {}
            if kind == "clean" and bio.get("hc_mm") is not None:
                clean_err.append(abs(bio["hc_mm"] - sweep.hc_csv[name]))
        session.finish("source_end")  # as an exam ends: its reported heads measured again
        best = session.slot_best(slot)
        if best is None:
            outcome["none"] += 1
            continue
        outcome[kinds[best.source]] += 1
        good_enough = session.captured(best.plane)
        captured += good_enough
        clean_captured += good_enough and kinds[best.source] == "clean"
        if not good_enough:
            advice[best.advice[0] if best.advice else "none"] += 1
        unsure += best.plane == UNCERTAIN
        if kinds[best.source] != "clean":
            wrong.append(f"{sweep.patient}: {best.source}")
        hc = (best.biometry or {}).get("hc_mm")
        if kinds[best.source] == "clean" and hc is not None:
            chosen_err.append(abs(hc - sweep.hc_csv[best.source]))
    seconds = time.perf_counter() - t0
    return {"sweeps": len(sweeps), "patients": patients, "frames": n_frames,
            "outcome": outcome,
            "captured": captured, "clean_captured": clean_captured, "unsure": unsure,
            "advice_below_bar": dict(advice.most_common()),
            "clean_share": outcome["clean"] / max(1, len(sweeps)),
            "hc_mad_chosen_mm": statistics.fmean(chosen_err) if chosen_err else None,
            "hc_chosen_n": len(chosen_err),
            "hc_mad_all_clean_mm": statistics.fmean(clean_err) if clean_err else None,
            "hc_all_clean_n": len(clean_err), "wrong": wrong, "seconds": seconds}


def report(r: dict) -> str:
    o = r["outcome"]
    n = max(1, r["sweeps"])
    who = "held-out" if r.get("patients", "held") == "held" else "training"
    lines = [f"{r['sweeps']} sweeps of {who} HC18 patients "
             f"({r['frames']} frames, {r['seconds']:.0f} s): the head slot's choice is a clean "
             f"target frame in {o['clean']} ({100 * o['clean'] / n:.1f}%), a degraded frame "
             f"in {o['degraded']}, another anatomy in {o['other']}, nothing in {o['none']}.",
             f"Choices that reach the protocol's quality bar (captured): {r['captured']}, "
             f"{r['clean_captured']} of them clean; the rest are shown with what to change ("
             + ", ".join(f"{k} {v}" for k, v in r["advice_below_bar"].items())
             + f"). Choices the plane model abstained on, outlined by the head segmenter: "
             f"{r['unsure']}."]
    if r["hc_mad_chosen_mm"] is not None:
        lines.append(f"HC error of the chosen clean frames: mean {r['hc_mad_chosen_mm']:.2f} mm "
                     f"over {r['hc_chosen_n']}; over every clean target frame measured: "
                     f"{r['hc_mad_all_clean_mm']:.2f} mm over {r['hc_all_clean_n']}.")
    if r["wrong"]:
        lines.append("wrong choices: " + "; ".join(r["wrong"][:12]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sweeps",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="patients (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patients", choices=PATIENT_SETS, default="held",
                        help="held-out patients (the report) or training patients (tuning)")
    args = parser.parse_args(argv)
    try:
        print(report(run(args.limit, args.seed, patients=args.patients)))
    except (DataError, ValueError, OSError) as exc:
        print(f"bench.sweeps: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
