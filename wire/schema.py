"""The contract between device and collector: message kinds, label vocabulary, JSON Schemas.

The JSON Schemas in ``wire/schemas/`` are the one definition of what an ``exam``, ``health``
or ``status`` message may hold. The device checks every payload against them before it is
stored, and the collector checks every payload it receives. ``validate()`` is a small draft
2020-12 subset validator, bounded in depth, so neither side needs ``jsonschema`` at run time
(the tests cross-check with it). Neither side imports the other: both import this.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

SCHEMA_VERSION = 1
KINDS = ("exam", "health", "status")
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
EXAM_MAX_BYTES = 1024
PLANES = (
    "3VV", "4CH", "Abdominal", "Background", "Brain (Cb.)", "Brain (Tv.)", "Femur", "Kidneys",
    "Lips", "LVOT", "Profile", "RVOT", "Spine (cor.)", "Spine (sag.)",
)
# Frames the plane model abstained on are counted as such: a district site must be able to
# tell "the model was unsure" from "a plane outside the list".
UNCERTAIN = "uncertain"


@cache
def load_schema(kind: str) -> dict:
    return json.loads((SCHEMA_DIR / f"{kind}.schema.json").read_text(encoding="utf-8"))


_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool)
    or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def validate(instance, schema: dict, path: str = "$") -> list[str]:
    """Errors of ``instance`` against a draft 2020-12 subset: type, const, enum, required,
    properties, additionalProperties, patternProperties, propertyNames, maxProperties,
    min/maxLength, pattern, minimum/maximum, prefixItems, items, min/maxItems, $defs/$ref."""
    return _validate(instance, schema, path, schema)


def _validate(v, s: dict, path: str, root: dict) -> list[str]:
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
    if "const" in s and v != s["const"]:
        errs.append(f"{path}: must be {s['const']!r}")
    if "enum" in s and v not in s["enum"]:
        errs.append(f"{path}: {v!r} not one of {s['enum']}")
    if isinstance(v, str):
        if len(v) > s.get("maxLength", len(v)):
            errs.append(f"{path}: longer than {s['maxLength']}")
        if len(v) < s.get("minLength", 0):
            errs.append(f"{path}: shorter than {s['minLength']}")
        if "pattern" in s and not re.search(s["pattern"], v):
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
        prefix = s.get("prefixItems", [])
        for i, item in enumerate(v):
            sub = prefix[i] if i < len(prefix) else s.get("items", True)
            if sub is False:
                errs.append(f"{path}: unexpected item {i}")
            elif isinstance(sub, dict):
                errs += _validate(item, sub, f"{path}[{i}]", root)
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
                errs += _validate(key, names, f"{sub}(name)", root)
            matched = False
            if key in props:
                matched = True
                errs += _validate(item, props[key], sub, root)
            for pat, ps in pprops.items():
                if re.search(pat, key):
                    matched = True
                    errs += _validate(item, ps, sub, root)
            if not matched:
                if extra is False:
                    errs.append(f"{path}: unexpected property {key}")
                elif isinstance(extra, dict):
                    errs += _validate(item, extra, sub, root)
    return errs


def validate_payload(payload: dict) -> list[str]:
    """Validate a decoded message against the schema of its own ``kind``."""
    kind = payload.get("kind") if isinstance(payload, dict) else None
    if kind not in KINDS:
        return [f"$.kind: unknown kind {kind!r}"]
    return validate(payload, load_schema(kind))
