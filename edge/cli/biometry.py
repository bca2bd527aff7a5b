"""`sonoedge biometry IMAGES_DIR --pixel-sizes CSV --out OUT.csv`: batch head biometry.

Every png/jpg in the folder, in file-name order, gets one row in OUT.csv:
`filename,hc_mm,bpd_mm,ofd_mm,ga_weeks,status,plane`. The status is `ok` or the reason there
is no number (see edge/biometry.py), plus `unreadable_image` for a file that does not decode;
`ga_out_of_range` rows carry HC, BPD and OFD without an age. Each row is flushed as soon as
it is measured, so a later failure never loses the rows before it.

The segmenter outlines anything oval, an abdomen or a cord as well as a skull, and this
command measures what it is given. So each row also names the plane the plane model sees
(`uncertain` where it abstains), and the summary counts the images it names another plane
than a head plane: those are worth a look before their HC is trusted.

The pixel sizes come from a CSV in HC18's format (`filename,pixel size(mm)`, extra columns
ignored). A file without a row is `pixel_size_missing`. A malformed CSV or a missing model
is one line naming the file (and line), exit 2: so is a CSV over 4 MiB or not a regular
file, not UTF-8, with no rows, with a column named twice, a row longer than the header or a
file name with a folder in it (it could never match). `--out` may not be an input, and a
write that fails (a full disk) is one line; the rows flushed before it stay. Images are
decoded as `score` decodes them, within `[source]`'s pixel budget.
"""

from __future__ import annotations

import csv
import math
import os
import sys
from collections import Counter
from pathlib import Path

from edge.capture.images import display_name
from edge.cli import BACKEND_HELP, CONFIG_HELP, MODELS_DIR_HELP, THREADS_HELP
from edge.models.biometry import PIXEL_SIZE_MISSING, Biometry, measure_frame, pixel_size_status
from edge.models.roi import find_roi
from wire.schema import UNCERTAIN, PayloadError, read_regular_file
from wire.shown import shown

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
UNREADABLE = "unreadable_image"
COLUMNS = ("filename", "hc_mm", "bpd_mm", "ofd_mm", "ga_weeks", "status", "plane")
STATUS = COLUMNS.index("status")
FILENAME_COLUMN = "filename"
PIXEL_COLUMN = "pixel size(mm)"


class InputError(ValueError):
    """A one-line message naming the file (and line) that is wrong."""


# HC18's whole training CSV is 30 kB for 999 frames; 4 MiB is over 100,000 rows. Read no
# more than that: a 50 MB CSV took 1 GB of memory, and /dev/zero or a FIFO never ended.
MAX_CSV_BYTES = 4 * 1024 * 1024


def _read_csv_text(path: Path) -> str:
    """The CSV's text, from a regular file of at most MAX_CSV_BYTES, as UTF-8 (BOM or not)."""
    try:
        data, _ = read_regular_file(path, MAX_CSV_BYTES)
    except FileNotFoundError:
        raise InputError(f"{path}: pixel-size CSV not found") from None
    except PayloadError as exc:  # a folder, a FIFO, over MAX_CSV_BYTES
        raise InputError(f"{path}: the pixel-size CSV is {exc}") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the pixel-size CSV ({exc.strerror or exc})"
                         ) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not UTF-8 text (byte {exc.start}); save the CSV "
                         "as UTF-8") from None


def _bare_name(name: str) -> bool:
    """A file name as the images folder lists it: no folder, no NUL, never `.` or `..`."""
    return name not in (".", "..") and not any(c in name for c in "/\\\0")


