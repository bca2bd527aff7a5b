"""A new district's walk-through: what its IT technician and health officer see, on real
servers (Mosquitto, the collector on SQLite, `sonoedge-central serve`) filled by real
`sonoedge run --once` devices on HC18 heads and SonoNet's example screens.

box-a's first messages never reach the district: the collector was down (the broker kept
them for its session and acknowledged them to the box) and the broker then crashed before
saving them, as board/mosquitto.conf.example warns ("the collector's report shows such
holes as lost"). Then the collector comes back and both boxes run. box-b runs the
second-trimester screen on a few heads and three screens: its exam misses most of the 13
slots and, to stay under 1 KB on the wire, sends their count without their names.
"""

from __future__ import annotations

import json
import re
import signal

import pytest

from central.dashboard.store import UNNAMED_SLOT
from tests.conftest import REPO
from tests.conftest_mqtt import outbox_last_seq, wait_for
from tests.dashboard_harness import (
    HEADS,
    _device_run,
    central,
    dashboard,
    district_servers,
    login,
    messages,
    request,
    wait_rolled_up,
)

CLINICS = {"box-a": "clinic-a", "box-b": "clinic-b"}
_SLOTS = (("Head, transventricular plane", "Brain (Tv.)"),
          ("Head, transcerebellar plane", "Brain (Cb.)"),
          ("Face in profile, sagittal", "Profile"), ("Upper lip and nostrils, coronal", "Lips"),
          ("Spine, sagittal, skin intact", "Spine (sag.)"),
          ("Spine, coronal, three centres", "Spine (cor.)"), ("Heart, four-chamber view", "4CH"),
          ("Heart, left outflow tract", "LVOT"), ("Heart, right outflow tract", "RVOT"),
          ("Heart, three-vessel view", "3VV"), ("Abdomen, stomach and cord", "Abdominal"),
          ("Kidneys, both, transverse", "Kidneys"), ("Femur, whole, horizontal", "Femur"))
LONG_NAMED_SCREEN = (
    'version = "site-1"\nanatomy_criteria = ["head_found"]\n'
    '[protocols.second-trimester]\ntitle = "Second-trimester screen"\n'
    "planes = [" + ", ".join(f'{{name = "{n}", accepts = ["{p}"]}}' for n, p in _SLOTS)
    + "]\nmin_quality = 0.5\n[protocols.biometry]\ntitle = \"Head\"\n"
    'planes = [{name = "Head", accepts = ["Brain (Tv.)", "Brain (Cb.)"]}]\n')
ADMIN = ("officer", "admin-password-1")


