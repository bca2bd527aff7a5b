"""Delivering bundles: over a real Mosquitto to a device that was offline when the district
published, resumed chunk by chunk, and pulled over HTTP with a resumed download (issue 16).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from central.fleet import export, publish
from edge.config import load_settings
from edge.fleet.agent import FleetAgent
from edge.fleet.slots import Fleet
from tests.conftest_mqtt import REPO, CollectorProc, py_env, wait_for
from tests.servers import Mosquitto
from tests.test_fleet import (  # noqa: F401  (fixture)
    GROUP,
    _box_rules,
    _clinic_config,
    device_config,
    fleet_kit,
)
from wire.fleet import chunk_topic, offer_topic


@pytest.fixture
def fleet_broker(tmp_path):
    m = Mosquitto(tmp_path / "broker")
    m.add_user("dev-a", "device", group=GROUP)
    m.add_user("dev-other", "device", group="district-b")
    m.add_user("publisher", "central")
    m.add_user("central", "central")
    m.start()
    yield m
    m.stop(signal.SIGKILL)


def _secret(tmp_path: Path, name: str, password: str) -> Path:
    path = tmp_path / f"{name}.password"
    path.write_text(password + "\n")
    os.chmod(path, 0o600)
    return path


@pytest.mark.parametrize("rules", ["shipped", "clinic"])
def test_a_device_offline_at_publication_gets_the_bundle_when_it_connects(
        tmp_path, fleet_kit, fleet_broker, rules):  # noqa: F811
    """With `rules` "clinic", the box's loop runs its own quality rules (2.0.1), not the
    shipped ones the bundle was made with: its self-test does not compare the quality score
    (it compares the learned head's numbers instead), and the district reads so in the
    report, from the box's health (the collector stores it, not as a dead letter)."""
    pub = _secret(tmp_path, "publisher", fleet_broker.passwords["publisher"])
    url = f"mqtt://publisher@127.0.0.1:{fleet_broker.port}"
    offer = publish(fleet_kit["v2"], GROUP, url, str(pub), str(fleet_kit["trusted"]),
                    chunk_size=32 * 1024, timeout_s=60)
    assert offer.count == -(-fleet_kit["v2"].stat().st_size // (32 * 1024))
    # The device connects only now, for the first time.
    config = (device_config if rules == "shipped" else _clinic_config)(tmp_path, fleet_kit)
    dev = _secret(tmp_path, "dev-a", fleet_broker.passwords["dev-a"])
    with open(config, "a") as handle:
        handle.write(f'[mqtt]\nurl = "mqtt://dev-a@127.0.0.1:{fleet_broker.port}"\n'
                     f'password_file = "{dev}"\ndevice_id = "dev-a"\nhealth_interval_s = 1.0\n'
                     "require_subscriber = false\n")
    db = str(tmp_path / "central.sqlite3")
    collector = CollectorProc(fleet_broker.url("central"), db, tmp_path, "central")
    collector.wait_subscribed()
    log = tmp_path / "device.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config",
                                 str(config), "--source", "demo"], stdout=out,
                                stderr=subprocess.STDOUT, env=py_env(), cwd=REPO)
        try:
            wait_for(lambda: "starting again" in log.read_text() or proc.poll() is not None,
                     120, "the bundle to arrive over MQTT and be installed")
            text = log.read_text()
            assert proc.poll() is None, text[-3000:]
            assert f"bundle 2.0 offered ({offer.size} bytes in {offer.count} chunks); " \
                   f"{offer.count} still to fetch" in text
            assert "fleet: bundle 2.0 installed from the district" in text

            def report_row() -> str:
                """dev-a's row of the district report's bundles, once it shows 2.0 on
                trial (a health message sent while it was still fetching says so first)."""
                out = subprocess.run([sys.executable, "-m", "central.cli", "report", "--db",
                                      db], capture_output=True, text=True, env=py_env(),
                                     cwd=REPO, timeout=30)
                rows = [ln for ln in out.stdout.split("Model bundles")[-1].splitlines()
                        if ln.startswith("dev-a")]
                return rows[0] if rows and "trial" in rows[0] else ""

            # the district report shows what the device runs, from its health messages
            row = wait_for(report_row, 30, "the report to show bundle 2.0 on trial")
            assert GROUP in row and "2.0" in row and "trial (0)" in row
            said = ("self-test: quality score not compared, learned quality head compared "
                    f"instead (5 severities): made with quality rules {_box_rules()}, this box "
                    "runs 2.0.1")
            if rules == "clinic":
                assert said in row, row
                assert f"fleet: bundle 2.0 self-test: {said.removeprefix('self-test: ')}" \
                    in log.read_text()
            else:
                assert "self-test:" not in row, row
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            collector.stop()
    fleet = Fleet(tmp_path / "state" / "fleet", load_settings(config).fleet)
    assert fleet.status()["bundle"] == "2.0" and fleet.status()["state"] == "trial"
    assert not (fleet.root / "download").exists()


