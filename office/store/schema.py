"""The office database: one SQLAlchemy Core definition for SQLite and PostgreSQL/PostGIS.

Tables fall in three groups (docs/office.md, "Data model", says what each column means):

- what arrived, one row per message, written only by ingest: ``detection_messages`` (with the
  vehicle position as a point), ``crack_observations`` (one row per crack per message, with its
  geolocated line), ``snapshots``, ``status_messages``, ``health_messages``, ``cmd_responses``,
  ``devices`` (latest status and health per vehicle), ``quarantine``, ``ingest_counters``;
- what the refresh step derives, written only under the refresh lock: ``cracks`` (the
  inventory), ``crack_tracks``, ``segments``, ``segment_builders``; the columns
  ``crack_observations.crack_id`` and ``detection_messages.segment_id``/``segment_state``;
- ``office_meta``: the schema version and the analysis settings every process shares.

Ingest never updates a row the refresh step writes and vice versa, which is why two ingest
workers and a refresh can run at the same time without locking each other out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.types import TypeEngine

from office.store.types import UtcDateTime, geometry, raw_json

SCHEMA_VERSION = "1"


def _id_type(dialect: str) -> TypeEngine[int]:
    # SQLite only auto-increments an INTEGER PRIMARY KEY (its rowid); it is 64-bit anyway
    return Integer() if dialect == "sqlite" else BigInteger()


@dataclass(frozen=True)
class Tables:
    metadata: MetaData
    meta: Table
    detection_messages: Table
    crack_observations: Table
    cracks: Table
    crack_tracks: Table
    segments: Table
    segment_builders: Table
    snapshots: Table
    status_messages: Table
    health_messages: Table
    cmd_responses: Table
    devices: Table
    quarantine: Table
    ingest_counters: Table


def _where(dialect: str, condition: str) -> dict[str, Any]:
    """A partial-index condition for the dialect (both support them)."""
    return {f"{dialect}_where": text(condition)}


def build_tables(dialect: str) -> Tables:
    """The tables for ``dialect`` ("sqlite" or "postgresql")."""
    md = MetaData()
    pk = _id_type(dialect)
    point, line = geometry(dialect, "POINT"), geometry(dialect, "LINESTRING")
    js = raw_json(dialect)
    gist = dialect == "postgresql"

    def spatial_index(table: str, column: str = "geom") -> list[Index]:
        return [Index(f"ix_{table}_{column}_gist", column, postgresql_using="gist")] if gist else []

    meta = Table("office_meta", md, Column("key", String(64), primary_key=True), Column("value", Text, nullable=False))

    detection_messages = Table(
        "detection_messages", md,
        Column("id", pk, primary_key=True, autoincrement=True),
        Column("msg_id", String(32), nullable=False, unique=True),
        Column("device_id", String(64), nullable=False),
        Column("seq", BigInteger, nullable=False),
        Column("schema_version", SmallInteger, nullable=False),
        Column("ts", UtcDateTime, nullable=False, comment="frame capture time (UTC)"),
        Column("sent_ts", UtcDateTime, nullable=False),
        Column("received_at", UtcDateTime, nullable=False),
        Column("frame_index", BigInteger, nullable=False),
        Column("frame_width", Integer, nullable=False),
        Column("frame_height", Integer, nullable=False),
        Column("lat", Float), Column("lon", Float), Column("heading_deg", Float), Column("speed_mps", Float),
        Column("fix_quality", String(32)),
        Column("footprint_across_m", Float, comment="camera footprint across the travel direction (v2)"),
        Column("crack_count", Integer, nullable=False),
        Column("cracks_omitted", Integer, nullable=False),
        Column("model_name", String(128)), Column("model_version", String(64)),
        Column("geom", point, comment="vehicle (GPS antenna) position at capture time"),
        Column("segment_id", BigInteger, comment="road segment this position lies on (refresh step)"),
        Column("segment_state", SmallInteger, nullable=False, server_default=text("0"),
               comment="0 = not yet placed on a segment by the refresh step, 1 = done"),
        Column("payload", js, nullable=False),
        Index("ix_detection_messages_device_seq", "device_id", "seq"),
        Index("ix_detection_messages_segment", "segment_id"),
        Index("ix_detection_messages_pending", "device_id", "ts", **_where(dialect, "segment_state = 0")),
        *spatial_index("detection_messages"),
    )

    crack_observations = Table(
        "crack_observations", md,
        Column("id", pk, primary_key=True, autoincrement=True),
        Column("message_id", BigInteger, ForeignKey("detection_messages.id", ondelete="CASCADE"), nullable=False),
        Column("device_id", String(64), nullable=False),
        Column("track_id", String(128), nullable=False),
        Column("ts", UtcDateTime, nullable=False),
        Column("frame_index", BigInteger, nullable=False),
        Column("first_sighting", Boolean, nullable=False),
        Column("type", String(16), nullable=False),
        Column("severity", String(8), nullable=False),
        Column("length_m", Float, nullable=False),
        Column("width_mean_mm", Float, nullable=False),
        Column("width_max_mm", Float, nullable=False),
        Column("area_m2", Float, nullable=False),
        Column("orientation_deg", Float, nullable=False),
        Column("confidence", Float),
        Column("clipped", Boolean, nullable=False, comment="an end of its polyline touches the frame border: "
                                                           "only part of the crack was in view"),
        Column("geom", line, comment="the crack's line in this frame, WGS84; null when it could not be placed"),
        Column("crack_id", BigInteger, comment="inventory crack (refresh step); null = not merged yet"),
        Index("ix_crack_observations_crack", "crack_id"),
        Index("ix_crack_observations_message", "message_id"),
        Index("ix_crack_observations_device_ts", "device_id", "ts"),
        Index("ix_crack_observations_frame", "device_id", "frame_index"),
        Index("ix_crack_observations_pending", "ts", **_where(dialect, "crack_id IS NULL")),
        *spatial_index("crack_observations"),
    )

    cracks = Table(
        "cracks", md,
        Column("id", pk, primary_key=True, autoincrement=True),
        Column("geom", line, comment="merged centreline, WGS84; null when no observation could be placed"),
        Column("min_lon", Float), Column("min_lat", Float), Column("max_lon", Float), Column("max_lat", Float),
        Column("first_seen", UtcDateTime, nullable=False),
        Column("last_seen", UtcDateTime, nullable=False),
        Column("observations", Integer, nullable=False),
        Column("sightings", Integer, nullable=False, comment="distinct (device, track): passes that saw it"),
        Column("devices", Text, nullable=False, comment="comma-separated device ids"),
        Column("device_count", Integer, nullable=False),
        Column("length_m", Float, nullable=False),
        Column("width_max_mm", Float, nullable=False),
        Column("width_median_mm", Float, nullable=False),
        Column("type", String(16), nullable=False),
        Column("severity", String(8), nullable=False),
        Column("best_snapshot_id", BigInteger),
        Column("segment_id", BigInteger),
        Column("updated_at", UtcDateTime, nullable=False),
        Index("ix_cracks_bbox", "min_lat", "min_lon"),
        Index("ix_cracks_last_seen", "last_seen"),
        Index("ix_cracks_segment", "segment_id"),
        *spatial_index("cracks"),
    )

    crack_tracks = Table(
        "crack_tracks", md,
        Column("device_id", String(64), primary_key=True),
        Column("track_id", String(128), primary_key=True),
        Column("crack_id", BigInteger, nullable=False),
        Index("ix_crack_tracks_crack", "crack_id"),
    )

    segments = Table(
        "segments", md,
        Column("id", pk, primary_key=True, autoincrement=True),
        Column("geom", line, nullable=False, comment="the driven track along this segment, WGS84"),
        Column("min_lon", Float), Column("min_lat", Float), Column("max_lon", Float), Column("max_lat", Float),
        Column("length_m", Float, nullable=False),
        Column("heading_deg", Float, nullable=False, comment="direction of travel, start to end"),
        Column("complete", Boolean, nullable=False, comment="false while a drive is still extending it"),
        Column("device_id", String(64), nullable=False, comment="the vehicle whose drive created it"),
        Column("first_seen", UtcDateTime, nullable=False),
        Column("last_seen", UtcDateTime, nullable=False),
        Column("survey_width_m", Float, nullable=False),
        Column("area_m2", Float, nullable=False),
        Column("crack_count", Integer, nullable=False, server_default=text("0")),
        Column("crack_length_m", Float, nullable=False, server_default=text("0")),
        Column("length_low_m", Float, nullable=False, server_default=text("0")),
        Column("length_medium_m", Float, nullable=False, server_default=text("0")),
        Column("length_high_m", Float, nullable=False, server_default=text("0")),
        Column("crack_density_m_per_m2", Float, nullable=False, server_default=text("0")),
        Column("condition_index", Float, nullable=False, server_default=text("100")),
        Column("condition_class", String(16), nullable=False, server_default=text("'good'")),
        Column("updated_at", UtcDateTime, nullable=False),
        Index("ix_segments_bbox", "min_lat", "min_lon"),
        *spatial_index("segments"),
    )

    segment_builders = Table(
        "segment_builders", md,
        Column("device_id", String(64), primary_key=True),
        Column("open_segment_id", BigInteger, comment="the segment this vehicle's drive is still extending"),
        Column("last_segment_id", BigInteger, comment="the segment of its latest position"),
        Column("last_lon", Float), Column("last_lat", Float), Column("last_heading", Float),
        Column("last_ts", UtcDateTime),
    )

    snapshots = Table(
        "snapshots", md,
        Column("id", pk, primary_key=True, autoincrement=True),
        Column("msg_id", String(32), nullable=False, unique=True),
        Column("device_id", String(64), nullable=False),
        Column("seq", BigInteger, nullable=False),
        Column("ts", UtcDateTime, nullable=False),
        Column("sent_ts", UtcDateTime),
        Column("received_at", UtcDateTime, nullable=False),
        Column("frame_index", BigInteger),
        Column("crack_count", Integer),
        Column("content_type", String(64), nullable=False),
        Column("size_bytes", Integer, nullable=False),
        Column("jpeg", LargeBinary, nullable=False),
        Column("meta", js, nullable=False),
        Column("linked", SmallInteger, nullable=False, server_default=text("0"),
               comment="0 = not yet considered for the cracks' best snapshot"),
        Index("ix_snapshots_frame", "device_id", "frame_index"),
        Index("ix_snapshots_ts", "device_id", "ts"),
        Index("ix_snapshots_pending", "id", **_where(dialect, "linked = 0")),
    )

    def history(name: str, *extra: Column[Any]) -> Table:
        return Table(
            name, md,
            Column("id", pk, primary_key=True, autoincrement=True),
            Column("msg_id", String(32), nullable=False, unique=True),
            Column("device_id", String(64), nullable=False),
            Column("seq", BigInteger, nullable=False),
            Column("ts", UtcDateTime, nullable=False),
            Column("sent_ts", UtcDateTime, nullable=False),
            Column("received_at", UtcDateTime, nullable=False),
            *extra,
            Column("payload", js, nullable=False),
            Index(f"ix_{name}_device_ts", "device_id", "ts"),
        )

    status_messages = history("status_messages", Column("state", String(16), nullable=False),
                              Column("retained", Boolean, nullable=False))
    health_messages = history("health_messages")
    cmd_responses = history("cmd_responses", Column("command", String(128)), Column("request_id", Text),
                            Column("ok", Boolean), Column("error", Text))

    devices = Table(
        "devices", md,
        Column("device_id", String(64), primary_key=True),
        Column("state", String(16), comment="latest status received: online / stopped / offline"),
        Column("state_ts", UtcDateTime), Column("state_received_at", UtcDateTime),
        Column("model_name", String(128)), Column("model_version", String(64)),
        Column("health_ts", UtcDateTime), Column("health_received_at", UtcDateTime),
        Column("health", js),
    )

    quarantine = Table(
        "quarantine", md,
        Column("id", pk, primary_key=True, autoincrement=True),
        Column("sha256", String(64), nullable=False, unique=True, comment="of topic + payload: one row per "
                                                                           "distinct message"),
        Column("topic", Text, nullable=False),
        Column("device_id", String(64)), Column("msg_id", String(64)),
        Column("reason", Text, nullable=False),
        Column("size_bytes", Integer, nullable=False),
        Column("payload", LargeBinary, nullable=False, comment="the first quarantine_keep_bytes bytes"),
        Column("truncated", Boolean, nullable=False),
        Column("first_received_at", UtcDateTime, nullable=False),
        Column("last_received_at", UtcDateTime, nullable=False),
        Column("times", Integer, nullable=False, server_default=text("1")),
        Index("ix_quarantine_received", "first_received_at"),
    )

    ingest_counters = Table(
        "ingest_counters", md,
        Column("worker", String(128), primary_key=True),
        Column("stored", BigInteger, nullable=False, server_default=text("0")),
        Column("duplicates", BigInteger, nullable=False, server_default=text("0")),
        Column("quarantined", BigInteger, nullable=False, server_default=text("0")),
        Column("updated_at", UtcDateTime, nullable=False),
    )

    return Tables(md, meta, detection_messages, crack_observations, cracks, crack_tracks, segments,
                  segment_builders, snapshots, status_messages, health_messages, cmd_responses, devices, quarantine,
                  ingest_counters)


# Missing sequence numbers per device, as ranges, computed from what is stored: a gap filled by
# a late or re-sent message disappears by itself, whichever worker stored it and in what order.
SEQ_GAPS_VIEW = """
CREATE VIEW seq_gaps AS
SELECT device_id, seq + 1 AS first_missing, next_seq - 1 AS last_missing, next_seq - seq - 1 AS missing
FROM (SELECT device_id, seq, LEAD(seq) OVER (PARTITION BY device_id ORDER BY seq) AS next_seq
      FROM detection_messages) AS s
WHERE next_seq - seq > 1
"""
