"""`make eval-biometry`: the head segmenters on the validation patients, as a report.

Writes build/eval_biometry/report.md (tables, the HC error by band and pixel size, each pass
option with its cost, the threshold sweep, the validation patients by number), a per-frame
CSV and a Bland-Altman plot. The metrics are `quantize.eval_biometry`'s; the nets, their
conversion and the shipping rules are `quantize.build_segmenter`'s. This module sits above
both, so neither imports the other's caller.

    python -m quantize.biometry_report [--seed 0] [--out build/eval_biometry]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from quantize import seg_data
from quantize.build_segmenter import (
    CROP_MARGIN,
    CROP_MAX_ZOOM,
    KINDS,
    REPO,
    choose,
    choose_passes,
    convert,
    distillation_verdicts,
    evaluate_passes,
    evaluate_rows,
    finished_kinds,
    load_caches,
    previous_model,
    tflite_paths,
    work_dir,
)
from quantize.data import data_dir

OUT = REPO / "build" / "eval_biometry"


THRESHOLD_SWEEP = (0.4, 0.45, 0.5, 0.55, 0.6)


def screen_lines(shipped: Path, images: list, val: dict) -> list[str]:
    """The report's section on heads shown on a scanner's screen, for the shipped segmenter."""
    from edge.models.manifest import read_manifest
    from edge.models.runtime import load_model
    from quantize.eval_biometry import SLIDES, on_screens, paired_gain, slides

    if not shipped.is_file():
        return []
    model = load_model(read_manifest(shipped), "litert", 2)
    rows = on_screens(model, images, val)
    own = rows[0]["hc"]
    lines = ["## On a scanner's screen", "",
             "The shipped segmenter through the device's path (`find_roi`, then "
             "`measure_frame`) on each validation frame as it is, and 1:1 on a black screen "
             "with a scanner's text (`quantize.eval_biometry.on_screen`). The segmenter sees "
             "the image's outline framed at its own aspect ratio where that box covers under "
             "`frame_image_below` of the frame (the device's default); the control row shows "
             "it the whole screen, as the device did before.", "",
             "| shown on | segmenter sees | HC MAD (mm) | measured | head_cut_off | paired "
             "change of the error against its own frame, mm ± SE (> 0: larger) |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        gain, se, n = paired_gain(row["hc"], own, val["hc_csv"])
        change = "-" if row is rows[0] else f"{-gain:+.3f} ± {se:.3f} ({n} frames)"
        mad = "n/a" if row["mad"] is None else f"{row['mad']:.3f}"
        lines.append(f"| {row['screen']} | {row['framing']} | {mad} | {row['n']} | "
                     f"{row['cut_off']} | {change} |")
    lines += ["", "### Slid past the side of the fan", "",
              "Each validation head measured unslid on a 1024x768 screen, then slid "
              f"{', '.join(f'{d:+d}' for d in SLIDES)} px under its own fan "
              "(`quantize.eval_biometry.slid_under_the_fan`: the anatomy moves, the fan "
              "stays, what leaves it is lost). Short: measured over 3% below the unslid head. "
              "The device judges the image's outline; the control, the frame's edge alone.", "",
              "| judged against | slides | measured over 3% short | measured within 1% | "
              "head_cut_off |", "|---|---|---|---|---|"]
    for name, row in slides(model, images, val).items():
        lines.append(f"| {name} | {row['slides']} | {row['short']} | {row['within_1pct']} | "
                     f"{row['cut_off']} |")
    return lines + [""]


def evaluate_all(seed: int, out: Path) -> str:
    """The eval-biometry report (Markdown), per-frame CSV and Bland-Altman plot; returns the
    report. Uses every net whose training has finished (the teacher may still be training)."""
    import csv

    from quantize.eval_biometry import (
        band_table,
        bland_altman,
        paired_gain,
        read_images,
        score,
        table,
        tflite_logits,
        truth_masks,
        worst_band,
    )

    work = work_dir(seed)
    train, val = load_caches(work, seed)
    truths = truth_masks(val)
    kinds = tuple(finished_kinds(work))
    if not any(k != "teacher" for k in kinds):
        return shipped_report(val, truths, seed, out, work, train)
    for kind in kinds:
        convert(work, kind, train)
    rows = evaluate_rows(work, val, truths, kinds=kinds)
    by = {(r["kind"], r["form"]): r for r in rows}
    images = read_images(val, data_dir())
    candidates = [k for k in kinds if k != "teacher"]
    options = {k: evaluate_passes(tflite_paths(work, k)[1], images, val, k) for k in candidates}
    best_kind, choice_note = choose(rows)
    chosen, pass_note = choose_passes(options[best_kind], val["hc_csv"])
    previous = previous_model(val, images)
    shipped = REPO / "models" / "head_segmenter.json"
    screens = screen_lines(shipped, images, val)
    shipped_note = "No model in models/ yet."
    if shipped.exists():
        from quantize.manifest import sha256_file

        man = json.loads(shipped.read_text())
        build_shas = {k: sha256_file(tflite_paths(work, k)[1]) for k in candidates}
        same = [k for k, sha in build_shas.items() if sha == man["sha256"]]
        shipped_note = (f"models/head_segmenter.tflite ({man['version']}) is this build's int8 "
                        f"{same[0]}." if same else
                        f"models/head_segmenter.tflite ({man['version']}) is not one of this "
                        "build's nets (an earlier release): it is measured below as the "
                        "release to beat.")
    ref = val["hc_csv"]
    out.mkdir(parents=True, exist_ok=True)
    pairs = np.array([(h, r) for h, r in zip(chosen["hc"], ref, strict=True) if h is not None])
    if len(pairs) < 3:
        raise ValueError(f"{best_kind}: measured only {len(pairs)} validation heads; no "
                         "Bland-Altman plot")
    ba = bland_altman(pairs[:, 0], pairs[:, 1], out / "bland_altman.png",
                      f"{best_kind} int8, {chosen['option']}: validation HC vs CSV, "
                      f"n={len(pairs)}")
    check = seg_data.mask_check(train)
    check_val = seg_data.mask_check(val)
    patients = sorted({str(n).split("_")[0] for n in val["name"]})
    t32 = by.get(("teacher", "fp32"))
    # Threshold sweep, one pass: the threshold only moves the bias, if it is the cause.
    logits = tflite_logits(tflite_paths(work, best_kind)[1], seg_data.device_inputs(val))
    sweep = []
    for threshold in THRESHOLD_SWEEP:
        sc = score(logits, val, truths, threshold).summary(ref)
        sweep.append(f"{threshold:g}: {sc['hc_mad_mm']:.3f} mm (bias {sc['hc_bias_mm']:+.2f})")
    option_lines = ["| net | passes | model runs | HC MAD (mm) | bias (mm) | measured | worst "
                    "HC band (mm) | gain over models/, paired (mm ± SE) | ms per frame, median"
                    " / p90 (2 threads) |",
                    "|---|---|---|---|---|---|---|---|---|"]

    def gain_over_previous(hc: list) -> str:
        if previous is None:
            return "-"
        gain, se, n = paired_gain(hc, previous["hc"], ref)
        return f"{gain:+.3f} ± {se:.3f} ({n} frames)"

    if previous is not None:
        band, worst = worst_band(previous["bands"])
        option_lines.append(f"| models/ {previous['version']} | its own | - | "
                            f"{previous['hc_mad_mm']:.3f} | - | {previous['measured']}/"
                            f"{len(ref)} | {band}: {worst:.2f} | 0 | "
                            f"{previous['ms_median']:.2f} |")
    for k, opts in options.items():
        for o in opts:
            band, worst = worst_band(o["bands"])
            option_lines.append(
                f"| {k} int8 | {o['option']} | {o['passes'].runs()} | {o['hc_mad_mm']:.3f} | "
                f"{o['hc_bias_mm']:+.2f} | {o['measured']}/{len(ref)} | {band}: {worst:.2f} | "
                f"{gain_over_previous(o['hc'])} | {o['ms_median']:.2f} / {o['ms_p90']:.2f} |")
    named = ([(f"models/ {previous['version']}", previous["bands"])] if previous else []) + [
        (f"{best_kind} {o['option']}", o["bands"]) for o in options[best_kind]]
    per_frame = out / "per_frame.csv"
    with open(per_frame, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        cols = [f"{k} {o['option']}" for k, opts in options.items() for o in opts]
        writer.writerow(["filename", "patient", "pixel_mm", "hc_csv_mm"]
                        + (["previous_hc_mm"] if previous else []) + [f"{c} hc_mm" for c in cols]
                        + [f"{c} status" for c in cols])
        for i, name in enumerate(val["name"]):
            hcs = [o["hc"][i] for opts in options.values() for o in opts]
            writer.writerow([str(name), str(name).split("_")[0], f"{val['pixel_mm'][i]:.6f}",
                             f"{ref[i]:.2f}"]
                            + ([previous["hc"][i] and f"{previous['hc'][i]:.2f}"]
                               if previous else [])
                            + [h and f"{h:.2f}" for h in hcs]
                            + [o["status"][i] for opts in options.values() for o in opts])
    big = next(r for r in chosen["bands"] if r["band"] == "240 and over")
    big_past_edge = int(np.count_nonzero(val["past_edge"][ref >= 240]))
    mid = next(r for r in chosen["bands"] if r["band"] == "100-200")
    lines = [
        "# Head biometry on validation patients",
        "",
        f"{len(val['name'])} HC18 frames of {len(patients)} validation patients (never trained "
        f"or calibrated on; `quantize.data.split` seed {seed}, a hash per patient). Device "
        "path: whole frame -> grey_resized + normalise (160x240) -> .tflite "
        "(edge.models.runtime) -> sigmoid -> edge.models.biometry. Dice/IoU/pixel accuracy: "
        "device mask (bilinear upsample to the frame, >= 0.5) vs the filled annotation "
        "ellipse, full resolution, mean over frames. Ellipse Dice: the device's fitted "
        "ellipse, filled, vs the annotation ellipse, mean over the frames it measured (HC18's "
        "challenge scores submitted ellipses this way). HC MAD ± sd: mean ± sd of |device HC - "
        "CSV HC| over the frames the device measured (HC measured column). Latency: median of "
        "200 invokes, ai-edge-litert XNNPACK, 2 threads, this run. Nets trained so far: "
        f"{', '.join(kinds)}" + (f" (not finished: {', '.join(k for k in KINDS if k not in kinds)})"
                                 if len(kinds) < len(KINDS) else "") + ".",
        "",
        "## One pass (the net alone)",
        "",
        table(rows),
        "",
        "Speed at 2 threads, same run: " + ("; ".join(
            f"{k} int8 {by[(k, 'int8')]['latency_ms']:.2f} ms vs teacher fp32 "
            f"{t32['latency_ms']:.2f} ms = "
            f"{t32['latency_ms'] / by[(k, 'int8')]['latency_ms']:.1f}x faster"
            for k in candidates) if t32 else "teacher not finished") + ".",
        "Distillation: " + ("; ".join(distillation_verdicts(by)) or "not judged yet (the "
                            "teacher or the distilled student has not finished)") + ".",
        f"Choice of net: {choice_note}.",
        "",
        "## Passes of the device's measurement (edge.models.biometry.Passes)",
        "",
        "Each option is the device's whole measure_frame on the full validation frames: "
        "'flip' also runs the mirrored frame and averages the logits; 'crop' runs a second "
        f"pass on the head's box plus {CROP_MARGIN:g} of its size each side (kept at the "
        f"model's aspect ratio, magnifying the frame at most {CROP_MAX_ZOOM:g}x, the "
        "largest scale of the training augmentation) and measures there. ms = wall clock "
        "of the whole measurement per frame at 2 threads on this box, this run (`make "
        "bench` times the same on the device path).",
        "",
        "\n".join(option_lines),
        "",
        "Gain over models/: the mean of |its HC error| - |this option's| over the frames both "
        "measure, and the standard error of that mean. Nets trained alike differ by a few "
        "hundredths of a mm here, so a gain under two standard errors is not a gain; the "
        "build ships neither a new release nor a costlier pass on less "
        "(quantize.eval_biometry.clearly_better).",
        "",
        f"Chosen passes for {best_kind}: {pass_note}.",
        "",
        *screens,
        "## HC error by HC band and by pixel size",
        "",
        "MAD (bias) in mm over the measured frames of each band, and the same error in model "
        "pixels of radius (|HC error| / 2 pi / size of one model pixel in mm).",
        "",
        band_table(named),
        "",
        f"Why big heads err: heads of 240 mm and more have {big['n']} frames here with a mean "
        f"pixel of {big['pixel_mm']:.3f} mm, against {mid['pixel_mm']:.3f} mm for 100-200 mm "
        f"heads. In model pixels their error is {fmt_px(big)} against {fmt_px(mid)}: the net "
        "places the boundary equally well on every head, and one model pixel (3.3 frame "
        "pixels) simply spans more millimetres on a zoomed-out frame. The threshold is not "
        "the cause (one pass, int8, threshold: HC MAD) " + "; ".join(sweep) + "; nor is the "
        "ellipse fit (the perfect target gives "
        f"{check_val['target_mean_abs_mm']:.3f} mm), and {big_past_edge} of the validation "
        "heads of 240 mm and more run past the frame edge.",
        "",
        shipped_note,
        f"Bland-Altman ({best_kind} int8, {chosen['option']}, n={ba['n']}): bias "
        f"{ba['bias_mm']:+.2f} mm, sd {ba['sd_mm']:.2f} mm, 95% limits {ba['loa_mm'][0]:+.2f} "
        f"to {ba['loa_mm'][1]:+.2f} mm -> {out / 'bland_altman.png'}",
        f"Masks: fitted-ellipse HC vs CSV, train {check['n']} frames mean |diff| "
        f"{check['mean_abs_mm']:.3f} mm (max {check['max_abs_mm']:.3f}); validation "
        f"{check_val['n']} frames {check_val['mean_abs_mm']:.3f} mm (max "
        f"{check_val['max_abs_mm']:.3f}); ellipses past the frame edge: "
        f"{check['past_edge']} train, {check_val['past_edge']} validation (kept). The "
        "device's HC of the perfect 160x240 target (area coverage as the probability map): "
        f"mean |diff| to the CSV {check_val['target_mean_abs_mm']:.3f} mm on "
        f"{check_val['target_measured']}/{check_val['n']} validation frames, the floor of the "
        "method.",
        f"Statuses ({best_kind} int8, {chosen['option']}): " + json.dumps(chosen["statuses"]),
        f"Per frame: {per_frame}",
        "",
        *seen_heads_lines(tflite_paths(work, best_kind)[1], train, val,
                          next(o for o in options[best_kind] if o["option"] == "one pass")
                          ["bands"], f"{best_kind} int8"),
        f"## Validation patients ({len(patients)})",
        "",
        "HC18 patient numbers (the number before the first `_` of the file name): "
        + ", ".join(patients) + ".",
    ]
    report = "\n".join(lines) + "\n"
    (out / "report.md").write_text(report)
    return report


def shipped_report(val: dict, truths: list, seed: int, out: Path, work: Path,
                   train: dict | None = None) -> str:
    """The report for a checkout without a build: the segmenter in models/ alone, so that
    the figures a release claims can be checked in minutes, not after `make models`."""
    from edge.models.biometry import passes_for_model
    from edge.models.manifest import read_manifest
    from quantize.eval_biometry import (
        HC_BANDS,
        band_table,
        fmt,
        read_images,
        score,
        tflite_logits,
    )

    shipped = REPO / "models" / "head_segmenter.json"
    if not shipped.is_file():
        raise FileNotFoundError(f"{work}: no finished segmenter and no {shipped} "
                                "(run `make models` first)")
    manifest = read_manifest(shipped)
    shape = tuple(manifest.raw["input"]["shape"][-2:])
    if shape != (seg_data.SPEC.height, seg_data.SPEC.width):
        raise ValueError(f"{shipped}: input {shape} is not the validation cache's "
                         f"{(seg_data.SPEC.height, seg_data.SPEC.width)}")
    ref = val["hc_csv"]
    one = score(tflite_logits(manifest.model_path, seg_data.device_inputs(val)), val,
                truths).summary(ref)
    images = read_images(val, data_dir())
    options = evaluate_passes(manifest.model_path, images, val, "models/")
    one_pass = next(o for o in options if o["option"] == "one pass")
    patients = sorted({str(n).split("_")[0] for n in val["name"]})
    rows = ["| passes | model runs | HC MAD (mm) | bias (mm) | measured | HC bands under 100 / "
            "100-200 / 200-300 / over 300 (mm) | ms per frame, median / p90 (2 threads) |",
            "|---|---|---|---|---|---|---|"]
    for o in options:
        bands = {r["band"]: r["mad_mm"] for r in o["bands"] if r["by"] == "HC"}
        rows.append(f"| {o['option']} | {o['passes'].runs()} | {o['hc_mad_mm']:.3f} | "
                    f"{o['hc_bias_mm']:+.2f} | {o['measured']}/{len(ref)} | " + " / ".join(
                        fmt(bands.get(name), 2) for _, _, name in HC_BANDS[:4]) +
                    f" | {o['ms_median']:.2f} / {o['ms_p90']:.2f} |")
    lines = [
        f"# Head biometry on validation patients: models/ {manifest.ident}",
        "",
        f"No segmenter has been trained in {work} (`make models` builds and compares them), "
        "so this report measures only the shipped segmenter. "
        f"{len(val['name'])} HC18 frames of {len(patients)} validation patients (never trained "
        f"or calibrated on; `quantize.data.split` seed {seed}, a hash per patient), through "
        "the device's own path (grey_resized + normalise -> .tflite -> "
        "edge.models.biometry).",
        "",
        f"One pass, int8: mask Dice {one['dice']:.4f} (lowest {one['dice_min']:.3f}), "
        f"ellipse Dice {fmt(one['ellipse_dice'], 4)} over {one['ellipse_dice_n']} frames, "
        f"HC MAD {fmt(one['hc_mad_mm'], 3)} mm (bias {fmt(one['hc_bias_mm'], 2)}) over "
        f"{one['hc_n']} measured, statuses {json.dumps(one['statuses'])}.",
        "",
        "## Passes of the device's measurement (edge.models.biometry.Passes)",
        "",
        "\n".join(rows),
        "",
        f"The manifest's own passes (what an exam's kept heads get): "
        f"{passes_for_model(manifest)}.",
        "",
        "## HC error by HC band and by pixel size",
        "",
        band_table([(f"models/ {o['option']}", o["bands"]) for o in options]),
        "",
        *([] if train is None else seen_heads_lines(
            manifest.model_path, train, val, one_pass["bands"], f"models/ {manifest.ident}")),
        f"## Validation patients ({len(patients)})",
        "",
        "HC18 patient numbers: " + ", ".join(patients) + ".",
    ]
    out.mkdir(parents=True, exist_ok=True)
    report = "\n".join(lines) + "\n"
    (out / "report.md").write_text(report)
    return report


def seen_heads_lines(model_path: Path, train: dict, val: dict, val_bands: list[dict],
                     label: str) -> list[str]:
    """The net, one pass through the device's measure_frame, on the training patients it
    learned from, band by band beside the validation patients: a band that errs as much on
    heads the net was trained on is at the floor of the method and the labels, not short
    of generalisation, and a bias is a bias only beyond its standard error."""
    from edge.models.biometry import Passes
    from quantize.eval_biometry import (
        HC_BANDS,
        band_stats,
        device_model,
        measure_with_passes,
        read_images,
    )

    images = read_images(train, data_dir())
    hc, _, _ = measure_with_passes(device_model(model_path, 2), images, train["pixel_mm"],
                                   Passes())
    seen = band_stats(hc, train["hc_csv"], train["pixel_mm"], train["frame_hw"][:, 1],
                      seg_data.SPEC.width)

    def cell(row: dict) -> str:
        if row["mad_mm"] is None:
            return "n/a"
        se = "" if row["bias_se_mm"] is None else f" ± {row['bias_se_mm']:.2f}"
        return (f"{row['measured']} | {row['mad_mm']:.2f} | {row['bias_mm']:+.2f}{se} | "
                f"{row['mad_pct_of_hc']:.2f}%")

    rows = ["| HC band | training: frames | MAD mm | bias mm ± SE | MAD % of HC | validation: "
            "frames | MAD mm | bias mm ± SE | MAD % of HC |", "|---|" + "---|" * 8]
    by_name = {(r["by"], r["band"]): r for r in seen}
    val_by = {(r["by"], r["band"]): r for r in val_bands}
    for _, _, name in HC_BANDS[:4]:
        rows.append(f"| {name} | {cell(by_name[('HC', name)])} | "
                    f"{cell(val_by[('HC', name)])} |")
    err = [h - r for h, r in zip(hc, train["hc_csv"], strict=True) if h is not None]
    return [f"## {label} on the heads it was trained on", "",
            f"One pass, int8, on the {len(hc)} training frames: HC MAD "
            f"{np.mean(np.abs(err)):.3f} mm over {len(err)} measured. Band by band beside "
            "the validation patients: where a band errs as much on heads the net learned, "
            "its error is the method's and the labels' spread at that pixel size, not a "
            "failure to generalise; a bias is one only beyond two standard errors.", "",
            *rows, ""]


def fmt_px(row: dict) -> str:
    return ("n/a" if row["radius_model_px"] is None
            else f"{row['radius_model_px']:.2f} model px of radius ({row['mad_mm']:.2f} mm)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quantize.biometry_report",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    try:
        report = evaluate_all(args.seed, args.out)
    except (seg_data.DataError, FileNotFoundError, ValueError) as exc:
        print(f"biometry_report: {exc}", file=sys.stderr)
        return 2
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
