"""Real servers for the tests: Mosquitto and PostgreSQL on free 127.0.0.1 ports.

Each server is started from a generated config in a temporary directory, waited for with
a bounded timeout, and stopped by ``stop()`` (the fixtures call it at teardown; a
``weakref.finalize`` stops it at interpreter exit too). Nothing listens beyond loopback.
PostgreSQL refuses to run as root, so as root it runs as the system user ``sonoedge-test``
(created when missing) through ``runuser``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

from board.provision import provision

PG_USER = "sonoedge-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


def mosquitto_bin() -> str:
    for path in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if path and Path(path).exists():
            return path
    raise RuntimeError("mosquitto not installed: run scripts/install-system-deps.sh")


def make_pki(folder: Path, name: str = "ca", clients: tuple[str, ...] = ()) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and client certificates (openssl)."""
    folder.mkdir(parents=True, exist_ok=True)

    def ossl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True,
                       timeout=60)

    ca_key, ca_crt = folder / f"{name}.key", folder / f"{name}.crt"
    ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
         f"/CN=sonoedge test {name}", "-keyout", str(ca_key), "-out", str(ca_crt))
    out = {"ca": ca_crt}
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for who in ("server", *clients):
        key, csr, crt = (folder / f"{name}-{who}.{x}" for x in ("key", "csr", "crt"))
        ossl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}", "-keyout",
             str(key), "-out", str(csr))
        extra = ["-extfile", str(ext)] if who == "server" else []
        ossl("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
             "-CAcreateserial", "-days", "2", "-out", str(crt), *extra)
        out[f"{who}.crt"], out[f"{who}.key"] = crt, key
    return out


class Mosquitto:
    """A private broker: password file + ACL from board.provision, persistence on disk.

    With ``pki`` (from ``make_pki``) the listener speaks TLS only and requires a client
    certificate signed by the same CA. ``max_queued``: the messages kept for a client that
    is away (board/mosquitto.conf.example's 100,000); what overflows it the broker drops.
    """

    def __init__(self, workdir: Path, port: int | None = None, persistence: bool = True,
                 pki: dict[str, Path] | None = None, max_queued: int = 100000):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.passwd = self.dir / "passwd"
        self.acl = self.dir / "acl"
        self.conf = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"
        self.persistence = persistence
        self.pki = pki
        self.max_queued = max_queued
        self.proc: subprocess.Popen | None = None
        self.passwords: dict[str, str] = {}
        self._finalizer = weakref.finalize(self, _stop_proc, [None])

    def add_user(self, user: str, role: str = "device", password: str | None = None,
                 group: str | None = None) -> str:
        self.passwords[user] = provision(self.passwd, self.acl, user, role, password, group)
        if self.running:
            self.proc.send_signal(signal.SIGHUP)  # reload password file and ACL
            time.sleep(0.2)
        return self.passwords[user]

    def url(self, user: str, password: str | None = None) -> str:
        pw = self.passwords[user] if password is None else password
        scheme = "mqtts" if self.pki else "mqtt"
        return f"{scheme}://{user}:{pw}@127.0.0.1:{self.port}"

    def write_config(self) -> None:
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous false",
            "use_username_as_clientid true",  # as board/mosquitto.conf.example
            f"password_file {self.passwd}",
            f"acl_file {self.acl}",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.dir}/",
            "persistent_client_expiration 1d",
            f"max_queued_messages {self.max_queued}",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "user root" if os.geteuid() == 0 else "",
        ]
        if self.pki:
            lines[1:1] = [f"cafile {self.pki['ca']}", f"certfile {self.pki['server.crt']}",
                          f"keyfile {self.pki['server.key']}", "require_certificate true"]
        self.conf.write_text("\n".join(x for x in lines if x) + "\n")
        if not self.passwd.exists():
            self.passwd.touch(mode=0o600)
        if not self.acl.exists():
            self.acl.write_text("")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout_s: float = 10.0) -> Mosquitto:
        self.write_config()
        self.proc = subprocess.Popen(
            [mosquitto_bin(), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "stderr.log", "ab"),
        )
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _stop_proc, [self.proc])
        wait_port(self.port, timeout_s, self.proc)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
        """SIGTERM lets mosquitto save its persistence file; SIGKILL does not."""
        if not self.running:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def _stop_proc(holder) -> None:
    proc = holder[0] if isinstance(holder, list) else holder
    if proc is not None and proc.poll() is None:
        proc.kill()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


