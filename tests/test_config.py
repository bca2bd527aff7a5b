"""The device config: defaults everywhere, every key checked, errors name file and key."""

from __future__ import annotations

import pytest

from edge.config import ConfigError, Settings, load_settings
from tests.waits import raised_within


def test_no_file_gives_working_defaults():
    settings = load_settings()
    assert settings == Settings()
    assert settings.source.spec == "demo"
    assert settings.models.plane == "plane_student"


def test_a_file_and_overrides_are_layered(tmp_path):
    path = tmp_path / "device.toml"
    path.write_text('[source]\nspec = "/data/clip.mp4"\n[models]\nnum_threads = 1\n'
                    '[mqtt]\nclinic_id = "clinic-7"\nhealth_interval_s = 30\n')
    settings = load_settings(path, {"source": {"spec": "v4l2:0"}, "models": {"dir": None}})
    assert settings.source.spec == "v4l2:0"  # the command line wins
    assert settings.models.num_threads == 1
    assert settings.mqtt.clinic_id == "clinic-7"
    assert settings.mqtt.health_interval_s == 30.0  # an int is fine where a float is asked


@pytest.mark.parametrize(("text", "expected"), [
    ("[models]\nthreads = 2\n", "models: unknown key 'threads'"),
    ("[camera]\nspec = 1\n", "unknown section [camera]"),
    ("[models]\nnum_threads = 'two'\n", "models.num_threads: expected int"),
    ("[models]\nbackend = 'cuda'\n", "models.backend must be"),
    ("[source\nspec = 1\n", "not valid TOML"),
    ("a = " + "[" * 20000 + "]" * 20000 + "\n", "nested more than 16 deep"),  # tomllib recursed
    ("[roi]\nblack_level = 8.5\n", "roi.black_level: expected int"),
    ("[biometry]\nprobability_threshold = 0.4\n", "unknown key 'probability_threshold'"),
    ("[biometry]\npixel_size_mm = 5.0\n", "biometry.pixel_size_mm 5 is outside"),
    ("[biometry]\npixel_size_mm = -0.1\n", "biometry.pixel_size_mm -0.1 is outside"),
    ("[biometry]\nhead_planes = 'Brain (Tv.)'\n", "head_planes: expected a list of strings"),
    ("[biometry]\ncutoff_margin_fraction = 2\n", "cutoff_margin_fraction must be between"),
    ("[biometry]\nframe_image_below = 1.5\n", "frame_image_below must be between 0 and 1"),
    ("[roi]\nwork_width = 0\n", "roi.work_width must be 32-4096"),
    ("[roi]\nblack_level = 999\n", "roi.black_level must be a grey level"),
    ("[roi]\noutline_level = -5\n", "roi.outline_level must be a grey level"),
    ("[roi]\nthin_fraction = nan\n", "roi.thin_fraction must be between 0 and 0.5"),
    ("[roi]\nrow_fraction = 0\n", "roi.row_fraction must be above 0"),
    ("[biometry]\nframe_image_below = nan\n", "frame_image_below must be between 0 and 1"),
    ("[biometry]\nframe_image_below = \"all\"\n", "frame_image_below"),
    # checked only where the uplink took it over: `run` ended in a ValueError's traceback
    ("[device]\ndevice_id = \"a+b\"\n", "device.device_id: bad device_id 'a+b'"),
    ("[device]\ndevice_id = \"clinic 7\"\n", "device.device_id: bad device_id"),
    # said only once `run` or `exam` looked it up, naming neither the file nor the key
    ("[exam]\nprotocol = \"nope\"\n",
     "exam.protocol: unknown protocol 'nope': choose one of biometry, second-trimester"),
])
def test_a_bad_key_is_one_line_naming_the_file_and_key(tmp_path, text, expected):
    path = tmp_path / "device.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert str(path) in message and expected in message and "\n" not in message


