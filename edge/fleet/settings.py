"""[fleet] in the device config: signed model bundles, their slots, delivery and rollback.

Off by default, so `make run`, the tests and anyone pointing `[models] dir` at a plain folder
keep that folder. With `enabled = true` the loop's models are `<root>/current`, a symlink to
one of two slots; the first start copies `[models] dir` into slot a as the factory set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wire.fleet import GROUP_RE
from wire.shown import shown


@dataclass(frozen=True)
class FleetSettings:
    enabled: bool = False
    root: str = ""  # the slots, the symlink and the install state; "" = <state dir>/fleet
    group: str = ""  # the device group a bundle must name (board/provision.py --group)
    trusted_keys: str = "/etc/sonoedge/keys"  # *.pub (Ed25519, PEM) the device trusts
    # Limits on what is parsed before and after the signature is checked.
    max_bundle_mb: float = 64.0  # the compressed archive
    max_unpacked_mb: float = 256.0  # every member together, and so each one
    max_chunk_kb: int = 256  # one MQTT chunk
    # Self-test: a separate process, so a model that crashes or hangs the runtime fails the
    # test instead of the loop.
    selftest_timeout_s: float = 300.0
    selftest_threads: int = 1  # leave the other core to the running loop
    # Rollback: `crash_limit` unclean ends of the loop within `trial_min` minutes of running
    # after a swap put the previous set back. After that it is confirmed.
    crash_limit: int = 3
    trial_min: float = 10.0
    # New models wait for the exam in progress to end before the loop restarts on them (a
    # restart ended it, and the woman's scan went to the district as two exams); at most
    # this long, so a box scanning all day still takes them up.
    restart_wait_min: float = 30.0
    # Delivery. MQTT: the uplink's own connection subscribes to the group's offer.
    mqtt: bool = True
    chunk_window: int = 8  # chunks asked for at once over MQTT
    http_url: str = ""  # https://district/sonoedge/bundles: <url>/<group>/offer.json; "" = off
    http_ca: str = ""  # a CA file for a district server with its own CA; "" = the system's
    # how often the HTTP offer is fetched, and how soon an offer the device could not take
    # for its own fault (a full disk) is taken up again
    poll_min: float = 60.0
    http_timeout_s: float = 30.0


def check_fleet_settings(f: FleetSettings) -> None:
    """ValueError with one line naming the key; a value is shown cut (`wire.shown`): it
    may be 200 kB."""
    if f.enabled and not GROUP_RE.match(f.group or ""):
        raise ValueError(f"group {shown(f.group)} must name the device group (letters, digits, "
                         "'.', '_', '-'; max 64) when the fleet is enabled")
    if not 0.1 <= f.max_bundle_mb <= 4096 or not 0.1 <= f.max_unpacked_mb <= 16384:
        raise ValueError("max_bundle_mb must be 0.1-4096 and max_unpacked_mb 0.1-16384")
    if not 1 <= f.max_chunk_kb <= 4096 or not 1 <= f.chunk_window <= 256:
        raise ValueError("max_chunk_kb must be 1-4096 and chunk_window 1-256")
    if not 1 <= f.selftest_timeout_s <= 3600 or not 1 <= f.selftest_threads <= 64:
        raise ValueError("selftest_timeout_s must be 1-3600 and selftest_threads 1-64")
    if not 1 <= f.crash_limit <= 100 or not 0.1 <= f.trial_min <= 10080:
        raise ValueError("crash_limit must be 1-100 and trial_min 0.1-10080")
    if not 0 <= f.restart_wait_min <= 1440:
        raise ValueError("restart_wait_min must be 0-1440")
    if not 0.1 <= f.poll_min <= 10080 or not 1 <= f.http_timeout_s <= 600:
        raise ValueError("poll_min must be 0.1-10080 and http_timeout_s 1-600")
    if f.http_url and not f.http_url.startswith(("https://", "http://")):
        raise ValueError(f"http_url {shown(f.http_url)} must start with https:// (or http://)")


def fleet_root(settings, state_dir: Path | str | None = None) -> Path:
    """Where the slots live: `[fleet] root`, or `fleet/` in the state dir (`state_dir`, the
    loop's own, else the config's)."""
    return Path(settings.fleet.root or Path(state_dir or settings.device.state_dir) / "fleet")


def selftest_names(settings) -> dict:
    """The device's model names, backend and quality rules, so the self-test loads and
    judges by what the loop does (it scored with the shipped rules, whatever a clinic's
    `[quality] rules` said)."""
    return {"plane": settings.models.plane, "segmenter": settings.biometry.segmenter,
            "learned": settings.quality.learned, "backend": settings.models.backend,
            "rules": settings.quality.rules}
