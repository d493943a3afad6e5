"""The page in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright; Playwright's
own browser download is never used): it loads with no console error and no request leaving this
server, draws one line per crack of the inventory, lists the fleet and the segments worst first, and
a mouse click on a crack opens its detail with its snapshot. A second load with a tile URL set
shows the base map comes from the configured server and the CSP lets it through.

Skipped, with the reason, only when chromium is missing; with chromium there, a missing playwright
package is a failure that says how to install it.
"""

from __future__ import annotations

import base64
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from office import query
from office.store.database import Database
from office.web.api import Settings
from office.web.server import OfficeServer, make_server
from tests.office.webdata import SNAPSHOT_SIZE, fill

CHROMIUM = os.environ.get("CRACKSEG_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
# a 1x1 PNG for the fake tile server
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQ"
                       "AAAABJRU5ErkJggg==")


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return (f"chromium not found at {CHROMIUM}: install it with `apt-get install chromium` "
                "(./run.sh setup full does)")
    return None


# only a machine without a browser skips; with chromium there, a missing playwright is a failure
pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


def _serve(db: Database, settings: Settings) -> OfficeServer:
    server = make_server(db, "127.0.0.1", 0, settings)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("chromium is installed but the playwright package is not: pip install -e '.[office-test]' "
                    "(./run.sh setup full does)")

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _watch(page: Any, origin: str) -> dict[str, list[str]]:
    """Collect console errors, page errors and every request that does not go to ``origin``."""
    seen: dict[str, list[str]] = {"errors": [], "foreign": []}
    page.on("console", lambda m: seen["errors"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))

    def route(r: Any) -> None:
        if r.request.url.startswith(origin):
            r.continue_()
        else:
            seen["foreign"].append(r.request.url)
            r.abort()

    page.route("**/*", route)
    return seen


def test_page_map_fleet_segments_and_a_click_on_a_crack(browser: Any, tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'office.db'}"
    fill(db_url)
    db = Database.open(db_url, create=False)
    stats = query.stats(db)
    server = _serve(db, Settings())
    origin = server.url.rstrip("/")
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    seen = _watch(page, origin)
    try:
        page.goto(server.url)
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        # the right number of cracks: every inventory record is one line on the map, and the header says so
        assert stats["cracks"] > 10
        assert page.locator("path.crack").count() == stats["cracks"]
        assert page.inner_text("#n-cracks") == str(stats["cracks"])
        assert page.inner_text("#n-segments") == str(stats["segments"])
        assert page.locator("path.crack-high").count() == sum(1 for c in query.cracks(db) if c["severity"] == "high")
        assert page.locator(".leaflet-control-scale-line").count() == 1, "a scale, since there is no base map"
        assert page.locator(".leaflet-tile").count() == 0, "no tile URL set: no tiles requested"
        # the fleet: van-1 online (retained status), van-2 offline (its last will)
        states = {r.get_attribute("data-device"): r.locator("td").nth(1).inner_text()
                  for r in page.locator("#fleet-table tbody tr").all()}
        assert states == {"van-1": "online", "van-2": "offline"}
        van1 = page.locator("#fleet-table tbody tr[data-device='van-1'] td")
        assert van1.nth(3).inner_text() == "10.0 / 10.0" and van1.nth(4).inner_text() == "0"
        assert van1.nth(5).inner_text() == "crackseg-ref 1.0"
        # the segment table, worst first
        page.click("#tab-segments")
        rows = page.locator("#segment-table tbody tr")
        assert rows.count() == stats["segments"]
        ci = [float(rows.nth(i).locator("td").nth(1).inner_text()) for i in range(rows.count())]
        assert ci == sorted(ci)
        # a real mouse click on a crack that has a snapshot opens its detail
        pictured = [c["id"] for c in query.cracks(db) if c["best_snapshot_id"] is not None]
        target = page.evaluate("""(ids) => {
            for (const id of ids) {
              const p = document.querySelector(`path.crack[data-crack-id="${id}"]`);
              if (!p) continue;
              const pt = p.getPointAtLength(p.getTotalLength() / 2);
              const s = pt.matrixTransform(p.getScreenCTM());
              const top = document.elementFromPoint(s.x, s.y);
              if (top === p) return {id, x: s.x, y: s.y};
            }
            return null; }""", pictured)
        assert target is not None, "no pictured crack is clickable on top"
        page.mouse.click(target["x"], target["y"])
        page.wait_for_selector(f"#crack-detail[data-crack-id='{target['id']}']", timeout=10_000)
        assert page.locator("#crack").is_visible()
        assert page.inner_text("#crack-title").startswith(f"Crack #{target['id']}")
        page.wait_for_function("() => { const i = document.getElementById('crack-snapshot');"
                               " return i.complete && i.naturalWidth > 0; }", timeout=10_000)
        size = page.evaluate("() => { const i = document.getElementById('crack-snapshot');"
                             " return [i.naturalWidth, i.naturalHeight]; }")
        assert tuple(size) == SNAPSHOT_SIZE
        assert page.locator("#crack-observations tbody tr").count() > 0
        assert page.url.endswith(f"#crack={target['id']}")
        # the crack list: every crack, worst first (the API's order), and a click on a row opens it too
        page.click("#tab-cracks")
        listed = [int(r.get_attribute("data-crack-id")) for r in page.locator("#crack-table tbody tr").all()]
        rank = {"high": 0, "medium": 1, "low": 2}
        expected = sorted(query.cracks(db), key=lambda c: (rank[c["severity"]], -c["length_m"], c["id"]))
        assert listed == [c["id"] for c in expected]
        assert page.inner_text("#cracks-note") == f"worst first: 1-{stats['cracks']} of {stats['cracks']}"
        page.click(f"#crack-table tbody tr[data-crack-id='{listed[-1]}']")
        page.wait_for_selector(f"#crack-detail[data-crack-id='{listed[-1]}']", timeout=10_000)
        assert not seen["errors"], seen["errors"]
        assert not seen["foreign"], f"requests left the server: {seen['foreign']}"
    finally:
        page.close()
        server.shutdown()
        server.server_close()
        db.close()


