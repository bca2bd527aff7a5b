"""`sonoedge status` is what an installer runs to check a box, and it said nothing of the
screen-shape verdict the box keeps in its state folder (`screen_shape.json`): one who
checked status rather than `run`'s log never learned that heads are not measured because
the grabber squeezes the picture, nor the setting that undoes it. Each remembered screen
is now one line, judged from its remembered reading by the scorer's own rule and wording
(`edge.models.fan`), with the box's settings from --config, else the defaults (said)."""

from __future__ import annotations

import json

from edge.store import screen_shape
from tests.cli_run import sonoedge

PAL = "v4l2:0|720x576"  # a PAL grabber's 4:3 picture, 16:15 pixels: 0.9375 as wide
SQUARE = "grabber|960x720"  # a grabber that keeps the scanner's shape
WIDE = "hdmi0|1280x720"  # a 5:4-ish screen read 1.2: beyond 8%, within a box's 30%


def _shape_lines(text: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("screen shape:"))
    return lines[start:]


def _line_of(lines: list[str], screen: str) -> str:
    source, size = screen.split("|")
    said = [line for line in lines if line.startswith(f"  {source} {size}: ")]
    assert len(said) == 1, lines
    return said[0]


def test_status_says_each_remembered_screens_verdict_and_its_fix(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    screen_shape.remember(state, PAL, 0.94)
    screen_shape.remember(state, SQUARE, 1.0)
    screen_shape.remember(state, WIDE, 1.2)
    out = sonoedge("status", "--state-dir", str(state), timeout=60)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    lines = _shape_lines(out.stdout)
    assert len(lines) == 4, out.stdout
    assert lines[0].startswith("screen shape: 3 screen(s) remembered"), lines[0]
    assert "the defaults: give --config" in lines[0], lines[0]
    pal = _line_of(lines, PAL)
    assert "remembered 0.940" in pal, pal
    assert "squeezed sideways" in pal and "heads are not measured" in pal, pal
    assert "(768x576, not 720x576)" in pal and "set [source] stretch = 0.9375 " in pal, pal
    square = _line_of(lines, SQUARE)
    assert "remembered 1.000 (" in square and square.endswith("s ago): keeps its shape"), square
    assert "stretched sideways" in _line_of(lines, WIDE)  # 8% by default
    shown = json.loads(sonoedge("status", "--state-dir", str(state), "--json",
                                timeout=60).stdout)["screen_shape"]
    assert shown["settings"] == "defaults" and shown["checked"] is True, shown
    by_source = {s["source"]: s for s in shown["screens"]}
    assert (by_source["v4l2:0"]["width"], by_source["v4l2:0"]["height"]) == (720, 576)
    assert (by_source["v4l2:0"]["stretched"], by_source["v4l2:0"]["setting"]) == (True, 0.9375)
    assert (by_source["grabber"]["stretched"], by_source["grabber"]["setting"]) == (False, None)
    assert by_source["grabber"]["verdict"] == "keeps its shape"
    # the box's own settings: its 30% lets 1.2 through, the SD size's rule still holds
    config = tmp_path / "device.toml"
    config.write_text("[biometry]\nstretch_tolerance = 0.3\n")
    out = sonoedge("status", "--config", str(config), "--state-dir", str(state), timeout=60)
    lines = _shape_lines(out.stdout)
    assert f"judged with the settings of {config}" in lines[0], lines[0]
    assert _line_of(lines, WIDE).endswith("keeps its shape"), lines
    assert "set [source] stretch = 0.9375 " in _line_of(lines, PAL), lines
    config.write_text("[biometry]\nstretch_tolerance = 0\n")
    out = sonoedge("status", "--config", str(config), "--state-dir", str(state), timeout=60)
    lines = _shape_lines(out.stdout)
    assert "not checked: [biometry] stretch_tolerance = 0" in lines[0], lines[0]
    assert all(line.endswith("not judged") for line in lines[1:]), lines


def test_a_damaged_or_hostile_shape_file_is_one_line_never_a_traceback(tmp_path):
    state = tmp_path / "st\x1bate\n"
    state.mkdir()
    path = state / screen_shape.SCREEN_SHAPE_FILE
    shown_path = str(path).replace("\x1b", "\\x1b").replace("\n", "\\x0a")
    for damaged in (b"\xff{", b"[" * 5000 + b"]" * 5000,
                    b'{"screens": [' + b" " * 20000 + b"]}", b'{"screens": {"a": 1}}',
                    b'{"screens": "many"}', b"null"):
        path.write_bytes(damaged)
        for args in ((), ("--json",)):
            out = sonoedge("status", "--state-dir", str(state), *args, timeout=60)
            assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
            assert "screen shape: 0" not in out.stdout, out.stdout
            assert len(out.stderr.splitlines()) == 1, out.stderr
            assert out.stderr.startswith(f"sonoedge status: screen shape: {shown_path} "), \
                out.stderr
            if damaged.startswith(b'{"screens": {') or damaged in (b'{"screens": "many"}',
                                                                   b"null"):
                assert "is not a verdict file (no list of screens)" in out.stderr, out.stderr
            if args:
                assert json.loads(out.stdout)["screen_shape"]["screens"] == []
    # a list whose every screen is passed over (a walk's hand-edited stretch as text): said
    # as damaged, where it was read silently as no memory
    for odd in ([{"screen": "pal.avi|720x576", "stretch": "0.9375"}],
                [{"screen": "pal.avi|720x576"}, 7, {"stretch": 0.94}]):
        path.write_text(json.dumps({"version": 1, "screens": odd}))
        out = sonoedge("status", "--state-dir", str(state), timeout=60)
        assert out.returncode == 0 and out.stderr == (
            f"sonoedge status: screen shape: {shown_path} is not a verdict file (none of its "
            f"{len(odd)} last screens readable); no verdict shown\n"), out.stderr
    # odd entries: passed over, or shown escaped and bounded; the last 16 entries at most
    entries = [{"screen": f"f{i}|640x480", "stretch": 1.0, "odd": "k"}
               for i in range(9)]
    entries += [{"screen": "cam\x1b[2J\n|720x576", "stretch": 0.94, "at": "yesterday"},
                {"screen": "no size at all", "stretch": 1.0, "at": 1e308},
                {"screen": "x|99999999x1", "stretch": 1.0},
                {"screen": "y|640x480", "stretch": "1.3"}, {"screen": "z|640x480"},
                {"screen": ["w|640x480"], "stretch": 1.0}, {"stretch": 1.0}, 7,
                {"screen": "v" * 5000 + "|640x480", "stretch": 1.0}]
    path.write_text(json.dumps({"version": 1, "screens": entries, "extra": "x" * 100}))
    out = sonoedge("status", "--state-dir", str(state), timeout=60)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    lines = _shape_lines(out.stdout)
    assert lines[0].startswith("screen shape: 10 screen(s) remembered"), lines[0]
    assert len(lines) == 11 and max(map(len, lines)) < 600, lines
    assert "  f0 640x480" not in out.stdout and "  f1 640x480" not in out.stdout
    cam = [line for line in lines if line.startswith("  cam")]
    assert cam == [cam[0]] and cam[0].startswith("  cam\\x1b[2J\\x0a 720x576: "), cam
    assert "remembered 0.940 (never): the picture is squeezed" in cam[0], cam
    assert any(line.startswith("  no size at all ?: ") for line in lines), lines
    assert any(line.startswith("  x|99999999x1 ?: ") for line in lines), lines
    shown = json.loads(sonoedge("status", "--state-dir", str(state), "--json",
                                timeout=60).stdout)["screen_shape"]
    assert len(shown["screens"]) == 10 and shown["screens"][0]["source"] == "x|99999999x1"
    assert shown["screens"][2]["source"] == "cam\\x1b[2J\\x0a", shown["screens"][2]
    assert {s["at"] for s in shown["screens"] if s["source"] != "no size at all"} == {None}


def test_status_warns_of_a_pal_setting_on_a_screen_whose_frames_are_not_pal(tmp_path):
    """`[source] stretch = 0.9375` (copied from a PAL box) on a grabber whose 960x720 frames
    keep the scanner's shape: the box widens them to 1024x720, the fan reads about 1.067,
    within the 8%, and every head goes out 3-4% large with status ok. `run` warns of it when
    the screen starts (`fan.another_size`); `status` said "keeps its shape" alone, so an
    installer who checked `status` saw a box set right. It now gives `run`'s warning, by
    the same rule, for each remembered screen whose frames are not the setting's SD size;
    a PAL grabber the setting undoes (720x576 widened to 768x576) is said to be right, and so
    is its 720x576 screen remembered squeezed before the setting was made, as told."""
    state = tmp_path / "state"
    state.mkdir()
    screen_shape.remember(state, PAL, 0.94)  # before the installer set 0.9375, as told
    screen_shape.remember(state, "grabber|1024x720", 1.067)
    screen_shape.remember(state, "v4l2:0|768x576", 1.0)
    screen_shape.remember(state, "no size at all", 1.0)
    config = tmp_path / "device.toml"
    config.write_text("[source]\nstretch = 0.9375\n")
    out = sonoedge("status", "--config", str(config), "--state-dir", str(state), timeout=60)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    lines = _shape_lines(out.stdout)
    assert len(lines) == 5, out.stdout
    assert sum("undoes an SD grabber" in line for line in lines) == 1, lines
    wrong = _line_of(lines, "grabber|1024x720")
    # `run`'s own words (tests/test_screen_stretch.py), after the verdict, on its one line
    assert wrong.endswith(
        "s ago): keeps its shape; [source] stretch = 0.9375 undoes an SD grabber's 720x576, "
        "but this grabber's frames are 960x720: if its picture keeps the scanner's shape, "
        "remove the setting: it draws every head 6.7% too wide (HC about half that off), "
        "too little for the fan's check to tell"), wrong
    assert _line_of(lines, "v4l2:0|768x576").endswith("s ago): keeps its shape"), lines
    assert any(line.endswith("s ago): keeps its shape") and "no size at all ?" in line
               for line in lines), lines
    shown = json.loads(sonoedge("status", "--config", str(config), "--state-dir", str(state),
                                "--json", timeout=60).stdout)["screen_shape"]
    by_source = {s["source"]: s for s in shown["screens"]}
    assert by_source["grabber"]["setting_meant_for"] == {"width": 720, "height": 576}
    assert by_source["grabber"]["warning"] == wrong.split("keeps its shape; ")[1]
    assert by_source["grabber"]["verdict"] == "keeps its shape"
    for screen in shown["screens"]:
        if screen["source"] != "grabber":
            assert (screen["setting_meant_for"], screen["warning"]) == (None, None), screen
    # no setting (the defaults), or the check off as `run` has it: nothing to warn of
    plain = json.loads(sonoedge("status", "--state-dir", str(state), "--json",
                                timeout=60).stdout)["screen_shape"]
    assert {s["warning"] for s in plain["screens"]} == {None}
    config.write_text("[source]\nstretch = 0.9375\n\n[biometry]\nstretch_tolerance = 0\n")
    out = sonoedge("status", "--config", str(config), "--state-dir", str(state), timeout=60)
    assert "undoes an SD grabber" not in out.stdout, out.stdout
