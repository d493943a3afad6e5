"""``python -m bench.run``: the benchmark suite in one command (see docs/benchmarks.md).

    python -m bench.run --quick          # < 3 min on an idle 2-core machine: 320x480 and 1280x720
    python -m bench.run                  # full: + every device config's and bundle artifact's size, 30 runs
    python -m bench.run --sizes 720x1280 --backends tflite --workers 1

By default it measures what a clone ships: the highest-versioned
``reference_model/weights/crackseg-ref-*.pt`` and the bundle ``edge_agent/assets/models/reference/``
(its artifacts wherever one runs a size whole; the rest exported from the checkpoint).

Output: the tables (stdout), pass/fail lines for the performance goals, then as the LAST
stdout line one JSON object with the headline figures. Files under ``--out`` (default
docs/benchmarks): results.json (everything, with the machine), results.md (the tables) and
PNG plots. Progress goes to stderr. Exit status 0 when the run completed (whether the goals
passed or not: they are findings, not errors), 2 on a user error (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench import BenchError
from bench.agent import BASE_CONFIG
from bench.steps import BACKENDS, STEPS, Bench, run_step


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise BenchError(f"--sizes: '{text}' is not HEIGHTxWIDTH, e.g. 720x1280") from None
    if h <= 0 or w <= 0:
        raise BenchError(f"--sizes: '{text}' must be positive")
    return h, w


def parse_list(text: str, flag: str, item, check=None) -> list:  # noqa: ANN001
    values = []
    for part in (x.strip() for x in text.split(",")):
        if not part:
            continue
        try:
            value = item(part)
        except ValueError:
            raise BenchError(f"{flag} '{text}': '{part}' is not valid") from None
        if check is not None and (problem := check(value)):
            raise BenchError(f"{flag}: {problem}")
        values.append(value)
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--quick", action="store_true", help="320x480 and 1280x720, 5 timed runs, short clips, INT8 only at 720p")
    a("--sizes", help="comma-separated HEIGHTxWIDTH input sizes (default: 320x480,720x1280; the full run adds "
                      "the device configs' and the bundle's sizes)")
    a("--out", type=Path, default=Path("docs/benchmarks"), help="folder for results.json, results.md and the plots")
    a("--threads", type=int, default=os.cpu_count() or 1, help="inference threads for one worker, and in all for "
                                                               "N workers (default: all cores)")
    a("--backends", default=",".join(BACKENDS), help="onnx,tflite (default both)")
    a("--workers", default="1,2", help="inference workers to run the INT8 agent with (default 1,2)")
    a("--checkpoint", type=Path, help="trained checkpoint (default: the highest-versioned "
                                      "reference_model/weights/crackseg-ref-*.pt)")
    a("--bundle", type=Path, help="bundle whose artifacts are timed wherever one runs a size whole (default: the "
                                  "shipped edge_agent/assets/models/reference when built from the checkpoint)")
    a("--no-bundle", action="store_true", help="export every artifact from the checkpoint")
    a("--agent-config", type=Path, default=BASE_CONFIG, help="device config the agent runs with (default "
                                                             "device_configs/x86-dev.yaml), source/model/broker "
                                                             "replaced")
    a("--pruned", type=Path, action="append", default=[],
      help="pruned + fine-tuned checkpoint from 'crackseg-convert prune --finetune-data' (repeatable; replaces "
           "--prune-ratios)")
    a("--prune-ratios", default="0.3,0.5", help="channel-pruning ratios to time at 320x480 (default 0.3,0.5; '' none)")
    a("--data", type=Path, help="labeled folder (images/ + masks/): F1@2px of every 320x480 variant on its val "
                                "split (and fine-tune pruned ones with --finetune-minutes)")
    a("--data-limit", type=int, default=30, help="val images scored per variant (default 30)")
    a("--finetune-minutes", type=float, default=0.0,
      help="fine-tune each pruned model this long on --data before timing and scoring it")
    a("--calib", type=Path, help="INT8 calibration images for exported artifacts (default: generated road)")
    a("--runs", type=int, help="timed runs per variant (default 5 quick, 30 full)")
    a("--frames", type=int, help="frames of each agent clip (default quick 90 at 320x480, 60 at 1280x720; full "
                                 "300 / 150)")
    a("--mqtt-messages", type=int, help="detections through the outbox (default 200 quick, 2000 full)")
    a("--clock-ghz", type=float, help="CPU clock for the peak estimate (default: detected)")
    a("--no-tflite", action="store_true", help="skip the TFLite variants (same as --backends onnx)")
    a("--no-agent", action="store_true", help="skip the agent and MQTT benchmarks (no mosquitto)")
    a("--work", type=Path, help="keep the clips, exported models and agent runs here (default: a temp folder, "
                                "removed)")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Validate and normalise the options (lists parsed); BenchError on a bad one."""
    args.sizes = parse_list(args.sizes, "--sizes", _size) if args.sizes else None
    if args.sizes == []:
        raise BenchError("--sizes: give at least one HEIGHTxWIDTH")
    args.prune_ratios = parse_list(args.prune_ratios, "--prune-ratios", float,
                                   lambda r: None if 0.0 < r < 1.0 else f"{r} is not between 0 and 1")
    args.backends = parse_list(args.backends, "--backends", str,
                               lambda b: None if b in BACKENDS else f"unknown backend '{b}' (onnx, tflite)")
    args.workers = parse_list(args.workers, "--workers", int, lambda w: None if 1 <= w <= 8 else "1 to 8 workers")
    if not args.workers or not args.backends:
        raise BenchError("--workers and --backends need at least one value")
    if args.threads < 1:
        raise BenchError("--threads must be at least 1")
    if args.data is not None and not args.data.is_dir():
        raise BenchError(f"--data {args.data} is not a folder (expected images/ + masks/)")
    if args.finetune_minutes > 0 and args.data is None:
        raise BenchError("--finetune-minutes needs --data (the labeled folder to fine-tune on)")
    if args.calib is not None and not args.calib.is_dir():
        raise BenchError(f"--calib {args.calib} is not a folder of images")
    if args.no_bundle and args.bundle is not None:
        raise BenchError("give --bundle or --no-bundle, not both")
    if not args.no_agent and not args.agent_config.is_file():
        raise BenchError(f"--agent-config {args.agent_config}: no such file")


