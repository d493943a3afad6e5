"""Score every model variant through the device runtime: F1@2px, IoU, latency, size.

Why through the runtime (``edge_agent.detectors.open_model``): the figures
must describe what the vehicle will run: same tiling of frames to the export size, same
blending and thresholding. The torch fp32 model is plugged into the same ``Segmenter`` as a
backend, so torch, ONNX and TFLite are compared on identical inputs. F1 uses a 2 px
tolerance with counts summed over the data set (``edge_agent.evaluation.metrics``).

Frames: each artifact is scored on frames of *its own* input size, mosaicked from the
held-out photographs and their labels at native scale (``converters.mosaic``), so a
720x1280 artifact is judged on 720x1280 frames like a survey camera's.

Crack width: severity follows width, so the report also gives, per labeled folder and for the
smallest INT8 artifact of each format (run on the folder's photographs as the runtime runs any
frame), F1@2px and the median crack width along the skeleton of the predictions (read where the
probability reaches the contract's ``width_threshold``, as the agent measures) and of the labels.
Per folder because label styles differ: a folder of wide labels says nothing about true widths.

Gates: an INT8 variant may lose at most ``max_f1_drop`` F1 against the fp32 variant of the
same format and size (against torch fp32 when that format has no fp32 variant); and a
native large artifact may lose at most ``max_f1_drop`` against the smallest artifact of its
format run over the same large frames as tiles (the runtime's tile strategy), with the F1
between the two predicted masks reported beside it.
"""

from __future__ import annotations

import hashlib
import os
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


def size_tag(size) -> str:
    return f"{int(size[0])}x{int(size[1])}"


def variant_label(backend: str, precision: str, size) -> str:
    """``onnx-int8@720x1280``: results are keyed by format, precision and input size."""
    return f"{backend}-{precision}@{size_tag(size)}"


class TorchBackend:
    """A PyTorch module behind the runtime's backend interface (``run(batch) -> raw output``)."""

    name = "torch"
    precision = "fp32"

    def __init__(self, module, contract: InferenceContract, threads: int | None = None):
        import torch

        self.module = module.eval()
        # the source network: normalised NCHW floats in, logits out (whatever its artifacts take)
        self.contract = contract.model_copy(update={"layout": "NCHW", "input_dtype": "float32", "output": "logits"})
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


def labeled_pairs(folder: str | Path | list, split: str = "val", limit: int | None = None) -> list[LabeledPair]:
    """Image/mask pairs of labeled folder(s) for ``split`` (val|train|all), optionally a stable subset."""
    from reference_model.dataset import list_pairs, select_split

    if split not in ("val", "train", "all"):
        raise ConvertError(f"split '{split}' must be val, train or all")
    folders = [Path(f) for f in folder] if isinstance(folder, list | tuple) else [Path(folder)]
    samples = []
    for f in folders:
        try:
            samples += select_split(list_pairs(f), split)
        except FileNotFoundError as exc:
            raise ConvertError(f"validation data: {exc}") from exc
    if not samples:
        raise ConvertError(f"validation data {', '.join(map(str, folders))}: no image in the '{split}' split; "
                           "use --split all")
    if limit:
        samples = sorted(samples, key=lambda s: hashlib.sha256(s.stem.encode()).hexdigest())[:limit]
    return [LabeledPair(s.image_path, s.mask_path) for s in samples]


