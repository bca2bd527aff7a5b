"""`make models` (quality head): views -> train -> held-out views -> convert -> gate ->
evaluate -> manifest, writing models/quality_head.tflite and models/quality_head.json.

Every step caches its result under build/quality_head/seed<seed>/ and is skipped when it
is already there (training resumes from its checkpoint), so an interrupted run resumes
where it stopped. The shipped files are written only after the quantization gate passes.
About 20 minutes on one thread of the build box (views 4-10 min, training 10-15 min).

    python -m quantize.build_quality_head [--seed 0] [--until STEP] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from quantize import quality_head as qh
from quantize.data import DataError, data_dir, list_frames, split
from quantize.degrade import KINDS, SEVERITY_ONE
from quantize.specs import device_spec

REPO = Path(__file__).resolve().parents[1]
STEPS = ("views", "train", "heldout", "convert", "gate", "manifest")
NAME = "quality_head"
VERSION = "1.1.0"
N_CALIBRATION = 512
# Gate: the int8 head must estimate the severities as its fp32 self does.
GATE_MAX_MEAN_ABS = 0.03  # mean |severity int8 - fp32| per branch, held-out views
GATE_MAX_SPEARMAN_DROP = 0.02  # per branch, fp32 minus int8
GATE_MAX_AUROC_DROP = 0.01
GATE_WHY = ("int8 rounds each logit to a step of its output scale (about 0.05 here); over "
            "the held-out views the severities must stay within 0.03 of the fp32 head's on "
            "average per branch, and neither a branch's Spearman nor the usable/unusable "
            "AUROC may fall by more than 0.02 / 0.01, so quantization cannot change what "
            "the device tells the midwife unnoticed")


def tflite_severities(path: Path, views: np.ndarray) -> np.ndarray:
    from quantize.convert import run_tflite

    return 1 / (1 + np.exp(-run_tflite(path, qh.inputs(views))))


def convert(work: Path, net: torch.nn.Module, pool: dict, seed: int) -> tuple[Path, Path, str]:
    """fp32 and int8 .tflite of the trained head; reused only for the same checkpoint."""
    from quantize.convert import export_fp32, quantize_int8

    ckpt = qh.checkpoint_path(work)
    fp32, int8 = work / f"{NAME}_fp32.tflite", work / f"{NAME}_int8.tflite"
    stamp, note = int8.with_suffix(".from"), int8.with_suffix(".calibration.txt")
    made_from = f"{ckpt.name} {ckpt.stat().st_mtime_ns}"
    if not (int8.exists() and stamp.exists() and stamp.read_text() == made_from):
        export_fp32(net, (1, 1, qh.SPEC.height, qh.SPEC.width), fp32)
        pick = np.sort(np.random.default_rng([seed, 11]).permutation(len(pool["x"]))
                       [:N_CALIBRATION])
        calib = [x[None] for x in qh.inputs(pool["x"][pick])]
        quantize_int8(fp32, calib, int8)
        clean = int((pool["y"][pick].max(1) == 0).sum())
        note.write_text(f"{len(pick)} training views drawn with seed {seed} from the "
                        f"{len(pool['x'])} cached ones ({clean} clean, the rest with 1-2 "
                        "faults), real frames of training patients through find_roi + "
                        "grey_resized + unit scaling; true min/max activation ranges; no "
                        "held-out frame")
        stamp.write_text(made_from)
    return fp32, int8, note.read_text()


def gate(m32: dict, m8: dict, p32: np.ndarray, p8: np.ndarray) -> dict:
    diff = np.abs(p8 - p32).mean(0)
    drops = {k: m32["spearman"][k] - m8["spearman"][k] for k in KINDS}
    auroc_drop = m32["auroc"] - m8["auroc"]
    failures = [f"{k}: mean |int8 - fp32| {d:.3f} > {GATE_MAX_MEAN_ABS}"
                for k, d in zip(KINDS, diff, strict=True) if d > GATE_MAX_MEAN_ABS]
    failures += [f"{k}: Spearman drop {d:.3f} > {GATE_MAX_SPEARMAN_DROP}"
                 for k, d in drops.items() if d > GATE_MAX_SPEARMAN_DROP]
    if auroc_drop > GATE_MAX_AUROC_DROP:
        failures.append(f"AUROC drop {auroc_drop:.3f} > {GATE_MAX_AUROC_DROP}")
    return {"metric": "int8 vs fp32 head (both .tflite through edge.models.runtime) on every "
                      "held-out view: mean |severity difference| per branch, Spearman and "
                      "AUROC drops",
            "mean_abs_difference": {k: round(float(d), 4) for k, d in zip(KINDS, diff,
                                                                          strict=True)},
            "spearman_drop": {k: round(float(d), 4) for k, d in drops.items()},
            "auroc_drop": round(float(auroc_drop), 4), "n": int(len(p8)),
            "max_mean_abs_difference": GATE_MAX_MEAN_ABS,
            "max_spearman_drop": GATE_MAX_SPEARMAN_DROP,
            "max_auroc_drop": GATE_MAX_AUROC_DROP, "why": GATE_WHY,
            "passed": not failures, "failures": failures}


def head_path_ms(model_path: Path, frames: list, threads: int = 2) -> float:
    """Median ms per frame of what the head adds on the device, given the region the plane
    model already found: prepare (crop, grey, resize, scale) + int8 quantize + invoke +
    dequantize + sigmoid, over real held-out frames (decode and find_roi excluded)."""
    from edge.models.preprocess import prepare
    from edge.models.roi import find_roi
    from edge.models.runtime import open_model_file
    from quantize.data import read_frame

    model = open_model_file(model_path, "litert", threads)
    images = [read_frame(f.path) for f in frames]
    rois = [find_roi(image) for image in images]
    times = []
    for rep in range(4):
        for image, roi in zip(images, rois, strict=True):
            start = time.perf_counter()
            1 / (1 + np.exp(-model.run(prepare(image, roi, device_spec(qh.SPEC)))))
            if rep:
                times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


SCREEN = (1024, 768)
SLIDES_PX = (100, 200)
CUT_SEVERITIES = (0.5, 1.0)


def screen_cutoffs(model_path: Path, frames: list, seed: int, threads: int = 2) -> dict:
    """The cut-off branch where the midwife meets it: every held-out head shown 1:1 on a
    1024x768 screen with a scanner's text, clean, cut by `quantize.degrade.cutoff` left
    and right, and slid sideways under its fan with the uncovered part left black
    (`quantize.eval_biometry.slid_under_the_fan`, a cut made by another function). Each
    through the device path; per set the share the audit's `sector_cut` rule fails, and
    the AUROC of its severities against the clean heads'."""
    from edge.models.preprocess import prepare
    from edge.models.quality import load_rules
    from edge.models.roi import find_roi, to_grey
    from edge.models.runtime import open_model_file
    from quantize.data import read_frame
    from quantize.degrade import degrade
    from quantize.eval_biometry import on_screen, slid_under_the_fan
    from quantize.quality_head import auroc

    rule = next(r for r in load_rules().criteria if r.measure == "learned:cutoff")
    model = open_model_file(model_path, "litert", threads)
    branch = KINDS.index("cutoff")
    rng = np.random.default_rng([seed, 23])

    def severity(grey: np.ndarray) -> float:
        logits = model.run(prepare(grey, find_roi(grey), device_spec(qh.SPEC))).reshape(-1)
        return float(1 / (1 + np.exp(-logits[branch])))

    found: dict[str, list[float]] = {}
    heads = [f for f in frames if f.source == "hc18"]
    for f in heads:
        grey = to_grey(read_frame(f.path))  # greyed once: the screen and the slides read it
        screen = to_grey(on_screen(grey, *SCREEN))
        roi = find_roi(screen)
        found.setdefault("clean", []).append(severity(screen))
        for s in CUT_SEVERITIES:
            for direction in ("left", "right"):
                cut = degrade(screen, roi, "cutoff", s, rng, direction=direction)
                found.setdefault(f"cut {s:g}", []).append(severity(cut))
        for px in SLIDES_PX:
            for dx in (-px, px):
                found.setdefault(f"slid {px} px, black", []).append(
                    severity(slid_under_the_fan(grey, dx, SCREEN)))
    clean = found["clean"]

    def against_clean(values: list[float]) -> float:
        scores = np.asarray(values + clean)
        return round(auroc(scores, np.arange(len(scores)) < len(values)), 4)

    out = {k: {"n": len(v), "median": round(float(np.median(v)), 3),
               "fails": round(float(np.mean(np.asarray(v) > rule.max)), 3),
               **({} if k == "clean" else {"auroc_vs_clean": against_clean(v)})}
           for k, v in found.items()}
    out["rule_max"] = rule.max
    return out


