"""PostgreSQL's fast path for detections: COPY into staging tables, then one INSERT ... SELECT.

Why: with SQLAlchemy's multi-row INSERT a batch of 500 messages is one SQL text with ~15,000
parameters that psycopg parses on every call (it cannot cache a text that differs in length
each time), which cost more CPU than everything else ingest does. COPY streams rows without
any SQL to parse, and one statement then does the idempotent insert of the messages
(``ON CONFLICT DO NOTHING``, in ``msg_id`` order so concurrent workers lock rows in the same
order) and of the observations of the messages that were new, in the same transaction as
the rest of the batch. Geometries travel as hex EWKB (``rows.geometry_texts``), the payload as
JSON text; PostgreSQL parses both into ``geometry``/``jsonb`` (a payload it refuses fails the batch, which the
writer then splits to quarantine the one bad message).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, exc

from office.store.schema import Tables

STAGE_MESSAGES = "office_stage_messages"
STAGE_OBSERVATIONS = "office_stage_observations"


def copy_detections(conn: Connection, t: Tables, messages: list[dict[str, Any]],
                    observations: list[dict[str, Any]]) -> dict[str, int]:
    """Insert the messages not yet stored and their observations (each observation dict carries the
    ``msg_id`` of its message). Returns {msg_id: id} of the new messages.
    psycopg's errors come out as SQLAlchemy's, like those of every other statement."""
    import psycopg

    try:
        return _copy_detections(conn, t, messages, observations)
    except psycopg.Error as err:
        raise exc.DBAPIError.instance("COPY detections", None, err, psycopg.Error) from err


def _copy_detections(conn: Connection, t: Tables, messages: list[dict[str, Any]],
                     observations: list[dict[str, Any]]) -> dict[str, int]:
    m_cols = list(messages[0])
    o_cols = [c for c in observations[0] if c != "msg_id"] if observations else []
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur:
        cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {STAGE_MESSAGES} ON COMMIT DELETE ROWS AS "
                    f"SELECT {', '.join(m_cols)} FROM {t.detection_messages.name} WITH NO DATA")
        with cur.copy(f"COPY {STAGE_MESSAGES} ({', '.join(m_cols)}) FROM STDIN") as copy:
            for row in messages:
                copy.write_row([row[c] for c in m_cols])
        obs_sql = "SELECT 1 WHERE false"
        if observations:
            cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {STAGE_OBSERVATIONS} ON COMMIT DELETE ROWS AS "
                        f"SELECT m.msg_id, {', '.join('o.' + c for c in o_cols)} "
                        f"FROM {t.crack_observations.name} o, {t.detection_messages.name} m WITH NO DATA")
            cols = ["msg_id", *o_cols]
            with cur.copy(f"COPY {STAGE_OBSERVATIONS} ({', '.join(cols)}) FROM STDIN") as copy:
                for row in observations:
                    copy.write_row([row[c] for c in cols])
            obs_sql = (f"INSERT INTO {t.crack_observations.name} (message_id, {', '.join(o_cols)}) "
                       f"SELECT new.id, {', '.join('o.' + c for c in o_cols)} FROM {STAGE_OBSERVATIONS} o "
                       f"JOIN new ON new.msg_id = o.msg_id")
        # a data-modifying WITH runs exactly once, to completion, whether or not the query reads it
        cur.execute(
            f"WITH new AS (INSERT INTO {t.detection_messages.name} ({', '.join(m_cols)}) "
            f"SELECT {', '.join(m_cols)} FROM {STAGE_MESSAGES} ORDER BY msg_id "
            f"ON CONFLICT (msg_id) DO NOTHING RETURNING id, msg_id), "
            f"obs AS ({obs_sql}) "
            f"SELECT new.msg_id, new.id FROM new")
        rows = cur.fetchall()
    return {str(mid): int(rid) for mid, rid in rows}
