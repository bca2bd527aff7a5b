"""Data-free images for the classes the real frames lack: DeepInversion with ADI.

Yin et al., "Dreaming to Distill: Data-free Knowledge Transfer via DeepInversion", CVPR
2020. Inputs are optimised so that (1) the teacher assigns them a target class (CE),
(2) the batch statistics of every BN layer's input match the teacher's stored running
mean/variance (the "feature distribution regulariser"; first BN weighted x10 as in the
authors' code), (3) image priors keep them smooth (total variation, l2), and (4) the
Adaptive DeepInversion competition term pushes them where the current student disagrees
with the teacher: loss -= beta * JS(teacher || student).

Differences from the paper, all for CPU cost (TOOLCHAIN.md: 0.71 s per step for 32 images
at 112x144 on 2 threads; the paper's 2,000 steps per batch would take hours here):
- a few hundred steps per batch, multi-resolution (56x72, then 112x144: the teacher is fully
  convolutional with global pooling), Adam with a cosine learning rate;
- the BN distance is standardised per channel (|mu - mu_run| / sigma_run and
  sigma^2 / sigma^2_run - 1, l2 over channels) because the teacher's layers have running
  variances from ~1e-2 to ~1e5 (its input is 255 x z-score) and raw distances would be
  dominated by the first layers;
- the input is re-z-scored per image inside the loss, exactly as the device normalises,
  so the images live in the teacher's own input space; saved as uint8 greyscale (a linear
  min-max map, which the per-image z-score undoes up to rounding).

The student sees each image as it would on the device: upsampled 2x (its stride-2 stem
halves it again), z-scored at scale 1. Every finished batch is saved at once under
`build/plane_student/seed<seed>/synth/` (resumable, seeded per batch); at the end the
teacher relabels each image through the student's 224x288 view and only images it assigns
to their target class are kept.

    python -m quantize.synth [--seed 0] [--threads 1] [--per-class 20]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from quantize.data import LABELS, load_npz, save_npz
from quantize.teacher import NUM_CLASSES

REPO = Path(__file__).resolve().parents[1]
STUDENT_VIEW = (224, 288)  # distil.STUDENT_SPEC: what the student sees of every image


@dataclass(frozen=True)
class SynthSettings:
    per_class: int = 14  # images per class before the teacher's check
    batch: int = 28  # mixed classes: 2 of each of the 14 per batch
    # (height, width, steps): layout at 56x72, detail at 112x144, then a few steps at the
    # student's own 224x288 view. Measured: images made only up to 112x144 and upsampled
    # were called Background by the teacher at 224x288 (3 of 28 kept), so the last phase
    # must run at full size (about 5.5 s a step for 28 images on one thread).
    phases: tuple[tuple[int, int, int], ...] = ((56, 72, 150), (112, 144, 30), (224, 288, 16))
    lr: float = 0.1
    lr_last: float = 0.05  # the full-size phase starts from a good image: smaller steps
    bn_weight: float = 0.1  # alpha (BN distance ~400 on noise, ~40 on real 224x288 views)
    first_bn_mult: float = 10.0
    tv_weight: float = 1e-2
    l2_weight: float = 1e-4
    compete_weight: float = 1.0  # beta (ADI); 0 = plain DeepInversion
    compete_temp: float = 3.0  # softmax temperature of the JS term, as in the authors' code
    jitter: float = 0.06  # max roll, share of width/height
    flip: float = 0.5

    @property
    def total_steps(self) -> int:
        return sum(p[2] for p in self.phases)

    @property
    def n_images(self) -> int:
        return self.per_class * NUM_CLASSES

    @property
    def n_batches(self) -> int:
        return math.ceil(self.n_images / self.batch)

    def tag(self, student_name: str) -> str:
        text = json.dumps({**asdict(self), "student": student_name}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:8]


def zscore(x: torch.Tensor) -> torch.Tensor:
    """Per-image z-score, differentiable (the device's `normalise`, scale 1)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True, unbiased=False).clamp_min(1e-6)
    return (x - mean) / std


class BNStats:
    """Forward hooks on every BatchNorm2d: the standardised distance of the batch's input
    statistics from the layer's running statistics, summed (first layer x first_mult)."""

    def __init__(self, model: nn.Module, first_mult: float = 10.0) -> None:
        self.bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        self.first_mult = first_mult
        self.losses: list[torch.Tensor] = []
        self.handles = [bn.register_forward_hook(self._hook) for bn in self.bns]

    def _hook(self, module: nn.BatchNorm2d, inputs, _output) -> None:
        x = inputs[0]
        mean = x.mean(dim=(0, 2, 3))
        var = x.permute(1, 0, 2, 3).reshape(x.shape[1], -1).var(dim=1, unbiased=False)
        r_std = (module.running_var + module.eps).sqrt()
        d = torch.linalg.vector_norm((mean - module.running_mean) / r_std) + \
            torch.linalg.vector_norm(var / (module.running_var + module.eps) - 1.0)
        self.losses.append(d)

    def take(self) -> torch.Tensor:
        losses, self.losses = self.losses, []
        return self.first_mult * losses[0] + sum(losses[1:])

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def tv_l2(x: torch.Tensor) -> torch.Tensor:
    dx = x[:, :, :, 1:] - x[:, :, :, :-1]
    dy = x[:, :, 1:, :] - x[:, :, :-1, :]
    return dx.pow(2).mean() + dy.pow(2).mean()


def js_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor, temp: float) -> torch.Tensor:
    p = F.softmax(p_logits / temp, 1)
    q = F.softmax(q_logits / temp, 1)
    m = (0.5 * (p + q)).clamp_min(1e-8)
    return 0.5 * (p * (p.clamp_min(1e-8) / m).log()).sum(1).mean() + \
        0.5 * (q * (q.clamp_min(1e-8) / m).log()).sum(1).mean()


