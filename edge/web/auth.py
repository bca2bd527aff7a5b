"""The device PIN, web sessions and the brake on wrong PINs.

The PIN is stored only as a salted scrypt hash (hashlib.scrypt, RFC 7914) in the state
directory, written whole or not at all, readable by its owner only. A correct PIN opens a
session: a random token in an HttpOnly, SameSite=Strict cookie, which expires after a
while without use and after a hard maximum. Wrong PINs are braked per client address and
for the device as a whole, with waits that double, and each attempt is counted before its
PIN is verified, so a four-digit PIN cannot be walked through from the clinic's network,
even by many requests at once.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from wire.schema import PayloadError, loads_bounded, read_regular_file
from wire.shown import one_line, read_failure, shown_path

PIN_FILE = "web-pin.json"
PIN_MIN, PIN_MAX = 4, 64
# scrypt cost: N=2^15, r=8 takes ~32 MiB and ~0.1 s on a Pi 5 core per attempt (measured
# ~0.06 s on the build box), slow enough that a stolen file is costly to brute-force,
# quick enough that the midwife does not wait.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 15, 8, 1
SCRYPT_MAXMEM = 64 * 1024 * 1024
# The PIN file as written is under 200 bytes: read back, one larger is damage, not parsed.
PIN_FILE_MAX_BYTES = 4096


class PinError(ValueError):
    """One line saying what is wrong with a PIN or the PIN file."""


def check_pin_text(pin: str) -> str:
    pin = pin.strip()
    if not PIN_MIN <= len(pin) <= PIN_MAX:
        raise PinError(f"the PIN must be {PIN_MIN} to {PIN_MAX} characters")
    if not pin.isprintable():
        raise PinError("the PIN must be printable characters")
    return pin


def _scrypt(pin: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(pin.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=SCRYPT_MAXMEM,
                          dklen=32)


def scrypt_memory(n: int, r: int, p: int) -> int:
    """The bytes scrypt asks for with these costs, as OpenSSL counts them against `maxmem`
    (its V array of 128 r (n + 2) bytes and its B of 128 r p): above SCRYPT_MAXMEM every
    verification fails ("memory limit exceeded")."""
    return 128 * r * (n + 2) + 128 * r * p


def scrypt_costs_problem(n: object, r: object, p: object) -> str | None:
    """Why hashlib.scrypt would refuse these costs, else None: integers
    (a bool, a float or Infinity is damage), n a power of 2 from 2^10 to 2^20 and below
    2^(16 r) (RFC 7914, which OpenSSL enforces), r 1 to 32, p 1 to 4, and the memory
    within SCRYPT_MAXMEM."""
    if not all(type(v) is int for v in (n, r, p)):
        return "cost parameters n, r, p must be integers"
    if not (1 << 10 <= n <= 1 << 20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 4
            and n < 1 << (16 * r)):
        return "cost parameters out of range"
    if scrypt_memory(n, r, p) > SCRYPT_MAXMEM:
        return f"cost parameters n={n} r={r} p={p} need more than {SCRYPT_MAXMEM >> 20} MiB"
    return None


def hash_pin(pin: str) -> dict:
    salt = secrets.token_bytes(16)
    digest = _scrypt(check_pin_text(pin), salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return {"scheme": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P,
            "salt": base64.b64encode(salt).decode(), "hash": base64.b64encode(digest).decode()}


def write_pin(state_dir: Path, pin: str) -> Path:
    """Hash the PIN and store it in the state dir, atomically, mode 0600. A state dir that
    is a file, cannot be made or written, or a full card is a PinError naming it."""
    state_dir = Path(state_dir)
    record = hash_pin(pin)
    path = state_dir / PIN_FILE
    tmp = path.with_suffix(".tmp")
    if state_dir.exists() and not state_dir.is_dir():
        raise PinError(f"{state_dir}: not a folder (the state dir); nothing was changed")
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise PinError(f"{state_dir}: cannot store the PIN there "
                       f"({exc.strerror or exc}); nothing was changed") from None
    return path


@dataclass(frozen=True)
class PinHash:
    salt: bytes
    digest: bytes
    n: int
    r: int
    p: int

    def matches(self, pin: str) -> bool:
        if not isinstance(pin, str) or not PIN_MIN <= len(pin.strip()) <= PIN_MAX:
            return False
        got = _scrypt(pin.strip(), self.salt, self.n, self.r, self.p)
        return hmac.compare_digest(got, self.digest)


def read_pin(state_dir: Path) -> PinHash:
    """The stored hash; `PinError` (one line naming the file) when missing or damaged.

    The file is read as hostile input (a bad card, a hand edit): bounded in size and depth,
    its costs integers (not a bool, a float or Infinity) within the ranges below, and none
    whose memory exceeds SCRYPT_MAXMEM: such a file was accepted, and then every login
    failed in the hash (a 500 answer, counted as a wrong PIN until the page locked)."""
    real = Path(state_dir) / PIN_FILE
    path = shown_path(real)  # each line names it, escaped (a folder may be "clinic\nroom 2")
    try:
        data, _ = read_regular_file(real, PIN_FILE_MAX_BYTES)
        raw = loads_bounded(data, PIN_FILE_MAX_BYTES, max_depth=2)
    except FileNotFoundError:
        raise PinError(f"{path}: no device PIN is set; run `sonoedge pin set --state-dir "
                       f"{shown_path(state_dir)}` and type the PIN") from None
    except (OSError, PayloadError) as exc:
        raise PinError(f"{path}: unreadable PIN file ({read_failure(exc)}); set the PIN "
                       "again") from None
    try:
        if not isinstance(raw, dict) or raw.get("scheme") != "scrypt":
            raise ValueError("unknown scheme")
        n, r, p = (raw.get(name) for name in ("n", "r", "p"))
        problem = scrypt_costs_problem(n, r, p)
        if problem:
            raise ValueError(problem)
        salt, digest = raw.get("salt"), raw.get("hash")
        if not (isinstance(salt, str) and isinstance(digest, str)):
            raise ValueError("salt or hash missing")
        found = PinHash(base64.b64decode(salt, validate=True),
                        base64.b64decode(digest, validate=True), n, r, p)
    except ValueError as exc:  # binascii.Error is one
        raise PinError(f"{path}: damaged PIN file ({one_line(exc)}); set the PIN again") \
            from None
    if not 8 <= len(found.salt) <= 64 or len(found.digest) != 32:
        raise PinError(f"{path}: damaged PIN file (salt or hash length); set the PIN again")
    return found


class Braked(Exception):
    """A login attempt refused before its PIN is looked at: `reason` is "braked" (wrong PINs
    from this address, or from everywhere) or "busy" (attempts already in flight)."""

    def __init__(self, reason: str, wait_s: float):
        super().__init__(f"{reason}: wait {wait_s:.0f} s")
        self.reason = reason
        self.wait_s = wait_s


@dataclass(eq=False)
class Attempt:
    """A login attempt let through by `Brake.begin`: it is already counted as a wrong PIN
    (so attempts racing it see the count) and holds its key's one in-flight slot until
    `finish` or `cancel`."""

    key: str
    known: bool
    wait_if_wrong: float  # the key's wait should the PIN be wrong (already imposed)
    before: tuple[int, float]  # the key's (count, until) before this attempt


@dataclass
class _DeviceLimit:
    """Wrong PINs from all addresses together, as a leaky bucket: each adds one, and a full
    bucket (`capacity`) drains in `drain_s`. An attempt that finds it full starts a lock of
    `lock_s`, doubling with each further lock up to `max_lock_s`; after a lock one attempt
    may go through, and the next that finds the bucket still full starts the next lock. So
    the waits start short and grow while someone keeps trying, and someone pacing themselves
    gets no more than the drain. An empty bucket forgets the doubling."""

    capacity: int
    drain_s: float
    lock_s: float
    max_lock_s: float
    level: float = 0.0
    at: float = 0.0
    locked_until: float = 0.0
    strikes: int = 0
    locks: int = 0
    after_lock: bool = False  # a lock has just ended: one attempt may go through

    def _drain(self, now: float) -> None:
        if now > self.at:
            self.level = max(0.0, self.level - (now - self.at) * self.capacity / self.drain_s)
            self.at = now
        if self.level <= 0.0:
            self.strikes = 0

    def wait(self, now: float) -> float:
        """Seconds to wait; starts a lock when the bucket is full."""
        self._drain(now)
        if now < self.locked_until:
            return self.locked_until - now
        if self.level + 1.0 - self.capacity > 1e-9 and not self.after_lock:
            lock = min(self.lock_s * 2.0 ** min(self.strikes, 30), self.max_lock_s)
            self.strikes += 1
            self.locks += 1
            self.locked_until = now + lock
            self.after_lock = True
            return lock
        return 0.0

    def charge(self, now: float) -> None:
        self._drain(now)
        # Only an attempt that found room is charged (`Brake.begin`), so the level stays
        # below capacity plus the attempts in flight; bounded all the same.
        self.level = min(self.level + 1.0, self.capacity + 100_000.0)
        self.after_lock = False

    def uncharge(self) -> None:
        self.level = max(0.0, self.level - 1.0)


@dataclass
class Brake:
    """Wrong-PIN brake.

    Per key (a client address; a browser known to have typed the right PIN before, by its
    cookie, has a key of its own per address): after `free` wrong PINs each further one
    makes that key wait `base_s`, doubling up to `max_s`; a correct PIN clears its count.

    For the device as a whole (all addresses together, so changing address does not help),
    wrong PINs fill a bucket of `global_max` that drains in `global_window_s` (one wrong
    PIN forgotten every 12 minutes by default). A full bucket locks out every browser not
    known for `global_lock_s`; after it one attempt may go through, and the next lock is
    twice as long, up to `global_max_lock_s`: someone trying PINs as fast as allowed gets
    30, then one after each lock of 1, 2, 4 ... 60 minutes, and however they pace
    themselves no more than the drain's 5 an hour in the long run (about 130 a day, from
    any number of addresses), where a fixed 30 per 10 minutes allowed 4,320.
    Known browsers are not held by that lock (else anyone trying PINs from a few addresses
    would keep the midwife out for as long as they kept at it) but have a bucket of their
    own, `known_global_max`, that strangers cannot touch: a copied cookie cannot be used to
    walk through the PINs either.

    An attempt begins (`begin`, atomically with the check) once its PIN has arrived
    (a request that never sends one is not an attempt: it cannot fill the bucket), and is
    charged as wrong from then, before its PIN is verified; the charge is taken back when
    the PIN proves right (`finish`) or the attempt is dropped (`cancel`): concurrent
    requests cannot all pass the check before any of them is counted. At most one attempt
    per key is in flight. An attempt then joins the verification queue (`queue`), where at most
    `max_queued` from unknown browsers wait (`max_queued_known` from known ones: a
    queue of their own, so a flood of strangers' attempts never delays the midwife's);
    one that finds it full is refused and not counted.

    Counts are in memory, at most `max_clients` keys: a restart forgets them, which a
    restart's own time (models load) already brakes."""

    free: int = 5
    base_s: float = 30.0
    max_s: float = 900.0
    global_max: int = 30  # wrong PINs from everywhere before a lock: a clinic never gets near
    global_window_s: float = 6 * 3600.0  # a full bucket drains in this long (5 an hour)
    global_lock_s: float = 60.0  # the first device-wide lock; it doubles while attacks go on
    global_max_lock_s: float = 3600.0  # bounded: a new phone waits at most an hour a lock
    known_global_max: int = 10  # known browsers' own device-wide bucket (same drain time)
    max_queued: int = 4  # strangers' PINs queued at once: a 4-deep scrypt queue, < 0.5 s
    max_queued_known: int = 2  # known browsers' PINs queued at once (phone and tablet)
    max_clients: int = 4096
    _clients: dict[str, tuple[int, float]] = field(default_factory=dict)  # key -> (wrong, until)
    _in_flight: dict[str, Attempt] = field(default_factory=dict)
    _queued: set = field(default_factory=set)  # attempts in the verification queue
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._device = {known: _DeviceLimit(self.known_global_max if known else self.global_max,
                                            self.global_window_s, self.global_lock_s,
                                            self.global_max_lock_s)
                        for known in (False, True)}

    @property
    def locks(self) -> int:
        """Device-wide locks of unknown browsers so far (the server logs each new one)."""
        return self._device[False].locks

    @property
    def locked_until(self) -> float:
        return self._device[False].locked_until

    @staticmethod
    def key(client: str, known: bool = False) -> str:
        return f"known {client}" if known else client

    # -- under self._lock ------------------------------------------------------------------
    def _charge(self, key: str, known: bool, now: float) -> float:
        self._device[known].charge(now)
        count, _ = self._clients.get(key, (0, 0.0))
        count += 1
        wait = 0.0
        if count >= self.free:
            wait = min(self.base_s * 2.0 ** min(count - self.free, 30), self.max_s)
        if len(self._clients) >= self.max_clients and key not in self._clients:
            oldest = next((k for k in self._clients if k not in self._in_flight), None)
            if oldest is not None:
                self._clients.pop(oldest)
        self._clients[key] = (count, now + wait)
        return wait

    # -- public ------------------------------------------------------------------------
    def wait_s(self, client: str, now: float | None = None, *, known: bool = False) -> float:
        """Seconds this client must wait before its next attempt (0 = may try now)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            device = self._device[known].wait(now)
            _, until = self._clients.get(self.key(client, known), (0, 0.0))
            return max(device, until - now, 0.0)

    def begin(self, client: str, now: float | None = None, *, known: bool = False) -> Attempt:
        """Let one attempt through, counted as wrong already, or raise `Braked`."""
        now = time.monotonic() if now is None else now
        key = self.key(client, known)
        with self._lock:
            if key in self._in_flight:
                raise Braked("busy", 1.0)
            before = self._clients.get(key, (0, 0.0))
            wait = max(self._device[known].wait(now), before[1] - now)
            if wait > 0:
                raise Braked("braked", wait)
            attempt = Attempt(key, known, self._charge(key, known, now), before)
            self._in_flight[key] = attempt
            return attempt

    def queue(self, attempt: Attempt) -> bool:
        """Its PIN has arrived: a place in the verification queue, if there is one (else
        `cancel` it: a request turned away is not a guess)."""
        with self._lock:
            limit = self.max_queued_known if attempt.known else self.max_queued
            if sum(1 for a in self._queued if a.known == attempt.known) >= limit:
                return False
            self._queued.add(attempt)
            return True

    def admitted(self, attempt: Attempt) -> bool:
        """Whether the attempt still holds its slot (checked again just before the PIN is
        verified, inside the verification lock)."""
        with self._lock:
            return self._in_flight.get(attempt.key) is attempt

    def finish(self, attempt: Attempt, right: bool) -> float:
        """The PIN was verified: a right one clears the key's count and takes the attempt's
        charge back; a wrong one stays counted. Returns the key's wait (0 when right)."""
        with self._lock:
            if self._in_flight.get(attempt.key) is attempt:
                del self._in_flight[attempt.key]
            self._queued.discard(attempt)
            if not right:
                return attempt.wait_if_wrong
            self._clients.pop(attempt.key, None)
            self._device[attempt.known].uncharge()
            return 0.0

    def cancel(self, attempt: Attempt) -> None:
        """Turned away before its PIN was verified (the verification queue was full): as
        if the attempt never began."""
        with self._lock:
            if self._in_flight.get(attempt.key) is attempt:
                del self._in_flight[attempt.key]
            self._queued.discard(attempt)
            if attempt.before[0]:
                self._clients[attempt.key] = attempt.before
            else:
                self._clients.pop(attempt.key, None)
            self._device[attempt.known].uncharge()

    def wrong(self, client: str, now: float | None = None, *, known: bool = False) -> float:
        """Count a wrong PIN outside `begin` (tests); returns the wait now imposed."""
        now = time.monotonic() if now is None else now
        with self._lock:
            return self._charge(self.key(client, known), known, now)

    def right(self, client: str, *, known: bool = False) -> None:
        with self._lock:
            self._clients.pop(self.key(client, known), None)


@dataclass
class Sessions:
    """Random bearer tokens with an idle and an absolute expiry, at most `max_sessions`
    (the oldest goes first)."""

    idle_s: float = 4 * 3600.0
    max_age_s: float = 12 * 3600.0
    max_sessions: int = 32
    _tokens: dict[str, tuple[float, float]] = field(default_factory=dict)  # (created, used)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        token = secrets.token_urlsafe(32)
        with self._lock:
            while len(self._tokens) >= self.max_sessions:
                self._tokens.pop(next(iter(self._tokens)))
            self._tokens[token] = (now, now)
        return token

    def valid(self, token: str | None, now: float | None = None, touch: bool = True) -> bool:
        if not token or len(token) > 128:
            return False
        now = time.monotonic() if now is None else now
        with self._lock:
            entry = self._tokens.get(token)
            if entry is None:
                return False
            created, used = entry
            if now - used > self.idle_s or now - created > self.max_age_s:
                del self._tokens[token]
                return False
            if touch:
                self._tokens[token] = (created, now)
            return True

    def close(self, token: str | None) -> None:
        with self._lock:
            self._tokens.pop(token or "", None)

    def __len__(self) -> int:
        return len(self._tokens)
