"""Two model slots and a symlink: install, self-test, swap, trial, confirm, roll back.

    <root>/slots/a/models/*.json|*.tflite   one complete set (plus bundle.json, bundle.sig,
    <root>/slots/b/models/...               selftest/ and slot.json saying what it is)
    <root>/current -> slots/a/models        what the loop loads ([models] dir)
    <root>/state.json                       trial, intent, highest version, last rollback
                                            (until a newer bundle is confirmed), history

Why it survives a power cut at any moment: the running set is never written to. A bundle is
unpacked into `slots/.staging`, checked (signature, every hash, the self-test), renamed to
the spare slot and only then does `current` switch, by renaming a new symlink over it
(rename(2) is atomic), with the folders fsynced in between. `state.json` is replaced whole
(write, fsync, rename; read again under a lock first, this process's changes put over what
another wrote meanwhile) and records an *intent* before every switch, so a start after a cut
finishes or forgets a half-done switch: the symlink is the truth.

A new set is on *trial* until the loop has run `trial_min` minutes with it (not the time it
still runs the old set, waiting for an exam to end). Every start during the trial that
finds the previous start, in this same boot, did not end cleanly counts a crash (one after
a power cut or a reboot, a new kernel boot id, does not); at
`crash_limit` crashes `current` goes back to the previous slot, which is kept untouched
during the trial (no other bundle is installed meanwhile), and the version is remembered
so the same bundle is never taken again. A version at or below the highest one ever
installed is refused: an old signed bundle replayed cannot downgrade a device.

`state["rollback"]` (reported in health, flagged by the district's dashboard) is the last
rollback of a set that ran and crashed, until a newer bundle is confirmed: then it moves to
`state["history"]` (the last HISTORY_MAX events, never reported). A bundle that fails its
self-test never ran: it is a refusal (`last_error`, and a history entry), not a rollback.
"""

from __future__ import annotations

import copy
import errno
import fcntl
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from edge.fleet.bundle import DeviceFault, Limits, read_bundle
from edge.fleet.settings import FleetSettings
from edge.models.manifest import ModelError, list_manifests
from edge.store.outbox import read_boot_id
from edge.store.state import fsync_dir, write_json
from wire.fleet import BundleError, BundleManifest, parse_version
from wire.schema import (
    PayloadError,
    finite_number,
    read_state_json,
    wall_ts_or_none,
)
from wire.shown import one_line, shown, shown_path

log = logging.getLogger("sonoedge.fleet")

SLOTS = ("a", "b")
CURRENT = "current"
STATE_FILE = "state.json"
SLOT_FILE = "slot.json"
STAGING = ".staging"
FACTORY = "factory"
SAVE_EVERY_S = 30.0  # the trial's running time is written this often
# `state.json` and `slot.json` as the device writes them are under 4 kB (a few versions and
# reasons, at most MAX_REFUSED bundle ids) and nest 3 deep: read back, one larger or deeper
# is damage, not parsed (20,000 brackets were a RecursionError at every start).
STATE_MAX_BYTES = 256 * 1024
STATE_MAX_DEPTH = 8
HISTORY_MAX = 4  # past rollbacks and self-test refusals kept in state.json (not reported)
SELFTEST_REASON = "self-test failed: "  # how a refusal read as a rollback before (legacy)
# The fleet error as state.json keeps it (one line, as before), and as health reports it
# (the wire's health.fleet.error holds 160): its end is cut, so the version and what
# failed, at its head, reach the district.
# Unclean ends in another boot (a power cut, or the midwife switching off a box a set has
# hung) roll back at this many times `crash_limit`: power cuts are common in a clinic, a
# hung box restarted again and again is not.
REBOOTS_PER_CRASH = 2
ERROR_KEPT_CHARS = 200
ERROR_SHOWN_CHARS = 160
# An absolute path in an error line: its folders say nothing to the district and took the
# room of what failed ("p/hC/w/mq/box1-state/.../plane_student.tflite: sha256 ...").
_PATH = re.compile(r"""(?<![^\s'"(=])/(?:[^\s/:;,'"()]+/)+([^\s/:;,'"()]+)""")


def short_error(text: object, limit: int = ERROR_KEPT_CHARS) -> str:
    """A fleet error as the device keeps and reports it: one line, each absolute path its
    file name, its head kept (the version, what failed), cut to `limit` characters."""
    lines = str(text).strip().splitlines()
    line = _PATH.sub(r"\1", lines[0] if lines else "")
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _step(name: str) -> None:
    """A named point of an install or rollback; the SIGKILL tests stop the process here."""


