"""`make models`: cache -> distil -> [synth -> finetune] -> convert -> gate -> calibrate ->
manifest, for the plane student.

`cache` has the teacher label several views of every real training frame (its average
over three framings of each view, quantize/distil.py); `distil` trains the inverted-
residual student (quantize/student.py: MobileStudent) on them, with the true label on the
13 example screens; `synth` and `finetune` (only with --synth: 1.1.0's last steps) make
class-balanced images from the teacher and fine-tune on them; `calibrate` runs the
variants test and fits the temperature and the abstain threshold (quantize/variants.py,
quantize/calibrate.py). The new model replaces the shipped one only if it passes the gate
and `ship_decision` takes it: through the device, no worse than the shipped model on the
blind sweeps (clean heads chosen, and of them captured), the 13 example screens and the
heatmap, better on one, no other anatomy chosen as the head more often, and a flat frame
named as the teacher names it. `make models` runs it in five stages (see the Makefile):
1,600, 2,400, 4,000 and 5,000 steps (the last with the head-plane term), then the
class-map stage (`--maps-from 5000`), which converts, judges and ships.

Every step caches its result under build/plane_student/seed<seed>/ and is skipped when the
result is already there, so an interrupted run resumes where it stopped (training from its
last checkpoint). The shipped files are written to models/ only after those checks.

    python -m quantize.build_models [--seed 0] [--steps N] [--until STEP] [--synth]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from quantize.data import HEAD_PLANE_IDS, LABELS, DataError, data_dir, list_frames, split

REPO = Path(__file__).resolve().parents[1]
STEPS = ("cache", "distil", "synth", "finetune", "convert", "gate", "calibrate", "manifest")
VERSION = "1.5.0"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quantize.build_models",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="training steps")
    parser.add_argument("--continue-from", type=int, default=None, metavar="STEPS",
                        help="start from the finished run of STEPS steps (same settings "
                             "otherwise) and go on to --steps on the longer schedule")
    parser.add_argument("--head-weight", type=float, default=None,
                        help="share of the head-plane term on views of known head frames "
                             "(distil.TrainSettings.head_weight; 1.3.0's last stage: 0.7)")
    parser.add_argument("--maps-from", type=int, default=None, metavar="STEPS",
                        help="from the weights of the finished STEPS-step run (same settings "
                             "otherwise), --steps more steps with a fresh optimiser and the "
                             "class-map shape term and flat rows (distil.MAP_STAGE; "
                             "make models' last plane stage, which made 1.4.0 and 1.5.0)")
    parser.add_argument("--feature-weight", type=float, default=None,
                        help="weight of the feature term (the teacher's hidden layer, "
                             "distil.TrainSettings.feature_weight); 0 or absent = off")
    parser.add_argument("--low-res-steps", type=int, default=None,
                        help="of those, how many at half resolution first")
    parser.add_argument("--until", choices=STEPS, default="manifest")
    parser.add_argument("--build", type=Path, default=REPO / "build" / "plane_student")
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and LiteRT threads (the box is shared: 1 by default)")
    parser.add_argument("--finetune-steps", type=int, default=None)
    parser.add_argument("--cache-workers", type=int, choices=(1, 2), default=2,
                        help="processes filling the teacher cache (the second starts from "
                             "the last chunk; they meet in the middle); 1 on a busy box")
    parser.add_argument("--views-per-frame", type=int, default=None, metavar="N",
                        help="teacher-labelled views of each training frame in the cache "
                             "(distil.CacheSettings.views_per_frame; default 8); another N "
                             "is another cache and other checkpoints")
    parser.add_argument("--cache-reverse", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--synth", action="store_true",
                        help="also synthesise images from the teacher (DeepInversion + ADI "
                             "against the distilled student) and fine-tune on them (1.1.0's "
                             "last steps; about 40 min more)")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (DataError, FileNotFoundError, ValueError) as exc:
        print(f"build_models: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict, replace

    from quantize import distil
    from quantize.teacher import load_teacher

    check_args(args)
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
    cache_settings = distil.CacheSettings()
    if args.views_per_frame is not None:
        cache_settings = replace(cache_settings, views_per_frame=args.views_per_frame)
    # Two cache workers take a core each; one worker may use every thread it was given.
    fast = distil.FastTeacher(teacher, work / "teacher_maps_fp32.tflite",
                              1 if args.cache_workers > 1 else args.threads)
    cache_tag = cache_settings.tag(train, args.seed)
    n_chunks = -(-len(train) // cache_settings.frames_per_chunk)
    done = len(list((work / f"cache-{cache_tag}").glob("views_*.npz")))
    helper = cache_helper(args, work) if args.cache_workers > 1 and not args.cache_reverse \
        and done < n_chunks - 1 else None
    try:
        cache_dir = distil.build_cache(fast, train, work / f"cache-{cache_tag}", args.seed,
                                       cache_settings, reverse=args.cache_reverse)
    finally:
        if helper is not None:
            helper.wait()
    if helper is not None and helper.returncode:
        raise ValueError(f"the second cache worker failed (exit {helper.returncode}); see "
                         f"{work / 'cache_worker.log'}")
    if args.until == "cache":
        return 0

    from quantize.student import MobileSpec, MobileStudent

    settings = distil.TrainSettings()
    if args.steps:
        settings = replace(settings, steps=args.steps)
    if args.low_res_steps is not None:
        settings = replace(settings, low_res_steps=args.low_res_steps)
    if args.head_weight is not None:
        settings = replace(settings, head_weight=args.head_weight)
    if args.feature_weight:
        settings = replace(settings, feature_weight=args.feature_weight)
    spec = MobileSpec()
    student = MobileStudent(spec)
    def checkpoint_for(s) -> Path:
        config = {**distil.settings_stamp(s), "spec": distil.STUDENT_SPEC.to_dict(),
                  "student": spec.to_dict(), "cache": cache_tag}
        tag = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
        return work / f"student-{tag}.pt"

    if args.maps_from:
        # Start from the finished run's weights with a fresh optimiser and step 0 of this
        # stage's own schedule, stamped with this stage's settings.
        base = checkpoint_for(replace(settings, steps=args.maps_from))
        settings = replace(settings, **distil.MAP_STAGE)
        ckpt = checkpoint_for(settings)
        if not ckpt.exists():
            if not base.exists():
                raise FileNotFoundError(f"{base}: no finished {args.maps_from}-step run to "
                                        "start the class-map stage from")
            state = torch.load(base, weights_only=False)
            student.load_state_dict(state["model"])
            torch.save({"model": state["model"], "opt": None, "step": 0,
                        "log": [], "settings": distil.settings_stamp(settings),
                        "student_spec": state.get("student_spec"),
                        **({"adapter": state["adapter"]} if "adapter" in state else {}),
                        "continues": base.name}, ckpt)
    else:
        ckpt = checkpoint_for(settings)
    if args.continue_from is not None and not 0 < args.continue_from < settings.steps:
        raise ValueError(f"--continue-from {args.continue_from}: a run shorter than --steps "
                         f"({settings.steps}) to resume")
    if args.continue_from and not ckpt.exists():
        # Resume a finished shorter run on this longer cosine schedule (how 1.2.0 was made:
        # 1,600 steps, then 2,400, then 4,000), instead of starting again from step 0.
        shorter = checkpoint_for(replace(settings, steps=args.continue_from))
        if not shorter.exists() and settings.head_weight:
            # The head-plane term's stage continues the plain run (1.3.0: from 4,000 steps).
            shorter = checkpoint_for(replace(settings, steps=args.continue_from,
                                             head_weight=0.0))
        if not shorter.exists():
            raise FileNotFoundError(f"{shorter}: no {args.continue_from}-step checkpoint to "
                                    "continue from")
        state = torch.load(shorter, weights_only=False)
        state["settings"] = distil.settings_stamp(settings)
        torch.save(state, ckpt)
    cache = distil.load_cache(cache_dir)
    cache_info = cache_summary(cache, train, cache_settings)
    print(f"teacher cache: {json.dumps(cache_info)}")
    torch.manual_seed(args.seed)
    flat_targets = distil.flat_frame_targets(teacher)  # trained on, and checked after
    hidden = None
    if settings.feature_weight:
        distil.cache_hidden(teacher, cache_dir)
        hidden = distil.load_hidden(cache_dir)
    student = distil.train_student(student, cache, ckpt, args.seed, settings, heldout,
                                   head_rows=distil.head_rows_of(cache, train),
                                   flat_targets=flat_targets if settings.flat_rows else None,
                                   hidden=hidden)
    student = student.to(memory_format=torch.contiguous_format)
    del cache
    if args.until == "distil":
        return 0

    final_ckpt, synth_info, ft_info = ckpt, None, None
    if args.synth:
        from quantize import finetune, synth

        synth.run_synthesis(teacher, student, work / "synth", args.seed, synth.SynthSettings(),
                            ckpt.name)
        synth_info = {**synth.synth_report(work / "synth"), "threads": args.threads}
        if args.until == "synth":
            return 0
        ft = finetune.FinetuneSettings()
        if args.finetune_steps:
            ft = replace(ft, steps=args.finetune_steps)
        student, final_ckpt = finetune.finetune(teacher, ckpt, work, args.seed, ft, heldout,
                                                cache_dir)
        student = student.to(memory_format=torch.contiguous_format)
        ft_info = {"checkpoint": final_ckpt.name, "base": ckpt.name, "settings": asdict(ft),
                   **finetune_minutes(final_ckpt)}
    if args.until in ("synth", "finetune"):
        return 0

    from quantize import calibrate, convert, gate, manifest, variants

    paths = convert.convert_student(student, train, work, args.seed, final_ckpt)
    result = gate.run_gate(paths, heldout, work)
    print(result.summary())
    if not result.passed:
        print(f"quantize gate FAILED: {result.reason}", file=sys.stderr)
        return 1
    shipped = args.models / "plane_student.tflite"
    new_top1 = hc18_top1(paths.int8, heldout)
    new_heads = hc18_agreement(new_top1, heldout)
    heads_named = hc18_named_head(new_top1, heldout)
    old_heads = hc18_agreement(hc18_top1(shipped, heldout), heldout) if shipped.is_file() \
        else None
    print(f"held-out HC18 heads, int8 vs teacher: new {new_heads[0]}/{new_heads[1]}"
          + (f", shipped {old_heads[0]}/{old_heads[1]}" if old_heads else ""))
    print(f"held-out HC18 heads named a head plane (all are): new {heads_named[0]}/"
          f"{heads_named[1]}, teacher {heads_named[2]}/{heads_named[1]}")
    if args.until == "gate":
        return 0
    report = calibrate.calibrate(paths.int8, args.seed)
    rows = variants.evaluate(paths.int8, args.seed)["rows"]
    print(f"calibration: T = {report['temperature']}, ECE {report['ece_eval_before']} -> "
          f"{report['ece_eval_after']}, abstain below {report['abstain_below']}")
    examples = [f for f in train if f.source == "examples"]
    new_ex = examples_named(paths.int8, examples, report)
    old_ex = examples_named(shipped, examples, shipped_thresholds(args.models)) \
        if shipped.is_file() else None
    print(f"13 example screens named (device path, with the abstain threshold): new "
          f"{new_ex}/{len(examples)}" + (f", shipped {old_ex}/{len(examples)}" if old_ex
                                         is not None else ""))
    flat_said, flat_teacher = flat_frame_answers(paths.int8, flat_targets[0])
    print(f"a flat frame (the probe in the air): new {flat_said}, teacher {flat_teacher}")
    if args.until == "calibrate":
        return 0
    extras = {"version": VERSION, "synthesis": synth_info, "finetune": ft_info,
              "variants": rows, "calibration": report, "cache": cache_info,
              "examples_named": new_ex, "heldout_heads_agree": list(new_heads),
              "heads_named_head_plane": list(heads_named),
              "train": {"checkpoint": final_ckpt.name, "settings": asdict(settings),
                        "threads": args.threads}}
    from quantize.export import export_teacher_fp32

    man = manifest.student_manifest(student, teacher, paths, result, frames, train, held,
                                    heldout, work, args, extras,
                                    teacher_fp32=export_teacher_fp32(work / "teacher"))
    # The candidate beside the shipped segmenter and quality head, run as the device would.
    candidate = work / "candidate"
    shutil.rmtree(candidate, ignore_errors=True)
    candidate.mkdir(parents=True)
    for other in args.models.glob("*"):
        if other.is_file() and not other.name.startswith("plane_student."):
            shutil.copyfile(other, candidate / other.name)
    # The int8 twin with its class maps (the page's heatmap) ships where its maps show the
    # head; its logits were checked to be bit for bit those of the model measured above.
    from quantize.class_maps import MIN_PEAKS_IN_HEAD, peaks_in_head

    with_maps = False
    if paths.int8_with_maps is not None:
        inside, judged = peaks_in_head(paths.int8_with_maps, held)
        with_maps = judged > 0 and inside >= MIN_PEAKS_IN_HEAD * judged
        man["metrics"]["class_maps_peak_in_head"] = {
            "value": inside, "n": judged, "min_share": MIN_PEAKS_IN_HEAD, "shipped": with_maps,
            "how": "held-out HC18 heads: the named plane's class map, upsampled over the "
                   "region, peaks inside the annotated head ellipse (quantize/class_maps.py)"}
        print(f"class maps: the named plane's map peaks inside {inside}/{judged} held-out "
              f"heads; {'shipped' if with_maps else 'not shipped (the page shows no heatmap)'}")
    shutil.copyfile(paths.int8_with_maps if with_maps else paths.int8,
                    candidate / "plane_student.tflite")
    if with_maps:
        man["outputs"] = convert.class_maps_outputs(paths.int8_with_maps)
    man = manifest.finish(man, candidate / "plane_student.tflite")
    (candidate / "plane_student.json").write_text(json.dumps(man, indent=2) + "\n")
    from quantize.sweeps import build_sweeps

    built = build_sweeps(None, 0)  # every held-out patient, seed 0: the same frames for both
    new_sweeps, new_other = clean_sweeps(candidate, built)
    old_sweeps, old_other = clean_sweeps(args.models, built) if shipped.is_file() \
        else (None, 0)
    old_maps = shipped.is_file() and "outputs" in shipped_manifest(args.models)
    ship, why = ship_decision(new_sweeps, old_sweeps, new_ex, old_ex, new_other, old_other,
                              with_maps, old_maps, flat_said == flat_teacher,
                              variants_shortfall(rows, variants.LABELS))
    if not ship:
        print(f"keeping the shipped model: {why}", file=sys.stderr)
        return 0
    args.models.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(candidate / "plane_student.tflite", shipped)
    (args.models / "plane_student.json").write_text(json.dumps(man, indent=2) + "\n")
    print(f"wrote {shipped} ({man['size_bytes']} bytes) and "
          f"its manifest in {(time.time() - started) / 60:.1f} min")
    return 0


def check_args(args: argparse.Namespace) -> None:
    """Numbers that would train for hours to no purpose are refused before any work."""
    import math

    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps {args.steps}: must be at least 1")
    if args.threads < 1:
        raise ValueError(f"--threads {args.threads}: must be at least 1")
    if args.views_per_frame is not None and not 1 <= args.views_per_frame <= 64:
        raise ValueError(f"--views-per-frame {args.views_per_frame}: must be 1 to 64 (each "
                         "view costs the teacher three runs in the cache)")
    if args.maps_from is not None and (args.maps_from < 1 or args.continue_from is not None):
        raise ValueError(f"--maps-from {args.maps_from}: a finished run of at least 1 step, "
                         "and not together with --continue-from")
    if args.feature_weight is not None and not (math.isfinite(args.feature_weight)
                                                and 0.0 <= args.feature_weight <= 100.0):
        raise ValueError(f"--feature-weight {args.feature_weight}: must be 0 to 100 (the "
                         "feature term's weight beside the KL terms; 1.5.0: 4)")
    if args.feature_weight and args.low_res_steps:
        raise ValueError("--feature-weight: not with --low-res-steps (the teacher's hidden "
                         "layer is kept at full resolution only)")
    if args.head_weight is not None and not (math.isfinite(args.head_weight)
                                             and 0.0 <= args.head_weight < 1.0):
        raise ValueError(f"--head-weight {args.head_weight}: must be at least 0 and below 1 "
                         "(a share of the target; 1 would drop the teacher's answer)")


# Issue 13: on the variants of the 13 example screens the student names the true plane in
# at least this share of every class, and overall at least as often as the teacher does.
VARIANT_CLASS_FLOOR = 0.90


def variants_shortfall(rows: dict, labels: tuple[str, ...] | list[str]) -> str:
    """Why the variants rows (`quantize.variants.summarise`) miss the issue's floor, or ""."""
    weak = [f"{name} {rows[name]['true']}/{rows[name]['n']}" for name in labels
            if name in rows and rows[name]["n"]
            and rows[name]["true"] < VARIANT_CLASS_FLOOR * rows[name]["n"]]
    every = rows.get("all variants")
    short = [] if every is None or every["true"] >= every["teacher_true"] else [
        f"all {every['true']}/{every['n']} against the teacher's {every['teacher_true']}"]
    if not weak and not short:
        return ""
    return (f"on the example screens' variants it names the true plane in under "
            f"{VARIANT_CLASS_FLOOR:.0%} of a class, or less often than the teacher: "
            + ", ".join(weak + short))


