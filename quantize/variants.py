"""Per-class true-plane accuracy of an int8 plane student on realistic variants of the
example screens, beside the teacher's own and the student's agreement with the teacher.

The real frames here are almost all heads; the only real frames of the other planes are the
13 SonoNet example screens, which the student trained on. This test makes 50 seeded
variants of each example: the ultrasound region of the screen (found by `find_roi`) is
rotated (+-15 deg), scaled (0.8-1.2), shifted (+-5% of its width/height), its gain changed
(x0.7-1.4, clipped at 255), its contrast changed (power law, gamma 0.7-1.4) and speckled
(multiplicative noise, std 0-0.25), then pasted back into the screen. Each variant screen
then goes through the device path: `find_roi` + `edge.models.preprocess.prepare` + the int8
.tflite via `edge.models.runtime.open_model_file`; the fp32 teacher sees the same region at
224x288 (TEACHER_SPEC). Rows are grouped by the example's true class. Beside them, the
teacher's own stability: how often it gives the same answer when 4% of the region is cut
from every side (the same measure as the manifest's held-out one).

Background has no example screen. Its 50 variants come from real frames of `planes/` that
carry no SonoNet label (maternal cervix, "Other", umbilical-cord frames) and that the
teacher itself calls Background on the clean device view, cycled in file order (seeded
variants, the same transforms): with seed 0, 24 frames (17 umbilical-cord frames, 7
FETAL_PLANES_DB "Other"/cervix/unlabelled-brain frames), 22 of them training frames (as
are the 13 examples) and 2 held-out ones; the held-out rows below are never trained on.

In the same run: the held-out real frames of `heldout.npz` (HC18 heads and FETAL_PLANES_DB
frames of patients never trained on), device-path views, the teacher's answer as target.

    python -m quantize.variants --before old.tflite --after models/plane_student.tflite
    python -m quantize.variants --model models/plane_student.tflite
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edge.models.preprocess import grey_resized, normalise
from edge.models.roi import Roi, find_roi
from quantize.data import (
    LABELS,
    DataError,
    border_crop,
    data_dir,
    list_frames,
    load_npz,
    read_frame,
    save_npz,
)

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "build" / "plane_student" / "seed0"


@dataclass(frozen=True)
class VariantSettings:
    per_class: int = 50
    rotate_deg: float = 15.0
    scale: tuple[float, float] = (0.8, 1.2)
    shift: float = 0.05
    gain: tuple[float, float] = (0.7, 1.4)
    gamma: tuple[float, float] = (0.7, 1.4)
    speckle: float = 0.25


def variant_params(rng: np.random.Generator, s: VariantSettings) -> dict[str, float]:
    return {"angle": float(rng.uniform(-s.rotate_deg, s.rotate_deg)),
            "scale": float(rng.uniform(*s.scale)),
            "dx": float(rng.uniform(-s.shift, s.shift)),
            "dy": float(rng.uniform(-s.shift, s.shift)),
            "gain": float(rng.uniform(*s.gain)),
            "gamma": float(rng.uniform(*s.gamma)),
            "speckle": float(rng.uniform(0.0, s.speckle))}


def apply_variant(screen: np.ndarray, roi: Roi, p: dict[str, float],
                  rng: np.random.Generator) -> np.ndarray:
    """The screen with its ultrasound region transformed by `p` (same dtype and shape)."""
    out = screen.copy()
    region = roi.crop(screen)
    h, w = region.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), p["angle"], p["scale"])
    m[0, 2] += p["dx"] * w
    m[1, 2] += p["dy"] * h
    warped = cv2.warpAffine(region, m, (w, h), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    x = warped.astype(np.float32) / 255.0
    x = np.power(np.clip(x * p["gain"], 0.0, 1.0), p["gamma"])
    if p["speckle"] > 0:
        noise = rng.normal(1.0, p["speckle"], size=(h // 2 + 1, w // 2 + 1)).astype(np.float32)
        noise = cv2.resize(noise, (w, h), interpolation=cv2.INTER_LINEAR)
        x = x * (noise[:, :, None] if x.ndim == 3 else noise)
    out[roi.y: roi.y + h, roi.x: roi.x + w] = np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


def background_sources(teacher, frames) -> list:
    """Unlabelled planes/ frames the teacher calls Background on the clean device view."""
    from quantize.specs import TEACHER_SPEC
    from quantize.teacher import teacher_targets

    cands = [f for f in frames if f.source == "planes" and not f.label]
    views = np.stack([grey_resized(im, find_roi(im), TEACHER_SPEC)
                      for im in (read_frame(f.path) for f in cands)])
    logits, _ = teacher_targets(teacher, views)
    bg = LABELS.index("Background")
    return [f for f, p in zip(cands, logits.argmax(1), strict=True) if p == bg]


def build_views(seed: int = 0, settings: VariantSettings = VariantSettings(),
                cache: Path | None = None) -> dict[str, np.ndarray]:
    """Device-path uint8 views (224x288) of every variant, the teacher's logits on them, and
    the held-out frames; cached as one .npz (teacher work is the same for every model)."""
    from quantize.specs import STUDENT_SPEC, TEACHER_SPEC
    from quantize.teacher import load_teacher, teacher_targets

    cache = cache or WORK / "variants" / f"views_seed{seed}.npz"
    held_path = WORK / "heldout.npz"
    held_key = (str(load_npz(held_path, ("roi_fingerprint",))["roi_fingerprint"])
                if held_path.exists() else "")
    key = json.dumps({"seed": seed, **asdict(settings), "with": "teacher_crop",
                      "heldout": held_key}, sort_keys=True)
    if cache.exists():
        data = load_npz(cache)
        if str(data.get("key")) == key:
            return data
    root = data_dir()
    teacher = load_teacher(root / "sononet" / "SonoNet16.npz")
    frames = list_frames(root)
    examples = [f for f in frames if f.source == "examples"]
    sources: list[tuple[object, str]] = [(f, f.label) for f in examples]
    bg = background_sources(teacher, frames)
    if not bg:
        raise DataError(f"{root / 'planes'}: no unlabelled frame the teacher calls Background")
    views, t_views, t_crop, cls, src_names, params = [], [], [], [], [], []
    jobs = [(f, label, v) for f, label in sources for v in range(settings.per_class)]
    jobs += [(bg[v % len(bg)], "Background", v) for v in range(settings.per_class)]
    images: dict[Path, np.ndarray] = {}
    for frame, label, v in tqdm(jobs, desc="variants", unit="view"):
        if frame.path not in images:
            images[frame.path] = read_frame(frame.path)
        screen = images[frame.path]
        roi0 = find_roi(screen) or Roi(0, 0, screen.shape[1], screen.shape[0])
        rng = np.random.default_rng([seed, LABELS.index(label), v])
        p = variant_params(rng, settings)
        var = apply_variant(screen, roi0, p, rng)
        roi = find_roi(var)
        views.append(grey_resized(var, roi, STUDENT_SPEC))
        t_views.append(grey_resized(var, roi, TEACHER_SPEC))
        t_crop.append(grey_resized(var, border_crop(roi, var.shape), TEACHER_SPEC))
        cls.append(LABELS.index(label))
        src_names.append(frame.path.name)
        params.append(json.dumps(p))
    t_logits, _ = teacher_targets(teacher, np.stack(t_views))
    crop_logits, _ = teacher_targets(teacher, np.stack(t_crop))
    vidx = [v for _, _, v in jobs]
    from quantize.gate import views_for

    held = load_npz(WORK / "heldout.npz")
    out = {"views": np.stack(views), "teacher_logits": t_logits.astype(np.float32),
           "teacher_crop_logits": crop_logits.astype(np.float32),
           "cls": np.asarray(cls, np.int16), "vidx": np.asarray(vidx, np.int16),
           "source": np.array(src_names),
           "params": np.array(params), "held_views": views_for(held, STUDENT_SPEC),
           "held_logits": held["logits"].astype(np.float32), "held_source": held["source"],
           "held_crop_logits": held["crop_logits"].astype(np.float32),
           "held_name": held["name"], "key": np.array(key)}
    save_npz(cache, **out)
    return out


def student_outputs(model: Path, views: np.ndarray, threads: int = 1) -> np.ndarray:
    """Dequantized int8 logits of `model` on uint8 device views (device runtime)."""
    from quantize.convert import run_tflite
    from quantize.specs import STUDENT_SPEC

    return run_tflite(model, np.stack([normalise(v, STUDENT_SPEC)[None] for v in views]),
                      threads)


def evaluate(model: Path, seed: int = 0, threads: int = 1) -> dict:
    """Per-class agreement and logits of `model`; cached by the file's sha256."""
    from edge.models.manifest import sha256_of

    if not Path(model).is_file():
        raise DataError(f"{model}: model file not found")
    data = build_views(seed)
    digest = sha256_of(Path(model))[:12]
    path = WORK / "variants" / f"result_{digest}_seed{seed}.npz"
    if path.exists():
        z = load_npz(path)
        v_logits, h_logits = z["variant_logits"], z["held_logits"]
    else:
        v_logits = student_outputs(model, data["views"], threads)
        h_logits = student_outputs(model, data["held_views"], threads)
        save_npz(path, variant_logits=v_logits, held_logits=h_logits)
    return summarise(data, v_logits, h_logits, model, digest)


