"""Hostile rules, protocols and manifests (session 31): every number is tied to what it can mean.

A fuzzing audit found the quality rules accepting bounds a measure can never reach (a
severity of 0-1 "passing" only below -1, a fraction needing 1e308), priorities of -1 or
10**40, blank advice and a source with a NUL in it; protocols with a blank title or slot;
a manifest whose `manifest_version` was `true`, or whose `preprocessing.scale` of 1e308
fed the model nothing but infinities; and a path with a NUL in it that escaped every
loader as a bare ``ValueError: embedded null byte``. Each is one line naming the file and
the field now.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from edge.exam.protocol import PROTOCOLS_FILE, ProtocolError, load_protocols
from edge.models.manifest import MAX_INPUT_SIDE, SCALE_RANGE, ModelError, read_manifest
from edge.models.preprocess import FrameViews
from edge.models.quality import (
    MAX_CRITERIA,
    MAX_SOURCE_CHARS,
    MEASURE_RANGES,
    MEASURES,
    RULES_FILE,
    RulesError,
    load_rules,
)

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"


def _set_key(text: str, table: str, key: str, value: str) -> str:
    """The TOML `text` with `key = value` in `[table]`: the line replaced, or added."""
    lines = text.splitlines()
    start = lines.index(f"[{table}]")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")),
               len(lines))
    for i in range(start + 1, end):
        if re.match(rf"{re.escape(key)}\s*=", lines[i]):
            lines[i] = f"{key} = {value}"
            break
    else:
        lines.insert(start + 1, f"{key} = {value}")
    return "\n".join(lines) + "\n"


def _set_top(text: str, key: str, value: str) -> str:
    """The TOML `text` with its top-level `key = value` line replaced."""
    new, count = re.subn(rf"(?m)^{re.escape(key)} = .*$", f"{key} = {value}", text, count=1)
    assert count == 1, key
    return new


def _one_line(message: str, path: Path, *needles: str) -> None:
    assert str(path) in message, message
    assert "\n" not in message and message.isprintable(), message
    for needle in needles:
        assert needle in message, (needle, message)


def _refused_rules(tmp_path: Path, text: str, *needles: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RulesError) as err:
        load_rules(path)
    _one_line(str(err.value), path, *needles)


SHIPPED_RULES = RULES_FILE.read_text(encoding="utf-8")
SHIPPED_PROTOCOLS = PROTOCOLS_FILE.read_text(encoding="utf-8")


# --------------------------------------------------------------- 1. unopenable paths
def test_a_rules_path_with_a_nul_is_one_line_naming_the_file(tmp_path):
    path = str(tmp_path / "a\x00b.toml")
    with pytest.raises(RulesError) as err:
        load_rules(path)
    message = str(err.value)
    assert str(tmp_path) in message and "\\x00" in message  # named, the NUL shown escaped
    assert "\n" not in message and message.isprintable(), message


def test_a_protocols_path_with_a_nul_is_one_line_naming_the_file(tmp_path):
    path = str(tmp_path / "a\x00b.toml")
    with pytest.raises(ProtocolError) as err:
        load_protocols(path)
    message = str(err.value)
    assert str(tmp_path) in message and "\\x00" in message
    assert "\n" not in message and message.isprintable(), message


def test_a_manifest_path_with_a_nul_is_one_line_naming_the_file(tmp_path):
    with pytest.raises(ModelError) as err:
        read_manifest(tmp_path / "a\x00b.json")
    message = str(err.value)
    assert str(tmp_path) in message and "\\x00" in message
    assert "\n" not in message and message.isprintable(), message


def test_a_manifest_that_is_a_fifo_or_a_folder_is_one_line_not_a_wait(tmp_path):
    # read_manifest opened it with a plain open(): a FIFO no one writes to blocked it.
    fifo, folder = tmp_path / "plane_student.json", tmp_path / "head_segmenter.json"
    os.mkfifo(fifo)
    folder.mkdir()
    for path, reason in ((fifo, "not a regular file"), (folder, "a folder, not a file")):
        outcome: list[BaseException] = []

        def read(path=path, outcome=outcome):
            try:
                read_manifest(path)
            except BaseException as exc:  # noqa: BLE001 - judged below, in the test's thread
                outcome.append(exc)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(10)
        if reader.is_alive():  # release the reader: a writer opens the FIFO, then closes it
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            reader.join(10)
            pytest.fail(f"read_manifest waited on {path.name}, a FIFO no one writes to")
        assert outcome and isinstance(outcome[0], ModelError), outcome
        _one_line(str(outcome[0]), path, reason)


@pytest.mark.parametrize("which", ["rules", "protocols"])
def test_a_number_too_long_to_parse_is_one_line_naming_the_file(tmp_path, which):
    # tomllib turns an integer of 5000 digits into Python's ValueError "Exceeds the limit
    # (4300 digits) for integer string conversion", which no loader caught.
    path = tmp_path / f"{which}.toml"
    shipped, loader, error = ((SHIPPED_RULES, load_rules, RulesError) if which == "rules"
                              else (SHIPPED_PROTOCOLS, load_protocols, ProtocolError))
    path.write_text(_set_top(shipped, "version", "1" * 5000), encoding="utf-8")
    with pytest.raises(error) as err:
        loader(path)
    _one_line(str(err.value), path, "digits")


# ----------------------------------------------------------------- 2. quality rules
def test_every_measure_states_the_range_its_bounds_may_take_once():
    assert set(MEASURE_RANGES) == set(MEASURES)
    for measure, (low, high) in MEASURE_RANGES.items():
        assert math.isfinite(low) and math.isfinite(high) and low < high, measure


def test_the_shipped_rules_lie_within_every_range():
    rules = load_rules()
    for rule in rules.criteria:
        low, high = MEASURE_RANGES[rule.measure]
        for bound in (rule.min, rule.max):
            assert bound is None or low <= bound <= high, rule.name
        assert 0 < rule.soft <= high - low and 1 <= rule.priority <= MAX_CRITERIA, rule.name
        assert rule.ok.strip() and rule.source.strip() and rule.source.isprintable()
        assert len(rule.source) <= MAX_SOURCE_CHARS, rule.name


@pytest.mark.parametrize("criterion,key,value", [
    ("noise", "max", "-1.0"),  # a severity 0 (clean) .. 1 (severe): never passes
    ("noise", "max", "1.5"),
    ("sector_cut", "max", "-0.01"),
    ("content", "min", "1e308"),  # a share of pixels: never passes
    ("content", "min", "1.01"),
    ("content", "min", "-0.5"),
    ("gain", "max", "256.0"),  # a grey level of an 8-bit view
    ("gain", "min", "-1.0"),
    ("contrast", "min", "2.0"),  # a span of grey levels / 255
    ("sharpness", "min", "100.0"),  # the Laplacian's gain is at most 8: variance x64
    ("frozen", "max", "1e40"),
    ("frozen", "max", "-1"),
    ("plane_confident", "min", "-1.5"),  # a probability minus a probability threshold
    ("head_found", "max", "3.0"),  # 0 none, 1 one skull, 2 several
    ("head_inside", "max", "2.5"),
    ("zoom", "min", "1.5"),
    ("ellipse_regular", "min", "1.01"),  # an overlap (IoU)
    ("centred", "max", "5.0"),  # 1 is the region's edge
])
def test_a_rule_whose_bound_lies_outside_its_measure_is_refused_naming_it(
        tmp_path, criterion, key, value):
    text = _set_key(SHIPPED_RULES, f"criteria.{criterion}", key, value)
    _refused_rules(tmp_path, text, f"criteria.{criterion}.{key}", "outside what")


def test_a_rule_whose_min_is_above_its_max_is_refused_naming_min(tmp_path):
    text = _set_key(_set_key(SHIPPED_RULES, "criteria.gain", "min", "200.0"),
                    "criteria.gain", "max", "100.0")
    _refused_rules(tmp_path, text, "criteria.gain.min", "above", "max")


@pytest.mark.parametrize("value", ["-1", "0", str(MAX_CRITERIA + 1), str(2 ** 63 - 1),
                                   str(10 ** 40)])
def test_a_priority_outside_one_to_the_number_of_criteria_is_refused(tmp_path, value):
    # 1 = told first; a rank among at most MAX_CRITERIA criteria (ties allowed). (10**40 is
    # beyond TOML's 64-bit integers: the TOML reader may refuse it first, naming the key.)
    _refused_rules(tmp_path, _set_key(SHIPPED_RULES, "criteria.gain", "priority", value),
                   "criteria.gain.priority")


@pytest.mark.parametrize("criterion,value", [
    ("content", "1e308"), ("content", "1.5"), ("gain", "256.0"),
    ("frozen", "10000000000000000000000000000000000000000"), ("noise", "2.0"),
])
def test_a_soft_ramp_wider_than_its_measure_is_refused(tmp_path, criterion, value):
    _refused_rules(tmp_path, _set_key(SHIPPED_RULES, f"criteria.{criterion}", "soft", value),
                   f"criteria.{criterion}.soft")


@pytest.mark.parametrize("criterion,key,value", [
    ("content", "ok", '""'), ("content", "ok", '" "'), ("content", "message", '" "'),
    ("gain", "message_low", '"   "'), ("gain", "message_high", '" "'),
    ("frozen", "ok", '"\\u00a0"'),  # a no-break space: blank, and not printable either
])
def test_a_blank_text_in_the_rules_is_refused_naming_its_key(tmp_path, criterion, key, value):
    _refused_rules(tmp_path, _set_key(SHIPPED_RULES, f"criteria.{criterion}", key, value),
                   f"criteria.{criterion}.{key}")


@pytest.mark.parametrize("value", ['" "', '""'])
def test_a_blank_rules_version_is_refused(tmp_path, value):
    _refused_rules(tmp_path, _set_top(SHIPPED_RULES, "version", value), "version")


@pytest.mark.parametrize("value", [
    '"a\\u0000b"', '"ours\\u001b[2Jcleared"', '"one\\nline"', '""', '"  "',
    '"' + "x" * (MAX_SOURCE_CHARS + 1) + '"',
])
def test_a_source_that_is_not_printable_text_within_its_length_is_refused(tmp_path, value):
    _refused_rules(tmp_path, _set_key(SHIPPED_RULES, "criteria.contrast", "source", value),
                   "criteria.contrast.source")


def test_bounds_at_the_edges_of_their_measures_are_taken(tmp_path):
    text = SHIPPED_RULES
    for criterion, key, value in (("noise", "max", "1.0"), ("content", "min", "0.0"),
                                  ("gain", "max", "255.0"), ("plane_confident", "min", "-1.0"),
                                  ("gain", "priority", str(MAX_CRITERIA)),
                                  ("gain", "soft", "255.0"),
                                  ("contrast", "source", '"' + "x" * MAX_SOURCE_CHARS + '"')):
        text = _set_key(text, f"criteria.{criterion}", key, value)
    path = tmp_path / "rules.toml"
    path.write_text(text, encoding="utf-8")
    rules = {r.name: r for r in load_rules(path).criteria}
    assert rules["noise"].max == 1.0 and rules["gain"].priority == MAX_CRITERIA


# ---------------------------------------------------------------------- 3. protocols
@pytest.mark.parametrize("table,key,value,needle", [
    ("protocols.biometry", "title", '" "', "protocols.biometry.title"),
    ("protocols.second-trimester", "title", '"\\t"', "protocols.second-trimester.title"),
    ("protocols.biometry", "planes",
     '[{name = " ", accepts = ["Brain (Tv.)", "Brain (Cb.)"], unsure_head = true}]',
     "protocols.biometry.planes"),
])
def test_a_blank_protocol_title_or_slot_name_is_refused_naming_it(
        tmp_path, table, key, value, needle):
    path = tmp_path / "protocols.toml"
    path.write_text(_set_key(SHIPPED_PROTOCOLS, table, key, value), encoding="utf-8")
    with pytest.raises(ProtocolError) as err:
        load_protocols(path)
    _one_line(str(err.value), path, needle)
    if key == "planes":
        assert "name" in str(err.value)


def test_a_blank_protocols_version_is_refused(tmp_path):
    path = tmp_path / "protocols.toml"
    path.write_text(_set_top(SHIPPED_PROTOCOLS, "version", '"  "'), encoding="utf-8")
    with pytest.raises(ProtocolError) as err:
        load_protocols(path)
    _one_line(str(err.value), path, "version")


def test_the_shipped_protocols_still_load():
    protocols = load_protocols()
    assert {"biometry", "second-trimester"} <= set(protocols)
    assert all(p.title.strip() and all(s.name.strip() for s in p.slots)
               for p in protocols.values())


# ---------------------------------------------------------------------- 4. manifests
def _manifest(tmp_path: Path, name: str = "plane_student", **changes) -> Path:
    raw = json.loads((MODELS / f"{name}.json").read_text())
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        block = raw
        for part in parents:
            block = block[part]
        block[last] = value
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(raw))
    return path


@pytest.mark.parametrize("value", [True, False, 1.0, "1"])
def test_a_manifest_version_that_is_not_the_whole_number_one_is_refused(tmp_path, value):
    # True == 1 in Python, so `true` passed as version 1: a bool is not a number.
    path = _manifest(tmp_path, manifest_version=value)
    with pytest.raises(ModelError) as err:
        read_manifest(path)
    _one_line(str(err.value), path, "manifest_version")


@pytest.mark.parametrize("value", [1e308, 1e-300, 0.0, -1.0, SCALE_RANGE[1] * 1.01,
                                   SCALE_RANGE[0] / 1.01])
def test_a_preprocessing_scale_outside_its_sane_range_is_refused(tmp_path, value):
    path = _manifest(tmp_path, preprocessing__scale=value)
    with pytest.raises(ModelError) as err:
        read_manifest(path)
    _one_line(str(err.value), path, "preprocessing.scale")


@pytest.mark.parametrize("normalise", ["per_image_zscore", "unit"])
@pytest.mark.parametrize("scale", SCALE_RANGE)
def test_within_the_scale_range_the_model_input_stays_finite_and_not_flat(
        tmp_path, scale, normalise):
    path = _manifest(tmp_path, preprocessing__scale=scale, preprocessing__normalise=normalise,
                     preprocessing__roi="full")
    manifest = read_manifest(path)
    spec = manifest.preprocessing
    # The most extreme frame for a z-score: one bright pixel on black, |z| = sqrt(n - 1).
    frame = np.zeros((spec.height, spec.width), np.uint8)
    frame[spec.height // 2, spec.width // 2] = 255
    x = FrameViews(frame, None).prepare(spec)
    assert np.isfinite(x).all() and np.abs(x).max() > 0
    z_max = math.sqrt(MAX_INPUT_SIDE * MAX_INPUT_SIDE - 1)  # the largest input allowed
    assert np.isfinite(np.float32(z_max * SCALE_RANGE[1]))
    # The smallest step of an 8-bit view stays a normal float32, not lost to underflow.
    assert SCALE_RANGE[0] / 255.0 > np.finfo(np.float32).tiny * 1e6


def test_the_shipped_manifests_still_load():
    for path in sorted(MODELS.glob("*.json")):
        manifest = read_manifest(path)
        low, high = SCALE_RANGE
        assert low <= manifest.preprocessing.scale <= high, path.name
        assert manifest.raw.get("manifest_version", 1) == 1


def test_the_teachers_scale_of_255_is_within_the_range(tmp_path):
    # SonoNet's own z-score x 255 ("arbitrary but necessary because the network was trained
    # like this"): the fp32 teacher's manifest carries it.
    path = _manifest(tmp_path, preprocessing__scale=255.0, input__dtype="float32")
    assert read_manifest(path).preprocessing.scale == 255.0


@pytest.mark.parametrize(("side", "key", "value", "needle"), [
    ("input", "dtype", "uint8", "input dtype int8 differs from its manifest 'uint8'"),
    ("output", "dtype", "float32", "output dtype int8 differs from its manifest 'float32'"),
    ("output", "dtype", "banana", "output.dtype must be int8, uint8 or float32"),
    ("input", "layout", "x", "input.layout must be NCHW or NHWC"),
])
def test_a_manifest_that_misstates_its_models_types_is_refused(tmp_path, side, key, value,
                                                               needle):
    """The manifest's input and output types were read and never held against the file:
    a bundle whose manifest said uint8 for an int8 model loaded, and `sonoedge models` and
    the district were told a type the model does not have."""
    import shutil

    from edge.models.runtime import load_model

    for name in ("plane_student.json", "plane_student.tflite"):
        shutil.copyfile(MODELS / name, tmp_path / name)
    path = tmp_path / "plane_student.json"
    raw = json.loads(path.read_text())
    raw[side][key] = value
    path.write_text(json.dumps(raw))
    with pytest.raises(ModelError) as refused:
        load_model(read_manifest(path))
    assert needle in str(refused.value) and "\n" not in str(refused.value), refused.value