def batch_targets(index: int, settings: SynthSettings) -> np.ndarray:
    start = index * settings.batch
    stop = min(settings.n_images, start + settings.batch)
    return np.arange(start, stop) % NUM_CLASSES


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(n, 1, h, w) float -> (n, h, w) uint8 by a per-image linear min-max map."""
    a = x.detach()[:, 0].numpy().astype(np.float64)
    lo = a.min(axis=(1, 2), keepdims=True)
    hi = a.max(axis=(1, 2), keepdims=True)
    return np.clip((a - lo) / np.maximum(hi - lo, 1e-9) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def synthesise_batch(teacher: nn.Module, student: nn.Module | None, targets: np.ndarray,
                     seed: int, index: int, settings: SynthSettings,
                     progress=None) -> tuple[np.ndarray, dict]:
    """Optimise one mixed-class batch; uint8 images at the last phase's size and a loss log."""
    gen = torch.Generator().manual_seed(int(seed) * 100_003 + index)
    rng = np.random.default_rng([seed, 11, index])
    n = len(targets)
    y = torch.from_numpy(targets.astype(np.int64))
    x = torch.randn((n, 1, *settings.phases[0][:2]), generator=gen)
    hooks = BNStats(teacher, settings.first_bn_mult)
    log: dict[str, list[float]] = {"bn": [], "ce": [], "js": [], "step": []}
    total = settings.total_steps
    step = 0
    try:
        for i, (ph, pw, steps) in enumerate(settings.phases):
            phase = (ph, pw)
            base_lr = settings.lr_last if i == len(settings.phases) - 1 and i else settings.lr
            if steps == 0:
                continue
            if tuple(x.shape[2:]) != tuple(phase):
                x = F.interpolate(x.detach(), size=phase, mode="bilinear", align_corners=False)
            x = x.detach().requires_grad_(True)
            opt = torch.optim.Adam([x], lr=settings.lr, betas=(0.5, 0.9), eps=1e-8)
            h, w = phase
            lim_y, lim_x = max(1, int(settings.jitter * h)), max(1, int(settings.jitter * w))
            for s in range(steps):
                lr = base_lr * 0.5 * (1 + math.cos(math.pi * s / steps))
                for g in opt.param_groups:
                    g["lr"] = lr
                dy, dx = int(rng.integers(-lim_y, lim_y + 1)), int(rng.integers(-lim_x, lim_x + 1))
                xj = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
                if rng.random() < settings.flip:
                    xj = torch.flip(xj, dims=(3,))
                z = zscore(xj)
                t_logits = teacher(255.0 * z)
                bn = hooks.take()
                ce = F.cross_entropy(t_logits, y)
                loss = ce + settings.bn_weight * bn + settings.tv_weight * tv_l2(z) * (
                    h * w / 100.0) + settings.l2_weight * x.pow(2).mean()
                js = torch.zeros(())
                if student is not None and settings.compete_weight > 0:
                    # The student's view: 2x (its stem halves it), never beyond 224x288.
                    zs = z if h >= STUDENT_VIEW[0] else zscore(F.interpolate(
                        z, scale_factor=2, mode="bilinear", align_corners=False))
                    s_logits = student(zs)
                    js = js_divergence(t_logits, s_logits, settings.compete_temp)
                    loss = loss - settings.compete_weight * js
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                if step == 1 or step % 10 == 0 or step == total:
                    log["step"].append(step)
                    log["bn"].append(float(bn.item()))
                    log["ce"].append(float(ce.item()))
                    log["js"].append(float(js.item()))
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(bn=f"{bn.item():.2f}", ce=f"{ce.item():.3f}",
                                         js=f"{js.item():.3f}")
    finally:
        hooks.remove()
    final = tuple(settings.phases[-1][:2])
    if tuple(x.shape[2:]) != final:
        x = F.interpolate(x.detach(), size=final, mode="bilinear", align_corners=False)
    return to_uint8(zscore(x.detach())), log


