"""The agent under a service manager's eyes: sd_notify over a real unix datagram socket, the
frame-driven watchdog, /ready and health when the camera stalls and comes back."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request

import pytest

from tests.agent_run import DEVICE, agent, write_config
from tests.helpers import PortReservation, wait_until
from tests.media import MjpegServer
from tests.test_notify import FakeManager


class NotifySocket(FakeManager):
    """What systemd does for Type=notify (the datagram socket of test_notify), read line by line."""

    def lines(self, prefix: str) -> list[tuple[float, str]]:
        return [(t, line) for t, datagram in list(self.messages) for line in datagram.splitlines()
                if line.startswith(prefix)]

    def wait(self, prefix: str, n: int = 1, timeout: float = 30.0, after: float = 0.0) -> list[tuple[float, str]]:
        """At least ``n`` lines starting with ``prefix`` received after ``after`` (monotonic s)."""

        def found() -> list[tuple[float, str]] | None:
            lines = [(t, line) for t, line in self.lines(prefix) if t > after]
            return lines if len(lines) >= n else None

        return wait_until(found, timeout, lambda: f"{n}x {prefix!r} from the agent; got {self.messages[-10:]}")


def http_status(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.slow
def test_notify_watchdog_ready_and_health_follow_the_camera(tmp_path, mosquitto, subscriber, model_path):
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    camera = MjpegServer(size=(160, 120), fps=15).start()
    http_port = PortReservation()  # kept from anyone else until the agent's server binds over it
    port = http_port.port
    cfg = write_config(tmp_path, model_path, camera.url, mosquitto.url,
                       camera={"source": camera.url, "stall_timeout_s": 1.5, "reconnect_backoff_min_s": 0.2,
                               "reconnect_backoff_max_s": 1.0, "realtime": True},
                       http={"enabled": True, "port": port}, reporting={"every_frame": False})
    sub = subscriber(mosquitto.url, f"crackseg/{DEVICE}/health")
    proc = agent(cfg, env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"})
    base = f"http://127.0.0.1:{port}"
    try:
        ready_at = notify.wait("READY=1", timeout=60)[0][0]
        first_ping = notify.wait("WATCHDOG=1", n=3, timeout=30)[0][0]
        assert first_ping >= ready_at, "the watchdog starts only after the first processed frame"
        assert wait_until(lambda: http_status(base + "/ready")[0] == 200, 20, "/ready 200")
        assert http_status(base + "/health")[0] == 200
        code, info = http_status(base + "/model/info")
        assert code == 200 and info["model"]["name"] == "tiny"

        camera.stall()  # frames stop; reads block
        stalled_at = time.monotonic()
        wait_until(lambda: http_status(base + "/ready")[0] == 503, 20, "/ready 503 after the stall")
        # The health loop sends a STATUS= line every second: two after a 1.5 s grace prove the agent
        # kept running a further second and more (two watchdog ticks and more) with no frame.
        statuses = notify.wait("STATUS=", n=2, timeout=30, after=stalled_at + 1.5)
        late_pings = [t for t, _ in notify.lines("WATCHDOG=1") if stalled_at + 1.5 < t <= statuses[-1][0]]
        assert not late_pings, "no watchdog ping while no frame is processed"
        stalled_health = sub.wait_for(1, timeout=30, predicate=lambda m: m.json()["camera"]["stalls"] >= 1)
        assert stalled_health[-1].json()["camera"]["state"] in ("stalled", "reconnecting", "starting")

        camera.resume()
        resumed_at = time.monotonic()
        notify.wait("WATCHDOG=1", timeout=30)
        wait_until(lambda: [t for t, _ in notify.lines("WATCHDOG=1") if t > resumed_at], 30, "pings after resume")
        assert wait_until(lambda: http_status(base + "/ready")[0] == 200, 30, "/ready 200 after reconnect")
        recovered = sub.wait_for(1, timeout=30, predicate=lambda m: m.json()["camera"]["reconnects"] >= 1
                                 and m.json()["camera"]["state"] == "streaming")
        assert recovered[-1].json()["frames"]["processed"] > 0
        metrics = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        assert "crackseg" in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        camera.stop()
        http_port.release()
    assert proc.returncode == 0, err[-2000:]
    assert notify.lines("STOPPING=1")
    assert notify.lines("STATUS=")
    notify.close()