def app_version() -> str:
    try:
        return metadata.version("sonoedge")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def check_set(models_dir: Path) -> str | None:
    """None when every manifest in the folder matches its model file, else the first error."""
    try:
        found = list_manifests(models_dir)
    except OSError as exc:
        return f"{models_dir}: {exc.strerror or exc}"
    if not found:
        return f"{models_dir}: no model manifests"
    bad = next((item for item in found if isinstance(item, ModelError)), None)
    return str(bad) if bad else None


def is_version(value: object) -> bool:
    """A bundle version (`parse_version`): what a version read back from `state.json` or a
    `slot.json` must be before it is compared or remembered."""
    try:
        parse_version(value)
    except BundleError:
        return False
    return True


def read_state_file(path: Path) -> object:
    """A fleet file the device wrote (`state.json`, a `slot.json`) read back as hostile
    input (`wire.schema.read_state_json`): a value it never writes (Infinity, a key twice)
    is left to `checked_state` and `slot_info` to mend field by field."""
    return read_state_json(path, STATE_MAX_BYTES, STATE_MAX_DEPTH)


def checked_state(raw: object, path: Path, say: bool = True) -> dict:
    """`state.json` as the device reads it back: each field of the wrong type (a hand edit,
    a flipped bit on the card) mended or dropped with one log line naming it (none when
    not `say`: read again to save, it was said), never a ValueError at every start (the
    service would restart for ever). A damaged trial stays a trial, counted as crashed
    once, so a bad set can still be rolled back; a damaged `highest` is forgotten (the
    active set's version is still the floor)."""
    warn = log.warning if say else (lambda *_: None)
    if not isinstance(raw, dict):
        warn("fleet: %s is not a JSON object: started afresh", shown_path(path))
        return {}
    state = dict(raw)

    def mended(field: str, value: object) -> None:
        warn("fleet: %s: %s was %s: mended", shown_path(path), field, shown(value, 40))

    trial = state.get("trial")
    if trial is not None and not isinstance(trial, dict):
        mended("trial", trial)
        state.pop("trial")
    elif isinstance(trial, dict):
        trial = state["trial"] = dict(trial)
        crashes = trial.get("crashes", 0)
        if not (finite_number(crashes) and 0 <= crashes <= 1000):
            mended("trial.crashes", crashes)
            trial["crashes"] = 0
            trial["running"] = True  # counted as one crash at this start
        reboots = trial.get("reboots", 0)
        if not (finite_number(reboots) and 0 <= reboots <= 1000):
            mended("trial.reboots", reboots)
            trial["reboots"] = 0
        ran = trial.get("ran_s", 0.0)
        if not (finite_number(ran) and ran >= 0):
            mended("trial.ran_s", ran)
            trial["ran_s"] = 0.0
        if not isinstance(trial.get("running", False), bool):
            mended("trial.running", trial["running"])
            trial["running"] = True
    highest = state.get("highest")
    if highest is not None:
        try:
            parse_version(highest)
        except BundleError:
            mended("highest", highest)
            state.pop("highest")
    if not isinstance(state.get("failed", []), list):
        mended("failed", state["failed"])
        state.pop("failed")
    if not isinstance(state.get("history", []), list):
        mended("history", state["history"])
        state.pop("history")
    intent = state.get("intent")
    if intent is not None and not (isinstance(intent, dict) and intent.get("to") in SLOTS):
        mended("intent", intent)
        state.pop("intent")
    # The versions a trial or an intent carries are compared and remembered (`highest`,
    # `failed`): one that is not a version ("2025.*.1", none at all) raised a BundleError at
    # every start. Dropped here; the slot's own slot.json says it again (`_slot_version`).
    # (A trial whose version was not known when it began has none: nothing to mend.)
    for name in ("trial", "intent"):
        table = state.get(name)
        if isinstance(table, dict) and ("version" in table or name == "intent") \
                and not is_version(table.get("version")):
            mended(f"{name}.version", table.get("version"))
            table = state[name] = dict(table)
            table.pop("version", None)
    return state


def _another_boot(recorded: object, now: str) -> bool:
    """The start recorded `recorded` was in an earlier boot than this one. Only the kernel's
    ids are compared: `read_boot_id`'s stand-in where /proc has none is one per process,
    and would make every crash look like a reboot."""
    return isinstance(recorded, str) and not recorded.startswith("proc-") \
        and not now.startswith("proc-") and recorded != now


def _identity(path: Path) -> tuple:
    """What changes when state.json is written again (it is replaced whole, by a rename)."""
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns, st.st_size


@dataclass
class SlotInfo:
    slot: str
    version: str  # "factory" for the set copied from [models] dir
    installed_ts: float | None
    signer: str
    # What its self-test did not compare, and why (`check_slot`'s notes: the quality score
    # under other quality rules, and whether the learned head's numbers were checked
    # instead); "" when it compared everything. Health carries it (`status`).
    unchecked: str = ""


