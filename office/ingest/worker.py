"""One ingest worker: receive, store in batches, acknowledge after commit, refresh the inventory now and then.

The network thread only queues messages. This (main) thread takes up to ``batch_max``
messages or waits ``batch_wait_s`` for more, stores them in one transaction and then sends
the PUBACKs in receive order. While the database is unreachable the batch is retried with
back-off and nothing is acknowledged, so the broker keeps (and after a reconnect re-sends)
everything; the queue cannot grow past ``receive_maximum`` QoS 1 messages because the broker
stops sending when that many are unacknowledged.

A background thread runs the refresh step (``office.refresh``) every ``refresh_interval_s``
when this worker stored detections since the last one; if another worker is refreshing it
skips (one of them is enough).

SIGTERM/SIGINT: the batch in hand is stored and acknowledged, then the worker disconnects;
what was received but not stored is re-sent by the broker to this session later.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from dataclasses import dataclass
from types import FrameType

from office.config import IngestConfig
from office.ingest.mqtt import MqttReceiver
from office.ingest.rows import Incoming
from office.ingest.writer import BatchOutcome, BatchWriter, TransientDatabaseError
from office.refresh import refresh
from office.store.database import Database

log = logging.getLogger(__name__)


@dataclass
class WorkerStats:
    received: int = 0
    stored: int = 0
    detections: int = 0
    duplicates: int = 0
    quarantined: int = 0
    acked: int = 0
    batches: int = 0
    db_retries: int = 0
    dropped_qos0: int = 0


class IngestWorker:
    """``run()`` until ``stop()`` (or a signal when ``install_signals``)."""

    def __init__(self, cfg: IngestConfig, db: Database | None = None):
        self.cfg = cfg
        self.db = db or Database.open(cfg.db_url)
        self.queue: queue.Queue[Incoming] = queue.Queue()
        self.receiver = MqttReceiver(cfg, self._receive)
        self.writer = BatchWriter(self.db, self.receiver.client_id, prefix=cfg.prefix,
                                  max_payload_bytes=cfg.max_payload_bytes,
                                  quarantine_keep_bytes=cfg.quarantine_keep_bytes)
        self.stats = WorkerStats()
        self._stop = threading.Event()
        self._dirty = threading.Event()
        self._refresher: threading.Thread | None = None
        self._qos0_limit = 4 * cfg.receive_maximum

    def _receive(self, item: Incoming) -> None:
        self.stats.received += 1
        if item.qos == 0 and self.queue.qsize() >= self._qos0_limit:
            # QoS 0 (health, snapshots) is best effort by the agent's choice; while the database is
            # down it must not fill this process's memory (QoS 1 is bounded by receive_maximum)
            self.stats.dropped_qos0 += 1
            return
        self.queue.put(item)

    def stop(self, *_: object) -> None:
        self._stop.set()

    def install_signals(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            log.info("ingest: signal %d, finishing the current batch", signum)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def _take(self) -> list[Incoming]:
        try:
            first = self.queue.get(timeout=0.5)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.cfg.batch_wait_s
        while len(batch) < self.cfg.batch_max:
            try:
                batch.append(self.queue.get_nowait())
                continue
            except queue.Empty:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(self.queue.get(timeout=left))
            except queue.Empty:
                break
        return batch

    def _store(self, batch: list[Incoming]) -> bool:
        """Store with retries; False when stopping before it could be stored (then nothing is acked)."""
        delay = 0.5
        while True:
            try:
                outcome = self.writer.write(batch)
                break
            except TransientDatabaseError as exc:
                self.stats.db_retries += 1
                log.warning("ingest: %s; retrying in %.1f s (%d messages held, not acknowledged)", exc, delay,
                            len(batch))
                if self._stop.wait(delay):
                    return False
                delay = min(delay * 2, 30.0)
        self._count(outcome)
        return True

    def _count(self, outcome: BatchOutcome) -> None:
        """The bookkeeping after a stored batch (both the retrying and the shutdown path)."""
        s = self.stats
        s.batches += 1
        s.stored += outcome.stored
        s.detections += outcome.detections
        s.duplicates += outcome.duplicates
        s.quarantined += outcome.quarantined
        if outcome.detections:
            self._dirty.set()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.cfg.refresh_interval_s):
            if not self._dirty.is_set():
                continue
            self._dirty.clear()
            try:
                result = refresh(self.db, wait=False)
                if result.ran and (result.observations or result.positions):
                    log.info("refresh: %s", result)
            except Exception:  # the inventory can always be rebuilt; ingest must go on
                log.exception("refresh failed (ingest continues; stats/export will retry)")

    def run(self) -> WorkerStats:
        log.info("ingest: %s -> %s, group %s, subscribing %s", self.cfg.mqtt_url, self.db.display_url,
                 self.cfg.group, ", ".join(self.receiver.topics))
        self.receiver.start()
        if self.cfg.refresh_interval_s > 0:
            self._refresher = threading.Thread(target=self._refresh_loop, name="refresh", daemon=True)
            self._refresher.start()
        last_log = time.monotonic()
        try:
            stored_last = True
            while not self._stop.is_set():
                batch = self._take()
                if batch:
                    stored_last = self._store(batch)
                    if not stored_last:
                        break
                    self.stats.acked += self.receiver.ack(batch)
                if time.monotonic() - last_log >= 30:
                    last_log = time.monotonic()
                    s = self.stats
                    log.info("ingest: %d stored (%d detections), %d duplicates, %d quarantined, %d QoS 0 dropped, "
                             "queue %d, %s", s.stored, s.detections, s.duplicates, s.quarantined, s.dropped_qos0,
                             self.queue.qsize(),
                             "connected" if self.receiver.connected else f"not connected ({self.receiver.last_error})")
            # finish what is already here, then leave (the rest is re-sent to this session later)
            pending: list[Incoming] = []
            while stored_last:          # (not while the database is down: the broker keeps them)
                try:
                    pending.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            for i in range(0, len(pending), self.cfg.batch_max):
                part = pending[i:i + self.cfg.batch_max]
                if self._store_once(part):
                    self.stats.acked += self.receiver.ack(part)
        finally:
            self._stop.set()
            self.receiver.stop()
            if self._refresher is not None:
                self._refresher.join(timeout=60)
            log.info("ingest: stopped; %d stored, %d duplicates, %d quarantined", self.stats.stored,
                     self.stats.duplicates, self.stats.quarantined)
        return self.stats

    def _store_once(self, batch: list[Incoming]) -> bool:
        """Store without retrying (at shutdown); False when the database refused it (then nothing is acked)."""
        try:
            outcome = self.writer.write(batch)
        except TransientDatabaseError:
            return False
        self._count(outcome)
        return True
