"""The page's TLS (`[web] tls`): the certificate it serves and the server's SSL context.

- `"self-signed"` (the default): an ECDSA P-256 certificate the box makes on its first
  start (`cryptography`) and keeps in the state dir (`web-tls/cert.pem`, `key.pem` mode
  0600, each written whole or not at all), so the midwife's tablet accepts it once and is
  not asked again: every start serves the same certificate, with the same fingerprint. A
  new one is made only when it is missing, unreadable or damaged, its key does not match,
  it ends within `RENEW_BEFORE`, or it no longer names one of the box's names. When the
  state dir cannot take it (full, read-only) the page is served with a certificate made
  for this run only.
- `"files"`: a certificate provisioned for the box (`tls_cert`, then any intermediates,
  and `tls_key`, PEM), e.g. from a clinic CA the tablets trust. A file that is missing,
  unreadable, too large, not PEM, an expired certificate or a key that is not its own is
  one line at start (`WebError`).
- `"off"`: plain HTTP, for loopback or behind a proxy that serves TLS.

The files are read here, bounded, and checked with `cryptography`; the bytes checked are
the bytes handed to `ssl` (from memory: a memfd on Linux).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import socket
import ssl
import stat
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge.web.settings import WebError, WebSettings, check_host_name
from wire.schema import PayloadError, read_regular_file
from wire.shown import shown_path

log = logging.getLogger(__name__)

TLS_DIR = "web-tls"  # in the state dir, beside web-pin.json
CERT_FILE, KEY_FILE = "cert.pem", "key.pem"
MAX_PEM_BYTES = 64 * 1024  # a certificate with its chain is a few kB; a key under 4 kB
# Apple's systems refuse a TLS server certificate valid for more than 825 days, whoever
# issued it: a self-signed one, or one of a root the user installed, included
# (support.apple.com/HT210176; mkcert stays under it for the same reason). Ten years would
# never load on the clinic's iPad, so the box's certificate lasts 820 days and is made
# again a month before its end (the tablet accepts the new one once).
VALID_DAYS = 820
BACKDATE = dt.timedelta(days=2)  # valid from two days back: a tablet whose clock is behind
RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class ServedCert:
    """A certificate the page serves, with its key (PEM, as read or made)."""

    cert_pem: bytes
    key_pem: bytes
    fingerprint: str  # SHA-256 of the certificate, "AB:CD:...", as browsers show it
    not_after: dt.datetime
    names: frozenset[str]  # the DNS names and IP addresses it is valid for, lower case
    where: str  # the file it was read from or written to; "memory": this run only


class _Bad(Exception):
    """A file of the pair cannot be used: `path` and the reason, for one line."""

    def __init__(self, path: Path, reason: str, role: str = "tls_cert"):
        super().__init__(f"{shown_path(path)}: {reason}")
        # which key of [web] names the file: the two may name one file (a combined PEM)
        self.path, self.reason, self.role = path, reason, role


class _Missing(_Bad):
    pass


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def fingerprint(cert: x509.Certificate) -> str:
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def cert_names(cert: x509.Certificate) -> frozenset[str]:
    """The DNS names and IP addresses of a certificate's subjectAltName."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset()
    names = {n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)}
    names |= {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return frozenset(names)


def box_names(web: WebSettings, host: str) -> tuple[list[str], list]:
    """The names a self-signed certificate must hold: localhost and its addresses, the
    box's hostname (also `.local`), `[web] allowed_hosts`, and the listen address when it
    is one address (0.0.0.0 and :: are every address, so none)."""
    dns = ["localhost"]
    hostname = socket.gethostname()
    first = hostname.split(".", 1)[0]
    candidates = [hostname, first, f"{first}.local" if first else "", *web.allowed_hosts]
    ips = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    try:
        listen_ip = ipaddress.ip_address(host)
    except ValueError:
        candidates.append(host)  # a name to listen on: the box answers to it
    else:
        if not listen_ip.is_unspecified:
            ips.append(listen_ip)
    for name in candidates:
        try:
            name = check_host_name(name)
        except ValueError:
            continue  # no certificate can name it (an underscore, a non-ASCII hostname)
        if name not in dns:
            dns.append(name)
    return dns, list(dict.fromkeys(ips))


# -- reading ------------------------------------------------------------------------------
def _read(path: Path, role: str = "tls_cert") -> tuple[bytes, os.stat_result]:
    try:
        return read_regular_file(path, MAX_PEM_BYTES)
    except (FileNotFoundError, NotADirectoryError):
        raise _Missing(path, "no such file", role) from None
    except PayloadError as exc:
        raise _Bad(path, f"not a PEM file ({exc})", role) from None
    except OSError as exc:
        raise _Bad(path, f"cannot read it ({exc.strerror or exc})", role) from None


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def read_pair(cert_path: Path, key_path: Path) -> tuple[ServedCert, x509.Certificate,
                                                         os.stat_result]:
    """The pair checked: PEM, the key unencrypted and the certificate's own. `_Bad` (or
    `_Missing`) naming the file otherwise. Dates are the caller's to judge."""
    cert_pem, _ = _read(cert_path)
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise _Bad(cert_path, "not a PEM certificate") from None
    leaf = chain[0]
    key_pem, key_stat = _read(key_path, "tls_key")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise _Bad(key_path, "an encrypted private key: the box must read it unattended; "
                             "give it unencrypted, readable by the service alone (0600)"
                   "tls_key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise _Bad(key_path, "not a PEM private key", "tls_key") from None
    try:
        matches = _spki(key.public_key()) == _spki(leaf.public_key())
        served = ServedCert(cert_pem, key_pem, fingerprint(leaf), leaf.not_valid_after_utc,
                            cert_names(leaf), str(cert_path))
    except (ValueError, TypeError, UnsupportedAlgorithm):  # cryptography parses lazily
        raise _Bad(cert_path, "a certificate that cannot be read (its key or its "
                              "extensions)") from None
    if not matches:
        raise _Bad(key_path, f"not the key of the certificate {shown_path(cert_path)}",
                   "tls_key")
    return served, leaf, key_stat


# -- self-signed --------------------------------------------------------------------------
def make_self_signed(dns: list[str], ips: list, now: dt.datetime | None = None) -> ServedCert:
    """A new ECDSA P-256 key and a certificate for these names, signed with SHA-256, valid
    from `BACKDATE` before now for `VALID_DAYS` in all."""
    now = now or now_utc()
    key = ec.generate_private_key(ec.SECP256R1())
    box = next((n for n in dns if n != "localhost"), "")
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, f"sonoedge {box}".strip()[:64]),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sonoedge, self-signed on the box")])
    start = now - BACKDATE
    public = key.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public)
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject).public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(n) for n in dns] + [x509.IPAddress(ip) for ip in ips]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                           critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return ServedCert(cert.public_bytes(serialization.Encoding.PEM), key_pem,
                      fingerprint(cert), cert.not_valid_after_utc, cert_names(cert), "memory")


