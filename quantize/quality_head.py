"""The learned quality head: six branches that estimate how severe each acquisition fault is.

There are no expert quality labels in the shared data, so the head learns the severity of
real faults (`quantize.degrade`) applied to real frames, as AI-IQA's multi-branch
regression does with its quality scores. Each training view is a real frame of the
training patients (`quantize.data.split`) with 0-2 faults at random severities, seen
through the device's own path: fault at full resolution inside the clean frame's region ->
`find_roi` on the degraded frame -> `grey_resized` to 96x128. The targets are the applied
severities, one per branch (0 where a fault was not applied); the loss is binary
cross-entropy on the sigmoid of each branch's logit, so severity = sigmoid(logit).

The net is a small depthwise-separable CNN (about 5 M multiply-adds): on the build box
int8 is no faster than fp32, so the cost is kept down by the input size and the widths.

Views are made once and cached in chunks under the work folder (an interrupted pool build
resumes at the next chunk); every view's randomness is seeded by (seed, frame, view), so a
rebuild makes the same views. Training draws each batch from an RNG seeded by (seed, step)
and saves an atomic checkpoint every `save_every` steps, so a resumed run continues exactly
as an uninterrupted one would.

    python -m quantize.quality_head [--seed 0] [--steps N] [--threads 1]   (pool + train)
"""

from __future__ import annotations

import argparse
import hashlib
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
from torch import nn
from tqdm import tqdm

from edge.models.preprocess import PreprocessSpec, grey_resized
from edge.models.roi import find_roi, to_grey
from quantize.data import DataError, Frame, load_npz, read_frame, save_npz
from quantize.degrade import KINDS, SEVERITY_ONE, degrade_many
from quantize.degrade import VERSION as DEGRADE_VERSION

REPO = Path(__file__).resolve().parents[1]
LABELS = list(KINDS)  # the manifest's labels, in output order
# "unit": x/255 (a z-score would hide the gain fault); the region find_roi finds, as for the
# plane model; 96x128 keeps the head's cost to a few million multiply-adds.
SPEC = PreprocessSpec(height=96, width=128, roi="auto", resize="area", normalise="unit",
                      scale=1.0)


def work_dir(seed: int) -> Path:
    return REPO / "build" / "quality_head" / f"seed{seed}"


# --- views -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ViewSettings:
    """How training views are drawn. Planes frames and example screens are few and look
    unlike the HC18 heads (whole screens, sectors, other scanners), so they get more views."""

    views_hc18: int = 12  # per HC18 frame (training patients and unlabelled test heads)
    views_other: int = 32  # per planes/ frame and example screen
    p_clean: float = 0.2  # share of views with no fault
    p_two: float = 0.4  # of the faulty views, share with two faults (else one)
    chunk: int = 48  # frames per cache file


def sample_severities(rng: np.random.Generator, settings: ViewSettings) -> dict[str, float]:
    """0-2 faults at severities uniform in 0..1 (an empty dict is a clean view)."""
    if rng.random() < settings.p_clean:
        return {}
    count = 2 if rng.random() < settings.p_two else 1
    kinds = rng.choice(len(KINDS), size=count, replace=False)
    return {KINDS[int(k)]: float(rng.uniform(0.0, 1.0)) for k in kinds}


