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

The metrics only: `python -m quantize.biometry_report` (`make eval-biometry`) writes the
report with them.
"""

from __future__ import annotations

import math
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
    # Dice of the fitted ellipse, filled, against the sonographer's, on measured frames: the
    # device's outline is the ellipse, and it is what HC18's challenge scores (submissions
    # are ellipse parameters). `dice` above scores the raw mask.
    ellipse_dice: list[float] = field(default_factory=list)

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
                "ellipse_dice": float(np.mean(self.ellipse_dice)) if self.ellipse_dice
                else None, "ellipse_dice_n": len(self.ellipse_dice),
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
        if bio.ellipse is not None:
            result.ellipse_dice.append(ellipse_dice(bio.ellipse, truth))
    return result


def ellipse_dice(ellipse: tuple[float, float, float, float, float],
                 truth: np.ndarray) -> float:
    """Dice of a device ellipse (cx, cy, semi-major, semi-minor, angle; frame px), filled,
    against a truth mask of the frame."""
    cx, cy, a, b, angle = ellipse
    filled = seg_data.fill_ellipse(truth.shape, seg_data.Ellipse(cx, cy, 2 * a, 2 * b, angle))
    pred = filled >= 0.5
    total = np.count_nonzero(pred) + np.count_nonzero(truth)
    return 2 * np.count_nonzero(pred & truth) / max(1, total)


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


# The HC bands, and the pixel-size bands that explain them (HC18 frames of big heads
# are zoomed out: 0.23 mm pixels on heads over 240 mm against 0.13 mm on 100-200 mm heads).
HC_BANDS = ((0.0, 100.0, "under 100"), (100.0, 200.0, "100-200"), (200.0, 300.0, "200-300"),
            (300.0, math.inf, "over 300"), (240.0, math.inf, "240 and over"))
PIXEL_BANDS = ((0.0, 0.1, "under 0.10"), (0.1, 0.15, "0.10-0.15"), (0.15, 0.2, "0.15-0.20"),
               (0.2, 0.25, "0.20-0.25"), (0.25, math.inf, "0.25 and over"))
BAND_LIMIT_MM = 3.0  # issue 13: every HC band under 3 mm


def band_stats(hc: list[float | None], ref: np.ndarray, pixel: np.ndarray,
               frame_w: np.ndarray, model_w: int) -> list[dict]:
    """HC error per HC band (by the CSV's HC) and per pixel-size band.

    Besides mm, the error is given in model pixels of radius (|HC error| / 2 pi, in units of
    one model pixel = frame width / model width frame pixels x pixel size): if it is the
    same in every band, the mm error of a band follows its pixel size, i.e. the model's
    resolution, not the head's size."""
    measured = np.array([h is not None for h in hc])
    err = np.array([np.nan if h is None else h - r for h, r in zip(hc, ref, strict=True)])
    model_px_mm = pixel * frame_w / model_w
    out = []
    for kind, bands, key in (("HC", HC_BANDS, ref), ("pixel", PIXEL_BANDS, pixel)):
        for lo, hi, name in bands:
            inside = (key >= lo) & (key < hi)
            m = inside & measured
            e = err[m]
            out.append({"by": kind, "band": name, "n": int(inside.sum()), "measured": int(m.sum()),
                        "mad_mm": float(np.abs(e).mean()) if m.any() else None,
                        "bias_mm": float(e.mean()) if m.any() else None,
                        # a bias is told from noise by its standard error over the band
                        "bias_se_mm": float(e.std(ddof=1) / math.sqrt(len(e)))
                        if len(e) > 1 else None,
                        "mad_pct_of_hc": float((np.abs(e) / ref[m]).mean() * 100)
                        if m.any() else None,
                        "max_mm": float(np.abs(e).max()) if m.any() else None,
                        "pixel_mm": float(pixel[inside].mean()) if inside.any() else None,
                        "radius_model_px": float((np.abs(e) / model_px_mm[m]).mean()
                                                 / (2 * math.pi)) if m.any() else None})
    return out


def band_table(named: list[tuple[str, list[dict]]]) -> str:
    """One Markdown table: a row per band, a column pair per named run (mm, model px)."""
    head = "| band | frames | mean pixel (mm) | " + " | ".join(
        f"{name}: MAD mm (bias) | {name}: model px" for name, _ in named) + " |"
    lines = [head, "|" + "---|" * (3 + 2 * len(named))]
    for i, row in enumerate(named[0][1]):
        cells = [f"{row['by']} {row['band']}", f"{row['n']}", fmt(row["pixel_mm"], 3)]
        for _, stats in named:
            r = stats[i]
            bias = "n/a" if r["bias_mm"] is None else f"{r['bias_mm']:+.2f}"
            cells.append(f"{fmt(r['mad_mm'], 2)} ({bias})")
            cells.append(fmt(r["radius_model_px"], 2))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def worst_band(stats: list[dict]) -> tuple[str, float]:
    """The issue's HC band (of the four) with the largest MAD."""
    rows = [r for r in stats if r["by"] == "HC" and r["band"] != "240 and over"
            and r["mad_mm"] is not None]
    row = max(rows, key=lambda r: r["mad_mm"])
    return row["band"], row["mad_mm"]


# How many standard errors of the paired difference a gain must reach to be told from noise.
# Measured: five DeepLab-lite nets trained alike (the same net and data, other batches or a
# second cosine cycle) differed from each other by -0.07 to +0.04 mm HC MAD on the 264
# validation frames, with a standard error of the paired difference of 0.033-0.049 mm.
SIGNIFICANT_SE = 2.0


def paired_gain(new_hc: list[float | None], old_hc: list[float | None],
                reference: np.ndarray) -> tuple[float, float, int]:
    """How much closer `new_hc` is to `reference` than `old_hc`, frame by frame: the mean of
    |old error| - |new error| over the frames both measure (mm, > 0: new is better), the
    standard error of that mean, and the number of frames. Paired, because two nets err on
    the same hard frames: the spread of the difference is far smaller than of either error."""
    diffs = [abs(o - r) - abs(n - r) for n, o, r in zip(new_hc, old_hc, reference, strict=True)
             if n is not None and o is not None]
    if len(diffs) < 2:
        return 0.0, math.inf, len(diffs)
    d = np.asarray(diffs, dtype=np.float64)
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))), len(d)


