"""Calibrate the plane student's confidence and choose where it abstains.

"Correct" means the true plane where it is known: on the variant screens, the plane of the
example screen each was made from (or Background for the variants of frames the teacher
calls Background). On the held-out real frames the teacher's answer stands in for the
truth, so there it means the int8 student's top-1 equals the fp32 teacher's on the same
device view, with one exception: every HC18 frame is a head plane (its sonographers
measured HC on it), the transthalamic plane, which SonoNet has no class for. Its
transventricular and transcerebellar classes are the neighbouring axial views, and the
teacher's choice between them on an HC18 frame is no truth; so on HC18 either head plane is
right, and where the teacher calls the frame something else, its more likely head plane is
the reference. (1.3.0 learnt that truth; counted as errors, its right answers on early
heads put the abstain threshold up from 0.63 to 0.82. Until protocols 1.1.0 the teacher's
Tv/Cb split still counted: 10 of 1.3.0's 13 confident "errors" were Tv for the teacher's
Cb, and a class-map student's threshold moved from 0.62 to 0.82 on such frames.)
(1.1 counted agreement with the teacher everywhere: the student's right answers on 3VV and
Abdominal variants, where the teacher is often wrong, then looked like confident errors
and pushed the threshold up until the clean 3VV and Abdominal screens were `uncertain`.)
Data: the int8 student's logits from `quantize.variants` (the 700 variant screens and the
held-out real frames, through the device path).

Split, fixed and seeded: the held-out real frames by patient (half of the HC18 / planes
patients by a hash of the patient id, seed 0) and the variants by seed index (even variant
numbers calibrate, odd ones evaluate). Temperature T is fitted on the calibration half
(NLL of the teacher's answer, 1-D search); ECE (15 equal-width bins) is reported on the
other half before (T = 1) and after. The abstain threshold p is chosen on the calibration
half: the isotonic (monotone) fit of agreement with the teacher against calibrated
confidence; p sits just above the most confident frame where that fit is below 70% -
below p the device says "uncertain" instead of guessing - and never below 0.5: where no
calibration frame falls under 70% the fit says nothing about where agreement drops, and
the device still does not name a plane that is less likely than all the others together.
(Fixed groups of 25 were tried first: one group at 68% put p at 0.94 and abstained on a
third of the frames; the monotone fit is not moved by one noisy group.) Both go into the
manifest's `thresholds` block, read by `edge.models.planes.plane_from_output`.

    python -m quantize.calibrate --model models/plane_student.tflite \
        [--write models/plane_student.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from edge.models.planes import softmax  # the device's own: calibration fits what the device applies
from quantize.data import HEAD_PLANE_IDS, LABELS, DataError

N_BINS = 15
ABSTAIN_AGREEMENT = 0.70
ABSTAIN_FLOOR = 0.5  # the top plane must be more likely than the rest together


def ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS) -> float:
    """Expected calibration error: sum over equal-width bins of |bin| / n * |acc - conf|."""
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # A confidence of exactly 1 falls in the last bin; bins are (lo, hi] otherwise.
    idx = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = idx == b
        if m.any():
            total += m.mean() * abs(correct[m].mean() - confidence[m].mean())
    return float(total)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    p = softmax(logits, temperature)
    return float(-np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None)).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T minimising NLL: a log-spaced grid, then a finer one around the best."""
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 200))
    best = grid[int(np.argmin([nll(logits, labels, t) for t in grid]))]
    fine = np.linspace(best / 1.05, best * 1.05, 101)
    return float(fine[int(np.argmin([nll(logits, labels, t) for t in fine]))])


def isotonic(y: np.ndarray) -> np.ndarray:
    """Pool-adjacent-violators: the non-decreasing fit to y (already in x order)."""
    values: list[float] = []
    weights: list[int] = []
    for v in np.asarray(y, np.float64):
        values.append(float(v))
        weights.append(1)
        while len(values) > 1 and values[-2] > values[-1]:
            w = weights[-2] + weights[-1]
            values[-2] = (values[-2] * weights[-2] + values[-1] * weights[-1]) / w
            weights[-2] = w
            values.pop()
            weights.pop()
    return np.repeat(values, weights)


def abstain_threshold(confidence: np.ndarray, correct: np.ndarray,
                      target: float = ABSTAIN_AGREEMENT) -> float:
    """Where the agreement drops under `target`: the isotonic (monotone) fit of
    agreement against confidence; p lies just above the most confident frame whose fitted
    agreement is below `target` (rounded up to 0.01). 0 when none is below."""
    order = np.argsort(confidence, kind="stable")
    conf = np.asarray(confidence, np.float64)[order]
    fit = isotonic(np.asarray(correct, np.float64)[order])
    below = np.flatnonzero(fit < target)
    if not len(below):
        return 0.0
    i = int(below[-1])
    nxt = conf[i + 1] if i + 1 < len(conf) else 1.0
    return float(min(1.0, np.ceil((conf[i] + nxt) / 2 * 100) / 100))


