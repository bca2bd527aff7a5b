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
    screen_shape.remember(state, PAL, 0.94, 1.0)  # read under no [source] stretch
    screen_shape.remember(state, SQUARE, 1.0, 1.0)
    screen_shape.remember(state, WIDE, 1.2, 1.0)
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
    # kept before the box recorded the setting it was read under: said so, never a guess
    assert ("remembered 0.940 (never) under a [source] stretch not recorded (kept before the "
            "box recorded it), judged as under no [source] stretch: the picture is squeezed"
            in cam[0]), cam
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
    is its 720x576 screen remembered squeezed before the setting was made, as told (its
    own line: `test_a_screen_read_under_another_setting_says_so_and_what_it_gives_now`)."""
    state = tmp_path / "state"
    state.mkdir()
    screen_shape.remember(state, PAL, 0.94, 1.0)  # before the installer set 0.9375, as told
    screen_shape.remember(state, "grabber|1024x720", 1.067, 0.9375)
    screen_shape.remember(state, "v4l2:0|768x576", 1.0, 0.9375)
    screen_shape.remember(state, "no size at all", 1.0, 0.9375)
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


def test_a_screen_read_under_another_setting_says_so_and_what_it_gives_now(tmp_path):
    """A screen is remembered by its frames' size after `[source] stretch`, and its verdict
    is of the picture that setting drew. A walk: a 960x720 grabber remembered before the
    installer set 0.9375 was judged as if read under it ("this grabber's frames are
    900x720"). Each verdict now keeps its setting; where the one set now differs, its line
    says what it was read under, what is set now, that it is a verdict of the picture
    before, and what the same grabber frames give under the setting now (`fan.under_
    setting`: widened to 1024x720, the fan reads 1.067, and the grabber's own 960x720 is
    named), judged by the same rule, and that the box reads it afresh. Removing a 1.3333
    (4:3 filling 16:9, narrowed to 1440x1080) gives back the refusal and the setting."""
    state = tmp_path / "state"
    state.mkdir()
    screen_shape.remember(state, PAL, 0.94, 1.0)
    screen_shape.remember(state, SQUARE, 1.0, 1.0)
    screen_shape.remember(state, "hdmi0|1440x1080", 1.001, 1.3333)
    screen_shape.remember(state, "hdmi1|1440x1080", 1.001, 1.3334)  # refined since: the same
    config = tmp_path / "device.toml"
    config.write_text("[source]\nstretch = 0.9375\n")
    out = sonoedge("status", "--config", str(config), "--state-dir", str(state), timeout=60)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    lines = _shape_lines(out.stdout)
    assert "900x720" not in out.stdout, lines
    pal = _line_of(lines, PAL)
    assert pal.endswith(
        "s ago) under no [source] stretch, but [source] stretch = 0.9375 is set now: a verdict "
        "of the picture before it; under it the frames become 768x576 and should read 1.003: "
        "keeps its shape; the box reads it afresh (not yet read under it)"), pal
    square = _line_of(lines, SQUARE)
    assert ("under it the frames become 1024x720 and should read 1.067: keeps its shape; "
            "[source] stretch = 0.9375 undoes an SD grabber's 720x576, but this grabber's "
            "frames are 960x720: if its picture keeps") in square, square
    shown = json.loads(sonoedge("status", "--config", str(config), "--state-dir", str(state),
                                "--json", timeout=60).stdout)["screen_shape"]
    assert shown["setting_now"] == 0.9375
    by_source = {s["source"]: s for s in shown["screens"]}
    assert (by_source["v4l2:0"]["read_under"], by_source["v4l2:0"]["as_now"]) == (
        1.0, {"width": 768, "height": 576, "stretch": 1.0027})
    assert by_source["v4l2:0"]["stretched"] is False
    assert by_source["grabber"]["setting_meant_for"] == {"width": 720, "height": 576}
    # the setting removed: the 1440x1080 frames are the grabber's 1920x1080 again, read
    # 1.335, and refused with the setting that undoes it; one refined since is the same
    config.write_text("")
    out = sonoedge("status", "--config", str(config), "--state-dir", str(state), timeout=60)
    lines = _shape_lines(out.stdout)
    hdmi = _line_of(lines, "hdmi0|1440x1080")
    assert ("under [source] stretch = 1.3333, but no [source] stretch is set now: a verdict "
            "of the picture before it; under it the frames become 1920x1080 and should read "
            "1.335: the picture is stretched sideways, so heads are not measured") in hdmi, hdmi
    assert "set [source] stretch = 1.335 to undo it" in hdmi, hdmi
    assert _line_of(lines, PAL).endswith("s ago): the picture is squeezed sideways, as an SD "
                                         "grabber draws a 4:3 picture in 720x576 (0.9375), "
                                         "so heads are not measured. Set the grabber to keep "
                                         "the scanner's own shape (768x576, not 720x576), or, "
                                         "where it cannot be set, set [source] stretch = "
                                         "0.9375 to undo it"), lines
    config.write_text("[source]\nstretch = 1.3333\n")
    out = sonoedge("status", "--config", str(config), "--state-dir", str(state), timeout=60)
    lines = _shape_lines(out.stdout)
    for refined in ("hdmi0|1440x1080", "hdmi1|1440x1080"):
        assert _line_of(lines, refined).endswith("s ago): keeps its shape"), lines
    # the check off: what it was read under is still said, and nothing judged
    config.write_text("[source]\nstretch = 0.9375\n\n[biometry]\nstretch_tolerance = 0\n")
    out = sonoedge("status", "--config", str(config), "--state-dir", str(state), timeout=60)
    pal = _line_of(_shape_lines(out.stdout), PAL)
    assert "under no [source] stretch, but [source] stretch = 0.9375 is set now" in pal, pal
    assert pal.endswith("should read 1.003: not judged"), pal


def test_an_old_file_and_a_hostile_setting_are_said_never_a_traceback(tmp_path):
    """A file kept before the box recorded the setting each verdict was read under: its
    screens are read, each said to be of a setting not recorded and judged as under the
    one now (as the scorer starts from it). An entry whose setting is no `[source] stretch`
    is passed over as one with a damaged stretch is; all of them, one line naming the
    file."""
    state = tmp_path / "state"
    state.mkdir()
    path = state / screen_shape.SCREEN_SHAPE_FILE
    path.write_text(json.dumps({"version": 1, "screens": [
        {"screen": SQUARE, "stretch": 1.0, "at": 1_700_000_000},
        {"screen": PAL, "stretch": 0.94, "setting": "0.9375"},
        {"screen": "a|720x576", "stretch": 0.94, "setting": True},
        {"screen": "b|720x576", "stretch": 0.94, "setting": 1e308},
        {"screen": "c|720x576", "stretch": 0.94, "setting": None},
        {"screen": "d|720x576", "stretch": 0.94, "setting": [1.0]},
        {"screen": "e|720x576", "stretch": 0.94, "setting": -0.9375}]}))
    config = tmp_path / "device.toml"
    config.write_text("[source]\nstretch = 0.9375\n")
    for args in ((), ("--json",)):
        out = sonoedge("status", "--config", str(config), "--state-dir", str(state), *args,
                       timeout=60)
        assert out.returncode == 0 and out.stderr == "", out.stderr
    lines = _shape_lines(sonoedge("status", "--config", str(config), "--state-dir",
                                  str(state), timeout=60).stdout)
    assert len(lines) == 2 and lines[0].startswith("screen shape: 1 screen(s)"), lines
    assert _line_of(lines, SQUARE).startswith(
        "  grabber 960x720: remembered 1.000 (") and (
        "ago) under a [source] stretch not recorded (kept before the box recorded it), "
        "judged as under [source] stretch = 0.9375: keeps its shape; ") in lines[1], lines
    shown = json.loads(out.stdout)["screen_shape"]
    [square] = shown["screens"]
    assert (square["read_under"], square["as_now"]) == (None, None), square
    path.write_text(json.dumps({"version": 1, "screens": [
        {"screen": PAL, "stretch": 0.94, "setting": "1"}]}))
    out = sonoedge("status", "--state-dir", str(state), timeout=60)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.endswith("is not a verdict file (none of its 1 last screens "
                               "readable); no verdict shown\n"), out.stderr
