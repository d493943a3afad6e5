"""``crackseg-edge demo``: a recorded survey through the whole system, vehicle to map.

What it shows a new user in one command, on a machine with nothing configured:

1. a survey as crews record it (``demo/drive.py``): a clip of a road (asphalt, a broken lane
   line up to a junction, a tree's shadow, twelve cracks of every type and width) filmed from a
   vehicle driving a straight, a bend and a straight, and the NMEA log of its GPS receiver;
2. the agent replaying both (``position: nmea-file``): the shipped INT8 model segments each
   needed frame, cracks are measured in millimetres, placed at the antenna position of the
   frame's capture time and published as v2 detections through a private Mosquitto;
3. the office (``crackseg-office ingest`` on SQLite, a separate process as in production)
   storing them; then its inventory summary (``stats``), a GeoJSON export of the cracks and,
   when the office has a web page, the command that serves it.

Overlays (the agent's snapshots: each crack boxed and labelled with its id, type, width and
severity, and a scale bar) land in ``<out>/overlays``, every message in ``<out>/messages.jsonl``.
The clip is generated because real survey footage cannot be redistributed with the project.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.agent.app import Agent
from edge_agent.config.loader import load_config
from edge_agent.demo.broker import LocalBroker
from edge_agent.demo.drive import SurveyDrive
from edge_agent.errors import UserError

DEVICE_ID = "demo-van"
OFFICE = [sys.executable, "-m", "office"]
SERVE_PORT = 8765


class DemoSubscriber:
    """What a person watching the broker sees: prints each detection, keeps messages and overlays."""

    def __init__(self, port: int, out: Path):
        self.messages = (out / "messages.jsonl").open("w", encoding="utf-8")
        self.snapshots = out / "overlays"
        self.snapshots.mkdir(parents=True, exist_ok=True)
        self.count = {"detections": 0, "snapshots": 0, "health": 0, "status": 0}
        self.connected = threading.Event()
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="demo-viewer", protocol=paho.MQTTv5)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        client.subscribe(f"crackseg/{DEVICE_ID}/#", qos=1)
        self.connected.set()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        kind = msg.topic.rsplit("/", 1)[-1]
        with self._lock:
            if kind == "snapshots":
                self.count["snapshots"] += 1
                (self.snapshots / f"overlay_{self.count['snapshots']:03d}.jpg").write_bytes(msg.payload)
                return
            try:
                body = json.loads(msg.payload)
            except ValueError:
                return
            self.messages.write(json.dumps({"topic": msg.topic, "payload": body}) + "\n")
            if kind in self.count:
                self.count[kind] += 1
            if kind == "detections":
                print(describe_detection(body), flush=True)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
        self.messages.close()


def describe_detection(body: dict) -> str:
    cracks = body.get("cracks", [])
    parts = [f"#{c.get('track_id', '').rsplit('-', 1)[-1]} {c.get('type')} {c.get('length_m', 0):.2f} m x "
             f"{c.get('width_mean_mm', 0):.1f} mm {c.get('severity')}" for c in cracks[:3]]
    pos = body.get("position") or {}
    where = (f" at {pos['lat']:.6f},{pos['lon']:.6f} heading {pos['heading_deg']:.0f}"
             if pos.get("lat") is not None and pos.get("heading_deg") is not None else " (no position)")
    more = f" +{len(cracks) - 3} more" if len(cracks) > 3 else ""
    return (f"[detections {body.get('seq')}] frame {body.get('frame', {}).get('index')} "
            f"t={body.get('frame', {}).get('position_s') or 0:.2f}s{where}: " + "; ".join(parts) + more)


def office_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*OFFICE, *args], capture_output=True, text=True, timeout=timeout)


def office_available() -> str | None:
    """Why the office cannot run here, or None when it can."""
    probe = office_cli("--version", timeout=60)
    if probe.returncode != 0:
        return (f"the office package does not run here ({probe.stderr.strip().splitlines()[-1:]}): "
                "install it with pip install -e '.[office]' (./run.sh demo does)")
    return None


class OfficeIngest:
    """``crackseg-office ingest`` as its own process, as an office runs it; logs to ``office-ingest.log``."""

    def __init__(self, mqtt_url: str, db_url: str, log_path: Path):
        self.log_path = log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen([*OFFICE, "ingest", "--mqtt-url", mqtt_url, "--db", db_url,
                                      "--group", "demo-office", "--refresh-interval", "0"],
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_subscribed(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "subscribed to" in self.log_path.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        tail = self.log_path.read_text(errors="replace")[-2000:]
        self.stop()
        raise UserError(f"crackseg-office ingest did not subscribe (see {self.log_path}):\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # finishes the batch in hand, acknowledges, exits
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def office_stats(db_url: str, refresh: bool) -> tuple[dict[str, Any], str]:
    """(the stats JSON, the printed table)."""
    result = office_cli("stats", "--db", db_url, "--json", *([] if refresh else ["--no-refresh"]))
    if result.returncode != 0:
        raise UserError(f"crackseg-office stats failed: {result.stderr.strip()[-1000:]}")
    lines = result.stdout.strip().splitlines()
    return json.loads(lines[-1]), "\n".join(lines[:-1])


def wait_stored(db_url: str, expected: int, timeout: float = 60.0) -> int:
    """Until the office stored ``expected`` detection messages; returns how many it has."""
    deadline = time.monotonic() + timeout
    stored = -1
    while time.monotonic() < deadline:
        stored = int(office_stats(db_url, refresh=False)[0]["messages"])
        if stored >= expected:
            break
        time.sleep(0.5)
    return stored


def run_demo(args: Any) -> int:
    started = time.monotonic()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for old in ("state", "overlays", "survey"):
        shutil.rmtree(out / old, ignore_errors=True)
    for old in ("office.db", "office.db-wal", "office.db-shm", "cracks.geojson", "segments.geojson"):
        (out / old).unlink(missing_ok=True)
    missing = office_available()
    if missing:
        raise UserError(missing)

    drive = SurveyDrive()
    drive.duration_s = max(1.0, args.frames / drive.fps)
    video, log = drive.write(out / "survey")
    print(f"survey: {video} ({drive.frames} frames {drive.size[0]}x{drive.size[1]} at {drive.fps:g} fps, "
          f"{drive.gsd_mm} mm/px) and GPS log {log} ({drive.log_hz:g} Hz, started {drive.log_lead_s:g} s "
          f"before the camera); the van drives {drive.speed_mps * drive.duration_s:.0f} m at "
          f"{drive.speed_mps * 3.6:.0f} km/h", flush=True)

    db_url = f"sqlite:///{out / 'office.db'}"
    with LocalBroker() as broker:
        print(f"private Mosquitto at {broker.url}", flush=True)
        office = OfficeIngest(broker.url, db_url, out / "office-ingest.log")
        try:
            office.wait_subscribed()
            print(f"office ingest running (SQLite {out / 'office.db'})", flush=True)
            viewer = DemoSubscriber(broker.port, out)
            viewer.connected.wait(10)
            summary = _run_agent(drive, video, log, broker.url, out)
            stored = wait_stored(db_url, summary["detection_messages"])
            time.sleep(0.3)
            viewer.close()
        finally:
            office.stop()

    stats, table = office_stats(db_url, refresh=True)
    geojson = out / "cracks.geojson"
    exported = office_cli("export", "--db", db_url, "--format", "geojson", "--what", "cracks", "--out", str(geojson))
    office_cli("export", "--db", db_url, "--format", "geojson", "--what", "segments", "--out",
               str(out / "segments.geojson"))
    print(f"\nagent: {summary['frames']} frames processed ({summary['frames_skipped_coverage']} skipped: road "
          f"already imaged), inference p50 {summary['inference_ms_p50']} ms, {summary['detection_messages']} "
          f"detection messages, {summary['pending']} pending, {summary['dropped']} dropped; "
          f"{viewer.count['snapshots']} overlays in {viewer.snapshots}")
    print(f"office: {stored} of {summary['detection_messages']} detection messages stored\n")
    print("crack inventory (crackseg-office stats):")
    print(table)
    print(f"\nGeoJSON of the cracks: {geojson}" if exported.returncode == 0 else
          f"\nGeoJSON export failed: {exported.stderr.strip()[-500:]}")
    print(f"messages: {out / 'messages.jsonl'}")
    serve = office_cli("serve", "--help", timeout=60)
    if serve.returncode == 0:
        print(f"map and inventory page: crackseg-office serve --db {db_url} --port {SERVE_PORT}\n"
              f"  then open http://127.0.0.1:{SERVE_PORT}/")
    else:
        print("map: open the GeoJSON in QGIS or geojson.io; the web page comes with the office's serve command")
    print(f"demo took {time.monotonic() - started:.0f} s", flush=True)
    print(json.dumps({"agent": summary, "office": stats}), file=sys.stderr if getattr(args, "quiet", False)
          else sys.stdout)
    ok = (summary["pending"] == 0 and stored == summary["detection_messages"] and stats["cracks"] > 0
          and exported.returncode == 0)
    return 0 if ok else 1


def _run_agent(drive: SurveyDrive, video: Path, log: Path, url: str, out: Path) -> dict[str, Any]:
    cfg = load_config(None, {
        "device_id": DEVICE_ID, "mqtt.url": url, "state_dir": str(out / "state"), "http.enabled": False,
        **drive.agent_sections(video, log),
        "reporting.snapshots": {"enabled": True, "min_interval_s": 0.0, "only_with_cracks": True},
    })
    agent = Agent(cfg)
    agent.start()
    info = agent._model_info()
    print(f"agent running: model {info['name']} {info['version']} ({info['backend']} {info['precision']}), "
          f"position from the replayed GPS log", flush=True)
    agent.wait()
    return agent.shutdown()
