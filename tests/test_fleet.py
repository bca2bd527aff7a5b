"""Signed model bundles: made, refused, installed, self-tested, swapped and rolled back.

Issue 16. Every refusal is one clear line and leaves the running models exactly as they
were; a crash loop after a swap rolls back; SIGKILL at every step of an install (and of a
rollback) leaves `current` on a complete set.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edge.fleet.bundle import Limits, make_bundle, read_bundle
from edge.fleet.keys import load_private_key, load_trusted_keys, new_keypair
from edge.fleet.settings import FleetSettings
from edge.fleet.slots import Fleet, check_set
from tests.cli_run import one_line_error, sonoedge
from tests.conftest import DATA, MODELS, REPO
from tests.waits import raised_within
from wire.fleet import BundleError, check_group, parse_manifest, parse_version

GROUP = "district-a"
FRAME = DATA / "sononet" / "examples" / "BRAIN-TV.tiff"


@pytest.fixture(scope="session")
def fleet_kit(tmp_path_factory):
    """Keys, a copy of the shipped models (another engineer may replace them meanwhile)
    and the bundles every test uses, made once."""
    root = tmp_path_factory.mktemp("fleet-kit")
    models = root / "models"
    models.mkdir()
    for path in MODELS.iterdir():
        if path.suffix in (".json", ".tflite"):
            (models / path.name).write_bytes(path.read_bytes())
    key, pub = new_keypair(root / "keys", "district")
    bad_key, _ = new_keypair(root / "other-keys", "intruder")
    trusted = root / "trusted"
    trusted.mkdir(mode=0o755)
    (trusted / "district.pub").write_bytes(pub.read_bytes())
    os.chmod(trusted / "district.pub", 0o644)

    def make(name: str, version: str, group: str = GROUP, min_app: str = "0.1.0",
             key_path: Path = key) -> Path:
        out = root / f"{name}.bundle"
        make_bundle(models, key_path, out, version=version, group=group,
                    min_app_version=min_app, frames=[FRAME], pixel_size_mm=0.12)
        return out

    kit = {"root": root, "models": models, "key": key, "trusted": trusted, "make": make}
    kit["v1"] = make("v1", "1.0")
    kit["v2"] = make("v2", "2.0")
    return kit


def device_config(tmp_path: Path, kit: dict, **fleet) -> Path:
    opts = {"enabled": True, "group": GROUP, "trusted_keys": str(kit["trusted"]),
            "trial_min": 10.0, **fleet}
    lines = ["[device]", f'state_dir = "{tmp_path / "state"}"', "[models]",
             f'dir = "{kit["models"]}"', "[loop]", "log_every = 0", "[fleet]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in opts.items()]
    path = tmp_path / "device.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def fleet_of(tmp_path: Path, **kw) -> Fleet:
    settings = FleetSettings(enabled=True, group=GROUP, **kw)
    return Fleet(tmp_path / "state" / "fleet", settings)


def snapshot(fleet: Fleet) -> tuple:
    """What the loop would load: the link and every byte behind it."""
    current = fleet.current
    return (os.readlink(current), {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                                   for p in sorted(current.iterdir())})


def test_keys_new_keeps_the_private_key_to_its_owner_and_never_overwrites(tmp_path):
    out = sonoedge("keys", "new", "--out", str(tmp_path), "--name", "d")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "d.key").stat().st_mode & 0o777 == 0o600
    assert b"PUBLIC KEY" in (tmp_path / "d.pub").read_bytes()
    one_line_error(sonoedge("keys", "new", "--out", str(tmp_path), "--name", "d"),
                   "exists; a key is never overwritten")
    os.chmod(tmp_path / "d.key", 0o644)
    with pytest.raises(BundleError, match="readable by other users"):
        load_private_key(tmp_path / "d.key")


def test_signing_with_the_public_key_says_so_not_chmod_it(tmp_path):
    """`bundle make --key d.pub` (the .pub beside the .key) said "private key readable by
    other users (mode 0644); chmod 600 it": the district would restrict a public key, then
    read a PEM parser's complaint. One line says which file to give instead."""
    assert sonoedge("keys", "new", "--out", str(tmp_path), "--name", "d").returncode == 0
    for mode in (0o644, 0o600):
        os.chmod(tmp_path / "d.pub", mode)
        with pytest.raises(BundleError) as refused:
            load_private_key(tmp_path / "d.pub")
        assert str(refused.value) == (f"{tmp_path / 'd.pub'}: a public key; sign with the "
                                      "private one (NAME.key from `sonoedge keys new`, not "
                                      "NAME.pub)")


def test_bundle_status_never_makes_the_fleet_it_looks_at(tmp_path, fleet_kit):
    """`bundle status --state-dir` mistyped made that folder whole, seeded it with the
    factory models and showed a healthy "factory" box; run before the first start (as root)
    it left root's files in the service's state dir. Now a look makes nothing and says so,
    and `bundle status` or `install` without `--config` asks for the device's config."""
    config = device_config(tmp_path, fleet_kit)
    typo = tmp_path / "stat"
    out = sonoedge("bundle", "status", "--config", str(config), "--state-dir", str(typo))
    assert out.returncode == 2 and not typo.exists()
    one_line_error(out, f"{typo / 'fleet'}: no fleet here yet (the loop or `bundle install` "
                        "makes it on its first start); is this the device's state dir?")
    assert not (tmp_path / "state").exists()
    for verb in (["status"], ["install", str(fleet_kit["v2"])]):
        one_line_error(sonoedge("bundle", *verb), "no --config: give the device's")
    out = sonoedge("bundle", "install", str(fleet_kit["v2"]), "--config", str(config))
    assert out.returncode == 0, out.stderr
    out = sonoedge("bundle", "status", "--config", str(config))
    assert out.returncode == 0 and json.loads(out.stdout)["bundle"] == "2.0", out.stderr


def test_a_trusted_keys_folder_others_could_write_is_refused(tmp_path, fleet_kit):
    folder = tmp_path / "keys"
    folder.mkdir()
    (folder / "k.pub").write_bytes((fleet_kit["trusted"] / "district.pub").read_bytes())
    os.chmod(folder, 0o777)
    with pytest.raises(BundleError, match="other users can write it"):
        load_trusted_keys(folder)


def test_a_bundle_holds_models_manifests_selftest_and_a_signed_manifest(fleet_kit):
    with tarfile.open(fleet_kit["v2"], "r:xz") as tar:
        names = tar.getnames()
        manifest = parse_manifest(tar.extractfile("bundle.json").read(), 1 << 30)
    assert names[:2] == ["bundle.json", "bundle.sig"]
    assert {"models/plane_student.tflite", "models/plane_student.json",
            "models/head_segmenter.tflite", "selftest/BRAIN-TV.png"} <= set(names)
    assert manifest.version == "2.0" and manifest.group == GROUP
    assert manifest.min_app_version == "0.1.0"
    assert all(len(f.sha256) == 64 for f in manifest.files)
    expect = manifest.frames[0].expect
    assert expect["plane"] == "Brain (Tv.)" and expect["head_status"] == "ok"
    assert 100 < expect["hc_mm"] < 250


