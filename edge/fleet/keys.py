"""Ed25519 keys: made by `sonoedge keys new`, the private one kept by the district, the public
one provisioned on every device (`board/README.md`).

The `cryptography` package does the cryptography; this module only reads and writes PEM
files and refuses files whose permissions would let someone else swap them: a private key
another user can read, or a trusted key (or its folder) another user could replace.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from wire.fleet import BundleError

MAX_KEY_FILE = 4096
MAX_TRUSTED_KEYS = 16


def new_keypair(out_dir: Path, name: str) -> tuple[Path, Path]:
    """Write `<name>.key` (PKCS#8 PEM, mode 0600, never overwritten) and `<name>.pub`."""
    if not name or "/" in name or name.startswith("."):
        raise BundleError(f"bad key name {name!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    key_path, pub_path = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    for path in (key_path, pub_path):
        if path.exists():
            raise BundleError(f"{path}: exists; a key is never overwritten")
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private)
    pub_path.write_bytes(public)
    os.chmod(pub_path, 0o644)
    return key_path, pub_path


def _read_small(path: Path) -> tuple[bytes, os.stat_result]:
    try:
        with open(path, "rb") as handle:
            st = os.fstat(handle.fileno())
            data = handle.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise BundleError(f"{path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode) or len(data) > MAX_KEY_FILE:
        raise BundleError(f"{path}: not a key file")
    return data, st


def load_private_key(path: Path) -> Ed25519PrivateKey:
    data, st = _read_small(Path(path))
    if st.st_mode & 0o077:
        raise BundleError(f"{path}: private key readable by other users (mode "
                          f"{stat.S_IMODE(st.st_mode):04o}); chmod 600 it")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise BundleError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"{path}: not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    data, _ = _read_small(Path(path))
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise BundleError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"{path}: not an Ed25519 public key")
    return key


def _writable_by_others(st: os.stat_result) -> bool:
    return bool(st.st_mode & 0o022) and not (stat.S_ISDIR(st.st_mode)
                                             and st.st_mode & stat.S_ISVTX)


def load_trusted_keys(folder: Path | str) -> list[tuple[str, Ed25519PublicKey]]:
    """Every `*.pub` in the folder the device was provisioned with, as [(name, key)].

    Refuses a folder or key another user could write (they could add their own key)."""
    folder = Path(folder)
    try:
        st = folder.stat()
    except OSError as exc:
        raise BundleError(f"trusted keys {folder}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise BundleError(f"trusted keys {folder}: not a folder")
    if _writable_by_others(st):
        raise BundleError(f"trusted keys {folder}: other users can write it (mode "
                          f"{stat.S_IMODE(st.st_mode):04o}); chmod 755 it")
    keys = []
    for path in sorted(folder.glob("*.pub"))[:MAX_TRUSTED_KEYS]:
        mode = path.stat().st_mode
        if mode & 0o022:
            raise BundleError(f"trusted key {path}: other users can write it (mode "
                              f"{stat.S_IMODE(mode):04o}); chmod 644 it")
        keys.append((path.stem, load_public_key(path)))
    return keys