@pytest.fixture(scope="module")
def district(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("walk")
    with district_servers(tmp, CLINICS) as servers:
        db, broker = servers.db, servers.broker
        servers.collector().stop()  # its session stays at the broker, holding what comes
        _device_run(tmp, broker, 0, "box-a", "biometry", (), HEADS[:2], data_dir)
        before = outbox_last_seq(tmp / "state-box-a")
        assert before >= 2
        broker.stop(signal.SIGKILL)  # what it held for the collector is gone
        broker.start()
        servers.collector()
        _device_run(tmp, broker, 1, "box-a", "biometry", (), HEADS[2:5], data_dir)
        # The site names its 13 slots in words (up to 32 characters each, as a protocols
        # file may): the names of the ten it misses no longer fit 1 KB beside the rest, and
        # the exam sheds them, keeping their count.
        protocols = tmp / "protocols.toml"
        protocols.write_text(LONG_NAMED_SCREEN)
        _device_run(tmp, broker, 2, "box-b", "second-trimester", ("4CH", "FEMUR", "LIPS"),
                    HEADS[5:8], data_dir, f'protocols_file = "{protocols}"\n')

        def all_stored() -> bool:
            seqs: dict[str, set] = {dev: set() for dev in CLINICS}
            for m in messages(db):
                if m["kind"] != "status":
                    seqs[m["device_id"]].add(m["seq"])
            first = {"box-a": before + 1, "box-b": 1}
            return all(seqs[dev] == set(range(first[dev],
                                              outbox_last_seq(tmp / f"state-{dev}") + 1))
                       for dev in CLINICS)

        wait_for(all_stored, 30, "every message sent after the collector subscribed")
        clinics = tmp / "clinics.csv"
        clinics.write_text("clinic-a,north,Ambo\nclinic-b,south,Bora\n")
        for args, stdin in ((["districts", str(clinics)], ""),
                            (["users", "add", ADMIN[0], "--role", "admin"], ADMIN[1])):
            out = central(*args, "--db", db, stdin=stdin + "\n")
            assert out.returncode == 0, out.stderr
        with dashboard(db, tmp) as base:
            cookie = login(base, ADMIN)
            sent = messages(db)
            wait_rolled_up(base, cookie, sum(1 for m in sent if m["kind"] == "exam"))
            yield {"db": db, "base": base, "cookie": cookie, "sent": sent, "tmp": tmp,
                   "lost_before_collector": before}


def _get(district, path: str) -> str:
    status, _, body = request(district["base"], path, district["cookie"])
    assert status == 200, (path, status, body[:300])
    return body.decode()


def _shed_exams(district) -> list[dict]:
    """Exams that sent how many slots they missed but not all of their names."""
    out = []
    for m in district["sent"]:
        p = m["payload"].get("protocol") or {}
        if m["kind"] == "exam" and p["required"] - p["captured"] > len(p["missing"]):
            out.append(m)
    return out


def _report(district) -> dict:
    out = central("report", "--db", district["db"], "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_an_exam_whose_missing_slots_were_not_named_counts_once_in_slots_most_missed(
        district):
    shed = _shed_exams(district)
    assert shed, "the second-trimester exam on three screens sheds its missing slots' names"
    html = _get(district, "/completeness?weeks=8")
    bars = re.findall(r'data-protocol="([^"]+)" data-slot="([^"]+)" data-missed="(\d+)" '
                      r'data-exams="(\d+)"', html)
    assert bars, html[:2000]
    for protocol, slot, missed, exams in bars:
        # a share of the protocol's exams: never more of them than there are
        assert int(missed) <= int(exams), (protocol, slot, missed, exams)
    unnamed = {p: int(n) for p, s, n, _ in bars if s == UNNAMED_SLOT}
    assert unnamed == {"second-trimester": len(shed)}
    assert max(int(x) for x in re.findall(r"(\d+)%", html)) <= 100  # no "900%: 9 of 1"
    csv = _get(district, "/api/missed.csv?weeks=8").splitlines()
    # its columns as before, in their order; then the protocol's exams and the share of
    # them; then how the misses were said (not found, found not clear enough, not said);
    # the district last
    assert csv[0] == ("clinic_id,protocol,slot,exams_missing_it,protocol_exams,"
                      "share_missing_it,missed_not_found,missed_not_clear_enough,"
                      "missed_not_said,district")
    (line,) = [x for x in csv if x.startswith(f"clinic-b,second-trimester,{UNNAMED_SLOT},")]
    # a slot whose name was shed cannot say whether it was found: not said, every one
    assert line.split(",")[6:9] == ["0", "0", str(len(shed))], line
    screens = int(line.split(",")[4])
    assert line.split(",")[3] == str(len(shed)) and screens >= len(shed)
    # the per-clinic table says how many exams of how many of the protocol's
    assert f"{UNNAMED_SLOT} {len(shed) / screens:.0%} ({len(shed)} of {screens})" in html


def test_the_report_says_how_many_missing_slots_an_exam_did_not_name(district):
    shed = _shed_exams(district)
    assert shed
    exam = shed[0]["payload"]
    p = exam["protocol"]
    not_named = p["required"] - p["captured"] - len(p["missing"])
    rows = {e["exam_id"]: e for e in _report(district)["recent_exams"]}
    assert rows[exam["exam_id"]]["missing_not_named"] == not_named
    text = central("report", "--db", district["db"])
    assert text.returncode == 0, text.stderr
    line = next(x for x in text.stdout.splitlines()
                if "box-b" in x and f"{p['captured']}/{p['required']}" in x)
    assert f"{not_named} slots not named" in line, line
    complete = [e for e in rows.values() if e["captured"] == e["required"]]
    assert complete and all(e["missing_not_named"] == 0 for e in complete)


def test_a_box_whose_first_messages_never_arrived_shows_them_missing_as_the_report_does(
        district):
    lost = district["lost_before_collector"]
    report = {d["device_id"]: d for d in _report(district)["devices"]}
    assert report["box-a"]["missing"] == lost
    assert report["box-a"]["gaps"] == [[1, lost]]
    assert report["box-b"]["missing"] == 0
    devices = _get(district, "/api/devices.csv?weeks=8").splitlines()
    head = devices[0].split(",")
    col = head.index("messages_missing")
    missing = {r.split(",")[0]: int(r.split(",")[col]) for r in devices[1:]}
    assert missing == {"box-a": lost, "box-b": 0}
    clinics = _get(district, "/api/clinics.csv?weeks=8").splitlines()
    per_clinic: dict[str, int] = {}
    for r in clinics[1:]:
        cells = r.split(",")
        per_clinic[cells[0]] = per_clinic.get(cells[0], 0) + int(cells[6])
    assert per_clinic == {"clinic-a": lost, "clinic-b": 0}
    html = _get(district, "/devices?weeks=8")
    assert f"{lost} messages lost" in html  # over 1% of what box-a sent: a visit


def test_the_devices_page_tells_each_model_apart_and_states_the_missing_rule(district):
    models = next(m["payload"]["models"] for m in district["sent"]
                  if m["kind"] == "health" and m["device_id"] == "box-a")
    assert {"quality_head", "quality_rules"} <= set(models)
    html = _get(district, "/devices")
    for name, version in models.items():
        assert f"{name.replace('_', ' ')} {version}" in html
    assert "over 1% of its messages missing" in html


def test_a_viewer_given_a_district_with_no_clinics_is_warned(district):
    typo = central("users", "add", "amina", "--role", "viewer", "--district", "nrth",
                   "--db", district["db"], stdin="viewer-password-1\n")
    assert typo.returncode == 0, typo.stderr
    assert "no clinic is in district 'nrth'" in typo.stderr
    right = central("users", "add", "amina", "--role", "viewer", "--district", "north",
                    "--db", district["db"], stdin="viewer-password-1\n")
    assert right.returncode == 0 and right.stderr == "", right.stderr


def test_the_dashboards_own_file_is_the_one_the_readme_names(district):
    readme = (REPO / "README.md").read_text()
    assert "`central.sqlite3` ->\n`central.dashboard.sqlite3`" in readme
    tmp = district["tmp"]
    assert (tmp / "central.dashboard.sqlite3").exists()
    assert not (tmp / "central.sqlite3.dashboard.sqlite3").exists()