def summarise(data: dict, v_logits: np.ndarray, h_logits: np.ndarray, model, digest) -> dict:
    t = data["teacher_logits"].argmax(1)
    tc = data["teacher_crop_logits"].argmax(1)
    s = v_logits.argmax(1)
    rows = {}
    for c, name in enumerate(LABELS):
        m = data["cls"] == c
        if m.any():
            rows[name] = {"n": int(m.sum()), "agree": int((s[m] == t[m]).sum()),
                          "true": int((s[m] == c).sum()),
                          "teacher_true": int((t[m] == c).sum()),
                          "teacher_stable": int((tc[m] == t[m]).sum())}
    rows["all variants"] = {"n": len(t), "agree": int((s == t).sum()),
                            "true": int((s == data["cls"]).sum()),
                            "teacher_true": int((t == data["cls"]).sum()),
                            "teacher_stable": int((tc == t).sum())}
    ht, hs = data["held_logits"].argmax(1), h_logits.argmax(1)
    for src, name in (("hc18", "held-out HC18 heads"), ("planes", "held-out planes frames")):
        m = data["held_source"] == src
        rows[name] = {"n": int(m.sum()), "agree": int((hs[m] == ht[m]).sum()),
                      "teacher_stable": int((data["held_crop_logits"][m].argmax(1) ==
                                             ht[m]).sum())}
    return {"model": str(model), "sha256_12": digest, "rows": rows,
            "variant_logits": v_logits, "held_logits": h_logits}


