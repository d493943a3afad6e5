"""Model variants and their per-backend latency (and accuracy) on the same frames.

Variants of one source model at one input size: the upstream way (``torch-fp32``: the
PyTorch module in eager mode, ``torch.set_num_threads(threads)``), then what the converter
makes of it: ONNX fp32/INT8 (onnxruntime), TFLite fp32/INT8 (ai-edge-litert) and pruned
INT8 variants (structured channel pruning). Every artifact is exported *at the benchmark
size* (a fixed shape: dynamic shapes made INT8 slower than fp32 here) through the
converter's own functions, so the bench measures exactly what ``crackseg-convert`` ships.

Every variant runs through the runtime's ``Segmenter`` (``edge_agent.detectors``), the torch
module included (as a backend, like ``crackseg-convert validate`` does), so all see the same
preprocessing and the latency is what the agent pays per frame: normalisation + inference +
sigmoid. Timings are medians over ``runs`` calls after ``warmup`` calls, cycling through the
same generated survey frames for every variant.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import BenchError

PRIMARY_SIZE = (320, 480)
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "runs" / "reference" / "best.pt"


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


@dataclass
class SourceModel:
    """The PyTorch model every variant is made from."""

    module: Any
    contract: Any  # InferenceContract (threshold, normalisation, stride)
    label: str
    trained: bool
    params: int
    metrics: dict = field(default_factory=dict)
    prune_ratio: float | None = None


def load_source(checkpoint: Path | None) -> SourceModel:
    """The checkpoint (converter loader, ``weights_only``), or the untrained reference network.

    Untrained weights are fine for speed (same shapes, same MACs) but not for accuracy, and
    they mark most pixels as cracks, which makes measurement in the agent slower than with
    a trained model: the results say so (``trained: false``).
    """
    from converters.loading import load_model
    from reference_model.network import build_reference_model, count_params

    if checkpoint is None and DEFAULT_CHECKPOINT.is_file():
        checkpoint = DEFAULT_CHECKPOINT
    if checkpoint is None:
        import torch

        from edge_agent.contract import InferenceContract

        torch.manual_seed(0)
        module = build_reference_model().eval()
        log("no --checkpoint and no runs/reference/best.pt: untrained reference network (speed only, "
            "accuracy n/a)")
        return SourceModel(module, InferenceContract(stride=16), "reference (untrained)", False,
                           count_params(module))
    if not Path(checkpoint).is_file():
        raise BenchError(f"checkpoint not found: {checkpoint} (give --checkpoint PATH to a trained model)")
    loaded = load_model(checkpoint)
    module = loaded.require_torch("the benchmark")
    ratio = (loaded.pruning or {}).get("ratio") if isinstance(loaded.pruning, dict) else None
    return SourceModel(module.eval(), loaded.contract, str(checkpoint), True, count_params(module),
                       dict(loaded.metrics or {}), ratio)


def metric_f1(metrics: dict) -> float | None:
    value = (metrics or {}).get("f1")
    return float(value) if isinstance(value, (int, float)) else None


@dataclass
class Variant:
    """One runnable model at one input size."""

    name: str          # torch-fp32, onnx-int8, pruned30-onnx-int8, bundle-tflite-int8 ...
    backend: str       # torch | onnx | tflite
    precision: str     # fp32 | int8
    size: tuple[int, int]
    path: Path | None = None
    macs: int | None = None
    params: int | None = None
    prune_ratio: float | None = None
    origin: str = "checkpoint"  # checkpoint | pruned | bundle
    threshold: float | None = None
    f1: float | None = None
    f1_source: str = "n/a"
    module: Any = field(default=None, repr=False)
    contract: Any = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {"name": self.name, "backend": self.backend, "precision": self.precision, "size": list(self.size),
                "file": self.path.name if self.path else None,
                "file_mb": round(self.path.stat().st_size / 1e6, 3) if self.path and self.path.exists() else None,
                "macs": self.macs, "params": self.params, "prune_ratio": self.prune_ratio, "origin": self.origin,
                "threshold": self.threshold, "f1": self.f1, "f1_source": self.f1_source}


# -- inputs ----------------------------------------------------------------------------
def bench_frames(size: tuple[int, int], n: int, seed: int = 7) -> list[np.ndarray]:
    """``n`` frames of the generated survey clip at ``size`` (h, w): the same ones for every variant."""
    from edge_agent.video.synthetic import survey_frames

    h, w = size
    return [np.ascontiguousarray(f) for f, _ in survey_frames(n, size=(w, h), seed=seed)]


def write_calibration_images(folder: Path, size: tuple[int, int], n: int, seed: int = 11) -> Path:
    """Generated pavement images at ``size`` for INT8 calibration when no --calib folder is given."""
    import cv2

    from edge_agent.video.synthetic import make_pavement

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img, _ = make_pavement(size[0], size[1], seed=seed * 1000 + i, n_cracks=1 + i % 4)
        if not cv2.imwrite(str(folder / f"calib_{i:03d}.png"), img):
            raise BenchError(f"could not write calibration image to {folder}")
    return folder


# -- making variants -------------------------------------------------------------------
def prune_source(source: SourceModel, ratio: float, size: tuple[int, int], data: Path | None = None,
                 minutes: float = 0.0) -> SourceModel:
    """A pruned copy (converter's ``prune_model``), fine-tuned when data and minutes are given.

    Without a fine-tune the pruned model is only good for timing: accuracy right after
    pruning is near zero, so it is reported as n/a.
    """
    from converters.prune import prune_model

    pruned, report = prune_model(source.module, ratio, size)
    metrics: dict = {}
    contract = source.contract
    if data is not None and minutes > 0:
        from converters.finetune import finetune

        log(f"fine-tuning the {ratio:.0%}-pruned model for {minutes:g} min on {data}")
        pruned, ft = finetune(pruned, [data], source.contract, epochs=10_000, minutes=minutes, progress=False)
        contract = contract.model_copy(update={"threshold": ft.threshold})
        if ft.val_f1 is not None:
            metrics = {"f1": ft.val_f1, "f1_source": f"fine-tune val split ({minutes:g} min)"}
    return SourceModel(pruned.eval(), contract, f"{source.label} pruned {ratio:.0%}",
                       source.trained and bool(metrics), report.params_after, metrics, ratio)


def _ratio_tag(ratio: float) -> str:
    return f"pruned{round(ratio * 100):d}"


def build_variants(source: SourceModel, size: tuple[int, int], workdir: Path, calib: Path, *,
                   pruned: list[SourceModel] | tuple = (), tflite: bool = True, calib_count: int = 16,
                   pruned_tflite: bool = True) -> list[Variant]:
    """torch-fp32, onnx-fp32/int8, tflite-fp32/int8 of ``source`` and onnx(/tflite)-int8 of each pruned model."""
    from reference_model.network import count_macs

    h, w = size
    out_dir = workdir / f"{h}x{w}"
    out_dir.mkdir(parents=True, exist_ok=True)
    macs = count_macs(source.module, h, w)
    contract = source.contract.model_copy(update={"input_size": (h, w)})
    f1 = metric_f1(source.metrics)
    variants = [Variant("torch-fp32", "torch", "fp32", size, None, macs, source.params, source.prune_ratio,
                        threshold=contract.threshold, module=source.module, contract=contract, f1=f1,
                        f1_source="checkpoint metrics" if f1 is not None else "n/a")]
    variants += _export_all(source, "", size, out_dir, calib, calib_count, tflite, fp32=True, macs=macs)
    for p in pruned:
        if p.prune_ratio is None:
            continue
        variants += _export_all(p, _ratio_tag(p.prune_ratio) + "-", size, out_dir, calib, calib_count,
                                tflite and pruned_tflite, fp32=False, macs=count_macs(p.module, h, w))
    return variants


def _export_all(source: SourceModel, prefix: str, size: tuple[int, int], out_dir: Path, calib: Path,
                calib_count: int, tflite: bool, fp32: bool, macs: int) -> list[Variant]:
    from converters.export_onnx import export_onnx
    from converters.export_tflite import export_tflite_fp32, export_tflite_int8
    from converters.quantize_onnx import ImageFolderCalibrationReader, quantize_onnx

    h, w = size
    contract = source.contract.model_copy(update={"input_size": (h, w)})
    origin = "pruned" if prefix else "checkpoint"
    # An artifact's own accuracy is only known when measured (--data); the checkpoint's F1 belongs to
    # the torch model. A pruned model's fine-tune F1 (converter report) is the best figure there is.
    f1 = metric_f1(source.metrics) if prefix else None
    if prefix:
        f1_source = (source.metrics.get("f1_source", "converter report (pruned fp32, fine-tuned)")
                     if f1 is not None else "n/a (pruned, not fine-tuned)")
    else:
        f1_source = "n/a (measure with --data)"
    common = dict(size=size, macs=macs, params=source.params, prune_ratio=source.prune_ratio, origin=origin,
                  threshold=contract.threshold, f1=f1, f1_source=f1_source, contract=contract)
    module = copy.deepcopy(source.module).eval()
    variants = []
    log(f"{h}x{w}: exporting {prefix or ''}onnx")
    onnx_fp32 = export_onnx(module, out_dir / f"{prefix}onnx-fp32.onnx", contract, (h, w))
    if fp32:
        variants.append(Variant(f"{prefix}onnx-fp32", "onnx", "fp32", path=onnx_fp32, **common))
    reader = ImageFolderCalibrationReader(calib, contract, count=calib_count, split="all")
    onnx_int8 = quantize_onnx(onnx_fp32, out_dir / f"{prefix}onnx-int8.onnx", reader, progress=False)
    variants.append(Variant(f"{prefix}onnx-int8", "onnx", "int8", path=onnx_int8, **common))
    if tflite:
        log(f"{h}x{w}: exporting {prefix or ''}tflite")
        tfl_fp32 = export_tflite_fp32(module, out_dir / f"{prefix}tflite-fp32.tflite", contract, (h, w))
        if fp32:
            variants.append(Variant(f"{prefix}tflite-fp32", "tflite", "fp32", path=tfl_fp32, **common))
        tfl_int8 = export_tflite_int8(tfl_fp32, out_dir / f"{prefix}tflite-int8.tflite", reader, progress=False)
        variants.append(Variant(f"{prefix}tflite-int8", "tflite", "int8", path=tfl_int8, **common))
    return variants


def bundle_variants(bundle_path: Path) -> list[Variant]:
    """Every artifact of a built bundle, with the F1 its build validated (the converter's report)."""
    from edge_agent.bundle import BundleError, load_bundle

    try:
        bundle = load_bundle(bundle_path)
    except BundleError as exc:
        raise BenchError(f"--bundle: {exc}") from None
    m = bundle.manifest
    results = m.validation.results if m.validation else {}
    ratio = (m.source.pruning or {}).get("ratio") if m.source.pruning else None
    # the build counts MACs at its export size; with artifacts at several sizes it is ambiguous
    one_size = len({tuple(a.input_size) for a in m.artifacts}) == 1
    out = []
    for a in m.artifacts:
        v = results.get(f"{a.format}-{a.precision}")
        size = (int(a.input_size[0]), int(a.input_size[1]))
        macs = m.source.macs if one_size else None
        out.append(Variant(f"bundle-{a.format}-{a.precision}", a.format, a.precision, size, bundle.root / a.file,
                           macs=macs, params=m.source.params, prune_ratio=ratio, origin="bundle",
                           threshold=m.contract.threshold, f1=v.f1 if v else None,
                           f1_source=f"bundle validation ({m.validation.data}, {m.validation.split})" if v else "n/a"))
    return out


# -- running ---------------------------------------------------------------------------
def open_variant(v: Variant, threads: int):
    """The runtime Segmenter of a variant (torch through the converter's TorchBackend)."""
    if v.backend == "torch":
        from converters.validate import torch_segmenter

        return torch_segmenter(v.module, v.contract, threads)
    from edge_agent.detectors.runtime import open_model

    return open_model(v.path, backend=v.backend, threads=threads)


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
    q = lambda p: times[min(len(times) - 1, int(round(p * (len(times) - 1))))]  # noqa: E731
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
