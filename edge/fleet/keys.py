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
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from wire.fleet import BundleError, load_public_key, load_trusted_keys, read_key_file

# Reading public keys is shared with the district (wire/fleet.py); kept importable here.
__all__ = ["load_private_key", "load_public_key", "load_trusted_keys", "new_keypair"]


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


def load_private_key(path: Path) -> Ed25519PrivateKey:
    data, st = read_key_file(Path(path))
    if data.lstrip().startswith(b"-----BEGIN PUBLIC KEY-----"):  # NAME.pub for NAME.key:
        # said before the mode, or the line would have the district chmod a public key
        raise BundleError(f"{path}: a public key; sign with the private one "
                          "(NAME.key from `sonoedge keys new`, not NAME.pub)")
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
