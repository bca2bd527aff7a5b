"""The built-in demo source: a short scanner-screen clip made at run time.

Why: `make run` must show the whole loop working on a box with no scanner plugged in.
When the real images from ../shared/data are there, the clip sweeps through the 13
SonoNet example screens and a spread of HC18 head frames laid out like a scanner's screen
(black background, text, depth scale, grey bar), each held a few frames with small probe
motion. Without them it is a generated phantom (a speckled elliptical head in a fan
sector), and the description says so plainly. The clip is built into a cache directory,
never committed, and reused while its content hash matches. Data never enters the repo.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge.capture.images import IMAGE_EXTS, decode_image_file
from wire.schema import finite_number

log = logging.getLogger(__name__)

DEMO_VERSION = 3  # bump when the rendering or its metadata change: rebuilds cached clips
# The demo's depth ruler ticks every 5 mm, as the GE Voluson E8 screens of the SonoNet
# examples do (the demo shows those too): one `[biometry] ruler_tick_mm` reads both.
DEMO_RULER_TICK_MM = 5.0
SCREEN_W, SCREEN_H = 1024, 768  # XGA: a common portable-scanner video-out mode
FPS = 15.0
SEED = 20240607
HC18_FRAMES = 20  # head frames picked evenly across the (HC-sorted) file list
FRAMES_PER_SCREEN = 5
FRAMES_PER_HEAD = 4
JPEG_QUALITY = 90
PIXEL_SIZES_CSV = "training_set_pixel_size_and_HC.csv"  # HC18's: each head's mm per pixel

REPO_ROOT = Path(__file__).resolve().parents[2]

# Roughly the order of a second-trimester anomaly scan; unknown names go at the end.
EXAM_ORDER = ("BRAIN-TV", "BRAIN-CB", "LIPS", "PROFILE", "4CH", "LVOT", "RVOT", "3VV",
              "ABDOMINAL", "KIDNEYS", "SPINE-SAGITTAL", "SPINE-CORONAL", "FEMUR")
SONONET_BMODE = (slice(115, 734), slice(81, 874))  # the README's crop: B-mode area only


@dataclass(frozen=True)
class DemoClip:
    path: Path  # an .avi file, or a folder of JPEG frames when MJPG cannot be written
    kind: str  # "real" | "phantom"
    description: str  # one line for the log; says "phantom" when it is one
    frames: int
    fps: float
    content_hash: str
    frame_sources: tuple[str, ...] = field(default=(), repr=False)  # per frame: origin
    reused: bool = False
    # per frame: a head's mm per screen pixel (its HC18 pixel size, scaled and zoomed as
    # laid out), None for every other frame: `make run` measures the demo's heads with it
    pixel_sizes: tuple[float | None, ...] = field(default=(), repr=False)


def default_data_dir() -> Path:
    env = os.environ.get("SONOEDGE_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def default_cache_dir() -> Path:
    env = os.environ.get("SONOEDGE_DEMO_CACHE")
    return Path(env) if env else REPO_ROOT / ".cache" / "demo"


# --------------------------------------------------------------------------- inputs


def _real_inputs(data_dir: Path) -> tuple[list[Path], list[Path]]:
    ex = data_dir / "sononet" / "examples"
    tiffs = sorted(ex.glob("*.tif*")) if ex.is_dir() else []
    hc_dir = data_dir / "hc18" / "images"
    hcs = sorted(p for p in hc_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS) \
        if hc_dir.is_dir() else []
    if len(hcs) > HC18_FRAMES:
        idx = np.linspace(0, len(hcs) - 1, HC18_FRAMES).round().astype(int)
        hcs = [hcs[i] for i in sorted(set(idx.tolist()))]
    return tiffs, hcs


def _pixel_sizes(data_dir: Path) -> dict[str, float]:
    p = data_dir / "hc18" / PIXEL_SIZES_CSV
    out: dict[str, float] = {}
    try:
        with p.open(newline="") as f:
            for row in csv.reader(f):
                if len(row) >= 2:
                    try:
                        size = float(row[1])
                    except ValueError:
                        continue  # header
                    if math.isfinite(size) and size > 0:  # else: no scale known
                        out[row[0]] = size
    except OSError:
        pass
    return out


def _content_hash(kind: str, files: list[Path], fmt: str) -> str:
    h = hashlib.sha256(f"v{DEMO_VERSION}|{kind}|{SCREEN_W}x{SCREEN_H}|{FPS}|{SEED}|{fmt}"
                       .encode())
    for p in files:
        h.update(p.name.encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- drawing


def _text(img: np.ndarray, s: str, x: int, y: int, scale: float = 0.45,
          color: tuple[int, int, int] = (220, 220, 220)) -> None:
    cv2.putText(img, s, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)


def _jitter(img: np.ndarray, rng: np.random.Generator, k: int, border: int
            ) -> tuple[np.ndarray, float]:
    """Small probe motion: a shift of a few px, a rotation under 2 degrees and a zoom of
    1.5% at most; the image and its zoom."""
    if k == 0:
        return img, 1.0
    h, w = img.shape[:2]
    ang = float(rng.uniform(-1.8, 1.8))
    dx, dy = (float(v) for v in rng.uniform(-6, 6, size=2))
    zoom = float(rng.uniform(0.985, 1.015))
    m = cv2.getRotationMatrix2D((w / 2, h / 2), ang, zoom)
    m[:, 2] += (dx, dy)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=border), zoom


def _grey_bar(screen: np.ndarray, x: int, y: int, h: int = 200) -> None:
    ramp = np.linspace(255, 0, h, dtype=np.float32).astype(np.uint8)[:, None]
    screen[y:y + h, x:x + 10] = np.repeat(ramp, 10, axis=1)[:, :, None]


def _depth_scale(screen: np.ndarray, x: int, y0: int, y1: int, px_per_tick: float) -> None:
    """A depth ruler as the GE Voluson draws it: a tick every DEMO_RULER_TICK_MM, a longer
    one every centimetre, the depth in cm every 5 cm; read by `[biometry] ruler_tick_mm`."""
    cv2.line(screen, (x, y0), (x, y1), (200, 200, 200), 1)
    per_cm = int(round(10 / DEMO_RULER_TICK_MM))
    n = int((y1 - y0) / px_per_tick)
    for i in range(n + 1):
        y = int(round(y0 + i * px_per_tick))
        cv2.line(screen, (x, y), (x + (8 if i % per_cm == 0 else 4), y), (200, 200, 200), 1)
        if i % (5 * per_cm) == 0:
            _text(screen, str(i // per_cm), x + 12, y + 4, 0.4)


def _screen_for_sononet(img: np.ndarray, name: str, k: int, rng: np.random.Generator,
                        frame_no: int) -> np.ndarray:
    """The TIFF is already a full GE screen: move only its B-mode area, keep the overlay."""
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    img = img.copy()
    ys, xs = SONONET_BMODE
    if img.shape[0] >= ys.stop and img.shape[1] >= xs.stop:
        img[ys, xs] = _jitter(img[ys, xs], rng, k, cv2.BORDER_REFLECT_101)[0]
    screen = np.zeros((SCREEN_H, SCREEN_W, 3), np.uint8)
    h, w = min(img.shape[0], SCREEN_H), min(img.shape[1], SCREEN_W)
    oy, ox = (SCREEN_H - h) // 2, (SCREEN_W - w) // 2
    screen[oy:oy + h, ox:ox + w] = img[:h, :w]
    _text(screen, f"SONOEDGE DEMO  SonoNet example {name}  FR {frame_no:04d}", 8,
          SCREEN_H - 4, 0.38, (160, 160, 160))
    return screen


def _screen_for_head(img: np.ndarray, name: str, mm_per_px: float | None, k: int,
                     rng: np.random.Generator, frame_no: int
                     ) -> tuple[np.ndarray, float | None]:
    """HC18 frames are bare B-mode: lay them out on a scanner-like screen. The screen, and
    its mm per pixel where the head's pixel size is known."""
    box_w, box_h, ox, oy = 800, 560, 112, 104
    s = min(box_w / img.shape[1], box_h / img.shape[0], 1.0)
    if s < 1.0:
        img = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    img, zoom = _jitter(img, rng, k, cv2.BORDER_REFLECT_101)
    h, w = img.shape[:2]
    screen = np.zeros((SCREEN_H, SCREEN_W, 3), np.uint8)
    screen[oy:oy + h, ox:ox + w] = img
    _text(screen, "SONOEDGE DEMO", 12, 26, 0.6, (255, 255, 255))
    _text(screen, f"HC18 {name}", 12, 50)
    _text(screen, "C1-5  OB/2-3  MI 0.9  TIs 0.2", 12, 74)
    _text(screen, f"FR {frame_no:04d}   {FPS:.0f} Hz", SCREEN_W - 200, 26)
    _text(screen, "Gn 52  DR 66  FA 4", SCREEN_W - 200, 50)
    _grey_bar(screen, 40, 300)
    # the ruler at the scale the head is drawn at, zoom and all, so it reads true
    px_per_tick = DEMO_RULER_TICK_MM * s * zoom / mm_per_px if mm_per_px else 20.0
    _depth_scale(screen, ox + w + 14, oy, oy + h, float(np.clip(px_per_tick, 8.0, 400.0)))
    _text(screen, "Not for diagnosis: public research images", 12, SCREEN_H - 14, 0.4,
          (150, 150, 150))
    return screen, (mm_per_px / (s * zoom) if mm_per_px else None)


