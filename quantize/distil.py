"""Distil SonoNet-16 into the plane student: cache the teacher once, then train the student.

Step 1, `build_cache`: for every training frame, several augmented views (view 0 is the
clean device view); each view is rendered at three framings (itself, 4% cut from every
side, 4% more on every side) with the same augmentation, and its target is the teacher's
average over the three, which is steadier than one view. Example screens get many more
views, half of them made like `quantize.variants` (the screen's B-mode region transformed
in place, then framed again by find_roi). Extra views mix two views of different frames
(mixup) and the teacher labels the mixed images itself, so the targets stay exact ("patient
and consistent" function matching, Beyer et al. 2022, with a fixed budget of views instead
of an online teacher). The student reads the same 224x288 view as the teacher. Stored as
chunked .npz under build/ (uint8 views, float16 targets); a finished chunk is never
recomputed, and the folder is named by a hash of the settings and the frame list.

Step 2, `train_student`: KL on the averaged soft targets (T=2, and T=1) plus MSE between
the student's and the teacher's class maps (same 14x18 grid); on the views of the 13
example screens the target is mixed with the true label (the true-label term), AdamW with
a cosine schedule, resumable from its checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from edge.models.preprocess import RESIZE_MODES, PreprocessSpec
from edge.models.roi import Roi, find_roi, to_grey
from quantize.data import (
    EXAMPLE_CROP,
    HEAD_PLANE_IDS,
    LABELS,
    AugmentSettings,
    Frame,
    border_crop,
    is_head_frame,
    load_npz,
    make_view,
    read_frame,
    save_npz,
)
from quantize.specs import STUDENT_SPEC, TEACHER_SPEC
from quantize.specs import norm_batch as _norm_batch
from quantize.teacher import SonoNet16, teacher_batches, teacher_targets

STUDENT_STEM_STRIDE = 2


@dataclass(frozen=True)
class CacheSettings:
    """How many teacher-labelled views of each training frame, and how each target is made.

    `zooms`: every view is rendered at these framings (1.0 = the view; 0.92 = 4% cut from
    every side; 1.08 = 4% more on every side) with the same augmentation, and the target
    is the teacher's average over them (the mean of its probabilities), which is steadier
    than one view: the teacher changes about 1 head answer in 12 under a 4% border crop.
    Class maps are the teacher's on the view itself (the others do not align cell by cell).
    """

    views_per_frame: int = 8
    views_per_example: int = 160  # the 13 examples are the only frames of 9 classes
    example_strength: float = 1.3
    # Share of example views made like quantize.variants: the whole screen's B-mode region
    # transformed in place, then framed again by find_roi (the device path).
    example_screen_share: float = 0.5
    mix_per_chunk: int = 48  # mixup views per chunk, labelled by the teacher on the mix
    frames_per_chunk: int = 16
    zooms: tuple[float, ...] = (1.0, 0.92, 1.08)
    gain: tuple[float, float] = (0.7, 1.4)  # x gain, clipped at white (as quantize.variants)

    def tag(self, train: list[Frame], seed: int) -> str:
        text = json.dumps({**asdict(self), "frames": [str(f.path) for f in train],
                           "seed": seed, "views": VIEWS_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:8]


VIEWS_VERSION = 2  # bump when the view rendering changes: the cache folder name follows it
# Example views made like quantize.variants, with wider ranges; other seeds than the test's.
EXAMPLE_SCREEN_VARIANTS = dict(rotate_deg=20.0, scale=(0.75, 1.25), shift=0.07,
                               gain=(0.65, 1.5), gamma=(0.65, 1.5), speckle=0.3)


class FastTeacher:
    """The teacher through its own fp32 .tflite (LiteRT, XNNPACK), for the cache only.

    Why: on one contended core here the PyTorch teacher took 116 ms a frame and this one
    59 ms; the teacher's forward pass is most of the cost of `make models`. The export is
    checked against PyTorch on real-scale inputs when it is made (logits within 1e-3).
    """

    def __init__(self, teacher: SonoNet16, path: Path, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        from quantize.convert import export_fp32

        class _Maps(torch.nn.Module):
            def __init__(self, net: SonoNet16) -> None:
                super().__init__()
                self.net = net

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.net.forward_maps(x)[1]

        stamp = path.with_suffix(".sha256")
        digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes()
                                         for p in teacher.state_dict().values())).hexdigest()
        if not (path.exists() and stamp.exists() and stamp.read_text() == digest):
            export_fp32(_Maps(teacher), (1, 1, TEACHER_SPEC.height, TEACHER_SPEC.width), path)
            stamp.write_text(digest)
        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.interpreter.allocate_tensors()
        self._in = self.interpreter.get_input_details()[0]["index"]
        self._out = self.interpreter.get_output_details()[0]["index"]
        rng = np.random.default_rng(0)
        x = torch.from_numpy(rng.normal(0, 255, (2, 1, TEACHER_SPEC.height,
                                                 TEACHER_SPEC.width)).astype(np.float32))
        with torch.inference_mode():
            want = teacher(x).numpy()
        got = self.forward_maps(x)[0].numpy()
        if np.abs(want - got).max() > 1e-3:
            raise ValueError(f"{path}: the exported teacher differs from PyTorch by "
                             f"{np.abs(want - got).max():.2e}")

    def forward_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = []
        for row in x.contiguous().numpy().astype(np.float32):
            self.interpreter.set_tensor(self._in, row[None])
            self.interpreter.invoke()
            maps.append(self.interpreter.get_tensor(self._out)[0].copy())
        m = torch.from_numpy(np.stack(maps))
        return m.mean(dim=(2, 3)), m


def render_framings(grey: np.ndarray, roi: Roi | None, rng: np.random.Generator | None,
                    aug: AugmentSettings | None, zooms: tuple[float, ...],
                    gain: tuple[float, float] = (1.0, 1.0),
                    spec: PreprocessSpec = STUDENT_SPEC) -> list[np.ndarray]:
    """One augmented view of a grey frame at each framing in `zooms` (uint8 H x W each).

    The augmentation (geometry as `quantize.data.make_view`: ROI edge jitter, scale,
    rotation, shift, flip; then gain, gamma, blur, speckle) is drawn once and rendered on
    a canvas `max(zooms)` times the region, so every framing shows the same content;
    zoom z keeps z times the region's width and height about its centre. Without `aug`,
    zoom 1.0 is exactly the device's view of `roi` (`grey_resized`).
    """
    if roi is None:
        roi = Roi(0, 0, grey.shape[1], grey.shape[0])
    angle, scale, flip = 0.0, 1.0, False
    x0, y0, x1, y1 = roi.x, roi.y, roi.x + roi.w, roi.y + roi.h
    sx = sy = 0.0
    if aug is not None:
        k = aug.strength
        j = aug.edge_jitter * k
        x0 += rng.uniform(-j, j) * roi.w
        x1 += rng.uniform(-j, j) * roi.w
        y0 += rng.uniform(-j, j) * roi.h
        y1 += rng.uniform(-j, j) * roi.h
        lo, hi = aug.scale
        scale = float(np.exp(rng.uniform(np.log(1 - (1 - lo) * k), np.log(1 + (hi - 1) * k))))
        angle = rng.uniform(-aug.rotate_deg, aug.rotate_deg) * k
        sx = rng.uniform(-aug.shift, aug.shift) * k
        sy = rng.uniform(-aug.shift, aug.shift) * k
        flip = bool(rng.random() < aug.flip)
    w, h = max(16, int(round(x1 - x0))), max(16, int(round(y1 - y0)))
    mx = int(np.ceil(w * (max(zooms) - 1) / 2))
    my = int(np.ceil(h * (max(zooms) - 1) / 2))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if aug is None:  # an integer shift: the central w x h is the region's own pixels
        m = np.array([[1.0, 0.0, mx - roi.x], [0.0, 1.0, my - roi.y]])
    else:
        m = cv2.getRotationMatrix2D((cx, cy), angle, scale)
        m[0, 2] += w / 2 - cx + sx * w + mx
        m[1, 2] += h / 2 - cy + sy * h + my
    canvas = cv2.warpAffine(grey, m, (w + 2 * mx, h + 2 * my), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if aug is not None:
        if flip:
            canvas = canvas[:, ::-1]
        x = canvas.astype(np.float32) / 255.0
        x = np.minimum(x * rng.uniform(*gain), 1.0)
        x = np.power(x, rng.uniform(*aug.gamma))
        if rng.random() < aug.blur:
            x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.5, 1.5))
        sigma = rng.uniform(0, aug.speckle)
        if sigma > 0:
            ch, cw = x.shape
            noise = rng.normal(1.0, sigma, size=(ch // 2 + 1, cw // 2 + 1)).astype(np.float32)
            x = x * cv2.resize(noise, (cw, ch), interpolation=cv2.INTER_LINEAR)
        canvas = np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
    views = []
    for z in zooms:
        zw, zh = int(round(w * z)), int(round(h * z))
        ox, oy = mx + (w - zw) // 2, my + (h - zh) // 2
        region = np.ascontiguousarray(canvas[oy : oy + zh, ox : ox + zw])
        views.append(cv2.resize(region, (spec.width, spec.height),
                                interpolation=RESIZE_MODES[spec.resize]))
    return views


def _example_screen_view(grey: np.ndarray, roi0: Roi, frame: Frame, rng: np.random.Generator,
                         zooms: tuple[float, ...]) -> list[np.ndarray]:
    """An example screen (grey) transformed like quantize.variants (wider ranges, other
    seeds) inside its B-mode region `roi0`, framed again from the transformed screen."""
    from quantize.variants import VariantSettings, apply_variant, variant_params

    screen = apply_variant(grey, roi0, variant_params(
        rng, VariantSettings(**EXAMPLE_SCREEN_VARIANTS)), rng)
    framings = framings_of(frame, screen)
    return render_framings(screen, framings[_pick_framing(rng)], None, None, zooms)


def _average_targets(teacher, framed: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    """framed: (n, K, H, W) uint8. The teacher's mean probability over the K framings (as
    log-probabilities, usable as logits), its logits and maps on framing 0."""
    n, k = framed.shape[:2]
    logits, maps = teacher_targets(teacher, framed.reshape(n * k, *framed.shape[2:]), batch)
    logits = logits.reshape(n, k, -1)
    z = logits - logits.max(axis=2, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=2, keepdims=True)
    avg = np.log(np.clip(p.mean(axis=1), 1e-12, None))
    return {"logits": avg.astype(np.float16), "logits_view": logits[:, 0].astype(np.float16),
            "maps": maps.reshape(n, k, *maps.shape[1:])[:, 0].astype(np.float16)}


def build_cache(teacher, train: list[Frame], cache_dir: Path, seed: int,
                settings: CacheSettings = CacheSettings(), reverse: bool = False) -> Path:
    """Fill `cache_dir` with view chunks; returns it. Skips chunks that already exist.

    Frames are dealt into chunks in a seeded random order, so each chunk mixes heads,
    planes frames and examples, and its mixup views pair different kinds of frame. Every
    chunk is seeded by its number alone, and a chunk is looked for again just before it is
    made, so a second worker going through the chunks in `reverse` order halves the wall
    time (they meet in the middle) and the cache is the same either way.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng([seed, 0]).permutation(len(train))
    step = settings.frames_per_chunk
    chunks = [order[i : i + step] for i in range(0, len(order), step)]
    todo = [i for i in range(len(chunks)) if not (cache_dir / f"views_{i:04d}.npz").exists()]
    base = AugmentSettings()
    for ci in tqdm(todo[::-1] if reverse else todo, desc="teacher cache (views x framings)",
                   unit="chunk", initial=len(chunks) - len(todo), total=len(chunks)):
        if (cache_dir / f"views_{ci:04d}.npz").exists():
            continue
        rng = np.random.default_rng([seed, 1, ci])
        framed, owner, labels = [], [], []
        for fi in chunks[ci]:
            frame = train[fi]
            image = read_frame(frame.path)
            grey = to_grey(image)
            framings = framings_of(frame, image)
            is_example = frame.source == "examples"
            n = settings.views_per_example if is_example else settings.views_per_frame
            aug = replace(base, strength=settings.example_strength) if is_example else base
            label = LABELS.index(frame.label) if is_example else -1
            for v in range(n):
                if v == 0:
                    views = render_framings(grey, framings[0], None, None, settings.zooms)
                elif is_example and rng.random() < settings.example_screen_share:
                    views = _example_screen_view(grey, framings[0], frame, rng, settings.zooms)
                else:
                    views = render_framings(grey, framings[_pick_framing(rng)], rng, aug,
                                            settings.zooms, settings.gain)
                framed.append(np.stack(views))
                owner.append(int(fi))
                labels.append(label)
        framed_arr = np.stack(framed)
        owner_arr = np.asarray(owner, np.int32)
        # Mixup: two views of different frames, every framing mixed with the same weight.
        m = settings.mix_per_chunk if len(set(owner)) > 1 else 0
        a = rng.integers(0, len(framed_arr), 4 * m)
        b = rng.integers(0, len(framed_arr), 4 * m)
        keep = np.flatnonzero(owner_arr[a] != owner_arr[b])[:m]
        lam = rng.uniform(0.0, 1.0, len(keep)).astype(np.float32)
        mixed = _mix(framed_arr[a[keep]], framed_arr[b[keep]], lam)
        all_views = np.concatenate([framed_arr, mixed])
        targets = _average_targets(teacher, all_views, 32)
        save_npz(cache_dir / f"views_{ci:04d}.npz", student=all_views[:, 0], **targets,
                 frame=np.concatenate([owner_arr, np.full(len(keep), -1, np.int32)]),
                 label=np.concatenate([np.asarray(labels, np.int16),
                                       np.full(len(keep), -1, np.int16)]))
    return cache_dir


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