class Fleet:
    """The slots under one root; every method keeps `current` pointing at a complete set.

    `make_room()` gives back room on a full card (the state dir's reserve, `start_fleet`)
    and says whether it did: `save` then tries once more."""

    def __init__(self, root: Path | str, settings: FleetSettings,
                 make_room: Callable[[], bool] = lambda: False):
        self.root = Path(root)
        self.settings = settings
        self.make_room = make_room
        self._since_save = 0.0
        self._state: dict | None = None
        self._base: dict = {}  # state.json as this object last read or wrote it
        self._seen: tuple | None = None  # and that file's identity then (`refresh`)
        self._said: dict[str, str] = {}  # the damage last said per slot.json, said once
        self.selftest_notes: list[str] = []  # the last self-test's (`run_selftest`)
        self.selftest_rules = ""  # the quality rules it scored with, in words

    # -- layout -------------------------------------------------------------------------
    @property
    def current(self) -> Path:
        return self.root / CURRENT

    def slot_dir(self, slot: str) -> Path:
        return self.root / "slots" / slot

    def active_slot(self) -> str | None:
        try:
            target = os.readlink(self.current)
        except OSError:
            return None
        parts = Path(target).parts
        if len(parts) == 3 and parts[0] == "slots" and parts[1] in SLOTS and parts[2] == "models":
            return parts[1]
        return None

    def spare_slot(self) -> str:
        return "b" if self.active_slot() == "a" else "a"

    def slot_info(self, slot: str | None) -> SlotInfo | None:
        """What a slot holds, from its slot.json; None when it is not known: no slot, no
        file, or a damaged one (said once per slot in the log; health asks every minute).
        A damaged slot.json makes its slot unknown ("none"): its version is no floor
        against a replay and is never remembered."""
        if slot not in SLOTS:
            return None
        path = self.slot_dir(slot) / SLOT_FILE
        try:
            raw = read_state_file(path)
            if not isinstance(raw, dict):
                raise PayloadError("not a JSON object")
            version, signer = raw.get("version"), raw.get("signer", "")
            if version != FACTORY and not is_version(version):
                raise PayloadError(f"version {shown(version)} is not a version")
            if not isinstance(signer, str):
                raise PayloadError(f"signer {shown(signer)} is not a text")
        except FileNotFoundError:
            return None
        except PayloadError as exc:
            problem = one_line(exc)
            if self._said.get(slot) != problem:
                self._said[slot] = problem
                log.warning("fleet: %s: damaged (%s): slot %s is unknown", shown_path(path),
                            problem, slot)
            return None
        self._said.pop(slot, None)
        unchecked = raw.get("unchecked", "")
        return SlotInfo(slot, version, wall_ts_or_none(raw.get("installed_ts")),
                        signer[:120], short_error(unchecked, ERROR_SHOWN_CHARS)
                        if isinstance(unchecked, str) else "")

    # -- state ----------------------------------------------------------------------------
    @property
    def state(self) -> dict:
        if self._state is None:
            self._seen, disk = self._read_state()
            self._state, self._base = disk, copy.deepcopy(disk)
        return self._state

    def _read_state(self, say: bool = True) -> tuple[tuple | None, dict]:
        """(the file's identity, state.json as `checked_state` leaves it)."""
        path = self.root / STATE_FILE
        try:
            seen = _identity(path)
            return seen, checked_state(read_state_file(path), path, say)
        except FileNotFoundError:
            return None, {}
        except PayloadError as exc:
            # as for a state that is not an object (`checked_state`): the symlink is
            # the truth, and the active set's version stays the floor against a replay
            if say:
                log.warning("fleet: %s: damaged (%s): started afresh", shown_path(path),
                            one_line(exc))
            return seen, {}

    def _merged(self, disk: dict) -> dict:
        """`disk` (state.json as another process may have left it: a USB install beside
        the service) with the fields this object changed since it read it, each one set or
        removed as here; every other field as the file has it."""
        out, mine, gone = dict(disk), self.state, object()
        for key in set(self._base) | set(mine):
            if mine.get(key, gone) == self._base.get(key, gone):
                continue
            if key in mine:
                out[key] = mine[key]
            else:
                out.pop(key, None)
        return out

    @contextmanager
    def _state_lock(self):
        """One writer of state.json at a time across processes, for the few milliseconds
        of a read and a write (a lock on the fleet's folder: no file to create on a full
        card, and apart from the install lock, which an install holds for minutes)."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def save(self) -> None:
        """Write state.json: read again under the lock, with this object's changes put
        over it (`_merged`), so no writer puts back a stale state over a newer one. On a
        full card `make_room()` is asked once for room and the write tried again."""
        try:
            self._write_merged()
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not self.make_room():
                raise
            self._write_merged()
        self._since_save = 0.0

    def _write_merged(self) -> None:
        path = self.root / STATE_FILE
        with self._state_lock():
            merged = self._merged(self._read_state(say=False)[1])
            write_json(path, merged)
            seen = _identity(path)
        self._state, self._base, self._seen = merged, copy.deepcopy(merged), seen

    def refresh(self) -> None:
        """Take up what another process wrote to state.json since this object read or
        wrote it, keeping this object's changes not saved yet (the trial's running time)."""
        if self._state is None:
            return
        try:
            if _identity(self.root / STATE_FILE) == self._seen:
                return
        except FileNotFoundError:
            if self._seen is None:
                return
        seen, disk = self._read_state()
        self._state = self._merged(disk)
        self._base, self._seen = copy.deepcopy(disk), seen

    def _point_at(self, slot: str) -> None:
        """Switch `current` to the slot's models in one rename."""
        tmp = self.root / (CURRENT + ".tmp")
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        os.symlink(f"slots/{slot}/models", tmp)
        os.replace(tmp, self.current)
        fsync_dir(self.root)

    # -- start-up -------------------------------------------------------------------------
    def ensure(self, factory_dir: Path) -> None:
        """Make the layout on first use: the factory set (`[models] dir`) becomes slot a.
        Also repairs what a cut may have left: an unfinished switch, a missing link.
        `BundleError` naming the path when the fleet's folder cannot be used (a file in its
        place, no permission, a full disk)."""
        try:
            self._ensure(factory_dir)
        except OSError as exc:
            where = exc.filename or self.root
            raise BundleError(f"fleet {where}: {exc.strerror or exc}") from None

    def _ensure(self, factory_dir: Path) -> None:
        (self.root / "slots").mkdir(parents=True, exist_ok=True)
        if self.current.exists() and not self.current.is_symlink():
            raise BundleError(f"{self.current}: exists and is not the fleet's symlink")
        self.reconcile()
        self._retire_stale_rollback()
        active = self.active_slot()
        problem = check_set(self.current) if active is not None else "no link to a slot"
        if problem is None:
            return
        problem = one_line(problem.replace(f"{self.current}/", ""))
        broken = f"slot {active}" if active is not None else "fleet/current"

        def said(action: str) -> str:
            """The line for the log and health (160 characters there): the problem cut."""
            room = 160 - len(f"{broken} damaged (); {action}")
            cut = problem if len(problem) <= room else problem[:max(0, room - 3)] + "..."
            return f"{broken} damaged ({cut}); {action}"

        had_slots = any(self.slot_dir(slot).exists() for slot in SLOTS)
        for slot in SLOTS:  # the link is gone or its set broken: another complete slot...
            if slot == active or check_set(self.slot_dir(slot) / "models") is not None:
                continue
            version = self._version(slot)
            if self.failed_here(version):
                # ...but never the one a rollback left there: it crashed the loop (and as
                # "confirmed", with no trial, a crash loop on it could not roll back again)
                log.error("fleet: %s is not a complete set (%s); slot %s holds %s, which was "
                          "rolled back: not switching to it", self.current, problem, slot,
                          version)
                continue
            line = said(f"switched to slot {slot} ({version[:40]})")
            log.error("fleet: %s", line)
            self._point_at(slot)
            self.state.pop("trial", None)
            self.state["last_error"] = line
            self.save()
            return
        self._seed(Path(factory_dir))  # ...else the factory set of [models] dir, again
        if active is not None or had_slots:  # not the first start: health says it
            line = said("slot a seeded again from the factory [models] dir")
            log.error("fleet: %s", line)
            self.state.pop("trial", None)
            self.state.pop("intent", None)
            self.state["last_error"] = line
            self.save()

    def failed_here(self, version: str) -> bool:
        """The version was rolled back or failed its self-test here (`state["failed"]`)."""
        if not is_version(version):
            return False
        key = parse_version(version)
        return any(is_version(v) and parse_version(v) == key
                   for v in self.state.get("failed", []))

    def _seed(self, factory_dir: Path) -> None:
        problem = check_set(factory_dir)
        if problem:
            raise BundleError(f"fleet: cannot seed slot a from [models] dir: {problem}")
        staging = self.root / "slots" / STAGING
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "models").mkdir(parents=True)
        for item in list_manifests(factory_dir):
            for src in (item.path, item.model_path):
                target = staging / "models" / src.name
                shutil.copyfile(src, target)
                with open(target, "rb") as handle:  # on the card before `current` moves
                    os.fsync(handle.fileno())
        write_json(staging / SLOT_FILE, {"version": FACTORY, "installed_ts": time.time(),
                                         "signer": ""})
        fsync_dir(staging / "models")
        shutil.rmtree(self.slot_dir("a"), ignore_errors=True)
        os.replace(staging, self.slot_dir("a"))
        fsync_dir(self.root / "slots")
        self._point_at("a")
        log.info("fleet: slot a seeded with the factory models of %s", factory_dir)

    def reconcile(self) -> None:
        """Finish or forget what a killed install or rollback left in `state.json`."""
        intent = self.state.get("intent")
        if not isinstance(intent, dict):
            return
        active = self.active_slot()
        if intent.get("op") == "swap":
            if active == intent.get("to"):
                self._begin_trial(intent)
            else:
                log.warning("fleet: the switch to %s was cut before it happened; %s stays",
                            intent.get("version"), self._version(active))
                self.state.pop("intent", None)
                self.save()
        elif intent.get("op") == "rollback":
            if active != intent.get("to"):
                self._point_at(str(intent["to"]))
            self._finish_rollback(intent)
        else:
            self.state.pop("intent", None)
            self.save()
        trial = self.state.get("trial")
        if isinstance(trial, dict) and trial.get("slot") != self.active_slot():
            self.state.pop("trial", None)
            self.save()

    def on_start(self) -> str | None:
        """Called once when the loop starts: counts an unclean end during a trial and rolls
        back at the limit. Returns a line to print when it rolled back.

        An unclean end in an earlier boot than this one (the kernel's boot id differs from
        the one recorded at that start) was a power cut or a reboot, not the models: not
        counted. A card that cannot take state.json (full) is one line naming it, and the
        loop starts on the set `current` holds."""
        trial = self.state.get("trial")
        if not isinstance(trial, dict):
            return None
        try:
            return self._count_start(trial)
        except OSError as exc:
            log.error("fleet: %s: this start of %s's trial not recorded (%s); starting on "
                      "the current set", shown_path(self.root / STATE_FILE),
                      trial.get("version"), exc.strerror or exc)
            return None

    def _count_start(self, trial: dict) -> str | None:
        boot = read_boot_id()
        if trial.get("running") and _another_boot(trial.get("boot_id"), boot):
            # A power cut is no crash; but a set that hangs the whole box is switched off
            # and on by the midwife, each a new boot: those count against a higher limit.
            trial["reboots"] = int(trial.get("reboots", 0)) + 1
            limit = REBOOTS_PER_CRASH * self.settings.crash_limit
            log.warning("fleet: %s on trial: the box restarted (a power cut or a reboot): "
                        "not counted as a crash (%d of %d such restarts)",
                        trial.get("version"), trial["reboots"], limit)
            if trial["reboots"] >= limit:
                return self.rollback(f"the box was restarted {trial['reboots']} times "
                                     f"during its trial of {self.settings.trial_min:g} min")
        elif trial.get("running"):
            trial["crashes"] = int(trial.get("crashes", 0)) + 1
            log.warning("fleet: %s on trial: the loop did not end cleanly (%d of %d)",
                        trial.get("version"), trial["crashes"], self.settings.crash_limit)
        if trial.get("crashes", 0) >= self.settings.crash_limit:
            return self.rollback(f"the loop crashed {trial['crashes']} times within "
                                 f"{self.settings.trial_min:g} min of the swap")
        trial["running"] = True
        trial["boot_id"] = boot
        self.save()
        return None

    def on_clean_exit(self) -> None:
        trial = self.state.get("trial")
        if isinstance(trial, dict):
            trial["running"] = False
            try:
                self.save()
            except OSError as exc:
                log.error("fleet: %s: the clean end of %s's trial not recorded (%s): the "
                          "next start counts a crash", shown_path(self.root / STATE_FILE),
                          trial.get("version"), exc.strerror or exc)

    def tick(self, seconds: float) -> bool:
        """The loop ran `seconds` more; True when that ended the trial (confirmed)."""
        trial = self.state.get("trial")
        if not isinstance(trial, dict):
            return False
        trial["ran_s"] = float(trial.get("ran_s", 0.0)) + seconds
        self._since_save += seconds
        if trial["ran_s"] >= self.settings.trial_min * 60:
            self.state.pop("trial")
            self._to_history()  # a newer bundle runs: the old rollback is history
            self.save()
            log.info("fleet: bundle %s confirmed after %.0f min without %d crashes",
                     trial.get("version"), trial["ran_s"] / 60, self.settings.crash_limit)
            return True
        if self._since_save >= SAVE_EVERY_S:
            self._since_save = 0.0  # a card that cannot take it is tried again in as long
            self.save()
        return False

    # -- install ----------------------------------------------------------------------------
    def _version(self, slot: str | None) -> str:
        info = self.slot_info(slot)
        return info.version if info else "none"

    def floor(self) -> str | None:
        """The version a new bundle must be newer than: the highest this device has
        installed, or the one it runs (never the factory set); None before any."""
        known = [v for v in (self.state.get("highest"), self._version(self.active_slot()))
                 if isinstance(v, str) and v not in (FACTORY, "none")]
        return max(known, key=parse_version, default=None)

    def policy(self, manifest: BundleManifest, app: str) -> None:
        """Refuse a bundle for another group, one that needs a newer app, or one not newer
        than every version this device has installed (a replay or a downgrade)."""
        group = self.settings.group
        if manifest.group != group:
            raise BundleError(f"bundle {manifest.version} is for device group "
                              f"{manifest.group!r}, this device is in {group!r}")
        if parse_version(manifest.min_app_version) > parse_version(app):
            raise BundleError(f"bundle {manifest.version} needs sonoedge "
                              f"{manifest.min_app_version} or newer; this is {app}")
        active = self._version(self.active_slot())
        top = self.floor()
        if top is not None and manifest.version_key <= parse_version(top):
            why = self._rolled_back(manifest.version)
            if why is not None:
                raise BundleError(f"bundle {manifest.version} refused: {manifest.version} "
                                  f"was rolled back on this box: {why} (re-sign it as a "
                                  "newer version)")
            what = "already installed" if manifest.version == active else \
                "not newer than" if manifest.version == top else "older than"
            raise BundleError(f"bundle {manifest.version} refused: {what} {top} (a replayed "
                              "or downgraded bundle is never installed)")

    def _rolled_back(self, version: str) -> str | None:
        """Why `version` was rolled back here (the last rollback, or one in the history),
        None when it was not (or the record is gone: "not newer than" says the rest)."""
        if not self.failed_here(version):
            return None
        events = [self.state.get("rollback")] + list(reversed(self.state.get("history", [])))
        for event in events:
            if isinstance(event, dict) and event.get("what", "rollback") == "rollback" \
                    and event.get("from") == version:
                return str(event.get("reason", ""))[:160]
        return None

    def clear_stale_staging(self) -> bool:
        """At start: a staging folder no install holds is what a killed one left (a power
        cut mid-unpack); it held the card's space until the next install. True if removed."""
        staging = self.root / "slots" / STAGING
        if not staging.exists():
            return False
        try:
            lock = self._install_lock()
        except OSError:
            return False
        if lock is None:
            return False  # an install is running (by hand, beside the service): its own
        with lock:
            shutil.rmtree(staging, ignore_errors=True)
        return not staging.exists()

    def _install_lock(self):
        """The lock that allows one install at a time across processes (the service's, one
        by hand), held while the returned file is open; None when another holds it."""
        lock = open(self.root / "install.lock", "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return None
        return lock

    def install(self, path: Path, keys: list, names: dict | None = None,
                file_named: bool = True) -> BundleManifest:
        """Verify, stage, self-test and swap in a bundle; `BundleError` (one line) leaves
        `current` and its models exactly as they were. `file_named`: the self-test's lines
        name the bundle's file (a hand install's; not a download's, named by its version)."""
        (self.root / "slots").mkdir(parents=True, exist_ok=True)
        lock = self._install_lock()
        # Both refusals below are the device's state, not the bundle's (DeviceFault): the
        # fleet agent takes a district's bundle up again later instead of refusing it.
        if lock is None:
            raise DeviceFault("another install is running")
        with lock:
            self._state = None  # re-read: another process may have changed it
            self.reconcile()
            trial = self.state.get("trial")
            if isinstance(trial, dict):
                left = self.settings.trial_min - float(trial.get("ran_s", 0)) / 60
                raise DeviceFault(f"bundle {trial.get('version')} is still on trial "
                                  f"({max(0.0, left):.1f} min of running left); install "
                                  "after that")
            before = self.active_slot()
            try:
                return self._install(Path(path), keys, names, file_named)
            except BundleError as exc:
                error = exc
            except OSError as exc:
                # A full disk or a failing card, past the bundle's own checks: one line, and
                # no half-written staging folder left to hold the space.
                shutil.rmtree(self.root / "slots" / STAGING, ignore_errors=True)
                error = DeviceFault(
                    f"{path}: cannot install ({exc.strerror or exc}); " + (
                        "the models in use are unchanged" if self.active_slot() == before
                        else "switched, the next start finishes recording it"))
            self.state["last_error"] = short_error(error)
            try:
                self.save()
            except OSError:
                pass  # the disk is still full: the error line below says what went wrong
            raise error from None

    def _install(self, path: Path, keys: list, names: dict | None,
                 file_named: bool = True) -> BundleManifest:
        from edge.fleet.selftest import BoxFault, run_selftest

        s = self.settings
        limits = Limits(int(s.max_bundle_mb * 1e6), int(s.max_unpacked_mb * 1e6))
        staging = self.root / "slots" / STAGING
        shutil.rmtree(staging, ignore_errors=True)
        _step("cleared-staging")
        app = app_version()
        self.selftest_notes, self.selftest_rules = [], ""
        seen: list[str] = []

        def on_file(name: str) -> None:
            seen.append(name)
            if len(seen) == 1:
                _step("extracting")

        staging.mkdir(parents=True)
        t0 = time.monotonic()
        try:
            manifest, signer = read_bundle(path, keys, limits, staging, on_file=on_file,
                                           check=lambda m: self.policy(m, app))
        except BundleError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        verify_s = time.monotonic() - t0
        _step("extracted")
        t0 = time.monotonic()
        try:
            failures, notes, rules = run_selftest(staging, s.selftest_timeout_s,
                                                  s.selftest_threads, names,
                                                  path.name if file_named else "")
        except BoxFault as exc:  # not the bundle's doing: tried again later
            shutil.rmtree(staging, ignore_errors=True)
            raise DeviceFault(f"bundle {manifest.version}: {exc}; "
                              f"{self._version(self.active_slot())} stays") from None
        selftest_s = time.monotonic() - t0
        # what it did not compare and why: `bundle install` says it, and slot.json keeps it
        # for health while this set runs (the district saw only a refusal, never this)
        self.selftest_notes, self.selftest_rules = notes, rules
        if rules:
            log.info("fleet: bundle %s self-test scored with quality rules %s",
                     manifest.version, rules)
        for note in notes:
            log.info("fleet: bundle %s self-test: %s", manifest.version, note)
        if failures:
            # Never swapped, never ran: a refusal (`install` keeps the line below as
            # `last_error`, which health reports), not a rollback; kept in the history.
            shutil.rmtree(staging, ignore_errors=True)
            active = self._version(self.active_slot())
            self._add_history({"what": "refused", "from": manifest.version, "to": active,
                               "reason": f"{SELFTEST_REASON}{failures[0]}"[:160],
                               "ts": round(time.time(), 1)})
            self._remember_failed(manifest.version)
            self.save()
            raise BundleError(f"bundle {manifest.version} failed its self-test, {active} "
                              f"stays: {failures[0]}" + (f" (and {len(failures) - 1} more)"
                                                         if len(failures) > 1 else ""))
        _step("selftested")
        slot = {"version": manifest.version, "signer": signer,
                "installed_ts": round(time.time(), 1), "group": manifest.group}
        if notes:
            slot["unchecked"] = short_error("; ".join(notes))
        write_json(staging / SLOT_FILE, slot)
        t0 = time.monotonic()
        spare = self.spare_slot()
        shutil.rmtree(self.slot_dir(spare), ignore_errors=True)
        _step("spare-removed")
        os.replace(staging, self.slot_dir(spare))
        fsync_dir(self.root / "slots")
        _step("staged")
        intent = {"op": "swap", "to": spare, "from": self.active_slot(),
                  "version": manifest.version,
                  "previous_version": self._version(self.active_slot())}
        self.state["intent"] = intent
        self.save()
        _step("intent")
        self._point_at(spare)
        _step("swapped")
        self._begin_trial(intent)
        swap_s = time.monotonic() - t0
        self.timings = {"verify_s": verify_s, "selftest_s": selftest_s, "swap_s": swap_s}
        log.info("fleet: bundle %s installed in slot %s (signed by %s; verify %.2f s, "
                 "self-test %.2f s, swap %.3f s); on trial for %g min", manifest.version,
                 spare, signer, verify_s, selftest_s, swap_s, s.trial_min)
        return manifest

    def _slot_version(self, intent: dict, key: str, slot_key: str) -> str | None:
        """The version an intent names under `key`, or (dropped as damaged by
        `checked_state`) the one its slot's slot.json says; None when neither is one."""
        version = intent.get(key)
        if is_version(version):
            return version
        info = self.slot_info(intent.get(slot_key))
        return info.version if info is not None and is_version(info.version) else None

    def _begin_trial(self, intent: dict) -> None:
        version = self._slot_version(intent, "version", "to")
        trial = {"slot": intent.get("to"), "previous": intent.get("from"),
                 "version": version, "previous_version": intent.get("previous_version"),
                 "crashes": 0, "ran_s": 0.0, "running": False,
                 "swapped_ts": round(time.time(), 1)}
        if version is None:
            trial.pop("version")  # not known: never compared nor remembered
        self.state["trial"] = trial
        highest = self.state.get("highest")
        if version is not None and (not is_version(highest)
                                    or parse_version(version) > parse_version(highest)):
            self.state["highest"] = version
        self.state.pop("intent", None)
        self.state.pop("last_error", None)
        self.save()
        _step("trial")

    def _remember_failed(self, version: str) -> None:
        if not is_version(version):  # only a version is compared later (`policy`)
            return
        failed = [v for v in self.state.get("failed", []) if isinstance(v, str)]
        self.state["failed"] = (failed + [version])[-8:]
        highest = self.state.get("highest")
        if not is_version(highest) or parse_version(version) > parse_version(highest):
            self.state["highest"] = version  # the same bundle is never tried again

    # -- rollback --------------------------------------------------------------------------
    def rollback(self, reason: str) -> str:
        """Put the previous set back; returns the line that says so."""
        trial = self.state.get("trial") or {}
        previous = trial.get("previous")
        if previous not in SLOTS or check_set(self.slot_dir(previous) / "models"):
            self.state.pop("trial", None)
            self.save()
            return f"fleet: cannot roll back {trial.get('version')}: no complete previous set"
        intent = {"op": "rollback", "to": previous, "from": trial.get("slot"),
                  "version": trial.get("version"),
                  "previous_version": trial.get("previous_version"), "reason": reason}
        self.state["intent"] = intent
        self.save()
        _step("rollback-intent")
        self._point_at(previous)
        _step("rollback-swapped")
        return self._finish_rollback(intent)

    def _finish_rollback(self, intent: dict) -> str:
        # the set rolled back from is still in its slot: its slot.json names it when the
        # intent's version was damaged (`checked_state`), so it is still never taken again
        version = self._slot_version(intent, "version", "from")
        self.state.pop("trial", None)
        self.state.pop("intent", None)
        self._to_history()
        self.state["rollback"] = {"from": version or "unknown",
                                  "to": str(intent.get("previous_version"))[:40],
                                  "reason": str(intent.get("reason", ""))[:160],
                                  "ts": round(time.time(), 1)}
        if version is not None:
            self._remember_failed(version)
        self.save()
        line = (f"fleet: rolled back from {version or 'unknown'} to "
                f"{str(intent.get('previous_version'))[:40]}: "
                f"{str(intent.get('reason'))[:160]}")
        log.error("%s", line)
        return line

    # -- history ----------------------------------------------------------------------------
    def _add_history(self, event: dict) -> None:
        past = [e for e in self.state.get("history", []) if isinstance(e, dict)]
        self.state["history"] = (past + [event])[-HISTORY_MAX:]

    def _to_history(self, what: str = "rollback") -> None:
        """Move the last rollback out of what health reports, into the history as `what`
        ("refused": a self-test refusal an older state.json recorded as a rollback)."""
        event = self.state.pop("rollback", None)
        if isinstance(event, dict):
            self._add_history({"what": what, **{k: event.get(k) for k in
                                                ("from", "to", "reason", "ts")}})

    def _retire_stale_rollback(self) -> None:
        """At start, for a state.json written before a confirmation retired the rollback: one
        from a version older than the confirmed set running now, or one that was really a
        self-test refusal (the bundle never ran; its line is `last_error`), is history."""
        rollback = self.state.get("rollback")
        if not isinstance(rollback, dict) or isinstance(self.state.get("trial"), dict):
            return
        running, old = self._version(self.active_slot()), rollback.get("from")
        newer = is_version(running) and is_version(old) and \
            parse_version(running) > parse_version(old)
        refusal = str(rollback.get("reason", "")).startswith(SELFTEST_REASON)
        if newer or refusal:
            self._to_history("refused" if refusal else "rollback")
            self.save()

    # -- reporting --------------------------------------------------------------------------
    def status(self) -> dict:
        """What `health` reports: the installed bundle, its state, the last rollback (until
        a newer bundle is confirmed), the last error, and what its self-test did not
        compare (`SlotInfo.unchecked`)."""
        active = self.active_slot()
        info = self.slot_info(active)
        version = info.version if info else "none"
        trial = self.state.get("trial")
        state = ("trial" if isinstance(trial, dict) else
                 "factory" if version == FACTORY else "confirmed")
        out = {"group": self.settings.group[:64], "bundle": version[:40], "state": state,
               "slot": active or "-"}
        if isinstance(trial, dict):
            out["crashes"] = int(trial.get("crashes", 0))
            out["trial_left_min"] = round(max(0.0, self.settings.trial_min - float(
                trial.get("ran_s", 0)) / 60), 1)
        rollback = self.state.get("rollback")
        if isinstance(rollback, dict):
            out["rollback"] = {"from": str(rollback.get("from"))[:40],
                               "to": str(rollback.get("to"))[:40],
                               "reason": str(rollback.get("reason"))[:160],
                               # a time the wire takes, or none (Infinity broke the
                               # health schema, so every health message was refused)
                               "ts": wall_ts_or_none(rollback.get("ts"))}
        if self.state.get("last_error"):
            out["error"] = short_error(self.state["last_error"], ERROR_SHOWN_CHARS)
        if info is not None and info.unchecked:
            out["unchecked"] = info.unchecked
        return out