def _write_temp(folder: Path, data: bytes, mode: int) -> Path:
    fd, name = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")  # 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def store(folder: Path, made: ServedCert) -> None:
    """Write the pair: each to a temporary file, synced, then renamed over the old one, and
    the folder synced. A power cut leaves the old file or the new one, never half of one
    (between the two renames, a new key beside the old certificate: no match, so a new
    pair is made at the next start)."""
    folder.mkdir(mode=0o700, exist_ok=True)
    for stale in folder.glob(".*.tmp"):  # left by a power cut during a write
        stale.unlink(missing_ok=True)
    temps = []
    try:
        temps.append(_write_temp(folder, made.key_pem, 0o600))
        temps.append(_write_temp(folder, made.cert_pem, 0o644))
        os.replace(temps[0], folder / KEY_FILE)
        os.replace(temps[1], folder / CERT_FILE)
        _fsync_dir(folder)
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)


def _why_new(found: ServedCert, dns: list[str], ips: list, now: dt.datetime) -> str | None:
    """Why a stored self-signed certificate cannot be served again, or None. A certificate
    not valid yet is served: the box's clock may be behind (no RTC, no network), and a new
    one would only make the tablet ask again."""
    if found.not_after <= now:
        return f"it expired on {found.not_after:%Y-%m-%d}"
    if found.not_after - now < RENEW_BEFORE:
        return f"it ends on {found.not_after:%Y-%m-%d}"
    missing = [n for n in [*dns, *map(str, ips)] if n not in found.names]
    if missing:
        return "it does not name " + ", ".join(missing[:4]) + (" ..." if len(missing) > 4
                                                               else "")
    return None


def keep_self_signed(state_dir: Path, dns: list[str], ips: list,
                     now: dt.datetime | None = None) -> ServedCert:
    """The box's own certificate: the stored one while it serves, else a new one, stored;
    one made for this run only (one warning) when the state dir cannot take it."""
    now = now or now_utc()
    folder = Path(state_dir) / TLS_DIR
    cert_path, key_path = folder / CERT_FILE, folder / KEY_FILE
    try:
        found = read_pair(cert_path, key_path)[0]
    except _Missing as missing:  # both missing: the first start
        if missing.path == key_path or key_path.exists():
            log.warning("web: %s: missing; making a new TLS certificate (browsers will ask "
                        "to accept it again)", shown_path(missing.path))
    except _Bad as bad:
        log.warning("web: %s; making a new TLS certificate (browsers will ask to accept it "
                    "again)", bad)
    else:
        why = _why_new(found, dns, ips, now)
        if why is None:
            return found
        log.info("web: the TLS certificate %s cannot be served again: %s",
                 shown_path(cert_path), why)
    made = make_self_signed(dns, ips, now)
    try:
        store(folder, made)
    except OSError as exc:
        log.warning("web: cannot keep the TLS certificate in %s (%s): serving one made for "
                    "this run only, so browsers will ask to accept it again after a restart",
                    shown_path(folder), exc.strerror or exc)
        return made
    log.info("web: made a TLS certificate for this box: %s, SHA-256 %s, valid until %s",
             shown_path(cert_path), made.fingerprint, f"{made.not_after:%Y-%m-%d}")
    return replace(made, where=str(cert_path))