def _mix(a: np.ndarray, b: np.ndarray, lam: np.ndarray) -> np.ndarray:
    lam = lam.reshape(-1, *([1] * (a.ndim - 1)))
    return np.clip(lam * a + (1 - lam) * b + 0.5, 0, 255).astype(np.uint8)


def load_cache(cache_dir: Path) -> dict[str, np.ndarray]:
    """Every chunk's views ("student": uint8, the view both nets see), targets and labels."""
    files = sorted(cache_dir.glob("views_*.npz"))
    if not files:
        raise FileNotFoundError(f"{cache_dir}: no cached views (run the cache step first)")
    return {k: np.concatenate([load_npz(f, (k,))[k] for f in files])
            for k in ("student", "logits", "logits_view", "maps", "label", "frame")}


def _hidden_file(views_file: Path) -> Path:
    return views_file.with_name(views_file.name.replace("views_", "hidden_", 1))


def teacher_hidden(teacher: SonoNet16, views: np.ndarray, batch: int = 32) -> np.ndarray:
    """The teacher's 64-channel hidden layer on the 14x18 grid (its adaptation's first 1x1
    conv, after the ReLU; the 14 class maps are one linear layer on it), float16."""
    with torch.inference_mode():
        return np.concatenate([teacher.adaptation[0](teacher.features(x)).contiguous()
                               .numpy().astype(np.float16)
                               for x in teacher_batches(views, batch)])


