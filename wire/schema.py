"""The contract between device and collector: message kinds, label vocabulary, JSON Schemas.

The JSON Schemas in ``wire/schemas/`` are the one definition of what an ``exam``, ``health``,
``status``, ``dates`` or ``withdrawal`` message may hold. The device checks every payload
against them before it is stored, and the collector checks every payload it receives.
``validate()`` is a small draft 2020-12 subset validator, bounded in depth, so neither side
needs ``jsonschema`` at run time (the tests cross-check with it). Neither side imports the
other: both import this.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import sys
import tomllib
import urllib.parse
from decimal import ROUND_FLOOR, Decimal
from functools import cache
from pathlib import Path
from typing import BinaryIO

from wire.shown import printable, read_failure

SCHEMA_VERSION = 1
KINDS = ("exam", "health", "status", "dates", "withdrawal")
# The kinds that travel through the device's outbox and take a seq from its one counter:
# the collector finds lost messages as holes in the seqs of exactly these. ``dates`` carries
# an age by dates entered after its exam's summary had left (``dates.schema.json``);
# ``withdrawal`` an exam the midwife withdrew, or restored, after it ended
# (``withdrawal.schema.json``).
QUEUED_KINDS = ("exam", "health", "dates", "withdrawal")
# The kinds that are a later word about an ended exam (its ``exam_id``), not an exam: the
# latest of an exam's entries of one kind wins, by seq, at the device and the district.
CORRECTION_KINDS = ("dates", "withdrawal")
# A message's wall-clock times, as the schemas name them (exam, dates, withdrawal, health):
# a box whose clock steps forward moves those it stamped before the step
# (`Outbox.shift_unsent_times`), and the collector takes such a re-dated copy of a message
# it holds as the same message (central/db.py `same_content`).
TIME_FIELDS = ("ts", "started_ts", "ended_ts", "entered_ts")
# A change of the wall clock against the boot clock this large is a step: the midwife's
# page setting it (edge/web/clock.py), or network time reaching a box that booted at the
# time it was switched off. Network time slews smaller errors, at most 0.5 ms a second.
CLOCK_STEP_S = 60.0
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
EXAM_MAX_BYTES = 1024
# A device's wall clock on the wire (the schemas' ts maximum): seconds since 1970, before 2100.
MAX_WALL_TS = 4102444800
PLANES = (
    "3VV", "4CH", "Abdominal", "Background", "Brain (Cb.)", "Brain (Tv.)", "Femur", "Kidneys",
    "Lips", "LVOT", "Profile", "RVOT", "Spine (cor.)", "Spine (sag.)",
)
# Bounds on any message before and while it is parsed: a hostile or broken sender must not
# make a reader recurse, allocate or loop without limit. A valid exam is at most 1 KB and
# nests 4 levels deep.
MAX_DEPTH = 16
MAX_NODES = 5000  # values visited by one validate() call
MAX_INT_DIGITS = 20
# Frames the plane model abstained on are counted as such: a district site must be able to
# tell "the model was unsure" from "a plane outside the list".
UNCERTAIN = "uncertain"
# Plane entries of an exam summary that are not a standard view: their counts say how much
# of an exam was spent searching; their confidence and quality are nobody's plane quality
# (the device sheds them first, the report and the dashboard leave them out).
NOT_A_VIEW = ("Background", "other", UNCERTAIN)


@cache
def load_schema(kind: str) -> dict:
    return json.loads((SCHEMA_DIR / f"{kind}.schema.json").read_text(encoding="utf-8"))


# Why a midwife withdraws an exam: the page's fixed list, defined once (the schema's enum).
WITHDRAWAL_REASONS = tuple(load_schema("withdrawal")["properties"]["reason"]["enum"])


class PayloadError(ValueError):
    """A message that cannot be parsed within the bounds; the text is the reason."""


def json_depth(data: bytes) -> int:
    """The deepest nesting of ``[`` and ``{`` in JSON text, found without parsing it (string
    contents are skipped), so a reader can refuse a deep payload before any recursion."""
    stripped = _JSON_STRING.sub(b'""', data)
    depth = deepest = 0
    for byte in stripped.translate(None, _NOT_BRACKETS):
        if byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _no_constant(name: str):
    raise PayloadError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise PayloadError(f"number {text[:24]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise PayloadError(f"integer of {len(text)} digits is out of range")
    return int(text)


def _unique_keys(pairs: list) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise PayloadError(f"duplicate key {dup[:40]!r}")
    return out


def loads_bounded(data: bytes, max_bytes: int, max_depth: int = MAX_DEPTH):
    """JSON from untrusted bytes, refused (``PayloadError`` with the reason) when it is
    larger than ``max_bytes``, nested deeper than ``max_depth``, not UTF-8, or holds NaN,
    infinities, out-of-range numbers or a key twice. Size and depth are checked on the raw
    bytes, before ``json.loads`` could recurse."""
    if len(data) > max_bytes:
        raise PayloadError(f"oversize: {len(data)} bytes > {max_bytes}")
    depth = json_depth(data)
    if depth > max_depth:
        raise PayloadError(f"nested {depth} deep, more than {max_depth}")
    try:
        text = data.decode("utf-8")
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float,
                          parse_int=_bounded_int, object_pairs_hook=_unique_keys)
    except PayloadError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        lines = str(exc).splitlines()
        raise PayloadError(f"bad JSON: {lines[0][:200] if lines else type(exc).__name__}") \
            from None


def id_pattern(field: str) -> re.Pattern:
    """What a `device_id` or `clinic_id` must match, from the message schema itself: the
    device checks its own ids at start, and the collector a topic's device, against the
    rule every message is then checked against (one definition, in wire/schemas/)."""
    return _pattern(load_schema("exam")["properties"][field]["pattern"])


def finite_number(value: object) -> bool:
    """A real number: not a bool (True is 1 to Python), not NaN nor an infinity, nor an
    integer too large for a float. What a device reads back from disk or a hostile file
    may be any of those."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond a float (10**400): no number a field holds
        return False


def floor_digits(value: float, digits: int) -> float:
    """`value` cut (not rounded) to `digits` decimals. A quality or confidence is held
    against thresholds at the district (the capture bar of 0.5 on the quality page):
    rounded, a best frame of 0.4996 the device did not capture (it judges the score
    unrounded) would arrive as 0.5, at the bar; cut, a score under a threshold stays under
    it. Cut from its shortest decimal text, so 0.29 stays 0.29 (0.29 * 100 is 28.99...)."""
    if not math.isfinite(value) or abs(value) >= 1e15:
        # The schema check refuses it (a damaged journal row read back); Decimal's 28 digits
        # could not cut it (InvalidOperation, which no caller expects).
        return value
    return float(Decimal(repr(float(value))).quantize(Decimal(1).scaleb(-digits), ROUND_FLOOR))


def number_or_none(value: object) -> float | None:
    """A value read back from disk or the wire as a float where it is a real number
    (`finite_number`), else None."""
    return float(value) if finite_number(value) else None


def wall_ts_or_none(value: object) -> float | None:
    """A wall-clock time read back from disk or the wire (seconds since 1970, before 2100,
    as the schemas bound it) as a float, else None: anything outside is damage."""
    number = number_or_none(value)
    return number if number is not None and 0 <= number <= MAX_WALL_TS else None


def _size_text(n: int) -> str:
    return f"{n >> 20} MiB" if n and not n % (1 << 20) else f"{n} bytes"


def open_regular_file(path: Path | str) -> BinaryIO:
    """A file given by someone else, opened for reading only if it is a regular file: a
    FIFO is opened without waiting for a writer (O_NONBLOCK, no effect on a file) and
    refused, as are a folder and a device (/dev/zero passes any size check). The check is
    on what was opened, so a file swapped in between cannot pass it. FileNotFoundError when
    it is missing, ``PayloadError`` when it is not a regular file, OSError else."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise PayloadError("a folder, not a file" if stat.S_ISDIR(mode)
                           else "not a regular file")
    return os.fdopen(fd, "rb")


def read_regular_file(path: Path | str, max_bytes: int) -> tuple[bytes, os.stat_result]:
    """A file given by someone else (a config, a CSV, a key): its bytes, at most
    `max_bytes`, and its stat (`open_regular_file`). ``PayloadError`` also when it is too
    large."""
    with open_regular_file(path) as handle:
        st = os.fstat(handle.fileno())
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadError(f"too large: more than {_size_text(max_bytes)}")
    return data, st


def read_state_json(path: Path | str, max_bytes: int, max_depth: int) -> object:
    """A JSON file the device wrote itself (a status, the fleet's state), read back as
    hostile input: a regular file of at most `max_bytes`, nested at most `max_depth`
    (checked on the bytes, before any recursion). FileNotFoundError when it is missing,
    ``PayloadError`` (the reason, one line) when it cannot be read or is no JSON. Unlike
    `loads_bounded`, a value JSON holds but the device never writes (Infinity, a key
    twice) is kept for the caller to mend field by field: one flipped value must not cost
    the whole file (a fleet trial, and with it its rollback)."""
    try:
        data, _ = read_regular_file(path, max_bytes)
    except (FileNotFoundError, PayloadError):
        raise
    except (OSError, ValueError) as exc:  # not readable; a NUL in the name
        raise PayloadError(read_failure(exc)) from None
    depth = json_depth(data)
    if depth > max_depth:
        raise PayloadError(f"nested {depth} deep, more than {max_depth}")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PayloadError(f"not JSON: {_first_line(exc)[:120]}") from None


def sqlite_uri(path: Path | str, mode: str = "ro") -> str:
    """The URI that opens a SQLite file in `mode` ("ro": read-only; "rwc"), from its path's
    bytes: a folder name with '?', '#' or '%' in it, or one that is not UTF-8, opens the
    file it names (pass `uri=True`)."""
    return "file:" + urllib.parse.quote(os.fsencode(Path(path).resolve())) + f"?mode={mode}"


# TOML's integers are 64-bit signed (the spec: one that is not must be an error). Python
# reads any size: a hex literal of 200,000 digits is a 800,000-bit int, and a decimal one
# over sys.get_int_max_str_digits() (4,300) digits is a plain ValueError out of tomllib.
TOML_INT_MIN, TOML_INT_MAX = -(2 ** 63), 2 ** 63 - 1


def read_toml_bounded(path: Path, max_bytes: int, max_depth: int = MAX_DEPTH) -> dict:
    """A TOML file that may be broken or hostile (a device config, the exam protocols, the
    quality rules): FileNotFoundError when it is missing, else ``PayloadError`` with the
    reason when it is not a regular file (a FIFO would be waited on for ever), larger than
    ``max_bytes`` (only that much is read), not UTF-8, not TOML, nested deeper than
    ``max_depth``, or holding an integer outside TOML's 64 bits. tomllib recurses on
    nested arrays and inline tables, so 20,000 brackets are a RecursionError unless caught
    here, and converts a 5,000-digit integer with int(), whose ValueError is no
    TOMLDecodeError."""
    data, _ = read_regular_file(path, max_bytes)
    try:
        text = data.decode("utf-8")
        value = tomllib.loads(text)
    except RecursionError:
        raise PayloadError(f"not valid TOML (nested more than {max_depth} deep)") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PayloadError(f"not valid TOML ({_first_line(exc)})") from None
    except ValueError as exc:  # int()'s digit limit: tomllib lets it through as it is
        raise PayloadError(f"not valid TOML ({_long_integer(text) or _first_line(exc)})") \
            from None
    _check_toml_value(value, max_depth)
    return value


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def _long_integer(text: str) -> str | None:
    """Where the integer too long for int() is, as the reason of a refusal."""
    found = re.search(rf"[0-9_]{{{_int_digit_limit() + 1},}}", text)
    if found is None:
        return None
    line = text.count("\n", 0, found.start()) + 1
    return (f"integer too long: more than {_int_digit_limit()} digits, at line {line}; "
            "TOML integers are 64-bit")


def _int_digit_limit() -> int:
    return sys.get_int_max_str_digits() or 4300  # 0: no limit (then int() never refuses)


def _check_toml_value(value, max_depth: int) -> None:
    """Nesting depth and integer range of parsed TOML, walked without recursion:
    ``PayloadError`` names the first key whose integer is out of TOML's 64 bits. Each item
    keeps only its parent and key (its name is made on a refusal alone): a 100 kB key over
    a list of 50,000 items must not be 50,000 copies of it."""
    stack: list[tuple[object, int, tuple | None]] = [(value, 1, None)]
    while stack:
        item, depth, node = stack.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                raise PayloadError(f"not valid TOML (nested more than {max_depth} deep)")
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            stack.extend((v, depth + 1, (node, k)) for k, v in pairs)
        elif isinstance(item, int) and not isinstance(item, bool) \
                and not TOML_INT_MIN <= item <= TOML_INT_MAX:
            raise PayloadError(f"not valid TOML (integer too large at {_key_text(node)}: "
                               "TOML integers are 64-bit)")


def _key_text(node: tuple | None) -> str:
    """The dotted key of a (parent, key) chain as one short printable piece of a line (a
    key may be 100 kB)."""
    parts: list[str] = []
    while node is not None:
        node, key = node
        parts.append(f"[{key}]" if isinstance(key, int) else
                     "." + (key if len(key) <= 40 else key[:37] + "..."))
    where = "".join(reversed(parts)).lstrip(".")
    return printable(where if len(where) <= 120 else where[:117] + "...")


_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool)
    or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, int) and not isinstance(v, bool)
    or (isinstance(v, float) and math.isfinite(v)),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def validate(instance, schema: dict, path: str = "$") -> list[str]:
    """Errors of ``instance`` against a draft 2020-12 subset: type, const, enum, required,
    properties, additionalProperties, patternProperties, propertyNames, maxProperties,
    min/maxLength, pattern, minimum/maximum, prefixItems, items, min/maxItems, uniqueItems,
    $defs/$ref.

    Bounded: an instance nested deeper than ``MAX_DEPTH`` or with more than ``MAX_NODES``
    values is refused with one error, never walked, and non-finite numbers are no number."""
    budget = [MAX_NODES]
    return _validate(instance, schema, path, schema, 0, budget)


def _validate(v, s: dict, path: str, root: dict, depth: int = 0,
              budget: list | None = None) -> list[str]:
    if depth > MAX_DEPTH:
        return [f"{path}: nested deeper than {MAX_DEPTH}"]
    if budget is not None:
        budget[0] -= 1
        if budget[0] < 0:
            return [f"{path}: more than {MAX_NODES} values"] if budget[0] == -1 else []
    depth += 1
    if "$ref" in s:
        ref = s["$ref"]
        if not ref.startswith("#/$defs/"):
            return [f"{path}: unsupported $ref {ref}"]
        s = {**root["$defs"][ref.split("/")[-1]], **{k: x for k, x in s.items() if k != "$ref"}}
    errs: list[str] = []
    t = s.get("type")
    if t is not None:
        types = t if isinstance(t, list) else [t]
        if not any(_TYPES[x](v) for x in types):
            return [f"{path}: expected {'/'.join(types)}, got {type(v).__name__}"]
    if "const" in s and not _equal(v, s["const"]):
        errs.append(f"{path}: must be {s['const']!r}")
    if "enum" in s and not any(_equal(v, x) for x in s["enum"]):
        errs.append(f"{path}: {str(v)[:40]!r} not one of {s['enum']}")
    if isinstance(v, str):
        if len(v) > s.get("maxLength", len(v)):
            errs.append(f"{path}: longer than {s['maxLength']}")
        if len(v) < s.get("minLength", 0):
            errs.append(f"{path}: shorter than {s['minLength']}")
        if "pattern" in s and not _pattern(s["pattern"]).search(v):
            errs.append(f"{path}: does not match {s['pattern']}")
    if isinstance(v, int | float) and not isinstance(v, bool):
        if "minimum" in s and v < s["minimum"]:
            errs.append(f"{path}: below {s['minimum']}")
        if "maximum" in s and v > s["maximum"]:
            errs.append(f"{path}: above {s['maximum']}")
    if isinstance(v, list):
        if len(v) > s.get("maxItems", len(v)):
            errs.append(f"{path}: more than {s['maxItems']} items")
        if len(v) < s.get("minItems", 0):
            errs.append(f"{path}: fewer than {s['minItems']} items")
        twice = _twice(v) if s.get("uniqueItems") is True else None
        if twice is not None:
            errs.append(f"{path}: {str(twice)[:40]!r} is listed twice")
        prefix = s.get("prefixItems", [])
        for i, item in enumerate(v):
            sub = prefix[i] if i < len(prefix) else s.get("items", True)
            if sub is False:
                errs.append(f"{path}: unexpected item {i}")
            elif isinstance(sub, dict):
                errs += _validate(item, sub, f"{path}[{i}]", root, depth, budget)
    if isinstance(v, dict):
        for key in s.get("required", []):
            if key not in v:
                errs.append(f"{path}: missing {key}")
        if len(v) > s.get("maxProperties", len(v)):
            errs.append(f"{path}: more than {s['maxProperties']} properties")
        props = s.get("properties", {})
        pprops = s.get("patternProperties", {})
        extra = s.get("additionalProperties", True)
        names = s.get("propertyNames")
        for key, item in v.items():
            sub = f"{path}.{key}"
            if names is not None:
                errs += _validate(key, names, f"{sub}(name)", root, depth, budget)
            matched = False
            if key in props:
                matched = True
                errs += _validate(item, props[key], sub, root, depth, budget)
            for pat, ps in pprops.items():
                if re.search(pat, key):
                    matched = True
                    errs += _validate(item, ps, sub, root, depth, budget)
            if not matched:
                if extra is False:
                    errs.append(f"{path}: unexpected property {key}")
                elif isinstance(extra, dict):
                    errs += _validate(item, extra, sub, root, depth, budget)
    return errs


def _twice(items: list):
    """The first item equal (`_equal`) to one before it, or None. Pairwise, as JSON compares
    (1 and 1.0 alike, true and 1 not): the lists that ask (a checklist's slots) are at most
    a few dozen long (maxItems)."""
    for i, item in enumerate(items):
        if any(_equal(item, before) for before in items[:i]):
            return item
    return None


@cache
def _pattern(text: str) -> re.Pattern:
    """A schema pattern as JSON Schema (ECMA-262) means it: ``$`` is the end of the string.
    Python's ``$`` also matches before a final newline, so "<uuid>\\n" would pass as a
    msg_id and a replayed message would be stored twice under a second key."""
    return re.compile(re.sub(r"(?<!\\)\$", r"\\Z", text))


def _equal(a, b) -> bool:
    """JSON equality: true is not 1 (Python's True == 1 is), 1.0 is 1; lists and objects
    compare member by member. Used for const and enum, whose values are plain."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b


def rule_errors(kind: str, payload: dict) -> list[str]:
    """What a schema cannot say of a message that passed it: an exam's
    `protocol.missing_seen` (the slots found but never good enough) must be slots of its
    `missing`, else the district would count a captured slot as missed. Call only on a
    payload its schema took (the types are then as the schema says)."""
    protocol = payload.get("protocol") if kind == "exam" else None
    if not isinstance(protocol, dict) or "missing_seen" not in protocol:
        return []
    missing = protocol.get("missing") or []
    stray = next((slot for slot in protocol["missing_seen"] if slot not in missing), None)
    if stray is None:
        return []
    return [f"$.protocol.missing_seen: {stray[:40]!r} is not in $.protocol.missing"]


def validate_payload(payload: dict) -> list[str]:
    """Validate a decoded message against the schema of its own ``kind``, then its rules
    (`rule_errors`)."""
    kind = payload.get("kind") if isinstance(payload, dict) else None
    if kind not in KINDS:
        return [f"$.kind: unknown kind {kind!r}"]
    return validate(payload, load_schema(kind)) or rule_errors(kind, payload)
