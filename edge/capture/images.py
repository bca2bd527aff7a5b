"""Image files as frames: which extensions count, and a decoder that always says why.

Shared by the file sources and the demo clip builder.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
MAX_IMAGE_BYTES = 256 * 1024 * 1024  # a screen grab is a few MB; refuse to slurp a disk image


def decode_image_file(path: Path) -> tuple[np.ndarray | None, str | None]:
    """Decode from bytes so a truncated/corrupt file gives a reason, never None or a raise."""
    name = path.name
    try:
        size = path.stat().st_size
        if size == 0:
            return None, f"{name}: empty file (0 bytes)"
        if size > MAX_IMAGE_BYTES:
            return None, f"{name}: file too large for an image ({size} bytes)"
        data = path.read_bytes()
    except OSError as e:
        return None, f"{name}: cannot read ({e.strerror or e})"
    ext = path.suffix.lower()
    if ext in (".jpg", ".jpeg") and data.rfind(b"\xff\xd9") < 0:
        # Some decoders return a half-grey picture for a cut JPEG; the end marker is proof.
        return None, f"{name}: truncated JPEG (no end-of-image marker)"
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYCOLOR)
    except cv2.error as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "decoder error"
        return None, f"{name}: cannot decode image ({first})"
    if img is None or img.size == 0:
        return None, f"{name}: cannot decode image (corrupt or truncated {ext or 'file'})"
    if img.dtype != np.uint8:
        img = cv2.convertScaleAbs(img)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return img, None