class _Uplink:
    """What the agent needs of the uplink: a target, subscriptions, a message hook."""

    target = object()

    def __init__(self):
        self.topics: set[str] = set()
        self.on_message = None
        self.fleet_status = None

    def set_subscriptions(self, topics):
        self.topics = set(topics)


def _agent(config: Path, kit) -> FleetAgent:
    settings = load_settings(config)
    fleet = Fleet(Path(settings.device.state_dir) / "fleet", settings.fleet)
    fleet.ensure(kit["models"])
    agent = FleetAgent(fleet, settings)
    agent.uplink = _Uplink()
    return agent


def test_a_download_cut_halfway_resumes_with_only_the_missing_chunks(tmp_path, fleet_kit):  # noqa: F811
    config = device_config(tmp_path, fleet_kit, chunk_window=4)
    data = fleet_kit["v2"].read_bytes()
    size = 16 * 1024
    from central.fleet import make_offer, peek

    offer, _ = make_offer(fleet_kit["v2"], peek(fleet_kit["v2"], GROUP), size)
    payload = json.dumps(offer.to_dict()).encode()

    def serve(agent: FleetAgent, limit: int) -> int:
        """Answer the agent's subscriptions like the broker's retained chunks."""
        sent = 0
        while sent < limit:
            wanted = sorted(t for t in agent.uplink.topics if "/chunk/" in t)
            if not wanted:
                break
            index = int(wanted[0].rsplit("/", 1)[1])
            agent._received(wanted[0], data[index * size:(index + 1) * size])
            agent._drain_inbox()
            sent += 1
        return sent

    first = _agent(config, fleet_kit)
    first._received(offer_topic(GROUP), payload)
    first._drain_inbox()
    assert len(first.uplink.topics) == 1 + 4  # the offer and a window of 4 chunks
    half = offer.count // 2
    assert serve(first, half) == half
    # a corrupt chunk is refused, not stored
    lacking = first.download.missing()[0]
    first._received(chunk_topic(GROUP, offer.bundle_id, lacking), b"x" * size)
    first._drain_inbox()
    assert not first.download.chunk_path(lacking).exists()
    # power cut: a new process, same disk
    second = _agent(config, fleet_kit)
    second._received(offer_topic(GROUP), payload)
    second._drain_inbox()
    assert len(second.download.missing()) == offer.count - half
    assert serve(second, offer.count) == offer.count - half
    assert second.fleet.status()["bundle"] == "2.0"
    assert second.restart.is_set()


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with `Range: bytes=N-`, and a first answer cut short (a dropped link)."""

    cut_after: int | None = None
    bundle_gets: int = 0
    garble: int = 0  # the next this many bundle answers carry other bytes (a captive portal)

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            return self.send_error(404)
        data = path.read_bytes()
        start = 0
        ranged = self.headers.get("Range", "")
        if ranged.startswith("bytes="):
            start = int(ranged[6:].split("-")[0])
        if path.suffix == ".bundle":
            type(self).bundle_gets += 1
        if start >= len(data) > 0:
            return self.send_error(416)  # as nginx answers a range past the end
        body = data[start:]
        if path.suffix == ".bundle" and type(self).garble > 0:
            type(self).garble -= 1
            body = bytes(b ^ 0x5A for b in body)  # the right length, not the bundle
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if path.suffix == ".bundle" and type(self).cut_after is not None:
            self.wfile.write(body[:type(self).cut_after])
            type(self).cut_after = None
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


@pytest.fixture
def bundle_site(tmp_path, fleet_kit):  # noqa: F811
    """v2 exported for a web server (`bundle export`) and served on a free loopback port
    by `_RangeHandler`; yields (offer, the folder served, the device's agent on it)."""
    www = tmp_path / "www"
    offer = export(fleet_kit["v2"], GROUP, www, str(fleet_kit["trusted"]))
    handler = functools.partial(_RangeHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"

    def agent(where: Path):
        where.mkdir(exist_ok=True)
        return _agent(device_config(where, fleet_kit, http_url=url), fleet_kit)

    try:
        yield offer, www, agent
    finally:
        _RangeHandler.cut_after, _RangeHandler.garble, _RangeHandler.bundle_gets = None, 0, 0
        server.shutdown()


def test_a_device_pulls_over_http_and_resumes_a_cut_download(tmp_path, bundle_site):
    offer, _, agent_in = bundle_site
    _RangeHandler.cut_after = 500_000
    agent = agent_in(tmp_path)
    agent._poll_http()  # cut at 500 kB
    part = agent.fleet.root / "download" / offer.bundle_id / "bundle.http"
    assert part.stat().st_size == 500_000
    assert agent.fleet.status()["bundle"] == "factory"
    agent._poll_http()  # resumes with a Range request
    assert agent.fleet.status()["bundle"] == "2.0"
    assert agent.restart.is_set()


def test_a_garbled_http_download_is_never_refused_and_is_fetched_again_ever_later(
        tmp_path, bundle_site):
    """Bytes that are not the offered bundle (a captive portal, a proxy, anyone on the path
    altering a byte) are the transfer's fault, never the bundle's: its signature is never
    reached. Refused after three, a good bundle was kept off the box for good by whoever
    garbled three downloads. Now it is fetched again after poll_min (60 min), then after
    twice that, and so on up to a day, and installs once the bytes are right."""
    offer, _, agent_in = bundle_site
    agent = agent_in(tmp_path)
    _RangeHandler.garble = 6
    waits = []
    for tries in range(1, 7):
        agent._http_wait.clear()  # the wait is over
        agent._poll_http()
        error = agent.fleet.state["last_error"]
        assert f"{tries} garbled download" in error, error
        waits.append(error.rsplit("fetched again in ", 1)[1])
        gets = _RangeHandler.bundle_gets
        agent._poll_http()  # a poll before the wait is over asks for the offer only
        assert _RangeHandler.bundle_gets == gets
    assert waits == ["1 h", "2 h", "4 h", "8 h", "16 h", "24 h"]
    assert offer.bundle_id not in agent.fleet.state.get("refused_ids", [])
    assert agent.fleet.status()["bundle"] == "factory"
    agent._http_wait.clear()
    agent._poll_http()  # the transfer mended: the real bytes
    assert agent.fleet.status()["bundle"] == "2.0"


def test_a_whole_download_whose_install_stopped_short_is_installed_without_asking_again(
        tmp_path, bundle_site):
    offer, www, agent_in = bundle_site
    agent = agent_in(tmp_path)
    part = agent.fleet.root / "download" / offer.bundle_id / "bundle.http"
    part.parent.mkdir(parents=True)
    part.write_bytes((www / GROUP / f"{offer.bundle_id}.bundle").read_bytes())
    agent._poll_http()
    assert _RangeHandler.bundle_gets == 0  # never a range past the end (HTTP 416)
    assert agent.fleet.status()["bundle"] == "2.0"


def test_an_offer_during_a_trial_waits_for_the_confirmation(tmp_path, fleet_kit):  # noqa: F811
    from central.fleet import make_offer, peek

    config = device_config(tmp_path, fleet_kit, trial_min=0.1)
    agent = _agent(config, fleet_kit)
    from edge.fleet.keys import load_trusted_keys

    agent.fleet.install(fleet_kit["v1"], load_trusted_keys(fleet_kit["trusted"]))
    agent = _agent(config, fleet_kit)  # the loop started again, on 1.0: its trial runs
    offer, _ = make_offer(fleet_kit["v2"], peek(fleet_kit["v2"], GROUP), 32 * 1024)
    agent._received(offer_topic(GROUP), json.dumps(offer.to_dict()).encode())
    agent._drain_inbox()
    assert agent.download is None  # 1.0 is on trial: its predecessor must stay intact
    agent.poll_once(7.0)  # the trial's 6 s are over: confirmed, then the offer is taken
    assert agent.download is not None and agent.download.offer.version == "2.0"


def test_a_bundle_the_device_could_not_install_for_a_full_disk_is_fetched_again_later(
        tmp_path, fleet_kit, monkeypatch):  # noqa: F811
    """A full disk is the device's trouble, not the bundle's: the offer is not refused for
    good (a refused bundle is never fetched again), its download's space is freed, and
    after `poll_min` the same retained offer is taken up and installs."""
    from central.fleet import make_offer, peek

    config = device_config(tmp_path, fleet_kit, poll_min=0.5)
    data = fleet_kit["v2"].read_bytes()
    size = 32 * 1024
    offer, _ = make_offer(fleet_kit["v2"], peek(fleet_kit["v2"], GROUP), size)
    agent = _agent(config, fleet_kit)
    real_install = Fleet._install

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    def serve_all() -> None:
        while wanted := sorted(t for t in agent.uplink.topics if "/chunk/" in t):
            index = int(wanted[0].rsplit("/", 1)[1])
            agent._received(wanted[0], data[index * size:(index + 1) * size])
            agent._drain_inbox()

    monkeypatch.setattr(Fleet, "_install", disk_full)
    agent._received(offer_topic(GROUP), json.dumps(offer.to_dict()).encode())
    agent._drain_inbox()
    serve_all()
    state = agent.fleet.state
    assert offer.bundle_id not in state.get("refused_ids", [])
    assert "No space left on device" in state["last_error"] and "again in 0.5 min" in \
        state["last_error"]
    assert agent.download is None and not (agent.fleet.root / "download").exists()
    assert agent.fleet.status()["bundle"] != "2.0"

    monkeypatch.setattr(Fleet, "_install", real_install)  # room again
    agent.poll_once(10.0)
    assert agent.download is None  # not yet: poll_min is 30 s
    agent.poll_once(25.0)
    assert agent.download is not None and agent.download.offer.bundle_id == offer.bundle_id
    serve_all()
    assert agent.fleet.status()["bundle"] == "2.0" and agent.restart.is_set()
