"""The bundle selftest: does this model, on this machine, reproduce the output it was built with?

A bundle stores one reference image and the fp32 probabilities the source model gave for it,
with a tolerance per artifact. Three callers ask the same question at different moments: the
converter when it writes the bundle (how far is each artifact from the reference: that sets
the tolerance), ``crackseg-convert verify --selftest`` and the loader (every artifact), and
an over-the-air update before it switches models (the very segmenter about to be swapped in,
with this device's backend, threads and providers). All three use ``deviation`` below.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.bundle import Bundle, BundleError
from edge_agent.bundle.manifest import MANIFEST_NAME, ArtifactEntry
from edge_agent.detectors.errors import BackendUnavailableError, ModelError


class SelftestError(ModelError):
    """The model does not reproduce its reference output here, or cannot be checked."""


@dataclass
class SelftestResult:
    """One artifact's deviation from the bundle's reference output, and what is allowed."""

    file: str
    backend: str
    precision: str
    max_abs: float
    mean_abs: float
    max_abs_allowed: float
    mean_abs_allowed: float

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.max_abs)) and self.max_abs <= self.max_abs_allowed \
            and self.mean_abs <= self.mean_abs_allowed

    def to_dict(self) -> dict:
        return {"artifact": self.file, "backend": self.backend, "precision": self.precision,
                "max_abs": round(self.max_abs, 6), "mean_abs": round(self.mean_abs, 6),
                "max_abs_allowed": self.max_abs_allowed, "mean_abs_allowed": self.mean_abs_allowed,
                "passed": self.passed}


def deviation(segmenter: Any, image: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """(max, mean) absolute difference between the segmenter's probabilities and ``expected``.

    A shape mismatch or a non-finite output counts as infinitely far (never within tolerance).
    """
    prob = np.asarray(segmenter.probabilities(image), dtype=np.float32)
    if prob.shape != expected.shape:
        raise SelftestError(f"selftest output shape {prob.shape} differs from the reference {expected.shape}")
    diff = np.abs(prob - expected)
    if not np.isfinite(diff).all():
        return float("inf"), float("inf")
    return float(diff.max()), float(diff.mean())


def _tolerance(bundle: Bundle, artifact: str):
    st = bundle.manifest.selftest
    if st is None:
        raise SelftestError(f"bundle {bundle.name} {bundle.version} has no selftest section, so it cannot be "
                            "checked on this device; rebuild it with 'crackseg-convert build'")
    tol = st.tolerances.get(artifact)
    if tol is None:
        raise SelftestError(f"{bundle.root / MANIFEST_NAME}: the selftest has no tolerance for {artifact}; "
                            "rebuild the bundle")
    return tol


def _result(bundle: Bundle, entry_file: str, segmenter: Any, backend: str, precision: str) -> SelftestResult:
    tol = _tolerance(bundle, entry_file)
    image, expected = bundle.selftest_data()
    max_abs, mean_abs = deviation(segmenter, image, expected)
    return SelftestResult(entry_file, backend, precision, max_abs, mean_abs, tol.max_abs, tol.mean_abs)


def check_segmenter(segmenter: Any, bundle: Bundle) -> SelftestResult:
    """Selftest of a loaded segmenter (the one about to run), every artifact it holds.

    Returns the result closest to its tolerance; SelftestError when any artifact is outside.
    Each artifact runs alone and without resampling, as when the bundle was built.
    """
    results = []
    root = Path(bundle.root).resolve()
    for index, art in enumerate(segmenter.artifacts):
        one = segmenter.only(index)
        backend = one.backend  # opens it (with backend auto: the runtime chosen here, which names the file)
        artifact = os.path.relpath(Path(art.path).resolve(), root).replace(os.sep, "/")
        try:
            result = _result(bundle, artifact, one, backend.name, backend.precision)
        except (SelftestError, BundleError):
            raise
        except Exception as exc:  # the model failed to run at all on this device
            raise SelftestError(f"selftest of {artifact} failed to run on this device: {exc}") from None
        if not result.passed:
            raise SelftestError(f"selftest failed: {artifact} on {result.backend} differs from the reference output "
                                f"by max {result.max_abs:.4f} (allowed {result.max_abs_allowed:.4f}), mean "
                                f"{result.mean_abs:.4f} (allowed {result.mean_abs_allowed:.4f}); the model does not "
                                "behave here as it did when built")
        results.append(result)
    return max(results, key=lambda r: r.max_abs / max(r.max_abs_allowed, 1e-9))


def run_selftest(bundle: Bundle, backend: str | None = None, precision: str | None = None,
                 threads: int | None = None) -> list[SelftestResult]:
    """Run matching artifacts (all by default) on the reference image; results, passed or not.

    Backends that are not installed here (e.g. no TFLite interpreter) are skipped with a log
    line when no backend was asked for, and raise when one was.
    """
    import logging

    from edge_agent.detectors.runtime import open_model

    entries: list[ArtifactEntry] = [a for a in bundle.manifest.artifacts
                                    if (backend is None or a.format == backend)
                                    and (precision is None or a.precision == precision)]
    if not entries:
        raise SelftestError(f"{bundle.root}: no artifact matches backend={backend} precision={precision}")
    results = []
    for entry in entries:
        _tolerance(bundle, entry.file)
        try:
            seg = open_model(bundle.root / entry.file, backend=entry.format, threads=threads)
        except BackendUnavailableError as exc:
            if backend is None:
                logging.getLogger(__name__).warning("selftest of %s skipped: %s", entry.file, exc)
                continue
            raise
        results.append(_result(bundle, entry.file, seg, entry.format, entry.precision))
    return results