def _unit(text: str, seed: int) -> float:
    digest = hashlib.sha256(f"calib:{seed}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def patient_of(name: str) -> str:
    return name.split("_")[0]


def split_masks(data: dict, seed: int = 0, per_class: int = 50):
    """(calibration, evaluation) boolean masks over variants then held-out frames."""
    n_var = len(data["cls"])
    vidx = data["vidx"] if "vidx" in data else np.arange(n_var) % per_class
    v_cal = vidx % 2 == 0
    h_cal = np.array([_unit(patient_of(str(n)), seed) < 0.5 for n in data["held_name"]])
    cal = np.concatenate([v_cal, h_cal])
    return cal, ~cal


def groups(data: dict) -> np.ndarray:
    """A row name per sample: the variant's class, or the held-out frame's source."""
    names = [LABELS[c] for c in data["cls"]]
    names += ["held-out HC18 heads" if s == "hc18" else "held-out planes frames"
              for s in data["held_source"]]
    return np.array(names)


def reference_labels(data: dict, student_logits: np.ndarray | None = None) -> np.ndarray:
    """What a right answer is per row: the true plane of each variant, then the teacher's
    top-1 on each held-out real frame; on an HC18 head (transthalamic: either head plane is
    right) the head plane the student names, else the teacher's more likely head plane.
    `student_logits`: the student's, variants then held-out frames."""
    held = np.asarray(data["held_logits"])
    ref = held.argmax(1)
    group = np.array(HEAD_PLANE_IDS)
    hc18 = np.asarray(data["held_source"]) == "hc18"
    missed = hc18 & ~np.isin(ref, group)
    ref = np.where(missed, group[held[:, group].argmax(1)], ref)
    if student_logits is not None:
        said = np.asarray(student_logits)[len(data["cls"]):].argmax(1)
        ref = np.where(hc18 & np.isin(said, group), said, ref)
    return np.concatenate([np.asarray(data["cls"], np.int64), ref])


def calibrate(model: Path, seed: int = 0) -> dict:
    from quantize.variants import build_views, evaluate

    data = build_views(seed)
    res = evaluate(model, seed)
    logits = np.concatenate([res["variant_logits"], res["held_logits"]])
    cal, ev = split_masks(data, seed)
    teacher = reference_labels(data, logits)
    correct = logits.argmax(1) == teacher
    t = fit_temperature(logits[cal], teacher[cal])
    conf1 = softmax(logits).max(1)
    conf_t = softmax(logits, t).max(1)
    p = max(ABSTAIN_FLOOR, abstain_threshold(conf_t[cal], correct[cal]))
    rows = {}
    g = groups(data)
    for name in list(dict.fromkeys(g)):
        m = ev & (g == name)
        answered = m & (conf_t >= p)
        rows[name] = {"n": int(m.sum()), "abstain": int((m & (conf_t < p)).sum()),
                      "abstain_rate": round(float((m & (conf_t < p)).sum() / max(1, m.sum())), 4),
                      "agree_all": int(correct[m].sum()),
                      "agree_answered": int(correct[answered].sum()),
                      "answered": int(answered.sum())}
    m = ev
    answered = m & (conf_t >= p)
    return {
        "model": str(model), "sha256_12": res["sha256_12"], "temperature": round(t, 4),
        "abstain_below": p,
        "ece_eval_before": round(ece(conf1[ev], correct[ev]), 4),
        "ece_eval_after": round(ece(conf_t[ev], correct[ev]), 4),
        "ece_cal_before": round(ece(conf1[cal], correct[cal]), 4),
        "ece_cal_after": round(ece(conf_t[cal], correct[cal]), 4),
        "n_cal": int(cal.sum()), "n_eval": int(ev.sum()),
        "eval_abstain_rate": round(float((ev & (conf_t < p)).sum() / ev.sum()), 4),
        "eval_agreement_all": round(float(correct[ev].mean()), 4),
        "eval_agreement_answered": round(float(correct[answered].mean()), 4),
        "per_class_eval": rows,
        "how": ("int8 student top-1 through the device path vs the true plane on the variant "
                "screens and the fp32 teacher's top-1 on the held-out real frames (on HC18 "
                "heads, transthalamic planes: either head plane); "
                "calibration half = even variant numbers + held-out patients with hash < 0.5 (seed "
                f"{seed}); evaluation half = the rest; T by NLL on the calibration half; ECE "
                f"with {N_BINS} equal-width bins; abstain_below = just above the most confident "
                "calibration frame where the isotonic fit of agreement vs calibrated "
                f"confidence is below {ABSTAIN_AGREEMENT:.0%}, and at least {ABSTAIN_FLOOR}"),
    }


def table(report: dict) -> str:
    lines = ["| class (evaluation half) | n | abstain | abstain rate | right (all) | "
             "right (answered) |", "|---|---|---|---|---|---|"]
    for name, r in report["per_class_eval"].items():
        ans = f"{r['agree_answered']}/{r['answered']}" if r["answered"] else "-"
        lines.append(f"| {name} | {r['n']} | {r['abstain']} | {r['abstain_rate']:.1%} | "
                     f"{r['agree_all']}/{r['n']} | {ans} |")
    return "\n".join(lines)


def write_thresholds(manifest_path: Path, report: dict) -> None:
    """Put T and abstain_below into the manifest's thresholds, the evidence into metrics."""
    man = json.loads(manifest_path.read_text())
    man["thresholds"] = {"temperature": report["temperature"],
                         "abstain_below": report["abstain_below"]}
    man.setdefault("metrics", {})["calibration"] = {
        k: v for k, v in report.items() if k not in ("model",)}
    manifest_path.write_text(json.dumps(man, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quantize.calibrate",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", type=Path, help="manifest to write the thresholds into")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    try:
        report = calibrate(args.model, args.seed)
    except (DataError, FileNotFoundError, ValueError) as exc:
        print(f"calibrate: {exc}", file=sys.stderr)
        return 2
    print(f"T = {report['temperature']}, ECE (evaluation half, {report['n_eval']} frames) "
          f"{report['ece_eval_before']:.4f} -> {report['ece_eval_after']:.4f}; abstain below "
          f"{report['abstain_below']} -> {report['eval_abstain_rate']:.1%} abstained, "
          f"agreement {report['eval_agreement_all']:.1%} all, "
          f"{report['eval_agreement_answered']:.1%} answered")
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.write:
        write_thresholds(args.write, report)
        print(f"wrote thresholds into {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
