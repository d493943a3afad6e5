"""The tables of a run (stdout and results.md), the derived per-variant figures, and the notes."""

from __future__ import annotations

from bench.goals import SURVEY_OVERLAP, footprint, size_tag


def enrich_rows(variants, latency: dict, peak, threads: int) -> list[dict]:  # noqa: ANN001
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


def speed_covered_kmh(fps: float | None, size: list[int] | tuple[int, int]) -> float | None:
    """The vehicle speed up to which ``fps`` frames of ``size`` image every metre (1.6 mm/px, 10 % overlap)."""
    from edge_agent.agent.coverage import max_speed_kmh

    if not fps:
        return None
    value = max_speed_kmh(fps, footprint(size), SURVEY_OVERLAP)
    return None if value is None else round(value, 1)


# -- tables --------------------------------------------------------------------------------
def fmt(x: object, nd: int = 1) -> str:
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
    rows = [[r["name"], r["origin"], r["precision"], fmt(r["macs"] / 1e9 if r["macs"] else None, 3),
             fmt(r["file_mb"], 2), fmt(r["median_ms"]), fmt(r["p90_ms"]), fmt(r["fps"]),
             fmt(r["speedup_vs_torch_fp32"], 2) + "x", fmt(r["achieved_gops"]),
             fmt(100 * r["peak_fraction"] if r["peak_fraction"] else None), fmt(r["f1"], 4), r["f1_source"]]
            for r in block["variants"]]
    return md_table(["variant", "from", "prec", "GMAC", "file MB", "median ms", "p90 ms", "fps", "vs torch fp32",
                     "GOPS", "% peak", "F1@2px", "F1 source"], rows)


def agent_table(block: dict) -> str:
    size = block["size"]
    rows = [[a["config"], a["workers"], a["threads"], fmt(a["fps"]), fmt(a["fps_delivered"]), fmt(a["bare_fps"]),
             fmt(100 * a["overhead_fraction"] if a["overhead_fraction"] is not None else None),
             fmt(speed_covered_kmh(a["fps"], size)), fmt(a["rss_peak_mb"]), fmt(a["cold_start_s"], 2),
             fmt(a["cpu_ms_per_frame"]), fmt(a["inference_ms_p50"]), fmt(a["measure_ms_p50"]),
             fmt(a["cracks_per_frame"]), f"{a['detections_received']}/{a['frames']}"]
            for a in block.get("agent", [])]
    return md_table(["agent on", "workers", "threads", "fps (agent)", "fps delivered", "bare fps", "overhead %",
                     "km/h covered", "peak RSS MB", "cold start s", "CPU ms/frame", "inference ms p50",
                     "measure ms p50", "cracks/frame", "received/frames"], rows)


def mqtt_table(m: dict) -> str:
    o, b = m["outbox"], m["bare_paho"]
    return md_table([f"path (QoS 1, {o['payload_bytes']} B detections)", "messages/s", "CPU ms/message",
                     "enqueue p50 / p95 ms"],
                    [["agent outbox (SQLite WAL, fsync) -> paho", fmt(o["messages_per_s"]),
                      fmt(o["cpu_ms_per_message"], 3), f"{o['enqueue_ms_p50']:.3f} / {o['enqueue_ms_p95']:.3f}"],
                     ["bare paho (memory only)", fmt(b["messages_per_s"]), fmt(b["cpu_ms_per_message"], 3), "-"]])


def estimates_table(est: list[dict]) -> str:
    rows = [[e["device"], e["engine"], e["precision"], fmt(e["peak_gops"]), fmt(e["gops_per_frame"], 3),
             fmt(e["fps_at_peak"]), fmt(100 * e["efficiency"] if e["efficiency"] else None, 1),
             fmt(e["fps_estimate"]), fmt(e["ms_estimate"]), fmt(e.get("speed_kmh_estimate"))] for e in est]
    return md_table(["device", "engine", "prec", "peak GOPS", "GOP/frame", "fps @100% peak", "efficiency %",
                     "fps (estimate)", "ms (estimate)", "km/h covered (model only, estimate)"], rows)