def cache_hidden(teacher: SonoNet16, cache_dir: Path) -> None:
    """Beside every view chunk, the teacher's hidden layer on its views (for the feature
    term); a chunk already done is skipped, so an interrupted run resumes."""
    files = sorted(cache_dir.glob("views_*.npz"))
    for f in tqdm(files, desc="teacher hidden layer", unit="chunk"):
        if _hidden_file(f).exists():
            continue
        hidden = teacher_hidden(teacher, load_npz(f, ("student",))["student"])
        save_npz(_hidden_file(f), hidden=hidden)


def load_hidden(cache_dir: Path) -> np.ndarray:
    """The hidden-layer targets, row for row with `load_cache`."""
    files = sorted(cache_dir.glob("views_*.npz"))
    missing = [f.name for f in files if not _hidden_file(f).exists()]
    if missing:
        raise FileNotFoundError(f"{cache_dir}: no hidden-layer targets for {missing[0]} "
                                "(run cache_hidden first)")
    return np.concatenate([load_npz(_hidden_file(f), ("hidden",))["hidden"] for f in files])


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
        cached = load_npz(path)
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


def student_logits(student: torch.nn.Module, views: np.ndarray, batch: int = 64) -> np.ndarray:
    student.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(views), batch):
            out.append(student(_norm_batch(views[i : i + batch], STUDENT_SPEC)).numpy())
    return np.concatenate(out)


