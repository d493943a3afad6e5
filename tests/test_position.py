"""Position providers: NMEA parsing, NMEA over a real pty, gpsd (real gpsd via gpsfake when
installed, and a loopback server speaking gpsd's JSON protocol), fixed, config."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from edge_agent.config.position import PositionConfig
from edge_agent.position import (
    FixedPositionProvider,
    GpsdProvider,
    NmeaParser,
    NmeaSerialProvider,
    NoPositionProvider,
    PositionFix,
    PositionProvider,
    create_position_provider,
)
from edge_agent.position.nmea import KNOTS_TO_MPS, checksum
from tests.helpers import PortReservation, wait_until

LAT, LON = 48.1173, 11.516666666666667  # 4807.038 N, 01131.000 E


def sentence(body: str) -> str:
    return f"${body}*{checksum(body)}\r\n"


def epoch(t: str = "123519.00", lat: str = "4807.038,N", lon: str = "01131.000,E", quality: int = 1,
          status: str = "A", knots: float = 22.4, course: float = 84.4, sats: int = 8) -> list[str]:
    return [
        sentence(f"GPGGA,{t},{lat},{lon},{quality},{sats:02d},0.9,545.4,M,46.9,M,,"),
        sentence(f"GPRMC,{t},{status},{lat},{lon},{knots:05.1f},{course:05.1f},230394,003.1,W,A"),
    ]


# -- NMEA parsing ---------------------------------------------------------------------------
def test_parse_gga_rmc():
    p = NmeaParser()
    for line in epoch():
        p.feed(line)
    fix = p.fix()
    assert fix is not None and fix.has_fix
    assert (fix.lat, fix.lon) == (pytest.approx(LAT), pytest.approx(LON))
    assert fix.alt_m == pytest.approx(545.4)
    assert fix.speed_mps == pytest.approx(22.4 * KNOTS_TO_MPS)
    assert fix.heading_deg == pytest.approx(84.4)
    assert fix.satellites == 8 and fix.fix_quality == "gps"
    assert fix.fix_time == datetime(1994, 3, 23, 12, 35, 19, tzinfo=timezone.utc)
    assert p.accepted == 2 and p.rejected == 0


def test_bad_checksums_and_garbage_are_ignored():
    p = NmeaParser()
    for line in epoch():
        p.feed(line)
    good = epoch(lat="5000.000,N")[0]
    corrupted = good.replace("5000.000", "5000.001")  # checksum no longer matches
    assert p.feed(corrupted) is False
    assert p.feed("GPGGA,no dollar") is False
    assert p.feed(b"\xff\xfe$$garbage\r\n") is False
    assert p.feed("$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,\r\n") is False  # no checksum
    assert p.fix().lat == pytest.approx(LAT)
    assert p.rejected == 4
    lenient = NmeaParser(require_checksum=False)
    assert lenient.feed("$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,") is True
    assert lenient.fix().lat == pytest.approx(LAT)


def test_no_fix_sentences():
    p = NmeaParser()
    for line in epoch():
        p.feed(line)
    p.feed(sentence("GPGGA,123520.00,,,,,0,00,99.9,,M,,M,,"))
    assert p.fix() is None
    p.feed(epoch(t="123521.00")[0])
    assert p.fix() is not None
    p.feed(sentence("GPRMC,123522.00,V,,,,,,,230394,,,N"))
    assert p.fix() is None


def test_vtg_gsa_hemispheres_and_talkers():
    p = NmeaParser()
    p.feed(sentence("GNGGA,010203.00,3352.000,S,15112.000,W,4,12,0.6,10.0,M,20.0,M,1.0,0000"))
    p.feed(sentence("GNVTG,270.0,T,,M,10.0,N,18.5,K,D"))
    p.feed(sentence("GNGSA,A,3,01,02,03,04,,,,,,,,,1.2,0.6,1.0"))
    fix = p.fix()
    assert fix.lat == pytest.approx(-33.866667) and fix.lon == pytest.approx(-151.2)
    assert fix.heading_deg == 270.0 and fix.speed_mps == pytest.approx(10 * KNOTS_TO_MPS)
    assert fix.fix_quality == "rtk_fixed" and fix.fix_mode == "3d" and fix.satellites == 12
    assert fix.fix_time is None  # no RMC date seen yet


# -- NMEA over a real serial line (pty) -----------------------------------------------------
@pytest.fixture
def pty_pair():
    master, slave = os.openpty()
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


def test_nmea_serial_over_pty(pty_pair):
    master, device = pty_pair
    with NmeaSerialProvider(device, 9600, max_fix_age_s=30, reconnect_initial_s=0.05) as gps:
        wait_until(gps.connected.is_set, what="the serial port to open")
        assert not gps.latest().has_fix and gps.latest().fix_quality == "none"
        os.write(master, "".join(epoch()).encode())
        fix = wait_until(lambda: gps.latest() if gps.latest().has_fix else None, what="a fix")
        assert fix.source == "nmea" and fix.lat == pytest.approx(LAT) and fix.age_s >= 0
        # A corrupted sentence with another position changes nothing; a good one does.
        bad = epoch(t="123520.00", lat="5000.000,N")[0].replace("5000.000", "5100.000")
        os.write(master, bad.encode() + "".join(epoch(t="123521.00", lat="4900.000,N")).encode())
        wait_until(lambda: gps.latest().lat == pytest.approx(49.0), what="the new position")
        assert gps.parser.rejected >= 1
        os.write(master, sentence("GPRMC,123522.00,V,,,,,,,230394,,,N").encode())
        wait_until(lambda: not gps.latest().has_fix, what="the fix to be lost")


def test_nmea_serial_waits_for_a_device_that_appears_later(pty_pair, tmp_path, caplog):
    master, real_device = pty_pair
    link = tmp_path / "gps0"  # like a USB receiver plugged in after boot
    with NmeaSerialProvider(str(link), reconnect_initial_s=0.05, reconnect_max_s=0.2) as gps:
        wait_until(lambda: sum("retrying" in r.getMessage() and str(link) in r.getMessage()
                               for r in caplog.records) >= 2, what="two failed opens logged")
        assert gps.opens == 0
        link.symlink_to(real_device)
        wait_until(gps.connected.is_set, what="the device to be opened")
        os.write(master, "".join(epoch()).encode())
        wait_until(lambda: gps.latest().has_fix, what="a fix")


# -- fix ageing ------------------------------------------------------------------------------
def test_fix_age_is_computed_at_read_time_and_stale_fixes_are_none():
    now = [100.0]
    provider = PositionProvider(max_fix_age_s=5.0, clock=lambda: now[0])
    assert provider.latest() == PositionFix()
    provider.publish(PositionFix(lat=1.0, lon=2.0, fix_quality="gps", source="test"))
    now[0] = 101.5
    assert provider.latest().age_s == pytest.approx(1.5)
    now[0] = 104.0
    assert provider.latest().age_s == pytest.approx(4.0) and provider.latest().has_fix
    now[0] = 106.0
    stale = provider.latest()
    assert not stale.has_fix and stale.lat is None and stale.fix_quality == "none"
    assert stale.age_s == pytest.approx(6.0)
    d = stale.to_dict()
    assert d["lat"] is None and d["fix_quality"] == "none" and json.loads(json.dumps(d)) == d


def test_fixed_and_none_providers():
    fixed = FixedPositionProvider(52.52, 13.405, alt_m=34.0, speed_mps=3.0)
    fix = fixed.latest()
    assert fix.has_fix and fix.fix_quality == "manual" and fix.age_s == 0.0 and fix.speed_mps == 3.0
    assert not NoPositionProvider().latest().has_fix


# -- gpsd JSON protocol over loopback ----------------------------------------------------------
TPV = {"class": "TPV", "device": "/dev/ttyACM0", "mode": 3, "status": 2, "time": "2024-05-01T10:00:00.000Z",
       "lat": 52.5, "lon": 13.4, "altMSL": 34.5, "altHAE": 80.0, "speed": 12.5, "track": 91.0}


class FakeGpsd:
    """A TCP server speaking gpsd's documented JSON protocol, one script per connection."""

    def __init__(self, scripts: list[list]):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.scripts = scripts
        self.commands: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for script in self.scripts:
            conn, _ = self.server.accept()
            with conn:
                conn.sendall(b'{"class":"VERSION","release":"3.25","rev":"3.25","proto_major":3,"proto_minor":15}\r\n')
                self.commands.append(conn.recv(1024))
                for item in script:
                    if isinstance(item, (int, float)):
                        time.sleep(item)
                    else:
                        conn.sendall(item if isinstance(item, bytes) else (json.dumps(item) + "\r\n").encode())
                time.sleep(0.2)

    def close(self) -> None:
        self.server.close()


