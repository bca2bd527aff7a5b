"""HC18 head masks, the patient split and augmentation for the head segmenter.

Masks: HC18 annotations are thin (2-3 px) ellipse OUTLINES. `fit_annotation` fits an
ellipse to every outline pixel (cv2.fitEllipse: a least-squares fit through the band, so
it lies on the outline's centre line) and `fill_ellipse` rasterises it filled as exact
area coverage (supersampled along the boundary), so the mask boundary sits on that centre
line; the device's 0.5 contour of it gives back the ellipse's perimeter.
Ramanujan's perimeter of the fitted ellipse times the pixel size reproduces the CSV's HC
(measured on all 499 files: mean |diff| 0.009 mm, max 0.045 mm). Ellipses that run past
the image edge are kept (their mask is simply clipped by the frame).

Preprocessing: `SPEC` (roi "full"): `edge.models.roi.find_roi` cut into the annotated head (>1%
of its area) on 86 of 499 HC18 frames, so the segmenter sees the whole frame. Training
inputs are exactly `grey_resized` + `normalise` of the frame (INTER_AREA to 160x240); the
mask target at that size is the area coverage of the filled ellipse (0..1), resized the
same way, so the logits can place the boundary between pixels.

Augmentation acts on a cached 2x copy (320x480) of the frame and of its mask coverage,
identically (rotation, scale, shift, flip), then INTER_AREA halves both to 160x240; gain
and gamma touch only the image; the result is z-scored like the device does. With no
augmentation the 2x route differs from the direct resize by area-averaging rounding only.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edge.models.biometry import measure_probability
from edge.models.preprocess import PreprocessSpec, grey_resized, normalise
from quantize.data import DataError, Frame, list_frames, load_npz, read_frame, save_npz, split

SPEC = PreprocessSpec(height=160, width=240, roi="full", resize="area", scale=1.0)
CACHE_SCALE = 2  # augmentation works on a 2x copy, then area-halves to SPEC
CSV_NAME = "training_set_pixel_size_and_HC.csv"


@dataclass(frozen=True)
class Ellipse:
    cx: float
    cy: float
    width: float  # full axes (cv2 convention), pixels
    height: float
    angle: float  # degrees

    def perimeter_px(self) -> float:
        return ramanujan_perimeter(self.width / 2, self.height / 2)

    def as_cv(self) -> tuple:
        return ((self.cx, self.cy), (self.width, self.height), self.angle)


def ramanujan_perimeter(a: float, b: float) -> float:
    """Ramanujan's second approximation of an ellipse's perimeter (semi-axes a, b)."""
    h = ((a - b) / (a + b)) ** 2
    return math.pi * (a + b) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h)))


def annotation_path(image_path: Path) -> Path:
    return image_path.parent.parent / "annotations" / image_path.name.replace(
        ".png", "_Annotation.png")


def read_hc_table(root: Path) -> dict[str, tuple[float, float]]:
    """filename -> (pixel size mm, HC mm) from the HC18 CSV."""
    path = Path(root) / "hc18" / CSV_NAME
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        return {r["filename"]: (float(r["pixel size(mm)"]), float(r["head circumference (mm)"]))
                for r in rows}
    except FileNotFoundError:
        raise DataError(f"{path}: HC18 table missing") from None
    except (KeyError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: malformed HC18 table ({exc})") from None


def fit_annotation(path: Path) -> Ellipse:
    ann = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if ann is None:
        raise DataError(f"{path}: cannot read annotation")
    ys, xs = np.nonzero(ann > 127)
    if len(xs) < 20:
        raise DataError(f"{path}: annotation has no ellipse outline")
    (cx, cy), (w, h), angle = cv2.fitEllipse(np.stack([xs, ys], 1).astype(np.float32))
    return Ellipse(float(cx), float(cy), float(w), float(h), float(angle))


def fill_ellipse(shape: tuple[int, int], ellipse: Ellipse, sub: int = 8) -> np.ndarray:
    """float32 (0..1) area coverage of the filled ellipse on a pixel grid of `shape`.

    Pixel (row r, col c) is the unit square centred on (x=c, y=r), the convention of
    cv2.fitEllipse and edge.models.biometry. Pixels farther than one pixel from the boundary are
    0 or 1 exactly; the band along the boundary is supersampled `sub` x `sub`. (cv2.ellipse,
    even with shift and LINE_AA, fills about half a pixel beyond the true boundary: on
    250_HC that put the device's HC 0.55 mm above the CSV's.)
    """
    h, w = shape[:2]
    a, b = ellipse.width / 2, ellipse.height / 2
    t = np.deg2rad(ellipse.angle)
    cos, sin = np.cos(t), np.sin(t)

    def radius(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        dx, dy = x - ellipse.cx, y - ellipse.cy
        return np.sqrt(((dx * cos + dy * sin) / a) ** 2 + ((dy * cos - dx * sin) / b) ** 2)

    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    r = radius(xs, ys)
    out = (r <= 1).astype(np.float32)
    # Distance to the boundary is at least |r - 1| * min(a, b): outside this band a pixel
    # (half-diagonal 0.71) lies wholly on one side.
    rows, cols = np.nonzero(np.abs(r - 1) * min(a, b) < 1.0)
    if rows.size:
        offs = (np.arange(sub) + 0.5) / sub - 0.5
        ox, oy = np.meshgrid(offs, offs)
        sx = cols[:, None] + ox.ravel()[None]
        sy = rows[:, None] + oy.ravel()[None]
        out[rows, cols] = (radius(sx, sy) <= 1).mean(1)
    return out


def past_edge(shape: tuple[int, int], ellipse: Ellipse) -> bool:
    """Whether part of the ellipse lies outside the frame."""
    inside = float(fill_ellipse(shape, ellipse).sum())
    return inside < np.pi * ellipse.width * ellipse.height / 4 - 1.0


def coverage(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area coverage (float32 0..1) of a 0..1 coverage mask, resized like grey_resized."""
    return cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)


