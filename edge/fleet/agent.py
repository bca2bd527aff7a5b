"""The fleet inside the running loop: trial time, delivery over MQTT and HTTP(S), and the
signal to reload when `current` changes.

One thread, started by `start_fleet` when `[fleet] enabled`. Every second it adds the
running time to the trial (which confirms the new set after `trial_min`) while the loop runs
the trial's models, hands the MQTT
messages the uplink received to the download, polls the district's HTTP(S) server every
`poll_min`, and installs a finished download. When `current` points elsewhere than when the
loop loaded its models (an install here, or `sonoedge bundle install` from a USB stick) it
asks the loop to restart on the new set, between two frames. Nothing here blocks the loop,
and nothing it receives is trusted: offers and chunks are bounded and hashed, and the
bundle is verified whole by `Fleet.install`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import queue
import shutil
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from edge.fleet.bundle import DeviceFault
from edge.fleet.settings import fleet_root, selftest_names
from edge.fleet.slots import FACTORY, Fleet, app_version, short_error
from edge.models.manifest import sha256_of
from edge.store.state import Reserve
from wire.fleet import (
    MAX_OFFER_BYTES,
    BundleError,
    Offer,
    chunk_topic,
    offer_topic,
    parse_offer,
    parse_version,
)
from wire.shown import one_line

log = logging.getLogger("sonoedge.fleet")

DOWNLOADS = "download"
MAX_INBOX = 256  # MQTT messages waiting for the fleet thread; more are dropped (resent later)
MAX_REFUSED = 16
# A download whose bytes are not the offered bundle (more bytes, another sha256) is fetched
# again after poll_min, then after twice that, and so on, at most this long: a server that
# keeps sending garbage must not eat the clinic's link, and a day still takes a good bundle
# the day the transfer mends.
GARBLED_MAX_WAIT_S = 24 * 3600.0
RESTART_EXIT = 75  # run() returns this when the loop must start again on new models


class Download:
    """One offered bundle being fetched chunk by chunk into `<root>/download/<id>/`.

    Each chunk is checked against the offer's hash and written whole (tmp + rename) as it
    arrives, so a cut link or a power cut only costs the chunks in flight."""

    def __init__(self, folder: Path, offer: Offer):
        self.folder = folder
        self.offer = offer
        folder.mkdir(parents=True, exist_ok=True)
        # The chunks already on disk, listed once: a bundle of thousands of chunks must not
        # cost a stat of every chunk for every chunk that arrives.
        names = {entry.name for entry in os.scandir(folder)}
        self._have = {i for i in range(offer.count) if f"{i:05d}" in names}

    def chunk_path(self, index: int) -> Path:
        return self.folder / f"{index:05d}"

    def has(self, index: int) -> bool:
        return index in self._have

    def missing(self) -> list[int]:
        return [i for i in range(self.offer.count) if i not in self._have]

    def accept(self, index: int, payload: bytes) -> bool:
        start, end = self.offer.chunk_range(index)
        if len(payload) != end - start:
            return False
        if hashlib.sha256(payload).hexdigest() != self.offer.chunk_sha256[index]:
            return False
        tmp = self.folder / f"{index:05d}.tmp"
        with open(tmp, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.chunk_path(index))
        self._have.add(index)
        return True

    def assemble(self) -> Path:
        """The whole bundle file, whose sha256 must be the offer's id."""
        out = self.folder / "bundle"
        digest = hashlib.sha256()
        with open(out, "wb") as handle:
            for i in range(self.offer.count):
                data = self.chunk_path(i).read_bytes()
                digest.update(data)
                handle.write(data)
        if digest.hexdigest() != self.offer.bundle_id:
            raise BundleError("the chunks do not make up the offered bundle (sha256 differs)")
        return out


