"""Review of the models and exam inputs (session 29): hostile manifests, configs, files.

Each test states the behaviour as a specification: bad input is one `sonoedge: error` line
naming the file or the field, never a traceback, and `sonoedge models` refuses what
`score` and `run` refuse.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli_run import one_line_error, sonoedge
from tests.conftest import DATA, REPO

HEAD = DATA / "hc18" / "images" / "000_HC.png"


def _edit(path: Path, change) -> None:
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


def test_a_plane_model_that_is_not_a_plane_classifier_is_one_line(tmp_path, models_copy):
    # `[models] plane` naming the head segmenter: its per-pixel map was read as plane scores
    # and the first frame ended in an IndexError traceback.
    config = tmp_path / "device.toml"
    config.write_text(f'[models]\ndir = "{models_copy}"\nplane = "head_segmenter"\n')
    for verb in ("score", "exam"):
        proc = sonoedge(verb, "--config", str(config), str(HEAD))
        assert proc.returncode == 2, proc.stderr
        one_line_error(proc, "head_segmenter.json", "task", "plane_classification")
        assert proc.stdout == ""
    pixel_sizes = tmp_path / "px.csv"
    pixel_sizes.write_text("filename,pixel size(mm)\n000_HC.png,0.1\n")
    proc = sonoedge("biometry", str(HEAD.parent), "--pixel-sizes", str(pixel_sizes),
                    "--out", str(tmp_path / "out.csv"), "--config", str(config))
    assert proc.returncode == 2, proc.stderr
    one_line_error(proc, "head_segmenter.json", "task")


def test_models_refuses_what_score_refuses(models_copy):
    # `sonoedge models` says it checks each model "as run and score check it"; it printed
    # "ok" for a plane model whose class maps break their contract and for a segmenter whose
    # biometry block is out of range, both of which `score` refuses at start-up.
    _edit(models_copy / "plane_student.json",
          lambda raw: raw["outputs"][1].__setitem__("layout", "NHWC"))
    _edit(models_copy / "head_segmenter.json",
          lambda raw: raw["biometry"].__setitem__("probability_threshold", 5))
    _edit(models_copy / "quality_head.json", lambda raw: raw.__setitem__("task", "plane"))
    proc = sonoedge("models", "--models-dir", str(models_copy))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("sonoedge: ")]
    assert any("plane_student.json" in e and "class_maps" in e for e in errors), errors
    assert any("head_segmenter.json" in e and "probability_threshold" in e for e in errors)
    assert any("quality_head.json" in e and "task" in e for e in errors), errors
    assert " ok" not in proc.stdout, proc.stdout
    score = sonoedge("score", "--models-dir", str(models_copy), str(HEAD))
    assert score.returncode == 2
    one_line_error(score, "plane_student.json", "class_maps")


def test_a_huge_outputs_declaration_is_one_short_line(models_copy):
    # A manifest of 300 kB may declare an output's shape as 100,000 numbers (or a layout of
    # 300,000 characters): the error quoted them whole, one 300 kB line on the console and
    # in the log, where every other manifest field is quoted cut to a readable length.
    def long_outputs(which: int, key: str, value) -> None:
        _edit(models_copy / "plane_student.json",
              lambda raw: raw["outputs"][which].__setitem__(key, value))

    for which, key, value in ((0, "shape", [1] * 100_000), (1, "shape", [1] * 100_000),
                              (1, "layout", "N" * 300_000)):
        original = (models_copy / "plane_student.json").read_text()
        long_outputs(which, key, value)
        for verb in (("models", "--models-dir", str(models_copy)),
                     ("score", "--models-dir", str(models_copy), str(HEAD))):
            proc = sonoedge(*verb)
            assert proc.returncode in (1, 2) and "Traceback" not in proc.stderr
            lines = [line for line in proc.stderr.splitlines() if "plane_student" in line]
            assert lines and all(len(line) < 400 for line in lines), \
                (key, [len(line) for line in lines])
        (models_copy / "plane_student.json").write_text(original)


def test_an_anatomy_criterion_the_rules_do_not_have_is_one_line(tmp_path):
    # `anatomy_criteria = ["head_fond"]` (or a site's rules file without head_found) was
    # taken without a word: a criterion never judged never fails, so the guard that keeps
    # a thorax named a head plane out of the head slot was off.
    shipped = (REPO / "edge" / "exam" / "protocols.toml").read_text()
    assert 'anatomy_criteria = ["head_found"]' in shipped
    (tmp_path / "protocols.toml").write_text(
        shipped.replace('anatomy_criteria = ["head_found"]', 'anatomy_criteria = ["head_fond"]'))
    config = tmp_path / "device.toml"
    config.write_text(f'[models]\ndir = "{REPO / "models"}"\n'
                      '[exam]\nprotocols_file = "protocols.toml"\n')
    proc = sonoedge("exam", "--config", str(config), str(HEAD))
    assert proc.returncode == 2, proc.stderr
    one_line_error(proc, "anatomy_criteria", "'head_fond'", "quality_rules.toml")
    # The box itself is said it, once, and goes on (as for a protocol's plane its model
    # does not name): a midwife in the clinic keeps a tool that measures and says why the
    # guard is off, rather than none.
    proc = sonoedge("run", "--config", str(config), "--source", str(HEAD), "--once",
                    "--state-dir", str(tmp_path / "state"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    said = [line for line in proc.stderr.splitlines() if "anatomy_criteria" in line]
    assert len(said) == 1 and "'head_fond'" in said[0] and "WARNING" in said[0], said
    # The shipped pair agrees, and with the audit off there is nothing to check against.
    off = tmp_path / "off.toml"
    off.write_text(config.read_text() + "[quality]\nenabled = false\n")
    proc = sonoedge("exam", "--config", str(off), str(HEAD))
    assert proc.returncode == 0, proc.stderr


def test_an_input_shape_mismatch_names_plain_numbers(models_copy):
    # A manifest describing another model's input: the line read "input shape
    # (np.int32(1), np.int32(1), np.int32(224), np.int32(288)) differs from its manifest".
    def bigger(raw: dict) -> None:
        raw["input"]["shape"] = [1, 1, 256, 320]
        raw["preprocessing"].update(height=256, width=320)

    _edit(models_copy / "plane_student.json", bigger)
    proc = sonoedge("score", "--models-dir", str(models_copy), str(HEAD))
    assert proc.returncode == 2
    line = one_line_error(proc, "plane_student.tflite", "(1, 1, 224, 288)", "(1, 1, 256, 320)")
    assert "np." not in line, line
