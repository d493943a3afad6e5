"""The crack inventory and the road segments against ground truth: two passes over the same road by two
vehicles with realistic GNSS errors give one record per physical crack and reuse the segments."""

from __future__ import annotations

import math
import random
import threading
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pytest
from shapely import LineString, Point
from sqlalchemy import func, select

from office import query
from office.condition import condition_index, deduct, rating
from office.geo import enu_offsets
from office.ingest.rows import Incoming
from office.ingest.writer import BatchWriter
from office.refresh import rebuild, refresh
from office.store.database import Database
from office.synthetic import ArcTrack, Drive, StraightTrack, Track, WorldCrack, crack_on_track, encode, simulate
from tests.office.fleet import ORIGIN

NOW = datetime(2024, 6, 1, tzinfo=timezone.utc)


def world(track: Track, seed: int) -> list[WorldCrack]:
    """Cracks every 4-6 m: transverse and diagonal ones that fit in the camera footprint (2 m across),
    longitudinal ones up to 3 m, longer than the footprint along the road (1.15 m)."""
    rng = random.Random(seed)
    out, s, i = [], 4.0, 0
    while s < track.length_m - 4:
        kind = ("transverse", "longitudinal", "diagonal")[i % 3]
        angle = {"transverse": 90.0, "longitudinal": 0.0, "diagonal": 45.0}[kind] + rng.uniform(-6, 6)
        length = {"transverse": rng.uniform(0.8, 1.4), "longitudinal": rng.uniform(1.0, 3.0),
                  "diagonal": rng.uniform(0.6, 1.0)}[kind]
        sev = ("low", "medium", "high")[i % 3]
        out.append(crack_on_track(f"c{i}", track, ORIGIN, s, rng.uniform(-0.3, 0.3), length, angle, crack_type=kind,
                                  severity=sev, width_mean_mm={"low": 4.0, "medium": 20.0, "high": 90.0}[sev],
                                  width_max_mm=120.0 if sev == "high" else 30.0))
        s += rng.uniform(4.0, 6.0) + (length if kind == "longitudinal" else 0)
        i += 1
    return out


def gnss_bias(rng: random.Random) -> tuple[float, float]:
    """A receiver's slowly varying error: 0.3-0.5 m in any direction, constant over one short pass."""
    r, a = rng.uniform(0.3, 0.5), rng.uniform(0, 2 * math.pi)
    return r * math.cos(a), r * math.sin(a)


def two_passes(track: Track, seed: int) -> tuple[list[WorldCrack], list[dict[str, Any]], list[dict[str, Any]]]:
    rng = random.Random(seed)
    cracks = world(track, seed)
    first = Drive("van-1", track, ORIGIN, seed=seed, speed_mps=6.0, fps=10.0, gps_bias_m=gnss_bias(rng),
                  gps_jitter_m=0.05, heading_noise_deg=0.3)
    second = Drive("van-2", track, ORIGIN, seed=seed + 1, speed_mps=9.0, fps=15.0, gps_bias_m=gnss_bias(rng),
                   gps_jitter_m=0.05, heading_noise_deg=0.3, start=datetime(2024, 5, 8, 14, 0, tzinfo=timezone.utc))
    return cracks, list(simulate(first, cracks)), list(simulate(second, cracks))


def store(db: Database, msgs: list[dict[str, Any]], worker: str = "w") -> None:
    BatchWriter(db, worker).write([Incoming(f"crackseg/{m['device_id']}/detections", encode(m), 1, 0, False, NOW)
                                   for m in msgs])


def count(db: Database, table: Any) -> int:
    with db.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def metres(lonlat: Any) -> np.ndarray:
    pts = np.asarray(lonlat, dtype=float)
    e, n = enu_offsets(ORIGIN[0], ORIGIN[1], pts[:, 0], pts[:, 1])
    return np.column_stack([e, n])


def match_truth(db: Database, cracks: list[WorldCrack]) -> dict[str, dict[str, Any]]:
    """Each world crack -> the inventory crack nearest to it (asserting a one-to-one match)."""
    inventory = list(query.cracks(db))
    truth = {c.name: LineString(metres(c.lonlat)) for c in cracks}
    found: dict[str, dict[str, Any]] = {}
    for rec in inventory:
        assert rec["coordinates"], rec
        line = LineString(metres(rec["coordinates"]))
        mid = line.interpolate(0.5, normalized=True)
        name = min(truth, key=lambda n: truth[n].distance(mid))
        assert name not in found, f"{name} is in the inventory twice: {found[name]['id']} and {rec['id']}"
        found[name] = rec | {"_offset_m": truth[name].distance(mid), "_line": line}
    return found


