"""Distil SonoNet-16 into the plane student: cache the teacher once, then train the student.

Step 1, `build_cache`: for every training frame, many augmented views (view 0 is the clean
device view), each resized once for the teacher (224x288) and once for the student
(112x144) from the same augmented region; the teacher labels its view (logits at T=1 and
its 14 class maps at 14x18). Extra views mix two views of different frames (mixup) and the
teacher labels the mixed image itself, so the targets stay exact ("patient and consistent"
function matching, Beyer et al. 2022, with a fixed budget of views instead of an online
teacher). Stored as chunked .npz under build/: uint8 student views, float16 targets; a
finished chunk is never recomputed.

Step 2, `train_student`: KL on soft targets (T=4, and T=1) plus MSE between the student's
and the teacher's class maps (same 14x18 grid), AdamW with a cosine schedule, resumable
from its checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from edge.models.preprocess import PreprocessSpec, normalise
from edge.models.roi import Roi, find_roi
from quantize.data import (
    EXAMPLE_CROP,
    LABELS,
    AugmentSettings,
    Frame,
    border_crop,
    make_view,
    read_frame,
    save_npz,
)
from quantize.student import PlaneStudent
from quantize.teacher import SonoNet16

TEACHER_SPEC = PreprocessSpec(224, 288, scale=255.0)
# The student reads the teacher's own 224x288 view (z-scored, scale 1) and halves it with a
# stride-2 first conv: a 112x144 area-resized input lost detail the teacher's answers hang
# on (the teacher itself agrees with its full-res answer on only 91% of held-out frames
# when fed the 112x144 view upsampled), while the strided conv costs the same MACs.
STUDENT_SPEC = PreprocessSpec(224, 288, scale=1.0)
STUDENT_STEM_STRIDE = 2


@dataclass(frozen=True)
class CacheSettings:
    views_per_frame: int = 32
    views_per_example: int = 160  # the 13 examples are the only frames of 9 classes
    example_strength: float = 1.3
    mix_views: int = 4000
    frames_per_chunk: int = 8
    teacher_batch: int = 32


def _norm_batch(views: np.ndarray, spec: PreprocessSpec) -> torch.Tensor:
    return torch.from_numpy(np.stack([normalise(v, spec) for v in views])[:, None])


def teacher_targets(teacher: SonoNet16, views: np.ndarray,
                    batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Teacher logits (n, 14) and class maps (n, 14, h, w) for uint8 teacher-res views."""
    logits, maps = [], []
    with torch.inference_mode():
        for i in range(0, len(views), batch):
            x = _norm_batch(views[i : i + batch], TEACHER_SPEC)
            lg, mp = teacher.forward_maps(x.contiguous(memory_format=torch.channels_last))
            logits.append(lg.numpy())
            maps.append(mp.contiguous().numpy())
    return np.concatenate(logits), np.concatenate(maps)


def build_cache(teacher: SonoNet16, train: list[Frame], cache_dir: Path, seed: int,
                settings: CacheSettings = CacheSettings()) -> Path:
    """Fill `cache_dir` with view chunks; returns it. Skips chunks that already exist."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    specs = (TEACHER_SPEC, STUDENT_SPEC)
    chunks = [train[i : i + settings.frames_per_chunk]
              for i in range(0, len(train), settings.frames_per_chunk)]
    todo = [i for i in range(len(chunks)) if not (cache_dir / f"views_{i:04d}.npz").exists()]
    base = AugmentSettings()
    for ci in tqdm(todo, desc="teacher cache (views)", unit="chunk"):
        rng = np.random.default_rng([seed, 1, ci])
        t_views, s_views, owner, labels = [], [], [], []
        for frame in chunks[ci]:
            image = read_frame(frame.path)
            grey = image if image.ndim == 2 else image[:, :, :3].mean(axis=2).astype(np.uint8)
            framings = framings_of(frame, image)
            is_example = frame.source == "examples"
            n = settings.views_per_example if is_example else settings.views_per_frame
            aug = replace(base, strength=settings.example_strength) if is_example else base
            label = LABELS.index(frame.label) if is_example else -1
            for v in range(n):
                roi = framings[0] if v == 0 else framings[_pick_framing(rng)]
                tv, sv = make_view(grey, roi, rng, specs, None if v == 0 else aug)
                t_views.append(tv)
                s_views.append(sv)
                owner.append(train.index(frame))
                labels.append(label)
        t_arr = np.stack(t_views)
        logits, maps = teacher_targets(teacher, t_arr, settings.teacher_batch)
        save_npz(cache_dir / f"views_{ci:04d}.npz", student=np.stack(s_views),
                    teacher_small=t_arr, logits=logits.astype(np.float16),
                    maps=maps.astype(np.float16), frame=np.asarray(owner, np.int32),
                    label=np.asarray(labels, np.int16))
    _build_mix(teacher, cache_dir, seed, settings)
    return cache_dir


def _build_mix(teacher: SonoNet16, cache_dir: Path, seed: int, settings: CacheSettings) -> None:
    n_chunks = math.ceil(settings.mix_views / 256)
    todo = [i for i in range(n_chunks) if not _has(cache_dir / f"mix_{i:04d}.npz", "teacher_small")]
    if not todo:
        return
    files = sorted(cache_dir.glob("views_*.npz"))
    loaded = [np.load(f) for f in files]
    frames = np.concatenate([z["frame"] for z in loaded])
    t_all = np.concatenate([z["teacher_small"] for z in loaded])
    s_all = np.concatenate([z["student"] for z in loaded])
    for mi in tqdm(todo, desc="teacher cache (mixup)", unit="chunk"):
        rng = np.random.default_rng([seed, 2, mi])
        n = min(256, settings.mix_views - mi * 256)
        a = rng.integers(0, len(frames), n)
        b = rng.integers(0, len(frames), n)
        same = frames[a] == frames[b]
        b[same] = (b[same] + len(frames) // 2) % len(frames)
        lam = rng.uniform(0.0, 1.0, n).astype(np.float32)
        t_mix = _mix(t_all[a], t_all[b], lam)
        s_mix = _mix(s_all[a], s_all[b], lam)
        logits, maps = teacher_targets(teacher, t_mix, settings.teacher_batch)
        save_npz(cache_dir / f"mix_{mi:04d}.npz", student=s_mix, teacher_small=t_mix,
                    logits=logits.astype(np.float16), maps=maps.astype(np.float16),
                    frame=np.full(n, -1, np.int32), label=np.full(n, -1, np.int16))


FRAMING_P = (0.6, 0.2, 0.2)  # device ROI, whole frame, alternative box


def framings_of(frame: Frame, image: np.ndarray) -> list[Roi]:
    """Boxes a view may be framed by: the device's find_roi box first, then the whole frame,
    then an alternative (the README's fixed crop on the GE example screens, else the ROI
    with 8% cut from every side). Mixing framings keeps the student following the teacher
    when the ROI finder's box moves (it is tuned independently of the models)."""
    full = Roi(0, 0, image.shape[1], image.shape[0])
    roi = find_roi(image) or full
    alt = EXAMPLE_CROP if frame.source == "examples" else border_crop(roi, image.shape, 0.08)
    return [roi, full, alt]