class _Tiles(BaseHTTPRequestHandler):
    requested: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        _Tiles.requested.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(PNG)))
        self.end_headers()
        self.wfile.write(PNG)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_tile_url_setting_draws_the_base_map(browser: Any, tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'office.db'}"
    fill(db_url)
    db = Database.open(db_url, create=False)
    tiles = ThreadingHTTPServer(("127.0.0.1", 0), _Tiles)
    threading.Thread(target=tiles.serve_forever, daemon=True).start()
    tile_origin = f"http://127.0.0.1:{tiles.server_address[1]}"
    server = _serve(db, Settings(tile_url=tile_origin + "/{z}/{x}/{y}.png", tile_attribution="test tiles"))
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        page.goto(server.url)
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        page.wait_for_function("() => document.querySelectorAll('img.leaflet-tile-loaded').length > 0",
                               timeout=10_000)
        assert _Tiles.requested and all(p.endswith(".png") for p in _Tiles.requested)
        assert "test tiles" in page.inner_text(".leaflet-control-attribution")
        assert not errors, errors
    finally:
        page.close()
        server.shutdown()
        server.server_close()
        tiles.shutdown()
        tiles.server_close()
        db.close()


def test_an_empty_database_shows_an_empty_page_without_errors(browser: Any, tmp_path: Path) -> None:
    """A fresh office (init, nothing received yet): the page still loads, with zeros and no error."""
    db = Database.open(f"sqlite:///{tmp_path / 'office.db'}")
    server = _serve(db, Settings())
    page = browser.new_page()
    seen = _watch(page, server.url.rstrip("/"))
    try:
        page.goto(server.url)
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        assert page.inner_text("#n-cracks") == "0" and page.locator("path.crack").count() == 0
        assert page.locator("#fleet-table tbody tr").count() == 0
        page.click("#tab-segments")
        assert page.inner_text("#segments-note") == "no segments yet"
        assert not seen["errors"] and not seen["foreign"], seen
    finally:
        page.close()
        server.shutdown()
        server.server_close()
        db.close()
