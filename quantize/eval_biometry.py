"""`make eval-biometry`: the head segmenters on validation patients, measured like the device.

Validation = the HC18 frames of the patients `quantize.data.split(list_frames(), seed=0)`
holds out (never trained or calibrated on). Each frame goes through the device's own
preprocessing (`grey_resized` + `normalise`, whole frame) and the .tflite in question
(fp32 or int8, through `edge.models.runtime`); sigmoid; then
`edge.models.biometry.measure_probability`, the device's measurement, gives the HC.
Segmentation scores compare the device's mask (the probability map bilinearly upsampled
to the frame, >= the manifest's threshold) with the filled annotation ellipse at the
frame's full resolution, per frame, then averaged. HC error = measured HC - the CSV's HC
(the sonographer's value). Frames the device declines to measure (e.g. `head_cut_off`)
have no HC; they are counted, not scored.

Writes build/eval_biometry/report.md (the table) and bland_altman.png (int8 student).

    python -m quantize.eval_biometry [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge.models.biometry import BiometrySettings, measure_probability, sigmoid
from quantize import seg_data

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "build" / "eval_biometry"
THRESHOLD = 0.5


@dataclass
class Scores:
    dice: list[float] = field(default_factory=list)
    iou: list[float] = field(default_factory=list)
    acc: list[float] = field(default_factory=list)
    hc: list[float | None] = field(default_factory=list)
    status: list[str] = field(default_factory=list)

    def hc_errors(self, reference: np.ndarray) -> np.ndarray:
        return np.array([h - r for h, r in zip(self.hc, reference, strict=True) if h is not None])

    def summary(self, reference: np.ndarray) -> dict:
        err = self.hc_errors(reference)
        statuses: dict[str, int] = {}
        for s in self.status:
            statuses[s] = statuses.get(s, 0) + 1
        return {"n": len(self.dice), "dice": float(np.mean(self.dice)),
                "dice_min": float(np.min(self.dice)), "iou": float(np.mean(self.iou)),
                "pixel_accuracy": float(np.mean(self.acc)),
                "hc_n": int(len(err)), "hc_mad_mm": float(np.abs(err).mean()) if len(err) else None,
                "hc_abs_sd_mm": float(np.abs(err).std()) if len(err) else None,
                "hc_bias_mm": float(err.mean()) if len(err) else None,
                "hc_sd_mm": float(err.std(ddof=1)) if len(err) > 1 else None,
                "statuses": statuses}


def truth_masks(cache: dict) -> list[np.ndarray]:
    out = []
    for ell, hw in zip(cache["ellipse"], cache["frame_hw"], strict=True):
        mask = seg_data.fill_ellipse(tuple(int(v) for v in hw), seg_data.Ellipse(*map(float, ell)))
        out.append(mask >= 0.5)
    return out


def score(logits: np.ndarray, cache: dict, truths: list[np.ndarray],
          threshold: float = THRESHOLD) -> Scores:
    """Device-path scores of (n, H, W) logits for the cached frames."""
    settings = BiometrySettings(probability_threshold=threshold)
    result = Scores()
    for i, truth in enumerate(truths):
        prob = sigmoid(logits[i].reshape(logits.shape[-2:]))
        h, w = truth.shape
        up = cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR) >= threshold
        inter = np.count_nonzero(up & truth)
        total = np.count_nonzero(up) + np.count_nonzero(truth)
        union = np.count_nonzero(up | truth)
        result.dice.append(2 * inter / max(1, total))
        result.iou.append(inter / max(1, union))
        result.acc.append(float(np.mean(up == truth)))
        bio = measure_probability(prob, (0, 0, w, h), (h, w), float(cache["pixel_mm"][i]),
                                  settings)
        result.hc.append(bio.hc_mm)
        result.status.append(bio.status)
    return result


def mask_agreement(a: np.ndarray, b: np.ndarray, truths: list[np.ndarray],
                   threshold: float = THRESHOLD) -> list[float]:
    """Per-frame Dice between the device masks of two logit sets (at frame resolution)."""
    out = []
    for i, truth in enumerate(truths):
        h, w = truth.shape
        ma = cv2.resize(sigmoid(a[i].reshape(a.shape[-2:])), (w, h)) >= threshold
        mb = cv2.resize(sigmoid(b[i].reshape(b.shape[-2:])), (w, h)) >= threshold
        total = np.count_nonzero(ma) + np.count_nonzero(mb)
        out.append(2 * np.count_nonzero(ma & mb) / max(1, total) if total else 1.0)
    return out


def tflite_logits(path: Path, inputs: np.ndarray) -> np.ndarray:
    from quantize.convert import run_tflite

    return run_tflite(path, inputs)[:, 0]


def bland_altman(measured: np.ndarray, reference: np.ndarray, dest: Path, title: str) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean = (measured + reference) / 2
    diff = measured - reference
    bias, sd = float(diff.mean()), float(diff.std(ddof=1))
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter(mean, diff, s=12, alpha=0.7)
    for y, style, label in ((bias, "-", f"bias {bias:+.2f} mm"),
                            (bias + 1.96 * sd, "--", f"+1.96 sd {bias + 1.96 * sd:+.2f}"),
                            (bias - 1.96 * sd, "--", f"-1.96 sd {bias - 1.96 * sd:+.2f}")):
        ax.axhline(y, linestyle=style, color="k", linewidth=1)
        ax.text(0.99, y, label, transform=ax.get_yaxis_transform(), ha="right", va="bottom",
                fontsize=8)
    ax.set_xlabel("mean of device HC and CSV HC (mm)")
    ax.set_ylabel("device HC - CSV HC (mm)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dest)
    plt.close(fig)
    return {"bias_mm": bias, "sd_mm": sd, "loa_mm": [bias - 1.96 * sd, bias + 1.96 * sd],
            "n": int(len(diff))}


def fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def table(rows: list[dict]) -> str:
    lines = ["| model | Dice | IoU | pixel acc | HC MAD ± sd (mm) | HC measured | params | "
             "MACs (M) | int8 size (KB) | latency 2 threads (ms) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["scores"]
        lines.append(
            f"| {r['label']} | {fmt(s['dice'], 4)} | {fmt(s['iou'], 4)} | "
            f"{fmt(s['pixel_accuracy'], 4)} | {fmt(s['hc_mad_mm'], 2)} ± "
            f"{fmt(s['hc_abs_sd_mm'], 2)} | {s['hc_n']}/{s['n']} | {r['params']:,} | "
            f"{r['macs'] / 1e6:.0f} | {r['int8_kb']:.0f} | {r['latency_ms']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quantize.eval_biometry",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    from quantize import build_segmenter

    try:
        report = build_segmenter.evaluate_all(args.seed, args.out)
    except (seg_data.DataError, FileNotFoundError, ValueError) as exc:
        print(f"eval_biometry: {exc}", file=sys.stderr)
        return 2
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
