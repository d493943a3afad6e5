"""Model variants at one input size and their latency (and accuracy) on the same frames.

Variants of one source model at one size: the upstream way (``torch-fp32``: the PyTorch module
in eager mode, ``torch.set_num_threads(threads)``), then ONNX fp32/INT8 (onnxruntime), TFLite
fp32/INT8 (ai-edge-litert) and pruned INT8 variants (structured channel pruning). Where the
bundle (``bench.sources``) holds an artifact that runs the size whole, the variant *is* that
artifact, opened through the bundle as the agent opens it (``origin: bundle``); otherwise it
is exported at that size with the converter's own functions (``origin: export``; fixed shapes).

Every variant runs through the runtime's ``Segmenter`` (the torch module as a backend, as in
``crackseg-convert validate``), so all see the same preprocessing and a latency is what the
agent pays per frame. Timings are medians over ``runs`` calls after ``warmup`` calls, cycling
through the same decoded frames of the bench's road clip for every variant.
"""

from __future__ import annotations

import copy
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import BenchError, log


def metric_f1(metrics: dict) -> float | None:
    value = (metrics or {}).get("f1")
    return float(value) if isinstance(value, int | float) else None


@dataclass
class Variant:
    """One runnable model at one input size."""

    name: str          # torch-fp32, onnx-int8, pruned30-onnx-int8 ...
    backend: str       # torch | onnx | tflite
    precision: str     # fp32 | int8
    size: tuple[int, int]
    path: Path | None = None  # the model file, or the bundle folder (origin bundle)
    file: str | None = None   # the artifact file's name
    file_bytes: int | None = None
    macs: int | None = None
    params: int | None = None
    prune_ratio: float | None = None
    origin: str = "export"  # torch | export | bundle | pruned
    threshold: float | None = None
    f1: float | None = None
    f1_source: str = "n/a"
    module: Any = field(default=None, repr=False)
    contract: Any = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {"name": self.name, "backend": self.backend, "precision": self.precision, "size": list(self.size),
                "file": self.file, "file_mb": None if self.file_bytes is None else round(self.file_bytes / 1e6, 3),
                "macs": self.macs, "params": self.params, "prune_ratio": self.prune_ratio, "origin": self.origin,
                "model_path": None if self.path is None else str(self.path),
                "threshold": self.threshold, "f1": self.f1, "f1_source": self.f1_source}


# -- making variants -------------------------------------------------------------------
def write_calibration_images(folder: Path, size: tuple[int, int], n: int, seed: int = 11) -> Path:
    """Generated road images at ``size`` (another seed than the timed clip) for INT8 calibration."""
    import cv2

    from bench.clip import clip_frames

    folder.mkdir(parents=True, exist_ok=True)
    for i, (img, _) in enumerate(clip_frames(n, size, seed=seed, speed_px=size[0])):
        if not cv2.imwrite(str(folder / f"calib_{i:03d}.png"), img):
            raise BenchError(f"could not write calibration image to {folder}")
    return folder


def torch_variant(source, size: tuple[int, int]) -> Variant:
    from reference_model.network import count_macs

    contract = source.contract.model_copy(update={"input_size": size})
    f1 = metric_f1(source.metrics)
    return Variant("torch-fp32", "torch", "fp32", size, macs=count_macs(source.module, *size), params=source.params,
                   prune_ratio=source.prune_ratio, origin="torch", threshold=contract.threshold, module=source.module,
                   contract=contract, f1=f1, f1_source="checkpoint metrics" if f1 is not None else "n/a")