def ship_decision(new_sweeps: tuple[int, int], old_sweeps: tuple[int, int] | None,
                  new_ex: int, old_ex: int | None, new_other: int = 0,
                  old_other: int = 0, new_maps: bool = False,
                  old_maps: bool = False, flat_as_teacher: bool = True,
                  variants_short: str = "") -> tuple[bool, str]:
    """(ship?, why not): a new student replaces the shipped one only if, through the
    device, it is no worse on any count and better on one: the blind sweeps of held-out
    patients whose head choice is a clean frame, and of those the ones good enough to be
    captured (`_sweeps` = (clean, clean captured), `quantize.sweeps`: what the biometry exam
    gets), and the 13 example screens named (as `sonoedge score` does, abstentions counted
    wrong). And it must not choose another anatomy as the head in more sweeps (`_other`):
    HC measured on a chest is worse than no HC.

    Agreement with the teacher on held-out heads is printed beside it, not ruled on: the
    teacher itself changes its answer on 17 of those 264 heads under a 4% border crop, and
    it calls 30 of them (every one a head plane its sonographers measured) another plane.

    The last count is the heatmap (`_maps`): whether the model ships class maps that show
    the head (`quantize.class_maps`); a model that gains them is better on that count.

    And a flat frame (the probe in the air) must get the teacher's answer, Background
    (`flat_as_teacher`): a student that names a blank screen a brain plane is not shipped
    for anything else it gains.

    Nor one whose variants miss the issue's floor (`variants_shortfall`, given here as its
    reason): every class's true plane in 90% of its variants, and no fewer than the
    teacher's overall."""
    if variants_short:
        return False, f"the new one misses the variants' floor: {variants_short}"
    if not flat_as_teacher:
        return False, "the new one names a flat frame otherwise than the teacher does"
    if old_sweeps is None:
        return True, ""
    if new_other > old_other:
        return False, (f"the new one chooses another anatomy as the head in {new_other} blind "
                       f"sweeps (shipped {old_other})")
    old_ex = old_ex or 0
    new = (*new_sweeps, new_ex, int(new_maps))
    old = (*old_sweeps, old_ex, int(old_maps))
    if any(a < b for a, b in zip(new, old, strict=True)) or new == old:
        return False, (f"the new one chooses a clean head in {new_sweeps[0]} blind sweeps, "
                       f"{new_sweeps[1]} of them captured (shipped {old_sweeps[0]}, "
                       f"{old_sweeps[1]}), names {new_ex} example screens (shipped "
                       f"{old_ex}) and {'has' if new_maps else 'has no'} heatmap (shipped: "
                       f"{'has' if old_maps else 'none'}); it must be no worse on any and "
                       "better on one")
    return True, ""


