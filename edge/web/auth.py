"""The device PIN, web sessions and the brake on wrong PINs.

The PIN is stored only as a salted scrypt hash (hashlib.scrypt, RFC 7914) in the state
directory, written whole or not at all, readable by its owner only. A correct PIN opens a
session: a random token in an HttpOnly, SameSite=Strict cookie, which expires after a
while without use and after a hard maximum. Wrong PINs are braked per client address and
for the device as a whole, with a wait that doubles after each further wrong PIN, so a
four-digit PIN cannot be walked through from the clinic's network.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

PIN_FILE = "web-pin.json"
PIN_MIN, PIN_MAX = 4, 64
# scrypt cost: N=2^15, r=8 takes ~32 MiB and ~0.1 s on a Pi 5 core per attempt (measured
# ~0.06 s on the build box), slow enough that a stolen file is costly to brute-force,
# quick enough that the midwife does not wait.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 15, 8, 1
SCRYPT_MAXMEM = 64 * 1024 * 1024


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


def hash_pin(pin: str) -> dict:
    salt = secrets.token_bytes(16)
    digest = _scrypt(check_pin_text(pin), salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return {"scheme": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P,
            "salt": base64.b64encode(salt).decode(), "hash": base64.b64encode(digest).decode()}


def write_pin(state_dir: Path, pin: str) -> Path:
    """Hash the PIN and store it in the state dir, atomically, mode 0600."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    record = hash_pin(pin)
    path = state_dir / PIN_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(record, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
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
    """The stored hash; `PinError` (one line naming the file) when missing or damaged."""
    path = Path(state_dir) / PIN_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PinError(f"{path}: no device PIN is set; run `sonoedge pin set --state-dir "
                       f"{Path(state_dir)}` and type the PIN") from None
    except (OSError, ValueError) as exc:
        raise PinError(f"{path}: unreadable PIN file ({exc}); set the PIN again") from None
    try:
        if raw.get("scheme") != "scrypt":
            raise ValueError("unknown scheme")
        n, r, p = int(raw["n"]), int(raw["r"]), int(raw["p"])
        if not (1 << 10 <= n <= 1 << 20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 4):
            raise ValueError("cost parameters out of range")
        found = PinHash(base64.b64decode(raw["salt"], validate=True),
                        base64.b64decode(raw["hash"], validate=True), n, r, p)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise PinError(f"{path}: damaged PIN file ({exc}); set the PIN again") from None
    if len(found.salt) < 8 or len(found.digest) != 32:
        raise PinError(f"{path}: damaged PIN file (salt or hash length); set the PIN again")
    return found


@dataclass
class Brake:
    """Wrong-PIN brake. After `free` wrong PINs from one address, each further wrong PIN
    makes it wait `base_s`, doubling up to `max_s`; a correct PIN clears its count. The
    device as a whole accepts at most `global_max` wrong PINs per `global_window_s`, so
    changing address does not help. A browser known to have typed the right PIN before
    (`known`, its cookie) is not held by that device-wide limit, only by its address's: else
    anyone trying PINs from a few addresses would keep the midwife out for as long as they
    kept at it. Counts are in memory: a restart forgets them, which a restart's own time
    (models load) already brakes."""

    free: int = 5
    base_s: float = 30.0
    max_s: float = 900.0
    global_max: int = 30
    global_window_s: float = 600.0
    max_clients: int = 4096
    _clients: dict[str, tuple[int, float]] = field(default_factory=dict)  # ip -> (wrong, until)
    _recent: list[float] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_s(self, client: str, now: float | None = None, *, known: bool = False) -> float:
        """Seconds this client must wait before its next attempt (0 = may try now)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._recent = [t for t in self._recent if now - t < self.global_window_s]
            wait = 0.0
            if len(self._recent) >= self.global_max and not known:
                wait = self._recent[0] + self.global_window_s - now
            _, until = self._clients.get(client, (0, 0.0))
            return max(wait, until - now, 0.0)

    def wrong(self, client: str, now: float | None = None) -> float:
        """Count a wrong PIN; returns the wait now imposed on the client."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._recent.append(now)
            count, _ = self._clients.get(client, (0, 0.0))
            count += 1
            wait = 0.0
            if count >= self.free:
                wait = min(self.base_s * 2 ** (count - self.free), self.max_s)
            if len(self._clients) >= self.max_clients and client not in self._clients:
                self._clients.pop(next(iter(self._clients)))
            self._clients[client] = (count, now + wait)
            return wait

    def right(self, client: str) -> None:
        with self._lock:
            self._clients.pop(client, None)


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