def test_install_swaps_to_the_new_set_and_reports_it(tmp_path, fleet_kit):
    config = device_config(tmp_path, fleet_kit)
    out = sonoedge("bundle", "install", str(fleet_kit["v2"]), "--config", str(config))
    assert out.returncode == 0, out.stderr
    assert "bundle 2.0 installed (was factory)" in out.stdout
    fleet = fleet_of(tmp_path)
    assert os.readlink(fleet.current) == "slots/b/models" and check_set(fleet.current) is None
    status = fleet.status()
    assert status["bundle"] == "2.0" and status["state"] == "trial"
    # the previous set is kept, untouched, for a rollback
    assert check_set(fleet.slot_dir("a") / "models") is None


def _tamper(path: Path, out: Path) -> Path:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    out.write_bytes(bytes(data))
    return out


def _truncate(path: Path, out: Path) -> Path:
    out.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    return out


@pytest.mark.parametrize("case", ["tampered", "wrong-key", "truncated", "other-group",
                                  "newer-app", "downgrade", "replay"])
def test_bad_bundles_are_refused_with_one_line_and_the_models_stay(tmp_path, fleet_kit, case):
    config = device_config(tmp_path, fleet_kit)
    make = fleet_kit["make"]
    if case in ("downgrade", "replay"):  # 2.0 installed and confirmed first
        assert sonoedge("bundle", "install", str(fleet_kit["v2"]), "--config",
                        str(config)).returncode == 0
        fleet = fleet_of(tmp_path)
        fleet.tick(3600.0)
    bundle, needle = {
        "tampered": (lambda: _tamper(fleet_kit["v2"], tmp_path / "t.bundle"), "tampered"),
        "wrong-key": (lambda: make("wrongkey", "3.0", key_path=fleet_kit["root"] /
                                   "other-keys" / "intruder.key"), "bad signature"),
        "truncated": (lambda: _truncate(fleet_kit["v2"], tmp_path / "c.bundle"),
                      "truncated"),
        "other-group": (lambda: make("othergroup", "3.0", group="district-b"),
                        "is for device group 'district-b'"),
        "newer-app": (lambda: make("newapp", "3.0", min_app="99.0"),
                      "needs sonoedge 99.0 or newer"),
        "downgrade": (lambda: fleet_kit["v1"], "older than 2.0"),
        "replay": (lambda: fleet_kit["v2"], "already installed 2.0"),
    }[case]
    path = bundle()
    fleet = fleet_of(tmp_path)
    fleet.ensure(fleet_kit["models"])
    before = snapshot(fleet)
    out = sonoedge("bundle", "install", str(path), "--config", str(config))
    assert out.returncode == 2
    one_line_error(out, needle)
    assert snapshot(fleet_of(tmp_path)) == before
    assert not (fleet.root / "slots" / ".staging").exists()


def test_the_tampered_byte_in_the_signed_manifest_fails_the_signature(tmp_path, fleet_kit):
    """Decompress, flip one byte of the manifest, compress again: xz's CRC cannot save the
    attacker, only the signature stops it."""
    raw = lzma.decompress(fleet_kit["v2"].read_bytes())
    at = raw.index(b'"version":"2.0"')
    changed = raw[:at] + b'"version":"9.0"' + raw[at + 15:]
    path = tmp_path / "forged.bundle"
    path.write_bytes(lzma.compress(changed, format=lzma.FORMAT_XZ))
    with pytest.raises(BundleError, match="bad signature"):
        read_bundle(path, load_trusted_keys(fleet_kit["trusted"]), Limits(1 << 30, 1 << 30))


def _signed_archive(kit: dict, path: Path, manifest: dict, members: list) -> Path:
    data = json.dumps(manifest, sort_keys=True).encode()
    sig = load_private_key(kit["key"]).sign(data)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, blob in [(tarfile.TarInfo("bundle.json"), data),
                           (tarfile.TarInfo("bundle.sig"), sig), *members]:
            info.size = len(blob) if info.type == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(blob) if info.type == tarfile.REGTYPE else None)
    path.write_bytes(lzma.compress(buf.getvalue(), format=lzma.FORMAT_XZ))
    return path


@pytest.mark.parametrize("case", ["link", "unlisted", "missing", "too-big"])
def test_archive_members_are_checked_against_the_signed_list(tmp_path, fleet_kit, case):
    with tarfile.open(fleet_kit["v2"], "r:xz") as tar:
        manifest = json.loads(tar.extractfile("bundle.json").read())
        blobs = {m.name: tar.extractfile(m).read() for m in tar.getmembers()[2:]}
    members = [(tarfile.TarInfo(name), blob) for name, blob in blobs.items()]
    limits = Limits(1 << 30, 1 << 30)
    if case == "link":
        link = tarfile.TarInfo("models/evil")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        members.insert(0, (link, b""))
        needle = "not a regular file"
    elif case == "unlisted":
        members.append((tarfile.TarInfo("models/extra.tflite"), b"x"))
        needle = "not in the signed manifest"
    elif case == "missing":
        members = members[:-1]
        needle = "missing"
    else:
        limits = Limits(1 << 30, 100_000)
        needle = "size must be 0-100000 bytes"
    path = _signed_archive(fleet_kit, tmp_path / "crafted.bundle", manifest, members)
    dest = tmp_path / "dest"
    with pytest.raises(BundleError, match=needle):
        read_bundle(path, load_trusted_keys(fleet_kit["trusted"]), limits, dest)
    assert not (dest / "models" / "evil").exists()


def test_a_full_disk_during_an_install_is_one_line_and_the_same_bundle_installs_later(
        tmp_path, fleet_kit, monkeypatch):
    """The disk fills after the bundle is verified and self-tested (writing the slot's
    record) and stays full while the error is recorded: one BundleError line, the running
    set untouched, no staging folder left holding the space, and once there is room the
    same bundle installs."""
    import errno

    from edge.fleet import slots

    fleet = fleet_of(tmp_path)
    fleet.ensure(fleet_kit["models"])
    before = snapshot(fleet)
    keys = load_trusted_keys(fleet_kit["trusted"])
    honest = slots.write_json

    def full(path, data):
        if path.name in (slots.SLOT_FILE, slots.STATE_FILE):
            raise OSError(errno.ENOSPC, "No space left on device")
        return honest(path, data)

    monkeypatch.setattr(slots, "write_json", full)
    with pytest.raises(BundleError) as caught:
        fleet.install(fleet_kit["v2"], keys)
    assert "No space left on device" in str(caught.value)
    assert str(fleet_kit["v2"]) in str(caught.value) and "\n" not in str(caught.value)
    assert snapshot(fleet_of(tmp_path)) == before
    assert not (fleet.root / "slots" / ".staging").exists()
    monkeypatch.undo()
    assert fleet_of(tmp_path).install(fleet_kit["v2"], keys).version == "2.0"
    assert fleet_of(tmp_path).status()["bundle"] == "2.0"