def flat_frame_answers(model: Path, teacher_logits: np.ndarray) -> tuple[str, str]:
    """What the int8 student (its top-1, as the device reads it) and the teacher (its
    logits there, `distil.flat_frame_targets`) call a flat frame: every pixel alike, all
    zeros once z-scored."""
    from quantize.convert import run_tflite
    from quantize.specs import STUDENT_SPEC

    said = run_tflite(model, np.zeros((1, 1, STUDENT_SPEC.height, STUDENT_SPEC.width),
                                      np.float32))
    return LABELS[int(np.asarray(said).reshape(-1)[:len(LABELS)].argmax())], \
        LABELS[int(np.argmax(teacher_logits))]


def clean_sweeps(models: Path, built: list) -> tuple[tuple[int, int], int]:
    """Blind sweeps (`built` by quantize.sweeps.build_sweeps) whose head choice is a clean
    frame, and of those the ones captured (reaching the protocol's bar: a choice shown
    below it must not replace one that was good enough), and those where it is another
    anatomy, with the plane student, segmenter and quality head in `models`."""
    from quantize import sweeps

    result = sweeps.run(None, 0, models, built)
    print(f"{models}: " + " ".join(sweeps.report(result).splitlines()[:2]))
    return ((int(result["outcome"]["clean"]), int(result["clean_captured"])),
            int(result["outcome"]["other"]))