def _pick_framing(rng: np.random.Generator) -> int:
    return int(rng.choice(len(FRAMING_P), p=FRAMING_P))


def _has(path: Path, key: str) -> bool:
    if not path.exists():
        return False
    with np.load(path) as z:
        return key in z.files


def _mix(a: np.ndarray, b: np.ndarray, lam: np.ndarray) -> np.ndarray:
    lam = lam[:, None, None]
    return np.clip(lam * a + (1 - lam) * b + 0.5, 0, 255).astype(np.uint8)


def load_cache(cache_dir: Path, spec: PreprocessSpec = STUDENT_SPEC) -> dict[str, np.ndarray]:
    """Targets plus the views at `spec`'s resolution, under the key "student"."""
    files = sorted(cache_dir.glob("views_*.npz")) + sorted(cache_dir.glob("mix_*.npz"))
    if not files:
        raise FileNotFoundError(f"{cache_dir}: no cached views (run the cache step first)")
    parts = [np.load(f) for f in files]
    key = "teacher_small" if (spec.height, spec.width) == (TEACHER_SPEC.height,
                                                           TEACHER_SPEC.width) else "student"
    out = {k: np.concatenate([p[k] for p in parts]) for k in ("logits", "maps", "label")}
    out["student"] = np.concatenate([p[key] for p in parts])
    return out


# ---------------------------------------------------------------- held-out frames
def roi_fingerprint(boxes: list[Roi | None]) -> str:
    """A short hash of the ROI finder's boxes: changes whenever edge/roi.py answers differ."""
    text = ";".join("none" if b is None else ",".join(map(str, b.as_list())) for b in boxes)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def heldout_set(teacher: SonoNet16, frames: list[Frame], path: Path) -> dict[str, np.ndarray]:
    """Device-path views of held-out frames and the teacher's answers (clean and 4% crop).

    Recomputed whenever the ROI finder's boxes on these frames change (a few seconds).
    """
    images = [read_frame(f.path) for f in frames]
    rois = [find_roi(im) for im in images]
    fingerprint = roi_fingerprint(rois)
    if path.exists():
        cached = dict(np.load(path))
        if str(cached.get("roi_fingerprint")) == fingerprint:
            return cached
    s_views, t_views, t_crop = [], [], []
    for image, roi in tqdm(list(zip(images, rois, strict=True)), desc="held-out frames",
                           unit="frame"):
        grey = image if image.ndim == 2 else image[:, :, :3].mean(axis=2).astype(np.uint8)
        tv, sv = make_view(grey, roi, None, (TEACHER_SPEC, STUDENT_SPEC), None)
        (tc,) = make_view(grey, border_crop(roi, grey.shape), None, (TEACHER_SPEC,), None)
        s_views.append(sv)
        t_views.append(tv)
        t_crop.append(tc)
    logits, _ = teacher_targets(teacher, np.stack(t_views))
    crop_logits, _ = teacher_targets(teacher, np.stack(t_crop))
    out = {"student": np.stack(s_views), "teacher": np.stack(t_views), "logits": logits,
           "crop_logits": crop_logits, "source": np.array([f.source for f in frames]),
           "name": np.array([f.path.name for f in frames]),
           "roi_fingerprint": np.array(fingerprint)}
    save_npz(path, **out)
    return out


