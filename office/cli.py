"""``crackseg-office``: ingest the fleet's MQTT stream, report, export, rebuild.

User errors (bad URL, missing file, unreachable database, bad option value) print one line
``crackseg-office: error: ...`` on stderr and exit with status 2, like argparse's own errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from office import __version__, query
from office.config import IngestConfig, load_analysis_config
from office.errors import OfficeError, UserError
from office.refresh import rebuild, refresh
from office.store.database import Database

PROG = "crackseg-office"


def _db_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", required=True, metavar="URL",
                   help="sqlite:///office.db, a file path, or postgresql://user@host:5432/db")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="The office side of crackseg-edge: MQTT -> crack "
                                     "inventory and road segments in SQLite or PostgreSQL/PostGIS.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("ingest", help="subscribe to the fleet and store everything (runs until stopped)")
    p.add_argument("--mqtt-url", required=True, metavar="URL", help="mqtt://host:1883 or mqtts://host:8883")
    _db_arg(p)
    p.add_argument("--group", default="office", help="shared-subscription group; all workers of one office "
                   "use the same (default: office)")
    p.add_argument("--prefix", default="crackseg", help="topic prefix of the fleet (default: crackseg)")
    p.add_argument("--client-id", help="stable, unique per worker (default: crackseg-office-<host>-<group>)")
    p.add_argument("--username")
    p.add_argument("--password-file", type=Path)
    p.add_argument("--password-env", metavar="VAR")
    p.add_argument("--ca-file", type=Path)
    p.add_argument("--cert-file", type=Path)
    p.add_argument("--key-file", type=Path)
    p.add_argument("--config", type=Path, help="analysis settings (YAML: inventory:, segments:) used when "
                   "this creates the database")
    p.add_argument("--batch-max", type=int, default=500)
    p.add_argument("--batch-wait", type=float, default=0.05, metavar="S")
    p.add_argument("--max-payload-bytes", type=int, default=1 << 20)
    p.add_argument("--session-expiry", type=int, default=7 * 24 * 3600, metavar="S")
    p.add_argument("--receive-maximum", type=int, default=2000)
    p.add_argument("--refresh-interval", type=float, default=5.0, metavar="S",
                   help="bring the inventory up to date this often (0: never; stats/export still do)")

    p = sub.add_parser("stats", help="what is stored: messages, devices, cracks, segments, gaps, quarantine")
    _db_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--no-refresh", action="store_true", help="do not bring the inventory up to date first")

    p = sub.add_parser("export", help="cracks or segments as GeoJSON or CSV")
    _db_arg(p)
    p.add_argument("--format", required=True, choices=["geojson", "csv"])
    p.add_argument("--what", required=True, choices=["cracks", "segments"])
    p.add_argument("--bbox", metavar="MINLON,MINLAT,MAXLON,MAXLAT")
    p.add_argument("--since", metavar="ISO", help="only features seen since (e.g. 2024-05-01T00:00:00Z)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--no-refresh", action="store_true")

    p = sub.add_parser("rebuild", help="recompute the inventory and segments from the stored messages")
    _db_arg(p)
    p.add_argument("--config", type=Path, help="new analysis settings (YAML) to store and use")

    p = sub.add_parser("init", help="create the database (tables, indexes, PostGIS geometry) and store settings")
    _db_arg(p)
    p.add_argument("--config", type=Path)

    _serve_parser(sub)
    return parser


def _serve_parser(sub: Any) -> None:
    """``serve``: the web page (fleet, crack map, segment table) and its read-only JSON API."""
    p = sub.add_parser("serve", help="the web page: fleet, crack map, crack details, segment table, JSON API")
    _db_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                   "only; the page has no login, put it behind an authenticating proxy to share it)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (default 8765)")
    p.add_argument("--tile-url", metavar="URL", help="base-map tiles, e.g. https://tile.example.org/{z}/{x}/{y}.png "
                   "(default: none, the page works offline on a blank map with a scale)")
    p.add_argument("--tile-attribution", default="", metavar="TEXT", help="credit line the tile provider requires")
    p.add_argument("--tile-max-zoom", type=int, default=19, help="highest zoom the tile server has (default 19)")
    p.add_argument("--stale-after", type=float, default=120.0, metavar="S", help="a vehicle that says online "
                   "but was not heard from for this long is shown as stale (default 120)")
    p.add_argument("--poll-interval", type=float, default=15.0, metavar="S",
                   help="how often the open page reloads its data (default 15)")
    p.add_argument("--crack-limit", type=int, default=5000, metavar="N",
                   help="most cracks drawn per map view, worst first (default 5000)")


def _serve(args: argparse.Namespace) -> int:
    from office.web.api import MAX_CRACKS, Settings
    from office.web.server import serve, tile_origin

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: 0..65535")
    if not 1 <= args.crack_limit <= MAX_CRACKS:
        raise UserError(f"--crack-limit {args.crack_limit}: 1..{MAX_CRACKS}")
    if not 0 < args.stale_after <= 86400 or not 1 <= args.poll_interval <= 3600:
        raise UserError("--stale-after must be in (0, 86400] s and --poll-interval in [1, 3600] s")
    if not 0 <= args.tile_max_zoom <= 24:
        raise UserError(f"--tile-max-zoom {args.tile_max_zoom}: 0..24")
    try:
        tile_origin(args.tile_url)
    except ValueError as exc:
        raise UserError(f"--tile-url: {exc}") from None
    settings = Settings(tile_url=args.tile_url, tile_attribution=args.tile_attribution,
                        tile_max_zoom=args.tile_max_zoom, stale_after_s=args.stale_after,
                        refresh_s=args.poll_interval, crack_limit=args.crack_limit)
    db = Database.open(args.db, create=False, pool_size=8)
    try:
        serve(db, args.host, args.port, settings)
    except OSError as exc:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    finally:
        db.close()
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from office.ingest.worker import IngestWorker

    try:
        cfg = IngestConfig(mqtt_url=args.mqtt_url, db_url=args.db, group=args.group, prefix=args.prefix,
                           client_id=args.client_id, username=args.username, password_file=args.password_file,
                           password_env=args.password_env, ca_file=args.ca_file, cert_file=args.cert_file,
                           key_file=args.key_file, batch_max=args.batch_max, batch_wait_s=args.batch_wait,
                           max_payload_bytes=args.max_payload_bytes, session_expiry_s=args.session_expiry,
                           receive_maximum=args.receive_maximum, refresh_interval_s=args.refresh_interval)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise OfficeError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}") from None
    if cfg.receive_maximum < cfg.batch_max:
        raise OfficeError(f"--receive-maximum ({cfg.receive_maximum}) must be at least --batch-max "
                          f"({cfg.batch_max}), or batches can never fill")
    from office.ingest.mqtt import parse_mqtt_url

    parse_mqtt_url(cfg.mqtt_url)
    db = Database.open(cfg.db_url, analysis=load_analysis_config(args.config))
    worker = IngestWorker(cfg, db)
    worker.install_signals()
    worker.run()
    db.close()
    return 0


def _print_stats(s: dict[str, Any]) -> None:
    rows = [("detection messages", s["messages"]), ("devices", s["devices"]),
            ("cracks (inventory)", s["cracks"]), ("  of which not placed", s["cracks_unplaced"]),
            ("total crack length (m)", s["crack_length_m"]), ("road segments", s["segments"]),
            ("missing seq numbers", s["seq_gaps"]), ("duplicates ignored", s["duplicates_ignored"]),
            ("quarantined messages", s["quarantined"]), ("crack observations", s["observations"]),
            ("snapshots", s["snapshots"]), ("status / health / cmd responses",
                                            f"{s['status_messages']} / {s['health_messages']} / {s['cmd_responses']}")]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if s["per_device"]:
        print()
        print(f"{'device':<20} {'messages':>9} {'seq':>17} {'missing':>8}  {'last capture':<24} state")
        for d in s["per_device"]:
            seq = f"{d['first_seq']}..{d['last_seq']}" if d["first_seq"] is not None else "-"
            print(f"{d['device_id']:<20} {d['messages']:>9} {seq:>17} {d['missing']:>8}  "
                  f"{d['last_capture'] or '-':<24} {d['state'] or '-'}")
    if s["quarantine_reasons"]:
        print()
        print("quarantine reasons:")
        for q in s["quarantine_reasons"]:
            print(f"  {q['messages']:>6}  {q['reason']}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "ingest":
            return _ingest(args)
        if args.command == "init":
            db = Database.open(args.db, analysis=load_analysis_config(args.config))
            print(f"database {db.display_url} is ready")
            db.close()
            return 0
        if args.command == "serve":
            return _serve(args)
        if args.command == "rebuild":
            cfg = load_analysis_config(args.config) if args.config else None
            db = Database.open(args.db, create=False)
            result = rebuild(db, cfg)
            print(f"rebuilt: {result}")
            db.close()
            return 0
        db = Database.open(args.db, create=False)
        try:
            if not args.no_refresh:
                refresh(db, wait=True)
            if args.command == "stats":
                s = query.stats(db)
                _print_stats(s)
                if args.json:
                    print(json.dumps(s, separators=(",", ":")))
                return 0
            flt = query.Filter(query.parse_bbox(args.bbox), query.parse_since(args.since))
            from office.export import export

            n = export(db, args.format, args.what, args.out, flt)
            print(f"wrote {n} {args.what} to {args.out}")
            return 0
        finally:
            db.close()
    except OfficeError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
