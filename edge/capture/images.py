"""Image files as frames: which extensions count, and a decoder that always says why.

Shared by the file sources and the demo clip builder.
"""

from __future__ import annotations

import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import simplejpeg

from wire.shown import one_line, shown_path

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_IMAGE_BYTES = 256 * 1024 * 1024  # a screen grab is a few MB; refuse to slurp a disk image


@dataclass(frozen=True)
class FrameLimits:
    """What a frame may be: at most `max_pixels` (a 30000x30000 PNG is under 1 MB on disk
    and 2.7 GB decoded: it is refused from its header, before decoding) and at least
    `min_side` pixels each way (smaller holds no ultrasound worth a plane)."""

    max_pixels: int = 40_000_000  # 8K UHD is 33 MP; a scanner's screen is 1-2 MP
    min_side: int = 32

    def check(self, name: str, width: int, height: int) -> str | None:
        if width * height > self.max_pixels:
            return (f"{name}: {width}x{height} image is over the pixel budget "
                    f"({width * height / 1e6:.1f} MP > {self.max_pixels / 1e6:g} MP; "
                    f"[source] max_frame_pixels)")
        if min(width, height) < self.min_side:
            return (f"{name}: {width}x{height} image is too small to score (at least "
                    f"{self.min_side}x{self.min_side} pixels; [source] min_frame_side)")
        return None


DEFAULT_LIMITS = FrameLimits()


