"""The best frame of each plane, kept as a small local JPEG, within a disk quota.

Thumbnails show the midwife what was captured; they never leave the box. Layout:
`<state_dir>/thumbs/<exam_id>/<plane>.jpg`, each written whole or not at all (a temporary
file, then a rename). Before a write the folder is brought under its quota by removing the
oldest other exams' folders. A full disk, a read-only or unwritable folder, or a quota too
small for one thumbnail costs the thumbnail, never the exam: one log line says why, once
per exam and cause.

One more picture per exam, where its head was measured (`measured_head_thumbnail`): the
frame whose HC is the exam's, with the fitted ellipse and its two calipers drawn on it,
written as `<exam_id>/head-measured.jpg` by the same `save`, within the same quota (about
the size of a plane's).
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge.models.roi import Roi

log = logging.getLogger(__name__)

THUMBS_DIR = "thumbs"
# Where an exam's head was measured: its entry among the journal's best frames (no plane's
# name) and its thumbnail's, head-measured.jpg (`plane_slug`)
HEAD_MEASURED = "head_measured"
# What the checklist advised on each slot found but never good enough, by slot: its entry
# among the journal's best frames (no plane's name, no thumbnail), for the exam's report
MISSED_ADVICE = "missed_advice"
# What the box's set-up needs to measure heads it refused, as the scorer named it: its entry
# among the journal's best frames (no plane's name, no thumbnail), {"stretch_setting": the
# `[source] stretch` that undoes a stretched picture, "stretch_frame": the grabber's frame
# size it is for, "720x576", where known}, for the exam's report. The box's
# own: the exam's summary, to the district, is checked against a schema without it.
SET_UP = "set_up"
# Drawn on the measured head, in BGR: the ellipse yellow on a black rim, so it shows on the
# white skull, on the dark brain and on a black-and-white printout; the calipers cyan.
ELLIPSE_RIM, ELLIPSE_INK, CALIPER_INK = (0, 0, 0), (0, 255, 255), (255, 255, 0)
_SHIFT = 4  # cv2's fixed point: the drawing keeps a sixteenth of a pixel
_SAFE = re.compile(r"[^A-Za-z0-9]+")
MAX_EXAM_FOLDERS = 100_000  # bounds the quota scan on a box that was never cleaned


def is_exam_folder(name: str) -> bool:
    """An exam's own folder is named by its exam id, a UUID. Anything else under the root
    (a user's `sonoedge exam --thumbs ~/Desktop`) is never counted, nor removed."""
    try:
        return str(uuid.UUID(name)) == name.lower()
    except ValueError:
        return False


def plane_slug(plane: str) -> str:
    """'Brain (Tv.)' -> 'brain-tv': a file name without spaces or brackets."""
    return _SAFE.sub("-", plane.lower()).strip("-") or "plane"


def thumbnails_on_disk(best: dict[str, dict], root: Path, exam_id: str,
                       shown_as: str = THUMBS_DIR) -> dict[str, dict]:
    """The best frames of an exam rebuilt from the journal after a kill (the replay keeps
    no thumbnails), each given the thumbnail its live run wrote for that plane where one is
    on disk: the rebuilt exam's report said "No image" beside the picture the card had
    shown (a midwife's walk). The live run's best frame of a plane is the replay's, the
    same journaled frames in the same order, but for its last half second at most. Not
    where the head was measured: the live run drew it on the heads its segmenter's own
    passes measured again, which a replay does not, so its frame may be another."""
    if not is_exam_folder(exam_id):
        return best
    for plane, entry in best.items():
        if plane in (HEAD_MEASURED, MISSED_ADVICE, SET_UP):
            continue
        name = f"{plane_slug(plane)}.jpg"
        if "thumbnail" not in entry and (root / exam_id / name).is_file():
            entry["thumbnail"] = f"{shown_as}/{exam_id}/{name}"
    return best


def make_thumbnail(image: np.ndarray, roi: Roi | None, width: int) -> np.ndarray:
    """The ultrasound region (not the scanner's text), at most `width` pixels wide."""
    region = roi.crop(image) if roi is not None else image
    h, w = region.shape[:2]
    if w > width:
        region = cv2.resize(region, (width, max(1, round(h * width / w))),
                            interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(region)


def _ellipse(value: object) -> tuple[float, float, float, float, float] | None:
    """(cx, cy, semi-major, semi-minor, angle) as `Biometry.ellipse` gives it, or None for
    anything else (missing, not five finite numbers, no area)."""
    if not isinstance(value, list | tuple) or len(value) != 5:
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
               for v in value):
        return None
    cx, cy, a, b, angle = (float(v) for v in value)
    return (cx, cy, a, b, angle) if a > 0 and b > 0 else None


def measured_head_thumbnail(image: np.ndarray, roi: Roi | None, width: int,
                            ellipse: object) -> tuple[np.ndarray, list[float]] | None:
    """The frame's thumbnail (`make_thumbnail`) with the head's fitted ellipse drawn on
    it, and its calipers: OFD along the major axis, BPD along the minor (both outer to
    outer, as measured); and that ellipse in the thumbnail's pixels. `ellipse` is in the
    frame's pixels (`Biometry.ellipse`, pixel centres at integers). None where there is
    nothing to show: no ellipse, a damaged one, or one whose centre is off the region or
    that is larger than the frame many times over (a picture that shows no ellipse where
    the report says the head was measured would mislead)."""
    found = _ellipse(ellipse)
    if found is None or not isinstance(image, np.ndarray) or image.dtype != np.uint8 \
            or image.ndim not in (2, 3) or image.size == 0:
        return None
    region = roi.crop(image) if roi is not None else image
    h0, w0 = region.shape[:2]
    if not h0 or not w0:
        return None
    thumb = make_thumbnail(image, roi, width)
    if thumb.ndim == 2 or thumb.shape[2] == 1:
        thumb = cv2.cvtColor(thumb, cv2.COLOR_GRAY2BGR)
    elif thumb.shape[2] == 4:
        thumb = cv2.cvtColor(thumb, cv2.COLOR_BGRA2BGR)
    elif thumb.shape[2] != 3:
        return None
    thumb = np.ascontiguousarray(thumb)
    h1, w1 = thumb.shape[:2]
    sx, sy = w1 / w0, h1 / h0
    ox, oy = (roi.x, roi.y) if roi is not None else (0, 0)
    cx, cy, a, b, angle = found
    # pixel centres at integers on both sides: the region's pixel edges scale, not its centres
    cx, cy = (cx - ox + 0.5) * sx - 0.5, (cy - oy + 0.5) * sy - 0.5
    a, b = a * (sx + sy) / 2, b * (sx + sy) / 2
    if not (0 <= cx < w1 and 0 <= cy < h1) or max(a, b) > 4 * max(w1, h1) or min(a, b) < 0.5:
        return None
    k = 1 << _SHIFT
    centre, axes = (round(cx * k), round(cy * k)), (round(a * k), round(b * k))
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    # OFD along the major axis, BPD along the minor, each from one side of the ellipse to
    # the other
    for dx, dy in ((a * cos, a * sin), (-b * sin, b * cos)):
        cv2.line(thumb, (round((cx - dx) * k), round((cy - dy) * k)),
                 (round((cx + dx) * k), round((cy + dy) * k)), CALIPER_INK, 1, cv2.LINE_AA,
                 _SHIFT)
    cv2.ellipse(thumb, centre, axes, angle % 360.0, 0, 360, ELLIPSE_RIM, 3, cv2.LINE_AA, _SHIFT)
    cv2.ellipse(thumb, centre, axes, angle % 360.0, 0, 360, ELLIPSE_INK, 1, cv2.LINE_AA, _SHIFT)
    return thumb, [round(v, 2) for v in (cx, cy, a, b, angle % 180.0)]


@dataclass
class ThumbStore:
    root: Path
    quota_bytes: int
    jpeg_quality: int = 80
    shown_as: str = THUMBS_DIR  # the folder as `save` names it: the state dir's, or as given
    _told: set = field(default_factory=set)
    _total: int | None = None  # bytes under root, scanned once, then kept up to date

    def _tell(self, exam_id: str, cause: str, text: str) -> None:
        if (exam_id, cause) not in self._told:
            self._told.add((exam_id, cause))
            log.warning("thumbnails: %s", text)

    def _usage(self) -> list[tuple[float, int, Path]]:
        """(mtime, bytes, folder) of every exam folder, oldest first."""
        out = []
        try:
            folders = sorted(os.scandir(self.root), key=lambda e: e.name)[:MAX_EXAM_FOLDERS]
        except OSError:
            return out
        for entry in folders:
            if not entry.is_dir(follow_symlinks=False) or not is_exam_folder(entry.name):
                continue
            size, newest = 0, 0.0
            try:
                for item in os.scandir(entry.path):
                    st = item.stat(follow_symlinks=False)
                    size += st.st_size
                    newest = max(newest, st.st_mtime)
            except OSError:
                continue
            out.append((newest, size, Path(entry.path)))
        out.sort()
        return out

    def _make_room(self, exam_id: str, need: int) -> bool:
        """Room for `need` more bytes: the folder is scanned only when it may be over."""
        if self._total is not None and self._total + need <= self.quota_bytes:
            return True
        usage = self._usage()
        total = sum(size for _, size, _ in usage)
        for _, size, folder in usage:
            if total + need <= self.quota_bytes:
                break
            if folder.name == exam_id:
                continue
            shutil.rmtree(folder, ignore_errors=True)
            total -= size
            log.info("thumbnails: removed %s (%d bytes) to stay within the %d-byte quota",
                     folder.name, size, self.quota_bytes)
        self._total = total
        return total + need <= self.quota_bytes

    def save(self, exam_id: str, plane: str, thumb: np.ndarray) -> str | None:
        """Write one thumbnail; returns its path (relative to the state dir unless `shown_as`
        names the folder otherwise), or None."""
        ok, data = cv2.imencode(".jpg", thumb, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            self._tell(exam_id, "encode", f"cannot encode the {plane} thumbnail")
            return None
        blob = data.tobytes()
        folder = self.root / exam_id
        path = folder / f"{plane_slug(plane)}.jpg"
        try:
            old = path.stat().st_size if path.exists() else 0
            if not self._make_room(exam_id, len(blob) - old):
                self._tell(exam_id, "quota", f"quota of {self.quota_bytes} bytes is full even "
                                             f"after removing older exams; {plane} not kept")
                return None
            folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as handle:
                handle.write(blob)
            os.replace(tmp, path)
            self._total = (self._total or 0) + len(blob) - old
        except OSError as exc:
            reason = exc.strerror or str(exc)
            self._tell(exam_id, reason, f"cannot write {path} ({reason}); the exam goes on "
                                        "without thumbnails")
            try:
                (path.with_suffix(".tmp")).unlink(missing_ok=True)
            except OSError:
                pass
            return None
        return f"{self.shown_as}/{exam_id}/{path.name}"
