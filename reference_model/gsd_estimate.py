"""Rough ground-resolution (mm/px) evidence for labeled folders whose camera is undocumented.

Two measurements, both crude on purpose and reported as such in docs/model.md:

1. ``--marking IMAGE``: width in px of a bright road marking crossing the image (the run of
   columns, or rows with ``--rows``, brighter than halfway between the median and the maximum of
   the mean profile, taken over four bands). Lane and edge lines are 100-150 mm wide, so
   ``100 / px`` to ``150 / px`` mm/px brackets that image's resolution.
2. ``--texture DIR [DIR ...]``: size of the bright aggregate chips of the surface (blobs
   standing out > 1 local sigma from a 12-px Gaussian background, opened 2x2): the median
   and the area-weighted median equivalent diameter in px. Chips of similar roads have
   similar sizes in mm, so the ratio between two folders estimates their scale ratio.

    python -m reference_model.gsd_estimate --marking ../shared/data/crackseg-sut/images/12.jpg \
        --marking ../shared/data/crackseg-sut/images/29.jpg --rows-for 29.jpg \
        --texture ../shared/data/crackseg-unified ../shared/data/crackseg-sut
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np


def marking_width_px(path: Path, across_rows: bool = False) -> list[int]:
    g = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if g is None:
        raise SystemExit(f"cannot read {path}")
    g = g.astype(np.float32)
    if across_rows:
        g = g.T
    h = g.shape[0]
    widths = []
    for k in range(4):
        band = g[k * h // 4:(k + 1) * h // 4]
        prof = band.mean(axis=0)
        thr = (prof.max() + np.median(prof)) / 2
        idx = np.flatnonzero(prof > thr)
        widths.append(int(idx.max() - idx.min() + 1) if idx.size else 0)
    return widths


def chip_diameters(path: Path) -> np.ndarray:
    g = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(np.float32)
    loc = g - cv2.GaussianBlur(g, (0, 0), 12)
    sd = np.sqrt(cv2.GaussianBlur(loc * loc, (0, 0), 12)) + 1e-3
    bright = cv2.morphologyEx((loc / sd > 1.0).astype(np.uint8), cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))
    _, _, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=4)
    area = stats[1:, cv2.CC_STAT_AREA]
    area = area[(area >= 4) & (area < 5000)]
    return 2 * np.sqrt(area / np.pi)


def texture_scale(folder: Path, max_images: int = 260) -> dict:
    images = sorted(p for p in (folder / "images").iterdir() if p.suffix.lower() in (".jpg", ".png", ".jpeg"))
    step = max(1, len(images) // max_images)
    d = np.concatenate([chip_diameters(p) for p in images[::step]])
    order = np.argsort(d)
    cum = np.cumsum(d[order] ** 2) / np.sum(d ** 2)
    return {"folder": folder.name, "images": len(images[::step]), "chips": int(d.size),
            "median_px": round(float(np.median(d)), 2),
            "area_weighted_median_px": round(float(d[order][np.searchsorted(cum, 0.5)]), 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--marking", action="append", default=[], type=Path, help="image with a marking crossing it")
    ap.add_argument("--rows-for", action="append", default=[], help="file names whose marking runs horizontally")
    ap.add_argument("--texture", nargs="*", default=[], type=Path, help="labeled folders to compare")
    args = ap.parse_args(argv)
    out = {"markings": [], "texture": []}
    for path in args.marking:
        w = marking_width_px(path, path.name in args.rows_for)
        med = float(np.median(w))
        out["markings"].append({"image": str(path), "width_px_per_band": w, "median_px": med,
                                "mm_per_px_if_100mm": round(100 / med, 2), "mm_per_px_if_150mm": round(150 / med, 2)})
    for folder in args.texture:
        out["texture"].append(texture_scale(folder))
    if len(out["texture"]) == 2:
        a, b = out["texture"]
        out["texture_ratio"] = {"median": round(a["median_px"] / b["median_px"], 2),
                                "area_weighted": round(a["area_weighted_median_px"] / b["area_weighted_median_px"], 2)}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
