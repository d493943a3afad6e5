"""Score every model variant through the device runtime: F1@2px, IoU, latency, size.

Why through the runtime (``edge_agent.detectors``): the figures must describe what the
vehicle will run: same tiling of frames to the export size, same padding, normalisation and
thresholding. The torch fp32 model is plugged into the same ``Segmenter`` as a backend, so
torch, ONNX and TFLite are compared on identical inputs. F1 uses a 2 px tolerance with
counts summed over the data set (``edge_agent.evaluation.metrics``), like training.

Gate: an INT8 variant may lose at most ``max_f1_drop`` F1 against the fp32 variant of the
same format (against torch fp32 when that format has no fp32 variant).
"""

from __future__ import annotations

import hashlib
import json
import platform
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from converters.errors import ConvertError
from edge_agent.contract import InferenceContract

VARIANT_ORDER = ("torch-fp32", "onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8")


class TorchBackend:
    """A PyTorch module behind the runtime's backend interface (``run(batch) -> raw output``)."""

    name = "torch"
    precision = "fp32"

    def __init__(self, module, contract: InferenceContract, threads: int | None = None):
        import torch

        self.module = module.eval()
        self.contract = contract.model_copy(update={"layout": "NCHW"})
        self.threads = threads
        self._torch = torch

    def run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        prev = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with torch.no_grad():
                return self.module(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).numpy()
        finally:
            torch.set_num_threads(prev)


def torch_segmenter(module, contract: InferenceContract, threads: int | None = None):
    """The runtime's Segmenter around a torch module (same preprocessing as the artifacts)."""
    from edge_agent.detectors.runtime import ModelInfo, Segmenter

    be = TorchBackend(module, contract, threads)
    info = ModelInfo(name="torch", version="source", backend="torch", precision="fp32", path="<torch>",
                     strategy="tile" if be.contract.input_size else "pad", input_size=be.contract.input_size)
    return Segmenter(be, info, threshold=contract.threshold)


@dataclass
class LabeledPair:
    image: Path
    mask: Path


def labeled_pairs(folder: str | Path, split: str = "val", limit: int | None = None) -> list[LabeledPair]:
    """Image/mask pairs of a labeled folder for ``split`` (val|train|all), optionally a stable subset."""
    from reference_model.dataset import list_pairs, select_split

    if split not in ("val", "train", "all"):
        raise ConvertError(f"split '{split}' must be val, train or all")
    try:
        samples = select_split(list_pairs(Path(folder)), split)
    except FileNotFoundError as exc:
        raise ConvertError(f"validation data: {exc}") from exc
    if not samples:
        raise ConvertError(f"validation data {folder}: no image in the '{split}' split; use --split all")
    if limit:
        samples = sorted(samples, key=lambda s: hashlib.sha256(s.stem.encode()).hexdigest())[:limit]
    return [LabeledPair(s.image_path, s.mask_path) for s in samples]


def score_segmenter(seg, pairs: list[LabeledPair], threshold: float, desc: str = "", progress: bool = True):
    from tqdm import tqdm

    from edge_agent.evaluation.metrics import ScoreAccumulator
    from edge_agent.imageio import read_image
    from reference_model.dataset import read_mask

    acc = ScoreAccumulator(2.0)
    for pair in tqdm(pairs, desc=desc, disable=not progress, mininterval=5, leave=False):
        frame = read_image(pair.image)
        gt = read_mask(pair.mask)
        if gt.shape != frame.shape[:2]:
            raise ConvertError(f"{pair.mask}: size {gt.shape} differs from its image {frame.shape[:2]}")
        acc.add(seg.probabilities(frame) >= threshold, gt)
    return acc.result()


def reference_frame(image_path: Path, size: tuple[int, int]) -> np.ndarray:
    """A frame of exactly ``size`` cut from a real image (reflect-padded when smaller)."""
    import cv2

    from edge_agent.imageio import read_image

    img = read_image(image_path)
    h, w = size
    img = img[:h, :w]
    ph, pw = h - img.shape[0], w - img.shape[1]
    while ph > 0 or pw > 0:
        img = cv2.copyMakeBorder(img, 0, min(ph, img.shape[0] - 1), 0, min(pw, img.shape[1] - 1),
                                 cv2.BORDER_REFLECT_101)
        ph, pw = h - img.shape[0], w - img.shape[1]
    return np.ascontiguousarray(img)


