"""Where the quality rules' numbers come from: every criterion's value on real frames, clean
and with each acquisition fault of `quantize.degrade`, through the device's own scorer.

Frames: the held-out HC18 heads (patients `quantize.data.split` keeps out of training),
the 53 planes frames and the 13 SonoNet example screens. For each criterion it prints the
5th, 50th and 95th percentile of its value on clean frames and the share of clean frames
that fail it; then, for each fault at severity 0.5 and 1.0, the share of frames that fail
the criterion meant to catch it. The rules file cites these figures ("ours, measured on").

    python -m quantize.quality_survey [--limit N] [--out build/quality_survey.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge.capture.sources import Frame as CapturedFrame
from edge.config import load_settings
from edge.models.roi import find_roi, to_grey
from edge.scorer import make_scorer
from quantize.data import DataError, list_frames, read_frame, split
from quantize.degrade import KINDS, degrade

REPO = Path(__file__).resolve().parents[1]
# The criterion each fault should trip (gain's direction decides low or high).
CATCHES = {"blur": "sharpness", "gain": "gain", "noise": "noise", "shadow": "shadow",
           "cutoff": "sector_cut", "zoom": "zoom"}
SEVERITIES = (0.5, 1.0)


def survey_frames(limit: int | None) -> list:
    frames = list_frames()
    _, held = split(frames)
    heads = [f for f in held if f.source == "hc18"]
    others = [f for f in frames if f.source in ("planes", "examples")]
    return (heads[:limit] if limit else heads) + others


def score_grey(scorer, grey: np.ndarray, name: str) -> dict:
    frame = CapturedFrame(name, 0, grey, time.monotonic(), time.time())
    scorer.quality.repeats.last = None  # every image is its own still, never "frozen"
    return scorer.score(frame).to_dict()


def run(limit: int | None, out: Path) -> str:
    scorer = make_scorer(load_settings())
    if scorer.quality is None:
        raise DataError("the quality audit is turned off in the config")
    frames = survey_frames(limit)
    clean: dict[str, list[float]] = {}
    clean_fail: dict[str, list[str]] = {}
    caught: dict[tuple[str, float], list[bool]] = {}
    rng = np.random.default_rng(0)
    for f in tqdm(frames, desc="survey", unit="frame"):
        image = read_frame(f.path)
        grey = to_grey(image)
        roi = find_roi(grey)
        r = score_grey(scorer, grey, f.path.name)
        for name, c in r["quality"]["criteria"].items():
            clean.setdefault(name, []).append(c["value"])
            if not c["pass"]:
                clean_fail.setdefault(name, []).append(f.path.name)
        for kind in KINDS:
            for s in SEVERITIES:
                bad = degrade(grey, roi, kind, s, rng)
                crit = score_grey(scorer, bad, f.path.name)["quality"]["criteria"]
                target = crit.get(CATCHES[kind])
                if target is not None:
                    caught.setdefault((kind, s), []).append(not target["pass"])
    lines = [f"# Quality criteria on real frames ({len(frames)} frames: held-out HC18 heads, "
             "planes, SonoNet examples)", "",
             "| criterion | clean p5 | p50 | p95 | clean frames failing |", "|---|---|---|---|---|"]
    for name, values in clean.items():
        p5, p50, p95 = np.percentile(values, [5, 50, 95])
        failing = clean_fail.get(name, [])
        lines.append(f"| {name} | {p5:.3g} | {p50:.3g} | {p95:.3g} | "
                     f"{len(failing)}/{len(values)} {' '.join(failing[:6])} |")
    lines += ["", "| fault | severity | criterion | frames failing it |", "|---|---|---|---|"]
    for (kind, s), flags in caught.items():
        lines.append(f"| {kind} | {s} | {CATCHES[kind]} | {sum(flags)}/{len(flags)} "
                     f"({100 * np.mean(flags):.0f}%) |")
    report = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quantize.quality_survey",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="held-out heads to use")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "quality_survey.md")
    args = parser.parse_args(argv)
    try:
        print(run(args.limit, args.out))
    except (DataError, ValueError, OSError) as exc:
        print(f"quality_survey: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