def table(m8: dict, m32: dict) -> str:
    lines = ["| branch | Spearman int8 | Spearman fp32 | views (fault alone + clean) | "
             "AUROC of max severity, this fault severe vs usable |",
             "|---|---|---|---|---|"]
    for k in KINDS:
        lines.append(f"| {k} | {m8['spearman'][k]:.3f} | {m32['spearman'][k]:.3f} | "
                     f"{m8['n_single'][k]} + {m8['n_clean']} | {m8['auroc_by_fault'][k]:.3f} |")
    op = m8["operating_point"]
    lines += ["", f"AUROC usable vs unusable (int8): {m8['auroc']:.3f} (fp32 "
              f"{m32['auroc']:.3f}); {m8['n_usable']} usable, {m8['n_unusable']} unusable "
              f"views; Youden point: max severity >= {op['threshold']:.3f} -> sensitivity "
              f"{op['sensitivity']:.3f}, specificity {op['specificity']:.3f}", "",
              "Cross-talk (int8): Spearman of each branch (columns) with the applied severity "
              "of one fault alone (rows), fault-alone + clean views:", "",
              "| applied \\ branch | " + " | ".join(KINDS) + " |",
              "|---|" + "---|" * len(KINDS)]
    for k in KINDS:
        lines.append(f"| {k} | " + " | ".join(f"{m8['cross'][k][b]:+.2f}" for b in KINDS)
                     + " |")
    return "\n".join(lines)