# -- provisioned --------------------------------------------------------------------------
def provisioned(web: WebSettings, now: dt.datetime | None = None) -> ServedCert:
    """`tls = "files"`: the provisioned pair, checked; `WebError` naming the file."""
    now = now or now_utc()
    cert_path, key_path = Path(web.tls_cert), Path(web.tls_key)
    try:
        served, leaf, key_stat = read_pair(cert_path, key_path)
    except _Bad as bad:
        raise WebError(f"web: [web] {bad.role} {bad}") from None
    if served.not_after <= now:
        raise WebError(f"web: [web] tls_cert {shown_path(cert_path)}: expired on "
                       f"{served.not_after:%Y-%m-%d} (the box's clock says "
                       f"{now:%Y-%m-%d}); provision a new one")
    if served.not_after - now < RENEW_BEFORE:
        log.warning("web: [web] tls_cert %s ends on %s: provision a new one",
                    shown_path(cert_path), f"{served.not_after:%Y-%m-%d}")
    if leaf.not_valid_before_utc > now:
        log.warning("web: [web] tls_cert %s is valid only from %s, and the box's clock says "
                    "%s: served anyway (is the clock behind?)", shown_path(cert_path),
                    f"{leaf.not_valid_before_utc:%Y-%m-%d}", f"{now:%Y-%m-%d}")
    if key_stat.st_mode & stat.S_IROTH:
        log.warning("web: [web] tls_key %s: every user of the box can read it; chmod 600 it",
                    shown_path(key_path))
    return served


# -- the SSL context ----------------------------------------------------------------------
def _memfd(data: bytes) -> int:
    fd = os.memfd_create("sonoedge-web-tls", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        raise
    return fd


def load_chain(context: ssl.SSLContext, served: ServedCert) -> None:
    """`context.load_cert_chain` on the bytes that were checked. It reads files: on Linux
    they are memfds (a run-only key never touches the disk), elsewhere a private
    temporary folder removed at once."""
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fds: list[int] = []
        try:
            fds.append(_memfd(served.cert_pem))
            fds.append(_memfd(served.key_pem))
            context.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="sonoedge-tls-") as tmp:  # mode 0700
        cert = _write_temp(Path(tmp), served.cert_pem, 0o600)
        key = _write_temp(Path(tmp), served.key_pem, 0o600)
        context.load_cert_chain(cert, key)


def server_context(served: ServedCert) -> ssl.SSLContext:
    """TLS 1.2 at least, Python's server defaults otherwise; `WebError` if `ssl` refuses
    the pair (a key type OpenSSL cannot serve)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        load_chain(context, served)
    except (ssl.SSLError, OSError) as exc:
        raise WebError(f"web: {shown_path(served.where)}: cannot serve this certificate "
                       f"({getattr(exc, 'reason', None) or exc})") from None
    return context


class PageTls:
    """The page's certificate and SSL context for one run (`[web] tls` not "off")."""

    def __init__(self, web: WebSettings, state_dir: Path, host: str):
        self.web = web
        self.state_dir = Path(state_dir)
        self.dns, self.ips = box_names(web, host)
        self.served: ServedCert | None = None
        self.context: ssl.SSLContext | None = None

    def load(self, now: dt.datetime | None = None) -> ssl.SSLContext:
        """The certificate (read, or made) and the context; `WebError` for a provisioned
        pair that cannot be served."""
        if self.web.tls == "files":
            self.served = provisioned(self.web, now)
        else:
            self.served = keep_self_signed(self.state_dir, self.dns, self.ips, now)
        self.context = server_context(self.served)
        return self.context

    def renew_if_due(self, now: dt.datetime | None = None) -> bool:
        """On a box that runs for months: a self-signed certificate near its end is made
        again and served to new connections at once (the same context); a provisioned one
        is a warning (the fleet provisions its successor). Whether it was renewed."""
        now = now or now_utc()
        served = self.served
        if served is None or self.context is None or served.not_after - now >= RENEW_BEFORE:
            return False
        if self.web.tls == "files":
            log.warning("web: [web] tls_cert %s ends on %s: provision a new one",
                        shown_path(served.where), f"{served.not_after:%Y-%m-%d}")
            return False
        renewed = keep_self_signed(self.state_dir, self.dns, self.ips, now)
        load_chain(self.context, renewed)
        self.served = renewed
        log.warning("web: the page's TLS certificate was renewed: SHA-256 %s (browsers will ask "
                    "to accept it again)", renewed.fingerprint)
        return True


def kept_fingerprint(web: WebSettings, state_dir: Path) -> tuple[str, str] | None:
    """(SHA-256 fingerprint, file) of the certificate the page serves, when there is one
    to read (`sonoedge pin set` shows it); None otherwise."""
    if web.tls == "off":
        return None
    path = Path(web.tls_cert) if web.tls == "files" else Path(state_dir) / TLS_DIR / CERT_FILE
    try:
        leaf = x509.load_pem_x509_certificates(_read(path)[0])[0]
    except (_Bad, ValueError):
        return None
    return fingerprint(leaf), shown_path(path)
