"""Every real frame in the shared data folder, a patient-level split, and consistent views.

Frames: HC18 images, the unlabelled HC18 test heads, `planes/images` and the 13 SonoNet
example planes. Groups (the unit of the split, so no patient is on both sides): HC18 = the
number before the first `_`; HC18 test heads = `HC18test:` + the file stem (one patient per
image, and their names repeat the training names, so they get a group of their own);
planes = the `patient_or_source_id` column, except that all 20 umbilical-cord frames
(MFM_AI, no patient ids, consecutive frames of one session) form one group; each example
plane is its own group and always trains (they are the only frames of 9 of the classes).
The HC18 test heads always train as well: they have no labels, so they are distillation
data (the teacher labels them) and can never be used to validate.

The split is a hash of the group (`_unit`), so it is stable per patient: adding frames or
patients never moves a patient from one side to the other.

`make_view` produces one augmented view of a frame for *both* nets: the augmentation acts on
the full-resolution region found by `edge.models.roi.find_roi` (the device path), and the result
is then resized exactly as `edge.models.preprocess.grey_resized` does, once per net resolution.
"""

from __future__ import annotations

import csv
import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.models.preprocess import RESIZE_MODES, PreprocessSpec, grey_resized
from edge.models.roi import Roi, find_roi, to_grey

LABELS = ["3VV", "4CH", "Abdominal", "Background", "Brain (Cb.)", "Brain (Tv.)", "Femur",
          "Kidneys", "Lips", "LVOT", "Profile", "RVOT", "Spine (cor.)", "Spine (sag.)"]
# SonoNet's two axial head planes: biometry measures on either (edge/exam/protocols.toml).
HEAD_PLANES = ("Brain (Cb.)", "Brain (Tv.)")
HEAD_PLANE_IDS = tuple(LABELS.index(name) for name in HEAD_PLANES)
EXAMPLE_LABELS = {
    "3VV": "3VV", "4CH": "4CH", "ABDOMINAL": "Abdominal", "BRAIN-CB": "Brain (Cb.)",
    "BRAIN-TV": "Brain (Tv.)", "FEMUR": "Femur", "KIDNEYS": "Kidneys", "LIPS": "Lips",
    "LVOT": "LVOT", "PROFILE": "Profile", "RVOT": "RVOT", "SPINE-CORONAL": "Spine (cor.)",
    "SPINE-SAGITTAL": "Spine (sag.)",
}
CORD_GROUP = "MFM_AI:umbilical-cord-session"
ALWAYS_TRAIN = ("examples", "hc18_test")
# The README's fixed crop for the GE example screens: image[115:734, 81:874].
EXAMPLE_CROP = Roi(x=81, y=115, w=874 - 81, h=734 - 115)


class DataError(ValueError):
    """A one-line message naming the missing or unreadable file."""