# ---------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainSettings:
    steps: int = 1600
    # Optionally the first steps see every view at half resolution (112x144, the teacher's
    # maps pooled to 7x9): a step costs a quarter there ("progressive resizing", Tan & Le
    # 2021). Measured, it does not pay here: 1400 half-res + 400 full-res steps agreed with
    # the teacher on 80.7% of held-out heads (the half-res net plateaued at 78.8% from step
    # 300 on: at 112x144 the teacher's head answers lose their detail), 1600 full-res steps
    # on more of them; so the default is 0.
    low_res_steps: int = 0
    batch: int = 32
    lr: float = 3e-3
    weight_decay: float = 5e-3
    warmup: int = 100
    temperature: float = 2.0
    map_weight: float = 0.2  # maps are noisy (variance 32); at 1.0 they crowded out top-1
    # The true-label term: on views of the 13 example screens the target is this share of
    # the true label plus the rest of the teacher's (averaged) answer, at both temperatures.
    # Above 0.5 the true plane is the target's top-1 even where the teacher says otherwise
    # (it calls 3VV variants RVOT or Background more often than 3VV). 0 = teacher only.
    label_weight: float = 0.7
    eval_every: int = 300
    # The head-plane term (1.3.0's last steps): every HC18 frame is a head plane, an axial
    # view its sonographers measured HC on, and so is every FETAL_PLANES_DB brain frame.
    # The teacher, trained on mid-trimester planes, calls 30 of 264 held-out HC18 heads
    # something else (16 Background: mostly early heads), and those are the blind sweeps the
    # device found no head in. On those rows the target is this share of the teacher's own
    # split between the head planes (transventricular against transcerebellar; even where it
    # has no head mass) plus the rest of its answer. 0 = teacher only, as up to 1.2.0.
    head_weight: float = 0.0
    # The class-map shape term (`MAP_STAGE`): the teacher's top-1 plane's map as a
    # distribution over its 14x18 cells (softmax at this temperature), KL against the
    # student's map of that plane. It asks where the map peaks, not its level, which the MSE
    # term above weighs only at 0.2: with that alone the 1.3.0 student's map peaked inside
    # the held-out heads in 56% of them (the teacher's in 93%), too few for the page's
    # heatmap (quantize/class_maps.py). 0 = off.
    map_shape_weight: float = 0.0
    map_shape_temperature: float = 2.0
    # Rows of a flat frame (every pixel alike: the probe in the air, a blank screen; all
    # zeros once z-scored) added to every batch, with the teacher's own answer on it
    # (Background, 0.68). No cached view is flat, so nothing held the student's answer
    # there: the first class-map student named a flat frame Brain (Cb.) at 0.68. 0 = none.
    flat_rows: int = 0
    # The feature term: the student's head hidden layer (64 channels on the 14x18 grid),
    # through a 1x1 adapter used only in training, against the teacher's own hidden layer
    # (`teacher_hidden`), MSE over the teacher's variance (FitNets, Romero et al. ICLR 2015,
    # at the depth where the class maps are read). Why: the shipped student splits new
    # patients' heads into transventricular and transcerebellar otherwise than the teacher
    # does, though it fits its training heads (docs/measurements.md, "How far agreement
    # with the teacher can go"); matching 64 numbers a cell instead of 14 asks it to see
    # what the teacher sees there. Rows the maps term leaves out are left out here too.
    # 0 = off.
    feature_weight: float = 0.0


