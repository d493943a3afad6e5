"""A real Mosquitto broker for tests: own config, free loopback port, temp dir, optional TLS/auth/ACL.

A real broker (not a fake) because the behaviours under test -- PUBACK timing, last will on a
killed client, retained status, persistence across a broker restart -- are the broker's.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

MOSQUITTO = os.environ.get("MOSQUITTO_BIN", "/usr/sbin/mosquitto")
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
CA_CN = "crackseg test CA"
MISSING_MESSAGE = (f"mosquitto broker not installed ({MOSQUITTO}); run the project's setup script "
                   "(./run.sh test) or: apt-get install mosquitto")


def mosquitto_available() -> bool:
    return os.access(MOSQUITTO, os.X_OK)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    ca_key: Path


def _write_key(path: Path, key) -> None:  # noqa: ANN001 - cryptography key
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _cert(subject_cn: str, public_key, issuer_cn: str, signing_key, *, ca: bool,  # noqa: ANN001
          san: list | None = None):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                      content_commitment=False, key_encipherment=False,
                                                      data_encipherment=False, key_agreement=False,
                                                      encipher_only=False, decipher_only=False), critical=True)
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                               ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def make_ca_and_server(folder: Path, hostname: str = "localhost") -> TlsFiles:
    """A throwaway CA and a server certificate for ``localhost`` and ``127.0.0.1``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert(CA_CN, ca_key.public_key(), CA_CN, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert(hostname, key.public_key(), CA_CN, ca_key, ca=False,
                 san=[x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    files = TlsFiles(folder / "ca.crt", folder / "server.crt", folder / "server.key", folder / "ca.key")
    files.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(files.server_key, key)
    _write_key(files.ca_key, ca_key)
    return files


def make_client_cert(tls: TlsFiles, folder: Path, cn: str) -> tuple[Path, Path]:
    """A client certificate signed by the test CA: (cert, key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ca_key = serialization.load_pem_private_key(tls.ca_key.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert(cn, key.public_key(), CA_CN, ca_key, ca=False)
    cert_path, key_path = folder / f"{cn}.crt", folder / f"{cn}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key_path, key)
    return cert_path, key_path


class MosquittoBroker:
    """One mosquitto process. ``start()``, ``stop(kill=True)`` (SIGKILL), ``restart()`` on the same port."""

    def __init__(self, workdir: str | Path, *, port: int | None = None, persistence: bool = False,
                 users: dict[str, str] | None = None, tls: bool = False, require_certificate: bool = False,
                 acl: str | None = None, extra_config: str = ""):
        if not mosquitto_available():
            raise RuntimeError(MISSING_MESSAGE)
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.persistence = persistence
        self.users = dict(users or {})
        self.tls_files: TlsFiles | None = make_ca_and_server(self.dir / "tls") if tls else None
        self.require_certificate = require_certificate
        self.acl = acl
        self.extra_config = extra_config
        self.log_path = self.dir / "mosquitto.log"
        self.proc: subprocess.Popen | None = None
        self.config_path = self._write_config()

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls_files else 'mqtt'}://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def _write_config(self) -> Path:
        lines = [f"listener {self.port} 127.0.0.1",
                 f"allow_anonymous {'false' if self.users else 'true'}",
                 f"log_dest file {self.log_path}",
                 "log_type error", "log_type warning", "log_type notice", "log_type information",
                 "connection_messages true",
                 "user root" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""]
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.dir}/", "autosave_interval 1"]
        if self.users:
            pw = self.dir / "passwd"
            pw.write_text("")
            for user, password in self.users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(pw), user, password], check=True, capture_output=True)
            lines.append(f"password_file {pw}")
        if self.acl is not None:
            acl_path = self.dir / "acl"
            acl_path.write_text(self.acl)
            lines.append(f"acl_file {acl_path}")
        if self.tls_files:
            lines += [f"cafile {self.tls_files.ca_cert}", f"certfile {self.tls_files.server_cert}",
                      f"keyfile {self.tls_files.server_key}",
                      f"require_certificate {'true' if self.require_certificate else 'false'}"]
        lines.append(self.extra_config)
        path = self.dir / "mosquitto.conf"
        path.write_text("\n".join(line for line in lines if line) + "\n")
        return path

    def client_cert(self, cn: str) -> tuple[Path, Path]:
        assert self.tls_files is not None, "client certificates need a TLS broker"
        return make_client_cert(self.tls_files, self.dir / "tls", cn)

    def start(self, timeout: float = 10.0) -> MosquittoBroker:
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config_path)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {err.strip()} "
                                   f"{self.log_text()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop(kill=True)
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout}s: {self.log_text()[-2000:]}")

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (clean: persistence saved) or SIGKILL (a crashed broker)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused broker cannot handle SIGTERM
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def restart(self, kill: bool = False, down_s: float = 0.0) -> None:
        """Stop, stay down ``down_s`` seconds, start again on the same port."""
        self.stop(kill=kill)
        if down_s:
            time.sleep(down_s)
        self.start()

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing is acknowledged (a hung broker or dead link)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def wait_saved(self, after: float, timeout: float = 10.0) -> None:
        """Wait until the persistence file was written after ``after`` (epoch s).

        With ``persistence`` the broker autosaves every few seconds; a test that SIGKILLs the
        broker waits for a save so that subscriptions made before the kill survive it.
        """
        db = self.dir / "mosquitto.db"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if db.exists() and db.stat().st_mtime > after:
                return
            time.sleep(0.1)
        raise RuntimeError(f"mosquitto did not save {db} within {timeout}s (is persistence on?)")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(kill=True)
