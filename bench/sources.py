"""What the bench measures by default: the shipped checkpoint and the shipped bundle.

From a fresh clone, ``python -m bench.run`` times the model a user gets: the highest-versioned
``reference_model/weights/crackseg-ref-*.pt`` (never an untrained network: its masks cover
most pixels and make every agent figure meaningless), and, where the shipped bundle
(``edge_agent/assets/models/reference/``) holds an artifact that runs a frame size whole, that
very artifact, for the bare timings and for the agent. Sizes or variants the bundle lacks are
exported from the checkpoint with the converter's own functions (``bench.models``).

The bundle is used only when it was built from the checkpoint being measured (same sha256, or
a bundle ``name-version`` equal to the checkpoint's file stem), so a speed-up never compares
two different networks; ``--bundle`` forces one anyway (the results say so).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import BenchError, log

REPO_ROOT = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = REPO_ROOT / "reference_model" / "weights"
CHECKPOINT_GLOB = "crackseg-ref-*.pt"


def _version_key(path: Path) -> tuple:
    """``crackseg-ref-1.10.0.pt`` sorts after ``crackseg-ref-1.9.2.pt``; pre-release tags sort before."""
    m = re.match(r"crackseg-ref-(\d+(?:\.\d+)*)(.*)\.pt$", path.name)
    if not m:
        return ((), 0, path.name)
    numbers = tuple(int(x) for x in m.group(1).split("."))
    return (numbers, 0 if m.group(2) else 1, m.group(2))


def default_checkpoint(folder: Path = WEIGHTS_DIR) -> Path:
    """The shipped checkpoint with the highest version."""
    found = sorted(folder.glob(CHECKPOINT_GLOB), key=_version_key)
    if not found:
        raise BenchError(f"no shipped checkpoint {folder / CHECKPOINT_GLOB}: give --checkpoint PATH to a trained "
                         "model")
    return found[-1]


def device_config_sizes(folder: Path = REPO_ROOT / "device_configs") -> dict[tuple[int, int], list[str]]:
    """(height, width) -> device config names, from camera.width/height of device_configs/*.yaml."""
    import yaml

    sizes: dict[tuple[int, int], list[str]] = {}
    for path in sorted(folder.glob("*.yaml")):
        try:
            cam = (yaml.safe_load(path.read_text()) or {}).get("camera") or {}
        except (OSError, yaml.YAMLError) as exc:
            raise BenchError(f"{path}: unreadable device config ({exc})") from None
        if cam.get("width") and cam.get("height"):
            sizes.setdefault((int(cam["height"]), int(cam["width"])), []).append(path.stem)
    return sizes


def default_bundle() -> Path:
    from edge_agent.detectors.runtime import REFERENCE_BUNDLE

    return REFERENCE_BUNDLE


@dataclass
class SourceModel:
    """The PyTorch model every exported variant is made from (and the torch fp32 baseline)."""

    module: Any
    contract: Any  # InferenceContract (threshold, normalisation, stride)
    label: str
    path: Path | None
    sha256: str | None
    params: int
    metrics: dict = field(default_factory=dict)
    prune_ratio: float | None = None
    trained: bool = True


def load_source(checkpoint: Path | None) -> SourceModel:
    """The checkpoint (converter loader, ``weights_only``); default: the shipped one."""
    from converters.loading import load_model
    from edge_agent.util.files import sha256_file
    from reference_model.network import count_params

    path = Path(checkpoint) if checkpoint is not None else default_checkpoint()
    if not path.is_file():
        raise BenchError(f"checkpoint not found: {path} (give --checkpoint PATH to a trained model)")
    loaded = load_model(path)
    module = loaded.require_torch("the benchmark")
    ratio = (loaded.pruning or {}).get("ratio") if isinstance(loaded.pruning, dict) else None
    label = str(path.relative_to(REPO_ROOT)) if path.resolve().is_relative_to(REPO_ROOT) else str(path)
    return SourceModel(module.eval(), loaded.contract, label, path, sha256_file(path), count_params(module),
                       dict(loaded.metrics or {}), ratio)


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
    return SourceModel(pruned.eval(), contract, f"{source.label} pruned {ratio:.0%}", None, None,
                       report.params_after, metrics, ratio, trained=bool(metrics))


def load_pruned(paths: list[Path]) -> list[SourceModel]:
    pruned = [load_source(p) for p in paths]
    for p, path in zip(pruned, paths, strict=True):
        if p.prune_ratio is None:
            raise BenchError(f"--pruned {path}: not a pruned checkpoint (no config.pruning); make it with "
                             "crackseg-convert prune")
    return pruned


@dataclass
class BundleArtifact:
    file: Path
    backend: str
    precision: str
    size: tuple[int, int]
    size_bytes: int


@dataclass
class BundleSource:
    """A verified bundle whose artifacts the bench uses where they run a frame size whole."""

    path: Path
    name: str
    version: str
    stride: int
    artifacts: list[BundleArtifact]
    checkpoint_sha256: str | None
    validation: dict[str, Any]  # "<format>-<precision>[@HxW]" -> {"f1": ...}
    validation_source: str | None
    macs: int | None
    contract_size: tuple[int, int] | None

    @property
    def label(self) -> str:
        return f"{self.name} {self.version} ({self.path})"

    def matches(self, source: SourceModel) -> bool:
        """Built from this checkpoint (same file hash, or named after it)."""
        if source.sha256 and self.checkpoint_sha256 == source.sha256:
            return True
        return source.path is not None and source.path.stem == f"{self.name}-{self.version}"

    def fitting(self, backend: str, precision: str, size: tuple[int, int]) -> BundleArtifact | None:
        """The artifact that runs a ``size`` frame whole (as the runtime's plan would choose), if any."""
        from edge_agent.detectors.plan import choose_plan

        arts = [a for a in self.artifacts if a.backend == backend and a.precision == precision]
        if not arts:
            return None
        plan = choose_plan(size, [a.size for a in arts], self.stride)
        return arts[plan.artifact] if plan.strategy in ("full", "pad") else None

    def f1(self, backend: str, precision: str, size: tuple[int, int]) -> float | None:
        for key in (f"{backend}-{precision}@{size[0]}x{size[1]}", f"{backend}-{precision}"):
            entry = self.validation.get(key)
            if isinstance(entry, dict) and isinstance(entry.get("f1"), int | float):
                return float(entry["f1"])
        return None


def open_bundle(path: Path) -> BundleSource:
    from edge_agent.bundle import BundleError, load_bundle

    try:
        bundle = load_bundle(path)
    except BundleError as exc:
        raise BenchError(f"bundle {path}: {exc}") from None
    m = bundle.manifest
    arts = [BundleArtifact(bundle.root / a.file, a.format, a.precision, (int(a.input_size[0]), int(a.input_size[1])),
                           int(a.size_bytes)) for a in m.artifacts]
    val = m.validation
    results = {k: v.model_dump() for k, v in (val.results if val else {}).items()}
    size = tuple(m.contract.input_size) if m.contract.input_size else None
    return BundleSource(Path(bundle.root), m.name, m.version, int(m.contract.stride), arts,
                        getattr(m.source, "checkpoint_sha256", None), results,
                        f"bundle validation ({val.data}, {val.split})" if val else None,
                        getattr(m.source, "macs", None), size)  # type: ignore[arg-type]
