"""Open a crack model (raw ONNX/TFLite file or a verified bundle) and segment frames with it.

``open_model`` is the single entry point the CLI, the agent, the converter's validation and
the benchmarks use, so every path measures and ships the same preprocessing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge_agent.contract import InferenceContract
from edge_agent.detectors.errors import ModelError
from edge_agent.detectors.preprocess import Preprocessor
from edge_agent.errors import UserError

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
REFERENCE_BUNDLE = ASSETS_DIR / "models" / "reference"
BUNDLE_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


class FrameError(UserError, ValueError):
    """A frame that cannot be segmented (empty, wrong dtype or shape)."""


@dataclass
class ModelInfo:
    """What is running: reported in health, status and ``/model/info``."""

    name: str
    version: str
    backend: str
    precision: str
    path: str
    strategy: str
    input_size: tuple[int, int] | None
    threshold: float
    providers: list[str] = field(default_factory=list)
    manifest: dict | None = None

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d.pop("manifest")
        d["input_size"] = list(self.input_size) if self.input_size else None
        return d


def _is_bundle(path: Path) -> bool:
    return path.is_dir() or any(path.name.endswith(s) for s in BUNDLE_ARCHIVE_SUFFIXES)


def as_bgr_frame(frame: np.ndarray) -> np.ndarray:
    """Accept grey, BGR or BGRA uint8 frames; refuse anything else with a clear reason."""
    if not isinstance(frame, np.ndarray) or frame.size == 0:
        raise FrameError("empty frame")
    if frame.dtype != np.uint8:
        raise FrameError(f"frame dtype {frame.dtype} is not uint8")
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return frame
    if frame.ndim == 3 and frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    if frame.ndim == 3 and frame.shape[2] == 1:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    raise FrameError(f"frame shape {frame.shape} is not HxW, HxWx3 or HxWx4")


class Segmenter:
    """Frame in (BGR uint8, any size), crack probability map or mask out (same size)."""

    def __init__(self, backend, info: ModelInfo, tile_overlap: int = 32):
        self.backend = backend
        self.contract: InferenceContract = backend.contract
        self.pre = Preprocessor(self.contract, tile_overlap=tile_overlap)
        self.info = info
        self.threshold = info.threshold
        self.last_inference_ms = 0.0

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def probabilities(self, frame: np.ndarray) -> np.ndarray:
        frame = as_bgr_frame(frame)
        t0 = time.perf_counter()
        if self.pre.strategy == "pad":
            h, w = frame.shape[:2]
            padded = self.pre.pad_frame(frame)
            raw = self.backend.run(self.pre.to_layout(self.pre.normalize(padded)))
            prob = self.pre.to_probabilities(raw)[:h, :w]
        else:
            prob = self._tiled(frame)
        self.last_inference_ms = (time.perf_counter() - t0) * 1000.0
        return prob

    def _tiled(self, frame: np.ndarray) -> np.ndarray:
        h, w = frame.shape[:2]
        tiles = self.pre.tiles(frame)
        if len(tiles) == 1:
            t = tiles[0]
            raw = self.backend.run(self.pre.to_layout(self.pre.normalize(self.pre.tile_patch(frame, t))))
            return np.ascontiguousarray(self.pre.to_probabilities(raw)[:h, :w])
        acc = np.zeros((h, w), dtype=np.float32)
        weight = np.zeros((h, w), dtype=np.float32)
        for t in tiles:
            raw = self.backend.run(self.pre.to_layout(self.pre.normalize(self.pre.tile_patch(frame, t))))
            prob = self.pre.to_probabilities(raw)[:t.h, :t.w]
            wgt = self.pre.tile_weights(t, h, w)
            acc[t.y:t.y + t.h, t.x:t.x + t.w] += prob * wgt
            weight[t.y:t.y + t.h, t.x:t.x + t.w] += wgt
        return acc / np.maximum(weight, 1e-6)

    def segment(self, frame: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Boolean crack mask at the frame's size."""
        return self.probabilities(frame) >= (self.threshold if threshold is None else threshold)


def _backend_for_file(path: Path, backend: str | None, contract: InferenceContract | None, threads: int | None,
                      providers: list[str] | None):
    kind = backend or ("tflite" if path.suffix.lower() == ".tflite" else "onnx" if path.suffix.lower() == ".onnx"
                       else None)
    if kind == "onnx":
        if path.suffix.lower() != ".onnx":
            raise ModelError(f"{path}: backend onnx needs an .onnx file")
        from edge_agent.detectors.backends.onnx import OnnxBackend

        return OnnxBackend(path, contract=contract, threads=threads, providers=providers)
    if kind == "tflite":
        if path.suffix.lower() != ".tflite":
            raise ModelError(f"{path}: backend tflite needs a .tflite file")
        from edge_agent.detectors.backends.tflite import TFLiteBackend

        return TFLiteBackend(path, contract=contract, threads=threads)
    raise ModelError(f"{path}: unknown model format '{path.suffix}'; expected .onnx, .tflite or a bundle "
                     "(directory with manifest.json, or .tar.gz/.zip archive)")


def open_model(path: str | Path | None = None, backend: str | None = None, threads: int | None = None,
               providers: list[str] | None = None, public_key: str | Path | bytes | None = None,
               require_signature: bool = False, precision: str | None = None,
               threshold: float | None = None) -> Segmenter:
    """Load a model for inference.

    ``path`` is an .onnx or .tflite file (contract from its metadata), a bundle directory or
    archive (verified: hashes, and the signature when ``public_key`` is given), or None for
    the shipped reference bundle. ``backend`` picks onnx or tflite inside a bundle.
    """
    path = Path(path) if path is not None else REFERENCE_BUNDLE
    if not path.exists():
        raise ModelError(f"model not found: {path}" + (" (the shipped reference bundle is missing: reinstall "
                                                       "crackseg-edge)" if path == REFERENCE_BUNDLE else ""))
    if backend is not None and backend not in ("onnx", "tflite"):
        raise ModelError(f"unknown backend '{backend}': use onnx or tflite")
    manifest = None
    name, version = path.stem, "unversioned"
    if _is_bundle(path):
        from edge_agent.bundle import BundleError, load_bundle

        try:
            bundle = load_bundle(path, public_key=public_key, require_signature=require_signature)
            artifact = bundle.artifact_for(backend or "onnx", precision)
        except BundleError as exc:
            raise ModelError(str(exc)) from exc
        contract = bundle.contract
        be = _backend_for_file(Path(artifact), backend or Path(artifact).suffix.lstrip(".") or None,
                               contract, threads, providers)
        manifest = bundle.manifest.model_dump(mode="json")
        name, version = bundle.name, bundle.version
        model_path = Path(artifact)
    else:
        be = _backend_for_file(path, backend, None, threads, providers)
        model_path = path
    info = ModelInfo(name=name, version=version, backend=be.name, precision=be.precision, path=str(model_path),
                     strategy="tile" if be.contract.input_size else "pad", input_size=be.contract.input_size,
                     threshold=threshold if threshold is not None else be.contract.threshold,
                     providers=list(getattr(be, "providers", [])), manifest=manifest)
    if not 0.0 < info.threshold < 1.0:
        raise ModelError(f"threshold {info.threshold} must be between 0 and 1")
    return Segmenter(be, info)