def hc18_split(root: Path | None = None, seed: int = 0) -> tuple[list[Frame], list[Frame]]:
    """HC18 frames of quantize.data.split (the project's one patient split)."""
    train, held = split(list_frames(root), seed=seed)
    return ([f for f in train if f.source == "hc18"], [f for f in held if f.source == "hc18"])


def build_cache(frames: list[Frame], dest: Path, root: Path, spec: PreprocessSpec = SPEC) -> dict:
    """Decode, fit, fill and resize every frame once; stored as one .npz (reused)."""
    if dest.exists():
        return load_npz(dest)
    table = read_hc_table(root)
    h, w = spec.height, spec.width
    h2, w2 = h * CACHE_SCALE, w * CACHE_SCALE
    out = {k: [] for k in ("x", "y", "x2", "y2", "ellipse", "pixel_mm", "hc_csv", "hc_fit",
                           "frame_hw", "past_edge", "hc_target")}
    names = []
    for frame in tqdm(frames, desc=f"masks {dest.stem}", unit="frame"):
        if frame.path.name not in table:
            raise DataError(f"{frame.path}: not in the HC18 table")
        pixel, hc = table[frame.path.name]
        image = read_frame(frame.path)
        ell = fit_annotation(annotation_path(frame.path))
        grey = grey_resized(image, None, PreprocessSpec(h, w, roi="full"))
        full = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        mask = fill_ellipse(full.shape[:2], ell)
        out["x"].append(grey)
        target = coverage(mask, h, w)
        out["y"].append((target * 255 + 0.5).astype(np.uint8))
        # The floor of the whole method: the device's HC of a perfect model output.
        bio = measure_probability(target, (0, 0, full.shape[1], full.shape[0]), full.shape,
                                  pixel)
        out["hc_target"].append(np.nan if bio.hc_mm is None else bio.hc_mm)
        out["x2"].append(cv2.resize(full, (w2, h2), interpolation=cv2.INTER_AREA))
        out["y2"].append((coverage(mask, h2, w2) * 255 + 0.5).astype(np.uint8))
        out["ellipse"].append([ell.cx, ell.cy, ell.width, ell.height, ell.angle])
        out["pixel_mm"].append(pixel)
        out["hc_csv"].append(hc)
        out["hc_fit"].append(ell.perimeter_px() * pixel)
        out["frame_hw"].append(full.shape[:2])
        out["past_edge"].append(past_edge(full.shape[:2], ell))
        names.append(frame.path.name)
    arrays = {k: np.asarray(v) for k, v in out.items()}
    arrays["name"] = np.asarray(names)
    save_npz(dest, **arrays)
    return arrays


