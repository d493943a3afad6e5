"""A private PostgreSQL (with PostGIS) for tests and benchmarks: own data folder, free loopback port.

Like tests/mosquitto.py: a real server, never the machine's own (a CI machine has none), so
what is tested is what production runs. ``initdb`` refuses to run as root, so as root the
server runs as the ``postgres`` system user (created by the postgresql package) in a folder
it owns. Databases are created from a template that already has the PostGIS extension, which
takes a fraction of a second instead of the seconds ``CREATE EXTENSION postgis`` needs.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

TEMPLATE = "crackseg_postgis_template"


def _bin_dir() -> Path | None:
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def missing_reason() -> str | None:
    """None when a private PostgreSQL with PostGIS can run here, else what to install."""
    bindir = _bin_dir()
    if bindir is None or not (bindir / "initdb").exists() or not (bindir / "pg_ctl").exists():
        return ("PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin; run "
                "./run.sh setup or: apt-get install postgresql postgresql-15-postgis-3")
    version = bindir.parent.name
    if not glob.glob(f"/usr/share/postgresql/{version}/extension/postgis.control"):
        return (f"PostGIS for PostgreSQL {version} is not installed; run ./run.sh setup or: "
                f"apt-get install postgresql-{version}-postgis-3")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root needs the 'postgres' system user (apt-get install postgresql creates it)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed: pip install -e '.[office]'"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One postgres; ``start()``, ``create_database(name)`` -> URL, ``stop()``.

    ``durable=False`` (tests) turns off fsync: only the ingest process is killed in the tests,
    never the database. Benchmarks keep the defaults, so their figures are the production ones.
    """

    def __init__(self, port: int | None = None, *, durable: bool = False):
        reason = missing_reason()
        if reason:
            raise RuntimeError(reason)
        self.bindir = _bin_dir()
        assert self.bindir is not None
        self.port = port or free_port()
        self.durable = durable
        self.dir = Path(tempfile.mkdtemp(prefix="crackseg-pg-"))
        self.data = self.dir / "data"
        self.log_path = self.dir / "postgres.log"
        self._user: str | None = None
        if os.geteuid() == 0:
            self._user = "postgres"
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self._started = False

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        assert self.bindir is not None
        return subprocess.run([str(self.bindir / args[0]), *args[1:]], user=self._user, capture_output=True,
                              text=True, timeout=timeout, check=False, cwd=self.dir)

    def start(self) -> PostgresServer:
        if not (self.data / "PG_VERSION").exists():
            args = ["initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale"]
            r = self._run(*args, *([] if self.durable else ["--no-sync"]))
            if r.returncode:
                raise RuntimeError(f"initdb failed: {r.stderr.strip()[-2000:]}")
        opts = [f"-p {self.port}", "-c listen_addresses=127.0.0.1", f"-c unix_socket_directories={self.dir}",
                "-c max_connections=60", "-c shared_buffers=64MB"]
        if not self.durable:
            opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        r = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-w", "-t", "60", "-o", " ".join(opts),
                      "start")
        if r.returncode:
            raise RuntimeError(f"pg_ctl start failed: {r.stderr.strip()} {self.log_text()[-2000:]}")
        self._started = True
        self._make_template()
        return self

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (FileNotFoundError, PermissionError):
            return ""

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _admin(self, sql: str, database: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname={database}",
                             autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def _make_template(self) -> None:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (TEMPLATE,)).fetchone():
                return
            conn.execute(f"CREATE DATABASE {TEMPLATE}")  # type: ignore[arg-type]
        self._admin("CREATE EXTENSION postgis", TEMPLATE)

    def create_database(self, name: str, *, postgis: bool = True) -> str:
        """A new empty database (with the PostGIS extension unless ``postgis=False``) -> its URL."""
        template = TEMPLATE if postgis else "template0"
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE {template}')
        return self.url(name)

    def stop(self, *, kill: bool = False) -> None:
        if not self._started:
            return
        pid_file = self.data / "postmaster.pid"
        if kill and pid_file.exists():
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        else:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")
        self._started = False

    def cleanup(self) -> None:
        """Stop at once (``-m immediate``: no checkpoint, the data is deleted anyway) and delete it all."""
        if self._started:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop")
            self._started = False
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
