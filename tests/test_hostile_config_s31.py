"""A hostile device config, its TOML and the page's catalogs: every bad value is one line
naming the file and the key (`edge.config.ConfigError`), never a traceback, and every
number is held to a range that makes sense (the fuzzing audit of session 31)."""

from __future__ import annotations

import json
import logging

import pytest

from edge.config import (
    MAX_CAPTURE_SIDE,
    MAX_FRAME_PIXELS,
    MAX_KEEP_DAYS,
    MAX_LOG_EVERY,
    MAX_LOOP_FRAMES,
    MAX_PIXEL_SIZE_MM,
    MAX_REOPEN_ATTEMPTS,
    MAX_ROI_REFRESH_FRAMES,
    MAX_STRING_CHARS,
    ConfigError,
    load_settings,
)
from edge.fleet.settings import FleetSettings, check_fleet_settings
from edge.uplink.mqtt import MOST
from edge.web import i18n
from tests.cli_run import one_line_error, sonoedge
from wire.schema import PayloadError, loads_bounded, read_toml_bounded


def refused(tmp_path, text: str) -> str:
    """The one line `load_settings` refuses `text` with; it names the file."""
    path = tmp_path / "device.toml"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)  # it may hold the MQTT password
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message, message
    return message


def run_with_config(tmp_path, text: str):
    config = tmp_path / "device.toml"
    config.write_text(text, encoding="utf-8")
    config.chmod(0o600)
    proc = sonoedge("run", "--once", "--config", str(config), "--state-dir",
                    str(tmp_path / "state"), timeout=120)
    return config, proc


# -- D1: an integer TOML or JSON cannot hold -------------------------------------------------

def test_a_5000_digit_integer_in_the_config_stops_run_with_one_line_naming_the_file(tmp_path):
    """int() refuses over 4,300 digits with a plain ValueError, which tomllib lets through:
    `sonoedge run --config` ended in a traceback."""
    config, proc = run_with_config(tmp_path, "[source]\nwidth = " + "1" * 5000 + "\n")
    line = one_line_error(proc, str(config), "integer too long", "line 2")
    assert proc.returncode == 2 and len(line) < len(str(config)) + 200, line
    assert not (tmp_path / "state").exists(), "nothing may be written"


def test_an_integer_beyond_tomls_64_bits_is_refused_naming_its_key(tmp_path):
    """A hex literal has no digit limit in Python: 40 hex digits were a 160-bit
    max_reopen_attempts, accepted as it was."""
    message = refused(tmp_path, "[source]\nmax_reopen_attempts = 0x" + "f" * 40 + "\n")
    assert "integer too large at source.max_reopen_attempts" in message
    assert "64-bit" in message


@pytest.mark.parametrize("literal", ["1" * 5000, "-" + "9" * 5000, "1_0" * 2500,
                                     "0x" + "f" * 200_000])
def test_every_toml_the_device_reads_refuses_a_huge_integer_as_bad_toml(tmp_path, literal):
    """The rules and protocols files are read by the same reader: the refusal is its."""
    path = tmp_path / "rules.toml"
    path.write_text(f"[a]\nb = {literal}\n")
    with pytest.raises(PayloadError, match=r"^not valid TOML \(integer too (long|large)"):
        read_toml_bounded(path, 1 << 20)