# The last stage of `make models` (`build_models --maps-from 5000 --steps 400 --head-weight
# 0.7`), which made 1.4.0: from the finished 5,000-step run's weights (1.3.0), a fresh
# optimiser on its own short schedule, with the shape term and two flat rows per batch.
# Its maps peak inside 261 of 264 held-out heads (1.3.0: 149), and it keeps 13/13 examples,
# 218 heads agreeing with the teacher, Background on a flat frame and the blind sweeps
# (204 clean, 194 of them captured; 1.3.0: 193). Without the flat rows the same stage
# named a flat frame Brain (Cb.) at 0.68; with the calibration of its time (the teacher's
# Tv/Cb split counted on HC18 heads) its abstain threshold rose to 0.80-0.82.
MAP_STAGE = {"lr": 5e-4, "warmup": 30, "map_shape_weight": 1.0, "flat_rows": 2}


def settings_stamp(settings: TrainSettings) -> dict:
    """The settings a checkpoint records and is matched by (and `build_models` names it
    by); the terms a run did not use are left out, so the checkpoints made before a term
    existed keep their stamp."""
    stamp = asdict(settings)
    if not settings.head_weight:
        del stamp["head_weight"]
    if not settings.map_shape_weight:
        del stamp["map_shape_weight"], stamp["map_shape_temperature"]
    if not settings.flat_rows:
        del stamp["flat_rows"]
    if not settings.feature_weight:
        del stamp["feature_weight"]
    return stamp


_HEAD_GROUP = torch.tensor(HEAD_PLANE_IDS)


