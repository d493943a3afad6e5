"""The cracks of a frame before measurement: connected components of the mask once the model's
small gaps are bridged, with their boxes, areas and holes.

A crack is a connected component of the mask once gaps of up to ``gap_close_px`` between two
pieces are bridged, so a crack that the model broke by a gap of one or two pixels stays one
crack. The bridge is a targeted closing: only pixels within the gap distance of two different
pieces are added (a morphological closing misses oblique gaps in thin cracks and changes the
crack's outline, which the width measurement would see).

Everything here touches the whole frame, so it is a handful of OpenCV passes, and the
frame-sized arrays live in a ``Scratch`` that is reused from frame to frame: a fresh
megabyte-sized array costs a page fault per 4 KiB page each time, which on the crack-dense
720p road added up to as much CPU as the labelling itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


class Scratch:
    """Reusable work arrays by name.

    ``get`` returns a C-contiguous array of the requested shape and type on a byte buffer that
    only grows, holding whatever its previous user left there. A name is a buffer, not a use:
    a later phase takes the buffer of an earlier one whose data it no longer needs (the
    frame-wide search for bridges works in the buffers that the per-crack measurement fills
    afterwards), so that a measurer holds about 13 bytes per frame pixel (12 MB at 720p).
    """

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: type | np.dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        buf = self._buffers.get(name)
        if buf is None or buf.size < nbytes:
            buf = self._buffers[name] = np.empty(nbytes, dtype=np.uint8)
        return buf[:nbytes].view(dtype).reshape(shape)

    def padded(self, name: str, shape: tuple[int, int], dtype: type | np.dtype) -> np.ndarray:
        """A (h + 2, w + 2) view whose one-pixel border is zero (the inside is left as it was)."""
        img = self.get(name, (shape[0] + 2, shape[1] + 2), dtype)
        img[0] = img[-1] = 0
        img[:, 0] = img[:, -1] = 0
        return img


def _label(mask: np.ndarray, out: np.ndarray) -> tuple[int, np.ndarray]:
    """8-connected labels, 16-bit (into ``out``) where they fit.

    16-bit labels are several times faster than 32-bit ones in OpenCV's labelling; OpenCV
    refuses (instead of wrapping) when a pathological mask has more than 65535 components, and
    then the 32-bit path runs.
    """
    try:
        return cv2.connectedComponents(mask, labels=out, connectivity=8, ltype=cv2.CV_16U)
    except cv2.error:
        return cv2.connectedComponents(mask, connectivity=8, ltype=cv2.CV_32S)


MAX_CONTOUR_STATS = 1024  # beyond this many pieces (a noisy mask) OpenCV's own statistics are cheaper
MAX_COUNTED = 32  # areas counted crack by crack up to this many, beyond that one histogram of the labels


@dataclass(frozen=True)
class Components:
    """The cracks of a frame before measurement.

    ``labels`` (0 = background) with ``stats`` in the layout of ``connectedComponentsWithStats``
    (row 0 unused; an area of -1 is not counted yet: see ``areas``); ``bridged[label]``: the
    crack holds bridge pixels, so it is more than the model's pixels. ``holes`` are the hole
    borders of all cracks as ``findContours`` traces them on the frame (``RETR_CCOMP``,
    ``CHAIN_APPROX_SIMPLE``), ``hole_owner`` the label of each; None when they were not traced
    (then each crack traces its own).
    """

    n: int
    labels: np.ndarray
    stats: np.ndarray
    bridged: np.ndarray
    holes: list[np.ndarray] | None = None
    hole_owner: np.ndarray | None = None

    def areas(self, labels: np.ndarray, scratch: Scratch) -> np.ndarray:
        """Pixel counts of ``labels``, counted where not known yet: in each crack's box when they
        are few (the cracks whose box is too small to matter are never counted), else with one
        ``calcHist`` of the whole labels (exact: see ``_describe``)."""
        counts = self.stats[:, cv2.CC_STAT_AREA]
        unknown = labels[counts[labels] < 0]
        if unknown.size > MAX_COUNTED:
            counts[:] = cv2.calcHist([self.labels], [0], None, [self.n], [0, self.n]).ravel()
        for label in unknown.tolist() if unknown.size <= MAX_COUNTED else ():
            x, y, w, h = (int(v) for v in self.stats[label, :4])
            inside = scratch.get("component", (h, w), np.uint8)
            np.equal(self.labels[y:y + h, x:x + w], label, out=inside.view(bool))
            counts[label] = cv2.countNonZero(inside)
        return counts[labels]

    def holes_of(self, label: int) -> list[np.ndarray] | None:
        if self.holes is None or self.hole_owner is None:
            return None
        return [self.holes[i] for i in np.flatnonzero(self.hole_owner == label).tolist()]


def _describe(img: np.ndarray, n: int, labels: np.ndarray, bridged: np.ndarray) -> Components:
    """Boxes and holes of the labelled components of ``img`` (areas: ``Components.areas``).

    ``connectedComponentsWithStats`` spends most of its time on the statistics rather than the
    labels: boxes come cheaper from the outer borders of one ``findContours`` pass (which also
    gives every crack's holes for the loop count), and only the areas that matter are counted.
    A noisy mask with very many pieces, or one too large for exact float counts in
    ``calcHist``, takes OpenCV's statistics instead.
    """
    if n > MAX_CONTOUR_STATS or labels.dtype != np.uint16 or labels.size >= 1 << 24:
        _, _, stats, _ = cv2.connectedComponentsWithStats(img, connectivity=8, ltype=cv2.CV_32S)
        return Components(n, labels, stats, bridged)
    stats = np.zeros((n, 5), dtype=np.int32)
    stats[:, cv2.CC_STAT_AREA] = -1
    contours, hierarchy = cv2.findContours(img, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return Components(n, labels, stats, bridged, [], np.zeros(0, dtype=np.int64))
    parent = hierarchy[0][:, 3]
    outer = np.flatnonzero(parent < 0).tolist()
    points = np.concatenate([contours[i] for i in outer]).reshape(-1, 2)
    starts = np.cumsum([0] + [len(contours[i]) for i in outer[:-1]])
    owner = np.zeros(len(contours), dtype=np.int64)  # an outer border's first point is its component's
    owner[outer] = labels[points[starts, 1], points[starts, 0]]
    low = np.minimum.reduceat(points, starts)
    stats[owner[outer], :2] = low
    stats[owner[outer], 2:4] = np.maximum.reduceat(points, starts) - low + 1
    inner = np.flatnonzero(parent >= 0)
    return Components(n, labels, stats, bridged, [contours[i] for i in inner.tolist()], owner[parent[inner]])


MAX_WINDOW_PIECES = 8  # beyond this many pieces one frame-wide search for bridges is cheaper than windows


def _near_two(labels: np.ndarray, gap_px: int, scratch: Scratch | None = None) -> np.ndarray:
    """Pixels of ``labels`` (a 2-D view) within ``gap_px`` (chessboard) of two different labels.

    A min filter and a max filter over the labels differ exactly where a pixel sees two labels.
    On ``label - 1`` background wraps round to the largest value, so the min filter ignores it,
    as it does the outside of the frame (OpenCV's default erosion border is the type's
    maximum), and where a pixel sees no label at all both filters give that value (the max
    filter's 0, less 1, wraps too). Unsigned labels must stop below the type's maximum (16-bit
    ones from ``_label`` do; 8-bit copies of fewer than 255 labels filter faster still) and
    filter in OpenCV faster than floats; 32-bit ones go through float32 (exact below 2**24),
    with the border stated, since OpenCV's default for a float erosion is FLT_MAX, which is finite:
    every background pixel near the frame edge with no label around became a bridge pixel, and
    strips of them along the edge were measured as cracks of area 0. ``scratch`` (for a
    frame-wide search) holds the work arrays and the result, in the per-crack buffers.
    """
    kernel = np.ones((2 * gap_px + 1, 2 * gap_px + 1), np.uint8)
    if labels.dtype not in (np.uint8, np.uint16):
        shifted = labels.astype(np.float32) - 1
        shifted[labels == 0] = np.inf
        low = cv2.erode(shifted, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=np.inf)
        high = cv2.dilate(labels.astype(np.float32), kernel) - 1  # -1 where no label, never inf
        return (low != high) & np.isfinite(low)
    if scratch is None:
        low, high = np.empty((2, *labels.shape), dtype=labels.dtype)
        near = np.empty(labels.shape, dtype=bool)
    else:
        low, high = scratch.get("cells", (2, *labels.shape), labels.dtype)
        near = scratch.get("thin", labels.shape, bool)
    np.subtract(labels, 1, out=high)  # background 0 wraps round to the type's maximum
    cv2.erode(high, kernel, dst=low)
    cv2.dilate(labels, kernel, dst=high)
    np.subtract(high, 1, out=high)
    return np.not_equal(low, high, out=near)


def join_gaps(mask: np.ndarray, gap_px: int, scratch: Scratch | None = None) -> Components:
    """Components of ``mask`` (0/1 uint8) once gaps of up to ``gap_px`` pixels (chessboard
    distance, so in any direction) between two pieces are bridged.

    Only pixels within ``gap_px`` of two different pieces are added, so the outline of a crack
    is untouched elsewhere. With a few pieces, they are searched only where two pieces' boxes,
    grown by the gap, overlap; with more, one frame-wide pass (a handful of OpenCV calls) is
    cheaper than tracing the pieces' boxes and searching each window. The mask is labelled a
    second time only when a bridge was found (labels alone, which is cheap: see ``_describe``).
    The labels live in ``scratch`` until its next use.
    """
    scratch = scratch or Scratch()
    n, labels = _label(mask, scratch.get("labels", mask.shape, np.uint16))
    unbridged = np.zeros(n, dtype=bool)
    if gap_px <= 0 or n <= 2:
        return _describe(mask, n, labels, unbridged)
    h, w = mask.shape
    joined = scratch.get("original", mask.shape, np.uint8)  # (free until the cracks are measured)
    added = []  # (window x0, y0, x1, y1; the bridge pixels in it that the model did not mark)
    pieces = None
    if n > MAX_WINDOW_PIECES:
        few = labels.dtype == np.uint16 and n <= 0xFF
        narrow = scratch.get("dist", mask.shape, np.uint8) if few else labels
        if few:
            np.copyto(narrow, labels, casting="unsafe")
        near = _near_two(narrow, gap_px, scratch)
        new = np.greater(near.view(np.uint8), mask, out=near)
        if cv2.countNonZero(new.view(np.uint8)):
            np.bitwise_or(mask, new.view(np.uint8), out=joined)
            added.append(((0, 0, w, h), new))
    else:
        pieces = _describe(mask, n, labels, unbridged)
        stats = pieces.stats
        x0 = stats[1:, cv2.CC_STAT_LEFT] - gap_px
        y0 = stats[1:, cv2.CC_STAT_TOP] - gap_px
        x1 = stats[1:, cv2.CC_STAT_LEFT] + stats[1:, cv2.CC_STAT_WIDTH] + gap_px
        y1 = stats[1:, cv2.CC_STAT_TOP] + stats[1:, cv2.CC_STAT_HEIGHT] + gap_px
        pairs = np.argwhere(np.triu((x0[:, None] < x1[None, :]) & (x0[None, :] < x1[:, None])
                                    & (y0[:, None] < y1[None, :]) & (y0[None, :] < y1[:, None]), k=1))
        np.copyto(joined, mask)
        for i, j in pairs.tolist():
            wx0, wy0, wx1, wy1 = max(x0[i], x0[j], 0), max(y0[i], y0[j], 0), min(x1[i], x1[j], w), min(y1[i], y1[j], h)
            if wx0 >= wx1 or wy0 >= wy1:
                continue
            cx0, cy0 = max(wx0 - gap_px, 0), max(wy0 - gap_px, 0)
            near = _near_two(labels[cy0:min(wy1 + gap_px, h), cx0:min(wx1 + gap_px, w)], gap_px)
            new = np.greater(near[wy0 - cy0:wy1 - cy0, wx0 - cx0:wx1 - cx0].view(np.uint8), mask[wy0:wy1, wx0:wx1])
            if new.any():
                joined[wy0:wy1, wx0:wx1] |= new.view(np.uint8)
                added.append(((wx0, wy0, wx1, wy1), new))
    if not added:
        return _describe(mask, n, labels, unbridged) if pieces is None else pieces
    n, labels = _label(joined, scratch.get("labels", mask.shape, np.uint16))  # the pieces' labels are done
    bridged = np.zeros(n, dtype=bool)
    for (wx0, wy0, wx1, wy1), new in added:  # the cracks that hold pixels the model did not mark
        bridged[labels[wy0:wy1, wx0:wx1][new]] = True
    return _describe(joined, n, labels, bridged)