def stamp(**extra) -> str:
    """A short hash of everything that decides what a cached view looks like: the faults'
    version and physical scales, the input size and `extra` settings. Caches and the
    checkpoint carry it, so a change rebuilds them instead of reusing stale views."""
    text = json.dumps({"degrade": DEGRADE_VERSION, "severity": SEVERITY_ONE,
                       "spec": SPEC.to_dict(), **extra}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pool_stamp(settings: ViewSettings) -> str:
    return stamp(views={k: v for k, v in asdict(settings).items() if k != "chunk"})


def targets(severities: dict[str, float]) -> np.ndarray:
    return np.array([severities.get(k, 0.0) for k in KINDS], np.float32)


def device_view(degraded: np.ndarray, spec: PreprocessSpec = SPEC) -> np.ndarray:
    """What the device feeds the head: find_roi on the (degraded) frame itself, then the
    manifest's crop and resize (the whole frame where no region is found, as `prepare`)."""
    return grey_resized(degraded, find_roi(degraded), spec)


def load_grey(frame: Frame) -> tuple[np.ndarray, object]:
    """The frame's grey image and its clean region (None: the whole frame)."""
    grey = to_grey(read_frame(frame.path))
    return np.ascontiguousarray(grey), find_roi(grey)


def frame_seed(frame: Frame) -> int:
    return zlib.crc32(f"{frame.source}:{frame.path.name}".encode())


def _chunk_names(frames: list[Frame]) -> np.ndarray:
    return np.array([f"{f.source}:{f.path.name}" for f in frames])


def build_pool(frames: list[Frame], folder: Path, seed: int,
               settings: ViewSettings = ViewSettings()) -> dict[str, np.ndarray]:
    """Training views of `frames` (uint8 N x 96 x 128) and their severities (N x 6).

    Cached per chunk of frames; a chunk is rebuilt when its frames changed."""
    folder.mkdir(parents=True, exist_ok=True)
    tag = pool_stamp(settings)
    chunks = [frames[i: i + settings.chunk] for i in range(0, len(frames), settings.chunk)]
    xs, ys, srcs = [], [], []
    total = sum(settings.views_hc18 if f.source.startswith("hc18") else settings.views_other
                for f in frames)
    bar = tqdm(total=total, desc="quality views", unit="view", mininterval=10)
    for index, chunk in enumerate(chunks):
        path = folder / f"chunk{index:03d}.npz"
        names = _chunk_names(chunk)
        if path.exists():
            cached = load_npz(path)
            if ("stamp" in cached and str(cached["stamp"]) == tag
                    and np.array_equal(cached["names"], names)):
                xs.append(cached["x"])
                ys.append(cached["y"])
                srcs.append(cached["source"])
                bar.update(len(cached["x"]))
                continue
        cx, cy, cs = [], [], []
        for frame in chunk:
            grey, roi = load_grey(frame)
            n = settings.views_hc18 if frame.source.startswith("hc18") else settings.views_other
            for v in range(n):
                rng = np.random.default_rng([seed, frame_seed(frame), v])
                sev = sample_severities(rng, settings)
                cx.append(device_view(degrade_many(grey, roi, sev, rng)))
                cy.append(targets(sev))
                cs.append(frame.source)
                bar.update(1)
        save_npz(path, x=np.stack(cx), y=np.stack(cy), source=np.array(cs), names=names,
                 stamp=np.array(tag))
        xs.append(np.stack(cx))
        ys.append(np.stack(cy))
        srcs.append(np.array(cs))
    bar.close()
    return {"x": np.concatenate(xs), "y": np.concatenate(ys), "source": np.concatenate(srcs),
            "stamp": tag}


# Held-out views: every held-out frame clean, each fault alone at two seeded severities,
# one mildly degraded view and two severely degraded ones.
EVAL_SINGLE = 2
MILD = (0.02, 0.1)  # all applied severities in this range: still usable
USABLE_MAX = 0.1  # usable: every applied severity <= this
UNUSABLE_MIN = 0.5  # unusable: some applied severity >= this
SETS = ("clean", "single", "mild", "severe")


def eval_severities(rng: np.random.Generator) -> list[tuple[str, dict[str, float]]]:
    """The seeded (set, severities) list of one held-out frame's views."""
    views: list[tuple[str, dict[str, float]]] = [("clean", {})]
    for kind in KINDS:
        for _ in range(EVAL_SINGLE):
            views.append(("single", {kind: float(rng.uniform(0.0, 1.0))}))
    count = 1 + int(rng.random() < 0.5)
    kinds = rng.choice(len(KINDS), size=count, replace=False)
    views.append(("mild", {KINDS[int(k)]: float(rng.uniform(*MILD)) for k in kinds}))
    for _ in range(2):
        count = 1 + int(rng.random() < 0.5)
        kinds = rng.choice(len(KINDS), size=count, replace=False)
        sev = {KINDS[int(kinds[0])]: float(rng.uniform(UNUSABLE_MIN, 1.0))}
        if count == 2:
            sev[KINDS[int(kinds[1])]] = float(rng.uniform(0.0, 1.0))
        views.append(("severe", sev))
    return views


def build_eval(frames: list[Frame], path: Path, seed: int) -> dict[str, np.ndarray]:
    """Held-out views (see `eval_severities`) through the device path, cached."""
    names = _chunk_names(frames)
    tag = stamp(eval={"single": EVAL_SINGLE, "mild": MILD, "unusable": UNUSABLE_MIN})
    if path.exists():
        cached = load_npz(path)
        if ("stamp" in cached and str(cached["stamp"]) == tag
                and np.array_equal(cached["names"], names)):
            return cached
    xs, ys, sets, frame_idx, groups = [], [], [], [], []
    for i, frame in enumerate(tqdm(frames, desc="held-out views", unit="frame",
                                   mininterval=10)):
        grey, roi = load_grey(frame)
        rng = np.random.default_rng([seed, 99, frame_seed(frame)])
        for name, sev in eval_severities(rng):
            xs.append(device_view(degrade_many(grey, roi, sev, rng)))
            ys.append(targets(sev))
            sets.append(name)
            frame_idx.append(i)
            groups.append(frame.group)
    out = {"x": np.stack(xs), "y": np.stack(ys), "set": np.array(sets),
           "frame": np.array(frame_idx), "group": np.array(groups), "names": names,
           "stamp": np.array(tag)}
    save_npz(path, **out)
    return out


def inputs(views: np.ndarray) -> np.ndarray:
    """uint8 views (N, H, W) -> the model's float input (N, 1, H, W), as `normalise`."""
    return (views.astype(np.float32) * np.float32(SPEC.scale / 255.0))[:, None]


# --- the net -------------------------------------------------------------------------------

def _cbr(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups,
                                   bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


WIDTHS = (16, 32, 48, 64, 96, 128)
STRIDES = (2, 2, 1, 2, 1, 2)
BRANCH_HIDDEN = 32


class QualityNet(nn.Module):
    """Shared trunk (3x3 stem, then depthwise-separable blocks down to 1/16), global mean,
    one hidden layer, and one small linear branch per fault: the multi-branch regression."""

    def __init__(self, widths: tuple[int, ...] = WIDTHS, strides: tuple[int, ...] = STRIDES,
                 hidden: int = BRANCH_HIDDEN):
        super().__init__()
        layers = [_cbr(1, widths[0], 3, strides[0])]
        channels = widths[0]
        for width, stride in zip(widths[1:], strides[1:], strict=True):
            layers += [_cbr(channels, channels, 3, stride, channels), _cbr(channels, width, 1)]
            channels = width
        self.trunk = nn.Sequential(*layers)
        self.hidden = nn.Sequential(nn.Linear(channels, hidden * len(KINDS)),
                                    nn.ReLU(inplace=True))
        self.branches = nn.ModuleList(nn.Linear(hidden, 1) for _ in KINDS)
        self.width = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hidden(self.trunk(x).mean((2, 3)))
        w = self.width
        return torch.cat([b(h[:, i * w: (i + 1) * w]) for i, b in enumerate(self.branches)], 1)


def describe() -> str:
    return (f"3x3 conv stem (stride {STRIDES[0]}, {WIDTHS[0]} ch), depthwise-separable blocks "
            f"{list(zip(WIDTHS[1:], STRIDES[1:], strict=True))} (width, stride), BN+ReLU, "
            f"global mean, a shared {BRANCH_HIDDEN * len(KINDS)}-unit layer, then one "
            f"{BRANCH_HIDDEN}->1 linear branch per fault")


# --- training ------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainSettings:
    steps: int = 2500
    batch: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup: int = 100
    save_every: int = 250
    flip: float = 0.5  # mirror views left-right (every fault is left-right symmetric)


def checkpoint_path(work: Path) -> Path:
    return work / "quality_head.pt"


def load_trained(work: Path) -> QualityNet | None:
    path = checkpoint_path(work)
    if not path.exists():
        return None
    state = torch.load(path, weights_only=False)
    if not state.get("done"):
        return None
    net = QualityNet()
    net.load_state_dict(state["model"])
    return net.eval()


def train(pool: dict, work: Path, seed: int, settings: TrainSettings,
          force: bool = False) -> QualityNet:
    """Train (or resume, or just load) the head; returns it in eval mode."""
    path = checkpoint_path(work)
    torch.manual_seed(seed)
    net = QualityNet()
    opt = torch.optim.AdamW(net.parameters(), lr=settings.lr,
                            weight_decay=settings.weight_decay)
    step, log, minutes = 0, [], 0.0
    config = {**asdict(settings), "views": int(len(pool["x"])), "pool": pool["stamp"],
              "arch": describe()}
    state = torch.load(path, weights_only=False) if path.exists() and not force else None
    if state is not None and (state["settings"] != config or state["seed"] != seed):
        # Everything it was trained on is derived and cached: start afresh, say so once.
        print(f"{path}: made with other settings, views or seed; training afresh")
        state = None
    if state is not None:
        net.load_state_dict(state["model"])
        if state.get("done"):
            return net.eval()
        opt.load_state_dict(state["opt"])
        step, log, minutes = state["step"], state["log"], state.get("minutes", 0.0)
    x_all = torch.from_numpy(pool["x"])
    y_all = torch.from_numpy(pool["y"])

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
    bar = tqdm(total=settings.steps, initial=step, desc="quality head", unit="step",
               mininterval=10)
    started, running = time.time(), []
    while step < settings.steps:
        rng = np.random.default_rng([seed, 7, step])
        idx = torch.from_numpy(rng.integers(0, len(x_all), settings.batch))
        x = x_all[idx].float().mul_(SPEC.scale / 255.0).unsqueeze(1)
        flip = torch.from_numpy(rng.random(settings.batch) < settings.flip)
        x[flip] = x[flip].flip(-1)
        y = y_all[idx]
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = F.binary_cross_entropy_with_logits(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        running.append(loss.item())
        bar.update(1)
        if step % settings.save_every == 0 or step == settings.steps:
            now = minutes + (time.time() - started) / 60
            log.append({"step": step, "loss": round(float(np.mean(running)), 5),
                        "minutes": round(now, 2)})
            bar.set_postfix(loss=f"{np.mean(running):.4f}")
            running = []
            minutes, started = now, time.time()
            save(step == settings.steps)
    bar.close()
    return net.eval()


def predict(net: nn.Module, views: np.ndarray, batch: int = 256) -> np.ndarray:
    """Severities (sigmoid of the logits) of the fp32 PyTorch net on uint8 views."""
    out = []
    with torch.no_grad():
        for i in range(0, len(views), batch):
            out.append(torch.sigmoid(net(torch.from_numpy(inputs(views[i: i + batch])))).numpy())
    return np.concatenate(out)


# --- metrics -------------------------------------------------------------------------------

def ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    values = np.asarray(values, np.float64)
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    out = np.empty(len(values), np.float64)
    start = 0
    while start < len(values):
        end = start + 1
        while end < len(values) and sorted_vals[end] == sorted_vals[start]:
            end += 1
        out[order[start:end]] = (start + end + 1) / 2.0
        start = end
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho: the Pearson correlation of the (tie-averaged) ranks."""
    ra, rb = ranks(a), ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve: the chance that a random positive scores above a random
    negative, ties counting half (Mann-Whitney U)."""
    positive = np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = ranks(scores)
    return float((r[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def youden(scores: np.ndarray, positive: np.ndarray) -> dict:
    """The threshold on `scores` with the largest sensitivity + specificity - 1."""
    positive = np.asarray(positive, bool)
    best = {"threshold": None, "sensitivity": 0.0, "specificity": 0.0, "j": -1.0}
    for t in np.unique(np.round(scores, 3)):
        sens = float((scores[positive] >= t).mean())
        spec = float((scores[~positive] < t).mean())
        if sens + spec - 1 > best["j"]:
            best = {"threshold": float(t), "sensitivity": sens, "specificity": spec,
                    "j": sens + spec - 1}
    return best


def evaluate(pred: np.ndarray, ev: dict) -> dict:
    """Spearman per branch and the usable/unusable AUROC (definitions in `HOW`)."""
    y, sets = ev["y"], ev["set"]
    out: dict = {"spearman": {}, "cross": {}, "n_single": {}}
    for k, kind in enumerate(KINDS):
        alone = (sets == "single") & (y[:, k] > 0)
        use = (sets == "clean") | alone
        out["spearman"][kind] = spearman(y[use, k], pred[use, k])
        out["n_single"][kind] = int(alone.sum())
        # Cross-talk: each branch's rank correlation with this fault's severity.
        out["cross"][kind] = {b: spearman(y[use, k], pred[use, j]) for j, b in enumerate(KINDS)}
    out["n_clean"] = int((sets == "clean").sum())
    worst = y.max(1)
    usable, unusable = worst <= USABLE_MAX, worst >= UNUSABLE_MIN
    keep = usable | unusable
    score = pred.max(1)
    out["auroc"] = auroc(score[keep], unusable[keep])
    out["n_usable"], out["n_unusable"] = int(usable.sum()), int(unusable.sum())
    out["operating_point"] = youden(score[keep], unusable[keep])
    out["auroc_by_fault"] = {}
    for k, kind in enumerate(KINDS):
        pos = unusable & (y[:, k] >= UNUSABLE_MIN)
        sel = usable | pos
        out["auroc_by_fault"][kind] = auroc(score[sel], pos[sel])
    return out


def main(argv: list[str] | None = None) -> int:
    from quantize.data import list_frames, split

    parser = argparse.ArgumentParser(prog="python -m quantize.quality_head",
                                     description="training views + training of the head")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        work = work_dir(args.seed)
        train_frames, _ = split(list_frames(), seed=args.seed)
        pool = build_pool(train_frames, work / "pool", args.seed)
        settings = TrainSettings() if args.steps is None else TrainSettings(steps=args.steps)
        train(pool, work, args.seed, settings)
    except (DataError, ValueError, FileNotFoundError) as exc:
        print(f"quality_head: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
