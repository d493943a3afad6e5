"""Chunked transfers are bounded (issue #12): transfers opened under ever new ids cannot fill the disk.

The report: 40 transfers under different ids grew downloads/ to 11 MB with max_bundle_bytes 4M,
kept for 7 days. Now at most ``max_open_transfers`` are open, ``downloads/`` holds at most
``transfers_max_bytes`` (default 2 x max_bundle_bytes), a refusal names the open transfers and
how to end one (``model-chunk-abort``), and a transfer idle for ``transfer_max_age_s`` (1 h)
goes away when the next chunk arrives.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from edge_agent.comms.base import Command, CommandError
from edge_agent.config.sections import ModelConfig
from edge_agent.config.updates import UpdatesConfig
from edge_agent.updates.chunks import ChunkAssembler, TransferError
from edge_agent.updates.commands import UpdateCommands
from edge_agent.updates.download import DownloadArea
from edge_agent.updates.manager import Settings, UpdateManager

CHUNK = 16 * 1024
MAX_BUNDLE = 64 * 1024


def manager(state: Path, **updates) -> UpdateManager:
    cfg = UpdatesConfig(enabled=True, max_bundle_bytes=MAX_BUNDLE, chunk_max_bytes=CHUNK, **updates)
    return UpdateManager(Settings(cfg, ModelConfig(), state), load_model=lambda p: p, swap_model=lambda s: None)


def chunk(transfer_id: str, index: int, count: int = 4, sha256: str = "ab" * 32, size: int = CHUNK) -> Command:
    body = {"transfer_id": transfer_id, "index": index, "count": count, "sha256": sha256,
            "data": base64.b64encode(os.urandom(size)).decode()}
    return Command("model-chunk", body, "crackseg/van-1/cmd/model-chunk")


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_many_transfer_ids_cannot_fill_the_disk(tmp_path) -> None:
    m = manager(tmp_path)
    commands = UpdateCommands(m)
    refused = []
    for t in range(40):  # the report: each transfer sends all chunks but the last, then the next id starts
        for i in range(3):
            try:
                commands.chunk(chunk(f"t{t:02d}", i))
            except CommandError as exc:
                refused.append(str(exc))
    assert disk_bytes(tmp_path / "downloads") <= 2 * MAX_BUNDLE
    assert [t.transfer_id for t in m.chunks.open_transfers()] == ["t00", "t01"]
    assert len(refused) == 38 * 3
    first = refused[0]
    assert "transfer 't02' refused: 2 transfers are open already (updates.max_open_transfers 2)" in first
    assert "'t00' (3/4 chunks, 49152 bytes" in first and "'t01' (3/4 chunks" in first
    assert "model-chunk-abort" in first and "updates.transfer_max_age_s" in first


def test_an_aborted_transfer_frees_its_place(tmp_path) -> None:
    m = manager(tmp_path)
    commands = UpdateCommands(m)
    commands.chunk(chunk("a", 0))
    commands.chunk(chunk("b", 0))
    with pytest.raises(CommandError, match="2 transfers are open already"):
        commands.chunk(chunk("c", 0))
    with pytest.raises(CommandError, match=r"no open transfer 'zz' \(open: 'a' \(1/4 chunks"):
        commands.abort_transfer(Command("model-chunk-abort", {"transfer_id": "zz"}, "t"))
    with pytest.raises(CommandError, match="transfer_id"):
        commands.abort_transfer(Command("model-chunk-abort", {"transfer_id": "../models"}, "t"))
    answer = commands.abort_transfer(Command("model-chunk-abort", {"transfer_id": "a"}, "t"))
    assert answer["aborted"]["transfer_id"] == "a" and [t["transfer_id"] for t in answer["open"]] == ["b"]
    assert commands.chunk(chunk("c", 0))["received"] == 1
    status = m.status(include_installed=True)
    assert [t["transfer_id"] for t in status["transfers"]] == ["b", "c"]
    assert json.loads(json.dumps(status)) == status


def test_total_bytes_are_capped_across_transfers(tmp_path) -> None:
    area = DownloadArea(tmp_path / "downloads")
    chunks = ChunkAssembler(area, MAX_BUNDLE, CHUNK, max_open=5, max_total_bytes=MAX_BUNDLE + CHUNK + CHUNK // 2)
    for i in range(4):
        chunks.add("big", i, 5, "ab" * 32, os.urandom(CHUNK))  # 4 of 5 chunks: 64 KiB
    chunks.add("small", 0, 4, "cd" * 32, os.urandom(CHUNK))
    chunks.add("small", 0, 4, "cd" * 32, os.urandom(CHUNK))  # a resend does not grow anything
    with pytest.raises(TransferError, match=r"would hold more than 90112 bytes \(updates.transfers_max_bytes\)"):
        chunks.add("small", 1, 4, "cd" * 32, os.urandom(CHUNK))  # 4 + 2 chunks: over
    assert chunks.disk_bytes() <= MAX_BUNDLE + CHUNK + CHUNK // 2


def test_idle_transfers_expire_when_the_next_chunk_arrives(tmp_path) -> None:
    m = manager(tmp_path)
    assert m.ucfg.transfer_max_age_s == 3600.0
    commands = UpdateCommands(m)
    commands.chunk(chunk("old", 0))
    commands.chunk(chunk("busy", 0))
    hour_ago = time.time() - 3601
    folder = tmp_path / "downloads" / "transfers" / "old"
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "created": hour_ago}))
    os.utime(folder, (hour_ago, hour_ago))
    assert commands.chunk(chunk("new", 0))["received"] == 1  # 'old' had no chunk for an hour: gone
    assert [t.transfer_id for t in m.chunks.open_transfers()] == ["busy", "new"]


def test_a_valid_transfer_completes_among_refused_ones(tmp_path) -> None:
    archive = b"\x1f\x8b" + os.urandom(3 * CHUNK + 100)  # gzip magic: it looks like a bundle archive
    sha = hashlib.sha256(archive).hexdigest()
    area = DownloadArea(tmp_path / "downloads")
    chunks = ChunkAssembler(area, MAX_BUNDLE, CHUNK)
    parts = [archive[i:i + CHUNK] for i in range(0, len(archive), CHUNK)]
    chunks.add("good", 0, len(parts), sha, parts[0])
    chunks.add("noise", 0, 9, "ab" * 32, os.urandom(100))
    for t in ("x", "y", "z"):
        with pytest.raises(TransferError, match="open already"):
            chunks.add(t, 0, 2, "ef" * 32, os.urandom(10))
    for i in range(1, len(parts)):
        progress = chunks.add("good", i, len(parts), sha, parts[i])
    assert progress.complete is not None and progress.complete.read_bytes() == archive
    assert chunks.add("good", 0, len(parts), sha, parts[0]).complete is not None  # a resend finds it complete
