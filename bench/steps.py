"""The steps of a bench run: small functions of the run's state, listed in ``STEPS`` and ``SIZE_STEPS``.

``STEPS`` run once, in order; the ``sizes`` step runs ``SIZE_STEPS`` for each input size. A
step's ``when`` decides from the options whether it runs (``--quick``, ``--sizes``,
``--no-agent``, ``--data`` ...); ``bench.run`` times every step and records it in results.json.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import BenchError, log
from bench.goals import PRIMARY_SIZE, SURVEY_SIZE, headline, size_goal_results, size_tag, survey

BACKENDS = ("onnx", "tflite")


@dataclass
class SizeRun:
    """What the steps of one input size share."""

    size: tuple[int, int]
    block: dict
    clip: Any = None
    frames: list = field(default_factory=list)
    variants: list = field(default_factory=list)
    latency: dict = field(default_factory=dict)
    calib: Path | None = None


@dataclass
class Bench:
    """The state of one run."""

    args: argparse.Namespace
    work: Path
    results: dict
    source: Any = None
    bundle: Any = None
    pruned: list = field(default_factory=list)
    broker: Any = None
    peak: Any = None
    sizes: dict[tuple[int, int], list[str]] = field(default_factory=dict)
    timings: list[dict] = field(default_factory=list)

    @property
    def quick(self) -> bool:
        return bool(self.args.quick)

    @property
    def runs(self) -> int:
        return self.args.runs or (5 if self.quick else 30)

    @property
    def warmup(self) -> int:
        return 2 if self.quick else 5

    def agent_frames(self, size: tuple[int, int]) -> int:
        if self.args.frames:
            return int(self.args.frames)
        large = size[0] * size[1] > 2 * PRIMARY_SIZE[0] * PRIMARY_SIZE[1]
        return (60 if large else 90) if self.quick else (150 if large else 300)

    @property
    def calib_count(self) -> int:
        return 8 if self.quick else 32

    @property
    def backends(self) -> list[str]:
        return [b for b in self.args.backends if b != "tflite" or not self.args.no_tflite]


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[..., None]
    when: Callable[[Bench], bool] = lambda b: True


# -- once ------------------------------------------------------------------------------------
def step_machine(b: Bench) -> None:
    from bench.machine import machine_info, peak_estimate

    info = machine_info()
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    if load is not None and load > 0.5 * info.logical_cores:
        log(f"the machine is busy (load {load} on {info.logical_cores} cores): figures will be pessimistic and noisy")
    b.peak = peak_estimate(info, b.args.clock_ghz)
    b.results.update(machine={**info.to_dict(), "load_avg_1m_at_start": load},
                     peak=b.peak.to_dict() if b.peak else None)


def step_model(b: Bench) -> None:
    from bench.sources import default_bundle, load_source, open_bundle

    b.source = s = load_source(b.args.checkpoint)
    b.results["model"] = {"label": s.label, "trained": s.trained, "params": s.params, "sha256": s.sha256,
                          "threshold": s.contract.threshold}
    log(f"model: {s.label} ({s.params:,} params)")
    note = None
    if not b.args.no_bundle:
        explicit = b.args.bundle is not None
        bundle = open_bundle(b.args.bundle if explicit else default_bundle())
        if bundle.matches(s):
            b.bundle = bundle
        elif explicit:
            b.bundle = bundle
            note = (f"the bundle {bundle.label} was not built from {s.label}: its artifacts are timed against "
                    "another network's torch fp32 baseline")
        else:
            note = (f"the shipped bundle {bundle.label} was not built from {s.label}: every artifact is exported "
                    "from the checkpoint instead")
    if note:
        log(note)
        b.results.setdefault("notes_early", []).append(note)
    bd = b.bundle
    b.results["bundle"] = None if bd is None else {
        "label": bd.label, "name": bd.name, "version": bd.version,
        "artifacts": [{"file": a.file.name, "backend": a.backend, "precision": a.precision, "size": list(a.size)}
                      for a in bd.artifacts]}
    b.sizes = plan_sizes(b.args, b.bundle)
    for size in b.sizes:
        if size[0] % s.contract.stride or size[1] % s.contract.stride:
            raise BenchError(f"--sizes {size_tag(size)}: height and width must be multiples of the model's stride "
                             f"{s.contract.stride}")


def step_pruned(b: Bench) -> None:
    from bench.sources import load_pruned, prune_source

    if b.args.pruned:
        b.pruned = load_pruned(b.args.pruned)
    else:
        b.pruned = [prune_source(b.source, r, PRIMARY_SIZE, b.args.data, b.args.finetune_minutes)
                    for r in b.args.prune_ratios]


def step_broker(b: Bench) -> None:
    from bench.mqtt import LocalBroker

    b.broker = LocalBroker(b.work / "broker").start()
    log(f"mosquitto on {b.broker.url}")


def step_mqtt(b: Bench) -> None:
    from bench.mqtt import mqtt_benchmark

    n = b.args.mqtt_messages or (200 if b.quick else 2000)
    log(f"outbox throughput with {n} detections")
    b.results["mqtt"] = mqtt_benchmark(b.broker.url, n, b.work)


def step_sizes(b: Bench, run_step: Callable[[Step, Bench, SizeRun | None], None]) -> None:
    for size, configs in b.sizes.items():
        sr = SizeRun(size, {"size": list(size), "configs": configs})
        for step in SIZE_STEPS:
            if step.when(b) and (step.name != "accuracy" or size == PRIMARY_SIZE):
                run_step(step, b, sr)
        b.results["sizes"].append(sr.block)


def step_estimates(b: Bench) -> None:
    from bench.machine import device_estimates
    from bench.report import speed_covered_kmh

    for block in b.results["sizes"]:
        torch_row = next(r for r in block["variants"] if r["name"] == "torch-fp32")
        efficiency = {(r["backend"], r["precision"]): r["peak_fraction"] for r in block["variants"]
                      if r["origin"] in ("bundle", "export") and r["peak_fraction"]}
        block["estimates"] = [{"size": block["size"], "macs": torch_row["macs"], **e,
                               "speed_kmh_estimate": speed_covered_kmh(e["fps_estimate"], block["size"])}
                              for e in device_estimates(torch_row["macs"], efficiency)]
    if b.results["sizes"]:
        b.results["estimates"] = b.results["sizes"][0]["estimates"]


def step_goals(b: Bench) -> None:
    from bench.goals import goal_line
    from bench.report import run_notes

    r = b.results
    r["survey"] = survey(r)
    r["goals"] = [g for block in r["sizes"] for g in block["goals"]] + r["survey"]["goals"]
    r["goal_lines"] = [goal_line(g) for g in r["goals"]]
    r["headline"] = next((x["headline"] for x in r["sizes"] if tuple(x["size"]) == PRIMARY_SIZE), None)
    r["notes"] = r.pop("notes_early", []) + run_notes(r)


# -- per size ----------------------------------------------------------------------------------
def step_clip(b: Bench, sr: SizeRun) -> None:
    from bench.clip import read_frames, write_clip

    h, w = sr.size
    n = b.agent_frames(sr.size)
    sr.clip = write_clip(b.work / f"road-{h}x{w}.avi", n, sr.size)
    sr.frames = read_frames(sr.clip.path, min(8, n))
    sr.block["clip"] = sr.clip.to_dict()
    log(f"{h}x{w}: road clip of {n} frames, {100 * sr.clip.crack_fraction_mean:.1f} % crack pixels")


def _calib(b: Bench, sr: SizeRun) -> Path:
    from bench.models import write_calibration_images

    if b.args.calib is not None:
        return Path(b.args.calib)
    if sr.calib is None:
        sr.calib = write_calibration_images(b.work / f"calib-{size_tag(sr.size)}", sr.size, b.calib_count)
    return sr.calib


def step_variants(b: Bench, sr: SizeRun) -> None:
    from bench.models import build_variants

    precisions = ("fp32", "int8") if sr.size == PRIMARY_SIZE or not b.quick else ("int8",)
    kinds = [(be, p) for be in b.backends for p in precisions]
    pruned = b.pruned if sr.size == PRIMARY_SIZE or not b.quick else []
    sr.variants = build_variants(b.source, sr.size, b.work, lambda: _calib(b, sr), kinds=kinds, bundle=b.bundle,
                                 pruned=pruned, pruned_tflite=not b.quick, calib_count=b.calib_count)


def step_accuracy(b: Bench, sr: SizeRun) -> None:
    from bench.models import score_accuracy

    score_accuracy(sr.variants, b.args.data, b.args.data_limit, b.args.threads)


def step_latency(b: Bench, sr: SizeRun) -> None:
    from bench.models import measure_latency
    from bench.report import enrich_rows

    sr.latency = measure_latency(sr.variants, sr.frames, b.args.threads, b.runs, b.warmup)
    sr.block["variants"] = enrich_rows(sr.variants, sr.latency, b.peak, b.args.threads)


def step_detection(b: Bench, sr: SizeRun) -> None:
    """The model finds the clip's cracks: F1@2px of the first INT8 variant against the exact masks."""
    from bench.clip import detection_check
    from bench.models import open_variant

    v = next((v for v in sr.variants if v.precision == "int8" and v.origin in ("bundle", "export")), sr.variants[0])
    sr.block["detection"] = {"variant": v.name, "origin": v.origin,
                             **detection_check(open_variant(v, b.args.threads), sr.clip, sr.frames)}
    d = sr.block["detection"]
    log(f"{size_tag(sr.size)}: {v.name} finds the clip's cracks with F1@2px {d['f1_2px']:.3f}")


