"""Model bundles and their delivery: what the district signs and sends, and what a device accepts.

Shared by the device (`edge/fleet`) and the district (`central/fleet.py`), which never import
each other. A bundle is one xz-compressed tar whose first member is the bundle manifest
(`bundle.json`) and whose second is an Ed25519 signature over exactly those bytes
(`bundle.sig`, 64 bytes). The manifest lists every other member with its size and sha256,
so a reader checks the signature before it extracts a single model byte, and then every
member against the signed list. Nothing in the archive chooses whether or with which
algorithm it is checked: the signature is always Ed25519, always checked, against the keys
the device was given (never a key the bundle carries).

Delivery over MQTT: the district publishes, retained, the bundle in chunks under
`sonoedge-fleet/<group>/chunk/<id>/<n>` and then an *offer* at `sonoedge-fleet/<group>/offer`
(id = the bundle's sha256, size, chunk size, each chunk's sha256). A device subscribes only
to the chunks it still lacks, keeps each on disk as it arrives, and so resumes a download
cut by the link or a power cut. The offer is not signed: it only decides what to
download, and every byte is checked against the signed manifest before it is used. Over
HTTP(S) the same offer is `<base>/<group>/offer.json` and the bundle `<base>/<group>/<id>.bundle`.
"""

from __future__ import annotations

import itertools
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from wire.schema import (
    PayloadError,
    finite_number,
    loads_bounded,
    read_regular_file,
    wall_ts_or_none,
)
from wire.shown import shown

