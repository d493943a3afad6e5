"""Load a model from whatever a training project hands over, safely.

Accepted: a CrackSeg-style checkpoint dict (``model_state_dict`` + ``config``), a plain
state_dict plus an architecture factory (``module:callable``; the reference network by
default), a TorchScript file, a ``torch.export`` ExportedProgram (.pt2), or an ONNX file
(then the torch steps are skipped). Why so strict about pickles: ``torch.load`` of an
arbitrary pickle can run any code, so only ``weights_only=True`` loads happen unless the
user says ``--trust-pickle``.
"""

from __future__ import annotations

import importlib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converters.errors import CheckpointError
from edge_agent.contract import InferenceContract
from edge_agent.util.files import sha256_file

REFERENCE_ARCH = "reference_model.network:build_reference_model"
STRIDE_DEFAULT = 16


@dataclass
class LoadedModel:
    """A model ready for the conversion steps, with what is known about where it came from."""

    kind: str  # checkpoint | state_dict | torchscript | exported_program | pickled_module | onnx
    path: Path
    sha256: str
    contract: InferenceContract
    module: Any = None  # torch.nn.Module (eval mode) unless kind == "onnx"
    onnx_path: Path | None = None
    architecture: str | None = None
    model_config: dict | None = None
    metrics: dict = field(default_factory=dict)
    pruning: dict | None = None

    def require_torch(self, step: str):
        if self.module is None:
            raise CheckpointError(f"{self.path}: '{step}' needs a PyTorch model but this is an ONNX file; "
                                  "pass the PyTorch checkpoint instead")
        return self.module

    @property
    def is_eager(self) -> bool:
        """True for a plain nn.Module with known parameters (prunable and fine-tunable)."""
        return self.kind in ("checkpoint", "state_dict", "pickled_module")


def resolve_factory(spec: str):
    """``package.module:callable`` -> the callable, with a clear error for each way it can fail."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CheckpointError(f"architecture '{spec}' must look like 'package.module:callable'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CheckpointError(f"architecture module '{module_name}' cannot be imported ({exc}); install the "
                              "package that defines the network or fix --arch") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise CheckpointError(f"architecture '{spec}': '{attr}' is not a callable in {module_name}")
    return factory


def reference_config_from_state_dict(state: dict) -> dict | None:
    """The reference network's widths read from weight shapes, so a bare state_dict loads."""
    keys = ("stem.0.weight", "enc1.0.0.weight", "enc2.0.0.weight", "enc3.0.0.weight", "enc4.0.1.0.weight")
    if not all(k in state for k in keys):
        return None
    return {"in_channels": int(state["stem.0.weight"].shape[1]),
            "widths": [int(state[k].shape[0]) for k in keys]}


def _strip_prefix(state: dict) -> dict:
    """Drop a 'module.' prefix that DataParallel / DDP training adds to every key."""
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def adapt_to_state_dict(model, state: dict) -> None:
    """Resize conv / batch-norm / linear layers to the shapes in ``state`` (pruned checkpoints).

    Structured pruning changes channel counts layer by layer, which no width list can
    describe; the weights themselves say the shapes. Depthwise layers stay depthwise.
    """
    import torch
    from torch import nn

    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, nn.Conv2d) and f"{prefix}weight" in state:
            w = state[f"{prefix}weight"]
            if tuple(w.shape) == tuple(m.weight.shape):
                continue
            depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
            groups = int(w.shape[0]) if depthwise else m.groups
            m.out_channels, m.in_channels, m.groups = int(w.shape[0]), int(w.shape[1]) * groups, groups
            m.weight = nn.Parameter(torch.empty_like(w))
            if m.bias is not None:
                m.bias = nn.Parameter(torch.empty(w.shape[0]))
        elif isinstance(m, nn.BatchNorm2d) and f"{prefix}running_mean" in state:
            n = int(state[f"{prefix}running_mean"].shape[0])
            if n == m.num_features:
                continue
            m.num_features = n
            if m.affine:
                m.weight, m.bias = nn.Parameter(torch.ones(n)), nn.Parameter(torch.zeros(n))
            m.running_mean, m.running_var = torch.zeros(n), torch.ones(n)
        elif isinstance(m, nn.Linear) and f"{prefix}weight" in state:
            w = state[f"{prefix}weight"]
            if tuple(w.shape) != tuple(m.weight.shape):
                m.out_features, m.in_features = int(w.shape[0]), int(w.shape[1])
                m.weight = nn.Parameter(torch.empty_like(w))
                if m.bias is not None:
                    m.bias = nn.Parameter(torch.empty(w.shape[0]))


