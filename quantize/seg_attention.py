"""Does a feature term make distillation pay more? The distilled twin trained with and
without attention transfer, on the same batches, measured int8 through the device path.

Issue 13 asks for "a feature or boundary term". The build has the boundary term; this is
the feature term (`seg_train.attention_loss`): the student's encoder and decoder are asked
to look where the teacher's look. Each pair of runs shares its training seed, so its two
nets saw the very same views and differ only in the term; the paired difference over the
validation frames is the term's effect in that seed.

    python -m quantize.seg_attention train SEED --beta B [--steps N] [--work DIR]
    python -m quantize.seg_attention report --seeds 0 1 --beta B [--work DIR]

`--work` is a build's head-segmenter folder (default build/head_segmenter/seed0) with its
trained teacher and its caches. Runs go to WORK/attention/s<SEED>_b<B>; results to
WORK/attention/results_s<SEEDS>_b<B>[_<N>steps].json, named by its seeds so that one
report never overwrites another's. Beta 0 is the build's own recipe.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from quantize import eval_biometry, seg_data, seg_train
from quantize.args import SEED, STEPS, THREADS
from quantize.data import data_dir, load_npz

KIND = "deeplab_student"
MAX_BETA = 1e5


def beta_arg(text: str) -> float:
    try:
        beta = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= beta <= MAX_BETA:
        raise argparse.ArgumentTypeError(f"{text!r}: give a beta from 0 to {MAX_BETA:g}")
    return beta


def steps_suffix(steps: int | None) -> str:
    """A run or result trained other than the build's length says so in its name."""
    return "" if steps is None else f"_{steps}steps"


def run_dir(work: Path, seed: int, beta: float, steps: int | None = None) -> Path:
    return work / "attention" / f"s{seed}_b{beta:g}{steps_suffix(steps)}"


def results_path(work: Path, seeds: list[int], beta: float, steps: int | None = None) -> Path:
    """Reports of other seeds, betas or lengths never share a file."""
    names = "-".join(str(seed) for seed in seeds)
    return work / "attention" / f"results_s{names}_b{beta:g}{steps_suffix(steps)}.json"


def require_build(work: Path) -> None:
    for name in ("train_cache.npz", "val_cache.npz"):
        if not (work / name).is_file():
            raise FileNotFoundError(f"{work / name}: not a build's segmenter folder")


def train(seed: int, beta: float, work: Path, steps: int | None = None) -> None:
    require_build(work)
    distil = seg_train.DistilSettings(attention_beta=beta)
    pool, distil = seg_train.training_inputs(work, KIND, 0, distil)
    dest = run_dir(work, seed, beta, steps)
    dest.mkdir(parents=True, exist_ok=True)
    seg_train.train(KIND, pool, dest, seed, seg_train.settings_for(KIND, steps), distil)


def report(work: Path, seeds: list[int], beta: float, steps: int | None = None) -> dict:
    from quantize.seg_input_size import ONE_AND_CROP, one_and_crop, to_int8

    require_build(work)
    train_cache = load_npz(work / "train_cache.npz")
    val = load_npz(work / "val_cache.npz")
    images = eval_biometry.read_images(val, data_dir())
    truths = eval_biometry.truth_masks(val)
    nets: dict[str, Path] = {}
    for seed in seeds:
        for b in (0.0, beta):
            dest = run_dir(work, seed, b, steps)
            net = seg_train.load_trained(dest, KIND)
            if net is None:
                raise FileNotFoundError(f"{seg_train.checkpoint_path(dest, KIND)}: not "
                                        "trained yet")
            nets[f"s{seed} b{b:g}"] = to_int8(net, seg_data.SPEC, train_cache,
                                             dest / "tflite" / KIND)
    measured = one_and_crop(nets, images, val, truths)
    pairs, gains = {}, {option: [] for option in ONE_AND_CROP}
    for seed in seeds:
        for option in ONE_AND_CROP:
            g, se, n = eval_biometry.paired_gain(
                measured[f"s{seed} b{beta:g}, {option}"]["hc"],
                measured[f"s{seed} b0, {option}"]["hc"], val["hc_csv"])
            gains[option].append(g)
            pairs[f"s{seed}, {option}: beta {beta:g} over beta 0"] = \
                f"{g:+.3f} ± {se:.3f} ({n} frames)"
    summary = {}
    for option, values in gains.items():
        spread = (f" ± {np.std(values, ddof=1) / np.sqrt(len(values)):.3f} (SE of the seeds)"
                  if len(values) > 1 else "")
        summary[f"{option}: beta {beta:g} over beta 0, mean over {len(values)} seeds"] = \
            f"{np.mean(values):+.3f}{spread}"
    for m in measured.values():
        del m["hc"]
    result = {"work": str(work), "beta": beta, "seeds": seeds, "measured": measured,
              "paired": pairs, "summary": summary}
    out = results_path(work, seeds, beta, steps)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({"paired": pairs, "summary": summary}, indent=1, ensure_ascii=False))
    return result


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(prog="python -m quantize.seg_attention")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("seed", type=SEED)
    r = sub.add_parser("report")
    r.add_argument("--seeds", type=SEED, nargs="+", default=[0, 1])
    for p in (t, r):
        p.add_argument("--beta", type=beta_arg, default=1000.0)
        p.add_argument("--steps", type=STEPS, default=None)
        p.add_argument("--work", type=Path, default=seg_train.WORK / "seed0")
        p.add_argument("--threads", type=THREADS, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        if args.command == "train":
            train(args.seed, args.beta, args.work, args.steps)
        else:
            report(args.work, args.seeds, args.beta, args.steps)
    except (seg_data.DataError, FileNotFoundError, ValueError) as exc:
        print(f"seg_attention: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
