"""`[biometry] head_planes` names planes of the plane model, or says it does not.

A name the installed model does not know (a typo such as "Brain (TV)" for "Brain (Tv.)",
or a bundle trained on other classes) was taken without a word: the head was never
measured on that plane, nor shown on the midwife's image, and with no name known never at
all. The long-running loop now says so once and goes on (as for a protocol slot the model
cannot fill); `sonoedge exam` refuses with one line.
"""

from __future__ import annotations

import pytest

from edge.exam.protocol import ProtocolError, check_head_planes
from tests.cli_run import one_line_error, sonoedge

LABELS = ("Background", "Brain (Cb.)", "Brain (Tv.)", "4CH")


def test_every_name_known_is_silent_and_each_unknown_name_is_said_with_its_effect():
    check_head_planes(("Brain (Tv.)", "Brain (Cb.)"), LABELS, "m@1")
    check_head_planes((), LABELS, "m@1")  # biometry off on purpose: nothing to say
    with pytest.raises(ProtocolError, match=r"'Brain \(TV\)' is not a plane of the plane "
                                            r"model m@1, so no head is ever measured"):
        check_head_planes(("Brain (TV)",), LABELS, "m@1")
    with pytest.raises(ProtocolError, match=r"'Brain \(cb\)' is not a plane .* so the head "
                                            r"is never measured on it; its planes: "
                                            r"'Background', 'Brain \(Cb.\)'"):
        check_head_planes(("Brain (Tv.)", "Brain (cb)"), LABELS, "m@1")


def _config(tmp_path, planes: str):
    path = tmp_path / "device.toml"
    path.write_text(f"[biometry]\nhead_planes = {planes}\npixel_size_mm = 0.15\n")
    return path


def test_the_loop_says_once_which_head_plane_its_model_does_not_name(tmp_path, data_dir):
    head = data_dir / "hc18" / "images" / "010_HC.png"
    said = []
    for planes in ('["Brain (TV)"]', '["Brain (Tv.)", "Brain (Cb.)"]'):
        proc = sonoedge("run", "--config", str(_config(tmp_path, planes)), "--source",
                        str(head), "--state-dir", str(tmp_path / "state"), "--once")
        assert proc.returncode == 0, proc.stderr
        said.append([line for line in proc.stderr.splitlines() if "head_planes" in line])
    assert len(said[0]) == 1, said[0]
    assert "'Brain (TV)'" in said[0][0] and "plane_student@" in said[0][0], said[0]
    assert "no head is ever measured" in said[0][0] and "'Brain (Tv.)'" in said[0][0]
    assert said[1] == [], said[1]  # the shipped names: nothing said


def test_sonoedge_exam_refuses_a_head_plane_its_model_does_not_name(tmp_path, data_dir):
    head = data_dir / "hc18" / "images" / "010_HC.png"
    proc = sonoedge("exam", str(head), "--config",
                    str(_config(tmp_path, '["Brain (Tv.)", "Brain (cb)"]')))
    assert proc.returncode == 2, proc.stderr
    one_line_error(proc, "biometry.head_planes", "'Brain (cb)'", "plane_student@")