def manifest(work: Path, net: torch.nn.Module, pool: dict, ev: dict, held: list,
             train_frames: list, m8: dict, m32: dict, gate_result: dict, calibration: str,
             paths: tuple[Path, Path], seed: int, head_ms: float,
             screens: dict) -> dict:
    from quantize.macs import count_macs, count_params
    from quantize.manifest import latency_how, median_latency_ms

    fp32, int8 = paths
    spec = qh.SPEC
    shape = [1, 1, spec.height, spec.width]
    cmd = f"python -m quantize.build_quality_head --seed {seed}"
    n_frames = len(held)
    by_src: dict[str, int] = {}
    for f in held:
        by_src[f.source] = by_src.get(f.source, 0) + 1
    groups = len({f.group for f in held})
    where = (f"{n_frames} held-out real frames ({by_src.get('hc18', 0)} HC18 + "
             f"{by_src.get('planes', 0)} FETAL_PLANES_DB) of {groups} patients never trained "
             f"or calibrated on (quantize.data.split seed {seed}); each fault applied at full "
             "resolution inside the clean frame's find_roi region (quantize.degrade), then "
             "the device path: find_roi on the degraded frame + grey_resized + unit scaling "
             "+ this int8 .tflite via edge.models.runtime, severity = sigmoid(logit)")
    spear_how = (f"Spearman rho (tie-averaged ranks) between the applied and the estimated "
                 f"severity of this branch over the clean view of every held-out frame "
                 f"(applied 0) and {qh.EVAL_SINGLE} views per frame with this fault alone "
                 f"at seeded severities uniform in 0..1; {where}; `{cmd}`")
    auroc_how = (f"usable = every applied severity <= {qh.USABLE_MAX} (the clean view of "
                 f"each frame, one view with 1-2 faults at {qh.MILD[0]}-{qh.MILD[1]}, and "
                 f"fault-alone views <= {qh.USABLE_MAX}); unusable = some applied severity "
                 f">= {qh.UNUSABLE_MIN} (two views per frame with 1-2 faults, one of them "
                 f"at {qh.UNUSABLE_MIN}-1.0, and fault-alone views >= {qh.UNUSABLE_MIN}); "
                 "views in between are left out; score = the largest of the six estimated "
                 f"severities; AUROC by Mann-Whitney U, ties half; {where}; `{cmd}`")

    def m(value, how, **extra):
        return {"value": value, "how": how, **extra}

    lat = {}
    for label, path in (("int8", int8), ("fp32", fp32)):
        for threads in (1, 2):
            lat[f"latency_ms_{label}_{threads}t"] = m(
                round(median_latency_ms(path, threads), 3),
                latency_how(threads, f"`{cmd}`"))
    op = m8["operating_point"]
    metrics = {f"heldout_spearman_{k}": m(round(m8["spearman"][k], 4), spear_how,
                                          n=m8["n_single"][k] + m8["n_clean"],
                                          fp32=round(m32["spearman"][k], 4))
               for k in KINDS}
    metrics.update({
        "heldout_auroc_usable_vs_unusable": m(
            round(m8["auroc"], 4), auroc_how, n_usable=m8["n_usable"],
            n_unusable=m8["n_unusable"], fp32=round(m32["auroc"], 4),
            by_fault={k: round(v, 4) for k, v in m8["auroc_by_fault"].items()},
            by_fault_how=("the same AUROC with only the unusable views where this fault is "
                          f">= {qh.UNUSABLE_MIN}")),
        "heldout_operating_point": m(
            round(op["threshold"], 3),
            "the max-severity threshold with the largest sensitivity + specificity - 1 "
            "(Youden) on the same usable/unusable views; chosen on the held-out views, so "
            "slightly optimistic",
            sensitivity=round(op["sensitivity"], 4), specificity=round(op["specificity"], 4)),
        "heldout_cross_talk": m(
            {k: {b: round(v, 3) for b, v in row.items()} for k, row in m8["cross"].items()},
            "Spearman of each branch (inner keys) with the applied severity of one fault "
            "alone (outer keys), same views as the per-branch Spearman: off-diagonal values "
            "are branches answering to another fault"),
        "head_path_ms_2t": m(
            round(head_ms, 3),
            "median per frame over held-out frames of what the head adds on the device "
            "given the plane model's find_roi region: prepare + int8 quantize + invoke + "
            "dequantize + sigmoid, 2 threads; decode and find_roi excluded"),
        "heldout_cutoff_on_screen": m(
            screens, "the cut-off branch on every held-out HC18 head shown 1:1 on a "
            f"{SCREEN[0]}x{SCREEN[1]} screen with a scanner's text: clean; cut left and right "
            f"at severities {list(CUT_SEVERITIES)} (quantize.degrade.cutoff on the screen's "
            "region); and slid sideways by "
            f"{list(SLIDES_PX)} px each way under its fan with the uncovered part black "
            "(quantize.eval_biometry.slid_under_the_fan, a cut the head never trained on). "
            "fails = the share over the audit's sector_cut max (rule_max); each through "
            "find_roi + grey_resized + this int8 .tflite; auroc_vs_clean: of each set's "
            f"severities against the clean heads'; `{cmd}`"),
        "size_bytes": m(int8.stat().st_size, "size of the .tflite"),
        **lat,
    })
    severity = {}
    for k in KINDS:
        severity[k] = {**SEVERITY_ONE[k],
                       "severity": "sigmoid(logit) in 0..1: 0 = clean, 1 = as at_1",
                       "metrics": {"heldout_spearman": metrics[f"heldout_spearman_{k}"]}}
    # The held-out evidence beside the branches, as the brief for the head asked: every
    # branch's Spearman and the usable/unusable AUROC, each with how it was measured.
    severity["metrics"] = {key: metrics[key] for key in
                           [f"heldout_spearman_{k}" for k in KINDS]
                           + ["heldout_auroc_usable_vs_unusable"]}
    state = torch.load(qh.checkpoint_path(work), weights_only=False)
    by_train: dict[str, int] = {}
    for f in train_frames:
        by_train[f.source] = by_train.get(f.source, 0) + 1
    src, counts = np.unique(pool["source"], return_counts=True)
    return {
        "manifest_version": 1, "name": NAME, "version": VERSION, "task": "quality_regression",
        "file": f"{NAME}.tflite", "sha256": "", "size_bytes": 0, "labels": list(KINDS),
        "input": {"shape": shape, "dtype": "int8", "layout": "NCHW"},
        "output": {"shape": [1, len(KINDS)], "dtype": "int8", "kind": "logits"},
        "preprocessing": device_spec(spec).to_dict(),
        "thresholds": {"usable_max_severity": qh.USABLE_MAX,
                       "unusable_min_severity": qh.UNUSABLE_MIN},
        "severity": severity,
        "quantization": {
            "scheme": "ai-edge-quantizer 0.10.0 static_wi8_ai8 (int8 weights and "
                      "activations, int8 input and output)",
            "calibration": calibration, "gate": gate_result},
        "architecture": {"family": describe_arch(), "params": count_params(net),
                         "macs": count_macs(net, tuple(shape))},
        "metrics": metrics,
        "training": {
            "targets": "the applied severity of each fault (0 where not applied); loss = "
                       "binary cross-entropy on sigmoid(logit) per branch, mean over branches",
            "views": (f"{len(pool['x'])} cached views ("
                      + ", ".join(f"{n} of {s}" for s, n in zip(src, counts, strict=True))
                      + "): per view 0 faults (20%), 1 (48%) or 2 (32%) at severities "
                      "uniform in 0..1, applied in the physical order zoom, cut-off, shadow, "
                      "blur, noise, gain, then the device path (find_roi on the degraded "
                      "frame, grey_resized 96x128); left-right mirrored at random while "
                      "training; see quantize/quality_head.py"),
            "settings": state["settings"], "steps": state["step"],
            "minutes": round(state["minutes"], 1), "log": state["log"][-3:]},
        "training_data": [
            {"name": "HC18 training-set subset (fetal head), training patients",
             "frames": by_train.get("hc18", 0),
             "licence": "CC BY 4.0 upstream (not stated in the copying repo)",
             "split": f"train; {by_src.get('hc18', 0)} frames of other patients held out"},
            {"name": "HC18 test set, unlabelled heads (always train)",
             "frames": by_train.get("hc18_test", 0),
             "licence": "CC BY 4.0 upstream (not stated in the copying repo)"},
            {"name": "FETAL_PLANES_DB subset + MFM_AI umbilical-cord session (planes/)",
             "frames": by_train.get("planes", 0),
             "licence": "FETAL_PLANES_DB CC BY 4.0 upstream; MFM_AI repo GPL-3.0",
             "split": f"train; {by_src.get('planes', 0)} frames of other patients held out"},
            {"name": "SonoNet-16 example planes (always train)",
             "frames": by_train.get("examples", 0), "licence": "Apache-2.0"}],
        "limitations": [
            "severities are of faults simulated on clean real frames: the head has never "
            "seen a truly mis-gained or shadowed acquisition, and a frame that is naturally "
            "dark, small or soft scores above 0 on that branch",
            "zoom: the wider field of a zoomed-out view is synthetic featureless speckle "
            "(quantize.degrade.tissue); a real zoomed-out view shows real tissue there",
            "cut-off: what comes in behind the slid anatomy is simulated (the frame's own "
            "far side, synthetic speckle, or black, at random); a real probe shows the "
            "real tissue beside the view, which no frame here holds. On a screen the head "
            "tells a cut with nothing behind it from a clean head less well than the "
            "others (heldout_cutoff_on_screen)"],
        "licences": {"model": "Apache-2.0",
                     "notes": ("Weights trained from scratch here on real frames with "
                               "simulated faults: HC18 (van den Heuvel et al., PLoS ONE "
                               "13(8) e0200412, 2018; Zenodo 10.5281/zenodo.1327317), "
                               "FETAL_PLANES_DB (Burgos-Artizzu et al. 2020, Zenodo "
                               "10.5281/zenodo.3904280), Eric43/MFM_AI cord frames (GPL-3.0 "
                               "repository) and the 13 SonoNet example frames (Apache-2.0). "
                               "No image is shipped.")},
    }


