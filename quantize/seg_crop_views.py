"""Can the crop pass zoom in further if the net learned its views (issue 13)?

The device measures a kept head again on a crop around it (`Passes.refine_crop_margin`),
magnified at most `refine_max_zoom` = 1.2, the largest scale the net was trained on: a
head zoomed further was under-segmented. So the crop pass helps small heads (under 100
mm: 1.77 to 1.52 mm) and leaves the bulk, 100-200 mm, where it was (1.60). This tool
trains the same plain DeepLabv3+-lite twice from scratch, the same steps, seed and
learning rate as the build's plain twin: once on the build's views, once with half of its
views replaced by crop-pass views (`seg_data.SegAugment.crop_views`: the annotated head,
jittered as the first pass errs, plus a margin, magnified up to 2x). Both go to int8 and
are measured through the device's own `measure_frame` on the validation patients, one pass
and with the crop pass at several zoom limits, against the shipped segmenter's crop pass,
frame by frame.

    python -m quantize.seg_crop_views [--steps 4000] [--threads 2]

It needs the caches of `quantize.build_segmenter` (made here if missing) and writes
build/head_segmenter/seed0/crop_views/results_<steps>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from quantize import eval_biometry, seg_data, seg_train
from quantize.args import SEED, STEPS, THREADS
from quantize.data import DataError, data_dir
from quantize.seg_input_size import device_measure, fine_tune, to_int8

ZOOMS = (1.2, 1.6, 2.0)
MARGIN = 0.2  # the shipped segmenter's crop margin
LR = 2e-3  # the build's plain twin's
NETS = {"build_views": seg_data.SegAugment(),
        "with_crop_views": seg_data.SegAugment(crop_views=0.5)}


def measure(rows: dict, label: str, model, passes, images: list, val: dict,
            truths: list) -> None:
    rows[label] = device_measure(model, passes, images, val, truths)
    print(label, {k: v for k, v in rows[label].items() if k != "hc"}, flush=True)


def run(steps: int, seed: int) -> dict:
    from edge.models.biometry import Passes
    from edge.models.manifest import read_manifest
    from edge.models.runtime import load_model
    from quantize.build_segmenter import load_caches
    from quantize.seg_nets import make_net

    work = seg_train.WORK / f"seed{seed}"
    out = work / "crop_views"
    out.mkdir(parents=True, exist_ok=True)
    train, val = load_caches(work, seed)
    images = eval_biometry.read_images(val, data_dir())
    truths = eval_biometry.truth_masks(val)
    spec = seg_data.SPEC
    rows: dict = {}
    shipped = load_model(read_manifest(Path(__file__).resolve().parents[1] / "models"
                                       / "head_segmenter.json"), "litert", 2)
    measure(rows, "shipped 1.3.0, its crop pass", shipped,
            Passes(refine_crop_margin=MARGIN, refine_max_zoom=1.2), images, val, truths)
    minutes = {}
    for name, aug in NETS.items():
        done = out / f"{name}_{steps}.pt"
        torch.manual_seed(seed)
        net = make_net("deeplab")
        started = time.time()
        if done.exists():
            net.load_state_dict(torch.load(done, weights_only=False))
        else:
            net = fine_tune(net, train, spec, steps, seed, name, lr=LR,
                            resume=out / f"{name}_{steps}.resume.pt", aug=aug)
            torch.save(net.state_dict(), done)
        minutes[name] = round((time.time() - started) / 60, 1)
        int8 = to_int8(net, spec, train, out / f"{name}_{steps}")
        for passes in [Passes()] + [Passes(refine_crop_margin=MARGIN, refine_max_zoom=z)
                                    for z in ZOOMS]:
            label = (f"{name}, one pass" if passes.runs() == 1 else
                     f"{name}, crop pass, zoom <= {passes.refine_max_zoom:g}")
            model = eval_biometry.device_model(int8, 2, passes)
            measure(rows, label, model, passes, images, val, truths)
    base = rows["shipped 1.3.0, its crop pass"]["hc"]
    control = {z: rows[f"build_views, crop pass, zoom <= {z:g}"]["hc"] for z in ZOOMS}
    for label, row in rows.items():
        if label.startswith("shipped"):
            continue
        gain, se, n = eval_biometry.paired_gain(row["hc"], base, val["hc_csv"])
        row["gain_over_shipped_mm"] = f"{gain:+.3f} ± {se:.3f} ({n} frames)"
        if label.startswith("with_crop_views, crop"):
            z = float(label.rsplit("<= ", 1)[1])
            gain, se, n = eval_biometry.paired_gain(row["hc"], control[z], val["hc_csv"])
            row["gain_over_build_views_same_zoom_mm"] = f"{gain:+.3f} ± {se:.3f} ({n} frames)"
    for row in rows.values():
        del row["hc"]
    result = {"steps": steps, "seed": seed, "train_min": minutes, "rows": rows}
    (out / f"results_{steps}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quantize.seg_crop_views",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=STEPS, default=4000)
    parser.add_argument("--seed", type=SEED, default=0)
    parser.add_argument("--threads", type=THREADS, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        run(args.steps, args.seed)
    except (DataError, FileNotFoundError) as exc:
        print(f"seg_crop_views: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
