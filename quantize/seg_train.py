"""Train the head segmenters: plain (teacher, baselines) and distilled (student).

Plain loss: BCE on the area-coverage target + soft Dice. Distillation (student): the same
ground-truth loss, plus pixel-wise soft targets of the teacher at temperature T
(T^2 * BCE(sigmoid(s/T), sigmoid(t/T))), plus attention transfer (Zagoruyko & Komodakis
2017: beta/2 * squared distance of L2-normalised channel-mean |f|^2 maps) at two stages
where student and teacher share a resolution: the student's 1/8 bottleneck vs the
teacher's 1/8 decoder level, and both nets' 1/2 decoder level. The teacher sees the very
same augmented batch (eval mode, no grad).

AdamW, linear warm-up then cosine decay, batch 8, one thread. Every step draws its batch
from an RNG seeded by (seed, model, step), so a run resumed from its checkpoint (saved
every `save_every` steps, atomically) continues exactly as an uninterrupted one would.

    python -m quantize.seg_train KIND [--steps N]   (KIND: teacher unet_small deeplab student)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from quantize import seg_data
from quantize.data import data_dir
from quantize.seg_nets import make_net

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "build" / "head_segmenter"
KINDS = ("teacher", "unet_small", "deeplab", "student", "deeplab_student")
# Distilled from the teacher; each is the same net as a baseline trained without it.
DISTILLED = {"student": "unet_small", "deeplab_student": "deeplab"}


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 1200
    batch: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 50
    save_every: int = 100
    # distillation only
    temperature: float = 2.0
    kd_weight: float = 1.0
    at_beta: float = 1000.0


DEFAULT_STEPS = {"teacher": 6000, "unet_small": 1200, "deeplab": 4000, "student": 1200,
                 "deeplab_student": 4000}


def settings_for(kind: str, steps: int | None = None) -> TrainSettings:
    return TrainSettings(steps=steps or DEFAULT_STEPS[kind])


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    inter = (p * target).sum((1, 2, 3))
    return (1 - (2 * inter + 1) / (p.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)).mean()


def gt_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, target) + dice_loss(logits, target)


def attention(f: torch.Tensor) -> torch.Tensor:
    return F.normalize(f.pow(2).mean(1).flatten(1))


def at_loss(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    return (attention(fs) - attention(ft)).pow(2).mean()


# (student feature index, teacher feature index) at equal resolution: see the docstring.
# The teacher (DeepLabv3+-wide) gives its 1/8 encoder output and its 1/4 decoder; the small
# U-Net's features run 1/8 ... 1/1, DeepLab-lite's are its 1/8 encoder and 1/4 decoder.
AT_PAIRS = ((0, 0), (1, 1))
AT_PAIRS_BY_KIND = {"student": AT_PAIRS, "deeplab_student": AT_PAIRS}


def distil_loss(s_logits, s_feats, t_logits, t_feats, target, settings: TrainSettings,
                pairs: tuple[tuple[int, int], ...] = AT_PAIRS):
    t = settings.temperature
    kd = F.binary_cross_entropy_with_logits(s_logits / t, torch.sigmoid(t_logits / t)) * t * t
    at = sum(at_loss(s_feats[i], t_feats[j]) for i, j in pairs)
    gt = gt_loss(s_logits, target)
    return gt + settings.kd_weight * kd + settings.at_beta / 2 * at, {
        "gt": float(gt.detach()), "kd": float(kd.detach()), "at": float(at.detach())}


def checkpoint_path(work: Path, kind: str) -> Path:
    return work / f"{kind}.pt"


def load_trained(work: Path, kind: str) -> torch.nn.Module | None:
    """The finished net of `kind`, or None if its training has not completed."""
    path = checkpoint_path(work, kind)
    if not path.exists():
        return None
    state = torch.load(path, weights_only=False)
    if not state.get("done"):
        return None
    net = make_net(kind)
    net.load_state_dict(state["model"])
    return net.eval()


def train(kind: str, cache: dict, work: Path, seed: int, settings: TrainSettings,
          teacher: torch.nn.Module | None = None) -> torch.nn.Module:
    """Train (or resume, or just load) the net of `kind`; returns it in eval mode."""
    if kind in DISTILLED and teacher is None:
        raise ValueError("the student needs a trained teacher")
    path = checkpoint_path(work, kind)
    torch.manual_seed(seed)
    net = make_net(kind)
    opt = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    step, log, minutes = 0, [], 0.0
    config = asdict(settings)
    if path.exists():
        state = torch.load(path, weights_only=False)
        if state["settings"] != config or state["seed"] != seed:
            raise ValueError(f"{path}: checkpoint was made with other settings; delete it or "
                             "use --force")
        net.load_state_dict(state["model"])
        if state.get("done"):
            return net.eval()
        opt.load_state_dict(state["opt"])
        step, log, minutes = state["step"], state["log"], state.get("minutes", 0.0)
    if teacher is not None:
        teacher.eval()
    kind_id = zlib.crc32(kind.encode())

    def lr_at(s: int) -> float:
        if s < settings.warmup:
            return settings.lr * (s + 1) / settings.warmup
        frac = (s - settings.warmup) / max(1, settings.steps - settings.warmup)
        return settings.lr * 0.5 * (1 + math.cos(math.pi * frac))

    def save(done: bool) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "step": step,
                    "settings": config, "seed": seed, "log": log, "done": done,
                    "minutes": minutes}, tmp)
        tmp.replace(path)

    net.train()
    bar = tqdm(total=settings.steps, initial=step, desc=kind, unit="step", mininterval=10)
    started, running = time.time(), []
    while step < settings.steps:
        rng = np.random.default_rng([seed, kind_id, step])
        x, y = seg_data.batch(cache, rng, settings.batch)
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        if kind in DISTILLED:
            with torch.no_grad():
                t_logits, t_feats = teacher.forward_all(x)
            s_logits, s_feats = net.forward_all(x)
            loss, parts = distil_loss(s_logits, s_feats, t_logits, t_feats, y, settings,
                                      AT_PAIRS_BY_KIND[kind])
        else:
            loss = gt_loss(net(x), y)
            parts = {}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        running.append(loss.item())
        bar.update(1)
        if step % settings.save_every == 0 or step == settings.steps:
            minutes_now = minutes + (time.time() - started) / 60
            entry = {"step": step, "loss": round(float(np.mean(running)), 5),
                     "minutes": round(minutes_now, 2), **{k: round(v, 5) for k, v in parts.items()}}
            log.append(entry)
            tqdm.write(f"{kind} {json.dumps(entry)}")
            running = []
            done = step == settings.steps
            # Keep the training wall time across resumes.
            minutes, started = minutes_now, time.time()
            save(done)
    bar.close()
    return net.eval()


def prepare_cache(work: Path, seed: int) -> dict:
    root = data_dir()
    train_frames, _ = seg_data.hc18_split(root, seed)
    return seg_data.build_cache(train_frames, work / "train_cache.npz", root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quantize.seg_train")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = WORK / f"seed{args.seed}"
    try:
        cache = prepare_cache(work, args.seed)
        teacher = None
        if args.kind in DISTILLED:
            teacher = load_trained(work, "teacher")
            if teacher is None:
                raise FileNotFoundError(f"{checkpoint_path(work, 'teacher')}: train the teacher "
                                        "first")
        train(args.kind, cache, work, args.seed, settings_for(args.kind, args.steps), teacher)
    except (seg_data.DataError, FileNotFoundError, ValueError) as exc:
        print(f"seg_train: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