def val_frames(pairs: list[LabeledPair], size: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(frame, label) mosaics of ``size`` covering every pair once (see ``converters.mosaic``)."""
    from converters.mosaic import MosaicItem, iter_mosaics

    items = [MosaicItem(p.image, p.mask) for p in pairs]
    out = []
    for m in iter_mosaics(items, size):
        assert m.mask is not None
        out.append((m.frame, m.mask))
    return out


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
    """F1 drop of every INT8 variant against its fp32 reference of the same size; passed when all
    are within bounds."""
    drops = {}
    for label, r in results.items():
        if r["precision"] != "int8":
            continue
        suffix = label.partition("@")[2]
        at = f"@{suffix}" if suffix else ""
        ref = next((k for k in (f"{r['backend']}-fp32{at}", f"torch-fp32{at}") if k in results), None)
        if ref is None:
            continue
        drops[label] = round(results[ref]["f1"] - r["f1"], 6)
    return all(d <= max_f1_drop for d in drops.values()), drops


def _score(seg, frames, threshold: float, keep_masks: bool = False, desc: str = "", progress: bool = True):
    from tqdm import tqdm

    from edge_agent.evaluation.metrics import ScoreAccumulator

    acc = ScoreAccumulator(2.0)
    masks = []
    for frame, gt in tqdm(frames, desc=desc, disable=not progress, mininterval=5, leave=False):
        pred = seg.probabilities(frame) >= threshold
        acc.add(pred, gt)
        if keep_masks:
            masks.append(pred)
    return acc.result(), masks


def _entry(seg, path: Path | None, score, size, frames: int, latency: float | None) -> dict:
    return {"precision": seg.info.precision, "backend": seg.backend_name, "file": path.name if path else None,
            "input_size": list(size), "frames": frames, "f1": score.f1, "iou": score.iou,
            "precision_px": score.precision, "recall_px": score.recall,
            "median_ms": round(latency, 3) if latency is not None else None,
            "size_bytes": path.stat().st_size if path else None}


def validate_models(data, artifacts: dict[str, Path], contract: InferenceContract, torch_module=None,
                    split: str = "val", threads: int | None = None, runs: int = 20, max_f1_drop: float = 0.01,
                    limit: int | None = None, threshold: float | None = None, progress: bool = True) -> dict:
    """Report dict for ``artifacts`` (any labels -> .onnx/.tflite paths) and optionally the torch model.

    Results are keyed ``<backend>-<precision>@<H>x<W>`` (read from each artifact, not from its
    label). The torch model is scored at every artifact size present.
    """
    from edge_agent.detectors.runtime import open_model

    pairs = labeled_pairs(data, split, limit)
    threshold = contract.threshold if threshold is None else threshold
    segs: dict[str, tuple] = {}
    for path in artifacts.values():
        seg = open_model(path, threads=threads)
        size = seg.contract.input_size or contract.input_size or (320, 480)
        label = variant_label(seg.backend_name, seg.info.precision, size)
        if label in segs:
            raise ConvertError(f"two {label} models given ({segs[label][1]} and {path}); validate one at a time")
        segs[label] = (seg, Path(path), tuple(size))
    sizes = sorted({v[2] for v in segs.values()} or {tuple(contract.input_size or (320, 480))},
                   key=lambda s: s[0] * s[1])
    if torch_module is not None:
        for size in sizes:
            c = contract.model_copy(update={"input_size": size})
            segs[variant_label("torch", "fp32", size)] = (torch_segmenter(torch_module, c, threads), None, size)
    if not segs:
        raise ConvertError("nothing to validate: give at least one model")
    load_before = os.getloadavg()[0]
    results: dict[str, dict] = {}
    native_masks: dict[str, list] = {}
    largest = sizes[-1]
    frames_by_size = {}
    for size in sizes:
        frames = frames_by_size[size] = val_frames(pairs, size)
        labels = sorted((k for k, v in segs.items() if v[2] == size), key=_order)
        for label in labels:
            seg, path, _ = segs[label]
            keep = size == largest and len(sizes) > 1 and seg.info.precision == "int8"
            score, masks = _score(seg, frames, threshold, keep, f"validate {label}", progress)
            if keep:
                native_masks[label] = masks
            latency = median_latency_ms(seg, frames[0][0], runs) if runs > 0 else None
            results[label] = _entry(seg, path, score, size, len(frames), latency)
    passed, drops = gate(results, max_f1_drop)
    cross = native_vs_tiled(segs, results, native_masks, frames_by_size.get(largest, []), sizes, threshold, runs,
                            max_f1_drop, progress)
    passed = passed and all(c["passed"] for c in cross)
    widths = width_check(segs, data, split, limit, threshold, contract.width_threshold, progress)
    names = sorted({Path(f).name for f in (data if isinstance(data, list | tuple) else [data])})
    return {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "data": "+".join(names),
            "split": split, "images": len(pairs), "threshold": threshold, "tolerance_px": 2.0, "threads": threads,
            "latency_runs": runs, "machine": platform.machine(), "cpus": os.cpu_count(),
            "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "sizes": {size_tag(s): len(f) for s, f in frames_by_size.items()},
            "results": results, "f1_drop_vs_fp32": drops, "native_vs_tiled": cross,
            "width_threshold": contract.width_threshold, "widths": widths,
            "max_f1_drop": max_f1_drop, "passed": passed}


def width_check(segs: dict, data, split: str, limit: int | None, threshold: float,
                width_threshold: float | None, progress: bool = True) -> list[dict]:
    """F1@2px and median crack widths (px) per labeled folder for the smallest INT8 artifact of
    each format, on the folder's photographs; widths on ``prob >= width_threshold`` when the
    contract sets one (else on the detection mask)."""
    from tqdm import tqdm

    from edge_agent.evaluation.folder import FolderPairs, evaluate

    candidates: dict[str, tuple[str, tuple]] = {}
    for label, (seg, path, size) in segs.items():
        if path is None or seg.info.precision != "int8":
            continue
        best = candidates.get(seg.backend_name)
        if best is None or size[0] * size[1] < best[1][0] * best[1][1]:
            candidates[seg.backend_name] = (label, size)
    folders = [Path(f) for f in data] if isinstance(data, list | tuple) else [Path(data)]
    out = []
    for folder in folders:
        pairs = labeled_pairs(folder, split, limit)
        fp = FolderPairs([p.image for p in pairs], [p.mask for p in pairs])
        for label, _ in sorted(candidates.values(), key=lambda c: _order(c[0])):
            seg = segs[label][0]

            def bar(items, _desc=f"widths {label} {folder.name}"):
                return tqdm(items, desc=_desc, disable=not progress, mininterval=5, leave=False)

            score = evaluate(fp, seg, threshold, widths=True, width_threshold=width_threshold, progress=bar)
            out.append({"model": label, "data": folder.name, "images": len(pairs), "f1": score.f1,
                        "width_pred_px": score.width_pred_px, "width_label_px": score.width_label_px,
                        "width_error_px": score.width_error_px})
    return out


def _order(label: str) -> int:
    base = label.partition("@")[0]
    return VARIANT_ORDER.index(base) if base in VARIANT_ORDER else 99


def native_vs_tiled(segs: dict, results: dict[str, dict], native_masks: dict, frames: list, sizes: list,
                    threshold: float, runs: int, max_f1_drop: float, progress: bool = True) -> list[dict]:
    """Largest-size INT8 artifacts on their native frames vs the smallest artifact of the same format
    over the same frames as runtime tiles: F1 of each against the labels (the native one as scored in
    ``results``) and between the masks."""
    from edge_agent.evaluation.metrics import ScoreAccumulator

    if len(sizes) < 2 or not frames:
        return []
    small, large = sizes[0], sizes[-1]
    out = []
    for label, masks in native_masks.items():
        backend = segs[label][0].backend_name
        tiled_label = variant_label(backend, "int8", small)
        if tiled_label not in segs:
            continue
        tiled_seg = segs[tiled_label][0]
        score_tiled, tiled_masks = _score(tiled_seg, frames, threshold, True, f"tiles {tiled_label}", progress)
        between = ScoreAccumulator(2.0)
        for native, tiled in zip(masks, tiled_masks):
            between.add(tiled, native)
        b = between.result()
        native_f1 = results[label]["f1"]
        latency = median_latency_ms(tiled_seg, frames[0][0], runs) if runs > 0 else None
        out.append({"backend": backend, "precision": "int8", "native": size_tag(large), "tiled": size_tag(small),
                    "frames": len(frames), "f1_native": native_f1, "f1_tiled": score_tiled.f1,
                    "iou_tiled": score_tiled.iou, "precision_tiled": score_tiled.precision,
                    "recall_tiled": score_tiled.recall,
                    "f1_between": b.f1, "iou_between": b.iou, "precision_between": b.precision,
                    "recall_between": b.recall, "tiled_median_ms": round(latency, 3) if latency else None,
                    "tiles_per_frame": len(tiled_seg.plan_for(*frames[0][0].shape[:2]).tiles) or 1,
                    "native_minus_tiled": round(native_f1 - score_tiled.f1, 6),
                    "passed": native_f1 >= score_tiled.f1 - max_f1_drop})
    return out