def agent_setups(b: Bench, sr: SizeRun, supports_workers: bool) -> tuple[list, list[str]]:
    from bench.agent import AgentSetup

    setups, skipped = [], []
    for v in sr.variants:
        if v.origin not in ("bundle", "export") or (v.precision == "fp32" and b.quick):
            continue
        for workers in (b.args.workers if v.precision == "int8" else [1]):
            if workers > 1 and not supports_workers:
                skipped.append(f"{v.name} with {workers} workers: model.workers is not in this agent's config yet")
                continue
            threads = max(1, b.args.threads // workers)
            setups.append(AgentSetup(v.name, v.backend, v.precision, v.path, v.origin == "bundle", workers, threads))
    return setups, skipped


def step_agent(b: Bench, sr: SizeRun) -> None:
    from bench.agent import config_supports, run_agent
    from bench.models import pool_fps

    setups, skipped = agent_setups(b, sr, config_supports()["workers"])
    by_name = {v.name: v for v in sr.variants}
    sr.block.update(agent_frames=sr.clip.frames, agent=[], agent_skipped=skipped, agent_errors=[])
    for s in setups:
        v = by_name[s.variant]
        if s.workers == 1 and s.threads == b.args.threads:
            bare = 1000.0 / sr.latency[v.name]["median_ms"]
        else:
            bare = pool_fps(v, sr.frames, s.workers, s.threads, b.runs, b.warmup)
        log(f"{size_tag(sr.size)}: agent end to end, {s.name}")
        try:
            a = run_agent(s, size=sr.size, video=sr.clip.path, frames=sr.clip.frames, broker_url=b.broker.url,
                          workdir=b.work, bare_fps=bare, base_config=b.args.agent_config)
        except BenchError as exc:
            log(f"agent failed: {exc}")
            sr.block["agent_errors"].append({"config": s.name, "error": str(exc)})
            continue
        sr.block["agent"].append(a.to_dict())


def step_headline(b: Bench, sr: SizeRun) -> None:
    sr.block["headline"] = headline(sr.block)
    sr.block["goals"] = size_goal_results(sr.block)


def needs_agent(b: Bench) -> bool:
    return not b.args.no_agent


STEPS = (
    Step("machine", step_machine),
    Step("model", step_model),
    Step("pruned", step_pruned, lambda b: bool(b.args.pruned or b.args.prune_ratios)),
    Step("broker", step_broker, needs_agent),
    Step("mqtt", step_mqtt, needs_agent),
    Step("sizes", step_sizes),
    Step("estimates", step_estimates),
    Step("goals", step_goals),
)

SIZE_STEPS = (
    Step("clip", step_clip),
    Step("variants", step_variants),
    Step("accuracy", step_accuracy, lambda b: b.args.data is not None),
    Step("latency", step_latency),
    Step("detection", step_detection),
    Step("agent", step_agent, needs_agent),
    Step("headline", step_headline),
)


def run_step(step: Step, b: Bench, sr: SizeRun | None = None) -> None:
    """Run one step (``sizes`` gets the runner for its own steps) and record how long it took."""
    t0 = time.monotonic()
    if step.name == "sizes":
        step.run(b, run_step)
    elif sr is not None:
        step.run(b, sr)
    else:
        step.run(b)
    b.timings.append({"step": step.name, "size": list(sr.size) if sr else None,
                      "seconds": round(time.monotonic() - t0, 2)})


def plan_sizes(args: argparse.Namespace, bundle: Any) -> dict[tuple[int, int], list[str]]:
    """--sizes, else 320x480 and 1280x720 (quick) and also every device config's and bundle artifact's size
    (full); each with the device configs whose camera has that size."""
    from bench.sources import device_config_sizes

    named = device_config_sizes()
    if args.sizes:
        chosen = list(args.sizes)
    else:
        chosen = [PRIMARY_SIZE, SURVEY_SIZE]
        if not args.quick:
            chosen += list(named) + ([a.size for a in bundle.artifacts] if bundle is not None else [])
    return {size: named.get(size, []) for size in dict.fromkeys(chosen)}