def read_pixel_sizes(path: Path) -> dict[str, float]:
    """filename -> mm per pixel from an HC18-format CSV; any malformed line is an error."""
    path = Path(path)
    reader = csv.reader(_read_csv_text(path).splitlines())
    try:
        header = next(reader, None)
        if header is None:
            raise InputError(f"{path}: empty; expected the header "
                             f"'{FILENAME_COLUMN},{PIXEL_COLUMN}'")
        names = [name.strip().lower() for name in header]
        if FILENAME_COLUMN not in names or PIXEL_COLUMN not in names:
            raise InputError(f"{path}:1: header must have '{FILENAME_COLUMN}' and "
                             f"'{PIXEL_COLUMN}' columns, got {shown(','.join(header))}")
        for column in (FILENAME_COLUMN, PIXEL_COLUMN):
            if names.count(column) > 1:  # which one holds the value? Never guess.
                raise InputError(f"{path}:1: the header has '{column}' twice")
        name_at, pixel_at = names.index(FILENAME_COLUMN), names.index(PIXEL_COLUMN)
        sizes: dict[str, float] = {}
        for row in reader:
            number = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) <= max(name_at, pixel_at):
                raise InputError(f"{path}:{number}: expected at least "
                                 f"{max(name_at, pixel_at) + 1} columns, got {len(row)}")
            if len(row) > len(header):  # `0,12` for 0.12, or a stray comma: never a guess
                raise InputError(f"{path}:{number}: {len(row)} fields, but the header has "
                                 f"{len(header)}")
            name, raw = row[name_at].strip(), row[pixel_at].strip()
            if not name:
                raise InputError(f"{path}:{number}: empty filename")
            if not _bare_name(name):
                raise InputError(f"{path}:{number}: filename {shown(name)} is not a file "
                                 "name in the images folder")
            try:
                value = float(raw)
            except ValueError:
                raise InputError(f"{path}:{number}: pixel size {shown(raw)} is not a number"
                                 ) from None
            if not math.isfinite(value):
                raise InputError(f"{path}:{number}: pixel size {shown(raw)} is not a number")
            if name in sizes and sizes[name] != value:
                raise InputError(f"{path}:{number}: {shown(name)} has a second, different "
                                 "pixel size")
            sizes[name] = value
    except csv.Error as exc:
        raise InputError(f"{path}:{reader.line_num}: not a CSV ({exc})") from None
    if not sizes:
        raise InputError(f"{path}: no rows after the header; no frame has a pixel size")
    return sizes