def build_variants(source, size: tuple[int, int], workdir: Path, calib: Callable[[], Path], *,
                   kinds: list[tuple[str, str]],
                   bundle=None, pruned: list | tuple = (), pruned_tflite: bool = True,
                   calib_count: int = 16) -> list[Variant]:
    """torch-fp32, then each (backend, precision) of ``kinds`` from the bundle or exported, then pruned INT8."""
    base = torch_variant(source, size)
    variants = [base]
    calibration = SizeCalibration(calib, calib_count)
    exporter = Exporter(source, "", size, workdir, calibration, macs=base.macs)
    for backend, precision in kinds:
        art = bundle.fitting(backend, precision, size) if bundle is not None else None
        if art is not None:
            f1 = bundle.f1(backend, precision, art.size)
            variants.append(Variant(f"{backend}-{precision}", backend, precision, size, bundle.path, art.file.name,
                                    art.size_bytes, base.macs, source.params, source.prune_ratio, "bundle",
                                    None, f1, bundle.validation_source if f1 is not None else "n/a"))
        else:
            variants.append(exporter.variant(backend, precision))
    backends = sorted({b for b, _ in kinds})
    for p in pruned:
        if p.prune_ratio is None:
            continue
        from reference_model.network import count_macs

        ex = Exporter(p, f"pruned{round(p.prune_ratio * 100):d}-", size, workdir, calibration,
                      macs=count_macs(p.module, *size))
        variants += [ex.variant(b, "int8") for b in backends if b == "onnx" or pruned_tflite]
    return variants


class SizeCalibration:
    """The calibration reader of one size, built on first use and shared by every INT8 export at that
    size (ONNX and TFLite, pruned or not), so its photographs are decoded and mosaicked once."""

    def __init__(self, calib: Callable[[], Path], count: int):
        self.calib, self.count = calib, count
        self._reader: Any = None

    def reader(self, contract):  # noqa: ANN001
        if self._reader is None:
            from converters.calibration import ImageFolderCalibrationReader

            self._reader = ImageFolderCalibrationReader(self.calib(), contract, count=self.count, split="all")
        return self._reader.adapted(contract)


class Exporter:
    """Exports one source model at one size, each file once (INT8 is quantized from the fp32 file)."""

    def __init__(self, source, prefix: str, size: tuple[int, int], workdir: Path, calibration: SizeCalibration,
                 macs: int | None):
        self.source, self.prefix, self.size, self.calibration = source, prefix, size, calibration
        self.out_dir = workdir / f"{size[0]}x{size[1]}"
        self.contract = source.contract.model_copy(update={"input_size": size})
        self.macs = macs
        self._files: dict[tuple[str, str], Path] = {}

    def _reader(self):
        return self.calibration.reader(self.contract)

    def file(self, backend: str, precision: str) -> Path:
        key = (backend, precision)
        if key in self._files:
            return self._files[key]
        from converters.export_onnx import export_onnx
        from converters.export_tflite import export_tflite_fp32, export_tflite_int8
        from converters.quantize_onnx import quantize_onnx

        h, w = self.size
        self.out_dir.mkdir(parents=True, exist_ok=True)
        out = self.out_dir / f"{self.prefix}{backend}-{precision}.{backend}"
        fp32 = self.file(backend, "fp32") if precision == "int8" else None  # INT8 is quantized from it
        log(f"{h}x{w}: {'quantizing' if fp32 else 'exporting'} {self.prefix}{backend}-{precision}")
        if fp32 is None:
            module = copy.deepcopy(self.source.module).eval()
            export = export_onnx if backend == "onnx" else export_tflite_fp32
            export(module, out, self.contract, self.size)
        elif backend == "onnx":
            quantize_onnx(fp32, out, self._reader(), progress=False)
        else:
            export_tflite_int8(fp32, out, self._reader(), progress=False)
        self._files[key] = out
        return out

    def variant(self, backend: str, precision: str) -> Variant:
        s = self.source
        pruned = bool(self.prefix)
        # an exported artifact's accuracy is known only when measured (--data); a pruned model's
        # fine-tune F1 (converter report) is the best figure there is for it
        f1 = metric_f1(s.metrics) if pruned else None
        if pruned:
            f1_source = s.metrics.get("f1_source", "fine-tune (fp32)") if f1 is not None else "n/a (not fine-tuned)"
        else:
            f1_source = "n/a (measure with --data)"
        path = self.file(backend, precision)
        return Variant(f"{self.prefix}{backend}-{precision}", backend, precision, self.size, path, path.name,
                       path.stat().st_size, self.macs, s.params, s.prune_ratio, "pruned" if pruned else "export",
                       self.contract.threshold, f1, f1_source)