def mask_check(cache: dict) -> dict:
    """How well the fitted ellipses reproduce the CSV's HC."""
    diff = np.abs(cache["hc_fit"] - cache["hc_csv"])
    target = cache["hc_target"] - cache["hc_csv"]
    ok = np.isfinite(target)
    return {"n": int(len(diff)), "mean_abs_mm": float(diff.mean()),
            "max_abs_mm": float(diff.max()), "past_edge": int(cache["past_edge"].sum()),
            "target_mean_abs_mm": float(np.abs(target[ok]).mean()),
            "target_max_abs_mm": float(np.abs(target[ok]).max()),
            "target_measured": int(ok.sum())}


@dataclass(frozen=True)
class SegAugment:
    rotate_deg: float = 20.0
    scale: tuple[float, float] = (0.8, 1.2)
    shift: float = 0.08  # of width/height
    flip: float = 0.5  # horizontal, and the same again vertically
    gain: tuple[float, float] = (0.7, 1.3)
    gamma: tuple[float, float] = (0.7, 1.4)
    # The share of views that show what the device's crop pass shows
    # (`edge.models.biometry.refine_box`): the annotated head, moved and resized by about
    # what the first pass errs, plus a margin, framed at the model's aspect and magnified
    # up to a zoom drawn from `crop_zoom`. 0: none (the build's nets so far).
    crop_views: float = 0.0
    crop_zoom: tuple[float, float] = (1.0, 2.0)
    crop_margin: tuple[float, float] = (0.1, 0.35)
    crop_jitter: float = 0.04  # of the head's size: the first pass's error in place and size


def crop_view_matrix(ellipse: np.ndarray, frame_hw: np.ndarray, shape2: tuple[int, int],
                     rng: np.random.Generator, aug: SegAugment) -> np.ndarray:
    """The 2x3 affine that maps a crop like the device's second pass onto the whole 2x
    view: the annotated head (cv2 full axes, frame pixels), jittered by the first pass's
    typical error, plus a margin, at the view's aspect, magnified at most the drawn zoom."""
    from edge.models.biometry import refine_box

    cx, cy, width, height, angle = (float(v) for v in ellipse)
    fh, fw = (int(v) for v in frame_hw)
    hh, ww = shape2
    size = max(width, height) / 2
    jitter = aug.crop_jitter
    cx += rng.normal(0.0, jitter) * size
    cy += rng.normal(0.0, jitter) * size
    grow = float(np.clip(1.0 + rng.normal(0.0, jitter), 0.8, 1.2))
    major, minor = max(width, height) / 2 * grow, min(width, height) / 2 * grow
    tilt = angle if width >= height else angle + 90.0
    margin = rng.uniform(*aug.crop_margin)
    zoom = float(np.exp(rng.uniform(np.log(aug.crop_zoom[0]), np.log(aug.crop_zoom[1]))))
    x, y, bw, bh = refine_box((cx, cy, major, minor, tilt % 180.0), (0, 0, fw, fh), margin,
                              ww / hh, zoom)
    sx, sy = ww / fw, hh / fh  # frame pixels to 2x-view pixels (pixel edges at 0)
    kx, ky = ww / (bw * sx), hh / (bh * sy)
    return np.array([[kx, 0.0, -kx * x * sx], [0.0, ky, -ky * y * sy]])