def clearly_better(new_hc: list[float | None], old_hc: list[float | None],
                   reference: np.ndarray, at_least_mm: float = 0.0) -> bool:
    """New measures HC better than old by more than the noise of the frames (SIGNIFICANT_SE
    standard errors of the paired difference) and by at least `at_least_mm`, and declines no
    more frames."""
    gain, se, _ = paired_gain(new_hc, old_hc, reference)
    declined = (sum(h is None for h in new_hc), sum(h is None for h in old_hc))
    return gain >= max(at_least_mm, SIGNIFICANT_SE * se) and declined[0] <= declined[1]


def read_images(cache: dict, root: Path) -> list[np.ndarray]:
    """The validation frames themselves (the device measures whole frames)."""
    from quantize.data import read_frame

    return [read_frame(root / "hc18" / "images" / str(n)) for n in cache["name"]]


def device_model(path: Path, threads: int = 2, passes=None, spec=None):
    """A build .tflite opened like the device opens the shipped one, with a manifest that
    says what the shipped one would (preprocessing `spec`, by default the device's
    `device_spec(seg_data.SPEC)`, logits, and the passes)."""
    from edge.models.biometry import TASK
    from edge.models.manifest import Manifest
    from edge.models.runtime import open_model_file
    from quantize.specs import device_spec

    spec = device_spec(seg_data.SPEC) if spec is None else spec
    block = {"probability_threshold": THRESHOLD}
    if passes is not None:
        block.update(test_time_flip=passes.test_time_flip,
                     refine_crop_margin=passes.refine_crop_margin,
                     refine_max_zoom=passes.refine_max_zoom)
    model = open_model_file(path, "litert", threads)
    model.manifest = Manifest(path=path.with_suffix(".json"), name=path.stem, version="build",
                              task=TASK, model_path=path, sha256="", labels=("head",),
                              input_shape=(1, 1, spec.height, spec.width), output_kind="logits",
                              preprocessing=spec, raw={"biometry": block})
    return model


def measure_with_passes(model, images: list[np.ndarray], pixel: np.ndarray,
                        passes) -> tuple[list[float | None], list[str], list[float]]:
    """HC, status and wall-clock ms of `edge.models.biometry.measure_frame` per frame: the
    device's whole measurement, passes included."""
    import time

    from edge.models.biometry import measure_frame

    settings = BiometrySettings(probability_threshold=THRESHOLD)
    hc, status, ms = [], [], []
    for image, px in zip(images, pixel, strict=True):
        t0 = time.perf_counter()
        bio = measure_frame(model, image, None, float(px), settings, passes)
        ms.append((time.perf_counter() - t0) * 1000)
        hc.append(bio.hc_mm)
        status.append(bio.status)
    return hc, status, ms


SCREENS = ((1024, 768), (1280, 720))  # a scanner's video out: 4:3 and 16:9