# -- running ---------------------------------------------------------------------------
def open_variant(v: Variant, threads: int):
    """The runtime Segmenter of a variant, opened the way the agent opens it."""
    if v.backend == "torch":
        from converters.validate import torch_segmenter

        return torch_segmenter(v.module, v.contract, threads)
    from edge_agent.detectors.runtime import open_model

    if v.path is None:
        raise BenchError(f"{v.name}: no model file")
    return open_model(v.path, backend=v.backend, threads=threads,
                      precision=v.precision if v.origin == "bundle" else None)


def time_segmenter(seg, frames: list[np.ndarray], runs: int, warmup: int) -> dict:
    """Median / p10 / p90 wall time of ``seg.probabilities(frame)``, cycling through ``frames``."""
    for i in range(warmup):
        seg.probabilities(frames[i % len(frames)])
    times = []
    for i in range(max(1, runs)):
        t0 = time.perf_counter()
        seg.probabilities(frames[i % len(frames)])
        times.append((time.perf_counter() - t0) * 1000.0)
    times.sort()

    def q(p: float) -> float:
        return times[min(len(times) - 1, int(round(p * (len(times) - 1))))]

    return {"median_ms": round(statistics.median(times), 3), "p10_ms": round(q(0.1), 3), "p90_ms": round(q(0.9), 3),
            "runs": len(times), "warmup": warmup}


def measure_latency(variants: list[Variant], frames: list[np.ndarray], threads: int, runs: int,
                    warmup: int) -> dict[str, dict]:
    """Latency of every variant, one after the other (never concurrently), on the same frames."""
    out = {}
    for v in variants:
        seg = open_variant(v, threads)
        out[v.name] = time_segmenter(seg, frames, runs, warmup)
        log(f"{v.size[0]}x{v.size[1]} {v.name}: {out[v.name]['median_ms']:.1f} ms median")
        del seg
    return out


def pool_fps(v: Variant, frames: list[np.ndarray], workers: int, threads: int, runs: int, warmup: int) -> float:
    """Frames/s of ``workers`` threads segmenting in parallel, each with the copy of the model the agent's
    inference workers get (``Segmenter.clone``: a shared session where the runtime allows it)."""
    first = open_variant(v, threads)
    # what the agent's workers should get: a shared session where the runtime is thread-safe (onnxruntime),
    # else an interpreter of their own (TFLite)
    shared = bool(getattr(first.backend, "thread_safe", False))
    segs = [first] + [first.clone() if shared else open_variant(v, threads) for _ in range(workers - 1)]
    for k, seg in enumerate(segs):
        for i in range(max(1, warmup)):
            seg.probabilities(frames[(k + i) % len(frames)])
    total = max(runs, 2 * workers)
    counter = iter(range(total))
    lock = threading.Lock()

    def work(seg) -> None:  # noqa: ANN001
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            seg.probabilities(frames[i % len(frames)])

    threads_ = [threading.Thread(target=work, args=(s,)) for s in segs]
    t0 = time.perf_counter()
    for t in threads_:
        t.start()
    for t in threads_:
        t.join()
    return total / (time.perf_counter() - t0)


def score_accuracy(variants: list[Variant], data: Path, limit: int, threads: int) -> None:
    """F1@2px on the val split of ``data`` through the runtime, for every variant (in place)."""
    from converters.validate import labeled_pairs, score_segmenter

    pairs = labeled_pairs(data, "val", limit)
    for v in variants:
        if v.origin == "pruned" and v.f1 is None:
            continue  # not fine-tuned: scoring it would only show that it is untrained
        seg = open_variant(v, threads)
        score = score_segmenter(seg, pairs, v.threshold if v.threshold is not None else seg.threshold,
                                progress=False)
        v.f1, v.f1_source = round(float(score.f1), 4), f"measured: {Path(data).name} val split, {len(pairs)} images"
        log(f"{v.name}: F1@2px {v.f1:.4f}")
