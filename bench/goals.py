"""The headline figures of a run, the goals they are held against, and the final JSON line.

Per size, the headline is the fastest unpruned INT8 agent configuration (backend x workers),
named in the results; its speed-up over torch fp32 eager, overhead over the bare model, peak
RSS and cold start are the four figures of the goals. At 1280x720 (the survey camera) its
frames/s are also compared with what a vehicle at 50 km/h needs (``coverage_at_50kmh``),
computed with the agent's own ``edge_agent.agent.coverage.frames_needed_per_s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edge_agent.agent.coverage import KMH, SURVEY_SPEED_KMH, footprint_m, frames_needed_per_s

PRIMARY_SIZE = (320, 480)
SURVEY_SIZE = (720, 1280)
SURVEY_GSD_MM = 1.6  # the reference camera's ground resolution (device_configs/x86-dev.yaml)
SURVEY_OVERLAP = 0.1
HEADLINE_KEYS = ("speedup_int8_agent_vs_torch_fp32", "agent_overhead_fraction", "agent_rss_mb", "cold_start_s")


def size_tag(size: tuple[int, int] | list[int]) -> str:
    return f"{size[0]}x{size[1]}"


def size_suffix(size: tuple[int, int] | list[int]) -> str:
    """``_720p`` for 720x1280, ``_320x480`` and so on for the others (final JSON keys)."""
    return "_720p" if tuple(size) == SURVEY_SIZE else f"_{size_tag(size)}"


def footprint(size: tuple[int, int] | list[int], gsd_mm: float = SURVEY_GSD_MM) -> float:
    """Metres of road along travel one frame of ``size`` images (rows along travel)."""
    return footprint_m((int(size[0]), int(size[1])), gsd_mm, "vertical")


def fps_needed(size: tuple[int, int] | list[int] = SURVEY_SIZE, speed_kmh: float = SURVEY_SPEED_KMH,
               overlap: float = SURVEY_OVERLAP) -> float:
    """Frames/s that image every metre at ``speed_kmh`` (13.4 for 1280x720 at 1.6 mm/px and 50 km/h)."""
    return frames_needed_per_s(speed_kmh / KMH, footprint(size), overlap)


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class Goal:
    key: str
    op: str  # ">=" or "<="
    target: float
    text: str
    stretch: bool = False

    def result(self, value: object, size: list[int]) -> dict:
        passed = None if not _finite(value) else (value >= self.target if self.op == ">="  # type: ignore[operator]
                                                  else value <= self.target)  # type: ignore[operator]
        return {"goal": self.key, "size": list(size), "description": self.text, "target": f"{self.op} {self.target:g}",
                "value": value, "passed": passed, "stretch": self.stretch}


def size_goals(size: tuple[int, int] | list[int]) -> list[Goal]:
    rss = 150.0 if size[0] * size[1] <= PRIMARY_SIZE[0] * PRIMARY_SIZE[1] else 250.0
    return [Goal("speedup_int8_agent_vs_torch_fp32", ">=", 6.0, "INT8 agent end to end vs torch fp32 eager (frames/s)"),
            Goal("agent_overhead_fraction", "<=", 0.10, "agent overhead over the bare model time per frame"),
            Goal("agent_rss_mb", "<=", rss, "agent peak RSS with the INT8 model loaded (MB)"),
            Goal("cold_start_s", "<=", 2.0, "process start to first detection received (s)")]


def survey_goals() -> list[Goal]:
    need = fps_needed()
    return [Goal("coverage_at_50kmh", ">=", 1.0, f"INT8 agent fps at 1280x720 / {need:.1f} fps needed at 50 km/h "
                                                 "(every metre imaged, 10 % overlap)"),
            Goal("agent_fps_720p", ">=", 20.0, "INT8 agent fps at 1280x720, stretch goal", stretch=True)]


def headline(block: dict) -> dict:
    """The goal figures at one size: the fastest unpruned INT8 agent run against torch fp32 eager."""
    torch_row = next((r for r in block["variants"] if r["name"] == "torch-fp32"), None)
    runs = [a for a in block.get("agent", []) if a["precision"] == "int8" and not a["variant"].startswith("pruned")
            and a["fps"]]
    best = max(runs, key=lambda a: a["fps"], default=None)
    torch_fps = torch_row["fps"] if torch_row else None
    if best is None:
        return {"agent_config": None, "agent_variant": None, "agent_fps": None, "torch_fp32_fps": torch_fps,
                **{k: None for k in HEADLINE_KEYS}}
    return {"agent_config": best["config"], "agent_variant": best["variant"], "agent_fps": best["fps"],
            "torch_fp32_fps": torch_fps,
            "speedup_int8_agent_vs_torch_fp32": round(best["fps"] / torch_fps, 3) if torch_fps else None,
            "agent_overhead_fraction": best["overhead_fraction"], "agent_rss_mb": best["rss_peak_mb"],
            "cold_start_s": best["cold_start_s"]}


def size_goal_results(block: dict) -> list[dict]:
    head = block["headline"]
    return [g.result(head.get(g.key), block["size"]) for g in size_goals(block["size"])]


def survey(results: dict) -> dict:
    """agent_fps_720p, coverage_at_50kmh and their goals (None where 1280x720 was not measured)."""
    block = next((b for b in results["sizes"] if tuple(b["size"]) == SURVEY_SIZE), None)
    fps = block["headline"]["agent_fps"] if block else None
    need = fps_needed()
    out = {"size": list(SURVEY_SIZE), "speed_kmh": SURVEY_SPEED_KMH, "gsd_mm_per_px": SURVEY_GSD_MM,
           "overlap": SURVEY_OVERLAP, "footprint_m": round(footprint(SURVEY_SIZE), 4),
           "fps_needed_at_50kmh": round(need, 3), "agent_fps_720p": fps,
           "agent_config_720p": block["headline"]["agent_config"] if block else None,
           "coverage_at_50kmh": round(fps / need, 3) if fps else None}
    out["goals"] = [g.result(out[g.key], list(SURVEY_SIZE)) for g in survey_goals()]
    return out


def goal_line(g: dict) -> str:
    state = "n/a " if g["passed"] is None else "PASS" if g["passed"] else "FAIL"
    value = g["value"]
    shown = "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)
    return f"GOAL {state} [{size_tag(g['size'])}] {g['description']}: {shown} (target {g['target']})"


def final_line(results: dict, results_path: str) -> dict:
    """The last stdout line: the four goal figures at each size (unsuffixed = 320x480), fps and coverage at 720p."""
    blocks = {tuple(b["size"]): b for b in results["sizes"]}
    head = blocks[PRIMARY_SIZE]["headline"] if PRIMARY_SIZE in blocks else {}
    line: dict = {k: head.get(k) for k in HEADLINE_KEYS}
    for size in [PRIMARY_SIZE, SURVEY_SIZE] + [s for s in blocks if s not in (PRIMARY_SIZE, SURVEY_SIZE)]:
        h = blocks[size]["headline"] if size in blocks else {}
        sfx = size_suffix(size)
        line.update({f"{k}{sfx}": h.get(k) for k in HEADLINE_KEYS})
        line[f"agent_config{sfx}"] = h.get("agent_config")
        line[f"agent_fps{sfx}"] = h.get("agent_fps")
        line[f"torch_fp32_fps{sfx}"] = h.get("torch_fp32_fps")
    sv = results["survey"]
    line.update({"agent_fps_720p": sv["agent_fps_720p"], "coverage_at_50kmh": sv["coverage_at_50kmh"],
                 "fps_needed_at_50kmh": sv["fps_needed_at_50kmh"],
                 "agent_variant": head.get("agent_variant"), "agent_fps": head.get("agent_fps"),
                 "torch_fp32_fps": head.get("torch_fp32_fps")})
    goals = [g for g in results["goals"] if not g["stretch"]]
    line.update({"goals_passed": sum(1 for g in goals if g["passed"]), "goals_total": len(goals),
                 "quick": results["quick"], "threads": results["threads"], "elapsed_s": results.get("elapsed_s"),
                 "results": results_path})
    return line