def test_a_failed_selftest_never_swaps_and_is_reported(tmp_path, fleet_kit, monkeypatch):
    """A bundle whose recorded outputs its models do not give (here: signed with the plane
    'Femur' where they say 'Brain (Tv.)')."""
    from edge.fleet import selftest

    honest = selftest.score_selftest
    monkeypatch.setattr(selftest, "score_selftest", lambda *a, **k: [
        {**out, "plane": "Femur"} for out in honest(*a, **k)])
    bad = tmp_path / "lying.bundle"
    make_bundle(fleet_kit["models"], fleet_kit["key"], bad, version="3.0", group=GROUP,
                min_app_version="0.1.0", frames=[FRAME], pixel_size_mm=0.12)
    monkeypatch.undo()
    config = device_config(tmp_path, fleet_kit)
    fleet = fleet_of(tmp_path)
    fleet.ensure(fleet_kit["models"])
    before = snapshot(fleet)
    out = sonoedge("bundle", "install", str(bad), "--config", str(config))
    one_line_error(out, "failed its self-test",
                   "plane 'Brain (Tv.)' here, the bundle expects 'Femur'")
    assert snapshot(fleet_of(tmp_path)) == before
    status = fleet_of(tmp_path).status()
    assert status["bundle"] == "factory"
    # the bundle never ran: a refusal (the fleet error), not a rollback
    assert "rollback" not in status
    assert status["error"].startswith("bundle 3.0 failed its self-test, factory stays")
    # the same bundle is not taken again
    one_line_error(sonoedge("bundle", "install", str(bad), "--config", str(config)),
                   "not newer than 3.0")


# -- the quality rules the expectations were made with ---------------------------------------

MADE_WITH = "selftest/made_with.json"  # wire/fleet.py MADE_WITH_MEMBER
LEARNED = "selftest/learned.json"  # wire/fleet.py LEARNED_MEMBER


def _rules_copy(path: Path, version: str) -> Path:
    """The shipped quality rules under `version`, with the content bound moved so that the
    frame's quality score falls to about 0 (the models' outputs are untouched)."""
    from edge.models.quality import RULES_FILE

    text = RULES_FILE.read_text()
    shipped = _box_rules()
    assert text.count(f'version = "{shipped}"') == 1 and text.count(
        "min = 0.25\nsoft = 0.15\n") == 1
    path.write_text(text.replace(f'version = "{shipped}"', f'version = "{version}"')
                    .replace("min = 0.25\nsoft = 0.15\n", "min = 1.0\nsoft = 0.01\n"))
    return path


def _box_rules() -> str:
    from edge.models.quality import load_rules

    return load_rules().version


def _made_under_rules(kit: dict, tmp_path: Path, monkeypatch, rules_version: str,
                      version: str, blur_shift: float = 0.0) -> Path:
    """A bundle made by the real `make_bundle` on a district machine whose quality rules
    are `rules_version` (and score this frame otherwise than the box's); with
    `blur_shift`, one whose recorded learned head's blur severity is off by that much."""
    from edge.fleet import selftest
    from edge.models import quality

    monkeypatch.setattr(quality, "RULES_FILE",
                        _rules_copy(tmp_path / f"rules-{version}.toml", rules_version))
    if blur_shift:
        honest = selftest.score_selftest
        monkeypatch.setattr(selftest, "score_selftest", lambda *a, **k: [
            {**out, "learned": {**out["learned"], "blur": out["learned"]["blur"] + blur_shift}}
            for out in honest(*a, **k)])
    out = tmp_path / f"rules-{version}.bundle"
    make_bundle(kit["models"], kit["key"], out, version=version, group=GROUP,
                min_app_version="0.1.0", frames=[FRAME], pixel_size_mm=0.12)
    monkeypatch.undo()
    return out


def _bundle_record(path: Path) -> tuple[dict, str | None]:
    """The first frame's expectations and the recorded quality rules version (None: none)."""
    with tarfile.open(path, "r:xz") as tar:
        manifest = parse_manifest(tar.extractfile("bundle.json").read(), 1 << 30)
        record = json.loads(tar.extractfile(MADE_WITH).read())["quality_rules"] \
            if MADE_WITH in tar.getnames() else None
    return manifest.frames[0].expect, record


def _without_rules_record(kit: dict, path: Path, out: Path,
                          drop: tuple[str, ...] = (MADE_WITH, LEARNED)) -> Path:
    """`path` as a bundle made before the rules version was recorded: the same signed
    manifest and members, less `selftest/made_with.json` (and `selftest/learned.json`,
    recorded since); `drop=(LEARNED,)`: one made after the rules were recorded but before
    the learned head's numbers were."""
    with tarfile.open(path, "r:xz") as tar:
        manifest = json.loads(tar.extractfile("bundle.json").read())
        blobs = {m.name: tar.extractfile(m).read() for m in tar.getmembers()[2:]}
    for name in drop:
        blobs.pop(name, None)
    manifest["files"] = [f for f in manifest["files"] if f["path"] not in drop]
    return _signed_archive(kit, out, manifest, [(tarfile.TarInfo(n), b)
                                                for n, b in blobs.items()])


def test_a_bundle_records_the_quality_rules_its_expectations_were_made_with(fleet_kit):
    expect, record = _bundle_record(fleet_kit["v2"])
    assert record == _box_rules()
    assert 0 <= expect["quality_score"] <= 1


def _learned_record(path: Path) -> dict:
    with tarfile.open(path, "r:xz") as tar:
        return json.loads(tar.extractfile(LEARNED).read())


def test_a_bundle_records_its_learned_quality_head_s_own_numbers(fleet_kit):
    """The learned head's severities on each self-test frame, the models' own numbers and
    not the rules': a box under other rules can still check them (was: nothing)."""
    learned = _learned_record(fleet_kit["v2"])
    branches = learned["frames"]["selftest/BRAIN-TV.png"]
    # the zoom branch ranks no frame on a fixed calibration (pixel_size_mm, no ruler):
    # neither side scores it, so it is not recorded
    assert set(branches) == {"blur", "gain", "noise", "shadow", "cutoff"}
    assert all(0 <= v <= 1 for v in branches.values())