def soft_targets(t_logits: torch.Tensor, temp: float, true: torch.Tensor,
                 label_weight: float, head_rows: torch.Tensor | None = None,
                 head_weight: float = 0.0) -> torch.Tensor:
    """The teacher's probabilities at `temp`, mixed with the one-hot true label on the rows
    that have one (true >= 0), and with the teacher's own split between the head planes on
    the rows known to be a head plane (`head_rows`)."""
    p = F.softmax(t_logits / temp, 1)
    if label_weight > 0:
        share = (true >= 0).to(p.dtype)[:, None] * label_weight
        onehot = F.one_hot(true.clamp_min(0), p.shape[1]).to(p.dtype)
        p = (1 - share) * p + share * onehot
    if head_rows is not None and head_weight > 0:
        within = torch.zeros_like(p)
        within[:, _HEAD_GROUP] = p[:, _HEAD_GROUP] + 1e-6  # no head mass at all: an even split
        within = within / within.sum(1, keepdim=True)
        share = ((true < 0) & head_rows).to(p.dtype)[:, None] * head_weight
        p = (1 - share) * p + share * within
    return p


def distil_loss(s_logits: torch.Tensor, s_maps: torch.Tensor, t_logits: torch.Tensor,
                t_maps: torch.Tensor, settings: TrainSettings, map_scale: float,
                true: torch.Tensor | None = None,
                t_view_top1: torch.Tensor | None = None,
                head_rows: torch.Tensor | None = None,
                feature: tuple[torch.Tensor, torch.Tensor, float] | None = None
                ) -> torch.Tensor:
    """KL to the (label-mixed) soft targets at T and at 1, plus the class-map MSE, plus,
    with `map_shape_weight`, the shape term (where the named plane's map peaks). The maps
    term is left out on labelled rows where the teacher's own top-1 is not the true label,
    and on head rows where it is not a head plane (its maps would pull towards the plane the
    label overrules). `feature`: (the student's adapted hidden layer, the teacher's, the
    teacher's variance) for the feature term, on the first rows of the batch (the flat
    rows that may follow have none), with the same rows left out."""
    temp = settings.temperature
    if true is None:
        true = torch.full((len(s_logits),), -1, dtype=torch.long)
    loss = 0.0
    for t, weight in ((temp, temp * temp), (1.0, 1.0)):
        target = soft_targets(t_logits, t, true, settings.label_weight, head_rows,
                              settings.head_weight)
        loss = loss + weight * F.kl_div(F.log_softmax(s_logits / t, 1), target,
                                        reduction="batchmean")
    per_row = ((s_maps - t_maps) ** 2).mean(dim=(1, 2, 3)) / map_scale
    keep = torch.ones_like(per_row)
    if t_view_top1 is not None and settings.label_weight > 0:
        keep = ((true < 0) | (t_view_top1 == true)).to(per_row.dtype)
    if t_view_top1 is not None and head_rows is not None and settings.head_weight > 0:
        keep = keep * (~head_rows | torch.isin(t_view_top1, _HEAD_GROUP)).to(per_row.dtype)
    loss = loss + settings.map_weight * (per_row * keep).sum() / keep.sum().clamp_min(1.0)
    if feature is not None and settings.feature_weight > 0:
        s_hidden, t_hidden, scale = feature
        n = len(t_hidden)
        per_row = ((s_hidden[:n] - t_hidden) ** 2).mean(dim=(1, 2, 3)) / scale
        loss = loss + settings.feature_weight * (per_row * keep[:n]).sum() / \
            keep[:n].sum().clamp_min(1.0)
    if settings.map_shape_weight > 0 and t_view_top1 is not None:
        rows = torch.arange(len(s_maps))
        tau = settings.map_shape_temperature
        student_map = s_maps[rows, t_view_top1].flatten(1) / tau
        teacher_map = t_maps[rows, t_view_top1].flatten(1) / tau
        loss = loss + settings.map_shape_weight * F.kl_div(
            F.log_softmax(student_map, 1), F.softmax(teacher_map, 1), reduction="batchmean")
    return loss


def _student_spec(student: torch.nn.Module) -> dict | None:
    spec = getattr(student, "spec", None)
    return spec.to_dict() if spec is not None else None