def augment(x2: np.ndarray, y2: np.ndarray, rng: np.random.Generator,
            aug: SegAugment | None, spec: PreprocessSpec = SPEC,
            t2: np.ndarray | None = None, ellipse: np.ndarray | None = None,
            frame_hw: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """One view: (float32 z-scored H x W input, float32 0..1 H x W target), plus the
    teacher's logit map `t2` (2x size) moved exactly like the mask when it is given. A
    `t2` of shape (2H, 2W, C) carries the logits in channel 0 and the teacher's attention
    maps after them (`with_teacher`); its view is then (C, H, W).

    The teacher map takes no random draw of its own, so a batch with and without it is the
    same view of the same frames (a plain run and a distilled run see the same data).
    With `aug.crop_views` > 0 and the frame's annotated `ellipse` and `frame_hw`, that share
    of views is a crop pass's view (`crop_view_matrix`), turned and shifted a little less."""
    h, w = spec.height, spec.width
    if aug is not None:
        hh, ww = x2.shape
        crop = (aug.crop_views > 0 and ellipse is not None and frame_hw is not None
                and rng.random() < aug.crop_views)
        angle = rng.uniform(-aug.rotate_deg, aug.rotate_deg)
        scale = float(np.exp(rng.uniform(np.log(aug.scale[0]), np.log(aug.scale[1]))))
        if crop:  # the crop frames the head; turn it about the view's centre, no rescale
            box = np.vstack([crop_view_matrix(ellipse, frame_hw, (hh, ww), rng, aug),
                             [0.0, 0.0, 1.0]])
            turn = cv2.getRotationMatrix2D((ww / 2 - 0.5, hh / 2 - 0.5), angle / 2, 1.0)
            m = (np.vstack([turn, [0.0, 0.0, 1.0]]) @ box)[:2]
        else:
            m = cv2.getRotationMatrix2D((ww / 2 - 0.5, hh / 2 - 0.5), angle, scale)
            m[0, 2] += rng.uniform(-aug.shift, aug.shift) * ww
            m[1, 2] += rng.uniform(-aug.shift, aug.shift) * hh
        x2 = cv2.warpAffine(x2, m, (ww, hh), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        y2 = cv2.warpAffine(y2, m, (ww, hh), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        if t2 is not None:  # off the frame the teacher would see background, no features
            t2 = cv2.warpAffine(t2.astype(np.float32), m, (ww, hh), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT,
                                borderValue=(TEACHER_OFF_FRAME, 0.0, 0.0, 0.0))
        if rng.random() < aug.flip:
            x2, y2 = x2[:, ::-1], y2[:, ::-1]
            t2 = None if t2 is None else t2[:, ::-1]
        if rng.random() < aug.flip:
            x2, y2 = x2[::-1], y2[::-1]
            t2 = None if t2 is None else t2[::-1]
        g = x2.astype(np.float32) / 255.0
        g = np.clip(np.power(g, rng.uniform(*aug.gamma)) * rng.uniform(*aug.gain), 0, 1)
        x2 = (g * 255 + 0.5).astype(np.uint8)
    x = cv2.resize(np.ascontiguousarray(x2), (w, h), interpolation=cv2.INTER_AREA)
    y = cv2.resize(np.ascontiguousarray(y2).astype(np.float32) / 255.0, (w, h),
                   interpolation=cv2.INTER_AREA)
    if t2 is None:
        return normalise(x, spec), y
    t = cv2.resize(np.ascontiguousarray(t2, dtype=np.float32), (w, h),
                   interpolation=cv2.INTER_AREA)
    return normalise(x, spec), y, (t if t.ndim == 2 else np.moveaxis(t, -1, 0))


def draw_weights(hc_mm: np.ndarray, big_head_weight: float, start_mm: float = 200.0,
                 full_mm: float = 300.0) -> np.ndarray | None:
    """How often each frame is drawn, summing to 1, or None for uniform draws. Big heads are
    few (107 of 673 training heads over 250 mm) and carry the largest HC errors: a model
    pixel there is the most millimetres. Their weight rises linearly from 1 at `start_mm`
    to `big_head_weight` at `full_mm`; a frame without a reference HC (an unlabelled head,
    NaN) weighs 1."""
    if big_head_weight == 1.0:
        return None
    hc = np.nan_to_num(np.asarray(hc_mm, dtype=np.float64), nan=0.0)
    ramp = np.clip((hc - start_mm) / (full_mm - start_mm), 0.0, 1.0)
    weights = 1.0 + (big_head_weight - 1.0) * ramp
    return weights / weights.sum()


def batch(cache: dict, rng: np.random.Generator, size: int,
          aug: SegAugment | None = SegAugment(),
          spec: PreprocessSpec = SPEC,
          weights: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """(inputs, targets) of `size` augmented views at `spec`'s size, (N, 1, H, W) each;
    when the cache holds the teacher's maps (`t2`, see `with_teacher`) also the teacher's
    logits for each view. The views are drawn the same at every size; `weights`
    (`draw_weights`) makes some frames likelier than others."""
    idx = (rng.integers(0, len(cache["x2"]), size) if weights is None
           else rng.choice(len(cache["x2"]), size, p=weights))
    teacher = cache.get("t2")
    crops = aug is not None and aug.crop_views > 0 and "ellipse" in cache
    views = [augment(cache["x2"][i], cache["y2"][i], rng, aug, spec,
                     t2=None if teacher is None else teacher[i],
                     ellipse=cache["ellipse"][i] if crops else None,
                     frame_hw=cache["frame_hw"][i] if crops else None) for i in idx]
    stacked = (np.stack([v[k] for v in views]) for k in range(len(views[0])))
    return tuple(a[:, None] if a.ndim == 3 else a for a in stacked)


TEACHER_OFF_FRAME = -12.0  # teacher logit for pixels warped in from outside the frame


def unlabelled_frames(root: Path) -> list[Frame]:
    """The HC18 test heads (no labels; other patients than the training set's same names)."""
    return [f for f in list_frames(root) if f.source == "hc18_test"]


def build_unlabelled_cache(frames: list[Frame], dest: Path, spec: PreprocessSpec = SPEC) -> dict:
    """Device view (`x`) and the 2x augmentation copy (`x2`) of unlabelled heads, cached.

    Names are kept as `hc18_test/<file>` so they can never be mistaken for the training
    frames of the same file name."""
    if dest.exists():
        return load_npz(dest)
    h, w = spec.height, spec.width
    xs, x2s, names = [], [], []
    for frame in tqdm(frames, desc=f"frames {dest.stem}", unit="frame"):
        image = read_frame(frame.path)
        full = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        xs.append(grey_resized(image, None, PreprocessSpec(h, w, roi="full")))
        x2s.append(cv2.resize(full, (w * CACHE_SCALE, h * CACHE_SCALE),
                              interpolation=cv2.INTER_AREA))
        names.append(f"hc18_test/{frame.path.name}")
    arrays = {"x": np.asarray(xs), "x2": np.asarray(x2s), "name": np.asarray(names)}
    save_npz(dest, **arrays)
    return arrays


def with_teacher(labelled: dict, unlabelled: dict, t2_labelled: np.ndarray,
                 t2_unlabelled: np.ndarray,
                 attention: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """One training pool for distillation: the labelled frames with their annotation masks
    and the unlabelled heads with the teacher's pseudo-mask (its probability, as area
    coverage like the annotation masks), each with the teacher's logit map `t2` at the
    2x cache size. With the teacher's `attention` maps (labelled, unlabelled; n x 2H x 2W
    x taps) `t2` holds the logits in channel 0 and the maps after them, so that one warp
    moves them all alike."""
    pseudo = 1.0 / (1.0 + np.exp(-t2_unlabelled.astype(np.float32)))
    t2 = np.concatenate([t2_labelled, t2_unlabelled]).astype(np.float16)
    if attention is not None:
        t2 = np.concatenate([t2[..., None], np.concatenate(attention).astype(np.float16)], -1)
    return {"x2": np.concatenate([labelled["x2"], unlabelled["x2"]]),
            "y2": np.concatenate([labelled["y2"], (pseudo * 255 + 0.5).astype(np.uint8)]),
            "t2": t2,
            "hc_csv": np.concatenate([labelled["hc_csv"],
                                      np.full(len(unlabelled["x2"]), np.nan)])}


def sized_spec(height: int, width: int) -> PreprocessSpec:
    """SPEC at another input size (the segmenter teacher reads 1.5x the student's)."""
    return PreprocessSpec(height, width, roi=SPEC.roi, resize=SPEC.resize, scale=SPEC.scale)


def device_inputs(cache: dict, spec: PreprocessSpec = SPEC) -> np.ndarray:
    """Each cached frame as a net of `spec`'s size reads it, z-scored: at SPEC's size
    exactly the device's input (grey_resized + normalise); at another size the 2x copy
    area-resized, as the training views are made."""
    if (spec.height, spec.width) == (SPEC.height, SPEC.width):
        return np.stack([normalise(x, spec) for x in cache["x"]])[:, None]
    return np.stack([normalise(cv2.resize(x2, (spec.width, spec.height),
                                          interpolation=cv2.INTER_AREA), spec)
                     for x2 in cache["x2"]])[:, None]