def test_a_bundle_made_under_other_quality_rules_installs_without_their_quality_score(
        tmp_path, fleet_kit, monkeypatch):
    """A district machine on another app (other quality rules: 1.3.9 moved the score of
    zoomed heads on a fixed calibration) made the bundle. Its quality scores are those
    rules', not the models': every box on other rules refused it, so the district's model
    update never landed on a mixed fleet. Plane, confidence, head status and HC, the
    models', are still compared; the quality score is not, and `bundle install` says so."""
    bundle = _made_under_rules(fleet_kit, tmp_path, monkeypatch, "1.3.1", "3.0")
    expect, record = _bundle_record(bundle)
    honest, _ = _bundle_record(fleet_kit["v2"])
    assert abs(expect["quality_score"] - honest["quality_score"]) > 0.3
    assert expect["plane"] == honest["plane"] and expect["head_status"] == "ok"
    config = device_config(tmp_path, fleet_kit)
    # the clinic's loop runs its own rules (2.0.1), and so does the self-test
    clinic = _rules_copy(tmp_path / "clinic-rules.toml", "2.0.1")
    config.write_text(config.read_text() + f'[quality]\nrules = "{clinic}"\n')
    out = sonoedge("bundle", "install", str(bundle), "--config", str(config))
    assert out.returncode == 0, out.stderr
    assert "bundle 3.0 installed (was factory)" in out.stdout
    said = ("quality score not compared, learned quality head compared instead (5 "
            "severities): made with quality rules 1.3.1, this box runs 2.0.1 (its [quality] "
            "rules, clinic-rules.toml)")
    assert "self-test: scored with quality rules 2.0.1 (its [quality] rules, " \
        "clinic-rules.toml)\n" in out.stdout
    assert f"self-test: {said}\n" in out.stdout
    assert f"fleet: bundle 3.0 self-test: {said}\n" in out.stderr
    assert fleet_of(tmp_path).status()["bundle"] == "3.0"
    assert record == "1.3.1"


def test_a_lying_plane_is_still_refused_under_other_quality_rules(tmp_path, fleet_kit,
                                                                 monkeypatch):
    """Other rules spare the quality score only: the models' own outputs are compared."""
    from edge.fleet import selftest

    honest = selftest.score_selftest
    monkeypatch.setattr(selftest, "score_selftest", lambda *a, **k: [
        {**out, "plane": "Femur"} for out in honest(*a, **k)])
    bundle = _made_under_rules(fleet_kit, tmp_path, monkeypatch, "1.3.1", "3.0")
    fleet = fleet_of(tmp_path)
    fleet.ensure(fleet_kit["models"])
    before = snapshot(fleet)
    out = sonoedge("bundle", "install", str(bundle), "--config",
                   str(device_config(tmp_path, fleet_kit)))
    line = one_line_error(out, "bundle 3.0 failed its self-test, factory stays",
                          "plane 'Brain (Tv.)' here, the bundle expects 'Femur'")
    assert "quality_score" not in line
    assert "fleet: bundle 3.0 self-test: quality score not compared" in out.stderr
    assert snapshot(fleet_of(tmp_path)) == before


def test_the_same_quality_mismatch_under_the_same_rules_is_still_refused(
        tmp_path, fleet_kit, monkeypatch):
    """Under the box's own rules version a quality score that differs is the models' (or
    a lie): refused as ever, and the line says the rules were the same."""
    bundle = _made_under_rules(fleet_kit, tmp_path, monkeypatch, _box_rules(), "3.0")
    fleet = fleet_of(tmp_path)
    fleet.ensure(fleet_kit["models"])
    before = snapshot(fleet)
    out = sonoedge("bundle", "install", str(bundle), "--config",
                   str(device_config(tmp_path, fleet_kit)))
    assert out.returncode == 2
    one_line_error(out, "bundle 3.0 failed its self-test, factory stays",
                   "quality_score ", f"(+-0.05) (same quality rules {_box_rules()})")
    assert "not compared" not in out.stderr + out.stdout
    assert snapshot(fleet_of(tmp_path)) == before
    assert _bundle_record(bundle)[1] == _box_rules()


def test_an_old_bundle_without_the_rules_record_installs_and_is_compared_as_before(
        tmp_path, fleet_kit, monkeypatch):
    """A bundle made before the rules version was recorded: its rules are unknown, so the
    quality score is compared as before (the only check of the learned quality head's
    numbers). One made under this box's rules installs; one that differs is refused, and
    the line tells the district how to mend it."""
    old = _without_rules_record(fleet_kit, fleet_kit["make"]("old-honest", "3.0"),
                                tmp_path / "old.bundle")
    assert _bundle_record(old)[1] is None
    for box in ("box1", "box2"):
        (tmp_path / box).mkdir()
    out = sonoedge("bundle", "install", str(old), "--config",
                   str(device_config(tmp_path / "box1", fleet_kit)))
    assert out.returncode == 0, out.stderr
    assert "bundle 3.0 installed (was factory)" in out.stdout
    assert "not compared" not in out.stdout + out.stderr
    other = _without_rules_record(
        fleet_kit, _made_under_rules(fleet_kit, tmp_path, monkeypatch, "1.3.1", "3.0"),
        tmp_path / "old-other-rules.bundle")
    out = sonoedge("bundle", "install", str(other), "--config",
                   str(device_config(tmp_path / "box2", fleet_kit)))
    one_line_error(out, "bundle 3.0 failed its self-test, factory stays", "quality_score ",
                   "(the bundle does not name the quality rules it was made with, this box "
                   f"scores with {_box_rules()} (the rules sonoedge ships): make bundle 3.0 "
                   "(old-other-rules.bundle) again with a current sonoedge: `sonoedge bundle "
                   "make --models MODELS --key KEY --frames FRAMES --version 3.0.1 --group "
                   f"{GROUP} --min-app 0.1.0 --pixel-size 0.12 --out NEW.bundle`)")


def _clinic_config(tmp_path: Path, kit: dict, version: str = "2.0.1") -> Path:
    """A box whose loop runs the clinic's own quality rules (`version`, scoring the frame
    otherwise than the shipped ones) from its config's `[quality] rules`."""
    config = device_config(tmp_path, kit)
    clinic = _rules_copy(tmp_path / "clinic-rules.toml", version)
    config.write_text(config.read_text() + f'[quality]\nrules = "{clinic}"\n')
    return config


def test_the_selftest_scores_with_the_box_s_own_quality_rules(tmp_path, fleet_kit,
                                                               monkeypatch):
    """The self-test judges by the rules the box's loop runs (`[quality] rules`), not the
    ones the app ships: a box running the very rules a bundle was made with compares its
    quality score (it was told "not compared": the shipped ones differed), and a box under
    other rules than the bundle's is told so even where the app ships the bundle's."""
    bundle = _made_under_rules(fleet_kit, tmp_path, monkeypatch, "1.3.1", "3.0")
    for box in ("same", "other"):
        (tmp_path / box).mkdir()
    out = sonoedge("bundle", "install", str(bundle), "--config",
                   str(_clinic_config(tmp_path / "same", fleet_kit, "1.3.1")))
    assert out.returncode == 0, out.stderr
    assert "self-test: scored with quality rules 1.3.1 (its [quality] rules, " \
        "clinic-rules.toml)\n" in out.stdout
    assert "not compared" not in out.stdout + out.stderr
    assert "unchecked" not in fleet_of(tmp_path / "same").status()
    # the shipped rules' bundle, on a box whose loop runs the clinic's
    out = sonoedge("bundle", "install", str(fleet_kit["v2"]), "--config",
                   str(_clinic_config(tmp_path / "other", fleet_kit)))
    assert out.returncode == 0, out.stderr
    assert ("self-test: quality score not compared, learned quality head compared instead (5 "
            f"severities): made with quality rules {_box_rules()}, this box runs 2.0.1 (its "
            "[quality] rules, clinic-rules.toml)\n") in out.stdout