@pytest.mark.parametrize("text", [
    "[biometry]\nmin_axis_ratio = \"" + "x" * 200_000 + "\"\n",
    "[biometry]\nhead_planes = [" + "1, " * 50_000 + "1]\n",
    "[biometry]\n" + "k" * 100_000 + " = 1\n",
])
def test_a_huge_bad_value_or_key_is_named_in_a_short_line(tmp_path, text):
    """The line names the key and shows the start of what was there, not 200 kB of it."""
    path = tmp_path / "device.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert str(path) in message and "biometry" in message and "..." in message
    assert len(message) < len(str(path)) + 200 and "\n" not in message


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="device.toml: config file not found"):
        load_settings(tmp_path / "device.toml")


def test_the_shipped_board_config_example_is_valid():
    from tests.conftest import REPO

    settings = load_settings(REPO / "board" / "device.toml.example")
    assert settings.source.spec == "v4l2:0" and settings.device.state_dir == "/var/lib/sonoedge"


def test_the_board_install_puts_the_models_where_the_example_config_loads_them():
    """board/README's install is `pip install /path/to/sonoedge`, whose wheel has the code
    and no models: the example config's default `[models] dir` (models/ beside the code, in
    site-packages) was empty, and the box's first start was "plane_student.json: model
    manifest not found". The install copies them, and the example loads them from there."""
    import tomllib

    from tests.conftest import REPO

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    shipped = pyproject["tool"]["setuptools"]["package-data"]
    assert not any("tflite" in glob for globs in shipped.values() for glob in globs)
    models = load_settings(REPO / "board" / "device.toml.example").models.dir
    assert models == "/opt/sonoedge/models"
    install = (REPO / "board" / "README.md").read_text()
    assert f"sudo cp -r /path/to/sonoedge/models {models}" in install


def test_the_biometry_section_feeds_the_measurement(tmp_path):
    path = tmp_path / "device.toml"
    path.write_text('[biometry]\npixel_size_mm = 0.12\nhead_planes = ["Brain (Tv.)"]\n'
                    'cutoff_margin_fraction = 0.05\n')
    settings = load_settings(path)
    assert settings.biometry.pixel_size_mm == 0.12
    assert settings.biometry.head_planes == ("Brain (Tv.)",)
    measurement = settings.biometry.measurement()
    assert measurement.cutoff_margin_fraction == 0.05
    assert measurement.probability_threshold == 0.5  # the model's manifest sets the real one
    assert load_settings().biometry.pixel_size_mm == 0.0  # unknown until calibrated: off


@pytest.mark.parametrize(("text", "key"), [
    ("[journal]\nkeep_days = nan\n", "journal.keep_days"),
    ("[source]\nfps = inf\n", "source.fps"),
    ("[source]\nbackoff_initial_s = nan\n", "source.backoff_initial_s"),
    ("[biometry]\npixel_size_max_mm = inf\n", "biometry.pixel_size_max_mm"),
])
def test_nan_or_inf_is_refused_for_every_number(tmp_path, text, key):
    """NaN passes a check written as "keep_days <= 0 is wrong": a number no range check
    covers is still refused when it is not a number."""
    path = tmp_path / "device.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert str(path) in message and key in message
    assert "expected a finite number" in message or "got nan" in message or "got inf" in message


@pytest.mark.parametrize(("key", "value"), [
    ("end_gap_s", "-4.0"), ("thumb_width", "8"), ("thumb_interval_s", "-1"),
    ("thumbs_quota_mb", "0"), ("thumbs_quota_mb", "nan")])