def cache_helper(args: argparse.Namespace, work: Path):
    """A second process filling the teacher cache from its last chunk (log in `work`)."""
    import subprocess

    cmd = [sys.executable, "-m", "quantize.build_models", "--until", "cache", "--cache-reverse",
           "--seed", str(args.seed), "--build", str(args.build), "--threads", "1"]
    if args.views_per_frame is not None:
        cmd += ["--views-per-frame", str(args.views_per_frame)]
    log = open(work / "cache_worker.log", "w")  # noqa: SIM115 (lives as long as the worker)
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def cache_summary(cache: dict, train: list, settings) -> dict:
    """What the student learns from: views per source, and how often the teacher's
    average over the framings differs from its answer on the view itself."""
    from dataclasses import asdict

    sources = np.array([f.source for f in train])
    frame = cache["frame"]
    per = {s: int(((frame >= 0) & (sources[np.maximum(frame, 0)] == s)).sum())
           for s in ("hc18", "hc18_test", "planes", "examples")}
    per["mixup"] = int((frame < 0).sum())
    changed = cache["logits"].argmax(1) != cache["logits_view"].argmax(1)
    return {"views": int(len(frame)), "per_source": per,
            "average_differs_from_view_top1": round(float(changed.mean()), 4),
            "settings": asdict(settings)}