def test_the_largest_64_bit_integers_are_still_toml(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text(f"a = {2 ** 63 - 1}\nb = {-(2 ** 63)}\n")
    assert read_toml_bounded(path, 1024) == {"a": 2 ** 63 - 1, "b": -(2 ** 63)}


@pytest.mark.parametrize("number", [b"9" * 5000, b"-" + b"9" * 5000, b"1e99999"])
def test_json_read_bounded_refuses_a_huge_number_as_bad_json(number):
    """loads_bounded was already safe: its integers are bounded before int() sees them."""
    with pytest.raises(PayloadError):
        loads_bounded(b'{"a": ' + number + b"}", 1 << 20)


# -- D10: the page's catalogs --------------------------------------------------------------

@pytest.mark.parametrize("body", [
    '{"a": ' * 1000 + '"x"' + "}" * 1000,  # a RecursionError
    '{"_language_name": ' + "9" * 5000 + "}",  # the ValueError of D1
    '{"_language_name": "Kiswahili", "a": "Aa", "a": "Bb"}',  # which one?
])
def test_a_hostile_catalog_leaves_its_language_out_and_the_page_speaks_english(
        tmp_path, caplog, body):
    (tmp_path / "en.json").write_text('{"_language_name": "English", "a": "A"}')
    (tmp_path / "sw.json").write_text(body)
    i18n._SAID_BAD.clear()
    with caplog.at_level(logging.WARNING, logger="edge.web.i18n"):
        assert i18n.languages(tmp_path) == {"en": "English"}
        text = i18n.catalog("sw", None, tmp_path)
    assert text["_lang"] == "en" and text["a"] == "A"
    said = [r.getMessage() for r in caplog.records if "sw.json" in r.getMessage()]
    assert len(said) == 1 and "\n" not in said[0], said  # once, one line naming the file
    assert str(tmp_path / "sw.json") in said[0]


def test_a_catalog_that_is_a_pipe_is_left_out_without_waiting_for_a_writer(tmp_path):
    import os

    (tmp_path / "en.json").write_text('{"_language_name": "English", "a": "A"}')
    os.mkfifo(tmp_path / "sw.json")
    i18n._SAID_BAD.clear()
    assert i18n.languages(tmp_path) == {"en": "English"}


def test_a_damaged_english_catalog_still_gives_the_quality_text(tmp_path):
    from edge.models.quality import load_rules

    (tmp_path / "en.json").write_text("[" * 1000)
    rules = load_rules(None)
    i18n._SAID_BAD.clear()
    text = i18n.catalog("en", rules, tmp_path)
    assert text["_lang"] == "en" and set(i18n.quality_keys(rules)) <= set(text)


# -- D2: NUL and control characters --------------------------------------------------------

NUL_FIELDS = [
    ("source", "spec"), ("models", "dir"), ("models", "plane"), ("device", "state_dir"),
    ("logging", "file"), ("quality", "rules"), ("quality", "learned"),
    ("exam", "protocols_file"), ("exam", "protocol"), ("fleet", "root"),
    ("fleet", "trusted_keys"), ("fleet", "http_ca"), ("biometry", "segmenter"),
    ("mqtt", "tls_ca"), ("mqtt", "tls_cert"), ("mqtt", "tls_key"), ("mqtt", "password_file"),
    ("mqtt", "password"), ("mqtt", "username"), ("web", "tls_cert"),
]


@pytest.mark.parametrize(("section", "key"), NUL_FIELDS)
def test_a_config_path_or_name_with_a_nul_is_one_line_naming_the_field(tmp_path, section,
                                                                         key):
    """Accepted, then `ValueError: embedded null byte` at open() once the loop ran."""
    message = refused(tmp_path, f'[{section}]\n{key} = "a\\u0000b"\n')
    assert f"{section}.{key} contains a NUL character" in message


def test_a_head_plane_with_a_nul_is_one_line_naming_the_list(tmp_path):
    message = refused(tmp_path, '[biometry]\nhead_planes = ["Brain (Tv.)", "a\\u0000b"]\n')
    assert "biometry.head_planes contains a NUL character" in message


def test_a_nul_in_the_config_stops_run_with_one_line_naming_the_field(tmp_path):
    config, proc = run_with_config(tmp_path, '[quality]\nrules = "a\\u0000b"\n')
    one_line_error(proc, str(config), "quality.rules contains a NUL character")
    assert proc.returncode == 2


def test_the_refusal_never_shows_the_password(tmp_path):
    message = refused(tmp_path, '[mqtt]\npassword = "hunter2\\u0000"\n')
    assert "mqtt.password contains a NUL character" in message and "hunter2" not in message


@pytest.mark.parametrize(("section", "key", "value"), [
    ("models", "plane", "plane\\nstudent"), ("exam", "protocol", "biometry\\u001b[2J"),
    ("mqtt", "clinic_id", "clinic\\u0085"), ("fleet", "http_url", "https://a\\tb/"),
])
def test_a_control_character_in_a_name_id_or_url_is_refused_naming_it(tmp_path, section,
                                                                          key, value):
    message = refused(tmp_path, f'[{section}]\n{key} = "{value}"\n')
    assert f"{section}.{key} contains a control character (\\x" in message


def test_a_path_may_hold_a_newline_as_linux_allows(tmp_path):
    """A folder named "clinic\\nroom 2" is read by `run` (tests/test_cli.py): only NUL,
    which no path can hold, is refused in a path."""
    path = tmp_path / "device.toml"
    path.write_text('[source]\nspec = "clinic\\nroom 2"\n[mqtt]\npassword = "p\\tw"\n')
    path.chmod(0o600)
    settings = load_settings(path)
    assert settings.source.spec == str(tmp_path / "clinic\nroom 2")
    assert settings.mqtt.password == "p\tw"


def test_a_string_longer_than_any_path_is_refused_without_showing_it(tmp_path):
    message = refused(tmp_path, '[mqtt]\nclient_id = "' + "c" * 200_000 + '"\n')
    assert f"mqtt.client_id is longer than {MAX_STRING_CHARS} characters" in message
    assert len(message) < len(str(tmp_path)) + 200


# -- D3: a path the file system refuses to look at -----------------------------------------

@pytest.mark.parametrize("key", ["tls_ca", "tls_cert", "tls_key"])
def test_a_tls_path_too_long_for_the_file_system_is_one_line_naming_the_field(tmp_path, key):
    """Path.is_file() raises ENAMETOOLONG (it swallows only ENOENT and the like): an
    OSError escaped load_settings."""
    message = refused(tmp_path, f'[mqtt]\n{key} = "{"a" * 300}"\n')
    assert f"mqtt.{key}:" in message and "File name too long" in message
    assert len(message) < 2 * len(str(tmp_path)) + 300, message


def test_a_tls_path_too_long_stops_run_with_one_line_naming_the_field(tmp_path):
    config, proc = run_with_config(tmp_path, f'[mqtt]\ntls_ca = "{"a" * 300}"\n')
    one_line_error(proc, str(config), "mqtt.tls_ca", "File name too long")
    assert proc.returncode == 2


# -- D4: a value shown in a refusal is cut ------------------------------------------------

def test_a_long_password_file_path_is_shown_cut(tmp_path):
    """The password file's refusal quoted its whole path: 4 KB of path, 4 KB of line."""
    message = refused(tmp_path, '[mqtt]\npassword_file = "' + "d/" * 2000 + 'pw"\n')
    assert "password file" in message and "..." in message
    assert len(message) < len(str(tmp_path)) + 400, len(message)


@pytest.mark.parametrize("settings", [
    FleetSettings(enabled=True, group="g" * 3000),
    FleetSettings(http_url="ftp://" + "h" * 3000),
])
def test_a_long_fleet_group_or_url_is_shown_cut(settings):
    with pytest.raises(ValueError) as caught:
        check_fleet_settings(settings)
    assert "..." in str(caught.value) and len(str(caught.value)) < 200, str(caught.value)


@pytest.mark.parametrize("text", [
    '[fleet]\nenabled = true\ngroup = "' + "g" * 200_000 + '"\n',
    '[fleet]\nhttp_url = "' + "h" * 200_000 + '"\n',
])
def test_a_200_kb_fleet_value_is_a_short_line(tmp_path, text):
    message = refused(tmp_path, text)
    assert len(message) < len(str(tmp_path)) + 200, len(message)
    assert "fleet." in message


def test_a_config_file_named_with_a_newline_still_gives_one_line(tmp_path):
    path = tmp_path / "site\nb.toml"
    path.write_text("[models]\nthreads = 2\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert "\n" not in str(caught.value) and "site\\x0ab.toml" in str(caught.value)


# -- numbers: each held to what makes sense ------------------------------------------------

@pytest.mark.parametrize(("section", "key", "value"), [
    ("mqtt", "health_interval_s", "-1"),
    ("mqtt", "health_interval_s", "1e308"),  # above the health schema's 1e8: all refused
    ("mqtt", "drain_timeout_s", "1e308"),
    ("mqtt", "outbox_quota_bytes", str(2 ** 62)),
    ("loop", "roi_refresh_frames", str(10 ** 15)),
    ("loop", "log_every", str(10 ** 15)),
    ("source", "max_reopen_attempts", str(10 ** 15)),
    ("source", "max_reopen_attempts", "-2"),
    ("source", "max_frame_pixels", str(10 ** 15)),
    ("journal", "keep_days", "1e308"),
    ("biometry", "pixel_size_max_mm", "1e308"),
])
def test_a_senseless_number_is_refused_naming_its_key_and_range(tmp_path, section, key,
                                                                value):
    message = refused(tmp_path, f"[{section}]\n{key} = {value}\n")
    assert f"{section}.{key} must be" in message and "got " in message, message
    assert len(message) < len(str(tmp_path)) + 300


def test_the_edge_of_each_range_is_still_accepted(tmp_path):
    """The bounds refuse only what no device would want: each limit itself loads, and so do
    the values the shipped example, the README and the test harnesses use."""
    path = tmp_path / "device.toml"
    path.write_text(
        "[mqtt]\nhealth_interval_s = 0\n"
        f"drain_timeout_s = {MOST['drain_timeout_s']}\n"
        f"outbox_quota_bytes = {MOST['outbox_quota_bytes']}\n"
        f"[loop]\nmax_frames = {MAX_LOOP_FRAMES}\nroi_refresh_frames = {MAX_ROI_REFRESH_FRAMES}\n"
        f"log_every = {MAX_LOG_EVERY}\n"
        f"[source]\nmax_reopen_attempts = {MAX_REOPEN_ATTEMPTS}\n"
        f"max_frame_pixels = {MAX_FRAME_PIXELS}\nwidth = {MAX_CAPTURE_SIDE}\n"
        f"[journal]\nkeep_days = {MAX_KEEP_DAYS}\n"
        f"[biometry]\npixel_size_max_mm = {MAX_PIXEL_SIZE_MM}\n")
    settings = load_settings(path)
    assert settings.mqtt.health_interval_s == 0
    path.write_text(f"[mqtt]\nhealth_interval_s = {MOST['health_interval_s']}\n"
                    "drain_timeout_s = 0\n[source]\nmax_reopen_attempts = -1\n"
                    "[loop]\nlog_every = 0\nmax_frames = 0\n")
    assert load_settings(path).source.max_reopen_attempts == -1


def test_the_health_interval_range_lies_within_the_health_schema():
    from wire.schema import load_schema

    bounds = load_schema("health")["properties"]["interval_s"]
    assert bounds["minimum"] <= 0 < MOST["health_interval_s"] \
        <= bounds["maximum"]


def test_a_health_interval_of_0_still_means_after_every_frame(tmp_path):
    """No "off": the uplink tests set 0 to keep publishing busy (tests/test_uplink_scenarios)."""
    path = tmp_path / "device.toml"
    path.write_text("[mqtt]\nhealth_interval_s = 0\n")
    assert load_settings(path).mqtt.health_interval_s == 0.0


def test_a_huge_max_frames_is_one_short_line_naming_where_it_came_from(tmp_path):
    """--max-frames is an int of up to 4,300 digits to argparse: the line shows its start,
    and names the flag, not the config file, when the flag gave it."""
    config = tmp_path / "device.toml"
    config.write_text("[loop]\nmax_frames = 2000000000\n")
    config.chmod(0o600)
    for args, where in ((["--max-frames", "1" * 4000], "--max-frames must be"),
                        (["--config", str(config)], f"{config}: loop.max_frames must be")):
        run = sonoedge("run", "--source", "demo", "--state-dir", str(tmp_path / "s"), *args)
        line = one_line_error(run, where)
        assert len(line) < len(str(config)) + 200, line


def test_the_catalogs_shipped_are_read_by_the_bounded_reader():
    i18n._read.cache_clear()
    i18n._SAID_BAD.clear()
    assert set(i18n.languages()) == {"en", "fr"}
    for lang in ("en", "fr"):
        assert json.loads((i18n.CATALOG_DIR / f"{lang}.json").read_text()) \
            == i18n._read(i18n.CATALOG_DIR / f"{lang}.json")


def test_a_password_file_that_is_a_pipe_is_one_line_not_a_wait(tmp_path):
    """`read_secret_file` opened the password file with open(), which waits for ever for a
    writer when the path is a FIFO: the device, or the district's collector, hung at start
    without a word. It is refused, as every other file the device is given."""
    import os
    import threading

    os.mkfifo(tmp_path / "pw")
    out: list[str] = []
    worker = threading.Thread(target=lambda: out.append(
        refused(tmp_path, f'[mqtt]\npassword_file = "{tmp_path / "pw"}"\n')), daemon=True)
    worker.start()
    worker.join(10)
    assert out, "still waiting for a writer"
    assert "mqtt: password file" in out[0] and "not a regular file" in out[0], out[0]
