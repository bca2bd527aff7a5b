"""`make models`: cache -> distil -> synth -> finetune -> convert -> gate -> calibrate ->
manifest, for the plane student.

`distil` trains the base student on the real frames (the v1.0.0 checkpoint); `synth` makes
class-balanced images from the teacher (DeepInversion + ADI against that base student,
quantize/synth.py); `finetune` continues the base student on real + synthesised views
(quantize/finetune.py); `calibrate` runs the variants test and fits the temperature and
the abstain threshold (quantize/variants.py, quantize/calibrate.py). The new model replaces
the shipped one only if it passes the gate AND agrees with the teacher on at least as many
held-out HC18 heads as the shipped model does.

Every step caches its result under build/plane_student/seed<seed>/ and is skipped when the
result is already there, so an interrupted run resumes where it stopped. The shipped files
are written to models/ only after the quantization gate passes.

    python -m quantize.build_models [--seed 0] [--steps N] [--until STEP] [--force STEP]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from quantize.data import DataError, data_dir, list_frames, split

REPO = Path(__file__).resolve().parents[1]
STEPS = ("cache", "distil", "synth", "finetune", "convert", "gate", "calibrate", "manifest")
VERSION = "1.1.0"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quantize.build_models",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="training steps")
    parser.add_argument("--until", choices=STEPS, default="manifest")
    parser.add_argument("--build", type=Path, default=REPO / "build" / "plane_student")
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--finetune-steps", type=int, default=None)
    parser.add_argument("--synth-threads", type=int, default=1,
                        help="threads for the synthesis and the fine-tune (one core is "
                             "usually busy with another training job)")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (DataError, FileNotFoundError, ValueError) as exc:
        print(f"build_models: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict, replace

    from quantize import distil
    from quantize.student import PlaneStudent, init_from_teacher
    from quantize.teacher import load_teacher

    torch.set_num_threads(args.threads)
    started = time.time()
    root = data_dir()
    work = args.build / f"seed{args.seed}"
    work.mkdir(parents=True, exist_ok=True)
    npz = root / "sononet" / "SonoNet16.npz"
    if not npz.is_file():
        raise DataError(f"{npz}: teacher weights not found")
    teacher = load_teacher(npz)
    frames = list_frames(root)
    train, held = split(frames, seed=args.seed)
    print(f"frames: {len(frames)} ({len(train)} train, {len(held)} held-out by patient)")

    heldout = distil.heldout_set(teacher, held, work / "heldout.npz")
    cache_dir = distil.build_cache(teacher, train, work / "cache", args.seed)
    if args.until == "cache":
        return 0

    settings = distil.TrainSettings()
    if args.steps:
        settings = replace(settings, steps=args.steps)
    student = init_from_teacher(PlaneStudent(stem_stride=distil.STUDENT_STEM_STRIDE), teacher,
                                input_gain=distil.TEACHER_SPEC.scale / distil.STUDENT_SPEC.scale)
    config = {**asdict(settings), "spec": distil.STUDENT_SPEC.to_dict(),
              "stem_stride": distil.STUDENT_STEM_STRIDE}
    tag = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
    ckpt = work / f"student-{tag}.pt"
    cache = distil.load_cache(cache_dir)
    student = distil.train_student(student, cache, ckpt, args.seed, settings, heldout)
    student = student.to(memory_format=torch.contiguous_format)
    if args.until == "distil":
        return 0
    del cache

    from quantize import finetune, synth

    torch.set_num_threads(args.synth_threads)
    synth.run_synthesis(teacher, student, work / "synth", args.seed, synth.SynthSettings(),
                        ckpt.name)
    synth_info = {**synth.synth_report(work / "synth"), "threads": args.synth_threads}
    if args.until == "synth":
        return 0
    ft = finetune.FinetuneSettings()
    if args.finetune_steps:
        ft = replace(ft, steps=args.finetune_steps)
    student, ft_ckpt = finetune.finetune(teacher, ckpt, work, args.seed, ft, heldout)
    student = student.to(memory_format=torch.contiguous_format)
    torch.set_num_threads(args.threads)
    if args.until == "finetune":
        return 0

    from quantize import calibrate, convert, gate, manifest, variants

    paths = convert.convert_student(student, train, work, args.seed, ft_ckpt)
    result = gate.run_gate(paths, heldout, work)
    print(result.summary())
    if not result.passed:
        print(f"quantize gate FAILED: {result.reason}", file=sys.stderr)
        return 1
    shipped = args.models / "plane_student.tflite"
    new_heads = hc18_agreement(paths.int8, heldout)
    old_heads = hc18_agreement(shipped, heldout) if shipped.is_file() else None
    print(f"held-out HC18 heads, int8 vs teacher: new {new_heads[0]}/{new_heads[1]}"
          + (f", shipped {old_heads[0]}/{old_heads[1]}" if old_heads else ""))
    if args.until == "gate":
        return 0
    report = calibrate.calibrate(paths.int8, args.seed)
    rows = variants.evaluate(paths.int8, args.seed)["rows"]
    print(f"calibration: T = {report['temperature']}, ECE {report['ece_eval_before']} -> "
          f"{report['ece_eval_after']}, abstain below {report['abstain_below']}")
    if args.until == "calibrate":
        return 0
    if old_heads is not None and new_heads[0] < old_heads[0]:
        print(f"keeping the shipped model: the new one agrees with the teacher on "
              f"{new_heads[0]} held-out HC18 heads, the shipped one on {old_heads[0]}; "
              "recalibrate it with `python -m quantize.calibrate --model "
              f"{shipped} --write {shipped.with_suffix('.json')}`", file=sys.stderr)
        return 0
    extras = {"version": VERSION, "synthesis": synth_info,
              "finetune": {"checkpoint": ft_ckpt.name, "base": ckpt.name,
                           "settings": asdict(ft), **finetune_minutes(ft_ckpt)},
              "variants": rows, "calibration": report}
    man = manifest.student_manifest(student, teacher, paths, result, frames, train, held,
                                    heldout, work, args, extras)
    args.models.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(paths.int8, shipped)
    man = manifest.finish(man, shipped)
    (args.models / "plane_student.json").write_text(json.dumps(man, indent=2) + "\n")
    print(f"wrote {shipped} ({man['size_bytes']} bytes) and "
          f"its manifest in {(time.time() - started) / 60:.1f} min")
    return 0


def hc18_agreement(model: Path, heldout: dict) -> tuple[int, int]:
    """(agree, n): the int8 model's top-1 vs the teacher's on the held-out HC18 heads."""
    import numpy as np

    from edge.models.preprocess import normalise
    from quantize.convert import run_tflite
    from quantize.distil import STUDENT_SPEC
    from quantize.gate import views_for

    m = heldout["source"] == "hc18"
    x = np.stack([normalise(v, STUDENT_SPEC)[None]
                  for v in views_for(heldout, STUDENT_SPEC)[m]])
    pred = run_tflite(model, x).argmax(1)
    return int((pred == heldout["logits"][m].argmax(1)).sum()), int(m.sum())


def finetune_minutes(ckpt: Path) -> dict:
    state = torch.load(ckpt, weights_only=False)
    log = state.get("log", [])
    return {"steps": state.get("step"), "minutes": round(log[-1]["min"], 1) if log else None,
            "log": log[-3:]}


if __name__ == "__main__":
    sys.exit(main())