@pytest.mark.parametrize("shape", ["straight", "arc"])
def test_two_vehicles_two_passes_one_record_per_crack(shape: str, sqlite_url: str) -> None:
    track: Track = (StraightTrack(heading_deg=75.0, length_m=90.0) if shape == "straight"
                    else ArcTrack(radius_m=60.0, start_heading_deg=10.0, length_m=90.0, right_turn=False))
    cracks, first, second = two_passes(track, seed=11 if shape == "straight" else 12)
    db = Database.open(sqlite_url)
    store(db, first)
    refresh(db)
    assert count(db, db.t.cracks) == len(cracks)
    segments_after_first = count(db, db.t.segments)
    assert segments_after_first >= 7

    store(db, second)
    refresh(db)
    assert count(db, db.t.cracks) == len(cracks), "the second pass must not add cracks"
    found = match_truth(db, cracks)
    assert set(found) == {c.name for c in cracks}
    for c in cracks:
        rec = found[c.name]
        true_len = LineString(metres(c.lonlat)).length
        assert rec["devices"] == "van-1,van-2" and rec["sightings"] == 2, rec
        # the line sits between the two passes' GNSS offsets (0.3-0.5 m each)
        assert rec["_offset_m"] < 0.6, f"{c.name}: {rec['_offset_m']:.2f} m from the true crack"
        assert abs(rec["length_m"] - true_len) < max(0.25, 0.15 * true_len), (c.name, rec["length_m"], true_len)
        assert rec["type"] == c.crack_type and rec["severity"] == c.severity
        assert rec["width_median_mm"] == c.width_mean_mm and rec["width_max_mm"] == c.width_max_mm
    # the second pass drove on the first pass's segments: new ones only past its ends
    with db.connect() as conn:
        s = db.t.segments.c
        van2 = conn.execute(select(func.count(), func.coalesce(func.sum(s.length_m), 0.0))
                            .where(s.device_id == "van-2")).one()
    assert van2[0] <= 2 and van2[1] < 3.0, f"van-2 made {van2[0]} segments ({van2[1]:.1f} m) on known road"

    before = {(r["type"], round(r["length_m"], 1)) for r in query.cracks(db)}
    rebuild(db)
    assert count(db, db.t.cracks) == len(cracks)
    assert {(r["type"], round(r["length_m"], 1)) for r in query.cracks(db)} == before
    db.close()


def test_interleaved_workers_and_refreshes_in_any_order(pg_url: str) -> None:
    """Two writers store both passes in random interleaved batches while two refreshers run at the same
    time (real PostgreSQL locks): the inventory is the same as when everything came in order."""
    track = StraightTrack(heading_deg=200.0, length_m=70.0)
    cracks, first, second = two_passes(track, seed=21)
    msgs = first + second
    random.Random(5).shuffle(msgs)
    db = Database.open(pg_url)
    batches = [msgs[i:i + 7] for i in range(0, len(msgs), 7)]
    errors: list[BaseException] = []

    def writer(name: str, part: list[list[dict[str, Any]]]) -> None:
        try:
            for b in part:
                store(db, b, name)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    stop = threading.Event()

    def refresher() -> None:
        try:
            while not stop.is_set():
                refresh(db, wait=False)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=("a", batches[0::2])),
               threading.Thread(target=writer, args=("b", batches[1::2]))]
    refreshers = [threading.Thread(target=refresher) for _ in range(2)]
    for t in threads + refreshers:
        t.start()
    for t in threads:
        t.join(timeout=300)
    stop.set()
    for t in refreshers:
        t.join(timeout=300)
    assert not errors, errors
    refresh(db)
    s = query.stats(db)
    assert s["messages"] == len(msgs) and s["observations_pending"] == 0 and s["seq_gaps"] == 0
    assert s["cracks"] == len(cracks)
    assert set(match_truth(db, cracks)) == {c.name for c in cracks}
    db.close()


def test_a_track_split_by_the_tracker_is_still_one_crack(sqlite_url: str) -> None:
    track = StraightTrack(heading_deg=0.0, length_m=30.0)
    long_crack = crack_on_track("long", track, ORIGIN, 12.0, 0.1, 3.0, 2.0, crack_type="longitudinal")
    msgs = list(simulate(Drive("van-1", track, ORIGIN, seed=3), [long_crack]))
    half = len(msgs) // 2
    for m in msgs[half:]:                                   # the tracker lost it half way
        for c in m["cracks"]:
            c["track_id"] += "-again"
    db = Database.open(sqlite_url)
    store(db, msgs)
    refresh(db)
    (rec,) = list(query.cracks(db))
    assert rec["sightings"] == 2 and abs(rec["length_m"] - 3.0) < 0.3
    db.close()


