"""``python -m bench.run``: the benchmark suite in one command (see docs/benchmarks.md).

    python -m bench.run --quick                   # ~1-3 min: 320x480 only, few runs
    python -m bench.run                           # full: 320x480 + every device config's resolution
    python -m bench.run --checkpoint runs/reference/best.pt --bundle bundles/crackseg-ref-1.0.0

Output: the tables (stdout), pass/fail lines for the performance goals, then as the LAST
stdout line one JSON object with the headline figures. Files under ``--out`` (default
docs/benchmarks): results.json (everything, with the machine), results.md (the tables) and
PNG plots. Progress goes to stderr. Exit status 0 when the run completed (whether the goals
passed or not: they are findings, not errors), 2 on a user error (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench import BenchError
from bench.models import PRIMARY_SIZE, log

REPO_ROOT = Path(__file__).resolve().parents[1]
DEVICE_CONFIGS = REPO_ROOT / "device_configs"

GOALS = {
    "speedup_int8_agent_vs_torch_fp32": (">=", 6.0, "INT8 agent end to end vs torch fp32 eager (frames/s)"),
    "agent_overhead_fraction": ("<=", 0.10, "agent overhead over the bare model time per frame"),
    "agent_rss_mb": ("<=", 150.0, "agent peak RSS with the INT8 model loaded (MB)"),
    "cold_start_s": ("<=", 2.0, "process start to first detection received (s)"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="320x480 only, few runs, short agent clip")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks"), help="folder for results.json, "
                                                                              "results.md and the plots")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="inference threads for every "
                                                                            "backend (default: all cores)")
    p.add_argument("--checkpoint", type=Path, help="trained checkpoint (default: runs/reference/best.pt if "
                                                   "present, else the untrained reference network)")
    p.add_argument("--bundle", type=Path, help="also benchmark a built bundle's artifacts (its validation F1 is "
                                               "used as their accuracy)")
    p.add_argument("--pruned", type=Path, action="append", default=[],
                   help="pruned + fine-tuned checkpoint from 'crackseg-convert prune --finetune-data' (repeatable; "
                        "replaces --prune-ratios)")
    p.add_argument("--prune-ratios", default="0.3,0.5", help="channel-pruning ratios to time (default 0.3,0.5)")
    p.add_argument("--data", type=Path, help="labeled folder (images/ + masks/): measure F1@2px of every variant "
                                             "on its val split (and fine-tune pruned ones with --finetune-minutes)")
    p.add_argument("--data-limit", type=int, default=30, help="val images scored per variant (default 30)")
    p.add_argument("--finetune-minutes", type=float, default=0.0,
                   help="fine-tune each pruned model this long on --data before timing and scoring it")
    p.add_argument("--calib", type=Path, help="INT8 calibration images (default: generated pavement)")
    p.add_argument("--runs", type=int, help="timed runs per variant (default 5 quick, 30 full)")
    p.add_argument("--frames", type=int, help="frames of the agent's survey clip (default 20 quick, 100 full)")
    p.add_argument("--mqtt-messages", type=int, help="detections through the outbox (default 200 quick, 2000 full)")
    p.add_argument("--clock-ghz", type=float, help="CPU clock for the peak estimate (default: detected)")
    p.add_argument("--no-tflite", action="store_true", help="skip the TFLite variants")
    p.add_argument("--no-agent", action="store_true", help="skip the agent and MQTT benchmarks (no mosquitto)")
    p.add_argument("--work", type=Path, help="keep the exported models and agent runs here (default: a temp "
                                             "folder, removed)")
    return p


# -- sizes -------------------------------------------------------------------------------
def device_config_sizes(folder: Path = DEVICE_CONFIGS) -> dict[tuple[int, int], list[str]]:
    """(height, width) -> device config names, from camera.width/height of device_configs/*.yaml."""
    import yaml

    sizes: dict[tuple[int, int], list[str]] = {}
    for path in sorted(folder.glob("*.yaml")):
        try:
            cam = (yaml.safe_load(path.read_text()) or {}).get("camera") or {}
        except (OSError, yaml.YAMLError) as exc:
            raise BenchError(f"{path}: unreadable device config ({exc})") from None
        if cam.get("width") and cam.get("height"):
            sizes.setdefault((int(cam["height"]), int(cam["width"])), []).append(path.stem)
    return sizes


def parse_ratios(text: str) -> list[float]:
    try:
        ratios = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BenchError(f"--prune-ratios '{text}' must be comma-separated fractions, e.g. 0.3,0.5") from None
    bad = [r for r in ratios if not 0.0 < r < 1.0]
    if bad:
        raise BenchError(f"--prune-ratios: {bad[0]} is not between 0 and 1")
    return ratios


# -- derived figures ---------------------------------------------------------------------
def _finite(x) -> bool:  # noqa: ANN001
    return isinstance(x, (int, float)) and math.isfinite(x)


def enrich_rows(variants, latency: dict, peak, threads: int) -> list[dict]:
    """Per-variant rows: latency, fps, speed-up over torch fp32, achieved ops/s against the peak."""
    base = next((latency[v.name]["median_ms"] for v in variants if v.name == "torch-fp32"), None)
    rows = []
    for v in variants:
        lat = latency[v.name]
        fps = 1000.0 / lat["median_ms"]
        gops = 2.0 * v.macs * fps / 1e9 if v.macs else None
        peak_gops = peak.gops(v.precision, threads) if peak else None
        rows.append({**v.to_dict(), **lat, "fps": round(fps, 2),
                     "speedup_vs_torch_fp32": round(base / lat["median_ms"], 3) if base else None,
                     "achieved_gops": None if gops is None else round(gops, 2),
                     "peak_gops": None if peak_gops is None else round(peak_gops, 1),
                     "peak_fraction": round(gops / peak_gops, 4) if gops and peak_gops else None})
    return rows


def headline(block: dict) -> dict:
    """The goal figures at one size: the fastest unpruned INT8 agent run against torch fp32 eager."""
    torch_row = next((r for r in block["variants"] if r["name"] == "torch-fp32"), None)
    runs = [a for a in block.get("agent", []) if a["precision"] == "int8" and not a["variant"].startswith("pruned")
            and a["fps_out"]]
    best = max(runs, key=lambda a: a["fps_out"], default=None)
    if best is None:
        return {"agent_variant": None, **{k: None for k in GOALS}}
    return {"agent_variant": best["variant"], "size": block["size"],
            "speedup_int8_agent_vs_torch_fp32": round(best["fps_out"] / torch_row["fps"], 3) if torch_row else None,
            "agent_overhead_fraction": best["overhead_fraction"], "agent_rss_mb": best["rss_peak_mb"],
            "cold_start_s": best["cold_start_s"], "agent_fps": best["fps_out"],
            "torch_fp32_fps": torch_row["fps"] if torch_row else None}


def goal_results(head: dict) -> list[dict]:
    out = []
    for key, (op, target, text) in GOALS.items():
        value = head.get(key)
        passed = None if not _finite(value) else (value >= target if op == ">=" else value <= target)
        out.append({"goal": key, "description": text, "target": f"{op} {target:g}", "value": value,
                    "passed": passed})
    return out


# -- tables --------------------------------------------------------------------------------
def _fmt(x, nd: int = 1) -> str:  # noqa: ANN001
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def variants_table(block: dict) -> str:
    rows = [[r["name"], r["precision"], _fmt(r["macs"] / 1e9 if r["macs"] else None, 3), _fmt(r["file_mb"], 2),
             _fmt(r["median_ms"]), _fmt(r["p90_ms"]), _fmt(r["fps"]), _fmt(r["speedup_vs_torch_fp32"], 2) + "x",
             _fmt(r["achieved_gops"]), _fmt(100 * r["peak_fraction"] if r["peak_fraction"] else None),
             _fmt(r["f1"], 4), r["f1_source"]] for r in block["variants"]]
    return md_table(["variant", "prec", "GMAC", "file MB", "median ms", "p90 ms", "fps", "vs torch fp32",
                     "GOPS", "% peak", "F1@2px", "F1 source"], rows)


def agent_table(block: dict) -> str:
    rows = [[a["variant"], _fmt(a["fps_out"]), _fmt(a["fps_in"]), _fmt(a["bare_fps"]),
             _fmt(100 * a["overhead_fraction"] if a["overhead_fraction"] is not None else None),
             _fmt(a["rss_peak_mb"]), _fmt(a["cold_start_s"], 2), _fmt(a["cpu_ms_per_frame"]),
             f"{a['detections_received']}/{a['frames']}"] for a in block.get("agent", [])]
    return md_table(["agent on", "fps out", "fps in", "bare fps", "overhead %", "peak RSS MB", "cold start s",
                     "CPU ms/frame", "received/frames"], rows)


def mqtt_table(m: dict) -> str:
    o, b = m["outbox"], m["bare_paho"]
    return md_table(["path (QoS 1, %d B detections)" % o["payload_bytes"], "messages/s", "CPU ms/message",
                     "enqueue p50 / p95 ms"],
                    [["agent outbox (SQLite WAL, fsync) -> paho", _fmt(o["messages_per_s"]),
                      _fmt(o["cpu_ms_per_message"], 3), f"{o['enqueue_ms_p50']:.3f} / {o['enqueue_ms_p95']:.3f}"],
                     ["bare paho (memory only)", _fmt(b["messages_per_s"]), _fmt(b["cpu_ms_per_message"], 3), "-"]])


def estimates_table(est: list[dict]) -> str:
    rows = [[e["device"], e["engine"], e["precision"], _fmt(e["peak_gops"]), _fmt(e["gops_per_frame"], 3),
             _fmt(e["fps_at_peak"]), _fmt(100 * e["efficiency"] if e["efficiency"] else None, 1),
             _fmt(e["fps_estimate"]), _fmt(e["ms_estimate"])] for e in est]
    return md_table(["device", "engine", "prec", "peak GOPS", "GOP/frame", "fps @100% peak", "efficiency %",
                     "fps (estimate)", "ms (estimate)"], rows)


def goal_lines(goals: list[dict], size: list[int]) -> list[str]:
    out = []
    for g in goals:
        state = "n/a " if g["passed"] is None else "PASS" if g["passed"] else "FAIL"
        out.append(f"GOAL {state} [{size[0]}x{size[1]}] {g['description']}: {_fmt(g['value'], 3)} "
                   f"(target {g['target']})")
    return out


def run_notes(results: dict) -> list[str]:
    """Warnings that change how the figures must be read."""
    notes = []
    load = results["machine"].get("load_avg_1m_at_start")
    cores = results["machine"]["logical_cores"]
    if load is not None and load > 0.5 * cores:
        notes.append(f"The machine was busy (load {load:.2f} on {cores} cores): figures are pessimistic and noisy, "
                     "and a multi-threaded agent process can get a larger CPU share than the single-threaded bare "
                     "timing loop. Rerun on a quiet machine for the record.")
    if not results["model"]["trained"]:
        notes.append("The model is untrained: speed only; it marks most pixels as cracks, so the agent's "
                     "measurement step is slower than with a trained model.")
    for block in results["sizes"]:
        for a in block.get("agent", []):
            if a["overhead_fraction"] is not None and a["overhead_fraction"] < 0:
                notes.append(f"{block['size'][0]}x{block['size'][1]} {a['variant']}: the agent ran faster than the "
                             "bare model, which only a busy or throttling machine explains: treat this overhead as "
                             "unmeasured.")
    return notes


def render_markdown(results: dict) -> str:
    m = results["machine"]
    parts = [f"Measured {results['created']} with `{results['command']}` on {m['cpu_model']} "
             f"({m['logical_cores']} logical cores, {', '.join(m['flags'][-4:]) or 'no SIMD flags'}, load "
             f"{_fmt(m.get('load_avg_1m_at_start'), 2)} at start), "
             f"{results['threads']} inference thread(s). Model: {results['model']['label']} "
             f"({'trained' if results['model']['trained'] else 'UNTRAINED: speed only'}, "
             f"{results['model']['params']:,} params)."]
    if results.get("peak"):
        parts.append(f"Peak estimate: {results['peak']['assumption']}.")
    for block in results["sizes"]:
        cfgs = ", ".join(block["configs"]) or "reference size"
        parts.append(f"\n### {block['size'][0]}x{block['size'][1]} ({cfgs})\n\n{variants_table(block)}")
        if block.get("agent"):
            parts.append(f"\nAgent end to end ({block['agent_frames']} frames, every frame published):\n\n"
                         f"{agent_table(block)}")
    if results.get("mqtt"):
        parts.append(f"\n### MQTT through the outbox\n\n{mqtt_table(results['mqtt'])}")
    parts.append("\n### Goals\n\n" + "\n".join(f"- {line}" for line in results["goal_lines"]))
    if results.get("notes"):
        parts.append("\n### Notes\n\n" + "\n".join(f"- {n}" for n in results["notes"]))
    for block in results["sizes"]:
        if block.get("estimates"):
            parts.append(f"\n### Estimates for other devices at {block['size'][0]}x{block['size'][1]} (not measured: "
                         f"peak x efficiency measured here / ops per frame)\n\n{estimates_table(block['estimates'])}")
    return "\n".join(parts) + "\n"


# -- the run ---------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict:
    from bench.machine import device_estimates, machine_info, peak_estimate
    from bench.models import (
        bench_frames,
        build_variants,
        bundle_variants,
        load_source,
        measure_latency,
        prune_source,
        score_accuracy,
        write_calibration_images,
    )

    if args.threads < 1:
        raise BenchError("--threads must be at least 1")
    if args.data is not None and not args.data.is_dir():
        raise BenchError(f"--data {args.data} is not a folder (expected images/ + masks/)")
    if args.finetune_minutes > 0 and args.data is None:
        raise BenchError("--finetune-minutes needs --data (the labeled folder to fine-tune on)")
    if args.calib is not None and not args.calib.is_dir():
        raise BenchError(f"--calib {args.calib} is not a folder of images")
    ratios = parse_ratios(args.prune_ratios)
    quick = args.quick
    runs = args.runs or (5 if quick else 30)
    warmup = 2 if quick else 5
    agent_frames = args.frames or (20 if quick else 100)
    mqtt_n = args.mqtt_messages or (200 if quick else 2000)
    calib_count = 8 if quick else 32
    started = time.monotonic()

    info = machine_info()
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    if load is not None and load > 0.5 * info.logical_cores:
        log(f"the machine is busy (load {load} on {info.logical_cores} cores): figures will be pessimistic and "
            "noisy; torch's multi-threaded eager mode suffers most")
    peak = peak_estimate(info, args.clock_ghz)
    sizes: dict[tuple[int, int], list[str]] = {PRIMARY_SIZE: []}
    if not quick:
        for size, names in device_config_sizes().items():
            sizes.setdefault(size, []).extend(names)
    bundle = bundle_variants(args.bundle) if args.bundle else []
    for v in bundle:
        if quick and v.size != PRIMARY_SIZE:
            continue
        sizes.setdefault(v.size, [])

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="crackseg-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    broker = None
    try:
        results: dict = {"schema": 1, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                         "command": "python -m bench.run " + shlex.join(sys.argv[1:]), "quick": quick,
                         "threads": args.threads, "machine": {**info.to_dict(), "load_avg_1m_at_start": load},
                         "peak": peak.to_dict() if peak else None, "sizes": []}
        source = load_source(args.checkpoint)
        results["model"] = {"label": source.label, "trained": source.trained, "params": source.params,
                            "threshold": source.contract.threshold}
        if not args.no_agent:
            from bench.mqtt import LocalBroker, mqtt_benchmark

            broker = LocalBroker(work / "broker").start()
            log(f"mosquitto on {broker.url}; outbox throughput with {mqtt_n} detections")
            results["mqtt"] = mqtt_benchmark(broker.url, mqtt_n, work)
        if args.pruned:
            pruned = [load_source(p) for p in args.pruned]
            for p, path in zip(pruned, args.pruned, strict=True):
                if p.prune_ratio is None:
                    raise BenchError(f"--pruned {path}: not a pruned checkpoint (no config.pruning); make it with "
                                     "crackseg-convert prune")
        else:
            pruned = [prune_source(source, r, PRIMARY_SIZE, args.data, args.finetune_minutes)
                      for r in ratios]

        for size, configs in sizes.items():
            h, w = size
            calib = args.calib or write_calibration_images(work / f"calib-{h}x{w}", size, calib_count)
            variants = build_variants(source, size, work, calib, pruned=pruned, tflite=not args.no_tflite,
                                      calib_count=calib_count, pruned_tflite=not quick)
            variants += [v for v in bundle if v.size == size]
            if args.data is not None and size == PRIMARY_SIZE:
                score_accuracy(variants, args.data, args.data_limit, args.threads)
            frames = bench_frames(size, 4 if quick else 8)
            latency = measure_latency(variants, frames, args.threads, runs, warmup)
            block = {"size": [h, w], "configs": configs, "variants": enrich_rows(variants, latency, peak,
                                                                                 args.threads)}
            if broker is not None:
                from bench.agent import run_agent
                from edge_agent.video.synthetic import write_survey_video

                video = write_survey_video(work / f"survey-{h}x{w}.avi", agent_frames, size=(w, h), fps=25.0,
                                           seed=7)
                block["agent_frames"] = agent_frames
                block["agent"] = []
                for v in variants:
                    if v.backend == "torch" or v.origin == "pruned":
                        continue
                    log(f"{h}x{w}: agent end to end on {v.name}")
                    a = run_agent(name=v.name, model=v.path, backend=v.backend, precision=v.precision, size=size,
                                  threads=args.threads, video=video, frames=agent_frames, broker_url=broker.url,
                                  workdir=work, bare_ms=latency[v.name]["median_ms"])
                    block["agent"].append(a.to_dict())
            block["headline"] = headline(block)
            block["goals"] = goal_results(block["headline"])
            results["sizes"].append(block)

        for block in results["sizes"]:
            torch_row = next(r for r in block["variants"] if r["name"] == "torch-fp32")
            efficiency = {(r["backend"], r["precision"]): r["peak_fraction"] for r in block["variants"]
                          if r["origin"] == "checkpoint" and r["peak_fraction"]}
            block["estimates"] = [{"size": block["size"], "macs": torch_row["macs"], **e}
                                  for e in device_estimates(torch_row["macs"], efficiency)]
        primary = results["sizes"][0]
        results["estimates"] = primary["estimates"]
        results["goal_lines"] = [line for block in results["sizes"] for line in goal_lines(block["goals"],
                                                                                          block["size"])]
        results["notes"] = run_notes(results)
        results["headline"] = primary["headline"]
        results["goals"] = primary["goals"]
        results["elapsed_s"] = round(time.monotonic() - started, 1)
        return results
    finally:
        if broker is not None:
            broker.stop()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def write_outputs(results: dict, out: Path) -> dict[str, Path]:
    from bench.plots import write_plots

    out.mkdir(parents=True, exist_ok=True)
    paths = {"results": out / "results.json", "markdown": out / "results.md"}
    paths["results"].write_text(json.dumps(results, indent=2) + "\n")
    paths["markdown"].write_text(render_markdown(results))
    for p in write_plots(results, out):
        paths[p.stem] = p
    return paths


def final_line(results: dict, paths: dict[str, Path]) -> dict:
    head = results["headline"]
    return {**{k: head.get(k) for k in GOALS}, "agent_variant": head.get("agent_variant"),
            "agent_fps": head.get("agent_fps"), "torch_fp32_fps": head.get("torch_fp32_fps"),
            "goals_passed": sum(1 for g in results["goals"] if g["passed"]), "goals_total": len(results["goals"]),
            "quick": results["quick"], "threads": results["threads"], "results": str(paths["results"])}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
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
    print(json.dumps(final_line(results, paths)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
