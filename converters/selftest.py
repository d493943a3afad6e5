"""The bundle's selftest as the converter writes it: a reference image, the expected probabilities
and, per artifact, the deviation measured here with room for other CPUs.

The device side (``edge_agent.detectors.selftest``) compares each artifact with the expected
probabilities within these tolerances after an update, before switching to the new model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SELFTEST_IMAGE = "selftest/input.png"
SELFTEST_EXPECTED = "selftest/expected_fp32.npy"


def selftest_tolerance(measured_max: float, measured_mean: float) -> dict:
    """Room for other CPUs' kernels (ARM vs x86 int8 rounding) without hiding a wrong model."""
    return {"max_abs": min(1.0, 2.0 * measured_max + 0.05), "mean_abs": min(1.0, 3.0 * measured_mean + 0.003),
            "measured_max_abs": min(1.0, measured_max), "measured_mean_abs": min(1.0, measured_mean)}


def make_selftest(root: Path, image_bgr: np.ndarray, expected: np.ndarray, artifacts: dict[str, Path],
                  threads: int | None = None) -> dict:
    """Store the reference image and expected probabilities; measure each artifact's deviation.

    Each artifact runs alone on the image through the runtime, as a device's selftest runs it.
    """
    from edge_agent.bundle.pack import file_entry
    from edge_agent.detectors.runtime import open_model
    from edge_agent.detectors.selftest import deviation
    from edge_agent.imageio import write_image

    write_image(root / SELFTEST_IMAGE, image_bgr)
    np.save(root / SELFTEST_EXPECTED, expected.astype(np.float32), allow_pickle=False)
    tolerances = {}
    for path in artifacts.values():
        tolerances[path.name] = selftest_tolerance(*deviation(open_model(path, threads=threads), image_bgr, expected))
    return {"image": file_entry(root, SELFTEST_IMAGE).model_dump(),
            "expected": file_entry(root, SELFTEST_EXPECTED).model_dump(),
            "reference": "torch-fp32", "tolerances": tolerances}