def bn_loss_of(teacher: nn.Module, images: np.ndarray, first_mult: float = 10.0) -> float:
    """The BN-statistics distance of uint8 images (n, h, w) as the teacher sees them."""
    hooks = BNStats(teacher, first_mult)
    try:
        with torch.no_grad():
            x = torch.from_numpy(images.astype(np.float32))[:, None]
            teacher(255.0 * zscore(x))
            return float(hooks.take())
    finally:
        hooks.remove()


def device_upsample(images: np.ndarray, size: tuple[int, int] = (224, 288)) -> np.ndarray:
    """uint8 images resized to the student's view (bilinear), as stored views."""
    return np.stack([cv2.resize(im, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
                     for im in images])


def run_synthesis(teacher: nn.Module, student: nn.Module | None, out_dir: Path, seed: int,
                  settings: SynthSettings = SynthSettings(), student_name: str = "none",
                  max_batches: int | None = None) -> Path:
    """Fill `out_dir` with batch_XXXX.npz (resumable); returns `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"settings": asdict(settings), "student": student_name, "seed": seed,
            "tag": settings.tag(student_name)}
    meta_path = out_dir / "settings.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if old.get("tag") != meta["tag"]:
            raise ValueError(f"{meta_path}: synthesis made with other settings (tag "
                             f"{old.get('tag')} != {meta['tag']}); use another folder")
    else:
        meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    for p in list(teacher.parameters()) + (list(student.parameters()) if student else []):
        p.requires_grad_(False)
    teacher.eval()
    if student is not None:
        student.eval()
    n_batches = settings.n_batches if max_batches is None else min(max_batches,
                                                                   settings.n_batches)
    todo = [b for b in range(n_batches) if not (out_dir / f"batch_{b:04d}.npz").exists()]
    steps_per = settings.total_steps
    bar = tqdm(total=n_batches * steps_per, initial=(n_batches - len(todo)) * steps_per,
               desc="synthesise (DeepInversion+ADI)", unit="step")
    for b in todo:
        targets = batch_targets(b, settings)
        t0 = time.time()
        images, log = synthesise_batch(teacher, student, targets, seed, b, settings, bar)
        seconds = time.time() - t0
        view = device_upsample(images)
        from quantize.specs import TEACHER_SPEC
        from quantize.teacher import teacher_targets

        logits, _ = teacher_targets(teacher, view)
        save_npz(out_dir / f"batch_{b:04d}.npz", images=images,
                 target=targets.astype(np.int16), teacher_logits=logits.astype(np.float32),
                 kept=(logits.argmax(1) == targets), seconds=np.float32(seconds),
                 log=np.array(json.dumps(log)), spec=np.array(json.dumps(
                     TEACHER_SPEC.to_dict())))
        tqdm.write(f"batch {b}: {seconds:.0f} s, bn {log['bn'][0]:.1f} -> {log['bn'][-1]:.1f}, "
                   f"kept {int((logits.argmax(1) == targets).sum())}/{len(targets)}")
    bar.close()
    return out_dir


def load_synth(out_dir: Path, kept_only: bool = True) -> dict[str, np.ndarray]:
    files = sorted(out_dir.glob("batch_[0-9][0-9][0-9][0-9].npz"))
    if not files:
        raise FileNotFoundError(f"{out_dir}: no synthesised batches (run quantize.synth)")
    parts = [load_npz(f) for f in files]
    out = {k: np.concatenate([p[k] for p in parts])
           for k in ("images", "target", "teacher_logits", "kept")}
    out["seconds"] = np.array([float(p["seconds"]) for p in parts])
    if kept_only:
        keep = out["kept"].astype(bool)
        for k in ("images", "target", "teacher_logits", "kept"):
            out[k] = out[k][keep]
    return out


def synth_report(out_dir: Path) -> dict:
    """Cost and per-class yield of a synthesis folder (for the manifest and the notes)."""
    data = load_synth(out_dir, kept_only=False)
    meta = json.loads((out_dir / "settings.json").read_text())
    per = {}
    for c, name in enumerate(LABELS):
        m = data["target"] == c
        per[name] = {"made": int(m.sum()), "kept": int(data["kept"][m].sum())}
    return {"images_made": int(len(data["target"])), "images_kept": int(data["kept"].sum()),
            "per_class": per, "minutes": round(float(data["seconds"].sum()) / 60, 2),
            "batches": int(len(data["seconds"])), "settings": meta["settings"],
            "student": meta["student"], "threads": meta.get("threads", 1)}


def load_nets(seed: int, student_ckpt: Path | None):
    from quantize.data import data_dir
    from quantize.student import load_student
    from quantize.teacher import load_teacher

    teacher = load_teacher(data_dir() / "sononet" / "SonoNet16.npz")
    student = None
    if student_ckpt is not None:
        if not student_ckpt.is_file():
            raise FileNotFoundError(f"{student_ckpt}: student checkpoint not found")
        student = load_student(student_ckpt)
    return teacher, student


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quantize.synth",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--per-class", type=int, default=SynthSettings.per_class)
    parser.add_argument("--steps", default=None,
                        help="steps per phase, e.g. 150,30,16 (56x72, 112x144, 224x288)")
    parser.add_argument("--student", type=Path, default=None,
                        help="student checkpoint for the competition term "
                             "(default: the shipped build's checkpoint)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--max-batches", type=int, default=None)
    args = parser.parse_args(argv)
    from quantize.data import DataError

    torch.set_num_threads(args.threads)
    work = REPO / "build" / "plane_student" / f"seed{args.seed}"
    ckpt = args.student or work / f"student-{SHIPPED_STUDENT_TAG}.pt"
    settings = SynthSettings(per_class=args.per_class)
    if args.steps:
        steps = [int(v) for v in args.steps.split(",")]
        if len(steps) != len(settings.phases):
            print(f"synth: --steps needs {len(settings.phases)} numbers", file=sys.stderr)
            return 2
        settings = replace(settings, phases=tuple(
            (h, w, n) for (h, w, _), n in zip(settings.phases, steps, strict=True)))
    try:
        teacher, student = load_nets(args.seed, ckpt)
        out = run_synthesis(teacher, student, args.out or work / "synth", args.seed, settings,
                            ckpt.name, args.max_batches)
    except (DataError, FileNotFoundError, ValueError) as exc:
        print(f"synth: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(synth_report(out), indent=1))
    return 0


# The checkpoint v1.0.0 was built from (quantize.build_models' default settings).
SHIPPED_STUDENT_TAG = "d8a6c83b"

if __name__ == "__main__":
    sys.exit(main())
