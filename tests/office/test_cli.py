"""The command line: stats (table + JSON last line), GeoJSON/CSV exports with filters, rebuild, and one-line
user errors with exit status 2."""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from office.cli import main
from office.ingest.rows import Incoming
from office.ingest.writer import BatchWriter
from office.store.database import Database
from office.synthetic import Drive, StraightTrack, cracks_along, encode, simulate
from tests.office.fleet import ORIGIN
from tests.postgres import free_port

REPO = Path(__file__).resolve().parents[2]
STATS_KEYS = {"messages", "devices", "cracks", "segments", "seq_gaps", "duplicates_ignored", "quarantined"}


def fill(db_url: str) -> str:
    """Two days of one vehicle: 2024-05-01 on one road, 2024-05-02 on another 500 m north; 45 m each
    (four 10 m segments and the 5 m start of a fifth)."""
    db = Database.open(db_url)
    w = BatchWriter(db, "w")
    now = datetime.now(timezone.utc)
    for day, north in ((1, 0.0), (2, 500.0)):
        track = StraightTrack(heading_deg=90.0, length_m=45.0, start_n=north)
        drive = Drive("van-1", track, ORIGIN, start=datetime(2024, 5, day, 9, tzinfo=timezone.utc), seed=day,
                      first_seq=1 + (day - 1) * 1000, every_frame=True)
        msgs = list(simulate(drive, cracks_along(track, ORIGIN, 4.0, seed=day)))
        w.write([Incoming("crackseg/van-1/detections", encode(m), 1, 0, False, now) for m in msgs])
    w.write([Incoming("crackseg/van-1/detections", b"not json", 1, 0, False, now)])
    db.close()
    return db_url


@pytest.fixture
def filled(sqlite_url: str) -> str:
    return fill(sqlite_url)


