"""One runtime for every backend; int8 scales handled once; the Edge TPU falls back loudly."""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest

from edge.models.manifest import ModelError, find_manifest, read_manifest
from edge.models.planes import classify_plane
from edge.models.preprocess import prepare
from edge.models.roi import find_roi
from edge.models.runtime import load_model, make_interpreter
from tests.conftest import MODELS, PLANE_MODEL


@pytest.fixture(scope="module")
def head(data_dir):
    return cv2.imread(str(data_dir / "hc18" / "images" / "250_HC.png"))


def test_the_shipped_student_is_int8_end_to_end(head):
    model = load_model(find_manifest(MODELS, PLANE_MODEL), "litert", 2)
    assert model._input["dtype"] == np.int8 and model._output["dtype"] == np.int8
    logits = model.run(prepare(head, find_roi(head), model.manifest.preprocessing))
    assert logits.shape == (1, 14) and logits.dtype == np.float32 and np.isfinite(logits).all()
    plane = classify_plane(model, head, find_roi(head))
    assert plane.top_label in model.manifest.labels
    assert abs(sum(plane.probabilities) - 1.0) < 1e-6


def test_inputs_are_quantized_with_the_model_s_own_scale(head):
    model = load_model(find_manifest(MODELS, PLANE_MODEL), "litert", 1)
    x = prepare(head, find_roi(head), model.manifest.preprocessing)
    model.run(x)
    scale, zero = model._input["quantization"]
    stored = model.interpreter.get_tensor(model._input["index"]).astype(np.float32)
    inside = (x > (-128 - zero) * scale) & (x < (127 - zero) * scale)
    assert np.abs((stored - zero) * scale - x)[inside].max() <= scale / 2 + 1e-6


def test_one_and_two_threads_give_the_same_answer(head):
    manifest = find_manifest(MODELS, PLANE_MODEL)
    x = prepare(head, find_roi(head), manifest.preprocessing)
    one = load_model(manifest, "litert", 1).run(x)
    two = load_model(manifest, "litert", 2).run(x)
    assert np.array_equal(one, two)


def test_edgetpu_without_a_tpu_runs_on_the_cpu_and_says_so(head, caplog):
    manifest = find_manifest(MODELS, PLANE_MODEL)
    x = prepare(head, find_roi(head), manifest.preprocessing)
    with caplog.at_level(logging.WARNING, logger="edge.models.runtime"):
        tpu = load_model(manifest, "edgetpu", 2)
    assert any("Edge TPU delegate unavailable" in r.getMessage() and "on the CPU" in
               r.getMessage() for r in caplog.records)
    assert np.array_equal(tpu.run(x), load_model(manifest, "litert", 2).run(x))


def test_an_unknown_backend_is_refused():
    with pytest.raises(ModelError, match="unknown backend 'cuda'"):
        make_interpreter(MODELS / f"{PLANE_MODEL}.tflite", "cuda")


def test_a_file_that_is_no_model_is_one_line(models_copy):
    (models_copy / "plane_student.tflite").write_bytes(b"not a flatbuffer" * 64)
    with pytest.raises(ModelError, match="plane_student.tflite") as caught:
        make_interpreter(models_copy / "plane_student.tflite")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda m: m.pop("sha256"), "lacks 'sha256'"),
    (lambda m: m["preprocessing"].update(height=100), "disagrees with preprocessing"),
    (lambda m: m["output"].update(kind="scores"), "output.kind"),
])
def test_a_broken_manifest_is_refused_by_name(models_copy, edit, expected):
    path = models_copy / "plane_student.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=expected):
        read_manifest(path)


@pytest.mark.parametrize(("body", "expected"), [
    (b"", "not valid JSON"),
    (b"\xff\xfe not utf-8", "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nested 100000 deep"),
    (b'{"name": "' + b"x" * (2 << 20) + b'"}', "oversize"),
    (b'{"name": "a", "name": "b"}', "duplicate key 'name'"),
    (b"[1, 2]", "must be a JSON object"),
])
def test_a_hostile_manifest_file_is_one_line_naming_it(models_copy, body, expected):
    """Corrupt on disk or crafted: empty, not UTF-8, nested 100,000 deep, megabytes, a key
    twice, not an object. Each is one ModelError naming the file, never a recursion."""
    path = models_copy / "plane_student.json"
    path.write_bytes(body)
    with pytest.raises(ModelError, match=expected) as caught:
        read_manifest(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_the_toolchain_reads_a_broken_manifest_beside_a_model_as_one_line(models_copy):
    from quantize.convert import open_for_toolchain

    (models_copy / "plane_student.json").write_bytes(b"{" * 50_000)
    with pytest.raises(ModelError, match="plane_student.json: manifest is not valid JSON"):
        open_for_toolchain(models_copy / "plane_student.tflite")


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda m: m.update(metrics=[1, 2]), "metrics must be an object"),
    (lambda m: m.update(size_bytes="big"), "size_bytes must be a whole number of bytes"),
    (lambda m: m["labels"].__setitem__(0, "x" * 500_000), "labels must be a list of 1-1000"),
    (lambda m: m.update(task="plane\nclassification"), "task must be a non-empty line"),
    (lambda m: m["thresholds"].update({"k" * 100_000: "x"}), "thresholds.kkkk"),
    (lambda m: m["preprocessing"].update({"z" * 200_000: 1}), "preprocessing: unknown key"),
    (lambda m: m.update(manifest_version=[2] * 100_000), "manifest_version [2, 2"),
])
def test_sonoedge_models_names_a_hostile_manifest_field_in_one_short_line(models_copy, edit,
                                                                           expected):
    """Fields `sonoedge models` prints (metrics, size_bytes) are checked like the rest, and
    a label, key or value of any size is named in one line of a readable length."""
    from tests.cli_run import sonoedge

    path = models_copy / "plane_student.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    out = sonoedge("models", "--models-dir", str(models_copy))
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("sonoedge: ")]
    assert len(lines) == 1, out.stderr[-2000:]
    assert lines[0].startswith(f"sonoedge: {path}: ") and expected in lines[0], lines[0][:400]
    assert len(lines[0]) < 400, len(lines[0])


def test_the_runtime_s_banner_is_not_the_first_thing_a_midwife_s_terminal_shows(data_dir):
    """LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." on the
    process's stderr (C++, no Python logging, no switch to turn it off) before any line of
    ours: `make run` opened on it. Our log keeps it at debug level."""
    import subprocess
    import sys

    frame = data_dir / "hc18" / "images" / "250_HC.png"
    quiet = subprocess.run([sys.executable, "-m", "edge.cli", "score", str(frame)],
                           capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0, quiet.stderr
    assert "XNNPACK" not in quiet.stderr and "Traceback" not in quiet.stderr
    loud = subprocess.run([sys.executable, "-m", "edge.cli", "-v", "score", str(frame)],
                          capture_output=True, text=True, timeout=120)
    assert loud.returncode == 0 and "Created TensorFlow Lite XNNPACK delegate" in loud.stderr


def test_whatever_else_the_runtime_says_while_a_model_loads_still_reaches_stderr(capfd):
    """Only the runtime's known banner lines are taken from stderr; a warning from the
    runtime or another thread's output while a model loads passes through unchanged."""
    import os

    from edge.models.runtime import runtime_banner_to_log

    with runtime_banner_to_log():
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"WARNING: a delegate could not be applied\n")
        os.write(2, b"half a line without its end")
    err = capfd.readouterr().err
    assert "XNNPACK" not in err
    assert "WARNING: a delegate could not be applied\n" in err
    assert "half a line without its end" in err