def clip_line(block: dict) -> str:
    c, d = block.get("clip"), block.get("detection")
    if not c:
        return ""
    text = (f"Road clip: {c['frames']} generated frames at {size_tag(c['size'])}, the road moving "
            f"{c['speed_px_per_frame']} px per frame ({c['speed_kmh']:g} km/h at {c['fps']:g} fps and "
            f"{c['gsd_mm_per_px']} mm/px); {100 * c['crack_fraction_mean']:.1f} % crack pixels on average "
            f"(least {100 * c['crack_fraction_min']:.1f} %), {c['crack_networks_per_frame']:g} connected crack "
            "networks per frame.")
    if d:
        text += (f" {d['variant']} ({d['origin']}) on its first {d['frames']} decoded frames: F1@2px "
                 f"{d['f1_2px']:.3f} against the exact masks (precision {d['precision']:.3f}, recall "
                 f"{d['recall']:.3f}), {100 * d['pred_crack_fraction']:.1f} % of pixels marked.")
    return text


def run_notes(results: dict) -> list[str]:
    """Warnings that change how the figures must be read."""
    notes = []
    load = results["machine"].get("load_avg_1m_at_start")
    cores = results["machine"]["logical_cores"]
    if load is not None and load > 0.5 * cores:
        notes.append(f"The machine was busy (load {load:.2f} on {cores} cores): figures are pessimistic and noisy, "
                     "and a multi-threaded agent process can get a larger CPU share than the bare timing loop. "
                     "Rerun on a quiet machine for the record.")
    for block in results["sizes"]:
        tag = size_tag(block["size"])
        for a in block.get("agent", []):
            if a["overhead_fraction"] is not None and a["overhead_fraction"] < 0:
                notes.append(f"{tag} {a['config']}: the agent ran faster than the bare model, which only a busy or "
                             "throttling machine explains: treat this overhead as unmeasured.")
        notes += [f"{tag}: skipped {s}" for s in block.get("agent_skipped", [])]
        notes += [f"{tag}: the agent failed on {e['config']}: {e['error']}" for e in block.get("agent_errors", [])]
    return notes


def render_markdown(results: dict) -> str:
    m = results["machine"]
    model = results["model"]
    bundle = results.get("bundle")
    parts = [f"Measured {results['created']} with `{results['command']}` on {m['cpu_model']} "
             f"({m['logical_cores']} logical cores, {', '.join(m['flags'][-4:]) or 'no SIMD flags'}, load "
             f"{fmt(m.get('load_avg_1m_at_start'), 2)} at start), {results['threads']} inference thread(s). "
             f"Model: {model['label']} ({model['params']:,} params); bundle: "
             f"{bundle['label'] if bundle else 'none (every artifact exported by the bench)'}."]
    if results.get("peak"):
        parts.append(f"Peak estimate: {results['peak']['assumption']}.")
    for block in results["sizes"]:
        cfgs = ", ".join(block["configs"]) or "no device config"
        head = block.get("headline") or {}
        parts.append(f"\n### {size_tag(block['size'])} ({cfgs})\n\n{clip_line(block)}\n\n{variants_table(block)}")
        if block.get("agent"):
            parts.append(f"\nAgent end to end ({block['agent_frames']} frames, every frame processed and published; "
                         f"headline: **{head.get('agent_config')}**):\n\n{agent_table(block)}")
    if results.get("mqtt"):
        parts.append(f"\n### MQTT through the outbox\n\n{mqtt_table(results['mqtt'])}")
    parts.append("\n### Goals\n\n" + "\n".join(f"- {line}" for line in results["goal_lines"]))
    if results.get("notes"):
        parts.append("\n### Notes\n\n" + "\n".join(f"- {n}" for n in results["notes"]))
    for block in results["sizes"]:
        if block.get("estimates"):
            parts.append(f"\n### Estimates for other devices at {size_tag(block['size'])} (ESTIMATES, not measured: "
                         f"peak x efficiency measured here / ops per frame)\n\n{estimates_table(block['estimates'])}")
    return "\n".join(parts) + "\n"