def test_a_learned_head_that_lies_is_refused_under_other_quality_rules(tmp_path, fleet_kit,
                                                                        monkeypatch):
    """Under other rules the quality score means nothing, but the learned head's own
    severities are the models': a bundle whose head gives other numbers than it records is
    refused (it installed, its head checked only for loading and running), and the line
    says which branch, here and expected."""
    bundle = _made_under_rules(fleet_kit, tmp_path, monkeypatch, "1.3.1", "3.0",
                               blur_shift=0.5)
    fleet = fleet_of(tmp_path)
    fleet.ensure(fleet_kit["models"])
    before = snapshot(fleet)
    out = sonoedge("bundle", "install", str(bundle), "--config",
                   str(_clinic_config(tmp_path, fleet_kit)))
    honest = _learned_record(fleet_kit["v2"])["frames"]["selftest/BRAIN-TV.png"]["blur"]
    line = one_line_error(out, "bundle 3.0 failed its self-test, factory stays",
                          f"BRAIN-TV.png: learned:blur {honest} here, the bundle expects "
                          f"{honest + 0.5} (+-0.05)")
    assert "quality_score" not in line
    assert snapshot(fleet_of(tmp_path)) == before


def test_health_tells_the_district_the_quality_score_was_not_compared(tmp_path, fleet_kit,
                                                                       monkeypatch):
    """The note went to the log and `bundle install` only: the district could not see
    that a box runs a model whose quality score was not checked. Health carries it, within
    its schema, while that set runs (another process reads it; its trial's end keeps it; a
    fully compared newer bundle clears it), and the district's report and devices page
    show it. A bundle from before the learned head's numbers were recorded says they were
    not checked either."""
    from central.dashboard.pages import _bundle_cell
    from central.dashboard.queries import DeviceRow, device_flags
    from central.dashboard.store import _health_digest
    from central.fleet import format_fleet
    from edge.uplink.messages import build_health, envelope
    from wire.schema import load_schema, validate

    no_learned = _without_rules_record(
        fleet_kit, _made_under_rules(fleet_kit, tmp_path, monkeypatch, "1.3.1", "3.0"),
        tmp_path / "no-learned.bundle", drop=(LEARNED,))
    assert _bundle_record(no_learned)[1] == "1.3.1"
    config = _clinic_config(tmp_path, fleet_kit)
    out = sonoedge("bundle", "install", str(no_learned), "--config", str(config))
    assert out.returncode == 0, out.stderr
    said = ("quality score not compared, nor the learned quality head's numbers (the bundle "
            "records none; a current `sonoedge bundle make` does): made with quality rules "
            "1.3.1, this box runs 2.0.1 (its [quality] rules, clinic-rules.toml)")
    assert f"self-test: {said}\n" in out.stdout
    status = fleet_of(tmp_path).status()  # as the loop, another process, reads it
    assert status["bundle"] == "3.0"
    assert status["unchecked"] == said[:157] + "..."
    payload = build_health(envelope("health", "dev-a", "c", "boot"), {}, {}, {}, 1.0, {},
                           1.0, 60.0, fleet=status)
    payload |= {"msg_id": "00000000-0000-4000-8000-000000000000", "seq": 1}
    assert validate(payload, load_schema("health")) == []
    digest = _health_digest(payload)["bundle"]
    assert digest["unchecked"] == status["unchecked"]
    assert "self-test: quality score not compared, nor the learned quality head&#x27;s " \
        "numbers (the bundle records none; a current" in _bundle_cell(digest)
    now = time.time()
    row = DeviceRow("dev-a", "clinic-7", now, "online", now, 0, 0, 0, 0, 5000.0, 40.0, {},
                    digest, now)
    assert "bundle's quality score not checked" in device_flags(row, now)
    assert "self-test: quality score not compared" in format_fleet(
        [{"device_id": "dev-a", **status}])
    # still so once its trial confirmed it: it still runs unchecked
    fleet = fleet_of(tmp_path)
    assert fleet.tick(3600.0) and fleet_of(tmp_path).status()["unchecked"] == \
        status["unchecked"]
    # a newer bundle made under the box's own rules compares everything: the note goes
    monkeypatch.setattr("edge.models.quality.RULES_FILE", tmp_path / "clinic-rules.toml")
    same = fleet_kit["make"]("clinic-rules-4", "4.0")
    monkeypatch.undo()
    out = sonoedge("bundle", "install", str(same), "--config", str(config))
    assert out.returncode == 0, out.stderr
    assert "not compared" not in out.stdout
    assert "unchecked" not in fleet_of(tmp_path).status()


def test_an_old_bundle_is_refused_under_the_box_s_own_rules_and_the_line_says_how_to_remake(
        tmp_path, fleet_kit):
    """A bundle from before the rules were recorded, made under the shipped rules, on a box
    whose loop runs the clinic's: its rules are unknown, so its quality score is compared
    under the box's (the only check of its learned head's numbers) and differs. Refused,
    since "maybe other rules" is also "maybe a broken head"; the line names the bundle's
    file, the rules the box scored with and the command that makes it again, whose bundle
    then installs on that box."""
    old = _without_rules_record(fleet_kit, fleet_kit["make"]("old-shipped", "3.0"),
                                tmp_path / "old-shipped.bundle")
    config = _clinic_config(tmp_path, fleet_kit)
    out = sonoedge("bundle", "install", str(old), "--config", str(config))
    one_line_error(out, "bundle 3.0 failed its self-test, factory stays",
                   "BRAIN-TV.png: quality_score ",
                   "(the bundle does not name the quality rules it was made with, this box "
                   "scores with 2.0.1 (its [quality] rules, clinic-rules.toml): make bundle 3.0 "
                   "(old-shipped.bundle) again with a current sonoedge: `sonoedge bundle make "
                   "--models MODELS --key KEY --frames FRAMES --version 3.0.1 --group "
                   f"{GROUP} --min-app 0.1.0 --pixel-size 0.12 --out NEW.bundle`)")
    remade = tmp_path / "NEW.bundle"
    made = sonoedge("bundle", "make", "--models", str(fleet_kit["models"]), "--key",
                    str(fleet_kit["key"]), "--frames", str(FRAME), "--version", "3.0.1",
                    "--group", GROUP, "--min-app", "0.1.0", "--pixel-size", "0.12", "--out",
                    str(remade))
    assert made.returncode == 0, made.stderr
    out = sonoedge("bundle", "install", str(remade), "--config", str(config))
    assert out.returncode == 0, out.stderr
    assert "learned quality head compared instead" in out.stdout


