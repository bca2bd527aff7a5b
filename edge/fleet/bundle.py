"""Make a signed model bundle, and read one back without trusting a byte of it.

`make_bundle` packs a models folder (every manifest that loads, with its model file), a
few self-test frames with the outputs these models give on them (and the quality rules
version that scored them, `selftest/made_with.json`; the learned quality head's severities,
`selftest/learned.json`), and a manifest listing
every file's size and sha256, signed with the district's Ed25519 key
(`wire/fleet.py` describes the format). `read_bundle` is the only way a device looks inside:
it decompresses with a memory limit, counts every byte it reads (a hostile archive cannot
make it read or allocate more than the configured limits), checks the signature on the
first two members before it reads a third, and then checks every member against the
signed list as it streams it to disk. Anything else is one `BundleError` line.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2

from edge.models.manifest import ModelError, list_manifests, sha256_of
from edge.store.state import fsync_dir
from wire.fleet import (
    BUNDLE_FORMAT,
    BUNDLE_FORMAT_VERSION,
    LEARNED_MEMBER,
    MADE_WITH_MEMBER,
    MANIFEST_MEMBER,
    MAX_MANIFEST_BYTES,
    MAX_SELFTEST_FRAMES,
    SIGNATURE_BYTES,
    SIGNATURE_MEMBER,
    TOLERANCE_KEYS,
    BundleError,
    BundleManifest,
    check_group,
    parse_learned,
    parse_made_with,
    parse_manifest,
    parse_version,
    verify_signature,
)
from wire.schema import PayloadError, finite_number, open_regular_file
from wire.shown import shown

XZ_MEMLIMIT = 128 << 20  # an xz stream asking for a larger dictionary is refused
XZ_PRESET = 6 | lzma.PRESET_EXTREME  # 8 MiB dictionary: more than a bundle, little RAM
TAR_OVERHEAD = 64 << 10  # headers and padding allowed beyond the listed files
DEFAULT_TOLERANCE = {"plane_confidence": 0.05, "quality_score": 0.05, "hc_mm": 1.0}


class DeviceFault(BundleError):
    """The device's own trouble while reading or installing a bundle (a full disk, a failing
    card), not the bundle's: the same bundle may install once that is mended, so the fleet
    agent takes its offer up again later instead of refusing it for good."""


@dataclass(frozen=True)
class Limits:
    max_bundle_bytes: int
    max_unpacked_bytes: int


class _XzReader(io.RawIOBase):
    """Decompresses an xz file with a memory limit and stops (`BundleError`) once more than
    `limit` bytes have come out; `limit` is raised only after the signature is checked."""

    def __init__(self, raw, limit: int):
        self._raw = raw
        self._dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=XZ_MEMLIMIT)
        self._buffer = b""
        self.limit = limit
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        want = len(target)
        while not self._buffer:
            if self._dec.eof:
                return 0
            if self._dec.needs_input:
                data = self._raw.read(1 << 16)
                if not data:
                    raise BundleError("truncated archive: the xz stream ends early")
            else:
                data = b""
            self._buffer = self._dec.decompress(data, max_length=1 << 16)
        piece, self._buffer = self._buffer[:want], self._buffer[want:]
        self.count += len(piece)
        if self.count > self.limit:
            raise BundleError(f"archive unpacks to more than {self.limit} bytes")
        target[:len(piece)] = piece
        return len(piece)


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, size: int) -> bytes:
    handle = tar.extractfile(member)
    data = handle.read(size + 1) if handle is not None else b""
    if len(data) != member.size:
        raise BundleError(f"truncated archive: {member.name} is short")
    return data


def _next(tar: tarfile.TarFile) -> tarfile.TarInfo | None:
    member = tar.next()
    if member is not None and not member.isreg():
        raise BundleError(f"archive member {member.name[:80]!r} is not a regular file "
                          "(links, folders and devices are refused)")
    return member


def read_bundle(path: Path, keys: list, limits: Limits, dest: Path | None = None,
                on_file=None, check=None) -> tuple[BundleManifest, str]:
    """Verify a bundle and, with `dest`, write its files under `dest/models` and
    `dest/selftest` (fsynced), plus the signed `bundle.json` and `bundle.sig`.

    `check(manifest)` runs once the signature and the manifest are verified and before any
    file is written (the device's group, app version and downgrade rules). Returns
    (manifest, name of the key that signed it). `BundleError` for everything that is wrong;
    `dest` may then hold part of the files and must be discarded."""
    path = Path(path)
    try:
        raw = open_regular_file(path)
    except PayloadError as exc:
        raise BundleError(f"{path}: {exc}") from None
    except OSError as exc:
        raise DeviceFault(f"{path}: {exc.strerror or exc}") from None
    size = os.fstat(raw.fileno()).st_size
    if size > limits.max_bundle_bytes:
        raw.close()
        raise BundleError(f"{path}: {size} bytes, over the {limits.max_bundle_bytes}-byte "
                          "bundle limit")
    reader = _XzReader(raw, MAX_MANIFEST_BYTES + SIGNATURE_BYTES + TAR_OVERHEAD)
    try:
        with raw, tarfile.open(fileobj=io.BufferedReader(reader, 1 << 16), mode="r|") as tar:
            return _read(tar, reader, keys, limits, dest, on_file, check)
    except BundleError as exc:
        raise type(exc)(f"{path}: {exc}") from None
    except (tarfile.TarError, lzma.LZMAError, EOFError) as exc:
        why = str(exc)[:120] or type(exc).__name__
        raise BundleError(f"{path}: truncated, tampered or corrupt archive ({why})") from None
    except OSError as exc:
        raise DeviceFault(f"{path}: cannot unpack ({exc.strerror or exc})") from None


def _read(tar, reader: _XzReader, keys, limits: Limits, dest: Path | None, on_file, check):
    first = _next(tar)
    if first is None or first.name != MANIFEST_MEMBER or first.size > MAX_MANIFEST_BYTES:
        raise BundleError(f"the first member must be {MANIFEST_MEMBER} of at most "
                          f"{MAX_MANIFEST_BYTES} bytes")
    manifest_bytes = _read_member(tar, first, MAX_MANIFEST_BYTES)
    second = _next(tar)
    if second is None or second.name != SIGNATURE_MEMBER or second.size != SIGNATURE_BYTES:
        raise BundleError(f"the second member must be {SIGNATURE_MEMBER} "
                          f"({SIGNATURE_BYTES} bytes)")
    signature = _read_member(tar, second, SIGNATURE_BYTES)
    signer = verify_signature(manifest_bytes, signature, keys)
    manifest = parse_manifest(manifest_bytes, limits.max_unpacked_bytes)
    if manifest.unpacked_bytes > limits.max_unpacked_bytes:
        raise BundleError(f"its files add up to {manifest.unpacked_bytes} bytes, over the "
                          f"{limits.max_unpacked_bytes}-byte limit")
    if check is not None:
        check(manifest)
    reader.limit = reader.count + manifest.unpacked_bytes + TAR_OVERHEAD
    if dest is not None:
        for sub in ("models", "selftest"):
            (dest / sub).mkdir(parents=True, exist_ok=True)
        for name, data in ((MANIFEST_MEMBER, manifest_bytes), (SIGNATURE_MEMBER, signature)):
            _write_new(dest / name, [data])
    seen: set[str] = set()
    while True:
        member = _next(tar)
        if member is None:
            break
        entry = manifest.file(member.name)
        if entry is None:
            raise BundleError(f"member {member.name[:80]!r} is not in the signed manifest")
        if member.name in seen:
            raise BundleError(f"member {member.name!r} appears twice")
        if member.size != entry.size:
            raise BundleError(f"{member.name}: {member.size} bytes, the signed manifest "
                              f"says {entry.size}")
        seen.add(member.name)
        digest = hashlib.sha256()
        handle = tar.extractfile(member)
        chunks = _stream(handle, entry.size, digest)
        if dest is not None:
            _write_new(dest / member.name, chunks)
        else:
            for _ in chunks:
                pass
        if digest.hexdigest() != entry.sha256:
            raise BundleError(f"{member.name}: sha256 {digest.hexdigest()[:12]}... does not "
                              "match the signed manifest (tampered)")
        if on_file is not None:
            on_file(member.name)
    missing = [f.path for f in manifest.files if f.path not in seen]
    if missing:
        raise BundleError(f"truncated archive: {missing[0]} (and {len(missing) - 1} more) "
                          "missing")
    if dest is not None:
        for sub in ("models", "selftest", "."):
            fsync_dir(dest / sub)
    return manifest, signer


def _stream(handle, size: int, digest):
    left = size
    while left > 0:
        data = handle.read(min(left, 1 << 16))
        if not data:
            raise BundleError("truncated archive: a member ends early")
        left -= len(data)
        digest.update(data)
        yield data


def _write_new(path: Path, chunks) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as handle:
        for data in chunks:
            handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


# -- making ------------------------------------------------------------------------------


def _model_files(models_dir: Path) -> list[Path]:
    """Each manifest in the folder that loads and matches its model file, with that file."""
    files: list[Path] = []
    found = list_manifests(models_dir)
    if not found:
        raise BundleError(f"{models_dir}: no model manifests")
    for item in found:
        if isinstance(item, ModelError):
            raise BundleError(f"{item}")
        files += [item.path, item.model_path]
    return files


def _selftest_frames(frames: list[Path], work: Path) -> list[Path]:
    """The frames as lossless PNGs in `work/selftest`, so the device decodes the very
    pixels whose outputs were recorded here."""
    from edge.capture.images import IMAGE_EXTS, decode_image_file

    paths: list[Path] = []
    for item in frames:
        item = Path(item)
        paths += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_EXTS) \
            if item.is_dir() else [item]
    if not 1 <= len(paths) <= MAX_SELFTEST_FRAMES:
        raise BundleError(f"give 1-{MAX_SELFTEST_FRAMES} self-test frames, got {len(paths)}")
    out = []
    (work / "selftest").mkdir(parents=True, exist_ok=True)
    for path in paths:
        image, error = decode_image_file(path)
        if image is None:
            raise BundleError(f"{path}: not a readable image ({error})")
        name = "".join(c if c.isalnum() or c in "_.-" else "_" for c in path.stem)[:80]
        target = work / "selftest" / f"{name}.png"
        if target.exists():
            raise BundleError(f"{path}: two self-test frames would be named {target.name}")
        if not cv2.imwrite(str(target), image):
            raise BundleError(f"{path}: cannot write it as PNG")
        out.append(target)
    return out


def make_bundle(models_dir: Path, key_path: Path, out: Path, *, version: str, group: str,
                min_app_version: str, frames: list[Path], pixel_size_mm: float = 0.0,
                tolerance: dict | None = None, note: str = "", num_threads: int = 2) -> dict:
    """Write a signed bundle to `out`; returns its manifest. The self-test expectations are
    what these models give on these frames here, through the device's own scorer."""
    from edge.fleet.keys import load_private_key
    from edge.fleet.selftest import rules_version, score_selftest, split_learned

    parse_version(version, "--version")
    parse_version(min_app_version, "--min-app")
    check_group(group)
    key = load_private_key(key_path)
    tol = dict(DEFAULT_TOLERANCE, **(tolerance or {}))
    if set(tol) != set(TOLERANCE_KEYS) or not all(finite_number(v) and 0 <= v <= 1000
                                                   for v in tol.values()):
        raise BundleError(f"tolerance keys are {', '.join(TOLERANCE_KEYS)}, each 0-1000")
    models_dir = Path(models_dir)
    with tempfile.TemporaryDirectory(prefix="sonoedge-bundle-") as tmp:
        work = Path(tmp)
        (work / "models").mkdir()
        for src in _model_files(models_dir):
            (work / "models" / src.name).write_bytes(src.read_bytes())
        pictures = _selftest_frames(frames, work)
        outputs, learned = split_learned(score_selftest(work / "models", pictures,
                                                        pixel_size_mm, num_threads))
        rules = rules_version(work / "models")
        extra = []
        if rules is not None:  # a box compares the quality score only under these rules
            record = json.dumps({"quality_rules": rules}).encode()
            try:
                parse_made_with(record)  # what we sign must be what a device accepts
            except BundleError:
                raise BundleError(f"the quality rules' version {shown(rules)} must be 1-4 "
                                  "dotted numbers (a box compares it)") from None
            (work / MADE_WITH_MEMBER).write_bytes(record)
            extra = [work / MADE_WITH_MEMBER]
        if any(learned):  # the learned head's own numbers: a box compares them under any rules
            record = json.dumps({"frames": {f"selftest/{p.name}": learned[i]
                                            for i, p in enumerate(pictures) if learned[i]}},
                                sort_keys=True).encode()
            (work / LEARNED_MEMBER).write_bytes(record)
            extra.append(work / LEARNED_MEMBER)
        members = sorted((work / "models").iterdir()) + pictures + extra
        files = [{"path": f"{p.parent.name}/{p.name}", "sha256": sha256_of(p),
                  "size": p.stat().st_size} for p in members]
        manifest = {
            "format": BUNDLE_FORMAT, "format_version": BUNDLE_FORMAT_VERSION,
            "version": version, "group": group, "min_app_version": min_app_version,
            "created_ts": round(time.time(), 3), "files": files,
            "selftest": {"frames": [{"path": f"selftest/{p.name}", "expect": outputs[i]}
                                    for i, p in enumerate(pictures)],
                         "tolerance": {k: float(tol[k]) for k in TOLERANCE_KEYS},
                         "pixel_size_mm": float(pixel_size_mm)},
            "note": note,
        }
        data = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        checked = parse_manifest(data, 1 << 40)  # what we sign must be what a device accepts
        if (work / LEARNED_MEMBER).exists():
            parse_learned((work / LEARNED_MEMBER).read_bytes(), checked.frames)
        signature = key.sign(data)
        out = Path(out)
        tmp_out = out.with_name(out.name + ".tmp")
        mtime = int(manifest["created_ts"])
        try:
            with lzma.open(tmp_out, "wb", format=lzma.FORMAT_XZ, preset=XZ_PRESET) as xz, \
                    tarfile.open(fileobj=xz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for name, blob in ((MANIFEST_MEMBER, data), (SIGNATURE_MEMBER, signature)):
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(blob), mtime, 0o644
                    tar.addfile(info, io.BytesIO(blob))
                for entry, path in zip(files, members, strict=True):
                    info = tarfile.TarInfo(entry["path"])
                    info.size, info.mtime, info.mode = entry["size"], mtime, 0o644
                    with open(path, "rb") as handle:
                        tar.addfile(info, handle)
            os.replace(tmp_out, out)
        except OSError as exc:
            tmp_out.unlink(missing_ok=True)
            raise BundleError(f"{out}: cannot write the bundle ({exc.strerror or exc})") \
                from None
    return manifest