def examples_named(model: Path, examples: list, thresholds: dict) -> int:
    """How many example screens the int8 model names right through the device path, as
    `sonoedge score` reports them: top-1 at the manifest's temperature, `uncertain` below
    the abstain threshold (counted wrong)."""
    import numpy as np

    from edge.models.planes import softmax
    from edge.models.preprocess import normalise
    from quantize.convert import run_tflite
    from quantize.data import device_view, read_frame
    from quantize.specs import STUDENT_SPEC

    x = np.stack([normalise(device_view(read_frame(f.path), STUDENT_SPEC), STUDENT_SPEC)[None]
                  for f in examples])
    p = softmax(run_tflite(model, x), thresholds.get("temperature", 1.0))
    top = p.argmax(1)
    named = [LABELS[t] == f.label and p[i, t] >= thresholds.get("abstain_below", 0.0)
             for i, (t, f) in enumerate(zip(top, examples, strict=True))]
    return int(sum(named))


def shipped_manifest(models: Path) -> dict:
    """The shipped student's manifest as the device reads it (bounded, checked), or {}
    where there is none it could read."""
    from edge.models.manifest import ModelError, read_manifest

    try:
        return read_manifest(models / "plane_student.json").raw
    except ModelError:
        return {}


def shipped_thresholds(models: Path) -> dict:
    return shipped_manifest(models).get("thresholds", {})


