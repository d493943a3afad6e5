"""Open a crack model (raw ONNX/TFLite file or a verified bundle) and segment frames with it.

``open_model`` is the single entry point the CLI, the agent, the converter's validation and
the benchmarks use, so every path measures and ships the same preprocessing.

A bundle may hold one artifact per input size (e.g. 320x480 and 720x1280): the segmenter keeps
them all, opens an artifact's runtime session only when a frame size first needs it, and
decides per frame size (``plan.py``) whether a frame runs whole on a fitting artifact or as
tiles. Frames from a camera whose ground resolution differs from the model's are resampled
to the model's on the way in and back on the way out.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge_agent.bundle.manifest import ArtifactEntry
from edge_agent.contract import InferenceContract
from edge_agent.detectors.backends.base import InferenceBackend
from edge_agent.detectors.choice import BackendChoice, Candidate
from edge_agent.detectors.errors import BackendUnavailableError, ModelError
from edge_agent.detectors.plan import FramePlan, choose_plan, gsd_scale
from edge_agent.detectors.preprocess import InputAdapter, output_map, pad_to
from edge_agent.detectors.quantized import probability_and_mask
from edge_agent.errors import UserError

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
REFERENCE_BUNDLE = ASSETS_DIR / "models" / "reference"
BUNDLE_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
BACKENDS = ("onnx", "tflite")
BACKEND_CHOICES = (*BACKENDS, "auto")


class FrameError(UserError, ValueError):
    """A frame that cannot be segmented (empty, wrong dtype or shape)."""


@dataclass
class ModelInfo:
    """What is running: reported in health, status and ``/model/info``.

    The decision threshold is not here: it can change while running and lives in one place,
    ``Segmenter.threshold``.
    """

    name: str
    version: str
    backend: str
    precision: str
    path: str
    strategy: str
    input_size: tuple[int, int] | None
    providers: list[str] = field(default_factory=list)
    manifest: dict | None = None
    input_sizes: list[tuple[int, int] | None] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d.pop("manifest")
        d["input_size"] = list(self.input_size) if self.input_size else None
        d["input_sizes"] = [list(s) if s else None for s in self.input_sizes]
        return d


class Artifact:
    """One model file of a segmenter: its input size and contract, its session opened on first use."""

    def __init__(self, path: Path, input_size: tuple[int, int] | None, open_backend: Callable[[], InferenceBackend],
                 backend: InferenceBackend | None = None, choice: BackendChoice | None = None,
                 contract: InferenceContract | None = None):
        self.path = path
        self.input_size = input_size
        self._open = open_backend
        self._backend = backend
        self.choice = choice  # backend auto: the faster runtime is picked when first opened
        if contract is None and backend is None:
            raise ModelError(f"{path}: an artifact needs its contract or an open backend")
        # known before opening (a bundle's manifest): a 720p interpreter costs ~210 MB (bench.tflite_memory), so
        # nothing is opened until a frame size needs it
        self.contract: InferenceContract = contract if contract is not None else backend.contract  # type: ignore[union-attr]
        self._adapter = InputAdapter(backend.contract) if backend is not None else None
        self._lock = threading.Lock()

    @classmethod
    def loaded(cls, backend: InferenceBackend, path: Path | str = "<in memory>",
               reopen: Callable[[], InferenceBackend] | None = None) -> Artifact:
        """An artifact whose backend is already open; ``reopen`` makes another for a second worker."""
        return cls(Path(path), backend.contract.input_size, reopen or (lambda: backend), backend)

    @property
    def backend(self) -> InferenceBackend:
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    if self.choice is not None:
                        _, self.path, be = self.choice.open()
                        self._open = self.choice.candidates[self.choice.chosen or ""].opener
                        self.choice = None
                    else:
                        be = self._open()
                    self._adapter = InputAdapter(be.contract)
                    self.contract = be.contract  # the file is the truth (layout, input type)
                    self._backend = be
        return self._backend

    @property
    def adapter(self) -> InputAdapter:
        if self._adapter is None:
            _ = self.backend
        assert self._adapter is not None
        return self._adapter

    @property
    def is_open(self) -> bool:
        return self._backend is not None

    def close(self) -> None:
        """Drop the session (opened again when a frame needs it): a self-test opens every
        artifact, and a camera uses one of them."""
        with self._lock:
            self._backend = None
            self._adapter = None

    def copy(self) -> Artifact:
        """The same model file for another thread: a session that may be shared (onnxruntime's
        ``run`` is thread-safe) is shared, others (a TFLite interpreter) are opened anew; input
        buffers are never shared."""
        backend = self._backend
        if backend is not None and getattr(backend, "thread_safe", False):
            return Artifact(self.path, self.input_size, self._open, backend)
        return Artifact(self.path, self.input_size, self._open, choice=self.choice, contract=self.contract)


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

    def __init__(self, backend: InferenceBackend | Sequence[Artifact], info: ModelInfo, *,
                 threshold: float | None = None, tile_overlap: int = 32,
                 frame_gsd_mm_per_px: tuple[float, float] | None = None):
        self.artifacts: list[Artifact] = list(backend) if isinstance(backend, Sequence) else [Artifact.loaded(backend)]
        if not self.artifacts:
            raise ModelError("a segmenter needs at least one model artifact")
        self.info = info
        self.tile_overlap = tile_overlap
        self.contract: InferenceContract = self.artifacts[0].contract
        self.threshold = float(threshold if threshold is not None else self.contract.threshold)
        if not 0.0 < self.threshold < 1.0:
            raise ModelError(f"threshold {self.threshold} must be between 0 and 1")
        self.frame_gsd = frame_gsd_mm_per_px
        self._scale = gsd_scale(frame_gsd_mm_per_px, self.contract.gsd_mm_per_px)
        self._plans: dict[tuple[int, int], FramePlan] = {}
        self.last_inference_ms = 0.0
        self.last_plan: FramePlan | None = None

    @property
    def backend(self) -> InferenceBackend:
        """The first artifact's backend (the one whose contract the segmenter reports)."""
        return self.artifacts[0].backend

    @property
    def backend_name(self) -> str:
        """The runtime in use: the first opened artifact's, else the one the model was opened for
        (``auto`` until a frame size has chosen). Never opens a session to answer: a 720x1280
        interpreter costs ~210 MB, and a 320x480 camera never needs it."""
        for art in self.artifacts:
            if art.is_open:
                return art.backend.name
        return self.info.backend

    def plan_for(self, height: int, width: int) -> FramePlan:
        """How frames of this size are segmented (computed once per size)."""
        key = (height, width)
        plan = self._plans.get(key)
        if plan is None:
            plan = choose_plan(key, [a.input_size for a in self.artifacts], self.contract.stride, self._scale,
                               self.tile_overlap)
            self._plans[key] = plan
        return plan

    def clone(self) -> Segmenter:
        """A segmenter for another inference worker: same artifacts and plans, own sessions where needed."""
        twin = Segmenter([a.copy() for a in self.artifacts], self.info, threshold=self.threshold,
                         tile_overlap=self.tile_overlap, frame_gsd_mm_per_px=self.frame_gsd)
        twin._plans = dict(self._plans)
        return twin

    def close_sessions(self) -> None:
        """Close every artifact's session; each is opened again on the first frame that needs it."""
        for art in self.artifacts:
            art.close()

    def only(self, index: int) -> Segmenter:
        """A segmenter over artifact ``index`` alone, without resampling (the selftest of one file)."""
        art = self.artifacts[index]
        info = ModelInfo(**{**self.info.__dict__, "path": str(art.path), "input_size": art.input_size,
                            "input_sizes": [art.input_size],
                            "strategy": "tile" if art.input_size else "pad"})
        return Segmenter([art], info, threshold=self.threshold, tile_overlap=self.tile_overlap)

    def _describe(self, art: Artifact, backend: InferenceBackend) -> None:
        """ModelInfo follows the artifact that runs the frames (with backend auto: the runtime chosen here)."""
        self.info.backend, self.info.precision, self.info.path = backend.name, backend.precision, str(art.path)
        self.info.input_size = art.input_size
        self.info.providers = list(getattr(backend, "providers", []))

    def probabilities(self, frame: np.ndarray) -> np.ndarray:
        """float32 HxW crack probabilities for a BGR (or grey/BGRA) uint8 frame."""
        frame = as_bgr_frame(frame)
        return self._probabilities(frame, self.plan_for(*frame.shape[:2]))

    def _probabilities(self, frame: np.ndarray, plan: FramePlan) -> np.ndarray:
        """``probabilities()`` of a frame already checked by ``as_bgr_frame``, with its plan."""
        h, w = frame.shape[:2]
        t0 = time.perf_counter()
        wh, ww = plan.work_size
        work = frame
        if plan.resampled:
            shrink = wh * ww < h * w
            work = cv2.resize(frame, (ww, wh), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        art = self.artifacts[plan.artifact]
        backend, adapter = art.backend, art.adapter
        if self.info.path != str(art.path):
            self._describe(art, backend)
        ih, iw = plan.input_size
        if plan.strategy == "tile":
            prob = np.zeros((wh, ww), dtype=np.float32)
            for t, weight in zip(plan.tiles, plan.weights):
                patch = pad_to(work[t.y:t.y + t.h, t.x:t.x + t.w], ih, iw)
                tile_prob = adapter.probabilities(backend.run(adapter.prepare(patch)), t.h, t.w)
                # a fresh float32 array of this tile (see InputAdapter.probabilities): weighted in place
                prob[t.y:t.y + t.h, t.x:t.x + t.w] += np.multiply(tile_prob, weight, out=tile_prob)
        else:
            prob = adapter.probabilities(backend.run(adapter.prepare(pad_to(work, ih, iw))), wh, ww)
        if plan.resampled:
            prob = np.asarray(cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR), dtype=np.float32)
        self.last_inference_ms = (time.perf_counter() - t0) * 1000.0
        self.last_plan = plan
        return prob if prob.flags.c_contiguous else np.ascontiguousarray(prob)

    def segment(self, frame: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Boolean crack mask at the frame's size."""
        return self.probabilities(frame) >= (self.threshold if threshold is None else threshold)

    def probability_and_mask(self, frame: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """(probability map, boolean mask) at the frame's size: what the agent measures.

        A whole frame on a full-integer artifact whose output is a probability skips the float
        map: the mask comes from the model's 8-bit codes by table (the same pixels as
        ``probabilities() >= threshold``) and the map is uint8 0-255. Otherwise the map is
        ``probabilities()`` (float32 0-1).
        """
        frame = as_bgr_frame(frame)
        h, w = frame.shape[:2]
        plan = self.plan_for(h, w)
        art = self.artifacts[plan.artifact]
        # only a whole frame on an artifact that outputs probabilities opens its backend here
        whole = plan.strategy == "full" and not plan.resampled and self.contract.output == "probabilities"
        backend = art.backend if whole else None
        run_quantized = getattr(backend, "run_quantized", None)
        quantization = getattr(backend, "output_quantization", None)
        if run_quantized is None or quantization is None:
            prob = self._probabilities(frame, plan)
            return prob, prob >= threshold
        t0 = time.perf_counter()
        if self.info.path != str(art.path):
            self._describe(art, art.backend)
        ih, iw = plan.input_size
        scale, zero_point = quantization
        raw = output_map(run_quantized(art.adapter.prepare(pad_to(frame, ih, iw))), h, w)
        prob, mask = probability_and_mask(raw, scale, zero_point, threshold)
        self.last_inference_ms = (time.perf_counter() - t0) * 1000.0
        self.last_plan = plan
        return prob, mask


# -- opening ---------------------------------------------------------------------------------
def _is_bundle(path: Path) -> bool:
    return path.is_dir() or any(path.name.endswith(s) for s in BUNDLE_ARCHIVE_SUFFIXES)


def _kind_of(path: Path, backend: str | None) -> str:
    suffix = path.suffix.lower()
    kind = backend or {".tflite": "tflite", ".onnx": "onnx"}.get(suffix)
    if kind is None:
        raise ModelError(f"{path}: unknown model format '{path.suffix}'; expected .onnx, .tflite or a bundle "
                         "(directory with manifest.json, or .tar.gz/.zip archive)")
    if f".{kind}" != suffix:
        raise ModelError(f"{path}: backend {kind} needs a .{kind} file")
    return kind


def open_backend(path: Path, backend: str | None = None, contract: InferenceContract | None = None,
                 threads: int | None = None, providers: list[str] | None = None) -> InferenceBackend:
    """A runtime session for one .onnx or .tflite file."""
    kind = _kind_of(path, backend)
    if kind == "onnx":
        from edge_agent.detectors.backends.onnx import OnnxBackend

        return OnnxBackend(path, contract=contract, threads=threads, providers=providers)
    from edge_agent.detectors.backends.tflite import TFLiteBackend

    return TFLiteBackend(path, contract=contract, threads=threads)


def _as_gsd(value: float | tuple[float, float] | None) -> tuple[float, float] | None:
    if value is None:
        return None
    if isinstance(value, tuple):
        return float(value[0]), float(value[1])
    return float(value), float(value)


def open_model(path: str | Path | None = None, backend: str | None = None, threads: int | None = None,
               providers: list[str] | None = None, public_key: str | Path | bytes | None = None,
               require_signature: bool = False, precision: str | None = None,
               threshold: float | None = None,
               gsd_mm_per_px: float | tuple[float, float] | None = None,
               choice_cache: Path | None = None) -> Segmenter:
    """Load a model for inference.

    ``path`` is an .onnx or .tflite file (contract from its metadata), a bundle directory or
    archive (verified: hashes, and the signature when ``public_key`` is given), or None for
    the shipped reference bundle. ``backend`` picks onnx or tflite inside a bundle (default
    onnx); ``auto`` runs each input size on whichever is faster on this machine (measured the
    first time, remembered in ``choice_cache``: see choice.py). ``precision`` fp32 or int8
    (default: int8 where the bundle has it).
    ``gsd_mm_per_px`` is the camera's ground resolution, (x, y) or one number: frames are
    resampled to the model's own (the contract's ``gsd_mm_per_px``) when they differ.
    """
    path = Path(path) if path is not None else REFERENCE_BUNDLE
    if not path.exists():
        raise ModelError(f"model not found: {path}" + (" (the shipped reference bundle is missing: reinstall "
                                                       "crackseg-edge)" if path == REFERENCE_BUNDLE else ""))
    if backend is not None and backend not in BACKEND_CHOICES:
        raise ModelError(f"unknown backend '{backend}': use onnx, tflite or auto")
    if _is_bundle(path):
        return _open_bundle(path, backend, threads, providers, public_key, require_signature, precision, threshold,
                            _as_gsd(gsd_mm_per_px), choice_cache)
    be = open_backend(path, None if backend == "auto" else backend, None, threads, providers)
    info = ModelInfo(name=path.stem, version="unversioned", backend=be.name, precision=be.precision, path=str(path),
                     strategy="tile" if be.contract.input_size else "pad", input_size=be.contract.input_size,
                     providers=list(getattr(be, "providers", [])), input_sizes=[be.contract.input_size])
    def reopen() -> InferenceBackend:  # a second inference worker needs its own TFLite interpreter
        return open_backend(path, None if backend == "auto" else backend, None, threads, providers)

    return Segmenter([Artifact.loaded(be, path, reopen)], info, threshold=threshold,
                     frame_gsd_mm_per_px=_as_gsd(gsd_mm_per_px))


def _open_bundle(path: Path, backend: str | None, threads: int | None, providers: list[str] | None,
                 public_key: str | Path | bytes | None, require_signature: bool, precision: str | None,
                 threshold: float | None, frame_gsd: tuple[float, float] | None,
                 choice_cache: Path | None = None) -> Segmenter:
    from edge_agent.bundle import BundleError, load_bundle

    kinds = list(BACKENDS) if backend == "auto" else [backend or "onnx"]
    try:
        bundle = load_bundle(path, public_key=public_key, require_signature=require_signature)
        by_size: dict[tuple[int, int], dict[str, ArtifactEntry]] = {}
        for kind in kinds:
            try:
                entries = bundle.entries_for(kind, precision)
            except BundleError:
                if len(kinds) == 1:
                    raise
                continue
            for entry in entries:
                by_size.setdefault((int(entry.input_size[0]), int(entry.input_size[1])), {})[kind] = entry
        if not by_size:
            bundle.entries_for(kinds[0], precision)  # raises with the list of what the bundle has
    except BundleError as exc:
        raise ModelError(str(exc)) from exc
    # A bundle whose own contract has no input size holds dynamic-size artifacts: the entry's
    # size is only the one it was exported and tested at.
    dynamic = bundle.contract.input_size is None
    artifacts = []
    # largest first: the first artifact's contract is the one reported, and the large one is
    # what a camera frame usually runs on
    sizes = sorted(by_size, key=lambda hw: -hw[0] * hw[1])
    for size in sizes:
        candidates: dict[str, Candidate] = {}
        contracts: dict[str, InferenceContract] = {}
        for kind, entry in by_size[size].items():
            file, contract = bundle.root / entry.file, bundle.contract_for(entry)
            if dynamic:
                contract = contract.model_copy(update={"input_size": None})

            def opener(file: Path = file, contract: InferenceContract = contract, kind: str = kind
                       ) -> InferenceBackend:
                return open_backend(file, kind, contract, threads, providers)

            # the loader checked the file against the manifest's sha256: the choice cache keys on it
            candidates[kind] = Candidate(file, entry.sha256, opener)
            contracts[kind] = contract
        first_kind = next(iter(candidates))
        choice = BackendChoice(candidates, threads, choice_cache) if len(candidates) > 1 else None
        first = candidates[first_kind]
        artifacts.append(Artifact(first.path, None if dynamic else size, first.opener, choice=choice,
                                  contract=contracts[first_kind]))
    require_runtime(kinds)  # fail now, not at the first frame, when no runtime is installed
    first_entry = by_size[sizes[0]]
    kind0 = next(iter(first_entry))
    info = ModelInfo(name=bundle.name, version=bundle.version, backend=kind0 if len(kinds) == 1 else "auto",
                     precision=first_entry[kind0].precision, path=str(artifacts[0].path),
                     strategy="tile" if len(artifacts) == 1 else "multi", input_size=artifacts[0].input_size,
                     manifest=bundle.manifest.model_dump(mode="json"), input_sizes=[a.input_size for a in artifacts])
    return Segmenter(artifacts, info, threshold=threshold, frame_gsd_mm_per_px=frame_gsd)


def require_runtime(kinds: list[str]) -> None:
    """BackendUnavailableError unless the runtime of at least one of ``kinds`` imports here."""
    problems = []
    for kind in kinds:
        try:
            if kind == "onnx":
                import onnxruntime  # noqa: F401
            else:
                from edge_agent.detectors.backends.tflite import load_interpreter_class

                load_interpreter_class()
            return
        except ImportError:
            problems.append("onnxruntime is not installed: pip install onnxruntime")
        except BackendUnavailableError as exc:
            problems.append(str(exc))
    raise BackendUnavailableError("; ".join(problems))
