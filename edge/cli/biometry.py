"""`sonoedge biometry IMAGES_DIR --pixel-sizes CSV --out OUT.csv`: batch head biometry.

Every png/jpg in the folder, in file-name order, gets one row in OUT.csv:
`filename,hc_mm,bpd_mm,ofd_mm,ga_weeks,status`. The status is `ok` or the reason there is
no number (see edge/biometry.py), plus `unreadable_image` for a file that does not decode;
`ga_out_of_range` rows carry HC, BPD and OFD without an age. Each row is flushed as soon as
it is measured, so a later failure never loses the rows before it.

The pixel sizes come from a CSV in HC18's format (`filename,pixel size(mm)`, extra columns
ignored). A file without a row is `pixel_size_missing`. A malformed CSV or a missing model
is one line naming the file (and line), exit 2.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path

from edge.models.biometry import PIXEL_SIZE_MISSING, Biometry, measure_frame, pixel_size_status
from edge.models.roi import find_roi

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
UNREADABLE = "unreadable_image"
COLUMNS = ("filename", "hc_mm", "bpd_mm", "ofd_mm", "ga_weeks", "status")
FILENAME_COLUMN = "filename"
PIXEL_COLUMN = "pixel size(mm)"


class InputError(ValueError):
    """A one-line message naming the file (and line) that is wrong."""


def read_pixel_sizes(path: Path) -> dict[str, float]:
    """filename -> mm per pixel from an HC18-format CSV; any malformed line is an error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{path}: pixel-size CSV not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the pixel-size CSV ({exc})") from None
    try:
        rows = list(csv.reader(text.splitlines()))
    except csv.Error as exc:
        raise InputError(f"{path}: not a CSV ({exc})") from None
    if not rows:
        raise InputError(f"{path}: empty; expected the header "
                         f"'{FILENAME_COLUMN},{PIXEL_COLUMN}'")
    header = [name.strip().lower() for name in rows[0]]
    if FILENAME_COLUMN not in header or PIXEL_COLUMN not in header:
        raise InputError(f"{path}:1: header must have '{FILENAME_COLUMN}' and "
                         f"'{PIXEL_COLUMN}' columns, got {','.join(rows[0])!r}")
    name_at, pixel_at = header.index(FILENAME_COLUMN), header.index(PIXEL_COLUMN)
    sizes: dict[str, float] = {}
    for number, row in enumerate(rows[1:], start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) <= max(name_at, pixel_at):
            raise InputError(f"{path}:{number}: expected at least {max(name_at, pixel_at) + 1} "
                             f"columns, got {len(row)}")
        name, raw = row[name_at].strip(), row[pixel_at].strip()
        if not name:
            raise InputError(f"{path}:{number}: empty filename")
        try:
            value = float(raw)
        except ValueError:
            raise InputError(f"{path}:{number}: pixel size {raw!r} is not a number") from None
        if not math.isfinite(value):
            raise InputError(f"{path}:{number}: pixel size {raw!r} is not a number")
        if name in sizes and sizes[name] != value:
            raise InputError(f"{path}:{number}: {name} has a second, different pixel size")
        sizes[name] = value
    return sizes


def list_images(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder of images")
    images = sorted((p for p in folder.iterdir()
                     if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                    key=lambda p: p.name)
    if not images:
        raise InputError(f"{folder}: no .png or .jpg images")
    return images


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def row_of(name: str, result: Biometry | None, status: str | None = None) -> list[str]:
    if result is None:
        return [name, "", "", "", "", status or ""]
    return [name, _cell(result.hc_mm), _cell(result.bpd_mm), _cell(result.ofd_mm),
            _cell(result.ga_weeks), result.status]


def summary_line(counts: Counter, total: int) -> str:
    parts = [f"{counts.get('ok', 0)} ok"]
    parts += [f"{n} {status}" for status, n in sorted(counts.items()) if status != "ok"]
    return f"biometry: {total} images: " + ", ".join(parts)


def main(args) -> int:
    """Run from `edge.cli.main` with parsed arguments (images, pixel_sizes, out, models_dir...)."""
    import cv2

    from edge.config import load_settings
    from edge.scorer import load_segmenter

    overrides = {"models": {"dir": args.models_dir, "backend": args.backend,
                            "num_threads": args.threads}}
    settings = load_settings(args.config, overrides)
    images = list_images(Path(args.images))
    sizes = read_pixel_sizes(Path(args.pixel_sizes))
    out = Path(args.out)
    if not out.parent.is_dir():
        raise InputError(f"{out}: its folder does not exist")
    model, measurement = load_segmenter(settings)
    counts: Counter = Counter()
    try:
        handle = open(out, "w", newline="", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{out}: cannot write ({exc.strerror or exc})") from None
    with handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        handle.flush()
        for path in images:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            pixel = sizes.get(path.name)
            scale_problem = PIXEL_SIZE_MISSING if pixel is None else pixel_size_status(
                pixel, measurement)
            if image is None:
                row = row_of(path.name, None, UNREADABLE)
            elif scale_problem is not None:  # no scale, no measurement: skip the model
                row = row_of(path.name, None, scale_problem)
            else:
                # The segmenter's manifest says how to frame the image; the region found on
                # it gives the image's outline, so a head past the fan's side is cut off here
                # as it is live (edge.scorer).
                row = row_of(path.name, measure_frame(model, image, find_roi(image), pixel,
                                                      measurement))
            counts[row[-1]] += 1
            writer.writerow(row)
            handle.flush()
    print(summary_line(counts, len(images)), flush=True)
    return 1 if counts.get(UNREADABLE) else 0


def add_parser(verbs) -> None:
    parser = verbs.add_parser(
        "biometry", help="head circumference, BPD, OFD and GA for a folder of head images",
        description=__doc__.split("\n\n")[0])
    parser.add_argument("images", help="folder of .png/.jpg head images")
    parser.add_argument("--pixel-sizes", required=True,
                        help="CSV with 'filename,pixel size(mm)' (HC18's format)")
    parser.add_argument("--out", required=True, help="the CSV to write")
    parser.add_argument("--models", "--models-dir", dest="models_dir")
    parser.add_argument("--config", type=Path)
    parser.add_argument("--backend", choices=["litert", "edgetpu", "tflite-runtime"])
    parser.add_argument("--threads", type=int)
    parser.set_defaults(func=main)