def build_and_load(architecture: str, model_config: dict | None, state: dict, source: Path,
                   pruned: bool = False):
    """Build ``architecture`` and load ``state`` strictly; mismatches are named in the error."""
    factory = resolve_factory(architecture)
    try:
        model = factory(model_config) if model_config is not None else factory()
    except Exception as exc:
        raise CheckpointError(f"{source}: architecture '{architecture}' could not be built with config "
                              f"{model_config} ({exc})") from exc
    state = _strip_prefix(state)
    if pruned:
        adapt_to_state_dict(model, state)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", wrong)):
            if items:
                parts.append(f"{label} ({len(items)}): " + ", ".join(items[:4]) + (" ..." if len(items) > 4 else ""))
        raise CheckpointError(f"{source}: weights do not fit architecture '{architecture}' "
                              f"(config {model_config}): " + "; ".join(parts)
                              + ". Pass the right --arch module:callable (and --arch-config)")
    model.load_state_dict(state, strict=True)
    return model.eval()


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def _contract_from(config: dict | None, input_size: tuple[int, int] | None = None) -> InferenceContract:
    raw = (config or {}).get("contract")
    try:
        contract = InferenceContract.model_validate(raw) if raw else InferenceContract(stride=STRIDE_DEFAULT)
    except Exception as exc:
        raise CheckpointError(f"checkpoint config 'contract' is not a valid inference contract ({exc})") from exc
    return contract.model_copy(update={"input_size": input_size}) if input_size else contract