def on_screen(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """`image` 1:1 on a black screen with a scanner's text, as a video out shows it (BGR);
    cut to the screen where it does not fit."""
    import cv2

    from edge.models.roi import to_grey

    grey = to_grey(image)
    screen = np.zeros((height, width, 3), np.uint8)
    y = max(0, (height - grey.shape[0]) // 2)
    x = max(0, min(width - grey.shape[1], (width - grey.shape[1]) // 2 + 40))
    part = grey[:height - y, :width - x]
    screen[y:y + part.shape[0], x:x + part.shape[1]] = part[..., None]
    cv2.putText(screen, "GE Voluson  RAB4-8-D/OB  MI 0.9", (20, 30), cv2.FONT_HERSHEY_SIMPLEX,
                0.8, (235, 235, 235), 2)
    for row, text in enumerate(("Har-mid", "Gn -3", "FR 24Hz")):
        cv2.putText(screen, text, (10, 120 + 32 * row), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                    (60, 220, 60), 2)
    return screen


def on_screens(model, images: list[np.ndarray], cache: dict) -> list[dict]:
    """The device's measurement (region found, then `measure_frame`) of every validation
    head on its own frame and on each of SCREENS, with the segmenter framing the image's
    outline (the device's default) and, as the control, shown the whole screen."""
    from edge.models.biometry import measure_frame
    from edge.models.roi import find_roi

    ref = cache["hc_csv"]
    out = []
    for screen in (None, *SCREENS):
        for below in ((BiometrySettings.frame_image_below,) if screen is None
                      else (BiometrySettings.frame_image_below, 0.0)):
            settings = BiometrySettings(probability_threshold=THRESHOLD, frame_image_below=below)
            hc, status = [], []
            for image, px in zip(images, cache["pixel_mm"], strict=True):
                shown = image if screen is None else on_screen(image, *screen)
                bio = measure_frame(model, shown, find_roi(shown), float(px), settings)
                hc.append(bio.hc_mm)
                status.append(bio.status)
            err = [abs(h - r) for h, r in zip(hc, ref, strict=True) if h is not None]
            out.append({"screen": "its own frame" if screen is None else f"{screen[0]}x{screen[1]}",
                        "framing": ("the frame, which the image fills" if screen is None
                                    else "the whole screen" if below == 0.0
                                    else "the image's outline"),
                        "mad": float(np.mean(err)) if err else None, "n": len(err),
                        "cut_off": status.count("head_cut_off"), "hc": hc})
    return out


def slid_under_the_fan(grey: np.ndarray, dx: int, screen: tuple[int, int] = SCREENS[0],
                       ) -> np.ndarray:
    """A real cut-off on a scanner's screen: the anatomy slides `dx` px sideways under a fan
    that stays where it is (the probe moved, not the screen), and the frame sits on a black
    screen, so the fan's side is not the frame's edge. What leaves the fan is lost."""
    from quantize.degrade import footprint

    fan = footprint(grey) > 0
    slid = np.zeros_like(grey)
    if dx > 0:
        slid[:, dx:] = grey[:, :-dx]
    elif dx < 0:
        slid[:, :dx] = grey[:, -dx:]
    else:
        slid = grey.copy()
    slid[~fan] = 0
    width, height = screen
    out = np.zeros((height, width), np.uint8)
    y, x = (height - grey.shape[0]) // 2, (width - grey.shape[1]) // 2
    out[y:y + grey.shape[0], x:x + grey.shape[1]] = slid
    return out


SLIDES = (-200, -100, 100, 200)


def slides(model, images: list[np.ndarray], cache: dict) -> dict[str, dict[str, int]]:
    """Every validation head measured unslid, slid by each of SLIDES under its fan: how
    many slides are measured over 3% short, within 1% of the unslid head, or cut off, with
    the image's outline judged (the device) and without it (the frame's edge alone)."""
    import dataclasses

    from edge.models.biometry import measure_frame
    from edge.models.roi import find_roi, to_grey

    settings = BiometrySettings(probability_threshold=THRESHOLD)
    out = {k: {"slides": 0, "short": 0, "within_1pct": 0, "cut_off": 0}
           for k in ("outline", "frame edge")}
    for image, px in zip(images, cache["pixel_mm"], strict=True):
        grey = to_grey(image)
        still = slid_under_the_fan(grey, 0)
        base = measure_frame(model, still, find_roi(still), float(px), settings).hc_mm
        if base is None:
            continue
        for dx in SLIDES:
            shown = slid_under_the_fan(grey, dx)
            roi = find_roi(shown)
            if roi is None:
                continue
            bare = dataclasses.replace(roi, outline=None)
            for name, r in (("outline", roi), ("frame edge", bare)):
                bio = measure_frame(model, shown, r, float(px), settings)
                row = out[name]
                row["slides"] += 1
                row["cut_off"] += bio.status == "head_cut_off"
                if bio.hc_mm is not None:
                    row["short"] += bio.hc_mm < 0.97 * base
                    row["within_1pct"] += abs(bio.hc_mm - base) <= 0.01 * base
    return out


def fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def table(rows: list[dict]) -> str:
    lines = ["| model | Dice | ellipse Dice | IoU | pixel acc | HC MAD ± sd (mm) | HC measured "
             "| params | MACs (M) | int8 size (KB) | latency 2 threads (ms) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["scores"]
        lines.append(
            f"| {r['label']} | {fmt(s['dice'], 4)} | {fmt(s.get('ellipse_dice'), 4)} | "
            f"{fmt(s['iou'], 4)} | "
            f"{fmt(s['pixel_accuracy'], 4)} | {fmt(s['hc_mad_mm'], 2)} ± "
            f"{fmt(s['hc_abs_sd_mm'], 2)} | {s['hc_n']}/{s['n']} | {r['params']:,} | "
            f"{r['macs'] / 1e6:.0f} | {r['int8_kb']:.0f} | {r['latency_ms']:.2f} |")
    return "\n".join(lines)
