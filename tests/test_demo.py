"""``crackseg-edge demo`` end to end, briefly: a short stretch of the generated survey through the agent, a
private Mosquitto and ``crackseg-office ingest`` on SQLite; the inventory is not empty, the GeoJSON export
is valid RFC 7946 and lies on the drive, the overlays are labelled pictures."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.mosquitto import mosquitto_available

pytestmark = pytest.mark.skipif(not mosquitto_available(), reason="mosquitto is not installed")
pytest.importorskip("sqlalchemy")
pytest.importorskip("pyproj")

ORIGIN = (13.404954, 52.520008)  # lon, lat of the demo drive's start


def check_rfc7946(doc: dict) -> None:
    """The parts of RFC 7946 an exporter can get wrong: structure, WGS84 lon/lat order and range, no crs."""
    assert doc["type"] == "FeatureCollection" and isinstance(doc["features"], list)
    assert "crs" not in doc  # 7946 section 4: WGS84 only, no crs member
    for f in doc["features"]:
        assert f["type"] == "Feature" and isinstance(f["properties"], dict)
        geom = f["geometry"]
        assert geom["type"] == "LineString" and len(geom["coordinates"]) >= 2  # 3.1.4
        for pos in geom["coordinates"]:
            assert len(pos) in (2, 3) and all(isinstance(v, (int, float)) and math.isfinite(v) for v in pos)
            lon, lat = pos[:2]
            assert -180 <= lon <= 180 and -90 <= lat <= 90
            # the drive is ~75 m long: every crack lies within ~150 m of its start, lon first
            assert abs(lon - ORIGIN[0]) < 0.003 and abs(lat - ORIGIN[1]) < 0.0015
        if "bbox" in f:
            assert len(f["bbox"]) == 4


def test_demo_ends_with_an_inventory_and_a_map(tmp_path):
    out = tmp_path / "demo-output"
    proc = subprocess.run([sys.executable, "-m", "edge_agent.cli", "demo", "--out", str(out), "--frames", "40"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    assert "crack inventory (crackseg-office stats):" in text and "GeoJSON of the cracks:" in text
    assert "serve" in text  # the page's URL, or where it will come from
    result = json.loads(text.strip().splitlines()[-1])
    agent, office = result["agent"], result["office"]
    assert agent["frames"] == 40 and agent["pending"] == 0
    assert office["messages"] == agent["detection_messages"] > 0
    assert office["cracks"] > 0 and office["seq_gaps"] == 0 and office["quarantined"] == 0
    doc = json.loads((out / "cracks.geojson").read_text())
    check_rfc7946(doc)
    assert len(doc["features"]) == office["cracks"]
    overlays = sorted((out / "overlays").glob("*.jpg"))
    assert overlays and all(p.read_bytes()[:2] == b"\xff\xd8" for p in overlays)
    detections = [json.loads(line)["payload"] for line in (out / "messages.jsonl").read_text().splitlines()
                  if json.loads(line)["topic"].endswith("/detections")]
    assert all(d["schema_version"] == 2 and d["position"]["source"] == "nmea-file" for d in detections)
    # a moving vehicle: the fixes of the messages are metres apart
    lats = [d["position"]["lat"] for d in detections]
    assert (max(lats) - min(lats)) * 111_000 > 3