def test_a_box_whose_own_quality_rules_do_not_load_never_refuses_the_bundle_for_it(
        tmp_path, fleet_kit):
    """The self-test judges by the box's rules: where they do not load (its loop cannot
    start on them either) that is the box's trouble, one line, and the same bundle installs
    once they are mended (a refusal would have kept it off the box for good)."""
    config = device_config(tmp_path, fleet_kit)
    base = config.read_text()
    config.write_text(base + f'[quality]\nrules = "{tmp_path / "missing.toml"}"\n')
    out = sonoedge("bundle", "install", str(fleet_kit["v2"]), "--config", str(config))
    one_line_error(out, "bundle 2.0: this box's quality rules do not load, so no self-test: ",
                   "missing.toml: quality rules file not found; factory stays")
    assert fleet_of(tmp_path).status()["bundle"] == "factory"
    config.write_text(base)
    out = sonoedge("bundle", "install", str(fleet_kit["v2"]), "--config", str(config))
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("record", [
    b"[]", b'{"quality_rules": "1.3.9", "by": "x"}', b'{"quality_rules": 139}',
    b'{"quality_rules": "1.3.9\\n"}', b'{"quality_rules": "1.3.9.1.2"}',
    b'{"quality_rules": "1.3.9 or else"}', b'{"quality_rules": NaN}', b"\xff\xfe",
    b'{"quality_rules": [[[[["1"]]]]]}', b'{"quality_rules": "' + b"9" * 2000 + b'"}',
    b'{"quality_rules": "1.3.9", "quality_rules": "1.3.8"}', b""])
def test_a_hostile_rules_record_is_one_line_naming_it(record):
    """Signed, and still read as hostile: bounded, exact keys, a dotted version."""
    from wire.fleet import parse_made_with

    with pytest.raises(BundleError) as refused:
        parse_made_with(record)
    line = str(refused.value)
    assert line.startswith("selftest/made_with.json: ") and "\n" not in line, line
    assert len(line) < 200, line


def test_a_signed_bundle_with_a_bad_rules_record_fails_its_selftest_in_one_line(
        tmp_path, fleet_kit):
    """Signed, listed and hashed, and still read as hostile on the box."""
    with tarfile.open(fleet_kit["v2"], "r:xz") as tar:
        manifest = json.loads(tar.extractfile("bundle.json").read())
        blobs = {m.name: tar.extractfile(m).read() for m in tar.getmembers()[2:]}
    for name, member, record, needle in (
            ("a", MADE_WITH, b'{"quality_rules": "../../etc"}',
             "quality_rules must be 1-4 dotted numbers such as 2025.6.1, got '../../etc'"),
            ("b", MADE_WITH, b"x" * 2000,
             f"bundle manifest: {MADE_WITH} must be at most 1024 bytes"),
            ("c", LEARNED, b'{"frames": {"selftest/../../etc/passwd": {"blur": 0.1}}}',
             f"{LEARNED}: frames: 'selftest/../../etc/passwd' is not a self-test frame"),
            ("d", LEARNED, b"x" * 20000,
             f"bundle manifest: {LEARNED} must be at most 16384 bytes")):
        original = blobs[member]
        blobs[member] = record
        manifest["version"] = "3.0"
        for entry in manifest["files"]:
            if entry["path"] == member:
                entry["sha256"] = hashlib.sha256(record).hexdigest()
                entry["size"] = len(record)
        bad = _signed_archive(fleet_kit, tmp_path / f"{name}.bundle", manifest,
                              [(tarfile.TarInfo(n), b) for n, b in blobs.items()])
        box = tmp_path / name
        box.mkdir()
        fleet = fleet_of(box)
        fleet.ensure(fleet_kit["models"])
        before = snapshot(fleet)
        out = sonoedge("bundle", "install", str(bad), "--config",
                       str(device_config(box, fleet_kit)))
        one_line_error(out, needle)
        assert snapshot(fleet_of(box)) == before
        blobs[member] = original
        for entry in manifest["files"]:
            if entry["path"] == member:
                entry["sha256"] = hashlib.sha256(original).hexdigest()
                entry["size"] = len(original)


@pytest.mark.parametrize("record", [
    b"[]", b'{"frames": {}, "by": "x"}', b'{"frames": []}',
    b'{"frames": {"selftest/BRAIN-TV.png": {"blur": "0.1"}}}',
    b'{"frames": {"selftest/BRAIN-TV.png": {"blur": NaN}}}',
    b'{"frames": {"selftest/BRAIN-TV.png": {"blur": 1e400}}}',
    b'{"frames": {"selftest/BRAIN-TV.png": {"Blur\\n": 0.1}}}',
    b'{"frames": {"selftest/BRAIN-TV.png": [0.1]}}',
    b'{"frames": {"selftest/BRAIN-TV.png": {' + b", ".join(
        b'"b%d": 0.1' % i for i in range(17)) + b"}}}",
    b'{"frames": {"selftest/other.png": {"blur": 0.1}}}',
    b'{"frames": {"' + b"x" * 20000 + b'": {}}}', b"\xff\xfe", b"",
    b'{"frames": {"selftest/BRAIN-TV.png": {"blur": [[[[0.1]]]]}}}'])
def test_a_hostile_learned_record_is_one_line_naming_it(record):
    """Signed, and still read as hostile: bounded, exact keys, the manifest's own frames,
    a head's label for each branch, finite numbers."""
    from wire.fleet import SelfTestFrame, parse_learned

    with pytest.raises(BundleError) as refused:
        parse_learned(record, (SelfTestFrame("selftest/BRAIN-TV.png", {"plane": "x"}),))
    line = str(refused.value)
    assert line.startswith(f"{LEARNED}: ") and "\n" not in line, line
    assert len(line) < 200, line


CRASHING_RUN = """
import os, signal, sys
import edge.scorer as scorer
scorer.Scorer.score = lambda self, *a, **k: os.kill(os.getpid(), signal.SIGKILL)
from edge.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _run_loop(config: Path, crash: bool, source: Path) -> subprocess.CompletedProcess:
    code = CRASHING_RUN if crash else "import sys; from edge.cli.main import main; " \
                                      "sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code, "run", "--config", str(config),
                           "--source", str(source), "--once"], capture_output=True,
                          text=True, timeout=120, env=env, cwd=REPO)


def test_a_crash_loop_after_a_swap_rolls_back_to_the_previous_set(tmp_path, fleet_kit):
    config = device_config(tmp_path, fleet_kit, crash_limit=3)
    assert sonoedge("bundle", "install", str(fleet_kit["v2"]), "--config",
                    str(config)).returncode == 0
    for _ in range(3):  # the new set is loaded, then the loop dies on its first frame
        out = _run_loop(config, crash=True, source=FRAME)
        assert out.returncode == -9, out.stderr[-2000:]
        assert fleet_of(tmp_path).status()["bundle"] == "2.0"
    out = _run_loop(config, crash=False, source=FRAME)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "rolled back from 2.0 to factory: the loop crashed 3 times" in out.stdout
    fleet = fleet_of(tmp_path)
    assert os.readlink(fleet.current) == "slots/a/models"
    status = fleet.status()
    assert status["bundle"] == "factory" and status["rollback"]["from"] == "2.0"
    one_line_error(sonoedge("bundle", "install", str(fleet_kit["v2"]), "--config",
                            str(config)), "2.0 was rolled back on this box: the loop crashed 3")


def test_a_clean_run_counts_no_crash_and_the_trial_ends_in_a_confirmation(tmp_path, fleet_kit):
    config = device_config(tmp_path, fleet_kit, trial_min=0.1)
    assert sonoedge("bundle", "install", str(fleet_kit["v2"]), "--config",
                    str(config)).returncode == 0
    out = _run_loop(config, crash=False, source=FRAME)
    assert out.returncode == 0, out.stderr[-2000:]
    trial = fleet_of(tmp_path).state["trial"]
    assert trial["crashes"] == 0 and trial["running"] is False
    fleet = fleet_of(tmp_path, trial_min=0.1)
    assert fleet.tick(7.0) and fleet.status()["state"] == "confirmed"


KILL_AT = """
import os, signal, sys
import edge.fleet.slots as slots
step = sys.argv.pop(1)
slots._step = lambda name: os.kill(os.getpid(), signal.SIGKILL) if name == step else None
from edge.cli.main import main
sys.exit(main(sys.argv[1:]))
"""
INSTALL_STEPS = ["cleared-staging", "extracting", "extracted", "selftested", "spare-removed",
                 "staged", "intent", "swapped", "trial"]


def side_by_side(work, items: list) -> list:
    """`work` on each item in threads, two or more at a time (each a real process of its own
    and its own folder: no state shared), the results in the items' order."""
    with ThreadPoolExecutor(max(2, os.cpu_count() or 1)) as pool:
        return list(pool.map(work, items))


