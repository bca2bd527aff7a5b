"""Manifests for the models this package builds (format read by edge/manifest.py)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path

from edge.models.manifest import sha256_of as sha256_file
from quantize.data import LABELS
from quantize.specs import device_spec

TEACHER_CREDIT = ("SonoNet-16 (Baumgartner et al. 2017), weights "
                  "baumgach/SonoNet-weights@6c4df399 (Apache-2.0)")
LICENCE_NOTES = (
    "Student weights are distilled from SonoNet-16 (Apache-2.0, cite Baumgartner et al., "
    "IEEE TMI 36(11) 2017). Distillation inputs: HC18 training images (van den Heuvel et "
    "al. 2018, Zenodo 10.5281/zenodo.1327317, listed CC BY 4.0 upstream, not stated in "
    "the copying repo), FETAL_PLANES_DB frames (Burgos-Artizzu et al. 2020, Zenodo "
    "10.5281/zenodo.3904280, listed CC BY 4.0 upstream), 20 umbilical-cord frames from "
    "Eric43/MFM_AI (GPL-3.0 repository) and the 13 SonoNet example frames (Apache-2.0). "
    "No image is shipped; only the teacher's answers on them shaped the weights.")


def base(name: str, file: str, input_shape: list[int], dtype: str, preprocessing: dict) -> dict:
    return {
        "manifest_version": 1, "name": name, "version": "1.0.0",
        "task": "plane_classification", "file": file, "sha256": "", "size_bytes": 0,
        "labels": list(LABELS),
        "input": {"shape": input_shape, "dtype": dtype, "layout": "NCHW"},
        "output": {"shape": [1, len(LABELS)], "dtype": dtype, "kind": "logits"},
        "preprocessing": preprocessing,
    }


def finish(manifest: dict, model_path: Path) -> dict:
    """Fill in the file name, sha256 and size of the model the manifest describes."""
    manifest = dict(manifest)
    manifest["file"] = model_path.name
    manifest["sha256"] = sha256_file(model_path)
    manifest["size_bytes"] = model_path.stat().st_size
    return manifest


def build_box() -> str:
    """The CPU the latencies in a manifest were measured on, read off this machine: int8
    speed hangs on its instructions (VNNI or not), so a figure without it misleads."""
    import os

    return f"{os.cpu_count()}-core build box ({cpu_description()})"


def latency_how(threads: int, source: str) -> str:
    """How a manifest's latency figure was measured: the one wording for every model, the
    runtime's installed version and this box's CPU read off the machine, not typed in."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        litert = version("ai-edge-litert")
    except PackageNotFoundError:
        litert = "(version unknown)"
    return (f"median of 200 invokes after 20 warm-up, ai-edge-litert {litert} XNNPACK, "
            f"num_threads={threads}, {build_box()}, shared with other jobs; {source}")


def read_cpuinfo(lines: Iterable[str]) -> tuple[str | None, set[str]]:
    """(the first CPU's model name, its flags) from /proc/cpuinfo's lines (x86 says
    `flags`, arm64 `Features`), at most 100,000 lines read."""
    name, flags = None, set()
    for line in itertools.islice(lines, 100_000):
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model") and name is None:
            name = value.strip()
        elif key.strip() in ("flags", "Features") and not flags:
            flags = set(value.split())
    return name, flags


