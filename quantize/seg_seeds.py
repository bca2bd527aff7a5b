"""Does distillation beat the plain twin, beyond one run's luck? And does a moving average
of the weights help either?

One build trains each twin once, and the same recipe has measured the plain twin at 1.725
and 1.812 mm in two builds: one run's spread is as large as the gain distillation is asked
to show. This experiment trains both twins again with other training seeds (the weights'
start and the batches; the patient split, the teacher and its cached maps stay the
build's), each also keeping an exponential moving average of its weights, and measures
every net int8 through the device's own `measure_frame` on the validation frames.

    python -m quantize.seg_seeds train KIND SEED [--steps N] [--work DIR] [--threads N]
    python -m quantize.seg_seeds report [--work DIR] [--seeds 1 2] [--long-steps N]
    python -m quantize.seg_seeds long --steps N [--work DIR] [--seeds 0 1]

`long` asks whether the build should train longer: each seed's twins trained N steps
against the same seed's build-length twins, one pass and with the crop pass, each
long distilled twin against its long plain twin and against the shipped segmenter, and
the mask Dice as the build scores its nets. Results go to WORK/seeds/long_N.json.

`--work` is a build's head-segmenter folder (default build/head_segmenter/seed0) with its
teacher, its caches and its own twins (its training seed 0) in tflite/. Results go to
WORK/seeds/results.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from quantize import eval_biometry, seg_data, seg_train
from quantize.args import SEED, STEPS, THREADS
from quantize.data import data_dir, load_npz

EMA_DECAY = 0.998  # averages about the last 500 of 8,000 steps
TWINS = ("deeplab", "deeplab_student")


def seed_dir(work: Path, seed: int, steps: int | None = None) -> Path:
    """Where a seed's twins train; a run longer than the build's has a folder of its own."""
    return work / "seeds" / (f"s{seed}" if steps is None else f"s{seed}_{steps}steps")


def train(kind: str, seed: int, work: Path, steps: int | None = None) -> None:
    # the build's split (seed 0), caches and teacher; only the training seed differs
    if not (work / "train_cache.npz").is_file():
        raise FileNotFoundError(f"{work / 'train_cache.npz'}: not a build's segmenter folder")
    cache, distil = seg_train.training_inputs(work, kind, 0)
    settings = replace(seg_train.settings_for(kind, steps), ema_decay=EMA_DECAY)
    dest = seed_dir(work, seed, steps)
    dest.mkdir(parents=True, exist_ok=True)
    seg_train.train(kind, cache, dest, seed, settings, distil)


def int8_of(work: Path, seed: int, kind: str, ema: bool, train_cache: dict,
            steps: int | None = None) -> Path:
    from quantize.seg_input_size import to_int8

    dest = seed_dir(work, seed, steps)
    net = seg_train.load_trained(dest, kind, ema=ema)
    if net is None:
        raise FileNotFoundError(f"{seg_train.checkpoint_path(dest, kind)}: not trained yet")
    stem = dest / "tflite" / (kind + ("_ema" if ema else ""))
    stem.parent.mkdir(exist_ok=True)
    return to_int8(net, seg_data.SPEC, train_cache, stem)


def build_inputs(work: Path) -> tuple[dict, dict, list, list]:
    """A build's training cache (to calibrate int8), and its validation frames with their
    images and annotated masks, as every report measures its nets on them."""
    train_cache = load_npz(work / "train_cache.npz")
    val = load_npz(work / "val_cache.npz")
    return (train_cache, val, eval_biometry.read_images(val, data_dir()),
            eval_biometry.truth_masks(val))


def worded(g: float, se: float, n: int) -> str:
    """A paired gain as the reports print it: mm ± its standard error, over how many frames."""
    return f"{g:+.3f} ± {se:.3f} ({n} frames)"


def report(work: Path, seeds: list[int], long_steps: int | None = None) -> dict:
    from edge.models.biometry import Passes
    from quantize.seg_input_size import device_measure
    from quantize.specs import device_spec

    train_cache, val, images, truths = build_inputs(work)
    nets: dict[str, Path] = {f"{kind} s0": work / "tflite" / f"{kind}_int8.tflite"
                             for kind in TWINS}
    for seed in seeds:
        for kind in TWINS:
            for ema in (False, True):
                label = f"{kind} s{seed}" + (" ema" if ema else "")
                nets[label] = int8_of(work, seed, kind, ema, train_cache)
    # Runs trained longer than the build's (train --steps), where they have finished.
    longer = []
    if long_steps is not None:
        for seed in seeds:
            for kind in TWINS:
                if seg_train.load_trained(seed_dir(work, seed, long_steps), kind) is not None:
                    label = f"{kind} s{seed} {long_steps} steps"
                    nets[label] = int8_of(work, seed, kind, False, train_cache, long_steps)
                    longer.append((label, f"{kind} s{seed}"))
    # The teacher they learn from, int8 at its own 240x360, for what it has to give.
    nets["teacher s0"] = work / "tflite" / "teacher_int8.tflite"
    measured = {}
    for label, path in nets.items():
        # as the device reads it (half_res_from: a large frame is halved before resizing)
        spec = device_spec(seg_train.kind_spec("teacher" if label.startswith("teacher")
                                               else "deeplab"))
        model = eval_biometry.device_model(path, 2, Passes(), spec)
        measured[label] = device_measure(model, Passes(), images, val, truths)
        print(label, measured[label]["hc_mad_mm"], measured[label]["hc_bands_mm"], flush=True)

    def paired(better: str, worse: str) -> tuple[float, float, int]:
        return eval_biometry.paired_gain(measured[better]["hc"], measured[worse]["hc"],
                                         val["hc_csv"])

    def gain(better: str, worse: str) -> str:
        return worded(*paired(better, worse))

    pairs = {}
    for kind in TWINS:
        pairs[f"teacher over {kind} s0"] = gain("teacher s0", f"{kind} s0")
    distil_gains = []  # distilled over plain, per seed, for the mean over the seeds
    for seed in [0, *seeds]:
        g, se, n = paired(f"deeplab_student s{seed}", f"deeplab s{seed}")
        distil_gains.append(g)
        pairs[f"distilled over plain, s{seed}"] = worded(g, se, n)
        if seed:
            pairs[f"distilled over plain, s{seed} ema"] = gain(f"deeplab_student s{seed} ema",
                                                               f"deeplab s{seed} ema")
            for kind in TWINS:
                pairs[f"{kind} s{seed}: ema over its own weights"] = gain(
                    f"{kind} s{seed} ema", f"{kind} s{seed}")
    for label, base in longer:
        pairs[f"{label} over {base}"] = gain(label, base)
    for m in measured.values():
        del m["hc"]

    def spread(runs: list[str]) -> str:
        mads = [measured[r]["hc_mad_mm"] for r in runs]
        return (f"mean {np.mean(mads):.3f}, from {min(mads):.3f} to {max(mads):.3f} "
                f"({len(mads)} runs)")

    summary = {f"{kind}: HC MAD over seeds 0-{max(seeds)}":
               spread([f"{kind} s{s}" for s in [0, *seeds]]) for kind in TWINS}
    # the moving average against the same runs' own weights (seed 0 kept none)
    summary.update({f"{kind}{' ema' if ema else ''}: HC MAD over seeds {seeds}":
                    spread([f"{kind} s{s}" + (" ema" if ema else "") for s in seeds])
                    for kind in TWINS for ema in (False, True)})
    # The distilled twin's paired gain over the plain twin, averaged over the seeds (its SE
    # from the seeds' spread).
    summary["distilled over plain, mean over seeds (± SE of the seeds)"] = (
        f"{np.mean(distil_gains):+.3f} ± "
        f"{np.std(distil_gains, ddof=1) / np.sqrt(len(distil_gains)):.3f}"
        f" ({len(distil_gains)} seeds)")
    result = {"work": str(work), "ema_decay": EMA_DECAY, "measured": measured,
              "paired": pairs, "summary": summary}
    out = work / "seeds" / "results.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({"paired": pairs, "summary": summary}, indent=1, ensure_ascii=False))
    return result


def build_length_net(work: Path, seed: int, kind: str, train_cache: dict) -> Path | None:
    """The int8 twin trained the build's steps: the build's own for seed 0."""
    if seed == 0:
        return work / "tflite" / f"{kind}_int8.tflite"
    if seg_train.load_trained(seed_dir(work, seed), kind) is None:
        return None
    return int8_of(work, seed, kind, False, train_cache)


def long_report(work: Path, seeds: list[int], steps: int, shipped: Path) -> dict:
    from quantize.seg_input_size import ONE_AND_CROP, one_and_crop

    if not shipped.is_file():  # said before minutes of loading, not after
        raise FileNotFoundError(f"{shipped}: no shipped segmenter there (--shipped)")
    train_cache, val, images, truths = build_inputs(work)
    nets: dict[str, Path] = {"shipped": shipped}
    for seed in seeds:
        for kind in TWINS:
            if seg_train.load_trained(seed_dir(work, seed, steps), kind) is None:
                print(f"{kind} s{seed}: not trained {steps} steps yet; left out", flush=True)
                continue
            nets[f"{kind} s{seed} {steps}"] = int8_of(work, seed, kind, False, train_cache,
                                                     steps)
            short = build_length_net(work, seed, kind, train_cache)
            if short is not None:
                nets[f"{kind} s{seed}"] = short
    measured = one_and_crop(nets, images, val, truths)

    def gain(better: str, worse: str) -> str | None:
        if better not in measured or worse not in measured:
            return None
        return worded(*eval_biometry.paired_gain(measured[better]["hc"],
                                                 measured[worse]["hc"], val["hc_csv"]))

    pairs: dict[str, str | None] = {}
    for seed in seeds:
        for option in ONE_AND_CROP:
            long_d, long_p = f"deeplab_student s{seed} {steps}", f"deeplab s{seed} {steps}"
            pairs[f"s{seed} {steps}, {option}: distilled over plain"] = gain(
                f"{long_d}, {option}", f"{long_p}, {option}")
            for kind in TWINS:
                pairs[f"{kind} s{seed}, {option}: {steps} steps over the build's"] = gain(
                    f"{kind} s{seed} {steps}, {option}", f"{kind} s{seed}, {option}")
            pairs[f"s{seed} {steps} distilled, {option}: over shipped one pass"] = gain(
                f"{long_d}, {option}", "shipped, one")
    pairs = {k: v for k, v in pairs.items() if v is not None}
    for m in measured.values():
        del m["hc"]
    result = {"work": str(work), "steps": steps, "shipped": str(shipped),
              "measured": measured, "paired": pairs}
    out = work / "seeds" / f"long_{steps}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(pairs, indent=1, ensure_ascii=False))
    return result


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(prog="python -m quantize.seg_seeds")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("kind", choices=TWINS)
    t.add_argument("seed", type=SEED)
    t.add_argument("--steps", type=STEPS, default=None)
    r = sub.add_parser("report")
    r.add_argument("--seeds", type=SEED, nargs="+", default=[1, 2])
    r.add_argument("--long-steps", type=STEPS, default=None,
                   help="also measure the seeds' runs trained this many steps, where finished")
    lg = sub.add_parser("long")
    lg.add_argument("--steps", type=STEPS, required=True)
    lg.add_argument("--seeds", type=SEED, nargs="+", default=[0, 1])
    lg.add_argument("--shipped", type=Path, default=seg_train.REPO / "models" /
                    "head_segmenter.tflite")
    for p in (t, r, lg):
        p.add_argument("--work", type=Path, default=seg_train.WORK / "seed0")
        p.add_argument("--threads", type=THREADS, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        if args.command == "train":
            if args.seed == 0 and args.steps is None:
                raise ValueError("seed 0 at the build's steps is the build's own run "
                                 "(WORK/tflite); give --steps for a longer one")
            train(args.kind, args.seed, args.work, args.steps)
        elif args.command == "long":
            long_report(args.work, args.seeds, args.steps, args.shipped)
        else:
            report(args.work, args.seeds, args.long_steps)
    except (seg_data.DataError, FileNotFoundError, ValueError) as exc:
        print(f"seg_seeds: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