def test_sigkill_at_every_step_of_an_install_leaves_a_complete_set(tmp_path, fleet_kit):
    """Every step, each in an install process (and a device folder) of its own, killed
    there by a real SIGKILL. The nine share nothing but what they read (the bundle, the
    trusted keys, the factory set), so they run side by side (the second core); then each
    is checked in turn, and each install killed before its swap is done again, those
    again side by side."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def killed_at(i: int) -> tuple[Path, Path, subprocess.CompletedProcess]:
        where = tmp_path / f"k{i}"
        where.mkdir()
        config = device_config(where, fleet_kit)
        return where, config, subprocess.run(
            [sys.executable, "-c", KILL_AT, INSTALL_STEPS[i], "bundle", "install",
             str(fleet_kit["v2"]), "--config", str(config)],
            capture_output=True, text=True, timeout=120, env=env, cwd=REPO)

    again = {}
    killed = side_by_side(killed_at, list(range(len(INSTALL_STEPS))))
    for step, (where, config, out) in zip(INSTALL_STEPS, killed, strict=True):
        assert out.returncode == -9, (step, out.stderr[-2000:])
        fleet = fleet_of(where)
        fleet.ensure(fleet_kit["models"])  # what the loop's start does
        assert check_set(fleet.current) is None, step
        swapped = INSTALL_STEPS.index(step) >= INSTALL_STEPS.index("swapped")
        status = fleet.status()
        assert status["bundle"] == ("2.0" if swapped else "factory"), (step, status)
        assert status["state"] == ("trial" if swapped else "factory"), (step, status)
        if not swapped:  # the install can simply be done again
            again[step] = config
    assert len(again) == INSTALL_STEPS.index("swapped")
    redone = side_by_side(lambda config: sonoedge("bundle", "install", str(fleet_kit["v2"]),
                                                  "--config", str(config)),
                          list(again.values()))
    for step, out in zip(again, redone, strict=True):
        assert out.returncode == 0, (step, out.stderr)


@pytest.mark.parametrize("step", ["rollback-intent", "rollback-swapped"])
def test_sigkill_during_a_rollback_still_ends_on_the_previous_set(tmp_path, fleet_kit, step):
    config = device_config(tmp_path, fleet_kit, crash_limit=1)
    assert sonoedge("bundle", "install", str(fleet_kit["v2"]), "--config",
                    str(config)).returncode == 0
    state = fleet_of(tmp_path)
    state.state["trial"]["running"] = True  # the previous start crashed
    state.save()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", KILL_AT, step, "run", "--config", str(config),
                          "--source", str(FRAME), "--once"], capture_output=True, text=True,
                         timeout=120, env=env, cwd=REPO)
    assert out.returncode == -9, out.stderr[-2000:]
    fleet = fleet_of(tmp_path)
    fleet.ensure(fleet_kit["models"])
    assert check_set(fleet.current) is None
    assert os.readlink(fleet.current) == "slots/a/models"
    assert fleet.status()["rollback"]["from"] == "2.0"


def test_a_plain_models_folder_still_works_with_the_fleet_off(tmp_path, fleet_kit):
    out = sonoedge("run", "--source", str(FRAME), "--once", "--state-dir",
                   str(tmp_path / "s"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert not (tmp_path / "s" / "fleet").exists()


def test_the_loop_restarts_on_a_bundle_installed_while_it_runs(tmp_path, fleet_kit, data_dir):
    """`sonoedge bundle install` from a USB stick while the loop runs: the loop notices the
    switch and starts again on the new set, without a process restart. The switch waits for
    the exam's end (test_fleet_restart_s32.py), which Stop (SIGUSR1) gives at once. A clip
    of about 40 s played at scanner speed: on the 12 s demo clip the install, with its
    self-test, lost the race to the clip's end on a loaded host (two test workers)."""
    from tests.web_harness import make_clip

    clip = make_clip(data_dir, tmp_path / "clip.avi", black_s=0.5, per_head=20, rounds=4)
    config = device_config(tmp_path, fleet_kit)
    config.write_text(config.read_text() + "[source]\npace = true\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "run.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(config),
                             "--source", str(clip)], stdout=log, stderr=subprocess.STDOUT,
                            env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while b"advice:" not in (tmp_path / "run.log").read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "run.log").read_text()[-2000:]
            time.sleep(0.2)
        out = sonoedge("bundle", "install", str(fleet_kit["v2"]), "--config", str(config))
        assert out.returncode == 0, out.stderr
        while b"the loop restarts on them once no exam is open" not in (
                tmp_path / "run.log").read_bytes():  # the loop has seen the switch
            assert proc.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "run.log").read_text()[-2000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGUSR1)  # the midwife's Stop: her exam ends now
        def again() -> bool:  # switched, and scoring the demo once more (an exam started)
            text = (tmp_path / "run.log").read_text()
            return "starting again" in text and "started (protocol" in text.split(
                "starting again")[-1]

        while not again():
            assert proc.poll() is None and time.monotonic() < deadline + 30, \
                (tmp_path / "run.log").read_text()[-2000:]
            time.sleep(0.2)
        assert "models switched to bundle 2.0" in (tmp_path / "run.log").read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
    assert proc.returncode == 0, (tmp_path / "run.log").read_text()[-2000:]


def test_health_carries_the_fleet_status_within_its_schema(tmp_path, fleet_kit):
    from edge.uplink.messages import build_health, envelope
    from wire.schema import load_schema, validate

    config = device_config(tmp_path, fleet_kit)
    assert sonoedge("bundle", "install", str(fleet_kit["v2"]), "--config",
                    str(config)).returncode == 0
    fleet = fleet_of(tmp_path)
    fleet.state["rollback"] = {"from": "1.9", "to": "factory", "reason": "x" * 500, "ts": 1.0}
    status = fleet.status()
    payload = build_health(envelope("health", "dev-a", "c", "boot"), {}, {}, {}, 1.0, {},
                           1.0, 60.0, fleet=status)
    payload |= {"msg_id": "00000000-0000-4000-8000-000000000000", "seq": 1}
    assert validate(payload, load_schema("health")) == []
    assert payload["fleet"]["bundle"] == "2.0" and payload["fleet"]["state"] == "trial"
    assert len(payload["fleet"]["rollback"]["reason"]) == 160