def student_logits(student: PlaneStudent, views: np.ndarray, batch: int = 64) -> np.ndarray:
    student.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(views), batch):
            out.append(student(_norm_batch(views[i : i + batch], STUDENT_SPEC)).numpy())
    return np.concatenate(out)


# ---------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainSettings:
    steps: int = 2400
    batch: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 50
    temperature: float = 2.0
    map_weight: float = 0.2  # maps are noisy (variance 32); at 1.0 they crowded out top-1
    label_weight: float = 0.5  # CE on the true label, only for views of the 13 examples
    eval_every: int = 100


def distil_loss(s_logits: torch.Tensor, s_maps: torch.Tensor, t_logits: torch.Tensor,
                t_maps: torch.Tensor, settings: TrainSettings, map_scale: float) -> torch.Tensor:
    temp = settings.temperature
    kl_t = F.kl_div(F.log_softmax(s_logits / temp, 1), F.log_softmax(t_logits / temp, 1),
                    reduction="batchmean", log_target=True) * temp * temp
    kl_1 = F.kl_div(F.log_softmax(s_logits, 1), F.log_softmax(t_logits, 1),
                    reduction="batchmean", log_target=True)
    maps = F.mse_loss(s_maps, t_maps) / map_scale
    return kl_t + kl_1 + settings.map_weight * maps


def train_student(student: PlaneStudent, cache: dict[str, np.ndarray], ckpt: Path, seed: int,
                  settings: TrainSettings = TrainSettings(),
                  heldout: dict[str, np.ndarray] | None = None,
                  extra: dict[str, np.ndarray] | None = None,
                  extra_share: float = 0.0) -> PlaneStudent:
    """Train (or resume) and return the student; the checkpoint holds the step reached.

    `extra` (same keys as `cache`, e.g. views of synthesised images) supplies
    round(extra_share * batch) rows of every batch; the rest come from `cache`.
    """
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(student.parameters(), lr=settings.lr,
                            weight_decay=settings.weight_decay)
    step = 0
    log: list[dict] = []
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        student.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, log = state["step"], state["log"]
        if state.get("settings") != asdict(settings):
            raise ValueError(f"{ckpt}: checkpoint was made with other settings")
    n = len(cache["student"])
    n_extra = 0
    if extra is not None and extra_share > 0:
        n_extra = int(round(extra_share * settings.batch))
        cache = {k: np.concatenate([cache[k], extra[k]]) for k in
                 ("student", "logits", "maps", "label")}
    views = cache["student"]
    t_logits = torch.from_numpy(cache["logits"].astype(np.float32))
    t_maps = torch.from_numpy(cache["maps"][:n].astype(np.float32))
    map_scale = float(t_maps.var()) + 1e-6
    t_maps = torch.from_numpy(cache["maps"].astype(np.float32))
    true = torch.from_numpy(cache["label"].astype(np.int64))
    student = student.to(memory_format=torch.channels_last)

    def lr_at(s: int) -> float:
        if s < settings.warmup:
            return settings.lr * (s + 1) / settings.warmup
        p = (s - settings.warmup) / max(1, settings.steps - settings.warmup)
        return settings.lr * 0.5 * (1 + math.cos(math.pi * p))

    bar = tqdm(total=settings.steps, initial=step, desc="distil", unit="step")
    t0 = time.time()
    while step < settings.steps:
        rng = np.random.default_rng([seed, 3, step])
        idx = np.sort(rng.choice(n, settings.batch - n_extra, replace=False))
        if n_extra:
            idx = np.concatenate([idx, n + np.sort(rng.choice(len(views) - n, n_extra,
                                                              replace=False))])
        x = _norm_batch(views[idx], STUDENT_SPEC).contiguous(memory_format=torch.channels_last)
        student.train()
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        s_logits, s_maps = student.forward_maps(x)
        loss = distil_loss(s_logits, s_maps, t_logits[idx], t_maps[idx], settings, map_scale)
        y = true[idx]
        if settings.label_weight and bool((y >= 0).any()):
            loss = loss + settings.label_weight * F.cross_entropy(
                s_logits[y >= 0], y[y >= 0], reduction="sum") / len(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % settings.eval_every == 0 or step == settings.steps:
            entry = {"step": step, "loss": float(loss.item()), "min": (time.time() - t0) / 60}
            if heldout is not None:
                held_views = heldout["teacher" if views.shape[1:] == heldout["teacher"].shape[
                    1:] else "student"]
                pred = student_logits(student, held_views).argmax(1)
                entry["heldout_agreement"] = float((pred == heldout["logits"].argmax(1)).mean())
            log.append(entry)
            tqdm.write(json.dumps(entry))
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"model": student.state_dict(), "opt": opt.state_dict(), "step": step,
                        "log": log, "settings": asdict(settings)}, tmp)
            tmp.replace(ckpt)
    bar.close()
    (ckpt.parent / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    return student.eval()
