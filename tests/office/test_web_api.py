"""The page's JSON API and server, without a browser: the answers match the database, parameters are
validated, lists are bounded, the server is read-only, refuses foreign Host headers, serves only its
own files with a strict CSP, and ``crackseg-office serve`` starts, answers and stops on SIGTERM."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from office import query
from office.cli import main
from office.store.database import Database
from office.web.api import MAX_CRACKS, Settings
from office.web.server import OfficeServer, make_server, tile_origin
from tests.office.webdata import SNAPSHOT_SIZE, fill
from tests.postgres import free_port

REPO = Path(__file__).resolve().parents[2]


class Served:
    def __init__(self, db_url: str, settings: Settings = Settings(cache_s=0)):
        self.sent = fill(db_url)
        self.db = Database.open(db_url, create=False)
        self.stats = query.stats(self.db)
        self.server: OfficeServer = make_server(self.db, "127.0.0.1", 0, settings)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def request(self, path: str, *, method: str = "GET", host: str | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Host": host} if host else {}
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body

    def json(self, path: str, status: int = 200) -> Any:
        code, _, body = self.request(path)
        assert code == status, (path, code, body[:300])
        return json.loads(body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.db.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    s = Served(f"sqlite:///{tmp_path_factory.mktemp('web') / 'office.db'}")
    yield s
    s.close()


def test_summary_and_lists_match_the_database(db_url: str) -> None:
    """On SQLite and on PostgreSQL/PostGIS: what the API says is what the query layer says."""
    s = Served(db_url)
    try:
        summary = s.json("/api/v1/summary")
        for key in ("messages", "devices", "cracks", "segments", "seq_gaps", "quarantined", "snapshots"):
            assert summary[key] == s.stats[key], key
        assert summary["messages"] == s.sent["detections"] and summary["seq_gaps"] == 0
        assert summary["cracks"] > 10 and summary["cracks_unplaced"] == 0
        x0, y0, x1, y1 = summary["extent"]
        assert x0 < x1 and y0 < y1
        cracks = s.json("/api/v1/cracks")
        assert cracks["type"] == "FeatureCollection" and cracks["total"] == len(cracks["features"]) == s.stats["cracks"]
        assert not cracks["truncated"]
        exported = {c["id"]: c for c in query.cracks(s.db)}
        for f in cracks["features"]:
            ref = exported[f["id"]]
            assert f["geometry"]["coordinates"] == ref["coordinates"]
            assert f["properties"] == {k: v for k, v in ref.items() if k != "coordinates"}
            for lon, lat in f["geometry"]["coordinates"]:
                assert x0 - 1e-7 <= lon <= x1 + 1e-7 and y0 - 1e-7 <= lat <= y1 + 1e-7   # 7-decimal rounding
        rank = {"high": 0, "medium": 1, "low": 2}
        keys = [(rank[f["properties"]["severity"]], -f["properties"]["length_m"]) for f in cracks["features"]]
        assert keys == sorted(keys), "worst first"
        segs = s.json("/api/v1/segments?limit=1000")
        assert segs["total"] == s.stats["segments"] == len(segs["features"])
        ci = [f["properties"]["condition_index"] for f in segs["features"]]
        assert ci == sorted(ci), "segments worst (lowest condition index) first"
        fleet = s.json("/api/v1/fleet")
        vans = {v["device_id"]: v for v in fleet["vehicles"]}
        assert set(vans) == {"van-1", "van-2"} and fleet["online"] == 1
        v1, v2 = vans["van-1"], vans["van-2"]
        assert v1["state"] == "online" and v1["online"] and not v1["stale"]
        assert v1["health"]["fps_out"] == 10.0 and v1["health"]["outbox_depth"] == 0
        assert (v1["model_name"], v1["model_version"]) == ("crackseg-ref", "1.0")
        assert v2["state"] == "offline" and not v2["online"] and v2["health"] is None
        assert v1["messages"] + v2["messages"] == s.sent["detections"] and v1["missing_seq"] == 0
        # the server's own connections refuse writes (SQLite query_only, PostgreSQL read-only transactions)
        with pytest.raises(Exception, match="(?i)read-only|readonly|query_only|attempt to write"):
            with s.db.engine.connect() as conn:
                conn.execute(text("DELETE FROM cracks"))
                conn.commit()
        assert s.json("/api/v1/summary")["cracks"] == s.stats["cracks"]
    finally:
        s.close()


def test_a_crack_in_detail_with_its_snapshot(served: Served) -> None:
    cracks = served.json("/api/v1/cracks")["features"]
    pictured = [c for c in cracks if c["properties"]["best_snapshot_id"] is not None]
    assert pictured, "the snapshots of van-1 are the best pictures of some cracks"
    detail = served.json(f"/api/v1/cracks/{pictured[0]['id']}")
    p = detail["properties"]
    assert detail["id"] == pictured[0]["id"] and detail["geometry"] == pictured[0]["geometry"]
    assert p["snapshot"]["url"] == f"/api/v1/snapshots/{p['best_snapshot_id']}.jpg"
    assert p["segment"] is not None and 0 <= p["segment"]["condition_index"] <= 100
    assert 0 < len(p["recent_observations"]) <= min(20, p["observations"])
    code, headers, body = served.request(p["snapshot"]["url"])
    assert code == 200 and headers["content-type"] == "image/jpeg" and body in served.sent["snapshots"]
    import cv2
    import numpy as np

    img = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert (img.shape[1], img.shape[0]) == SNAPSHOT_SIZE
    assert served.json("/api/v1/cracks/999999", 404)["error"]
    assert served.json("/api/v1/snapshots/999999.jpg", 404)["error"]


@pytest.mark.parametrize("path", [
    "/api/v1/cracks?bogus=1", "/api/v1/cracks?limit=1&limit=2", "/api/v1/cracks?limit=0",
    f"/api/v1/cracks?limit={MAX_CRACKS + 1}", "/api/v1/cracks?limit=-5", "/api/v1/cracks?limit=1e3",
    "/api/v1/cracks?bbox=1,2,3", "/api/v1/cracks?bbox=10,0,5,1", "/api/v1/cracks?bbox=nan,0,1,1",
    "/api/v1/cracks?since=2024-05-01T00:00:00", "/api/v1/cracks?since=yesterday", "/api/v1/cracks?severity=awful",
    "/api/v1/cracks?type=pothole", "/api/v1/cracks?placed=maybe", "/api/v1/segments?order=best",
    "/api/v1/summary?x=1", "/api/v1/cracks?" + "a" * 3000, "/api/v1/cracks?offset=99999999999"])
def test_bad_parameters_are_a_400_that_says_why(served: Served, path: str) -> None:
    doc = served.json(path, 400)
    assert doc["status"] == 400 and len(doc["error"]) > 10


@pytest.mark.parametrize("path", ["/api/v1/cracks/abc", "/api/v1/cracks/-1", "/api/v1/cracks/0",
                                  "/api/v1/cracks/99999999999999999999", "/api/v2/cracks", "/api/v1/cracks/1/x"])
def test_unknown_resources_are_a_404(served: Served, path: str) -> None:
    assert served.json(path, 404)["status"] == 404


def test_filters_and_bounds(served: Served) -> None:
    everything = served.json("/api/v1/cracks")
    total = everything["total"]
    first = served.json("/api/v1/cracks?limit=5")
    assert first["returned"] == 5 and first["truncated"] and first["total"] == total
    rest = served.json(f"/api/v1/cracks?limit=5&offset={total - 3}")
    assert rest["returned"] == 3 and not rest["truncated"]
    assert [f["id"] for f in first["features"]] == [f["id"] for f in everything["features"][:5]]
    high = served.json("/api/v1/cracks?severity=high")
    assert {f["properties"]["severity"] for f in high["features"]} <= {"high"}
    assert high["total"] == sum(f["properties"]["severity"] == "high" for f in everything["features"])
    lon0 = min(c[0] for f in everything["features"] for c in f["geometry"]["coordinates"])
    lat0 = min(c[1] for f in everything["features"] for c in f["geometry"]["coordinates"])
    west = served.json(f"/api/v1/cracks?bbox={lon0 - 0.001},{lat0 - 0.001},{lon0 + 0.0002},{lat0 + 0.001}")
    assert 0 < west["total"] < total
    assert served.json("/api/v1/cracks?since=2999-01-01T00:00:00Z")["total"] == 0
    assert served.json("/api/v1/segments?limit=2&order=id")["returned"] == 2


def test_read_only_server_headers_and_static_files(served: Served) -> None:
    code, headers, body = served.request("/")
    assert code == 200 and headers["content-type"].startswith("text/html") and b"/vendor/leaflet/leaflet.js" in body
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
    for path in ("/app.js", "/app.css", "/vendor/leaflet/leaflet.js", "/vendor/leaflet/leaflet.css",
                 "/vendor/leaflet/images/layers.png", "/vendor/leaflet/LICENSE"):
        code, h, body = served.request(path)
        assert code == 200 and body, path
    etag = served.request("/app.js")[1]["etag"]
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    conn.request("GET", "/app.js", headers={"If-None-Match": etag})
    assert conn.getresponse().status == 304
    conn.close()
    for path in ("/../office/cli.py", "/%2e%2e/etc/passwd", "/static/app.js", "/office.db", "/vendor/"):
        assert served.request(path)[0] == 404, path
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        code, headers, _ = served.request("/api/v1/cracks", method=method)
        assert code == 405 and headers["allow"] == "GET, HEAD"
    code, headers, body = served.request("/api/v1/summary", method="HEAD")
    assert code == 200 and body == b"" and int(headers["content-length"]) > 0
    # DNS rebinding: a page elsewhere whose name now resolves to 127.0.0.1
    assert served.request("/api/v1/summary", host="evil.example:8765")[0] == 421
    assert served.request("/api/v1/summary", host=f"localhost:{served.port}")[0] == 200
    index = served.json("/api/v1")
    assert index["read_only"] and {e["path"] for e in index["endpoints"]} >= {"/api/v1/cracks", "/api/v1/fleet"}


def test_tile_url_setting_and_its_csp() -> None:
    assert tile_origin(None) is None
    assert tile_origin("https://{s}.tile.example.org/{z}/{x}/{y}.png") == "https://*.tile.example.org"
    assert tile_origin("http://127.0.0.1:8080/tiles/{z}/{x}/{y}.png") == "http://127.0.0.1:8080"
    with pytest.raises(ValueError):
        tile_origin("javascript:alert(1)")


def test_serve_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db_url = f"sqlite:///{tmp_path / 'office.db'}"
    assert main(["serve", "--db", str(tmp_path / "missing.db")]) == 2
    assert "does not exist" in capsys.readouterr().err
    fill(db_url)
    assert main(["serve", "--db", db_url, "--tile-url", "ftp://tiles/{z}/{x}/{y}"]) == 2
    assert main(["serve", "--db", db_url, "--crack-limit", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("crackseg-office: error:") == 2 and "--tile-url" in err
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "office", "serve", "--db", db_url, "--port", str(port)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/api/v1/summary")
                resp = conn.getresponse()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
                time.sleep(0.2)
        assert resp.status == 200 and json.loads(resp.read())["cracks"] > 0
        conn.close()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0 and f"http://127.0.0.1:{port}/" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_package_ships_the_page(tmp_path: Path) -> None:
    """A wheel built from exactly what the office image copies (pyproject.toml, README.md, office/)
    contains the page and the vendored Leaflet with its licence: package data, not a source-tree file."""
    import shutil
    import zipfile

    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "office", src / "office", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    static = {n.split("office/web/static/", 1)[1] for n in names if "office/web/static/" in n}
    expected = {p.relative_to(REPO / "office/web/static").as_posix()
                for p in (REPO / "office/web/static").rglob("*") if p.is_file()}
    assert expected <= static
    assert {"index.html", "app.js", "vendor/leaflet/leaflet.js", "vendor/leaflet/LICENSE"} <= static
    assert not any(n.startswith(("edge_agent/", "converters/")) for n in names)