# -- PostgreSQL -----------------------------------------------------------------------------
def pg_bindir() -> Path:
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[4]))
    for d in reversed(dirs):
        if Path(d, "initdb").exists() and Path(d, "pg_ctl").exists():
            return Path(d)
    for cand in (shutil.which("initdb"), "/usr/local/bin/initdb"):
        if cand and Path(cand).exists():
            return Path(cand).parent
    raise RuntimeError("PostgreSQL not installed: run scripts/install-system-deps.sh")


def _ensure_pg_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
             PG_USER], check=True, timeout=30, capture_output=True,
        )
        return pwd.getpwnam(PG_USER)


class Postgres:
    """A throwaway cluster: trust auth on 127.0.0.1 only, socket in its own directory."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="sonoedge-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.bindir = pg_bindir()
        self.as_root = os.geteuid() == 0
        self.user = PG_USER if self.as_root else pwd.getpwuid(os.geteuid()).pw_name
        self._finalizer = weakref.finalize(self, _pg_cleanup, self.bindir, self.data,
                                           self.root, self.as_root)

    def _run(self, args: list[str], timeout_s: float) -> subprocess.CompletedProcess:
        cmd = ["runuser", "-u", PG_USER, "--", *args] if self.as_root else args
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                             cwd=str(self.root))
        if out.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {out.stderr.strip() or out.stdout.strip()}")
        return out

    def start(self, timeout_s: float = 60.0) -> Postgres:
        if self.as_root:
            pw = _ensure_pg_user()
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            os.chmod(self.root, 0o700)
        self._run([str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust",
                   "-U", self.user, "--no-sync", "-E", "UTF8"], timeout_s)
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c shared_buffers=32MB -c max_connections=30")
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
                   str(self.root / "pg.log"), "-o", opts, "-w", "-t", str(int(timeout_s)),
                   "start"], timeout_s + 5)
        _stop_when_gone(os.getpid(), self.root, _pg_stop_command(self.bindir, self.data,
                                                                 self.as_root))
        wait_port(self.port, 10)
        return self

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        self._finalizer()


# `pg_ctl start` leaves the server to init, not to the test: a test run SIGKILLed or timed
# out (no finalizer runs) left every cluster it had started running. A watcher, in a
# session of its own, stops it once the run is gone and removes its folder; it leaves as
# soon as the folder is gone (the run stopped the cluster itself).
_WATCH = """import os, shutil, subprocess, sys, time
pid, root, cmd = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
while os.path.isdir(root):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        subprocess.run(cmd, capture_output=True, timeout=60, cwd="/")
        shutil.rmtree(root, ignore_errors=True)
        break
    time.sleep(1.0)
"""


def _stop_when_gone(pid: int, root: Path, cmd: list[str]) -> None:
    subprocess.Popen([sys.executable, "-c", _WATCH, str(pid), str(root), *cmd],
                     start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")


def _pg_stop_command(bindir: Path, data: Path, as_root: bool) -> list[str]:
    cmd = [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "-t", "20", "stop"]
    return ["runuser", "-u", PG_USER, "--", *cmd] if as_root else cmd


def _pg_cleanup(bindir: Path, data: Path, root: Path, as_root: bool) -> None:
    if (data / "postmaster.pid").exists():
        subprocess.run(_pg_stop_command(bindir, data, as_root), capture_output=True,
                       timeout=30, cwd="/")
    shutil.rmtree(root, ignore_errors=True)