def train_student(student: torch.nn.Module, cache: dict[str, np.ndarray], ckpt: Path,
                  seed: int, settings: TrainSettings = TrainSettings(),
                  heldout: dict[str, np.ndarray] | None = None,
                  extra: dict[str, np.ndarray] | None = None,
                  extra_share: float = 0.0,
                  head_rows: np.ndarray | None = None,
                  flat_targets: tuple[np.ndarray, np.ndarray] | None = None,
                  hidden: np.ndarray | None = None,
                  ) -> torch.nn.Module:
    """Train (or resume) and return the student; the checkpoint holds the step reached.

    `flat_targets`: the teacher's (logits (14,), maps (14, h, w)) on a flat frame, for the
    settings.flat_rows rows of a flat frame in every batch (`flat_frame_targets`).

    `extra` (same keys as `cache`, e.g. views of synthesised images) supplies
    round(extra_share * batch) rows of every batch; the rest come from `cache`.
    `head_rows` (bool per `cache` row, `head_rows_of`) marks the views of frames known to
    be a head plane, for the head-plane term (settings.head_weight).
    `hidden` (`load_hidden`, row for row with `cache`): the teacher's hidden layer, for the
    feature term (settings.feature_weight); its 1x1 adapter is kept in the checkpoint and
    never exported.
    """
    torch.manual_seed(seed)
    adapter = None
    params = list(student.parameters())
    if settings.feature_weight > 0:
        if hidden is None or extra is not None or settings.low_res_steps:
            raise ValueError("the feature term needs the teacher's hidden layer (hidden), "
                             "no extra rows and no half-resolution steps")
        width = student.adaptation[0][0].out_channels
        adapter = torch.nn.Conv2d(width, hidden.shape[1], 1)
        params += list(adapter.parameters())
        t_hidden_all = torch.from_numpy(hidden)
        feature_scale = float(t_hidden_all[:: max(1, len(hidden) // 512)].float().var()) + 1e-6
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    step = 0
    log: list[dict] = []
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        if state.get("settings") != settings_stamp(settings):
            raise ValueError(f"{ckpt}: checkpoint was made with other settings")
        student.load_state_dict(state["model"])
        if adapter is not None:
            adapter.load_state_dict(state["adapter"])
        if state.get("opt") is not None:  # None: a stage that starts a fresh optimiser
            opt.load_state_dict(state["opt"])
        step, log = state["step"], state["log"]
    keys = ("student", "logits", "maps", "label")
    n = len(cache["student"])
    n_extra = 0
    if extra is not None and extra_share > 0:
        n_extra = int(round(extra_share * settings.batch))
        cache = {k: np.concatenate([cache[k], extra[k]]) for k in keys}
    views = cache["student"]
    t_logits = torch.from_numpy(cache["logits"].astype(np.float32))
    t_maps = torch.from_numpy(cache["maps"].astype(np.float32))
    map_scale = float(t_maps[:n].var()) + 1e-6
    t_view_top1 = t_maps.mean(dim=(2, 3)).argmax(1)
    true = torch.from_numpy(cache["label"].astype(np.int64))
    heads = torch.zeros(len(true), dtype=torch.bool)
    if head_rows is not None:
        heads[:n] = torch.from_numpy(np.asarray(head_rows[:n], dtype=bool))
    student = student.to(memory_format=torch.channels_last)
    if settings.flat_rows and flat_targets is None:
        raise ValueError("flat_rows needs the teacher's answer on a flat frame (flat_targets)")
    k = settings.flat_rows
    if k:
        flat_logits = torch.from_numpy(np.asarray(flat_targets[0], np.float32)).expand(k, -1)
        flat_maps = torch.from_numpy(np.asarray(flat_targets[1], np.float32))
        flat_maps = flat_maps.expand(k, *flat_maps.shape)
        flat_top1 = flat_maps.mean(dim=(2, 3)).argmax(1)

    def lr_at(s: int) -> float:
        if s < settings.warmup:
            return settings.lr * (s + 1) / settings.warmup
        p = (s - settings.warmup) / max(1, settings.steps - settings.warmup)
        return settings.lr * 0.5 * (1 + math.cos(math.pi * p))

    bar = tqdm(total=settings.steps, initial=step, desc="distil", unit="step")
    t0 = time.time() - (log[-1]["min"] * 60 if log else 0.0)
    # CPU time beside wall time: on a shared box the wall clock says more about the others.
    c0 = time.process_time() - (log[-1].get("cpu_min", 0.0) * 60 if log else 0.0)
    while step < settings.steps:
        rng = np.random.default_rng([seed, 3, step])
        idx = np.sort(rng.choice(n, settings.batch - n_extra, replace=False))
        if n_extra:
            idx = np.concatenate([idx, n + np.sort(rng.choice(len(views) - n, n_extra,
                                                              replace=False))])
        x = _norm_batch(views[idx], STUDENT_SPEC)
        maps_target = t_maps[idx]
        b_logits, b_true, b_top1, b_heads = t_logits[idx], true[idx], t_view_top1[idx], \
            heads[idx]
        if k:  # a flat frame z-scores to zeros, as the device normalises it
            x = torch.cat([x, torch.zeros(k, *x.shape[1:], dtype=x.dtype)])
            maps_target = torch.cat([maps_target, flat_maps])
            b_logits = torch.cat([b_logits, flat_logits])
            b_true = torch.cat([b_true, torch.full((k,), -1, dtype=b_true.dtype)])
            b_top1 = torch.cat([b_top1, flat_top1])
            b_heads = torch.cat([b_heads, torch.zeros(k, dtype=torch.bool)])
        if step < settings.low_res_steps:
            x = half_resolution(x)
            maps_target = F.avg_pool2d(maps_target, 2)
        x = x.contiguous(memory_format=torch.channels_last)
        student.train()
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        feature = None
        if adapter is not None:
            s_logits, s_maps, s_hidden = student.forward_hidden(x)
            feature = (adapter(s_hidden), t_hidden_all[idx].float(), feature_scale)
        else:
            s_logits, s_maps = student.forward_maps(x)
        loss = distil_loss(s_logits, s_maps, b_logits, maps_target, settings, map_scale,
                           b_true, b_top1, b_heads, feature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % settings.eval_every == 0 or step == settings.steps:
            entry = {"step": step, "loss": float(loss.item()), "min": (time.time() - t0) / 60,
                     "cpu_min": (time.process_time() - c0) / 60}
            if heldout is not None:
                pred = student_logits(student, views_for_student(heldout)).argmax(1)
                agree = pred == heldout["logits"].argmax(1)
                entry["heldout_agreement"] = float(agree.mean())
                on_heads = heldout["source"] == "hc18"
                entry["heldout_heads_agreement"] = float(agree[on_heads].mean())
                entry["heldout_heads_named_head"] = float(
                    np.isin(pred[on_heads], HEAD_PLANE_IDS).mean())
            log.append(entry)
            tqdm.write(json.dumps(entry))
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"model": student.state_dict(), "opt": opt.state_dict(), "step": step,
                        "log": log, "settings": settings_stamp(settings),
                        "student_spec": _student_spec(student),
                        **({"adapter": adapter.state_dict()} if adapter is not None else {})},
                       tmp)
            tmp.replace(ckpt)
    bar.close()
    (ckpt.parent / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    return student.eval()


def flat_frame_targets(teacher) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's (logits, maps) on a flat frame, for `TrainSettings.flat_rows`."""
    from quantize.specs import TEACHER_SPEC

    logits, maps = teacher_targets(teacher, np.zeros((1, TEACHER_SPEC.height,
                                                      TEACHER_SPEC.width), np.uint8))
    return logits[0], maps[0]


def head_rows_of(cache: dict[str, np.ndarray], train: list[Frame]) -> np.ndarray:
    """Which cached views show a frame known to be a head plane: every HC18 frame (labelled
    or test) and every FETAL_PLANES_DB brain frame; mixup views never."""
    known = np.array([is_head_frame(f) for f in train] + [False])
    owner = cache["frame"].astype(np.int64)
    return known[np.where(owner >= 0, owner, len(train))]


def half_resolution(x: torch.Tensor) -> torch.Tensor:
    """z-scored views (n, 1, H, W) at half size: 2x2 means (cv2's area resize), z-scored
    again as the device would normalise a view of that size."""
    x = F.avg_pool2d(x, 2)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True, unbiased=False).clamp_min(1e-6)
    return (x - mean) / std


def views_for_student(data: dict[str, np.ndarray]) -> np.ndarray:
    """The stored uint8 views at the student's input size (held-out sets keep both)."""
    for key in ("student", "teacher"):
        if key in data and tuple(data[key].shape[1:]) == (STUDENT_SPEC.height,
                                                          STUDENT_SPEC.width):
            return data[key]
    raise ValueError(f"no cached views at {STUDENT_SPEC.height}x{STUDENT_SPEC.width}")
