"""The validation report (report.json, report.md) and its summary in the bundle manifest.

The manifest's ``validation`` section (``edge_agent.bundle.manifest.ValidationSummary``, schema
1, unknown keys refused) has one ``results`` table; the native-vs-tiled check is listed there
too, as two more rows per format so a device-side reader needs no new schema:
``<fmt>-int8@<small>-tiles@<large>`` (the small artifact run as tiles over the large frames,
scored against the labels, latency per large frame) and ``agreement:<fmt>-int8@<large>~<small>``
(F1/IoU between the native and the tiled masks; precision = tiled pixels near native ones).
"""

from __future__ import annotations

import json
from pathlib import Path

ENTRY_KEYS = ("precision", "backend", "file", "f1", "iou", "precision_px", "recall_px", "median_ms", "size_bytes")


def tiled_label(c: dict) -> str:
    return f"{c['backend']}-{c['precision']}@{c['tiled']}-tiles@{c['native']}"


def agreement_label(c: dict) -> str:
    return f"agreement:{c['backend']}-{c['precision']}@{c['native']}~{c['tiled']}"


def summary_for_manifest(report: dict) -> dict:
    """The subset of a report that goes into the bundle manifest (``ValidationSummary``)."""
    results = {label: {k: r[k] for k in ENTRY_KEYS} for label, r in report["results"].items()}
    for c in report.get("native_vs_tiled", []):
        results[tiled_label(c)] = {"precision": c["precision"], "backend": c["backend"], "file": None,
                                   "f1": c["f1_tiled"], "iou": c["iou_tiled"], "precision_px": c["precision_tiled"],
                                   "recall_px": c["recall_tiled"], "median_ms": c["tiled_median_ms"],
                                   "size_bytes": None}
        results[agreement_label(c)] = {"precision": c["precision"], "backend": c["backend"], "file": None,
                                       "f1": c["f1_between"], "iou": c["iou_between"],
                                       "precision_px": c["precision_between"], "recall_px": c["recall_between"],
                                       "median_ms": None, "size_bytes": None}
    sizes = [tuple(int(v) for v in s.split("x")) for s in report.get("sizes", {})]
    return {"data": report["data"], "split": report["split"], "images": report["images"],
            "threshold": report["threshold"], "tolerance_px": report["tolerance_px"], "threads": report["threads"],
            "latency_input": sizes[0] if len(sizes) == 1 else None, "results": results,
            "f1_drop_vs_fp32": report["f1_drop_vs_fp32"], "max_f1_drop": report["max_f1_drop"],
            "passed": report["passed"]}


def render_markdown(report: dict) -> str:
    load = report.get("load_avg_1min")
    sizes = ", ".join(f"{n} frames of {s}" for s, n in report.get("sizes", {}).items())
    lines = [f"# Validation report ({report['created']})", "",
             f"Data: `{report['data']}` split **{report['split']}**, {report['images']} photographs mosaicked "
             f"at native scale into frames of each artifact's size ({sizes}); threshold {report['threshold']:.2f}; "
             f"F1 with {report['tolerance_px']:g} px tolerance, counts summed over the frames. Latency: median of "
             f"{report['latency_runs']} runs of one frame of the artifact's size through the runtime "
             f"(threads: {report['threads'] or 'default'}, {report['machine']}, {report.get('cpus')} CPUs"
             + (f", load average {load[0]:.1f} -> {load[1]:.1f}" if load else "") + ").", "",
             "| model | frames | F1@2px | IoU | precision | recall | median ms | size |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for label, r in report["results"].items():
        ms = f"{r['median_ms']:.1f}" if r["median_ms"] is not None else "-"
        size = f"{r['size_bytes'] / 1e6:.2f} MB" if r["size_bytes"] else "-"
        lines.append(f"| {label} | {r.get('frames', '-')} | {r['f1']:.4f} | {r['iou']:.4f} | {r['precision_px']:.4f} "
                     f"| {r['recall_px']:.4f} | {ms} | {size} |")
    lines.append("")
    for label, drop in report["f1_drop_vs_fp32"].items():
        ok = "ok" if drop <= report["max_f1_drop"] else "**TOO LARGE**"
        lines.append(f"- {label}: F1 drop vs fp32 {drop:+.4f} (allowed {report['max_f1_drop']:.4f}) {ok}")
    cross = report.get("native_vs_tiled", [])
    if cross:
        lines += ["", "## Native frame vs tiles", "",
                  "The large artifact on whole frames against the smallest artifact of the same format run over "
                  "the same frames as the runtime's overlapping tiles (both INT8, same labels).", "",
                  "| format | frames | native F1 | tiled F1 | native - tiled | F1 between masks | IoU between "
                  "| native ms | tiled ms (tiles) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for c in cross:
            native = report["results"].get(f"{c['backend']}-{c['precision']}@{c['native']}", {})
            nms = f"{native['median_ms']:.1f}" if native.get("median_ms") is not None else "-"
            tms = f"{c['tiled_median_ms']:.1f}" if c["tiled_median_ms"] is not None else "-"
            ok = "" if c["passed"] else " **TOO LOW**"
            lines.append(f"| {c['backend']} {c['native']} vs {c['tiled']} tiles | {c['frames']} | "
                         f"{c['f1_native']:.4f} | {c['f1_tiled']:.4f} | {c['native_minus_tiled']:+.4f}{ok} | "
                         f"{c['f1_between']:.4f} | {c['iou_between']:.4f} | {nms} | {tms} ({c['tiles_per_frame']}) |")
    lines += _width_lines(report)
    lines += ["", f"Result: **{'PASSED' if report['passed'] else 'FAILED'}**", ""]
    return "\n".join(lines)


def _width_lines(report: dict) -> list[str]:
    widths = report.get("widths") or []
    if not widths:
        return []
    wt = report.get("width_threshold")
    where = (f"where the probability reaches the contract's width threshold {wt:.2f}" if wt is not None
             else f"on the detection mask (threshold {report['threshold']:.2f}; the contract sets no width threshold)")
    lines = ["", "## Crack width", "",
             "Median width (px) along the skeleton of the predicted cracks, measured " + where
             + ", and of the labels, per labeled folder, on its photographs (the smallest INT8 artifact of "
             "each format, run as the runtime runs any frame). Label styles differ between folders: only "
             "pixel-accurate labels say how wide a crack truly is.", "",
             "| model | data | images | F1@2px | width predicted | width labelled | error |",
             "|---|---|---:|---:|---:|---:|---:|"]

    def px(v: float | None, sign: str = "") -> str:
        return "-" if v is None else f"{v:{sign}.2f}"

    for w in widths:
        lines.append(f"| {w['model']} | {w['data']} | {w['images']} | {w['f1']:.4f} | {px(w['width_pred_px'])} "
                     f"| {px(w['width_label_px'])} | {px(w['width_error_px'], '+')} |")
    return lines


def write_reports(report: dict, out_dir: str | Path, stem: str = "report") -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    j, m = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    j.write_text(json.dumps(report, indent=2) + "\n")
    m.write_text(render_markdown(report))
    return j, m
