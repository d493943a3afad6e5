"""Lon/lat grid cells: the in-memory index of cracks and segments, and the database blocks behind it.

Both the inventory merge and the segment builder look for neighbours of a line; they index
objects by grid cell and load the database block by block, each block once per run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

BBox = tuple[float, float, float, float]  # min lon, min lat, max lon, max lat


def cells(bbox: BBox, size: float) -> Iterable[tuple[int, int]]:
    """The (i, j) cells of ``size`` degrees that ``bbox`` touches."""
    x0, y0, x1, y1 = bbox
    for i in range(math.floor(x0 / size), math.floor(x1 / size) + 1):
        for j in range(math.floor(y0 / size), math.floor(y1 / size) + 1):
            yield i, j


def new_blocks(bbox: BBox, size: float, seen: set[tuple[int, int]]) -> Iterator[BBox]:
    """The bounds of each block of ``size`` degrees that ``bbox`` touches and is not in ``seen`` (then added)."""
    for bx, by in cells(bbox, size):
        if (bx, by) in seen:
            continue
        seen.add((bx, by))
        x0, y0 = bx * size, by * size
        yield x0, y0, x0 + size, y0 + size