def _cell(row: dict | None, key: str = "agree") -> str:
    if row is None or key not in row:
        return "-"
    return f"{row[key] / row['n']:.1%} ({row[key]}/{row['n']})"


def table(results: dict[str, dict]) -> str:
    """Markdown: one row per class; per model (e.g. before, after) the share of variants
    on which the int8 student names the true plane, and its agreement with the teacher.
    The held-out rows have no true plane: agreement with the teacher only."""
    names = list(results)
    first = results[names[0]]["rows"]
    head = ["class", "n", "teacher names true plane", "teacher same answer, 4% crop"]
    for n in names:
        head += [f"{n}: int8 names true plane", f"{n}: int8 vs teacher"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, row in first.items():
        tt = _cell(row, "teacher_true")
        ts = f"{row['teacher_stable']}/{row['n']}" if "teacher_stable" in row else "-"
        cells = [key, str(row["n"]), tt, ts]
        for n in names:
            cells += [_cell(results[n]["rows"].get(key), "true"),
                      _cell(results[n]["rows"].get(key))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quantize.variants",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path)
    parser.add_argument("--after", type=Path)
    parser.add_argument("--model", type=Path, action="append", default=[])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    models: dict[str, Path] = {}
    if args.before:
        models["before"] = args.before
    if args.after:
        models["after"] = args.after
    for m in args.model:
        models[m.name] = m
    if not models:
        models["shipped"] = REPO / "models" / "plane_student.tflite"
    try:
        results = {name: evaluate(path, args.seed, args.threads)
                   for name, path in models.items()}
    except (DataError, FileNotFoundError, ValueError) as exc:
        print(f"variants: {exc}", file=sys.stderr)
        return 2
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({n: {k: v for k, v in r.items() if "logits" not in k}
                                         for n, r in results.items()}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
