"""PNG plots of a results dict (matplotlib, Agg: no display needed on a vehicle or a CI box).

- ``latency.png``: median latency per variant and its speed-up over torch fp32 eager, per size;
- ``accuracy_vs_speed.png``: F1@2px against frames/s for the unpruned and pruned variants
  (variants without an accuracy figure are listed on the plot as n/a, not left out silently);
- ``agent.png``: agent frames/s against the bare model's, and the agent's peak RSS, per configuration;
- ``speed_coverage.png``: frames/s against vehicle speed: the frames/s each speed needs at each
  size (1.6 mm/px, 10 % overlap), and for each backend x size the speed up to which the agent
  (and the bare model) images every metre: ``fps x footprint x (1 - overlap) x 3.6``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

COLORS = {"torch": "#7f7f7f", "onnx": "#1f77b4", "tflite": "#ff7f0e"}


def _size_label(size: list[int]) -> str:
    return f"{size[0]}x{size[1]}"


def plot_latency(results: dict, out_dir: Path) -> Path:
    sizes = results["sizes"]
    fig, axes = plt.subplots(2, len(sizes), figsize=(max(7.0, 6.5 * len(sizes)), 8), squeeze=False)
    for col, block in enumerate(sizes):
        rows = block["variants"]
        names = [r["name"] for r in rows]
        colors = [COLORS.get(r["backend"], "#2ca02c") for r in rows]
        hatches = ["//" if r["precision"] == "int8" else "" for r in rows]
        ax = axes[0][col]
        bars = ax.bar(names, [r["median_ms"] for r in rows], color=colors)
        for bar, hatch in zip(bars, hatches, strict=True):
            bar.set_hatch(hatch)
        ax.set_ylabel("median latency per frame (ms)")
        ax.set_title(f"{_size_label(block['size'])}, {results['threads']} thread(s)")
        ax.tick_params(axis="x", rotation=40)
        for lab in ax.get_xticklabels():
            lab.set_ha("right")
        ax2 = axes[1][col]
        speed = [r["speedup_vs_torch_fp32"] for r in rows]
        bars = ax2.bar(names, speed, color=colors)
        for bar, hatch, s in zip(bars, hatches, speed, strict=True):
            bar.set_hatch(hatch)
            ax2.annotate(f"{s:.1f}x", (bar.get_x() + bar.get_width() / 2, s), ha="center", va="bottom", fontsize=8)
        ax2.axhline(1.0, color="black", linewidth=0.8)
        ax2.set_ylabel("speed-up over torch fp32 eager")
        ax2.tick_params(axis="x", rotation=40)
        for lab in ax2.get_xticklabels():
            lab.set_ha("right")
    fig.suptitle(f"Per-backend latency on {results['machine']['cpu_model']} (hatched = INT8)")
    fig.tight_layout()
    path = out_dir / "latency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_accuracy_vs_speed(results: dict, out_dir: Path) -> Path:
    block = results["sizes"][0]
    rows = [r for r in block["variants"] if r["backend"] != "torch" or r["origin"] == "checkpoint"]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    missing = []
    for r in rows:
        fps = 1000.0 / r["median_ms"]
        if r["f1"] is None:
            missing.append(f"{r['name']} ({fps:.0f} fps)")
            continue
        marker = "s" if r["origin"] == "pruned" else "o"
        ax.scatter(fps, r["f1"], color=COLORS.get(r["backend"], "#2ca02c"), marker=marker, s=60)
        ax.annotate(r["name"], (fps, r["f1"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel(f"frames/s, bare model ({_size_label(block['size'])}, {results['threads']} thread(s))")
    ax.set_ylabel("F1@2px")
    ax.set_title("Accuracy vs speed (squares = pruned)")
    if missing:
        ax.text(0.01, 0.01, "accuracy n/a: " + ", ".join(missing), transform=ax.transAxes, fontsize=7,
                va="bottom", wrap=True)
    if len(missing) == len(rows):
        ax.set_ylim(0, 1)
        ax.set_xlim(0, max(1000.0 / r["median_ms"] for r in rows) * 1.1)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out_dir / "accuracy_vs_speed.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_agent(results: dict, out_dir: Path) -> Path | None:
    runs = [(block["size"], a) for block in results["sizes"] for a in block.get("agent", [])]
    if not runs:
        return None
    labels = [f"{a['config']}\n{_size_label(size)}" for size, a in runs]
    x = range(len(runs))
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(max(8.0, 1.3 * len(runs) + 2), 8.5))
    ax.bar([i - 0.2 for i in x], [a["bare_fps"] or 0 for _, a in runs], width=0.4, label="bare model", color="#c7c7c7")
    ax.bar([i + 0.2 for i in x], [a["fps"] or 0 for _, a in runs], width=0.4, label="whole agent",
           color=[COLORS.get(a["backend"], "#2ca02c") for _, a in runs])
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel("frames/s")
    ax.set_title("Agent end to end vs bare model")
    top = max([a["bare_fps"] or 0 for _, a in runs] + [a["fps"] or 0 for _, a in runs] + [1.0])
    ax.set_ylim(0, top * 1.25)
    ax.legend(loc="upper right")
    ax2.bar(list(x), [a["rss_peak_mb"] for _, a in runs], color=[COLORS.get(a["backend"], "#2ca02c") for _, a in runs])
    goals = [150.0 if size[0] * size[1] <= 320 * 480 else 250.0 for size, _ in runs]
    ax2.plot([i for i in x], goals, color="red", linewidth=0, marker="_", markersize=22, label="goal (150 / 250 MB)")
    ax2.set_xticks(list(x), labels, fontsize=8)
    ax2.set_ylim(0, max([a["rss_peak_mb"] for _, a in runs] + goals) * 1.2)
    ax2.set_ylabel("peak RSS (MB)")
    ax2.set_title("Agent memory")
    ax2.legend()
    fig.tight_layout()
    path = out_dir / "agent.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _best_per_backend(block: dict) -> dict[str, tuple[float, float | None, str]]:
    """backend -> (best agent fps, its bare fps, configuration) at one size."""
    best: dict[str, tuple[float, float | None, str]] = {}
    for a in block.get("agent", []):
        if a["fps"] and (a["backend"] not in best or a["fps"] > best[a["backend"]][0]):
            best[a["backend"]] = (a["fps"], a["bare_fps"], a["config"])
    return best


def plot_speed_coverage(results: dict, out_dir: Path) -> Path | None:
    from bench.goals import SURVEY_OVERLAP, footprint, fps_needed
    from edge_agent.agent.coverage import SURVEY_SPEED_KMH, max_speed_kmh

    rows = [(block["size"], backend, *v) for block in results["sizes"]
            for backend, v in _best_per_backend(block).items()]
    if not rows:
        return None
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    top_speed = max(120.0, 1.15 * max(max_speed_kmh(fps, footprint(size), SURVEY_OVERLAP) or 0
                                      for size, _, fps, _, _ in rows))
    speeds = [top_speed * i / 100 for i in range(101)]
    styles = ["-", "--", ":", "-."]
    for k, size in enumerate(dict.fromkeys(tuple(r[0]) for r in rows)):
        ax.plot(speeds, [fps_needed(size, v) for v in speeds], color="black", linestyle=styles[k % 4], linewidth=1,
                label=f"needed at {_size_label(list(size))} ({footprint(size):.2f} m per frame)")
    for size, backend, fps, _, _ in rows:
        v = max_speed_kmh(fps, footprint(size), SURVEY_OVERLAP) or 0.0
        color = COLORS.get(backend, "#2ca02c")
        ax.plot([0, v], [fps, fps], color=color, linewidth=1.5)
        ax.scatter([v], [fps], color=color, zorder=3)
        ax.annotate(f"{backend} {_size_label(size)}: {fps:.1f} fps -> {v:.0f} km/h", (v, fps),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axvline(SURVEY_SPEED_KMH, color="red", linewidth=0.8, linestyle="--")
    ax.set_xlim(0, top_speed)
    ax.set_ylim(0, max(fps for _, _, fps, _, _ in rows) * 1.3)
    ax.set_xlabel("vehicle speed (km/h)")
    ax.set_ylabel("frames/s")
    ax.set_title("Agent frames/s against the frames/s each speed needs")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    labels = [f"{backend}\n{_size_label(size)}" for size, backend, *_ in rows]
    y = range(len(rows))
    agent_v = [max_speed_kmh(fps, footprint(size), SURVEY_OVERLAP) or 0 for size, _, fps, _, _ in rows]
    bare_v = [max_speed_kmh(bare or 0, footprint(size), SURVEY_OVERLAP) or 0 for size, _, _, bare, _ in rows]
    ax2.barh([i + 0.2 for i in y], bare_v, height=0.4, color="#c7c7c7", label="bare model")
    ax2.barh([i - 0.2 for i in y], agent_v, height=0.4, label="whole agent (best configuration)",
             color=[COLORS.get(b, "#2ca02c") for _, b, *_ in rows])
    for i, v in enumerate(agent_v):
        ax2.annotate(f"{v:.0f}", (v, i - 0.2), textcoords="offset points", xytext=(3, -3), fontsize=8)
    ax2.axvline(SURVEY_SPEED_KMH, color="red", linewidth=1, linestyle="--", label=f"{SURVEY_SPEED_KMH:g} km/h")
    ax2.set_yticks(list(y), labels, fontsize=8)
    ax2.set_xlabel("speed up to which every metre is imaged (km/h)")
    ax2.set_title(f"Speed covered (1.6 mm/px, {SURVEY_OVERLAP:.0%} overlap)")
    ax2.legend(fontsize=8)
    fig.suptitle(f"Coverage against vehicle speed on {results['machine']['cpu_model']}")
    fig.tight_layout()
    path = out_dir / "speed_coverage.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(results: dict, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [plot_latency(results, out_dir), plot_accuracy_vs_speed(results, out_dir)]
    optional = [plot_agent(results, out_dir), plot_speed_coverage(results, out_dir)]
    return paths + [p for p in optional if p is not None]