def load_model(path: str | Path, arch: str | None = None, arch_config: dict | None = None,
               trust_pickle: bool = False) -> LoadedModel:
    """Load ``path`` (see the module docstring for the accepted formats)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    digest = sha256_file(path)
    if path.suffix.lower() == ".onnx":
        return _load_onnx(path, digest)
    names = _zip_names(path)
    if any(n.endswith("archive_format") or n.endswith("models/model.json") for n in names):
        try:
            ep = torch.export.load(str(path))
        except Exception as exc:
            raise CheckpointError(f"{path}: not a loadable ExportedProgram ({str(exc).splitlines()[0]})") from exc
        return LoadedModel("exported_program", path, digest, _contract_from(None), module=ep.module(),
                           architecture=arch)
    if any("/code/__torch__" in n or n.endswith("constants.pkl") for n in names):
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise CheckpointError(f"{path}: not a loadable TorchScript file ({str(exc).splitlines()[0]})") from exc
        return LoadedModel("torchscript", path, digest, _contract_from(None), module=module.eval())
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        msg = str(exc)
        # the weights-only unpickler names the class it refused ("Unsupported global: ..."); anything
        # else is a file that is no pickle at all
        if "Unsupported global" not in msg:
            detail = next((ln.strip() for ln in msg.splitlines()[1:] if ln.strip() and "error" not in ln.lower()),
                          msg.splitlines()[0] if msg else type(exc).__name__)
            raise CheckpointError(f"{path}: not a PyTorch checkpoint, TorchScript, .pt2 or ONNX file "
                                  f"({detail[:160]})") from None
        if not trust_pickle:
            raise CheckpointError(f"{path}: holds arbitrary Python objects (a pickle); loading it could run "
                                  "code. Re-save it as a state_dict or checkpoint dict, or pass --trust-pickle "
                                  "if you trust where it came from") from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:
            raise CheckpointError(f"{path}: could not be unpickled ({str(exc2).splitlines()[0][:160]}); the "
                                  "classes it refers to must be importable here") from exc2
    return _from_object(obj, path, digest, arch, arch_config)


def _load_onnx(path: Path, digest: str) -> LoadedModel:
    import onnx

    from edge_agent.contract import CONTRACT_METADATA_KEY

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable ONNX file ({str(exc).splitlines()[0]})") from exc
    meta = {p.key: p.value for p in proto.metadata_props}
    contract = (InferenceContract.from_json(meta[CONTRACT_METADATA_KEY]) if CONTRACT_METADATA_KEY in meta
                else InferenceContract(stride=STRIDE_DEFAULT))
    return LoadedModel("onnx", path, digest, contract, onnx_path=path)


def _from_object(obj: Any, path: Path, digest: str, arch: str | None, arch_config: dict | None) -> LoadedModel:
    import torch

    if isinstance(obj, torch.nn.Module):  # only reachable with --trust-pickle
        return LoadedModel("pickled_module", path, digest, _contract_from(None), module=obj.eval(),
                           architecture=arch)
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a checkpoint dict or state_dict")
    state_key = next((k for k in ("model_state_dict", "state_dict", "model") if isinstance(obj.get(k), dict)), None)
    if state_key is not None:
        raw_config = obj.get("config")
        config: dict = raw_config if isinstance(raw_config, dict) else {}
        architecture = arch or config.get("architecture") or REFERENCE_ARCH
        model_config = arch_config if arch_config is not None else config.get("model")
        state = obj[state_key]
        if model_config is None and architecture == REFERENCE_ARCH:
            model_config = reference_config_from_state_dict(_strip_prefix(state))
        pruning = config.get("pruning")
        module = build_and_load(architecture, model_config, state, path, pruned=pruning is not None)
        raw_metrics = obj.get("metrics")
        metrics: dict = raw_metrics if isinstance(raw_metrics, dict) else {}
        return LoadedModel("checkpoint", path, digest, _contract_from(config), module=module,
                           architecture=architecture, model_config=model_config, metrics=metrics, pruning=pruning)
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        architecture = arch or REFERENCE_ARCH
        model_config = arch_config
        if model_config is None and architecture == REFERENCE_ARCH:
            model_config = reference_config_from_state_dict(_strip_prefix(obj))
        module = build_and_load(architecture, model_config, obj, path)
        return LoadedModel("state_dict", path, digest, _contract_from(None), module=module,
                           architecture=architecture, model_config=model_config)
    raise CheckpointError(f"{path}: a dict without 'model_state_dict' whose values are not all tensors; "
                          "expected a CrackSeg checkpoint or a plain state_dict")


def save_checkpoint(path: str | Path, loaded: LoadedModel, module, contract: InferenceContract,
                    metrics: dict | None = None, pruning: dict | None = None, extra: dict | None = None) -> Path:
    """Write a CrackSeg-style checkpoint (loads back with ``weights_only=True``)."""
    import os

    import torch

    if loaded.architecture is None:
        raise CheckpointError(f"{loaded.path}: the architecture is unknown, so the result cannot be saved as a "
                              "checkpoint; pass --arch module:callable")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {"architecture": loaded.architecture, "model": loaded.model_config,
              "contract": contract.model_dump(mode="json")}
    if pruning or loaded.pruning:
        config["pruning"] = pruning or loaded.pruning
    ckpt = {"model_state_dict": {k: v.detach().clone() for k, v in module.state_dict().items()},
            "config": config, "metrics": metrics or {}, "epoch": -1,
            "source_sha256": loaded.sha256, **(extra or {})}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)
    return path
