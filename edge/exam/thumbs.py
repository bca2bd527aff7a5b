"""The best frame of each plane, kept as a small local JPEG, within a disk quota.

Thumbnails show the midwife what was captured; they never leave the box. Layout:
`<state_dir>/thumbs/<exam_id>/<plane>.jpg`, each written whole or not at all (a temporary
file, then a rename). Before a write the folder is brought under its quota by removing the
oldest other exams' folders. A full disk, a read-only or unwritable folder, or a quota too
small for one thumbnail costs the thumbnail, never the exam: one log line says why, once
per exam and cause.
"""

from __future__ import annotations

import logging
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
    same journaled frames in the same order, but for its last half second at most."""
    if not is_exam_folder(exam_id):
        return best
    for plane, entry in best.items():
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