def display_name(name: str) -> str:
    """A file or folder name as text: bytes that are not UTF-8 are shown as \\xNN (the
    journal, the JSON output and the log can all hold that), never a surrogate, and so are
    control characters: a newline in a folder's name split the run's summary line."""
    return shown_path(name, None)


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, BMP or TIFF header without decoding the pixels;
    None when the header is not one of those or cannot be read."""
    try:
        if data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if data[:2] == b"BM" and len(data) >= 26:
            if struct.unpack("<I", data[14:18])[0] == 12:  # OS/2 1.x: 16-bit sizes
                return struct.unpack("<HH", data[18:22])
            width, height = struct.unpack("<ii", data[18:26])
            return abs(width), abs(height)
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_size(data)
    except (struct.error, IndexError, ValueError):
        return None
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # a fill byte before a marker, as the decoder skips it
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            i += 2
            continue
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        i += 2 + length
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    end = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(end + "I", data[4:8])
    (count,) = struct.unpack(end + "H", data[ifd:ifd + 2])
    found: dict[int, int] = {}
    for k in range(min(count, 512)):
        at = ifd + 2 + 12 * k
        tag, kind = struct.unpack(end + "HH", data[at:at + 4])
        if tag in (256, 257):
            found[tag] = struct.unpack(end + ("H" if kind == 3 else "I"),
                                       data[at + 8:at + (10 if kind == 3 else 12)])[0]
    return (found[256], found[257]) if len(found) == 2 else None


def png_significant_bits(data: bytes) -> int | None:
    """The bits a PNG says its samples use (its `sBIT` chunk, colour channels), or None
    where it does not say. Read from the chunks before the image data, at most 64 of them."""
    at = 8
    for _ in range(64):
        if at + 8 > len(data):
            return None
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        if kind == b"IDAT":
            return None
        if kind == b"sBIT" and 1 <= length <= 4 and at + 8 + length <= len(data):
            channels = data[at + 8:at + 8 + length]
            colour = channels[:3] if length >= 3 else channels[:1]  # alpha left out
            bits = max(colour)
            return bits if 1 <= bits <= 16 else None
        at += 12 + length
    return None


def to_8bit(img: np.ndarray, bits: int | None = None) -> np.ndarray:
    """A 16-bit image as 8 bits, scaled by the depth its values use: `bits` where the file
    says it (`png_significant_bits`), else 8, 10, 12 or 16, the smallest that holds its
    brightest pixel. Exporters store 8-bit frames and 10- or 12-bit detector data in 16-bit
    PNGs, most without saying so; read as 16 bits, an 8-bit frame was black. (A 16-bit
    frame whose every pixel is darker than 1/256 of full scale is taken as 8-bit data.)"""
    if bits is None:
        top = int(img.max()) if img.size else 0
        bits = next(b for b in (8, 10, 12, 16) if top < 1 << b)
    return cv2.convertScaleAbs(img, alpha=255.0 / ((1 << bits) - 1))  # no wide copy made


def _cut_jpeg(data: bytes, name: str) -> str | None:
    """Why a JPEG is cut or damaged, or None. libjpeg-turbo in strict mode (simplejpeg)
    turns the decoder's warnings into errors: OpenCV decodes a cut JPEG without a word, the
    lost part grey (a half file with its end marker glued back passes the marker check), and
    it was scored and measured like any frame. The check decodes to grey, the cheapest way
    through every coefficient; OpenCV then decodes the pixels, as before (its EXIF rotation
    and CMYK included). A format libjpeg-turbo does not take (12-bit samples) is left to
    OpenCV. Not seen: a flipped bit that still decodes, and a cut arithmetic-coded JPEG
    (that decoder does not warn)."""
    if data[:2] != b"\xff\xd8":
        return None
    try:
        colours = simplejpeg.decode_jpeg_header(data)[2].lower()
        target = {"gray": "GRAY", "ycbcr": "GRAY", "rgb": "BGR"}.get(colours, "CMYK")
        simplejpeg.decode_jpeg(data, colorspace=target, fastdct=True, fastupsample=True,
                               strict=True)
    except ValueError as e:
        said = one_line(e)[:120]
        if said.lower().startswith("unsupported"):
            return None
        said = said.removeprefix("Corrupt JPEG data").lstrip(": ")
        return f"{name}: cannot decode image (corrupt JPEG: {said or 'damaged data'})"
    return None


def decode_image_file(path: Path, limits: FrameLimits = DEFAULT_LIMITS
                      ) -> tuple[np.ndarray | None, str | None]:
    """Decode from bytes so a truncated/corrupt file gives a reason, never None or a raise.

    The size in the header is checked against `limits` before decoding, and the decoded
    image again (a header that lies, or a format whose header is not read here)."""
    name = display_name(path.name)
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):  # a pipe or a device would be read for ever
            return None, f"{name}: not a regular file"
        size = st.st_size
        if size == 0:
            return None, f"{name}: empty file (0 bytes)"
        if size > MAX_IMAGE_BYTES:
            return None, f"{name}: file too large for an image ({size} bytes)"
        data = path.read_bytes()
    except OSError as e:
        return None, f"{name}: cannot read ({e.strerror or e})"
    ext = path.suffix.lower()
    size = header_size(data)
    if size is None:
        # No size from the header, no decoding: the decoder would allocate whatever a
        # header it reads says (a PPM or a JPEG with fill bytes, named .png: gigabytes).
        return None, (f"{name}: cannot decode image (not a PNG, JPEG, BMP or TIFF whose "
                      "size can be read)")
    if problem := limits.check(name, *size):
        return None, problem
    if ext in (".jpg", ".jpeg") and data.rfind(b"\xff\xd9") < 0:
        # Some decoders return a half-grey picture for a cut JPEG; the end marker is proof.
        return None, f"{name}: truncated JPEG (no end-of-image marker)"
    if problem := _cut_jpeg(data, name):
        return None, problem
    # A 16-bit PNG is read at its depth and scaled by the bits it uses (`to_8bit`): read as
    # 8 bits its top byte alone is kept, and an 8-bit frame stored in 16 bits came out black.
    wide_png = data[:8] == PNG_SIGNATURE and data[24:25] == b"\x10"
    flags = cv2.IMREAD_ANYCOLOR | (cv2.IMREAD_ANYDEPTH if wide_png else 0)
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "decoder error"
        return None, f"{name}: cannot decode image ({first})"
    if img is None or img.size == 0:
        return None, f"{name}: cannot decode image (corrupt or truncated {ext or 'file'})"
    if problem := limits.check(name, img.shape[1], img.shape[0]):
        return None, problem
    if img.dtype == np.uint16:
        img = to_8bit(img, png_significant_bits(data) if wide_png else None)
    elif img.dtype != np.uint8:
        img = cv2.convertScaleAbs(img)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return img, None