def test_the_journal_keeps_within_its_quota_and_says_so(tmp_path, caplog):
    from edge.result import FrameResult
    from edge.store.journal import QUOTA_CHECK_EVERY, Journal

    journal = Journal(tmp_path / "j.sqlite", quota_bytes=400_000)
    run = journal.start_run("test", {})
    big = {"score": 0.5, "advice": None, "criteria": {"c": {"message": "m" * 2000}}}
    for i in range(QUOTA_CHECK_EVERY * 3):
        journal.append(run, FrameResult("s", i, "4CH", 0.9, 1.0, 0.0, 0.0, 0.0, None, "m",
                                        0.0, float(i), quality=big))
    assert journal.used_bytes() <= 400_000 * 1.1
    assert journal.quota_shed > 0
    assert "over its quota of 400000 bytes" in caplog.text
    assert journal.stats()["journal_quota_shed"] == journal.quota_shed
    journal.close()


def test_a_log_file_is_rotated_at_its_size(tmp_path):
    import logging

    from edge.config import LogSettings
    from edge.logfile import log_to_file

    handler = log_to_file(LogSettings(file=str(tmp_path / "log" / "sonoedge.log"),
                                      max_mb=0.1, backups=2))
    try:
        for _ in range(3000):
            logging.getLogger("sonoedge.test").warning("x" * 100)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    files = sorted(p.name for p in (tmp_path / "log").iterdir())
    assert files == ["sonoedge.log", "sonoedge.log.1", "sonoedge.log.2"]
    assert all((tmp_path / "log" / f).stat().st_size <= 100_200 for f in files)


@pytest.mark.parametrize("check", [parse_version, check_group])
def test_a_fleet_name_with_a_trailing_newline_or_of_any_length_is_one_short_line(check):
    """Offers are read before any signature: "2.0\\n" or "district-a\\n" passed the old
    patterns (Python's $ matches before a final newline), and a 512 kB value was quoted
    whole in the error line."""
    good = "2.0" if check is parse_version else "district-a"
    check(good)
    for bad in (good + "\n", "9" * 500_000):
        with pytest.raises(BundleError) as caught:
            check(bad)
        assert len(str(caught.value)) < 200 and "\n" not in str(caught.value)


def _central(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "central.cli", "bundle", *args],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=60)


def _central_refused(out: subprocess.CompletedProcess, *needles: str) -> None:
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("sonoedge-central bundle") and len(line) < 300, line
    for needle in needles:
        assert needle in line, line


def test_the_district_refuses_a_bundle_or_keys_it_cannot_trust_in_one_line_naming_them(
        tmp_path, fleet_kit):
    www = str(tmp_path / "www")
    v1 = str(fleet_kit["v1"])
    fifo = tmp_path / "fifo.bundle"
    os.mkfifo(fifo)  # was waited on for ever
    _central_refused(_central("export", str(fifo), "--group", GROUP, "--out", www),
                     "fifo.bundle", "not a regular file")
    _central_refused(_central("export", v1, "--group", GROUP + "\n", "--out", www),
                     "bad device group")
    _central_refused(_central("export", v1, "--group", "g" * 100_000, "--out", www),
                     "bad device group")
    garbage = tmp_path / "garbage"
    garbage.mkdir(mode=0o755)
    (garbage / "district.pub").write_bytes(b"not a key\n")
    os.chmod(garbage / "district.pub", 0o644)
    _central_refused(_central("export", v1, "--group", GROUP, "--out", www,
                              "--keys", str(garbage)), "garbage/district.pub")
    (garbage / "district.pub").write_bytes(fleet_kit["key"].read_bytes())  # the private key
    _central_refused(_central("export", v1, "--group", GROUP, "--out", www,
                              "--keys", str(garbage)), "garbage/district.pub")
    open_keys = tmp_path / "open"
    open_keys.mkdir()
    (open_keys / "district.pub").write_bytes((fleet_kit["trusted"] / "district.pub").read_bytes())
    os.chmod(open_keys, 0o777)  # anyone could add their own key
    _central_refused(_central("export", v1, "--group", GROUP, "--out", www,
                              "--keys", str(open_keys)), str(open_keys), "other users")
    _central_refused(_central("publish", v1, "--group", GROUP, "--mqtt-url",
                              "mqtt://127.0.0.1:1"), "127.0.0.1:1", "cannot connect")
    _central_refused(_central("publish", v1, "--group", GROUP, "--mqtt-url",
                              "mqtt://127.0.0.1:1", "--chunk-kb", "abc"), "--chunk-kb")
    assert not (tmp_path / "www").exists()
    ok = _central("export", v1, "--group", GROUP, "--out", www,
                  "--keys", str(fleet_kit["trusted"]))
    assert ok.returncode == 0, ok.stderr


def test_a_trusted_key_that_is_a_pipe_is_refused_not_waited_on(tmp_path, fleet_kit):
    """Opening a FIFO waits for a writer, for ever: the device checked its trusted keys
    only after opening them. Device and district now read keys the same way (wire/fleet)."""
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o755)
    shutil.copy(fleet_kit["trusted"] / "district.pub", keys / "district.pub")
    os.mkfifo(keys / "extra.pub", 0o644)
    caught = raised_within(lambda: load_trusted_keys(keys), BundleError)
    assert "extra.pub: not a key file" in str(caught)


def test_a_killed_install_s_staging_folder_is_removed_at_the_next_start_unless_held(
        tmp_path, fleet_kit):
    """SIGKILL mid-unpack leaves `slots/.staging` holding the card's space; the next start
    frees it. An install running beside the service (by hand) holds its lock: left alone."""
    import fcntl

    from edge.config import load_settings
    from edge.fleet.agent import start_fleet

    config = device_config(tmp_path, fleet_kit)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", KILL_AT, "extracted", "bundle", "install",
                          str(fleet_kit["v2"]), "--config", str(config)],
                         capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert out.returncode == -9, out.stderr[-2000:]
    fleet = fleet_of(tmp_path)
    staging = fleet.root / "slots" / ".staging"
    assert any(staging.rglob("*.tflite")), "the kill left the unpacked models"
    settings = load_settings(config)
    with open(fleet.root / "install.lock", "a+") as lock:  # an install is running
        fcntl.flock(lock, fcntl.LOCK_EX)
        start_fleet(settings, tmp_path / "state", echo=lambda _: None)
        assert staging.exists()
    start_fleet(settings, tmp_path / "state", echo=lambda _: None)
    assert not staging.exists()
    assert fleet_of(tmp_path).status()["bundle"] == "factory"