def data_dir() -> Path:
    """`$SONOEDGE_DATA`, else ../shared/data beside the repository."""
    env = os.environ.get("SONOEDGE_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        raise DataError(f"{path}: data folder not found (set SONOEDGE_DATA)")
    return path


@dataclass(frozen=True)
class Frame:
    path: Path
    source: str  # "hc18", "planes", "examples"
    group: str
    label: str  # true SonoNet label where known exactly, else ""


def is_head_frame(frame: Frame) -> bool:
    """A frame known to show a head plane without a SonoNet label: every HC18 frame (its
    sonographers measured HC on it, labelled or test) and FETAL_PLANES_DB's plane 3, the
    fetal brain."""
    return frame.source in ("hc18", "hc18_test") or "_Plane3_" in frame.path.name


def list_frames(root: Path | None = None) -> list[Frame]:
    root = data_dir() if root is None else Path(root)
    frames: list[Frame] = []
    hc_dir = root / "hc18" / "images"
    test_dir = root / "hc18_test" / "images"
    planes_csv = root / "planes" / "labels.csv"
    ex_dir = root / "sononet" / "examples"
    for path in (hc_dir, planes_csv, ex_dir):
        if not path.exists():
            raise DataError(f"{path}: missing from the data folder")
    for path in sorted(hc_dir.glob("*.png")):
        frames.append(Frame(path, "hc18", "HC18:" + path.name.split("_")[0], ""))
    if test_dir.is_dir():  # optional: older data folders do not have it
        for path in sorted(test_dir.glob("*.png")):
            frames.append(Frame(path, "hc18_test", "HC18test:" + path.stem, ""))
    with open(planes_csv, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            group = row["patient_or_source_id"]
            if group.startswith("MFM_AI:"):
                group = CORD_GROUP
            frames.append(Frame(root / "planes" / "images" / row["filename"], "planes", group,
                                row["label"].strip()))
    for path in sorted(ex_dir.glob("*.tiff")):
        frames.append(Frame(path, "examples", "example:" + path.stem,
                            EXAMPLE_LABELS.get(path.stem, "")))
    return frames


def _unit(text: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split(frames: list[Frame], seed: int = 0, hc18_heldout: float = 0.25,
          planes_heldout: float = 0.35) -> tuple[list[Frame], list[Frame]]:
    """(train, held-out), by group. Examples, unlabelled test heads and the cord session
    always train."""
    train: list[Frame] = []
    held: list[Frame] = []
    for frame in frames:
        if frame.source in ALWAYS_TRAIN or frame.group == CORD_GROUP:
            train.append(frame)
            continue
        fraction = hc18_heldout if frame.source == "hc18" else planes_heldout
        (held if _unit(frame.group, seed) < fraction else train).append(frame)
    return train, held


MAX_CACHE_BYTES = 4 * 2**30  # a cache file, unpacked


def load_npz(path: Path, keys: tuple[str, ...] | None = None) -> dict:
    """A cache written by save_npz, whole or only its `keys` (a build's chunked caches are
    joined key by key, so that only one key's chunks are in memory twice); a file that is
    not one (truncated, overwritten, another program's, a key missing) is a DataError naming
    it, not a zipfile or pickle traceback. Its unpacked size is bounded before anything is
    unpacked (the largest cache today, the teacher's maps, is 310 MB)."""
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(member.file_size for member in archive.infolist())
        if unpacked > MAX_CACHE_BYTES:
            raise ValueError(f"it would unpack to {unpacked / 2**30:.1f} GiB, over "
                             f"{MAX_CACHE_BYTES / 2**30:.0f} GiB")
        with np.load(path, allow_pickle=False) as z:
            out = {key: z[key] for key in (z.files if keys is None else keys)}
        odd = [key for key, value in out.items() if not isinstance(value, np.ndarray)]
        if odd:
            raise ValueError(f"{odd[0]!r} is not an array")
        return out
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable cache ({str(exc)[:80]}); delete it and run "
                        "again to rebuild it") from None


def save_npz(path: Path, **arrays) -> None:
    """Write a cache file whole or not at all: an interrupted build never leaves a
    half-written .npz for the next run to trip on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def read_frame(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"{path}: cannot read image")
    if image.dtype != np.uint8:
        raise DataError(f"{path}: expected 8-bit pixels, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    return image


def device_view(image: np.ndarray, spec: PreprocessSpec, roi: Roi | None = None,
                auto: bool = True) -> np.ndarray:
    """The uint8 view the device computes: find_roi (unless given) + grey_resized."""
    if roi is None and auto:
        roi = find_roi(image)
    return grey_resized(image, roi, spec)


def border_crop(roi: Roi | None, shape: tuple[int, ...], fraction: float = 0.04) -> Roi:
    """The region with `fraction` of its width and height cut from every side."""
    if roi is None:
        roi = Roi(0, 0, shape[1], shape[0])
    dx, dy = int(round(roi.w * fraction)), int(round(roi.h * fraction))
    return Roi(roi.x + dx, roi.y + dy, roi.w - 2 * dx, roi.h - 2 * dy)


@dataclass(frozen=True)
class AugmentSettings:
    rotate_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    shift: float = 0.08  # of the region's width/height
    edge_jitter: float = 0.05  # each ROI edge moves by up to this share (ROI finder variation)
    flip: float = 0.5
    gamma: tuple[float, float] = (0.65, 1.5)
    speckle: float = 0.25  # max std of multiplicative noise
    blur: float = 0.25  # probability of a light Gaussian blur
    strength: float = 1.0  # multiplies the geometric ranges (heavier for the examples)


def make_view(grey: np.ndarray, roi: Roi | None, rng: np.random.Generator,
              specs: tuple[PreprocessSpec, ...], aug: AugmentSettings | None) -> list[np.ndarray]:
    """One augmented view of a grey frame, resized for each spec (uint8 H x W each)."""
    if roi is None:
        roi = Roi(0, 0, grey.shape[1], grey.shape[0])
    if aug is None:
        region = roi.crop(grey)
    else:
        k = aug.strength
        j = aug.edge_jitter * k
        x0 = roi.x + rng.uniform(-j, j) * roi.w
        x1 = roi.x + roi.w + rng.uniform(-j, j) * roi.w
        y0 = roi.y + rng.uniform(-j, j) * roi.h
        y1 = roi.y + roi.h + rng.uniform(-j, j) * roi.h
        w, h = max(16, int(round(x1 - x0))), max(16, int(round(y1 - y0)))
        lo, hi = aug.scale
        scale = float(np.exp(rng.uniform(np.log(1 - (1 - lo) * k), np.log(1 + (hi - 1) * k))))
        angle = rng.uniform(-aug.rotate_deg, aug.rotate_deg) * k
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        # Map source -> crop: rotate/scale about the region's centre, then shift.
        m = cv2.getRotationMatrix2D((cx, cy), angle, scale)
        m[0, 2] += w / 2 - cx + rng.uniform(-aug.shift, aug.shift) * k * w
        m[1, 2] += h / 2 - cy + rng.uniform(-aug.shift, aug.shift) * k * h
        region = cv2.warpAffine(grey, m, (w, h), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        if rng.random() < aug.flip:
            region = region[:, ::-1]
        x = region.astype(np.float32) / 255.0
        x = np.power(x, rng.uniform(*aug.gamma))
        if rng.random() < aug.blur:
            x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.5, 1.5))
        sigma = rng.uniform(0, aug.speckle)
        if sigma > 0:
            noise = rng.normal(1.0, sigma, size=(h // 2 + 1, w // 2 + 1)).astype(np.float32)
            x = x * cv2.resize(noise, (w, h), interpolation=cv2.INTER_LINEAR)
        region = np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
    region = np.ascontiguousarray(region)
    return [cv2.resize(region, (s.width, s.height), interpolation=RESIZE_MODES[s.resize])
            for s in specs]


def grey_frame(image: np.ndarray) -> np.ndarray:
    return to_grey(image)
