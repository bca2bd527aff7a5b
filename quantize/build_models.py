"""`make models`: cache -> distil -> convert -> gate -> manifest, for the plane student.

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
STEPS = ("cache", "distil", "convert", "gate", "manifest")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quantize.build_models",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="training steps")
    parser.add_argument("--until", choices=STEPS, default="manifest")
    parser.add_argument("--build", type=Path, default=REPO / "build" / "plane_student")
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--threads", type=int, default=2)
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

    from quantize import convert, gate, manifest

    paths = convert.convert_student(student, train, work, args.seed, ckpt)
    result = gate.run_gate(paths, heldout, work)
    print(result.summary())
    if not result.passed:
        print(f"quantize gate FAILED: {result.reason}", file=sys.stderr)
        return 1
    if args.until == "gate":
        return 0
    man = manifest.student_manifest(student, teacher, paths, result, frames, train, held,
                                    heldout, work, args)
    args.models.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(paths.int8, args.models / "plane_student.tflite")
    man = manifest.finish(man, args.models / "plane_student.tflite")
    (args.models / "plane_student.json").write_text(json.dumps(man, indent=2) + "\n")
    print(f"wrote {args.models / 'plane_student.tflite'} ({man['size_bytes']} bytes) and "
          f"its manifest in {(time.time() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