BUNDLE_FORMAT = "sonoedge-bundle"
BUNDLE_FORMAT_VERSION = 1
OFFER_FORMAT = "sonoedge-offer"
MANIFEST_MEMBER = "bundle.json"
SIGNATURE_MEMBER = "bundle.sig"
SIGNATURE_BYTES = 64  # Ed25519
MAX_MANIFEST_BYTES = 64 * 1024  # 64 files with their hashes fit in a few kB
MAX_OFFER_BYTES = 512 * 1024  # up to MAX_CHUNKS chunk hashes
MAX_FILES = 64
MAX_SELFTEST_FRAMES = 32
MAX_CHUNKS = 4096
FLEET_PREFIX = "sonoedge-fleet"
GROUP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
VERSION_RE = re.compile(r"^[0-9]{1,9}(\.[0-9]{1,9}){0,3}$")
MEMBER_RE = re.compile(r"^(models|selftest)/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
SHA_RE = re.compile(r"^[0-9a-f]{64}$")
# What a self-test frame may expect and how far the device may differ (x86 vs arm64 float
# order, a different thread count): the tolerance keys are the expectation's numbers.
EXPECT_KEYS = {"plane": str, "plane_confidence": float, "quality_score": float,
               "head_status": str, "hc_mm": float}
TOLERANCE_KEYS = ("plane_confidence", "quality_score", "hc_mm")
# What the expectations were made with, beside the frames: the quality score is the quality
# rules' (edge/models/quality_rules.toml, which ship with the app), not only the models', so
# a box compares it only under the rules version that made it (edge/fleet/selftest.py). A
# listed, signed member and not a manifest field: the manifest is strict, and a box already
# in the field refuses a field it does not know, before it reads min_app_version (so raising
# that would not be its line); a member no frame names it unpacks and ignores, and compares
# as it always did.
MADE_WITH_MEMBER = "selftest/made_with.json"
MAX_MADE_WITH_BYTES = 1024
# The learned quality head's own numbers on each self-test frame (its severities by branch,
# edge/models/quality.py `learned_severities`): the models' outputs, not the rules', so a
# box compares them whatever quality rules it runs, where the quality score it cannot (a
# bundle made under other rules had that head checked only for loading and running). A
# listed, signed member for the same reason as MADE_WITH_MEMBER: a box before it ignores it.
LEARNED_MEMBER = "selftest/learned.json"
MAX_LEARNED_BYTES = 16 * 1024  # 32 frames of 6 branches are ~4 kB
MAX_LEARNED_BRANCHES = 16
BRANCH_RE = re.compile(r"^[a-z0-9][a-z0-9_]{0,31}$")  # a quality head's label


class BundleError(ValueError):
    """A bundle, offer or key that must not be used; one line saying why."""


def parse_version(text: object, what: str = "version") -> tuple[int, ...]:
    """"1.4.2" -> (1, 4, 2); dotted decimal numbers only, so comparing is unambiguous."""
    if not isinstance(text, str) or not VERSION_RE.fullmatch(text):
        raise BundleError(f"{what} must be 1-4 dotted numbers such as 2025.6.1, got {shown(text)}")
    parts = tuple(int(p) for p in text.split("."))
    return parts + (0,) * (4 - len(parts))


@dataclass(frozen=True)
class FileEntry:
    path: str  # "models/x.tflite" or "selftest/y.png"
    sha256: str
    size: int


@dataclass(frozen=True)
class SelfTestFrame:
    path: str
    expect: dict


@dataclass(frozen=True)
class BundleManifest:
    """The signed manifest, every field checked (see `parse_manifest`)."""

    version: str
    group: str
    min_app_version: str
    created_ts: float
    files: tuple[FileEntry, ...]
    frames: tuple[SelfTestFrame, ...]
    tolerance: dict
    pixel_size_mm: float
    note: str
    raw: dict

    @property
    def version_key(self) -> tuple[int, ...]:
        return parse_version(self.version)

    def file(self, path: str) -> FileEntry | None:
        return next((f for f in self.files if f.path == path), None)

    @property
    def unpacked_bytes(self) -> int:
        return sum(f.size for f in self.files)


_MANIFEST_KEYS = {"format", "format_version", "version", "group", "min_app_version",
                  "created_ts", "files", "selftest", "note"}


def parse_manifest(data: bytes, max_member_bytes: int) -> BundleManifest:
    """The manifest's bytes -> `BundleManifest`, or `BundleError` naming the bad field.

    Strict: an unknown key, a wrong type, a file outside `models/` or `selftest/`, a size
    over `max_member_bytes`, a duplicate, a self-test frame that is not a listed file, each
    is refused. Call it only on bytes whose signature has been checked."""
    try:
        raw = loads_bounded(data, MAX_MANIFEST_BYTES, max_depth=6)
    except PayloadError as exc:
        raise BundleError(f"bundle manifest: {exc}") from None
    if not isinstance(raw, dict):
        raise BundleError("bundle manifest: not a JSON object")

    def bad(key: str, why: str) -> BundleError:
        return BundleError(f"bundle manifest: {key} {why}")

    unknown = sorted(set(raw) - _MANIFEST_KEYS)
    if unknown:
        raise bad(unknown[0], "is not a known field")
    if raw.get("format") != BUNDLE_FORMAT:
        raise bad("format", f"must be {BUNDLE_FORMAT!r}")
    if raw.get("format_version") != BUNDLE_FORMAT_VERSION:
        raise bad("format_version", f"{shown(raw.get('format_version'))} is not supported "
                                    f"(this device reads {BUNDLE_FORMAT_VERSION})")
    parse_version(raw.get("version"), "bundle manifest: version")
    parse_version(raw.get("min_app_version"), "bundle manifest: min_app_version")
    group = raw.get("group")
    if not isinstance(group, str) or not GROUP_RE.fullmatch(group):
        raise bad("group", f"must be a device group name, got {shown(group)}")
    created = raw.get("created_ts")
    if wall_ts_or_none(created) is None:
        raise bad("created_ts", "must be seconds since 1970, before 2100")
    note = raw.get("note", "")
    if not isinstance(note, str) or len(note) > 500:
        raise bad("note", "must be a string of at most 500 characters")
    files = raw.get("files")
    if not isinstance(files, list) or not 1 <= len(files) <= MAX_FILES:
        raise bad("files", f"must list 1-{MAX_FILES} files")
    entries: list[FileEntry] = []
    for i, item in enumerate(files):
        if not isinstance(item, dict) or set(item) != {"path", "sha256", "size"}:
            raise bad(f"files[{i}]", "must be {path, sha256, size}")
        path, digest, size = item["path"], item["sha256"], item["size"]
        if not isinstance(path, str) or not MEMBER_RE.fullmatch(path) or ".." in path:
            raise bad(f"files[{i}].path", f"{shown(path)} is not models/NAME or selftest/NAME")
        if not isinstance(digest, str) or not SHA_RE.fullmatch(digest):
            raise bad(f"files[{i}].sha256", "must be 64 lowercase hexadecimal digits")
        if (not isinstance(size, int) or isinstance(size, bool)
                or not 0 <= size <= max_member_bytes):
            raise bad(f"files[{i}].size", f"must be 0-{max_member_bytes} bytes, got {shown(size)}")
        if any(e.path == path for e in entries):
            raise bad(f"files[{i}].path", f"{shown(path)} is listed twice")
        entries.append(FileEntry(path, digest, size))
    if not any(e.path.startswith("models/") and e.path.endswith(".json") for e in entries):
        raise bad("files", "holds no model manifest (models/*.json)")
    made_with = next((e for e in entries if e.path == MADE_WITH_MEMBER), None)
    if made_with is not None and made_with.size > MAX_MADE_WITH_BYTES:
        raise bad(MADE_WITH_MEMBER, f"must be at most {MAX_MADE_WITH_BYTES} bytes")
    learned = next((e for e in entries if e.path == LEARNED_MEMBER), None)
    if learned is not None and learned.size > MAX_LEARNED_BYTES:
        raise bad(LEARNED_MEMBER, f"must be at most {MAX_LEARNED_BYTES} bytes")
    frames, tolerance, pixel = _parse_selftest(raw.get("selftest"), entries, bad)
    return BundleManifest(version=raw["version"], group=group,
                          min_app_version=raw["min_app_version"], created_ts=float(created),
                          files=tuple(entries), frames=frames, tolerance=tolerance,
                          pixel_size_mm=pixel, note=note, raw=raw)


def _parse_selftest(block: object, entries: list[FileEntry], bad):
    if not isinstance(block, dict) or set(block) - {"frames", "tolerance", "pixel_size_mm"}:
        raise bad("selftest", "must be {frames, tolerance, pixel_size_mm}")
    tolerance = block.get("tolerance")
    if not isinstance(tolerance, dict) or set(tolerance) != set(TOLERANCE_KEYS):
        raise bad("selftest.tolerance", f"must give exactly {', '.join(TOLERANCE_KEYS)}")
    for key, value in tolerance.items():
        if not finite_number(value) or not 0 <= value <= 1000:
            raise bad(f"selftest.tolerance.{key}", "must be a number in 0-1000")
    pixel = block.get("pixel_size_mm", 0.0)
    if not finite_number(pixel) or not 0 <= pixel <= 1.0:
        raise bad("selftest.pixel_size_mm", "must be 0 (no biometry) or a size in mm up to 1")
    items = block.get("frames")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_SELFTEST_FRAMES:
        raise bad("selftest.frames", f"must list 1-{MAX_SELFTEST_FRAMES} frames: a bundle "
                                     "is never installed untested")
    frames = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != {"path", "expect"}:
            raise bad(f"selftest.frames[{i}]", "must be {path, expect}")
        path, expect = item["path"], item["expect"]
        if not isinstance(path, str) or not path.startswith("selftest/") or not any(
                e.path == path for e in entries):
            raise bad(f"selftest.frames[{i}].path", f"{shown(path)} is not a listed selftest file")
        if not isinstance(expect, dict) or "plane" not in expect or set(expect) - set(
                EXPECT_KEYS):
            raise bad(f"selftest.frames[{i}].expect", f"must hold plane and only "
                                                      f"{', '.join(EXPECT_KEYS)}")
        for key, value in expect.items():
            kind = EXPECT_KEYS[key]
            ok = (isinstance(value, str) and len(value) <= 64) if kind is str else (
                value is None or (finite_number(value) and abs(value) <= 1e6))
            if not ok:
                raise bad(f"selftest.frames[{i}].expect.{key}",
                          f"has the wrong type: {shown(value)}")
        frames.append(SelfTestFrame(path, dict(expect)))
    return tuple(frames), {k: float(v) for k, v in tolerance.items()}, float(pixel)


def parse_made_with(data: bytes) -> str:
    """`MADE_WITH_MEMBER`'s bytes -> the quality rules version the self-test's expectations
    were made with, or `BundleError` naming the field. Signed (its sha256 is in the
    manifest), and still read as hostile: bounded, exact keys, a dotted version."""
    try:
        raw = loads_bounded(data, MAX_MADE_WITH_BYTES, max_depth=2)
    except PayloadError as exc:
        raise BundleError(f"{MADE_WITH_MEMBER}: {exc}") from None
    if not isinstance(raw, dict) or set(raw) != {"quality_rules"}:
        raise BundleError(f"{MADE_WITH_MEMBER}: must be {{quality_rules}}")
    parse_version(raw["quality_rules"], f"{MADE_WITH_MEMBER}: quality_rules")
    return raw["quality_rules"]


def parse_learned(data: bytes, frames: tuple[SelfTestFrame, ...]) -> dict[str, dict]:
    """`LEARNED_MEMBER`'s bytes -> {self-test frame path: {branch: severity}}, or
    `BundleError` naming the field. Signed, and still read as hostile: bounded, exact keys,
    only the manifest's own frames, short branch names, finite numbers. A frame it leaves
    out had no learned head's numbers where it was made (none installed)."""
    where = LEARNED_MEMBER
    try:
        raw = loads_bounded(data, MAX_LEARNED_BYTES, max_depth=4)
    except PayloadError as exc:
        raise BundleError(f"{where}: {exc}") from None
    if not isinstance(raw, dict) or set(raw) != {"frames"} or not isinstance(raw["frames"],
                                                                              dict):
        raise BundleError(f"{where}: must be {{frames: {{path: {{branch: severity}}}}}}")
    paths = {f.path for f in frames}
    out: dict[str, dict] = {}
    for path, branches in raw["frames"].items():
        if path not in paths:
            raise BundleError(f"{where}: frames: {shown(path)} is not a self-test frame of "
                              "the manifest")
        if not isinstance(branches, dict) or len(branches) > MAX_LEARNED_BRANCHES:
            raise BundleError(f"{where}: frames.{path}: must be at most "
                              f"{MAX_LEARNED_BRANCHES} branches, each a severity")
        for name, value in branches.items():
            if not BRANCH_RE.fullmatch(name):
                raise BundleError(f"{where}: frames.{path}: branch {shown(name)} is not a "
                                  "quality head's label")
            if not finite_number(value) or abs(value) > 1e6:
                raise BundleError(f"{where}: frames.{path}.{name}: {shown(value)} is not a "
                                  "number")
        out[path] = {name: float(value) for name, value in branches.items()}
    return out


def verify_signature(manifest: bytes, signature: bytes, keys: list) -> str:
    """The name of the trusted key whose Ed25519 signature this is, or `BundleError`.

    `keys` is [(name, Ed25519PublicKey)], the keys the device was provisioned with. Every
    key is tried; none is chosen by the bundle."""
    from cryptography.exceptions import InvalidSignature

    if not keys:
        raise BundleError("no trusted public key is installed: the device accepts no bundle")
    if len(signature) != SIGNATURE_BYTES:
        raise BundleError(f"signature is {len(signature)} bytes, not {SIGNATURE_BYTES}")
    for name, key in keys:
        try:
            key.verify(signature, manifest)
            return name
        except InvalidSignature:
            continue
    raise BundleError("bad signature: not signed by any trusted key (tampered, or a wrong key)")


# -- delivery ----------------------------------------------------------------------------


MAX_KEY_FILE = 4096  # an Ed25519 key in PEM is about 120 bytes
MAX_TRUSTED_KEYS = 16


def read_key_file(path: Path | str) -> tuple[bytes, os.stat_result]:
    """A key file's bytes and stat: a regular file of at most MAX_KEY_FILE bytes."""
    try:
        return read_regular_file(path, MAX_KEY_FILE)
    except PayloadError as exc:
        raise BundleError(f"{path}: not a key file ({exc})") from None
    except OSError as exc:
        raise BundleError(f"{path}: {exc.strerror or exc}") from None


def load_public_key(path: Path | str):
    """An Ed25519 public key from a PEM file; BundleError naming the file otherwise (a
    private key saved as .pub included)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data, _ = read_key_file(path)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise BundleError(f"{path}: not a PEM public key ({str(exc)[:80]})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"{path}: not an Ed25519 public key")
    return key


def _writable_by_others(st: os.stat_result) -> bool:
    return bool(st.st_mode & 0o022) and not (stat.S_ISDIR(st.st_mode)
                                             and st.st_mode & stat.S_ISVTX)


def load_trusted_keys(folder: Path | str, what: str = "trusted keys") -> list:
    """Every `*.pub` in `folder` (at most MAX_TRUSTED_KEYS), as [(name, key)]: the device's
    provisioned keys, or the district's `--keys` (`what` names them in the error line).
    Refuses a folder or key another user could write: they could add their own key."""
    folder = Path(folder)
    try:
        st = folder.stat()
    except OSError as exc:
        raise BundleError(f"{what} {folder}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise BundleError(f"{what} {folder}: not a folder")
    if _writable_by_others(st):
        raise BundleError(f"{what} {folder}: other users can write it (mode "
                          f"{stat.S_IMODE(st.st_mode):04o}); chmod 755 it")
    # More keys than we trust at once is refused, not cut short: a 17th key added for a
    # rotation was silently never trusted. islice bounds the matches kept and sorted.
    found = list(itertools.islice(folder.glob("*.pub"), MAX_TRUSTED_KEYS + 1))
    if len(found) > MAX_TRUSTED_KEYS:
        raise BundleError(f"{what} {folder}: more than {MAX_TRUSTED_KEYS} *.pub keys; keep "
                          "only the keys in use")
    keys = []
    for path in sorted(found):
        _, key_st = read_key_file(path)
        if key_st.st_mode & 0o022:
            raise BundleError(f"trusted key {path}: other users can write it (mode "
                              f"{stat.S_IMODE(key_st.st_mode):04o}); chmod 644 it")
        keys.append((path.stem, load_public_key(path)))
    return keys


def check_group(group: str) -> str:
    if not isinstance(group, str) or not GROUP_RE.fullmatch(group):
        raise BundleError(f"bad device group {shown(group)}: letters, digits, '.', '_', '-' "
                          "(max 64)")
    return group


def offer_topic(group: str) -> str:
    return f"{FLEET_PREFIX}/{check_group(group)}/offer"


def chunk_topic(group: str, bundle_id: str, index: int) -> str:
    return f"{FLEET_PREFIX}/{check_group(group)}/chunk/{bundle_id[:32]}/{int(index)}"


@dataclass(frozen=True)
class Offer:
    """What the district offers a group: not signed, so it only decides what to fetch."""

    bundle_id: str  # sha256 of the whole bundle file
    size: int
    chunk_size: int
    chunk_sha256: tuple[str, ...]
    version: str
    group: str

    def to_dict(self) -> dict:
        return {"format": OFFER_FORMAT, "id": self.bundle_id, "size": self.size,
                "chunk_size": self.chunk_size, "chunks": list(self.chunk_sha256),
                "version": self.version, "group": self.group}

    @property
    def count(self) -> int:
        return len(self.chunk_sha256)

    def chunk_range(self, index: int) -> tuple[int, int]:
        start = index * self.chunk_size
        return start, min(self.size, start + self.chunk_size)


def parse_offer(data: bytes, max_bundle_bytes: int, max_chunk_bytes: int) -> Offer:
    """An offer's bytes -> `Offer`, every field checked and bounded, or `BundleError`."""
    try:
        raw = loads_bounded(data, MAX_OFFER_BYTES, max_depth=3)
    except PayloadError as exc:
        raise BundleError(f"offer: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != OFFER_FORMAT or set(raw) != {
            "format", "id", "size", "chunk_size", "chunks", "version", "group"}:
        raise BundleError("offer: not a sonoedge offer (format, id, size, chunk_size, "
                          "chunks, version, group)")
    bundle_id, size, chunk, hashes = raw["id"], raw["size"], raw["chunk_size"], raw["chunks"]
    if not isinstance(bundle_id, str) or not SHA_RE.fullmatch(bundle_id):
        raise BundleError("offer: id must be the bundle's sha256")
    for name, value, top in (("size", size, max_bundle_bytes),
                             ("chunk_size", chunk, max_chunk_bytes)):
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
            raise BundleError(f"offer: {name} {shown(value)} is outside 1-{top} bytes")
    expected = -(-size // chunk)
    if expected > MAX_CHUNKS:
        raise BundleError(f"offer: {expected} chunks, more than {MAX_CHUNKS}")
    if (not isinstance(hashes, list) or len(hashes) != expected
            or not all(isinstance(h, str) and SHA_RE.fullmatch(h) for h in hashes)):
        raise BundleError(f"offer: chunks must be {expected} sha256 digests")
    parse_version(raw["version"], "offer: version")
    return Offer(bundle_id, size, chunk, tuple(hashes), raw["version"],
                 check_group(raw["group"]))