def test_gpsd_protocol_fix_satellites_and_reconnect():
    line = (json.dumps(TPV) + "\r\n").encode()
    fake = FakeGpsd([
        [{"class": "DEVICES", "devices": []}, {"class": "WATCH", "enable": True, "json": True},
         {"class": "SKY", "uSat": 9, "nSat": 14}, line[:40], 0.1, line[40:], 0.3],   # a report split in two reads
        [{"class": "TPV", "mode": 1}, 0.5],                                          # after reconnect: no fix
    ])
    try:
        with GpsdProvider("127.0.0.1", fake.port, reconnect_initial_s=0.05, reconnect_max_s=0.1) as gps:
            fix = wait_until(lambda: gps.latest() if gps.latest().has_fix else None, what="a gpsd fix")
            assert (fix.lat, fix.lon, fix.alt_m) == (52.5, 13.4, 34.5)
            assert fix.speed_mps == 12.5 and fix.heading_deg == 91.0
            assert fix.fix_mode == "3d" and fix.fix_quality == "dgps" and fix.satellites == 9
            assert fix.fix_time == datetime(2024, 5, 1, 10, tzinfo=timezone.utc) and fix.source == "gpsd"
            wait_until(lambda: gps.connections == 2, what="the reconnect")
            wait_until(lambda: not gps.latest().has_fix, what="mode 1 to clear the fix")
        watch = json.loads(fake.commands[0].split(b"=", 1)[1].rstrip(b";\r\n"))
        assert watch == {"enable": True, "json": True}
    finally:
        fake.close()