def _blend(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A frame between two views: the probe moving, no clean plane (background class)."""
    mix = cv2.addWeighted(a, 0.5, b, 0.5, 0.0)
    return cv2.GaussianBlur(mix, (0, 0), 3.0)


def _real_frames(tiffs: list[Path], hcs: list[Path], data_dir: Path
                 ) -> Iterator[tuple[str, np.ndarray, float | None]]:
    rng = np.random.default_rng(SEED)
    px = _pixel_sizes(data_dir)
    by_name = {p.stem.upper(): p for p in tiffs}
    ordered = [by_name.pop(n) for n in EXAM_ORDER if n in by_name] + sorted(by_name.values())
    half = len(hcs) // 2
    # head frames around the brain planes, then the rest of the exam
    items: list[tuple[str, Path]] = [("hc18", p) for p in hcs[:half]]
    items += [("sononet", p) for p in ordered if p.stem.upper().startswith("BRAIN")]
    items += [("hc18", p) for p in hcs[half:]]
    items += [("sononet", p) for p in ordered if not p.stem.upper().startswith("BRAIN")]
    frame_no = 0
    prev: np.ndarray | None = None
    for kind, p in items:
        img, err = decode_image_file(p)
        if err or img is None:
            log.warning("demo: skipping %s", err)
            continue
        n = FRAMES_PER_SCREEN if kind == "sononet" else FRAMES_PER_HEAD
        label = f"sononet:{p.stem.upper()}" if kind == "sononet" else f"hc18:{p.name}"
        for k in range(n):
            mm = None
            if kind == "sononet":
                fr = _screen_for_sononet(img, p.stem.upper(), k, rng, frame_no)
            else:
                fr, mm = _screen_for_head(img, p.name, px.get(p.name), k, rng, frame_no)
            if k == 0 and prev is not None:
                yield "transition", _blend(prev, fr), None
                frame_no += 1
            yield label, fr, mm
            frame_no += 1
            prev = fr


def _phantom_frames(n: int = 120) -> Iterator[tuple[str, np.ndarray, None]]:
    """A speckled head in a fan sector; not anatomy, just enough to exercise the loop."""
    rng = np.random.default_rng(SEED)
    h, w = SCREEN_H, SCREEN_W
    apex = (w // 2, 90)
    radius, half_angle = 640, 35
    sector = np.zeros((h, w), np.uint8)
    cv2.ellipse(sector, apex, (radius, radius), 90, -half_angle, half_angle, 255, -1)
    cv2.circle(sector, apex, 40, 0, -1)
    yy = np.arange(h, dtype=np.float32)[:, None]
    atten = np.clip(1.15 - (yy - apex[1]) / (radius * 1.6), 0.35, 1.0)

    def speckle() -> np.ndarray:
        s = rng.rayleigh(1.0, size=(h, w)).astype(np.float32)
        return cv2.GaussianBlur(s, (0, 0), 1.3) / 1.25

    sp_a, sp_b = speckle(), speckle()
    for i in range(n):
        t = i / n
        echo = np.full((h, w), 0.28, np.float32)  # soft tissue
        has_head = 0.15 <= t < 0.85
        cx = int(w / 2 + 40 * math.sin(2 * math.pi * t))
        cy = int(430 + 15 * math.cos(2 * math.pi * t * 1.5))
        ang = 10 * math.sin(2 * math.pi * t * 0.7)
        if has_head:
            cv2.ellipse(echo, (cx, cy), (250, 190), ang, 0, 360, 0.04, -1)  # fluid
            cv2.ellipse(echo, (cx, cy), (170, 130), ang, 0, 360, 0.22, -1)  # brain
            cv2.ellipse(echo, (cx, cy), (170, 130), ang, 0, 360, 0.95, 9)  # skull
            dx, dy = 150 * math.cos(math.radians(ang)), 150 * math.sin(math.radians(ang))
            cv2.line(echo, (int(cx - dx * 0.8), int(cy - dy * 0.8)),
                     (int(cx + dx * 0.8), int(cy + dy * 0.8)), 0.6, 2)  # midline
        else:
            cv2.ellipse(echo, (cx, cy + 60), (300, 120), ang, 0, 360, 0.08, -1)
        echo = cv2.GaussianBlur(echo, (0, 0), 2.5)
        wgt = 0.5 + 0.5 * math.sin(i * 0.3)  # partial speckle decorrelation between frames
        sp = sp_a * wgt + sp_b * (1 - wgt)
        img = np.clip(echo * sp * atten * 255.0, 0, 255).astype(np.uint8)
        img[sector == 0] = 0
        fr = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        _text(fr, "SONOEDGE DEMO - GENERATED PHANTOM (not real ultrasound)", 12, 26, 0.6,
              (255, 255, 255))
        _text(fr, "C1-5  OB  MI 0.9  TIs 0.2", 12, 50)
        _text(fr, f"FR {i:04d}   {FPS:.0f} Hz", w - 200, 26)
        _grey_bar(fr, 40, 300)
        _depth_scale(fr, apex[0] + int(radius * math.sin(math.radians(half_angle))) + 20,
                     apex[1], apex[1] + radius - 40, 40.0)
        yield ("phantom:head" if has_head else "phantom:background"), fr, None


# --------------------------------------------------------------------------- writing


def mjpg_writable(tmp_dir: Path) -> bool:
    """Whether this cv2 can write MJPG .avi (headless wheels can; some builds cannot)."""
    p = tmp_dir / f".probe-{os.getpid()}.avi"
    try:
        wr = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (64, 48))
        ok = wr.isOpened()
        if ok:
            wr.write(np.zeros((48, 64, 3), np.uint8))
        wr.release()
        return ok and p.exists() and p.stat().st_size > 0
    finally:
        p.unlink(missing_ok=True)


def _write(frames: Iterator[tuple[str, np.ndarray, float | None]], tmp: Path, fmt: str
           ) -> tuple[list[str], list[float | None]]:
    """The frames written; each one's label and mm per pixel (None where not known)."""
    labels: list[str] = []
    sizes: list[float | None] = []
    if fmt == "avi":
        wr = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), FPS,
                             (SCREEN_W, SCREEN_H))
        if not wr.isOpened():
            raise OSError(f"cannot write MJPG video {tmp}")
        try:
            for label, fr, mm in frames:
                wr.write(fr)
                labels.append(label)
                sizes.append(mm)
        finally:
            wr.release()
    else:
        tmp.mkdir(parents=True)
        for label, fr, mm in frames:
            ok = cv2.imwrite(str(tmp / f"frame_{len(labels):04d}.jpg"), fr,
                             [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                raise OSError(f"cannot write JPEG frames into {tmp}")
            labels.append(label)
            sizes.append(mm)
    return labels, [None if mm is None else round(mm, 6) for mm in sizes]


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def build_demo_clip(dest_dir: Path, data_dir: Path | None = None, *,
                    fmt: str | None = None) -> DemoClip:
    """Build (or reuse) the demo clip in dest_dir. fmt: "avi", "folder" or None = best.

    Real when data_dir (default ../shared/data or $SONOEDGE_DATA) has the SonoNet example
    TIFFs or HC18 images; otherwise a generated phantom. Deterministic for the same inputs.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    if fmt is None:
        fmt = "avi" if mjpg_writable(dest_dir) else "folder"
    if fmt not in ("avi", "folder"):
        raise ValueError(f"fmt must be 'avi' or 'folder', not {fmt!r}")
    tiffs, hcs = _real_inputs(data_dir)
    kind = "real" if (tiffs or hcs) else "phantom"
    sizes_csv = data_dir / "hc18" / PIXEL_SIZES_CSV
    digest = _content_hash(kind, tiffs + hcs + ([sizes_csv] if hcs and sizes_csv.is_file()
                                                 else []), fmt)
    stem = f"demo-{kind}-{digest}"
    final = dest_dir / (stem + (".avi" if fmt == "avi" else ""))
    meta_p = dest_dir / f"{stem}.json"
    if final.exists() and meta_p.exists():
        try:
            meta = json.loads(meta_p.read_text())
            if meta.get("content_hash") == digest:
                return DemoClip(final, kind, meta["description"], int(meta["frames"]),
                                float(meta["fps"]), digest, tuple(meta["frame_sources"]),
                                reused=True, pixel_sizes=_pixel_sizes_of(meta))
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("demo: rebuilding, cache metadata unreadable (%s)", e)

    if kind == "real":
        frames = _real_frames(tiffs, hcs, data_dir)
    else:
        frames = _phantom_frames()
    tmp = dest_dir / f".tmp-{stem}-{os.getpid()}{'.avi' if fmt == 'avi' else ''}"
    _remove(tmp)
    try:
        labels, sizes = _write(frames, tmp, fmt)
        if not labels:
            raise OSError("no demo frames rendered")
        _remove(final)
        os.replace(tmp, final)
    finally:
        _remove(tmp)
    if kind == "real":
        what = []
        n_sono = len({s for s in labels if s.startswith("sononet:")})
        n_hc = len({s for s in labels if s.startswith("hc18:")})
        if n_sono:
            what.append(f"{n_sono} SonoNet example screens")
        if n_hc:
            what.append(f"{n_hc} HC18 head frames")
        desc = (f"real demo clip: {' + '.join(what)} from {data_dir} "
                f"({len(labels)} frames, {FPS:.0f} fps)")
    else:
        desc = (f"generated phantom, not real ultrasound (no SonoNet/HC18 images under "
                f"{data_dir}; {len(labels)} frames, {FPS:.0f} fps)")
    meta = {"version": DEMO_VERSION, "kind": kind, "description": desc,
            "frames": len(labels), "fps": FPS, "content_hash": digest,
            "frame_sources": labels, "pixel_sizes": sizes, "format": fmt}
    tmp_meta = meta_p.with_name(f".tmp-{meta_p.name}-{os.getpid()}")
    tmp_meta.write_text(json.dumps(meta, indent=1))
    os.replace(tmp_meta, meta_p)
    for old in dest_dir.glob("demo-*"):  # keep the cache to one clip
        if old.name not in (final.name, meta_p.name):
            _remove(old)
    log.info("demo: built %s", final)
    return DemoClip(final, kind, desc, len(labels), FPS, digest, tuple(labels),
                    pixel_sizes=tuple(sizes))


def _pixel_sizes_of(meta: dict) -> tuple[float | None, ...]:
    """The cached clip's per-frame mm per pixel, each a positive number or None (the cache
    is a file on the box: read as any input is; the scorer checks each is plausible)."""
    sizes = meta.get("pixel_sizes")
    if not isinstance(sizes, list) or len(sizes) != int(meta["frames"]):
        raise ValueError("pixel_sizes missing or not one per frame")
    return tuple(float(v) if finite_number(v) and v > 0 else None for v in sizes)
