"""Lon/lat grid cells: the in-memory index of cracks and segments, and the database blocks behind it.

Both the inventory merge and the segment builder look for neighbours of a line; they index
objects by grid cell (``GridIndex``) and load the database block by block, each block once per run.
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


def expand(bbox: BBox, metres: float) -> BBox:
    """``bbox`` grown by about ``metres`` on every side (degrees per metre taken at its middle latitude;
    a point is the box (lon, lat, lon, lat))."""
    dlat = metres / 111_000.0
    dlon = metres / (111_000.0 * max(0.05, math.cos(math.radians((bbox[1] + bbox[3]) / 2))))
    return bbox[0] - dlon, bbox[1] - dlat, bbox[2] + dlon, bbox[3] + dlat


class GridIndex:
    """Object ids by the grid cells of ``size`` degrees that their boxes touch (in memory, one run)."""

    def __init__(self, size: float) -> None:
        self.size = size
        self._cells: dict[tuple[int, int], set[int]] = {}

    def add(self, key: int, bbox: BBox) -> None:
        for cell in cells(bbox, self.size):
            self._cells.setdefault(cell, set()).add(key)

    def discard(self, key: int, bbox: BBox) -> None:
        for cell in cells(bbox, self.size):
            self._cells.get(cell, set()).discard(key)

    def near(self, bbox: BBox) -> list[int]:
        """The ids in the cells ``bbox`` touches, sorted (a superset of those whose boxes meet it)."""
        ids: set[int] = set()
        for cell in cells(bbox, self.size):
            ids |= self._cells.get(cell, set())
        return sorted(ids)
