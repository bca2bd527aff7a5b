"""Does a larger segmenter input mend the big heads (issue 13), and what does it cost?

The HC error of the shipped segmenter is about 0.6 model pixels of radius at every head
size, and big heads come on zoomed-out frames, so a model pixel there is 1.7x the
millimetres (`make eval-biometry`). This tool tests the mend the measurement points to.
The shipped plain DeepLabv3+-lite, 4,000 steps at 160x240, is trained `--steps` more at
240x360. The control is the same number of steps at 160x240, so the extra training alone
is measured too; and its distilled twin gets the same steps with its own loss, so the two
twins stay trained equally long. All go to int8 and are scored on the 264 validation
frames exactly as `quantize.build_segmenter` scores its nets (`eval_biometry.score`: the device's
measurement on the whole frame). The shipped model is scored the same way beside them,
with the HC bands and each int8 model's latency.

The net is fully convolutional, so the weights carry over to the new size. The training
views are the cached 2x views (320x480) area-resized to the input, as in training.

    python -m quantize.seg_input_size [--steps 1200] [--threads 2]

It writes build/head_segmenter/seed0/input_size/results_<steps>.json. The models it makes
are not shipped: at 240x360 the segmenter costs about twice the time (see the results).

    python -m quantize.seg_input_size --scratch --steps 8000
    python -m quantize.seg_input_size --distil-big [--both-teachers] --steps 4000

`--scratch` trains a net built for 240x360 from scratch instead (`run_scratch`), and
`--distil-big` distils the shipped size from it as the build distils its twin
(`run_distil_big`; `--both-teachers`: from the mean of its and the build's teacher's
logits). Both score through the device's own measure_frame, one pass and with the crop
pass, against the shipped segmenter frame by frame (results_scratch_*.json,
results_distil_*.json). docs/measurements.md, "A net built for the larger input", gives the
figures.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from edge.models.preprocess import PreprocessSpec, grey_resized, normalise
from quantize import eval_biometry, seg_data, seg_train
from quantize.args import SEED, STEPS, THREADS
from quantize.data import DataError, data_dir, load_npz

# name: (input size, the checkpoint it continues, distilled?)
RUNS = {"control_160x240": ((160, 240), "deeplab", False),
        "big_240x360": ((240, 360), "deeplab", False),
        "distilled_160x240": ((160, 240), "deeplab_student", True)}
LR = 1e-3
WARMUP = 50
BATCH = 8


def fine_tune(net: torch.nn.Module, train: dict, spec: PreprocessSpec, steps: int,
              seed: int, desc: str, lr: float = LR, resume: Path | None = None,
              aug: seg_data.SegAugment | None = None) -> torch.nn.Module:
    """`steps` more steps at `spec`'s size, warm-up then cosine: the plain net's loss, or
    with the teacher's maps in `train` (`t2`) the distilled twin's own loss. With `resume`
    the net, its optimiser and the step are saved there every 250 steps and picked up.
    `aug` with `crop_views` also shows the crop pass's views (`seg_data.crop_view_matrix`)."""
    aug = aug or seg_data.SegAugment()
    crops = aug.crop_views > 0
    teacher = train.get("t2")
    settings, distil = seg_train.TrainSettings(), seg_train.DistilSettings()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    start = 0
    if resume is not None and resume.exists():
        state = torch.load(resume, weights_only=False)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
    net.train()
    for step in tqdm(range(start, steps), desc=desc, unit="step", mininterval=20,
                     initial=start, total=steps):
        if resume is not None and step > start and step % 250 == 0:
            torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "step": step},
                       resume.with_suffix(".tmp"))
            resume.with_suffix(".tmp").replace(resume)
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / WARMUP) * 0.5 * (
                1 + math.cos(math.pi * step / steps))
        rng = np.random.default_rng([seed, 77, step])
        idx = rng.integers(0, len(train["x2"]), BATCH)
        views = [seg_data.augment(train["x2"][i], train["y2"][i], rng, aug, spec,
                                  None if teacher is None else teacher[i],
                                  train["ellipse"][i] if crops else None,
                                  train["frame_hw"][i] if crops else None) for i in idx]
        x, y, *t = (torch.from_numpy(np.stack([v[k] for v in views])[:, None])
                    for k in range(len(views[0])))
        if t:
            loss, _ = seg_train.distil_loss(net(x), t[0], y, settings, distil)
        else:
            loss = seg_train.gt_loss(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


def to_int8(net: torch.nn.Module, spec: PreprocessSpec, train: dict, stem: Path) -> Path:
    """`stem`_int8.tflite of `net` at `spec`'s size (made once, via `stem`_fp32.tflite),
    calibrated on every fourth training frame's 2x view resized as in training."""
    from quantize.convert import export_fp32, quantize_int8

    fp32 = stem.with_name(stem.name + "_fp32.tflite")
    int8 = stem.with_name(stem.name + "_int8.tflite")
    if not int8.exists():
        h, w = spec.height, spec.width
        export_fp32(net.eval(), (1, 1, h, w), fp32)
        calibration = [normalise(cv2.resize(x2, (w, h), interpolation=cv2.INTER_AREA),
                                 spec)[None, None] for x2 in train["x2"][::4]]
        quantize_int8(fp32, calibration, int8)
    return int8


def scored(model: Path, spec: PreprocessSpec, images: list, val: dict, truths: list) -> dict:
    """HC MAD, Dice and the HC bands of an int8 model on the validation frames."""
    inputs = np.stack([normalise(grey_resized(im, None, spec), spec) for im in images])[:, None]
    s = eval_biometry.score(eval_biometry.tflite_logits(model, inputs), val, truths)
    err = [abs(a - b) for a, b in zip(s.hc, val["hc_csv"], strict=True) if a is not None]
    bands = eval_biometry.band_stats(s.hc, val["hc_csv"], val["pixel_mm"],
                                     val["frame_hw"][:, 1], spec.width)
    return {"hc_mad_mm": round(float(np.mean(err)), 3), "measured": len(err),
            "n": len(val["hc_csv"]), "dice": round(float(np.mean(s.dice)), 4),
            "hc_bands_mm": {r["band"]: None if r["mad_mm"] is None else round(r["mad_mm"], 2)
                            for r in bands if r["by"] == "HC"}}


def run(steps: int, seed: int) -> dict:
    from quantize.manifest import median_latency_ms
    from quantize.seg_nets import make_net

    work = seg_train.WORK / f"seed{seed}"
    for path in (seg_train.checkpoint_path(work, "deeplab"),
                 seg_train.checkpoint_path(work, "deeplab_student"),
                 work / "train_cache.npz", work / "val_cache.npz"):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: run `python -m quantize.build_segmenter` first")
    out = work / "input_size"
    out.mkdir(exist_ok=True)
    train, val = load_npz(work / "train_cache.npz"), load_npz(work / "val_cache.npz")
    images = eval_biometry.read_images(val, data_dir())
    truths = eval_biometry.truth_masks(val)
    results: dict = {"steps": steps, "base": "deeplab.pt and deeplab_student.pt (4,000 steps "
                     "at 160x240, plain and distilled)"}
    for name, ((h, w), kind, distilled) in RUNS.items():
        spec = PreprocessSpec(h, w, roi="full", resize="area", scale=1.0)
        ckpt = out / f"{name}_{steps}.pt"
        net = make_net(kind)
        started = time.time()
        if ckpt.exists():
            net.load_state_dict(torch.load(ckpt, weights_only=False))
        else:
            base = seg_train.checkpoint_path(work, kind)
            net.load_state_dict(torch.load(base, weights_only=False)["model"])
            pool = train
            if distilled:  # the twin's own pool: the unlabelled heads and the teacher's maps
                teacher = seg_train.load_trained(work, "teacher")
                if teacher is None:
                    raise FileNotFoundError(f"{seg_train.checkpoint_path(work, 'teacher')}: "
                                            "no finished teacher")
                pool = seg_train.distillation_pool(work, seed, train, teacher)
            net = fine_tune(net, pool, spec, steps, seed, name)
            torch.save(net.state_dict(), ckpt)
        minutes = (time.time() - started) / 60
        int8 = to_int8(net, spec, train, out / f"{name}_{steps}")
        results[name] = {**scored(int8, spec, images, val, truths),
                         "train_min": round(minutes, 1),
                         "int8_ms_1t": round(median_latency_ms(int8, 1), 2),
                         "int8_ms_2t": round(median_latency_ms(int8, 2), 2)}
        print(name, json.dumps(results[name]), flush=True)
    shipped = Path(__file__).resolve().parents[1] / "models" / "head_segmenter.tflite"
    results["shipped"] = {**scored(shipped, seg_data.SPEC, images, val, truths),
                          "int8_ms_1t": round(median_latency_ms(shipped, 1), 2),
                          "int8_ms_2t": round(median_latency_ms(shipped, 2), 2)}
    print("shipped", json.dumps(results["shipped"]), flush=True)
    (out / f"results_{steps}.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


SCRATCH = {"size": (240, 360), "rates": (3, 6, 9), "lr": 2e-3}


def run_scratch(steps: int, seed: int) -> dict:
    """The mend the fine-tune could not test: DeepLabv3+-lite trained from scratch at
    240x360 with its atrous rates widened in step (3/6/9, so a big head is still inside
    its context), the plain net's loss and the build's learning rate. Scored one pass and
    with the device's crop pass, through the device's own measure_frame, against the
    shipped segmenter frame by frame."""
    from quantize.manifest import median_latency_ms
    from quantize.seg_nets import DeepLabLite

    work = seg_train.WORK / f"seed{seed}"
    out = work / "input_size"
    out.mkdir(parents=True, exist_ok=True)
    train, val = load_npz(work / "train_cache.npz"), load_npz(work / "val_cache.npz")
    images = eval_biometry.read_images(val, data_dir())
    truths = eval_biometry.truth_masks(val)
    h, w = SCRATCH["size"]
    spec = PreprocessSpec(h, w, roi="full", resize="area", scale=1.0)
    name = f"scratch_{h}x{w}_{steps}"
    torch.manual_seed(seed)
    net = DeepLabLite(rates=SCRATCH["rates"])
    done = out / f"{name}.pt"
    started = time.time()
    if done.exists():
        net.load_state_dict(torch.load(done, weights_only=False))
    else:
        net = fine_tune(net, train, spec, steps, seed, name, lr=SCRATCH["lr"],
                        resume=out / f"{name}.resume.pt")
        torch.save(net.state_dict(), done)
    int8 = to_int8(net, spec, train, out / name)
    result = {**scored(int8, spec, images, val, truths),
              "train_min": round((time.time() - started) / 60, 1),
              "int8_ms_2t": round(median_latency_ms(int8, 2), 2)}
    measured = device_rows([("new", int8, spec)], images, val, truths)
    result["device"] = measured
    (out / f"results_{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(name, json.dumps(result, indent=1), flush=True)
    return result


def device_measure(model, passes, images: list, val: dict, truths: list) -> dict:
    """One int8 net with `passes` through the device's own measure_frame on the validation
    frames: per-frame HC (`hc`, None where declined), HC MAD, ellipse Dice, HC bands."""
    from edge.models.biometry import measure_frame, settings_for_model

    settings = settings_for_model(model.manifest)
    hc, edice = [], []
    for image, truth, px in zip(images, truths, val["pixel_mm"], strict=True):
        bio = measure_frame(model, image, None, float(px), settings, passes)
        hc.append(bio.hc_mm)
        if bio.ellipse is not None and bio.hc_mm is not None:
            edice.append(eval_biometry.ellipse_dice(bio.ellipse, truth))
    err = [abs(a - b) for a, b in zip(hc, val["hc_csv"], strict=True) if a is not None]
    bands = eval_biometry.band_stats(hc, val["hc_csv"], val["pixel_mm"],
                                     val["frame_hw"][:, 1], model.manifest.input_shape[-1])
    return {"hc": hc, "hc_mad_mm": round(float(np.mean(err)), 3), "measured": len(err),
            "ellipse_dice": round(float(np.mean(edice)), 4),
            "hc_bands_mm": {r["band"]: None if r["mad_mm"] is None else round(r["mad_mm"], 2)
                            for r in bands if r["by"] == "HC"}}


ONE_AND_CROP = ("one", "crop")


def one_and_crop(nets: dict[str, Path], images: list, val: dict, truths: list) -> dict:
    """Each int8 net at the student's input, one pass and with the build's crop pass,
    through the device's measure_frame: `device_measure`'s figures keyed "<label>, one" and
    "<label>, crop", each with the net's mask Dice as the build scores its nets (whole
    frame, one pass)."""
    from quantize.build_segmenter import pass_options
    from quantize.specs import device_spec

    build = dict(pass_options())  # the build's own pass options, by its names
    options = {"one": build["one pass"], "crop": build["crop"]}
    assert tuple(options) == ONE_AND_CROP
    spec = device_spec(seg_train.kind_spec("deeplab"))
    measured: dict[str, dict] = {}
    for label, path in nets.items():
        mask_dice = scored(path, seg_data.SPEC, images, val, truths)["dice"]
        for option, passes in options.items():
            model = eval_biometry.device_model(path, 2, passes, spec)
            m = device_measure(model, passes, images, val, truths)
            m["mask_dice"] = mask_dice
            measured[f"{label}, {option}"] = m
            print(f"{label}, {option}", m["hc_mad_mm"], m["hc_bands_mm"], flush=True)
    return measured


def device_rows(nets: list[tuple[str, Path, PreprocessSpec]], images: list, val: dict,
                truths: list) -> dict:
    """Each int8 net of `nets` one pass and with the crop pass, and the shipped segmenter
    with its crop pass, through the device's measure_frame on the validation frames: HC
    MAD, ellipse Dice, HC bands, and the paired gain over the shipped segmenter; and each
    net's mask Dice, one pass, as the build scores its nets."""
    from edge.models.biometry import Passes
    from edge.models.manifest import read_manifest
    from edge.models.runtime import load_model
    from quantize.build_segmenter import pass_options

    shipped_path = Path(__file__).resolve().parents[1] / "models" / "head_segmenter.json"
    crop = dict(pass_options())["crop"]  # the build's own crop pass
    runs = [("shipped, its crop pass", load_model(read_manifest(shipped_path), "litert", 2),
             crop)]
    for label, path, spec in nets:
        runs += [(f"{label}, one pass", eval_biometry.device_model(path, 2, Passes(), spec),
                  Passes()),
                 (f"{label}, crop pass", eval_biometry.device_model(path, 2, crop, spec), crop)]
    # The mask Dice of each net's one pass, as the build scores its nets.
    mask_dice = {f"{label}, one pass": scored(path, spec, images, val, truths)["dice"]
                 for label, path, spec in nets}
    measured = {label: {**device_measure(model, passes, images, val, truths),
                        "mask_dice": mask_dice.get(label)} for label, model, passes in runs}
    base = measured["shipped, its crop pass"]["hc"]
    for label, m in measured.items():
        if label != "shipped, its crop pass":
            gain, se, n = eval_biometry.paired_gain(m["hc"], base, val["hc_csv"])
            m["gain_over_shipped_mm"] = f"{gain:+.3f} ± {se:.3f} ({n} frames)"
    for m in measured.values():
        del m["hc"]
    return measured


def run_distil_big(steps: int, seed: int, both: bool = False) -> dict:
    """Distillation from a teacher that sees more: the 160x240 DeepLabv3+-lite distilled
    exactly as the build distils its twin (same loss, same views, the unlabelled heads),
    but from `run_scratch`'s 240x360 net, which reads every view at 1.5x the student's
    resolution, instead of the build's 160x240 teacher. Its plain twin is the build's own
    (deeplab.pt, 4,000 steps, the same views of the labelled frames)."""
    from quantize.convert import export_fp32, quantize_int8
    from quantize.seg_nets import DeepLabLite

    work = seg_train.WORK / f"seed{seed}"
    out = work / "input_size"
    h, w = SCRATCH["size"]
    big_path = out / f"scratch_{h}x{w}_8000.pt"
    if not big_path.is_file():
        raise FileNotFoundError(f"{big_path}: run `python -m quantize.seg_input_size "
                                "--scratch --steps 8000` first")
    big = DeepLabLite(rates=SCRATCH["rates"])
    big.load_state_dict(torch.load(big_path, weights_only=False))
    big.eval()
    train, val = load_npz(work / "train_cache.npz"), load_npz(work / "val_cache.npz")
    unlabelled = seg_data.build_unlabelled_cache(seg_data.unlabelled_frames(data_dir()),
                                                 work / "unlabelled_cache.npz")
    big_spec = PreprocessSpec(h, w, roi="full", resize="area", scale=1.0)

    def maps(cache: dict) -> np.ndarray:
        # The big net reads each frame's 2x view (320x480) at its own 240x360.
        inputs = np.stack([normalise(cv2.resize(x2, (w, h), interpolation=cv2.INTER_AREA),
                                     big_spec) for x2 in cache["x2"]])[:, None]
        return seg_train.teacher_logits(big, inputs)

    maps_path = out / "big_teacher_maps.npz"
    if maps_path.exists():
        cached = load_npz(maps_path)
        lab, unl = cached["labelled"], cached["unlabelled"]
    else:
        lab, unl = maps(train), maps(unlabelled)
        np.savez(maps_path, labelled=lab, unlabelled=unl)
    if both:  # the two teachers' mean logits: the build's is the better on the biggest heads
        build_maps = load_npz(work / "teacher_maps.npz")
        lab = ((lab.astype(np.float32) + build_maps["labelled"]) / 2).astype(np.float16)
        unl = ((unl.astype(np.float32) + build_maps["unlabelled"]) / 2).astype(np.float16)
    pool = seg_data.with_teacher(train, unlabelled, lab, unl)
    dest = out / ("distil_from_both" if both else "distil_from_big")
    dest.mkdir(exist_ok=True)
    net = seg_train.train("deeplab_student", pool, dest, seed,
                          seg_train.settings_for("deeplab_student", steps),
                          seg_train.DistilSettings())
    spec = seg_data.SPEC
    fp32, int8 = dest / "deeplab_student_fp32.tflite", dest / "deeplab_student_int8.tflite"
    if not int8.exists():
        export_fp32(net.eval(), (1, 1, spec.height, spec.width), fp32)
        calibration = [normalise(x, spec)[None, None] for x in train["x"][::4]]
        quantize_int8(fp32, calibration, int8)
    images = eval_biometry.read_images(val, data_dir())
    truths = eval_biometry.truth_masks(val)
    plain = work / "tflite" / "deeplab_int8.tflite"
    build_distilled = work / "tflite" / "deeplab_student_int8.tflite"
    result = device_rows([("distilled from " + ("both teachers" if both else "the 240x360 net"),
                           int8, spec),
                          ("plain twin (the build's)", plain, spec),
                          ("distilled from the build's teacher (1.3.0)", build_distilled, spec)],
                         images, val, truths)
    name = f"results_distil_{'both' if both else 'big'}_{steps}.json"
    (out / name).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quantize.seg_input_size",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=STEPS, default=1200)
    parser.add_argument("--seed", type=SEED, default=0)
    parser.add_argument("--threads", type=THREADS, default=2)
    parser.add_argument("--scratch", action="store_true",
                        help="train DeepLabv3+-lite from scratch at 240x360 instead (run_scratch)")
    parser.add_argument("--distil-big", action="store_true",
                        help="distil the 160x240 net from the --scratch net (run_distil_big)")
    parser.add_argument("--both-teachers", action="store_true",
                        help="with --distil-big: from the mean of it and the build's teacher")
    args = parser.parse_args(argv)
    if args.both_teachers and not args.distil_big:
        parser.error("--both-teachers goes with --distil-big")
    if args.scratch and args.distil_big:
        parser.error("--scratch and --distil-big are two runs: give one")
    torch.set_num_threads(args.threads)
    try:
        if args.distil_big:
            run_distil_big(args.steps, args.seed, args.both_teachers)
        else:
            (run_scratch if args.scratch else run)(args.steps, args.seed)
    except (DataError, FileNotFoundError, ValueError) as exc:
        print(f"seg_input_size: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
