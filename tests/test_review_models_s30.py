"""Review of the models room (session 30): the bytes that run are the bytes verified.

A model file was hashed against its manifest, then opened again by its path for the
runtime: whatever lay at that path a moment later (a symlink retargeted, an update landing)
ran without a check.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from edge.models import runtime
from edge.models.manifest import ModelError, read_manifest
from edge.models.runtime import load_model


def test_the_model_that_runs_is_the_one_whose_hash_was_checked(models_copy, monkeypatch):
    manifest = read_manifest(models_copy / "plane_student.json")
    target = models_copy / "plane_student.tflite"
    real = dict(runtime.BACKENDS)

    def swapped_after_the_check(*args):
        # Between the check and the load another model takes the file's place.
        os.replace(models_copy / "quality_head.tflite", target)
        return real["litert"](*args)

    monkeypatch.setitem(runtime.BACKENDS, "litert", swapped_after_the_check)
    model = load_model(manifest, "litert", 1)
    assert tuple(model._input["shape"]) == manifest.input_shape
    scores = model.run(np.zeros(manifest.input_shape, np.float32))
    assert scores.shape[-1] == len(manifest.labels)


def test_a_model_file_that_is_a_fifo_or_too_large_is_one_line(models_copy, monkeypatch):
    manifest = read_manifest(models_copy / "plane_student.json")
    target = models_copy / "plane_student.tflite"
    target.unlink()
    os.mkfifo(target)  # would block a plain open() forever
    with pytest.raises(ModelError, match="plane_student.tflite: cannot read model file "
                                         r"\(not a regular file\)"):
        load_model(manifest, "litert", 1)
    target.unlink()
    target.write_bytes(b"\0" * 2048)
    monkeypatch.setattr("edge.models.manifest.MAX_MODEL_BYTES", 1024)
    with pytest.raises(ModelError, match="plane_student.tflite: cannot read model file "
                                         r"\(too large"):
        load_model(manifest, "litert", 1)


def test_an_empty_model_file_its_manifest_vouches_for_is_one_line_that_says_so(models_copy):
    # LiteRT took the empty bytes for none given: "`model_path` or `model_content` must be
    # specified", a line that names no fault of the file.
    import hashlib
    import json

    path = models_copy / "plane_student.json"
    raw = json.loads(path.read_text())
    raw["sha256"] = hashlib.sha256(b"").hexdigest()
    path.write_text(json.dumps(raw))
    (models_copy / "plane_student.tflite").write_bytes(b"")
    with pytest.raises(ModelError, match=r"plane_student.tflite: model file is empty$"):
        load_model(read_manifest(path), "litert", 1)
