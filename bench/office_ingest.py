"""``python -m bench.office_ingest``: how many detection messages per second the office stores.

    python -m bench.office_ingest                       # PostgreSQL and SQLite, 1 and 2 workers
    python -m bench.office_ingest --messages 20000 --backends postgresql --workers 2
    python -m bench.office_ingest --mode concurrent     # publish while the workers run

What is measured: real ``crackseg-office ingest`` processes reading a private Mosquitto and
writing a private PostgreSQL+PostGIS (``tests/postgres.py``, durable settings: fsync and
synchronous commit on, as in production) or a SQLite file (WAL, synchronous=FULL). The
messages are synthetic v2 detections of a fleet (``office.synthetic.fleet_messages``: about
1.2 KB, one crack per message on average, every frame reported), all with distinct msg_ids.

Throughput = messages / (time the last message was stored - time the first was stored),
seen by polling the database every 20 ms from this process. ``--mode preload`` (default):
the workers' sessions exist, the workers are stopped, all messages are published and queued
at the broker, then the workers start, so the figure is ingest alone, not the publisher.
``--mode concurrent``: workers run while one publisher sends at QoS 1 (window 500).

The workers run with ``--refresh-interval 0`` (no inventory refresh during the measurement)
unless ``--refresh-interval`` says otherwise; the refresh step (merging everything stored into
the inventory and segments) is then timed on its own and reported as observations per second.

Output: a table, then as the LAST line one JSON object. Exit 2 on a user error (one line).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ORIGIN = (4.3517, 52.0116)


class BenchUserError(Exception):
    """A benchmark cannot run as asked (printed as one line, exit 2)."""


@dataclass
class Result:
    backend: str
    workers: int
    mode: str
    messages: int
    stored: int
    seconds: float
    msgs_per_s: float
    publish_s: float | None
    duplicates: int
    refresh_s: float
    observations: int
    observations_per_s: float


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Counter:
    """Messages stored so far, from the workers' own counters (a tiny table: polling it every 20 ms
    costs the database next to nothing, unlike counting the messages table)."""

    def __init__(self, url: str):
        from office.store.database import Database

        self.db = Database.open(url, create=False)

    def __call__(self) -> int:
        from sqlalchemy import func, select

        c = self.db.t.ingest_counters.c
        with self.db.engine.connect() as conn:
            return int(conn.execute(select(func.coalesce(func.sum(c.stored), 0))).scalar_one())

    def close(self) -> None:
        self.db.close()


class Worker:
    def __init__(self, broker_url: str, db_url: str, client_id: str, group: str, log_path: Path, refresh: float):
        self.args = [sys.executable, "-m", "office", "--log-level", "INFO", "ingest", "--mqtt-url", broker_url,
                     "--db", db_url, "--client-id", client_id, "--group", group, "--refresh-interval", str(refresh)]
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.offset = 0

    def start(self) -> None:
        self.offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)

    def wait_subscribed(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise BenchUserError(f"ingest worker exited: {self.log_path.read_text()[-500:]}")
            if "MQTT: subscribed" in self.log_path.read_text(errors="replace")[self.offset:]:
                return
            time.sleep(0.05)
        raise BenchUserError(f"ingest worker did not subscribe within {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def publish(host: str, port: int, items: list[tuple[str, bytes, Any]], window: int = 500) -> float:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{os.getpid()}",
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.max_inflight_messages_set(window)
    client.max_queued_messages_set(window)
    client.connect(host, port)
    client.loop_start()
    t0 = time.monotonic()
    for topic, payload, _ in items:
        while client.publish(topic, payload, qos=1).rc == paho.MQTT_ERR_QUEUE_SIZE:
            time.sleep(0.002)
    while client._out_messages:  # noqa: SLF001 - paho has no public "all acknowledged"
        time.sleep(0.01)
    took = time.monotonic() - t0
    client.disconnect()
    client.loop_stop()
    return took


def measure(backend: str, db_url: str, workers: int, items: list[tuple[str, bytes, Any]], broker: Any, run: int,
            mode: str, refresh: float, workdir: Path) -> Result:
    from sqlalchemy import func, select

    from office.refresh import refresh as do_refresh
    from office.store.database import Database

    Database.open(db_url).close()
    count = Counter(db_url)
    group = f"bench{run}"
    procs = [Worker(broker.url, db_url, f"{group}-w{k}", group, workdir / f"{group}-w{k}.log", refresh)
             for k in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.wait_subscribed()
    publish_s = 0.0
    if mode == "preload":
        for p in procs:
            p.stop()
        publish_s = publish(broker.host, broker.port, items)
        for p in procs:
            p.start()
    else:
        import threading

        box: dict[str, float] = {}
        threading.Thread(target=lambda: box.setdefault("s", publish(broker.host, broker.port, items)),
                         daemon=True).start()
    n = len(items)
    first_t = last_t = None
    first_n = c = 0
    deadline = time.monotonic() + 60 + n / 50
    while time.monotonic() < deadline:
        c = count()
        now = time.monotonic()
        if c and first_t is None:
            first_t, first_n = now, c
        if c >= n:
            last_t = now
            break
        time.sleep(0.02)
    count.close()
    for p in procs:
        p.stop()
    if first_t is None or last_t is None:
        raise BenchUserError(f"{backend}, {workers} worker(s): not all messages were stored in time "
                             f"(see {workdir})")
    publish_took: float | None = round(publish_s, 2) if mode == "preload" else None
    seconds = max(1e-6, last_t - first_t)
    db = Database.open(db_url, create=False)
    with db.connect() as conn:
        dups = int(conn.execute(select(func.coalesce(func.sum(db.t.ingest_counters.c.duplicates), 0))).scalar_one())
        obs = int(conn.execute(select(func.count()).select_from(db.t.crack_observations)).scalar_one())
    t0 = time.monotonic()
    do_refresh(db)
    refresh_s = time.monotonic() - t0
    db.close()
    return Result(backend, workers, mode, n, c, round(seconds, 2), round((n - first_n) / seconds, 1),
                  publish_took, dups, round(refresh_s, 2), obs, round(obs / max(refresh_s, 1e-6), 1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.office_ingest", description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=12000)
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--backends", default="postgresql,sqlite")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--mode", choices=["preload", "concurrent"], default="preload")
    ap.add_argument("--refresh-interval", type=float, default=0.0, help="workers' refresh interval (0: none)")
    ap.add_argument("--pg-url", help="an existing empty PostgreSQL server URL with PostGIS (default: a private one)")
    args = ap.parse_args(argv)
    try:
        return _run(args)
    except BenchUserError as exc:
        print(f"bench.office_ingest: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from office.synthetic import fleet_messages
    from tests.mosquitto import MosquittoBroker, mosquitto_available
    from tests.postgres import PostgresServer, missing_reason

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    worker_counts = [int(w) for w in args.workers.split(",")]
    if not set(backends) <= {"postgresql", "sqlite"}:
        raise BenchUserError("--backends takes postgresql and/or sqlite")
    if not mosquitto_available():
        raise BenchUserError("mosquitto is not installed (apt-get install mosquitto)")
    per_device = max(1, args.messages // args.devices)
    length = per_device / 20 * 8          # 20 frames/s at 8 m/s
    log(f"generating {args.messages} messages from {args.devices} vehicles ...")
    items = fleet_messages(args.devices, length, ORIGIN, seed=7)[:args.messages]
    avg_bytes = sum(len(p) for _, p, _ in items) / len(items)
    workdir = Path(tempfile.mkdtemp(prefix="bench-office-"))
    broker = MosquittoBroker(workdir / "broker", extra_config="max_queued_messages 0")
    broker.start()
    server = None
    results: list[Result] = []
    try:
        if "postgresql" in backends and not args.pg_url:
            reason = missing_reason()
            if reason:
                raise BenchUserError(reason)
            server = PostgresServer(durable=True).start()
        run = 0
        for backend in backends:
            for workers in worker_counts:
                run += 1
                if backend == "postgresql":
                    if server is not None:
                        url = server.create_database(f"bench_{run}")
                    else:
                        url = args.pg_url
                else:
                    url = f"sqlite:///{workdir / f'bench-{run}.db'}"
                log(f"{backend}, {workers} worker(s), {args.mode} ...")
                r = measure(backend, url, workers, items, broker, run, args.mode, args.refresh_interval, workdir)
                log(f"  {r.msgs_per_s:.0f} msg/s; refresh {r.observations_per_s:.0f} observations/s")
                results.append(r)
    finally:
        broker.stop(kill=True)
        if server is not None:
            server.cleanup()
    print(f"office ingest benchmark: {len(items)} detections ({avg_bytes:.0f} B avg), {args.devices} vehicles, "
          f"mode {args.mode}, workers' refresh interval {args.refresh_interval:g} s")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
    print()
    print(f"{'backend':<11} {'workers':>7} {'msg/s':>9} {'seconds':>8} {'dups':>5} {'refresh s':>10} {'obs/s':>9}")
    for r in results:
        print(f"{r.backend:<11} {r.workers:>7} {r.msgs_per_s:>9.0f} {r.seconds:>8.2f} {r.duplicates:>5} "
              f"{r.refresh_s:>10.2f} {r.observations_per_s:>9.0f}")
    shutil.rmtree(workdir, ignore_errors=True)
    best_pg = max((r.msgs_per_s for r in results if r.backend == "postgresql"), default=None)
    print(json.dumps({"messages": len(items), "avg_bytes": round(avg_bytes), "mode": args.mode,
                      "load_average": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
                      "goal_pg_msgs_per_s": 2000, "best_pg_msgs_per_s": best_pg,
                      "goal_met": None if best_pg is None else best_pg >= 2000,
                      "results": [asdict(r) for r in results]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