def run_cli(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_stats_table_and_json_last_line(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli("stats", "--db", fill(db_url), "--json", capsys=capsys)
    assert code == 0
    assert "detection messages" in out and "van-1" in out and "not JSON" in out
    stats = json.loads(out.strip().splitlines()[-1])
    assert STATS_KEYS <= set(stats)
    # seq 1..n on day 1, 1001..m on day 2: the numbers in between are reported missing
    assert stats["devices"] == 1 and stats["quarantined"] == 1 and stats["cracks"] > 5 and stats["segments"] == 10
    assert stats["seq_gaps"] > 900 and stats["duplicates_ignored"] == 0


def test_geojson_export_follows_rfc_7946(filled: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "cracks.geojson"
    code, out, _ = run_cli("export", "--db", filled, "--format", "geojson", "--what", "cracks", "--out",
                           str(out_file), capsys=capsys)
    assert code == 0 and "wrote" in out
    doc = json.loads(out_file.read_text())
    assert doc["type"] == "FeatureCollection" and "crs" not in doc and doc["features"]
    for f in doc["features"]:
        assert f["type"] == "Feature" and f["geometry"]["type"] == "LineString"
        for lon, lat in f["geometry"]["coordinates"]:
            assert abs(lon - ORIGIN[0]) < 0.01 and abs(lat - ORIGIN[1]) < 0.01, "lon, lat order"
            assert len(repr(lon).split(".")[1]) <= 7 and len(repr(lat).split(".")[1]) <= 7
        assert {"type", "severity", "length_m", "first_seen", "last_seen", "devices"} <= set(f["properties"])
        assert f["properties"]["first_seen"].endswith("Z")
    code, _, _ = run_cli("export", "--db", filled, "--format", "geojson", "--what", "segments", "--out",
                         str(tmp_path / "s.geojson"), capsys=capsys)
    segs = json.loads((tmp_path / "s.geojson").read_text())["features"]
    assert code == 0 and len(segs) == 10 and all("condition_index" in f["properties"] for f in segs)


def test_filters_by_bbox_and_time(filled: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def count(*extra: str) -> int:
        path = tmp_path / "x.geojson"
        assert main(["export", "--db", filled, "--format", "geojson", "--what", "cracks", "--out", str(path),
                     *extra]) == 0
        return len(json.loads(path.read_text())["features"])

    everything = count()
    day2 = count("--since", "2024-05-02T00:00:00Z")
    # day 1's road is near the origin, day 2's 500 m north of it
    south = count("--bbox", f"{ORIGIN[0] - 0.01},{ORIGIN[1] - 0.001},{ORIGIN[0] + 0.01},{ORIGIN[1] + 0.001}")
    assert 0 < day2 < everything and south == everything - day2
    capsys.readouterr()


def test_csv_export_opens_as_a_spreadsheet(filled: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "segments.csv"
    assert main(["export", "--db", filled, "--format", "csv", "--what", "segments", "--out", str(path)]) == 0
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert len(rows) == 10
    assert re.fullmatch(r"LINESTRING\(-?\d+\.\d+ -?\d+\.\d+(,-?\d+\.\d+ -?\d+\.\d+)+\)", rows[0]["wkt"])
    assert float(rows[0]["condition_index"]) <= 100 and rows[0]["first_seen"].endswith("Z")
    capsys.readouterr()


def test_rebuild_with_new_settings(filled: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = json.loads(run_cli("stats", "--db", filled, "--json", capsys=capsys)[1].splitlines()[-1])
    cfg = tmp_path / "office.yaml"
    cfg.write_text("segments:\n  length_m: 20\n")
    code, out, _ = run_cli("rebuild", "--db", filled, "--config", str(cfg), capsys=capsys)
    assert code == 0 and "rebuilt" in out
    after = json.loads(run_cli("stats", "--db", filled, "--json", capsys=capsys)[1].splitlines()[-1])
    assert (before["segments"], after["segments"]) == (10, 6) and after["cracks"] == before["cracks"]
    cfg.write_text("segments:\n  lenght_m: 20\n")
    code, _, err = run_cli("rebuild", "--db", filled, "--config", str(cfg), capsys=capsys)
    assert code == 2 and "lenght_m" in err and len(err.strip().splitlines()) == 1


def _one_line_exit_2(args: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(*args, capsys=capsys)
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("crackseg-office: error:") and needle in lines[0], err


def test_user_errors_are_one_line_and_exit_2(tmp_path: Path, sqlite_url: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    Database.open(sqlite_url).close()
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    out = str(tmp_path / "x.geojson")
    cases: list[tuple[list[str], str]] = [
        (["stats", "--db", str(tmp_path / "missing.db")], "does not exist"),
        (["stats", "--db", "mysql://u@h/db"], "unsupported kind 'mysql'"),
        (["stats", "--db", f"postgresql://postgres@127.0.0.1:{free_port()}/x"], "cannot open database"),
        (["stats", "--db", str(other)], "no crackseg-office data"),
        (["export", "--db", sqlite_url, "--format", "geojson", "--what", "cracks", "--bbox", "1,2,3",
          "--out", out], "--bbox"),
        (["export", "--db", sqlite_url, "--format", "csv", "--what", "cracks", "--since", "last week",
          "--out", out], "--since"),
        (["export", "--db", sqlite_url, "--format", "csv", "--what", "cracks", "--out",
          str(tmp_path / "no" / "dir.csv")], "does not exist"),
        (["ingest", "--mqtt-url", "http://broker", "--db", sqlite_url], "mqtt://"),
        (["ingest", "--mqtt-url", "mqtt://127.0.0.1:1", "--db", str(tmp_path / "nofolder" / "o.db")],
         "does not exist"),
        (["ingest", "--mqtt-url", "mqtt://127.0.0.1:1", "--db", sqlite_url, "--group", "a/b"], "--group"),
        (["ingest", "--mqtt-url", "mqtt://127.0.0.1:1", "--db", sqlite_url, "--password-env", "NOPE_NOT_SET"],
         "NOPE_NOT_SET"),
    ]
    for args, needle in cases:
        _one_line_exit_2(args, needle, capsys)


def test_the_installed_command(tmp_path: Path) -> None:
    """The console script and ``python -m office`` both end a user error with one line and status 2."""
    for cmd in ([str(Path(sys.executable).parent / "crackseg-office")], [sys.executable, "-m", "office"]):
        proc = subprocess.run([*cmd, "stats", "--db", str(tmp_path / "nope.db")], capture_output=True, text=True,
                              cwd=REPO, timeout=120)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "does not exist" in proc.stderr, proc


def test_the_office_imports_neither_the_agent_nor_torch() -> None:
    """It runs on another machine: nothing from edge_agent, and no torch."""
    code = ("import sys, office.cli, office.ingest.worker, office.refresh, office.export, office.query;"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('edge_agent', 'torch'));"
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
