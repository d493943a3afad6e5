"""What the update code needs from the device: its settings, how it loads a model, its self-test.

Why separate from the manager: the agent, the ``crackseg-edge model`` CLI and the tests all
need to load a model *exactly as the agent does* (backend, threads, providers, key,
precision, threshold) and to run the bundle's self-test on that very segmenter, but only the
agent needs the update flow.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge_agent.bundle import Bundle, BundleError
from edge_agent.config.updates import UpdatesConfig
from edge_agent.detectors.choice import release_freed_memory
from edge_agent.detectors.selftest import SelftestError, check_segmenter
from edge_agent.updates.store import UpdateError


class UpdateSettings(Protocol):
    """What the manager reads from the agent config (``AgentConfig`` has all three)."""

    updates: UpdatesConfig
    model: Any  # ModelConfig
    state_dir: Path


@dataclass(frozen=True)
class Settings:
    """A plain ``UpdateSettings`` for tools and tests that have no full agent config."""

    updates: UpdatesConfig
    model: Any
    state_dir: Path


def model_public_key_of(model_cfg: Any, environ: Mapping[str, str] | None = None) -> Path | None:
    """The configured bundle-signing key (file or systemd credential), None when none is configured."""
    if not (getattr(model_cfg, "public_key_file", None) or getattr(model_cfg, "public_key_credential", None)):
        return None
    from edge_agent.config import model_public_key

    return model_public_key(model_cfg, environ)


def model_loader(model_cfg: Any, environ: Mapping[str, str] | None = None, *,
                 gsd_mm_per_px: tuple[float, float] | None = None,
                 choice_cache: Path | None = None) -> Callable[[Path | None], Any]:
    """``load_model`` as the agent does it (backend, threads, providers, key, precision, threshold).

    The one way a device opens its model: the agent, the update manager and the CLI all use it.
    ``path`` None means the configured model. ``gsd_mm_per_px`` (x, y) is the camera's ground
    resolution (frames are resampled to a bundle's declared one); ``choice_cache`` is where
    ``backend: auto`` remembers which runtime is faster here.
    """
    from edge_agent.detectors.runtime import open_model
    from edge_agent.util.cpus import threads_per_worker

    public_key = model_public_key_of(model_cfg, environ)

    def load(path: Path | None) -> Any:
        return open_model(path if path is not None else model_cfg.path, backend=model_cfg.backend,
                          threads=threads_per_worker(model_cfg.threads, model_cfg.workers),
                          providers=model_cfg.onnx_providers(), public_key=public_key,
                          require_signature=model_cfg.require_signature, precision=model_cfg.precision,
                          threshold=model_cfg.threshold, gsd_mm_per_px=gsd_mm_per_px, choice_cache=choice_cache)

    return load


def selftest_segmenter(seg: Any, bundle: Bundle) -> dict:
    """The selftest of the segmenter about to be swapped in, as an UpdateError when it fails.

    The selftest opens every artifact; they are closed again afterwards (and the freed heap
    handed back), so the model swapped in holds only the session its camera's frames open, not
    a 720x1280 interpreter (~210 MB) a 320x480 camera never uses.
    """
    try:
        return check_segmenter(seg, bundle).to_dict()
    except (SelftestError, BundleError) as exc:
        raise UpdateError(str(exc)) from None
    finally:
        seg.close_sessions()
        release_freed_memory()


def cli_origin() -> str:
    """``cli:<user>``: the audit origin of a change made by hand on the device."""
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no passwd entry (containers)
        return f"cli:uid{os.getuid()}"