class FleetAgent:
    """See the module docstring."""

    def __init__(self, fleet: Fleet, settings):
        self.fleet = fleet
        self.settings = settings  # the device's whole Settings
        self.cfg = settings.fleet
        self.uplink = None
        self.loaded_slot = fleet.active_slot()
        self.restart = threading.Event()
        self.inbox: queue.Queue = queue.Queue(MAX_INBOX)
        self.download: Download | None = None
        self.progress = ""
        self._deferred: bytes | None = None  # an offer that came during a trial
        # ... or one the device could not take (its own full disk, a garbled download):
        # taken up again once this many seconds of the thread's time have passed
        self._deferred_in_s = 0.0
        self._deferred_id: str | None = None  # the deferred offer's bundle id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_poll = time.monotonic()
        self._keys = None
        self._said = ""  # the last error line logged
        self._garbled: dict[str, int] = {}  # bundle id -> downloads in a row that were not it
        self._http_wait: dict[str, float] = {}  # bundle id -> monotonic time to fetch it again
        self._ignored: dict[str, bool] = {}  # bundle ids offered below the floor, said once

    # -- the loop's side ------------------------------------------------------------------
    def start(self, uplink=None) -> None:
        """Run the thread; with an uplink, report in health and read offers over MQTT."""
        self.uplink = uplink
        if self.uplink is not None:
            self.uplink.fleet_status = self.status
            if self.cfg.mqtt and self.uplink.target is not None:
                self.uplink.on_message = self._received
                self.uplink.set_subscriptions({offer_topic(self.cfg.group)})
        self._thread = threading.Thread(target=self._run, name="sonoedge-fleet", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.uplink is not None:
            self.uplink.on_message = None

    def status(self) -> dict:
        out = self.fleet.status()
        if self.progress:
            out["download"] = self.progress[:80]
        return out

    def _received(self, topic: str, payload: bytes) -> None:
        try:
            self.inbox.put_nowait((topic, payload))
        except queue.Full:
            pass  # a chunk is asked for again; the offer is retained

    # -- the thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            self.poll_once(now - last)
            last = now
            self._stop.wait(1.0)

    def poll_once(self, elapsed_s: float) -> None:
        """One pass of the thread: trial time, a deferred offer, MQTT messages, the HTTP
        poll when due, and a restart when `current` moved."""
        try:
            self.fleet.refresh()  # a USB install beside the service: its trial, its floor
            trial = self.fleet.state.get("trial")
            if isinstance(trial, dict) and trial.get("slot") == self.loaded_slot:
                # trial time is time on the trial's models: not while the loop still runs
                # the set it loaded, waiting for an exam to end (`restart_wait_min`)
                self.fleet.tick(elapsed_s)
            self._deferred_in_s = max(0.0, self._deferred_in_s - elapsed_s)
            if (self._deferred is not None and self._deferred_in_s <= 0
                    and not isinstance(self.fleet.state.get("trial"), dict)):
                deferred, self._deferred = self._deferred, None
                self._offered(deferred)  # the trial is over: now it may be fetched
            self._drain_inbox()
            if self.cfg.http_url and time.monotonic() >= self._next_poll:
                self._next_poll = time.monotonic() + self.cfg.poll_min * 60
                self._poll_http()
            if self.fleet.active_slot() != self.loaded_slot and not self.restart.is_set():
                log.info("fleet: models switched to %s; the loop restarts on them once no "
                         "exam is open", self.fleet.status()["bundle"])
                self.request_restart()
        except OSError as exc:  # the card's (full, read-only, gone): one line, tried again
            log.warning("fleet: %s; tried again at the next pass", one_line(exc))
        except Exception:  # never let the thread die: the loop must go on scoring
            log.exception("fleet: error")

    def request_restart(self) -> None:
        """New models are in place: the loop restarts on them once the exam in progress
        has ended (`edge.loop.restart_due`). Nothing here touches the source: a grabber
        that hands no frames still gives the loop its idle ticks, where it checks, and
        closing it would end the midwife's exam as "source_end" before its gap."""
        self.restart.set()

    def _keys_or_none(self):
        from edge.fleet.keys import load_trusted_keys

        try:
            return load_trusted_keys(Path(self.cfg.trusted_keys))
        except BundleError as exc:
            self._error(str(exc))
            return None

    def _error(self, text: str) -> None:
        """Said once in the log and kept as `last_error` for health. `Fleet.install` may
        have stored the same text already: it is still said here (it was not, before)."""
        text = short_error(text)  # its head: the version and what failed
        if text != self._said:
            log.error("fleet: %s", text)
            self._said = text
        if self.fleet.state.get("last_error") != text:
            self.fleet.state["last_error"] = text
            self._save()

    def _save(self) -> None:
        try:
            self.fleet.save()
        except OSError as exc:  # a full disk: the line was said; saved at the next change
            log.warning("fleet: state not saved (%s)", exc.strerror or exc)

    def _wanted(self, offer: Offer) -> bool:
        """Worth fetching: newer than anything installed, and not refused before. Only a
        shortcut to save the link: the signed manifest decides after the download.

        An offer at or below that floor (a district rolling a group back by publishing an
        older bundle) is never fetched, and said once per bundle id, in the log and in
        health, as the USB install refuses it; the version already running is let pass
        without a word (the retained offer of the bundle this box took)."""
        if offer.group != self.cfg.group or offer.bundle_id in self._refused():
            return False
        top = self.fleet.floor()
        key = parse_version(offer.version)
        if top is None or key > parse_version(top):
            return True
        running = self.fleet.status()["bundle"]
        if running not in (FACTORY, "none") and key == parse_version(running):
            return False
        if offer.bundle_id not in self._ignored:
            _keep(self._ignored, offer.bundle_id, True)
            what = "older than" if key < parse_version(top) else "not newer than"
            failed = " (it failed here)" if self.fleet.failed_here(top) else ""
            self._error(f"offer {offer.version[:40]} ignored: {what} {top}{failed}; re-sign "
                        "it as a newer version")
        return False

    def _refused(self) -> list[str]:
        """The bundles this app refused. An upgraded app looks at them again: one refused
        because it needed a newer sonoedge would otherwise never be taken."""
        state = self.fleet.state
        if state.get("refused_app") != app_version():
            return []
        return [x for x in state.get("refused_ids", []) if isinstance(x, str)]

    def _refuse(self, bundle_id: str, why: str) -> None:
        self.fleet.state["refused_ids"] = (self._refused() + [bundle_id])[-MAX_REFUSED:]
        self.fleet.state["refused_app"] = app_version()
        self._error(why)
        self._save()  # kept across a restart: a refused bundle is never fetched again

    def _not_now(self, offer: Offer, why: str) -> None:
        """The device's own trouble (a full disk), not the bundle's: said, and the offer
        taken up again after `poll_min` (over HTTP the next poll does it), not refused."""
        self._error(f"{why}; the bundle is fetched again in {self.cfg.poll_min:g} min")
        if self.cfg.mqtt:
            self._defer(offer, self.cfg.poll_min * 60)

    def _defer(self, offer: Offer, wait_s: float) -> None:
        """Take the offer up again after `wait_s` (MQTT). Until then the broker's retained
        copy of it, sent again on every reconnect, is let pass (`_offered`)."""
        self._deferred = json.dumps(offer.to_dict()).encode()
        self._deferred_id, self._deferred_in_s = offer.bundle_id, wait_s

    def _install(self, path: Path, offer: Offer) -> None:
        keys = self._keys_or_none()
        if keys is None:
            # The device's keys, not the bundle: the download is kept and installed after
            # poll_min (it sat complete, never tried again until the loop restarted).
            self.download = None
            if self.cfg.mqtt:
                self._defer(offer, self.cfg.poll_min * 60)
                if self.uplink is not None:
                    self.uplink.set_subscriptions({offer_topic(self.cfg.group)})
            return
        try:
            manifest = self.fleet.install(path, keys, selftest_names(self.settings),
                                          file_named=False)  # a download's name says nothing
        except DeviceFault as exc:
            self._not_now(offer, str(exc))
            return
        except BundleError as exc:
            # named by its version, not by the download's path (which filled the line)
            text = str(exc).removeprefix(f"{path}: ")
            self._refuse(offer.bundle_id, text if text.startswith("bundle ") else
                         f"bundle {offer.version} from the district refused: {text}")
            return
        finally:
            self._clear_downloads()
        log.info("fleet: bundle %s installed from the district", manifest.version)
        self.request_restart()

    def _clear_downloads(self) -> None:
        shutil.rmtree(self.fleet.root / DOWNLOADS, ignore_errors=True)
        self.download = None
        self.progress = ""
        if self.uplink is not None and self.cfg.mqtt:
            self.uplink.set_subscriptions({offer_topic(self.cfg.group)})

    # -- MQTT -----------------------------------------------------------------------------------
    def _drain_inbox(self) -> None:
        while True:
            try:
                topic, payload = self.inbox.get_nowait()
            except queue.Empty:
                return
            if topic == offer_topic(self.cfg.group):
                self._offered(payload)
            elif self.download is not None:
                self._chunk(topic, payload)

    def _offered(self, payload: bytes) -> None:
        if not payload:
            return  # the district cleared its offer
        try:
            offer = parse_offer(payload, int(self.cfg.max_bundle_mb * 1e6),
                                self.cfg.max_chunk_kb * 1024)
        except BundleError as exc:
            self._error(f"offer refused: {exc}")
            return
        if self.download is not None and self.download.offer.bundle_id == offer.bundle_id:
            return
        if self._deferred is not None and self._deferred_in_s > 0 \
                and self._deferred_id == offer.bundle_id:
            return  # waiting after a garbled download or a full disk (`_defer`)
        if not self._wanted(offer):
            return
        if isinstance(self.fleet.state.get("trial"), dict):
            self._deferred = payload  # the previous set must stay intact until confirmed
            self._deferred_id = offer.bundle_id
            return
        folder = self.fleet.root / DOWNLOADS / offer.bundle_id
        for old in (self.fleet.root / DOWNLOADS).glob("*"):
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)
        self.download = Download(folder, offer)
        log.info("fleet: bundle %s offered (%d bytes in %d chunks); %d still to fetch",
                 offer.version, offer.size, offer.count, len(self.download.missing()))
        self._ask()

    def _ask(self) -> None:
        """Subscribe to the next window of missing chunks (the broker sends each retained
        chunk on subscribe); install once none is missing."""
        download = self.download
        missing = download.missing()
        offer = download.offer
        self.progress = (f"{offer.version}: {offer.count - len(missing)}/{offer.count} "
                         "chunks (mqtt)")
        if not missing:
            try:
                path = download.assemble()
            except BundleError as exc:  # chunks that do not make the offered bundle
                self._garbled_download(offer, f"download of {offer.version}: {exc}", False)
                return
            except OSError as exc:  # writing the whole bundle out: the device's disk
                self._clear_downloads()
                self._not_now(offer, f"download of {offer.version}: cannot assemble "
                                     f"({exc.strerror or exc})")
                return
            self._install(path, offer)
            return
        window = {chunk_topic(self.cfg.group, offer.bundle_id, i)
                  for i in missing[:self.cfg.chunk_window]}
        self.uplink.set_subscriptions({offer_topic(self.cfg.group)} | window)

    def _chunk(self, topic: str, payload: bytes) -> None:
        offer = self.download.offer
        prefix = chunk_topic(self.cfg.group, offer.bundle_id, 0)[:-1]
        if not topic.startswith(prefix) or not topic[len(prefix):].isdigit():
            return
        index = int(topic[len(prefix):])
        if index >= offer.count or self.download.has(index):
            return
        try:
            accepted = self.download.accept(index, payload)
        except OSError as exc:  # the device's full disk, not the bundle: free what the
            # download holds and take the offer up again later (was a traceback per chunk,
            # the space kept, and the download stalled until the loop restarted)
            self._clear_downloads()
            self._not_now(offer, f"download of {offer.version}: cannot keep chunk {index} "
                                 f"({exc.strerror or exc})")
            return
        if not accepted:
            log.warning("fleet: chunk %d of %s does not match its offer; asked again", index,
                        offer.version)
            return
        self._ask()

    # -- HTTP(S) ----------------------------------------------------------------------------------
    def _open(self, url: str, start: int = 0):
        context = ssl.create_default_context(cafile=self.cfg.http_ca or None)
        request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start
                                         else {})
        return urllib.request.urlopen(request, timeout=self.cfg.http_timeout_s,
                                      context=context if url.startswith("https:") else None)

    def _poll_http(self) -> None:
        base = f"{self.cfg.http_url.rstrip('/')}/{self.cfg.group}"
        try:
            with self._open(f"{base}/offer.json") as response:
                data = response.read(MAX_OFFER_BYTES + 1)
            offer = parse_offer(data, int(self.cfg.max_bundle_mb * 1e6),
                                self.cfg.max_chunk_kb * 1024)
        except (OSError, urllib.error.URLError, ValueError) as exc:
            log.info("fleet: no offer from %s (%s)", base, getattr(exc, "reason", exc))
            return
        if not self._wanted(offer) or isinstance(self.fleet.state.get("trial"), dict):
            return
        if time.monotonic() < self._http_wait.get(offer.bundle_id, 0.0):
            return  # waiting after a garbled download (`_garbled_download`)
        folder = self.fleet.root / DOWNLOADS / offer.bundle_id
        folder.mkdir(parents=True, exist_ok=True)
        part = folder / "bundle.http"
        have = part.stat().st_size if part.exists() else 0
        if have > offer.size:
            part.unlink()
            have = 0
        try:
            # A download finished before (an install that stopped short, say on keys that
            # would not load) is checked again, not asked for past its end (HTTP 416).
            if have < offer.size:
                with self._open(f"{base}/{offer.bundle_id}.bundle", have) as response:
                    if have and response.status != 206:
                        have = 0  # the server ignored the range: start again
                    with open(part, "ab" if have else "wb") as handle:
                        while True:
                            data = response.read(1 << 16)
                            if not data:
                                break
                            have += len(data)
                            if have > offer.size:
                                raise BundleError(f"the server sent more than the offered "
                                                  f"{offer.size} bytes")
                            handle.write(data)
                            self.progress = f"{offer.version}: {have}/{offer.size} bytes (http)"
                            if self._stop.is_set():
                                return
        except (OSError, urllib.error.URLError) as exc:
            if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
                # the device's full card, not the link: free what the download holds (the
                # loop needs the room) and take the offer up at a later poll, as over MQTT
                self._clear_downloads()
                self._not_now(offer, f"download of {offer.version}: cannot keep it "
                                     f"({exc.strerror or exc})")
                return
            log.info("fleet: download of %s paused at %d bytes (%s); resumed at the next "
                     "poll", offer.version, have, getattr(exc, "reason", exc))
            self._next_poll = time.monotonic() + min(60.0, self.cfg.poll_min * 60)
            return
        except BundleError as exc:
            self._garbled_download(offer, f"download of {offer.version}: {exc}", True)
            return
        if have < offer.size:
            return
        if sha256_of(part) != offer.bundle_id:
            self._garbled_download(offer, f"download of {offer.version}: sha256 differs from "
                                          "the offer", True)
            return
        self._install(part, offer)

    def _garbled_download(self, offer: Offer, why: str, over_http: bool) -> None:
        """Bytes that are not the offered bundle say nothing of the bundle (its signature is
        never reached): the transfer failed, never the bundle, so it is never refused for
        it. Refused, one page from a captive portal, or anyone on the path altering a byte
        three times, kept a good bundle off the box for good. It is fetched again after a
        wait that doubles with each garbled download in a row (GARBLED_MAX_WAIT_S at most),
        and the error, which the district sees in health, says how many."""
        self._clear_downloads()
        tries = _keep(self._garbled, offer.bundle_id, self._garbled.get(offer.bundle_id, 0) + 1)
        wait_s = min(GARBLED_MAX_WAIT_S, self.cfg.poll_min * 60 * 2 ** min(tries - 1, 30))
        in_words = f"{wait_s / 60:g} min" if wait_s < 3600 else f"{wait_s / 3600:.3g} h"
        self._error(f"{why}; {tries} garbled download{'s' if tries > 1 else ''} in a row, "
                    f"fetched again in {in_words}")
        if not over_http:
            self._defer(offer, wait_s)
        else:
            _keep(self._http_wait, offer.bundle_id, time.monotonic() + wait_s)


def _keep(table: dict, key: str, value):
    """table[key] = value, the oldest entry dropped to hold at most MAX_REFUSED bundles: a
    district offering a new bundle every poll cannot grow the agent's memory."""
    if len(table) >= MAX_REFUSED and key not in table:
        table.pop(next(iter(table)))
    table[key] = value
    return value


def start_fleet(settings, state_dir: Path, echo=print):
    """At the loop's start: the slots (seeded on first use), a crash counted or rolled back.
    Returns (agent, models dir to load), or (None, [models] dir) with the fleet off."""
    if not settings.fleet.enabled:
        return None, settings.models.dir
    # on a full card the state dir's reserve is given back to record a trial's start, as
    # the journal does to shed old frames (`edge.store.state.Reserve`)
    fleet = Fleet(fleet_root(settings, state_dir), settings.fleet,
                  make_room=Reserve(state_dir).release)
    fleet.ensure(Path(settings.models.dir))
    if fleet.clear_stale_staging():
        log.info("fleet: removed the staging folder a killed install left")
    line = fleet.on_start()
    if line:
        echo(line)
    return FleetAgent(fleet, settings), str(fleet.current)

