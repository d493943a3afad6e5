"""A real Mosquitto broker for tests: the package's launcher (``edge_agent.demo.broker``: own config,
reserved loopback port, temp dir, start/kill/restart) plus what only tests need: a throwaway CA and
certificates, users, ACLs, pausing the broker, waiting for its persistence file.

A real broker (not a fake) because the behaviours under test -- PUBACK timing, last will on a
killed client, retained status, persistence across a broker restart -- are the broker's.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edge_agent.demo.broker import LocalBroker, PortReservation, free_port, mosquitto_path
from tests.helpers import wait_until

__all__ = ["MISSING_MESSAGE", "MOSQUITTO", "MosquittoBroker", "PortReservation", "TlsFiles", "free_port",
           "make_ca_and_server", "make_client_cert", "mosquitto_available"]

MOSQUITTO = mosquitto_path() or os.environ.get("MOSQUITTO_BIN", "/usr/sbin/mosquitto")
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
CA_CN = "crackseg test CA"
MISSING_MESSAGE = (f"mosquitto broker not installed ({MOSQUITTO}); run the project's setup script "
                   "(./run.sh test) or: apt-get install mosquitto")


def mosquitto_available() -> bool:
    return mosquitto_path() is not None


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


class MosquittoBroker(LocalBroker):
    """One mosquitto process. ``start()``, ``stop(kill=True)`` (SIGKILL), ``restart()`` on the same port.

    The process, config, port and log are ``LocalBroker``'s; this adds ``users`` (a password file),
    ``acl`` (an ACL file's text), ``tls`` (a generated CA and server certificate; ``client_cert()``
    makes client certificates), ``pause()``/``resume()`` and ``wait_saved()``.
    """

    def __init__(self, workdir: str | Path, *, port: int | None = None, persistence: bool = False,
                 users: dict[str, str] | None = None, tls: bool = False, require_certificate: bool = False,
                 acl: str | None = None, extra_config: str = ""):
        if not mosquitto_available():
            raise RuntimeError(MISSING_MESSAGE)
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self.users = dict(users or {})
        self.tls_files: TlsFiles | None = make_ca_and_server(workdir / "tls") if tls else None
        self.require_certificate = require_certificate
        self.acl = acl
        lines: list[str] = []
        if self.users:
            pw = workdir / "passwd"
            pw.write_text("")
            for user, password in self.users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(pw), user, password], check=True, capture_output=True)
            lines.append(f"password_file {pw}")
        if acl is not None:
            acl_path = workdir / "acl"
            acl_path.write_text(acl)
            lines.append(f"acl_file {acl_path}")
        if self.tls_files:
            lines += [f"cafile {self.tls_files.ca_cert}", f"certfile {self.tls_files.server_cert}",
                      f"keyfile {self.tls_files.server_key}",
                      f"require_certificate {'true' if require_certificate else 'false'}"]
        lines.append(extra_config)
        # mosquitto's default queue limit, as a fleet broker would have
        super().__init__(workdir, port=port, persistence=persistence, anonymous=not self.users,
                         max_queued_messages=None, extra_config=lines)

    @property
    def scheme(self) -> str:
        return "mqtts" if self.tls_files else "mqtt"

    def client_cert(self, cn: str) -> tuple[Path, Path]:
        assert self.tls_files is not None, "client certificates need a TLS broker"
        return make_client_cert(self.tls_files, self.dir / "tls", cn)

    def start(self, timeout: float = 10.0) -> MosquittoBroker:
        super().start(timeout_s=timeout)
        return self

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing is acknowledged (a hung broker or dead link)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def wait_saved(self, after: float, timeout: float = 10.0) -> None:
        """Wait until the persistence file was written after ``after`` (epoch s).

        With ``persistence`` the broker autosaves every second; a test that SIGKILLs the broker
        waits for a save so that subscriptions made before the kill survive it.
        """
        db = self.persistence_file
        wait_until(lambda: db.exists() and db.stat().st_mtime > after, timeout,
                   f"mosquitto to save {db} (is persistence on?)", interval=0.1)

    def __enter__(self) -> MosquittoBroker:
        return self.start()
