"""Train the head segmenters: plain (teacher, baseline) and distilled (student).

Plain loss: BCE on the area-coverage target + soft Dice.

Distillation (deeplab_student, the same DeepLabv3+-lite as the plain `deeplab`): the teacher
labels every training frame once, the 673 annotated ones and the 335 unlabelled HC18 test
heads, at its own input (240x360, 1.5x the student's: `seg_nets.input_size`), and its
logit map is cached at the 2x augmentation size (`teacher_maps`). The map then moves with
the augmentation exactly like the mask (`seg_data.augment`), so a distilled step costs what
a plain step costs: running the teacher on every augmented batch would more than double a
step (its training step takes twice the student's). Loss per view:
- ground truth: BCE + soft Dice on the annotation's area coverage, or on an unlabelled
  head the teacher's own probability (its pseudo-mask);
- pixel soft targets at temperature T: T^2 * BCE(sigmoid(s/T), sigmoid(t/T));
- a boundary term: the L1 distance between the spatial gradients of the student's and the
  teacher's probability maps, relative to the teacher's own gradient. HC depends only on
  where the 0.5 crossing lies; this term asks for the teacher's crossing and sharpness.
- with `DistilSettings.attention_beta` > 0, a feature term: attention transfer
  (Zagoruyko & Komodakis 2017) at the encoder's 1/8 output and the decoder's 1/4 output,
  beta/2 times the mean squared difference of the L2-normalised maps (the channel mean of
  the squared activations). The teacher's maps are cached at the 2x size and moved with
  the augmentation like its logits (`teacher_attention`), so the term costs the student's
  own forward only; running the teacher on every batch would more than double a step.
  The build keeps it at 0: docs/measurements.md, "A feature term".

`TrainSettings.big_head_weight` can draw the heads over 300 mm more often than the small
ones (`seg_data.draw_weights`); it is 1 (every frame alike), because drawing them three
times as often did not mend their error: every net errs on the same big heads by the same
amount (docs/measurements.md, "Drawing the big heads more often").

AdamW, linear warm-up then cosine decay, batch 8, one thread. Every step draws its batch
from an RNG seeded by (seed, model, step), so a run resumed from its checkpoint (saved
every `save_every` steps, atomically) continues exactly as an uninterrupted one would.

    python -m quantize.seg_train KIND [--steps N]   (KIND: teacher deeplab deeplab_student)
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

from edge.models.preprocess import PreprocessSpec
from quantize import seg_data
from quantize.args import SEED, STEPS, THREADS
from quantize.data import data_dir, load_npz, save_npz
from quantize.seg_nets import input_size, make_net

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "build" / "head_segmenter"
KINDS = ("teacher", "deeplab", "deeplab_student", "unet_small", "student")
# Distilled from the teacher; each is the same net as a baseline trained without it. The
# U-Nets lost to DeepLab-lite by 0.6 mm in 1.1.0 and are no longer built by `make models`.
DISTILLED = {"deeplab_student": "deeplab", "student": "unet_small"}
# Trained by hand for experiments, never by `make models`: distilled as deeplab_student is,
# against the plain deeplab (the separable nets for the CPU without VNNI; notebook,
# "Separable convolutions", 5 December).
EXPERIMENTS = {"deeplab_separable": "deeplab", "deeplab_separable_wide": "deeplab"}


def is_distilled(kind: str) -> bool:
    """Trained on the teacher's maps: the build's distilled kinds and the experiments."""
    return kind in DISTILLED or kind in EXPERIMENTS


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 1200
    batch: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 50
    save_every: int = 100
    # distillation only (at_beta: unused since attention transfer was dropped; the three
    # fields stay so that the settings stamp of the plain nets' checkpoints is unchanged)
    temperature: float = 2.0
    kd_weight: float = 1.0
    at_beta: float = 1000.0
    # heads over 300 mm drawn this many times as often as heads under 200 mm
    # (seg_data.draw_weights). 3.0 was tried on 3 December and did not pay
    # (docs/measurements.md, "Drawing the big heads more often"); 1.0 draws every frame alike,
    # as 1.4.0 was trained
    big_head_weight: float = 1.0
    # > 0: also keep an exponential moving average of the weights (and of BatchNorm's
    # statistics) with this decay, saved beside the weights as "ema" (load_trained(ema=True)).
    # 0, the build's setting, keeps no average and leaves the stamp as it was.
    ema_decay: float = 0.0


@dataclass(frozen=True)
class DistilSettings:
    """The distilled student's extra settings, stamped into its checkpoint only."""

    boundary_weight: float = 0.5
    unlabelled: str = "hc18_test"  # the teacher's pseudo-masks on these heads join training
    teacher_maps: str = "cached, moved with the augmentation"
    # > 0: the attention-transfer term at this beta (the paper's 1,000); 0 leaves it out
    # and keeps the stamp of checkpoints made before the term existed
    attention_beta: float = 0.0