def median_latency_ms(seg, frame: np.ndarray, runs: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``seg.probabilities(frame)`` (preprocessing + inference + sigmoid)."""
    for _ in range(warmup):
        seg.probabilities(frame)
    times = []
    for _ in range(max(1, runs)):
        t0 = time.perf_counter()
        seg.probabilities(frame)
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(statistics.median(times))


def gate(results: dict[str, dict], max_f1_drop: float) -> tuple[bool, dict[str, float]]:
    """F1 drop of every INT8 variant against its fp32 reference; passed when all are within bounds."""
    drops = {}
    for label, r in results.items():
        if r["precision"] != "int8":
            continue
        ref = f"{r['backend']}-fp32" if f"{r['backend']}-fp32" in results else "torch-fp32"
        if ref not in results:
            continue
        drops[label] = round(results[ref]["f1"] - r["f1"], 6)
    return all(d <= max_f1_drop for d in drops.values()), drops


def validate_models(data: str | Path, artifacts: dict[str, Path], contract: InferenceContract, torch_module=None,
                    split: str = "val", threads: int | None = None, runs: int = 20, max_f1_drop: float = 0.01,
                    limit: int | None = None, threshold: float | None = None, progress: bool = True) -> dict:
    """Report dict for ``artifacts`` (label -> .onnx/.tflite path) and optionally the torch model.

    Labels are ``<backend>-<precision>`` (e.g. ``onnx-int8``); the precision and backend
    are read from the runtime, not from the label.
    """
    from edge_agent.detectors.runtime import open_model

    pairs = labeled_pairs(data, split, limit)
    threshold = contract.threshold if threshold is None else threshold
    segs = {}
    if torch_module is not None:
        segs["torch-fp32"] = (torch_segmenter(torch_module, contract, threads), None)
    for path in artifacts.values():
        seg = open_model(path, threads=threads)
        label = f"{seg.backend_name}-{seg.info.precision}"
        if label in segs:
            raise ConvertError(f"two {label} models given ({segs[label][1]} and {path}); validate one at a time")
        segs[label] = (seg, Path(path))
    if not segs:
        raise ConvertError("nothing to validate: give at least one model")
    sizes = {seg.contract.input_size for seg, _ in segs.values()}
    lat_size = next(iter(sizes)) or (contract.input_size or (320, 480))
    frame = reference_frame(pairs[0].image, lat_size)
    results: dict[str, dict] = {}
    for label in sorted(segs, key=lambda k: VARIANT_ORDER.index(k) if k in VARIANT_ORDER else 99):
        seg, path = segs[label]
        score = score_segmenter(seg, pairs, threshold, desc=f"validate {label}", progress=progress)
        results[label] = {"precision": seg.info.precision, "backend": seg.backend_name,
                          "file": path.name if path else None, "f1": score.f1, "iou": score.iou,
                          "precision_px": score.precision, "recall_px": score.recall,
                          "median_ms": round(median_latency_ms(seg, frame, runs), 3) if runs > 0 else None,
                          "size_bytes": path.stat().st_size if path else None}
    passed, drops = gate(results, max_f1_drop)
    return {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "data": str(data), "split": split,
            "images": len(pairs), "threshold": threshold, "tolerance_px": 2.0, "threads": threads,
            "latency_input": list(lat_size), "latency_runs": runs, "machine": platform.machine(),
            "results": results, "f1_drop_vs_fp32": drops, "max_f1_drop": max_f1_drop, "passed": passed}


def summary_for_manifest(report: dict) -> dict:
    """The subset of a report that goes into the bundle manifest (``ValidationSummary``)."""
    keys = ("data", "split", "images", "threshold", "tolerance_px", "threads", "latency_input", "results",
            "f1_drop_vs_fp32", "max_f1_drop", "passed")
    out = {k: report[k] for k in keys}
    out["data"] = Path(report["data"]).name
    return out


def render_markdown(report: dict) -> str:
    lines = [f"# Validation report ({report['created']})", "",
             f"Data: `{report['data']}` split **{report['split']}**, {report['images']} images; threshold "
             f"{report['threshold']:.2f}; F1 with {report['tolerance_px']:g} px tolerance, counts summed over the "
             f"data set. Latency: median of {report['latency_runs']} runs of one "
             f"{report['latency_input'][0]}x{report['latency_input'][1]} frame through the runtime "
             f"(threads: {report['threads'] or 'default'}, {report['machine']}).", "",
             "| model | F1@2px | IoU | precision | recall | median ms | size |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, r in report["results"].items():
        ms = f"{r['median_ms']:.1f}" if r["median_ms"] is not None else "-"
        size = f"{r['size_bytes'] / 1e6:.2f} MB" if r["size_bytes"] else "-"
        lines.append(f"| {label} | {r['f1']:.4f} | {r['iou']:.4f} | {r['precision_px']:.4f} | {r['recall_px']:.4f} "
                     f"| {ms} | {size} |")
    lines.append("")
    for label, drop in report["f1_drop_vs_fp32"].items():
        ok = "ok" if drop <= report["max_f1_drop"] else "**TOO LARGE**"
        lines.append(f"- {label}: F1 drop vs fp32 {drop:+.4f} (allowed {report['max_f1_drop']:.4f}) {ok}")
    lines += ["", f"Result: **{'PASSED' if report['passed'] else 'FAILED'}**", ""]
    return "\n".join(lines)


def write_reports(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    j, m = out_dir / "report.json", out_dir / "report.md"
    j.write_text(json.dumps(report, indent=2) + "\n")
    m.write_text(render_markdown(report))
    return j, m
