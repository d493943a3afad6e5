"""Generated pavement data and a tiny trained crack model for the converter tests.

Everything is made here (no ../shared): grey asphalt-like texture with dark, wandering
crack polylines and the matching masks. The tiny model is the reference architecture at
small widths, trained for a few seconds with the converter's own fine-tune loop, which is
enough for its masks to mean something (F1 well above zero) and for INT8 to be checked.
The whole chain is built once per test process (``tiny_chain``) and shared by test files.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

TINY_WIDTHS = [16, 32, 32, 32, 32]
IMAGE_HW = (96, 128)
EXPORT_HW = (64, 96)
LARGE_HW = (96, 128)  # the "camera" size of the multi-size chain: one generated image per frame


def synthetic_pavement(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(BGR uint8 image, uint8 0/255 mask) with 1-3 dark cracks on a textured grey road."""
    base = rng.uniform(95, 150)
    noise = cv2.GaussianBlur(rng.normal(0, 18, (h, w)).astype(np.float32), (0, 0), 1.2)
    img = np.clip(base + noise + rng.normal(0, 6, (h, w)), 0, 255)
    mask = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        pts = [np.array([rng.uniform(0, w), rng.uniform(0, h)])]
        angle = rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(4, 9))):
            angle += rng.normal(0, 0.5)
            pts.append(pts[-1] + 14 * np.array([np.cos(angle), np.sin(angle)]))
        poly = np.round(np.array(pts)).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(mask, [poly], False, 255, int(rng.integers(2, 4)))
    dark = rng.uniform(45, 75)
    img = np.where(mask > 0, img - dark, img)
    bgr = np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    bgr = np.clip(bgr.astype(np.int16) + rng.integers(-6, 7, size=3), 0, 255).astype(np.uint8)  # slight tint
    return bgr, mask


def make_dataset(root: Path, n: int = 24, size: tuple[int, int] = IMAGE_HW, seed: int = 0) -> Path:
    """A labeled folder (images/*.png + masks/*.png) of generated pavement."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img, mask = synthetic_pavement(rng, *size)
        cv2.imwrite(str(root / "images" / f"road_{i:03d}.png"), img)
        cv2.imwrite(str(root / "masks" / f"road_{i:03d}.png"), mask)
    return root


def train_tiny_checkpoint(path: Path, data: Path, steps: int = 60, seed: int = 0) -> Path:
    """A CrackSeg-style checkpoint of the tiny reference network after a short training run."""
    import torch

    from converters.finetune import finetune
    from edge_agent.contract import InferenceContract
    from reference_model.network import build_reference_model

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    model = build_reference_model({"widths": TINY_WIDTHS})
    contract = InferenceContract(stride=16)
    model, report = finetune(model, [data], contract, epochs=1000, max_steps=steps, lr=5e-3, batch_size=4,
                             crop=64, seed=seed, progress=False)
    torch.save({"model_state_dict": model.state_dict(),
                "config": {"architecture": "reference_model.network:build_reference_model",
                           "model": {"in_channels": 3, "widths": TINY_WIDTHS},
                           "contract": contract.model_copy(update={"threshold": report.threshold}).model_dump(
                               mode="json")},
                "metrics": {"f1": report.val_f1 or 0.0, "threshold": report.threshold}, "epoch": 0}, path)
    return path


@functools.lru_cache(maxsize=1)
def tiny_data() -> dict:
    """Data set + trained tiny checkpoint, made once per test process."""
    root = Path(tempfile.mkdtemp(prefix="crackseg-convert-test-"))
    atexit.register(shutil.rmtree, root, True)
    data = make_dataset(root / "data")
    ckpt = train_tiny_checkpoint(root / "tiny.pt", data)
    return {"root": root, "data": data, "checkpoint": ckpt}


@functools.lru_cache(maxsize=1)
def tiny_chain() -> dict:
    """The whole ``build`` chain on the tiny model (ONNX + TFLite, fp32 + INT8, two sizes), signed, made once."""
    from converters.build import BuildOptions, build
    from converters.keys import generate_keypair

    d = tiny_data()
    priv, pub = generate_keypair(d["root"] / "keys")
    out = d["root"] / "bundle"
    build(BuildOptions(checkpoint=d["checkpoint"], calib=d["data"], val=d["data"], out=out, name="tiny",
                       version="1.2.3", sizes=[EXPORT_HW, LARGE_HW], calib_count=4, split="all", runs=2,
                       max_f1_drop=0.25, sign_key=priv, archive=d["root"] / "tiny.tar.gz", progress=False),
          log=lambda *_: None)
    return {**d, "bundle": out, "archive": d["root"] / "tiny.tar.gz", "private": priv, "public": pub}