def cpu_description(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """This machine's CPU name and the instructions int8 speed hangs on, for any latency
    figure to carry (`make bench` prints it first)."""
    import platform

    name, flags = None, set()
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as info:
            name, flags = read_cpuinfo(info)
    except OSError:
        pass
    name = name or platform.machine()
    if "asimd" in flags:  # arm64 (a Pi 5's Cortex-A76 has dot products, no i8mm)
        return f"{name}, " + ", ".join(
            [label for flag, label in (("asimddp", "dot product"), ("i8mm", "i8mm"))
             if flag in flags] or ["no int8 dot product"])
    vnni = ("AVX-512 VNNI" if "avx512_vnni" in flags else
            "AVX-VNNI" if "avx_vnni" in flags else "no VNNI")
    simd = "AVX2, " if "avx2" in flags else ""
    return f"{name}, {simd}{vnni}"


def median_latency_ms(path: Path, threads: int, runs: int = 200, warmup: int = 20) -> float:
    """Median wall time of `invoke` on a zero input, ai-edge-litert with XNNPACK."""
    import time

    import numpy as np

    from edge.models.runtime import make_interpreter

    interp = make_interpreter(path, "litert", threads)
    inp = interp.get_input_details()[0]
    x = np.zeros(inp["shape"], inp["dtype"])
    times = []
    for i in range(warmup + runs):
        interp.set_tensor(inp["index"], x)
        start = time.perf_counter()
        interp.invoke()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def device_path_ms(model: Path, images: list, spec, threads: int = 2) -> float:
    """Median ms per frame of find_roi + prepare + int8 quantize + invoke (decode excluded)."""
    import time

    import numpy as np

    from edge.models.preprocess import prepare
    from edge.models.roi import find_roi
    from quantize.convert import open_for_toolchain

    runner = open_for_toolchain(model, threads)
    times = []
    for rep in range(3):
        for image in images:
            start = time.perf_counter()
            runner.run(prepare(image, find_roi(image), spec))
            if rep:
                times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def student_manifest(student, teacher, paths, gate_result, frames, train, held, heldout,
                     work: Path, args, extras: dict | None = None,
                     teacher_fp32: Path | None = None) -> dict:
    """The shipped student's manifest (everything but sha256/size, see `finish`).

    `teacher_fp32`: the teacher's exported fp32 .tflite (quantize.export), timed beside
    the student.

    `extras` (from build_models): version, synthesis, finetune, variants, calibration.
    """
    import json

    import numpy as np

    from edge.models.preprocess import normalise
    from quantize.convert import run_tflite
    from quantize.data import LABELS, device_view, read_frame
    from quantize.gate import INT8_VS_FP32_MIN, MAX_TEACHER_DROP, WHY
    from quantize.macs import count_macs
    from quantize.specs import STUDENT_SPEC, TEACHER_SPEC

    spec = STUDENT_SPEC
    shape = (1, 1, spec.height, spec.width)
    macs = count_macs(student, shape)
    teacher_macs = count_macs(teacher, (1, 1, TEACHER_SPEC.height, TEACHER_SPEC.width))
    build_cmd = f"python -m quantize.build_models --seed {args.seed}"

    from quantize.gate import views_for

    inputs = np.stack([normalise(v, spec)[None] for v in views_for(heldout, spec)])
    q = run_tflite(paths.int8, inputs).argmax(1)
    f = run_tflite(paths.fp32, inputs).argmax(1)
    t = heldout["logits"].argmax(1)
    tc = heldout["crop_logits"].argmax(1)
    src = heldout["source"]
    n_hc, n_pl = int((src == "hc18").sum()), int((src == "planes").sum())
    first = (src == "hc18") & np.array([n.split("_")[0].isdigit() and int(n.split("_")[0]) % 2
                                        == 0 for n in heldout["name"]])
    hc_groups = len({fr.group for fr in held if fr.source == "hc18"})
    pl_groups = len({fr.group for fr in held if fr.source == "planes"})
    where = (f"held-out frames: {n_hc} HC18 images of {hc_groups} patients + {n_pl} "
             f"FETAL_PLANES_DB frames of {pl_groups} patients never trained on (split by "
             f"patient, seed {args.seed}), each frame through find_roi + prepare (the device "
             f"path); teacher = fp32 SonoNet-16 at 224x288 on the same frame; `{build_cmd}`")

    def agree(a, b, mask=None):
        mask = np.ones(len(a), bool) if mask is None else mask
        return {"value": round(float((a[mask] == b[mask]).mean()), 4),
                "agree": int((a[mask] == b[mask]).sum()), "n": int(mask.sum())}

    ex = [fr for fr in train if fr.source == "examples"]
    ex_in = np.stack([normalise(device_view(read_frame(fr.path), spec), spec)[None]
                      for fr in ex])
    ex_pred = run_tflite(paths.int8, ex_in).argmax(1)
    ex_ok = [LABELS[p] == fr.label for p, fr in zip(ex_pred, ex, strict=True)]

    if teacher_fp32 is None:
        raise ValueError("student_manifest: the teacher's fp32 export is needed to time it")
    lat = {}
    for label, path in (("teacher_fp32", teacher_fp32), ("student_fp32", paths.fp32),
                        ("student_int8", paths.int8)):
        for threads in (1, 2):
            lat[f"latency_ms_{label}_{threads}t"] = {
                "value": round(median_latency_ms(path, threads), 3),
                "how": latency_how(threads, f"measured by `{build_cmd}`")}

    sample = [read_frame(fr.path) for fr in held[:: max(1, len(held) // 30)]]
    lat["device_path_ms_2t"] = {
        "value": round(device_path_ms(paths.int8, sample, spec), 3),
        "how": (f"median per frame over {len(sample)} held-out frames (x2 passes) of "
                "find_roi + prepare + int8 quantize + invoke + read output, decoded frames "
                f"in memory, 2 threads; `{build_cmd}`")}
    metrics = {
        "heldout_top1_agreement_int8_vs_teacher": {
            **agree(q, t), "how": where,
            "hc18": agree(q, t, src == "hc18"), "planes": agree(q, t, src == "planes"),
            "hc18_even_ids": {**agree(q, t, first), "how": (
                "the held-out heads of even patient ids: the 133 frames 1.0-1.1 were judged "
                "on (the data folder then held the even ids only)")}},
        "heldout_top1_agreement_fp32_vs_teacher": {**agree(f, t), "how": where},
        "heldout_top1_agreement_int8_vs_fp32": {**agree(q, f), "how": where},
        "teacher_self_agreement_4pct_border_crop": {
            **agree(tc, t), "hc18": agree(tc, t, src == "hc18"),
            "hc18_even_ids": agree(tc, t, first),
            "how": ("the teacher's own stability on the same held-out frames: its answer on "
                    "the find_roi region vs on that region with 4% of width and height cut "
                    "from every side")},
        "examples_13_correct_int8": {
            "value": int(sum(ex_ok)), "n": len(ex),
            "wrong": [fr.path.name for fr, ok in zip(ex, ex_ok, strict=True) if not ok],
            "how": ("true labels of the 13 SonoNet example frames (file names) vs the int8 "
                    "student through find_roi + prepare; NOTE these 13 frames are in the "
                    "training set (the only frames of 9 classes), so this is a sanity check, "
                    "not held-out evidence")},
        "size_bytes": {"value": paths.int8.stat().st_size, "how": "size of the .tflite"},
        **lat,
    }
    log = json.loads((work / "train_log.json").read_text()) if (
        work / "train_log.json").exists() else []
    by_source: dict[str, int] = {}
    for fr in train:
        by_source[fr.source] = by_source.get(fr.source, 0) + 1
    held_by: dict[str, int] = {}
    for fr in held:
        held_by[fr.source] = held_by.get(fr.source, 0) + 1
    man = base("plane_student", "plane_student.tflite", list(shape), "int8",
               device_spec(spec).to_dict())
    man.update({
        "quantization": {
            "scheme": "ai-edge-quantizer 0.10.0 static_wi8_ai8 (int8 weights and "
                      "activations, int8 input and output)",
            "calibration": paths.calibration,
            "gate": {"metric": "top-1 agreement int8 vs fp32 student on held-out frames",
                     "threshold": INT8_VS_FP32_MIN, "value": round(gate_result.int8_vs_fp32, 4),
                     "max_teacher_agreement_drop": MAX_TEACHER_DROP,
                     "int8_vs_teacher": gate_result.int8_vs_teacher,
                     "fp32_vs_teacher": gate_result.fp32_vs_teacher,
                     "n": gate_result.n, "why": WHY}},
        "architecture": _architecture(student, macs, teacher_macs),
        "metrics": metrics,
        "teacher": TEACHER_CREDIT,
        "training_data": [
            {"name": "HC18 training-set subset (fetal head)", "frames": by_source.get("hc18", 0),
             "licence": "CC BY 4.0 upstream (not stated in the copying repo)",
             "split": f"train; {held_by.get('hc18', 0)} frames of other patients held out"},
            {"name": "HC18 test-set heads (unlabelled; the teacher labels them)",
             "frames": by_source.get("hc18_test", 0),
             "licence": "CC BY 4.0 upstream (not stated in the copying repo)",
             "split": "train only (no labels, so never validation); other patients than "
                      "the HC18 training set"},
            {"name": "FETAL_PLANES_DB subset + MFM_AI umbilical-cord session (planes/)",
             "frames": by_source.get("planes", 0),
             "licence": "FETAL_PLANES_DB CC BY 4.0 upstream; MFM_AI repo GPL-3.0",
             "split": (f"train (the 20 cord frames as one group, always in train); "
                       f"{held_by.get('planes', 0)} FETAL_PLANES_DB frames of other patients "
                       "held out")},
            {"name": "SonoNet-16 example planes", "frames": by_source.get("examples", 0),
             "licence": "Apache-2.0",
             "split": ("train only, with heavier augmentation: they are the only frames of "
                       "9 of the 14 classes, so none can be held out")}],
        "distillation": {
            "targets": ("the teacher's average probability over three framings of each view "
                        "(itself, 4% cut from every side, 4% more on every side), KL at T=2 "
                        "and T=1, + MSE on the 14 class maps (14x18) of the view itself; on "
                        "views of the 13 example screens the target is 0.7 x the true label "
                        "+ 0.3 x the teacher's (the true-label term)"),
            "views": "cached augmented views, teacher-labelled; mixup views re-labelled by "
                     "the teacher; see quantize/distil.py",
            "log": log[-3:]},
        "licences": {"model": "Apache-2.0", "notes": LICENCE_NOTES},
    })
    if extras:
        _add_extras(man, extras)
    fp32_man = base("plane_student_fp32", paths.fp32.name, list(shape), "float32",
                    spec.to_dict())
    fp32_man.update({k: man[k] for k in ("architecture", "teacher", "training_data",
                                         "licences")})
    fp32_man["quantization"] = {"scheme": "none (fp32, same weights as plane_student)"}
    fp32_man["metrics"] = {k: v for k, v in metrics.items() if "fp32" in k}
    # Whoever compares fp32 with int8 (make bench) can tell this is the shipped file's twin.
    fp32_man["version"] = man["version"]
    fp32_man["int8_sha256"] = sha256_file(paths.int8)
    if paths.int8_with_maps is not None:  # the shipped file may be this twin (the heatmap)
        fp32_man["int8_with_maps_sha256"] = sha256_file(paths.int8_with_maps)
    paths.fp32.with_suffix(".json").write_text(
        json.dumps(finish(fp32_man, paths.fp32), indent=2) + "\n")
    return man


def _architecture(student, macs: int, teacher_macs: int) -> dict:
    from quantize.macs import count_params

    spec = getattr(student, "spec", None)
    if spec is not None:
        family = ("MobileNetV2-style inverted residuals (Sandler et al. 2018): "
                  + spec.describe())
    else:
        family = ("SonoNet-style VGG: conv3x3-BN-ReLU stages "
                  f"(first conv stride {getattr(student, 'stem_stride', 1)}) "
                  f"{[list(s) for s in student.stages_spec]} with 2x2 max-pools between, "
                  "1x1 head to 64 then 14 class maps (14x18), global mean; initialised "
                  "from the teacher's first four blocks and head")
    out = {"family": family, "params": count_params(student), "macs": macs,
           "teacher_macs": teacher_macs, "macs_share_of_teacher": round(macs / teacher_macs, 4),
           "class_maps": "14 class maps at 14x18 before the global mean (SonoNet-style)"}
    if spec is not None:
        out["spec"] = spec.to_dict()
    return out


def _add_extras(man: dict, extras: dict) -> None:
    """Version, thresholds, synthesis, fine-tune, variants and calibration evidence."""
    man["version"] = extras.get("version", man["version"])
    cal = extras.get("calibration")
    if cal:
        man["thresholds"] = {"temperature": cal["temperature"],
                             "abstain_below": cal["abstain_below"]}
        man["metrics"]["calibration"] = {k: v for k, v in cal.items() if k != "model"}
    rows = extras.get("variants")
    if rows:
        man["metrics"]["variants_top1_agreement_int8_vs_teacher"] = {
            "rows": rows,
            "how": ("quantize/variants.py: 50 seeded variants (rotation +-15 deg, scale "
                    "0.8-1.2, shift +-5%, gain x0.7-1.4, gamma 0.7-1.4, speckle 0-0.25) of "
                    "each of the 13 SonoNet example screens, and 50 of real unlabelled "
                    "planes/ frames the teacher calls Background, through find_roi + "
                    "prepare + the int8 .tflite; teacher = fp32 SonoNet-16 on the same "
                    "region; rows grouped by the example's true class; the examples and "
                    "22 of the 24 Background sources are training frames, the held-out "
                    "rows are not; "
                    "`python -m quantize.variants --model models/plane_student.tflite`")}
    syn = extras.get("synthesis")
    if syn:
        man["synthesis"] = {
            "method": ("DeepInversion (Yin et al., CVPR 2020) with the ADI competition term "
                       "against the base student: CE to the target class + BN statistics "
                       "+ TV + l2 - JS(teacher, student); multi-resolution, see "
                       "quantize/synth.py"),
            **syn}
        man["training_data"].append({
            "name": "images synthesised from the teacher (DeepInversion + ADI)",
            "frames": syn.get("images_kept"),
            "licence": "derived from SonoNet-16 weights (Apache-2.0); no patient data",
            "split": "train only (fine-tune); not shipped, regenerated by `make models`"})
    ft = extras.get("finetune")
    if ft:
        man["distillation"]["finetune"] = ft
    for key in ("cache", "train"):
        if extras.get(key):
            man["distillation"][key] = extras[key]
    head_weight = ((extras.get("train") or {}).get("settings") or {}).get("head_weight") or 0
    if head_weight:
        man["distillation"]["targets"] += (
            f"; on views of frames known to be a head plane (every HC18 frame, labelled or "
            f"test, and the FETAL_PLANES_DB brain frames) the target is {head_weight} x the "
            f"teacher's own split between the two head planes + {1 - head_weight:.1f} x its "
            "answer (the head-plane term, in the last stage only)")
    feature_weight = ((extras.get("train") or {}).get("settings") or {}).get(
        "feature_weight") or 0
    if feature_weight:
        man["distillation"]["targets"] += (
            f"; + {feature_weight} x MSE (over the teacher's variance) between the student's "
            "64-channel head hidden layer, through a 1x1 adapter used only in training, and "
            "the teacher's own (its adaptation layer's first 1x1 conv after the ReLU, the "
            "layer its class maps are read from) on the 14x18 grid (the feature term, in "
            "every stage)")
    named = extras.get("heads_named_head_plane")
    if named is not None:
        man["metrics"]["heldout_hc18_named_a_head_plane_int8"] = {
            "value": round(named[0] / max(1, named[1]), 4), "named": named[0], "n": named[1],
            "teacher": {"named": named[2], "n": named[1]},
            "how": ("every HC18 frame is a head plane its sonographers measured HC on: the "
                    "share of the held-out HC18 heads whose top-1 (int8 student, device path, "
                    "no abstention) is Brain (Tv.) or Brain (Cb.), beside the fp32 teacher's")}
    named = extras.get("examples_named")
    if named is not None:
        man["metrics"]["examples_13_named_int8_with_abstain"] = {
            "value": named, "n": 13,
            "how": ("as `sonoedge score` reports them: top-1 of the int8 student through "
                    "find_roi + prepare at the manifest's temperature, `uncertain` below "
                    "its abstain_below counted wrong; training frames")}