def run(args: argparse.Namespace) -> dict:
    """Check the options, then run every step of ``bench.steps.STEPS`` that applies; the results dict."""
    check_args(args)
    started = time.monotonic()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="crackseg-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"schema": 2, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "command": "python -m bench.run " + shlex.join(sys.argv[1:]), "quick": bool(args.quick),
                     "threads": args.threads, "sizes": []}
    bench = Bench(args, work, results)
    try:
        for step in STEPS:
            if step.when(bench):
                run_step(step, bench)
        results["steps"] = bench.timings
        results["elapsed_s"] = round(time.monotonic() - started, 1)
        return results
    finally:
        if bench.broker is not None:
            bench.broker.stop()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def write_outputs(results: dict, out: Path) -> dict[str, Path]:
    from bench.plots import write_plots
    from bench.report import render_markdown

    out.mkdir(parents=True, exist_ok=True)
    paths = {"results": out / "results.json", "markdown": out / "results.md"}
    paths["results"].write_text(json.dumps(results, indent=2) + "\n")
    paths["markdown"].write_text(render_markdown(results))
    for p in write_plots(results, out):
        paths[p.stem] = p
    return paths


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    from bench.goals import final_line
    from bench.report import render_markdown
    from converters.errors import ConvertError
    from edge_agent.detectors.errors import ModelError

    try:
        results = run(args)
        paths = write_outputs(results, args.out)
    except (BenchError, ConvertError, ModelError, FileNotFoundError) as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    print(render_markdown(results))
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    print(json.dumps(final_line(results, str(paths["results"]))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
