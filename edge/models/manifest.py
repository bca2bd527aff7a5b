"""Model manifests: what a shipped .tflite is, how to feed it, and proof it is the same file.

A model file is trusted only when its sha256 matches its manifest: a half-copied update or
a swapped file on a device nobody watches must fail loudly, not score frames wrongly.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from edge.models.preprocess import PreprocessSpec
from wire.schema import (
    PayloadError,
    finite_number,
    loads_bounded,
    open_regular_file,
    read_regular_file,
)
from wire.shown import read_failure, shown, shown_path

MANIFEST_VERSION = 1
REQUIRED = ("name", "version", "task", "file", "sha256", "labels", "input", "output",
            "preprocessing")


class ModelError(ValueError):
    """A one-line message naming the model file or manifest."""


@dataclass(frozen=True)
class Manifest:
    path: Path  # the .json
    name: str
    version: str
    task: str
    model_path: Path
    sha256: str
    labels: tuple[str, ...]
    input_shape: tuple[int, ...]
    output_kind: str  # "logits" or "probabilities"
    preprocessing: PreprocessSpec
    raw: dict

    @property
    def ident(self) -> str:
        return f"{self.name}@{self.version}"

    def setting(self, key: str, default: float) -> float:
        """A task-specific number from the manifest's `thresholds` block (e.g. abstain);
        `read_manifest` has checked every one of them."""
        return float((self.raw.get("thresholds") or {}).get(key, default))


# What each known threshold may be; any other threshold must still be a finite number.
THRESHOLDS = {
    "temperature": (lambda v: 0.01 <= v <= 100.0, "a softmax temperature in 0.01-100"),
    "abstain_below": (lambda v: 0.0 <= v <= 1.0, "a probability in 0-1"),
}
MAX_INPUT_SIDE = 4096
# A shipped label is at most 12 characters and a name or version a few more; these bound
# what a hostile manifest can make the device print or carry.
MAX_LABELS = 1000
MAX_TEXT = 128
# `preprocessing.scale` multiplies the model's input: a z-score (|z| is at most
# sqrt(H*W - 1), under 4096 for the largest input allowed) or a grey level / 255 (0-1).
# 255 is the largest any of our models takes (SonoNet's teacher, fp32: z-score x 255, the
# 8-bit range) and 1/255 its reciprocal; within them a float32 input stays finite (at most
# about 1e6) and every grey step a normal float32 (no underflow to a flat zero input),
# and an int8 or uint8 input is the tflite's own quantization of exactly these floats. A
# scale of 1e308 was taken, and every input was infinite; 1e-300, and every input was 0.
SCALE_RANGE = (1.0 / 255.0, 255.0)


def _check_fields(path: Path, raw: dict) -> None:
    """Every field the device reads, checked once at load: one ModelError naming the field."""
    def bad(field: str, why: str) -> ModelError:
        return ModelError(f"{path}: {field} {why}")

    for key in ("name", "version", "task", "file"):
        if (not isinstance(raw[key], str) or not raw[key].strip()
                or len(raw[key]) > MAX_TEXT or not raw[key].isprintable()):
            raise bad(key, f"must be a non-empty line of at most {MAX_TEXT} characters, "
                           f"got {shown(raw[key])}")
    if raw["file"] != Path(raw["file"]).name or raw["file"] in (".", ".."):
        raise bad("file", f"must name a file beside the manifest, got {shown(raw['file'])}")
    if not isinstance(raw["sha256"], str) or not re.fullmatch(r"[0-9a-fA-F]{64}",
                                                               raw["sha256"]):
        raise bad("sha256", "must be 64 hexadecimal digits")
    labels = raw["labels"]
    if (not isinstance(labels, list) or not 1 <= len(labels) <= MAX_LABELS
            or not all(isinstance(v, str) and v.strip() and len(v) <= MAX_TEXT
                       and v.isprintable() for v in labels)):
        raise bad("labels", f"must be a list of 1-{MAX_LABELS} non-empty lines of at most "
                            f"{MAX_TEXT} characters")
    if len({v.strip() for v in labels}) != len(labels):
        raise bad("labels", "has a label twice")
    inp = raw["input"]
    if not isinstance(inp, dict):
        raise bad("input", f"must be an object, got {shown(inp)}")
    shape = inp.get("shape")
    if (not isinstance(shape, list) or not 2 <= len(shape) <= 4
            or not all(isinstance(v, int) and not isinstance(v, bool)
                       and 1 <= v <= MAX_INPUT_SIDE for v in shape)):
        raise bad("input.shape", f"must be 2-4 integers in 1-{MAX_INPUT_SIDE}, got {shown(shape)}")
    if "dtype" in inp and inp["dtype"] not in ("int8", "uint8", "float32"):
        raise bad("input.dtype", f"must be int8, uint8 or float32, got {shown(inp['dtype'])}")
    if "layout" in inp and inp["layout"] not in ("NCHW", "NHWC"):
        raise bad("input.layout", f"must be NCHW or NHWC, got {shown(inp['layout'])}")
    if not isinstance(raw["output"], dict):
        raise bad("output", f"must be an object, got {shown(raw['output'])}")
    dtype = raw["output"].get("dtype", "int8")
    if dtype not in ("int8", "uint8", "float32"):
        raise bad("output.dtype", f"must be int8, uint8 or float32, got {shown(dtype)}")
    if not isinstance(raw["preprocessing"], dict):
        raise bad("preprocessing", f"must be an object, got {shown(raw['preprocessing'])}")
    # Read by `sonoedge models`, so checked here too, however informative they are.
    size = raw.get("size_bytes", 0)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise bad("size_bytes", f"must be a whole number of bytes, got {shown(size)}")
    if not isinstance(raw.get("metrics") or {}, dict):
        raise bad("metrics", f"must be an object, got {shown(raw['metrics'])}")
    thresholds = raw.get("thresholds", {})
    if not isinstance(thresholds, dict):
        raise bad("thresholds", f"must be an object of numbers, got {shown(thresholds)}")
    for key, value in thresholds.items():
        check, what = THRESHOLDS.get(key, (lambda v: True, "a finite number"))
        if not finite_number(value) or not check(float(value)):
            name = key if len(key) <= 40 else key[:40] + "..."
            raise bad(f"thresholds.{name}", f"must be {what}, got {shown(value)}")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# A shipped manifest is 14-29 KB and 5 levels deep; far beyond both it is not a manifest.
MAX_MANIFEST_BYTES = 1 << 20
MAX_MANIFEST_DEPTH = 16


def read_manifest(path: Path) -> Manifest:
    """Parse and check a manifest; the model file itself is checked by `verify`. The JSON is
    read bounded in size and depth (`wire.schema.loads_bounded`): a corrupt or hostile file
    is one `ModelError`, never a recursion."""
    path = Path(path)
    try:  # not a plain open(): a FIFO would be waited on for ever
        with open_regular_file(path) as handle:
            data = handle.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise ModelError(f"{shown_path(path, None)}: model manifest not found") from None
    except (OSError, ValueError) as exc:  # a folder, a FIFO, a NUL in the path
        raise ModelError(f"{shown_path(path, None)}: cannot read manifest "
                         f"({read_failure(exc)})") from None
    try:
        raw = loads_bounded(data, MAX_MANIFEST_BYTES, MAX_MANIFEST_DEPTH)
    except ValueError as exc:  # PayloadError, with the reason
        raise ModelError(f"{path}: manifest is not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ModelError(f"{path}: manifest must be a JSON object")
    missing = [key for key in REQUIRED if key not in raw]
    if missing:
        raise ModelError(f"{path}: manifest lacks {shown(missing[0])}")
    version = raw.get("manifest_version", MANIFEST_VERSION)
    if type(version) is not int or version != MANIFEST_VERSION:  # true == 1 to Python
        raise ModelError(f"{path}: manifest_version {shown(version)} is not supported (it "
                         f"is the whole number {MANIFEST_VERSION})")
    _check_fields(path, raw)
    try:
        spec = PreprocessSpec.from_dict(raw["preprocessing"], f"{path}: preprocessing")
        shape = tuple(int(v) for v in raw["input"]["shape"])
        labels = tuple(str(v).strip() for v in raw["labels"])
        output_kind = str(raw["output"].get("kind", "logits"))
    except ModelError:
        raise
    except ValueError as exc:  # the preprocessing's own check names the manifest and key
        text = str(exc)  # which may quote a hostile key of any length: one short line
        raise ModelError(text if len(text) <= 300 else text[:300] + "...") from None
    except (TypeError, KeyError, AttributeError) as exc:
        raise ModelError(f"{path}: malformed input/output/labels ({exc})") from None
    low, high = SCALE_RANGE
    if not low <= spec.scale <= high:
        raise ModelError(f"{path}: preprocessing.scale {shown(spec.scale)} is outside "
                         f"{low:.6g}-{high:g} (1/255 to 255)")
    if output_kind not in ("logits", "probabilities"):
        raise ModelError(f"{path}: output.kind {shown(output_kind)} is not logits or probabilities")
    if shape[-2:] != (spec.height, spec.width):
        raise ModelError(f"{path}: input shape {shape} disagrees with preprocessing "
                         f"{spec.height}x{spec.width}")
    return Manifest(path=path, name=str(raw["name"]), version=str(raw["version"]),
                    task=str(raw["task"]), model_path=path.parent / str(raw["file"]),
                    sha256=str(raw["sha256"]).lower(), labels=labels, input_shape=shape,
                    output_kind=output_kind, preprocessing=spec, raw=raw)


# The shipped models are under 1 MB, an Edge TPU build or the fp32 teacher a few tens: a
# model file is read whole into memory, so a larger one is refused before it is read.
MAX_MODEL_BYTES = 128 << 20


def verified_bytes(manifest: Manifest) -> bytes:
    """The model file's bytes, byte-for-byte the ones the manifest describes. The runtime
    loads these very bytes: reopening the file by its path after hashing it would let a
    file swapped in between (a symlink retargeted, an update landing) run unverified."""
    try:
        data, _ = read_regular_file(manifest.model_path, MAX_MODEL_BYTES)
    except FileNotFoundError:
        raise ModelError(f"{manifest.model_path}: model file missing "
                         f"(named by {manifest.path.name})") from None
    except (OSError, PayloadError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ModelError(f"{manifest.model_path}: cannot read model file ({reason})") from None
    _same_digest(manifest, hashlib.sha256(data).hexdigest())
    if not data:  # LiteRT reads no bytes as "no model given" and says so
        raise ModelError(f"{manifest.model_path}: model file is empty")
    return data


def _same_digest(manifest: Manifest, actual: str) -> None:
    if actual != manifest.sha256:
        raise ModelError(f"{manifest.model_path}: sha256 {actual[:12]}... does not match "
                         f"its manifest ({manifest.sha256[:12]}...); refusing to load it")


def verify(manifest: Manifest) -> None:
    """The model file exists and is byte-for-byte the one the manifest describes (hashed
    as it streams by: a listing need not hold every model in memory; `load_model` loads
    `verified_bytes` instead)."""
    if not manifest.model_path.is_file():
        raise ModelError(f"{manifest.model_path}: model file missing "
                         f"(named by {manifest.path.name})")
    _same_digest(manifest, sha256_of(manifest.model_path))


def find_manifest(models_dir: Path, name: str) -> Manifest:
    return read_manifest(Path(models_dir) / f"{name}.json")


def list_manifests(models_dir: Path) -> list[Manifest | ModelError]:
    """Every manifest in the folder, with the error in place of the ones that are broken."""
    found: list[Manifest | ModelError] = []
    for path in sorted(Path(models_dir).glob("*.json")):
        try:
            manifest = read_manifest(path)
            verify(manifest)
            found.append(manifest)
        except ModelError as exc:
            found.append(exc)
    return found
