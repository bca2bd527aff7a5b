"""How far the sonographers' own HC labels spread, from the heads HC18 has twice.

HC18 has 154 patients with two to four frames of the same examination (`010_HC.png`,
`010_2HC.png`, ...): one fetus, one day, so one true head circumference, seen on
different frames. Three spreads are measured, each as a variance:
- `V_label`: between two labels of one patient = 2 (frame^2 + label^2), where `frame` is
  how far a frame's own true HC strays from the patient's other frames' (another section,
  another tilt, or a pixel size that is not the frame's: some pairs differ by 25%, and the
  net follows them) and `label` is the sonographer's error in closing the ellipse on
  that frame;
- `V_net`: between the net's two measurements of one patient = 2 (frame^2 + net^2);
- `V_err`: between the net and the label on one frame = net^2 + label^2.
If the net's and the sonographer's errors on a frame are independent, the three solve
for the three standard deviations (`decompose`). If they are correlated by c > 0 (both
extrapolate the same faint wall alike), both variances found are short by c: the labels'
noise is then larger than found. `bootstrap` resamples patients for the interval.

Why: issue 13 asks for HC within 1.7 mm of these labels. If the labels themselves carry
an error whose mean absolute size is near 1.7 mm, no net can be held to that, however it
is trained. The spreads are taken as a share of HC (percent) as well as in mm, since
every error here grows with the head.

`python -m quantize.label_spread [--model models/head_segmenter.tflite]` writes
`build/label_spread/report.md` and `results.json`: the shipped int8 segmenter, one pass
through the device's `measure_frame`, on every HC18 frame.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# E|X| = sqrt(2/pi) * sigma for a normal error: the mean absolute difference a spread gives
MAD_PER_SD = math.sqrt(2 / math.pi)
# HC bands of issue 13 (and 240 mm up, where the big heads' error begins), by patient
BANDS_MM = ((0, 100), (100, 200), (200, 300), (300, 1000), (240, 1000))


def patient_of(name: str) -> str:
    """HC18's patient id: the number before the first `_` (010_HC.png, 010_2HC.png)."""
    return name.split("_", 1)[0]


def frames_by_patient(names: list[str]) -> dict[str, list[int]]:
    """Each patient's frames, as indices into `names`, in order."""
    by_patient: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        by_patient.setdefault(patient_of(name), []).append(i)
    return by_patient


def pairs_within_patients(names: list[str]) -> list[tuple[int, int]]:
    """Every pair of frames of one patient, as indices into `names`."""
    return [pair for idx in frames_by_patient(names).values()
            for pair in itertools.combinations(idx, 2)]


@dataclass(frozen=True)
class Spread:
    """Standard deviations (in the unit of the inputs) and what they came from."""

    label_sd: float
    net_sd: float
    frame_sd: float
    pairs: int
    frames: int
    v_label: float
    v_net: float
    v_err: float


def _variance(d: np.ndarray) -> float:
    """Of differences whose mean is taken as zero (pairs have no order; the net's errors
    were measured to be without bias)."""
    return float(np.mean(d ** 2))


def decompose(label: np.ndarray, net: np.ndarray, pairs: list[tuple[int, int]]) -> Spread:
    """The three standard deviations from per-frame labels and net measurements (NaN where
    the net declined: those frames and their pairs are left out). All three variances are
    taken on the frames of the pairs: patients seen on several frames err more than the
    rest (1.89 against 1.74 mm here), and the solution holds only within one set."""
    label = np.asarray(label, float)
    net = np.asarray(net, float)
    ok = np.isfinite(label) & np.isfinite(net)
    kept = [(i, j) for i, j in pairs if ok[i] and ok[j]]
    if not kept:
        raise ValueError("no frame pair that both the labels and the net measure")
    a, b = np.array(kept).T
    frames = np.unique(np.concatenate([a, b]))
    v_label = _variance(label[a] - label[b])
    v_net = _variance(net[a] - net[b])
    v_err = _variance((net - label)[frames])
    label_var = (v_err + (v_label - v_net) / 2) / 2
    net_var = v_err - label_var
    frame_var = v_label / 2 - label_var
    return Spread(label_sd=math.sqrt(max(label_var, 0.0)), net_sd=math.sqrt(max(net_var, 0.0)),
                  frame_sd=math.sqrt(max(frame_var, 0.0)), pairs=len(kept),
                  frames=len(frames), v_label=v_label, v_net=v_net, v_err=v_err)


def bootstrap(label: np.ndarray, net: np.ndarray, names: list[str], draws: int = 2000,
              seed: int = 0) -> dict[str, list[float]]:
    """2.5th, 50th and 97.5th percentiles of each standard deviation over patients drawn
    with replacement (a patient drawn twice is two patients)."""
    groups = list(frames_by_patient(names).values())
    rng = np.random.default_rng(seed)
    found = []
    for _ in range(draws):
        idx, drawn = [], []
        for k, g in enumerate(rng.integers(0, len(groups), len(groups))):
            idx += groups[g]
            drawn += [f"{k}_" for _ in groups[g]]
        try:
            s = decompose(np.asarray(label)[idx], np.asarray(net)[idx],
                          pairs_within_patients(drawn))
        except ValueError:
            continue
        found.append((s.label_sd, s.net_sd, s.frame_sd))
    if not found:
        raise ValueError("no draw of patients held a frame pair")
    q = np.percentile(np.array(found), [2.5, 50, 97.5], axis=0)
    return {k: q[:, i].round(3).tolist() for i, k in enumerate(("label_sd", "net_sd",
                                                                 "frame_sd"))}