def list_images(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder of images")
    # Every entry named like an image but a folder, as `score` lists a folder: a pipe, a
    # broken link or a device gets its row, `unreadable_image` and its reason (it was left
    # out without a word, the count one short)
    images = sorted((p for p in folder.iterdir()
                     if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir()),
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


def summary_line(counts: Counter, total: int, other_planes: int = 0) -> str:
    parts = [f"{counts.get('ok', 0)} ok"]
    parts += [f"{n} {status}" for status, n in sorted(counts.items()) if status != "ok"]
    line = f"biometry: {total} images: " + ", ".join(parts)
    if other_planes:
        line += (f"; the plane model names {other_planes} of them another plane than a head "
                 "plane (the plane column): check they are heads")
    return line


def check_out(out: Path, inputs: list[Path]) -> None:
    """`--out` may not be a folder, nor one of the files it is made from: opening it for
    writing would empty the pixel-size CSV, or an image before it is measured."""
    if not out.parent.is_dir():
        raise InputError(f"{out}: its folder does not exist")
    if out.is_dir():
        raise InputError(f"{out}: is a folder; --out names the CSV to write")
    if out.exists():
        for path in inputs:
            if path.exists() and os.path.samefile(out, path):
                raise InputError(f"{out}: is an input ({path.name}); write the results to "
                                 "another file")


def main(args) -> int:
    """Run from `edge.cli.main` with parsed arguments (images, pixel_sizes, out, models_dir...)."""
    from edge.capture.images import decode_image_file
    from edge.config import frame_limits, load_settings
    from edge.models.manifest import find_manifest
    from edge.models.planes import check_plane_model, classify_plane, settle_within_group
    from edge.models.runtime import load_model
    from edge.scorer import load_segmenter

    overrides = {"models": {"dir": args.models_dir, "backend": args.backend,
                            "num_threads": args.threads}}
    settings = load_settings(args.config, overrides)
    images = list_images(Path(args.images))
    sizes = read_pixel_sizes(Path(args.pixel_sizes))
    out = Path(args.out)
    check_out(out, [Path(args.pixel_sizes), *images])
    limits = frame_limits(settings)
    model, measurement = load_segmenter(settings)
    plane_manifest = find_manifest(Path(settings.models.dir), settings.models.plane)
    check_plane_model(plane_manifest)
    planes = load_model(plane_manifest, settings.models.backend, settings.models.num_threads)
    head_planes = frozenset(settings.biometry.head_planes)

    def plane_of(image, roi) -> str:
        """As the live path names it: a split between the head planes is a head plane."""
        named = settle_within_group(classify_plane(planes, image, roi), planes.manifest.labels,
                                    head_planes, planes.manifest.setting("abstain_below", 0.0))
        return named.plane

    counts: Counter = Counter()
    other_planes = 0
    try:
        handle = open(out, "w", newline="", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{out}: cannot write ({exc.strerror or exc})") from None
    try:
        with handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(COLUMNS)
            handle.flush()
            for path in images:
                # Decoded as `score` decodes: a 424 kB PNG of 20000x20000 is refused from its
                # header (cv2.imread took 2.4 GB for it).
                image, unreadable = decode_image_file(path, limits)
                if unreadable:  # its reason, as `score` says it (the row says only its status)
                    print(f"sonoedge: {unreadable}", file=sys.stderr, flush=True)
                pixel = sizes.get(path.name)
                scale_problem = PIXEL_SIZE_MISSING if pixel is None else pixel_size_status(
                    pixel, measurement)
                name = display_name(path.name)
                roi = None if image is None else find_roi(image)
                plane = "" if image is None else plane_of(image, roi)
                if image is None:
                    row = row_of(name, None, UNREADABLE)
                elif scale_problem is not None:  # no scale, no measurement: skip the model
                    row = row_of(name, None, scale_problem)
                else:
                    # The segmenter's manifest says how to frame the image; the region found
                    # on it gives the image's outline, so a head past the fan's side is cut
                    # off here as it is live (edge.scorer).
                    row = row_of(name, measure_frame(model, image, roi, pixel, measurement))
                writer.writerow([*row, plane])
                handle.flush()
                counts[row[STATUS]] += 1
                other_planes += plane not in head_planes and plane not in ("", UNCERTAIN)
    except OSError as exc:  # a full disk, a pulled USB stick: the rows flushed so far stay
        done = sum(counts.values())
        raise InputError(f"{out}: cannot write ({exc.strerror or exc}) after "
                         f"{done} of {len(images)} rows; the rows written are kept") from None
    print(summary_line(counts, len(images), other_planes), flush=True)
    return 1 if counts.get(UNREADABLE) else 0


def add_parser(verbs) -> None:
    parser = verbs.add_parser(
        "biometry", help="head circumference, BPD, OFD and GA for a folder of head images",
        description=__doc__.split("\n\n")[0])
    parser.add_argument("images", help="folder of .png/.jpg head images")
    parser.add_argument("--pixel-sizes", required=True,
                        help="CSV with 'filename,pixel size(mm)' (HC18's format)")
    parser.add_argument("--out", required=True, help="the CSV to write")
    parser.add_argument("--models", "--models-dir", dest="models_dir", help=MODELS_DIR_HELP)
    parser.add_argument("--config", type=Path, help=CONFIG_HELP)
    parser.add_argument("--backend", choices=["litert", "edgetpu", "tflite-runtime"],
                        help=BACKEND_HELP)
    parser.add_argument("--threads", type=int, help=THREADS_HELP)
    parser.set_defaults(func=main)