def hc18_top1(model: Path, heldout: dict):
    """The int8 model's top-1 on the held-out HC18 heads (device-path views)."""
    import numpy as np

    from edge.models.preprocess import normalise
    from quantize.convert import run_tflite
    from quantize.gate import views_for
    from quantize.specs import STUDENT_SPEC

    m = heldout["source"] == "hc18"
    x = np.stack([normalise(v, STUDENT_SPEC)[None]
                  for v in views_for(heldout, STUDENT_SPEC)[m]])
    return run_tflite(model, x).argmax(1)


def hc18_agreement(pred, heldout: dict) -> tuple[int, int]:
    """(agree, n): top-1 `pred` (hc18_top1) vs the teacher's on the held-out HC18 heads."""
    teacher = heldout["logits"][heldout["source"] == "hc18"].argmax(1)
    return int((pred == teacher).sum()), len(teacher)


def hc18_named_head(pred, heldout: dict) -> tuple[int, int, int]:
    """(student, n, teacher): held-out HC18 heads whose top-1 is a head plane; every one is."""
    import numpy as np

    teacher = heldout["logits"][heldout["source"] == "hc18"].argmax(1)
    return (int(np.isin(pred, HEAD_PLANE_IDS).sum()), len(teacher),
            int(np.isin(teacher, HEAD_PLANE_IDS).sum()))


def finetune_minutes(ckpt: Path) -> dict:
    state = torch.load(ckpt, weights_only=False)
    log = state.get("log", [])
    return {"steps": state.get("step"), "minutes": round(log[-1]["min"], 1) if log else None,
            "log": log[-3:]}


if __name__ == "__main__":
    sys.exit(main())