# -- the real gpsd, fed by gpsfake --------------------------------------------------------------
@pytest.mark.skipif(not (shutil.which("gpsfake") and (shutil.which("gpsd") or os.path.exists("/usr/sbin/gpsd"))),
                    reason="gpsd/gpsfake not installed (apt-get install gpsd gpsd-clients)")
def test_real_gpsd_via_gpsfake(tmp_path):
    log = tmp_path / "drive.nmea"
    lines = []
    for i in range(30):
        lines += epoch(t=f"1200{i:02d}.00", knots=19.4, course=270.0)
        lines.append(sentence("GPGSA,A,3,04,05,09,12,24,,,,,,,,2.5,1.3,2.1"))
    log.write_text("".join(lines))
    reservation = PortReservation()  # gpsd binds over it; nobody else can take the port, also between runs
    port = reservation.port
    env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin"}

    def gpsfake() -> subprocess.Popen:
        return subprocess.Popen(["gpsfake", "-q", "-c", "0.02", "-P", str(port), str(log)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    proc = gpsfake()
    try:
        with GpsdProvider("127.0.0.1", port, max_fix_age_s=1.0, reconnect_initial_s=0.1,
                          reconnect_max_s=0.5) as gps:
            # gpsd's first report of a cycle can come from GGA alone (no speed yet): wait for a full one.
            fix = wait_until(lambda: (lambda f: f if f.has_fix and f.speed_mps is not None else None)(gps.latest()),
                           timeout=30, what="a gpsd fix with speed")
            assert fix.lat == pytest.approx(LAT) and fix.lon == pytest.approx(LON)
            assert fix.speed_mps == pytest.approx(19.4 * KNOTS_TO_MPS, abs=0.01)
            assert fix.heading_deg == pytest.approx(270.0)
            assert fix.fix_mode in ("2d", "3d") and fix.fix_quality == "gps"
            # gpsd stops: the fix ages out; gpsd comes back: the provider reconnects by itself.
            os.killpg(proc.pid, 15)
            proc.wait(timeout=10)
            wait_until(lambda: not gps.latest().has_fix, timeout=15, what="the fix to go stale")
            assert gps.latest().fix_quality == "none"
            proc = gpsfake()
            wait_until(lambda: gps.connections >= 2 and gps.latest().has_fix, timeout=30, what="reconnect + fix")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=10)
        reservation.release()


# -- config --------------------------------------------------------------------------------------
def test_position_config_union():
    assert PositionConfig().provider.type == "none"
    assert isinstance(create_position_provider(PositionConfig()), NoPositionProvider)
    cfg = PositionConfig.model_validate({"provider": {"type": "gpsd", "port": 12947}, "max_fix_age_s": 2})
    gps = create_position_provider(cfg)
    assert isinstance(gps, GpsdProvider) and gps.port == 12947 and gps.max_fix_age_s == 2
    cfg = PositionConfig.model_validate({"provider": {"type": "nmea", "device": "/dev/ttyACM0", "baudrate": 38400}})
    nmea = create_position_provider(cfg)
    assert isinstance(nmea, NmeaSerialProvider) and nmea.baudrate == 38400
    cfg = PositionConfig.model_validate({"provider": {"type": "fixed", "lat": 1.5, "lon": 2.5}})
    assert create_position_provider(cfg).latest().lat == 1.5


@pytest.mark.parametrize("bad,match", [
    ({"provider": {"type": "gpsd", "device": "/dev/ttyACM0"}}, "Extra inputs"),   # an nmea key under gpsd
    ({"provider": {"type": "nmea"}}, "device"),
    ({"provider": {"type": "fixed", "lat": 95, "lon": 0}}, "less than or equal"),
    ({"provider": {"type": "glonass"}}, "does not match any of the expected tags"),
    ({"provider": {"type": "none"}, "max_age": 3}, "Extra inputs"),
])
def test_position_config_rejects(bad, match):
    with pytest.raises(ValidationError, match=match):
        PositionConfig.model_validate(bad)