def measure_all(model_path: Path, threads: int = 2) -> dict:
    """Every HC18 frame: its name, split, pixel size, label HC and the net's HC (one pass)."""
    from edge.models.biometry import Passes
    from quantize.data import data_dir, read_frame
    from quantize.eval_biometry import device_model, measure_with_passes
    from quantize.seg_data import hc18_split, read_hc_table

    model = device_model(model_path, threads)  # a bad model is said before any frame is read
    root = data_dir()
    table = read_hc_table(root)
    train, held = hc18_split(root)
    frames = [(f, "train") for f in train] + [(f, "validation") for f in held]
    names = [f.path.name for f, _ in frames]
    pixel = np.array([table[n][0] for n in names])
    images = [read_frame(f.path) for f, _ in frames]
    hc, status, _ = measure_with_passes(model, images, pixel, Passes())
    return {"name": names, "split": [s for _, s in frames], "pixel_mm": pixel.tolist(),
            "label_mm": [table[n][1] for n in names], "net_mm": hc, "status": status}


def spreads(measured: dict, draws: int = 2000) -> dict:
    """The decomposition in mm and in % of HC, over all frames and per split, each with
    its interval over patients."""
    names = measured["name"]
    label, net = _arrays(measured)
    split = np.array(measured["split"])
    out = {}
    # a patient's band is that of the mean of its labels: choosing frames by their own
    # label would cut the labels' spread at the band's edges and not the net's
    mean = np.empty_like(label)
    for idx in frames_by_patient(names).values():
        mean[idx] = label[idx].mean()
    parts = {"all": np.arange(len(names)), "train": np.flatnonzero(split == "train"),
             "validation": np.flatnonzero(split == "validation")}
    for lo, hi in BANDS_MM:
        parts[f"HC {lo:g}-{hi:g} mm"] = np.flatnonzero((mean >= lo) & (mean < hi))
    for part, idx in parts.items():
        sub = [names[i] for i in idx]
        lab, n = label[idx], net[idx]
        pairs = pairs_within_patients(sub)
        in_pairs = sorted({i for pair in pairs for i in pair})
        # the same scale for both frames of a patient and for the net: 100 / the patient's
        # mean label (a frame's own label would make every label 100)
        for unit, scale in (("mm", np.ones_like(lab)), ("pct", 100 / mean[idx])):
            try:
                found = asdict(decompose(lab * scale, n * scale, pairs))
            except ValueError:  # no patient of this part seen twice: nothing to tell apart
                continue
            found["interval"] = bootstrap(lab * scale, n * scale, sub, draws)
            found["net_vs_label_mad"] = float(np.nanmean((np.abs(n - lab) * scale)[in_pairs]))
            out[f"{part}/{unit}"] = found
    return out


def _arrays(measured: dict) -> tuple[np.ndarray, np.ndarray]:
    """(labels, the net's HCs with NaN where it declined) of `measure_all`'s frames."""
    return (np.array(measured["label_mm"], float),
            np.array([np.nan if v is None else v for v in measured["net_mm"]], float))


def report(measured: dict, found: dict) -> str:
    label, net = _arrays(measured)
    val = np.array(measured["split"]) == "validation"
    ok = np.isfinite(net)

    def sd(s: dict, key: str) -> str:
        lo, _, hi = s["interval"][key]
        return f"{s[key]:.2f} ({lo:.2f}-{hi:.2f})"

    lines = ["# How far the HC labels spread (quantize.label_spread)", "",
             f"{len(label)} HC18 frames; the net measured {int(ok.sum())} (one pass, int8, "
             f"the device's measure_frame). HC MAD against the labels: all "
             f"{np.mean(np.abs(net - label)[ok]):.3f} mm, validation "
             f"{np.mean(np.abs(net - label)[ok & val]):.3f} mm.", "",
             "Standard deviations with 95% intervals over patients; 'its MAD' is the mean "
             "|error| the labels' noise alone would give a perfect net (x 0.80).", "",
             "| frames | unit | pairs | net against label, MAD | label SD | its MAD | net SD | "
             "frame SD |", "|---|---|---|---|---|---|---|---|"]
    for key, s in found.items():
        part, unit = key.rsplit("/", 1)
        lo, _, hi = s["interval"]["label_sd"]
        lines.append(f"| {part} | {'mm' if unit == 'mm' else '% of HC'} | {s['pairs']} | "
                     f"{s['net_vs_label_mad']:.2f} | {sd(s, 'label_sd')} | "
                     f"{s['label_sd'] * MAD_PER_SD:.2f} "
                     f"({lo * MAD_PER_SD:.2f}-{hi * MAD_PER_SD:.2f}) | {sd(s, 'net_sd')} | "
                     f"{sd(s, 'frame_sd')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from edge.models.manifest import ModelError
    from quantize.args import THREADS, bounded_int
    from quantize.data import DataError

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "head_segmenter.tflite")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "label_spread")
    parser.add_argument("--threads", type=THREADS, default=2)
    parser.add_argument("--draws", type=bounded_int(100, 100_000), default=2000)
    args = parser.parse_args(argv)
    try:
        measured = measure_all(args.model, args.threads)
        found = spreads(measured, args.draws)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps({"measured": measured,
                                                           "spreads": found}, indent=1))
        text = report(measured, found)
        (args.out / "report.md").write_text(text)
    except (DataError, ModelError, ValueError, OSError) as exc:
        print(f"label_spread: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