def test_a_bad_exam_number_is_named_on_its_own(tmp_path, key, value):
    path = tmp_path / "device.toml"
    path.write_text(f"[exam]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert str(path) in message and f"exam.{key} must be" in message
    others = {"end_gap_s", "thumb_width", "thumb_interval_s", "thumbs_quota_mb"} - {key}
    assert not [name for name in others if name in message], message


@pytest.mark.parametrize(("key", "value"), [
    ("width", "-640"), ("height", "100000"), ("fps", "-15.0"), ("backoff_initial_s", "0"),
    ("backoff_max_s", "1e9")])
def test_a_bad_source_number_is_named_on_its_own(tmp_path, key, value):
    """A negative capture size or rate was passed to the grabber as it was, and a bad
    backoff said only "backoff times must be positive"."""
    path = tmp_path / "device.toml"
    path.write_text(f"[source]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert str(path) in message and f"source.{key} must be" in message and "got " in message


def test_a_config_that_is_a_pipe_is_one_line_not_a_wait_for_ever(tmp_path):
    """Opening a FIFO waits for a writer: `--config pipe.toml` (and a protocols or rules
    file given as one) hung the device. Every TOML it reads is now checked first."""
    import os

    pipe = tmp_path / "pipe.toml"
    os.mkfifo(pipe)
    caught = raised_within(lambda: load_settings(pipe), ConfigError)
    assert str(caught) == f"{pipe}: not a regular file"


def test_a_relative_path_in_the_file_means_beside_it_and_one_on_the_command_line_does_not(
        tmp_path):
    path = tmp_path / "site" / "device.toml"
    path.parent.mkdir()
    path.write_text('[source]\nspec = "clips/a.mp4"\n[device]\nstate_dir = "state"\n'
                    '[models]\ndir = "/opt/models"\n[quality]\nrules = "rules.toml"\n'
                    '[mqtt]\npassword_file = "secret"\n[fleet]\ntrusted_keys = "keys"\n')
    (path.parent / "secret").write_text("pw\n")
    (path.parent / "secret").chmod(0o600)
    settings = load_settings(path)
    assert settings.source.spec == str(path.parent / "clips" / "a.mp4")
    assert settings.device.state_dir == str(path.parent / "state")
    assert settings.models.dir == "/opt/models"  # absolute: as written
    assert settings.quality.rules == str(path.parent / "rules.toml")
    assert settings.mqtt.password_file == str(path.parent / "secret")
    assert settings.fleet.trusted_keys == str(path.parent / "keys")
    for spec in ("demo", "v4l2:0", "picamera2:0"):  # names of sources, not files
        path.write_text(f'[source]\nspec = "{spec}"\n')
        assert load_settings(path).source.spec == spec
    assert load_settings(path, {"device": {"state_dir": "here"}}).device.state_dir == "here"


def test_a_bad_device_id_in_the_config_stops_run_with_one_line_not_a_traceback(tmp_path):
    """`[device] device_id` is the uplink's id unless `[mqtt] device_id` gives one; only
    the latter was checked with the config, and `sonoedge run` ended in a traceback."""
    from tests.cli_run import one_line_error, sonoedge

    config = tmp_path / "device.toml"
    config.write_text('[device]\ndevice_id = "box/7"\n')
    proc = sonoedge("run", "--once", "--config", str(config), "--source",
                    str(tmp_path / "none"), "--state-dir", str(tmp_path / "state"))
    one_line_error(proc, str(config), "device.device_id", "'box/7'")
    assert proc.returncode == 2


def test_an_unknown_protocol_stops_every_verb_with_one_line_naming_the_file_and_key(
        tmp_path):
    """`[exam] protocol = "nope"`: `run` said "unknown protocol 'nope'" without the file or
    the key, and `score`, `models` and `status` took the config as good. Each now refuses
    it when it reads the config, with the same line."""
    from tests.cli_run import sonoedge

    config = tmp_path / "device.toml"
    config.write_text(f'[exam]\nprotocol = "nope"\n[device]\nstate_dir = "{tmp_path}"\n')
    frame = tmp_path / "none.png"
    for verb in (("run", "--once", "--source", str(frame)), ("score", str(frame)),
                 ("exam", str(frame)), ("models",), ("status",)):
        proc = sonoedge(*verb, "--config", str(config), timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (verb, proc.stderr)
        (line,) = proc.stderr.splitlines()
        assert line.endswith(f"{config}: exam.protocol: unknown protocol 'nope': choose one "
                             "of biometry, second-trimester"), (verb, line)
    # the protocol cannot be looked up in a protocols file that cannot be read: said too
    config.write_text('[exam]\nprotocols_file = "none.toml"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert str(caught.value) == (f"{config}: exam.protocols_file: {tmp_path / 'none.toml'}: "
                                 "protocols file not found")