def describe_arch() -> str:
    return qh.describe()


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    started = time.time()
    work = qh.work_dir(args.seed)
    work.mkdir(parents=True, exist_ok=True)
    frames = list_frames(data_dir())
    train_frames, held = split(frames, seed=args.seed)
    print(f"frames: {len(train_frames)} train, {len(held)} held-out by patient")
    pool = qh.build_pool(train_frames, work / "pool", args.seed)
    print(f"views: {len(pool['x'])} training views")
    if args.until == "views":
        return 0
    settings = qh.TrainSettings() if args.steps is None else qh.TrainSettings(steps=args.steps)
    net = qh.train(pool, work, args.seed, settings)
    if args.until == "train":
        return 0
    ev = qh.build_eval(held, work / "heldout.npz", args.seed)
    print(f"held-out views: {len(ev['x'])} from {len(held)} frames")
    if args.until == "heldout":
        return 0
    fp32, int8, calibration = convert(work, net, pool, args.seed)
    if args.until == "convert":
        return 0
    p32, p8 = tflite_severities(fp32, ev["x"]), tflite_severities(int8, ev["x"])
    m32, m8 = qh.evaluate(p32, ev), qh.evaluate(p8, ev)
    result = gate(m32, m8, p32, p8)
    print(f"gate: {json.dumps({k: v for k, v in result.items() if k != 'why'})}")
    print(table(m8, m32))
    if not result["passed"]:
        print(f"quantize gate FAILED: {'; '.join(result['failures'])}", file=sys.stderr)
        return 1
    if args.until == "gate":
        return 0
    from quantize.manifest import finish

    ms = head_path_ms(int8, held[:: max(1, len(held) // 40)])
    screens = screen_cutoffs(int8, held, args.seed)
    print(f"cut-off on a screen: {json.dumps(screens)}")
    man = manifest(work, net, pool, ev, held, train_frames, m8, m32, result, calibration,
                   (fp32, int8), args.seed, ms, screens)
    args.models.mkdir(parents=True, exist_ok=True)
    dest = args.models / f"{NAME}.tflite"
    tmp = dest.with_suffix(".tmp")
    shutil.copyfile(int8, tmp)
    tmp.replace(dest)
    text = json.dumps(finish(man, dest), indent=2) + "\n"
    (args.models / f"{NAME}.json").write_text(text)
    (work / "report.md").write_text(table(m8, m32) + "\n")
    lat = man["metrics"]
    print(f"shipped {dest} ({dest.stat().st_size} bytes, {man['architecture']['macs'] / 1e6:.1f} "
          f"M MACs; int8 {lat['latency_ms_int8_1t']['value']:.3f} ms at 1 thread, "
          f"{lat['latency_ms_int8_2t']['value']:.3f} ms at 2; head path {ms:.3f} ms) in "
          f"{(time.time() - started) / 60:.1f} min")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quantize.build_quality_head",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="training steps")
    parser.add_argument("--until", choices=STEPS, default="manifest")
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (the other builds usually hold the other core)")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (DataError, FileNotFoundError, ValueError) as exc:
        print(f"build_quality_head: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
