"""``crackseg-edge demo``: the whole agent on a generated survey clip, through a private broker.

What it shows a new user in one command: frames in, the shipped INT8 model segmenting
them, cracks measured in millimetres with a position, detections arriving over MQTT as a
back-office subscriber sees them, and overlay snapshots written to disk. The clip is
generated (drawn cracks on synthetic asphalt) because real survey footage cannot be
redistributed with the project.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.agent.app import Agent
from edge_agent.config.loader import load_config
from edge_agent.demo.broker import LocalBroker
from edge_agent.video.synthetic import write_survey_video

DEVICE_ID = "demo-van"


class DemoSubscriber:
    """A back-office client: prints each detection, keeps the messages and the snapshots."""

    def __init__(self, url_port: int, out: Path):
        self.out = out
        self.messages = (out / "messages.jsonl").open("w", encoding="utf-8")
        self.snapshots = out / "overlays"
        self.snapshots.mkdir(parents=True, exist_ok=True)
        self.count = {"detections": 0, "snapshots": 0, "health": 0, "status": 0}
        self.connected = threading.Event()
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="demo-office",
                                  protocol=paho.MQTTv5)
        self.client.on_connect = lambda c, u, f, rc, p: (c.subscribe(f"crackseg/{DEVICE_ID}/#", qos=1),
                                                         self.connected.set())
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", url_port)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        kind = msg.topic.rsplit("/", 1)[-1]
        with self._lock:
            if kind == "snapshots":
                self.count["snapshots"] += 1
                path = self.snapshots / f"snapshot_{self.count['snapshots']:03d}.jpg"
                path.write_bytes(msg.payload)
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
            elif kind == "status":
                print(f"[status] {body.get('state')} (model {body.get('model', {}).get('name')} "
                      f"{body.get('model', {}).get('version')})", flush=True)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
        self.messages.close()


def describe_detection(body: dict) -> str:
    cracks = body.get("cracks", [])
    parts = []
    for c in cracks[:3]:
        parts.append(f"{c.get('type')} {c.get('length_m', 0):.2f} m x {c.get('width_mean_mm', 0):.1f} mm "
                     f"({c.get('severity')}){' NEW' if c.get('first_sighting') else ''}")
    pos = body.get("position") or {}
    where = f" at {pos['lat']:.5f},{pos['lon']:.5f}" if pos.get("lat") is not None else ""
    more = f" +{len(cracks) - 3} more" if len(cracks) > 3 else ""
    return (f"[detections seq {body.get('seq')}] frame {body.get('frame', {}).get('index')}: "
            f"{body.get('crack_count')} crack(s){where}: " + "; ".join(parts) + more)


def run_demo(args) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "state", ignore_errors=True)  # each demo starts with an empty outbox
    shutil.rmtree(out / "overlays", ignore_errors=True)
    clip = write_survey_video(out / "survey_clip.mp4", args.frames, size=(640, 360), fps=10.0, seed=7,
                              speed_px=12)
    print(f"generated survey clip {clip} ({args.frames} frames, 640x360)", flush=True)
    with LocalBroker() as broker:
        print(f"started a private Mosquitto at {broker.url}", flush=True)
        sub = DemoSubscriber(broker.port, out)
        sub.connected.wait(10)
        cfg = load_config(None, {
            "device_id": DEVICE_ID, "camera.source": str(clip), "camera.realtime": False,
            "mqtt.url": broker.url, "state_dir": str(out / "state"), "http.enabled": False,
            "measurement.gsd_mm_per_px": 1.5,
            # the clip moves 12 px/frame at 10 fps and 1.5 mm/px: 0.18 m/s, which the tracker uses
            "position.provider": {"type": "fixed", "lat": 52.520008, "lon": 13.404954, "speed_mps": 0.18},
            "reporting.snapshots": {"enabled": True, "min_interval_s": 0.5},
        })
        agent = Agent(cfg, max_frames=args.frames)
        agent.start()
        info = agent._model_info()
        print(f"agent running: model {info['name']} {info['version']} ({info['backend']} {info['precision']}, "
              f"{info['strategy']} at native resolution)", flush=True)
        agent.wait()
        summary = agent.shutdown()
        time.sleep(0.5)  # let the subscriber receive the last acknowledged messages
        sub.close()
    print(f"\n{summary['frames']} frames processed at {summary['fps_out']:.1f} fps "
          f"(inference p50 {summary['inference_ms_p50']} ms); {sub.count['detections']} detection messages and "
          f"{sub.count['snapshots']} overlay snapshots received; {summary['pending']} pending, "
          f"{summary['dropped']} dropped", flush=True)
    print(f"messages: {out / 'messages.jsonl'}\noverlays: {sub.snapshots}", flush=True)
    print(json.dumps(summary), file=sys.stderr if getattr(args, "quiet", False) else sys.stdout)
    return 0 if summary["pending"] == 0 and sub.count["detections"] == summary["detection_messages"] else 1
