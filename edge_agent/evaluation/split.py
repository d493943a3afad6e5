"""The deterministic train/validation split shared by training, conversion and evaluation.

A stem goes to validation when a hash of it falls in the lowest ``val_fraction``: it never
changes when files are added, listed in another order, or evaluated on another machine.
"""

from __future__ import annotations

import hashlib


def split_of(stem: str, val_fraction: float = 0.15) -> str:
    """'train' or 'val' for a file stem (85/15 by default)."""
    h = int.from_bytes(hashlib.sha256(stem.encode("utf-8")).digest()[:8], "big")
    return "val" if (h % 10_000) < val_fraction * 10_000 else "train"
