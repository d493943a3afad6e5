"""The audit log: who ordered what and what came of it, as JSON lines that survive a power cut.

Why a file next to the journal: the journal on a vehicle computer is often volatile (tmpfs)
or rotated within hours, while the question "who switched this van to model 1.4.0, and when"
comes weeks later. Each record is one line, appended, flushed and fsynced before the call
returns, so a record that was written is on disk, and a torn last line (power cut mid-write)
is the only possible damage; readers skip it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edge_agent.util.files import append_line_synced
from edge_agent.util.timestamps import iso_utc

log = logging.getLogger("edge_agent.audit")

AUDIT_NAME = "audit.jsonl"


class AuditLog:
    """Append-only ``<state_dir>/audit.jsonl``, rotated once to ``audit.jsonl.1`` past ``max_bytes``."""

    def __init__(self, path: str | Path, max_bytes: int = 8 * 1024**2):
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()

    def write(self, event: str, outcome: str, origin: str | None = None, **fields: Any) -> dict:
        """Record one event; ``outcome`` is a short word (ok, refused, failed, rolled_back...)."""
        now = time.time()
        record = {"time": iso_utc(now), "ts": round(now, 3), "event": event, "origin": origin or "unknown",
                  "outcome": outcome, **fields}
        line = json.dumps(record, default=str, separators=(",", ":"), ensure_ascii=False) + "\n"
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate sent in a command: escape it rather than lose the record
            line = json.dumps(record, default=str, separators=(",", ":"), ensure_ascii=True) + "\n"
        log.info("audit %s", line.rstrip("\n"))
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._rotate_if_needed(len(line))
            append_line_synced(self.path, line)
        return record

    def write_command(self, record: dict) -> dict:
        """A record from ``CommandRegistry`` (command, request_id, origin, ok, error)."""
        fields = {k: v for k, v in record.items() if k not in ("event", "ok", "origin")}
        outcome = "ok" if record.get("ok") else "refused"
        return self.write(record.get("event", "command"), outcome, record.get("origin"), **fields)

    def _rotate_if_needed(self, adding: int) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size + adding > self.max_bytes:
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))

    def entries(self) -> Iterator[dict]:
        """Records, oldest first (the rotated file, then the current one); a torn line is skipped."""
        for p in (self.path.with_name(self.path.name + ".1"), self.path):
            try:
                lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
            except FileNotFoundError:
                continue
            for line in lines:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict):
                    yield rec