def test_unplaceable_observations_are_kept_by_track(sqlite_url: str) -> None:
    """Schema v1 (no camera) and fixes without a heading: cracks are counted, not put on the map."""
    track = StraightTrack(heading_deg=0.0, length_m=20.0)
    cracks = [crack_on_track(f"c{i}", track, ORIGIN, 5.0 + 5 * i, 0.0, 1.0, 90.0) for i in range(3)]
    v1 = list(simulate(Drive("old-van", track, ORIGIN, schema_version=1, seed=1), cracks))
    no_heading = list(simulate(Drive("van-9", track, ORIGIN, seed=2), cracks))
    for m in no_heading:
        m["position"]["heading_deg"] = None
    db = Database.open(sqlite_url)
    store(db, v1 + no_heading)
    refresh(db)
    s = query.stats(db)
    assert s["cracks"] == 6 and s["cracks_unplaced"] == 6
    # the v1 vehicle's positions still survey the road; the one without heading cannot
    assert {r["device_id"] for r in query.segments(db)} == {"old-van"}
    assert s["observations_unplaced"] == s["observations"] > 0
    assert all(r["coordinates"] is None for r in query.cracks(db))
    db.close()


def test_segments_carry_density_severity_mix_and_condition(sqlite_url: str) -> None:
    track = StraightTrack(heading_deg=90.0, length_m=40.0)
    cracks = [crack_on_track("t", track, ORIGIN, 15.0, 0.0, 1.0, 90.0, severity="medium", width_mean_mm=20.0)]
    db = Database.open(sqlite_url)
    store(db, list(simulate(Drive("van-1", track, ORIGIN, every_frame=True), cracks)))
    refresh(db)
    segs = list(query.segments(db))
    full = [s for s in segs if abs(s["length_m"] - 10.0) < 0.01]
    assert len(full) == 4 and len(segs) <= 5, segs       # and maybe the start of a 5th at the drive's end
    cracked = [s for s in segs if s["crack_count"]]
    assert len(cracked) == 1
    seg = cracked[0]
    assert seg["survey_width_m"] == pytest.approx(1280 * 1.6 / 1000)       # the camera footprint across
    assert seg["length_medium_m"] == pytest.approx(seg["crack_length_m"]) and seg["length_low_m"] == 0
    assert seg["crack_density_m_per_m2"] == pytest.approx(seg["crack_length_m"] / seg["area_m2"], rel=1e-3)
    expected = condition_index({"medium": seg["crack_length_m"]}, seg["area_m2"])
    assert seg["condition_index"] == expected and seg["condition_class"] == rating(expected)
    assert all(s["condition_index"] == 100.0 for s in segs if not s["crack_count"])
    db.close()


def test_condition_index_rules() -> None:
    assert deduct("low", 0.0) == 0.0
    assert deduct("low", 2.7) == pytest.approx(6.88, abs=0.01)        # anchors named in office.condition
    assert deduct("medium", 8.7) == pytest.approx(25.03, abs=0.01)
    assert deduct("high", 10.0) > deduct("medium", 10.0) > deduct("low", 10.0)
    assert condition_index({}, 35.0) == 100.0
    assert condition_index({"low": 100.0, "medium": 100.0, "high": 100.0}, 10.0) == 0.0
    a = condition_index({"low": 1.0}, 35.0)
    b = condition_index({"low": 3.0}, 35.0)
    c = condition_index({"low": 1.0, "high": 1.0}, 35.0)
    assert 100 > a > b and a > c
    assert [rating(x) for x in (100, 86, 85.9, 71, 56, 41, 26, 11, 10.9, 0)] == [
        "good", "good", "satisfactory", "satisfactory", "fair", "poor", "very poor", "serious", "failed", "failed"]


def test_geolocated_points_far_from_the_truth_are_not_merged() -> None:
    """Two parallel cracks 2 m apart stay two records (beyond the 1 m tolerance)."""
    from office.config import InventoryConfig
    from office.inventory import merged_line
    from office.lines import frame_for, overlap_share

    a = np.array([[ORIGIN[0], ORIGIN[1]], [ORIGIN[0] + 2e-5, ORIGIN[1]]])
    b = a + [0, 2.0 / 111_000]
    frame = frame_for(*ORIGIN)
    share, dist = overlap_share(frame.to_xy(a), frame.to_xy(b), InventoryConfig().tolerance_m)
    assert share == 0.0 and dist == pytest.approx(2.0, abs=0.01)
    merged = merged_line([a, a + [0, 0.2 / 111_000]], InventoryConfig())
    assert merged is not None and abs(merged[1] - LineString(frame.to_xy(a)).length) < 0.05
    assert Point(frame.to_xy(merged[0].mean(axis=0).reshape(1, 2))[0]).distance(
        LineString(frame.to_xy(a))) == pytest.approx(0.1, abs=0.02)