DEFAULT_STEPS = {"teacher": 8000, "unet_small": 1200, "deeplab": 8000, "student": 1200,
                 "deeplab_student": 8000, "deeplab_separable": 8000,
                 "deeplab_separable_wide": 8000}


def settings_for(kind: str, steps: int | None = None) -> TrainSettings:
    return TrainSettings(steps=steps or DEFAULT_STEPS[kind])


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    inter = (p * target).sum((1, 2, 3))
    return (1 - (2 * inter + 1) / (p.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)).mean()


def gt_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, target) + dice_loss(logits, target)


def gradients(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return p[..., :, 1:] - p[..., :, :-1], p[..., 1:, :] - p[..., :-1, :]


def boundary_loss(s_logits: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor:
    """L1 between the student's and the teacher's probability gradients, over the teacher's
    total gradient (0 when the student's boundary is the teacher's, about 1 when the student
    has no boundary at all; the band along the boundary is ~2% of the pixels, so a plain
    mean would be too small to matter)."""
    ps, pt = torch.sigmoid(s_logits), torch.sigmoid(t_logits)
    (sx, sy), (tx, ty) = gradients(ps), gradients(pt)
    diff = (sx - tx).abs().sum() + (sy - ty).abs().sum()
    return diff / (tx.abs().sum() + ty.abs().sum() + 1e-6)


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """Where a layer looks: the channel mean of its squared activations, (N, 1, h, w)."""
    return features.pow(2).mean(1, keepdim=True)


def attention_loss(s_features: list[torch.Tensor], t_attention: torch.Tensor) -> torch.Tensor:
    """Sum over the taps of the mean squared difference between the student's and the
    teacher's L2-normalised attention maps; the teacher's (N, taps, H, W), one per tap and
    at the student's input size, are area-pooled to each tap's grid."""
    total = t_attention.new_zeros(())
    for i, feats in enumerate(s_features):
        a_s = attention_map(feats)
        a_t = F.adaptive_avg_pool2d(t_attention[:, i:i + 1], a_s.shape[-2:])
        q_s, q_t = (F.normalize(a.flatten(1), dim=1) for a in (a_s, a_t))
        total = total + (q_s - q_t).pow(2).mean()
    return total


def distil_loss(s_logits, t_maps, target, settings: TrainSettings, distil: DistilSettings,
                s_features: list[torch.Tensor] | None = None):
    """The distilled student's loss. `t_maps` is the teacher's logits (N, 1, H, W), or with
    the attention term its logits then its attention maps (N, 1 + taps, H, W)."""
    t = settings.temperature
    t_logits = t_maps[:, :1]
    kd = F.binary_cross_entropy_with_logits(s_logits / t, torch.sigmoid(t_logits / t)) * t * t
    edge = boundary_loss(s_logits, t_logits)
    gt = gt_loss(s_logits, target)
    loss = gt + settings.kd_weight * kd + distil.boundary_weight * edge
    parts = {"gt": float(gt.detach()), "kd": float(kd.detach()), "boundary": float(edge.detach())}
    if distil.attention_beta > 0:
        if s_features is None or t_maps.shape[1] != 1 + len(s_features):
            raise ValueError("the attention term needs the student's features and the "
                             "teacher's attention maps (training_inputs with attention)")
        at = attention_loss(s_features, t_maps[:, 1:])
        loss = loss + distil.attention_beta / 2 * at
        parts["attention"] = float(at.detach())
    return loss, parts


def kind_spec(kind: str) -> PreprocessSpec:
    """The input a net of `kind` reads (the teacher reads 1.5x the student's)."""
    return seg_data.sized_spec(*input_size(kind))


def settings_stamp(kind: str, settings: TrainSettings,
                   distil: DistilSettings | None) -> dict:
    """What a checkpoint records of how it was trained; resuming needs the same stamp.
    Settings added after checkpoints existed (the input size, the big-head draw) are
    stamped only where they differ from what those checkpoints were trained with, so their
    stamps still hold."""
    config = asdict(settings)
    if settings.big_head_weight == 1.0:
        del config["big_head_weight"]
    if settings.ema_decay == 0.0:
        del config["ema_decay"]
    spec = kind_spec(kind)
    if spec != seg_data.SPEC:
        config["input"] = [spec.height, spec.width]
    if is_distilled(kind):
        config["distil"] = asdict(distil)
        if distil.attention_beta == 0.0:
            del config["distil"]["attention_beta"]
    return config


def checkpoint_path(work: Path, kind: str) -> Path:
    return work / f"{kind}.pt"


def load_trained(work: Path, kind: str, ema: bool = False) -> torch.nn.Module | None:
    """The finished net of `kind` (its weights' moving average with `ema`), or None if its
    training has not completed."""
    path = checkpoint_path(work, kind)
    if not path.exists():
        return None
    state = torch.load(path, weights_only=False)
    if not state.get("done"):
        return None
    if ema and "ema" not in state:
        raise ValueError(f"{path}: trained without a moving average (ema_decay 0)")
    net = make_net(kind)
    net.load_state_dict(state["ema"] if ema else state["model"])
    return net.eval()


def moving_average(net: torch.nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of `net`'s weights and BatchNorm statistics."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def train(kind: str, cache: dict, work: Path, seed: int, settings: TrainSettings,
          distil: DistilSettings | None = None) -> torch.nn.Module:
    """Train (or resume, or just load) the net of `kind`; returns it in eval mode.

    A distilled kind needs `distil` and a pool from `distillation_pool` (with the teacher's
    maps, `t2`) as its cache."""
    if is_distilled(kind) and (distil is None or "t2" not in cache):
        raise ValueError(f"{kind} needs the teacher's maps (distillation_pool) and settings")
    path = checkpoint_path(work, kind)
    torch.manual_seed(seed)
    net = make_net(kind)
    opt = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    step, log, minutes = 0, [], 0.0
    config = settings_stamp(kind, settings, distil)
    spec = kind_spec(kind)
    state: dict = {}
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
    ema = moving_average(net, settings.ema_decay) if settings.ema_decay > 0 else None
    if ema is not None and "ema" in state:
        ema.module.load_state_dict(state["ema"])
        ema.n_averaged.fill_(state["ema_n"])
    kind_id = zlib.crc32(kind.encode())

    def lr_at(s: int) -> float:
        if s < settings.warmup:
            return settings.lr * (s + 1) / settings.warmup
        frac = (s - settings.warmup) / max(1, settings.steps - settings.warmup)
        return settings.lr * 0.5 * (1 + math.cos(math.pi * frac))

    def save(done: bool) -> None:
        tmp = path.with_suffix(".tmp")
        extra = {} if ema is None else {"ema": ema.module.state_dict(),
                                        "ema_n": int(ema.n_averaged)}
        torch.save({"model": net.state_dict(), "opt": opt.state_dict(), "step": step,
                    "settings": config, "seed": seed, "log": log, "done": done,
                    "minutes": minutes, **extra}, tmp)
        tmp.replace(path)

    net.train()
    bar = tqdm(total=settings.steps, initial=step, desc=kind, unit="step", mininterval=10)
    started, running = time.time(), []
    weights = seg_data.draw_weights(cache["hc_csv"], settings.big_head_weight)
    while step < settings.steps:
        rng = np.random.default_rng([seed, kind_id, step])
        views = [torch.from_numpy(v) for v in seg_data.batch(cache, rng, settings.batch,
                                                             spec=spec, weights=weights)]
        x, y = views[0], views[1]
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        if is_distilled(kind) and distil.attention_beta > 0:
            logits, features = net.forward_all(x)
            loss, parts = distil_loss(logits, views[2], y, settings, distil, features)
        elif is_distilled(kind):
            loss, parts = distil_loss(net(x), views[2], y, settings, distil)
        else:
            loss = gt_loss(net(x), y)
            parts = {}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            ema.update_parameters(net)
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


def teacher_logits(teacher: torch.nn.Module, inputs: np.ndarray, batch: int = 16) -> np.ndarray:
    """The teacher's logits (n, H2, W2) at the 2x cache size for its inputs (n, 1, H, W) of
    any size, resized bilinearly like the device resizes its map."""
    h2, w2 = seg_data.SPEC.height * seg_data.CACHE_SCALE, seg_data.SPEC.width * seg_data.CACHE_SCALE
    out = []
    with torch.no_grad():
        for i in tqdm(range(0, len(inputs), batch), desc="teacher maps", unit="batch"):
            logits = teacher(torch.from_numpy(np.ascontiguousarray(inputs[i:i + batch])))
            out.append(F.interpolate(logits, size=(h2, w2), mode="bilinear",
                                     align_corners=False)[:, 0].numpy().astype(np.float16))
    return np.concatenate(out)


def cached_by_teacher(work: Path, name: str, of, teacher: torch.nn.Module, labelled: dict,
                      unlabelled: dict) -> tuple[np.ndarray, np.ndarray]:
    """`of(teacher, inputs)` on the labelled and the unlabelled frames at the teacher's
    input, cached in work/<name>.npz and reused only for the same teacher checkpoint and
    frames."""
    ckpt = checkpoint_path(work, "teacher")
    spec = kind_spec("teacher")
    stamp = (f"{ckpt.stat().st_mtime_ns} {len(labelled['x'])} {len(unlabelled['x'])} "
             f"{spec.height}x{spec.width}")
    dest = work / f"{name}.npz"
    if dest.exists():
        cached = load_npz(dest)
        if str(cached["stamp"]) == stamp:
            return cached["labelled"], cached["unlabelled"]
    teacher.eval()
    lab = of(teacher, seg_data.device_inputs(labelled, spec))
    unl = of(teacher, seg_data.device_inputs(unlabelled, spec))
    save_npz(dest, labelled=lab, unlabelled=unl, stamp=np.asarray(stamp))
    return lab, unl


def teacher_maps(work: Path, teacher: torch.nn.Module, labelled: dict,
                 unlabelled: dict) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's logit maps of the labelled and unlabelled frames (teacher_maps.npz)."""
    return cached_by_teacher(work, "teacher_maps", teacher_logits, teacher, labelled,
                             unlabelled)


def teacher_attention_of(teacher: torch.nn.Module, inputs: np.ndarray,
                         batch: int = 16) -> np.ndarray:
    """The teacher's attention maps (n, H2, W2, taps) at the 2x cache size, each frame's
    scaled to a peak of 1 (the loss normalises them; float16 keeps them)."""
    h2, w2 = seg_data.SPEC.height * seg_data.CACHE_SCALE, seg_data.SPEC.width * seg_data.CACHE_SCALE
    out = []
    with torch.no_grad():
        for i in tqdm(range(0, len(inputs), batch), desc="teacher attention", unit="batch"):
            _, feats = teacher.forward_all(
                torch.from_numpy(np.ascontiguousarray(inputs[i:i + batch])))
            maps = torch.cat([F.interpolate(attention_map(f), size=(h2, w2), mode="bilinear",
                                            align_corners=False) for f in feats], 1)
            maps = maps / maps.amax((2, 3), keepdim=True).clamp_min(1e-12)
            out.append(maps.permute(0, 2, 3, 1).numpy().astype(np.float16))
    return np.concatenate(out)


def teacher_attention(work: Path, teacher: torch.nn.Module, labelled: dict,
                      unlabelled: dict) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's attention maps of the labelled and unlabelled frames
    (teacher_attention.npz)."""
    return cached_by_teacher(work, "teacher_attention", teacher_attention_of, teacher,
                             labelled, unlabelled)


def distillation_pool(work: Path, seed: int, labelled: dict,
                      teacher: torch.nn.Module, attention: bool = False) -> dict:
    """Labelled training frames + the unlabelled HC18 test heads, with the teacher's maps
    (and its attention maps, for the feature term)."""
    root = data_dir()
    unlabelled = seg_data.build_unlabelled_cache(seg_data.unlabelled_frames(root),
                                                 work / "unlabelled_cache.npz")
    lab, unl = teacher_maps(work, teacher, labelled, unlabelled)
    maps = teacher_attention(work, teacher, labelled, unlabelled) if attention else None
    return seg_data.with_teacher(labelled, unlabelled, lab, unl, maps)


def training_inputs(work: Path, kind: str, split_seed: int,
                    distil: DistilSettings = DistilSettings()
                    ) -> tuple[dict, DistilSettings | None]:
    """What a net of `kind` trains on in `work`: the training frames of the split, and for a
    distilled kind the pool with the teacher's maps and the distillation settings."""
    cache = prepare_cache(work, split_seed)
    if not is_distilled(kind):
        return cache, None
    teacher = load_trained(work, "teacher")
    if teacher is None:
        raise FileNotFoundError(f"{checkpoint_path(work, 'teacher')}: train the teacher first")
    pool = distillation_pool(work, split_seed, cache, teacher, distil.attention_beta > 0)
    return pool, distil


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quantize.seg_train")
    parser.add_argument("kind", choices=KINDS + tuple(EXPERIMENTS))
    parser.add_argument("--seed", type=SEED, default=0)
    parser.add_argument("--steps", type=STEPS, default=None)
    parser.add_argument("--threads", type=THREADS, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = WORK / f"seed{args.seed}"
    try:
        cache, distil = training_inputs(work, args.kind, args.seed)
        train(args.kind, cache, work, args.seed, settings_for(args.kind, args.steps), distil)
    except (seg_data.DataError, FileNotFoundError, ValueError) as exc:
        print(f"seg_train: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
